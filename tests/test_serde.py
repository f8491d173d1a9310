"""blindmatch.runtime.serde: every message with a core counterpart survives the trip to protobuf and back
(through real serialisation), malformed messages are refused as protocol errors, and every error
the services raise maps to its status."""

from __future__ import annotations

import importlib
import pkgutil
from typing import NoReturn, TypeVar

import grpc
import pytest
from google.protobuf.message import Message

import blindmatch.core
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
from blindmatch.core.evaluation import Equivocation
from blindmatch.core.merkle import InvalidLeaves
from blindmatch.core.owner import VerificationFailed
from blindmatch.core.proofs import BadProof
from blindmatch.core.secp256k1 import InvalidPoint, InvalidScalar
from blindmatch.core.signing import SignedSpec, StaleSpec
from blindmatch.core.spec import RoundSpec
from blindmatch.core.watch_rules import EpochEnded
from blindmatch.core.watch_sealed import MalformedWatchData, SealedMessageRejected
from blindmatch.runtime import serde, status
from blindmatch.v1 import node_pb2
from coordinator.driver import RoundFailure
from coordinator.records import RoundRecord
from coordinator.watch import WatchFailure
from node.budgets import BudgetExceeded
from node.rounds import StoreFailed
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


# --- statuses -----------------------------------------------------------------------------------

S = grpc.StatusCode
STATUSES: dict[type[Exception], grpc.StatusCode] = {
    ProtocolError: S.INVALID_ARGUMENT,
    BadMessage: S.INVALID_ARGUMENT,
    WrongPhase: S.FAILED_PRECONDITION,
    EpochEnded: S.FAILED_PRECONDITION,
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
