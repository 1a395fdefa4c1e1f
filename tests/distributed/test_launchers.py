"""The launchers take P and R: single_node.sh starts P x R processes with the replicas set; slurm.sbatch refuses a
P x R that does not fill the allocation (before it touches SLURM)."""

import json
import subprocess
import sys

from tests.distributed.launch import ROOT, TINY, job_env
from tests.distributed.test_data_parallel import GROUP


def test_single_node_takes_stages_and_replicas(tmp_path):
    args = [*TINY, *GROUP, f"--metrics.out_dir={tmp_path}", "--metrics.run_name=l", "--mode=pipeline"]
    command = ["bash", "launch/single_node.sh", "-p", "1", "-r", "2", "-l", str(tmp_path / "logs"), *args]
    out = subprocess.run(command, cwd=ROOT, env=job_env({"PYTHON": sys.executable}), capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads((tmp_path / "l" / "summary.json").read_text())
    assert summary["num_stages"] == 1 and summary["stages"][0]["replicas"] == 2


def test_slurm_script_checks_the_layout():
    env = job_env({"SLURM_NNODES": "2", "GPUS_PER_NODE": "4", "STAGES": "3", "REPLICAS": "2"})
    out = subprocess.run(["bash", "launch/slurm.sbatch"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert out.returncode == 2 and "STAGES=3 x REPLICAS=2 != 2 nodes x 4 GPUs" in out.stderr
