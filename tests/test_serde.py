"""blindmatch.runtime.serde: every message with a core counterpart survives the trip to protobuf and back
(through real serialisation), malformed messages are refused as protocol errors, and every error
the services raise maps to its status."""

from __future__ import annotations

import importlib
import math
import pkgutil
import re
from collections.abc import Callable
from typing import NoReturn, TypeVar

import grpc
import pytest
from google.protobuf.message import Message

import blindmatch.core
from blindmatch.core import watch_rules
from blindmatch.core.canon import InvalidIndicator
from blindmatch.core.delivery import ForgedDelivery, TagRootMismatch
from blindmatch.core.errors import (
    BadMessage,
    CapExceeded,
    ForgedMessage,
    PolicyRefusal,
    ProtocolError,
    RoundIdUsed,
    UnknownRound,
    WrongPhase,
)
from blindmatch.core.evaluation import MAX_SET, Equivocation
from blindmatch.core.match import MAX_PARTICIPANTS
from blindmatch.core.merkle import InvalidLeaves
from blindmatch.core.oprf import LAMBDA
from blindmatch.core.orders import StandingOrder
from blindmatch.core.owner import VerificationFailed
from blindmatch.core.proofs import BadProof
from blindmatch.core.secp256k1 import POINT_BYTES, InvalidPoint, InvalidScalar
from blindmatch.core.signing import SignedOrder, SignedSpec, StaleSpec
from blindmatch.core.spec import MAX_TIME, RoundSpec
from blindmatch.core.watch_rules import MAX_CHECK_VALUES, EpochEnded
from blindmatch.core.watch_sealed import MalformedWatchData, SealedMessageRejected
from blindmatch.runtime import serde, serde_v2, status
from blindmatch.runtime.serde import MAX_PREPARE_TIMEOUT
from blindmatch.runtime.serde_v2 import MAX_REQUEST_POINTS
from blindmatch.v1 import coordinator_pb2, node_pb2
from blindmatch.v2 import node_pb2 as v2
from coordinator.driver import RoundFailure
from coordinator.records import RoundRecord, ScheduleRecord
from coordinator.watch import WatchFailure
from node.budgets import BudgetExceeded
from node.rounds import RoundEnded, StoreFailed
from node.watch import CheckFailed

M = TypeVar("M", bound=Message)

NAMES = ("alpha", "bravo", "charlie")


def over_the_wire(msg: M) -> M:
    """``msg`` as the receiving side parses it."""
    copy = type(msg)()
    copy.ParseFromString(msg.SerializeToString())
    return copy


# --- rounds ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec",
    [
        RoundSpec("r-1", NAMES),
        RoundSpec("r_2", NAMES[:2], mode="threshold", threshold=2, kinds=("domain",)),
        RoundSpec("R3", NAMES, mode="count", kinds=("ipv4", "url"), chunk_size=7),
        RoundSpec("w", NAMES, epoch_seconds=3600.0, issued=1_800_000_000.5),
        RoundSpec("c", NAMES, mode="threshold", threshold=3, counts=True, issued=1.0),
    ],
)
def test_a_round_spec_round_trips(spec: RoundSpec) -> None:
    assert serde.spec_from_proto(over_the_wire(serde.spec_to_proto(spec))) == spec


@pytest.mark.parametrize("round_id", ["", "x" * 65, "a b", "../etc", "é"])
def test_a_round_id_outside_the_alphabet_is_refused(round_id: str) -> None:
    msg = serde.spec_to_proto(RoundSpec("ok", NAMES))
    msg.round_id = round_id
    with pytest.raises(BadMessage, match="round_id"):
        serde.spec_from_proto(msg)


def test_a_spec_the_core_refuses_is_a_protocol_error() -> None:
    msg = node_pb2.RoundSpec(round_id="r", participants=["alpha"], mode="pairwise")
    with pytest.raises(BadMessage, match="participants"):
        serde.spec_from_proto(msg)


def test_a_spec_reads_back_from_exactly_the_bytes_signed() -> None:
    spec = RoundSpec("r", NAMES, mode="threshold", threshold=2, counts=True, issued=12.5)
    data = serde.spec_to_bytes(spec)
    assert serde.spec_from_bytes(data) == spec
    signed = SignedSpec(data, b"sig", b"cert")
    assert serde.signed_spec_from_proto(over_the_wire(serde.signed_spec_to_proto(signed))) == (
        signed,
        spec,
    )


def test_a_signed_spec_that_is_no_spec_is_refused() -> None:
    with pytest.raises(BadMessage, match="not a serialized RoundSpec"):
        serde.spec_from_bytes(b"\xff\xff\xff")


def test_a_threshold_outside_threshold_mode_is_refused_not_dropped() -> None:
    msg = node_pb2.RoundSpec(round_id="r", participants=NAMES, mode="pairwise", threshold=2)
    with pytest.raises(BadMessage, match="a threshold only applies to threshold mode"):
        serde.spec_from_proto(msg)


# --- round records ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "record",
    [
        RoundRecord("a1", NAMES, "pairwise", None, ("domain",), "op", 1.5),
        RoundRecord(
            "b2",
            NAMES[:2],
            "threshold",
            2,
            ("ipv4", "url"),
            "(insecure)",
            10.0,
            state="failed",
            finished=12.25,
            sizes={"alpha": 3, "bravo": 4},
            match_counts={"alpha": 1},
            error="bravo refused: PERMISSION_DENIED: no",
            hops_done=5,
            hops_total=14,
        ),
    ],
)
def test_a_round_record_round_trips(record: RoundRecord) -> None:
    assert (
        RoundRecord(**serde.round_from_proto(over_the_wire(serde.round_to_proto(record)))) == record
    )


# --- numbers from the wire (issue 18) -----------------------------------------------------------
# Every number a converter takes from the wire: NaN, ±inf, negative and absurd values are refused
# with BadMessage (INVALID_ARGUMENT, in the table below) naming the field and the value.

NAN, INF = math.nan, math.inf
U32, U64 = 2**32 - 1, 2**64 - 1
NOT_TIMES = [NAN, INF, -INF, -1.0, MAX_TIME + 1, 1e308]
ORDER = StandingOrder(
    "nightly", "every night", RoundSpec("run", NAMES, issued=1000.0), 3600.0, 1000.0, issued=900.0
)


def refused(named: str, call: Callable[[], object]) -> None:
    with pytest.raises(BadMessage) as info:
        call()
    assert named in str(info.value)


@pytest.mark.parametrize(
    ("field", "value"),
    [("epoch_seconds", v) for v in [NAN, INF, -INF, -1.0, MAX_TIME + 1, 1e308]]
    + [("issued", v) for v in NOT_TIMES],
)
def test_a_spec_number_out_of_range_is_refused(field: str, value: float) -> None:
    msg = serde.spec_to_proto(RoundSpec("r", NAMES))
    setattr(msg, field, value)
    refused(f"{field} {value}", lambda: serde.spec_from_proto(over_the_wire(msg)))


def test_a_spec_at_its_bounds_is_read() -> None:
    # An epoch past every node's [watch] max_epoch is still a duration: the nodes refuse it by
    # their policy, and audit it (tests/test_watch_adversary.py), not the wire.
    long = watch_rules.MAX_EPOCH_SECONDS * 40
    spec = RoundSpec("r", NAMES, epoch_seconds=long, issued=MAX_TIME)
    assert serde.spec_from_proto(over_the_wire(serde.spec_to_proto(spec))) == spec


@pytest.mark.parametrize(
    ("field", "value"),
    [("every_seconds", v) for v in [NAN, INF, -INF, -1.0, 59.0, MAX_TIME + 1]]
    + [("first", v) for v in [NAN, INF, -INF, 0.0, -1.0, MAX_TIME + 1]]
    + [("until", v) for v in [NAN, INF, -1.0, MAX_TIME + 1]]
    + [("issued", v) for v in NOT_TIMES]
    + [("epoch_seconds", NAN)],
)
def test_an_order_number_out_of_range_is_refused(field: str, value: float) -> None:
    msg = serde.order_to_proto(ORDER)
    setattr(msg, field, value)
    refused(f"{field} {value}", lambda: serde.order_from_bytes(msg.SerializeToString()))


def prepare(timeout: float, run: int = 0, order: bool = False) -> node_pb2.PrepareRequest:
    if order:
        signed = SignedOrder(serde.order_to_bytes(ORDER), b"sig", b"cert")
        msg = node_pb2.PrepareRequest(order=serde.signed_order_to_proto(signed), run=run)
    else:
        signed_spec = SignedSpec(serde.spec_to_bytes(RoundSpec("r", NAMES)), b"sig", b"cert")
        msg = node_pb2.PrepareRequest(signed_spec=serde.signed_spec_to_proto(signed_spec), run=run)
    msg.timeout_seconds = timeout
    return over_the_wire(msg)


@pytest.mark.parametrize("order", [False, True], ids=["spec", "order"])
@pytest.mark.parametrize("timeout", [NAN, INF, -INF, -1.0, -1e-9, MAX_PREPARE_TIMEOUT + 1, 1e308])
def test_a_prepare_timeout_that_is_no_duration_is_refused(timeout: float, order: bool) -> None:
    refused(
        f"timeout_seconds {timeout} is not a number of seconds in (0, 86400]",
        lambda: serde.prepare_from_proto(prepare(timeout, order=order)),
    )


@pytest.mark.parametrize("timeout", [0.0, -0.0, 1e-3, 600.0, MAX_PREPARE_TIMEOUT])
def test_a_prepare_timeout_of_zero_or_a_duration_is_read(timeout: float) -> None:
    _, spec = serde.prepare_from_proto(prepare(timeout))
    assert spec.round_id == "r"


def test_a_coordinator_asks_no_longer_timeout_than_a_node_takes() -> None:
    signed = SignedSpec(serde.spec_to_bytes(RoundSpec("r", NAMES)), b"sig", b"cert")
    msg = over_the_wire(serde.prepare_to_proto(signed, 7 * 86400.0))
    assert msg.timeout_seconds == MAX_PREPARE_TIMEOUT
    serde.prepare_from_proto(msg)


def test_a_run_comes_only_with_an_order_and_only_in_time() -> None:
    refused(
        "run 3 comes only with a standing order", lambda: serde.prepare_from_proto(prepare(0, 3))
    )
    refused(
        f"run {U32} of schedule nightly would be due after",
        lambda: serde.prepare_from_proto(prepare(0, U32, order=True)),
    )
    _, spec = serde.prepare_from_proto(prepare(0, 2, order=True))
    assert (spec.round_id, spec.issued) == ("nightly-2", 1000.0 + 2 * 3600.0)


def info() -> coordinator_pb2.RoundInfo:
    record = RoundRecord(
        "a1", NAMES, "threshold", 2, ("domain",), "op", 10.0, finished=12.0, sizes={"alpha": 3}
    )
    return serde.round_to_proto(record)


@pytest.mark.parametrize(
    ("field", "value"),
    [("created", v) for v in NOT_TIMES]
    + [("finished", v) for v in [NAN, -INF, -1.0, MAX_TIME + 1]]
    + [("threshold", U32), ("hops_done", U64), ("hops_total", U64)]
    + [("alpha's size", U64), ("alpha's match count", U64)],
)
def test_a_round_info_number_out_of_range_is_refused(field: str, value: float) -> None:
    msg = info()
    if field.startswith("alpha's"):
        table = msg.sizes if field.endswith("size") else msg.match_counts
        table["alpha"] = int(value)
    else:
        setattr(msg, field, value)
    refused(f"{field} {value}", lambda: serde.round_from_proto(over_the_wire(msg)))


def schedule() -> coordinator_pb2.ScheduleInfo:
    record = ScheduleRecord("nightly", "every night", "op", b"", b"", b"")
    return serde.schedule_to_proto(record, ORDER, 4600.0)


@pytest.mark.parametrize(
    ("field", "value"),
    [("every_seconds", v) for v in [NAN, INF, 0.0, 59.0, MAX_TIME + 1]]
    + [("until", v) for v in [NAN, -1.0, INF]]
    + [("next_run", v) for v in [NAN, INF, -1.0]]
    + [("threshold", U32)],
)
def test_a_schedule_info_number_out_of_range_is_refused(field: str, value: float) -> None:
    msg = schedule()
    setattr(msg, field, value)
    refused(f"{field} {value}", lambda: serde.schedule_from_proto(over_the_wire(msg)))


def test_a_schedule_info_reads_back() -> None:
    shown = serde.schedule_from_proto(over_the_wire(schedule()))
    assert (shown["every"], shown["until"], shown["next_run"]) == (3600.0, None, 4600.0)


def request(count: int) -> v2.SignedRequest:
    return v2.SignedRequest(
        request=v2.EvaluationRequest(purpose="round", ident="r", requester="bravo", count=count),
        points=bytes(POINT_BYTES * min(count, MAX_REQUEST_POINTS)),
    )


@pytest.mark.parametrize("count", [0, MAX_REQUEST_POINTS + 1, U32])
def test_a_request_count_out_of_range_is_refused(count: int) -> None:
    refused(f"count {count} is out of range", lambda: serde_v2.request_from_proto(request(count)))


@pytest.mark.parametrize("count", [1, LAMBDA, MAX_REQUEST_POINTS])
def test_a_request_of_any_real_size_is_read(count: int) -> None:
    assert serde_v2.request_from_proto(request(count)).request.count == count
    # the largest request is a whole watch check, which a node's Check call caps
    assert MAX_REQUEST_POINTS >= MAX_CHECK_VALUES


@pytest.mark.parametrize("size", [0, MAX_SET + 1, U64])
def test_a_tag_root_size_out_of_range_is_refused(size: int) -> None:
    msg = v2.SignedRoot(owner="bravo", size=size, root=bytes(32))
    refused(f"bravo's tag root: size {size}", lambda: serde_v2.root_from_proto(msg))
    assert serde_v2.root_from_proto(v2.SignedRoot(owner="bravo", size=MAX_SET)).size == MAX_SET


@pytest.mark.parametrize("cap", [MAX_SET + 1, U64])
def test_a_check_cap_out_of_range_is_refused(cap: int) -> None:
    refused(
        f"the check cap for bravo {cap}", lambda: serde_v2.check_caps_from_proto({"bravo": cap})
    )
    assert serde_v2.check_caps_from_proto({"bravo": MAX_SET}) == {"bravo": MAX_SET}


@pytest.mark.parametrize(
    ("table", "named"),
    [
        ("sizes", f"alpha's set size {U64}"),
        ("holder_sizes", f"alpha's holder-set size {U64}"),
        ("caps", f"alpha's check cap for bravo ({U64})"),
    ],
)
def test_a_transcript_number_out_of_range_is_refused(table: str, named: str) -> None:
    msg = v2.Transcript(
        purpose="epoch",
        ident="e",
        commitments=[v2.Commitment(member="alpha", point=bytes(POINT_BYTES))],
        sizes={"alpha": 1},
    )
    if table == "caps":
        msg.caps.append(v2.Cap(holder="alpha", checker="bravo", cap=U64))
    else:
        getattr(msg, table)["alpha"] = U64
    refused(named, lambda: serde_v2.transcript_from_proto(over_the_wire(msg)))


def _position(msg: v2.DeliverRequest, value: int) -> None:
    msg.proofs[0].positions[0] = value


def _index(msg: v2.DeliverRequest, value: int) -> None:
    msg.proofs[0].indexes[0] = value


def _hit(msg: v2.DeliverRequest, value: int) -> None:
    msg.has_hits = True
    msg.hits.append(value)


def _count(msg: v2.DeliverRequest, value: int) -> None:
    _hit(msg, 0)
    msg.has_counts = True
    msg.counts.append(value)


def _shared(msg: v2.DeliverRequest, value: int) -> None:
    msg.shared["bravo"] = value


@pytest.mark.parametrize(
    ("tamper", "named", "ok"),
    [
        (_position, "a position proved by bravo", MAX_SET - 1),
        (_index, "a leaf index of bravo", MAX_SET - 1),
        (_hit, "a threshold hit", MAX_SET - 1),
        (_count, "a threshold count", MAX_PARTICIPANTS),
        (_shared, "the count shared with bravo", MAX_SET),
    ],
)
def test_a_delivery_number_out_of_range_is_refused(
    tamper: Callable[[v2.DeliverRequest, int], None], named: str, ok: int
) -> None:
    def delivery(value: int) -> v2.DeliverRequest:
        msg = v2.DeliverRequest(
            round_id="r", proofs=[v2.Inclusion(partner="bravo", positions=[0], indexes=[0])]
        )
        tamper(msg, value)
        return over_the_wire(msg)

    for value in (ok + 1, U64):
        with pytest.raises(BadMessage, match=re.escape(f"{named} {value} is out of range")):
            serde_v2.delivery_from_proto(delivery(value), "alpha")
    serde_v2.delivery_from_proto(delivery(ok), "alpha")  # the bound itself is a real value


# --- statuses -----------------------------------------------------------------------------------

S = grpc.StatusCode
STATUSES: dict[type[Exception], grpc.StatusCode] = {
    ProtocolError: S.INVALID_ARGUMENT,
    BadMessage: S.INVALID_ARGUMENT,
    WrongPhase: S.FAILED_PRECONDITION,
    EpochEnded: S.FAILED_PRECONDITION,
    RoundEnded: S.FAILED_PRECONDITION,
    ForgedMessage: S.PERMISSION_DENIED,
    StaleSpec: S.PERMISSION_DENIED,
    PolicyRefusal: S.PERMISSION_DENIED,
    CapExceeded: S.RESOURCE_EXHAUSTED,
    BudgetExceeded: S.RESOURCE_EXHAUSTED,
    UnknownRound: S.NOT_FOUND,
    RoundIdUsed: S.ALREADY_EXISTS,
    InvalidIndicator: S.INVALID_ARGUMENT,
    InvalidPoint: S.INVALID_ARGUMENT,
    InvalidScalar: S.INVALID_ARGUMENT,
    InvalidLeaves: S.INVALID_ARGUMENT,
    BadProof: S.PERMISSION_DENIED,
    Equivocation: S.PERMISSION_DENIED,
    ForgedDelivery: S.PERMISSION_DENIED,
    TagRootMismatch: S.PERMISSION_DENIED,
    SealedMessageRejected: S.PERMISSION_DENIED,
    MalformedWatchData: S.INVALID_ARGUMENT,
    VerificationFailed: S.DATA_LOSS,
    ValueError: S.INVALID_ARGUMENT,
    RoundFailure: S.UNAVAILABLE,
    StoreFailed: S.INTERNAL,
    RuntimeError: S.INTERNAL,
}


def _subclasses(cls: type[Exception]) -> set[type[Exception]]:
    found = set(cls.__subclasses__())
    return found.union(*(_subclasses(c) for c in found))


def test_every_protocol_error_has_a_status_in_this_table() -> None:
    # Every core module imported, so no error class escapes the table by not being loaded yet.
    for module in pkgutil.iter_modules(blindmatch.core.__path__, "blindmatch.core."):
        importlib.import_module(module.name)
    assert _subclasses(ProtocolError) <= set(STATUSES)


@pytest.mark.parametrize(("error", "code"), list(STATUSES.items()))
def test_status_for_every_error_class(error: type[Exception], code: grpc.StatusCode) -> None:
    args = {InvalidIndicator: ("domain", "x", "why"), TagRootMismatch: ("why", "alpha")}
    exc = error(*args.get(error, ("why",)))
    assert status.status_for(exc) == code


@pytest.mark.parametrize("error", [status.StatusError, CheckFailed, WatchFailure])
@pytest.mark.parametrize("code", [S.UNAVAILABLE, S.DEADLINE_EXCEEDED, S.UNAUTHENTICATED])
def test_a_passed_on_status_is_kept(error: type[status.StatusError], code: grpc.StatusCode) -> None:
    assert status.status_for(error(code, "why")) == code


class Aborted(Exception):
    pass


class FakeContext:
    def __init__(self) -> None:
        self.aborted: tuple[grpc.StatusCode, str] | None = None

    def abort(self, code: grpc.StatusCode, details: str) -> NoReturn:
        self.aborted = (code, details)
        raise Aborted


def test_abort_ends_the_call_with_the_status_and_message() -> None:
    context = FakeContext()
    with pytest.raises(Aborted):
        status.abort(context, CapExceeded("too big"))
    assert context.aborted == (S.RESOURCE_EXHAUSTED, "too big")


def test_refusing_aborts_on_the_listed_errors_only() -> None:
    context = FakeContext()
    with pytest.raises(Aborted), status.refusing(context, ProtocolError):
        raise UnknownRound("no round")
    assert context.aborted == (S.NOT_FOUND, "no round")
    other = FakeContext()
    with pytest.raises(KeyError), status.refusing(other, ProtocolError):
        raise KeyError("a bug stays a bug")
    assert other.aborted is None
