"""Protocol v2's evaluation, owners and members driven in memory (core.owner, core.member): shared
values get equal tags, and every answer is verified before a tag leaves.

These drive the pure roles directly; the transport (signatures, gRPC, the coordinator between
them) is not here yet."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import pytest

from blindmatch.core.errors import BadMessage, CapExceeded, ForgedMessage, WrongPhase
from blindmatch.core.evaluation import (
    Equivocation,
    EvaluationAnswer,
    EvaluationRequest,
    Transcript,
    elements_digest,
)
from blindmatch.core.member import Member
from blindmatch.core.owner import Owner, VerificationFailed
from blindmatch.core.proofs import BadProof
from blindmatch.core.secp256k1 import (
    ORDER,
    InvalidPoint,
    add,
    mul,
    point_from_bytes,
    points_from_bytes,
    points_to_bytes,
)
from tests.values import Reply, another_share, hashes
from tests.values import committee as committee_of

ROUND = "r1"
SPEC = b"\x07" * 32


@dataclass
class Federation:
    members: dict[str, Member]
    transcript: Transcript
    owners: dict[str, Owner]
    asked: dict[tuple[str, int], tuple[EvaluationRequest, bytes]]  # (owner, seq) -> request


def federation(
    sets: Mapping[str, Sequence[str]], committee: Sequence[str] | None = None
) -> Federation:
    members, transcript = committee_of(
        "round", ROUND, SPEC, committee or list(sets), {n: len(v) for n, v in sets.items()}
    )
    keys = transcript.verified_keys()
    owners = {
        name: Owner(name, transcript, keys, len(values), members.get(name))
        for name, values in sets.items()
    }
    return Federation(members, transcript, owners, {})


def evaluate_set(
    fed: Federation,
    owner: str,
    values: Sequence[str],
    chunk: int = 64,
    replies: Mapping[str, Reply] | None = None,
) -> dict[str, dict[int, tuple[EvaluationAnswer, bytes]]]:
    """Every chunk and the subset checks through every other member; the answers each member
    gave, by seq (what the coordinator would have relayed)."""
    o = fed.owners[owner]
    given: dict[str, dict[int, tuple[EvaluationAnswer, bytes]]] = {m: {} for m in o.remote}
    hs = hashes(values)

    def ask(request: EvaluationRequest, packed: bytes) -> list[tuple[EvaluationAnswer, bytes]]:
        fed.asked[owner, request.seq] = (request, packed)
        out = []
        for m in o.remote:
            answer, points = fed.members[m].answer(request, packed)
            if replies and m in replies:
                answer, points = replies[m](request, packed, answer, points)
            given[m][request.seq] = (answer, points)
            out.append((answer, points))
        return out

    for start in range(0, len(hs), chunk):
        request, packed = o.request(hs[start : start + chunk])
        for answer, points in ask(request, packed):
            o.answer(request.seq, answer, points)
    request, packed = o.challenge()
    for answer, points in ask(request, packed):
        o.challenge_answer(answer, points)
    return given


def tag_set(fed: Federation, owner: str, values: Sequence[str]) -> dict[str, bytes]:
    evaluate_set(fed, owner, values)
    sorted_tags, order = fed.owners[owner].tags()
    return {values[int(order[i])]: sorted_tags[16 * i : 16 * i + 16] for i in range(len(values))}


SETS = {
    "alpha": [f"alpha-{i}.example" for i in range(150)] + ["shared.example", "ab.example"],
    "bravo": [f"bravo-{i}.example" for i in range(70)] + ["shared.example", "ab.example"],
    "charlie": [f"charlie-{i}.example" for i in range(9)] + ["shared.example"],
}


@pytest.mark.parametrize("committee", [None, ["alpha", "bravo"], ["charlie"]])
def test_shared_values_get_equal_tags_and_others_do_not(committee: list[str] | None) -> None:
    fed = federation(SETS, committee)
    tags = {name: tag_set(fed, name, values) for name, values in SETS.items()}
    assert tags["alpha"]["shared.example"] == tags["bravo"]["shared.example"]
    assert tags["alpha"]["shared.example"] == tags["charlie"]["shared.example"]
    assert tags["alpha"]["ab.example"] == tags["bravo"]["ab.example"]
    everything = [t for by_value in tags.values() for t in by_value.values()]
    assert len(set(everything)) == sum(len(v) for v in SETS.values()) - 3


def test_the_sorted_tags_come_with_the_position_of_each_element() -> None:
    fed = federation(SETS)
    evaluate_set(fed, "charlie", SETS["charlie"])
    sorted_tags, order = fed.owners["charlie"].tags()
    records = [sorted_tags[i : i + 16] for i in range(0, len(sorted_tags), 16)]
    assert records == sorted(records)
    assert sorted(order.tolist()) == list(range(len(SETS["charlie"])))


def cancelling(honest: Member, c: int) -> Reply:
    """A colluding member who saw the honest member's answers (the coordinator relays them)
    replies c·X - Y_h, so the owner's tags would become c·H: an offline dictionary."""

    def reply(
        request: EvaluationRequest, packed: bytes, answer: EvaluationAnswer, points: bytes
    ) -> tuple[EvaluationAnswer, bytes]:
        if request.proved:
            return answer, points  # the DLEQ proof would give it away
        xs = points_from_bytes(packed)
        _, honest_points = honest.answer(request, packed)  # a repeat: no new charge
        ys = [
            add([mul(x, c), mul(y, ORDER - 1)])
            for x, y in zip(xs, points_from_bytes(honest_points), strict=True)
        ]
        out = points_to_bytes(ys)
        return replace(answer, answers=elements_digest(out)), out

    return reply


def test_the_cancellation_attack_leaves_no_tag_and_names_the_member() -> None:
    sets = {"alpha": SETS["alpha"], "bravo": SETS["bravo"], "charlie": SETS["charlie"]}
    fed = federation(sets)
    given = evaluate_set(
        fed, "charlie", sets["charlie"], replies={"bravo": cancelling(fed.members["alpha"], 5)}
    )
    with pytest.raises(VerificationFailed):
        fed.owners["charlie"].tags()
    assert fed.owners["charlie"].blame(given) == ["bravo"]


def wrong_at(index: int) -> Reply:
    def reply(
        request: EvaluationRequest, packed: bytes, answer: EvaluationAnswer, points: bytes
    ) -> tuple[EvaluationAnswer, bytes]:
        ys = points_from_bytes(points)
        if request.proved or not 0 <= index - 64 * request.seq < len(ys):
            return answer, points
        j = index - 64 * request.seq
        ys[j] = mul(ys[j], 2)
        out = points_to_bytes(ys)
        return replace(answer, answers=elements_digest(out)), out

    return reply


def test_one_wrong_element_in_4096_is_caught_and_blamed() -> None:
    values = [f"v{i}.example" for i in range(4096)]
    fed = federation({"alpha": values, "bravo": ["b.example"], "charlie": ["c.example"]})
    given = evaluate_set(fed, "alpha", values, replies={"charlie": wrong_at(3001)})
    with pytest.raises(VerificationFailed):
        fed.owners["alpha"].tags()
    assert fed.owners["alpha"].blame(given) == ["charlie"]


def test_errors_of_two_colluders_in_one_owners_answers_are_caught() -> None:
    fed = federation(SETS)
    given = evaluate_set(
        fed, "alpha", SETS["alpha"], replies={"bravo": wrong_at(3), "charlie": wrong_at(70)}
    )
    with pytest.raises(VerificationFailed):
        fed.owners["alpha"].tags()
    assert fed.owners["alpha"].blame(given) == ["bravo", "charlie"]


def test_a_member_answering_with_another_share_fails_its_proof() -> None:
    fed = federation(SETS)
    with pytest.raises(BadProof):
        evaluate_set(fed, "bravo", SETS["bravo"], replies={"alpha": another_share()})


def test_a_member_that_answers_a_request_differently_the_second_time_is_named() -> None:
    fed = federation(SETS)
    given = evaluate_set(fed, "charlie", SETS["charlie"], replies={"alpha": wrong_at(2)})
    with pytest.raises(VerificationFailed):
        fed.owners["charlie"].tags()
    # Asked again, alpha answers honestly: its two signed answers to one request differ.
    again = {m: dict(chunks) for m, chunks in given.items()}
    again["alpha"][0] = fed.members["alpha"].answer(*fed.asked["charlie", 0])
    assert again["alpha"][0] != given["alpha"][0]
    assert fed.owners["charlie"].blame(again) == ["alpha"]


def test_answers_must_name_the_request_come_from_a_member_and_match_their_digest() -> None:
    fed = federation(SETS)
    o = fed.owners["charlie"]
    hs = hashes(SETS["charlie"])
    first, packed_first = o.request(hs[:5])
    second, packed_second = o.request(hs[5:])
    answer, points = fed.members["alpha"].answer(second, packed_second)
    with pytest.raises(ForgedMessage, match="another request"):
        o.answer(first.seq, answer, points)  # spliced: chunk 1's answer as chunk 0's
    a0, p0 = fed.members["alpha"].answer(first, packed_first)
    with pytest.raises(ForgedMessage, match="not a member"):
        o.answer(first.seq, replace(a0, member="delta"), p0)
    with pytest.raises(ForgedMessage, match="do not match"):
        o.answer(first.seq, a0, packed_first)
    assert o.answer(first.seq, a0, p0) is False  # bravo has not answered yet
    with pytest.raises(BadMessage, match="already answered"):
        o.answer(first.seq, a0, p0)


def test_a_member_refuses_what_was_not_signed_for_or_paid_for() -> None:
    fed = federation(SETS)
    bravo = fed.members["bravo"]
    xs = points_to_bytes(hashes(["x.example", "y.example"]))
    request = EvaluationRequest(
        "round", ROUND, fed.transcript.digest(), "charlie", 0, 2, elements_digest(xs)
    )
    with pytest.raises(BadMessage, match="do not match the digest"):
        bravo.answer(request, xs[:65] * 2)
    with pytest.raises(BadMessage, match="counts 3"):
        bravo.answer(replace(request, count=3), xs)
    bravo.answer(request, xs)
    with pytest.raises(Equivocation):
        other = points_to_bytes(hashes(["z.example", "y.example"]))
        bravo.answer(replace(request, elements=elements_digest(other)), other)
    big = points_to_bytes(hashes([f"g{i}" for i in range(49)]))
    with pytest.raises(CapExceeded, match=r"51 evaluations.* allow 50"):  # 10 announced + λ
        bravo.answer(replace(request, seq=1, count=49, elements=elements_digest(big)), big)
    hybrid = bytes([6 + (xs[64] & 1)]) + xs[1:65]
    with pytest.raises(InvalidPoint):
        bravo.answer(replace(request, seq=2, count=1, elements=elements_digest(hybrid)), hybrid)
    with pytest.raises(ForgedMessage, match="another transcript"):
        bravo.answer(replace(request, seq=3, transcript=b"\x00" * 32), xs)


def test_a_member_checks_the_transcript_carries_its_own_commitment() -> None:
    fed = federation(SETS)
    fresh = Member("round", ROUND, "alpha")
    with pytest.raises(BadMessage, match="commitment as sent"):
        fresh.accept(fed.transcript)


def test_points_parse_only_in_the_one_canonical_form() -> None:
    p = hashes(["canonical.example"])[0]
    raw = points_to_bytes([p])
    assert point_from_bytes(raw) == p
    with pytest.raises(InvalidPoint):
        point_from_bytes(p.format(compressed=True))


def test_blame_counts_only_the_answers_as_signed_so_the_coordinator_cannot_frame_a_member() -> None:
    """Charlie answered one element wrongly. Replaying, the coordinator gives charlie's signed
    answer with the right points (to clear it) and bravo's with one point doubled (to frame it):
    neither replay carries the points its signature covers, so neither proves anything."""
    sets = {"alpha": SETS["alpha"], "bravo": SETS["bravo"], "charlie": SETS["charlie"]}
    fed = federation(sets)
    given = evaluate_set(fed, "alpha", sets["alpha"], replies={"charlie": wrong_at(5)})
    with pytest.raises(VerificationFailed):
        fed.owners["alpha"].tags()
    assert fed.owners["alpha"].blame(given) == ["charlie"]

    request, packed = fed.asked["alpha", 0]
    honest_charlie = fed.members["charlie"].answer(request, packed)[1]
    bravo_points = points_from_bytes(given["bravo"][0][1])
    bravo_points[0] = mul(bravo_points[0], 2)
    framed = {m: dict(chunks) for m, chunks in given.items()}
    framed["charlie"][0] = (given["charlie"][0][0], honest_charlie)
    framed["bravo"][0] = (given["bravo"][0][0], points_to_bytes(bravo_points))
    assert fed.owners["alpha"].blame(framed) == []
    dropped = {"charlie": given["charlie"]}  # bravo's replays withheld: bravo is not named
    assert fed.owners["alpha"].blame(dropped) == ["charlie"]


def test_a_member_answers_under_one_transcript_for_its_share() -> None:
    """A second transcript would open a second ledger for the same share, its allowances
    starting again from nothing."""
    fed = federation(SETS)
    with pytest.raises(WrongPhase, match="already answers under a transcript"):
        fed.members["alpha"].accept(fed.transcript)
