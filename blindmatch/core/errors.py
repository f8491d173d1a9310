"""What the protocol refuses: one exception per gRPC status, mapped in one place per service.

Its own module so that the state tables (``states``) and the machines (``round_node``,
``committee``, the ``watch_*`` modules) raise the same errors without importing each other in a
cycle.
"""

from __future__ import annotations


class ProtocolError(Exception):
    """A message the protocol refuses; ``code`` maps to a gRPC status in one place per service."""

    code = "INVALID_ARGUMENT"


class BadMessage(ProtocolError):
    code = "INVALID_ARGUMENT"


class WrongPhase(ProtocolError):
    code = "FAILED_PRECONDITION"


class ForgedMessage(ProtocolError):
    """A message not signed by the party that must have produced it, or by no valid party."""

    code = "PERMISSION_DENIED"


class PolicyRefusal(ProtocolError):
    code = "PERMISSION_DENIED"


class CapExceeded(ProtocolError):
    code = "RESOURCE_EXHAUSTED"


class RoundIdUsed(ProtocolError):
    """A round id already used: round ids are used once, by the nodes and the coordinator."""

    code = "ALREADY_EXISTS"


class UnknownRound(ProtocolError):
    code = "NOT_FOUND"
