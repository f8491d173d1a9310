"""Early warning, without I/O: watch epochs, check budgets and the routing of a check.

A *watch round* runs exactly like a pairwise round, and then opens an *epoch* (default 24 h):

- Each participant keeps the round's key for the epoch (``NodeEpoch``), with its *tag map*: its
  own final tags (the coordinator hands them back by position) -> (kind, canonical value).
- The coordinator keeps, per participant, a Bloom filter of that participant's final tags
  instead of the tags themselves.

Rules of a check (node C checks values during epoch E):
  1. C canonicalises, hashes and blinds the values under its epoch key, and sends them to the
     coordinator with the partners its policy lets learn of its sightings.
  2. The coordinator routes the elements through every other participant of E in cyclic order
     (``check_route``), as a round routes C's set. Each partner P applies its epoch key only
     within its per-epoch budget for C (``NodeEpoch.charge``), and says whether its policy
     lets C learn what it holds.
  3. The final tags are tested against the filter of every partner both policies allow. A
     partner with a hit is sent the tags (``Alert``); it confirms the ones in its tag map (a
     Bloom false positive is never reported) and records "C has now sighted your indicator".
  4. C learns, per value, the partners that confirmed, records them as alerts, and adds the
     final tags to its tag map; the coordinator adds them to C's filter.
  Nothing is accepted after the epoch's end (``EpochEnded``); the key is destroyed then.

The machines (no I/O, no real clock: ``now`` or a clock callable is passed in):
- Coordinator: ``CoordinatorWatch`` holds at most one ``CoordinatorEpoch`` (OPEN, then REPLACED
  by the next watch round or ENDED by the clock) and starts a ``CheckFlow`` per check: the hops to
  route through, the Alerts to fan out, the reply. Its filters are any ``Membership``.
- Node: ``NodeWatchCore`` holds the epochs BeginEpoch announced, the current ``NodeEpoch``, and
  starts a ``NodeCheck`` per check of the node's own sightings.
Replies are validated with the rounds' rules (``CoordinatorRound.on_chunk``): the sender is the
expected one, element counts match exactly, indices are in range and never repeated. A reply that
breaks them is a ``BadReply``.
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

from blindmatch.canon import InvalidIndicator, canonicalize
from blindmatch.group import ELEMENT_BYTES, RoundKey
from blindmatch.protocol import (
    BadMessage,
    CapExceeded,
    NodeRound,
    Policy,
    PolicyRefusal,
    WrongPhase,
)

Clock = Callable[[], float]  # unix seconds; time.time outside tests

DEFAULT_EPOCH_SECONDS = 24 * 3600.0
MAX_EPOCH_SECONDS = 90 * 24 * 3600.0
DEFAULT_CHECK_BUDGET = 10_000  # elements a node blinds for each partner's checks per epoch
# Target false-positive rate of each coordinator filter. With E elements checked per epoch
# across the federation and P partner filters tested per element, expected Bloom false
# positives are E * P * rate: 64 nations at the default budget (E <= 64 * 10_000, P <= 63) give
# 0.04 per epoch. A false positive costs one Alert that the partner answers "not mine"; it never
# reaches the checking node as a hit (rule 3).
FILTER_ERROR_RATE = 1e-9
MAX_CHECK_ELEMENTS = 100_000  # per check: 3.2 MB of elements each way

_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(s|m|h|d)?\s*")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}


class EpochEnded(WrongPhase):
    """A check or re-blinding after the epoch's end (FAILED_PRECONDITION)."""


class BadReply(BadMessage):
    """A reply from the party a check relies on breaks the rules (count, index, sender).

    The caller's own request was fine, so the status it gets is INTERNAL, not INVALID_ARGUMENT.
    """

    code = "INTERNAL"


def parse_duration(text: str) -> float:
    """Seconds in "24h", "90m", "3600s", "2d" or a plain number of seconds."""
    m = _DURATION.fullmatch(text)
    if m is None:
        raise ValueError(f"duration {text!r}: expected a number with s, m, h or d, e.g. 24h or 90m")
    seconds = float(m.group(1)) * _UNIT_SECONDS[m.group(2)]
    if not 0 < seconds <= MAX_EPOCH_SECONDS:
        raise ValueError(
            f"duration {text!r} must be more than 0 and at most {MAX_EPOCH_SECONDS / 86400:g} days"
        )
    return seconds


def utc_text(unix: float) -> str:
    return datetime.fromtimestamp(unix, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def expected_false_positives(elements: int, partner_filters: int, rate: float) -> float:
    """Bloom false positives expected when ``elements`` are each tested in that many filters."""
    return elements * partner_filters * rate


def check_route(participants: Sequence[str], checker: str) -> tuple[str, ...]:
    """The partners a check visits, in the round's cyclic order starting after the checker."""
    if checker not in participants:
        raise PolicyRefusal(f"{checker} is not a participant of this epoch")
    i = participants.index(checker)
    n = len(participants)
    return tuple(participants[(i + hop) % n] for hop in range(1, n))


def reported_partners(
    participants: Sequence[str],
    checker: str,
    checker_allows: frozenset[str] | None,
    partner_shares: Mapping[str, bool],
) -> tuple[str, ...]:
    """Partners whose filters a check may consult: allowed by both sides' policies."""
    return tuple(
        p
        for p in check_route(participants, checker)
        if (checker_allows is None or p in checker_allows) and partner_shares.get(p, False)
    )


def check_elements(packed: bytes) -> int:
    """How many elements a check carries: one or more whole 32-byte elements, or refused."""
    count = len(packed) // ELEMENT_BYTES
    if len(packed) % ELEMENT_BYTES or not count:
        raise BadMessage("a check carries one or more whole 32-byte elements")
    return count


def shares_with(policy: Policy, checker: str) -> bool:
    """Whether ``policy`` lets ``checker`` learn that this node holds a value (rule 2)."""
    return policy.partners is None or checker in policy.partners


def split_tags(packed: bytes) -> list[bytes]:
    if len(packed) % ELEMENT_BYTES:
        raise BadMessage(f"{len(packed)} bytes is not a whole number of 32-byte tags")
    return [packed[i : i + ELEMENT_BYTES] for i in range(0, len(packed), ELEMENT_BYTES)]


@dataclass
class NodeEpoch:
    """One node's side of an epoch: the kept key, the tag map, budgets spent by each partner."""

    epoch_id: str
    me: str
    participants: tuple[str, ...]
    ends: float  # unix seconds
    key: RoundKey | None
    budget: int
    tags: dict[bytes, tuple[str, str]] = field(default_factory=dict)
    spent: dict[str, int] = field(default_factory=dict)  # partner -> elements blinded for it
    closed: str | None = None  # why the epoch ended early, if it did

    def expired(self, now: float) -> bool:
        return now >= self.ends

    def require_open(self, now: float) -> RoundKey:
        if self.closed is not None:
            raise EpochEnded(f"epoch {self.epoch_id} was closed ({self.closed})")
        if now >= self.ends or self.key is None:
            raise EpochEnded(
                f"epoch {self.epoch_id} ended at {utc_text(self.ends)}; start a new watch round "
                "(`blindmatch round start --mode watch`)"
            )
        return self.key

    def charge(self, checker: str, count: int, now: float) -> RoundKey:
        """Book ``count`` elements of ``checker``'s check against its budget; the key to use."""
        key = self.require_open(now)
        if checker == self.me or checker not in self.participants:
            raise PolicyRefusal(f"{checker} is not a partner of {self.me} in epoch {self.epoch_id}")
        used = self.spent.get(checker, 0)
        if used + count > self.budget:
            raise CapExceeded(
                f"{self.me} has blinded {used} of the {self.budget} elements it allows {checker}'s "
                f"checks this epoch; this check of {count} would exceed it (check_budget in "
                f"{self.me}'s node.toml; the budget renews with the next epoch, "
                f"after {utc_text(self.ends)})"
            )
        self.spent[checker] = used + count
        return key

    def remember(self, tags: Iterable[bytes], items: Iterable[tuple[str, str]]) -> None:
        for tag, item in zip(tags, items, strict=True):
            self.tags[tag] = item

    def lookup(self, tags: Iterable[bytes]) -> list[tuple[str, str] | None]:
        return [self.tags.get(t) for t in tags]

    def close(self, reason: str) -> None:
        """Destroy the key and the tag map; idempotent."""
        if self.key is not None:
            self.key.destroy()
        self.key = None
        self.tags = {}
        if self.closed is None:
            self.closed = reason


def bloom_bits_per_element(rate: float) -> float:
    """Bits per element of an optimal Bloom filter at false-positive ``rate``."""
    return -math.log(rate) / math.log(2) ** 2


# --- the coordinator's side ---------------------------------------------------------------------


class Membership(Protocol):
    """A coordinator filter as the core sees it; pybloom_live's ScalableBloomFilter is one."""

    def __contains__(self, key: str) -> bool: ...

    def add(self, key: str) -> object: ...


def filter_key(tag: bytes) -> str:
    # pybloom_live hashes str(key) for anything but str; hex is the exact, cheap spelling, and
    # the one the filters on disk hold.
    return tag.hex()


class EpochState(enum.Enum):
    OPEN = "open"  # checks accepted until its end
    REPLACED = "replaced"  # a newer watch round opened the next epoch
    ENDED = "ended"  # its end passed: its filters are deleted


@dataclass
class CoordinatorEpoch:
    epoch_id: str
    participants: tuple[str, ...]
    ends: float  # unix seconds
    filters: dict[str, Membership] = field(default_factory=dict)
    state: EpochState = EpochState.OPEN

    def ended(self, now: float) -> bool:
        return now >= self.ends


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

    def epoch_end(self, seconds: float) -> float:
        return self.clock() + seconds

    def restorable(self, epoch: CoordinatorEpoch) -> bool:
        """Whether an epoch read back after a restart is still worth its filters."""
        return not epoch.ended(self.clock())

    def open(self, epoch: CoordinatorEpoch) -> Closing | None:
        previous, self.epoch = self.epoch, epoch
        if previous is None:
            return None
        previous.state = EpochState.REPLACED
        others = tuple(n for n in previous.participants if n not in epoch.participants)
        return Closing(previous.epoch_id, others, f"replaced by epoch {epoch.epoch_id}")

    def expire(self) -> CoordinatorEpoch | None:
        """The open epoch, if its end has passed: it is ENDED and its filters must go."""
        epoch = self.epoch
        if epoch is None or not epoch.ended(self.clock()):
            return None
        epoch.state = EpochState.ENDED
        epoch.filters = {}
        self.epoch, self._ended = None, epoch
        return epoch

    def begin_check(
        self, checker: str, epoch_id: str, elements: bytes, allowed: frozenset[str] | None
    ) -> CheckFlow:
        """Refuse or start a check by ``checker`` (the name in its certificate)."""
        epoch = self.epoch
        ended = self._ended if epoch is None else epoch if epoch.ended(self.clock()) else None
        if ended is not None and ended.epoch_id == epoch_id:
            raise EpochEnded(f"epoch {epoch_id} ended at {utc_text(ended.ends)}")
        if epoch is None or epoch.epoch_id != epoch_id:
            have = f"the current epoch is {epoch.epoch_id}" if epoch else "no epoch is open"
            raise EpochEnded(
                f"the coordinator has no epoch {epoch_id!r} ({have}); start a watch round"
            )
        return CheckFlow(epoch, checker, elements, allowed)


class CheckPhase(enum.Enum):
    ROUTING = "routing"  # through each partner's key, one hop after the other
    TESTING = "testing"  # final tags known, filters not yet tested
    CONFIRMING = "confirming"  # Alerts out to the partners with a hit
    DONE = "done"


@dataclass(frozen=True)
class CheckResult:
    tags: bytes  # final tags, in the request's order
    hits: dict[str, tuple[int, ...]]  # partner -> positions it confirmed
    epoch_ends: float


class CheckFlow:
    """One check at the coordinator (rules 2 to 4): route, test the filters, fan out, answer."""

    def __init__(
        self,
        epoch: CoordinatorEpoch,
        checker: str,
        elements: bytes,
        allowed: frozenset[str] | None,
    ) -> None:
        if checker not in epoch.participants:
            raise PolicyRefusal(f"{checker} is not a participant of epoch {epoch.epoch_id}")
        self.count = check_elements(elements)
        if self.count > MAX_CHECK_ELEMENTS:
            raise BadMessage(
                f"a check of {self.count} elements; at most {MAX_CHECK_ELEMENTS} per check"
            )
        self.epoch = epoch
        self.checker = checker
        self.allowed = allowed
        self.route = check_route(epoch.participants, checker)
        self.elements = elements  # as blinded so far
        self.shares: dict[str, bool] = {}
        self.phase = CheckPhase.ROUTING
        self._tags: list[bytes] = []
        self._keys: list[str] = []
        self._candidates: dict[str, list[int]] = {}
        self._pending: set[str] = set()
        self._hits: dict[str, tuple[int, ...]] = {}

    @property
    def next_hop(self) -> str | None:
        """The partner to send ``elements`` to next, or None once every key is applied."""
        return self.route[len(self.shares)] if self.phase is CheckPhase.ROUTING else None

    def on_reblinded(self, sender: str, elements: bytes, share: bool) -> str | None:
        """A partner's re-blinded elements; returns the next hop, if any."""
        expected = self.next_hop
        self._require(CheckPhase.ROUTING)
        if sender != expected:
            raise BadReply(
                f"re-blinded check elements from {sender}; expected them from {expected}"
            )
        if len(elements) != len(self.elements):
            raise BadReply(
                f"{sender} returned {len(elements)} bytes for a check of {self.count} elements "
                f"({len(self.elements)} bytes)"
            )
        self.elements = elements
        self.shares[sender] = share
        if len(self.shares) == len(self.route):
            self._tags = split_tags(elements)
            self._keys = [filter_key(t) for t in self._tags]
            self.phase = CheckPhase.TESTING
        return self.next_hop

    def alerts(self) -> dict[str, bytes]:
        """Test the filters both policies allow: partner -> the tags to send it in an Alert."""
        self._require(CheckPhase.TESTING)
        for partner in reported_partners(
            self.epoch.participants, self.checker, self.allowed, self.shares
        ):
            bloom = self.epoch.filters[partner]
            hit = [i for i, k in enumerate(self._keys) if k in bloom]
            if hit:
                self._candidates[partner] = hit
        self._pending = set(self._candidates)
        self.phase = CheckPhase.CONFIRMING
        return {p: b"".join(self._tags[i] for i in hit) for p, hit in self._candidates.items()}

    def on_alert_reply(self, partner: str, known: Sequence[bool]) -> None:
        """Which of the tags sent to ``partner`` it holds; the others were Bloom false positives."""
        self._require(CheckPhase.CONFIRMING)
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
        self._require(CheckPhase.CONFIRMING)
        if partner not in self._pending:
            raise WrongPhase(f"no Alert to {partner} is outstanding")
        self._pending.discard(partner)

    def finish(self) -> CheckResult:
        """The checker's answer; its final tags join its filter (rule 4)."""
        self._require(CheckPhase.CONFIRMING)
        if self._pending:
            raise WrongPhase(f"Alerts to {', '.join(sorted(self._pending))} are unanswered")
        bloom = self.epoch.filters[self.checker]
        for k in self._keys:
            bloom.add(k)
        self.phase = CheckPhase.DONE
        return CheckResult(self.elements, dict(self._hits), self.epoch.ends)

    def _require(self, phase: CheckPhase) -> None:
        if self.phase is not phase:
            raise WrongPhase(f"a check that is {self.phase.value}; expected {phase.value}")


# --- the node's side ----------------------------------------------------------------------------


@dataclass(frozen=True)
class PendingEpoch:
    """Announced by BeginEpoch; becomes the epoch when the round delivers."""

    ends: float
    tags: bytes
    coordinator: str


@dataclass
class CheckedValue:
    value: str  # as given
    kind: str = ""
    canonical: str = ""
    partners: list[str] = field(default_factory=list)
    error: str = ""  # why it was not checked, if it was not


class NodeCheckPhase(enum.Enum):
    PLANNED = "planned"
    ASKING = "asking"  # blinded and sent to the coordinator
    DONE = "done"


class NodeCheck:
    """One check of this node's own sightings (rules 1 and 4)."""

    def __init__(self, me: str, values: Sequence[str], kind: str, kinds: frozenset[str]) -> None:
        if not values:
            raise BadMessage("no values to check")
        self.me = me
        self.results: list[CheckedValue] = []
        self.items: list[tuple[str, str]] = []  # (kind, canonical) of the values to check
        self._slots: list[int] = []  # result index of each item
        for value in values:
            result = CheckedValue(value)
            try:
                ind = canonicalize(kind, value)
            except InvalidIndicator as exc:
                result.error = str(exc)
            else:
                result.kind, result.canonical = ind.kind, ind.value
                if ind.kind in kinds:
                    self._slots.append(len(self.results))
                    self.items.append((ind.kind, ind.value))
                else:
                    result.error = f"kind {ind.kind} is outside this node's policy (policy.kinds)"
            self.results.append(result)
        self.epoch: NodeEpoch | None = None
        self.alerts: list[tuple[str, str, str, str]] = []  # (kind, value, partner, "check")
        self.phase = NodeCheckPhase.PLANNED

    def open(self, epoch: NodeEpoch | None, now: float) -> RoundKey:
        """The epoch key to hash and blind ``items`` with, if the node's epoch is open."""
        self._require(NodeCheckPhase.PLANNED)
        if epoch is None:
            raise WrongPhase(
                f"node {self.me} has no watch epoch (none started, or it ended or the node "
                "restarted); an operator starts one with `blindmatch round start --mode watch`"
            )
        key = epoch.require_open(now)
        self.epoch = epoch
        self.phase = NodeCheckPhase.ASKING
        return key

    def on_reply(self, tags: bytes, hits: Mapping[str, Sequence[int]]) -> None:
        """The coordinator's answer: validated, then the partners and alerts of each value.

        The final tags join the epoch's tag map, so later checks by partners alert this node.
        """
        self._require(NodeCheckPhase.ASKING)
        assert self.epoch is not None
        n = len(self.items)
        if len(tags) != n * ELEMENT_BYTES:
            raise BadReply(f"the coordinator answered {len(tags)} bytes of tags for {n} values")
        for partner, indices in hits.items():
            if partner == self.me or partner not in self.epoch.participants:
                raise BadReply(f"the coordinator reports hits of {partner!r}, not a partner")
            if len(set(indices)) != len(indices):
                raise BadReply(f"the coordinator reports a hit of {partner} twice")
            for i in indices:
                if not 0 <= i < n:
                    raise BadReply(f"the coordinator reports hit {i} of {partner} in {n} values")
        for partner, indices in hits.items():
            for i in indices:
                self.results[self._slots[i]].partners.append(partner)
                self.alerts.append((*self.items[i], partner, "check"))
        self.epoch.remember(split_tags(tags), self.items)
        self.phase = NodeCheckPhase.DONE

    @property
    def hit_values(self) -> int:
        return len({a[:2] for a in self.alerts})

    def _require(self, phase: NodeCheckPhase) -> None:
        if self.phase is not phase:
            raise WrongPhase(f"a check that is {self.phase.value}; expected {phase.value}")


class NodeWatchCore:
    """A node's watch: epochs BeginEpoch announced, the current epoch, the calls it serves."""

    def __init__(self, me: str, budget: int, clock: Clock) -> None:
        self.me = me
        self.budget = budget
        self.clock = clock
        self.epoch: NodeEpoch | None = None
        self.pending: dict[str, PendingEpoch] = {}

    def begin(
        self, round_id: str, round_active: bool, ends: float, tags: bytes, coordinator: str
    ) -> int:
        """BeginEpoch: remember the final tags until the round delivers; how many there are."""
        if not round_active:
            raise WrongPhase(f"no round {round_id!r} in progress on {self.me}")
        if ends <= self.clock():
            raise BadMessage(f"epoch end {utc_text(ends)} is in the past")
        if len(tags) % ELEMENT_BYTES:
            raise BadMessage("final tags are not whole 32-byte elements")
        self.pending[round_id] = PendingEpoch(ends, tags, coordinator)
        return len(tags) // ELEMENT_BYTES

    def capture(self, state: NodeRound) -> tuple[NodeEpoch, PendingEpoch, NodeEpoch | None] | None:
        """A round delivers: if BeginEpoch announced it, its key copy becomes the epoch.

        Returns the new epoch, what BeginEpoch said, and the epoch it replaces (to close).
        """
        pending = self.pending.pop(state.spec.round_id, None)
        if pending is None:
            return None
        positions = state.position_map()
        tags = split_tags(pending.tags)
        if len(tags) != len(positions):
            raise BadMessage(
                f"watch round {state.spec.round_id}: {len(tags)} final tags for an own set of "
                f"{len(positions)}"
            )
        epoch = NodeEpoch(
            epoch_id=state.spec.round_id,
            me=self.me,
            participants=state.spec.participants,
            ends=pending.ends,
            key=RoundKey.from_bytes(state.live_key().export()),
            budget=self.budget,
        )
        epoch.remember(tags, ((kind, value) for _, kind, value in positions))
        old, self.epoch = self.epoch, epoch
        return epoch, pending, old

    def close(self, epoch: NodeEpoch, reason: str) -> bool:
        """Destroy ``epoch``'s key; True if it was still held (the end is then recorded)."""
        held = epoch.key is not None
        epoch.close(reason)
        if self.epoch is epoch:
            self.epoch = None
        return held

    def expired(self) -> NodeEpoch | None:
        """The current epoch if the clock has passed its end (to close with ``end_reason``)."""
        epoch = self.epoch
        return epoch if epoch is not None and epoch.expired(self.clock()) else None

    def drop_pending(self, active_rounds: Iterable[str]) -> None:
        """Forget announced epochs whose round failed after BeginEpoch."""
        active = set(active_rounds)
        for rid in [r for r in self.pending if r not in active]:
            del self.pending[rid]

    def current(self, epoch_id: str) -> NodeEpoch:
        epoch = self.epoch
        if epoch is None or epoch.epoch_id != epoch_id:
            have = f"its epoch is {epoch.epoch_id}" if epoch else "it has no epoch"
            raise WrongPhase(
                f"node {self.me} holds no key for epoch {epoch_id} ({have}; a node restart "
                "ends its epoch); start a new watch round"
            )
        return epoch

    def reblind(self, epoch_id: str, checker: str, packed: bytes) -> RoundKey:
        """ReblindCheck: the key to blind a partner's check with, booked against its budget."""
        count = check_elements(packed)
        return self.current(epoch_id).charge(checker, count, self.clock())

    def alert(self, epoch_id: str, packed: bytes) -> list[tuple[str, str] | None]:
        """Alert: the indicator behind each tag, None for a tag not in the tag map."""
        return self.current(epoch_id).lookup(split_tags(packed))

    def to_close(self, epoch_id: str) -> NodeEpoch | None:
        """CloseEpoch: the epoch to close, if it is the current one (idempotent otherwise)."""
        epoch = self.epoch
        return epoch if epoch is not None and epoch.epoch_id == epoch_id else None

    def start_check(self, values: Sequence[str], kind: str, policy: Policy) -> NodeCheck:
        return NodeCheck(self.me, values, kind or "auto", policy.kinds)


def end_reason(epoch: NodeEpoch) -> str:
    return f"epoch ended at {utc_text(epoch.ends)}"
