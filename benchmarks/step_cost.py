"""What one training step costs per method, and what a guidance step costs beside a local one (sequential).

    python benchmarks/step_cost.py                                  # FMNIST shapes, ResNet-20, K = 4 and 8
    python benchmarks/step_cost.py --methods infopro mlaan --modules 4

In one process, on random data of Fashion-MNIST's shape, for each method and K: the median time of a local
step, of a guidance step with ``combine: replace`` and with ``combine: add``, measured in interleaved
rounds (so drift on a shared machine hits all alike); and the same with ``guidance.recompute`` (the guided
step recomputes each module in its backward), with each kind's peak saved activations. The cost of guidance
every N steps is then
``(guided - local) / (N x local)`` of the training time; it is negative where a replace step, which skips
the aux heads, is cheaper than a local step.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from common import hardware, results_dir, write_outputs

from pipelocal.config_parse import load_config
from pipelocal.data import Batch, DataInfo
from pipelocal.metrics.memory import SavedTensorMeter
from pipelocal.optim import build_optimizers
from pipelocal.runtime import build_local_net
from pipelocal.runtime.spans import Guide
from pipelocal.schedules.sequential import train_step

COLUMNS = [
    "method",
    "K",
    "local ms/step",
    "replace ms/step",
    "add ms/step",
    "every 50 (replace)",
    "every 10 (replace)",
    "replace+recompute ms/step",
    "local saved MiB",
    "replace saved MiB",
    "replace+recompute saved MiB",
]


def measure(method: str, k: int, args) -> list:
    cfg = load_config(None, [f"--method.name={method}", f"--split.num_modules={k}", "--split.balance=uniform"])
    info = DataInfo(10, (1, 28, 28))
    net = build_local_net(cfg, info)
    opts = build_optimizers(net.local_modules, cfg.optim)
    raw = torch.rand(args.batch, 1, 28, 28)
    batch = Batch((raw - 0.5) / 0.25, torch.randint(0, 10, (args.batch,)), raw)
    kinds = {"local": None, "replace": Guide("replace"), "add": Guide("add"), "recompute": Guide("replace", 1.0, True)}
    times: dict[str, list[float]] = {name: [] for name in kinds}
    for r in range(args.rounds + 1):
        for name, guide in kinds.items():
            start = time.perf_counter()
            train_step(net, batch, opts, per_module=False, guide=guide)
            if r:  # the first round warms up
                times[name].append(time.perf_counter() - start)
    ms = {name: 1e3 * statistics.median(v) for name, v in times.items()}
    extra = lambda every: (ms["replace"] - ms["local"]) / (every * ms["local"])  # noqa: E731
    saved = {}  # peak bytes saved for backward while any module ran (saved-tensor hooks), one more pass each
    for name in ("local", "replace", "recompute"):
        meter = SavedTensorMeter(net.parameters())
        saved[name] = max(train_step(net, batch, opts, per_module=False, meter=meter, guide=kinds[name]).saved_peak)
    return (
        [method, k, round(ms["local"], 1), round(ms["replace"], 1), round(ms["add"], 1)]
        + [f"{100 * extra(e):+.2f}%" for e in (50, 10)]
        + [round(ms["recompute"], 1)]
        + [round(saved[n] / 2**20, 1) for n in ("local", "replace", "recompute")]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="*", default=["greedy", "dgl", "infopro", "auglocal", "mlaan"])
    parser.add_argument("--modules", nargs="*", type=int, default=[4, 8])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows = [measure(m, k, args) for k in args.modules for m in args.methods]
    folder = results_dir("step_cost", args.out)
    header = (
        f"# Cost of a step, local vs guidance (sequential mode)\n\nhardware: {hardware()}, {args.threads} threads; "
        f"Fashion-MNIST shapes (1x28x28), ResNet-20, batch {args.batch}, uniform split; median of {args.rounds} "
        "interleaved rounds. every N: extra training time of guidance every N steps (replace) over local only. "
        "saved MiB: the largest bytes saved for backward alive while any module ran (saved-tensor hooks); "
        "replace+recompute: guidance.recompute=true (module boundaries kept, each module recomputed in the backward)."
    )
    print(write_outputs(folder, "step_cost", COLUMNS, rows, {"hardware": hardware(), "args": vars(args)}, header))


if __name__ == "__main__":
    main()
