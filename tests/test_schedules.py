"""Scheduled rounds (issue 11): standing orders an operator signs, a coordinator runs, nodes check.

End-to-end tests use a real federation (nodes and coordinator on 127.0.0.1, mTLS, the session's
test CA). The coordinator's scheduler thread is stopped and its clock replaced, so each test
drives the schedule by calling ``tick`` at the time it sets, instead of waiting. Nodes keep their
real clock: orders are dated so that the runs a test starts are due by it. The attacks on nodes
are made with the coordinator's real certificate and plain NodeService stubs, as in
test_adversary.py.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import grpc
import pytest

from blindmatch.core.errors import BadMessage
from blindmatch.core.orders import MIN_EVERY, StandingOrder
from blindmatch.core.signing import MAX_SPEC_AGE, MAX_SPEC_SKEW, SignedOrder, Signer, StaleSpec
from blindmatch.runtime import serde
from blindmatch.v1 import coordinator_pb2, node_pb2
from blindmatch.v2 import node_pb2_grpc
from coordinator import operator_cli, schedule_cli
from coordinator.records import (
    MIGRATIONS,
    MemoryRoundStore,
    ScheduleRecord,
    SqliteRoundStore,
)
from coordinator.schedules import Scheduler
from node.store import RoundAudit
from tests.federation import (
    HOLDINGS,
    OPERATOR,
    TEST_CHUNK,
    Federation,
    Setup,
    held,
    round_spec,
    signed_spec,
    signer,
)
from tests.pkifixtures import FederationPki

T = 20.0
EVERY = 600.0
Code = grpc.StatusCode
NAMES = ("alpha", "bravo")
ROGUE = "rogue-ops"  # an operator of the federation that alpha's node.toml does not list


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def order(
    nodes: tuple[str, ...] = NAMES, *, first: float, every: float = EVERY, until: float = 0.0
) -> StandingOrder:
    return schedule_cli.new_order(
        "nightly",
        nodes,
        every=every,
        first=first,
        until=until,
        kinds=["domain"],
        chunk_size=TEST_CHUNK,
        issued=time.time(),
    )


def sign(o: StandingOrder, by: Signer) -> node_pb2.SignedOrder:
    return serde.signed_order_to_proto(SignedOrder.sign(by, serde.order_to_bytes(o)))


# --- the order itself ------------------------------------------------------------------------


def test_each_run_is_fixed_by_the_order_and_its_number() -> None:
    o = order(first=1000.0, until=1000.0 + 2.5 * EVERY)
    assert serde.order_from_bytes(serde.order_to_bytes(o)) == o
    spec = o.run_spec(2)
    assert spec.round_id == f"{o.schedule_id}-2" and spec.issued == 1000.0 + 2 * EVERY
    assert replace(spec, round_id="run", issued=o.template.issued) == o.template
    assert [o.allows(k) for k in (0, 2, 3)] == [True, True, False]
    assert o.due_run(999.0) is None and o.due_run(1000.0 + EVERY) == 1
    assert o.due_run(1000.0 + 10 * EVERY) == 2  # the last run before the end
    assert o.next_time(2) is None and o.next_time(None) == 1000.0
    o.check_due(1, 1000.0 + EVERY + MAX_SPEC_AGE - 1)
    o.check_due(1, 1000.0 + EVERY - MAX_SPEC_SKEW + 1)
    for k, now, problem in [
        (1, 1000.0 + EVERY + MAX_SPEC_AGE + 1, "was due"),
        (1, 1000.0 + EVERY - MAX_SPEC_SKEW - 1, "is not due for"),
        (3, 1000.0 + 3 * EVERY, "has no run 3"),
    ]:
        with pytest.raises(StaleSpec, match=problem):
            o.check_due(k, now)
    with pytest.raises(BadMessage, match="at least"):
        order(first=1000.0, every=MIN_EVERY - 1)
    with pytest.raises(BadMessage, match="ends before its first run"):
        order(first=1000.0, until=900.0)


# --- the scheduler, on its own clock ---------------------------------------------------------


@dataclass
class FakeCoordinator:
    started: list[str]
    going: set[str]

    def start(self, run: Any, operator: str) -> None:
        rid = run.order.run_spec(run.run).round_id
        self.started.append(rid)
        self.going.add(rid)


def test_never_two_runs_of_a_schedule_at_once_and_missed_runs_are_counted(
    pki: FederationPki,
) -> None:
    coordinator = FakeCoordinator([], set())
    clock = Clock(0.0)
    store = MemoryRoundStore()
    scheduler = Scheduler(store, coordinator.start, coordinator.going.__contains__, clock)
    o = order(first=1000.0, until=1000.0 + 5 * EVERY)
    scheduler.add(SignedOrder.sign(signer(pki), serde.order_to_bytes(o)), o, OPERATOR)
    assert scheduler.tick() == []  # not due yet
    clock.t = 1000.0
    assert scheduler.tick() == [f"{o.schedule_id}-0"]
    assert scheduler.tick() == []  # started once
    clock.t = 1000.0 + EVERY
    assert scheduler.tick() == []  # run 0 still going: run 1 skipped
    (view,) = scheduler.views()
    assert view.record.skipped == 1 and view.next_run == 1000.0 + 2 * EVERY
    coordinator.going.clear()
    clock.t = 1000.0 + 3 * EVERY + 1  # run 2 was missed (the coordinator was busy or down)
    assert scheduler.tick() == [f"{o.schedule_id}-3"]
    (view,) = scheduler.views()
    assert (view.record.runs, view.record.skipped, view.record.last_run) == (2, 2, 3)
    coordinator.going.clear()
    clock.t = 1000.0 + 4 * EVERY + 1
    assert scheduler.tick() == [f"{o.schedule_id}-4"]  # the last run before the end
    coordinator.going.clear()
    assert scheduler.tick() == []
    (view,) = scheduler.views()
    assert view.record.state == "ended" and view.next_run is None


def test_the_run_that_just_started_is_not_shown_as_the_next(pki: FederationPki) -> None:
    # issue 19: `round schedule --list` showed run 0, just started, as the next run
    coordinator = FakeCoordinator([], set())
    clock = Clock(1000.0)
    scheduler = Scheduler(
        MemoryRoundStore(), coordinator.start, coordinator.going.__contains__, clock
    )
    o = order(first=1000.0, until=1000.0 + 5 * EVERY)
    scheduler.add(SignedOrder.sign(signer(pki), serde.order_to_bytes(o)), o, OPERATOR)
    (view,) = scheduler.views()
    assert view.next_run == 1000.0  # due now, not started yet
    assert scheduler.tick() == [f"{o.schedule_id}-0"]
    (view,) = scheduler.views()
    assert (view.record.last_run, view.next_run) == (0, 1000.0 + EVERY)


def test_a_run_nodes_would_refuse_as_stale_is_skipped_not_started(pki: FederationPki) -> None:
    coordinator = FakeCoordinator([], set())
    clock = Clock(1000.0 + 99 * EVERY)  # long after the last run before the end
    scheduler = Scheduler(
        MemoryRoundStore(), coordinator.start, coordinator.going.__contains__, clock
    )
    o = order(first=1000.0, until=1000.0 + 5 * EVERY)
    scheduler.add(SignedOrder.sign(signer(pki), serde.order_to_bytes(o)), o, OPERATOR)
    assert scheduler.tick() == [] and coordinator.started == []
    (view,) = scheduler.views()
    assert (view.record.skipped, view.record.last_run) == (5, 4)
    scheduler.tick()
    assert scheduler.views()[0].record.state == "ended"


# --- the store (the suite of both kinds is in test_coordinator.py) ---------------------------


def test_a_state_file_from_before_schedules_gains_them(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite"
    db = sqlite3.connect(path)
    db.executescript(MIGRATIONS[0])
    db.execute("PRAGMA user_version = 1")
    db.commit()
    db.close()
    s = SqliteRoundStore(path)
    record = ScheduleRecord("a", "n", "ops", b"o", b"s", b"c")
    s.save_schedule(record)
    assert s.schedules() == [record]
    s.close()


# --- a real federation -------------------------------------------------------------------------


@dataclass
class Fed:
    fed: Federation
    pki: FederationPki
    clock: Clock
    scheduler: Scheduler
    nodes: dict[str, node_pb2_grpc.NodeServiceStub]  # as the coordinator, gone bad


@pytest.fixture(scope="module")
def federation_setup() -> Setup:
    return Setup(NAMES, held(HOLDINGS, tlp="green"), operators={"alpha": frozenset({OPERATOR})})


@pytest.fixture(scope="module")
def fed(fed: Federation, pki: FederationPki) -> Iterator[Fed]:
    """The module's federation (conftest.py), its scheduler stopped and its clock replaced."""
    assert fed.coordinator is not None
    scheduler = fed.coordinator.scheduler
    scheduler.stop()  # the tests tick it themselves
    clock = Clock(0.0)
    scheduler.clock = clock
    channels = {name: fed.as_coordinator(name) for name in NAMES}
    try:
        stubs = {name: node_pb2_grpc.NodeServiceStub(ch) for name, ch in channels.items()}
        yield Fed(fed, pki, clock, scheduler, stubs)
    finally:
        for channel in channels.values():
            channel.close()


def schedule(f: Fed, o: StandingOrder) -> coordinator_pb2.ScheduleInfo:
    request = coordinator_pb2.ScheduleRequest(order=sign(o, signer(f.pki)))
    info: coordinator_pb2.ScheduleInfo = f.fed.stub.Schedule(request, timeout=T)
    return info


def cancel(f: Fed, schedule_id: str) -> coordinator_pb2.ScheduleInfo:
    request = coordinator_pb2.CancelScheduleRequest(id=schedule_id)
    info: coordinator_pb2.ScheduleInfo = f.fed.stub.CancelSchedule(request, timeout=T)
    return info


def shown(f: Fed, schedule_id: str) -> coordinator_pb2.ScheduleInfo:
    listed = f.fed.stub.ListSchedules(coordinator_pb2.ListSchedulesRequest(), timeout=T)
    (info,) = [s for s in listed.schedules if s.id == schedule_id]
    return info


def audit(f: Fed, node: str, round_id: str) -> RoundAudit | None:
    with f.fed.store(node) as s:
        return next((r for r in s.rounds() if r.round_id == round_id), None)


def test_a_schedule_runs_its_rounds_on_its_own(fed: Fed) -> None:
    f = fed
    first = time.time() - 2 * EVERY  # runs 0, 1 and 2 are all within the nodes' window
    f.clock.t = first - 1
    o = order(first=first)
    info = schedule(f, o)
    assert (info.id, info.state, info.operator) == (o.schedule_id, "active", OPERATOR)
    assert info.next_run == first and info.runs == 0
    assert f.scheduler.tick() == []  # not due yet

    f.clock.t = first
    (rid,) = f.scheduler.tick()
    assert rid == f"{o.schedule_id}-0"
    done = f.fed.wait(rid)
    assert done.state == "done", done.error
    assert dict(done.match_counts) == {"alpha": 1, "bravo": 1}
    entry = audit(f, "alpha", rid)
    assert entry is not None and entry.outcome == "done" and entry.operator == OPERATOR

    f.clock.t = first + EVERY + 5
    assert f.scheduler.tick() == [f"{o.schedule_id}-1"]
    assert f.fed.wait(f"{o.schedule_id}-1").state == "done"
    info = shown(f, o.schedule_id)
    assert (info.runs, info.skipped, info.last_round) == (2, 0, f"{o.schedule_id}-1")
    assert info.next_run == first + 2 * EVERY  # `round status` shows it

    # a run the coordinator already carried is refused by the nodes: ids are used once
    replay = node_pb2.PrepareRequest(order=sign(o, signer(f.pki)), run=0)
    with pytest.raises(grpc.RpcError) as err:
        f.nodes["alpha"].Prepare(replay, timeout=T)
    assert err.value.code() == Code.ALREADY_EXISTS
    cancel(f, o.schedule_id)  # the other tests tick the same scheduler


def test_cancel_stops_a_schedule(fed: Fed) -> None:
    f = fed
    first = time.time() - EVERY
    f.clock.t = first
    o = order(first=first)
    schedule(f, o)
    (rid,) = f.scheduler.tick()
    assert f.fed.wait(rid).state == "done"
    cancelled = cancel(f, o.schedule_id)
    assert (cancelled.state, cancelled.cancelled_by, cancelled.next_run) == (
        "cancelled",
        OPERATOR,
        0.0,
    )
    f.clock.t = first + EVERY
    assert o.schedule_id not in " ".join(f.scheduler.tick())
    with pytest.raises(grpc.RpcError) as err:
        f.fed.stub.GetRound(coordinator_pb2.GetRoundRequest(id=f"{o.schedule_id}-1"), timeout=T)
    assert err.value.code() == Code.NOT_FOUND
    with pytest.raises(grpc.RpcError) as err:
        f.fed.stub.CancelSchedule(coordinator_pb2.CancelScheduleRequest(id="nope"), timeout=T)
    assert err.value.code() == Code.NOT_FOUND


def test_the_coordinator_keeps_only_orders_its_caller_signed_and_it_can_run(fed: Fed) -> None:
    f = fed
    o = order(first=time.time() + EVERY)
    other = coordinator_pb2.ScheduleRequest(order=sign(o, signer(f.pki, ROGUE)))
    unknown = order(("alpha", "zulu"), first=time.time())
    for request, code, problem in [
        (other, Code.PERMISSION_DENIED, f"signed by operator/{ROGUE}"),
        (
            coordinator_pb2.ScheduleRequest(order=sign(unknown, signer(f.pki))),
            Code.INVALID_ARGUMENT,
            "unknown node(s) zulu",
        ),
    ]:
        with pytest.raises(grpc.RpcError) as err:
            f.fed.stub.Schedule(request, timeout=T)
        assert err.value.code() == code and problem in (err.value.details() or "")
    schedule(f, o)
    with pytest.raises(grpc.RpcError) as err:
        schedule(f, o)
    assert err.value.code() == Code.ALREADY_EXISTS
    cancel(f, o.schedule_id)


def forged_participants(msg: node_pb2.SignedOrder) -> node_pb2.SignedOrder:
    """The order with its participants changed, its signature kept."""
    body = node_pb2.StandingOrder.FromString(msg.order)
    del body.participants[:]
    body.participants.extend(["bravo", "alpha"])
    return node_pb2.SignedOrder(
        order=body.SerializeToString(), signature=msg.signature, operator_cert=msg.operator_cert
    )


@pytest.mark.parametrize(
    "attack",
    ["future-run", "past-run", "after-the-end", "other-participants", "unlisted-operator"],
)
def test_nodes_refuse_a_run_the_order_does_not_allow(fed: Fed, attack: str) -> None:
    f = fed
    now = time.time()
    run, by, first, until = 0, signer(f.pki), now, 0.0
    if attack == "future-run":
        run = 100
    elif attack == "past-run":
        first = now - MAX_SPEC_AGE - EVERY
    elif attack == "after-the-end":
        first, until, run = now - EVERY, now - EVERY / 2, 1
    elif attack == "unlisted-operator":
        by = signer(f.pki, ROGUE)
    o = order(first=first, until=until)
    msg = sign(o, by)
    if attack == "other-participants":
        msg = forged_participants(msg)
    problem = {
        "future-run": "is not due for",
        "past-run": "was due",
        "after-the-end": "has no run 1",
        "other-participants": "is not signed by operator/ops",
        "unlisted-operator": f"operator {ROGUE} may not start rounds",
    }[attack]
    with pytest.raises(grpc.RpcError) as err:
        f.nodes["alpha"].Prepare(node_pb2.PrepareRequest(order=msg, run=run), timeout=T)
    assert err.value.code() == Code.PERMISSION_DENIED, err.value.details()
    assert problem in (err.value.details() or "")
    entry = audit(f, "alpha", f"{o.schedule_id}-{run}")
    assert entry is not None and entry.outcome == "refused"
    assert entry.reason is not None and problem in entry.reason
    assert f.fed.nodes["alpha"].rounds.active() == []


def test_a_prepare_carries_a_spec_or_an_order_never_both(fed: Fed) -> None:
    f = fed
    both = node_pb2.PrepareRequest(
        signed_spec=signed_spec(round_spec(NAMES), pki=f.pki),
        order=sign(order(first=time.time()), signer(f.pki)),
    )
    for request in (both, node_pb2.PrepareRequest()):
        with pytest.raises(grpc.RpcError) as err:
            f.nodes["alpha"].Prepare(request, timeout=T)
        assert err.value.code() == Code.INVALID_ARGUMENT
        assert "exactly one of" in (err.value.details() or "")


def operator_toml(f: Fed, tmp_path: Path, name: str) -> str:
    """An operator directory made by `operator init` against the test coordinator."""
    assert f.fed.coordinator is not None
    home = tmp_path / "op"
    init = argparse.Namespace(
        op_dir=str(home),
        name=name,
        coordinator=f"127.0.0.1:{f.fed.coordinator.port}",
        coordinator_name="coordinator",
        pki=str(f.pki.dir),
    )
    assert operator_cli.cmd_operator_init(init) == 0
    return str(home / "operator.toml")


def schedule_args(config: str, name: str) -> dict[str, Any]:
    """What `round schedule` parses for a weekly pairwise order starting in 2099."""
    return {
        "config": config, "name": name, "nodes": list(NAMES), "mode": "pairwise",
        "threshold": None, "epoch": None, "counts": False, "chunk_size": TEST_CHUNK,
        "kinds": ["domain"], "every": 7 * 86400.0, "first": "2099-01-04T06:00+00:00",
        "until": None, "list": False, "cancel": None, "json": True, "insecure": False,
    }  # fmt: skip


def test_cli_schedules_lists_and_cancels(
    fed: Fed, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    f = fed
    config = operator_toml(f, tmp_path, "cli-sched")
    capsys.readouterr()
    args = schedule_args(config, "weekly")
    assert schedule_cli.cmd_round_schedule(argparse.Namespace(**args)) == 0
    made = json.loads(capsys.readouterr().out)
    assert made["state"] == "active" and made["operator"] == "cli-sched"
    assert (
        made["next_run"] == datetime.datetime(2099, 1, 4, 6, tzinfo=datetime.UTC).timestamp()
        and made["until"] is None
    )

    status = argparse.Namespace(config=config, id=None, json=False, insecure=False)
    assert operator_cli.cmd_round_status(status) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if made["id"] in x)
    assert "'weekly' active" in line and "next run 2099-01-0" in line

    assert (
        schedule_cli.cmd_round_schedule(argparse.Namespace(**{**args, "cancel": made["id"]})) == 0
    )
    assert json.loads(capsys.readouterr().out)["cancelled_by"] == "cli-sched"
    assert schedule_cli.cmd_round_schedule(argparse.Namespace(**{**args, "list": True})) == 0
    listed = {s["id"]: s for s in json.loads(capsys.readouterr().out)}
    assert listed[made["id"]]["state"] == "cancelled" and listed[made["id"]]["next_run"] is None

    assert schedule_cli.cmd_round_schedule(argparse.Namespace(**{**args, "every": None})) == 2
    assert "needs --every" in capsys.readouterr().err
    assert schedule_cli.cmd_round_schedule(argparse.Namespace(**{**args, "every": 5.0})) == 2
    assert "at least 60 s apart" in capsys.readouterr().err


def test_cli_cancels_a_schedule_by_a_unique_prefix_of_its_id(
    fed: Fed, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # issue 19: `--cancel` needed the whole id, though ids are read as a unique prefix elsewhere
    config = operator_toml(fed, tmp_path, "cli-prefix")
    args = schedule_args(config, "by-prefix")
    capsys.readouterr()
    assert schedule_cli.cmd_round_schedule(argparse.Namespace(**args)) == 0
    made = json.loads(capsys.readouterr().out)
    # ids of every schedule this coordinator holds: the shortest prefix naming only this one
    assert schedule_cli.cmd_round_schedule(argparse.Namespace(**{**args, "list": True})) == 0
    others = [s["id"] for s in json.loads(capsys.readouterr().out) if s["id"] != made["id"]]
    n = next(n for n in range(1, 64) if not any(o.startswith(made["id"][:n]) for o in others))
    cancel = {**args, "cancel": made["id"][:n]}
    assert schedule_cli.cmd_round_schedule(argparse.Namespace(**cancel)) == 0
    cancelled = json.loads(capsys.readouterr().out)
    assert (cancelled["id"], cancelled["state"]) == (made["id"], "cancelled")
