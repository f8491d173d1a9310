"""A watch epoch of protocol v2, without I/O: a node's side (``WatchEpoch``) and what the
coordinator relays (``EpochRelay``). DESIGN.md 2; docs/WATCH.md.

A watch round is a pairwise v2 round whose shares serve an epoch (``RoundTerms.purpose`` is
"epoch"). At Prepare each participant announces, besides its set, the check cap it grants each
partner for the epoch; the transcript every party signs carries them. At Reveal each holder also
signs the salted filter of its tags (``watch_sealed``). Once the round is delivered the node
keeps, for the epoch only (``CommitteeNode.handover``):

- its share, when it is a member, with the ledger the round opened: a checker gets at most the
  lowest cap any other holder signed for it (``evaluation.Transcript.allowance``);
- its own epoch tags, sorted, and the position of each in its set: what an alert maps back;
- the transcript and every participant's vouched certificate.

Rules of a check (checker C):
1. C hashes its values, blinds them with fresh r and signs the request(s) (``checker.Check``)
   at a seq of its own in the epoch. Every member but C answers ``answer``: only a check
   request, signed by C itself (the one who is charged), under this epoch's transcript, within
   C's cap. A request in another's name, of another epoch, replayed with other points at the
   same seq, or over the cap is refused and charges nothing.
2. C verifies every member's signature and proof before any tag is made (``verified_tags``); a
   proof that fails names its member, and no tag of the check is used.
3. C tests its tags against the signed filters of the holders its policy lets learn of its
   sightings (``hits``), and seals one fixed-size message per value to each of them, signed
   (``sealed``): the alert on a hit, a dummy on a miss.
4. A holder opens what is addressed to it (``alerts``): each signature verified against the
   checker's certificate, each message bound to (epoch, check, request, checker, holder).

The epoch ends at ``ends`` or at ``close``, whichever first: the share is destroyed and the
tags dropped; every later call raises ``EpochEnded``. The clock is passed in.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from blindmatch.core.checker import Alert, Check, SealedAlert, open_alerts, verified_filters
from blindmatch.core.committee import (
    Handover,
    SignedAnswer,
    SignedRequest,
    answer_statement,
    request_statement,
)
from blindmatch.core.errors import BadMessage, ForgedMessage
from blindmatch.core.evaluation import EvaluationAnswer, elements_digest
from blindmatch.core.oprf import TAG_BYTES
from blindmatch.core.owner import VerificationFailed
from blindmatch.core.proofs import BadProof
from blindmatch.core.secp256k1 import Point
from blindmatch.core.signing import Party, Signs, Verifies
from blindmatch.core.watch_rules import EpochEnded, utc_text
from blindmatch.core.watch_sealed import EpochFilter, SignedFilter

__all__ = ["Closing", "EpochRelay", "RelayEpochs", "SignedSealed", "SortedTags", "WatchEpoch"]


class SortedTags(Mapping[bytes, int]):
    """A holder's sorted epoch tags as tag -> position in its set, by binary search: 24 bytes
    a tag, where a dict would take over 100."""

    def __init__(self, tags: bytes, positions: npt.NDArray[np.intp]) -> None:
        if len(tags) != TAG_BYTES * len(positions):
            raise ValueError("one position per tag")
        self._tags = tags
        self._sorted = np.frombuffer(tags, dtype=f"S{TAG_BYTES}")
        self._positions = positions

    def __getitem__(self, tag: bytes) -> int:
        if len(tag) == TAG_BYTES:
            i = int(np.searchsorted(self._sorted, np.frombuffer(tag, dtype=f"S{TAG_BYTES}")[0]))
            if i < len(self._positions) and self._tags[i * TAG_BYTES : (i + 1) * TAG_BYTES] == tag:
                return int(self._positions[i])
        raise KeyError(tag)

    def __iter__(self) -> Iterator[bytes]:
        for i in range(len(self._positions)):
            yield self._tags[i * TAG_BYTES : (i + 1) * TAG_BYTES]

    def __len__(self) -> int:
        return len(self._positions)


@dataclass(frozen=True, slots=True)
class SignedSealed:
    """One sealed message of a check and the checker's signature over its statement."""

    alert: SealedAlert
    signature: bytes


class WatchEpoch:
    """One node's epoch: member (when it is one), checker and holder."""

    def __init__(self, me: str, handed: Handover, signer: Signs, ends: float) -> None:
        transcript, member = handed.transcript, handed.member
        if transcript.purpose != "epoch":
            raise BadMessage(f"an epoch's transcript, not a {transcript.purpose}'s")
        if (member is not None) != (me in transcript.committee):
            raise BadMessage("a committee member keeps its share for the epoch, and only then")
        self.me = me
        self.epoch_id = transcript.ident
        self.transcript = transcript
        self.parties = dict(handed.parties)
        self.signer = signer
        self.ends = ends
        self.keys: dict[str, Point] = transcript.verified_keys()
        self._member = member
        self._tags: SortedTags | None = SortedTags(handed.tags, handed.positions)
        self._next_seq = handed.next_seq
        self._filters: dict[str, EpochFilter] = {}  # partners' filters, each verified once
        self.closed: str | None = None  # why, once closed

    @property
    def participants(self) -> tuple[str, ...]:
        return tuple(sorted(self.transcript.sizes))

    @property
    def tag_count(self) -> int:
        return 0 if self._tags is None else len(self._tags)

    def expired(self, now: float) -> bool:
        return now >= self.ends

    def require_open(self, now: float) -> None:
        if self.closed is not None:
            raise EpochEnded(f"epoch {self.epoch_id} is closed: {self.closed}")
        if self.expired(now):
            raise EpochEnded(f"epoch {self.epoch_id} has ended")

    def close(self, reason: str) -> bool:
        """Destroy the share and drop the tags; False if already closed."""
        if self.closed is not None:
            return False
        self.closed = reason
        if self._member is not None:
            self._member.destroy()
        self._member = None
        self._tags = None
        self._filters = {}
        return True

    # --- as a member ---------------------------------------------------------------------------

    def answer(self, signed: SignedRequest, now: float) -> SignedAnswer:
        """A partner's check, signed by that partner: the one who is charged."""
        self.require_open(now)
        member = self._member
        if member is None:
            raise ForgedMessage(f"{self.me} is no member of epoch {self.epoch_id}'s committee")
        request = signed.request
        if request.kind != "check":
            raise BadMessage(f"epoch {self.epoch_id} is open: its members answer checks only")
        party = self.parties.get(request.requester)
        if party is None or request.requester == self.me:
            raise ForgedMessage(f"a check in the name of {request.requester}, not a partner")
        party.verify(request_statement(request), signed.signature, f"{request.requester}'s check")
        answer, points = member.answer(request, signed.points)
        return SignedAnswer(answer, points, self.signer.sign(answer_statement(answer)))

    def charged(self, checker: str) -> int:
        """The evaluations this member has charged ``checker``'s checks (repeats free)."""
        member = self._member
        if member is None or member.ledger is None:
            return 0
        return member.ledger.charged.get((checker, "check"), 0)

    # --- as a checker --------------------------------------------------------------------------

    def check(
        self, hashes: Sequence[Point], kinds: Sequence[str] | None, now: float
    ) -> tuple[Check, list[SignedRequest]]:
        """A check of ``hashes`` (the stored H(v)), and its signed requests for every other
        member. Each check takes seqs of its own: one ledger per checker and member."""
        self.require_open(now)
        check = Check(
            self.me,
            self.transcript,
            self.keys,
            hashes,
            self._member,
            secrets.token_hex(16),
            seq=self._next_seq,
            kinds=kinds,
        )
        self._next_seq = check.next_seq
        return check, [
            SignedRequest(r, p, self.signer.sign(request_statement(r))) for r, p in check.requests()
        ]

    def verified_tags(self, check: Check, answers: Sequence[SignedAnswer]) -> list[bytes]:
        """The check's epoch tags, once every member's signed answer is verified; raises
        ``VerificationFailed`` naming the members whose signed answers are wrong."""
        kept: dict[str, dict[int, tuple[EvaluationAnswer, bytes]]] = {}
        seqs = {r.digest(): r.seq for r, _ in check.requests()}
        for signed in answers:
            answer = signed.answer
            party = self.parties.get(answer.member)
            if party is None or answer.member not in check.remote:
                raise ForgedMessage(f"an answer from {answer.member}, no other member")
            party.verify(answer_statement(answer), signed.signature, f"{answer.member}'s answer")
            try:
                check.answer(answer, signed.points)
            except BadProof:
                check.tags()  # raises the failure the check recorded, naming the member
                raise
            if not answer.proof and answer.request in seqs:
                kept.setdefault(answer.member, {})[seqs[answer.request]] = (answer, signed.points)
        try:
            return check.tags()
        except VerificationFailed as exc:
            if exc.members:
                raise
            culprits = check.blame(kept)
            named = ", ".join(culprits) or "no member provably (an answer may have been altered)"
            raise VerificationFailed(f"{exc}; wrong answers signed by: {named}", culprits) from None

    @property
    def needs_filters(self) -> bool:
        """Whether a partner's filter is still to come: they are fixed for the epoch, so each is
        fetched and verified once, not with every check (a million tags is 3.6 MB)."""
        return bool(set(self.transcript.holder_sizes) - {self.me} - set(self._filters))

    def hits(
        self,
        check: Check,
        filters: Mapping[str, SignedFilter],
        may_learn: Callable[[str], bool],
    ) -> dict[str, list[int]]:
        """The positions each holder holds, for the holders ``may_learn`` of this node's
        sightings (its policy). ``filters`` are new ones (none once every filter is kept): each
        is verified against its holder's signature, and kept only if all of them pass. Every
        filter of those holders must be there, or the coordinator could hide one by leaving it
        out."""
        chosen = {h: f for h, f in filters.items() if h != self.me and may_learn(h)}
        unknown = sorted(set(chosen) - set(self.transcript.holder_sizes))
        if unknown:
            raise ForgedMessage(f"filters of {', '.join(unknown)}, no holder of this epoch")
        parties = {h: p for h, p in self.parties.items() if isinstance(p, Party)}
        self._filters.update(verified_filters(self.transcript, chosen, parties))
        wanted = {h for h in self.transcript.holder_sizes if h != self.me and may_learn(h)}
        missing = sorted(wanted - set(self._filters))
        if missing:
            raise ForgedMessage(
                f"no filter of {', '.join(missing)} came with check {check.check_id}: a holder's "
                "filter left out would hide its holdings"
            )
        return check.test({h: self._filters[h] for h in sorted(wanted)})

    def sealed(self, check: Check) -> list[SignedSealed]:
        """One signed, sealed batch per tested holder, a message per value
        (``Check.sealed_messages``)."""
        certs = {h: p.cert_pem for h, p in self.parties.items() if isinstance(p, Party)}
        return [
            SignedSealed(m, self.signer.sign(m.statement())) for m in check.sealed_messages(certs)
        ]

    # --- as a holder ---------------------------------------------------------------------------

    def alerts(
        self, messages: Sequence[SignedSealed], private_key: bytes, now: float
    ) -> list[Alert]:
        """The alerts among ``messages`` that name this holder's own tags, each message's
        signature verified against its checker's certificate first."""
        self.require_open(now)
        tags = self._tags
        assert tags is not None
        for m in messages:
            checker = m.alert.checker
            party = self.parties.get(checker)
            if party is None or checker == self.me:
                raise ForgedMessage(f"a sealed message in the name of {checker}, not a partner")
            party.verify(m.alert.statement(), m.signature, f"{checker}'s sealed message")
        return open_alerts(self.me, private_key, self.epoch_id, tags, [m.alert for m in messages])


class EpochRelay:
    """The coordinator's epoch: whom a check goes to, which filters come back with it, where
    sealed messages go. It holds no share and sees blinded points, filters and sealed bytes."""

    def __init__(
        self,
        epoch_id: str,
        participants: Sequence[str],
        committee: Sequence[str],
        filters: Mapping[str, SignedFilter],
        ends: float,
    ) -> None:
        if set(filters) != set(participants):
            raise BadMessage("an epoch opens with every participant's signed filter")
        self.epoch_id = epoch_id
        self.participants = tuple(participants)
        self.committee = tuple(committee)
        self.filters = dict(filters)
        self.ends = ends
        self.closed: str | None = None  # why, once closed

    def ended(self, now: float) -> bool:
        return now >= self.ends

    def close(self, reason: str) -> None:
        """Drop the filters; idempotent, so the first reason is the one kept."""
        if self.closed is None:
            self.closed = reason
        self.filters = {}

    def members_for(
        self, checker: str, requests: Sequence[SignedRequest], party: Verifies
    ) -> list[str]:
        """Every member but the checker, once the requests are the checker's, for this epoch,
        each signed by ``party`` (the caller's own certificate) over the points it carries: the
        members would refuse anything else, so nothing else is worth relaying to them."""
        if checker not in self.participants:
            raise ForgedMessage(f"{checker} is no participant of epoch {self.epoch_id}")
        if not requests:
            raise BadMessage("a check carries at least one request")
        for s in requests:
            r = s.request
            if (r.purpose, r.ident, r.requester, r.kind) != (
                "epoch",
                self.epoch_id,
                checker,
                "check",
            ):
                raise ForgedMessage(f"a request that is no check of {checker} in {self.epoch_id}")
            if elements_digest(s.points) != r.elements:
                raise BadMessage("a check's points do not match the digest its checker signed")
            party.verify(request_statement(r), s.signature, f"{checker}'s check")
        return [m for m in self.committee if m != checker]

    def filters_for(self, checker: str) -> dict[str, SignedFilter]:
        return {h: f for h, f in self.filters.items() if h != checker}

    def by_holder(
        self, checker: str, messages: Sequence[SignedSealed], party: Verifies
    ) -> dict[str, list[SignedSealed]]:
        """The sealed messages of ``checker``'s check, per holder, each signed by ``party``."""
        out: dict[str, list[SignedSealed]] = {}
        for m in messages:
            a = m.alert
            if a.checker != checker or a.epoch_id != self.epoch_id:
                raise ForgedMessage(f"a sealed message of {a.checker} in {a.epoch_id}")
            if a.holder not in self.participants or a.holder == checker:
                raise BadMessage(f"a sealed message for {a.holder}, no partner")
            party.verify(a.statement(), m.signature, f"{checker}'s sealed message")
            out.setdefault(a.holder, []).append(m)
        return out


@dataclass(frozen=True, slots=True)
class Closing:
    """CloseEpoch calls owed to the nodes of a replaced epoch that the new one leaves out."""

    epoch_id: str
    nodes: tuple[str, ...]
    reason: str


class RelayEpochs:
    """The coordinator's epochs: at most one open, replaced by the next, ended by the clock."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.epoch: EpochRelay | None = None
        self._ended: EpochRelay | None = None  # the last one the clock ended, to name it

    def open(self, epoch: EpochRelay) -> Closing | None:
        """``epoch`` opens and replaces the open one, if any: the CloseEpoch calls that owes."""
        previous, self.epoch = self.epoch, epoch
        if previous is None:
            return None
        reason = f"replaced by epoch {epoch.epoch_id}"
        previous.close(reason)
        others = tuple(n for n in previous.participants if n not in epoch.participants)
        return Closing(previous.epoch_id, others, reason)

    def expire(self) -> EpochRelay | None:
        """The open epoch, if its end has passed: closed, its filters dropped."""
        epoch = self.epoch
        if epoch is None or not epoch.ended(self.clock()):
            return None
        epoch.close(f"ended at {utc_text(epoch.ends)}")
        self.epoch, self._ended = None, epoch
        return epoch

    def epoch_of(self, epoch_id: str) -> EpochRelay:
        epoch = self.epoch
        ended = self._ended if epoch is None else epoch if epoch.ended(self.clock()) else None
        if ended is not None and ended.epoch_id == epoch_id:
            raise EpochEnded(f"epoch {epoch_id} ended at {utc_text(ended.ends)}")
        if epoch is None or epoch.epoch_id != epoch_id:
            have = f"the current epoch is {epoch.epoch_id}" if epoch else "no epoch is open"
            raise EpochEnded(
                f"the coordinator has no epoch {epoch_id!r} ({have}); start a watch round"
            )
        return epoch
