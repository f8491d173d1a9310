"""Faults mid-round, with real processes: `blindmatch node serve` and `blindmatch coordinator
serve` started as an operator would (``blindmatch.demo.harness``), killed with SIGKILL (or frozen with
SIGSTOP), restarted.

Every node process sits behind a recording relay (tests/relay.py), so a test can also cut a
connection mid-stream. A test strikes mid-round without racing the round: charlie's relay holds
its traffic once the round is streaming (so the round cannot finish), and the test strikes once
the round's progress (WatchRound) says an evaluation has been answered. It waits for events, never
for a time.

After every fault: the round fails with a reason that names what went wrong, every surviving node
drops the round and its secrets (its audit says how it ended), nothing is delivered anywhere, every
store is intact, and the next round succeeds.
"""

from __future__ import annotations

import hashlib
import signal
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from blindmatch.demo import harness
from blindmatch.runtime.net import split_host_port
from blindmatch.v1 import coordinator_pb2, coordinator_pb2_grpc
from coordinator.config import load_operator_config
from coordinator.operator_cli import new_round, start_request
from coordinator.records import RESTART_REASON as COORDINATOR_RESTART
from node.store import RoundAudit, Sighting, Store
from tests.relay import Relay
from tests.waiting import until

pytestmark = pytest.mark.slow  # real server processes, killed and restarted

NAMES = ("alpha", "bravo", "charlie")
SIZE = 20_000  # indicators per node
CHUNK = 1024  # elements per chunk: each set streams in many of them
SHARED = 1_000  # of which every node holds the same ones
NODE_TIMEOUT = 6  # seconds a node keeps a round the coordinator is silent on
ROUND_TIMEOUT = 60  # seconds the coordinator gives a whole round
START_TIMEOUT = 60.0  # seconds a server may take to come up
T = 10  # seconds: the coordinator's call timeout, and the tests' deadline for one step
# Bytes through charlie's relay before it holds: past the handshake and Prepare (a few KiB), into
# the round's streams (charlie's own blinded set alone is 1.3 MB: 20,000 points of 65 bytes), so
# the round is evaluating when it holds.
HOLD_AFTER = 256 * 1024
STRUCK = "charlie"  # the node whose relay holds the round for the strike


class Cluster:
    """Three nodes behind relays and a coordinator, each a `blindmatch ... serve` process."""

    def __init__(self, root: Path) -> None:
        self.fed = harness.Federation(root, NAMES, operator="ops")
        self.relays = {name: Relay(split_host_port(self.fed.addresses[name])) for name in NAMES}
        self.fed.init(routes={name: relay.address for name, relay in self.relays.items()})
        self.nodes = self.fed.nodes
        self.coordinator = self.fed.coordinator
        self.stores = {name: self.fed.store(name) for name in NAMES}
        for name in NAMES:
            harness.set_setting(self.fed.node_toml(name), "workers", 1)
            harness.set_setting(self.fed.node_toml(name), "round_timeout", NODE_TIMEOUT)
            with Store.open(self.stores[name]) as store:
                own = [f"{name}-{i}.example" for i in range(SIZE - SHARED)]
                shared = [f"shared-{i}.example" for i in range(SHARED)]
                store.add_sightings(
                    [Sighting("domain", v, v) for v in own + shared],
                    source="feed",
                    default_tlp="amber",
                )
        for key, value in (
            ("call_timeout", T),
            ("round_timeout", ROUND_TIMEOUT),
            ("chunk_size", CHUNK),
        ):
            harness.set_setting(self.fed.coordinator_toml, key, value)
        self.fed.start(timeout=START_TIMEOUT)
        self.channel = self.fed.operator_channel()
        self.stub = coordinator_pb2_grpc.CoordinatorServiceStub(self.channel)

    def wait_healthy(self) -> None:
        self.fed.wait_healthy(timeout=START_TIMEOUT)

    def start_round(self) -> str:
        spec = new_round(NAMES, chunk_size=CHUNK)
        request = start_request(load_operator_config(self.fed.operator_toml), spec)
        info = self.stub.StartRound(request, timeout=T)
        round_id: str = info.id
        return round_id

    def start_held_round(self) -> str:
        """A round that cannot finish until ``release``: charlie's relay holds it mid-stream."""
        self.relays[STRUCK].hold_after(HOLD_AFTER)
        return self.start_round()

    def release(self) -> None:
        self.relays[STRUCK].release()

    def watch(self, round_id: str) -> Iterator[coordinator_pb2.RoundInfo]:
        request = coordinator_pb2.GetRoundRequest(id=round_id)
        yield from self.stub.WatchRound(request, timeout=ROUND_TIMEOUT)

    def until_routing(self, round_id: str) -> coordinator_pb2.RoundInfo:
        """Follow a held round until an evaluation is known to be answered (hops_done counts
        evaluations in protocol v2); it is then mid-round."""
        for info in self.watch(round_id):
            assert info.state in ("preparing", "routing"), (info.state, info.error)
            if info.hops_done > 0:
                break
        else:
            raise AssertionError("the round ended before an evaluation was answered")
        # The round cannot finish past the hold: once it holds, the round is struck mid-way.
        until("charlie's relay holds the round", lambda: self.relays[STRUCK].holding, T)
        assert info.hops_done < info.hops_total
        return info

    def final(self, round_id: str) -> coordinator_pb2.RoundInfo:
        *_, last = self.watch(round_id)
        return last

    def run_round(self) -> coordinator_pb2.RoundInfo:
        return self.final(self.start_round())

    def run_round_after_restart(self, timeout: float = 30) -> coordinator_pb2.RoundInfo:
        """A round of every node after a node restarted. While the coordinator's link to that node
        is still in gRPC's reconnect backoff (it broke when the node died), the round fails as
        "unreachable" at once, as an operator retrying sees; no event outside the coordinator
        says when the link is up again, so this is the one place that starts a round again."""
        end = time.monotonic() + timeout
        while True:
            info = self.run_round()
            if info.state == "done" or "unreachable" not in info.error:
                return info
            assert time.monotonic() < end, info.error
            time.sleep(0.5)

    def restart_coordinator(self) -> None:
        self.coordinator.start()
        self.wait_healthy()

    def close(self) -> None:
        channel = getattr(self, "channel", None)
        if channel is not None:
            channel.close()
        for relay in self.relays.values():
            relay.release()
        self.fed.stop()
        for relay in self.relays.values():
            relay.close()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    running = Cluster(tmp_path_factory.mktemp("faults"))
    try:
        yield running
    finally:
        running.close()


@pytest.fixture
def healthy(cluster: Cluster) -> Cluster:
    """Every server up, every relay passing traffic, the last round over everywhere."""
    for name, server in cluster.nodes.items():
        if server.alive():
            server.signal(signal.SIGCONT)  # a test that failed may have left it frozen
        else:
            server.start()
        cluster.relays[name].cut_after(1 << 62)
        cluster.relays[name].release()
    if cluster.coordinator.alive():
        cluster.coordinator.signal(signal.SIGCONT)
    else:
        cluster.restart_coordinator()
    cluster.wait_healthy()
    return cluster


# --- what the tests check after a fault -----------------------------------------------------------


def sightings_digest(path: Path) -> tuple[str, str]:
    """A digest of every sighting, and SQLite's own verdict on the file."""
    conn = sqlite3.connect(path)
    try:
        digest = hashlib.sha256()
        for row in conn.execute("SELECT * FROM sightings ORDER BY id"):
            digest.update(repr(row).encode())
        (check,) = conn.execute("PRAGMA integrity_check").fetchone()
        return digest.hexdigest(), check
    finally:
        conn.close()


def delivered(path: Path, round_id: str) -> int:
    conn = sqlite3.connect(path)
    try:
        (n,) = conn.execute(
            "SELECT (SELECT count(*) FROM matches WHERE round_id = ?1)"
            " + (SELECT count(*) FROM partner_counts WHERE round_id = ?1)",
            (round_id,),
        ).fetchone()
        return int(n)
    finally:
        conn.close()


def audit(cluster: Cluster, name: str, round_id: str) -> RoundAudit | None:
    with Store.open(cluster.stores[name]) as store:
        return next((r for r in store.rounds() if r.round_id == round_id), None)


def ended(cluster: Cluster, name: str, round_id: str, timeout: float) -> RoundAudit:
    """The node's audit record of the round once it no longer says 'started'."""

    def check() -> RoundAudit | None:
        entry = audit(cluster, name, round_id)
        return entry if entry is not None and entry.outcome != "started" else None

    result: RoundAudit = until(f"{name} drops round {round_id}", check, timeout)
    return result


def assert_clean_failure(
    cluster: Cluster, round_id: str, before: dict[str, tuple[str, str]]
) -> None:
    for name in NAMES:
        assert delivered(cluster.stores[name], round_id) == 0, f"{name} got a delivery"
        assert sightings_digest(cluster.stores[name]) == before[name], f"{name}'s store changed"


def assert_next_round_succeeds(
    cluster: Cluster, info: coordinator_pb2.RoundInfo | None = None
) -> None:
    info = info or cluster.run_round()
    assert info.state == "done", info.error
    assert dict(info.match_counts) == dict.fromkeys(NAMES, SHARED)
    assert dict(info.sizes) == dict.fromkeys(NAMES, SIZE)


# --- the faults -------------------------------------------------------------------------------


def test_a_node_killed_mid_round(healthy: Cluster) -> None:
    cluster = healthy
    before = {name: sightings_digest(path) for name, path in cluster.stores.items()}
    assert all(check == "ok" for _, check in before.values())
    round_id = cluster.start_held_round()
    cluster.until_routing(round_id)
    cluster.nodes["charlie"].kill()
    cluster.release()  # the coordinator now sees charlie's connection close
    info = cluster.final(round_id)
    assert info.state == "failed"
    assert "charlie" in info.error, info.error  # the reason names the node that went away
    assert "round_timeout" not in info.error  # noticed when charlie went, not at the deadline
    for name in ("alpha", "bravo"):  # the others drop the round (and its key) at once
        entry = ended(cluster, name, round_id, NODE_TIMEOUT + 5)
        assert entry.outcome in ("aborted", "failed")
    # charlie died holding the round: its audit cannot have said so ...
    killed = audit(cluster, "charlie", round_id)
    assert killed is not None and killed.outcome == "started"
    assert_clean_failure(cluster, round_id, before)
    # ... until it starts again and records that its key died with the old process
    cluster.nodes["charlie"].start()
    entry = ended(cluster, "charlie", round_id, T)
    assert (entry.outcome, entry.reason) == ("failed", "node restarted during the round")
    cluster.wait_healthy()
    assert_next_round_succeeds(cluster, cluster.run_round_after_restart())


@pytest.mark.parametrize("how", ["killed", "frozen"])
def test_the_coordinator_lost_mid_round(healthy: Cluster, how: str) -> None:
    """Killed (its connections close) or frozen (they stay open, silent): either way the nodes
    drop the round and its key after their timeout, and the coordinator marks the round failed
    when it runs again."""
    cluster = healthy
    before = {name: sightings_digest(path) for name, path in cluster.stores.items()}
    round_id = cluster.start_held_round()
    cluster.until_routing(round_id)
    cluster.coordinator.signal(signal.SIGKILL if how == "killed" else signal.SIGSTOP)
    struck = time.monotonic()
    cluster.release()
    for name in NAMES:
        # a node's clock starts at its last word from the coordinator, a little after the strike
        entry = ended(cluster, name, round_id, NODE_TIMEOUT + 10)
        assert entry.outcome == "failed"
        assert entry.reason == f"timed out: no word from the coordinator for {NODE_TIMEOUT} s"
    assert time.monotonic() - struck >= NODE_TIMEOUT - 1  # dropped by the timeout, not before
    assert_clean_failure(cluster, round_id, before)
    if how == "frozen":
        cluster.coordinator.signal(signal.SIGKILL)
    cluster.coordinator.process.wait(T)  # type: ignore[union-attr]
    cluster.restart_coordinator()
    info = cluster.stub.GetRound(coordinator_pb2.GetRoundRequest(id=round_id), timeout=T)
    assert (info.state, info.error) == ("failed", COORDINATOR_RESTART)
    assert info.finished >= info.created
    assert_next_round_succeeds(cluster)


def test_a_connection_cut_mid_stream(healthy: Cluster) -> None:
    cluster = healthy
    before = {name: sightings_digest(path) for name, path in cluster.stores.items()}
    round_id = cluster.start_held_round()
    at = cluster.until_routing(round_id)
    relay = cluster.relays["charlie"]
    seen = relay.forwarded
    relay.cut_now()  # the coordinator's streams to charlie break; charlie itself runs on
    cluster.release()  # new connections (the coordinator's Abort, the next round) pass
    info = cluster.final(round_id)
    assert info.state == "failed"
    assert "charlie" in info.error, info.error
    assert info.hops_done >= at.hops_done and relay.forwarded >= seen
    for name in NAMES:  # charlie included: an Abort, or its own timeout, ends the round there
        entry = ended(cluster, name, round_id, NODE_TIMEOUT + 10)
        assert entry.outcome in ("aborted", "failed")
    assert cluster.nodes["charlie"].alive()
    assert_clean_failure(cluster, round_id, before)
    assert_next_round_succeeds(cluster)
