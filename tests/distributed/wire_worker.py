"""Two ranks: rank 0 sends one deliberately wrong message, rank 1 must reject it (invariant 5).

Usage: torchrun --nproc_per_node=2 tests/distributed/wire_worker.py {step|dtype|shape|kind|ok}
"""

import sys

import torch
import torch.distributed as dist

from pipelocal.distributed.transport import Channel, Receiver, Sender
from pipelocal.distributed.wire import Expected, Kind, TensorMeta, WireError

ROWS = 4
GOOD = (TensorMeta(torch.float32, (ROWS, 2, 3)),)


def main(fault: str) -> int:
    dist.init_process_group("gloo")
    rank, cpu = dist.get_rank(), torch.device("cpu")
    channel = Channel(dist.new_group(backend="gloo"), dist.new_group(backend="gloo"))  # WORLD: the barrier
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
        sender = Sender(channel, 0, 1, 1, cpu)  # it checks tensors against metas only: these agree, wrongly
        sender.send(kind, step, ROWS, [tensor], torch.arange(ROWS), metas)
        sender.flush()
    else:
        receive(channel, cpu)
    dist.barrier()  # rank 1 rejects a message on its header, before its tensors land: both wait until they have
    return 0


def receive(channel: Channel, cpu: torch.device) -> None:
    receiver = Receiver(channel, 0, 1, [Expected(Kind.DATA, 7, ROWS, GOOD)], 1, cpu)
    try:
        header, tensors, _ = receiver.recv()
    except WireError as err:
        print(f"REJECTED: {err}", flush=True)
        return
    print(f"ACCEPTED labels={header.labels.tolist()} shape={list(tensors[0].shape)}", flush=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
