"""Early warning at the coordinator, without I/O: its epoch, its epoch key, and each check.

``CoordinatorWatch`` holds at most one ``CoordinatorEpoch`` (PENDING until ``open``, then OPEN,
then CLOSED when the next watch round replaces it or the clock passes its end; phases of
``blindmatch.core.states.EPOCH``, moved by the rules of ``watch_rules``) and the checks in
flight. An epoch holds the coordinator's epoch key k_c, applied after every node's key, and one
filter of k_c-tags per participant (any ``Membership``): no node holds k_c, so no node can
compute a k_c-tag, and the last partner of a check's route never sees one.

``CheckFlow`` is one check (rules 2 to 4 of ``blindmatch.core.watch_rules``): its chunks to route
through the hops, pipelined (a chunk goes to the next hop as soon as the previous one returned
it, at most ``CHECK_WINDOW`` chunks in flight per hop), each hop's signed output to forward, k_c
on each routed chunk, then the checker's unmasked k_c-tags, the filters, the Alerts to fan out
and the answer (phases of ``blindmatch.core.states.COORDINATOR_CHECK``). Replies are validated
with the rounds' rules: the sender is the expected one, element counts match exactly, indices
are in range and never repeated. A reply that breaks them is a ``BadReply``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Final, Protocol

from blindmatch.core.errors import BadMessage, PolicyRefusal, WrongPhase
from blindmatch.core.group import ELEMENT_BYTES, RoundKey
from blindmatch.core.states import (
    COORDINATOR_CHECK,
    CoordinatorCheckEvent,
    CoordinatorCheckPhase,
    EpochPhase,
)
from blindmatch.core.watch_rules import (
    CHECK_ID,
    CHECK_SUBJECT,
    MAX_CHECK_ELEMENTS,
    BadReply,
    CheckHop,
    CheckReplayed,
    Clock,
    EpochEnded,
    check_elements,
    check_route,
    close_epoch,
    open_epoch,
    reported_partners,
    split_tags,
    utc_text,
)

# Seconds a check may wait between its two calls (Check, FinishCheck) before it is forgotten.
CHECK_TTL: Final = 300.0
# Chunks of one check in flight at each hop: two keep a node's blinding pool busy while the
# previous chunk travels back and on; more would only queue at the node.
CHECK_WINDOW: Final = 2


class Membership(Protocol):
    """A coordinator filter as the core sees it; pybloom_live's ScalableBloomFilter is one."""

    def __contains__(self, key: str) -> bool: ...

    def add(self, key: str) -> object: ...


def filter_key(tag: bytes) -> str:
    # pybloom_live hashes str(key) for anything but str; hex is the exact, cheap spelling, and
    # the one the filters on disk hold.
    return tag.hex()


def seal(key: RoundKey, packed: bytes) -> bytes:
    """``packed`` under the coordinator's epoch key k_c."""
    return b"".join(key.blind(split_tags(packed)))


@dataclass
class CoordinatorEpoch:
    epoch_id: str
    participants: tuple[str, ...]
    ends: float  # unix seconds
    key: RoundKey | None = None  # k_c
    filters: dict[str, Membership] = field(default_factory=dict)  # of k_c-tags
    # built once its watch round delivered, or read back; ``CoordinatorWatch.open`` opens it
    phase: EpochPhase = field(default=EpochPhase.PENDING, init=False)
    closed: str | None = None  # why it closed: replaced, or its end passed

    def ended(self, now: float) -> bool:
        return now >= self.ends

    def close(self, reason: str) -> None:
        """Destroy k_c and the filters; idempotent."""
        close_epoch(self, reason)
        self.filters = {}


@dataclass(frozen=True)
class Closing:
    """CloseEpoch calls owed to the nodes of a replaced epoch that the new one leaves out."""

    epoch_id: str
    nodes: tuple[str, ...]
    reason: str


class CoordinatorWatch:
    """The coordinator's epochs: at most one open, replaced by the next, ended by the clock."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.epoch: CoordinatorEpoch | None = None
        self._ended: CoordinatorEpoch | None = None  # the last one the clock ended, to name it
        self._checks: dict[tuple[str, str], tuple[float, CheckFlow]] = {}

    def epoch_end(self, seconds: float) -> float:
        return self.clock() + seconds

    def restorable(self, epoch: CoordinatorEpoch) -> bool:
        """Whether an epoch read back after a restart is still worth its filters."""
        return not epoch.ended(self.clock())

    def open(self, epoch: CoordinatorEpoch) -> Closing | None:
        """``epoch`` opens and replaces the open one, if any: the CloseEpoch calls that owes."""
        open_epoch(epoch)
        previous, self.epoch = self.epoch, epoch
        self._checks.clear()
        if previous is None:
            return None
        reason = f"replaced by epoch {epoch.epoch_id}"
        # REPLACED is a reason, not a phase: the previous epoch is CLOSED either way.
        previous.close(reason)
        others = tuple(n for n in previous.participants if n not in epoch.participants)
        return Closing(previous.epoch_id, others, reason)

    def expire(self) -> CoordinatorEpoch | None:
        """The open epoch, if its end has passed: it is CLOSED and its filters must go."""
        epoch = self.epoch
        if epoch is None or not epoch.ended(self.clock()):
            return None
        epoch.close(f"ended at {utc_text(epoch.ends)}")
        self.epoch, self._ended = None, epoch
        self._checks.clear()
        return epoch

    def epoch_of(self, epoch_id: str) -> CoordinatorEpoch:
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

    def begin_check(
        self, chunks: Sequence[CheckHop], allowed: frozenset[str] | None, *, checker: str
    ) -> CheckFlow:
        """Refuse or start a check by ``checker`` (the name in its certificate): its signed
        chunks, in order."""
        if not chunks:
            raise BadMessage("a check carries one or more whole 32-byte elements")
        first = chunks[0]
        epoch = self.epoch_of(first.epoch_id)
        if first.checker != checker:
            raise PolicyRefusal(f"{checker} may not check in the name of {first.checker}")
        if not CHECK_ID.fullmatch(first.check_id):
            raise BadMessage("a check id is 16 to 64 lowercase hex digits")
        now = self.clock()
        for ref in [r for r, (t, _) in self._checks.items() if now - t > CHECK_TTL]:
            del self._checks[ref]
        ref = (checker, first.check_id)
        if ref in self._checks:
            raise CheckReplayed(f"check {first.check_id} of {checker} is already in flight")
        flow = CheckFlow(epoch, chunks, allowed)
        self._checks[ref] = (now, flow)
        return flow

    def finishing(self, checker: str, epoch_id: str, check_id: str) -> CheckFlow:
        """The check ``checker`` now sends its unmasked tags for; each is finished once."""
        self.epoch_of(epoch_id)
        entry = self._checks.pop((checker, check_id), None)
        if entry is None:
            raise WrongPhase(
                f"no check {check_id!r} of {checker} awaits its tags (unknown, finished, or "
                f"older than {CHECK_TTL:.0f} s)"
            )
        return entry[1]


@dataclass(frozen=True)
class CheckResult:
    hits: dict[str, tuple[int, ...]]  # partner -> positions it confirmed
    epoch_ends: float


class CheckFlow:
    """One check at the coordinator (rules 2 to 4): route, seal, test the filters, fan out."""

    def __init__(
        self, epoch: CoordinatorEpoch, chunks: Sequence[CheckHop], allowed: frozenset[str] | None
    ) -> None:
        first = chunks[0]
        if first.checker not in epoch.participants:
            raise PolicyRefusal(f"{first.checker} is not a participant of epoch {epoch.epoch_id}")
        self.count = sum(check_elements(c.elements) for c in chunks)
        if self.count > MAX_CHECK_ELEMENTS:
            raise BadMessage(
                f"a check of {self.count} elements; at most {MAX_CHECK_ELEMENTS} per check"
            )
        for seq, chunk in enumerate(chunks):
            if (chunk.seq, chunk.chunks, chunk.hop, chunk.check_id, chunk.checker) != (
                seq,
                len(chunks),
                0,
                first.check_id,
                first.checker,
            ):
                raise BadMessage(f"chunk {seq} of the check is not the checker's chunk {seq}")
        self.epoch = epoch
        self.checker = first.checker
        self.check_id = first.check_id
        self.allowed = allowed
        self.route = check_route(epoch.participants, self.checker)
        # each chunk's latest signed output, forwarded untouched to its next hop
        self.chunks: list[CheckHop] = list(chunks)
        self.shares: dict[str, bool] = {}
        self.phase = CoordinatorCheckPhase.ROUTING
        self._busy: set[int] = set()  # chunks at a hop or being sealed
        self._in_flight = dict.fromkeys(self.route, 0)
        self._sealed: dict[int, bytes] = {}
        self._tags: list[bytes] = []
        self._keys: list[str] = []
        self._candidates: dict[str, list[int]] = {}
        self._pending: set[str] = set()
        self._hits: dict[str, tuple[int, ...]] = {}

    @property
    def size(self) -> int:
        """Bytes of the check's elements (and of its sealed result, and of its tags)."""
        return self.count * ELEMENT_BYTES

    def sends(self) -> list[tuple[str, CheckHop]]:
        """The chunks to send now, and to whom: every chunk whose next hop has room in its
        window. They are in flight until ``on_reblinded``."""
        out: list[tuple[str, CheckHop]] = []
        if not COORDINATOR_CHECK.allows(self.phase, CoordinatorCheckEvent.CHUNK):
            return out
        for seq, chunk in enumerate(self.chunks):
            if seq in self._busy or chunk.hop == len(self.route):
                continue
            node = self.route[chunk.hop]
            if self._in_flight[node] < CHECK_WINDOW:
                self._in_flight[node] += 1
                self._busy.add(seq)
                out.append((node, chunk))
        return out

    def to_seal(self) -> list[int]:
        """Chunks with every partner's key, not yet sealed: each is the caller's to ``seal``."""
        if not COORDINATOR_CHECK.allows(self.phase, CoordinatorCheckEvent.CHUNK):
            return []
        done = [
            seq
            for seq, c in enumerate(self.chunks)
            if c.hop == len(self.route) and seq not in self._busy and seq not in self._sealed
        ]
        self._busy.update(done)
        return done

    def on_reblinded(
        self,
        sender: str,
        seq: int,
        elements: bytes,
        share: bool,
        signature: bytes = b"",
        certificate: bytes = b"",
    ) -> None:
        """A partner's re-blinded, signed chunk ``seq``."""
        self._require(CoordinatorCheckEvent.CHUNK)
        chunk = self.chunks[seq] if 0 <= seq < len(self.chunks) else None
        expected = None if chunk is None else self.route[chunk.hop]
        if chunk is None or seq not in self._busy or sender != expected:
            raise BadReply(
                f"re-blinded chunk {seq} of a check from {sender}; expected it from {expected}"
            )
        if len(elements) != len(chunk.elements):
            raise BadReply(
                f"{sender} returned {len(elements)} bytes for chunk {seq} of "
                f"{len(chunk.elements)} bytes"
            )
        self._busy.discard(seq)
        self._in_flight[sender] -= 1
        # a node's policy answer for this checker; never "shares" once it said it does not
        self.shares[sender] = self.shares.get(sender, True) and share
        self.chunks[seq] = replace(
            chunk,
            hop=chunk.hop + 1,
            elements=elements,
            signature=signature,
            certificate=certificate,
        )

    def seal(self, seq: int) -> bytes:
        """Chunk ``seq`` with every partner's key, under k_c: still masked, for the checker.
        Only reads the chunk, so it runs outside the caller's lock."""
        key = self.epoch.key
        if key is None:
            raise EpochEnded(f"epoch {self.epoch.epoch_id} is {self.epoch.phase.value}")
        return seal(key, self.chunks[seq].elements)

    def on_sealed(self, seq: int, sealed: bytes) -> None:
        self._require(CoordinatorCheckEvent.CHUNK)
        self._busy.discard(seq)
        self._sealed[seq] = sealed
        if len(self._sealed) == len(self.chunks):
            self._move(CoordinatorCheckPhase.UNMASKING)

    @property
    def routed(self) -> bool:
        return self.phase is not CoordinatorCheckPhase.ROUTING

    def sealed(self) -> bytes:
        """Every chunk under every key and k_c, in order: the still-masked answer."""
        self._require(CoordinatorCheckEvent.ANSWER)
        return b"".join(self._sealed[seq] for seq in range(len(self.chunks)))

    def on_unmasked(self, tags: bytes) -> None:
        """The checker's k_c-tags, its mask removed: one per element it sent."""
        self._require(CoordinatorCheckEvent.TAGS)
        if len(tags) != self.size:
            raise BadMessage(
                f"{len(tags)} bytes of tags for a check of {self.count} elements "
                f"({self.size} bytes)"
            )
        self._tags = split_tags(tags)
        self._keys = [filter_key(t) for t in self._tags]
        self._move(CoordinatorCheckPhase.TESTING)

    def alerts(self) -> dict[str, bytes]:
        """Test the filters both policies allow: partner -> the tags to send it in an Alert."""
        self._require(CoordinatorCheckEvent.TEST)
        for partner in reported_partners(
            self.epoch.participants, self.checker, self.allowed, self.shares
        ):
            bloom = self.epoch.filters[partner]
            hit = [i for i, k in enumerate(self._keys) if k in bloom]
            if hit:
                self._candidates[partner] = hit
        self._pending = set(self._candidates)
        self._move(CoordinatorCheckPhase.CONFIRMING)
        return {p: b"".join(self._tags[i] for i in hit) for p, hit in self._candidates.items()}

    def on_alert_reply(self, partner: str, known: Sequence[bool]) -> None:
        """Which of the tags sent to ``partner`` it holds; the others were Bloom false positives."""
        self._require(CoordinatorCheckEvent.ALERT_REPLY)
        if partner not in self._pending:
            raise BadReply(f"an Alert answer from {partner}, which owes none")
        sent = self._candidates[partner]
        if len(known) != len(sent):
            raise BadReply(
                f"{partner} answered {len(known)} flags for an Alert of {len(sent)} tags"
            )
        self._pending.discard(partner)
        confirmed = tuple(i for i, ok in zip(sent, known, strict=True) if ok)
        if confirmed:
            self._hits[partner] = confirmed

    def on_alert_failed(self, partner: str) -> None:
        """An Alert that could not be delivered: best effort, that partner reports no hit."""
        self._require(CoordinatorCheckEvent.ALERT_REPLY)
        if partner not in self._pending:
            raise WrongPhase(f"no Alert to {partner} is outstanding")
        self._pending.discard(partner)

    def finish(self) -> CheckResult:
        """The checker's answer; its k_c-tags join its filter (rule 4)."""
        self._require(CoordinatorCheckEvent.FINISH)
        if self._pending:
            raise WrongPhase(f"Alerts to {', '.join(sorted(self._pending))} are unanswered")
        bloom = self.epoch.filters[self.checker]
        for k in self._keys:
            bloom.add(k)
        self._move(CoordinatorCheckPhase.DONE)
        return CheckResult(dict(self._hits), self.epoch.ends)

    def _require(self, event: CoordinatorCheckEvent) -> None:
        COORDINATOR_CHECK.require(CHECK_SUBJECT, self.phase, event)

    def _move(self, to: CoordinatorCheckPhase) -> None:
        self.phase = COORDINATOR_CHECK.move(CHECK_SUBJECT, self.phase, to)
