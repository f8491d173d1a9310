"""The benchmark's figure: round time against set size and cores, and where the time goes."""

from __future__ import annotations

import os
from pathlib import Path

from bench.blindmatch_runner import RoundRun
from bench.psi_runner import PsiRun


def plot(runs: list[RoundRun], psi: dict[int, PsiRun], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (by_size, by_cores, busy) = plt.subplots(1, 3, figsize=(16, 4.6))
    # a build measured with --before beside this one: dashed, so before and after pair up
    groups = sorted({(r.system, r.nations, r.workers) for r in runs})
    for system, nations, workers in groups:
        pts = sorted(
            (r.items, r.wall)
            for r in runs
            if (r.system, r.nations, r.workers) == (system, nations, workers)
        )
        by_size.plot(
            [x for x, _ in pts],
            [y for _, y in pts],
            marker="o",
            ls=_style(system),
            label=f"{system}, {nations} nations, {workers} worker(s)/node",
        )
    if psi:
        pts = sorted((size, run.wall) for size, run in psi.items())
        by_size.plot(
            [x for x, _ in pts],
            [y for _, y in pts],
            marker="s",
            ls="--",
            color="black",
            label="openmined-psi, 2 parties",
        )
    by_size.set(xscale="log", yscale="log", xlabel="indicators per nation", ylabel="wall s")
    by_size.set_title("Round time against set size")
    by_size.legend(fontsize=8)
    by_size.grid(True, which="both", alpha=0.3)
    for system, nations, size in sorted({(r.system, r.nations, r.items) for r in runs}):
        pts = sorted(
            (r.workers, r.wall)
            for r in runs
            if (r.system, r.nations, r.items) == (system, nations, size)
        )
        by_cores.plot(
            [x for x, _ in pts],
            [y for _, y in pts],
            marker="o",
            ls=_style(system),
            label=f"{system}, {nations} x {size:,}",
        )
    by_cores.set(xlabel="blinding worker processes per node", ylabel="wall s", yscale="log")
    by_cores.set_xticks(sorted({r.workers for r in runs}))
    by_cores.set_title(f"Round time against cores ({os.cpu_count()}-core machine)")
    by_cores.legend(fontsize=8)
    by_cores.grid(True, which="both", alpha=0.3)
    # where this build's time goes (the before build, if any, is in the other two panels)
    largest = max(
        (r for r in runs if r.build != "before"),
        key=lambda r: (r.nations * r.items, r.workers),
        default=None,
    )
    if largest is not None and largest.timeline:
        t = [row["t"] for row in largest.timeline]
        roles = ("workers", "nodes", "coordinator", "other")
        labels = ("node blinding workers", "node main processes", "coordinator", "everything else")
        busy.stackplot(t, *([row[k] for row in largest.timeline] for k in roles), labels=labels)
        busy.axhline(os.cpu_count() or 1, color="black", lw=0.8, ls=":")
        busy.set(xlabel="seconds into the round", ylabel="cores busy", ylim=(0, None))
        busy.set_title(
            f"Where the time goes ({largest.system}):\n{largest.nations} x {largest.items:,}, "
            f"{largest.workers} worker(s)/node"
        )
        busy.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _style(system: str) -> str:
    return "--" if system.endswith("(before)") else "-"


def main(argv: list[str] | None = None) -> None:
    """Redraw the figure from compare.py's results.json files, e.g. a full run and a 3 x 10M one:

    python -m bench.plot bench/out/ab/results.json bench/out/10m/results.json --out docs/benchmarks.png
    """
    import argparse
    import json
    from dataclasses import fields

    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("results", nargs="+", type=Path)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    names = {f.name for f in fields(RoundRun)}
    runs: list[RoundRun] = []
    psi: dict[int, PsiRun] = {}
    for path in args.results:
        data = json.loads(path.read_text())
        runs += [RoundRun(**{k: v for k, v in r.items() if k in names}) for r in data["runs"]]
        psi.update({int(size): PsiRun(**r) for size, r in data.get("psi", {}).items()})
    plot(runs, psi, args.out)


if __name__ == "__main__":
    main()
