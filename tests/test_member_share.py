"""A committee member's share (core.member, core.secp256k1.SecretScalar): one buffer, overwritten
when the member destroys it, and no answer computed with a share destroyed meanwhile leaves.

tests/test_privacy.py scans a node's whole memory after a real round for copies of its share;
these check the member itself."""

from __future__ import annotations

from dataclasses import replace

import pytest

from blindmatch.core.errors import WrongPhase
from blindmatch.core.evaluation import EvaluationRequest, elements_digest
from blindmatch.core.member import Member
from blindmatch.core.secp256k1 import SecretScalar, points_to_bytes
from tests.values import committee, hashes

SPEC = b"\x07" * 32
VALUES = ["a.example", "b.example", "c.example"]


def bravo_asked_by_alpha() -> tuple[Member, EvaluationRequest, bytes]:
    members, transcript = committee(
        "round", "r1", SPEC, ["alpha", "bravo"], {"alpha": len(VALUES), "bravo": 1}
    )
    packed = points_to_bytes(hashes(VALUES))
    request = EvaluationRequest(
        "round", "r1", transcript.digest(), "alpha", 0, len(VALUES), elements_digest(packed)
    )
    return members["bravo"], request, packed


def test_destroy_overwrites_the_share_and_ends_answering() -> None:
    bravo, request, packed = bravo_asked_by_alpha()
    share = bravo._share
    assert isinstance(share, SecretScalar)
    buffer = memoryview(share._buf)  # the share's own memory, to look at once it is destroyed
    assert any(buffer)
    bravo.answer(request, packed)
    bravo.destroy()
    assert share.destroyed and not any(buffer)
    with pytest.raises(WrongPhase, match="destroyed"):
        bravo.answer(replace(request, seq=1), packed)
    with pytest.raises(WrongPhase, match="destroyed"):
        bravo.own_part(hashes(VALUES))
    bravo.destroy()  # twice is harmless: a round's ends may overlap


@pytest.mark.parametrize("proved", [False, True])
def test_an_answer_that_destroy_overtakes_does_not_leave(
    monkeypatch: pytest.MonkeyPatch, proved: bool
) -> None:
    """The round ends (another thread destroys the share) after bravo admitted a request and
    before it computed the answer: the answer raises instead of leaving, whatever it computed."""
    bravo, request, packed = bravo_asked_by_alpha()
    assert bravo.ledger is not None
    admit = bravo.ledger.admit

    def admit_then_the_round_ends(asked: EvaluationRequest) -> bool:
        charged = admit(asked)
        bravo.destroy()
        return charged

    monkeypatch.setattr(bravo.ledger, "admit", admit_then_the_round_ends)
    with pytest.raises(WrongPhase, match="destroyed"):
        bravo.answer(replace(request, proved=proved), packed)
