"""Another build of blindmatch measured from this one: a job run inside the other checkout.

``call(tree, job, ...)`` runs this file with ``tree``'s ``.venv`` python and ``tree`` first on the
import path: the job's code is this file, everything it imports (``bench.blindmatch_runner``,
``blindmatch``, ``node``) is the other tree's, so the other build is measured with its own
federation code. The job's progress goes to stderr as it runs; the last line of its stdout is
its result as JSON. This module imports only the standard library at its top for that reason.

Jobs (``python bench/builds.py JOB JSON-ARGS``):

- ``rounds``: ``bench.blindmatch_runner.run_federation`` (one federation, a round per
  ``workers`` setting); the RoundRun fields of each round.
- ``walls``: one federation, ``rounds`` rounds at one ``workers`` setting; their wall seconds
  (``bench/ab_rounds.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent.parent


def python(tree: Path) -> Path:
    """The interpreter of a checkout (``make install`` there)."""
    path = tree / ".venv" / "bin" / "python"
    if not path.exists():
        raise SystemExit(f"{tree}: no {path}; run `make install` there")
    return path


def call(tree: Path, job: str, **kwargs: Any) -> Any:
    """Run ``job`` inside ``tree`` and return its result."""
    command = [str(python(tree)), str(HERE / "bench" / "builds.py"), job, json.dumps(kwargs)]
    # cwd and PYTHONPATH: `import bench`, `blindmatch`, `node` and `python -m blindmatch.cli.main` in
    # the servers it starts all resolve to ``tree``.
    env = {**os.environ, "PYTHONPATH": str(tree)}
    done = subprocess.run(
        command, cwd=tree, env=env, stdout=subprocess.PIPE, text=True, check=False
    )
    if done.returncode != 0:
        raise SystemExit(f"{tree}: `{job}` failed (exit {done.returncode}); its errors are above")
    return json.loads(done.stdout.strip().splitlines()[-1])


def rounds(nations: int, size: int, cores: list[int], out: str, chunk: int | None) -> Any:
    from bench.blindmatch_runner import run_federation
    from bench.datasets import NATION_NAMES

    args = argparse.Namespace(out=Path(out), chunk=chunk, keep=False)
    runs = run_federation(list(NATION_NAMES[:nations]), size, cores, args)
    return [asdict(r) for r in runs]


def walls(size: int, nations: int, workers: int, rounds: int) -> list[float]:
    from bench.blindmatch_runner import BenchFederation
    from bench.datasets import NATION_NAMES, nation_items

    root = Path(tempfile.mkdtemp(prefix="ab-"))
    fed = BenchFederation(root, list(NATION_NAMES[:nations]), None)
    try:
        for i in range(nations):
            fed.load(i, nation_items(i, size))
        fed.start(workers)
        out = []
        for _ in range(rounds):
            run = fed.run_round(size, workers)
            if any(c != run.expected_matches for c in run.matches.values()):
                raise SystemExit(f"wrong match counts {run.matches}")
            out.append(run.wall)
        return out
    finally:
        fed.stop()
        shutil.rmtree(root, ignore_errors=True)


JOBS: dict[str, Callable[..., Any]] = {"rounds": rounds, "walls": walls}


def main() -> int:
    job, kwargs = sys.argv[1], json.loads(sys.argv[2])
    # whatever the job prints is progress (stderr); stdout's last line is the result
    sys.stdout, real = sys.stderr, sys.stdout
    result = JOBS[job](**kwargs)
    print(json.dumps(result), file=real)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
