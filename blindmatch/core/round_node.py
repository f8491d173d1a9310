"""One node's side of a round, without I/O: feed a message, get what to send next.

Node rules (``NodeRound``)
  1. ``prepare``: the node checks the participant list, mode and kinds against its policy and its
     own-set cap, shuffles the ids of its eligible indicators with a CSPRNG (the shuffled ids
     *are* the position map) and draws a fresh key. Phase PREPARED. It answers with its set size.
  2. ``own_batches``: the shuffled indicators in chunks, read from the node's ``SetSource`` a
     chunk at a time, to be hashed and blinded with the key (by the caller, possibly in worker
     processes) and streamed out in that order (the store keeps protocol v2's H(x), so v1 hashes
     on the fly); ``own_points`` gives v2 its stored H(x) in the same order.
  3. ``begin_routing(sizes)``: the coordinator announces every set's size; the node refuses (before
     blinding anything) a partner set larger than its cap or a total beyond its round cap.
     Phase ROUTING.
  4. ``accept_chunk(owner, seq, count, hop)``: a chunk of a partner's set to re-blind. This node
     is hop h of owner o's set (``hop_of``: participant (o + h) mod N, the arithmetic of ``ring``),
     so the chunk must be the output of hop h - 1, produced by participant (o + h - 1) mod N (the
     owner itself at h = 1):
     ``accept_chunk`` names that producer, and the caller verifies the chunk's signature as that
     party's BEFORE blinding it. Chunks of one set arrive with seq 0, 1, 2, ...; a duplicate, a
     gap, another hop, more elements than announced, or a chunk of its own set is refused. The
     caller blinds the accepted chunk, signs it as hop h and sends it back in order.
  5. ``resolve(delivery)``: positions -> its own sighting ids; the key is destroyed. Phase DONE.
  ``abort`` at any point destroys the key. Phase ABORTED. Nothing is accepted after DONE/ABORTED.

The phases, the messages each one accepts and the moves between them are tables in ``states``.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

from blindmatch.core import ring
from blindmatch.core.errors import BadMessage, CapExceeded, ForgedMessage, PolicyRefusal, WrongPhase
from blindmatch.core.group import RoundKey
from blindmatch.core.match import CountResult, Delivery, PairwiseResult, ThresholdResult
from blindmatch.core.oprf import hash_indicator
from blindmatch.core.secp256k1 import Point, points_from_bytes
from blindmatch.core.spec import Match, NodeOutcome, Policy, RoundSpec, threshold_counts
from blindmatch.core.states import NODE, NodeEvent, NodePhase

# (sighting id, kind, value), optionally with the value's stored H(v) (None: missing or stale);
# that hash is protocol v2's (blindmatch.core.oprf), which a v1 round never blinds
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
        *,
        keyed: bool = True,
    ) -> None:
        """``keyed`` False: protocol v2, where the node's share is its committee machine's and
        this one keeps only the set, the caps and the position map."""
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
        self.key: RoundKey | None = RoundKey.generate() if keyed else None
        self.sizes: dict[str, int] = {}
        self.blinded_for: dict[str, int] = {}
        self._next_seq: dict[str, int] = {}
        self.reason: str | None = None

    @property
    def positions_held(self) -> int:
        """Entries of the position map still held (0 once the round is over)."""
        return len(self._ids)

    def sighting_ids(self) -> Ids:
        """Position -> sighting id, as fixed at Prepare (a watch epoch maps its alerts by it)."""
        return self._ids

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

    def own_points(self) -> Iterator[list[Point]]:
        """Protocol v2: each chunk's H(x) in position order, from the store when it has them."""
        self._require(NodeEvent.OWN_SET)
        for chunk in self._chunks():
            stored = [c[3] if len(c) > 3 else None for c in chunk]
            if all(stored):
                yield points_from_bytes(b"".join(stored))  # type: ignore[arg-type]
            else:  # a hash missing or stale (the store is being filled): the same points
                yield [hash_indicator(c[1], c[2]) for c in chunk]

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
        return ring.hop_of(n, self.spec.index(owner), self.spec.index(self.me))

    def producer(self, owner: str) -> str:
        """Who must have produced the chunks of ``owner``'s set this node receives: the previous
        node of the ring, which is the owner itself when this node is the first hop."""
        o = self.spec.index(owner)
        return ring.holder(self.spec.participants, o, self.hop_of(owner) - 1)

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
            counted = threshold_counts(self.spec, delivery)
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
