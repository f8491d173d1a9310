"""A committee member's side of protocol v2: answer what a requester signed and paid for, nothing else.

Rules:
- The share k_i is drawn here, per round or epoch, and never leaves: the member answers
  Y = k_i·X for the blinded points of a request, and commits to k_i in the transcript.
- Before it computes anything, the member checks that the request is for this round or epoch,
  carries the transcript it signed, matches the points it came with, and fits the requester's
  allowance (``EvaluationLedger``). The requester's signature over the request is checked by the
  caller before ``answer``: the member charges whoever signed.
- A request marked ``proved`` is answered with a batched DLEQ proof against P_i, bound to the
  request's digest, so the requester can tell a wrong answer from a right one.
- The share is a ``SecretScalar``: its bytes live in one buffer, which every multiplication and
  proof reads in place, and which ``destroy`` overwrites; nothing is answered afterwards, and an
  answer that ``destroy`` overtakes (the round ended meanwhile) is refused, not sent.
"""

from __future__ import annotations

from collections.abc import Sequence

from blindmatch.core.errors import BadMessage, WrongPhase
from blindmatch.core.evaluation import (
    Commitment,
    EvaluationAnswer,
    EvaluationLedger,
    EvaluationRequest,
    Transcript,
    commit,
    elements_digest,
)
from blindmatch.core.oprf import evaluate
from blindmatch.core.proofs import prove_equal
from blindmatch.core.secp256k1 import (
    Point,
    SecretScalar,
    base_mul,
    points_from_bytes,
    points_to_bytes,
)


class Member:
    """One member's share for one round or epoch."""

    def __init__(self, purpose: str, ident: str, name: str) -> None:
        self.purpose = purpose
        self.ident = ident
        self.name = name
        self._share: SecretScalar | None = SecretScalar()
        self.commitment: Commitment = commit(self._share, purpose, ident, name)
        self.public = base_mul(self._share)
        self.ledger: EvaluationLedger | None = None

    def accept(self, transcript: Transcript) -> None:
        """Start answering under ``transcript``, once its proofs are verified and it holds this
        member's own commitment unchanged. Once: a second transcript would open a second ledger
        for the same share, and its allowances would start again from nothing."""
        if self.ledger is not None:
            raise WrongPhase(f"{self.name} already answers under a transcript for this share")
        if (transcript.purpose, transcript.ident) != (self.purpose, self.ident):
            raise BadMessage(f"a transcript for {transcript.purpose} {transcript.ident}")
        mine = [c for c in transcript.commitments if c.member == self.name]
        if mine != [self.commitment]:
            raise BadMessage(f"the transcript does not carry {self.name}'s commitment as sent")
        transcript.verified_keys()
        self.ledger = EvaluationLedger(transcript)

    def answer(self, request: EvaluationRequest, blinded: bytes) -> tuple[EvaluationAnswer, bytes]:
        """The signed-to-be answer to a request whose signature the caller verified, and the
        answered points. Raises, and charges nothing, for anything that must be refused."""
        share = self._share  # once: ``destroy`` may run meanwhile (the round ended elsewhere)
        if share is None:
            raise WrongPhase(f"{self.name}'s share for {self.purpose} {self.ident} is destroyed")
        if self.ledger is None:
            raise WrongPhase("no transcript is accepted yet")
        if elements_digest(blinded) != request.elements:
            raise BadMessage("the points do not match the digest the requester signed")
        points = points_from_bytes(blinded)
        if len(points) != request.count:
            raise BadMessage(f"the request counts {request.count} points but carries {len(points)}")
        self.ledger.admit(request)  # a repeat is answered again at no charge: same points
        answers = evaluate(share, points)
        out = points_to_bytes(answers)
        proof = b""
        if request.proved:
            proof = prove_equal(share, self.public, points, answers, request.digest()).to_bytes()
        return EvaluationAnswer(request.digest(), self.name, elements_digest(out), proof), out

    def own_part(self, points: Sequence[Point]) -> list[Point]:
        """k_i·P for points of this member's own making (its own set, its own subset sums): no
        request, no charge, since nothing leaves."""
        share = self._share
        if share is None:
            raise WrongPhase(f"{self.name}'s share for {self.purpose} {self.ident} is destroyed")
        return evaluate(share, points)

    def destroy(self) -> None:
        """Overwrite the share; an answer under way with it raises instead of leaving."""
        share, self._share = self._share, None
        if share is not None:
            share.destroy()
