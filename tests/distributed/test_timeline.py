"""metrics.timeline: a 2-stage run's merged trace has one row per stage, its spans nest or follow each other
(never overlap) within a stage, and what was asked for is in it; off, nothing is recorded."""

import json

import pytest

from pipelocal.metrics.timeline import Timeline, span_cost_ns
from tests.distributed.launch import TINY, torchrun

ARGS = [*TINY, "--mode=pipeline", "--split.num_modules=4", "--guidance.every=3", "--train.max_steps=6"]


def assert_nested(spans: list) -> None:
    """Every span lies inside the enclosing one or after it: a well-formed stack per row."""
    stack = []
    for name, start, dur, _ in sorted(spans, key=lambda s: (s[1], -s[2])):
        end = start + dur
        while stack and start >= stack[-1][1] - 1e-3:
            stack.pop()
        if stack:
            assert end <= stack[-1][1] + 1e-3, f"{name} [{start}, {end}] overlaps {stack[-1][0]} ending {stack[-1][1]}"
        stack.append((name, end))


@pytest.fixture(scope="module")
def traced(tmp_path_factory):
    out = tmp_path_factory.mktemp("timeline")
    done, _ = torchrun(2, *ARGS, "--metrics.timeline=[3,5]", f"--metrics.out_dir={out}", "--metrics.run_name=t")
    assert done.returncode == 0, done.stderr[-3000:]
    return out / "t", done.stdout


def test_one_row_per_stage_with_nested_spans(traced):
    run, stdout = traced
    events = json.loads((run / "timeline.json").read_text())["traceEvents"]
    rows = {e["args"]["name"]: e["tid"] for e in events if e["name"] == "thread_name"}
    assert sorted(rows) == ["stage 0", "stage 1"]
    for tid in rows.values():
        spans = [(e["name"], e["ts"], e["dur"], None) for e in events if e["ph"] == "X" and e["tid"] == tid]
        assert_nested(spans)
        steps = sorted(e["args"]["step"] for e in events if e["ph"] == "X" and e["tid"] == tid and e["name"] == "train")
        assert steps == [3, 4, 5]
    names = {e["name"] for e in events if e["ph"] == "X"}  # the evaluation and checkpoint after step 5 too
    assert {"recv", "send", "forward m0", "backward m3", "grad-wait", "eval", "checkpoint"} <= names
    assert (run / "timeline.png").stat().st_size > 0 and "recording cost" in stdout


def test_off_records_nothing():
    timeline = Timeline()
    timeline.configure(None)
    timeline.at_step(0)
    with timeline.span("train"):
        pass
    assert timeline.spans == [] and span_cost_ns(1000) > 0


def test_nesting_check_catches_overlap():
    with pytest.raises(AssertionError, match="overlaps"):
        assert_nested([("a", 0.0, 10.0, None), ("b", 5.0, 10.0, None)])
