"""Every phase a round or a schedule can be in, and every move between them.

Everything that changes a phase is checked here (in the manner of h11's ``_state.py``): the rules
are written below, the tables under them are the same rules as data, and the machines (``NodeRound``
in round_node.py, ``CommitteeNode`` in committee.py, the coordinator's round driver and its
scheduler) accept a message and change phase only through their ``Table``; a message or a move the
table does not list raises ``WrongPhase``.

The strings of rounds and schedules are on disk (the node's audit log, the coordinator's
state file) and on the wire (``RoundInfo.state`` and ``ScheduleInfo.state`` in
proto/blindmatch/v1/coordinator.proto): never rename one.

A node's own set in a round (``NodePhase``, ``NODE``; round_node.NodeRound)
  PREPARED    Prepare accepted: the own set selected and shuffled (the position map).
  ROUTING     Begin accepted: every set's size is within the node's caps; the set is evaluated.
              Named after the coordinator's phase of the same step.
  DONE        the delivery resolved to its sightings; the position map is gone.
  ABORTED     Abort, a refused message, the coordinator's silence or a shutdown; the map is gone.
  PREPARED -> ROUTING -> DONE, and PREPARED or ROUTING -> ABORTED. DONE and ABORTED are final.

The coordinator's round (``CoordinatorPhase``, ``COORDINATOR``; ``RoundInfo.state``, published by
coordinator/driver.py; what the round's messages may say is committee.CommitteeCoordinator's)
  PREPARING   Prepare, SignTranscript and Begin: every participant's size, commitment, signature.
  ROUTING     the sets are evaluated: requests and answers relayed (the name dates from v1).
  DELIVERING  every tag root is in: the tags are revealed, matched and the deliveries sent.
  DONE        every participant has its delivery.
  FAILED      anything else; every participant is told to abort.
  PREPARING -> ROUTING -> DELIVERING -> DONE, and any of the first three -> FAILED.

A node's round (``CommitteePhase``, ``COMMITTEE_NODE``; committee.CommitteeNode, served by
node/committee.py)
  PREPARED    Prepare accepted: the set fixed, a share drawn and committed when a member.
  SIGNED      the transcript verified and signed; waiting for everyone's signature.
  EVALUATING  every participant signed the same transcript: the node asks for its set's
              evaluations and, as a member, answers the others'.
  TAGGED      its tags verified and their signed root out; the tags themselves go out only
              once every participant's signed root is in (commit, then reveal).
  DONE        the delivery verified against the holders' signed roots.
  ABORTED     a refusal, a failed check, an abort or the coordinator's silence; the share is gone.
  PREPARED -> SIGNED -> EVALUATING -> TAGGED -> DONE, and any but DONE -> ABORTED.

A standing order at the coordinator (``SchedulePhase``, ``SCHEDULE``; coordinator/schedules.py)
  ACTIVE      its runs are started when due (or skipped, recorded).
  CANCELLED   an operator cancelled it: nothing more starts; its run in flight goes on.
  ENDED       no run is left before its ``until``.
  ACTIVE -> CANCELLED, ACTIVE -> ENDED. Cancelling one that is no longer active changes nothing.

Outcomes (``Outcome``): how a round or a check ended, in audit records
  A node's audit of a round says STARTED until the round ends, then DONE, FAILED, REFUSED or
  ABORTED (``ROUND_OUTCOMES``); its audit of a check says DONE, REFUSED or FAILED
  (``CHECK_OUTCOMES``). The coordinator's final phases are the outcomes DONE and FAILED.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final, Generic, Never, TypeVar

from blindmatch.core.errors import WrongPhase


class Outcome(enum.StrEnum):
    STARTED = "started"  # a node's audit: the round has not ended yet
    DONE = "done"
    FAILED = "failed"
    REFUSED = "refused"
    ABORTED = "aborted"


ROUND_OUTCOMES: Final = tuple(Outcome)  # a node's audit of a round, in the schema's order
ROUND_ENDS: Final = tuple(o for o in Outcome if o is not Outcome.STARTED)
CHECK_OUTCOMES: Final = (Outcome.DONE, Outcome.REFUSED, Outcome.FAILED)


class NodePhase(enum.StrEnum):
    PREPARED = "prepared"
    ROUTING = "routing"
    DONE = Outcome.DONE.value
    ABORTED = Outcome.ABORTED.value


class NodeEvent(enum.StrEnum):
    """What a node's own set is asked for (the messages of node.proto, as the core sees them)."""

    OWN_SET = "own set"  # Own: the set's points, for the node's requests
    BEGIN = "begin"  # Begin: every set's size, from the signed transcript
    DELIVERY = "delivery"  # Deliver


class CoordinatorPhase(enum.StrEnum):
    PREPARING = "preparing"
    ROUTING = "routing"
    DELIVERING = "delivering"
    DONE = Outcome.DONE.value
    FAILED = Outcome.FAILED.value


class CommitteePhase(enum.StrEnum):
    PREPARED = "prepared"
    SIGNED = "signed"
    EVALUATING = "evaluating"
    TAGGED = "tagged"
    DONE = "done"
    ABORTED = "aborted"


class CommitteeEvent(enum.StrEnum):
    TRANSCRIPT = "Transcript"
    BEGIN = "Begin"
    REQUEST = "Request"  # another owner's request, to this node as a member
    ANSWER = "Answer"  # a member's answer, to this node as an owner
    TAGS = "Tags"
    REVEAL = "Reveal"  # every participant's signed root is in: the tags may go out
    DELIVERY = "Deliver"


class SchedulePhase(enum.StrEnum):
    ACTIVE = "active"
    CANCELLED = "cancelled"
    ENDED = "ended"


class ScheduleEvent(enum.StrEnum):
    RUN = "run"  # a tick: the due run is started or skipped, or the schedule ends
    CANCEL = "cancel"


P = TypeVar("P", bound=enum.StrEnum)
E = TypeVar("E", bound=enum.StrEnum)


@dataclass(frozen=True, slots=True)
class Table(Generic[P, E]):
    """One machine's rules: the phases that accept each message, the moves out of each phase."""

    accepts: Mapping[E, tuple[P, ...]]
    moves: Mapping[P, tuple[P, ...]]
    expects: str  # how a refusal introduces the phases a message needs (operators read it)

    def final(self, phase: P) -> bool:
        return not self.moves[phase]

    def allows(self, phase: P, event: E) -> bool:
        return phase in self.accepts[event]

    def require(self, subject: str, phase: P, event: E) -> None:
        """Refuse ``event`` unless ``phase`` accepts it; ``subject`` names the round."""
        if not self.allows(phase, event):
            raise WrongPhase(
                f"{subject} is {phase.value}; {self.expects} "
                + " or ".join(p.value for p in self.accepts[event])
            )

    def move(self, subject: str, phase: P, to: P) -> P:
        """The phase after ``phase`` -> ``to``, if the table lists that move."""
        if to not in self.moves[phase]:
            raise WrongPhase(f"{subject} is {phase.value}; it cannot become {to.value}")
        return to


NODE: Final[Table[NodePhase, NodeEvent]] = Table(
    accepts={
        NodeEvent.OWN_SET: (NodePhase.PREPARED, NodePhase.ROUTING),
        NodeEvent.BEGIN: (NodePhase.PREPARED,),
        NodeEvent.DELIVERY: (NodePhase.ROUTING,),
    },
    moves={
        NodePhase.PREPARED: (NodePhase.ROUTING, NodePhase.ABORTED),
        NodePhase.ROUTING: (NodePhase.DONE, NodePhase.ABORTED),
        NodePhase.DONE: (),
        NodePhase.ABORTED: (),
    },
    expects="this message needs",
)

# Moves only: the messages of a round are checked by committee.CommitteeCoordinator's own rules.
COORDINATOR: Final[Table[CoordinatorPhase, Never]] = Table(
    accepts={},
    moves={
        CoordinatorPhase.PREPARING: (CoordinatorPhase.ROUTING, CoordinatorPhase.FAILED),
        CoordinatorPhase.ROUTING: (CoordinatorPhase.DELIVERING, CoordinatorPhase.FAILED),
        CoordinatorPhase.DELIVERING: (CoordinatorPhase.DONE, CoordinatorPhase.FAILED),
        CoordinatorPhase.DONE: (),
        CoordinatorPhase.FAILED: (),
    },
    expects="expected",
)

COMMITTEE_NODE: Final[Table[CommitteePhase, CommitteeEvent]] = Table(
    accepts={
        CommitteeEvent.TRANSCRIPT: (CommitteePhase.PREPARED,),
        CommitteeEvent.BEGIN: (CommitteePhase.SIGNED,),
        # A member keeps answering after its own tags are out: the others may be slower.
        CommitteeEvent.REQUEST: (CommitteePhase.EVALUATING, CommitteePhase.TAGGED),
        CommitteeEvent.ANSWER: (CommitteePhase.EVALUATING,),
        CommitteeEvent.TAGS: (CommitteePhase.EVALUATING,),
        CommitteeEvent.REVEAL: (CommitteePhase.TAGGED,),
        CommitteeEvent.DELIVERY: (CommitteePhase.TAGGED,),
    },
    moves={
        CommitteePhase.PREPARED: (CommitteePhase.SIGNED, CommitteePhase.ABORTED),
        CommitteePhase.SIGNED: (CommitteePhase.EVALUATING, CommitteePhase.ABORTED),
        CommitteePhase.EVALUATING: (CommitteePhase.TAGGED, CommitteePhase.ABORTED),
        CommitteePhase.TAGGED: (CommitteePhase.DONE, CommitteePhase.ABORTED),
        CommitteePhase.DONE: (),
        CommitteePhase.ABORTED: (),
    },
    expects="this message needs",
)

SCHEDULE: Final[Table[SchedulePhase, ScheduleEvent]] = Table(
    accepts={
        ScheduleEvent.RUN: (SchedulePhase.ACTIVE,),
        ScheduleEvent.CANCEL: (SchedulePhase.ACTIVE,),
    },
    moves={
        SchedulePhase.ACTIVE: (SchedulePhase.CANCELLED, SchedulePhase.ENDED),
        SchedulePhase.CANCELLED: (),
        SchedulePhase.ENDED: (),
    },
    expects="expected",
)

# The coordinator's record of a round is running until it reaches a final phase; a restart
# fails the running ones (their shares died with the nodes' rounds).
COORDINATOR_RUNNING: Final = tuple(p for p in CoordinatorPhase if not COORDINATOR.final(p))
COORDINATOR_FINAL: Final = tuple(p for p in CoordinatorPhase if COORDINATOR.final(p))


def sql_in(column: str, values: Iterable[str]) -> str:
    """A CHECK condition limiting ``column`` to a vocabulary: ``outcome IN ('done', 'failed')``."""
    words = [str(v) for v in values]
    if any("'" in w for w in words):
        raise ValueError("a state name never holds a quote")
    quoted = ", ".join(f"'{w}'" for w in words)
    return f"{column} IN ({quoted})"
