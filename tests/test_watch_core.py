"""The sans-I/O watch core (blindmatch/watch.py): epochs, checks and their refusals, no servers.

Time is a value the tests set (``FakeClock``): an epoch ends because the clock passes its end,
never because a test sleeps.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest

from blindmatch.group import ELEMENT_BYTES, RoundKey
from blindmatch.protocol import (
    BadMessage,
    CapExceeded,
    NodeRound,
    Policy,
    PolicyRefusal,
    ProtocolError,
    RoundSpec,
    WrongPhase,
)
from blindmatch.watch import (
    MAX_CHECK_ELEMENTS,
    BadReply,
    CheckFlow,
    CheckPhase,
    CoordinatorEpoch,
    CoordinatorWatch,
    EpochEnded,
    EpochState,
    NodeEpoch,
    NodeWatchCore,
    end_reason,
    filter_key,
)

PARTS = ("a", "b", "c", "d")
T0 = 1_000_000.0


@dataclass
class FakeClock:
    now: float = T0

    def __call__(self) -> float:
        return self.now


def tag(n: int) -> bytes:
    return n.to_bytes(ELEMENT_BYTES, "big")


def epoch_with(filters: dict[str, set[str]], ends: float = T0 + 3600) -> CoordinatorEpoch:
    epoch = CoordinatorEpoch("e1", PARTS, ends)
    epoch.filters = {n: set(filters.get(n, ())) for n in PARTS}
    return epoch


def hub(filters: dict[str, set[str]] | None = None) -> tuple[CoordinatorWatch, FakeClock]:
    clock = FakeClock()
    watch = CoordinatorWatch(clock)
    watch.open(epoch_with(filters or {}))
    return watch, clock


def routed(flow: CheckFlow, shares: bool = True) -> None:
    """Every hop answers with the elements unchanged (keys are the nodes' business)."""
    hop = flow.next_hop
    while hop is not None:
        hop = flow.on_reblinded(hop, flow.elements, shares)


# --- the coordinator's epochs -------------------------------------------------------------------


def test_a_check_visits_every_partner_and_reports_confirmed_hits_only() -> None:
    # b and d hold tag 1 in their filters; d also "holds" tag 2 (a Bloom false positive)
    watch, _ = hub({"b": {filter_key(tag(1))}, "d": {filter_key(tag(1)), filter_key(tag(2))}})
    flow = watch.begin_check("c", "e1", tag(1) + tag(2) + tag(3), None)
    assert flow.route == ("d", "a", "b")
    routed(flow)
    alerts = flow.alerts()
    assert alerts == {"d": tag(1) + tag(2), "b": tag(1)}
    flow.on_alert_reply("d", [True, False])  # d does not find tag 2: never reported
    flow.on_alert_failed("b")  # best effort: an unreachable partner reports nothing
    result = flow.finish()
    assert result.hits == {"d": (0,)}
    assert result.tags == tag(1) + tag(2) + tag(3)
    assert flow.phase is CheckPhase.DONE
    # the checked tags join the checker's filter: later checks alert it
    assert all(filter_key(tag(n)) in flow.epoch.filters["c"] for n in (1, 2, 3))


def test_filters_are_consulted_only_where_both_policies_allow() -> None:
    watch, _ = hub({p: {filter_key(tag(1))} for p in PARTS})
    flow = watch.begin_check("a", "e1", tag(1), frozenset({"b", "c"}))
    for hop in ("b", "c", "d"):
        flow.on_reblinded(hop, flow.elements, share=hop != "c")
    assert set(flow.alerts()) == {"b"}  # c refuses to share, d is outside a's policy


def _check_refusals() -> list[tuple[str, Callable[[CoordinatorWatch], object], type, str]]:
    return [
        ("unknown epoch", lambda w: w.begin_check("a", "e0", tag(1), None), EpochEnded, "no epoch"),
        ("not a participant", lambda w: w.begin_check("z", "e1", tag(1), None), PolicyRefusal, ""),
        ("no elements", lambda w: w.begin_check("a", "e1", b"", None), BadMessage, "whole"),
        ("partial element", lambda w: w.begin_check("a", "e1", b"x" * 33, None), BadMessage, ""),
        (
            "too many elements",
            lambda w: w.begin_check("a", "e1", b"\0" * 32 * (MAX_CHECK_ELEMENTS + 1), None),
            BadMessage,
            "at most",
        ),
    ]


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [c[1:] for c in _check_refusals()],
    ids=[c[0] for c in _check_refusals()],
)
def test_check_requests_are_refused(
    call: Callable[[CoordinatorWatch], object], error: type[ProtocolError], match: str
) -> None:
    watch, _ = hub()
    with pytest.raises(error, match=match or None):
        call(watch)


def _reply_refusals() -> list[tuple[str, Callable[[CheckFlow], object], type, str]]:
    def after_alerts(flow: CheckFlow) -> CheckFlow:
        routed(flow)
        flow.alerts()
        return flow

    return [
        ("wrong sender", lambda f: f.on_reblinded("a", f.elements, True), BadReply, "expected"),
        ("the checker itself", lambda f: f.on_reblinded("c", f.elements, True), BadReply, ""),
        ("fewer elements", lambda f: f.on_reblinded("d", tag(1), True), BadReply, "bytes"),
        ("more elements", lambda f: f.on_reblinded("d", f.elements + tag(9), True), BadReply, ""),
        ("partial element", lambda f: f.on_reblinded("d", f.elements[:-1], True), BadReply, ""),
        ("alerts before routing", lambda f: f.alerts(), WrongPhase, "routing"),
        ("answer before routing", lambda f: f.finish(), WrongPhase, ""),
        (
            "short Alert answer",  # was zipped with the tags sent, unchecked
            lambda f: after_alerts(f).on_alert_reply("d", [True]),
            BadReply,
            "1 flags for an Alert of 2",
        ),
        (
            "long Alert answer",
            lambda f: after_alerts(f).on_alert_reply("d", [True, True, True]),
            BadReply,
            "",
        ),
        (
            "Alert answer from a partner not alerted",
            lambda f: after_alerts(f).on_alert_reply("a", [True]),
            BadReply,
            "owes none",
        ),
        ("answer with Alerts unanswered", lambda f: after_alerts(f).finish(), WrongPhase, "d"),
        (
            "routing after routing",
            lambda f: after_alerts(f).on_reblinded("d", b"", True),
            WrongPhase,
            "",
        ),
    ]


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [c[1:] for c in _reply_refusals()],
    ids=[c[0] for c in _reply_refusals()],
)
def test_replies_that_break_the_rules_are_refused(
    call: Callable[[CheckFlow], object], error: type[ProtocolError], match: str
) -> None:
    watch, _ = hub({"d": {filter_key(tag(1)), filter_key(tag(2))}})
    flow = watch.begin_check("c", "e1", tag(1) + tag(2), None)
    with pytest.raises(error, match=match or None):
        call(flow)


def test_an_answer_is_counted_once() -> None:
    watch, _ = hub({"d": {filter_key(tag(1))}})
    flow = watch.begin_check("c", "e1", tag(1), None)
    routed(flow)
    flow.alerts()
    flow.on_alert_reply("d", [True])
    with pytest.raises(BadReply, match="owes none"):
        flow.on_alert_reply("d", [True])


def test_bad_replies_keep_the_rounds_status_rule() -> None:
    # a partner's or the coordinator's broken reply is not the caller's bad argument
    assert issubclass(BadReply, BadMessage) and BadReply.code == "INTERNAL"


def test_the_clock_ends_the_epoch_without_sleeping() -> None:
    watch, clock = hub()
    epoch = watch.epoch
    assert epoch is not None
    watch.begin_check("a", "e1", tag(1), None)
    clock.now = epoch.ends - 0.001
    assert watch.expire() is None
    clock.now = epoch.ends
    # not yet expired by the caller: refused all the same
    with pytest.raises(EpochEnded, match="ended at"):
        watch.begin_check("a", "e1", tag(1), None)
    assert watch.expire() is epoch and epoch.state is EpochState.ENDED
    assert watch.epoch is None and epoch.filters == {}
    for _ in range(2):  # and every later check of it names its end
        with pytest.raises(EpochEnded, match="epoch e1 ended at"):
            watch.begin_check("a", "e1", tag(1), None)
    assert watch.expire() is None


def test_a_new_epoch_replaces_the_open_one() -> None:
    watch, clock = hub()
    first = watch.epoch
    assert first is not None
    assert watch.epoch_end(60) == clock.now + 60
    second = CoordinatorEpoch("e2", ("a", "b"), T0 + 60)
    closing = watch.open(second)
    assert closing is not None and closing.nodes == ("c", "d") and "e2" in closing.reason
    assert first.state is EpochState.REPLACED and watch.epoch is second
    with pytest.raises(EpochEnded, match="current epoch is e2"):
        watch.begin_check("a", "e1", tag(1), None)
    # read back after a restart: kept only until its end
    assert watch.restorable(second)
    clock.now = second.ends
    assert not watch.restorable(second)


# --- the node's side ----------------------------------------------------------------------------


def node_core(me: str = "a", budget: int = 10) -> tuple[NodeWatchCore, FakeClock]:
    clock = FakeClock()
    core = NodeWatchCore(me, budget, clock)
    core.epoch = NodeEpoch("e1", me, PARTS, T0 + 3600, RoundKey.generate(), budget)
    return core, clock


def test_a_node_check_reports_partners_and_remembers_its_tags() -> None:
    core, clock = node_core()
    flow = core.start_check(
        ["10.9.9.9", "no way", "x@y.example", "new.example"],
        "",
        Policy(kinds=frozenset({"ipv4", "domain"})),
    )
    assert flow.items == [("ipv4", "10.9.9.9"), ("domain", "new.example")]
    assert flow.results[1].error and "outside this node's policy" in flow.results[2].error
    flow.open(core.epoch, clock())
    flow.on_reply(tag(1) + tag(2), {"b": [0], "c": [0]})
    assert flow.results[0].partners == ["b", "c"] and flow.results[3].partners == []
    assert flow.alerts == [("ipv4", "10.9.9.9", "b", "check"), ("ipv4", "10.9.9.9", "c", "check")]
    assert flow.hit_values == 1
    assert core.alert("e1", tag(2)) == [("domain", "new.example")]


def _node_reply_refusals() -> list[tuple[str, bytes, dict[str, list[int]], str]]:
    two = tag(1) + tag(2)
    return [
        ("too few tags", tag(1), {}, "32 bytes of tags for 2"),
        ("too many tags", two + tag(3), {}, ""),
        ("partial tag", two[:-1], {}, ""),
        ("index out of range", two, {"b": [2]}, "hit 2 of b"),  # was silently dropped
        ("negative index", two, {"b": [-1]}, ""),
        ("duplicate index", two, {"b": [1, 1]}, "twice"),  # was alerted twice
        ("hits of the checker", two, {"a": [0]}, "not a partner"),
        ("hits of a stranger", two, {"z": [0]}, "not a partner"),
    ]


@pytest.mark.parametrize(
    ("tags", "hits", "match"),
    [c[1:] for c in _node_reply_refusals()],
    ids=[c[0] for c in _node_reply_refusals()],
)
def test_a_node_refuses_a_broken_answer(
    tags: bytes, hits: dict[str, list[int]], match: str
) -> None:
    core, clock = node_core()
    flow = core.start_check(["one.example", "two.example"], "domain", Policy())
    flow.open(core.epoch, clock())
    with pytest.raises(BadReply, match=match or None):
        flow.on_reply(tags, hits)
    assert core.epoch is not None and tag(1) not in core.epoch.tags  # nothing was applied


def test_node_check_refusals() -> None:
    core, clock = node_core()
    with pytest.raises(BadMessage, match="no values"):
        core.start_check([], "", Policy())
    flow = core.start_check(["x.example"], "", Policy())
    with pytest.raises(WrongPhase, match="asking"):
        flow.on_reply(tag(1), {})
    with pytest.raises(WrongPhase, match="no watch epoch"):
        flow.open(None, clock())
    clock.now = T0 + 3600
    with pytest.raises(EpochEnded, match="ended at"):
        flow.open(core.epoch, clock())


def test_partner_calls_are_refused_by_the_rules() -> None:
    core, clock = node_core(budget=2)
    refusals: list[tuple[Callable[[], object], type[ProtocolError], str]] = [
        (lambda: core.reblind("e1", "b", b""), BadMessage, "whole"),
        (lambda: core.reblind("e9", "b", tag(1)), WrongPhase, "no key for epoch e9"),
        (lambda: core.reblind("e1", "a", tag(1)), PolicyRefusal, ""),  # itself
        (lambda: core.reblind("e1", "b", tag(1) * 3), CapExceeded, "check_budget"),
        (lambda: core.alert("e1", b"x"), BadMessage, "whole number"),
        (lambda: core.begin("r1", False, T0 + 1, b"", "hub"), WrongPhase, "no round"),
        (lambda: core.begin("r1", True, T0, b"", "hub"), BadMessage, "in the past"),
        (lambda: core.begin("r1", True, T0 + 1, b"x", "hub"), BadMessage, "whole"),
    ]
    for call, error, match in refusals:
        with pytest.raises(error, match=match or None):
            call()
    assert core.reblind("e1", "b", tag(1) * 2) is not None  # the refusals cost nothing
    clock.now = T0 + 3600
    with pytest.raises(EpochEnded):
        core.reblind("e1", "c", tag(1))


def test_the_clock_ends_the_node_epoch_without_sleeping() -> None:
    core, clock = node_core()
    epoch = core.epoch
    assert epoch is not None
    assert core.expired() is None
    clock.now = epoch.ends
    assert core.expired() is epoch
    assert core.close(epoch, end_reason(epoch)) is True
    assert core.epoch is None and epoch.key is None and "ended at" in (epoch.closed or "")
    assert core.close(epoch, "again") is False  # idempotent: the end is recorded once
    assert core.to_close("e1") is None


def test_a_delivered_watch_round_becomes_the_epoch() -> None:
    state = NodeRound(RoundSpec("w1", ("a", "b")), "a", Policy(), [(1, "domain", "x.example")])
    state.begin_routing({"a": 1, "b": 0})
    core = NodeWatchCore("a", 5, FakeClock())
    assert core.capture(state) is None  # not announced by BeginEpoch: not a watch round
    assert core.begin("w1", True, T0 + 60, tag(7), "hub") == 1
    captured = core.capture(state)
    assert captured is not None
    epoch, pending, old = captured
    assert old is None and pending.coordinator == "hub" and core.epoch is epoch
    assert epoch.lookup([tag(7)]) == [("domain", "x.example")]
    core.begin("w2", True, T0 + 60, b"", "hub")
    core.drop_pending(["w3"])  # w2's round failed after BeginEpoch
    assert core.pending == {}
