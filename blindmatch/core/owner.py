"""An owner's side of protocol v2: its set through the committee, and no tag out before it is verified.

Rules:
- The owner blinds each stored hash with a fresh r_j and asks every other committee member to
  evaluate each chunk, in requests it signs (``EvaluationRequest``, seq = the chunk's place after
  the first seq it was given: 0 for a round's set, a seq of its own for each check of an epoch).
  The r_j come from a secret seed drawn for this set from the CSPRNG, one derivation per element
  under a DST of its own, so the owner holds 32 bytes for them instead of 32 per element, and can
  derive them again to name a cheating member. Nobody else ever sees the seed.
- Every answer must name the request the owner signed for that chunk and come from a member of
  the transcript; the owner keeps each member's answer digest per chunk, so a member that later
  answers the same request differently has signed two answers.
- After the last chunk, the owner asks for the λ subset checks in one ``proved`` request
  (``oprf.SubsetCheck``) and verifies every member's DLEQ proof against its commitment.
- ``tags()`` gives the sorted 16-byte tags only when every chunk is answered and every subset
  check holds; otherwise ``VerificationFailed`` and no tag leaves, whatever the caller does next.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np

from blindmatch.core.errors import BadMessage, ForgedMessage, ProtocolError, WrongPhase
from blindmatch.core.evaluation import (
    EvaluationAnswer,
    EvaluationRequest,
    Transcript,
    elements_digest,
)
from blindmatch.core.member import Member
from blindmatch.core.oprf import TAG_BYTES, SubsetCheck, tag, unblind
from blindmatch.core.proofs import Proof, verify_equal
from blindmatch.core.secp256k1 import (
    Point,
    batch_inverse,
    hash_to_scalar,
    mul,
    points_from_bytes,
    points_to_bytes,
)

_BLINDING_DST: Final = b"blindmatch-v2-owner-blinding"


def answered_points(
    asked: Sequence[str], answer: EvaluationAnswer, points: bytes, request: EvaluationRequest
) -> list[Point]:
    """The points of a member's answer (signature verified by the caller), once it comes from a
    member that was ``asked``, names ``request`` and carries the points it signed, all of them."""
    if answer.member not in asked:
        raise ForgedMessage(f"{answer.member} is not a member this owner asked")
    if answer.request != request.digest():
        raise ForgedMessage(f"{answer.member}'s answer names another request")
    if answer.answers != elements_digest(points):
        raise ForgedMessage(f"{answer.member}'s points do not match the digest it signed")
    got = points_from_bytes(points)
    if len(got) != request.count:
        raise BadMessage(f"{answer.member} answered {len(got)} of {request.count} points")
    return got


class VerificationFailed(ProtocolError):
    """The owner's tags failed their subset checks: none leaves. ``members`` are those whose own
    answers were shown wrong, once ``blame`` ran; empty until then."""

    code = "DATA_LOSS"

    def __init__(self, message: str, members: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.members = tuple(members)


@dataclass
class _Pending:
    start: int
    count: int
    request: EvaluationRequest
    hashes: list[Point] | None  # kept only when the owner adds its own share at unblinding
    unblinders: list[int]  # the chunk's r⁻¹, kept while it waits (``blame`` derives them again)
    answers: dict[str, list[Point]]


class Owner:
    """One owner's set of ``size`` stored hashes, evaluated in chunks in position order."""

    def __init__(
        self,
        me: str,
        transcript: Transcript,
        keys: Mapping[str, Point],
        size: int,
        own: Member | None = None,
        *,
        seq: int = 0,
        kind: str = "set",
    ) -> None:
        if own is not None and own.name != me:
            raise ValueError("the owner's own share is the owner's")
        self.me = me
        self.transcript = transcript
        self.digest = transcript.digest()
        self.keys = dict(keys)  # every member's verified P_i
        self.remote = tuple(m for m in transcript.committee if m != me)
        self.own = own
        self.size = size
        self.kind = kind  # what members charge it to: a set, or a watch check (evaluation.py)
        self.check = SubsetCheck(size)
        self._seed = secrets.token_bytes(32)
        self._counts: list[int] = []  # elements per chunk, by seq from the first
        # A checker's every check in an epoch draws on one ledger per member: each starts at a
        # seq of its own, or its requests would look like equivocation.
        self._first = seq
        self._seq = seq
        self._requested = 0
        self._pending: dict[int, _Pending] = {}
        self._answer_digests: dict[tuple[str, int], bytes] = {}
        self._request_digests: dict[int, bytes] = {}
        self._seq_by_digest: dict[bytes, int] = {}
        self._tags = bytearray(size * TAG_BYTES)
        self._tagged = 0
        self._released = False
        self._challenge: tuple[EvaluationRequest, list[Point]] | None = None
        self._challenged = False  # its seq taken, even once ``destroy`` drops the challenge
        self._proved: dict[str, list[Point]] = {}
        self._failed: list[int] = []

    # --- requests out -------------------------------------------------------------------------

    def _blinders(self, seq: int, count: int) -> list[int]:
        return [
            hash_to_scalar(
                self._seed + seq.to_bytes(8, "big") + i.to_bytes(4, "big"),
                _BLINDING_DST,
            )
            for i in range(count)
        ]

    def request(self, hashes: Sequence[Point]) -> tuple[EvaluationRequest, bytes]:
        """The next chunk of the set, blinded, and the request to sign for it."""
        self._require_live()
        if self._challenge is not None:
            raise WrongPhase("the set is closed: its subset checks are out")
        if not hashes or self._requested + len(hashes) > self.size:
            raise ValueError(f"a chunk of 1 to {self.size - self._requested} hashes")
        seq = self._seq
        blinders = self._blinders(seq, len(hashes))
        blinded = [mul(h, r) for h, r in zip(hashes, blinders, strict=True)]
        packed = points_to_bytes(blinded)
        request = self._request(seq, len(hashes), packed, proved=False)
        self.check.add_hashes(hashes)
        digest = request.digest()
        self._request_digests[seq] = digest
        self._seq_by_digest[digest] = seq
        self._pending[seq] = _Pending(
            self._requested,
            len(hashes),
            request,
            list(hashes) if self.own else None,
            batch_inverse(blinders),
            {},
        )
        self._counts.append(len(hashes))
        self._seq += 1
        self._requested += len(hashes)
        if not self.remote:  # the owner is the whole committee: nobody to wait for
            self._complete(seq)
        return request, packed

    def _request(self, seq: int, count: int, packed: bytes, *, proved: bool) -> EvaluationRequest:
        return EvaluationRequest(
            self.transcript.purpose,
            self.transcript.ident,
            self.digest,
            self.me,
            seq,
            count,
            elements_digest(packed),
            proved,
            self.kind,
        )

    @property
    def next_seq(self) -> int:
        """The first seq this owner leaves free (its chunks' and its subset checks' taken): a
        watch round's checker starts its checks there, on the same ledgers."""
        return self._seq + self._challenged

    def challenge(self) -> tuple[EvaluationRequest, bytes]:
        """The λ subset checks, once the whole set is requested: one proved request."""
        self._require_live()
        if self._requested != self.size:
            raise WrongPhase(f"{self._requested} of {self.size} elements are requested")
        if self._challenge is not None:
            raise WrongPhase("the subset checks are already out")
        points = self.check.challenge()
        packed = points_to_bytes(points)
        request = self._request(self._seq, len(points), packed, proved=True)
        self._challenge = (request, points)
        self._challenged = True
        return request, packed

    # --- answers in ---------------------------------------------------------------------------

    def _from_member(
        self, answer: EvaluationAnswer, points: bytes, request: EvaluationRequest
    ) -> list[Point]:
        return answered_points(self.remote, answer, points, request)

    def seq_of(self, request_digest: bytes) -> int:
        """The chunk a request digest names, among those still waiting for answers."""
        seq = self._seq_by_digest.get(request_digest)
        if seq is None or seq not in self._pending:
            raise ForgedMessage("an answer that names no request waiting for answers")
        return seq

    def answer(self, seq: int, answer: EvaluationAnswer, points: bytes) -> bool:
        """A member's signed answer to chunk ``seq`` (signature verified by the caller); True
        when that chunk is complete and its tags are made."""
        self._require_live()
        pending = self._pending.get(seq)
        if pending is None:
            raise WrongPhase(f"no chunk {seq} is waiting for answers")
        if answer.member in pending.answers:
            raise BadMessage(f"{answer.member} already answered chunk {seq}")
        pending.answers[answer.member] = self._from_member(answer, points, pending.request)
        self._answer_digests[answer.member, seq] = answer.answers
        if len(pending.answers) < len(self.remote):
            return False
        self._complete(seq)
        return True

    def _complete(self, seq: int) -> None:
        pending = self._pending.pop(seq)
        own = None
        if self.own is not None:
            assert pending.hashes is not None
            own = (self.own, pending.hashes)
        tags = unblind([pending.answers[m] for m in self.remote], pending.unblinders, own)
        self.check.add_tags(tags, pending.start)
        context = self.transcript.ident.encode()
        for j, t in enumerate(tags, pending.start):
            self._tags[j * TAG_BYTES : (j + 1) * TAG_BYTES] = tag(context, t)
        self._tagged += pending.count

    def challenge_answer(self, answer: EvaluationAnswer, points: bytes) -> None:
        """A member's proved answer to the subset checks: its proof must hold against P_i."""
        self._require_live()
        if self._challenge is None:
            raise WrongPhase("no subset checks are out")
        request, challenge = self._challenge
        if answer.member in self._proved:
            raise BadMessage(f"{answer.member} already answered the subset checks")
        got = self._from_member(answer, points, request)
        verify_equal(
            self.keys[answer.member], challenge, got, Proof.from_bytes(answer.proof), answer.request
        )
        self._proved[answer.member] = got

    def _require_live(self) -> None:
        if not self._seed:
            raise WrongPhase(f"{self.me}'s evaluation of {self.transcript.ident} is over")

    def destroy(self) -> None:
        """Forget the seed of every r and everything derived from it: the round is over."""
        self._seed = b""
        self._pending.clear()
        self._challenge = None
        self._proved.clear()

    @property
    def waiting(self) -> int:
        """Chunks requested and not yet answered by every member: each holds its r⁻¹ (and its
        hashes, for a member's own part) until then, so a caller bounds them."""
        return len(self._pending)

    @property
    def answered(self) -> bool:
        """Every chunk and every member's subset checks are in: ``tags`` can decide."""
        return (
            self._tagged == self.size
            and not self._pending
            and self._challenge is not None
            and set(self._proved) == set(self.remote)
        )

    # --- verification ---------------------------------------------------------------------------

    def tags(self) -> tuple[bytes, np.ndarray]:
        """The sorted tags, and for each the position of its element in the set; raises
        ``VerificationFailed`` unless every subset check holds."""
        if self._released:
            raise WrongPhase("the tags of this set are out already")
        if self._tagged != self.size or self._pending:
            raise WrongPhase(f"{self._tagged} of {self.size} elements are answered")
        if set(self._proved) != set(self.remote):
            missing = sorted(set(self.remote) - set(self._proved))
            raise WrongPhase(f"no proved subset checks from {', '.join(missing)}")
        own_parts = self.own.own_part(self.check.hash_sums()) if self.own else None
        expected = self.check.expected([self._proved[m] for m in self.remote], own_parts)
        failed = self.check.failing(expected)
        if failed:
            self._failed = failed
            raise VerificationFailed(
                f"{len(failed)} of {self.check.lam} subset checks failed: some member's answers "
                "are wrong, and no tag of this set leaves"
            )
        records = np.frombuffer(self._tags, dtype=f"S{TAG_BYTES}")
        order = np.argsort(records, kind="stable")
        ordered = records[order].tobytes()
        del records
        # One copy of the tags from here on, the caller's: 16 MB for a set of 1M.
        self._tags = bytearray()
        self._released = True
        return ordered, order

    def blame(
        self, answers: Mapping[str, Mapping[int, tuple[EvaluationAnswer, bytes]]]
    ) -> list[str]:
        """After a failure: the members whose own answers are wrong, from their signed answers
        to every chunk again (the same requests, free for the owner; signatures verified by the
        caller). Only an answer that names the chunk's request and carries the points it signed
        counts: a replay that is missing, or whose points the coordinator altered, proves
        nothing about its member, who is then neither named nor cleared. A member that signed a
        second, different answer to one request is named for that alone."""
        failed = self._failed
        if not failed:
            raise WrongPhase("no subset check has failed")
        at_fault = set()
        full: dict[str, list[Point]] = {}
        for member in self.remote:
            chunks = answers.get(member, {})
            points: list[Point] = []
            for seq in range(self._first, self._seq):
                got = chunks.get(seq)
                if got is None or got[0].request != self._request_digests[seq]:
                    break
                if got[0].answers != elements_digest(got[1]):
                    break
                if got[0].answers != self._answer_digests.get((member, seq)):
                    at_fault.add(member)  # two signed answers to one request
                    break
                points += points_from_bytes(got[1])
            else:
                full[member] = points
        unblinders: list[int] = []
        for seq, count in enumerate(self._counts, self._first):
            unblinders += batch_inverse(self._blinders(seq, count))
        proved = {m: self._proved[m] for m in full}
        at_fault |= set(self.check.members_at_fault(failed, full, unblinders, proved))
        return sorted(at_fault)
