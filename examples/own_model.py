"""Train your own network on your own data with pipelocal's Python API.

One process (InfoPro, K = 4 local modules, sequential):
    python examples/own_model.py
The same network as a 2-stage pipeline, one process per stage (every process runs this script; each trains its
own stage, and rank 0 prints the summary):
    torchrun --nproc_per_node=2 examples/own_model.py --pipeline
Add --quick for a few steps on a subset (a smoke test).
"""

import sys

from fmnist_data import fashion_mnist
from small_cnn import small_cnn

import pipelocal


def main(argv: list[str]) -> None:
    overrides = [
        "method.name=infopro",
        "split.num_modules=4",
        "split.balance=uniform",
        "train.epochs=1",
        "data.batch_size=128",
        "data.workers=2",
    ]
    if "--pipeline" in argv:
        overrides += ["mode=pipeline", "pipeline.modules_per_stage=[2,2]"]
    else:
        overrides += ["mode=sequential"]
    if "--quick" in argv:
        overrides += ["data.train_subset=2048", "data.test_subset=1000", "train.max_steps=8"]
    summary = pipelocal.train(overrides=overrides, model=small_cnn, data=fashion_mnist)
    if summary is not None:  # rank 0 of a pipeline, or the one process
        print(
            f"{summary['mode']} {summary['method']} K={summary['num_modules']} P={summary['num_stages']}: "
            f"test top-1 {summary['final_top1']:.4f} after {summary['steps']} steps"
        )


if __name__ == "__main__":
    main(sys.argv[1:])
