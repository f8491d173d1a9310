"""What both sides of a round share, without I/O: the spec, a node's policy, the coordinator's
caps, and what a node learns.

A round among participants P0..P(N-1) (the coordinator's order). The rules of each side are state
machines of their own (``committee``, with ``round_node.NodeRound`` for a node's own set): feed a
message, get what to send next. The phases, the messages each one accepts and the moves between
them are tables in ``states``; the errors are in ``errors``.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field

from blindmatch.core.canon import KINDS
from blindmatch.core.errors import BadMessage, CapExceeded, PolicyRefusal
from blindmatch.core.match import MAX_PARTICIPANTS, MODES, ThresholdResult

DEFAULT_CHUNK = 4096  # elements per request: 260 KiB of points, far below gRPC's 4 MB limit
MAX_CHUNK = 65536  # the largest chunk a spec may ask for: 4.2 MB of points a request
# The last second of year 9999: a later "time" is no time anybody signs, and neither the audit
# nor the CLIs (``datetime``, ``time.localtime``) could show it.
MAX_TIME = 253402300799.0


def check_time(unix: float, what: str) -> float:
    """``unix`` if it is a unix time in [0, MAX_TIME]; BadMessage naming ``what`` otherwise."""
    # written so that NaN, which every comparison calls false, is refused too
    if not 0 <= unix <= MAX_TIME:
        raise BadMessage(f"{what} {unix} is not a time: unix seconds in [0, {MAX_TIME:.0f}]")
    return unix


@dataclass(frozen=True, slots=True)
class RoundSpec:
    round_id: str
    participants: tuple[str, ...]
    mode: str = "pairwise"
    threshold: int | None = None
    kinds: tuple[str, ...] = KINDS
    chunk_size: int = DEFAULT_CHUNK
    # > 0: a watch round (the operator's ``--mode watch``: pairwise, then an epoch this long)
    epoch_seconds: float = 0.0
    counts: bool = False  # threshold mode: exact counts delivered, not only "held by >= t"
    issued: float = 0.0  # unix seconds when the operator signed it; nodes refuse stale specs
    # protocol v2: the members whose shares make the round key; empty means every participant
    committee: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        n = len(self.participants)
        if not 2 <= n <= MAX_PARTICIPANTS:
            raise BadMessage(f"a round needs 2 to {MAX_PARTICIPANTS} participants, got {n}")
        if len(set(self.participants)) != n:
            raise BadMessage("a participant is named twice")
        if self.mode not in MODES:
            raise BadMessage(f"unknown mode {self.mode!r}; expected one of {', '.join(MODES)}")
        if self.mode == "threshold":
            if self.threshold is None or not 2 <= self.threshold <= n:
                raise BadMessage(f"threshold must be between 2 and {n}, got {self.threshold}")
        elif self.threshold is not None:
            raise BadMessage(f"a threshold only applies to threshold mode, not {self.mode}")
        if self.counts and self.mode != "threshold":
            raise BadMessage(f"counts only apply to threshold mode, not {self.mode}")
        unknown = [k for k in self.kinds if k not in KINDS]
        if unknown or not self.kinds:
            raise BadMessage(f"unknown or no kinds: {', '.join(unknown) or '(none)'}")
        if not 1 <= self.chunk_size <= MAX_CHUNK:
            raise BadMessage(f"chunk size {self.chunk_size} out of range 1..{MAX_CHUNK}")
        # Only what is no duration at all is refused here: how long an epoch a node keeps its
        # share for is each node's policy (``WatchSettings.admit``), refused and audited there.
        if not 0 <= self.epoch_seconds <= MAX_TIME:
            raise BadMessage(
                f"epoch_seconds {self.epoch_seconds} must be 0 or a positive duration of at "
                f"most {MAX_TIME:.0f} s"
            )
        if self.epoch_seconds and self.mode != "pairwise":
            raise BadMessage(f"a watch epoch only applies to a pairwise round, not {self.mode}")
        check_time(self.issued, "issued")
        if len(set(self.committee)) != len(self.committee):
            raise BadMessage("a committee member is named twice")
        if not set(self.committee) <= set(self.participants):
            outside = ", ".join(sorted(set(self.committee) - set(self.participants)))
            raise BadMessage(f"the committee names {outside}, not a participant")

    @property
    def members(self) -> tuple[str, ...]:
        """Protocol v2's committee, in the spec's order: the named members, or everyone."""
        return self.committee or self.participants

    @property
    def watching(self) -> bool:
        return self.epoch_seconds > 0

    def index(self, name: str) -> int:
        try:
            return self.participants.index(name)
        except ValueError:
            raise BadMessage(f"{name!r} is not a participant of round {self.round_id}") from None


def threshold_counts(spec: RoundSpec, delivery: ThresholdResult) -> Sequence[int | None]:
    """The count delivered with each position, refused unless the spec asked for exactly those.

    A count of N names every holder, so counts travel only when the spec asks for them: a
    delivery that carries them otherwise is refused, not silently trimmed. Without counts a
    position says only "held by at least threshold", and its count is None. Checked where the
    delivery is read off the wire (for any mode) and where a node resolves it."""
    if spec.mode == "threshold" and not spec.counts:
        if delivery.counts:
            raise BadMessage("threshold delivery carries counts the round did not ask for")
        return [None] * len(delivery.positions)
    if len(delivery.counts) != len(delivery.positions):
        raise BadMessage("threshold delivery: one count per position is required")
    return delivery.counts


@dataclass(frozen=True, slots=True)
class Policy:
    """A node's sharing policy (the part the core enforces)."""

    partners: frozenset[str] | None = None  # None: any partner ("*")
    kinds: frozenset[str] = frozenset(KINDS)
    max_partner_set: int = 2_000_000  # largest partner set it evaluates in one round
    max_own_set: int = 5_000_000  # largest own set it contributes
    max_round_elements: int = 20_000_000  # everything it evaluates in one round, its own set too
    # v2: a round whose committee this node is not in must hold every one of these (empty: the
    # node itself), since the committee is who could guess its values offline together.
    trusted_committee: frozenset[str] = frozenset()

    def check_committee(self, committee: Collection[str], me: str) -> None:
        trusted = self.trusted_committee or frozenset({me})
        if me not in committee and not trusted <= set(committee):
            missing = ", ".join(sorted(trusted - set(committee)))
            raise PolicyRefusal(
                f"{me} joins only a committee that holds {missing} ([policy] trusted_committee)"
            )

    def check(self, spec: RoundSpec, me: str) -> None:
        if me not in spec.participants:
            raise BadMessage(f"this node ({me}) is not a participant of round {spec.round_id}")
        if self.partners is not None:
            outside = [p for p in spec.participants if p != me and p not in self.partners]
            if outside:
                raise PolicyRefusal(
                    f"policy of {me} does not allow matching with {', '.join(outside)}"
                )


@dataclass(frozen=True, slots=True)
class Match:
    sighting_id: int
    partners: tuple[str, ...]  # empty when the mode hides them
    count: int | None  # nations holding it, self included, when the mode reveals it


@dataclass(frozen=True, slots=True)
class NodeOutcome:
    matches: tuple[Match, ...] = ()
    partner_counts: Mapping[str, int] = field(default_factory=dict)  # count mode only


@dataclass(frozen=True, slots=True)
class Caps:
    """The coordinator's caps on the sets it takes into a round (coordinator.toml)."""

    max_set: int = 5_000_000  # largest set the coordinator accepts from one node
    max_total: int = 20_000_000  # all sets of one round together

    def check(self, node: str, size: int, others: int) -> None:
        """Refuse ``node``'s announced ``size`` over the caps, ``others`` the sets before it."""
        if not 0 <= size <= self.max_set:
            raise CapExceeded(
                f"{node} announced a set of {size} elements; the coordinator's cap is "
                f"{self.max_set} per node (max_set)"
            )
        if others + size > self.max_total:
            raise CapExceeded(
                f"the round's sets total {others + size} elements; the coordinator's "
                f"cap is {self.max_total} (max_total)"
            )
