"""The node's gRPC service: messages in, the round registry and the core, messages out.

Conversions and statuses are ``blindmatch.runtime.serde``'s; which rounds exist and how they end is the
registry's (``node.rounds``); the rules of a round are ``NodeRound``'s. What stays here is the
streaming: a window of blinding tasks in the pool (``node.pool``) per stream, so a round uses
every core while a stalled stream holds no key.
"""

from __future__ import annotations

import collections
import queue
import threading
from collections.abc import Iterator
from concurrent.futures import Future

import grpc

from blindmatch.core.errors import BadMessage, ProtocolError, UnknownRound, WrongPhase
from blindmatch.core.group import ELEMENT_BYTES, InvalidElement
from blindmatch.core.states import Outcome
from blindmatch.runtime import net, serde, status
from blindmatch.v1 import node_pb2, node_pb2_grpc
from node.pool import Blinder
from node.rounds import LiveRound, RoundRegistry, StoreFailed
from node.store import StoreError


class NodeServicer(node_pb2_grpc.NodeServiceServicer):
    def __init__(self, *, name: str, rounds: RoundRegistry, blinder: Blinder) -> None:
        self.name = name
        self.rounds = rounds
        self.blinder = blinder
        self.authority = rounds.authority

    def Prepare(
        self, request: node_pb2.PrepareRequest, context: grpc.ServicerContext
    ) -> node_pb2.PrepareReply:
        caller = net.peer_identity(context)
        with status.refusing(context, ProtocolError):
            signed, spec = serde.prepare_from_proto(request)
            coordinator = caller.name if caller else "(insecure)"
            live = self.rounds.prepare(signed, spec, coordinator, request.timeout_seconds)
        return node_pb2.PrepareReply(size=live.round.size, certificate=self.authority.certificate)

    def OwnSet(
        self, request: node_pb2.RoundRef, context: grpc.ServicerContext
    ) -> Iterator[node_pb2.Chunk]:
        with status.refusing(context, ProtocolError):
            live = self.rounds.get(request.round_id)
            live.live_key()
            batches = live.round.own_batches()
        window: collections.deque[Future[bytes]] = collections.deque()
        seq = 0
        try:
            for items in batches:
                # Exported per batch: a stalled stream must not keep the key alive in this frame.
                key = live.live_key().export()
                # the store keeps v2's H(x): a v1 (watch) round hashes its own on the fly
                window.append(self.blinder.hash_and_blind(key, items))
                del key
                while len(window) > self.blinder.workers * 2:
                    yield self._own_chunk(live, seq, window.popleft())
                    seq += 1
            while window:
                yield self._own_chunk(live, seq, window.popleft())
                seq += 1
        except WrongPhase as exc:
            status.abort(context, exc)
        except (ProtocolError, StoreError) as exc:
            if exc is not live.refusal:  # refused meanwhile: ended already, with its reason
                # The set is read from the store as it streams: a store that fails it fails
                # the round.
                self.rounds.end(live, Outcome.FAILED, f"could not read its own set: {exc}")
            status.abort(context, exc)
        finally:
            for f in window:
                f.cancel()

    def _own_chunk(self, live: LiveRound, seq: int, future: Future[bytes]) -> node_pb2.Chunk:
        elements = future.result()
        live.touch()
        if live.round.key is None:
            if live.refusal is not None:
                raise live.refusal
            raise WrongPhase(f"round {live.round.spec.round_id} ended while its set was streaming")
        signature = self.authority.sign_chunk(live.claim(self.name, 0, seq, elements))
        return serde.chunk_to_proto(self.name, seq, elements, 0, signature)

    def Reblind(
        self, request_iterator: Iterator[node_pb2.ReblindRequest], context: grpc.ServicerContext
    ) -> Iterator[node_pb2.Chunk]:
        first = next(request_iterator, None)
        if first is None or first.WhichOneof("body") != "start":
            status.abort(context, BadMessage("Reblind must open with RoutingStart"))
        with status.refusing(context, ProtocolError):
            live = self.rounds.get(first.start.round_id)
            self.rounds.start_routing(
                live,
                serde.sizes_from_proto(first.start),
                serde.certificates_from_proto(first.start),
            )
        pending: queue.Queue[tuple[str, int, Future[bytes]] | Exception | None] = queue.Queue(
            maxsize=self.blinder.workers * 2
        )
        done = threading.Event()
        context.add_callback(done.set)

        def put(item: tuple[str, int, Future[bytes]] | Exception | None) -> None:
            while not done.is_set():
                try:
                    pending.put(item, timeout=0.2)
                    return
                except queue.Full:
                    continue

        def read() -> None:
            try:
                for msg in request_iterator:
                    chunk = serde.forward_from_proto(self.name, msg)
                    with live.lock:
                        producer = live.round.accept_chunk(
                            chunk.owner, chunk.seq, len(chunk.elements) // ELEMENT_BYTES, chunk.hop
                        )
                        # before blinding: only what its producer signed for this round and hop
                        self.authority.verify_chunk(
                            live.parties.get(producer),
                            live.claim(chunk.owner, chunk.hop, chunk.seq, chunk.elements),
                            chunk.signature,
                        )
                        key = live.live_key().export()
                    put((chunk.owner, chunk.seq, self.blinder.blind(key, chunk.elements)))
                    del key  # this thread waits on the coordinator: it must not keep the key
                put(None)
            except Exception as exc:  # handed to the responding side, which refuses the call
                put(exc)

        reader = threading.Thread(
            target=read, name=f"reblind-{live.round.spec.round_id}", daemon=True
        )
        reader.start()
        try:
            while True:
                try:
                    item = pending.get(timeout=0.2)
                except queue.Empty:
                    if done.is_set():  # the call ended (cancelled): nothing more will come
                        return
                    if live.round.key is None:  # ended meanwhile (Abort, timeout): leave
                        raise WrongPhase(
                            f"round {live.round.spec.round_id} ended while its Reblind stream "
                            "was open"
                        ) from None
                    continue
                if item is None:
                    return
                if isinstance(item, Exception):
                    raise item
                owner, seq, future = item
                elements = future.result()
                live.touch()
                hop = live.round.hop_of(owner)
                signature = self.authority.sign_chunk(live.claim(owner, hop, seq, elements))
                yield serde.chunk_to_proto(owner, seq, elements, hop, signature)
        except grpc.RpcError:
            # The coordinator's side broke off (as when the call is cancelled, above): its
            # Abort, or this node's timeout, ends the round with the reason.
            return
        except (ProtocolError, InvalidElement) as exc:
            if not isinstance(exc, UnknownRound):
                self.rounds.end(live, Outcome.FAILED, f"refused a chunk: {exc}")
            status.abort(context, exc)
        finally:
            done.set()

    def Deliver(
        self, request: node_pb2.DeliverRequest, context: grpc.ServicerContext
    ) -> node_pb2.DeliverReply:
        with status.refusing(context, ProtocolError, StoreFailed):
            recorded = self.rounds.deliver(
                request.round_id, lambda live: serde.delivery_from_proto(request, live.round.spec)
            )
        return node_pb2.DeliverReply(recorded=recorded)

    def Abort(
        self, request: node_pb2.AbortRequest, context: grpc.ServicerContext
    ) -> node_pb2.AbortReply:
        reason = request.reason or "aborted by the coordinator"
        return node_pb2.AbortReply(known=self.rounds.abort(request.round_id, reason))
