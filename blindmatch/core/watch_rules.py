"""Early warning, without I/O: the rules a node and the coordinator share, for a check and for
an epoch's opening and closing.

A *watch round* is a pairwise round announced as such at Prepare (``RoundSpec.epoch_seconds``);
a node refuses it unless its ``[watch]`` settings allow that epoch (``WatchSettings``). Once the
round is fully blinded the coordinator draws its own epoch key k_c, applies it to every final
tag, and hands each node its own k_c-tags (``BeginEpoch``): the node *stages* the epoch (PENDING,
in ``blindmatch.core.states.EPOCH``) with a copy of the round's key and its *tag map*: k_c-tag ->
(kind, canonical value). A successful delivery opens it; any other end of the round (a failure,
a refused delivery, Abort, even after the delivery) closes it and destroys the key.

Rules of a check (node C checks values during epoch E):
  1. C canonicalises the values and blinds their H(v) (stored since import, or hashed now)
     under one key that is a fresh one-use ``Mask`` and its epoch key at once
     (``group.combined_key``), signs them chunk by chunk (``CheckClaim``, hop 0, a fresh check
     id, each chunk's seq of ``CHECK_CHUNK`` elements) and sends them to the coordinator with
     the partners its policy lets learn of its sightings.
  2. The coordinator routes every chunk through every other participant of E in cyclic order
     (``check_route``), pipelined: a chunk moves on to the next hop as soon as the previous one
     returned it. Partner P at hop h re-blinds only a chunk signed by the node that must have
     produced it (C at hop 1, the previous partner of the route after that), with a
     certificate of the federation CA, for a checker that is a participant, and only once per
     (check id, seq); then books it against C's budget and signs its output as hop h. Anything
     else is refused and costs nothing.
  3. The coordinator applies k_c and hands the result back to C, which removes its mask: the
     k_c-tags of the values. No node ever sees a check's final tag unmasked and without k_c,
     so no partner can tell whether a value checked is its own, nor link two checks.
  4. C sends the k_c-tags back; the coordinator tests them against the filter of every partner
     both policies allow. A partner with a hit is sent the tags (``Alert``); it confirms those in
     its tag map (a Bloom false positive is never reported) and records "C has now sighted your
     indicator". C learns, per value, the partners that confirmed, and adds the tags to its tag
     map; the coordinator adds them to C's filter.
  Nothing is accepted after the epoch's end (``EpochEnded``); the key is destroyed then.

This module holds the rules both sides apply: a check's route through the ring (``ring``), its
chunks and elements, and how an epoch opens and closes (``open_epoch``, ``close_epoch``, by the
table ``states.EPOCH``). The coordinator's side is ``blindmatch.core.watch_coordinator``; the
node's machines are in ``blindmatch.core.watch_node``: ``NodeWatchCore`` (the staged and the
current ``NodeEpoch``, the re-blinding of partners' checks) and ``NodeCheck`` (one check of the
node's own sightings). No I/O and no real clock: a clock callable is passed in.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from blindmatch.core import ring
from blindmatch.core.errors import BadMessage, PolicyRefusal, ProtocolError, WrongPhase
from blindmatch.core.group import ELEMENT_BYTES, RoundKey
from blindmatch.core.signing import CheckClaim
from blindmatch.core.spec import Policy, RoundSpec
from blindmatch.core.states import EPOCH, EpochEvent, EpochPhase

Clock = Callable[[], float]  # unix seconds; time.time outside tests

DEFAULT_EPOCH_SECONDS = 24 * 3600.0
MAX_EPOCH_SECONDS = 90 * 24 * 3600.0
DEFAULT_MAX_EPOCH = "7d"  # node.toml [watch] max_epoch: the longest epoch a node keeps a key for
DEFAULT_CHECK_BUDGET = 10_000  # elements a node blinds for each partner's checks per epoch
# Target false-positive rate of each coordinator filter. With E elements checked per epoch
# across the federation and P partner filters tested per element, expected Bloom false
# positives are E * P * rate: 64 nations at the default budget (E <= 64 * 10_000, P <= 63) give
# 0.04 per epoch. A false positive costs one Alert that the partner answers "not mine"; it never
# reaches the checking node as a hit (rule 4).
FILTER_ERROR_RATE = 1e-9
MAX_CHECK_ELEMENTS = 100_000  # per check: 3.2 MB of elements each way
# Elements per chunk of a check: what the checker signs at once and each hop blinds per call.
# Small enough that the hops work on different chunks at the same time, large enough that a
# chunk's signature, certificate check and call cost little beside its blindings (about 60 ms).
CHECK_CHUNK = 1024
CHECK_ID = re.compile(r"[0-9a-f]{16,64}")
# How a refusal of either side names a check: "a check that is asking; expected planned".
CHECK_SUBJECT = "a check that"

_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(s|m|h|d)?\s*")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}


class EpochEnded(WrongPhase):
    """A check or re-blinding after the epoch's end (FAILED_PRECONDITION)."""


class BadReply(BadMessage):
    """A reply from the party a check relies on breaks the rules (count, index, sender).

    The caller's own request was fine, so the status it gets is INTERNAL, not INVALID_ARGUMENT.
    """

    code = "INTERNAL"


class CheckReplayed(ProtocolError):
    """A check id this node has already blinded for in this epoch: each check is blinded once."""

    code = "ALREADY_EXISTS"


def parse_duration(text: str) -> float:
    """Seconds in "24h", "90m", "3600s", "2d" or a plain number of seconds."""
    m = _DURATION.fullmatch(text)
    if m is None:
        raise ValueError(f"duration {text!r}: expected a number with s, m, h or d, e.g. 24h or 90m")
    seconds = float(m.group(1)) * _UNIT_SECONDS[m.group(2)]
    if not 0 < seconds <= MAX_EPOCH_SECONDS:
        raise ValueError(
            f"duration {text!r} must be more than 0 and at most {MAX_EPOCH_SECONDS / 86400:g} days"
        )
    return seconds


def utc_text(unix: float) -> str:
    return datetime.fromtimestamp(unix, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def days(seconds: float) -> str:
    return f"{seconds / 86400:g} days"


def expected_false_positives(elements: int, partner_filters: int, rate: float) -> float:
    """Bloom false positives expected when ``elements`` are each tested in that many filters."""
    return elements * partner_filters * rate


def bloom_bits_per_element(rate: float) -> float:
    """Bits per element of an optimal Bloom filter at false-positive ``rate``."""
    return -math.log(rate) / math.log(2) ** 2


def check_route(participants: Sequence[str], checker: str) -> tuple[str, ...]:
    """The partners a check visits, in the round's cyclic order starting after the checker."""
    if checker not in participants:
        raise PolicyRefusal(f"{checker} is not a participant of this epoch")
    return ring.partners(participants, participants.index(checker))


def reported_partners(
    participants: Sequence[str],
    checker: str,
    checker_allows: frozenset[str] | None,
    partner_shares: Mapping[str, bool],
) -> tuple[str, ...]:
    """Partners whose filters a check may consult: allowed by both sides' policies."""
    return tuple(
        p
        for p in check_route(participants, checker)
        if (checker_allows is None or p in checker_allows) and partner_shares.get(p, False)
    )


def check_elements(packed: bytes) -> int:
    """How many elements a check carries: one or more whole 32-byte elements, or refused."""
    count = len(packed) // ELEMENT_BYTES
    if len(packed) % ELEMENT_BYTES or not count:
        raise BadMessage("a check carries one or more whole 32-byte elements")
    return count


def shares_with(policy: Policy, checker: str) -> bool:
    """Whether ``policy`` lets ``checker`` learn that this node holds a value (rule 2)."""
    return policy.partners is None or checker in policy.partners


def check_chunks(packed: bytes) -> list[bytes]:
    """A check's elements in the chunks its signatures cover: ``CHECK_CHUNK`` elements each,
    the last one shorter."""
    size = CHECK_CHUNK * ELEMENT_BYTES
    return [packed[i : i + size] for i in range(0, len(packed), size)]


def split_tags(packed: bytes) -> list[bytes]:
    if len(packed) % ELEMENT_BYTES:
        raise BadMessage(f"{len(packed)} bytes is not a whole number of 32-byte tags")
    return [packed[i : i + ELEMENT_BYTES] for i in range(0, len(packed), ELEMENT_BYTES)]


@dataclass(frozen=True, slots=True)
class CheckHop:
    """A chunk of a check on its way to the next partner, with its producer's signature.

    ``hop`` names the producer: 0 the checker, h the h-th partner of ``check_route`` (the
    holder of hop h in ``ring``); ``seq`` is the chunk's place among the check's ``chunks``."""

    epoch_id: str
    checker: str
    check_id: str
    hop: int
    elements: bytes
    signature: bytes
    certificate: bytes
    seq: int = 0
    chunks: int = 1

    def claim(self, spec_digest: bytes) -> CheckClaim:
        return CheckClaim(
            self.epoch_id,
            spec_digest,
            self.checker,
            self.check_id,
            self.hop,
            self.elements,
            self.seq,
            self.chunks,
        )


# --- an epoch, at a node and at the coordinator ------------------------------------------------


class Epoch(Protocol):
    """What a node's ``NodeEpoch`` and the coordinator's ``CoordinatorEpoch`` share: a key kept
    beyond the watch round, and the phase of ``states.EPOCH`` that says whether it still is."""

    epoch_id: str
    key: RoundKey | None
    phase: EpochPhase
    closed: str | None  # why it closed, once it has


def open_epoch(epoch: Epoch) -> None:
    """The watch round delivered: the epoch accepts checks from now on."""
    subject = f"epoch {epoch.epoch_id}"
    EPOCH.require(subject, epoch.phase, EpochEvent.DELIVERY)
    epoch.phase = EPOCH.move(subject, epoch.phase, EpochPhase.OPEN)


def close_epoch(epoch: Epoch, reason: str) -> None:
    """Destroy the epoch's key and close it; idempotent, so the first ``reason`` is the one kept.

    What the epoch holds besides its key (a node's tag map, the coordinator's filters) is the
    caller's to drop."""
    if epoch.key is not None:
        epoch.key.destroy()
    epoch.key = None
    if epoch.phase is not EpochPhase.CLOSED:
        epoch.phase = EPOCH.move(f"epoch {epoch.epoch_id}", epoch.phase, EpochPhase.CLOSED)
        epoch.closed = reason


# --- a node's watch settings ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WatchSettings:
    """node.toml ``[watch]``: whether the node takes part in watch rounds, and for how long."""

    enabled: bool = True
    max_epoch: float = 7 * 86400.0  # seconds
    check_clients: tuple[tuple[str, str], ...] = ()  # (role, name) allowed to call Check

    def admit(self, spec: RoundSpec, me: str) -> None:
        """Refuse a watch round this node's settings do not allow (at Prepare)."""
        seconds = spec.epoch_seconds
        if not math.isfinite(seconds) or seconds < 0:
            raise BadMessage(f"round {spec.round_id}: epoch_seconds {seconds!r} is not a duration")
        if seconds == 0:
            return
        if not self.enabled:
            raise PolicyRefusal(
                f"node {me} takes no part in watch rounds ([watch] enabled = false in its node.toml)"
            )
        if seconds > self.max_epoch:
            raise PolicyRefusal(
                f"watch round {spec.round_id} asks {me} to keep its key for {days(seconds)}; "
                f"its node.toml allows at most {days(self.max_epoch)} ([watch] max_epoch)"
            )
