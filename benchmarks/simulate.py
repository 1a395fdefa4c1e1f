"""Where the local pipeline wins: the schedule simulator, validated on this machine and projected past it.

    python benchmarks/simulate.py --validate            # predictions against measured runs (simulate_measure.py)
    python benchmarks/simulate.py --gantt pipeline-infopro   # a measured run's simulated Gantt (timeline code)
    python benchmarks/simulate.py --project             # the seeds' nets on 4-16 A100/H100, NVLink and Ethernet

The model is pipelocal/sim (docs/simulator.md). --validate reads the newest measured.json under
benchmarks/results/*/simulate/ (or --measured PATH); --project writes projections.{md,csv,json,png} beside it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from common import markdown_table, results_dir
from simulate_validate import job_of, latest_measured, machine_of, validate

from pipelocal.sim.model import draw_gantt, simulate

COLUMNS = ["net", "K", "GPUs", "link", "method", "layout", "samples/s", "vs DDP", "vs 1F1B", "bound", "memory GiB"]


def project(out: str | None, reread: bool = False) -> None:
    """Simulate the projections (or, ``reread``, take them from projections.json) and write them out."""
    from simulate_project import project

    folder = results_dir("simulate", out)
    if reread:
        rows = json.loads((folder / "projections.json").read_text())["rows"]
    else:
        rows = project()
        (folder / "projections.json").write_text(json.dumps({"rows": rows}, indent=1))
    write_projections(folder, rows)


def write_projections(folder: Path, rows: list[dict]) -> None:
    from simulate_project import ASSUMPTIONS, METHODS

    table = []
    for r in rows:
        base = [r["net"], r["K"], f"{r['n']}x{r['gpu']}", r["link"]]
        for key in (*METHODS, "1f1b", "ddp"):
            if key not in r:
                continue
            x = r[key]
            bound = round(x["bound"]) if "bound" in x else None
            vs = [round(x["rate"] / r[e]["rate"], 2) if e in r else None for e in ("ddp", "1f1b")]
            table.append([*base, key, x["layout"], round(x["rate"]), *vs, bound, round(x["memory"] / 2**30, 2)])
    header = (
        "# Projections: local pipeline, 1F1B and DDP on A100/H100 clusters (simulated)\n\n"
        "Each method at its best P x R; samples/s in steady state; memory: the largest device's peak "
        "(weights, gradients, momentum, saved activations, link buffers); bound: the local pipeline's R x rows "
        "over its slowest stage's compute. Made by `python benchmarks/simulate.py --project` from the device "
        "model in pipelocal/sim/device.py.\n\n## Assumptions\n\n"
        + markdown_table(["assumption", "value", "source"], [list(a) for a in ASSUMPTIONS])
        + "\n\n## Projections"
    )
    text = header + "\n\n" + reading(rows) + "\n\n" + excerpt(rows) + "\n\n### Every cell\n\n"
    text += markdown_table(COLUMNS, table) + "\n"
    (folder / "projections.md").write_text(text)
    (folder / "projections.json").write_text(json.dumps({"assumptions": ASSUMPTIONS, "rows": rows}, indent=1))
    with (folder / "projections.csv").open("w") as f:
        f.write(",".join(COLUMNS) + "\n")
        f.writelines(",".join("" if v is None else str(v) for v in row) + "\n" for row in table)
    plot(rows, folder / "projections.png")
    print(folder / "projections.md")


def reading(rows: list[dict]) -> str:
    """Where the best local method beats the best exact-gradient schedule (DDP or 1F1B), by how much, where it
    cannot, and how close it runs to its own bound; every figure from the rows."""
    from simulate_project import METHODS

    lines = ["### Reading", ""]
    for net in dict.fromkeys(r["net"] for r in rows):
        sel = [r for r in rows if r["net"] == net]
        ratios, gaps, losses = [], [], []
        for r in sel:
            local = max((r[m] for m in METHODS if m in r), key=lambda x: x["rate"])
            e2e = max(r[k]["rate"] for k in ("ddp", "1f1b") if k in r)
            ratios.append(local["rate"] / e2e)
            gaps.append(local["rate"] / local["bound"])
            if local["rate"] < e2e:
                losses.append(f"K={r['K']} {r['n']}x{r['gpu']} {r['link']} ({local['rate'] / e2e:.2f}x)")
        ratios.sort()
        wins = sum(x > 1 for x in ratios)
        lines.append(
            f"- **{net}**: the best local method beats the best of DDP and 1F1B in {wins} of {len(ratios)} cells, "
            f"by {ratios[len(ratios) // 2]:.2f}x at the median (range {ratios[0]:.2f}x-{ratios[-1]:.2f}x); it runs "
            f"at {min(gaps):.0%}-{max(gaps):.0%} of its own bound (R x rows over its slowest stage)."
            + (f" It loses at: {', '.join(losses)}." if losses else "")
        )
        for m in METHODS:
            per = sorted(r[m]["rate"] / max(r[k]["rate"] for k in ("ddp", "1f1b") if k in r) for r in sel if m in r)
            if per:
                lines.append(f"  - {m}: {per[len(per) // 2]:.2f}x the best exact-gradient schedule at the median")
    return "\n".join(lines)


def excerpt(rows: list[dict], n: int = 8, gpu: str = "H100") -> str:
    """One line per net and K at ``n`` GPUs: samples/s (layout) of each schedule on both links."""
    from simulate_project import METHODS

    keys = [*METHODS, "1f1b", "ddp"]
    cols = ["net", "K", "link", *keys, "best local / best exact"]
    table = []
    for r in rows:
        if r["n"] != n or r["gpu"] != gpu:
            continue
        cells = [f"{r[k]['rate'] / 1e3:.1f}k ({r[k]['layout']})" if k in r else "-" for k in keys]
        local = max(r[m]["rate"] for m in METHODS if m in r)
        exact = max(r[k]["rate"] for k in ("ddp", "1f1b") if k in r)
        table.append([r["net"], r["K"], r["link"], *cells, round(local / exact, 2)])
    return f"### {n} x {gpu}: samples/s (P x R)\n\n" + markdown_table(cols, table)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    nets = sorted({(r["net"], r["K"]) for r in rows}, key=lambda x: (x[0], x[1]))
    fig, axes = plt.subplots(len(nets), 4, figsize=(16, 2.2 * len(nets)), squeeze=False)
    keys = [("greedy", "#2a7"), ("dgl", "#5b5"), ("infopro", "#8c8"), ("1f1b", "#c84"), ("ddp", "#888")]
    for i, (net, k) in enumerate(nets):
        for j, (gpu, link) in enumerate([(g, lk) for g in ("A100", "H100") for lk in ("NVLink", "100GbE")]):
            ax = axes[i][j]
            sel = [r for r in rows if r["net"] == net and r["K"] == k and r["gpu"] == gpu and r["link"] == link]
            for key, color in keys:
                pts = [(r["n"], r[key]["rate"]) for r in sel if key in r]
                if pts:
                    ax.plot(*zip(*pts), "o-", color=color, label=key, ms=3)
            ax.set_title(f"{net} K={k}, {gpu} {link}", fontsize=8)
            ax.set_xticks([4, 8, 16])
            ax.tick_params(labelsize=7)
    axes[0][0].legend(fontsize=7)
    fig.supxlabel("GPUs")
    fig.supylabel("samples/s")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def gantt(name: str, measured: str | None, out: str | None) -> None:
    path = Path(measured) if measured else latest_measured()
    data = json.loads(path.read_text())
    run = data["runs"][name]
    job, at = job_of(name, data, run["steps_per_epoch"])
    res = simulate(job, lambda rows: at[rows], machine_of(data, run.get("others_cores", 0.0)))
    folder = Path(out) if out else path.parent
    folder.mkdir(parents=True, exist_ok=True)
    png = draw_gantt(res.trace, folder / f"gantt-{name}.png", until_s=min(res.trace.makespan_s, 2.0))
    print(f"{name}: predicted {res.samples_per_s:.1f} samples/s, utilisation {[round(u, 2) for u in res.utilisation]}")
    print(png)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--validate", action="store_true", help="predicted vs measured runs of this machine")
    what.add_argument("--project", action="store_true", help="projections onto GPU clusters")
    what.add_argument("--gantt", metavar="RUN", help="draw a measured run's simulated schedule")
    what.add_argument("--reread", action="store_true", help="rewrite projections.md/csv/png from projections.json")
    parser.add_argument("--measured", help="measured.json (default: the newest under benchmarks/results)")
    parser.add_argument("--out", help="output folder (default: the simulate results folder)")
    args = parser.parse_args()
    if args.validate:
        path, lines = Path(args.measured) if args.measured else latest_measured(), []

        def out(line: str) -> None:
            print(line, flush=True)
            lines.append(line)

        worst = validate(path, out)
        folder = Path(args.out) if args.out else path.parent
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "validation.txt").write_text("\n".join(lines) + "\n")
        sys.exit(0 if worst <= 0.15 else 1)
    if args.project or args.reread:
        project(args.out, reread=args.reread)
    else:
        gantt(args.gantt, args.measured, args.out)


if __name__ == "__main__":
    main()
