"""Two builds of blindmatch, one round size, rounds alternated: what a change costs a round.

    python bench/ab_rounds.py --before ../before-tree --size 100000 --calls 4 --rounds 2

``--before`` is another checkout of this repository with its own ``.venv`` (``make install``
there). Each call starts a fresh federation of real processes from one tree (bench.blindmatch_runner
on blindmatch.harness), runs ``--rounds`` rounds and stops it; calls alternate between the trees,
so both see the same machine load over the run. Prints each round's wall time (the coordinator's
own timestamps) and the medians and their ratio; ``--json`` writes them to a file.

``--one`` is what each call runs inside a tree; it prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent


def one(size: int, nations: int, workers: int, rounds: int) -> list[float]:
    """Inside one tree: a federation, ``rounds`` rounds, their wall seconds."""
    from bench.blindmatch_runner import BenchFederation
    from bench.datasets import NATION_NAMES, nation_items

    root = Path(tempfile.mkdtemp(prefix="ab-"))
    fed = BenchFederation(root, list(NATION_NAMES[:nations]), None)
    try:
        for i in range(nations):
            fed.load(i, nation_items(i, size))
        fed.start(workers)
        walls = []
        for _ in range(rounds):
            run = fed.run_round(size, workers)
            if any(c != run.expected_matches for c in run.matches.values()):
                raise SystemExit(f"wrong match counts {run.matches}")
            walls.append(run.wall)
        return walls
    finally:
        fed.stop()
        shutil.rmtree(root, ignore_errors=True)


def call(tree: Path, args: argparse.Namespace) -> list[float]:
    command = [
        str(tree / ".venv" / "bin" / "python"),
        str(HERE / "bench" / "ab_rounds.py"),
        "--one",
        *("--size", str(args.size), "--nations", str(args.nations)),
        *("--workers", str(args.workers), "--rounds", str(args.rounds)),
    ]
    # The script comes from this tree; everything it imports comes from ``tree``.
    env = {**os.environ, "PYTHONPATH": str(tree)}
    done = subprocess.run(command, cwd=tree, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{tree}: {done.stderr.strip()[-2000:]}")
    walls: list[float] = json.loads(done.stdout.strip().splitlines()[-1])
    return walls


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--before", type=Path, help="the other checkout (with its .venv)")
    parser.add_argument("--size", type=int, default=100_000)
    parser.add_argument("--nations", type=int, default=2)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--rounds", type=int, default=2, help="rounds per call")
    parser.add_argument("--calls", type=int, default=4, help="calls per tree, alternated")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        # the harness's own progress goes to stderr; stdout's last line is the result
        sys.stdout, real = sys.stderr, sys.stdout
        print(json.dumps(one(args.size, args.nations, args.workers, args.rounds)), file=real)
        return 0
    if args.before is None:
        parser.error("--before is required")
    trees = {"before": args.before.resolve(), "after": HERE}
    walls: dict[str, list[float]] = {"before": [], "after": []}
    for i in range(args.calls):
        order = ("before", "after") if i % 2 == 0 else ("after", "before")
        for label in order:
            got = call(trees[label], args)
            walls[label] += got
            print(f"{label:>6}: " + ", ".join(f"{w:.2f} s" for w in got), flush=True)
    med = {label: statistics.median(w) for label, w in walls.items()}
    ratio = med["after"] / med["before"]
    print(
        f"{args.nations} x {args.size:,}, {args.workers} worker(s)/node, "
        f"{len(walls['after'])} rounds each: before {med['before']:.2f} s, "
        f"after {med['after']:.2f} s, ratio {ratio:.3f}"
    )
    if args.json:
        args.json.write_text(
            json.dumps({"walls": walls, "medians": med, "ratio": ratio}, indent=2) + "\n"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
