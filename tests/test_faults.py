"""Faults mid-round, with real processes: `blindmatch node serve` and `blindmatch coordinator
serve` started as an operator would, killed with SIGKILL (or frozen with SIGSTOP), restarted.

Every node process sits behind a recording relay (tests/relay.py), so a test can also cut a
connection mid-stream. Each node holds 20,000 indicators and blinds with one worker process, so a
round lasts seconds: long enough to strike while it is routing, which the tests wait for by
following the round's progress (WatchRound), not by sleeping.

After every fault: the round fails with a reason that names what went wrong, every surviving node
drops the round and its key (its audit says how it ended), nothing is delivered anywhere, every
store is intact, and the next round succeeds.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from blindmatch import net
from blindmatch.v1 import coordinator_pb2, coordinator_pb2_grpc
from coordinator.config import CoordinatorConfig, TlsPaths, write_config
from coordinator.state import RESTART_REASON as COORDINATOR_RESTART
from node.config import render_config
from node.store import RoundAudit, Sighting, Store
from tests.pkifixtures import FederationPki
from tests.relay import Relay

NAMES = ("alpha", "bravo", "charlie")
SIZE = 20_000  # indicators per node
SHARED = 1_000  # of which every node holds the same ones
NODE_TIMEOUT = 6  # seconds a node keeps a round the coordinator is silent on
ROUND_TIMEOUT = 60  # seconds the coordinator gives a whole round
START_TIMEOUT = 30.0  # seconds a server may take to come up
T = 10.0
STRIKE_AT = 0.2  # share of the round's element-hops done when the fault is struck
LISTENING = re.compile(r"listening on 127\.0\.0\.1:(\d+)")


class Server:
    """One `blindmatch ... serve` process in its own session (with its blinding workers)."""

    def __init__(self, role: str, config: Path, log: Path) -> None:
        self.role, self.config, self.log = role, config, log
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0

    def start(self) -> int:
        offset = self.log.stat().st_size if self.log.exists() else 0
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "blindmatch.cli",
                    self.role,
                    "serve",
                    "--config",
                    str(self.config),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        end = time.monotonic() + START_TIMEOUT
        while True:
            found = LISTENING.findall(self.log.read_bytes()[offset:].decode(errors="replace"))
            if found:
                self.port = int(found[-1])
                return self.port
            if self.process.poll() is not None or time.monotonic() > end:
                raise AssertionError(f"{self.role} did not start: {self.log.read_text()[-2000:]}")
            time.sleep(0.05)

    def signal(self, sig: signal.Signals) -> None:
        assert self.process is not None
        os.killpg(self.process.pid, sig)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.signal(signal.SIGKILL)
            self.process.wait(T)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None


class Cluster:
    def __init__(self, root: Path, pki: FederationPki) -> None:
        self.root, self.pki = root, pki
        self.nodes: dict[str, Server] = {}
        self.relays: dict[str, Relay] = {}
        self.stores = {name: root / name / "store.sqlite" for name in NAMES}
        self.tls = pki.tls("ops", "operator")
        for name in NAMES:
            (root / name).mkdir()
            with Store.open(self.stores[name]) as store:
                own = [f"{name}-{i}.example" for i in range(SIZE - SHARED)]
                shared = [f"shared-{i}.example" for i in range(SHARED)]
                store.add_sightings(
                    [Sighting("domain", v, v) for v in own + shared],
                    source="feed",
                    default_tlp="amber",
                )
            self.nodes[name] = Server("node", self.write_node_config(name, 0), root / f"{name}.log")
        for name in NAMES:
            # port 0 the first time; the same port on a restart, so the relay still reaches it
            port = self.nodes[name].start()
            self.write_node_config(name, port)
            self.relays[name] = Relay(("127.0.0.1", port))
        self.coordinator = Server(
            "coordinator", self.write_coordinator_config(0), root / "coordinator.log"
        )
        self.coordinator.start()
        self.write_coordinator_config(self.coordinator.port)
        self.channel = net.open_channel(
            f"127.0.0.1:{self.coordinator.port}",
            self.tls,
            insecure=False,
            expect=net.Allow("coordinator"),
        )
        self.stub = coordinator_pb2_grpc.CoordinatorServiceStub(self.channel)
        self.wait_healthy()

    def write_node_config(self, name: str, port: int) -> Path:
        files = self.pki.files(name, "node")
        text = render_config(
            name=name,
            listen=f"127.0.0.1:{port}",
            ca=str(files.ca),
            cert=str(files.cert),
            key=str(files.key),
        )
        text = text.replace("workers = 0 ", "workers = 1 ")
        text = text.replace("round_timeout = 600 ", f"round_timeout = {NODE_TIMEOUT} ")
        path = self.root / name / "node.toml"
        path.write_text(text)
        return path

    def write_coordinator_config(self, port: int) -> Path:
        files = self.pki.files("coordinator", "coordinator")
        path = self.root / "coordinator.toml"
        path.unlink(missing_ok=True)
        write_config(
            path,
            CoordinatorConfig(
                listen=f"127.0.0.1:{port}",
                tls=TlsPaths(files.ca, files.cert, files.key),
                nodes={name: relay.address for name, relay in self.relays.items()},
                state=self.root / "coordinator.sqlite",
                call_timeout=T,
                round_timeout=ROUND_TIMEOUT,
                chunk_size=1024,
            ),
        )
        return path

    def wait_healthy(self) -> None:
        end = time.monotonic() + START_TIMEOUT
        ports = {net.Allow("coordinator"): self.coordinator.port}
        ports |= {net.Allow("node", name): s.port for name, s in self.nodes.items()}
        for expect, port in ports.items():
            address = f"127.0.0.1:{port}"
            with net.open_channel(address, self.tls, insecure=False, expect=expect) as channel:
                stub = health_pb2_grpc.HealthStub(channel)
                while True:
                    try:
                        reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                        if reply.status == health_pb2.HealthCheckResponse.SERVING:
                            break
                    except grpc.RpcError:
                        pass
                    assert time.monotonic() < end, f"port {port} never became healthy"
                    time.sleep(0.1)

    def start_round(self) -> str:
        info = self.stub.StartRound(coordinator_pb2.StartRoundRequest(nodes=list(NAMES)), timeout=T)
        round_id: str = info.id
        return round_id

    def watch(self, round_id: str) -> Iterator[coordinator_pb2.RoundInfo]:
        request = coordinator_pb2.GetRoundRequest(id=round_id)
        yield from self.stub.WatchRound(request, timeout=ROUND_TIMEOUT)

    def until_routing(self, round_id: str) -> coordinator_pb2.RoundInfo:
        """Follow the round until STRIKE_AT of its element-hops are done."""
        for info in self.watch(round_id):
            assert info.state in ("preparing", "routing"), (info.state, info.error)
            if info.hops_total and info.hops_done >= STRIKE_AT * info.hops_total:
                assert info.hops_done < info.hops_total
                return info
        raise AssertionError("the round ended before it could be struck")

    def final(self, round_id: str) -> coordinator_pb2.RoundInfo:
        *_, last = self.watch(round_id)
        return last

    def run_round(self, timeout: float = 30) -> coordinator_pb2.RoundInfo:
        """A round of every node; again while a node is still reported unreachable (gRPC waits
        before it dials a peer again after a broken connection, as an operator retrying sees)."""
        end = time.monotonic() + timeout
        while True:
            info = self.final(self.start_round())
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
        for server in [*self.nodes.values(), getattr(self, "coordinator", None)]:
            if server is not None:
                if server.alive():
                    server.signal(signal.SIGCONT)  # a frozen process cannot act on SIGKILL late
                server.kill()
        for relay in self.relays.values():
            relay.close()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, pki: FederationPki) -> Iterator[Cluster]:
    running = Cluster(tmp_path_factory.mktemp("faults"), pki)
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


def until(what: str, condition: Callable[[], Any], timeout: float) -> Any:
    end = time.monotonic() + timeout
    while not (result := condition()):
        assert time.monotonic() < end, f"not within {timeout} s: {what}"
        time.sleep(0.1)
    return result


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


def assert_next_round_succeeds(cluster: Cluster) -> None:
    info = cluster.run_round()
    assert info.state == "done", info.error
    assert dict(info.match_counts) == dict.fromkeys(NAMES, SHARED)
    assert dict(info.sizes) == dict.fromkeys(NAMES, SIZE)


# --- the faults -------------------------------------------------------------------------------


def test_a_node_killed_mid_round(healthy: Cluster) -> None:
    cluster = healthy
    before = {name: sightings_digest(path) for name, path in cluster.stores.items()}
    assert all(check == "ok" for _, check in before.values())
    round_id = cluster.start_round()
    cluster.until_routing(round_id)
    struck = time.monotonic()
    cluster.nodes["charlie"].kill()
    info = cluster.final(round_id)
    assert info.state == "failed"
    assert "charlie" in info.error, info.error  # the reason names the node that went away
    assert time.monotonic() - struck < ROUND_TIMEOUT / 2
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
    assert_next_round_succeeds(cluster)


@pytest.mark.parametrize("how", ["killed", "frozen"])
def test_the_coordinator_lost_mid_round(healthy: Cluster, how: str) -> None:
    """Killed (its connections close) or frozen (they stay open, silent): either way the nodes
    drop the round and its key after their timeout, and the coordinator marks the round failed
    when it runs again."""
    cluster = healthy
    before = {name: sightings_digest(path) for name, path in cluster.stores.items()}
    round_id = cluster.start_round()
    cluster.until_routing(round_id)
    cluster.coordinator.signal(signal.SIGKILL if how == "killed" else signal.SIGSTOP)
    struck = time.monotonic()
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
    round_id = cluster.start_round()
    at = cluster.until_routing(round_id)
    relay = cluster.relays["charlie"]
    seen = relay.forwarded
    relay.cut_now()  # the coordinator's streams to charlie break; charlie itself runs on
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
