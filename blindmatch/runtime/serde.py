"""Where protobuf meets the core for proto/blindmatch/v1: specs, standing orders, Prepare and the
operator's round and schedule records, named ``x_to_proto`` and ``x_from_proto``
(``x_to_bytes``/``x_from_bytes`` for signed byte strings); protocol v2's messages are
``serde_v2``'s.

The core never sees a message, and the servicers never build one field by field: they call the
converters here, call the core or their registry, and refuse through ``runtime.status``.
Converters from the wire validate what the core's types cannot (a round id's spelling, exactly
one of a spec and an order) and raise ``BadMessage``, so a malformed message is refused like any
other protocol error. Every number is checked where it arrives (issue 18): finite, in its range,
and consistent with the signed spec where that is known here. A double that is NaN fails every
comparison, so the ranges here are written ``not lo <= x <= hi``, which refuses it too.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any, Final, Protocol, TypeVar

from google.protobuf.message import DecodeError

from blindmatch.core.errors import BadMessage
from blindmatch.core.evaluation import MAX_SET
from blindmatch.core.match import MAX_PARTICIPANTS
from blindmatch.core.oprf import LAMBDA
from blindmatch.core.orders import MIN_EVERY, ScheduledRun, StandingOrder
from blindmatch.core.signing import SignedOrder, SignedSpec
from blindmatch.core.spec import MAX_TIME, RoundSpec, check_time
from blindmatch.v1 import coordinator_pb2, node_pb2

ROUND_ID: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")
# The longest a coordinator may ask a node to keep a silent round (Prepare's timeout_seconds):
# a node keeps it for the shorter of this and its own round_timeout.
MAX_PREPARE_TIMEOUT: Final = 86400.0
# Evaluations one round can count (RoundInfo hops): every set at its largest, and its subset
# checks, answered by every other member of the largest committee.
MAX_HOPS: Final = MAX_PARTICIPANTS * (MAX_PARTICIPANTS - 1) * (MAX_SET + LAMBDA)


def in_range(value: int, low: int, high: int, what: str) -> int:
    """``value`` if ``low <= value <= high``; BadMessage naming ``what`` and the value otherwise.
    For integers: a count, a size, a position."""
    if not low <= value <= high:
        raise BadMessage(f"{what} {value} is out of range {low}..{high}")
    return value


def seconds(value: float, what: str, most: float) -> float:
    """``value`` if it is a duration in (0, ``most``] seconds; BadMessage otherwise."""
    if not 0 < value <= most:
        raise BadMessage(f"{what} {value} is not a number of seconds in (0, {most:.0f}]")
    return value


def time_or_none(value: float, what: str) -> float | None:
    """A unix time where 0 on the wire means none (a round still running, no end, no next run)."""
    return check_time(value, what) or None


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
    # first, as what it is: the template below takes it as its issued time
    check_time(msg.first, "first")
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


def scheduled_run(
    signed: SignedOrder, order: StandingOrder, run: int, repair: int = 0
) -> ScheduledRun:
    """Run ``run`` of the order, or its repair ``repair`` (> 0; watch orders only)."""
    return ScheduledRun(signed, order, run, spec_to_bytes(order.run_spec(run, repair)), repair)


Authorization = SignedSpec | ScheduledRun  # what a node acts on: one round, or a run of an order


def prepare_to_proto(auth: Authorization, timeout_seconds: float) -> node_pb2.PrepareRequest:
    # A coordinator's round deadline may be longer than a node takes; asking for no more than a
    # node keeps anyway changes nothing, and nodes refuse the longer ask.
    timeout_seconds = min(timeout_seconds, MAX_PREPARE_TIMEOUT)
    if isinstance(auth, SignedSpec):
        return node_pb2.PrepareRequest(
            signed_spec=signed_spec_to_proto(auth), timeout_seconds=timeout_seconds
        )
    return node_pb2.PrepareRequest(
        order=signed_order_to_proto(auth.signed),
        run=auth.run,
        repair=auth.repair,
        timeout_seconds=timeout_seconds,
    )


def prepare_from_proto(msg: node_pb2.PrepareRequest) -> tuple[Authorization, RoundSpec]:
    """What a Prepare asks for: a signed spec, or a run of a standing order (whose spec the
    node derives itself), and the round's spec; neither is verified yet. ``timeout_seconds`` is
    checked here too: 0 (the node's own timeout) or a duration up to MAX_PREPARE_TIMEOUT."""
    if msg.HasField("order") == msg.HasField("signed_spec"):
        raise BadMessage("a Prepare carries exactly one of a signed spec and a standing order")
    if msg.timeout_seconds != 0:
        seconds(msg.timeout_seconds, "timeout_seconds", MAX_PREPARE_TIMEOUT)
    if msg.HasField("signed_spec"):
        if msg.run:
            raise BadMessage(f"run {msg.run} comes only with a standing order, not a signed spec")
        if msg.repair:
            raise BadMessage(
                f"repair {msg.repair} comes only with a standing order, not a signed spec"
            )
        return signed_spec_from_proto(msg.signed_spec)
    signed, order = signed_order_from_proto(msg.order)
    run = scheduled_run(signed, order, msg.run, msg.repair)
    return run, run.spec


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


class EpochLossView(Protocol):
    """A node of the open epoch that cannot serve it (the coordinator's ``EpochLoss``)."""

    @property
    def node(self) -> str: ...
    @property
    def since(self) -> float: ...
    @property
    def reason(self) -> str: ...


def round_to_proto(
    record: RoundView, epoch_state: str = "", degraded: Sequence[EpochLossView] = ()
) -> coordinator_pb2.RoundInfo:
    """``epoch_state`` and ``degraded``: for the watch round whose epoch is open, what the
    coordinator knows of it ("open" or "degraded", and who cannot serve it)."""
    return coordinator_pb2.RoundInfo(
        epoch_state=epoch_state,
        degraded=[
            coordinator_pb2.EpochLoss(node=d.node, since=d.since, reason=d.reason) for d in degraded
        ],
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
    """The fields of a ``RoundView`` that ``info`` shows (zero values read as unset), each
    number checked: a client shows these, and a time that is no time cannot be shown."""
    # a count-mode node's matches are the total over its partners
    most_matches = (MAX_PARTICIPANTS - 1) * MAX_SET
    return {
        "id": info.id,
        "participants": tuple(info.participants),
        "mode": info.mode,
        "threshold": in_range(info.threshold, 0, MAX_PARTICIPANTS, "threshold") or None,
        "kinds": tuple(info.kinds),
        "operator": info.operator,
        "created": check_time(info.created, "created"),
        "state": info.state,
        "finished": time_or_none(info.finished, "finished"),
        "sizes": {n: in_range(v, 0, MAX_SET, f"{n}'s size") for n, v in info.sizes.items()},
        "match_counts": {
            n: in_range(v, 0, most_matches, f"{n}'s match count")
            for n, v in info.match_counts.items()
        },
        "error": info.error or None,
        "hops_done": in_range(info.hops_done, 0, MAX_HOPS, "hops_done"),
        "hops_total": in_range(info.hops_total, 0, MAX_HOPS, "hops_total"),
    }


def epoch_from_proto(info: coordinator_pb2.RoundInfo) -> dict[str, Any]:
    """What ``info`` shows of its watch round's open epoch (none: state None), each time checked
    as ``round_from_proto`` does."""
    return {
        "epoch_state": info.epoch_state or None,
        "degraded": {
            d.node: {"since": check_time(d.since, f"{d.node}'s since"), "reason": d.reason}
            for d in info.degraded
        },
    }


def schedule_from_proto(info: coordinator_pb2.ScheduleInfo) -> dict[str, Any]:
    """What ``info`` shows of a standing order (zero values read as unset), each number checked
    as ``round_from_proto`` does."""
    if not MIN_EVERY <= info.every_seconds <= MAX_TIME:
        raise BadMessage(
            f"every_seconds {info.every_seconds} is not a period in [{MIN_EVERY:.0f}, "
            f"{MAX_TIME:.0f}] seconds"
        )
    return {
        "id": info.id,
        "name": info.name,
        "participants": tuple(info.participants),
        "mode": info.mode,
        "threshold": in_range(info.threshold, 0, MAX_PARTICIPANTS, "threshold") or None,
        "every": info.every_seconds,
        "until": time_or_none(info.until, "until"),
        "operator": info.operator,
        "state": info.state,
        "next_run": time_or_none(info.next_run, "next_run"),
        "runs": info.runs,
        "skipped": info.skipped,
        "last_round": info.last_round or None,
        "cancelled_by": info.cancelled_by or None,
    }
