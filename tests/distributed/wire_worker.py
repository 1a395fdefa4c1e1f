"""Two ranks: rank 0 sends one deliberately wrong message, rank 1 must reject it (invariant 5).

Usage: torchrun --nproc_per_node=2 tests/distributed/wire_worker.py {step|dtype|shape|kind|ok}
"""

import sys

import torch
import torch.distributed as dist

from pipelocal.distributed.transport import Expected, Kind, Receiver, TensorMeta, WireError, encode_header

ROWS = 4
GOOD = (TensorMeta(torch.float32, (ROWS, 2, 3)),)


def main(fault: str) -> int:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    if rank == 0:
        metas, step, kind = GOOD, 7, Kind.DATA
        tensor = torch.randn(ROWS, 2, 3)
        if fault == "step":
            step = 8
        elif fault == "kind":
            kind = Kind.EVAL
        elif fault == "dtype":  # same byte count, other dtype: gloo would reinterpret it silently
            metas, tensor = (TensorMeta(torch.float16, (ROWS, 2, 6)),), torch.randn(ROWS, 2, 6).half()
        elif fault == "shape":  # same byte count, other shape
            metas, tensor = (TensorMeta(torch.float32, (ROWS, 3, 2)),), torch.randn(ROWS, 3, 2)
        header = encode_header(kind, step, ROWS, metas, torch.arange(ROWS), ROWS)
        dist.send(header, 1)
        dist.send(tensor, 1)
        return 0
    receiver = Receiver(dist.group.WORLD, 0, 1, [Expected(Kind.DATA, 7, ROWS, GOOD)], 1, torch.device("cpu"), ROWS)
    try:
        header, tensors, _ = receiver.recv()
    except WireError as err:
        print(f"REJECTED: {err}", flush=True)
        return 0
    print(f"ACCEPTED labels={header.labels.tolist()} shape={list(tensors[0].shape)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
