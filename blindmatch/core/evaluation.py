"""Who may ask a committee member for how many evaluations, and under which transcript (protocol v2).

Rules:
- **Shares and commitments.** Each committee member draws a share k_i per round or watch epoch
  and commits to it at Prepare: P_i = k_i·G, with a Schnorr proof of knowledge bound to the
  purpose (round or epoch), its id and the member (``commit``). A member that cannot prove its
  share could have chosen P_i from another member's to cancel it.
- **One transcript.** The commitments, every participant's announced set size, and for watch
  epochs the holder-set sizes and the check caps, form one ``Transcript``. Every party verifies
  every proof in it, signs its digest, and every request and answer carries that digest; a party
  shown another transcript refuses (the digests differ, so no signature carries over).
- **Requests.** An owner asks for evaluations in signed requests bound to the purpose, the id, the
  transcript, itself, a sequence number, the count and the digest of the blinded elements
  (``EvaluationRequest``). A member answers with a signed ``EvaluationAnswer`` bound to the
  request's digest.
- **What a member charges** (``EvaluationLedger``): in a round, a requester gets at most its
  announced size plus λ evaluations for a set: the set, and the λ subset checks that verify it.
  In a watch epoch, a checker gets at most the lowest check cap any holder signed for it, λ subset
  checks of a large check included: every holder's filter can be tested with every evaluation, so
  the strictest holder sets the budget, and a holder that signed no cap for the checker gave it
  none. The checker's own filter needs no cap from itself (it holds those values). A second request
  with the same sequence number and another digest is equivocation, refused (the caller audits
  it); the same request again is answered at no new charge (a retry after a lost reply gives the
  same points, so it teaches nothing new).

Nothing here reads files, the clock or the network.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final

from blindmatch.core.errors import BadMessage, CapExceeded, ForgedMessage
from blindmatch.core.oprf import LAMBDA
from blindmatch.core.proofs import Proof, prove_knowledge, verify_knowledge
from blindmatch.core.secp256k1 import (
    POINT_BYTES,
    Point,
    SecretScalar,
    base_mul,
    point_from_bytes,
    point_to_bytes,
)
from blindmatch.core.signing import digest, statement

PURPOSES: Final = ("round", "epoch")  # a share serves one round's sets, or one epoch's checks
# What a request evaluates: an owner's (or a holder's epoch) set, or values a checker checks.
# Each has its own budget, so a holder's own set does not eat into its checks or the reverse.
KINDS_OF_REQUEST: Final = ("set", "check")
MAX_COUNTER: Final = 1 << 62  # seqs and counts stay far inside the 8 bytes a statement gives them
MAX_SET: Final = 1 << 32  # announced sizes above this are refused as nonsense


class Equivocation(ForgedMessage):
    """Two signed requests for the same place (purpose, id, requester, seq) with different
    elements: the requester tried to be charged once for two sets. Refused and audited."""


def _check_purpose(purpose: str) -> None:
    if purpose not in PURPOSES:
        raise BadMessage(f"unknown purpose {purpose!r}: use one of {', '.join(PURPOSES)}")


def commitment_context(purpose: str, ident: str, member: str) -> bytes:
    """What a proof of knowledge of a share is bound to: it is worthless for any other round,
    epoch or member."""
    _check_purpose(purpose)
    return statement("share-commitment", purpose, ident, member)


@dataclass(frozen=True, slots=True)
class Commitment:
    member: str
    point: bytes  # P_i = k_i·G, uncompressed
    proof: bytes  # Schnorr proof of knowledge of k_i

    def verify(self, purpose: str, ident: str) -> Point:
        """P_i, once its proof holds for this purpose, id and member."""
        point = point_from_bytes(self.point)
        verify_knowledge(
            point, Proof.from_bytes(self.proof), commitment_context(purpose, ident, self.member)
        )
        return point


def commit(share: SecretScalar | int, purpose: str, ident: str, member: str) -> Commitment:
    """P_i and its proof of knowledge; an int share only in tests (``SecretScalar``)."""
    point = base_mul(share)
    proof = prove_knowledge(share, point, commitment_context(purpose, ident, member))
    return Commitment(member, point_to_bytes(point), proof.to_bytes())


@dataclass(frozen=True, slots=True)
class Transcript:
    """Everything a round or epoch fixes at Prepare, which every party signs.

    ``sizes``: each participant's announced set size. For watch epochs, ``holder_sizes``: the
    size of each holder's epoch set, and ``caps``: (holder, checker) -> the most evaluations the
    holder lets that checker ask for in the epoch."""

    purpose: str
    ident: str
    spec_digest: bytes
    commitments: tuple[Commitment, ...]
    sizes: Mapping[str, int]
    holder_sizes: Mapping[str, int] = field(default_factory=dict)
    caps: Mapping[tuple[str, str], int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_purpose(self.purpose)
        members = [c.member for c in self.commitments]
        if not members:
            raise BadMessage("a transcript needs a committee of at least one member")
        if members != sorted(set(members)):
            raise BadMessage("a transcript's commitments are sorted by member, one each")
        if any(len(c.point) != POINT_BYTES for c in self.commitments):
            raise BadMessage(f"a commitment is a {POINT_BYTES}-byte point")
        for what, table in (("set size", self.sizes), ("holder-set size", self.holder_sizes)):
            for name, size in table.items():
                if not 0 <= size <= MAX_SET:
                    raise BadMessage(f"{name}'s {what} {size} is out of range 0..{MAX_SET}")
        for (holder, checker), cap in self.caps.items():
            if not 0 <= cap <= MAX_SET:
                raise BadMessage(
                    f"{holder}'s check cap for {checker} ({cap}) is out of range 0..{MAX_SET}"
                )
        if not self.sizes:
            raise BadMessage("a transcript names at least one participant")

    @property
    def committee(self) -> tuple[str, ...]:
        return tuple(c.member for c in self.commitments)

    def verified_keys(self) -> dict[str, Point]:
        """Every member's P_i, each proof verified here: no party takes another's word for it."""
        return {c.member: c.verify(self.purpose, self.ident) for c in self.commitments}

    def digest(self) -> bytes:
        fields: list[bytes | str | int] = [self.purpose, self.ident, self.spec_digest]
        fields.append(len(self.commitments))
        for c in self.commitments:
            fields += [c.member, c.point, c.proof]
        for table in (self.sizes, self.holder_sizes):
            fields.append(len(table))
            for name in sorted(table):
                fields += [name, table[name]]
        fields.append(len(self.caps))
        for holder, checker in sorted(self.caps):
            fields += [holder, checker, self.caps[holder, checker]]
        return digest(statement("transcript", *fields))

    def allowance(self, requester: str, kind: str = "set") -> int:
        """The evaluations a member grants ``requester`` for ``kind``: for its set (a round's,
        or a holder's epoch set), the size it announced and λ subset checks; for checks in a
        watch epoch, the lowest check cap any other holder signed for it."""
        return self.budget(requester, kind)[0]

    def budget(self, requester: str, kind: str = "set") -> tuple[int, str]:
        """``allowance`` and the budget it comes from, in words, for a refusal to name."""
        if kind not in KINDS_OF_REQUEST or (kind == "check" and self.purpose != "epoch"):
            raise BadMessage(f"a {kind!r} request in a {self.purpose}")
        if kind == "check":
            return self._check_cap(requester)
        announced = self.sizes if self.purpose == "round" else self.holder_sizes
        if requester not in announced:
            raise ForgedMessage(f"{requester} announced no set in this transcript")
        allowed = announced[requester] + LAMBDA
        return allowed, (
            f"its announced set of {announced[requester]} and {LAMBDA} checks allow {allowed}"
        )

    def _check_cap(self, checker: str) -> tuple[int, str]:
        lowest: tuple[int, str] | None = None
        for holder in sorted(self.holder_sizes):
            if holder == checker:
                continue
            cap = self.caps.get((holder, checker))
            if cap is None:
                raise CapExceeded(
                    f"{holder} signed no check cap for {checker} in {self.purpose} "
                    f"{self.ident}: {checker} may not check against it"
                )
            if lowest is None or cap < lowest[0]:
                lowest = (cap, holder)
        if lowest is None:
            return 0, f"no other holder in {self.purpose} {self.ident} allows any check"
        cap, holder = lowest
        return cap, f"the lowest check cap signed for {checker}, {holder}'s, allows {cap}"


def elements_digest(blinded: bytes) -> bytes:
    return hashlib.sha256(b"blindmatch-v2-elements" + blinded).digest()


@dataclass(frozen=True, slots=True)
class EvaluationRequest:
    """What an owner signs when it asks for ``count`` evaluations."""

    purpose: str
    ident: str
    transcript: bytes
    requester: str
    seq: int
    count: int
    elements: bytes  # elements_digest of the blinded points
    proved: bool = False  # answer with a batched DLEQ proof (subset checks, watch checks)
    kind: str = "set"

    def __post_init__(self) -> None:
        if self.kind not in KINDS_OF_REQUEST:
            raise BadMessage(f"a request evaluates one of {', '.join(KINDS_OF_REQUEST)}")
        if not (0 <= self.seq < MAX_COUNTER and 0 <= self.count < MAX_COUNTER):
            raise BadMessage(f"a request's seq and count are below {MAX_COUNTER}")

    def message(self) -> bytes:
        return statement(
            "evaluation-request",
            self.kind,
            self.purpose,
            self.ident,
            self.transcript,
            self.requester,
            self.seq,
            self.count,
            self.elements,
            int(self.proved),
        )

    def digest(self) -> bytes:
        return digest(self.message())


@dataclass(frozen=True, slots=True)
class EvaluationAnswer:
    """What a member signs when it answers: the request it answers and its points (and, for the
    subset checks and checks, the DLEQ proof that they used its committed share)."""

    request: bytes
    member: str
    answers: bytes  # elements_digest of the answered points
    proof: bytes = b""

    def message(self) -> bytes:
        return statement("evaluation-answer", self.request, self.member, self.answers, self.proof)


class EvaluationLedger:
    """A member's account of what each requester asked for under one transcript."""

    def __init__(self, transcript: Transcript) -> None:
        self.transcript = transcript
        self._digest = transcript.digest()
        self._seen: dict[tuple[str, int], bytes] = {}  # (requester, seq) -> request digest
        self.charged: dict[tuple[str, str], int] = {}  # (requester, kind) -> evaluations

    def admit(self, request: EvaluationRequest) -> bool:
        """Charge ``request`` (its signature already verified): True for a new charge, False for
        a repeat of a request already charged. Raises for everything that must be refused."""
        if (request.purpose, request.ident) != (self.transcript.purpose, self.transcript.ident):
            raise ForgedMessage(
                f"a request for {request.purpose} {request.ident} sent to "
                f"{self.transcript.purpose} {self.transcript.ident}"
            )
        if request.transcript != self._digest:
            raise ForgedMessage(
                f"{request.requester}'s request carries another transcript than the one this "
                "member signed: it was shown different commitments, sizes or caps"
            )
        if request.count < 1 or request.seq < 0:
            raise BadMessage("a request asks for at least one evaluation, at seq 0 or more")
        place = (request.requester, request.seq)
        known = self._seen.get(place)
        mine = request.digest()
        if known is not None:
            if known != mine:
                raise Equivocation(
                    f"{request.requester} signed two different requests at seq {request.seq}"
                )
            return False
        allowed, why = self.transcript.budget(request.requester, request.kind)
        account = (request.requester, request.kind)
        spent = self.charged.get(account, 0)
        if spent + request.count > allowed:
            raise CapExceeded(
                f"{request.requester} asks for {spent + request.count} evaluations; {why}"
            )
        self._seen[place] = mine
        self.charged[account] = spent + request.count
        return True

    def requests(self) -> Iterable[tuple[str, int]]:
        return self._seen.keys()
