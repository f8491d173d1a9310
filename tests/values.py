"""Values hashed into protocol v2's group, and the shape of a cheating member's reply, shared by
the tests that drive owners, members and checkers in memory."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace

from blindmatch.core.evaluation import (
    EvaluationAnswer,
    EvaluationRequest,
    Transcript,
    elements_digest,
)
from blindmatch.core.member import Member
from blindmatch.core.secp256k1 import (
    Point,
    hash_to_curve,
    mul,
    points_from_bytes,
    points_to_bytes,
    random_scalar,
)

DST = b"blindmatch-v2-test-values"

# A member's reply to (request, points), given the honest one: what a cheating member sends.
Reply = Callable[
    [EvaluationRequest, bytes, EvaluationAnswer, bytes], tuple[EvaluationAnswer, bytes]
]


def hashes(values: Sequence[str]) -> list[Point]:
    return [hash_to_curve(v.encode(), DST) for v in values]


def another_share() -> Reply:
    """A member that answers with a share other than the one it committed to."""
    other = random_scalar()

    def reply(
        request: EvaluationRequest, packed: bytes, answer: EvaluationAnswer, points: bytes
    ) -> tuple[EvaluationAnswer, bytes]:
        out = points_to_bytes([mul(x, other) for x in points_from_bytes(packed)])
        return replace(answer, answers=elements_digest(out)), out

    return reply


def committee(
    purpose: str,
    ident: str,
    spec: bytes,
    names: Sequence[str],
    sizes: Mapping[str, int],
    holder_sizes: Mapping[str, int] | None = None,
    caps: Mapping[tuple[str, str], int] | None = None,
) -> tuple[dict[str, Member], Transcript]:
    """Members with fresh shares, and the transcript of their commitments, accepted by each."""
    members = {m: Member(purpose, ident, m) for m in sorted(names)}
    transcript = Transcript(
        purpose,
        ident,
        spec,
        tuple(member.commitment for member in members.values()),
        dict(sizes),
        dict(holder_sizes or {}),
        dict(caps or {}),
    )
    for member in members.values():
        member.accept(transcript)
    return members, transcript
