"""Where a refusal becomes a gRPC status: the one place that maps errors to status codes.

The core's errors name their status in ``code`` (the core does not import grpc); servicers refuse
with ``abort`` or inside ``refusing``, so no servicer picks a status code by hand.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Final, NoReturn

import grpc


class StatusError(Exception):
    """A failure whose status is decided outside the core: passed on from a call to another
    party, or a refusal of the transport (no certificate)."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


# Errors without a ``code``, by class, first match wins. The core's errors name their status in
# ``code`` (the core does not import grpc), so they need no row here.
_BY_CLASS: Final[tuple[tuple[type[Exception], grpc.StatusCode], ...]] = (
    # InvalidIndicator, and any other value from the caller that does not decode
    (ValueError, grpc.StatusCode.INVALID_ARGUMENT),
)


def status_for(exc: BaseException) -> grpc.StatusCode:
    """The status a refusal with ``exc`` carries; INTERNAL for anything unforeseen."""
    code = getattr(exc, "code", None)
    if isinstance(code, grpc.StatusCode):
        return code
    if isinstance(code, str) and code in grpc.StatusCode.__members__:
        return grpc.StatusCode[code]
    for cls, status in _BY_CLASS:
        if isinstance(exc, cls):
            return status
    return grpc.StatusCode.INTERNAL


def abort(context: grpc.ServicerContext, exc: BaseException) -> NoReturn:
    """End the call with ``exc``'s status and message."""
    context.abort(status_for(exc), str(exc))
    raise AssertionError("unreachable")  # context.abort raises


@contextmanager
def refusing(context: grpc.ServicerContext, *errors: type[Exception]) -> Iterator[None]:
    """Turn the listed errors raised in the block into a refusal of the call."""
    try:
        yield
    except errors as exc:
        abort(context, exc)
