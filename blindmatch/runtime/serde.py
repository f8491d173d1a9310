"""Where protobuf meets the core for proto/blindmatch/v1: specs, standing orders, Prepare and the
operator's round and schedule records, named ``x_to_proto`` and ``x_from_proto``
(``x_to_bytes``/``x_from_bytes`` for signed byte strings); protocol v2's messages are
``serde_v2``'s.

The core never sees a message, and the servicers never build one field by field: they call the
converters here, call the core or their registry, and refuse through ``runtime.status``.
Converters from the wire validate what the core's types cannot (a round id's spelling, exactly
one of a spec and an order) and raise ``BadMessage``, so a malformed message is refused like any
other protocol error.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final, Protocol, TypeVar

from google.protobuf.message import DecodeError

from blindmatch.core.errors import BadMessage
from blindmatch.core.orders import ScheduledRun, StandingOrder
from blindmatch.core.signing import SignedOrder, SignedSpec
from blindmatch.core.spec import RoundSpec
from blindmatch.v1 import coordinator_pb2, node_pb2

ROUND_ID: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")

# --- rounds (node.proto) ----------------------------------------------------------------------


def spec_to_proto(spec: RoundSpec) -> node_pb2.RoundSpec:
    return node_pb2.RoundSpec(
        round_id=spec.round_id,
        participants=spec.participants,
        mode=spec.mode,
        threshold=spec.threshold or 0,
        kinds=spec.kinds,
        chunk_size=spec.chunk_size,
        epoch_seconds=spec.epoch_seconds,
        counts=spec.counts,
        issued=spec.issued,
        committee=spec.committee,
    )


def spec_from_proto(msg: node_pb2.RoundSpec) -> RoundSpec:
    if not ROUND_ID.fullmatch(msg.round_id):
        raise BadMessage("round_id must be 1-64 characters of letters, digits, '-' or '_'")
    return RoundSpec(
        round_id=msg.round_id,
        participants=tuple(msg.participants),
        mode=msg.mode or "pairwise",
        # a threshold outside threshold mode is refused by RoundSpec, not dropped: a signed
        # spec means exactly what it says
        threshold=msg.threshold if msg.mode == "threshold" or msg.threshold else None,
        kinds=tuple(msg.kinds),
        chunk_size=msg.chunk_size,
        epoch_seconds=msg.epoch_seconds,
        counts=msg.counts,
        issued=msg.issued,
        committee=tuple(msg.committee),
    )


_Signed = TypeVar("_Signed", node_pb2.RoundSpec, node_pb2.StandingOrder)


def spec_to_bytes(spec: RoundSpec) -> bytes:
    """The bytes an operator signs: nodes parse exactly these, so all read the same spec."""
    return spec_to_proto(spec).SerializeToString(deterministic=True)


def _parse(msg: _Signed, data: bytes, what: str) -> _Signed:
    """``data`` (bytes someone signed) parsed into ``msg``, or BadMessage naming ``what``."""
    try:
        msg.ParseFromString(data)
    except DecodeError:
        raise BadMessage(f"the signed {what} is not a serialized {type(msg).__name__}") from None
    return msg


def spec_from_bytes(data: bytes) -> RoundSpec:
    return spec_from_proto(_parse(node_pb2.RoundSpec(), data, "spec"))


def signed_spec_to_proto(signed: SignedSpec) -> node_pb2.SignedSpec:
    return node_pb2.SignedSpec(
        spec=signed.spec, signature=signed.signature, operator_cert=signed.operator_cert
    )


def signed_spec_from_proto(msg: node_pb2.SignedSpec) -> tuple[SignedSpec, RoundSpec]:
    """The signed spec as it came (to verify) and the spec its bytes say (to act on once
    verified)."""
    signed = SignedSpec(msg.spec, msg.signature, msg.operator_cert)
    return signed, spec_from_bytes(msg.spec)


def order_to_proto(order: StandingOrder) -> node_pb2.StandingOrder:
    t = order.template
    return node_pb2.StandingOrder(
        schedule_id=order.schedule_id,
        name=order.name,
        participants=t.participants,
        mode=t.mode,
        threshold=t.threshold or 0,
        kinds=t.kinds,
        chunk_size=t.chunk_size,
        epoch_seconds=t.epoch_seconds,
        counts=t.counts,
        committee=t.committee,
        every_seconds=order.every,
        first=order.first,
        until=order.until,
        issued=order.issued,
    )


def order_to_bytes(order: StandingOrder) -> bytes:
    """The bytes an operator signs for a standing order."""
    return order_to_proto(order).SerializeToString(deterministic=True)


def order_from_bytes(data: bytes) -> StandingOrder:
    msg = _parse(node_pb2.StandingOrder(), data, "order")
    # the template is checked as a round spec is, under a placeholder id and time
    template = spec_from_proto(
        node_pb2.RoundSpec(
            round_id="run",
            participants=msg.participants,
            mode=msg.mode,
            threshold=msg.threshold,
            kinds=msg.kinds,
            chunk_size=msg.chunk_size,
            epoch_seconds=msg.epoch_seconds,
            counts=msg.counts,
            issued=msg.first,
            committee=msg.committee,
        )
    )
    return StandingOrder(
        schedule_id=msg.schedule_id,
        name=msg.name,
        template=template,
        every=msg.every_seconds,
        first=msg.first,
        until=msg.until,
        issued=msg.issued,
    )


def signed_order_to_proto(signed: SignedOrder) -> node_pb2.SignedOrder:
    return node_pb2.SignedOrder(
        order=signed.order, signature=signed.signature, operator_cert=signed.operator_cert
    )


def signed_order_from_proto(msg: node_pb2.SignedOrder) -> tuple[SignedOrder, StandingOrder]:
    """The signed order as it came (to verify) and the order its bytes say."""
    return SignedOrder(msg.order, msg.signature, msg.operator_cert), order_from_bytes(msg.order)


def scheduled_run(signed: SignedOrder, order: StandingOrder, run: int) -> ScheduledRun:
    return ScheduledRun(signed, order, run, spec_to_bytes(order.run_spec(run)))


Authorization = SignedSpec | ScheduledRun  # what a node acts on: one round, or a run of an order


def prepare_to_proto(auth: Authorization, timeout_seconds: float) -> node_pb2.PrepareRequest:
    if isinstance(auth, SignedSpec):
        return node_pb2.PrepareRequest(
            signed_spec=signed_spec_to_proto(auth), timeout_seconds=timeout_seconds
        )
    return node_pb2.PrepareRequest(
        order=signed_order_to_proto(auth.signed), run=auth.run, timeout_seconds=timeout_seconds
    )


def prepare_from_proto(msg: node_pb2.PrepareRequest) -> tuple[Authorization, RoundSpec]:
    """What a Prepare asks for: a signed spec, or a run of a standing order (whose spec the
    node derives itself), and the round's spec; neither is verified yet."""
    if msg.HasField("order") == msg.HasField("signed_spec"):
        raise BadMessage("a Prepare carries exactly one of a signed spec and a standing order")
    if msg.HasField("signed_spec"):
        return signed_spec_from_proto(msg.signed_spec)
    signed, order = signed_order_from_proto(msg.order)
    run = scheduled_run(signed, order, msg.run)
    return run, order.run_spec(msg.run)


# --- round records (coordinator.proto) ----------------------------------------------------------


class RoundView(Protocol):
    """What RoundInfo shows of a round (the coordinator's ``RoundRecord``)."""

    @property
    def id(self) -> str: ...
    @property
    def participants(self) -> tuple[str, ...]: ...
    @property
    def mode(self) -> str: ...
    @property
    def threshold(self) -> int | None: ...
    @property
    def kinds(self) -> tuple[str, ...]: ...
    @property
    def operator(self) -> str: ...
    @property
    def created(self) -> float: ...
    @property
    def state(self) -> str: ...
    @property
    def finished(self) -> float | None: ...
    @property
    def sizes(self) -> Mapping[str, int]: ...
    @property
    def match_counts(self) -> Mapping[str, int]: ...
    @property
    def error(self) -> str | None: ...
    @property
    def hops_done(self) -> int: ...
    @property
    def hops_total(self) -> int: ...


def round_to_proto(record: RoundView) -> coordinator_pb2.RoundInfo:
    return coordinator_pb2.RoundInfo(
        id=record.id,
        state=record.state,
        mode=record.mode,
        threshold=record.threshold or 0,
        participants=record.participants,
        kinds=record.kinds,
        sizes=record.sizes,
        match_counts=record.match_counts,
        error=record.error or "",
        created=record.created,
        finished=record.finished or 0.0,
        hops_done=record.hops_done,
        hops_total=record.hops_total,
        operator=record.operator,
    )


class ScheduleView(Protocol):
    """What ScheduleInfo shows of a standing order's record (the coordinator's
    ``ScheduleRecord``)."""

    @property
    def id(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def operator(self) -> str: ...
    @property
    def state(self) -> str: ...
    @property
    def runs(self) -> int: ...
    @property
    def skipped(self) -> int: ...
    @property
    def last_round(self) -> str | None: ...
    @property
    def cancelled_by(self) -> str | None: ...


def schedule_to_proto(
    record: ScheduleView, order: StandingOrder, next_run: float | None
) -> coordinator_pb2.ScheduleInfo:
    t = order.template
    return coordinator_pb2.ScheduleInfo(
        id=record.id,
        name=record.name,
        participants=t.participants,
        mode="watch" if t.watching else t.mode,
        threshold=t.threshold or 0,
        every_seconds=order.every,
        until=order.until,
        operator=record.operator,
        state=record.state,
        next_run=next_run or 0.0,
        runs=record.runs,
        skipped=record.skipped,
        last_round=record.last_round or "",
        cancelled_by=record.cancelled_by or "",
    )


def round_from_proto(info: coordinator_pb2.RoundInfo) -> dict[str, Any]:
    """The fields of a ``RoundView`` that ``info`` shows (zero values read as unset)."""
    return {
        "id": info.id,
        "participants": tuple(info.participants),
        "mode": info.mode,
        "threshold": info.threshold or None,
        "kinds": tuple(info.kinds),
        "operator": info.operator,
        "created": info.created,
        "state": info.state,
        "finished": info.finished or None,
        "sizes": dict(info.sizes),
        "match_counts": dict(info.match_counts),
        "error": info.error or None,
        "hops_done": info.hops_done,
        "hops_total": info.hops_total,
    }
