"""Import throughput of each build: ``blindmatch node import`` of one CSV into a fresh node.

The CSV (``kind,value`` rows from ``bench.datasets``) is written once and imported by each
build's own CLI (``TREE/.venv/bin/python -m blindmatch.cli.main`` run in ``TREE``) into a node
directory set up as the benchmark's federations are: ``pki init``, then ``node init``. A build
with hash once computes H(v) of every new row in the import's transaction, in a blinding pool
of one process per core the import starts; one without it only stores the rows.

CPU seconds are the import process's and every descendant's (the pool's workers are reaped by
the import before it exits, so the kernel's wait4 figure holds them); psutil samples the process
tree meanwhile to show how many workers ran and how much of the CPU they took.
"""

from __future__ import annotations

import contextlib
import csv
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from bench.builds import python
from bench.datasets import nation_batches
from bench.processes import children_cpu

SAMPLE_STEP = 0.1  # seconds between samples of the import's process tree


@dataclass
class ImportRun:
    build: str  # "" (this build alone), "after" or "before"
    rows: int
    wall: float
    cpu: float  # the import process and its children
    workers: int  # child processes psutil saw
    workers_cpu: float  # CPU they had used at their last sample (a lower bound)
    peak_rss: int  # the import process, bytes

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.wall

    @property
    def rows_per_cpu_s(self) -> float:
        """Rows per second of one core: the throughput a core gives, whatever the pool size."""
        return self.rows / self.cpu


def write_csv(path: Path, rows: int) -> None:
    with path.open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["kind", "value"])
        for batch in nation_batches(0, rows, 100_000):
            out.writerows(batch)


def _cli(tree: Path, *argv: str) -> list[str]:
    return [str(python(tree)), "-m", "blindmatch.cli.main", *argv]


def _node(tree: Path, root: Path) -> Path:
    """A fresh node directory made by ``tree``'s CLI; its node.toml."""
    pki = str(root / "pki")
    for argv in (
        ("pki", "init", pki),
        ("node", "init", str(root / "node"), "--name", "aurelia", "--listen", "127.0.0.1:1"),
    ):
        more = ("--pki", pki, "--coordinator-name", "coordinator") if argv[0] == "node" else ()
        subprocess.run(_cli(tree, *argv, *more), cwd=tree, check=True, capture_output=True)
    return root / "node" / "node.toml"


def import_once(tree: Path, build: str, data: Path, rows: int) -> ImportRun:
    root = Path(tempfile.mkdtemp(prefix="import-"))
    try:
        config = _node(tree, root)
        command = _cli(tree, "node", "import", "--config", str(config), "--format", "csv")
        # This process runs nothing else meanwhile: the growth of its children's CPU is the
        # import's, with the pool workers it reaped.
        cpu0, t0 = children_cpu(), time.perf_counter()
        proc = psutil.Popen(
            [*command, "--source", "bench", str(data)],
            cwd=tree,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        seen: dict[int, float] = {}
        peak = 0
        while proc.poll() is None:
            with contextlib.suppress(psutil.Error):
                peak = max(peak, proc.memory_info().rss)
                for child in proc.children(recursive=True):
                    with contextlib.suppress(psutil.Error):
                        t = child.cpu_times()
                        seen[child.pid] = t.user + t.system
            time.sleep(SAMPLE_STEP)
        wall, cpu = time.perf_counter() - t0, children_cpu() - cpu0
        if proc.returncode != 0:
            err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            raise SystemExit(f"{tree}: node import failed: {err.strip()[-2000:]}")
        return ImportRun(build, rows, wall, cpu, len(seen), sum(seen.values()), peak)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def measure_imports(trees: dict[str, Path], rows: int, out: Path) -> list[ImportRun]:
    """Each build (label -> checkout) imports the same ``rows`` indicators, in turn."""
    data = (out / f"import-{rows}.csv").resolve()  # each build runs in its own checkout
    write_csv(data, rows)
    try:
        runs = []
        for build, tree in trees.items():
            print(f"import of {rows:,} rows, {build or 'this build'} ...", flush=True)
            run = import_once(tree, build, data, rows)
            print(
                f"  {run.wall:.2f} s, {run.rows_per_s:,.0f} rows/s; CPU {run.cpu:.2f} s "
                f"({run.workers} worker(s) {run.workers_cpu:.2f} s), "
                f"{run.rows_per_cpu_s:,.0f} rows/s per core",
                flush=True,
            )
            runs.append(run)
        return runs
    finally:
        data.unlink(missing_ok=True)
