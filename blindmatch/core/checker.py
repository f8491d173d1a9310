"""A watch check of protocol v2, the checker's and the holders' sides (issue 17, DESIGN.md 2).

A checker turns the hashes of the values it sighted into epoch tags through the committee, as an
owner does its set, verifies every member's answers before any tag is used, tests the tags against
the holders' epoch filters it may read, and seals one fixed-size message per value to every
tested holder: the alert on a hit, a dummy on a miss. A holder opens what is addressed to it and
maps the alerts' tags to its own indicators.

Rules:
- **Verification by size.** Up to ``SMALL`` values, the check is one ``proved`` request of the
  blinded points themselves: each member answers with a batched DLEQ against its commitment,
  verified here before its answer is kept. That is one round trip and charges each member's
  ledger n, not n + λ; it costs the checker 2n + 3 multiplications per member to verify. Above
  ``SMALL``, the check is an ``Owner``'s evaluation under the epoch transcript: one chunk and the
  λ proved subset checks, c + 2 multiplications per value plus about 40 additions, and n + λ
  charged. ``SMALL`` = 64 is about where the two cost the same (n·3c = λ·(4c + 2) gives 62 for a
  committee of 3, 53 to 80 for any other); below it the DLEQ is also cheaper in budget.
- **Nothing unverified is used.** A proof that fails, or a subset check that fails, fails the
  check for good (``VerificationFailed``, naming the member whose signed proof failed): no tag is
  made, ``hits`` and ``sealed_messages`` refuse, nothing is retried silently.
- **Seqs.** A checker's checks in one epoch share each member's ledger, so every check starts at a
  seq of its own (``seq``; ``next_seq`` is the first one it leaves free). A reused seq with other
  points is refused by the members as equivocation.
- **Epoch tags** are ``oprf.tag(epoch id, T)``, as the holders' own (``Owner.tags``).
- **Filters.** A filter is tested only when it is for this epoch and the holder it is filed
  under, that holder announced a holder set in the transcript, and the filter holds no more tags
  than announced (``watch_sealed``: a holder cannot fill its filter with guesses).

What the messages reveal (``sealed_messages``): one message per (value, tested holder), each
MESSAGE_BYTES, in one batch per holder bound to (epoch, check id, request digest, checker,
holder), so

- the coordinator sees n·h equal-sized messages for a check of n values against h holders: the
  check's size, which the request's count already told it, and which holders were tested, which
  it chose itself. Alerts and dummies cost the same work and bytes, so it learns no hit;
- a holder receives n messages, shuffled afresh for it: it learns n and which of its own
  indicators were among the checked values (one alert each, so two hits are two alerts, not one
  message hiding the second), and nothing about the values it does not hold, nor their place in
  the check. One message per holder could carry one alert only, and a variable number would show
  the hits to the coordinator.
- a holder that colludes with the coordinator learns no more: the other holders' messages are
  opaque to both.

A false positive of a filter sends an alert its holder cannot map (``open_alerts`` ignores it);
watch_sealed's docstring says what it costs.

Nothing here reads files, the clock or the network; randomness comes from the OS CSPRNG.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np
from cryptography.hazmat.primitives.asymmetric import ec

from blindmatch.core.canon import KINDS
from blindmatch.core.errors import BadMessage, ForgedMessage, WrongPhase
from blindmatch.core.evaluation import (
    EvaluationAnswer,
    EvaluationRequest,
    Transcript,
    elements_digest,
)
from blindmatch.core.member import Member
from blindmatch.core.oprf import TAG_BYTES, blind, tag, unblind
from blindmatch.core.owner import Owner, VerificationFailed, answered_points
from blindmatch.core.proofs import BadProof, Proof, verify_equal
from blindmatch.core.secp256k1 import Point, points_to_bytes
from blindmatch.core.signing import Party
from blindmatch.core.watch_sealed import (
    ALERT_BYTES,
    FILTER_ERROR_RATE,
    EpochFilter,
    SealedMessageRejected,
    SignedFilter,
    filter_statement,
    open_sealed,
    seal,
    sealed_statement,
)

SMALL: Final = 64  # up to this many values, DLEQ on the elements; above, subset checks
UNKNOWN_KIND: Final = 0xFF  # the alert's kind byte when the checker gave none


@dataclass(frozen=True, slots=True)
class SealedAlert:
    """One sealed message of a check for one holder, with the binding it opens under."""

    epoch_id: str
    check_id: str
    request: bytes  # digest of the check's (first) evaluation request
    checker: str
    holder: str
    sealed: bytes

    def statement(self) -> bytes:
        """What the checker signs; the holder verifies that signature before ``open_alerts``."""
        return sealed_statement(
            self.epoch_id,
            self.check_id,
            self.request,
            self.holder,
            self.sealed,
            checker=self.checker,
        )


@dataclass(frozen=True, slots=True)
class Alert:
    """One of a holder's own indicators, sighted by ``checker`` in check ``check_id``."""

    position: int
    kind: str | None  # as the checker named it; None when it named none
    checker: str
    check_id: str


class Check:
    """One check of ``hashes`` (the stored H(v) of the sighted values) by ``checker`` in the
    epoch of ``transcript``.

    Send every request of ``requests()`` (signed by the caller) to every other committee member,
    feed each signed answer to ``answer``, then ``tags``, ``hits`` and ``sealed_messages``.
    ``keys`` are every member's verified P_i; ``own`` is the checker's share when it is a member.
    ``kinds`` (names from canon.KINDS, one per value) go into the alerts."""

    def __init__(
        self,
        checker: str,
        transcript: Transcript,
        keys: Mapping[str, Point],
        hashes: Sequence[Point],
        own: Member | None,
        check_id: str,
        *,
        seq: int = 0,
        kinds: Sequence[str] | None = None,
        small: int = SMALL,
    ) -> None:
        if transcript.purpose != "epoch":
            raise BadMessage(f"a check runs in a watch epoch, not a {transcript.purpose}")
        if not hashes:
            raise ValueError("a check of no value")
        if (own is not None) != (checker in transcript.committee):
            raise ValueError("a checker in the committee checks with its own share, and only then")
        if own is not None and own.name != checker:
            raise ValueError("the checker's own share is the checker's")
        if kinds is not None and len(kinds) != len(hashes):
            raise ValueError("one kind per value")
        if kinds is not None and any(k not in KINDS for k in kinds):
            raise ValueError("kinds are those of canon.KINDS")
        self.checker = checker
        self.transcript = transcript
        self.epoch_id = transcript.ident
        self.check_id = check_id
        self.keys = dict(keys)
        self.remote = tuple(m for m in transcript.committee if m != checker)
        self.size = len(hashes)
        self.proved = self.size <= small
        self._codes = (
            [UNKNOWN_KIND] * self.size if kinds is None else [KINDS.index(k) for k in kinds]
        )
        self._hashes = list(hashes)
        self._own = own
        self._failure: VerificationFailed | None = None
        self._tags: list[bytes] | None = None
        self._tested: dict[str, list[int]] | None = None
        self._sealed: list[SealedAlert] | None = None
        self._outgoing: list[tuple[EvaluationRequest, bytes]] = []
        if self.proved:
            self._blinded, self._unblinders = blind(self._hashes)
            packed = points_to_bytes(self._blinded)
            self._request = EvaluationRequest(
                transcript.purpose,
                transcript.ident,
                transcript.digest(),
                checker,
                seq,
                self.size,
                elements_digest(packed),
                proved=True,
                kind="check",
            )
            self._answers: dict[str, list[Point]] = {}
            self._outgoing.append((self._request, packed))
            self.next_seq = seq + 1
        else:
            self._owner = Owner(
                checker, transcript, self.keys, self.size, own, seq=seq, kind="check"
            )
            self._request, packed = self._owner.request(self._hashes)
            self._outgoing.append((self._request, packed))
            self._challenge = self._owner.challenge()
            self._outgoing.append(self._challenge)
            self.next_seq = seq + 2
        self.request_digest = self._request.digest()  # what every sealed message is bound to

    def requests(self) -> list[tuple[EvaluationRequest, bytes]]:
        """What every other member must answer: each request (to sign) and its points."""
        return list(self._outgoing) if self.remote else []

    def _fail(self, message: str, members: Sequence[str] = ()) -> VerificationFailed:
        if self._failure is None:
            self._failure = VerificationFailed(message, members)
        return self._failure

    def answer(self, answer: EvaluationAnswer, points: bytes) -> None:
        """A member's answer, its signature verified by the caller. A proof that fails fails the
        whole check: it raises here, and every later step raises ``VerificationFailed``."""
        if self._failure is not None:
            raise self._failure
        try:
            if self.proved:
                self._answer_proved(answer, points)
            elif answer.request == self.request_digest:
                self._owner.answer(self._request.seq, answer, points)
            elif answer.request == self._challenge[0].digest():
                self._owner.challenge_answer(answer, points)
            else:
                raise ForgedMessage(f"{answer.member}'s answer names no request of this check")
        except BadProof:
            # Signed by the member over points matching its signed digest: conclusive.
            self._fail(
                f"{answer.member}'s proof for check {self.check_id} fails: no tag of it is used",
                [answer.member],
            )
            raise

    def _answer_proved(self, answer: EvaluationAnswer, points: bytes) -> None:
        got = answered_points(self.remote, answer, points, self._request)
        if answer.member in self._answers:
            raise BadMessage(f"{answer.member} already answered check {self.check_id}")
        verify_equal(
            self.keys[answer.member],
            self._blinded,
            got,
            Proof.from_bytes(answer.proof),
            self.request_digest,
        )
        self._answers[answer.member] = got

    def tags(self) -> list[bytes]:
        """The verified 16-byte epoch tag of every value, by position."""
        if self._failure is not None:
            raise self._failure
        if self._tags is None:
            self._tags = self._verified_tags()
        return self._tags

    def _verified_tags(self) -> list[bytes]:
        if not self.proved:
            try:
                ordered, order = self._owner.tags()
            except VerificationFailed as exc:
                raise self._fail(str(exc)) from None
            out = [b""] * self.size
            for i, j in enumerate(order.tolist()):
                out[j] = ordered[i * TAG_BYTES : (i + 1) * TAG_BYTES]
            return out
        missing = [m for m in self.remote if m not in self._answers]
        if missing:
            raise WrongPhase(f"no proved answer from {', '.join(missing)}")
        own = (self._own, self._hashes) if self._own is not None else None
        points = unblind([self._answers[m] for m in self.remote], self._unblinders, own)
        context = self.epoch_id.encode()
        return [tag(context, t) for t in points]

    def blame(
        self, answers: Mapping[str, Mapping[int, tuple[EvaluationAnswer, bytes]]]
    ) -> list[str]:
        """After a large check's subset checks failed: the members whose answers are wrong
        (``Owner.blame``). A small check names its culprit in the failure itself."""
        if self.proved:
            return list(self._failure.members) if self._failure else []
        return self._owner.blame(answers)

    def hits(
        self, filters: Mapping[str, SignedFilter], parties: Mapping[str, Party]
    ) -> dict[str, list[int]]:
        """For every holder whose filter the checker may read (the caller's choice), the
        positions of the checked values it holds. Each filter must pass ``verified_filters``.
        Once per check: the sealed messages go to exactly the holders tested here."""
        return self.test(verified_filters(self.transcript, filters, parties))

    def test(self, filters: Mapping[str, EpochFilter]) -> dict[str, list[int]]:
        """``hits`` for filters ``verified_filters`` has passed already (an epoch's checker
        verifies its partners' filters once, not at every check)."""
        if self._tested is not None:
            raise WrongPhase(f"check {self.check_id} has tested its filters")
        tags = b"".join(self.tags())
        found = {
            holder: np.flatnonzero(bloom.contains_many(tags)).tolist()
            for holder, bloom in sorted(filters.items())
        }
        self._tested = found
        return {holder: list(positions) for holder, positions in found.items()}

    def sealed_messages(self, holder_certs: Mapping[str, bytes]) -> list[SealedAlert]:
        """One sealed batch per tested holder, of one message per value: the alert (kind byte
        and tag) on a hit, a dummy on a miss, in an order of the holder's own. Made once: a
        resend is the same bytes, so a holder never opens one alert twice under different
        bytes."""
        if self._tested is None:
            raise WrongPhase(f"check {self.check_id} has tested no filter yet")
        if self._sealed is not None:
            return list(self._sealed)
        missing = sorted(set(self._tested) - set(holder_certs))
        if missing:
            raise BadMessage(f"no certificate for tested holder(s) {', '.join(missing)}")
        tags = self.tags()
        out = []
        for holder, positions in sorted(self._tested.items()):
            hit = set(positions)
            order = list(range(self.size))
            # A fresh order per holder: its alerts tell it nothing of where its values stood.
            secrets.SystemRandom().shuffle(order)
            payloads = [bytes([self._codes[j]]) + tags[j] if j in hit else None for j in order]
            sealed = seal(
                holder_certs[holder],
                self.epoch_id,
                self.check_id,
                self.request_digest,
                holder,
                payloads,
                checker=self.checker,
            )
            out.append(
                SealedAlert(
                    self.epoch_id, self.check_id, self.request_digest, self.checker, holder, sealed
                )
            )
        self._sealed = out
        return list(out)


def verified_filters(
    transcript: Transcript, filters: Mapping[str, SignedFilter], parties: Mapping[str, Party]
) -> dict[str, EpochFilter]:
    """Each filter, once it is for the transcript's epoch and the holder it is filed under,
    signed by that holder (``parties``: vouched certificates), at the protocol's error rate, and
    no fuller than the holder set it announced; all of them, or an exception."""
    out = {}
    for holder, signed in sorted(filters.items()):
        bloom = signed.filter
        if bloom.epoch_id != transcript.ident or bloom.holder != holder:
            raise BadMessage(
                f"the filter filed under {holder} is {bloom.holder}'s of epoch {bloom.epoch_id}"
            )
        party = parties.get(holder)
        if party is None or party.identity.name != holder:
            raise ForgedMessage(f"no certificate of {holder} to check its filter against")
        party.verify(filter_statement(bloom), signed.signature, f"{holder}'s filter")
        # The rate its size and hash count give for the tags it says it holds (how full it is,
        # a noisy estimate for small filters, is bounded by watch_sealed when parsed).
        designed = (1 - math.exp(-bloom.hashes * bloom.count / bloom.size_bits)) ** bloom.hashes
        if designed > 2 * FILTER_ERROR_RATE:
            raise BadMessage(
                f"{holder}'s filter has a false-positive rate of {designed:.1e}; "
                f"the protocol's is {FILTER_ERROR_RATE:.0e}"
            )
        announced = transcript.holder_sizes.get(holder)
        if announced is None or bloom.count > announced:
            raise BadMessage(
                f"{holder}'s filter holds {bloom.count} tags; the transcript announced {announced}"
            )
        out[holder] = bloom
    return out


def open_alerts(
    holder: str,
    private_key: bytes | ec.EllipticCurvePrivateKey,
    epoch_id: str,
    tags: Mapping[bytes, int],
    messages: Iterable[SealedAlert],
) -> list[Alert]:
    """The holder's own indicators that ``messages`` (sealed batches, each signature already
    verified against its checker's certificate) report sighted, by ``tags``: its epoch tag ->
    position. Dummies and alerts of tags it does not hold (a filter's false positive) are
    skipped; a batch for another holder or epoch, or one that does not open, raises
    ``SealedMessageRejected``."""
    found = []
    seen: set[bytes] = set()
    for message in messages:
        # The coordinator could send one message twice to count an alert twice; each is
        # one sighting, whatever it says.
        if message.sealed in seen:
            continue
        seen.add(message.sealed)
        if message.holder != holder or message.epoch_id != epoch_id:
            raise SealedMessageRejected(
                f"a sealed message for {message.holder} in epoch {message.epoch_id}, "
                f"delivered to {holder} in epoch {epoch_id}"
            )
        # Opened under the holder's own name and epoch: relabelling either breaks the AEAD.
        payloads = open_sealed(
            private_key,
            epoch_id,
            message.check_id,
            message.request,
            holder,
            message.sealed,
            checker=message.checker,
        )
        for payload in payloads:
            if payload is None:
                continue
            if len(payload) != ALERT_BYTES:
                raise SealedMessageRejected(
                    f"{message.checker}'s alert in check {message.check_id} is {len(payload)} bytes"
                )
            position = tags.get(payload[1:])
            if position is None:
                continue
            code = payload[0]
            kind = KINDS[code] if code < len(KINDS) else None
            found.append(Alert(position, kind, message.checker, message.check_id))
    return found
