"""The node's protocol v2 service (proto/blindmatch/v2): messages in, the registry and the
committee machine (``core.committee``) out.

A round as this node sees it: Prepare (its set fixed, its share drawn when a member),
SignTranscript, Begin (caps and budgets charged), then two streams at once: ``Own`` sends its
signed requests and takes the members' answers, ``Evaluate`` answers partners' requests as a
member. ``Own`` ends with the signed root of its verified tags, or with the failure that keeps
them in (DATA_LOSS, naming the member whose signed answers were wrong). Reveal, then Deliver.

Which rounds exist and how they end is the registry's (``node.rounds``).
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable, Iterator

import grpc

from blindmatch.core.committee import SignedAnswer
from blindmatch.core.errors import BadMessage, ProtocolError, UnknownRound, WrongPhase
from blindmatch.core.match import Delivery
from blindmatch.core.owner import VerificationFailed
from blindmatch.core.states import Outcome
from blindmatch.runtime import net, serde, serde_v2, status
from blindmatch.v1 import node_pb2 as v1
from blindmatch.v2 import node_pb2, node_pb2_grpc
from node.rounds import LiveRound, RoundRegistry, StoreFailed
from node.store import StoreError

_POLL = 0.2  # seconds between looks at a round that may have ended meanwhile
# Chunks an owner has out without every answer: enough to keep every member busy while answers
# travel, few enough that what they hold (r⁻¹ and hashes, ~200 bytes an element) stays small.
_WINDOW = 8


class CommitteeServicer(node_pb2_grpc.NodeServiceServicer):
    def __init__(self, *, name: str, rounds: RoundRegistry) -> None:
        self.name = name
        self.rounds = rounds
        self.authority = rounds.authority

    def Prepare(
        self, request: v1.PrepareRequest, context: grpc.ServicerContext
    ) -> node_pb2.PrepareReply:
        caller = net.peer_identity(context)
        with status.refusing(context, ProtocolError):
            signed, spec = serde.prepare_from_proto(request)
            coordinator = caller.name if caller else "(insecure)"
            live = self.rounds.prepare(signed, spec, coordinator, request.timeout_seconds)
            prepared = live.committee.prepared()
        reply = node_pb2.PrepareReply(
            size=prepared.size,
            certificate=self.authority.certificate,
            protocol=serde_v2.PROTOCOL,
            check_caps=prepared.check_caps,
        )
        if prepared.commitment is not None:
            reply.commitment.CopyFrom(serde_v2.commitment_to_proto(prepared.commitment))
        return reply

    def SignTranscript(
        self, request: node_pb2.TranscriptRequest, context: grpc.ServicerContext
    ) -> node_pb2.TranscriptReply:
        with status.refusing(context, ProtocolError):
            live = self.rounds.get(request.round_id)
            transcript = serde_v2.transcript_from_proto(request.transcript)
            signature = self.rounds.sign_transcript(live, transcript, dict(request.certificates))
        return node_pb2.TranscriptReply(signature=signature)

    def Begin(
        self, request: node_pb2.BeginRequest, context: grpc.ServicerContext
    ) -> node_pb2.BeginReply:
        with status.refusing(context, ProtocolError):
            live = self.rounds.get(request.round_id)
            self.rounds.begin(live, dict(request.signatures))
        return node_pb2.BeginReply()

    def Evaluate(
        self, request_iterator: Iterator[node_pb2.SignedRequest], context: grpc.ServicerContext
    ) -> Iterator[node_pb2.SignedAnswer]:
        """Partners' requests, answered in order; the first refusal ends the stream and the
        round (an equivocation, a request over its budget or a malformed one is never answered).
        The stream ends too when its round ends otherwise (Abort, timeout): nothing here holds
        the round while the coordinator keeps the stream open and silent."""
        # The first request is read here: it names the round, and a stream refused at once has
        # no reader thread left behind on the call.
        first = next(request_iterator, None)
        if first is None:
            return
        round_id = first.request.ident
        with status.refusing(context, ProtocolError):
            answer = self._answer(round_id, first)
        yield serde_v2.answer_to_proto(answer)
        inbox: queue.Queue[node_pb2.SignedRequest | Exception | None] = queue.Queue(maxsize=4)
        done = threading.Event()
        context.add_callback(done.set)

        def read() -> None:
            try:
                for msg in request_iterator:
                    while not done.is_set():
                        try:
                            inbox.put(msg, timeout=_POLL)
                            break
                        except queue.Full:
                            continue
                item: Exception | None = None
            except Exception as exc:  # handed to the responding side, which refuses the call
                item = exc
            with contextlib.suppress(queue.Full):
                inbox.put(item, timeout=_POLL)

        threading.Thread(target=read, name=f"evaluate-{self.name}", daemon=True).start()
        try:
            while True:
                try:
                    item = inbox.get(timeout=_POLL)
                except queue.Empty:
                    if done.is_set():
                        return
                    if self.rounds.live.find(round_id) is None:
                        # ended meanwhile (Abort, timeout): say why, and let go of it; a
                        # silent stream does not push the round's deadline back
                        with status.refusing(context, ProtocolError):
                            self.rounds.get(round_id)
                    continue
                if item is None:
                    return
                if isinstance(item, grpc.RpcError):
                    return  # the coordinator broke off: its Abort or this node's timeout ends it
                if isinstance(item, Exception):
                    raise item
                with status.refusing(context, ProtocolError):
                    if item.request.ident != round_id:
                        raise BadMessage("one Evaluate stream carries the requests of one round")
                    answer = self._answer(round_id, item)
                yield serde_v2.answer_to_proto(answer)
        finally:
            done.set()

    def _answer(self, round_id: str, message: node_pb2.SignedRequest) -> SignedAnswer:
        """A member's answer to one request; any refusal ends the round, kept as its refusal."""
        live = self.rounds.get(round_id)
        try:
            live.check_live()
            signed = serde_v2.request_from_proto(message)
            committee = live.committee
            answer = committee.on_request(signed)
        except ProtocolError as exc:
            if not isinstance(exc, UnknownRound | WrongPhase) and exc is not live.refusal:
                # later calls for the round hear this refusal, not "no round"
                live.refusal = exc
                self.rounds.end(live, Outcome.FAILED, f"refused a request: {exc}")
            raise
        with live.lock:  # what this member was charged for the requester, repeats free
            requester = signed.request.requester
            live.round.blinded_for[requester] = committee.charged(requester)
        return answer

    def Own(
        self, request_iterator: Iterator[node_pb2.OwnIn], context: grpc.ServicerContext
    ) -> Iterator[node_pb2.OwnOut]:
        first = next(request_iterator, None)
        if first is None or first.WhichOneof("body") != "start":
            status.abort(context, BadMessage("Own must open with OwnStart"))
        with status.refusing(context, ProtocolError):
            live = self.rounds.get(first.start.round_id)
            live.check_live()
            committee = live.committee
        heard = threading.Condition()  # the reader has fed an answer, failed or finished
        outcome: list[Exception | None] = []  # the reader's end: None once every answer is in
        done = threading.Event()
        context.add_callback(done.set)

        def read() -> None:
            end: Exception | None = None
            try:
                for msg in request_iterator:
                    if msg.WhichOneof("body") != "answer":
                        raise BadMessage("after OwnStart, Own carries only answers")
                    answer = serde_v2.answer_from_proto(msg.answer)
                    with live.lock:
                        live.check_live()
                        committee.on_answer(answer)
                        complete = committee.answered
                    live.touch()
                    with heard:
                        heard.notify_all()
                    if complete:
                        break
                else:
                    end = BadMessage("the coordinator closed Own before every answer was in")
            except Exception as exc:  # handed to the responding side, which refuses the call
                end = exc
            with heard:
                outcome.append(end)
                heard.notify_all()

        def wait(ready: Callable[[], bool]) -> bool:
            """Until ``ready``; False if the call ended meanwhile. Raises the reader's failure."""
            with heard:
                while not ready():
                    if outcome and outcome[0] is not None:
                        raise outcome[0]
                    if done.is_set():
                        return False
                    heard.wait(_POLL)
                    live.check_live()
            return True

        threading.Thread(target=read, name=f"own-{self.name}", daemon=True).start()
        try:
            for points in live.round.own_points():
                # A bounded window of chunks out: each waiting one holds its r⁻¹ and hashes.
                if not wait(lambda: committee.waiting < _WINDOW):
                    return
                with live.lock:
                    live.check_live()
                    signed = committee.request(points)
                live.touch()
                yield node_pb2.OwnOut(request=serde_v2.request_to_proto(signed))
            with live.lock:
                live.check_live()
                signed = committee.challenge()
            yield node_pb2.OwnOut(request=serde_v2.request_to_proto(signed))
            if not wait(lambda: bool(outcome)):
                return
            if outcome[0] is not None:
                raise outcome[0]
            with live.lock:
                root = committee.root()
            yield node_pb2.OwnOut(root=serde_v2.root_to_proto(root))
        except grpc.RpcError:
            return  # the coordinator broke off: its Abort, or this node's timeout, ends the round
        except (ProtocolError, StoreError) as exc:
            if not isinstance(exc, UnknownRound | WrongPhase) and exc is not live.refusal:
                what = "its tags failed verification" if isinstance(exc, VerificationFailed) else ""
                if isinstance(exc, ProtocolError):
                    live.refusal = exc
                self.rounds.end(live, Outcome.FAILED, f"{what or 'refused an answer'}: {exc}")
            status.abort(context, exc)
        finally:
            done.set()

    def Reveal(
        self, request: node_pb2.RevealRequest, context: grpc.ServicerContext
    ) -> node_pb2.Tags:
        with status.refusing(context, ProtocolError):
            live = self.rounds.get(request.round_id)
            roots = serde_v2.roots_from_proto(request.roots)
            try:
                with live.lock:
                    live.check_live()
                    tags = live.committee.reveal(roots)
            except ProtocolError as exc:
                if not isinstance(exc, UnknownRound | WrongPhase):
                    self.rounds.end(live, Outcome.FAILED, f"refused the tag roots: {exc}")
                raise
        return serde_v2.tags_to_proto(tags)

    def Deliver(
        self, request: node_pb2.DeliverRequest, context: grpc.ServicerContext
    ) -> v1.DeliverReply:
        def decode(live: LiveRound) -> Delivery:
            delivery, roots = serde_v2.delivery_from_proto(request, self.name)
            committee = live.committee
            return committee.by_position(committee.deliver(delivery, roots))

        with status.refusing(context, ProtocolError, StoreFailed):
            recorded = self.rounds.deliver(request.round_id, decode)
        return v1.DeliverReply(recorded=recorded)

    def Abort(self, request: v1.AbortRequest, context: grpc.ServicerContext) -> v1.AbortReply:
        reason = request.reason or "aborted by the coordinator"
        return v1.AbortReply(known=self.rounds.abort(request.round_id, reason))
