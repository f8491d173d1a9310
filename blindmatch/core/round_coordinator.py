"""The coordinator's side of a round, without I/O: feed a message, get what to send next.

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

from dataclasses import dataclass, replace

from blindmatch.core import ring
from blindmatch.core.errors import BadMessage, CapExceeded, ProtocolError, WrongPhase
from blindmatch.core.group import ELEMENT_BYTES
from blindmatch.core.match import Delivery, deliveries
from blindmatch.core.spec import RoundSpec, Stream
from blindmatch.core.states import COORDINATOR, CoordinatorEvent, CoordinatorPhase


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
        self.caps.check(node, size, sum(self.sizes.values()))
        self.sizes[node] = size
        if len(self.sizes) == len(self.spec.participants):
            self._final = [
                bytearray(self.sizes[name] * ELEMENT_BYTES) for name in self.spec.participants
            ]
            self._move(CoordinatorPhase.ROUTING)
            return True
        return False

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
        hop = ring.hop_of(n, o, s)
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
        return Forward(ring.holder(self.spec.participants, o, hop + 1), owner, seq, elements, hop)

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
        self._require_routed(CoordinatorEvent.FINAL_TAGS)
        return {name: bytes(self._final[i]) for i, name in enumerate(self.spec.participants)}

    def deliveries(self) -> dict[str, Delivery]:
        """What each node learns; drops the tags (they never outlive the match)."""
        self._require_routed(CoordinatorEvent.DELIVERIES)
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

    def _require_routed(self, event: CoordinatorEvent) -> None:
        """The final tags are read only once every set has travelled the whole ring."""
        self._require(event)
        if not self.routed():
            raise WrongPhase("not every set has been fully blinded yet")

    def _move(self, to: CoordinatorPhase) -> None:
        self.phase = COORDINATOR.move(f"round {self.spec.round_id}", self.phase, to)
