"""A whole v2 round between real signing parties, nodes and coordinator driven in memory
(core.committee): every mode gives the plain intersection, and what a coordinator colluding
with a node can forge is refused by the node it is shown to."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace

import pytest

from blindmatch.core.committee import (
    CommitteeCoordinator,
    CommitteeNode,
    RoundTerms,
    SignedAnswer,
    SignedRequest,
    answer_statement,
    request_statement,
)
from blindmatch.core.delivery import SharedCount, SignedRoot, VerifiedMatch
from blindmatch.core.errors import BadMessage, ForgedMessage, PolicyRefusal
from blindmatch.core.evaluation import Transcript, elements_digest
from blindmatch.core.oprf import LAMBDA
from blindmatch.core.owner import VerificationFailed
from blindmatch.core.secp256k1 import mul, points_from_bytes, points_to_bytes
from blindmatch.core.spec import Policy
from tests.inmemory import SIGNERS, SPEC, Round, evaluate, reveal_all, sign_all
from tests.values import hashes

SETS = {
    "alpha": [f"a{i}.example" for i in range(90)] + ["all.example", "ab.example", "ac.example"],
    "bravo": [f"b{i}.example" for i in range(40)] + ["all.example", "ab.example"],
    "charlie": [f"c{i}.example" for i in range(12)] + ["all.example", "ac.example"],
}


def prepare(
    sets: Mapping[str, Sequence[str]],
    committee: Sequence[str] | None = None,
    round_id: str = "r1",
    **mode: object,
) -> Round:
    """Every node trusts the round's committee (the policy test below covers refusing it)."""
    terms = RoundTerms(round_id, SPEC, tuple(sets), tuple(committee or sets), **mode)  # type: ignore[arg-type]
    trust = Policy(trusted_committee=frozenset(terms.committee))
    nodes = {n: CommitteeNode(terms, n, SIGNERS[n], len(v), trust) for n, v in sets.items()}
    return Round(terms, nodes, CommitteeCoordinator(terms))


def run(
    sets: Mapping[str, Sequence[str]], committee: Sequence[str] | None = None, **mode: object
) -> tuple[Round, dict[str, list[VerifiedMatch] | list[SharedCount]]]:
    r = prepare(sets, committee, **mode)
    signatures = sign_all(r)
    for node in r.nodes.values():
        node.begin(signatures)
    evaluate(r, sets)
    delivered = reveal_all(r)
    return r, {name: r.nodes[name].deliver(*delivered[name]) for name in r.nodes}


def values_of(
    r: Round, name: str, matches: Sequence[VerifiedMatch] | Sequence[SharedCount]
) -> dict[str, tuple[str, ...]]:
    node = r.nodes[name]
    assert node.positions is not None
    return {
        SETS[name][int(node.positions[m.position])]: tuple(sorted(m.partners))
        for m in matches
        if isinstance(m, VerifiedMatch)
    }


def plain(name: str) -> dict[str, tuple[str, ...]]:
    mine = set(SETS[name])
    out: dict[str, tuple[str, ...]] = {}
    for value in sorted(mine):
        partners = tuple(p for p in SETS if p != name and value in SETS[p])
        if partners:
            out[value] = partners
    return out


@pytest.mark.parametrize("committee", [None, ("alpha", "bravo"), ("bravo",)])
def test_a_pairwise_round_finds_the_plain_intersection(committee: tuple[str, ...] | None) -> None:
    r, results = run(SETS, committee)
    for name in SETS:
        assert values_of(r, name, results[name]) == plain(name)


def test_nodes_outside_the_committee_join_only_if_it_holds_whom_they_trust() -> None:
    terms = RoundTerms("r1", SPEC, tuple(SETS), ("alpha", "bravo"))
    with pytest.raises(PolicyRefusal, match="holds charlie"):
        CommitteeNode(terms, "charlie", SIGNERS["charlie"], 3)
    with pytest.raises(PolicyRefusal, match="holds delta"):
        CommitteeNode(
            terms, "charlie", SIGNERS["charlie"], 3, Policy(trusted_committee=frozenset({"delta"}))
        )
    CommitteeNode(
        terms, "charlie", SIGNERS["charlie"], 3, Policy(trusted_committee=frozenset({"bravo"}))
    )


def test_threshold_and_count_rounds_deliver_what_their_mode_allows() -> None:
    r, results = run(SETS, mode="threshold", threshold=3)
    for name in SETS:
        assert set(values_of(r, name, results[name])) == {"all.example"}
    _, counts = run(SETS, mode="count")
    shared = {c.partner: c.count for c in counts["alpha"] if isinstance(c, SharedCount)}
    assert shared == {"bravo": 2, "charlie": 2}


def test_a_transcript_shown_differently_to_one_node_stops_the_round_before_any_evaluation() -> None:
    """The coordinator shows bravo that alpha has a much larger set, so that alpha could ask
    bravo for more evaluations: bravo signs what it saw, and nobody's signatures then agree."""
    r = prepare(SETS)

    def shown(name: str, t: Transcript) -> Transcript:
        return replace(t, sizes={**t.sizes, "alpha": 100_000}) if name == "bravo" else t

    signatures = sign_all(r, shown)
    for name in ("alpha", "bravo", "charlie"):
        with pytest.raises(ForgedMessage, match="signature of the transcript is not signed"):
            r.nodes[name].begin(signatures)


def begun(sets: Mapping[str, Sequence[str]] = SETS, round_id: str = "r1") -> Round:
    r = prepare(sets, round_id=round_id)
    signatures = sign_all(r)
    for node in r.nodes.values():
        node.begin(signatures)
    return r


def test_a_request_in_a_partners_name_not_signed_by_it_is_refused_and_charges_nobody() -> None:
    """The ghost partner: alpha, with the coordinator, asks bravo to evaluate guesses in
    charlie's name, signed with alpha's own key. Bravo checks charlie's signature."""
    r = begun()
    guess = r.nodes["alpha"].request(hashes(["guess.example"]))
    forged_request = replace(guess.request, requester="charlie")
    forged = SignedRequest(
        forged_request, guess.points, SIGNERS["alpha"].sign(request_statement(forged_request))
    )
    with pytest.raises(ForgedMessage, match="not signed by node/charlie"):
        r.nodes["bravo"].on_request(forged)
    assert r.nodes["bravo"].member is not None
    assert r.nodes["bravo"].member.ledger is not None
    assert r.nodes["bravo"].member.ledger.charged == {}


def test_a_request_relabelled_or_replayed_into_another_round_is_refused() -> None:
    r1, r2 = begun(round_id="r1"), begun(round_id="r2")
    signed = r1.nodes["alpha"].request(hashes(["x.example"]))
    relabelled = replace(signed, request=replace(signed.request, requester="charlie"))
    with pytest.raises(ForgedMessage, match="not signed by node/charlie"):
        r1.nodes["bravo"].on_request(relabelled)
    with pytest.raises(ForgedMessage, match="sent to round r2"):
        r2.nodes["bravo"].on_request(signed)  # alpha's genuine request of round r1


def test_an_answer_must_be_signed_by_a_member_of_this_committee() -> None:
    r = begun()
    signed = r.nodes["alpha"].request(hashes(["x.example"]))
    answer = r.nodes["bravo"].on_request(signed)
    by_charlie = replace(answer, answer=replace(answer.answer, member="charlie"))
    with pytest.raises(ForgedMessage, match="not signed by node/charlie"):
        r.nodes["alpha"].on_answer(by_charlie)
    r.nodes["alpha"].on_answer(answer)


def test_a_member_that_re_signs_a_wrong_answer_stops_the_owner_before_any_tag_leaves() -> None:
    """Bravo signs doubled answers to charlie's chunks as its own: they carry bravo's valid
    signature, so only charlie's subset checks can catch them, and they do: no tag leaves."""

    def doubled(member: str, signed: SignedRequest, answer: SignedAnswer) -> SignedAnswer:
        if member != "bravo" or signed.request.requester != "charlie" or signed.request.proved:
            return answer
        points = points_to_bytes([mul(p, 2) for p in points_from_bytes(answer.points)])
        forged = replace(answer.answer, answers=elements_digest(points))
        return SignedAnswer(forged, points, SIGNERS["bravo"].sign(answer_statement(forged)))

    r = begun()
    evaluate(r, SETS, cheat=doubled)
    for name in ("alpha", "bravo"):
        r.nodes[name].root()
    with pytest.raises(VerificationFailed):
        r.nodes["charlie"].root()
    assert r.nodes["charlie"].phase == "aborted"


def tagged(r: Round) -> dict[str, SignedRoot]:
    evaluate(r, SETS)
    return {name: node.root() for name, node in r.nodes.items()}


def test_tags_go_out_only_against_every_root_each_over_its_announced_size() -> None:
    """Commit, then reveal: a partner shown another's tags before it committed could put them
    in its own root; a root over more tags than its owner announced is refused too."""
    r = begun()
    roots = tagged(r)
    with pytest.raises(ForgedMessage, match="every participant's root"):
        r.nodes["alpha"].reveal({n: s for n, s in roots.items() if n != "charlie"})
    stuffed_root = SignedRoot("bravo", 70, roots["bravo"].root, b"")
    stuffed = replace(stuffed_root, signature=SIGNERS["bravo"].sign(stuffed_root.statement("r1")))
    with pytest.raises(ForgedMessage, match="covers 70 tags; it announced 42"):
        r.nodes["alpha"].reveal({**roots, "bravo": stuffed})
    r.nodes["alpha"].reveal(roots)


def test_a_delivery_proved_against_other_roots_than_those_revealed_to_is_refused() -> None:
    r = begun()
    roots = tagged(r)
    deliveries = None
    for node in r.nodes.values():
        r.coordinator.on_root(roots[node.me])
    for node in r.nodes.values():
        deliveries = r.coordinator.on_tags(node.reveal(roots)) or deliveries
    assert deliveries is not None
    delivery, _ = deliveries["alpha"]
    other = SignedRoot("bravo", 42, b"\x00" * 32, b"")
    other = replace(other, signature=SIGNERS["bravo"].sign(other.statement("r1")))
    with pytest.raises(ForgedMessage, match="other roots than those revealed to"):
        r.nodes["alpha"].deliver(delivery, {**roots, "bravo": other})


def test_a_request_beyond_what_an_honest_owner_asks_is_refused_and_charges_nothing() -> None:
    """Chunks of the spec's size, then λ proved subset checks: a member answers nothing else,
    even signed and within the requester's budget."""
    r = begun_with(chunk_size=8)
    bravo = r.nodes["bravo"]
    big = r.nodes["alpha"].request(hashes([f"g{i}.example" for i in range(9)]))
    with pytest.raises(BadMessage, match="9 evaluations exceeds the spec's chunk size of 8"):
        bravo.on_request(big)
    few = replace(big.request, count=2, proved=True, elements=elements_digest(big.points[:130]))
    proved = SignedRequest(few, big.points[:130], SIGNERS["alpha"].sign(request_statement(few)))
    with pytest.raises(BadMessage, match=f"2 points, not its {LAMBDA} subset checks"):
        bravo.on_request(proved)
    assert bravo.member is not None and bravo.member.ledger is not None
    assert bravo.member.ledger.charged == {}


def begun_with(**mode: object) -> Round:
    r = prepare(SETS, **mode)
    signatures = sign_all(r)
    for node in r.nodes.values():
        node.begin(signatures)
    return r


def test_the_coordinator_refuses_a_root_over_another_size_than_announced() -> None:
    r = begun()
    roots = tagged(r)
    stuffed_root = SignedRoot("bravo", 70, roots["bravo"].root, b"")
    stuffed = replace(stuffed_root, signature=SIGNERS["bravo"].sign(stuffed_root.statement("r1")))
    with pytest.raises(BadMessage, match="counts 70 tags; it announced 42"):
        r.coordinator.on_root(stuffed)
