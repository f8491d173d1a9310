"""An in-memory link that drives NodeRounds and a CoordinatorRound through a whole round.

No I/O and no threads (h11 style): every message the real services would send over gRPC is a
method call here. Each node has a FIFO inbox, as a gRPC stream does, and a random scheduler picks
which pending message moves next, so chunks of different sets interleave as they do when every
node works at once. The link also records which keys each chunk carries on arrival, so tests can
check the routing from the data itself rather than from the coordinator's arithmetic.

Each node's two streams are modelled too: its own set goes out on OwnSet, which ends once the set
is sent; partners' chunks come back on Reblind, which ends once routing is over.

Any ProtocolError fails the coordinator and aborts every node, as the real coordinator does, and
is raised again for the test to inspect.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Mapping, Sequence

from blindmatch.core.errors import ProtocolError
from blindmatch.core.group import ELEMENT_BYTES, RoundKey, hash_and_blind_packed, split_elements
from blindmatch.core.round_coordinator import Caps, CoordinatorRound, Forward
from blindmatch.core.round_node import ListedSet, NodeRound
from blindmatch.core.spec import NodeOutcome, Policy, RoundSpec, Stream

Candidate = tuple[int, str, str]  # (sighting id, kind, canonical value)
Party = tuple[Policy, Sequence[Candidate]]


class FakeLink:
    def __init__(
        self,
        spec: RoundSpec,
        parties: Mapping[str, Party],
        *,
        caps: Caps | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.spec = spec
        self.parties = parties
        self.coordinator = CoordinatorRound(spec, caps)
        self.rng = rng or random.Random(0)
        self.nodes: dict[str, NodeRound] = {}
        self.keys: dict[str, RoundKey] = {}  # every key drawn, kept to check it gets destroyed
        self.outbox: dict[str, deque[tuple[int, bytes]]] = {}  # own chunks not yet sent
        self.open_streams: set[tuple[str, Stream]] = set()
        self.inbox: dict[str, deque[Forward]] = {name: deque() for name in spec.participants}
        # (owner, seq) -> names whose keys the chunk carries, in the order they were applied
        self.applied: dict[tuple[str, int], list[str]] = {}
        # node -> (owner, keys the chunk carried when it arrived) for every chunk it re-blinded
        self.received: dict[str, list[tuple[str, frozenset[str]]]] = {
            name: [] for name in spec.participants
        }

    # --- the steps of a round; each one is what one RPC does -------------------------------------

    def prepare(self) -> None:
        """Prepare every node, then announce the sizes (RoutingStart)."""
        for name in self.spec.participants:
            policy, candidates = self.parties[name]
            node = NodeRound(self.spec, name, policy, ListedSet(candidates))
            self.nodes[name] = node
            key = self.keys[name] = node.live_key()
            chunks = [hash_and_blind_packed(key.export(), b) for b in node.own_batches()]
            self.outbox[name] = deque(enumerate(chunks))
            self.open_streams |= {(name, Stream.OWN_SET), (name, Stream.REBLIND)}
            self.coordinator.on_prepared(name, node.size)
        for node in self.nodes.values():
            node.begin_routing(self.coordinator.sizes)

    def send_own(self, name: str) -> None:
        """The next chunk of ``name``'s own blinded set reaches the coordinator (OwnSet)."""
        seq, elements = self.outbox[name].popleft()
        self.applied[(name, seq)] = [name]
        self.to_coordinator(name, name, seq, elements, Stream.OWN_SET, hop=0)

    def reblind(self, name: str) -> None:
        """``name`` takes the next chunk from its inbox, blinds it and sends it back (Reblind)."""
        fwd = self.inbox[name].popleft()
        node = self.nodes[name]
        producer = node.accept_chunk(
            fwd.owner, fwd.seq, len(fwd.elements) // ELEMENT_BYTES, fwd.hop
        )
        carried = self.applied.setdefault((fwd.owner, fwd.seq), [])
        # the core names as producer the node that really applied the last key
        assert producer == carried[-1], (producer, carried)
        self.received[name].append((fwd.owner, frozenset(carried)))
        blinded = b"".join(node.live_key().blind(split_elements(fwd.elements)))
        carried.append(name)
        hop = node.hop_of(fwd.owner)
        self.to_coordinator(name, fwd.owner, fwd.seq, blinded, Stream.REBLIND, hop=hop)

    def to_coordinator(
        self, sender: str, owner: str, seq: int, elements: bytes, stream: Stream, *, hop: int
    ) -> None:
        fwd = self.coordinator.on_chunk(
            sender, owner, seq, elements, stream, hop=hop, signature=b""
        )
        if fwd is not None:
            self.inbox[fwd.to].append(fwd)

    def end_stream(self, name: str, stream: Stream) -> None:
        """``name`` ends one of its streams (the gRPC call completes without an error)."""
        self.open_streams.remove((name, stream))
        self.coordinator.on_stream_end(name, stream)

    def route(self) -> None:
        """Move messages in random order until nothing is pending, then end every stream."""
        while True:
            pending = [(True, n) for n, box in self.outbox.items() if box]
            pending += [(False, n) for n, box in self.inbox.items() if box]
            sent = [n for n, box in self.outbox.items() if not box]
            pending += [(True, n) for n in sent if (n, Stream.OWN_SET) in self.open_streams]
            if not pending:
                break
            own, name = self.rng.choice(pending)
            if own and self.outbox[name]:
                self.send_own(name)
            elif own:
                self.end_stream(name, Stream.OWN_SET)
            else:
                self.reblind(name)
        for name in self.spec.participants:  # the coordinator closes them once every set is final
            if (name, Stream.REBLIND) in self.open_streams:
                self.end_stream(name, Stream.REBLIND)

    def deliver(self) -> dict[str, NodeOutcome]:
        outcomes: dict[str, NodeOutcome] = {}
        for name, delivery in self.coordinator.deliveries().items():
            outcomes[name] = self.nodes[name].resolve(delivery)
            self.coordinator.on_delivered(name)
        return outcomes

    def abort(self, reason: str) -> None:
        self.coordinator.fail(reason)
        for node in self.nodes.values():
            node.abort(reason)

    def run(self) -> dict[str, NodeOutcome]:
        try:
            self.prepare()
            self.route()
            return self.deliver()
        except ProtocolError as exc:
            self.abort(str(exc))
            raise


def run_round(
    spec: RoundSpec,
    nodes: Mapping[str, Party],
    *,
    caps: Caps | None = None,
    rng: random.Random | None = None,
) -> dict[str, NodeOutcome]:
    """One whole round over the fake link: every node's outcome, by name."""
    return FakeLink(spec, nodes, caps=caps, rng=rng).run()
