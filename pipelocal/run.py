"""Entry point: parse the config, run the job (job.py), exit with a code that says what went wrong.

pipelocal --config fmnist/infopro_k4.yaml --train.epochs 1   (the same: python -m pipelocal.run ...)
"""

from __future__ import annotations

import os
import sys
import time
import traceback

import torch
from torch.distributed.elastic.multiprocessing.errors import record

from pipelocal.checkpoint import CheckpointError, CheckpointWriteError
from pipelocal.cli import config_from_argv
from pipelocal.config import ConfigError
from pipelocal.data import DataFileError, DatasetNotFoundError
from pipelocal.distributed.transport import PeerError
from pipelocal.job import check_single_process, run_job  # noqa: F401  (check_single_process: part of the API)
from pipelocal.preemption import PREEMPTED, Preempted
from pipelocal.runtime.guard import Diverged, DivergedElsewhere


def parse_args(argv: list[str]):
    """The validated job config of a command line (cli.py); ``--help`` prints the keys and exits 0."""
    return config_from_argv(argv)


def train(cfg) -> dict:
    """Run one job from a validated config in this process (a one-process mode); returns the summary."""
    return run_job(cfg).to_dict()


@record
def main(argv: list[str] | None = None) -> int:
    """Parse, then run the mode; exceptions propagate to torchrun's ``record`` (error file, summary). A
    preemption is not an error: the stage says where its checkpoint is and exits with ``PREEMPTED``."""
    try:
        run_job(parse_args(sys.argv[1:] if argv is None else argv))
    except Preempted as err:
        stage = f"stage {os.environ['RANK']}" if int(os.environ.get("WORLD_SIZE", "1")) > 1 else "pipelocal"
        print(f"{stage} stopped: {err} (exit code {PREEMPTED})", file=sys.stderr, flush=True)
        if torch.distributed.is_initialized():
            os._exit(PREEMPTED)  # no collective teardown: a peer may be gone already
        return PREEMPTED
    except PeerError as err:
        hold_for_the_peer(err)  # before record's error file: its time is what torchrun compares
        raise
    return 0


def cli(argv: list[str] | None = None) -> int:
    """Exit codes: 0 done, 2 bad config, data or checkpoint, 75 preempted (a checkpoint was written: resume with
    ``--train.resume=auto``), 1 anything else. A failing stage names itself and exits at once, without
    collective clean-up, which could hang on a dead peer (docs/pipeline.md#failing-fast)."""
    stage = f" on stage {os.environ['RANK']}" if int(os.environ.get("WORLD_SIZE", "1")) > 1 else ""
    try:
        return main(argv)
    except CheckpointWriteError as err:
        if os.environ.get("RANK", "0") == "0":  # every rank has the same failure (DCP gathers them): said once
            print(f"error: {err}", file=sys.stderr, flush=True)
        code = 2
    except (ConfigError, DatasetNotFoundError, DataFileError, CheckpointError) as err:
        print(f"error{stage}: {err}", file=sys.stderr, flush=True)
        code = 2
    except Diverged as err:
        if not isinstance(err, DivergedElsewhere):
            print(f"error: {err}", file=sys.stderr, flush=True)
        code = 1
    except PeerError as err:
        print(f"error{stage}: {err}", file=sys.stderr, flush=True)
        code = 1
    except Exception as err:
        traceback.print_exc()
        print(f"error{stage}: {type(err).__name__}: {err}", file=sys.stderr, flush=True)
        code = 1
    if torch.distributed.is_initialized():
        os._exit(code)
    return code


def hold_for_the_peer(err: PeerError) -> None:
    """torchrun names as root cause the failure with the earliest time: an error file's (``record``: when it was
    written) or, for a process killed by a signal, when torchrun saw it (every 0.1 s, ``--monitor-interval``). So
    this healthy stage waits before its error file is written. A peer that stopped answering is ended by its own
    watchdog (runtime/watchdog.py) within moments of this process's timeout (at most ``HOLD_S``); a reset means the
    peer is gone already, and ``RESET_HOLD_S`` covers torchrun's next looks. Without the wait before the file, a
    stopped stage's job was named after its healthy rank 0 in 2 of 3 suite runs here."""
    if torch.distributed.is_initialized():
        time.sleep(HOLD_S if "timed out" in str(err).lower() else RESET_HOLD_S)


HOLD_S = 3.0
RESET_HOLD_S = 0.5

if __name__ == "__main__":
    sys.exit(cli())
