"""A protocol v2 round driven by hand against real nodes: the coordinator's part, step by step.

The test holds the coordinator's real certificate (``Federation.as_coordinator``), so a node
serves it; every step is a real RPC. A test runs the steps an honest coordinator runs and
tampers with any message in between, as a hostile coordinator (or one colluding with a node)
would. No threads: each owner's requests are read off its ``Own`` stream, sent to each member's
``Evaluate`` stream, and the answers fed back, one owner at a time.
"""

from __future__ import annotations

import datetime
import queue
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc

from blindmatch.core.committee import (
    PURPOSE,
    CommitteeCoordinator,
    CommitteeNode,
    Prepared,
    RoundTerms,
    SignedAnswer,
    SignedRequest,
    answer_statement,
    request_statement,
)
from blindmatch.core.delivery import NodeDelivery, SignedRoot
from blindmatch.core.evaluation import (
    EvaluationAnswer,
    EvaluationRequest,
    Transcript,
    elements_digest,
)
from blindmatch.core.secp256k1 import POINT_BYTES, Point, points_from_bytes, points_to_bytes
from blindmatch.core.signing import Signer, Trust, spec_digest
from blindmatch.runtime import serde, serde_v2
from blindmatch.runtime.net import TlsConfig
from blindmatch.v1 import node_pb2 as v1
from blindmatch.v2 import node_pb2, node_pb2_grpc

T = 20.0  # seconds: deadline of every call

# (member, owner, answer as the member sent it) -> what reaches the owner
AnswerTamper = Callable[[str, str, node_pb2.SignedAnswer], node_pb2.SignedAnswer]
# (owner, member, request as the owner sent it) -> what reaches the member
RequestTamper = Callable[[str, str, node_pb2.SignedRequest], node_pb2.SignedRequest]


def _close(q: queue.SimpleQueue[Any]) -> Iterator[Any]:
    while (item := q.get()) is not None:
        yield item


@dataclass
class OwnCall:
    """An owner's open ``Own`` stream: the requests it sent, and a way to feed it answers."""

    inbox: queue.SimpleQueue[Any]
    call: Any
    requests: list[node_pb2.SignedRequest] = field(default_factory=list)

    def read_requests(self) -> list[node_pb2.SignedRequest]:
        """Every request the owner sends before it waits: its chunks, then its proved checks.
        An owner has at most 8 chunks out without answers (node/committee.py), so a hand round
        keeps each set within 8 chunks: reading them all first would wait for ever."""
        for out in self.call:
            assert out.WhichOneof("body") == "request", out
            self.requests.append(out.request)
            if out.request.request.proved:
                break
        return self.requests

    def answer(self, answers: Sequence[node_pb2.SignedAnswer]) -> node_pb2.SignedRoot:
        """Feed ``answers``; the signed root the owner then sends (raises its refusal)."""
        for a in answers:
            self.inbox.put(node_pb2.OwnIn(answer=a))
        out = next(self.call)
        assert out.WhichOneof("body") == "root", out
        self.inbox.put(None)
        return out.root

    def cancel(self) -> None:
        self.inbox.put(None)
        self.call.cancel()


class HandRound:
    """One round, driven step by step. ``prepare_request`` is the signed Prepare (v1's message)."""

    def __init__(
        self,
        stubs: Mapping[str, node_pb2_grpc.NodeServiceStub | Puppet],
        prepare_request: v1.PrepareRequest,
        certificates: Mapping[str, bytes],
    ) -> None:
        self.stubs = dict(stubs)
        self.prepare_request = prepare_request
        self.spec = serde.spec_from_bytes(prepare_request.signed_spec.spec)
        self.terms = RoundTerms.of(self.spec, spec_digest(prepare_request.signed_spec.spec))
        self.coordinator = CommitteeCoordinator(self.terms)
        self.certificates = dict(certificates)
        self.transcript: Transcript | None = None
        self.signatures: dict[str, bytes] = {}
        self.roots: dict[str, SignedRoot] = {}

    @property
    def round_id(self) -> str:
        return self.spec.round_id

    @property
    def participants(self) -> tuple[str, ...]:
        return self.spec.participants

    def stub(self, name: str) -> Any:
        """A real node's stub, or a puppet."""
        return self.stubs[name]

    # --- the steps --------------------------------------------------------------------------

    def prepare(self) -> dict[str, node_pb2.PrepareReply]:
        replies = {
            n: self.stub(n).Prepare(self.prepare_request, timeout=T) for n in self.participants
        }
        for name, reply in replies.items():
            commitment = (
                serde_v2.commitment_from_proto(reply.commitment)
                if reply.HasField("commitment")
                else None
            )
            caps = serde_v2.check_caps_from_proto(reply.check_caps)
            transcript = self.coordinator.on_prepared(Prepared(name, reply.size, commitment, caps))
            if transcript is not None:
                self.transcript = transcript
        return replies

    def transcript_request(
        self, transcript: Transcript | None = None
    ) -> node_pb2.TranscriptRequest:
        t = transcript or self.transcript
        assert t is not None
        return node_pb2.TranscriptRequest(
            round_id=self.round_id,
            transcript=serde_v2.transcript_to_proto(t),
            certificates=self.certificates,
        )

    def sign(self, shown: Mapping[str, Transcript] | None = None) -> dict[str, bytes]:
        """Every node's signature over the transcript (``shown``: another one to some)."""
        for name in self.participants:
            request = self.transcript_request((shown or {}).get(name))
            self.signatures[name] = self.stub(name).SignTranscript(request, timeout=T).signature
        return self.signatures

    def begin(self, signatures: Mapping[str, bytes] | None = None) -> None:
        request = node_pb2.BeginRequest(
            round_id=self.round_id, signatures=signatures or self.signatures
        )
        for name in self.participants:
            self.stub(name).Begin(request, timeout=T)

    def open_own(self, owner: str) -> OwnCall:
        inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        inbox.put(node_pb2.OwnIn(start=node_pb2.OwnStart(round_id=self.round_id)))
        return OwnCall(inbox, self.stub(owner).Own(_close(inbox), timeout=T))

    def evaluate(
        self, member: str, requests: Sequence[node_pb2.SignedRequest]
    ) -> list[node_pb2.SignedAnswer]:
        """``member``'s answers to ``requests``, on one Evaluate stream."""
        return list(self.stub(member).Evaluate(iter(requests), timeout=T))

    def members_for(self, owner: str) -> list[str]:
        return [m for m in self.terms.committee if m != owner]

    def own(
        self,
        owner: str,
        *,
        answers: AnswerTamper | None = None,
        requests: RequestTamper | None = None,
    ) -> node_pb2.SignedRoot:
        """The owner's whole evaluation: its requests to every other member, their answers
        back; its signed root (raises the owner's refusal)."""
        own = self.open_own(owner)
        sent = own.read_requests()
        replies: list[node_pb2.SignedAnswer] = []
        for member in self.members_for(owner):
            to_member = [requests(owner, member, r) if requests else r for r in sent]
            for a in self.evaluate(member, to_member):
                replies.append(answers(member, owner, a) if answers else a)
        root = own.answer(replies)
        self.roots[owner] = serde_v2.root_from_proto(root)
        return root

    def reveal(self) -> dict[str, node_pb2.Tags]:
        request = node_pb2.RevealRequest(
            round_id=self.round_id, roots=serde_v2.roots_to_proto(self.roots)
        )
        return {n: self.stub(n).Reveal(request, timeout=T) for n in self.participants}

    def match(
        self, tags: Mapping[str, node_pb2.Tags]
    ) -> dict[str, tuple[NodeDelivery, dict[str, SignedRoot]]]:
        for name in self.participants:
            self.coordinator.on_root(self.roots[name])
        deliveries = None
        for name in self.participants:
            deliveries = self.coordinator.on_tags(serde_v2.tags_from_proto(tags[name]))
        assert deliveries is not None
        return deliveries

    def deliver(
        self, deliveries: Mapping[str, tuple[NodeDelivery, dict[str, SignedRoot]]]
    ) -> dict[str, int]:
        recorded = {}
        for name, (delivery, roots) in deliveries.items():
            request = serde_v2.delivery_to_proto(delivery, roots)
            recorded[name] = self.stub(name).Deliver(request, timeout=T).recorded
        return recorded

    def run(self, **tamper: Any) -> dict[str, int]:
        """The whole round as an honest coordinator runs it (but for ``tamper``, passed to
        ``own``); the results each node recorded."""
        self.prepare()
        self.sign()
        self.begin()
        for owner in self.participants:
            self.own(owner, **tamper)
        return self.deliver(self.match(self.reveal()))

    def abort(self, reason: str = "test over") -> dict[str, bool]:
        """Abort on every participant; whether each still knew the round."""
        request = v1.AbortRequest(round_id=self.round_id, reason=reason)
        return {n: self.stub(n).Abort(request, timeout=T).known for n in self.participants}


class Puppet:
    """A participant the test plays itself, with a real node's certificate and key: a node that
    colludes with the coordinator. It answers as the stubs of real nodes do (the same method
    names and messages) through the core's own machine, which a test may bypass at any step.
    """

    def __init__(self, tls: TlsConfig, size: int) -> None:
        self.signer = Signer(tls.cert, tls.key)
        self.trust = Trust(tls.ca)
        self.name = self.signer.identity.name
        self.size = size
        self.node: CommitteeNode | None = None

    @property
    def machine(self) -> CommitteeNode:
        assert self.node is not None, "Prepare first"
        return self.node

    def Prepare(self, request: v1.PrepareRequest, timeout: float = T) -> node_pb2.PrepareReply:
        signed, spec = serde.prepare_from_proto(request)
        self.node = CommitteeNode(
            RoundTerms.of(spec, signed.digest), self.name, self.signer, self.size
        )
        prepared = self.node.prepared()
        reply = node_pb2.PrepareReply(size=self.size, certificate=self.signer.cert_pem, protocol=2)
        if prepared.commitment is not None:
            reply.commitment.CopyFrom(serde_v2.commitment_to_proto(prepared.commitment))
        return reply

    def SignTranscript(
        self, request: node_pb2.TranscriptRequest, timeout: float = T
    ) -> node_pb2.TranscriptReply:
        now = datetime.datetime.now(datetime.UTC)
        parties = {
            name: self.trust.party(cert, now=now, role="node", names=(name,))
            for name, cert in request.certificates.items()
        }
        transcript = serde_v2.transcript_from_proto(request.transcript)
        return node_pb2.TranscriptReply(signature=self.machine.sign_transcript(transcript, parties))

    def Begin(self, request: node_pb2.BeginRequest, timeout: float = T) -> node_pb2.BeginReply:
        self.machine.begin(dict(request.signatures))
        return node_pb2.BeginReply()

    def Evaluate(
        self, requests: Iterator[node_pb2.SignedRequest], timeout: float = T
    ) -> list[node_pb2.SignedAnswer]:
        return [
            serde_v2.answer_to_proto(self.machine.on_request(serde_v2.request_from_proto(r)))
            for r in requests
        ]

    def Abort(self, request: v1.AbortRequest, timeout: float = T) -> v1.AbortReply:
        known = self.node is not None
        if self.node is not None:
            self.node.abort()
        return v1.AbortReply(known=known)

    def bent(
        self,
        requests: Sequence[node_pb2.SignedRequest],
        corrupt: Callable[[int, Point], Point],
    ) -> list[node_pb2.SignedAnswer]:
        """The puppet's answers to an owner's ``requests``, each element's honest answer passed
        through ``corrupt`` (its index in the set, the point) and the whole signed with the
        puppet's real key; the subset checks (the proved request) answered honestly."""
        replies = []
        start = 0
        for request in requests:
            honest = self.Evaluate(iter([request]))[0]
            if request.request.proved:
                replies.append(honest)
                continue
            ys = points_from_bytes(honest.points)
            points = points_to_bytes([corrupt(start + i, y) for i, y in enumerate(ys)])
            start += len(ys)
            digest = serde_v2.request_from_proto(request).request.digest()
            answer = EvaluationAnswer(digest, self.name, elements_digest(points))
            replies.append(self.sign_answer(answer, points))
        return replies

    def sign_answer(self, answer: EvaluationAnswer, points: bytes) -> node_pb2.SignedAnswer:
        """An answer of the puppet's own making, signed with its real key."""
        return serde_v2.answer_to_proto(
            SignedAnswer(answer, points, self.signer.sign(answer_statement(answer)))
        )


def v2_stubs(channels: Mapping[str, grpc.Channel]) -> dict[str, node_pb2_grpc.NodeServiceStub]:
    return {name: node_pb2_grpc.NodeServiceStub(ch) for name, ch in channels.items()}


# --- added for tests/test_hostile.py: a puppet that owns a set and ends its round ---------------


class OwningPuppet(Puppet):
    """A puppet that also owns a set (``hashes``, its H(x) as a real node's store keeps them):
    its requests go to the real members (``own``), and it takes Reveal, Deliver and Abort as a
    real node does, so a round of real nodes and puppets can run to its end. ``request`` signs
    any request the test makes up, with the puppet's real key, under its transcript."""

    def __init__(self, tls: TlsConfig, hashes: Sequence[Point]) -> None:
        super().__init__(tls, len(hashes))
        self.hashes = list(hashes)
        self.sent: list[node_pb2.SignedRequest] = []  # by ``own``, to every member
        self.answers: list[node_pb2.SignedAnswer] = []  # the members' answers ``own`` took

    def own(self, r: HandRound) -> node_pb2.SignedRoot:
        """The puppet's whole evaluation through every other member of ``r``: its signed root
        (raises the member's refusal, or the puppet's own if an answer fails verification)."""
        machine = self.machine
        step = r.spec.chunk_size
        sent = [
            machine.request(self.hashes[i : i + step]) for i in range(0, len(self.hashes), step)
        ]
        sent.append(machine.challenge())
        self.sent = [serde_v2.request_to_proto(s) for s in sent]
        for member in r.members_for(self.name):
            for answer in r.evaluate(member, self.sent):
                self.answers.append(answer)
                machine.on_answer(serde_v2.answer_from_proto(answer))
        root = machine.root()
        r.roots[self.name] = root
        return serde_v2.root_to_proto(root)

    def request(
        self,
        seq: int,
        points: bytes,
        *,
        count: int | None = None,
        proved: bool = False,
        transcript: bytes | None = None,
        ident: str | None = None,
        requester: str | None = None,
        by: Signer | None = None,
    ) -> node_pb2.SignedRequest:
        """A request of the test's making, in the puppet's name unless ``requester`` names
        another: ``count`` (default: the whole points in ``points``), the transcript the puppet
        signed and its round unless given, signed by ``by`` (default: the puppet itself)."""
        machine = self.machine
        assert machine.transcript is not None, "SignTranscript first"
        request = EvaluationRequest(
            PURPOSE,
            machine.terms.round_id if ident is None else ident,
            machine.transcript.digest() if transcript is None else transcript,
            self.name if requester is None else requester,
            seq,
            len(points) // POINT_BYTES if count is None else count,
            elements_digest(points),
            proved,
            "set",
        )
        signature = (by or self.signer).sign(request_statement(request))
        return serde_v2.request_to_proto(SignedRequest(request, points, signature))

    def Reveal(self, request: node_pb2.RevealRequest, timeout: float = T) -> node_pb2.Tags:
        roots = serde_v2.roots_from_proto(request.roots)
        return serde_v2.tags_to_proto(self.machine.reveal(roots))

    def Deliver(self, request: node_pb2.DeliverRequest, timeout: float = T) -> v1.DeliverReply:
        delivery, roots = serde_v2.delivery_from_proto(request, self.name)
        return v1.DeliverReply(recorded=len(self.machine.deliver(delivery, roots)))

    def Abort(self, request: v1.AbortRequest, timeout: float = T) -> v1.AbortReply:
        known = self.node is not None
        if known:
            self.machine.abort()
        return v1.AbortReply(known=known)
