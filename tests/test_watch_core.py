"""The sans-I/O watch core (blindmatch/core/watch_rules.py): epochs, checks and their refusals, no servers.

Time is a value the tests set (``FakeClock``): an epoch ends because the clock passes its end,
never because a test sleeps.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import pytest

from blindmatch.core.errors import (
    BadMessage,
    CapExceeded,
    ForgedMessage,
    PolicyRefusal,
    ProtocolError,
    WrongPhase,
)
from blindmatch.core.group import (
    ELEMENT_BYTES,
    Mask,
    RoundKey,
    combined_key,
    hash_and_blind_packed,
    hash_indicators,
)
from blindmatch.core.round_node import ListedSet, NodeRound
from blindmatch.core.signing import CheckClaim, Signer, Trust
from blindmatch.core.spec import Policy, RoundSpec
from blindmatch.core.states import CoordinatorCheckPhase, EpochPhase
from blindmatch.core.watch_coordinator import (
    CheckFlow,
    CoordinatorEpoch,
    CoordinatorWatch,
    filter_key,
    seal,
)
from blindmatch.core.watch_node import NodeEpoch, NodeWatchCore, end_reason
from blindmatch.core.watch_rules import (
    CHECK_CHUNK,
    MAX_CHECK_ELEMENTS,
    BadReply,
    CheckHop,
    CheckReplayed,
    EpochEnded,
    WatchSettings,
)
from blindmatch.runtime.pki import issue, new_ca

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
    hop0 = first(checker, epoch_id, elements, check_id)
    return watch.begin_check([hop0], allowed, checker=checker)


def hub(filters: dict[str, set[str]] | None = None) -> tuple[CoordinatorWatch, FakeClock]:
    clock = FakeClock()
    watch = CoordinatorWatch(clock)
    watch.open(epoch_with(filters or {}))
    return watch, clock


def elements(flow: CheckFlow) -> bytes:
    """The check's elements as they stand: the latest output of every chunk, in order."""
    return b"".join(c.elements for c in flow.chunks)


def reply(flow: CheckFlow, sender: str, out: bytes, share: bool) -> None:
    """``sender`` answers for chunk 0 (sent to whichever hop the flow sends it to first)."""
    flow.sends()
    flow.on_reblinded(sender, 0, out, share)


def routed(flow: CheckFlow, shares: bool = True) -> None:
    """Every hop answers with the elements unchanged (keys are the nodes' business; so is k_c
    here), and the checker sends them back as its unmasked tags."""
    while not flow.routed:
        for node, chunk in flow.sends():
            flow.on_reblinded(node, chunk.seq, chunk.elements, shares)
        for seq in flow.to_seal():
            flow.on_sealed(seq, flow.chunks[seq].elements)
    flow.on_unmasked(flow.sealed())


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
    assert flow.phase is CoordinatorCheckPhase.DONE
    # the checked tags join the checker's filter: later checks alert it
    assert all(filter_key(tag(n)) in flow.epoch.filters["c"] for n in (1, 2, 3))


def test_filters_are_consulted_only_where_both_policies_allow() -> None:
    watch, _ = hub({p: {filter_key(tag(1))} for p in PARTS})
    flow = begin(watch, "a", "e1", tag(1), frozenset({"b", "c"}))
    for hop in ("b", "c", "d"):
        reply(flow, hop, elements(flow), share=hop != "c")
    for seq in flow.to_seal():
        flow.on_sealed(seq, flow.chunks[seq].elements)
    flow.on_unmasked(flow.sealed())
    assert set(flow.alerts()) == {"b"}  # c refuses to share, d is outside a's policy


def begin_id(watch: CoordinatorWatch, check_id: str) -> CoordinatorWatch:
    watch.begin_check([first("a", "e1", tag(1), check_id)], None, checker="a")
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
            lambda w: w.begin_check([first("b", "e1", tag(1))], None, checker="a"),
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
        ("wrong sender", lambda f: reply(f, "a", elements(f), True), BadReply, "expected"),
        ("the checker itself", lambda f: reply(f, "c", elements(f), True), BadReply, ""),
        ("fewer elements", lambda f: reply(f, "d", tag(1), True), BadReply, "bytes"),
        ("more elements", lambda f: reply(f, "d", elements(f) + tag(9), True), BadReply, ""),
        ("partial element", lambda f: reply(f, "d", elements(f)[:-1], True), BadReply, ""),
        (
            "a chunk not sent",
            lambda f: f.on_reblinded("d", 0, elements(f), True),
            BadReply,
            "expected",
        ),
        (
            "a chunk the check does not have",
            lambda f: reply(f, "d", elements(f), True) or f.on_reblinded("d", 1, tag(1), True),
            BadReply,
            "chunk 1",
        ),
        ("alerts before routing", lambda f: f.alerts(), WrongPhase, "routing"),
        ("tags before routing", lambda f: f.on_unmasked(elements(f)), WrongPhase, "routing"),
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
            lambda f: after_alerts(f).on_reblinded("d", 0, b"", True),
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


def test_an_epoch_is_pending_until_opened_and_opens_once() -> None:
    # Both sides build an epoch PENDING, where states.EPOCH starts; only its delivery opens it.
    node = NodeEpoch("e1", "a", PARTS, T0 + 3600, RoundKey.generate(), 10)
    kept = CoordinatorEpoch("e1", PARTS, T0 + 3600)
    assert node.phase is kept.phase is EpochPhase.PENDING
    node.open()
    watch = CoordinatorWatch(FakeClock())
    watch.open(kept)
    assert node.phase is kept.phase is EpochPhase.OPEN
    with pytest.raises(WrongPhase, match=r"^epoch e1 is open; this message needs pending$"):
        node.open()
    with pytest.raises(WrongPhase, match=r"^epoch e1 is open; this message needs pending$"):
        watch.open(kept)
    assert watch.epoch is kept


# --- the node's side ----------------------------------------------------------------------------


def node_core(me: str = "a", budget: int = 10) -> tuple[NodeWatchCore, FakeClock]:
    clock = FakeClock()
    core = NodeWatchCore(me, budget, clock)
    epoch = NodeEpoch("e1", me, PARTS, T0 + 3600, RoundKey.generate(), budget)
    epoch.open()  # as its watch round's delivery opens it
    core.epoch = epoch
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


def test_mask_and_key_in_one_step_blind_as_key_then_mask() -> None:
    items = [("domain", f"v{i}.example") for i in range(8)]
    hashed = hash_indicators(items)
    for _ in range(4):
        key, mask = RoundKey.generate(), Mask.generate()
        both = combined_key(mask.apply, key)
        if both is None:  # about half the pairs: the checker draws another mask
            continue
        two_steps = mask.apply.blind(key.blind(hashed))
        assert both.blind(hashed) == two_steps
        assert hash_and_blind_packed(both.export(), items) == b"".join(two_steps)
        assert mask.remove.blind(both.blind(hashed)) == key.blind(hashed)  # the unmask


def test_a_node_check_is_signed_chunk_by_chunk_with_one_masked_key() -> None:
    core, clock = node_core()
    flow = core.start_check(["x.example"], "domain", Policy())
    masked_key, unmask = flow.open(core.epoch, clock())
    assert core.epoch is not None and core.epoch.key is not None
    hashed = hash_indicators(flow.items)
    sealed = unmask.blind(masked_key.blind(hashed))
    assert sealed == core.epoch.key.blind(hashed)
    packed = tag(1) * (CHECK_CHUNK + 3)
    claims = flow.claims(packed)
    assert [(c.seq, c.chunks, len(c.elements) // ELEMENT_BYTES) for c in claims] == [
        (0, 2, CHECK_CHUNK),
        (1, 2, 3),
    ]
    flow.discard_mask()
    assert masked_key.destroyed and unmask.destroyed


def test_chunks_move_on_as_soon_as_a_hop_returns_them_a_few_in_flight_per_hop() -> None:
    watch, _ = hub()
    chunks = [
        CheckHop("e1", "c", "ab" * 8, 0, tag(seq), b"sig", b"cert", seq, 4) for seq in range(4)
    ]
    flow = watch.begin_check(chunks, None, checker="c")
    sent = flow.sends()
    assert [(n, c.seq) for n, c in sent] == [("d", 0), ("d", 1)]  # the window of d is full
    assert flow.sends() == []
    flow.on_reblinded("d", 1, tag(11), True)  # returned out of order: fine
    moving = flow.sends()
    assert sorted((n, c.seq) for n, c in moving) == [("a", 1), ("d", 2)]
    with pytest.raises(BadReply):
        flow.on_reblinded("d", 1, tag(11), True)  # not in flight at d any more
    for node, chunk in [*sent[:1], *moving]:
        flow.on_reblinded(node, chunk.seq, chunk.elements, True)
    routed(flow)  # the rest, every hop in turn
    assert flow.phase is CoordinatorCheckPhase.TESTING  # every chunk sealed, the tags taken in
    assert all(c.hop == 3 for c in flow.chunks)


def test_a_partner_blinds_each_chunk_of_a_check_once_and_audits_the_check_once() -> None:
    core, _ = node_core()  # "a"; b's checks reach it at hop 3 (route c, d, a)

    def chunk(seq: int, chunks: int = 2, *, signed_as: int | None = None) -> CheckHop:
        place = seq if signed_as is None else signed_as
        claim = CheckClaim("e1", b"", "b", "ab" * 8, 2, tag(seq + 1), place, chunks)
        s = SIGNERS["d"]
        return CheckHop(
            "e1", "b", "ab" * 8, 2, tag(seq + 1), s.sign(claim.message()), s.cert_pem, seq, chunks
        )

    epoch = core.epoch
    assert epoch is not None
    core.reblind(chunk(1), TRUST)  # out of order: chunk 1 first
    assert epoch.blinded("b", "ab" * 8, 1) is None
    with pytest.raises(CheckReplayed):
        core.reblind(chunk(1), TRUST)
    with pytest.raises(ForgedMessage):
        core.reblind(chunk(0, signed_as=1), TRUST)  # moved: its place is signed
    with pytest.raises(BadMessage, match="chunk 2 of 2"):
        core.reblind(chunk(2), TRUST)
    with pytest.raises(BadMessage, match="names 3 chunks"):
        core.reblind(chunk(0, chunks=3), TRUST)
    assert epoch.spent == {"b": 1}  # refusals cost nothing
    core.reblind(chunk(0), TRUST)
    assert epoch.blinded("b", "ab" * 8, 1) == 2  # the last chunk: one record of 2 elements
    assert epoch.spent == {"b": 2}
