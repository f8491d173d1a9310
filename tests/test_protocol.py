"""A node's own set in a round (``NodeRound``), the coordinator's caps, the transition tables and
round specs.

A round must give exactly the plain set intersection of the canonical values, in every mode: here
each node's set goes from its ``NodeRound`` through its committee machine (``CommitteeNode``, in
memory) and its delivery comes back by position to its sightings. Every message the rules forbid
is refused with the right ProtocolError, and the position map is gone at the end, whatever the
end.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from blindmatch.core.canon import KINDS, Indicator, canonicalize
from blindmatch.core.committee import (
    CommitteeCoordinator,
    CommitteeNode,
    RoundTerms,
    SignedRequest,
)
from blindmatch.core.errors import (
    BadMessage,
    CapExceeded,
    PolicyRefusal,
    ProtocolError,
    WrongPhase,
)
from blindmatch.core.match import CountResult, Delivery, PairwiseResult, ThresholdResult
from blindmatch.core.round_node import Candidate, ListedSet, NodeRound
from blindmatch.core.spec import DEFAULT_CHUNK, Caps, NodeOutcome, Policy, RoundSpec
from blindmatch.core.states import (
    CHECK_OUTCOMES,
    COMMITTEE_NODE,
    COORDINATOR,
    COORDINATOR_FINAL,
    COORDINATOR_RUNNING,
    NODE,
    ROUND_ENDS,
    ROUND_OUTCOMES,
    SCHEDULE,
    CommitteeEvent,
    CommitteePhase,
    CoordinatorPhase,
    NodeEvent,
    NodePhase,
    Outcome,
    ScheduleEvent,
    SchedulePhase,
    Table,
    sql_in,
)
from tests.inmemory import NAMES, SIGNERS, SPEC, Round, reveal_all, sign_all

# Raw values as nations would import them; several spellings share one canonical form, and one
# ipv6 value becomes an ipv4, so the round must match on canonical (kind, value) only.
RAW = (
    ("domain", "Example.COM"),
    ("domain", "example.com."),
    ("domain", "evil.example.org"),
    ("domain", "Straße.de"),
    ("domain", "xn--strae-oqa.de"),
    ("ipv4", "192.0.2.1"),
    ("ipv4", "0xC0.0.2.1"),
    ("ipv6", "::ffff:192.0.2.1"),
    ("ipv4", "198.51.100.7"),
    ("ipv6", "2001:DB8:0:0::1"),
    ("ipv6", "2001:db8::1"),
    ("cidr", "10.1.2.3/8"),
    ("url", "HTTP://Example.com/a/../b"),
    ("url", "http://example.com/b"),
    ("email", "Bad.Actor@Example.COM"),
    ("email", "bad.actor@example.com"),
    ("md5", "D41D8CD98F00B204E9800998ECF8427E"),
    ("sha256", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"),
)
CANON = [canonicalize(k, v) for k, v in RAW]
UNIQUE = list(dict.fromkeys(CANON))
ALPHA, BRAVO, CHARLIE = NAMES[:3]

Party = tuple[Policy, Sequence[Candidate]]
Summary = tuple[list[tuple[int, tuple[str, ...], int | None]], dict[str, int]]


def candidates_for(picks: Sequence[int], base: int) -> list[Candidate]:
    """One sighting per canonical indicator (the store keeps one row per indicator)."""
    seen: dict[Indicator, int] = {}
    for i in picks:
        seen.setdefault(CANON[i], base + len(seen))
    return [(sid, ind.kind, ind.value) for ind, sid in seen.items()]


def some(n: int, base: int) -> list[Candidate]:
    """``n`` distinct canonical indicators, sighting ids from ``base``."""
    assert n <= len(UNIQUE)
    return [(base + i, ind.kind, ind.value) for i, ind in enumerate(UNIQUE[:n])]


def indicators(cands: Sequence[Candidate]) -> dict[Indicator, int]:
    return {Indicator(c[1], c[2]): c[0] for c in cands}


def spec_for(
    names: Sequence[str],
    *,
    mode: str = "pairwise",
    threshold: int | None = None,
    chunk_size: int = DEFAULT_CHUNK,
    kinds: tuple[str, ...] = KINDS,
    counts: bool = False,
) -> RoundSpec:
    return RoundSpec("r1", tuple(names), mode, threshold, kinds, chunk_size, counts=counts)


# --- a round is plain set intersection -----------------------------------------------------------


def ask(r: Round, owner: CommitteeNode, signed: SignedRequest) -> None:
    for member in r.coordinator.members_for(signed):
        owner.on_answer(r.nodes[member].on_request(signed))


def run_round(spec: RoundSpec, parties: Mapping[str, Party]) -> dict[str, NodeOutcome]:
    """A whole round in memory: every node's own set, evaluated in chunks by the committee (every
    participant), matched, delivered, verified and mapped back to its sightings."""
    terms = RoundTerms.of(spec, SPEC)
    sets = {
        name: NodeRound(spec, name, policy, ListedSet(cands))
        for name, (policy, cands) in parties.items()
    }
    r = Round(
        terms,
        {n: CommitteeNode(terms, n, SIGNERS[n], sets[n].size) for n in spec.participants},
        CommitteeCoordinator(terms),
    )
    signatures = sign_all(r)
    for name, node in r.nodes.items():
        node.begin(signatures)
        assert node.transcript is not None
        sets[name].begin(node.transcript.sizes)
    for name, node in r.nodes.items():
        for points in sets[name].own_points():
            ask(r, node, node.request(points))
        ask(r, node, node.challenge())
    delivered = reveal_all(r)
    out = {}
    for name, node in r.nodes.items():
        delivery = node.by_position(node.deliver(*delivered[name]))
        out[name] = sets[name].resolve(delivery)
        assert sets[name].phase is NodePhase.DONE and sets[name].positions_held == 0
    return out


@st.composite
def rounds(draw: st.DrawFn) -> tuple[RoundSpec, dict[str, Party]]:
    n = draw(st.integers(2, len(NAMES)))
    names = NAMES[:n]
    mode = draw(st.sampled_from(["pairwise", "threshold", "count"]))
    threshold = draw(st.integers(2, n)) if mode == "threshold" else None
    counts = mode == "threshold" and draw(st.booleans())
    spec = spec_for(
        names,
        mode=mode,
        threshold=threshold,
        chunk_size=draw(st.integers(1, 4)),
        counts=counts,
    )
    parties: dict[str, Party] = {}
    for j, name in enumerate(names):
        # a participant with no indicator refuses the round: every set here has one
        picks = draw(st.lists(st.integers(0, len(RAW) - 1), min_size=1, max_size=8))
        parties[name] = (Policy(), candidates_for(picks, 1000 * j))
    return spec, parties


def expected(spec: RoundSpec, parties: Mapping[str, Party]) -> dict[str, Summary]:
    """The plain-Python answer: set intersection of canonical indicators."""
    held = {name: indicators(cands) for name, (_, cands) in parties.items()}
    holders = {
        ind: [n for n in spec.participants if ind in held[n]] for h in held.values() for ind in h
    }
    out: dict[str, Summary] = {}
    for me in spec.participants:
        mine = held[me]
        if spec.mode == "count":
            counts = {p: len(mine.keys() & held[p].keys()) for p in spec.participants if p != me}
            out[me] = ([], counts)
            continue
        matches: list[tuple[int, tuple[str, ...], int | None]] = []
        for ind, sid in mine.items():
            others = tuple(p for p in holders[ind] if p != me)
            if spec.mode == "pairwise" and others:
                matches.append((sid, others, len(others) + 1))
            if spec.mode == "threshold":
                assert spec.threshold is not None
                if len(others) + 1 >= spec.threshold:
                    # without counts only "held by >= threshold" reaches the node
                    matches.append((sid, (), len(others) + 1 if spec.counts else None))
        out[me] = (sorted(matches), {})
    return out


def summary(outcomes: Mapping[str, NodeOutcome]) -> dict[str, Summary]:
    return {
        name: (
            sorted((m.sighting_id, tuple(sorted(m.partners)), m.count) for m in o.matches),
            dict(o.partner_counts),
        )
        for name, o in outcomes.items()
    }


@settings(max_examples=40, deadline=None)
@given(rounds())
def test_round_is_plain_set_intersection(case: tuple[RoundSpec, dict[str, Party]]) -> None:
    spec, parties = case
    assert summary(run_round(spec, parties)) == expected(spec, parties)


def test_pairwise_round_by_hand() -> None:
    alpha = candidates_for([0, 5, 12, 16], 100)  # example.com, 192.0.2.1, url, md5
    bravo = candidates_for([1, 7, 14], 200)  # example.com, 192.0.2.1 (as mapped ipv6), e-mail
    charlie = candidates_for([6, 15, 17], 300)  # 192.0.2.1 (hex), e-mail, sha256
    spec = spec_for(NAMES[:3], chunk_size=2)
    parties = {ALPHA: (Policy(), alpha), BRAVO: (Policy(), bravo), CHARLIE: (Policy(), charlie)}
    assert summary(run_round(spec, parties)) == {
        ALPHA: ([(100, (BRAVO,), 2), (101, (BRAVO, CHARLIE), 3)], {}),
        BRAVO: ([(200, (ALPHA,), 2), (201, (ALPHA, CHARLIE), 3), (202, (CHARLIE,), 2)], {}),
        CHARLIE: ([(300, (ALPHA, BRAVO), 3), (301, (BRAVO,), 2)], {}),
    }


def test_kinds_are_restricted_by_round_and_policy() -> None:
    everything = candidates_for(range(len(RAW)), 0)
    spec = spec_for([ALPHA, BRAVO], kinds=("domain", "ipv4", "md5"))
    domains_only = Policy(kinds=frozenset({"domain", "email"}))
    bravo = NodeRound(spec, BRAVO, domains_only, ListedSet(everything))
    assert bravo.size == len({c for c in CANON if c.kind == "domain"})
    alpha = NodeRound(spec, ALPHA, Policy(), ListedSet(everything))
    assert alpha.size == len({c for c in CANON if c.kind in spec.kinds})
    out = run_round(spec, {ALPHA: (Policy(), everything), BRAVO: (domains_only, everything)})
    assert {m.sighting_id for m in out[ALPHA].matches} == {
        sid for sid, kind, _ in everything if kind == "domain"
    }


def test_node_shuffles_its_set() -> None:
    cands = [(i, "ipv4", f"192.0.2.{i}") for i in range(60)]
    spec = spec_for([ALPHA, BRAVO], chunk_size=7)
    orders = []
    for _ in range(2):
        node = NodeRound(spec, ALPHA, Policy(), ListedSet(cands))
        assert [len(chunk) for chunk in node.own_points()] == [7] * 8 + [4]
        ids = node.sighting_ids().tolist()
        assert sorted(ids) == list(range(60))
        orders.append(ids)
        node.abort("test over")
    assert orders[0] != orders[1]


# --- refusals -----------------------------------------------------------------------------------


def test_error_codes() -> None:
    assert BadMessage.code == "INVALID_ARGUMENT"
    assert WrongPhase.code == "FAILED_PRECONDITION"
    assert PolicyRefusal.code == "PERMISSION_DENIED"
    assert CapExceeded.code == "RESOURCE_EXHAUSTED"
    assert all(issubclass(e, ProtocolError) for e in (BadMessage, WrongPhase, CapExceeded))


def test_node_refuses_wrong_announcements() -> None:
    node = NodeRound(spec_for([ALPHA, BRAVO]), ALPHA, Policy(), ListedSet(some(3, 0)))
    with pytest.raises(BadMessage, match="name every participant exactly once"):
        node.begin({ALPHA: 3})
    with pytest.raises(BadMessage, match="announced size 2 for alpha but it has 3"):
        node.begin({ALPHA: 2, BRAVO: 3})
    with pytest.raises(BadMessage, match="negative size announced for bravo"):
        node.begin({ALPHA: 3, BRAVO: -1})
    assert node.phase is NodePhase.PREPARED


def test_wrong_phase_on_the_node() -> None:
    node = NodeRound(spec_for([ALPHA, BRAVO]), ALPHA, Policy(), ListedSet(some(3, 0)))
    with pytest.raises(WrongPhase, match="round r1 is prepared; this message needs routing"):
        node.resolve(PairwiseResult((), ()))
    node.begin({ALPHA: 3, BRAVO: 3})
    with pytest.raises(WrongPhase, match="is routing; this message needs prepared"):
        node.begin({ALPHA: 3, BRAVO: 3})
    node.resolve(PairwiseResult((), ()))
    for late in (
        lambda: node.resolve(PairwiseResult((), ())),
        lambda: list(node.own_points()),
    ):
        with pytest.raises(WrongPhase, match="round r1 is done"):
            late()
    node.abort("late abort")  # harmless after done
    assert node.phase is NodePhase.DONE


def test_policy_refusal_names_the_partner() -> None:
    allow = Policy(partners=frozenset({ALPHA}))
    with pytest.raises(PolicyRefusal, match="policy of bravo does not allow matching with charlie"):
        NodeRound(spec_for(NAMES[:3]), BRAVO, allow, ListedSet(some(3, 0)))
    NodeRound(spec_for([ALPHA, BRAVO]), BRAVO, allow, ListedSet(some(3, 0)))


def test_node_outside_the_round_is_refused() -> None:
    with pytest.raises(BadMessage, match=r"this node \(delta\) is not a participant of round r1"):
        NodeRound(spec_for([ALPHA, BRAVO]), "delta", Policy(), ListedSet([]))


def test_the_own_set_cap_is_checked_at_prepare() -> None:
    with pytest.raises(CapExceeded, match="own set of 3 indicators exceeds this node's cap of 2"):
        NodeRound(spec_for([ALPHA, BRAVO]), ALPHA, Policy(max_own_set=2), ListedSet(some(3, 0)))


@pytest.mark.parametrize(
    ("policy", "match"),
    [
        (Policy(max_partner_set=2), "bravo's set of 3 elements exceeds this node's cap of 2"),
        (Policy(max_round_elements=8), "round would blind 9 elements; this node's cap is 8"),
    ],
)
def test_partner_caps_are_checked_at_begin(policy: Policy, match: str) -> None:
    node = NodeRound(spec_for(NAMES[:3]), ALPHA, policy, ListedSet(some(3, 0)))
    with pytest.raises(CapExceeded, match=match):
        node.begin({ALPHA: 3, BRAVO: 3, CHARLIE: 3})
    assert node.phase is NodePhase.PREPARED and node.blinded_for == {}


@pytest.mark.parametrize(
    ("caps", "match"),
    [
        (Caps(max_set=2), "alpha announced a set of 3 elements; the coordinator's cap is 2"),
        (Caps(max_total=5), "the round's sets total 6 elements; the coordinator's cap is 5"),
    ],
)
def test_coordinator_caps(caps: Caps, match: str) -> None:
    with pytest.raises(CapExceeded, match=match):
        seen = 0
        for name in NAMES[:3]:
            caps.check(name, 3, seen)
            seen += 3


# --- resolve ---------------------------------------------------------------------------------------


def begun_node(
    mode: str = "pairwise", threshold: int | None = None, counts: bool = False
) -> NodeRound:
    spec = spec_for(NAMES[:3], mode=mode, threshold=threshold, counts=counts)
    node = NodeRound(spec, ALPHA, Policy(), ListedSet(some(3, 0)))
    node.begin({ALPHA: 3, BRAVO: 3, CHARLIE: 3})
    return node


@pytest.mark.parametrize(
    ("mode", "threshold", "delivery", "match"),
    [
        (
            "pairwise",
            None,
            PairwiseResult((3,), ((1,),)),
            "position 3 outside this node's set of 3",
        ),
        ("pairwise", None, PairwiseResult((0,), ((0,),)), "position 0: invalid partner list"),
        ("pairwise", None, PairwiseResult((0,), ((7,),)), "position 0: invalid partner list"),
        ("pairwise", None, PairwiseResult((0,), ((),)), "position 0: invalid partner list"),
        ("pairwise", None, PairwiseResult((1, 1), ((1,), (2,))), "delivered twice"),
        ("pairwise", None, ThresholdResult((), ()), r"does not fit the round's mode \(pairwise\)"),
        ("threshold", 3, ThresholdResult((0,), (2,)), "count 2 outside the threshold range"),
        ("threshold", 2, ThresholdResult((0,), (4,)), "count 4 outside the threshold range"),
        ("threshold", 2, ThresholdResult((0,), ()), "one count per position"),
        ("count", None, CountResult({0: 1}), "invalid partner count"),
        ("count", None, CountResult({1: 4}), "invalid partner count"),
        ("count", None, PairwiseResult((), ()), r"does not fit the round's mode \(count\)"),
    ],
)
def test_bad_delivery_is_refused(
    mode: str, threshold: int | None, delivery: Delivery, match: str
) -> None:
    with pytest.raises(BadMessage, match=match):
        begun_node(mode, threshold, counts=mode == "threshold").resolve(delivery)


def test_counts_the_round_did_not_ask_for_are_refused() -> None:
    with pytest.raises(BadMessage, match="counts the round did not ask for"):
        begun_node("threshold", 2).resolve(ThresholdResult((0,), (2,)))
    outcome = begun_node("threshold", 2).resolve(ThresholdResult((0,), ()))
    assert [m.count for m in outcome.matches] == [None]


def test_bad_delivery_ends_the_round() -> None:
    # A delivery is the round's last message: whether it fits or not, the position map has no
    # further use, and the node must not depend on a later Abort to drop it.
    node = begun_node()
    with pytest.raises(BadMessage, match="position 3 outside"):
        node.resolve(PairwiseResult((3,), ((1,),)))
    assert node.positions_held == 0
    assert node.phase is NodePhase.ABORTED


def test_abort_drops_the_position_map_in_every_phase() -> None:
    for begun in (False, True):
        node = NodeRound(spec_for([ALPHA, BRAVO]), ALPHA, Policy(), ListedSet(some(3, 0)))
        if begun:
            node.begin({ALPHA: 3, BRAVO: 2})
        node.abort("coordinator gone")
        assert node.positions_held == 0 and node.size == 3
        assert node.phase is NodePhase.ABORTED and node.reason == "coordinator gone"
        node.abort("again")  # idempotent
        assert node.reason == "coordinator gone"


def test_success_drops_the_position_map() -> None:
    node = begun_node()
    out = node.resolve(PairwiseResult((2,), ((1, 2),)))
    assert out.matches[0].partners == (BRAVO, CHARLIE) and out.matches[0].count == 3
    assert node.positions_held == 0 and node.size == 3


# --- the transition tables (blindmatch/core/states.py) --------------------------------------------------

# Written out here rather than read from the tables, so that a change to a table shows up as a
# failing test: these are the protocol's rules, not the tables' contents.
NODE_MOVES = {
    (NodePhase.PREPARED, NodePhase.ROUTING),
    (NodePhase.PREPARED, NodePhase.ABORTED),
    (NodePhase.ROUTING, NodePhase.DONE),
    (NodePhase.ROUTING, NodePhase.ABORTED),
}
COORDINATOR_MOVES = {
    (CoordinatorPhase.PREPARING, CoordinatorPhase.ROUTING),
    (CoordinatorPhase.ROUTING, CoordinatorPhase.DELIVERING),
    (CoordinatorPhase.DELIVERING, CoordinatorPhase.DONE),
    (CoordinatorPhase.PREPARING, CoordinatorPhase.FAILED),
    (CoordinatorPhase.ROUTING, CoordinatorPhase.FAILED),
    (CoordinatorPhase.DELIVERING, CoordinatorPhase.FAILED),
}
NODE_ACCEPTS = {
    (NodeEvent.OWN_SET, NodePhase.PREPARED),
    (NodeEvent.OWN_SET, NodePhase.ROUTING),
    (NodeEvent.BEGIN, NodePhase.PREPARED),
    (NodeEvent.DELIVERY, NodePhase.ROUTING),
}
SCHEDULE_MOVES = {
    (SchedulePhase.ACTIVE, SchedulePhase.CANCELLED),
    (SchedulePhase.ACTIVE, SchedulePhase.ENDED),
}
SCHEDULE_ACCEPTS = {
    (ScheduleEvent.RUN, SchedulePhase.ACTIVE),
    (ScheduleEvent.CANCEL, SchedulePhase.ACTIVE),
}
C = CommitteePhase
COMMITTEE_MOVES = {
    (C.PREPARED, C.SIGNED),
    (C.SIGNED, C.EVALUATING),
    (C.EVALUATING, C.TAGGED),
    (C.TAGGED, C.DONE),
    (C.PREPARED, C.ABORTED),
    (C.SIGNED, C.ABORTED),
    (C.EVALUATING, C.ABORTED),
    (C.TAGGED, C.ABORTED),
}
COMMITTEE_ACCEPTS = {
    (CommitteeEvent.TRANSCRIPT, C.PREPARED),
    (CommitteeEvent.BEGIN, C.SIGNED),
    (CommitteeEvent.REQUEST, C.EVALUATING),
    (CommitteeEvent.REQUEST, C.TAGGED),
    (CommitteeEvent.ANSWER, C.EVALUATING),
    (CommitteeEvent.TAGS, C.EVALUATING),
    (CommitteeEvent.REVEAL, C.TAGGED),
    (CommitteeEvent.DELIVERY, C.TAGGED),
}
# The coordinator's table has moves only: committee.CommitteeCoordinator checks its messages.
TABLES: list[tuple[Table[Any, Any], type[enum.StrEnum], list[enum.StrEnum], set[Any], set[Any]]] = [
    (NODE, NodePhase, list(NodeEvent), NODE_MOVES, NODE_ACCEPTS),
    (COORDINATOR, CoordinatorPhase, [], COORDINATOR_MOVES, set()),
    (SCHEDULE, SchedulePhase, list(ScheduleEvent), SCHEDULE_MOVES, SCHEDULE_ACCEPTS),
    (COMMITTEE_NODE, CommitteePhase, list(CommitteeEvent), COMMITTEE_MOVES, COMMITTEE_ACCEPTS),
]


def every_move() -> list[Any]:
    return [
        pytest.param(table, a, b, (a, b) in legal, id=f"{a}->{b}")
        for table, phases, _, legal, _ in TABLES
        for a in phases
        for b in phases
    ]


def every_message() -> list[Any]:
    return [
        pytest.param(table, e, p, (e, p) in accepted, id=f"{e}@{p}")
        for table, phases, events, _, accepted in TABLES
        for e in events
        for p in phases
    ]


@pytest.mark.parametrize(("table", "phase", "to", "legal"), every_move())
def test_every_move_is_in_the_table_or_refused(
    table: Table[Any, Any], phase: enum.StrEnum, to: enum.StrEnum, legal: bool
) -> None:
    if legal:
        assert table.move("round r1", phase, to) is to
    else:
        with pytest.raises(WrongPhase, match=f"^round r1 is {phase}; it cannot become {to}$"):
            table.move("round r1", phase, to)


@pytest.mark.parametrize(("table", "event", "phase", "accepted"), every_message())
def test_every_message_is_accepted_only_where_the_table_says(
    table: Table[Any, Any], event: enum.StrEnum, phase: enum.StrEnum, accepted: bool
) -> None:
    if accepted:
        table.require("round r1", phase, event)
    else:
        with pytest.raises(WrongPhase, match=f"^round r1 is {phase}; "):
            table.require("round r1", phase, event)


def test_final_phases_are_the_ones_without_a_way_out() -> None:
    assert [p for p in NodePhase if NODE.final(p)] == [NodePhase.DONE, NodePhase.ABORTED]
    assert COORDINATOR_FINAL == (CoordinatorPhase.DONE, CoordinatorPhase.FAILED)
    assert COORDINATOR_RUNNING == (
        CoordinatorPhase.PREPARING,
        CoordinatorPhase.ROUTING,
        CoordinatorPhase.DELIVERING,
    )
    assert [p for p in SchedulePhase if SCHEDULE.final(p)] == [
        SchedulePhase.CANCELLED,
        SchedulePhase.ENDED,
    ]


def test_the_vocabulary_is_the_one_on_disk_and_on_the_wire() -> None:
    # RoundInfo.state, the coordinator's state file and the node's audit log hold these strings.
    assert [str(p) for p in CoordinatorPhase] == [
        "preparing",
        "routing",
        "delivering",
        "done",
        "failed",
    ]
    assert [str(p) for p in NodePhase] == ["prepared", "routing", "done", "aborted"]
    assert [str(p) for p in SchedulePhase] == ["active", "cancelled", "ended"]  # ScheduleInfo
    # The node store's CHECK constraints, verbatim.
    assert sql_in("outcome", ROUND_OUTCOMES) == (
        "outcome IN ('started', 'done', 'failed', 'refused', 'aborted')"
    )
    assert sql_in("outcome", CHECK_OUTCOMES) == "outcome IN ('done', 'refused', 'failed')"
    assert ROUND_ENDS == (Outcome.DONE, Outcome.FAILED, Outcome.REFUSED, Outcome.ABORTED)
    # A final phase of either round is an outcome of the same name.
    assert {str(p) for p in (*COORDINATOR_FINAL, NodePhase.DONE, NodePhase.ABORTED)} <= {
        str(o) for o in Outcome
    }
    with pytest.raises(ValueError, match="quote"):
        sql_in("outcome", ["it's"])


# The machine consults its table: each message, sent to a node's set in each phase, is refused
# with WrongPhase exactly where the table says (other refusals, of the message's content, may
# follow).


def node_in(phase: NodePhase) -> NodeRound:
    node = NodeRound(spec_for([ALPHA, BRAVO]), ALPHA, Policy(), ListedSet(some(3, 0)))
    if phase is NodePhase.ABORTED:
        node.abort("test")
    elif phase is not NodePhase.PREPARED:
        node.begin({ALPHA: 3, BRAVO: 3})
        if phase is NodePhase.DONE:
            node.resolve(PairwiseResult((), ()))
    assert node.phase is phase
    return node


NODE_CALLS: dict[NodeEvent, Callable[[NodeRound], object]] = {
    NodeEvent.OWN_SET: lambda n: list(n.own_points()),
    NodeEvent.BEGIN: lambda n: n.begin({ALPHA: 3, BRAVO: 3}),
    NodeEvent.DELIVERY: lambda n: n.resolve(PairwiseResult((), ())),
}


def refused_for_phase(action: Callable[[], object]) -> bool:
    try:
        action()
    except WrongPhase:
        return True
    except ProtocolError:
        return False
    return False


@pytest.mark.parametrize("phase", list(NodePhase))
@pytest.mark.parametrize("event", list(NodeEvent))
def test_node_round_refuses_by_the_table(event: NodeEvent, phase: NodePhase) -> None:
    node = node_in(phase)
    assert refused_for_phase(lambda: NODE_CALLS[event](node)) == (
        (event, phase) not in NODE_ACCEPTS
    )


# --- round specs ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"participants": ("at",)}, "2 to 64 participants, got 1"),
        ({"participants": tuple(f"n{i}" for i in range(65))}, "2 to 64 participants, got 65"),
        ({"participants": ("at", "at")}, "named twice"),
        ({"mode": "all"}, "unknown mode 'all'"),
        ({"mode": "threshold"}, "threshold must be between 2 and 2, got None"),
        ({"mode": "threshold", "threshold": 3}, "threshold must be between 2 and 2, got 3"),
        ({"mode": "count", "threshold": 2}, "only applies to threshold mode, not count"),
        ({"mode": "pairwise", "counts": True}, "counts only apply to threshold mode, not pairwise"),
        ({"kinds": ("domain", "phone")}, "unknown or no kinds: phone"),
        ({"kinds": ()}, r"unknown or no kinds: \(none\)"),
        ({"chunk_size": 0}, "chunk size 0 out of range"),
        ({"chunk_size": 65537}, "chunk size 65537 out of range"),
        ({"counts": True}, "counts only apply to threshold mode, not pairwise"),
        ({"epoch_seconds": -1.0}, "must be 0 or a positive duration"),
        ({"epoch_seconds": float("nan")}, "must be 0 or a positive duration"),
        ({"mode": "count", "epoch_seconds": 60.0}, "only applies to a pairwise round, not count"),
        ({"issued": float("inf")}, "is not a time"),
    ],
)
def test_round_spec_validation(kw: dict[str, object], match: str) -> None:
    args: dict[str, object] = {"round_id": "r1", "participants": ("at", "be"), **kw}
    with pytest.raises(BadMessage, match=match):
        RoundSpec(**args)  # type: ignore[arg-type]


def test_default_spec_covers_every_kind() -> None:
    spec = spec_for([ALPHA, BRAVO])
    assert spec.kinds == KINDS and spec.mode == "pairwise" and spec.threshold is None
    assert spec.index(BRAVO) == 1
    with pytest.raises(BadMessage, match="'delta' is not a participant of round r1"):
        spec.index("delta")
