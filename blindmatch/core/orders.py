"""Standing orders: rounds an operator signs once, to run on a schedule.

Run k of an order is one round, fixed by the order alone: its id is ``<schedule id>-<k>``, it is
issued ``first + k * every``, and everything else is the order's. The coordinator keeps the order
and starts the runs; every node derives the run's spec itself from the signed order and k, and
accepts it only when that run is due by the node's own clock (the same window as a single signed
spec) and before the order's end. So a coordinator can start no round the operator did not sign:
not an extra run (an id is used once), not other participants or another mode, not at another time.

Repairs (watch orders only, docs/WATCH.md "Repairs"): a node's epoch share lives in its memory, so
a node restart ends it and partners' checks fail until the next epoch. Repair j of period k
(``1 <= j <= MAX_REPAIRS``) is run k again under the id ``<schedule id>-<k>r<j>``: the same spec
but for that id, derived by every node from the order as a run is. A node accepts it any time
within period k by its own clock: from run k's time (less MAX_SPEC_SKEW) until run k+1's time, and
before the order's end. The coordinator starts one once every node is back after one lost its key.
What a coalition holding the coordinator gains by repairs is no more than the order signed: the
same participants, mode and kinds, each node's checks still within its budget, and at most
MAX_REPAIRS more epochs per period (each id is used once, and each costs the nodes' budgets).

Nothing here reads the clock or the network: the caller passes ``now``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from typing import Final

from blindmatch.core.errors import BadMessage
from blindmatch.core.signing import MAX_SPEC_AGE, MAX_SPEC_SKEW, SignedOrder, StaleSpec, spec_digest
from blindmatch.core.spec import MAX_TIME, RoundSpec, check_time

SCHEDULE_ID: Final = re.compile(r"[A-Za-z0-9_]{1,48}")  # leaves room for "-<k>" in a round id
MIN_EVERY: Final = 60.0  # seconds: a shorter period is a typo, not a federation's schedule
MAX_NAME: Final = 200
MAX_REPAIRS: Final = 3  # repairs of one period a node accepts: each costs every node's budgets


@dataclass(frozen=True, slots=True)
class StandingOrder:
    schedule_id: str
    name: str
    template: RoundSpec  # the runs' spec but for round id and issued
    every: float  # seconds between runs
    first: float  # unix seconds when run 0 is due
    until: float = 0.0  # unix seconds; no run is due at or after it (0: no end)
    issued: float = 0.0  # unix seconds when the operator signed it

    def __post_init__(self) -> None:
        if not SCHEDULE_ID.fullmatch(self.schedule_id):
            raise BadMessage("a schedule id is 1-48 letters, digits or '_'")
        if len(self.name) > MAX_NAME:
            raise BadMessage(f"a schedule name is at most {MAX_NAME} characters")
        # every range is written ``not a <= x <= b``, which refuses NaN too
        if not MIN_EVERY <= self.every <= MAX_TIME:
            raise BadMessage(
                f"every_seconds {self.every}: runs are at least {MIN_EVERY:.0f} s apart, and "
                f"at most {MAX_TIME:.0f}"
            )
        if not 0 < self.first <= MAX_TIME:
            raise BadMessage(
                f"first {self.first} is not a time: unix seconds in (0, {MAX_TIME:.0f}]"
            )
        check_time(self.until, "until")
        check_time(self.issued, "issued")
        if self.until and self.until <= self.first:
            raise BadMessage("the schedule ends before its first run")

    def run_time(self, k: int) -> float:
        return self.first + k * self.every

    def run_spec(self, k: int, repair: int = 0) -> RoundSpec:
        """Run k's round (or its repair ``repair``), exactly as every node derives it."""
        if k < 0:
            raise BadMessage(f"run {k} of a schedule: runs are numbered from 0")
        if not self.run_time(k) <= MAX_TIME:
            raise BadMessage(
                f"run {k} of schedule {self.schedule_id} would be due after {MAX_TIME:.0f}: "
                "no such run"
            )
        round_id = f"{self.schedule_id}-{k}"
        if repair:
            self._check_repair(k, repair)
            round_id += f"r{repair}"
        return replace(self.template, round_id=round_id, issued=self.run_time(k))

    def _check_repair(self, k: int, repair: int) -> None:
        """BadMessage unless repair ``repair`` of period k can exist at all."""
        if not self.template.watching:
            raise BadMessage(
                f"schedule {self.schedule_id} is not a watch order: its runs open no epoch, "
                "and there is nothing to repair"
            )
        if not 1 <= repair <= MAX_REPAIRS:
            raise BadMessage(
                f"repair {repair} of run {k} of schedule {self.schedule_id}: a period has "
                f"repairs 1 to {MAX_REPAIRS} only"
            )

    def allows(self, k: int) -> bool:
        """Whether run k exists at all: before the order's end."""
        return k >= 0 and (not self.until or self.run_time(k) < self.until)

    def check_due(self, k: int, now: float) -> None:
        """StaleSpec unless run k is one the order allows and is due at ``now``: the window a
        single signed spec has (MAX_SPEC_SKEW early, MAX_SPEC_AGE late)."""
        if not self.allows(k):
            raise StaleSpec(
                f"schedule {self.schedule_id} has no run {k}: it ends before that run is due"
            )
        age = now - self.run_time(k)
        if age > MAX_SPEC_AGE:
            raise StaleSpec(
                f"run {k} of schedule {self.schedule_id} was due {age:.0f} s ago; a run is "
                f"accepted for {MAX_SPEC_AGE:.0f} s after it is due"
            )
        if age < -MAX_SPEC_SKEW:
            raise StaleSpec(
                f"run {k} of schedule {self.schedule_id} is not due for {-age:.0f} s; at most "
                f"{MAX_SPEC_SKEW:.0f} s of clock skew is accepted"
            )

    def check_repair(self, k: int, repair: int, now: float) -> None:
        """StaleSpec (or BadMessage) unless repair ``repair`` of period k is one the order allows
        at ``now``: a watch order, ``1 <= repair <= MAX_REPAIRS``, run k allowed, and ``now``
        within period k (from run k's time, less MAX_SPEC_SKEW, until run k+1's and the order's
        end). An epoch lost in period k is repaired in period k; after it, run k+1 is due."""
        self._check_repair(k, repair)
        if not self.allows(k):
            raise StaleSpec(
                f"schedule {self.schedule_id} has no run {k}: it ends before that run is due"
            )
        what = f"repair {repair} of run {k} of schedule {self.schedule_id}"
        early = self.run_time(k) - MAX_SPEC_SKEW - now
        if early > 0:
            raise StaleSpec(
                f"{what} is not due for {early:.0f} s: a repair is accepted only within its "
                "run's period"
            )
        end = self.run_time(k + 1)
        if self.until:
            end = min(end, self.until)
        if now >= end:
            raise StaleSpec(
                f"{what} is {now - end:.0f} s past its period, which ended at "
                f"{end:.0f} (the next run or the order's end); a repair is accepted only "
                "within its run's period"
            )

    def last_run(self) -> int | None:
        """The last run before the order's end (None: no end)."""
        if not self.until:
            return None
        return math.ceil((self.until - self.first) / self.every) - 1

    def due_run(self, now: float) -> int | None:
        """The latest run due at ``now``, the order's end considered (None: none due yet)."""
        if now < self.first:
            return None
        k = int((now - self.first) // self.every)
        last = self.last_run()
        return k if last is None else min(k, last)

    def next_time(self, after_run: int | None) -> float | None:
        """When the run after ``after_run`` (None: run 0) is due; None once the order has ended."""
        k = 0 if after_run is None else after_run + 1
        return self.run_time(k) if self.allows(k) else None


@dataclass(frozen=True, slots=True)
class ScheduledRun:
    """Run ``run`` of a signed standing order: what the coordinator sends a node in place of a
    signed spec. ``spec_bytes`` is the derived spec serialized (``wire.spec_bytes``), whose
    digest binds the run's chunks as a signed spec's does."""

    signed: SignedOrder
    order: StandingOrder
    run: int
    spec_bytes: bytes
    repair: int = 0  # 0: run ``run`` itself; j > 0: repair j of its period (watch orders)

    @property
    def spec(self) -> RoundSpec:
        """The run's round, as every node derives it."""
        return self.order.run_spec(self.run, self.repair)

    @property
    def digest(self) -> bytes:
        return spec_digest(self.spec_bytes)
