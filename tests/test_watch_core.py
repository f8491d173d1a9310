"""The sans-I/O watch core (blindmatch/watch.py): epochs, checks and their refusals, no servers.

Time is a value the tests set (``FakeClock``): an epoch ends because the clock passes its end,
never because a test sleeps.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import pytest

from blindmatch.group import ELEMENT_BYTES, RoundKey, hash_indicators
from blindmatch.pki import issue, new_ca
from blindmatch.protocol import (
    BadMessage,
    CapExceeded,
    ListedSet,
    NodeRound,
    Policy,
    PolicyRefusal,
    ProtocolError,
    RoundSpec,
    WrongPhase,
)
from blindmatch.signing import CheckClaim, ForgedMessage, Signer, Trust
from blindmatch.states import EpochPhase
from blindmatch.watch import (
    MAX_CHECK_ELEMENTS,
    BadReply,
    CheckHop,
    EpochEnded,
    NodeEpoch,
    NodeWatchCore,
    WatchSettings,
    end_reason,
)
from blindmatch.watchhub import (
    CheckFlow,
    CheckPhase,
    CoordinatorEpoch,
    CoordinatorWatch,
    filter_key,
    seal,
)

PARTS = ("a", "b", "c", "d")
T0 = float(int(time.time()))  # certificates are valid now: the node verifies signatures


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


def first(checker: str, epoch_id: str, elements: bytes, check_id: str = "ab" * 8) -> CheckHop:
    """A checker's hop-0 elements (the nodes verify signatures; the coordinator forwards them)."""
    return CheckHop(epoch_id, checker, check_id, 0, elements, b"sig", b"cert")


def begin(
    watch: CoordinatorWatch,
    checker: str,
    epoch_id: str,
    elements: bytes,
    allowed: frozenset[str] | None = None,
    check_id: str = "ab" * 8,
) -> CheckFlow:
    return watch.begin_check(first(checker, epoch_id, elements, check_id), allowed, checker=checker)


def hub(filters: dict[str, set[str]] | None = None) -> tuple[CoordinatorWatch, FakeClock]:
    clock = FakeClock()
    watch = CoordinatorWatch(clock)
    watch.open(epoch_with(filters or {}))
    return watch, clock


def routed(flow: CheckFlow, shares: bool = True) -> None:
    """Every hop answers with the elements unchanged (keys are the nodes' business), and the
    checker sends them back as its unmasked tags."""
    hop = flow.next_hop
    while hop is not None:
        hop = flow.on_reblinded(hop, flow.elements, shares)
    flow.on_unmasked(flow.elements)


# --- the coordinator's epochs -------------------------------------------------------------------


def test_a_check_visits_every_partner_and_reports_confirmed_hits_only() -> None:
    # b and d hold tag 1 in their filters; d also "holds" tag 2 (a Bloom false positive)
    watch, _ = hub({"b": {filter_key(tag(1))}, "d": {filter_key(tag(1)), filter_key(tag(2))}})
    flow = begin(watch, "c", "e1", tag(1) + tag(2) + tag(3))
    assert flow.route == ("d", "a", "b")
    routed(flow)
    alerts = flow.alerts()
    assert alerts == {"d": tag(1) + tag(2), "b": tag(1)}
    flow.on_alert_reply("d", [True, False])  # d does not find tag 2: never reported
    flow.on_alert_failed("b")  # best effort: an unreachable partner reports nothing
    result = flow.finish()
    assert result.hits == {"d": (0,)}
    assert flow.phase is CheckPhase.DONE
    # the checked tags join the checker's filter: later checks alert it
    assert all(filter_key(tag(n)) in flow.epoch.filters["c"] for n in (1, 2, 3))


def test_filters_are_consulted_only_where_both_policies_allow() -> None:
    watch, _ = hub({p: {filter_key(tag(1))} for p in PARTS})
    flow = begin(watch, "a", "e1", tag(1), frozenset({"b", "c"}))
    for hop in ("b", "c", "d"):
        flow.on_reblinded(hop, flow.elements, share=hop != "c")
    flow.on_unmasked(flow.elements)
    assert set(flow.alerts()) == {"b"}  # c refuses to share, d is outside a's policy


def begin_id(watch: CoordinatorWatch, check_id: str) -> CoordinatorWatch:
    watch.begin_check(first("a", "e1", tag(1), check_id), None, checker="a")
    return watch


def _check_refusals() -> list[tuple[str, Callable[[CoordinatorWatch], object], type, str]]:
    return [
        ("unknown epoch", lambda w: begin(w, "a", "e0", tag(1)), EpochEnded, "no epoch"),
        ("not a participant", lambda w: begin(w, "z", "e1", tag(1)), PolicyRefusal, ""),
        ("no elements", lambda w: begin(w, "a", "e1", b""), BadMessage, "whole"),
        ("partial element", lambda w: begin(w, "a", "e1", b"x" * 33), BadMessage, ""),
        (
            "too many elements",
            lambda w: begin(w, "a", "e1", b"\0" * 32 * (MAX_CHECK_ELEMENTS + 1)),
            BadMessage,
            "at most",
        ),
        (
            "in another node's name",
            lambda w: w.begin_check(first("b", "e1", tag(1)), None, checker="a"),
            PolicyRefusal,
            "in the name of b",
        ),
        ("a malformed check id", lambda w: begin_id(w, "not hex"), BadMessage, "hex"),
        (
            "a check id in flight",
            lambda w: begin_id(begin_id(w, "cd" * 8), "cd" * 8),
            ProtocolError,
            "in flight",
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
        ("tags before routing", lambda f: f.on_unmasked(f.elements), WrongPhase, "routing"),
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
    flow = begin(watch, "c", "e1", tag(1) + tag(2))
    with pytest.raises(error, match=match or None):
        call(flow)


def test_an_answer_is_counted_once() -> None:
    watch, _ = hub({"d": {filter_key(tag(1))}})
    flow = begin(watch, "c", "e1", tag(1))
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
    begin(watch, "a", "e1", tag(1))
    clock.now = epoch.ends - 0.001
    assert watch.expire() is None
    clock.now = epoch.ends
    # not yet expired by the caller: refused all the same
    with pytest.raises(EpochEnded, match="ended at"):
        begin(watch, "a", "e1", tag(1), check_id="cd" * 8)
    assert watch.expire() is epoch and epoch.phase is EpochPhase.CLOSED
    assert "ended at" in (epoch.closed or "")
    assert watch.epoch is None and epoch.filters == {} and epoch.key is None
    for _ in range(2):  # and every later check of it names its end
        with pytest.raises(EpochEnded, match="epoch e1 ended at"):
            begin(watch, "a", "e1", tag(1), check_id="ef" * 8)
    assert watch.expire() is None


def test_a_new_epoch_replaces_the_open_one() -> None:
    watch, clock = hub()
    previous = watch.epoch
    assert previous is not None
    assert watch.epoch_end(60) == clock.now + 60
    second = CoordinatorEpoch("e2", ("a", "b"), T0 + 60)
    closing = watch.open(second)
    assert closing is not None and closing.nodes == ("c", "d") and "e2" in closing.reason
    assert previous.phase is EpochPhase.CLOSED and previous.closed == "replaced by epoch e2"
    assert watch.epoch is second
    with pytest.raises(EpochEnded, match="current epoch is e2"):
        begin(watch, "a", "e1", tag(1))
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


CA = new_ca()
SIGNERS = {n: Signer(m.cert_pem, m.key_pem) for n in PARTS for m in [issue(CA, n, "node")]}
TRUST = Trust(CA.cert_pem)


def signed(checker: str, hop: int, elements: bytes, by: str, check_id: str = "ab" * 8) -> CheckHop:
    """Check elements of ``hop`` signed by ``by`` (the right producer, or not)."""
    claim = CheckClaim("e1", b"", checker, check_id, hop, elements)
    s = SIGNERS[by]
    return CheckHop("e1", checker, check_id, hop, elements, s.sign(claim.message()), s.cert_pem)


def test_partner_calls_are_refused_by_the_rules() -> None:
    core, clock = node_core(budget=2)  # "a"; b's checks reach it at hop 3 (route c, d, a)
    good = signed("b", 2, tag(1) * 2, by="d")
    refusals: list[tuple[Callable[[], object], type[ProtocolError], str]] = [
        (lambda: core.reblind(signed("b", 2, b"", by="d"), TRUST), BadMessage, "whole"),
        (lambda: core.reblind(replace(good, epoch_id="e9"), TRUST), WrongPhase, "no key for e"),
        (lambda: core.reblind(signed("a", 0, tag(1), by="a"), TRUST), PolicyRefusal, "own"),
        (lambda: core.reblind(signed("z", 0, tag(1), by="b"), TRUST), PolicyRefusal, "z"),
        (lambda: core.reblind(good, None), ForgedMessage, "no federation identity"),
        # the coordinator plays the checker, another hop, or forwards without a signature
        (lambda: core.reblind(signed("b", 2, tag(1), by="c"), TRUST), ForgedMessage, "not one"),
        (lambda: core.reblind(signed("b", 1, tag(1), by="c"), TRUST), ForgedMessage, "hop 3"),
        (lambda: core.reblind(replace(good, signature=b""), TRUST), ForgedMessage, "no valid"),
        (lambda: core.reblind(replace(good, elements=tag(2) * 2), TRUST), ForgedMessage, "not"),
        (lambda: core.reblind(replace(good, check_id="x"), TRUST), BadMessage, "hex"),
        (lambda: core.reblind(signed("b", 2, tag(1) * 3, by="d"), TRUST), CapExceeded, "budget"),
        (lambda: core.alert("e1", b"x"), BadMessage, "whole number"),
    ]
    for call, error, match in refusals:
        with pytest.raises(error, match=match or None):
            call()
    key, output = core.reblind(good, TRUST)  # the refusals cost nothing
    assert key is not None and output(tag(3)).hop == 3 and output(tag(3)).checker == "b"
    with pytest.raises(ProtocolError, match="already blinded"):  # a check is blinded once
        core.reblind(good, TRUST)
    clock.now = T0 + 3600
    with pytest.raises(EpochEnded):
        core.reblind(signed("c", 1, tag(1), by="c", check_id="cd" * 8), TRUST)


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


def _watch_round(rid: str, epoch_seconds: float = 600.0) -> NodeRound:
    spec = RoundSpec(rid, ("a", "b"), epoch_seconds=epoch_seconds)
    state = NodeRound(spec, "a", Policy(), ListedSet([(1, "domain", "x.example")]))
    state.begin_routing({"a": 1, "b": 0})
    return state


def test_a_watch_round_is_staged_then_opened_by_its_delivery() -> None:
    clock = FakeClock()
    core = NodeWatchCore("a", 5, clock)
    plain = NodeRound(
        RoundSpec("p1", ("a", "b")), "a", Policy(), ListedSet([(1, "domain", "x.example")])
    )
    plain.begin_routing({"a": 1, "b": 0})
    refusals: list[tuple[Callable[[], object], type[ProtocolError], str]] = [
        (lambda: core.begin("r1", None, T0 + 1, b"", "hub"), WrongPhase, "no round"),
        (lambda: core.begin("p1", plain, T0 + 1, tag(7), "hub"), PolicyRefusal, "not announced"),
        (lambda: core.begin("w0", _watch_round("w0"), T0, tag(7), "hub"), BadMessage, "past"),
        (lambda: core.begin("w0", _watch_round("w0"), T0 + 1, b"x", "hub"), BadMessage, "whole"),
        (lambda: core.begin("w0", _watch_round("w0"), T0 + 1, tag(7) * 2, "hub"), BadMessage, "2"),
    ]
    for call, error, match in refusals:
        with pytest.raises(error, match=match or None):
            call()
    assert core.delivered("p1") is None  # not staged: not a watch round
    state = _watch_round("w1")
    # the coordinator asks for more than the spec announced: the node keeps it 600 s only
    staged = core.begin("w1", state, T0 + 10**9, tag(7), "hub")
    assert staged.phase is EpochPhase.PENDING and staged.ends == T0 + 600
    with pytest.raises(EpochEnded, match="pending"):  # no check before the delivery
        staged.require_open(T0)
    opened = core.delivered("w1")
    assert opened is not None
    epoch, old = opened
    assert epoch is staged and old is None and core.epoch is epoch
    assert epoch.phase is EpochPhase.OPEN and epoch.lookup([tag(7)]) == [("domain", "x.example")]


@pytest.mark.parametrize("opened", [False, True], ids=["staged", "delivered"])
def test_any_other_end_of_a_watch_round_destroys_its_key(opened: bool) -> None:
    core = NodeWatchCore("a", 5, FakeClock())
    epoch = core.begin("w1", _watch_round("w1"), T0 + 60, tag(7), "hub")
    if opened:
        core.delivered("w1")
    ending = core.abandoned("w1")  # a failure, a refused delivery, an Abort
    assert ending is epoch
    assert core.close(epoch, "aborted") is opened
    assert epoch.key is None and epoch.phase is EpochPhase.CLOSED and epoch.tags == {}
    assert core.epoch is None and core.pending == {}
    assert core.abandoned("w1") is None


def test_watch_settings_refuse_at_prepare() -> None:
    spec = RoundSpec("w1", ("a", "b"), epoch_seconds=10 * 365 * 86400.0)
    with pytest.raises(PolicyRefusal, match=r"3650 days.*at most 7 days"):
        WatchSettings().admit(spec, "a")
    with pytest.raises(PolicyRefusal, match="enabled = false"):
        WatchSettings(enabled=False).admit(replace(spec, epoch_seconds=60.0), "a")
    with pytest.raises(BadMessage):
        WatchSettings().admit(replace(spec, epoch_seconds=float("nan")), "a")
    WatchSettings(enabled=False).admit(replace(spec, epoch_seconds=0.0), "a")  # not a watch round
    WatchSettings().admit(replace(spec, epoch_seconds=7 * 86400.0), "a")


def test_the_coordinator_key_seals_what_it_keeps() -> None:
    key = RoundKey.generate()
    element = RoundKey.generate().blind([hash_indicators([("domain", "x.example")])[0]])[0]
    sealed = seal(key, element)
    assert sealed != element and sealed == key.blind([element])[0]
