"""Several pipelocal runs in one torchrun job (as runs_worker.py does), with every host read of a tensor
during their training steps counted (host_reads.py): each rank prints its count and where each read was,
and exits 1 if there was any, or if no step was counted at all.

Usage: torchrun --nproc_per_node=N -m tests.distributed.host_sync_worker RUNS.json
"""

import sys

import torch.distributed as dist

from tests.distributed.host_reads import HostReads, count_step_reads
from tests.distributed.runs_worker import run_all


def main(path: str) -> int:
    reads = HostReads()
    code, steps = count_step_reads(lambda: run_all(path), reads)
    rank = dist.get_rank() if dist.is_initialized() else 0
    print(f"rank {rank}: {len(reads.calls)} host reads in {steps} training steps", flush=True)
    for call in reads.calls[:10]:
        print(f"rank {rank}: {call}", file=sys.stderr, flush=True)
    return code or int(bool(reads.calls) or steps == 0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
