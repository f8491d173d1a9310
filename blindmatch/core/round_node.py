"""One node's own set in a round, without I/O: which indicators it puts in, in which order, and
what a delivery by position means for its sightings.

The round's cryptography is the committee machine's (``committee.CommitteeNode``); this one holds
what the node contributes and the caps that bound what it does for partners.

Node rules (``NodeRound``)
  1. At Prepare: the node checks the participant list against its policy, selects its eligible
     indicators of the round's kinds (its own-set cap) and shuffles their sighting ids with a
     CSPRNG: the shuffled ids *are* the position map. Phase PREPARED.
  2. ``own_points``: the set's H(x) in position order, a chunk at a time, read from the node's
     ``SetSource`` (the store keeps them; a missing or stale one is hashed here).
  3. ``begin(sizes)``: every set's size, as the signed transcript announces it; the node refuses
     (before evaluating anything) a partner set larger than its cap or a total beyond its round
     cap. Phase ROUTING.
  4. ``resolve(delivery)``: positions -> its own sighting ids; the position map is dropped. Phase
     DONE. A delivery that does not fit ends the round all the same (ABORTED).
  ``abort`` at any point drops the position map. Phase ABORTED. Nothing is accepted after
  DONE/ABORTED.

The phases, the messages each one accepts and the moves between them are tables in ``states``.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

from blindmatch.core.errors import BadMessage, CapExceeded, PolicyRefusal
from blindmatch.core.match import CountResult, Delivery, PairwiseResult, ThresholdResult
from blindmatch.core.oprf import hash_indicator
from blindmatch.core.secp256k1 import Point, points_from_bytes
from blindmatch.core.spec import Match, NodeOutcome, Policy, RoundSpec, threshold_counts
from blindmatch.core.states import NODE, NodeEvent, NodePhase

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
    """A set given as a list of candidates (tests, small tools)."""

    candidates: Sequence[Candidate]

    def ids(self, kinds: frozenset[str]) -> Ids:
        return np.array([c[0] for c in self.candidates if c[1] in kinds], dtype=np.int64)

    def rows(self, ids: Ids) -> Sequence[Candidate]:
        by_id = {c[0]: c for c in self.candidates}
        return [by_id[int(i)] for i in ids]


class NodeRound:
    """One node's own set in one round. Holds the position map until resolve/abort.

    The position map is the shuffled sighting ids, 8 bytes per indicator: the indicators
    themselves are read from the ``SetSource`` one chunk at a time as the set is evaluated, so a
    round's memory does not grow with the values (issue 12: a national store of 10M).
    """

    def __init__(self, spec: RoundSpec, me: str, policy: Policy, source: SetSource) -> None:
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
        # per partner: what this node has evaluated for it (the audit log, metrics)
        self.blinded_for: dict[str, int] = {}
        self.reason: str | None = None

    @property
    def positions_held(self) -> int:
        """Entries of the position map still held (0 once the round is over)."""
        return len(self._ids)

    def sighting_ids(self) -> Ids:
        """Position -> sighting id, as fixed at Prepare (a watch epoch maps its alerts by it)."""
        return self._ids

    def own_points(self) -> Iterator[list[Point]]:
        """Each chunk's H(x) in position order, from the store when it has them."""
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

    def begin(self, sizes: Mapping[str, int]) -> None:
        """Every set's size, checked against this node's caps before it evaluates anything."""
        self._require(NodeEvent.BEGIN)
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
        self.blinded_for = {p: 0 for p in sizes if p != self.me}
        self.phase = NODE.move(self._subject, self.phase, NodePhase.ROUTING)

    def resolve(self, delivery: Delivery) -> NodeOutcome:
        """Map a delivery by position to this node's sightings; drops the position map."""
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
        if not NODE.final(self.phase):  # harmless after the end: the position map is gone
            self._finish(NodePhase.ABORTED, reason)

    def _finish(self, phase: NodePhase, reason: str | None) -> None:
        phase = NODE.move(self._subject, self.phase, phase)
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
