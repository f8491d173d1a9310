"""Early warning, without I/O: what a node's settings allow and the durations both sides read.

A *watch round* is a pairwise round of protocol v2 announced as such at Prepare
(``RoundSpec.epoch_seconds``); a node refuses it unless its ``[watch]`` settings allow that epoch
(``WatchSettings``). Its shares and tags then serve the epoch (``blindmatch.core.epoch``, which
holds the rules of a check).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from blindmatch.core.errors import BadMessage, PolicyRefusal, WrongPhase
from blindmatch.core.spec import Policy, RoundSpec

Clock = Callable[[], float]  # unix seconds; time.time outside tests

DEFAULT_EPOCH_SECONDS = 24 * 3600.0
MAX_EPOCH_SECONDS = 90 * 24 * 3600.0
DEFAULT_MAX_EPOCH = "7d"  # node.toml [watch] max_epoch: the longest epoch a node keeps a share for
DEFAULT_CHECK_BUDGET = 10_000  # evaluations a node lets each partner's checks ask per epoch
MAX_CHECK_VALUES = 100_000  # values in one check; more is a client's mistake

_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(s|m|h|d)?\s*")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}


class EpochEnded(WrongPhase):
    """A check, an evaluation or an alert after the epoch's end (FAILED_PRECONDITION)."""


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


def shares_with(policy: Policy, partner: str) -> bool:
    """Whether ``policy`` lets ``partner`` learn that this node holds a value."""
    return policy.partners is None or partner in policy.partners


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
                f"watch round {spec.round_id} asks {me} to keep its share for {days(seconds)}; "
                f"its node.toml allows at most {days(self.max_epoch)} ([watch] max_epoch)"
            )
