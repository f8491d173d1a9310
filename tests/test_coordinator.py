"""The coordinator: its state store, its config files, its service and round driver, its CLI.

Rounds run for real: gRPC over mTLS on 127.0.0.1, real nodes (``node.server``) with their own
SQLite stores, and a coordinator started from a config as ``blindmatch coordinator serve`` does.
"""

from __future__ import annotations

import argparse
import json
import re
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import pytest

from blindmatch.cli.tomlconfig import ConfigError, TlsPaths
from blindmatch.core.errors import UnknownRound
from blindmatch.core.identity import Identity, identity_of
from blindmatch.core.oprf import LAMBDA
from blindmatch.core.spec import Caps, Policy
from blindmatch.core.states import SchedulePhase
from blindmatch.runtime.net import Allow, load_tls, open_channel
from blindmatch.v1 import coordinator_pb2, coordinator_pb2_grpc
from coordinator import cli, operator_cli
from coordinator.config import (
    CoordinatorConfig,
    OperatorConfig,
    load_config,
    load_operator_config,
    write_config,
    write_operator_config,
)
from coordinator.driver import STOP_REASON
from coordinator.records import (
    MIGRATIONS,
    RESTART_REASON,
    MemoryRoundStore,
    RoundBoard,
    RoundRecord,
    RoundStore,
    ScheduleRecord,
    SqliteRoundStore,
    StateError,
)
from coordinator.service import RunningCoordinator, start
from node.server import RunningNode
from tests import federation
from tests.federation import Federation, Setup, domains, held, refusing_address
from tests.pkifixtures import FederationPki
from tests.waiting import until

TIMEOUT = 30  # seconds: generous deadline for any single wait in these tests

# --- the state store: one suite, both implementations -----------------------------------------


def record(round_id: str, created: float, state: str = "preparing", **changes: Any) -> RoundRecord:
    return RoundRecord(
        id=round_id,
        participants=("alpha", "beta"),
        mode="pairwise",
        threshold=None,
        kinds=("domain", "ipv4"),
        operator="ops",
        created=created,
        state=state,
        **changes,
    )


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RoundStore]:
    s: RoundStore = (
        MemoryRoundStore() if request.param == "memory" else SqliteRoundStore(tmp_path / "c.sqlite")
    )
    yield s
    s.close()


def test_store_saves_and_returns_every_field(store: RoundStore) -> None:
    full = record(
        "r1",
        100.5,
        "done",
        finished=130.25,
        sizes={"alpha": 10, "beta": 7},
        match_counts={"alpha": 3, "beta": 3},
        hops_done=17,
        hops_total=17,
    )
    store.save(full)
    assert store.get("r1") == full
    assert store.get("nope") is None
    failed = replace(full, id="r2", mode="threshold", threshold=2, state="failed", error="why")
    store.save(failed)
    assert store.get("r2") == failed


def test_store_replaces_a_record_with_the_same_id(store: RoundStore) -> None:
    store.save(record("r1", 1.0))
    store.save(record("r1", 1.0, "routing", hops_done=5, hops_total=9))
    got = store.get("r1")
    assert got is not None and (got.state, got.hops_done) == ("routing", 5)
    assert len(store.recent(10)) == 1


def test_store_lists_newest_first_up_to_the_limit(store: RoundStore) -> None:
    for i, created in enumerate([30.0, 10.0, 50.0, 20.0, 40.0]):
        store.save(record(f"r{i}", created))
    assert [r.created for r in store.recent(3)] == [50.0, 40.0, 30.0]
    assert len(store.recent(100)) == 5


def test_store_fails_only_unfinished_rounds(store: RoundStore) -> None:
    store.save(record("prep", 1.0, "preparing"))
    store.save(record("rout", 2.0, "routing"))
    store.save(record("deli", 3.0, "delivering"))
    done = record("done", 4.0, "done", finished=5.0)
    store.save(done)
    bad = record("fail", 5.0, "failed", finished=6.0, error="earlier")
    store.save(bad)
    assert sorted(store.fail_unfinished("gone")) == ["deli", "prep", "rout"]
    for rid in ("prep", "rout", "deli"):
        r = store.get(rid)
        assert r is not None and r.state == "failed" and r.error == "gone" and r.finished
    assert store.get("done") == done
    assert store.get("fail") == bad


def test_schedules_are_stored_as_signed(store: RoundStore) -> None:
    a = ScheduleRecord("a", "nightly", "ops", b"order", b"sig", b"cert", created=1.0)
    b = replace(a, id="b", created=2.0, last_run=3, runs=2, skipped=1, last_round="b-3")
    store.save_schedule(b)
    store.save_schedule(a)
    assert store.schedules() == [a, b]
    cancelled = replace(a, state=SchedulePhase.CANCELLED, cancelled_by="other-ops")
    store.save_schedule(cancelled)
    assert store.schedules() == [cancelled, b]


def test_reopening_the_state_fails_rounds_left_running(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite"
    first = SqliteRoundStore(path)
    assert first.failed_on_open == []
    first.save(record("running", 1.0, "routing", sizes={"alpha": 3, "beta": 4}))
    first.save(record("done", 2.0, "done", finished=3.0, match_counts={"alpha": 1, "beta": 1}))
    first.close()

    second = SqliteRoundStore(path)
    assert second.failed_on_open == ["running"]
    running = second.get("running")
    assert running is not None
    assert (running.state, running.error) == ("failed", RESTART_REASON)
    assert running.sizes == {"alpha": 3, "beta": 4}
    done = second.get("done")
    assert done is not None and done.state == "done" and done.error is None
    second.close()

    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.close()


def test_a_state_file_from_a_newer_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite"
    SqliteRoundStore(path).close()
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    db.close()
    with pytest.raises(StateError, match="newer than this blindmatch understands"):
        SqliteRoundStore(path)


def test_an_unopenable_state_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(StateError, match=r"cannot open the coordinator state file .*no-dir"):
        SqliteRoundStore(tmp_path / "no-dir" / "c.sqlite")


def test_board_watch_follows_a_round_until_it_is_final() -> None:
    board = RoundBoard(MemoryRoundStore())
    first = record("r", 1.0)
    board.publish(first)
    seen: list[RoundRecord] = []
    watcher = threading.Thread(target=lambda: seen.extend(board.watch("r", lambda: True)))
    watcher.start()
    until("the watcher sees the first record", lambda: len(seen) == 1, TIMEOUT)
    routing = replace(first, state="routing", hops_total=10)
    board.publish(routing)
    until("the watcher sees the routing record", lambda: len(seen) == 2, TIMEOUT)
    done = replace(routing, state="done", finished=2.0, hops_done=10)
    board.publish(done)
    watcher.join(TIMEOUT)
    assert not watcher.is_alive()
    assert seen == [first, routing, done]
    assert list(board.watch("r", lambda: True)) == [done]  # a final round: one record, then end
    with pytest.raises(UnknownRound):
        next(board.watch("missing", lambda: True))


def test_board_watch_ends_when_the_watcher_is_no_longer_wanted() -> None:
    board = RoundBoard(MemoryRoundStore())
    board.publish(record("r", 1.0))
    wanted = threading.Event()
    wanted.set()
    seen: list[RoundRecord] = []
    watcher = threading.Thread(target=lambda: seen.extend(board.watch("r", wanted.is_set)))
    watcher.start()
    until("the watcher sees the record", lambda: len(seen) == 1, TIMEOUT)
    wanted.clear()
    board.wake()
    watcher.join(TIMEOUT)
    assert not watcher.is_alive() and len(seen) == 1


# --- config files -------------------------------------------------------------------------------


def test_coordinator_config_round_trips_with_paths_relative_to_the_file(tmp_path: Path) -> None:
    conf_dir = tmp_path / "coord"
    conf_dir.mkdir()
    config = CoordinatorConfig(
        name="hub",
        listen="127.0.0.1:7000",
        tls=TlsPaths(ca=conf_dir / "ca.pem", cert=conf_dir / "hub.pem", key=conf_dir / "hub.key"),
        nodes={"alpha": "10.0.0.1:7001", "beta": "[::1]:7002"},
        state=conf_dir / "state" / "hub.sqlite",
        call_timeout=12.5,
        round_timeout=600,
        chunk_size=512,
        operators=("ops", "night-shift"),
        caps=Caps(max_set=1000, max_total=3000),
    )
    path = conf_dir / "coordinator.toml"
    write_config(path, config)
    text = path.read_text()
    assert 'ca = "ca.pem"' in text and 'state = "state/hub.sqlite"' in text
    assert text.count("#") > 10  # commented
    assert load_config(path) == config
    with pytest.raises(ConfigError, match="refusing to overwrite"):
        write_config(path, config)


def test_coordinator_config_defaults(tmp_path: Path) -> None:
    path = tmp_path / "coordinator.toml"
    path.write_text(
        'listen = "127.0.0.1:7000"\n[tls]\nca = "ca.pem"\ncert = "c.pem"\nkey = "c.key"\n'
        '[nodes]\nalpha = "127.0.0.1:7001"\n'
    )
    config = load_config(path)
    assert config.name == "coordinator"
    assert config.state == tmp_path / "coordinator.sqlite"
    assert (config.call_timeout, config.round_timeout, config.chunk_size) == (60, 3600, 4096)
    assert config.operators == ("*",)
    assert config.caps == Caps()
    assert config.tls.cert == tmp_path / "c.pem"


_TLS = '[tls]\nca = "a"\ncert = "b"\nkey = "c"\n'
_LISTEN = 'listen = "127.0.0.1:7000"\n'


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (_TLS + "[nodes]\n", "listen is missing"),
        (_LISTEN + "[nodes]\n", "tls is missing"),
        (_LISTEN + _TLS, "nodes is missing"),
        (_LISTEN + '[tls]\nca = "a"\ncert = "b"\n[nodes]\n', "tls.key is missing"),
        ('listen = "nowhere"\n' + _TLS + "[nodes]\n", "listen is not host:port"),
        (_LISTEN + 'call_timeout = "soon"\n' + _TLS + "[nodes]\n", "call_timeout must be a number"),
        (_LISTEN + "round_timeout = 0\n" + _TLS + "[nodes]\n", "round_timeout must be a positive"),
        (_LISTEN + "chunk_size = 100000\n" + _TLS + "[nodes]\n", "chunk_size must be between 1"),
        (_LISTEN + "chunk_size = true\n" + _TLS + "[nodes]\n", "chunk_size must be an integer"),
        (_LISTEN + 'name = "Bad Name"\n' + _TLS + "[nodes]\n", "name 'Bad Name' is not a valid"),
        (_LISTEN + 'operators = ["x y"]\n' + _TLS + "[nodes]\n", "operators entry 'x y'"),
        (_LISTEN + "operators = []\n" + _TLS + "[nodes]\n", "operators names nobody"),
        (_LISTEN + "listen_on = 1\n" + _TLS + "[nodes]\n", "unknown key listen_on"),
        (_LISTEN + _TLS + "[caps]\nmax_sets = 1\n[nodes]\n", r"unknown key \[caps\] max_sets"),
        (_LISTEN + _TLS + "[caps]\nmax_set = -1\n[nodes]\n", "caps.max_set must be at least 0"),
        (_LISTEN + _TLS + '[nodes]\nalpha = "a:b"\n', "nodes.alpha is not host:port"),
        (_LISTEN + _TLS + "[nodes]\nalpha = 7\n", "nodes.alpha must be a string"),
        (_LISTEN + _TLS + '[nodes]\n"A B" = "h:1"\n', "nodes.A B is not a valid node name"),
        ("listen = [", "is not valid TOML"),
    ],
)
def test_coordinator_config_errors_name_the_file_and_the_key(
    tmp_path: Path, text: str, problem: str
) -> None:
    path = tmp_path / "coordinator.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(path) in str(err.value)
    assert re.search(problem, str(err.value)), str(err.value)


def test_missing_config_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"config file .*none\.toml does not exist"):
        load_config(tmp_path / "none.toml")


def test_operator_config_round_trips(tmp_path: Path) -> None:
    config = OperatorConfig(
        name="ops",
        coordinator="coord.example:7000",
        tls=TlsPaths(ca=tmp_path / "ca.pem", cert=tmp_path / "ops.pem", key=tmp_path / "ops.key"),
    )
    path = tmp_path / "operator.toml"
    write_operator_config(path, config)
    assert load_operator_config(path) == config
    path.write_text(path.read_text().replace("coordinator =", "coordinater ="))
    with pytest.raises(ConfigError, match="unknown key coordinater; known keys: coordinator, "):
        load_operator_config(path)
    path.write_text(path.read_text().replace("coordinater =", "# coordinator ="))
    with pytest.raises(ConfigError, match="coordinator is missing"):
        load_operator_config(path)


# --- a federation on loopback: real nodes, a real coordinator ---------------------------------

COMMON = [f"c{i}.example" for i in range(10)]  # every nation of alpha, beta, gamma holds these
AB = [f"ab{i}.example" for i in range(5)]  # alpha and beta
BG = [f"bg{i}.example" for i in range(3)]  # beta and gamma
DOMAINS = {
    "alpha": COMMON + AB + [f"a{i}.example" for i in range(20)],
    "beta": COMMON + AB + BG + [f"b{i}.example" for i in range(17)],
    "gamma": COMMON + BG + [f"g{i}.example" for i in range(22)],
    # delta only matches with alpha, and takes at most 10 elements of any partner's set
    "delta": COMMON[:3] + [f"d{i}.example" for i in range(5)],
}
POLICIES = {"delta": Policy(partners=frozenset({"alpha"}), max_partner_set=10)}
SET_SIZE = 35  # alpha, beta and gamma each hold 35 indicators


@pytest.fixture(scope="module")
def nodes(
    pki: FederationPki, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, RunningNode]]:
    """The nodes only: the tests start the coordinators they need (coord, serving)."""
    setup = Setup(
        list(DOMAINS),
        held(domains(DOMAINS)),
        policies=POLICIES,
        coordinator=False,
        node_timeout=60,
    )
    with Federation(tmp_path_factory.mktemp("nodes"), pki, setup) as running:
        yield running.nodes


def coordinator_config(
    pki: FederationPki, home: Path, registry: Mapping[str, str], **changes: Any
) -> CoordinatorConfig:
    files = pki.files("coordinator", "coordinator")
    config = CoordinatorConfig(
        listen="127.0.0.1:0",
        tls=TlsPaths(ca=files.ca, cert=files.cert, key=files.key),
        nodes=dict(registry),
        state=home / "coordinator.sqlite",
        chunk_size=4,  # many requests per set, so they pipeline through the committee
    )
    return replace(config, **changes)


@contextmanager
def serving(config: CoordinatorConfig, *, insecure: bool = False) -> Iterator[RunningCoordinator]:
    running = start(config, insecure=insecure)
    try:
        yield running
    finally:
        running.stop()


def registry_of(nodes: Mapping[str, RunningNode], ghost: str) -> dict[str, str]:
    registry = {name: f"127.0.0.1:{node.port}" for name, node in nodes.items()}
    registry["ghost"] = ghost  # registered, but nothing listens there
    return registry


@pytest.fixture(scope="module")
def coord(
    pki: FederationPki, nodes: dict[str, RunningNode], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningCoordinator]:
    with refusing_address() as ghost:
        registry = registry_of(nodes, ghost)
        config = coordinator_config(pki, tmp_path_factory.mktemp("coord"), registry)
        with serving(config) as running:
            yield running


COORDINATOR = Allow("coordinator")


@contextmanager
def operator(
    pki: FederationPki, port: int, name: str = "ops", role: str = "operator"
) -> Iterator[coordinator_pb2_grpc.CoordinatorServiceStub]:
    channel = open_channel(
        f"127.0.0.1:{port}", pki.tls(name, role), insecure=False, expect=COORDINATOR
    )
    try:
        yield coordinator_pb2_grpc.CoordinatorServiceStub(channel)
    finally:
        channel.close()


@pytest.fixture
def ops(
    pki: FederationPki, coord: RunningCoordinator
) -> Iterator[coordinator_pb2_grpc.CoordinatorServiceStub]:
    with operator(pki, coord.port) as stub:
        yield stub


_PKI: list[FederationPki] = []  # the session's PKI, whose operator "ops" signs the test rounds


@pytest.fixture(autouse=True)
def _operator_key(pki: FederationPki) -> None:
    _PKI[:] = [pki]


def start_request(
    pki: FederationPki, nodes: list[str], **request: Any
) -> coordinator_pb2.StartRoundRequest:
    """As ``round start`` signs it, in chunks of 4 (the coordinator's chunk_size here)."""
    return federation.start_request(pki, nodes, **{"chunk_size": 4, **request})


def run_round(
    stub: coordinator_pb2_grpc.CoordinatorServiceStub, nodes: list[str], **request: Any
) -> list[coordinator_pb2.RoundInfo]:
    """Start a round and watch it to its end; every RoundInfo the watch streamed."""
    info = stub.StartRound(start_request(_PKI[0], nodes, **request), timeout=TIMEOUT)
    assert info.state in ("preparing", "routing", "delivering", "done", "failed")
    updates = list(stub.WatchRound(coordinator_pb2.GetRoundRequest(id=info.id), timeout=TIMEOUT))
    assert updates and all(u.id == info.id for u in updates)
    return updates


PHASES = ["preparing", "routing", "delivering", "done"]


def test_a_pairwise_round_runs_end_to_end(
    ops: coordinator_pb2_grpc.CoordinatorServiceStub, nodes: dict[str, RunningNode]
) -> None:
    updates = run_round(ops, ["alpha", "beta", "gamma"])
    final = updates[-1]
    assert final.state == "done", final.error
    states = [u.state for u in updates]
    assert states == sorted(states, key=PHASES.index)  # phases only move forward
    assert dict(final.sizes) == {"alpha": SET_SIZE, "beta": SET_SIZE, "gamma": SET_SIZE}
    assert dict(final.match_counts) == {"alpha": 15, "beta": 18, "gamma": 13}
    # evaluations: each owner's set and its LAMBDA checks, answered by the 2 other members
    assert final.hops_total == 3 * (SET_SIZE + LAMBDA) * 2
    assert final.hops_done == final.hops_total
    assert final.operator == "ops" and final.mode == "pairwise" and not final.error
    assert final.created <= final.finished <= time.time()
    assert list(final.participants) == ["alpha", "beta", "gamma"]

    # what each node recorded is what it shares, with whom
    alpha = {m.value: tuple(m.partners) for m in nodes["alpha"].store.matches(final.id)}
    assert alpha == {**dict.fromkeys(COMMON, ("beta", "gamma")), **dict.fromkeys(AB, ("beta",))}
    gamma = {m.value: tuple(m.partners) for m in nodes["gamma"].store.matches(final.id)}
    assert gamma == {**dict.fromkeys(COMMON, ("alpha", "beta")), **dict.fromkeys(BG, ("beta",))}
    assert ops.GetRound(coordinator_pb2.GetRoundRequest(id=final.id), timeout=TIMEOUT) == final


@pytest.mark.parametrize(
    ("request_", "counts"),
    [
        ({"mode": "threshold", "threshold": 3}, {"alpha": 10, "beta": 10, "gamma": 10}),
        ({"mode": "threshold", "threshold": 2}, {"alpha": 15, "beta": 18, "gamma": 13}),
        ({"mode": "count"}, {"alpha": 25, "beta": 28, "gamma": 23}),
    ],
)
def test_threshold_and_count_rounds(
    ops: coordinator_pb2_grpc.CoordinatorServiceStub,
    nodes: dict[str, RunningNode],
    request_: dict[str, Any],
    counts: dict[str, int],
) -> None:
    final = run_round(ops, ["alpha", "beta", "gamma"], **request_)[-1]
    assert final.state == "done", final.error
    assert dict(final.match_counts) == counts
    assert final.threshold == request_.get("threshold", 0)
    if request_["mode"] == "count":
        shared = {p.partner: p.count for p in nodes["beta"].store.partner_counts(final.id)}
        assert shared == {"alpha": 15, "gamma": 13}
    else:
        got = {m.value: m for m in nodes["beta"].store.matches(final.id)}
        # held by at least the threshold; no count, as the round did not ask for counts
        assert all(m.count is None and m.threshold == request_["threshold"] for m in got.values())
        assert len(got) == counts["beta"]


def test_a_round_of_empty_sets_is_refused_by_every_node(
    ops: coordinator_pb2_grpc.CoordinatorServiceStub, nodes: dict[str, RunningNode]
) -> None:
    """Protocol v2 takes part with a set or not at all: a node with nothing of the round's kinds
    refuses it at Prepare, and the round fails naming every such node."""
    final = run_round(ops, ["alpha", "beta"], kinds=["ipv4"])[-1]  # the nodes hold only domains
    assert final.state == "failed"
    assert final.error == "; ".join(
        f"{name} refused: PERMISSION_DENIED: {name} has no indicator of the round's kinds to "
        "take part with (ipv4); start the round without it"
        for name in ("alpha", "beta")
    )
    assert not final.match_counts
    assert list(final.kinds) == ["ipv4"]
    assert nodes["alpha"].rounds.active() == []
    assert nodes["beta"].rounds.active() == []


def test_a_node_refusing_to_prepare_fails_the_round_and_aborts_the_others(
    ops: coordinator_pb2_grpc.CoordinatorServiceStub, nodes: dict[str, RunningNode]
) -> None:
    final = run_round(ops, ["alpha", "beta", "delta"])[-1]
    assert final.state == "failed"
    assert (
        "delta refused: PERMISSION_DENIED: policy of delta does not allow matching with beta"
        in final.error
    )
    assert final.finished >= final.created
    # alpha and beta had prepared (drawn their shares); Abort reached them before the round was failed
    assert nodes["alpha"].rounds.active() == []
    assert nodes["beta"].rounds.active() == []


def test_a_node_refusing_mid_round_fails_it_and_aborts_the_others(
    ops: coordinator_pb2_grpc.CoordinatorServiceStub, nodes: dict[str, RunningNode]
) -> None:
    # delta accepts alpha as a partner but not a partner set of 35 elements: it prepares, signs
    # the transcript, and refuses at Begin, where sizes meet its caps
    final = run_round(ops, ["alpha", "delta"])[-1]
    assert final.state == "failed"
    cap = POLICIES["delta"].max_partner_set
    assert final.error == (
        f"delta refused Begin: RESOURCE_EXHAUSTED: alpha's set of {SET_SIZE} elements exceeds "
        f"this node's cap of {cap} per partner (policy max_partner_set)"
    )
    assert dict(final.sizes) == {"alpha": SET_SIZE, "delta": 8}
    assert not final.match_counts
    assert nodes["alpha"].rounds.active() == []
    assert nodes["delta"].rounds.active() == []


def test_an_unreachable_node_fails_the_round(
    ops: coordinator_pb2_grpc.CoordinatorServiceStub,
    coord: RunningCoordinator,
    nodes: dict[str, RunningNode],
) -> None:
    final = run_round(ops, ["alpha", "ghost"])[-1]
    assert final.state == "failed"
    address = coord.coordinator.links.addresses["ghost"]
    assert f"node ghost unreachable at {address}" in final.error
    assert nodes["alpha"].rounds.active() == []


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (
            {"nodes": ["alpha", "nobody", "nemo"]},
            "unknown node(s) nobody, nemo; this coordinator's registry knows: "
            "alpha, beta, delta, gamma, ghost",
        ),
        ({"nodes": ["alpha"]}, "a round needs 2 to 64 participants, got 1"),
        ({"nodes": ["alpha", "alpha"]}, "a participant is named twice"),
        ({"nodes": ["alpha", "beta"], "mode": "tally"}, "unknown mode 'tally'"),
        ({"nodes": ["alpha", "beta"], "threshold": 2}, "a threshold only applies to threshold"),
        ({"nodes": ["alpha", "beta"], "mode": "threshold"}, "threshold must be between 2 and 2"),
        ({"nodes": ["alpha", "beta"], "kinds": ["domain", "phone"]}, "unknown or no kinds: phone"),
    ],
)
def test_start_round_refuses_invalid_rounds(
    ops: coordinator_pb2_grpc.CoordinatorServiceStub, request_: dict[str, Any], message: str
) -> None:
    before = len(ops.ListRounds(coordinator_pb2.ListRoundsRequest(), timeout=TIMEOUT).rounds)
    with pytest.raises(grpc.RpcError) as err:
        ops.StartRound(start_request(_PKI[0], **request_), timeout=TIMEOUT)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in err.value.details()
    after = len(ops.ListRounds(coordinator_pb2.ListRoundsRequest(), timeout=TIMEOUT).rounds)
    assert after == before  # nothing was recorded


def test_unknown_rounds_are_not_found(ops: coordinator_pb2_grpc.CoordinatorServiceStub) -> None:
    for call in (ops.GetRound, lambda r, timeout: list(ops.WatchRound(r, timeout=timeout))):
        with pytest.raises(grpc.RpcError) as err:
            call(coordinator_pb2.GetRoundRequest(id="f00"), timeout=TIMEOUT)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        assert "no round with id 'f00'" in err.value.details()


def test_rounds_are_listed_newest_first(ops: coordinator_pb2_grpc.CoordinatorServiceStub) -> None:
    first = run_round(ops, ["beta", "ghost"])[-1]
    second = run_round(ops, ["gamma", "ghost"])[-1]
    listed = ops.ListRounds(coordinator_pb2.ListRoundsRequest(), timeout=TIMEOUT).rounds
    assert [r.id for r in listed[:2]] == [second.id, first.id]
    assert listed[0] == second
    one = ops.ListRounds(coordinator_pb2.ListRoundsRequest(limit=1), timeout=TIMEOUT).rounds
    assert [r.id for r in one] == [second.id]


def test_only_operators_may_call_the_coordinator(
    pki: FederationPki, coord: RunningCoordinator, tmp_path: Path
) -> None:
    request = coordinator_pb2.ListRoundsRequest()
    with operator(pki, coord.port, "alpha", "node") as as_node, pytest.raises(grpc.RpcError) as err:
        as_node.ListRounds(request, timeout=TIMEOUT)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "requires operator/*; the caller presented node/alpha" in err.value.details()

    config = coordinator_config(pki, tmp_path, {}, operators=("ops",))
    with serving(config) as named:
        with operator(pki, named.port, "ops") as ops:
            assert ops.ListRounds(request, timeout=TIMEOUT).rounds == []
        with operator(pki, named.port, "intruder") as intruder, pytest.raises(grpc.RpcError) as err:
            intruder.ListRounds(request, timeout=TIMEOUT)
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "operator/ops" in err.value.details()


@contextmanager
def black_hole() -> Iterator[str]:
    """An address that accepts TCP connections and never says a word."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        yield f"127.0.0.1:{server.getsockname()[1]}"


@pytest.mark.slow
def test_a_silent_node_times_out(
    pki: FederationPki, nodes: dict[str, RunningNode], tmp_path: Path
) -> None:
    with black_hole() as hole:
        registry = {"alpha": f"127.0.0.1:{nodes['alpha'].port}", "hole": hole}
        config = coordinator_config(pki, tmp_path, registry, call_timeout=0.5)
        with serving(config) as running, operator(pki, running.port) as stub:
            began = time.monotonic()
            final = run_round(stub, ["alpha", "hole"])[-1]
            assert time.monotonic() - began < 10
    assert final.state == "failed"
    assert "timeout after 0.5 s waiting for Prepare of node hole" in final.error
    assert nodes["alpha"].rounds.active() == []


@pytest.mark.slow
def test_stopping_the_coordinator_fails_and_aborts_rounds_in_flight(
    pki: FederationPki, nodes: dict[str, RunningNode], tmp_path: Path
) -> None:
    with black_hole() as hole:
        registry = {"alpha": f"127.0.0.1:{nodes['alpha'].port}", "hole": hole}
        config = coordinator_config(pki, tmp_path, registry, call_timeout=60)
        running = start(config, insecure=False)
        try:
            with operator(pki, running.port) as stub:
                info = stub.StartRound(start_request(pki, ["alpha", "hole"]), timeout=TIMEOUT)
                # alpha has prepared (drawn its share); the hole never answers
                until("alpha prepares", lambda: info.id in nodes["alpha"].rounds.active(), TIMEOUT)
        finally:
            began = time.monotonic()
            running.stop()
            assert time.monotonic() - began < 15
    assert nodes["alpha"].rounds.active() == []
    state = SqliteRoundStore(config.state)
    stopped = state.get(info.id)
    state.close()
    assert stopped is not None
    assert (stopped.state, stopped.error) == ("failed", STOP_REASON)
    assert state.failed_on_open == []  # it was recorded as failed before the process ended


def test_the_certificate_must_match_the_configured_name(pki: FederationPki, tmp_path: Path) -> None:
    config = coordinator_config(pki, tmp_path, {}, name="hub")
    with pytest.raises(ConfigError, match="is for coordinator/coordinator, but this coordinator"):
        start(config, insecure=False)


def test_insecure_mode_serves_plaintext_on_loopback(pki: FederationPki, tmp_path: Path) -> None:
    config = coordinator_config(pki, tmp_path, {"a": "127.0.0.1:1", "b": "127.0.0.1:2"})
    with serving(config, insecure=True) as running:
        channel = open_channel(f"127.0.0.1:{running.port}", None, insecure=True, expect=COORDINATOR)
        stub = coordinator_pb2_grpc.CoordinatorServiceStub(channel)
        info = stub.StartRound(start_request(pki, ["a", "b"]), timeout=TIMEOUT)
        channel.close()
    assert info.operator == "(insecure)"


# --- CLI ----------------------------------------------------------------------------------------


def test_cli_init_writes_a_config_and_a_certificate(
    own_pki: FederationPki,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)  # a relative COORD_DIR, as typed on a command line
    home = tmp_path / "coord"
    args = argparse.Namespace(
        coord_dir="coord",
        listen="10.1.2.3:7000",
        pki=str(own_pki.dir),
        node=["alpha=10.1.2.4:7001", "beta=[::1]:7002"],
        name="hub",
    )
    assert cli.cmd_init(args) == 0
    config = load_config(home / "coordinator.toml")
    assert (config.name, config.listen) == ("hub", "10.1.2.3:7000")
    assert config.nodes == {"alpha": "10.1.2.4:7001", "beta": "[::1]:7002"}
    assert config.tls == TlsPaths(home / "ca.pem", home / "hub.pem", home / "hub.key")
    assert config.state == home / "coordinator.sqlite"
    assert 'cert = "hub.pem"' in (home / "coordinator.toml").read_text()  # the dir can move
    tls = load_tls(config.tls.ca, config.tls.cert, config.tls.key)
    assert identity_of(tls.cert) == Identity("coordinator", "hub")
    assert "coordinator serve --config" in capsys.readouterr().out

    assert cli.cmd_init(args) == 2  # an existing config is bad input, as in `node init`
    assert "refusing to overwrite" in capsys.readouterr().err
    bad = argparse.Namespace(**{**vars(args), "coord_dir": str(tmp_path / "x"), "node": ["alpha"]})
    assert cli.cmd_init(bad) == 2
    assert "expected NAME=HOST:PORT" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def operator_toml(pki: FederationPki, home: Path, name: str, coordinator: str) -> str:
    args = argparse.Namespace(
        op_dir=str(home),
        name=name,
        coordinator=coordinator,
        coordinator_name="coordinator",
        pki=str(pki.dir),
    )
    assert operator_cli.cmd_operator_init(args) == 0
    return str(home / "operator.toml")


def round_args(config: str, nodes: list[str], **changes: Any) -> argparse.Namespace:
    defaults: dict[str, Any] = {
        "config": config,
        "nodes": nodes,
        "mode": "pairwise",
        "threshold": None,
        "kinds": None,
        "chunk_size": 4,  # the test coordinator forwards at most 4 elements per chunk
        "wait": True,
        "json": True,
        "insecure": False,
    }
    return argparse.Namespace(**{**defaults, **changes})


def test_cli_round_start_waits_and_prints_one_json_object(
    pki: FederationPki,
    coord: RunningCoordinator,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = operator_toml(pki, tmp_path / "op", "cli-ops", f"127.0.0.1:{coord.port}")
    assert load_operator_config(config).name == "cli-ops"
    capsys.readouterr()

    assert operator_cli.cmd_round_start(round_args(config, ["alpha", "beta"])) == 0
    out = capsys.readouterr()
    result = json.loads(out.out)
    assert result["state"] == "done" and result["error"] is None
    assert result["participants"] == ["alpha", "beta"]
    assert result["sizes"] == {"alpha": SET_SIZE, "beta": SET_SIZE}
    assert result["match_counts"] == {"alpha": 15, "beta": 15}
    assert result["mode"] == "pairwise" and result["threshold"] is None
    assert result["operator"] == "cli-ops"
    assert result["created"] <= result["finished"]
    assert "done" in out.err  # progress went to stderr

    status = argparse.Namespace(config=config, id=result["id"][:10], json=False, insecure=False)
    assert operator_cli.cmd_round_status(status) == 0
    shown = capsys.readouterr().out
    assert f"round {result['id']} done" in shown and "alpha" in shown

    assert operator_cli.cmd_round_status(argparse.Namespace(**{**vars(status), "id": None})) == 0
    assert result["id"] in capsys.readouterr().out

    assert (
        operator_cli.cmd_round_start(round_args(config, ["alpha", "beta"], wait=False, json=False))
        == 0
    )
    started = capsys.readouterr().out.strip()
    assert len(started) == 32 and started != result["id"]


def test_cli_round_start_exits_1_when_the_round_fails(
    pki: FederationPki,
    coord: RunningCoordinator,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = operator_toml(pki, tmp_path / "op", "cli-ops2", f"127.0.0.1:{coord.port}")
    capsys.readouterr()
    assert operator_cli.cmd_round_start(round_args(config, ["alpha", "ghost"], json=False)) == 1
    out = capsys.readouterr().out
    assert "failed" in out and "node ghost unreachable" in out

    # a round the coordinator refuses as invalid is an input error
    assert operator_cli.cmd_round_start(round_args(config, ["alpha", "nobody"])) == 2
    err = capsys.readouterr().err
    assert "refused (INVALID_ARGUMENT): unknown node(s) nobody" in err


def test_cli_round_start_input_errors(
    pki: FederationPki, tmp_path: Path, capsys: pytest.CaptureFixture[str], nowhere: str
) -> None:
    config = operator_toml(pki, tmp_path / "op", "cli-ops3", nowhere)
    capsys.readouterr()

    assert operator_cli.cmd_round_start(round_args(config, ["a", "b"], threshold=2)) == 2
    assert "add --mode threshold" in capsys.readouterr().err
    assert operator_cli.cmd_round_start(round_args(config, ["a", "b"], mode="threshold")) == 2
    assert "needs --threshold" in capsys.readouterr().err
    assert operator_cli.cmd_round_start(round_args(str(tmp_path / "none.toml"), ["a", "b"])) == 2
    assert "does not exist" in capsys.readouterr().err

    # nothing listens at the configured address: an operational error, with what to check
    assert operator_cli.cmd_round_start(round_args(config, ["a", "b"])) == 1
    err = capsys.readouterr().err
    assert "unreachable (UNAVAILABLE)" in err and "blindmatch coordinator serve" in err
    assert "Traceback" not in err


def test_cli_round_start_watch_mode_through_the_parser(
    pki: FederationPki,
    coord: RunningCoordinator,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from blindmatch.cli.main import main

    config = operator_toml(pki, tmp_path / "op", "watch-ops", f"127.0.0.1:{coord.port}")
    capsys.readouterr()
    argv = ["round", "start", "--config", config, "--nodes", "alpha,beta", "--chunk-size", "4"]
    assert main([*argv, "--mode", "watch", "--epoch", "2s", "--wait", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert (result["state"], result["mode"]) == ("done", "watch")
    assert result["sizes"] == {"alpha": SET_SIZE, "beta": SET_SIZE}
    with pytest.raises(SystemExit) as bad:  # argparse refuses an unreadable duration
        main([*argv, "--mode", "watch", "--epoch", "soon"])
    assert bad.value.code == 2
    assert "soon" in capsys.readouterr().err
    assert main([*argv, "--epoch", "1h"]) == 2  # an epoch without watch mode
    assert "--epoch only applies to --mode watch" in capsys.readouterr().err


def test_a_round_failed_by_a_node_of_another_ca_names_the_likely_cause(
    pki: FederationPki, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # issue 19: a node whose certificate is from another CA failed rounds with only
    # "unreachable ... CERTIFICATE_VERIFY_FAILED"; the node itself never hears of the refused
    # handshake (grpc python shows a server none), so the operator's report names the cause
    other = FederationPki(tmp_path / "other-federation")
    configs = {
        "ca-alpha": federation.node_config(tmp_path, pki, "ca-alpha"),
        "ca-foreign": federation.node_config(tmp_path, other, "ca-foreign"),
    }
    setup = Setup(list(configs), held(domains({"ca-alpha": ["a.example"]})), configs=configs)
    with Federation(tmp_path, pki, setup) as fed:
        assert fed.coordinator is not None
        config = operator_toml(pki, tmp_path / "op", "ca-ops", f"127.0.0.1:{fed.coordinator.port}")
        capsys.readouterr()
        args = round_args(config, list(configs), json=False)
        assert operator_cli.cmd_round_start(args) == 1
    out = capsys.readouterr().out
    assert "CERTIFICATE_VERIFY_FAILED" in out
    assert "likely cause: the node's certificate is not from the CA this coordinator trusts" in out
