"""What the protocol refuses: one exception per gRPC status, mapped in one place per service.

Its own module so that the state tables (``states``) and the machines (``protocol``, ``watch``)
raise the same errors without importing each other in a cycle; ``protocol`` re-exports them.
"""

from __future__ import annotations


class ProtocolError(Exception):
    """A message the protocol refuses; ``code`` maps to a gRPC status in one place per service."""

    code = "INVALID_ARGUMENT"


class BadMessage(ProtocolError):
    code = "INVALID_ARGUMENT"


class WrongPhase(ProtocolError):
    code = "FAILED_PRECONDITION"


class PolicyRefusal(ProtocolError):
    code = "PERMISSION_DENIED"


class CapExceeded(ProtocolError):
    code = "RESOURCE_EXHAUSTED"


class UnknownRound(ProtocolError):
    code = "NOT_FOUND"
