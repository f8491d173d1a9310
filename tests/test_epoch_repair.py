"""Early warning heals (issue 19, requirement 2): a node restart degrades the epoch, the
coordinator shows it, and under a standing watch order it repairs it once every node is back.

A real federation (nodes and coordinator on 127.0.0.1, mTLS, the session's test CA) with
metrics on. The coordinator's scheduler thread is stopped so the test starts runs and repairs by
calling ``tick`` once the state it needs is reached; its clock stays the real one, as the nodes'
do, so the runs it starts are due by theirs. The hub polls its nodes often (``poll_seconds``)
so the test waits for what a poll finds, not for a period. The refusals are hand-made Prepares
with the coordinator's real certificate, as in test_schedules.py.
"""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, replace

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from blindmatch.core.errors import BadMessage
from blindmatch.core.orders import MAX_REPAIRS, StandingOrder
from blindmatch.core.signing import MAX_SPEC_SKEW, SignedOrder, StaleSpec
from blindmatch.runtime import net, serde
from blindmatch.v1 import coordinator_pb2, node_pb2
from blindmatch.v2 import node_pb2_grpc, watch_pb2, watch_pb2_grpc
from coordinator import operator_cli, schedule_cli
from coordinator.records import MemoryRoundStore
from coordinator.schedules import REPAIR_PAUSE, Scheduler
from coordinator.watch import EpochHealth, WatchHub
from tests.federation import (
    TEST_CHUNK,
    Federation,
    Setup,
    check,
    held,
    partners_of,
    signer,
    watching,
)
from tests.pkifixtures import FederationPki
from tests.waiting import until

NAMES = ("alpha", "bravo", "charlie")
HELD = {
    "alpha": [("domain", "shared.example"), ("domain", "alpha-only.example")],
    "bravo": [("domain", "shared.example")],
    "charlie": [("domain", "charlie-only.example")],
}
EVERY = 3600.0
T = 20.0
Code = grpc.StatusCode


def watch_order(
    *, first: float, every: float = EVERY, until: float = 0.0, mode: str = "watch"
) -> StandingOrder:
    return schedule_cli.new_order(
        "heal",
        NAMES,
        mode,
        every=every,
        first=first,
        until=until,
        kinds=["domain"],
        epoch=EVERY if mode == "watch" else None,
        chunk_size=TEST_CHUNK,
        issued=time.time(),
    )


# --- the rule, on the order alone --------------------------------------------------------------


def test_a_repair_is_run_k_again_within_its_period_and_bounded() -> None:
    o = watch_order(first=1000.0, until=1000.0 + 2.5 * EVERY)
    spec = o.run_spec(1, 2)
    assert spec.round_id == f"{o.schedule_id}-1r2"
    # the same round as run 1 but for its id: participants, mode, kinds, epoch, time
    assert replace(spec, round_id=o.run_spec(1).round_id) == o.run_spec(1)
    # anywhere within period 1, a little skew early included
    for now in (1000.0 + EVERY - MAX_SPEC_SKEW + 1, 1000.0 + 1.5 * EVERY, 1000.0 + 2 * EVERY - 1):
        o.check_repair(1, MAX_REPAIRS, now)
    for k, j, now, problem in [
        (1, 1, 1000.0 + EVERY - MAX_SPEC_SKEW - 1, "is not due for"),
        (1, 1, 1000.0 + 2 * EVERY, "past its period"),  # run 2 is due: it opens the next epoch
        (2, 1, 1000.0 + 2.5 * EVERY, "past its period"),  # the order's end
        (3, 1, 1000.0 + 3 * EVERY, "has no run 3"),
    ]:
        with pytest.raises(StaleSpec, match=problem):
            o.check_repair(k, j, now)
    for j in (0, MAX_REPAIRS + 1):
        with pytest.raises(BadMessage, match=f"repairs 1 to {MAX_REPAIRS} only"):
            o.check_repair(1, j, 1000.0 + 1.5 * EVERY)
    with pytest.raises(BadMessage, match=f"repairs 1 to {MAX_REPAIRS} only"):
        o.run_spec(1, MAX_REPAIRS + 1)
    plain = watch_order(first=1000.0, mode="pairwise")
    with pytest.raises(BadMessage, match="not a watch order"):
        plain.run_spec(0, 1)


def test_a_repair_crosses_the_wire_and_only_with_an_order(pki: FederationPki) -> None:
    o = watch_order(first=1000.0)
    signed = SignedOrder.sign(signer(pki), serde.order_to_bytes(o))
    msg = serde.prepare_to_proto(serde.scheduled_run(signed, o, 0, 2), 60.0)
    run, spec = serde.prepare_from_proto(
        node_pb2.PrepareRequest.FromString(msg.SerializeToString())
    )
    assert spec.round_id == f"{o.schedule_id}-0r2" and getattr(run, "repair", None) == 2
    spec_only = node_pb2.PrepareRequest(signed_spec=node_pb2.SignedSpec(), repair=1)
    with pytest.raises(BadMessage, match="repair 1 comes only with a standing order"):
        serde.prepare_from_proto(spec_only)


# --- a real federation -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def federation_setup() -> Setup:
    return Setup(NAMES, held(HELD), configure=watching, metrics=True)


@dataclass
class Fed:
    fed: Federation
    pki: FederationPki
    hub: WatchHub
    scheduler: Scheduler
    nodes: dict[str, node_pb2_grpc.NodeServiceStub]  # as the coordinator, hand-made calls


@pytest.fixture(scope="module")
def healing(fed: Federation, pki: FederationPki) -> Iterator[Fed]:
    assert fed.coordinator is not None and fed.coordinator.watch is not None
    hub = fed.coordinator.watch
    hub.poll_seconds = 0.1  # a test waits for what a poll finds
    hub.poll_now()  # the poller is waiting out the default period: start the short one now
    scheduler = fed.coordinator.scheduler
    scheduler.stop()  # the test ticks it itself, once the state it needs is there
    channels = {name: fed.as_coordinator(name) for name in NAMES}
    try:
        stubs = {name: node_pb2_grpc.NodeServiceStub(ch) for name, ch in channels.items()}
        yield Fed(fed, pki, hub, scheduler, stubs)
    finally:
        for channel in channels.values():
            channel.close()


_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # no http_proxy


def degraded_gauge(f: Fed) -> float:
    assert f.fed.coordinator is not None and f.fed.coordinator.metrics is not None
    url = f"http://{f.fed.coordinator.metrics.address}/metrics"
    with _DIRECT.open(url, timeout=10) as reply:
        text = reply.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "blindmatch_coordinator_epoch_degraded_nodes":
                return float(sample.value)
    raise AssertionError("no epoch_degraded_nodes gauge")


def status_of(f: Fed, round_id: str) -> coordinator_pb2.RoundInfo:
    request = coordinator_pb2.GetRoundRequest(id=round_id)
    info: coordinator_pb2.RoundInfo = f.fed.stub.GetRound(request, timeout=T)
    return info


def restart(f: Fed, name: str) -> None:
    """Stop node ``name`` and start it again where the coordinator's registry says it listens
    (a real node keeps its address across a restart)."""
    port = f.fed.nodes[name].port
    f.fed.nodes[name].stop(grace=0.5)
    f.fed.configs[name] = replace(f.fed.configs[name], listen=f"127.0.0.1:{port}")
    node = f.fed.start_node(name)
    assert node.watch is not None and node.watch.epoch is None  # its key died with it
    assert f.fed.coordinator is not None
    node.watch.connect_coordinator(f"127.0.0.1:{f.fed.coordinator.port}")


def test_an_epoch_lost_by_a_restart_is_shown_and_repaired(healing: Fed) -> None:
    f = healing
    o = watch_order(first=time.time() - 5)  # run 0 is due now by every clock
    request = coordinator_pb2.ScheduleRequest(
        order=serde.signed_order_to_proto(SignedOrder.sign(signer(f.pki), serde.order_to_bytes(o)))
    )
    f.fed.stub.Schedule(request, timeout=T)
    (run0,) = f.scheduler.tick()
    assert run0 == f"{o.schedule_id}-0"
    assert f.fed.wait(run0).state == "done"
    until("every node holds the epoch", lambda: f.hub.health() == _healthy(run0), T)
    assert partners_of(check(f.fed, "bravo", ["shared.example"]))["shared.example"] == {"alpha"}
    assert status_of(f, run0).epoch_state == "open"
    assert f.scheduler.tick() == []  # nothing to repair

    restart(f, "charlie")
    health = until(
        "the hub sees charlie's lost key",
        lambda: (h := f.hub.health()) is not None and any(x.lost for x in h.losses) and h,
        T,
    )
    (loss,) = health.losses
    assert loss.node == "charlie" and "holds no key for epoch" in loss.reason
    # a partner's check fails through charlie, which holds no share any more
    with pytest.raises(grpc.RpcError) as err:
        check(f.fed, "bravo", ["shared.example"])
    assert "charlie" in (err.value.details() or "")

    info = status_of(f, run0)
    assert info.epoch_state == "degraded" and [d.node for d in info.degraded] == ["charlie"]
    shown = operator_cli.summary(info)
    assert "epoch degraded: 1 node(s)" in shown and "charlie" in shown
    listed = f.fed.stub.ListRounds(coordinator_pb2.ListRoundsRequest(), timeout=T).rounds
    assert "epoch degraded (charlie)" in operator_cli.table(listed)
    assert operator_cli.info_dict(info)["epoch_state"] == "degraded"
    assert degraded_gauge(f) == 1.0

    # every node answers again: the scheduler repairs the epoch under the order's signature
    until("every node answers", lambda: f.hub.repairable(run0), T)
    (repair,) = f.scheduler.tick()
    assert repair == f"{o.schedule_id}-0r1"
    done = f.fed.wait(repair)
    assert done.state == "done", done.error
    for name in NAMES:  # each node verified and took part in it
        with f.fed.store(name) as store:
            entry = next(r for r in store.rounds() if r.round_id == repair)
        assert entry.outcome == "done"
        watch = f.fed.nodes[name].watch
        assert watch is not None and watch.epoch is not None and watch.epoch.epoch_id == repair
    until("the new epoch is healthy", lambda: f.hub.health() == _healthy(repair), T)
    assert degraded_gauge(f) == 0.0
    assert status_of(f, repair).epoch_state == "open"
    assert status_of(f, run0).epoch_state == ""  # no longer the open epoch
    # checks work again, through charlie too
    assert partners_of(check(f.fed, "bravo", ["shared.example"]))["shared.example"] == {"alpha"}
    assert partners_of(check(f.fed, "alpha", ["charlie-only.example"]))["charlie-only.example"] == {
        "charlie"
    }
    assert f.scheduler.tick() == []  # healthy: no further repair
    # the order stays in force; cancelled so that nothing else of this module runs it
    f.fed.stub.CancelSchedule(coordinator_pb2.CancelScheduleRequest(id=o.schedule_id), timeout=T)


def _healthy(epoch_id: str) -> EpochHealth:
    return EpochHealth(epoch_id, ())


@pytest.mark.parametrize("attack", ["past-period", "future-period", "beyond-bound", "not-watch"])
def test_nodes_refuse_a_repair_the_order_does_not_allow(healing: Fed, attack: str) -> None:
    f = healing
    now = time.time()
    run, repair, first, mode = 0, 1, now - 5, "watch"
    if attack == "past-period":  # period 0 ended: run 1 is due, and opens the next epoch
        first = now - EVERY - 5
    elif attack == "future-period":
        run = 1
    elif attack == "beyond-bound":
        repair = MAX_REPAIRS + 1
    elif attack == "not-watch":
        mode = "pairwise"
    o = watch_order(first=first, mode=mode)
    msg = serde.signed_order_to_proto(SignedOrder.sign(signer(f.pki), serde.order_to_bytes(o)))
    code, problem = {
        "past-period": (Code.PERMISSION_DENIED, "past its period"),
        "future-period": (Code.PERMISSION_DENIED, "is not due for"),
        "beyond-bound": (Code.INVALID_ARGUMENT, f"repairs 1 to {MAX_REPAIRS} only"),
        "not-watch": (Code.INVALID_ARGUMENT, "not a watch order"),
    }[attack]
    with pytest.raises(grpc.RpcError) as err:
        f.nodes["alpha"].Prepare(
            node_pb2.PrepareRequest(order=msg, run=run, repair=repair), timeout=T
        )
    assert err.value.code() == code, err.value.details()
    assert problem in (err.value.details() or "")
    assert f.fed.nodes["alpha"].rounds.active() == []


def test_only_the_coordinator_asks_a_node_for_its_epoch_state(healing: Fed) -> None:
    """A partner (or the node's own CLI certificate) must not probe who holds which epoch."""
    request = watch_pb2.EpochStateRequest(epoch_id="any")
    address = f"127.0.0.1:{healing.fed.nodes['bravo'].port}"
    for name in ("alpha", "bravo"):
        tls = healing.pki.tls(name, "node")
        with (
            net.open_channel(address, tls, insecure=False, expect=net.Allow("node", "bravo")) as ch,
            pytest.raises(grpc.RpcError) as err,
        ):
            watch_pb2_grpc.NodeWatchServiceStub(ch).EpochState(request, timeout=T)
        assert err.value.code() == Code.PERMISSION_DENIED, err.value.details()
    with healing.fed.as_coordinator("bravo") as ch:
        reply = watch_pb2_grpc.NodeWatchServiceStub(ch).EpochState(request, timeout=T)
    assert not reply.held


class LostEpoch:
    """A hub whose open epoch (the latest round the coordinator started) always lost a key:
    what the scheduler reads of coordinator/watch.py's WatchHub."""

    def __init__(self, started: list[str]) -> None:
        self.started = started

    @property
    def open_epoch_id(self) -> str | None:
        return self.started[-1] if self.started else None

    def repairable(self, epoch_id: str) -> bool:
        return True


def test_the_scheduler_repairs_within_the_period_a_bounded_number_of_times(
    pki: FederationPki,
) -> None:
    started: list[str] = []
    clock = [1000.0]
    scheduler = Scheduler(
        MemoryRoundStore(),
        lambda run, operator: started.append(run.spec.round_id),
        lambda round_id: False,  # every round ends at once
        lambda: clock[0],
        epochs=LostEpoch(started),
    )
    o = watch_order(first=1000.0)
    scheduler.add(SignedOrder.sign(signer(pki), serde.order_to_bytes(o)), o, "ops")
    assert scheduler.tick() == [f"{o.schedule_id}-0"]
    assert scheduler.tick() == [f"{o.schedule_id}-0r1"]
    assert scheduler.tick() == []  # the pause between two repairs
    for j in range(2, MAX_REPAIRS + 1):
        clock[0] += REPAIR_PAUSE
        assert scheduler.tick() == [f"{o.schedule_id}-0r{j}"]
    clock[0] += REPAIR_PAUSE
    assert scheduler.tick() == []  # the period's repairs are used up
    clock[0] = 1000.0 + EVERY  # run 1 opens the next epoch, and has repairs of its own
    assert scheduler.tick() == [f"{o.schedule_id}-1"]
    clock[0] += REPAIR_PAUSE
    assert scheduler.tick() == [f"{o.schedule_id}-1r1"]
    assert scheduler.views()[0].record.runs == 2  # repairs are not runs of the order
