"""Two torchrun agents on this machine as two "nodes" (``--nnodes=2 --node_rank``, a c10d rendezvous on
localhost): one P = 2 x R = 2 job, each node holding one stage's two replicas, so every activation and gradient
between the stages crosses nodes. It must end with the one-process answer."""

import re
import socket
import subprocess
import sys

from pipelocal.checkpoint import load_merged
from tests.distributed.launch import ROOT, TINY, job_env
from tests.distributed.test_data_parallel import GROUP, assert_same_weights
from tests.distributed.test_pipeline import sequential_state

LOCAL = [*GROUP, "--split.num_modules=4", "--guidance.every=2"]
ARGS = [*TINY, *LOCAL, "--mode=pipeline", "--pipeline.replicas=2"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def node_command(node_rank: int, port: int, *args: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes=2",
        "--nproc_per_node=2",
        f"--node_rank={node_rank}",
        "--rdzv-backend=c10d",
        f"--rdzv-endpoint=127.0.0.1:{port}",
        "--rdzv-id=pipelocal-two-nodes",
        "--max-restarts=0",
        "-m",
        "pipelocal.run",
        *args,
    ]


def test_two_nodes_one_job(tmp_path):
    port = free_port()
    args = [*ARGS, f"--metrics.out_dir={tmp_path}", "--metrics.run_name=two-nodes"]
    nodes = [
        subprocess.Popen(
            node_command(rank, port, *args),
            cwd=ROOT,
            env=job_env({"LOGLEVEL": "INFO"}),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in (0, 1)
    ]
    outputs = [node.communicate(timeout=240) for node in nodes]
    for node, (_, err) in zip(nodes, outputs):
        assert node.returncode == 0, err[-4000:]
    # Each agent reports the global ranks it runs: one stage's replicas per node (rank = stage * R + replica).
    ranks = sorted(re.search(r"global_ranks=\[([\d, ]+)\]", err).group(1) for _, err in outputs)
    assert ranks == ["0, 1", "2, 3"]
    assert_same_weights(load_merged(tmp_path / "two-nodes"), sequential_state(LOCAL))
