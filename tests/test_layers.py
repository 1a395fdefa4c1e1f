"""The package's floors (docs/design.md#floors): every import of a pipelocal room goes to its own floor or one
below, never up. Read from the source with ast, function-level (lazy) imports included, so a new arrow running
back up (the metrics importing distributed/, as run_log.py once did) fails here, not in a reader's head."""

import ast
from pathlib import Path

import pipelocal

# Bottom to top; a room is a top-level module or a folder of pipelocal/. Keep in step with docs/design.md#floors.
FLOORS = [
    ("options", "registry"),
    ("config", "config_policy", "config_parse", "config_files", "cli"),
    ("models", "split", "optim"),
    ("methods", "data"),
    ("metrics",),
    ("distributed", "preemption"),
    ("checkpoint_store", "checkpoint"),
    ("runtime",),
    ("schedules", "sim"),
    ("trainer", "identity", "export"),
    ("job",),
    ("run", "api", "__init__"),
]
FLOOR = {room: i for i, rooms in enumerate(FLOORS) for room in rooms}
ROOT = Path(pipelocal.__file__).parent


def _room(dotted: str) -> str:
    """``pipelocal.schedules.build`` -> ``schedules``; ``pipelocal`` -> ``__init__``."""
    parts = dotted.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(path: Path) -> list[str]:
    """Every pipelocal module ``path`` imports (``from pipelocal import x`` counts as ``pipelocal.x``)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names if a.name.startswith("pipelocal.")]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "pipelocal":
            out += [f"pipelocal.{a.name}" for a in node.names] if node.module == "pipelocal" else [node.module]
    return out


def upward_imports(root: Path = ROOT) -> list[str]:
    wrong = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root.parent).with_suffix("")
        src = _room(".".join(rel.parts))
        for target in _imports(path):
            dst = _room(target)
            if dst != src and FLOOR[dst] > FLOOR[src]:
                wrong.append(f"{rel}: imports {target} (floor {FLOOR[dst]} above {src}'s {FLOOR[src]})")
    return wrong


def test_every_room_has_a_floor():
    rooms = {p.stem if p.is_file() else p.name for p in ROOT.iterdir() if p.suffix == ".py" or p.is_dir()}
    rooms -= {"__pycache__", "configs"}
    assert rooms <= set(FLOOR), sorted(rooms - set(FLOOR))


def test_no_import_runs_back_up():
    assert not upward_imports()


def test_the_guard_sees_an_upward_import(tmp_path):
    """The check itself can fail: a metrics file importing distributed/ is reported."""
    (tmp_path / "pipelocal" / "metrics").mkdir(parents=True)
    (tmp_path / "pipelocal" / "metrics" / "bad.py").write_text("from pipelocal.distributed.topology import Topology\n")
    assert upward_imports(tmp_path / "pipelocal") == [
        "pipelocal/metrics/bad: imports pipelocal.distributed.topology (floor 5 above metrics's 4)"
    ]


def test_every_strategy_implements_the_protocol():
    """The trainer drives any mode through StepStrategy: each strategy class has every method it names."""
    from pipelocal.schedules.e2e_parallel import DDPLoop
    from pipelocal.schedules.pipelining import PipeliningLoop
    from pipelocal.schedules.stage_loop import StageLoop
    from pipelocal.schedules.strategy import StepStrategy

    names = [n for n, v in vars(StepStrategy).items() if callable(v) or isinstance(v, property)]
    names = [n for n in names if not n.startswith("_")]
    assert {"step", "evaluate", "waits", "start_epoch", "checkpoint_state"} <= set(names)
    for cls in (StageLoop, DDPLoop, PipeliningLoop):
        missing = [n for n in names if getattr(cls, n, None) is getattr(StepStrategy, n)]
        assert not missing and all(hasattr(cls, n) for n in names), (cls.__name__, missing)
