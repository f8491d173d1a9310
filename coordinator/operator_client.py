"""The operator's link to the coordinator, shared by every operator command (operator_cli,
schedule_cli): the channel, each call and what its failure tells the operator, and the
federation key that signs what the operator asks for.

A call that fails raises ``blindmatch.cli.errors``'s errors, so a handler never sees a gRPC error:
every failure is one line saying what was wrong and what to do.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Final, TypeVar

import grpc

from blindmatch.cli.errors import BadInput, Failed, rpc_failure
from blindmatch.core.errors import BadMessage
from blindmatch.core.identity import PkiError
from blindmatch.core.signing import Signer
from blindmatch.runtime import serde
from blindmatch.runtime.net import Allow, load_tls, open_channel
from blindmatch.v1 import coordinator_pb2, coordinator_pb2_grpc
from coordinator.config import OperatorConfig

CALL_TIMEOUT: Final = 30.0  # seconds for each unary call to the coordinator
T = TypeVar("T")


def signer(config: OperatorConfig) -> Signer:
    """The operator's federation key, which signs the specs and orders it asks for."""
    try:
        return Signer(config.tls.cert.read_bytes(), config.tls.key.read_bytes())
    except (OSError, PkiError) as exc:
        raise BadInput(
            f"cannot sign the round with {config.tls.cert} and {config.tls.key} "
            f"(operator.toml [tls]): {exc}"
        ) from None


@contextmanager
def connect(
    config: OperatorConfig, insecure: bool
) -> Iterator[coordinator_pb2_grpc.CoordinatorServiceStub]:
    """A stub on the coordinator operator.toml names, pinned to a coordinator certificate."""
    tls = None if insecure else load_tls(config.tls.ca, config.tls.cert, config.tls.key)
    expect = Allow("coordinator", config.coordinator_name)
    channel = open_channel(config.coordinator, tls, insecure=insecure, expect=expect)
    try:
        yield coordinator_pb2_grpc.CoordinatorServiceStub(channel)
    finally:
        channel.close()


def call(config: OperatorConfig, rpc: Callable[[], T]) -> T:
    """What ``rpc`` returns, its numbers checked (``shown``); a failure becomes the operator's
    error (``rpc_message``)."""
    try:
        reply = rpc()
    except grpc.RpcError as err:
        raise rpc_failure(err, rpc_message(config, err)) from None
    shown(config, reply)
    return reply


def shown(config: OperatorConfig, reply: object) -> None:
    """Refuse a reply whose rounds or schedules carry numbers that are no time or count (a NaN
    would crash the display, or show nonsense as fact)."""
    rounds: list[coordinator_pb2.RoundInfo] = []
    schedules: list[coordinator_pb2.ScheduleInfo] = []
    if isinstance(reply, coordinator_pb2.RoundInfo):
        rounds.append(reply)
    elif isinstance(reply, coordinator_pb2.ListRoundsReply):
        rounds.extend(reply.rounds)
    elif isinstance(reply, coordinator_pb2.ScheduleInfo):
        schedules.append(reply)
    elif isinstance(reply, coordinator_pb2.ListSchedulesReply):
        schedules.extend(reply.schedules)
    try:
        for info in rounds:
            serde.round_from_proto(info)
        for schedule in schedules:
            serde.schedule_from_proto(schedule)
    except BadMessage as exc:
        raise Failed(
            f"coordinator at {config.coordinator} sent a reply that cannot be shown: {exc}"
        ) from None


def rpc_message(config: OperatorConfig, err: grpc.RpcError) -> str:
    """What a failed call to the coordinator means for the operator, and what to check."""
    code = err.code()
    details = err.details() or "(no details)"
    where = f"coordinator at {config.coordinator}"
    if code == grpc.StatusCode.UNAVAILABLE:
        return (
            f"{where} unreachable (UNAVAILABLE): {details} — is `blindmatch coordinator serve` "
            "running there, with the same --insecure setting as this command?"
        )
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return f"{where} did not answer within {CALL_TIMEOUT:g} s; is it overloaded or stuck?"
    if code in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED):
        return (
            f"{where} refused this operator ({code.name}): {details} — check that "
            f"{config.tls.cert} is an operator certificate the coordinator's `operators` allows"
        )
    return f"{where} refused ({code.name}): {details}"
