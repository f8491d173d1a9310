"""Round state machines driven through the in-memory fake link.

A round must give exactly the plain set intersection of the canonical values, in every mode, and
refuse every message the protocol forbids with the right ProtocolError; whatever happens, every
node's key is destroyed at the end.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from blindmatch.core.canon import KINDS, Indicator, canonicalize
from blindmatch.core.errors import (
    BadMessage,
    CapExceeded,
    ForgedMessage,
    PolicyRefusal,
    ProtocolError,
    WrongPhase,
)
from blindmatch.core.group import split_elements
from blindmatch.core.match import CountResult, Delivery, PairwiseResult, ThresholdResult
from blindmatch.core.round_coordinator import Caps, CoordinatorRound
from blindmatch.core.round_node import ListedSet, NodeRound
from blindmatch.core.spec import DEFAULT_CHUNK, NodeOutcome, Policy, RoundSpec, Stream
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
    CoordinatorEvent,
    CoordinatorPhase,
    NodeEvent,
    NodePhase,
    Outcome,
    ScheduleEvent,
    SchedulePhase,
    Table,
    sql_in,
)
from tests.fakelink import Candidate, FakeLink, Party, run_round

NAMES = ("at", "be", "cz", "de", "ee", "fr")

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

OWN, REBLIND = Stream.OWN_SET, Stream.REBLIND

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
    return {Indicator(k, v): sid for sid, k, v in cands}


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


def assert_all_keys_destroyed(link: FakeLink) -> None:
    for name, node in link.nodes.items():
        assert node.key is None, name
        assert node.phase in (NodePhase.DONE, NodePhase.ABORTED), name
    assert all(key.destroyed for key in link.keys.values())


# --- a round is plain set intersection -----------------------------------------------------------


@st.composite
def rounds(draw: st.DrawFn) -> tuple[RoundSpec, dict[str, Party], random.Random]:
    n = draw(st.integers(2, 6))
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
        picks = draw(st.lists(st.integers(0, len(RAW) - 1), max_size=10))
        parties[name] = (Policy(), candidates_for(picks, 1000 * j))
    return spec, parties, draw(st.randoms(use_true_random=False))


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
            sorted((m.sighting_id, m.partners, m.count) for m in o.matches),
            dict(o.partner_counts),
        )
        for name, o in outcomes.items()
    }


@settings(max_examples=40, deadline=None)
@given(rounds())
def test_round_is_plain_set_intersection(
    case: tuple[RoundSpec, dict[str, Party], random.Random],
) -> None:
    spec, parties, rng = case
    link = FakeLink(spec, parties, rng=rng)
    outcomes = link.run()
    assert summary(outcomes) == expected(spec, parties)
    assert_all_keys_destroyed(link)
    assert link.coordinator.phase is CoordinatorPhase.DONE
    done, needed = link.coordinator.progress()
    assert done == needed == sum(len(c) for _, c in parties.values()) * (len(parties) - 1)


def test_pairwise_round_by_hand() -> None:
    at = candidates_for([0, 5, 12, 16], 100)  # example.com, 192.0.2.1, url, md5
    be = candidates_for([1, 7, 14], 200)  # example.com, 192.0.2.1 (as mapped ipv6), e-mail
    cz = candidates_for([6, 15, 17], 300)  # 192.0.2.1 (hex), e-mail, sha256
    spec = spec_for(["at", "be", "cz"], chunk_size=2)
    got = run_round(spec, {"at": (Policy(), at), "be": (Policy(), be), "cz": (Policy(), cz)})
    assert summary(got) == {
        "at": ([(100, ("be",), 2), (101, ("be", "cz"), 3)], {}),
        "be": ([(200, ("at",), 2), (201, ("at", "cz"), 3), (202, ("cz",), 2)], {}),
        "cz": ([(300, ("at", "be"), 3), (301, ("be",), 2)], {}),
    }


def test_routing_is_cyclic_and_never_lets_a_node_compare_sets() -> None:
    names = NAMES[:5]
    parties = {n: (Policy(), candidates_for(range(j, j + 6), 10 * j)) for j, n in enumerate(names)}
    link = FakeLink(spec_for(names, chunk_size=2), parties, rng=random.Random(7))
    link.run()
    n = len(names)
    for (owner, _), carried in link.applied.items():
        o = names.index(owner)
        assert carried == [names[(o + h) % n] for h in range(n)]  # i, i+1, ..., i-1
    for node, got in link.received.items():
        assert all(node not in keys for _, keys in got)  # never its own key, never its own set
        by_owner = {owner: keys for owner, keys in got}
        assert len(set(by_owner.values())) == len(by_owner) == n - 1  # distinct key subsets


def test_node_shuffles_its_set() -> None:
    cands = [(i, "ipv4", f"192.0.2.{i}") for i in range(60)]
    spec = spec_for(["at", "be"], chunk_size=7)
    orders = []
    for _ in range(2):
        node = NodeRound(spec, "at", Policy(), ListedSet(cands))
        batches = list(node.own_batches())
        assert [len(b) for b in batches] == [7] * 8 + [4]
        flat = [pair for b in batches for pair in b]
        assert sorted(flat) == sorted((k, v) for _, k, v in cands)
        orders.append(flat)
        node.abort("test over")
    assert orders[0] != orders[1]


def test_kinds_are_restricted_by_round_and_policy() -> None:
    everything = candidates_for(range(len(RAW)), 0)
    spec = spec_for(["at", "be"], kinds=("domain", "ipv4", "md5"))
    domains_only = Policy(kinds=frozenset({"domain", "email"}))
    link = FakeLink(spec, {"at": (Policy(), everything), "be": (domains_only, everything)})
    link.prepare()
    assert link.nodes["be"].size == len({c for c in CANON if c.kind == "domain"})
    assert link.nodes["at"].size == len({c for c in CANON if c.kind in spec.kinds})
    link.route()
    out = link.deliver()
    assert {m.sighting_id for m in out["at"].matches} == {
        sid for sid, kind, _ in everything if kind == "domain"
    }


def test_empty_sets_give_an_empty_round() -> None:
    spec = spec_for(["at", "be", "cz"], mode="count")
    got = run_round(spec, {"at": (Policy(), []), "be": (Policy(), []), "cz": (Policy(), [])})
    assert got["at"] == NodeOutcome((), {"be": 0, "cz": 0})


# --- refusals -----------------------------------------------------------------------------------


def started(names: Sequence[str] = ("at", "be", "cz"), size: int = 4, chunk: int = 2) -> FakeLink:
    parties = {n: (Policy(), some(size, 100 * j)) for j, n in enumerate(names)}
    link = FakeLink(spec_for(names, chunk_size=chunk), parties)
    link.prepare()
    return link


def refused(link: FakeLink, error: type[ProtocolError], match: str, action: object) -> None:
    """``action`` must raise ``error``; the link then aborts the round as the coordinator would."""
    assert callable(action)
    with pytest.raises(error, match=match) as info:
        action()
    link.abort(str(info.value))
    assert link.coordinator.phase is CoordinatorPhase.FAILED
    assert_all_keys_destroyed(link)


def test_error_codes() -> None:
    assert BadMessage.code == "INVALID_ARGUMENT"
    assert WrongPhase.code == "FAILED_PRECONDITION"
    assert PolicyRefusal.code == "PERMISSION_DENIED"
    assert CapExceeded.code == "RESOURCE_EXHAUSTED"
    assert all(issubclass(e, ProtocolError) for e in (BadMessage, WrongPhase, CapExceeded))


def test_node_refuses_duplicate_chunk() -> None:
    link = started()
    link.send_own("at")
    fwd = link.inbox["be"][0]
    link.reblind("be")
    link.inbox["be"].append(fwd)
    refused(
        link,
        BadMessage,
        "duplicate chunk 0 of at's set; expected chunk 1",
        lambda: link.reblind("be"),
    )


def test_node_refuses_out_of_order_chunk() -> None:
    link = started()
    link.send_own("at")
    link.send_own("at")
    link.inbox["be"].rotate()  # chunk 1 first
    refused(
        link,
        BadMessage,
        "out-of-order chunk 1 of at's set; expected chunk 0",
        lambda: link.reblind("be"),
    )


def test_node_refuses_more_elements_than_announced() -> None:
    link = started(size=3, chunk=2)
    be = link.nodes["be"]
    be.accept_chunk("at", 0, 2, 0)
    refused(
        link,
        BadMessage,
        "at's set was announced with 3 elements; chunk 1 brings it to 5",
        lambda: be.accept_chunk("at", 1, 3, 0),
    )


def test_node_refuses_its_own_set() -> None:
    link = started()
    refused(
        link,
        BadMessage,
        "never re-blinds its own set",
        lambda: link.nodes["at"].accept_chunk("at", 0, 1, 0),
    )


def test_node_refuses_a_stranger_set_and_empty_chunks() -> None:
    link = started()
    at = link.nodes["at"]
    with pytest.raises(BadMessage, match="'mallory' is not a participant of round r1"):
        at.accept_chunk("mallory", 0, 1, 0)
    refused(link, BadMessage, "empty chunk 0 of be's set", lambda: at.accept_chunk("be", 0, 0, 1))


def test_node_refuses_wrong_announcements() -> None:
    parties = {n: (Policy(), some(3, 0)) for n in ("at", "be")}
    node = NodeRound(spec_for(["at", "be"]), "at", parties["at"][0], ListedSet(parties["at"][1]))
    with pytest.raises(BadMessage, match="name every participant exactly once"):
        node.begin_routing({"at": 3})
    with pytest.raises(BadMessage, match="announced size 2 for at but it has 3"):
        node.begin_routing({"at": 2, "be": 3})
    with pytest.raises(BadMessage, match="negative size announced for be"):
        node.begin_routing({"at": 3, "be": -1})
    assert node.phase is NodePhase.PREPARED


def test_wrong_phase_on_the_node() -> None:
    parties = {n: (Policy(), some(3, 0)) for n in ("at", "be")}
    node = NodeRound(spec_for(["at", "be"]), "at", parties["at"][0], ListedSet(parties["at"][1]))
    with pytest.raises(WrongPhase, match="round r1 is prepared; this message needs routing"):
        node.accept_chunk("be", 0, 1, 0)
    with pytest.raises(WrongPhase, match="is prepared"):
        node.resolve(PairwiseResult((), ()))
    node.begin_routing({"at": 3, "be": 3})
    with pytest.raises(WrongPhase, match="is routing; this message needs prepared"):
        node.begin_routing({"at": 3, "be": 3})
    node.resolve(PairwiseResult((), ()))
    assert node.key is None
    for late in (
        lambda: node.accept_chunk("be", 0, 1, 0),
        lambda: node.resolve(PairwiseResult((), ())),
        node.live_key,
        lambda: list(node.own_batches()),
    ):
        with pytest.raises(WrongPhase, match="round r1 is done"):
            late()
    node.abort("late abort")  # harmless after done
    assert node.phase is NodePhase.DONE


def test_wrong_phase_on_the_coordinator() -> None:
    parties = {n: (Policy(), some(3, 0)) for n in ("at", "be")}
    link = FakeLink(spec_for(["at", "be"]), parties)
    coord = link.coordinator
    with pytest.raises(WrongPhase, match="round r1 is preparing; expected routing"):
        coord.on_chunk("at", "at", 0, bytes(32), OWN, hop=0, signature=b"")
    with pytest.raises(WrongPhase, match="is preparing"):
        coord.deliveries()
    link.prepare()
    with pytest.raises(WrongPhase, match="is routing; expected preparing"):
        coord.on_prepared("at", 3)
    with pytest.raises(WrongPhase, match="not every set has been fully blinded yet"):
        coord.deliveries()
    with pytest.raises(WrongPhase, match="is routing; expected delivering"):
        coord.on_delivered("at")
    link.route()
    link.deliver()
    assert coord.phase is CoordinatorPhase.DONE
    with pytest.raises(WrongPhase, match="is done"):
        coord.on_chunk("at", "at", 0, bytes(32), OWN, hop=0, signature=b"")
    coord.fail("too late")
    assert coord.phase is CoordinatorPhase.DONE


def test_coordinator_refuses_prepared_twice_and_strangers() -> None:
    coord = FakeLink(spec_for(["at", "be"]), {}).coordinator
    coord.on_prepared("at", 1)
    with pytest.raises(BadMessage, match="at prepared twice"):
        coord.on_prepared("at", 1)
    with pytest.raises(BadMessage, match="'mallory' is not a participant of round r1"):
        coord.on_prepared("mallory", 1)


def test_coordinator_refuses_duplicate_and_out_of_order_chunks() -> None:
    link = started()
    coord = link.coordinator
    seq0, chunk0 = link.outbox["at"].popleft()
    seq1, chunk1 = link.outbox["at"].popleft()
    with pytest.raises(BadMessage, match="chunk 1 of at's set from at: expected chunk 0"):
        coord.on_chunk("at", "at", seq1, chunk1, OWN, hop=0, signature=b"")
    coord.on_chunk("at", "at", seq0, chunk0, OWN, hop=0, signature=b"")
    refused(
        link,
        BadMessage,
        "chunk 0 of at's set from at: expected chunk 1",
        lambda: coord.on_chunk("at", "at", seq0, chunk0, OWN, hop=0, signature=b""),
    )


def test_coordinator_refuses_more_than_announced_and_partial_elements() -> None:
    link = started(size=3, chunk=2)
    coord = link.coordinator
    with pytest.raises(BadMessage, match="not whole elements"):
        coord.on_chunk("at", "at", 0, bytes(33), OWN, hop=0, signature=b"")
    with pytest.raises(BadMessage, match="not whole elements"):
        coord.on_chunk("at", "at", 0, b"", OWN, hop=0, signature=b"")
    refused(
        link,
        BadMessage,
        "at sent more of at's set than the 3 announced",
        lambda: coord.on_chunk("at", "at", 0, bytes(32 * 4), OWN, hop=0, signature=b""),
    )


def test_coordinator_refuses_a_stranger_at_a_hop() -> None:
    link = started()
    link.send_own("at")
    fwd = link.inbox["be"].popleft()
    refused(
        link,
        BadMessage,
        "'mallory' is not a participant of round r1",
        lambda: link.coordinator.on_chunk(
            "mallory", "at", 0, fwd.elements, REBLIND, hop=1, signature=b""
        ),
    )


def test_coordinator_refuses_a_chunk_from_a_node_it_was_not_sent_to() -> None:
    # at's set goes at -> be -> cz. cz must not be able to hand in chunk 0 of at's set before the
    # coordinator has forwarded that chunk to cz: it would skip be's key, and cz could inject
    # elements of its choice as at's final tags.
    link = started()
    link.send_own("at")
    fwd = link.inbox["be"][0]
    cz_blinded = b"".join(link.nodes["cz"].live_key().blind(split_elements(fwd.elements)))
    refused(
        link,
        BadMessage,
        "cz",
        lambda: link.coordinator.on_chunk("cz", "at", 0, cz_blinded, REBLIND, hop=2, signature=b""),
    )


def test_coordinator_refuses_a_chunk_whose_size_changed_at_a_hop() -> None:
    # A re-blinder must send back exactly the elements it was sent: one in, one out, in order.
    link = started(names=("at", "be"), size=4, chunk=2)
    link.send_own("at")
    link.send_own("at")
    fwd0 = link.inbox["be"].popleft()
    coord = link.coordinator
    refused(
        link,
        BadMessage,
        "be",
        lambda: coord.on_chunk("be", "at", 0, fwd0.elements[:32], REBLIND, hop=1, signature=b""),
    )


def test_policy_refusal_names_the_partner_and_aborts_the_others() -> None:
    allow = Policy(partners=frozenset({"at"}))
    parties = {
        "at": (Policy(), some(3, 0)),
        "be": (allow, some(3, 0)),
        "cz": (Policy(), some(3, 0)),
    }
    link = FakeLink(spec_for(["at", "be", "cz"]), parties)
    with pytest.raises(PolicyRefusal, match="policy of be does not allow matching with cz"):
        link.run()
    assert "cz" not in link.nodes  # never prepared, never drew a key
    assert_all_keys_destroyed(link)
    assert link.nodes["at"].reason == "policy of be does not allow matching with cz"


def test_node_outside_the_round_is_refused() -> None:
    with pytest.raises(BadMessage, match=r"this node \(ee\) is not a participant of round r1"):
        NodeRound(spec_for(["at", "be"]), "ee", Policy(), ListedSet([]))


@pytest.mark.parametrize(
    ("policy", "match"),
    [
        (Policy(max_own_set=2), "own set of 3 indicators exceeds this node's cap of 2"),
        (Policy(max_partner_set=2), "be's set of 3 elements exceeds this node's cap of 2"),
        (Policy(max_round_elements=8), "round would blind 9 elements; this node's cap is 8"),
    ],
)
def test_node_caps(policy: Policy, match: str) -> None:
    parties = {
        "at": (policy, some(3, 0)),
        "be": (Policy(), some(3, 10)),
        "cz": (Policy(), some(3, 20)),
    }
    link = FakeLink(spec_for(["at", "be", "cz"]), parties)
    with pytest.raises(CapExceeded, match=match):
        link.run()
    assert_all_keys_destroyed(link)
    assert link.coordinator.phase is CoordinatorPhase.FAILED


@pytest.mark.parametrize(
    ("caps", "match"),
    [
        (Caps(max_set=2), "at announced a set of 3 elements; the coordinator's cap is 2"),
        (Caps(max_total=5), "the round's sets total 6 elements; the coordinator's cap is 5"),
    ],
)
def test_coordinator_caps(caps: Caps, match: str) -> None:
    parties = {n: (Policy(), some(3, 0)) for n in ("at", "be", "cz")}
    link = FakeLink(spec_for(["at", "be", "cz"]), parties, caps=caps)
    with pytest.raises(CapExceeded, match=match):
        link.run()
    assert_all_keys_destroyed(link)


# --- resolve ---------------------------------------------------------------------------------------


def routed_node(
    mode: str = "pairwise", threshold: int | None = None, counts: bool = False
) -> NodeRound:
    spec = spec_for(["at", "be", "cz"], mode=mode, threshold=threshold, counts=counts)
    node = NodeRound(spec, "at", Policy(), ListedSet(some(3, 0)))
    node.begin_routing({"at": 3, "be": 3, "cz": 3})
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
        routed_node(mode, threshold, counts=mode == "threshold").resolve(delivery)


def test_counts_the_round_did_not_ask_for_are_refused() -> None:
    with pytest.raises(BadMessage, match="counts the round did not ask for"):
        routed_node("threshold", 2).resolve(ThresholdResult((0,), (2,)))
    outcome = routed_node("threshold", 2).resolve(ThresholdResult((0,), ()))
    assert [m.count for m in outcome.matches] == [None]


def test_bad_delivery_destroys_the_key() -> None:
    # A delivery is the round's last message: whether it fits or not, the key has no further
    # use, and the node must not depend on a later Abort to drop it.
    node = routed_node()
    key = node.live_key()
    with pytest.raises(BadMessage, match="position 3 outside"):
        node.resolve(PairwiseResult((3,), ((1,),)))
    assert node.key is None
    assert key.destroyed
    assert node.phase is NodePhase.ABORTED


def test_abort_destroys_the_key_in_every_phase() -> None:
    for steps in range(3):
        node = NodeRound(spec_for(["at", "be"]), "at", Policy(), ListedSet(some(3, 0)))
        key = node.live_key()
        if steps >= 1:
            node.begin_routing({"at": 3, "be": 2})
        if steps >= 2:
            node.accept_chunk("be", 0, 1, 0)
        node.abort("coordinator gone")
        assert node.key is None and key.destroyed
        assert node.phase is NodePhase.ABORTED and node.reason == "coordinator gone"
        node.abort("again")  # idempotent
        assert node.reason == "coordinator gone"


def test_success_destroys_the_key_and_the_position_map() -> None:
    node = routed_node()
    key = node.live_key()
    out = node.resolve(PairwiseResult((2,), ((1, 2),)))
    assert out.matches[0].partners == ("be", "cz") and out.matches[0].count == 3
    assert node.key is None and key.destroyed and node.positions_held == 0 and node.size == 3


# --- which stream a chunk arrives on, and how a stream may end (checks the driver used to hold) ----


def two_parties(size: int = 4, chunk: int = 2) -> FakeLink:
    return started(names=("at", "be"), size=size, chunk=chunk)


def test_an_own_set_stream_carries_only_the_senders_set() -> None:
    link = two_parties()
    _, be_chunk = link.outbox["be"].popleft()
    refused(
        link,
        BadMessage,
        "^node at sent a chunk of 'be''s set as its own set$",
        lambda: link.to_coordinator("at", "be", 0, be_chunk, OWN, hop=0),
    )


def test_a_reblind_stream_never_carries_the_senders_own_set() -> None:
    link = two_parties()
    _, at_chunk = link.outbox["at"].popleft()
    refused(
        link,
        BadMessage,
        "^node at sent its own set back from Reblind$",
        lambda: link.to_coordinator("at", "at", 0, at_chunk, REBLIND, hop=0),
    )


def test_an_own_set_stream_must_end_with_the_whole_announced_set() -> None:
    link = two_parties(size=4, chunk=2)
    link.send_own("at")
    refused(
        link,
        BadMessage,
        "^node at ended its own set after 2 of the 4 elements it announced$",
        lambda: link.end_stream("at", OWN),
    )


def test_an_own_set_stream_may_end_before_routing_is_over() -> None:
    link = two_parties(size=4, chunk=2)
    link.send_own("at")
    link.send_own("at")
    link.end_stream("at", OWN)  # be has not re-blinded a thing yet
    assert not link.coordinator.routed()
    link.route()
    assert set(link.deliver()) == {"at", "be"}
    assert link.coordinator.phase is CoordinatorPhase.DONE


def test_a_reblind_stream_must_not_end_before_every_set_is_final() -> None:
    link = two_parties()
    link.send_own("at")
    link.reblind("be")
    refused(
        link,
        BadMessage,
        "^node be closed its Reblind stream before routing finished$",
        lambda: link.end_stream("be", REBLIND),
    )


def test_streams_end_only_while_routing() -> None:
    link = FakeLink(spec_for(["at", "be"]), {n: (Policy(), some(2, 0)) for n in ("at", "be")})
    with pytest.raises(WrongPhase, match="round r1 is preparing; expected routing"):
        link.coordinator.on_stream_end("at", OWN)
    link.prepare()
    with pytest.raises(BadMessage, match="'mallory' is not a participant"):
        link.coordinator.on_stream_end("mallory", REBLIND)


def test_chunk_refusals_name_the_sender_first() -> None:
    # The reason a round fails names the node at fault first, as the coordinator records it.
    link = two_parties()
    _, chunk1 = link.outbox["at"][1]
    refused(
        link,
        BadMessage,
        "^node at: chunk 1 of at's set from at: expected chunk 0$",
        lambda: link.to_coordinator("at", "at", 1, chunk1, OWN, hop=0),
    )


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
    (NodeEvent.ROUTING_START, NodePhase.PREPARED),
    (NodeEvent.CHUNK, NodePhase.ROUTING),
    (NodeEvent.POSITION_MAP, NodePhase.ROUTING),
    (NodeEvent.DELIVERY, NodePhase.ROUTING),
}
COORDINATOR_ACCEPTS = {
    (CoordinatorEvent.PREPARED, CoordinatorPhase.PREPARING),
    (CoordinatorEvent.CHUNK, CoordinatorPhase.ROUTING),
    (CoordinatorEvent.STREAM_END, CoordinatorPhase.ROUTING),
    (CoordinatorEvent.FINAL_TAGS, CoordinatorPhase.ROUTING),
    (CoordinatorEvent.DELIVERIES, CoordinatorPhase.ROUTING),
    (CoordinatorEvent.DELIVERED, CoordinatorPhase.DELIVERING),
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
TABLES: list[tuple[Table[Any, Any], type[enum.StrEnum], type[enum.StrEnum], set[Any], set[Any]]] = [
    (NODE, NodePhase, NodeEvent, NODE_MOVES, NODE_ACCEPTS),
    (COORDINATOR, CoordinatorPhase, CoordinatorEvent, COORDINATOR_MOVES, COORDINATOR_ACCEPTS),
    (SCHEDULE, SchedulePhase, ScheduleEvent, SCHEDULE_MOVES, SCHEDULE_ACCEPTS),
    (COMMITTEE_NODE, CommitteePhase, CommitteeEvent, COMMITTEE_MOVES, COMMITTEE_ACCEPTS),
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


# The machines consult the tables: each message, sent to a round in each phase, is refused with
# WrongPhase exactly where the table says (other refusals, of the message's content, may follow).


def node_in(phase: NodePhase) -> NodeRound:
    node = NodeRound(spec_for(["at", "be"]), "at", Policy(), ListedSet(some(3, 0)))
    if phase is NodePhase.ABORTED:
        node.abort("test")
    elif phase is not NodePhase.PREPARED:
        node.begin_routing({"at": 3, "be": 3})
        if phase is NodePhase.DONE:
            node.resolve(PairwiseResult((), ()))
    assert node.phase is phase
    return node


NODE_CALLS: dict[NodeEvent, Callable[[NodeRound], object]] = {
    NodeEvent.OWN_SET: lambda n: list(n.own_batches()),
    NodeEvent.ROUTING_START: lambda n: n.begin_routing({"at": 3, "be": 3}),
    NodeEvent.CHUNK: lambda n: n.accept_chunk("be", 0, 1, 0),
    NodeEvent.POSITION_MAP: lambda n: n.position_map(),
    NodeEvent.DELIVERY: lambda n: n.resolve(PairwiseResult((), ())),
}


def coordinator_in(phase: CoordinatorPhase) -> FakeLink:
    link = FakeLink(spec_for(["at", "be"]), {n: (Policy(), some(2, 0)) for n in ("at", "be")})
    if phase is CoordinatorPhase.FAILED:
        link.abort("test")
    elif phase is not CoordinatorPhase.PREPARING:
        link.prepare()
        link.route()  # ROUTING here: every set final, so every routing message can be tried
        if phase is CoordinatorPhase.DELIVERING:
            link.coordinator.deliveries()
        elif phase is CoordinatorPhase.DONE:
            link.deliver()
    assert link.coordinator.phase is phase
    return link


COORDINATOR_CALLS: dict[CoordinatorEvent, Callable[[CoordinatorRound], object]] = {
    CoordinatorEvent.PREPARED: lambda c: c.on_prepared("at", 2),
    CoordinatorEvent.CHUNK: lambda c: c.on_chunk(
        "at", "at", 0, bytes(64), OWN, hop=0, signature=b""
    ),
    CoordinatorEvent.STREAM_END: lambda c: c.on_stream_end("at", REBLIND),
    CoordinatorEvent.FINAL_TAGS: lambda c: c.final_tags(),
    CoordinatorEvent.DELIVERIES: lambda c: c.deliveries(),
    CoordinatorEvent.DELIVERED: lambda c: c.on_delivered("at"),
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


@pytest.mark.parametrize("phase", list(CoordinatorPhase))
@pytest.mark.parametrize("event", list(CoordinatorEvent))
def test_coordinator_round_refuses_by_the_table(
    event: CoordinatorEvent, phase: CoordinatorPhase
) -> None:
    coord = coordinator_in(phase).coordinator
    assert refused_for_phase(lambda: COORDINATOR_CALLS[event](coord)) == (
        (event, phase) not in COORDINATOR_ACCEPTS
    )


# --- who must have produced a chunk --------------------------------------------------------------

RING = ("at", "be", "cz", "dk")


@pytest.mark.parametrize(
    ("me", "owner", "hop", "producer"),
    [
        ("be", "at", 1, "at"),  # the first hop takes the owner's own set
        ("cz", "at", 2, "be"),
        ("dk", "at", 3, "cz"),
        ("at", "be", 3, "dk"),  # the ring wraps
        ("at", "dk", 1, "dk"),
        ("cz", "dk", 3, "be"),
    ],
)
def test_each_hop_takes_only_the_previous_hops_output(
    me: str, owner: str, hop: int, producer: str
) -> None:
    """Hop h of owner o is participant (o + h) mod N; what it re-blinds must be the output of
    hop h - 1, signed by participant (o + h - 1) mod N."""

    def routing() -> NodeRound:
        node = NodeRound(spec_for(RING), me, Policy(), ListedSet(some(1, 0)))
        node.begin_routing(dict.fromkeys(RING, 1))
        return node

    node = routing()
    assert (node.hop_of(owner), node.producer(owner)) == (hop, producer)
    assert node.accept_chunk(owner, 0, 1, hop - 1) == producer
    for other in {0, 1, 2, 3, 4} - {hop - 1}:
        with pytest.raises(ForgedMessage, match=f"output of hop {other}; this node is hop {hop}"):
            routing().accept_chunk(owner, 0, 1, other)


def test_the_coordinator_forwards_hop_and_signature_untouched_and_checks_the_label() -> None:
    link = started(names=("at", "be"), size=2, chunk=2)
    seq, elements = link.outbox["at"].popleft()
    coord = link.coordinator
    fwd = coord.on_chunk("at", "at", seq, elements, OWN, hop=0, signature=b"sig of at")
    assert fwd is not None and (fwd.to, fwd.hop, fwd.signature) == ("be", 0, b"sig of at")
    refused(
        link,
        BadMessage,
        "labelled hop 0; be is hop 1",
        lambda: coord.on_chunk("be", "at", 0, elements, REBLIND, hop=0, signature=b""),
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
    spec = spec_for(["at", "be"])
    assert spec.kinds == KINDS and spec.mode == "pairwise" and spec.threshold is None
    assert spec.index("be") == 1
    with pytest.raises(BadMessage, match="'ee' is not a participant of round r1"):
        spec.index("ee")
