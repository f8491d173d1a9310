"""Round state machines, without I/O: feed a message, get what to send next.

A round among participants P0..P(N-1) (the coordinator's order), semi-honest, coordinator-matched.

Node rules (``NodeRound``)
  1. ``prepare``: the node checks the participant list, mode and kinds against its policy and its
     own-set cap, shuffles the ids of its eligible indicators with a CSPRNG (the shuffled ids
     *are* the position map) and draws a fresh key. Phase PREPARED. It answers with its set size.
  2. ``own_batches``: the shuffled indicators in chunks, read from the node's ``SetSource`` a
     chunk at a time, to be hashed and blinded with the key (by the caller, possibly in worker
     processes) and streamed out in that order; ``own_hashed`` gives the same chunks with their
     stored hashes, when every one has it, to blind only.
  3. ``begin_routing(sizes)``: the coordinator announces every set's size; the node refuses (before
     blinding anything) a partner set larger than its cap or a total beyond its round cap.
     Phase ROUTING.
  4. ``accept_chunk(owner, seq, count, hop)``: a chunk of a partner's set to re-blind. This node
     is hop h of owner o's set (``hop_of``: participant (o + h) mod N), so the chunk must be the
     output of hop h - 1, produced by participant (o + h - 1) mod N (the owner itself at h = 1):
     ``accept_chunk`` names that producer, and the caller verifies the chunk's signature as that
     party's BEFORE blinding it. Chunks of one set arrive with seq 0, 1, 2, ...; a duplicate, a
     gap, another hop, more elements than announced, or a chunk of its own set is refused. The
     caller blinds the accepted chunk, signs it as hop h and sends it back in order.
  5. ``resolve(delivery)``: positions -> its own sighting ids; the key is destroyed. Phase DONE.
  ``abort`` at any point destroys the key. Phase ABORTED. Nothing is accepted after DONE/ABORTED.

Coordinator rules (``CoordinatorRound``)
  1. PREPARING: ``on_prepared(node, size)`` from every participant; sizes are checked against the
     coordinator's caps. Then ROUTING, and ``sizes`` is announced to every node.
  2. ROUTING: the set of P_i travels P_i -> P_(i+1) -> ... -> P_(i-1) (cyclic order), each hop
     applying one key and keeping order; so no node ever holds two sets blinded under the same
     subset of keys and cannot compare partners' sets. ``on_chunk(sender, owner, seq, elements,
     stream)`` checks that the sender is the one expected at that hop and that seqs arrive in
     order, then returns the ``Forward`` to the next hop, or keeps the chunk as final tags after
     the last hop.
     Chunks move on one at a time, so all nodes work at once. Each node sends on two streams
     (``Stream``): its own set on OwnSet, partners' sets on Reblind; a chunk on the wrong one is
     refused. ``on_stream_end``: an OwnSet stream must end with the whole announced set, a Reblind
     stream only once every set is final.
  3. When every set is final: ``deliveries()`` computes what each node may learn (``match``), and
     the tags are dropped. Phase DELIVERING; ``on_delivered`` from every node -> DONE.
  ``fail(reason)`` at any point -> FAILED; the caller sends an abort to every node.

The phases, the messages each one accepts and the moves between them are tables in ``states``.
"""

from __future__ import annotations

import enum
import math
import secrets
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

import numpy as np
import numpy.typing as npt

from blindmatch.canon import KINDS
from blindmatch.errors import (
    BadMessage,
    CapExceeded,
    ForgedMessage,
    PolicyRefusal,
    ProtocolError,
    RoundIdUsed,
    UnknownRound,
    WrongPhase,
)
from blindmatch.group import ELEMENT_BYTES, RoundKey
from blindmatch.match import (
    MAX_PARTICIPANTS,
    MODES,
    CountResult,
    Delivery,
    PairwiseResult,
    ThresholdResult,
    deliveries,
)
from blindmatch.states import (
    COORDINATOR,
    NODE,
    CoordinatorEvent,
    CoordinatorPhase,
    NodeEvent,
    NodePhase,
)

__all__ = [  # the errors and phases are defined in ``errors`` and ``states``, used from here
    "DEFAULT_CHUNK",
    "BadMessage",
    "CapExceeded",
    "Caps",
    "CoordinatorPhase",
    "CoordinatorRound",
    "ForgedMessage",
    "Forward",
    "ListedSet",
    "Match",
    "NodeOutcome",
    "NodePhase",
    "NodeRound",
    "Policy",
    "PolicyRefusal",
    "ProtocolError",
    "RoundIdUsed",
    "RoundSpec",
    "SetSource",
    "Stream",
    "UnknownRound",
    "WrongPhase",
]

DEFAULT_CHUNK = 4096  # elements per chunk: 128 KiB of payload, far below gRPC's 4 MB limit


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
        if not 1 <= self.chunk_size <= 65536:
            raise BadMessage(f"chunk size {self.chunk_size} out of range 1..65536")
        if not 0 <= self.epoch_seconds < math.inf:
            raise BadMessage(f"epoch of {self.epoch_seconds} s: must be 0 or a positive duration")
        if self.epoch_seconds and self.mode != "pairwise":
            raise BadMessage(f"a watch epoch only applies to a pairwise round, not {self.mode}")
        if self.counts and self.mode != "threshold":
            raise BadMessage(f"counts only apply to threshold mode, not {self.mode}")
        if not 0 <= self.issued < math.inf:
            raise BadMessage(f"issued time {self.issued} is not a time")

    @property
    def watching(self) -> bool:
        return self.epoch_seconds > 0

    def index(self, name: str) -> int:
        try:
            return self.participants.index(name)
        except ValueError:
            raise BadMessage(f"{name!r} is not a participant of round {self.round_id}") from None


@dataclass(frozen=True, slots=True)
class Policy:
    """A node's sharing policy (the part the core enforces)."""

    partners: frozenset[str] | None = None  # None: any partner ("*")
    kinds: frozenset[str] = frozenset(KINDS)
    max_partner_set: int = 2_000_000  # largest partner set it re-blinds in one round
    max_own_set: int = 5_000_000  # largest own set it contributes
    max_round_elements: int = 20_000_000  # everything it blinds in one round

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


# (sighting id, kind, value), optionally with the value's stored H(v) (None: missing or stale)
Candidate = tuple[int, str, str] | tuple[int, str, str, bytes | None]
Ids = npt.NDArray[np.int64]


class SetSource(Protocol):
    """Where a node's own set comes from: the node's store (node.rounds.StoredSet), a list."""

    def ids(self, kinds: frozenset[str]) -> Ids:
        """The sighting ids of every indicator of ``kinds`` the node may put into a round."""

    def rows(self, ids: Ids) -> Sequence[Candidate]:
        """The indicator of each id, in the order given."""


@dataclass(frozen=True, slots=True)
class ListedSet:
    """A set given as a list of candidates (the fake link, tests, small tools)."""

    candidates: Sequence[Candidate]

    def ids(self, kinds: frozenset[str]) -> Ids:
        return np.array([c[0] for c in self.candidates if c[1] in kinds], dtype=np.int64)

    def rows(self, ids: Ids) -> Sequence[Candidate]:
        by_id = {c[0]: c for c in self.candidates}
        return [by_id[int(i)] for i in ids]


@dataclass(frozen=True, slots=True)
class OwnBatch:
    """A chunk of a node's own set in position order, and its H(v)s packed when all are stored."""

    rows: Sequence[Candidate]
    hashes: bytes | None

    @property
    def items(self) -> list[tuple[str, str]]:
        """(kind, value) of each row: what is hashed when a hash is missing."""
        return [(c[1], c[2]) for c in self.rows]


class NodeRound:
    """One node's side of one round. Holds the key and the position map until resolve/abort.

    The position map is the shuffled sighting ids, 8 bytes per indicator: the indicators
    themselves are read from the ``SetSource`` one chunk at a time as the set streams out, so a
    round's memory does not grow with the values (issue 12: a national store of 10M).
    """

    def __init__(
        self,
        spec: RoundSpec,
        me: str,
        policy: Policy,
        source: SetSource,
    ) -> None:
        policy.check(spec, me)
        self._kinds = frozenset(spec.kinds) & policy.kinds
        ids = source.ids(self._kinds)
        if len(ids) > policy.max_own_set:
            raise CapExceeded(
                f"own set of {len(ids)} indicators exceeds this node's cap of "
                f"{policy.max_own_set} (policy max_own_set)"
            )
        self.spec = spec
        self.me = me
        self.policy = policy
        self.phase = NodePhase.PREPARED
        self._source = source
        self._ids = _shuffled(ids)  # position -> sighting id
        self.size = len(ids)  # kept after the position map is dropped, for the audit log
        self.key: RoundKey | None = RoundKey.generate()
        self.sizes: dict[str, int] = {}
        self.blinded_for: dict[str, int] = {}
        self._next_seq: dict[str, int] = {}
        self.reason: str | None = None

    @property
    def positions_held(self) -> int:
        """Entries of the position map still held (0 once the round is over)."""
        return len(self._ids)

    def position_map(self) -> Sequence[tuple[int, str, str]]:
        """Position -> (sighting id, kind, value); a watch epoch keeps it as its tag map."""
        self._require(NodeEvent.POSITION_MAP)
        return tuple((c[0], c[1], c[2]) for chunk in self._chunks() for c in chunk)

    def live_key(self) -> RoundKey:
        if self.key is None or NODE.final(self.phase):
            raise WrongPhase(f"round {self.spec.round_id} is {self.phase.value}")
        return self.key

    def own_batches(self) -> Iterator[list[tuple[str, str]]]:
        """(kind, value) in position order, one chunk at a time, for hashing and blinding."""
        self._require(NodeEvent.OWN_SET)
        for chunk in self._chunks():
            yield [(c[1], c[2]) for c in chunk]

    def own_hashed(self) -> Iterator[OwnBatch]:
        """The chunks of ``own_batches`` with their stored hashes: blinding those gives the bytes
        hashing and blinding the items gives (group.hash_packed), at a fraction of the cost."""
        self._require(NodeEvent.OWN_SET)
        for chunk in self._chunks():
            try:
                packed: bytes | None = b"".join([c[3] for c in chunk])  # type: ignore[misc]
            except (TypeError, IndexError):  # a hash missing (None) or never read (no 4th field)
                packed = None
            yield OwnBatch(chunk, packed)

    def _chunks(self) -> Iterator[Sequence[Candidate]]:
        """The set's rows in position order, a chunk at a time, read from the source."""
        step = self.spec.chunk_size
        for start in range(0, len(self._ids), step):
            ids = self._ids[start : start + step]
            rows = self._source.rows(ids)
            # The source is trusted, but a row of a kind this round excludes must never leave.
            if [c[0] for c in rows] != ids.tolist() or not {c[1] for c in rows} <= self._kinds:
                raise PolicyRefusal(
                    f"round {self.spec.round_id}: the store returned rows other than the "
                    "indicators selected at Prepare; the round stops"
                )
            yield rows

    def begin_routing(self, sizes: Mapping[str, int]) -> None:
        self._require(NodeEvent.ROUTING_START)
        if set(sizes) != set(self.spec.participants):
            raise BadMessage("announced sizes must name every participant exactly once")
        if sizes[self.me] != self.size:
            raise BadMessage(
                f"announced size {sizes[self.me]} for {self.me} but it has {self.size}"
            )
        total = 0
        for partner, n in sizes.items():
            if n < 0:
                raise BadMessage(f"negative size announced for {partner}")
            if partner == self.me:
                continue
            if n > self.policy.max_partner_set:
                raise CapExceeded(
                    f"{partner}'s set of {n} elements exceeds this node's cap of "
                    f"{self.policy.max_partner_set} per partner (policy max_partner_set)"
                )
            total += n
        if total + self.size > self.policy.max_round_elements:
            raise CapExceeded(
                f"round would blind {total + self.size} elements; this node's cap is "
                f"{self.policy.max_round_elements} (policy max_round_elements)"
            )
        self.sizes = dict(sizes)
        self._next_seq = {p: 0 for p in sizes if p != self.me}
        self.blinded_for = {p: 0 for p in sizes if p != self.me}
        self.phase = NODE.move(self._subject, self.phase, NodePhase.ROUTING)

    def hop_of(self, owner: str) -> int:
        """Which hop of ``owner``'s set this node is: 0 for its own, h for the h-th partner after
        the owner in the ring; its output of that set is signed as this hop."""
        n = len(self.spec.participants)
        return (self.spec.index(self.me) - self.spec.index(owner)) % n

    def producer(self, owner: str) -> str:
        """Who must have produced the chunks of ``owner``'s set this node receives: the previous
        node of the ring, which is the owner itself when this node is the first hop."""
        parts = self.spec.participants
        o, h = self.spec.index(owner), self.hop_of(owner)
        return parts[(o + h - 1) % len(parts)]

    def accept_chunk(self, owner: str, seq: int, count: int, hop: int) -> str:
        """Validate a chunk of ``owner``'s set that says it is the output of ``hop``, before it is
        blinded; the participant whose signature it must carry."""
        self._require(NodeEvent.CHUNK)
        if owner == self.me:
            raise BadMessage("a node never re-blinds its own set")
        expected = self._next_seq.get(owner)
        if expected is None:
            raise BadMessage(f"{owner!r} is not a participant of round {self.spec.round_id}")
        mine = self.hop_of(owner)
        if hop != mine - 1:
            raise ForgedMessage(
                f"chunk {seq} of {owner}'s set is the output of hop {hop}; this node is hop "
                f"{mine} and takes only the output of hop {mine - 1} "
                f"(from {self.producer(owner)})"
            )
        if seq != expected:
            what = "duplicate" if seq < expected else "out-of-order"
            raise BadMessage(f"{what} chunk {seq} of {owner}'s set; expected chunk {expected}")
        if count == 0:
            raise BadMessage(f"empty chunk {seq} of {owner}'s set")
        if self.blinded_for[owner] + count > self.sizes[owner]:
            raise BadMessage(
                f"{owner}'s set was announced with {self.sizes[owner]} elements; chunk {seq} "
                f"brings it to {self.blinded_for[owner] + count}"
            )
        self._next_seq[owner] = seq + 1
        self.blinded_for[owner] += count
        return self.producer(owner)

    def resolve(self, delivery: Delivery) -> NodeOutcome:
        """Map a delivery by position to this node's sightings; destroys the key."""
        self._require(NodeEvent.DELIVERY)
        try:
            return self._resolve(delivery)
        except BadMessage as exc:
            self._finish(NodePhase.ABORTED, str(exc))
            raise

    def _resolve(self, delivery: Delivery) -> NodeOutcome:
        n = len(self._ids)
        names = self.spec.participants
        matches: list[Match] = []
        counts: dict[str, int] = {}
        mode = self.spec.mode
        if isinstance(delivery, PairwiseResult) and mode == "pairwise":
            for pos, partners in zip(delivery.positions, delivery.partners, strict=True):
                self._check_position(pos, n)
                who = tuple(
                    names[j] for j in partners if 0 <= j < len(names) and names[j] != self.me
                )
                if len(who) != len(partners) or not who or len(set(who)) != len(who):
                    raise BadMessage(f"position {pos}: invalid partner list")
                matches.append(Match(int(self._ids[pos]), who, len(who) + 1))
        elif isinstance(delivery, ThresholdResult) and mode == "threshold":
            assert self.spec.threshold is not None
            # Without counts a position says only "held by at least threshold": none is kept.
            counted: Sequence[int | None] = delivery.counts
            if not self.spec.counts:
                if delivery.counts:
                    raise BadMessage("threshold delivery carries counts the round did not ask for")
                counted = [None] * len(delivery.positions)
            elif len(counted) != len(delivery.positions):
                raise BadMessage("threshold delivery: one count per position is required")
            for pos, count in zip(delivery.positions, counted, strict=True):
                self._check_position(pos, n)
                if count is not None and not self.spec.threshold <= count <= len(names):
                    raise BadMessage(f"position {pos}: count {count} outside the threshold range")
                matches.append(Match(int(self._ids[pos]), (), count))
        elif isinstance(delivery, CountResult) and mode == "count":
            for j, c in delivery.shared.items():
                if not 0 <= j < len(names) or names[j] == self.me or not 0 <= c <= n:
                    raise BadMessage("invalid partner count")
                counts[names[j]] = c
        else:
            raise BadMessage(f"delivery does not fit the round's mode ({mode})")
        if len({m.sighting_id for m in matches}) != len(matches):
            raise BadMessage("a position is delivered twice")
        self._finish(NodePhase.DONE, None)
        return NodeOutcome(tuple(matches), counts)

    def abort(self, reason: str) -> None:
        if not NODE.final(self.phase):  # harmless after the end: the key is already gone
            self._finish(NodePhase.ABORTED, reason)

    def _finish(self, phase: NodePhase, reason: str | None) -> None:
        phase = NODE.move(self._subject, self.phase, phase)
        if self.key is not None:
            self.key.destroy()
        self.key = None
        self._ids = self._ids[:0]
        self.phase = phase
        self.reason = reason

    @staticmethod
    def _check_position(pos: int, n: int) -> None:
        if not 0 <= pos < n:
            raise BadMessage(f"position {pos} outside this node's set of {n}")

    @property
    def _subject(self) -> str:
        return f"round {self.spec.round_id}"

    def _require(self, event: NodeEvent) -> None:
        NODE.require(self._subject, self.phase, event)


def _shuffled(ids: Ids) -> Ids:
    """A uniform permutation from the OS CSPRNG: positions must not reveal import order.

    Sorting by 64-bit random keys is uniform but for key collisions (probability about
    n^2 / 2^65); on ids in a numpy array it costs ~24 bytes per indicator for a moment.
    """
    keys = np.frombuffer(secrets.token_bytes(8 * len(ids)), dtype="<u8")
    return np.asarray(ids, dtype=np.int64)[np.argsort(keys, kind="stable")]


class Stream(enum.Enum):
    """The two streams a node sends chunks on during routing."""

    OWN_SET = "OwnSet"  # its own set, blinded with its key (hop 0)
    REBLIND = "Reblind"  # partners' sets, each chunk re-blinded with its key


@dataclass(frozen=True, slots=True)
class Forward:
    to: str
    owner: str
    seq: int
    elements: bytes
    hop: int = 0  # the hop that produced ``elements`` (0: the owner's own set)
    signature: bytes = b""  # that hop's signature, carried untouched (empty: plaintext mode)


@dataclass(frozen=True, slots=True)
class Caps:
    max_set: int = 5_000_000  # largest set the coordinator accepts from one node
    max_total: int = 20_000_000  # all sets of one round together


class CoordinatorRound:
    def __init__(self, spec: RoundSpec, caps: Caps | None = None) -> None:
        self.spec = spec
        self.caps = caps or Caps()
        self.phase = CoordinatorPhase.PREPARING
        self.sizes: dict[str, int] = {}
        self.reason: str | None = None
        n = len(spec.participants)
        # per owner and hop: next seq expected and elements seen (hop 0 = the owner's own set)
        self._next_seq = [[0] * n for _ in range(n)]
        self._seen = [[0] * n for _ in range(n)]
        # every set's final tags, allocated once the sizes are known: exactly 32 bytes a tag,
        # written in place as the last hop's chunks arrive (no growth, no copy before matching)
        self._final: list[bytearray] = []
        self._chunk_counts: list[list[int]] = [[] for _ in range(n)]  # per owner, by seq
        self._delivered: set[str] = set()

    def on_prepared(self, node: str, size: int) -> bool:
        """Record a node's set size; True once every participant has prepared."""
        self._require(CoordinatorEvent.PREPARED)
        self.spec.index(node)
        if node in self.sizes:
            raise BadMessage(f"{node} prepared twice")
        if not 0 <= size <= self.caps.max_set:
            raise CapExceeded(
                f"{node} announced a set of {size} elements; the coordinator's cap is "
                f"{self.caps.max_set} per node (max_set)"
            )
        self.sizes[node] = size
        if sum(self.sizes.values()) > self.caps.max_total:
            raise CapExceeded(
                f"the round's sets total {sum(self.sizes.values())} elements; the coordinator's "
                f"cap is {self.caps.max_total} (max_total)"
            )
        if len(self.sizes) == len(self.spec.participants):
            self._final = [
                bytearray(self.sizes[name] * ELEMENT_BYTES) for name in self.spec.participants
            ]
            self._move(CoordinatorPhase.ROUTING)
            return True
        return False

    def hop_node(self, owner_index: int, hop: int) -> str:
        """Who holds owner's set at ``hop`` (0 = the owner itself, N-1 = the last re-blinder)."""
        parts = self.spec.participants
        return parts[(owner_index + hop) % len(parts)]

    def on_chunk(
        self,
        sender: str,
        owner: str,
        seq: int,
        elements: bytes,
        stream: Stream,
        *,
        hop: int,
        signature: bytes,
    ) -> Forward | None:
        """A chunk of ``owner``'s set out of ``sender``'s ``stream``, labelled as the output of
        ``hop`` and signed by its producer; where it goes next, if at all. The coordinator
        cannot check the signature's meaning for the nodes: it carries it untouched, and the
        next hop verifies it.

        A refusal names the sender first: it is the reason the whole round fails.
        """
        if stream is Stream.OWN_SET and owner != sender:
            raise BadMessage(f"node {sender} sent a chunk of {owner!r}'s set as its own set")
        if stream is Stream.REBLIND and owner == sender:
            raise BadMessage(f"node {sender} sent its own set back from Reblind")
        try:
            forward = self._route(sender, owner, seq, elements, hop)
        except ProtocolError as exc:
            raise type(exc)(f"node {sender}: {exc}") from None
        return None if forward is None else replace(forward, signature=signature)

    def _route(
        self, sender: str, owner: str, seq: int, elements: bytes, labelled: int
    ) -> Forward | None:
        self._require(CoordinatorEvent.CHUNK)
        n = len(self.spec.participants)
        o = self.spec.index(owner)
        s = self.spec.index(sender)
        hop = (s - o) % n
        if labelled != hop:
            raise BadMessage(
                f"chunk {seq} of {owner}'s set is labelled hop {labelled}; {sender} is hop {hop}"
            )
        if len(elements) % ELEMENT_BYTES or not elements:
            raise BadMessage(f"chunk {seq} of {owner}'s set from {sender} is not whole elements")
        if seq != self._next_seq[o][hop]:
            raise BadMessage(
                f"chunk {seq} of {owner}'s set from {sender}: expected chunk {self._next_seq[o][hop]}"
            )
        count = len(elements) // ELEMENT_BYTES
        if hop > 0:
            if seq >= self._next_seq[o][hop - 1]:
                raise BadMessage(
                    f"chunk {seq} of {owner}'s set from {sender}: it was not sent to {sender}"
                )
            if count != self._chunk_counts[o][seq]:
                raise BadMessage(
                    f"chunk {seq} of {owner}'s set from {sender} has {count} elements; "
                    f"it was sent {self._chunk_counts[o][seq]}"
                )
        if self._seen[o][hop] + count > self.sizes[owner]:
            raise BadMessage(
                f"{sender} sent more of {owner}'s set than the {self.sizes[owner]} announced"
            )
        if hop == 0:
            self._chunk_counts[o].append(count)
        self._next_seq[o][hop] += 1
        self._seen[o][hop] += count
        if hop == n - 1:
            at = (self._seen[o][hop] - count) * ELEMENT_BYTES
            self._final[o][at : at + len(elements)] = elements
            return None
        return Forward(self.hop_node(o, hop + 1), owner, seq, elements, hop)

    def on_stream_end(self, node: str, stream: Stream) -> None:
        """``node`` ended ``stream``: refused if its own set is short or routing is not over."""
        self._require(CoordinatorEvent.STREAM_END)
        i = self.spec.index(node)
        if stream is Stream.OWN_SET:
            seen, size = self._seen[i][0], self.sizes[node]
            if seen != size:
                raise BadMessage(
                    f"node {node} ended its own set after {seen} of the {size} elements it "
                    "announced"
                )
        elif not self.routed():
            raise BadMessage(f"node {node} closed its Reblind stream before routing finished")

    def routed(self) -> bool:
        n = len(self.spec.participants)
        return n > 0 and all(
            self._seen[i][n - 1] == self.sizes[name]
            for i, name in enumerate(self.spec.participants)
        )

    def progress(self) -> tuple[int, int]:
        """(element-hops done, element-hops needed) for progress reports."""
        n = len(self.spec.participants)
        done = sum(sum(self._seen[o][1:]) for o in range(n))
        return done, sum(self.sizes.values()) * (n - 1)

    def final_tags(self) -> dict[str, bytes]:
        """Every participant's final tags by position: a watch round keeps them as filters."""
        self._require(CoordinatorEvent.FINAL_TAGS)
        if not self.routed():
            raise WrongPhase("not every set has been fully blinded yet")
        return {name: bytes(self._final[i]) for i, name in enumerate(self.spec.participants)}

    def deliveries(self) -> dict[str, Delivery]:
        """What each node learns; drops the tags (they never outlive the match)."""
        self._require(CoordinatorEvent.DELIVERIES)
        if not self.routed():
            raise WrongPhase("not every set has been fully blinded yet")
        result = deliveries(
            self._final, self.spec.mode, threshold=self.spec.threshold, counts=self.spec.counts
        )
        self._final = []
        self._move(CoordinatorPhase.DELIVERING)
        return dict(zip(self.spec.participants, result, strict=True))

    def on_delivered(self, node: str) -> bool:
        self._require(CoordinatorEvent.DELIVERED)
        self.spec.index(node)
        self._delivered.add(node)
        if len(self._delivered) == len(self.spec.participants):
            self._move(CoordinatorPhase.DONE)
            return True
        return False

    def fail(self, reason: str) -> None:
        if not COORDINATOR.final(self.phase):  # a late failure changes nothing
            self._move(CoordinatorPhase.FAILED)
            self.reason = reason
            self._final = []

    def _require(self, event: CoordinatorEvent) -> None:
        COORDINATOR.require(f"round {self.spec.round_id}", self.phase, event)

    def _move(self, to: CoordinatorPhase) -> None:
        self.phase = COORDINATOR.move(f"round {self.spec.round_id}", self.phase, to)
