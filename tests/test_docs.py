"""The documentation has no dead link: every relative link and #anchor in README.md and docs/*.md resolves
(GitHub's heading slugs), and no file cites the founding notes outside the repository."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[(?:[^\]\\]|\\.)*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^\s*(```|~~~)")
SKIPPED_DIRS = {".git", ".venv", "runs", "data", "logs", "__pycache__", "node_modules", "build", "dist"}
TEXT_SUFFIXES = {".py", ".md", ".yaml", ".yml", ".toml", ".sh", ".sbatch", ".txt", ".cfg", ".ini", ".json", ".csv"}
# Built from parts so that this file does not cite them itself.
FORBIDDEN = ["../" + "shared", "DESIGN" + " §", "METHODS" + " §", "DESIGN" + ".md", "METHODS" + ".md"]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped (not - or _), spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip())  # a link in a heading anchors by its text
    return re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")


def prose_lines(text: str):
    """(line number, line) outside fenced code blocks, with inline code spans blanked out."""
    fenced = False
    for number, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            yield number, re.sub(r"`[^`]*`", "``", line)


def headings_raw(page: Path) -> list[str]:
    """Headings with their inline code kept (``prose_lines`` blanks code spans, which a slug keeps)."""
    fenced, out = False, []
    for line in page.read_text(encoding="utf-8").splitlines():
        if FENCE.match(line):
            fenced = not fenced
        elif not fenced and (match := re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)):
            out.append(match.group(1))
    return out


def page_anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for heading in headings_raw(page):
        base = slug(heading)
        count = seen.get(base, 0)
        seen[base] = count + 1
        out.add(base if count == 0 else f"{base}-{count}")
    return out


def dead_links(page: Path, root: Path = ROOT) -> list[str]:
    """Every relative link of ``page`` whose file or anchor does not exist, as 'page:line: target (why)'."""
    problems = []
    for number, line in prose_lines(page.read_text(encoding="utf-8")):
        for target in LINK.findall(line):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # https:, mailto: ...: not ours to check
                continue
            path_part, _, anchor = target.partition("#")
            dest = (page.parent / path_part).resolve() if path_part else page
            where = f"{page.relative_to(root)}:{number}: {target}"
            if root not in dest.parents and dest != root:
                problems.append(f"{where} (outside the repository)")
            elif not dest.exists():
                problems.append(f"{where} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in page_anchors(dest):
                problems.append(f"{where} (no heading with anchor #{anchor})")
    return problems


@pytest.mark.parametrize(
    "heading, expected",
    [  # as GitHub renders them
        ("Speed: mixed precision, channels_last, torch.compile", "speed-mixed-precision-channels_last-torchcompile"),
        ("Guidance (PGL)", "guidance-pgl"),
        ("A stage's step", "a-stages-step"),
        ("The P x R mesh", "the-p-x-r-mesh"),
        ("What `queue_depth` bounds", "what-queue_depth-bounds"),
        ("Did the one loop and checkpoints slow anything?", "did-the-one-loop-and-checkpoints-slow-anything"),
        ("Pipeline x data-parallel throughput", "pipeline-x-data-parallel-throughput"),
    ],
)
def test_slug_is_githubs(heading, expected):
    assert slug(heading) == expected


def test_the_checker_finds_dead_links_and_anchors(tmp_path):
    """A checker that passes everything would pass the real pages too: it must name each kind of dead link."""
    (tmp_path / "other.md").write_text("# Other page\n\n## Its part\n\n## Its part\n")
    page = tmp_path / "page.md"
    page.write_text(
        "# Page\n\n[ok](other.md#its-part) [ok too](other.md#its-part-1) [self](#page) [web](https://x.org/a)\n"
        "[up](../outside.md)\n"
        "[gone](missing.md) [bad anchor](other.md#nowhere) [bad self](#nowhere)\n"
        "```\n[in code](missing-too.md)\n```\n`[inline](missing-three.md)`\n"
    )
    found = dead_links(page, tmp_path)
    assert [p.split(": ", 1)[1] for p in found] == [
        "../outside.md (outside the repository)",
        "missing.md (no such file)",
        "other.md#nowhere (no heading with anchor #nowhere)",
        "#nowhere (no heading with anchor #nowhere)",
    ]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_link_and_anchor_resolves(page):
    assert not dead_links(page), "\n".join(dead_links(page))


def test_docs_pages_exist():
    names = {p.name for p in PAGES}
    assert {"README.md", "design.md", "methods.md", "pipeline.md", "benchmarks.md"} <= names


def _repo_files():
    for path in ROOT.rglob("*"):
        rel = path.relative_to(ROOT)
        if path.is_file() and path.suffix in TEXT_SUFFIXES and not SKIPPED_DIRS & set(rel.parts):
            yield path, rel


def test_nothing_cites_the_founding_notes():
    """Users have no founding notes: code, configs, tests and docs link into docs/ instead."""
    cites = []
    for path, rel in _repo_files():
        text = path.read_text(encoding="utf-8", errors="replace")
        cites += [f"{rel}: {word!r}" for word in FORBIDDEN if word in text]
    assert not cites, "\n".join(cites)


def test_ci_runs_the_readmes_test_command():
    """.ci/run runs the README's test command verbatim: a change to one without the other fails here."""
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").strip().splitlines()
    command = next(line for line in reversed(ci) if line.strip() and not line.startswith("#"))
    readme_lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert command in readme_lines, f"README.md has no line equal to .ci/run's command: {command}"


def test_readme_starts_the_default_job_with_torchrun_standalone():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "torchrun --standalone --nproc_per_node=4 -m pipelocal.run\n" in readme


def test_code_references_into_docs_resolve():
    """Comments, docstrings, help strings and config headers cite docs/<page>.md#<anchor>: each must exist."""
    dead = []
    for path, rel in _repo_files():
        if rel.parts[0] == "docs" or rel.suffix == ".md":
            continue  # the pages themselves: test_every_link_and_anchor_resolves
        for page, anchor in re.findall(r"\bdocs/([\w-]+\.md)(?:#([\w-]+))?", path.read_text(errors="replace")):
            target = ROOT / "docs" / page
            if not target.exists() or (anchor and anchor not in page_anchors(target)):
                dead.append(f"{rel}: docs/{page}{'#' + anchor if anchor else ''}")
    assert not dead, "\n".join(sorted(set(dead)))
