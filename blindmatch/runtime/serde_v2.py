"""Where protocol v2's messages (proto/blindmatch/v2) meet the core's types (``core.committee``).

Same rules as ``serde`` for v1: the core never sees a message; converters from the wire check
what the core's types cannot (whole points, lengths that must agree, integers in range) and raise
``BadMessage``. Signatures and proofs are verified by the core, not here. The bounds here are what
no round can exceed (a set of MAX_SET, 64 participants, the largest request); what only the
round's own state knows (its sizes, its roots) the core checks (``delivery``, ``evaluation``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Final

import numpy as np

from blindmatch.core.checker import SealedAlert
from blindmatch.core.committee import SignedAnswer, SignedRequest, Tags
from blindmatch.core.delivery import Inclusion, NodeDelivery, SignedRoot
from blindmatch.core.epoch import SignedSealed
from blindmatch.core.errors import BadMessage
from blindmatch.core.evaluation import (
    MAX_SET,
    Commitment,
    EvaluationAnswer,
    EvaluationRequest,
    Transcript,
)
from blindmatch.core.match import MAX_PARTICIPANTS
from blindmatch.core.oprf import LAMBDA, TAG_BYTES
from blindmatch.core.secp256k1 import POINT_BYTES
from blindmatch.core.spec import MAX_CHUNK
from blindmatch.core.watch_rules import MAX_CHECK_VALUES
from blindmatch.core.watch_sealed import EpochFilter, SignedFilter, message_count
from blindmatch.runtime.serde import in_range
from blindmatch.v2 import node_pb2, watch_pb2

PROTOCOL: Final = 2
# The most points one request carries: a chunk of a set, the λ subset checks, or a whole watch
# check (one chunk of its values). The ledgers charge what a request asks for, but a count past
# every request that can exist is refused before anything is read into it.
MAX_REQUEST_POINTS: Final = max(MAX_CHUNK, LAMBDA, MAX_CHECK_VALUES)


def commitment_to_proto(c: Commitment) -> node_pb2.Commitment:
    return node_pb2.Commitment(member=c.member, point=c.point, proof=c.proof)


def commitment_from_proto(msg: node_pb2.Commitment) -> Commitment:
    return Commitment(msg.member, msg.point, msg.proof)


def transcript_to_proto(t: Transcript) -> node_pb2.Transcript:
    return node_pb2.Transcript(
        purpose=t.purpose,
        ident=t.ident,
        spec_digest=t.spec_digest,
        commitments=[commitment_to_proto(c) for c in t.commitments],
        sizes=dict(t.sizes),
        holder_sizes=dict(t.holder_sizes),
        caps=[node_pb2.Cap(holder=h, checker=c, cap=n) for (h, c), n in sorted(t.caps.items())],
    )


def transcript_from_proto(msg: node_pb2.Transcript) -> Transcript:
    caps: dict[tuple[str, str], int] = {}
    for cap in msg.caps:
        if (cap.holder, cap.checker) in caps:
            raise BadMessage(f"two caps of {cap.holder} for {cap.checker}")
        caps[cap.holder, cap.checker] = cap.cap
    return Transcript(
        msg.purpose,
        msg.ident,
        msg.spec_digest,
        tuple(commitment_from_proto(c) for c in msg.commitments),
        dict(msg.sizes),
        dict(msg.holder_sizes),
        caps,
    )


def _points(data: bytes, count: int, what: str) -> bytes:
    if len(data) != count * POINT_BYTES:
        raise BadMessage(f"{what}: {count} points are {count * POINT_BYTES} bytes, not {len(data)}")
    return data


def request_to_proto(signed: SignedRequest) -> node_pb2.SignedRequest:
    r = signed.request
    return node_pb2.SignedRequest(
        request=node_pb2.EvaluationRequest(
            purpose=r.purpose,
            ident=r.ident,
            transcript=r.transcript,
            requester=r.requester,
            seq=r.seq,
            count=r.count,
            elements=r.elements,
            proved=r.proved,
            kind=r.kind,
        ),
        points=signed.points,
        signature=signed.signature,
    )


def request_from_proto(msg: node_pb2.SignedRequest) -> SignedRequest:
    r = msg.request
    in_range(r.count, 1, MAX_REQUEST_POINTS, f"{r.requester}'s request {r.seq}: count")
    request = EvaluationRequest(
        r.purpose,
        r.ident,
        r.transcript,
        r.requester,
        r.seq,
        r.count,
        r.elements,
        r.proved,
        r.kind or "set",
    )
    return SignedRequest(
        request, _points(msg.points, r.count, f"{r.requester}'s request {r.seq}"), msg.signature
    )


def answer_to_proto(signed: SignedAnswer) -> node_pb2.SignedAnswer:
    a = signed.answer
    return node_pb2.SignedAnswer(
        answer=node_pb2.EvaluationAnswer(
            request=a.request, member=a.member, answers=a.answers, proof=a.proof
        ),
        points=signed.points,
        signature=signed.signature,
    )


def answer_from_proto(msg: node_pb2.SignedAnswer) -> SignedAnswer:
    a = msg.answer
    if len(msg.points) % POINT_BYTES:
        raise BadMessage(f"{a.member}'s answer is not whole {POINT_BYTES}-byte points")
    return SignedAnswer(
        EvaluationAnswer(a.request, a.member, a.answers, a.proof), msg.points, msg.signature
    )


def root_to_proto(root: SignedRoot) -> node_pb2.SignedRoot:
    return node_pb2.SignedRoot(
        owner=root.owner, size=root.size, root=root.root, signature=root.signature
    )


def root_from_proto(msg: node_pb2.SignedRoot) -> SignedRoot:
    # a root commits to a set of at least one tag, no larger than any announced set
    in_range(msg.size, 1, MAX_SET, f"{msg.owner}'s tag root: size")
    return SignedRoot(msg.owner, msg.size, msg.root, msg.signature)


def roots_to_proto(roots: Mapping[str, SignedRoot]) -> list[node_pb2.SignedRoot]:
    return [root_to_proto(roots[name]) for name in sorted(roots)]


def roots_from_proto(msgs: Sequence[node_pb2.SignedRoot]) -> dict[str, SignedRoot]:
    roots: dict[str, SignedRoot] = {}
    for msg in msgs:
        if msg.owner in roots:
            raise BadMessage(f"two tag roots of {msg.owner}")
        roots[msg.owner] = root_from_proto(msg)
    return roots


def tags_to_proto(tags: Tags) -> node_pb2.Tags:
    msg = node_pb2.Tags(owner=tags.owner, tags=tags.tags, root=root_to_proto(tags.root))
    if tags.filter is not None:
        msg.filter.CopyFrom(filter_to_proto(tags.filter))
    return msg


def tags_from_proto(msg: node_pb2.Tags) -> Tags:
    if len(msg.tags) % TAG_BYTES:
        raise BadMessage(f"{msg.owner}'s tags are not whole {TAG_BYTES}-byte tags")
    signed = filter_from_proto(msg.filter) if msg.HasField("filter") else None
    return Tags(msg.owner, msg.tags, root_from_proto(msg.root), signed)


def filter_to_proto(signed: SignedFilter) -> node_pb2.SignedFilter:
    return node_pb2.SignedFilter(filter=signed.filter.to_bytes(), signature=signed.signature)


def filter_from_proto(msg: node_pb2.SignedFilter) -> SignedFilter:
    """A holder's filter as parsed from untrusted bytes (``EpochFilter.from_bytes``: shape,
    size and density); its signature is the reader's to verify."""
    return SignedFilter(EpochFilter.from_bytes(msg.filter), msg.signature)


def check_caps_from_proto(caps: Mapping[str, int]) -> dict[str, int]:
    for name, n in caps.items():
        if not name:
            raise BadMessage("a check cap is for a named partner")
        in_range(n, 0, MAX_SET, f"the check cap for {name}")
    return dict(caps)


def sealed_to_proto(epoch_id: str, messages: Sequence[SignedSealed]) -> watch_pb2.SealedMessages:
    return watch_pb2.SealedMessages(
        epoch_id=epoch_id,
        messages=[
            watch_pb2.Sealed(
                check_id=m.alert.check_id,
                request=m.alert.request,
                checker=m.alert.checker,
                holder=m.alert.holder,
                sealed=m.alert.sealed,
                signature=m.signature,
            )
            for m in messages
        ],
    )


def sealed_from_proto(msg: watch_pb2.SealedMessages) -> list[SignedSealed]:
    out = []
    for m in msg.messages:
        message_count(m.sealed)
        alert = SealedAlert(msg.epoch_id, m.check_id, m.request, m.checker, m.holder, m.sealed)
        out.append(SignedSealed(alert, m.signature))
    return out


def _indexes(values: Sequence[int], what: str, most: int) -> np.ndarray:
    """``values`` (uint64 on the wire) as int64, each at most ``most``: positions below the
    largest set, counts up to the participants. The core checks them against the round's own
    sizes (``delivery.verify_delivery``)."""
    array = np.asarray(values, dtype=np.uint64)
    in_range(int(array.max()) if array.size else 0, 0, most, what)
    return array.astype(np.int64)


def delivery_to_proto(
    delivery: NodeDelivery, roots: Mapping[str, SignedRoot]
) -> node_pb2.DeliverRequest:
    return node_pb2.DeliverRequest(
        round_id=delivery.round_id,
        mode=delivery.mode,
        proofs=[
            node_pb2.Inclusion(
                partner=p.partner,
                positions=p.positions.tolist(),
                indexes=p.indexes.tolist(),
                hashes=p.hashes,
            )
            for p in delivery.proofs
        ],
        hits=[] if delivery.hits is None else delivery.hits.tolist(),
        counts=[] if delivery.counts is None else delivery.counts.tolist(),
        has_hits=delivery.hits is not None,
        has_counts=delivery.counts is not None,
        shared=dict(delivery.shared),
        roots=roots_to_proto(roots),
    )


def delivery_from_proto(
    msg: node_pb2.DeliverRequest, owner: str
) -> tuple[NodeDelivery, dict[str, SignedRoot]]:
    """The delivery to ``owner`` (this node) and the roots it is proved against."""
    proofs = []
    for p in msg.proofs:
        if len(p.positions) != len(p.indexes):
            raise BadMessage(f"an inclusion proof for {p.partner}: positions and leaves differ")
        proofs.append(
            Inclusion(
                p.partner,
                _indexes(p.positions, f"a position proved by {p.partner}", MAX_SET - 1),
                _indexes(p.indexes, f"a leaf index of {p.partner}", MAX_SET - 1),
                p.hashes,
            )
        )
    if msg.has_counts and not msg.has_hits:
        raise BadMessage("counts come only with threshold hits")
    shared = {
        name: in_range(n, 0, MAX_SET, f"the count shared with {name}")
        for name, n in msg.shared.items()
    }
    delivery = NodeDelivery(
        msg.round_id,
        owner,
        msg.mode,
        tuple(proofs),
        _indexes(msg.hits, "a threshold hit", MAX_SET - 1) if msg.has_hits else None,
        _indexes(msg.counts, "a threshold count", MAX_PARTICIPANTS) if msg.has_counts else None,
        shared,
    )
    return delivery, roots_from_proto(msg.roots)
