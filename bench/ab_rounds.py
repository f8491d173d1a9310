"""Two builds of blindmatch, one round size, rounds alternated: what a change costs a round.

    python bench/ab_rounds.py --before ../before-tree --size 100000 --calls 4 --rounds 2

``--before`` is another checkout of this repository with its own ``.venv`` (``make install``
there). Each call starts a fresh federation of real processes from one tree (bench.blindmatch_runner
on blindmatch.demo.harness), runs ``--rounds`` rounds and stops it; calls alternate between the trees,
so both see the same machine load over the run. Prints each round's wall time (the coordinator's
own timestamps) and the medians and their ratio; ``--json`` writes them to a file.

Each call runs inside its tree through ``bench.builds`` (job ``walls``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

# Run as a script (`python bench/ab_rounds.py`): the repository root holds the bench package.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import builds

HERE = builds.HERE


def call(tree: Path, args: argparse.Namespace) -> list[float]:
    walls: list[float] = builds.call(
        tree,
        "walls",
        size=args.size,
        nations=args.nations,
        workers=args.workers,
        rounds=args.rounds,
    )
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
    args = parser.parse_args(argv)
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
