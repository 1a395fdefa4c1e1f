"""Entry point: parse config -> set up the device -> build data and model -> train -> summarise.

python -m pipelocal.run --config configs/fmnist_infopro_k4.yaml --train.epochs=1
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from pathlib import Path

import torch
from torch.distributed.elastic.multiprocessing.errors import record

from pipelocal.config import ConfigError, dump_yaml, help_text, load_config
from pipelocal.data import DatasetNotFoundError, build_loaders
from pipelocal.distributed_job import run_distributed
from pipelocal.metrics.console import Console
from pipelocal.runtime import build_local_net
from pipelocal.runtime.profile import split_for
from pipelocal.trainer import Trainer

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "default.yaml"


def parse_args(argv: list[str]):
    parser = argparse.ArgumentParser(
        prog="python -m pipelocal.run",
        description="Train a network as K local modules. Any config key can be overridden as --section.key=value.",
        epilog="config keys:\n" + help_text(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", help="YAML config (default: configs/default.yaml when it exists)")
    args, overrides = parser.parse_known_args(argv)
    path = args.config or (DEFAULT_CONFIG if DEFAULT_CONFIG.exists() else None)
    return load_config(path, overrides)


def pick_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device=cuda but CUDA is not available; use train.device=cpu or auto")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def check_single_process(mode: str) -> None:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        raise ConfigError(
            f"mode={mode} runs in one process, but torchrun started {world}; "
            "run it with python -m pipelocal.run, or use a multi-process mode"
        )


def make_run_dir(cfg) -> Path:
    name = cfg.metrics.run_name or f"{cfg.mode}-{cfg.method.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir = Path(cfg.metrics.out_dir) / name
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def train(cfg) -> dict:
    """Run one job from a validated config; returns the summary."""
    check_single_process(cfg.mode)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    torch.use_deterministic_algorithms(cfg.train.deterministic)
    device = pick_device(cfg.train.device)
    console = Console(cfg.metrics.console)
    train_loader, test_loader, info = build_loaders(cfg.data, device, cfg.train.seed)
    ranges, split_line = split_for(cfg, info, device)
    console.print(split_line)
    net = build_local_net(cfg, info, ranges)
    run_dir = make_run_dir(cfg)
    dump_yaml(cfg, run_dir / "config.yaml")
    ranges = ", ".join(f"{m.index}:{list(m.unit_range)}" for m in net.local_modules)
    console.print(
        f"{cfg.mode} | {cfg.method.name} | {cfg.model.name}-{cfg.model.depth} | K={net.num_modules} "
        f"units {ranges} | {cfg.data.name} | {device} | run dir {run_dir}"
    )
    summary = Trainer(cfg, net, train_loader, test_loader, device, run_dir, console).fit()
    rows = [
        [i, str(list(m.unit_range)), summary["saved_bytes_peak"][i] / 2**20] for i, m in enumerate(net.local_modules)
    ]
    console.table("per-module peak saved activations (MiB)", ["module", "units", "MiB"], rows)
    best, final = summary["best_top1"], summary["final_top1"]
    console.print(
        f"final test top-1 {final:.4f} | best test top-1 {best:.4f} (epoch {summary['best_epoch'] + 1}) | "
        f"{summary['samples_per_s_median']:.1f} samples/s (median epoch)"
    )
    return summary


@record
def main(argv: list[str] | None = None) -> int:
    """Parse, then run the mode; exceptions propagate to torchrun's ``record`` (error file, summary)."""
    cfg = parse_args(sys.argv[1:] if argv is None else argv)
    if cfg.mode in ("pipeline", "ddp", "gpipe", "1f1b"):
        run_distributed(cfg, make_run_dir)
    else:
        train(cfg)
    return 0


def cli(argv: list[str] | None = None) -> int:
    """Exit codes: 0 done, 2 bad config or data, 1 anything else. A failing stage names itself and exits
    at once, without collective clean-up, which could hang on a dead peer (DESIGN §6)."""
    stage = f" on stage {os.environ['RANK']}" if int(os.environ.get("WORLD_SIZE", "1")) > 1 else ""
    try:
        return main(argv)
    except (ConfigError, DatasetNotFoundError) as err:
        print(f"error{stage}: {err}", file=sys.stderr, flush=True)
        code = 2
    except Exception as err:
        traceback.print_exc()
        print(f"error{stage}: {type(err).__name__}: {err}", file=sys.stderr, flush=True)
        code = 1
    if torch.distributed.is_initialized():
        os._exit(code)
    return code


if __name__ == "__main__":
    sys.exit(cli())
