"""blindmatch as a real federation for the benchmark: every server its own process, one round timed.

The federation is set up, started and stopped with ``blindmatch.demo.harness`` (the ``blindmatch``
commands an operator types); stores are filled directly through ``node.store``, as an import
would. A round is timed by the coordinator's own created/finished timestamps and as observed by
the operator command; CPU and memory come from ``bench.processes``.

A store is filled in batches, its H(v) computed in a pool of every core as ``node import`` does
(hash once), so a 10M set never sits in memory whole; the node's policy caps, budgets and
timeouts are raised to what the run needs (the benchmark measures speed, not the policy).
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

from bench.datasets import SHARED, nation_batches
from bench.processes import Timeline, busy_cpu_seconds, children_cpu, mb, sample
from blindmatch.core.oprf import hash_indicators
from blindmatch.core.spec import Caps, Policy
from blindmatch.demo import harness
from node.budgets import BudgetPolicy
from node.pool import Blinder
from node.store import Sighting, Store
from node.store.sightings import Hasher

STOP_TIMEOUT = 20.0  # seconds a server gets to stop before SIGKILL (large stores take a while)
LOAD_BATCH = 500_000  # indicators stored per transaction when filling a store
# Generous per-element allowances, so that a 3 x 10M round (~25 min here) is never cut short
# while a lost server still fails a small run quickly.
# seconds per element and nation of the round (N x N x n) on one core, far above what an
# element costs: c + 2 secp256k1 multiplications (~30 us each) for a committee of c <= N
BLIND_ALLOWANCE = 100e-6
HASH_ALLOWANCE = 100e-6  # seconds per stored indicator a starting node may hash (missing H(v))
CALL_ALLOWANCE = 20e-6  # seconds per indicator added to a unary call's deadline (set counts)
BUDGET_ROUNDS = 8  # rounds one federation of the benchmark may run at full size


def round_timeout(nations: int, size: int) -> float:
    """Seconds a round of ``nations`` x ``size`` may take: at least an hour."""
    return max(3600.0, nations * nations * size * BLIND_ALLOWANCE)


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
    build: str = ""  # "" (the only build of the run), "after" (this tree) or "before" (--before)
    protocol: int = 1  # a build from before protocol v2 (issue 17) does not report it
    committee: int = 0  # v2's committee size; 0: every nation

    @property
    def peak_rss(self) -> int:
        return max(int(p["peak_rss"]) for p in self.processes)

    @property
    def system(self) -> str:
        """The row's name in the report and the plot."""
        return f"blindmatch ({self.build})" if self.build else "blindmatch"

    @property
    def node_bytes_per_item(self) -> dict[str, float]:
        """Each node's peak RSS (its main process, over its life) per indicator of its set."""
        return {
            str(p["label"]): int(p["peak_rss"]) / self.items
            for p in self.processes
            if p["label"] in self.matches
        }


class BenchFederation:
    """A federation under ``root`` (``blindmatch.demo.harness``) with the benchmark's settings."""

    def __init__(
        self, root: Path, nations: Sequence[str], chunk_size: int | None, committee: int = 0
    ) -> None:
        self.fed = harness.Federation(root, nations, operator="bench")
        self.fed.init()
        self.round_timeout = round_timeout(len(nations), 0)
        self.start_timeout = harness.HEALTH_TIMEOUT
        # the operator signs the chunk size into the round; the coordinator allows at most its own
        self.chunk_args: tuple[str, ...] = (
            () if chunk_size is None else ("--chunk-size", str(chunk_size))
        )
        self.committee = committee
        if committee:
            members = list(nations[:committee])
            self.chunk_args += ("--committee", ",".join(members))
            for name in nations[committee:]:  # the others join: they trust this committee
                harness.set_setting(self.fed.node_toml(name), "trusted_committee", members)
        if chunk_size is not None:
            harness.set_setting(self.fed.coordinator_toml, "chunk_size", chunk_size)

    def load(
        self, index: int, items: list[tuple[str, str]], hasher: Hasher = hash_indicators
    ) -> None:
        with Store.open(self.fed.store(self.fed.names[index])) as store:
            store.add_sightings(
                (Sighting(k, v, v) for k, v in items),
                source="bench",
                default_tlp="green",
                hasher=hasher,
            )

    def fill(self, size: int) -> None:
        """Every nation's set, ``size`` each, in batches, hashed in a pool of every core."""
        blinder = Blinder(os.cpu_count() or 1)
        try:
            for i in range(len(self.fed.names)):
                for batch in nation_batches(i, size, LOAD_BATCH):
                    self.load(i, batch, blinder.hash_all)
        finally:
            blinder.close()

    def allow(self, size: int) -> None:
        """Raise every node's caps, budgets and timeouts to what rounds of ``size`` need."""
        n = len(self.fed.names)
        self.round_timeout = round_timeout(n, size)
        caps, budgets = Policy(), BudgetPolicy()
        for name in self.fed.names:
            toml = self.fed.node_toml(name)
            for key, value in (
                ("max_own_set", max(size, caps.max_own_set)),
                ("max_partner_set", max(size, caps.max_partner_set)),
                ("max_round_elements", max(n * size, caps.max_round_elements)),
                # every round of the run charges each partner ``size``
                ("round_elements", max(BUDGET_ROUNDS * size, budgets.round_elements)),
                ("round_timeout", int(self.round_timeout)),
            ):
                harness.set_setting(toml, key, value)
        coordinator = self.fed.coordinator_toml
        limits = Caps()
        harness.set_setting(coordinator, "max_set", max(size, limits.max_set))
        harness.set_setting(coordinator, "max_total", max(n * size, limits.max_total))
        harness.set_setting(coordinator, "round_timeout", int(self.round_timeout))
        harness.set_setting(coordinator, "call_timeout", int(60 + size * CALL_ALLOWANCE))
        self.start_timeout = harness.HEALTH_TIMEOUT + size * HASH_ALLOWANCE

    def start(self, workers: int) -> None:
        for name in self.fed.names:
            harness.set_setting(self.fed.node_toml(name), "workers", workers)
        self.fed.start(timeout=self.start_timeout)

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
                timeout=self.round_timeout + 60.0,
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
            protocol=2,
            committee=self.committee,
        )


def run_federation(
    nations: list[str], size: int, cores: list[int], args: argparse.Namespace
) -> list[RoundRun]:
    """One federation with ``size`` indicators per nation, one round per ``workers`` setting."""
    root = Path(tempfile.mkdtemp(prefix=f"fed-{len(nations)}x{size}-", dir=args.out))
    committee = getattr(args, "committee", 0)
    print(
        f"{len(nations)} nations x {size:,}"
        + (f", committee of {committee}" if committee else "")
        + f": federation in {root}",
        flush=True,
    )
    fed = BenchFederation(root, nations, args.chunk, getattr(args, "committee", 0))
    runs = []
    try:
        t0 = time.monotonic()
        fed.fill(size)
        fed.allow(size)
        print(f"  stores filled in {time.monotonic() - t0:.0f} s", flush=True)
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
