"""One pipelocal run with every torch.distributed operation recorded in order (startup.STARTUP), then the record
written to ``<prefix>.<rank>.json``: tests/distributed/test_startup.py reads it to pin the NCCL-safe start-up.

Usage: torchrun --nproc_per_node=N tests/distributed/startup_worker.py PREFIX ARGS...
"""

import functools
import sys

import torch.distributed as dist

from pipelocal.distributed.startup import STARTUP
from pipelocal.run import main

RECEIVES = ("irecv", "recv")
SENDS = ("isend", "send", "batch_isend_irecv")
COLLECTIVES = (
    "all_reduce",
    "broadcast",
    "broadcast_object_list",
    "all_gather",
    "all_gather_object",
    "gather",
    "gather_object",
    "scatter_object_list",
    "reduce",
    "barrier",
)


def _recorded(kind: str, name: str):
    op = getattr(dist, name)

    @functools.wraps(op)
    def wrapper(*args, **kwargs):
        STARTUP.record(kind, name)
        return op(*args, **kwargs)

    return wrapper


for kinds, kind in ((RECEIVES, "post"), (SENDS, "send"), (COLLECTIVES, "collective")):
    for name in kinds:
        setattr(dist, name, _recorded(kind, name))  # the one torch.distributed module: every caller sees it

if __name__ == "__main__":
    STARTUP.path = sys.argv[1]
    code = main(sys.argv[2:])
    STARTUP.write()
    sys.exit(code)
