"""Early warning, without I/O: watch epochs, check budgets and the routing of a check.

A *watch round* runs exactly like a pairwise round, and then opens an *epoch* (default 24 h):

- Each participant keeps the round's key for the epoch (``NodeEpoch``), with its *tag map*: its
  own final tags (the coordinator hands them back by position) -> (kind, canonical value).
- The coordinator keeps, per participant, a Bloom filter of that participant's final tags
  instead of the tags themselves.

Rules of a check (node C checks values during epoch E):
  1. C canonicalises, hashes and blinds the values under its epoch key, and sends them to the
     coordinator with the partners its policy lets learn of its sightings.
  2. The coordinator routes the elements through every other participant of E in cyclic order
     (``check_route``), as a round routes C's set. Each partner P applies its epoch key only
     within its per-epoch budget for C (``NodeEpoch.charge``), and says whether its policy
     lets C learn what it holds.
  3. The final tags are tested against the filter of every partner both policies allow. A
     partner with a hit is sent the tags (``Alert``); it confirms the ones in its tag map (a
     Bloom false positive is never reported) and records "C has now sighted your indicator".
  4. C learns, per value, the partners that confirmed, records them as alerts, and adds the
     final tags to its tag map; the coordinator adds them to C's filter.
  Nothing is accepted after the epoch's end (``EpochEnded``); the key is destroyed then.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from blindmatch.group import ELEMENT_BYTES, RoundKey
from blindmatch.protocol import BadMessage, CapExceeded, PolicyRefusal, WrongPhase

DEFAULT_EPOCH_SECONDS = 24 * 3600.0
MAX_EPOCH_SECONDS = 90 * 24 * 3600.0
DEFAULT_CHECK_BUDGET = 10_000  # elements a node blinds for each partner's checks per epoch
# Target false-positive rate of each coordinator filter. With E elements checked per epoch
# across the federation and P partner filters tested per element, expected Bloom false
# positives are E * P * rate: 64 nations at the default budget (E <= 64 * 10_000, P <= 63) give
# 0.04 per epoch. A false positive costs one Alert that the partner answers "not mine"; it never
# reaches the checking node as a hit (rule 3).
FILTER_ERROR_RATE = 1e-9

_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(s|m|h|d)?\s*")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}


class EpochEnded(WrongPhase):
    """A check or re-blinding after the epoch's end (FAILED_PRECONDITION)."""


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


def expected_false_positives(elements: int, partner_filters: int, rate: float) -> float:
    """Bloom false positives expected when ``elements`` are each tested in that many filters."""
    return elements * partner_filters * rate


def check_route(participants: Sequence[str], checker: str) -> tuple[str, ...]:
    """The partners a check visits, in the round's cyclic order starting after the checker."""
    if checker not in participants:
        raise PolicyRefusal(f"{checker} is not a participant of this epoch")
    i = participants.index(checker)
    n = len(participants)
    return tuple(participants[(i + hop) % n] for hop in range(1, n))


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


def split_tags(packed: bytes) -> list[bytes]:
    if len(packed) % ELEMENT_BYTES:
        raise BadMessage(f"{len(packed)} bytes is not a whole number of 32-byte tags")
    return [packed[i : i + ELEMENT_BYTES] for i in range(0, len(packed), ELEMENT_BYTES)]


@dataclass
class NodeEpoch:
    """One node's side of an epoch: the kept key, the tag map, budgets spent by each partner."""

    epoch_id: str
    me: str
    participants: tuple[str, ...]
    ends: float  # unix seconds
    key: RoundKey | None
    budget: int
    tags: dict[bytes, tuple[str, str]] = field(default_factory=dict)
    spent: dict[str, int] = field(default_factory=dict)  # partner -> elements blinded for it
    closed: str | None = None  # why the epoch ended early, if it did

    def require_open(self, now: float) -> RoundKey:
        if self.closed is not None:
            raise EpochEnded(f"epoch {self.epoch_id} was closed ({self.closed})")
        if now >= self.ends or self.key is None:
            raise EpochEnded(
                f"epoch {self.epoch_id} ended at {utc_text(self.ends)}; start a new watch round "
                "(`blindmatch round start --mode watch`)"
            )
        return self.key

    def charge(self, checker: str, count: int, now: float) -> RoundKey:
        """Book ``count`` elements of ``checker``'s check against its budget; the key to use."""
        key = self.require_open(now)
        if checker == self.me or checker not in self.participants:
            raise PolicyRefusal(f"{checker} is not a partner of {self.me} in epoch {self.epoch_id}")
        used = self.spent.get(checker, 0)
        if used + count > self.budget:
            raise CapExceeded(
                f"{self.me} has blinded {used} of the {self.budget} elements it allows {checker}'s "
                f"checks this epoch; this check of {count} would exceed it (check_budget in "
                f"{self.me}'s node.toml; the budget renews with the next epoch, "
                f"after {utc_text(self.ends)})"
            )
        self.spent[checker] = used + count
        return key

    def remember(self, tags: Iterable[bytes], items: Iterable[tuple[str, str]]) -> None:
        for tag, item in zip(tags, items, strict=True):
            self.tags[tag] = item

    def lookup(self, tags: Iterable[bytes]) -> list[tuple[str, str] | None]:
        return [self.tags.get(t) for t in tags]

    def close(self, reason: str) -> None:
        """Destroy the key and the tag map; idempotent."""
        if self.key is not None:
            self.key.destroy()
        self.key = None
        self.tags = {}
        if self.closed is None:
            self.closed = reason


def bloom_bits_per_element(rate: float) -> float:
    """Bits per element of an optimal Bloom filter at false-positive ``rate``."""
    return -math.log(rate) / math.log(2) ** 2
