"""Early warning end to end: watch rounds, checks, alerts, budgets, epochs, restarts.

Real nodes and a real coordinator over gRPC with mTLS on 127.0.0.1 (tests/federation.py); the
nodes dial the coordinator for checks. The module's tests share one federation and run in order:
the epoch opened by the first test is used by the next ones, and the last ones end it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import grpc
import pytest

from blindmatch.cli.main import main
from blindmatch.core.spec import Policy
from blindmatch.core.watch_rules import parse_duration
from blindmatch.core.watch_sealed import FILTER_ERROR_RATE, bloom_parameters
from blindmatch.runtime import net
from blindmatch.v2 import watch_pb2, watch_pb2_grpc
from node.config import load_config, render_config
from node.store import Store
from tests.federation import (
    CHECK_BUDGET,
    Federation,
    Setup,
    check,
    held,
    partners_of,
    watching,
)
from tests.pkifixtures import FederationPki

NAMES = ("alpha", "bravo", "charlie", "delta", "echo")
WATCHERS = NAMES[:4]
BUDGET = CHECK_BUDGET  # watching() gives every node this check budget

# (kind, value) each node holds; "shared" overlaps are what checks should find.
HELD = {
    "alpha": [("domain", "alpha-only.example"), ("domain", "shared.example")],
    "bravo": [("domain", "shared.example"), ("ipv4", "10.9.9.9"), ("email", "x@bravo.example")],
    "charlie": [("ipv4", "10.9.9.9"), ("sha256", "ab" * 32)],
    "delta": [("domain", "delta-only.example")],
    "echo": [("domain", "shared.example")],
}


@pytest.fixture(scope="module")
def federation_setup() -> Setup:
    policies = {
        "echo": Policy(partners=frozenset({"alpha", "bravo"})),
        "charlie": Policy(kinds=frozenset(Policy().kinds - {"email"})),
    }
    return Setup(NAMES, held(HELD), policies=policies, configure=watching)


def alerts(fed: Federation, node: str) -> set[tuple[str, str, str, str]]:
    with fed.store(node) as store:
        return {(a.kind, a.value, a.partner, a.direction) for a in store.alerts()}


# --- the core, without servers ----------------------------------------------------------------


def test_parse_duration() -> None:
    assert parse_duration("24h") == 86400
    assert parse_duration("90m") == 5400
    assert parse_duration("3600s") == parse_duration("3600") == 3600
    assert parse_duration("2d") == 172800
    for bad in ("", "0s", "-1h", "1w", "100d"):
        with pytest.raises(ValueError):
            parse_duration(bad)


# --- end to end -------------------------------------------------------------------------------


def test_watch_round_opens_an_epoch(fed: Federation) -> None:
    info = fed.start_watch(WATCHERS, epoch=3600)
    assert info.state == "done", info.error
    assert info.mode == "watch"
    # a watch round is a pairwise round: its matches are recorded as usual
    with fed.store("alpha") as store:
        assert {(m.kind, m.value, tuple(m.partners)) for m in store.matches(info.id)} == {
            ("domain", "shared.example", ("bravo",))
        }
        (epoch_audit,) = store.epochs()
    assert epoch_audit.epoch_id == info.id and epoch_audit.tags == 2
    for name in WATCHERS:
        watch = fed.nodes[name].watch
        assert watch is not None and watch.epoch is not None
        assert watch.epoch.epoch_id == info.id
        assert watch.epoch.tag_count == len(HELD[name])
        # the round itself is over: its own key and position map are gone
        assert not fed.nodes[name].rounds.active()
    assert fed.coordinator is not None and fed.coordinator.watch is not None
    hub_epoch = fed.coordinator.watch.epoch
    assert hub_epoch is not None and set(hub_epoch.filters) == set(WATCHERS)
    # each holder's own signed filter, of its own tags, at the protocol's false-positive rate
    for name, signed in hub_epoch.filters.items():
        assert (signed.filter.holder, signed.filter.count) == (name, len(HELD[name]))
        sized = bloom_parameters(len(HELD[name]), FILTER_ERROR_RATE)
        assert (signed.filter.size_bits, signed.filter.hashes) == sized
    assert set(fed.coordinator.watch.filter_bytes()) == set(WATCHERS)
    assert fed.nodes["echo"].watch is not None and fed.nodes["echo"].watch.epoch is None


def test_check_hits_misses_and_alerts_both_sides(fed: Federation) -> None:
    reply = check(fed, "alpha", ["10.9.9.9", "HTTP://Fresh.Example/", "new.example", "no way"])
    got = partners_of(reply)
    assert got["10.9.9.9"] == {"bravo", "charlie"}
    assert got["new.example"] == set()
    assert got["http://fresh.example/"] == set()
    bad = next(r for r in reply.results if r.value == "no way")
    assert bad.error and not bad.partners
    assert alerts(fed, "alpha") == {
        ("ipv4", "10.9.9.9", "bravo", "check"),
        ("ipv4", "10.9.9.9", "charlie", "check"),
    }
    assert ("ipv4", "10.9.9.9", "alpha", "sighted") in alerts(fed, "bravo")
    assert ("ipv4", "10.9.9.9", "alpha", "sighted") in alerts(fed, "charlie")
    assert alerts(fed, "delta") == set()
    # every involved node audited the check: its own, and the evaluations it answered as a
    # member for alpha (a check of 3 values is proved by DLEQ: 3 evaluations, no subset checks)
    with fed.store("alpha") as store:
        own = store.checks()[0]
    assert (own.checker, own.elements, own.hits, own.outcome) == ("alpha", 3, 1, "done")
    for partner in ("bravo", "charlie", "delta"):
        with fed.store(partner) as store:
            entry = store.checks()[0]
        assert (entry.checker, entry.elements, entry.outcome) == ("alpha", 3, "done")


def test_a_checked_value_does_not_join_the_checkers_filter(fed: Federation) -> None:
    """alpha checked new.example first, but its filter holds the set it announced for the
    epoch, signed at the watch round, and nothing more: delta's check does not find it."""
    reply = check(fed, "delta", ["new.example"])
    assert partners_of(reply)["new.example"] == set()
    assert ("domain", "new.example", "delta", "sighted") not in alerts(fed, "alpha")


def test_check_access(fed: Federation) -> None:
    # the checkers node.toml names (a SIEM integration) may check for a node; another node,
    # or any operator, may not
    reply = check(fed, "charlie", ["charlie-new.example"], as_name="siem", role="checker")
    assert partners_of(reply)["charlie-new.example"] == set()
    for name, role in (("bravo", "node"), ("ops", "operator")):
        with pytest.raises(grpc.RpcError) as err:
            check(fed, "charlie", ["x.example"], as_name=name, role=role)
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    # and a node may not ask a member to evaluate for it directly, nor alert it
    tls = fed.pki.tls("bravo", "node")
    address = f"127.0.0.1:{fed.nodes['charlie'].port}"
    with net.open_channel(address, tls, insecure=False, expect=net.Allow("node", "charlie")) as ch:
        stub = watch_pb2_grpc.NodeWatchServiceStub(ch)
        for call in (
            lambda: stub.EvaluateCheck(watch_pb2.CheckRequests(epoch_id="x"), timeout=5),
            lambda: stub.Alert(watch_pb2.SealedMessages(epoch_id="x"), timeout=5),
        ):
            with pytest.raises(grpc.RpcError) as err:
                call()
            assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_policy_is_honoured(fed: Federation) -> None:
    # echo's policy does not allow charlie: a watch round with both fails, and no key is kept
    info = fed.start_watch(("alpha", "charlie", "echo"), epoch=3600)
    assert info.state == "failed" and "PERMISSION_DENIED" in info.error
    assert fed.nodes["echo"].watch is not None and fed.nodes["echo"].watch.epoch is None
    assert fed.coordinator is not None and fed.coordinator.watch is not None
    epoch = fed.coordinator.watch.epoch
    assert epoch is not None and epoch.participants == WATCHERS  # the open epoch is untouched
    # charlie's policy leaves e-mail out: it checks no e-mail address
    reply = check(fed, "charlie", ["x@bravo.example"])
    assert "outside this node's policy" in reply.results[0].error
    # the checker's policy, narrowed during the epoch, is applied at each check: alpha tests
    # (and alerts) only bravo, though charlie holds the value too
    alpha = fed.nodes["alpha"].watch
    assert alpha is not None
    alpha.policy = Policy(partners=frozenset({"bravo"}))
    before = alerts(fed, "charlie")
    try:
        reply = check(fed, "alpha", ["10.9.9.9"])
    finally:
        alpha.policy = Policy()
    assert partners_of(reply)["10.9.9.9"] == {"bravo"}
    assert alerts(fed, "charlie") == before


def test_budget_refusal(fed: Federation) -> None:
    values = [f"budget{i}.example" for i in range(BUDGET + 1)]
    with pytest.raises(grpc.RpcError) as err:
        check(fed, "bravo", values)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "check cap signed for bravo" in (err.value.details() or "")
    with fed.store("charlie") as store:
        refused = store.checks()[0]
    assert (refused.checker, refused.outcome) == ("bravo", "refused")
    assert f"allows {BUDGET}" in (refused.reason or "")
    with fed.store("bravo") as store:
        assert store.checks()[0].outcome == "failed"
    # the refused check cost nothing: the whole budget is still there, and then it is spent
    reply = check(fed, "bravo", values[:BUDGET])
    assert len(reply.results) == BUDGET
    with pytest.raises(grpc.RpcError) as err:
        check(fed, "bravo", ["one-more.example"])
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_cli_check_and_alerts_json(fed: Federation, capsys: pytest.CaptureFixture[str]) -> None:
    config = fed.configs["charlie"]
    path = config.path
    path.write_text(
        render_config(
            name="charlie",
            listen=f"127.0.0.1:{fed.nodes['charlie'].port}",
            ca=str(config.tls.ca),
            cert=str(config.tls.cert),
            key=str(config.tls.key),
            coordinator_address=f"127.0.0.1:{fed.coordinator.port if fed.coordinator else 0}",
        )
    )
    assert load_config(path).store == config.store
    assert main(["node", "check", "--config", str(path), "--json", "shared.example"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["kind"] == "domain" and row["value"] == "shared.example"
    assert row["partners"] == ["alpha", "bravo"]
    assert main(["node", "alerts", "--config", str(path), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {"time", "kind", "value", "partner", "direction"} <= set(rows[0])
    assert rows[0]["direction"] == "check" and rows[0]["value"] == "shared.example"
    assert [r["time"] for r in rows] == sorted((r["time"] for r in rows), reverse=True)
    assert {(r["value"], r["partner"], r["direction"]) for r in rows} >= {
        ("10.9.9.9", "alpha", "sighted"),
        ("shared.example", "alpha", "check"),
    }
    assert main(["node", "check", "--config", str(path), "nonsense value"]) == 2
    assert "refused" in capsys.readouterr().out


def test_filters_survive_a_coordinator_restart(fed: Federation) -> None:
    assert fed.coordinator is not None and fed.coordinator.watch is not None
    before = fed.coordinator.watch.epoch
    assert before is not None
    running = fed.restart_coordinator()
    assert running.watch is not None and running.watch.epoch is not None
    assert running.watch.epoch.epoch_id == before.epoch_id
    # delta's check finds alpha's watch-round indicator through the reloaded filters
    reply = check(fed, "delta", ["alpha-only.example", "10.9.9.9"])
    got = partners_of(reply)
    assert got == {"alpha-only.example": {"alpha"}, "10.9.9.9": {"bravo", "charlie"}}


def test_checks_are_refused_after_the_epoch(fed: Federation) -> None:
    info = fed.start_watch(WATCHERS, epoch=3600)
    assert info.state == "done", info.error
    reply = check(fed, "delta", ["shared.example"])
    assert partners_of(reply)["shared.example"] == {"alpha", "bravo"}
    # The epoch ends by the clock, not by waiting: every party's clock jumps past its end.
    later = time.time() + 3601
    assert fed.coordinator is not None and fed.coordinator.watch is not None
    fed.coordinator.watch.clock = lambda: later
    for name in WATCHERS:
        node_watch = fed.nodes[name].watch
        assert node_watch is not None
        node_watch.clock = lambda: later
        node_watch.expire()  # the reaper's pass, now rather than within its period
    with pytest.raises(grpc.RpcError) as err:
        check(fed, "delta", ["shared.example"])
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    # the node's reaper has destroyed the key; the coordinator refuses on its side too
    for name in WATCHERS:
        watch = fed.nodes[name].watch
        assert watch is not None and watch.epoch is None
        with fed.store(name) as store:
            latest = store.epochs()[0]
        assert latest.epoch_id == info.id and latest.closed and "ended at" in (latest.reason or "")
    assert fed.coordinator is not None and fed.coordinator.watch is not None
    request = watch_pb2.CheckRequests(epoch_id=info.id)
    tls = fed.pki.tls("delta", "node")
    address = f"127.0.0.1:{fed.coordinator.port}"
    with (
        net.open_channel(address, tls, insecure=False, expect=net.Allow("coordinator")) as ch,
        pytest.raises(grpc.RpcError) as err,
    ):
        watch_pb2_grpc.CoordinatorWatchServiceStub(ch).Check(request, timeout=5)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "ended at" in (err.value.details() or "")
    assert not list(fed.coordinator.watch.directory.glob("*.filter"))


def test_a_node_restart_ends_its_epoch(fed: Federation) -> None:
    info = fed.start_watch(WATCHERS, epoch=3600)
    assert info.state == "done", info.error
    fed.nodes["delta"].stop(grace=0.5)
    node = fed.start_node("delta")
    assert node.watch is not None and node.watch.epoch is None
    assert fed.coordinator is not None
    node.watch.connect_coordinator(f"127.0.0.1:{fed.coordinator.port}")
    with pytest.raises(grpc.RpcError) as err:
        check(fed, "delta", ["shared.example"])
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "no watch epoch" in (err.value.details() or "")
    with Store.open(fed.stores["delta"]) as store:
        assert store.epochs()[0].reason == "node stopped"


def test_alerts_follow_streams_new_alerts_as_json_lines(tmp_path: Path, pki: FederationPki) -> None:
    """`node alerts --follow --json` prints what is stored, then each new alert as it arrives."""
    import subprocess
    import sys

    node_dir = tmp_path / "kilo"
    assert (
        main(
            [
                "node",
                "init",
                str(node_dir),
                "--name",
                "kilo",
                "--listen",
                "127.0.0.1:7999",
                "--pki",
                str(pki.dir),
            ]
        )
        == 0
    )
    config = load_config(node_dir / "node.toml")
    with Store.open(config.store) as store:
        store.record_epoch(
            "e1",
            ends="2099-01-01T00:00:00Z",
            coordinator="coordinator",
            participants=["kilo", "lima"],
            tags=1,
        )
        store.record_alerts("e1", [("domain", "old.example", "lima", "sighted")])
    follower = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "blindmatch.cli.main",
            "node",
            "alerts",
            "--config",
            str(node_dir / "node.toml"),
            "--follow",
            "--json",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert follower.stdout is not None
        first = json.loads(follower.stdout.readline())
        assert (first["value"], first["direction"]) == ("old.example", "sighted")
        with Store.open(config.store) as store:
            store.record_alerts("e1", [("url", "http://new.example/", "lima", "check")])
        second = json.loads(follower.stdout.readline())
        assert (second["value"], second["partner"], second["direction"]) == (
            "http://new.example/",
            "lima",
            "check",
        )
        assert {"time", "kind", "value", "partner", "direction"} <= set(second)
    finally:
        follower.terminate()
        follower.wait(timeout=10)
