"""The references share no code with what they check: nothing from pipelocal.runtime or pipelocal.schedules."""

import ast
from pathlib import Path


def test_references_import_nothing_from_the_step_machinery():
    for path in Path(__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            names += [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            bad = [n for n in names if n.startswith(("pipelocal.runtime", "pipelocal.schedules"))]
            assert not bad, (path.name, bad)
