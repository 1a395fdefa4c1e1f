"""A timm model under local learning: timm's ResNet-18 (random init, nothing is downloaded) cut into its stem,
its 8 blocks and its head, trained with DGL as K = 4 local modules on CIFAR-10-sized synthetic data.

    pip install 'pipelocal[timm]'
    python examples/timm_model.py            # add --quick for a few steps

The command-line equivalent: python -m pipelocal.run --mode=sequential --model.name=timm/resnet18 ...
"""

import sys

import pipelocal


def main(argv: list[str]) -> None:
    overrides = [
        "mode=sequential",
        "method.name=dgl",
        "split.num_modules=4",
        "split.balance=uniform",
        "data.name=synthetic",
        "data.synthetic_shape=[3,32,32]",
        "data.batch_size=64",
        "train.epochs=1",
    ]
    if "--quick" in argv:
        overrides += ["data.synthetic_train=256", "data.synthetic_test=128", "train.max_steps=4"]
    summary = pipelocal.train(overrides=overrides, model="timm/resnet18")
    print(f"timm/resnet18 {summary['method']} K={summary['num_modules']}: test top-1 {summary['final_top1']:.4f}")


if __name__ == "__main__":
    main(sys.argv[1:])
