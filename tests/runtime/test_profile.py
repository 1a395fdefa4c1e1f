import torch

from pipelocal.data import DataInfo
from pipelocal.runtime.profile import profile_units, split_for
from tests.conftest import tiny_config

INFO = DataInfo(5, (3, 16, 16))


def test_profile_measures_every_unit_and_head():
    prof = profile_units(tiny_config("--method.name=dgl", "--split.num_modules=2"), INFO, torch.device("cpu"), 2)
    assert len(prof.unit_s) == 4 and all(t > 0 for t in prof.unit_s + prof.head_s)
    assert all(b > 0 for b in prof.unit_bytes + prof.head_bytes)
    assert prof.unit_bytes[0] > prof.unit_bytes[-1]  # full resolution early, a quarter late


def test_split_for_time_and_memory_cover_all_units():
    for balance in ("time", "memory"):
        cfg = tiny_config(f"--split.balance={balance}", "--split.num_modules=3")
        ranges, line = split_for(cfg, INFO, torch.device("cpu"))
        assert ranges[0][0] == 0 and ranges[-1][1] == 4 and len(ranges) == 3
        assert f"balance={balance}" in line and "predicted" in line


def test_memory_balance_never_worse_than_uniform_by_its_own_measure():
    cfg = tiny_config("--split.balance=memory", "--split.num_modules=2", "--model.depth=20")
    _, line = split_for(cfg, INFO, torch.device("cpu"))
    chosen = [float(v) for v in line.split("MiB [")[1].split("]")[0].split(",")]
    uniform = [float(v) for v in line.split("would be [")[1].split("]")[0].split(",")]
    assert max(chosen) <= max(uniform)
