"""blindmatch as a real federation for the benchmark: every server its own process, one round timed.

The federation is set up, started and stopped with ``blindmatch.harness`` (the ``blindmatch``
commands an operator types); stores are filled directly through ``node.store``, as an import
would. A round is timed by the coordinator's own created/finished timestamps and as observed by
the operator command; CPU and memory come from ``bench.processes``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.datasets import SHARED, nation_items
from bench.processes import Timeline, busy_cpu_seconds, children_cpu, mb, sample
from blindmatch import harness
from node.store import Sighting, Store

ROUND_TIMEOUT = 3600.0
STOP_TIMEOUT = 20.0  # seconds a server gets to stop before SIGKILL (large stores take a while)


@dataclass
class RoundRun:
    nations: int
    items: int  # per nation
    workers: int  # blinding processes per node
    wall: float  # coordinator: finished - created
    observed: float  # operator command, start to exit
    cpu: float  # every server process and child, during the round
    processes: list[dict[str, Any]]  # label, peak RSS, CPU during the round
    coordinator_bytes_per_tag: float
    matches: dict[str, int]
    expected_matches: int
    load_before: float
    other_cores: float  # CPU used by everything else on the machine during the round, in cores
    timeline: list[dict[str, float]]  # cores busy per role, every TIMELINE_STEP seconds

    @property
    def peak_rss(self) -> int:
        return max(int(p["peak_rss"]) for p in self.processes)


class BenchFederation:
    """A federation under ``root`` (``blindmatch.harness``) with the benchmark's settings."""

    def __init__(self, root: Path, nations: Sequence[str], chunk_size: int | None) -> None:
        self.fed = harness.Federation(root, nations, operator="bench")
        self.fed.init()
        # the operator signs the chunk size into the round; the coordinator allows at most its own
        self.chunk_args = () if chunk_size is None else ("--chunk-size", str(chunk_size))
        if chunk_size is not None:
            harness.set_setting(self.fed.coordinator_toml, "chunk_size", chunk_size)

    def load(self, index: int, items: list[tuple[str, str]]) -> None:
        with Store.open(self.fed.store(self.fed.names[index])) as store:
            store.add_sightings(
                (Sighting(k, v, v) for k, v in items), source="bench", default_tlp="green"
            )

    def start(self, workers: int) -> None:
        for name in self.fed.names:
            harness.set_setting(self.fed.node_toml(name), "workers", workers)
        self.fed.start()

    def stop(self) -> None:
        self.fed.stop(STOP_TIMEOUT)

    def run_round(self, items: int, workers: int) -> RoundRun:
        # Labels name the process in the report; "coordinator" is how Timeline tells roles apart.
        pids = {name: server.pid for name, server in self.fed.nodes.items()}
        pids["coordinator"] = self.fed.coordinator.pid
        load_before = os.getloadavg()[0]
        before = {s.pid: s for s in sample(pids)}
        timeline = Timeline(pids)
        busy0, operator0 = busy_cpu_seconds(), children_cpu()
        t0 = time.monotonic()
        with timeline:
            done = subprocess.run(
                self.fed.round_command(*self.chunk_args),
                capture_output=True,
                text=True,
                timeout=ROUND_TIMEOUT,
            )
        observed = time.monotonic() - t0
        busy, operator = busy_cpu_seconds() - busy0, children_cpu() - operator0
        after = sample(pids)
        try:
            info = json.loads(done.stdout)
        except json.JSONDecodeError:
            raise SystemExit(f"round start failed: {done.stderr}") from None
        if info.get("state") != "done":
            raise SystemExit(f"round {info.get('id')} {info.get('state')}: {info.get('error')}")
        procs: list[dict[str, Any]] = []
        for s in after:
            old = before.get(s.pid)
            procs.append(
                {
                    "label": s.label,
                    "pid": s.pid,
                    "cpu": s.cpu - (old.cpu if old else 0.0),
                    "peak_rss": s.hwm,
                    "rss_before": old.rss if old else 0,
                }
            )
        cpu = sum(p["cpu"] for p in procs)
        coord = next(p for p in procs if p["label"] == "coordinator")
        tags = items * len(self.fed.names)
        return RoundRun(
            nations=len(self.fed.names),
            items=items,
            workers=workers,
            wall=info["finished"] - info["created"],
            observed=observed,
            cpu=cpu,
            processes=procs,
            coordinator_bytes_per_tag=(coord["peak_rss"] - coord["rss_before"]) / tags,
            matches=info["match_counts"],
            expected_matches=int(items * SHARED),
            load_before=load_before,
            # the operator command (a Python start-up and a wait) is not part of the protocol
            other_cores=max(0.0, busy - cpu - operator) / max(observed, 1e-9),
            timeline=timeline.rows,
        )


def run_federation(
    nations: list[str], size: int, cores: list[int], args: argparse.Namespace
) -> list[RoundRun]:
    """One federation with ``size`` indicators per nation, one round per ``workers`` setting."""
    root = Path(tempfile.mkdtemp(prefix=f"fed-{len(nations)}x{size}-", dir=args.out))
    print(f"{len(nations)} nations x {size:,}: federation in {root}", flush=True)
    fed = BenchFederation(root, nations, args.chunk)
    runs = []
    try:
        for i in range(len(nations)):
            fed.load(i, nation_items(i, size))
        for workers in cores:
            fed.start(workers)
            try:
                run = fed.run_round(size, workers)
            finally:
                fed.stop()
            runs.append(run)
            wrong = {n: c for n, c in run.matches.items() if c != run.expected_matches}
            print(
                f"  {workers} worker(s)/node: {run.wall:.2f} s (observed {run.observed:.2f} s), "
                f"CPU {run.cpu:.1f} s, peak RSS {mb(run.peak_rss)}, coordinator "
                f"{run.coordinator_bytes_per_tag:.0f} B/tag, other load {run.other_cores:.2f} cores"
                + (f"; WRONG match counts {wrong}" if wrong else ""),
                flush=True,
            )
    finally:
        fed.stop()
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    return runs
