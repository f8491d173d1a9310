"""Values hashed into protocol v2's group, and the shape of a cheating member's reply, shared by
the tests that drive owners, members and checkers in memory."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

from blindmatch.core.evaluation import EvaluationAnswer, EvaluationRequest, elements_digest
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
