"""Several pipelocal runs, one after another, in the processes of one torchrun job: one start-up (imports,
rendezvous) for many short runs. The default process group stays up between runs (a second
``init_process_group`` after ``destroy_process_group`` would read the first one's stale addresses from
torchrun's store); each run makes its own channel groups, as a job of its own does.

Usage: torchrun --nproc_per_node=N tests/distributed/runs_worker.py RUNS.json  (a JSON list of argument lists)
"""

import json
import sys
from pathlib import Path

import torch.distributed as dist

import pipelocal.distributed.setup as setup
import pipelocal.job as job
from pipelocal.run import main

_init = dist.init_process_group


def _init_once(*args, **kwargs):
    if not dist.is_initialized():
        _init(*args, **kwargs)


setup.dist.init_process_group = _init_once  # the one torch.distributed module: patched for this process only
job.destroy_distributed = lambda: None


def run_all(path: str) -> int:
    for args in json.loads(Path(path).read_text()):
        code = main(args)
        if code:
            return code
    return 0


if __name__ == "__main__":
    sys.exit(run_all(sys.argv[1]))
