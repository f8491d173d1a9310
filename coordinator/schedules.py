"""The coordinator's scheduler: keeps standing orders and starts each run when it is due.

One thread wakes every ``TICK`` seconds (or when told) and calls ``tick``, which does all the
work and is what tests call, with their own clock, instead of waiting. Per schedule, a tick:
- starts the latest due run k unless it already started or skipped it (``last_run``); runs it
  passed over while the coordinator was down or busy count as skipped;
- skips run k, recorded, when the schedule's previous run is still going (never two at once),
  or when it is so late that nodes would refuse it (the last run before ``until``, long after);
- ends the schedule once no run is left before its ``until``;
- under a watch order, repairs the epoch of run k (round ``<id>-<k>r<j>``, core/orders.py) when
  the watch hub says a node lost its key and every node answers again: at most MAX_REPAIRS per
  period, REPAIR_PAUSE apart, never while the schedule's last round is going, and only while no
  later run is due (run k+1 opens the next epoch anyway).
A cancelled schedule starts nothing more; its run in flight goes on. A schedule's phases and
their moves are the table ``blindmatch.core.states.SCHEDULE``.

The orders are the operator's, signed (blindmatch.core.orders): the coordinator only decides when to
ask, and every node checks for itself that the run it is asked for is one the order allows now.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Final, Protocol

from blindmatch.core.errors import RoundIdUsed, UnknownRound
from blindmatch.core.orders import MAX_REPAIRS, ScheduledRun, StandingOrder
from blindmatch.core.signing import MAX_SPEC_AGE, SignedOrder
from blindmatch.core.states import SCHEDULE, ScheduleEvent, SchedulePhase
from blindmatch.runtime import serde
from coordinator.records import RoundStore, ScheduleRecord

log = logging.getLogger(__name__)

TICK: Final = 1.0  # seconds between looks at the schedules
# seconds between two repairs of one schedule: a repair that failed is not retried at once, so
# a node refusing it does not use up the period's repairs within a few ticks
REPAIR_PAUSE: Final = 30.0

# Starts a run as the operator of the order; raises if the coordinator refuses it.
StartRun = Callable[[ScheduledRun, str], object]
# Whether the round with this id is still going.
Running = Callable[[str], bool]


class Epochs(Protocol):
    """What the scheduler asks the watch hub (coordinator/watch.py ``WatchHub``)."""

    @property
    def open_epoch_id(self) -> str | None: ...

    def repairable(self, epoch_id: str) -> bool: ...


@dataclass(frozen=True, slots=True)
class ScheduleView:
    record: ScheduleRecord
    order: StandingOrder
    next_run: float | None  # unix seconds the next run is due (None: none left)


class Scheduler:
    def __init__(
        self,
        store: RoundStore,
        start_run: StartRun,
        running: Running,
        clock: Callable[[], float] = time.time,
        epochs: Epochs | None = None,
    ) -> None:
        self.store = store
        self.start_run = start_run
        self.running = running
        self.clock = clock
        self.epochs = epochs  # None: no watch hub, no repairs
        self._repaired: dict[str, float] = {}  # schedule id -> when its last repair started
        self._exhausted: set[tuple[str, int]] = set()  # periods whose repairs are used up
        self._lock = threading.Lock()  # one tick, add or cancel at a time
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, signed: SignedOrder, order: StandingOrder, operator: str) -> ScheduleView:
        """Keep a standing order (its signature verified by the caller) and wake the thread."""
        record = ScheduleRecord(
            id=order.schedule_id,
            name=order.name,
            operator=operator,
            order=signed.order,
            signature=signed.signature,
            operator_cert=signed.operator_cert,
            created=self.clock(),
        )
        with self._lock:
            if any(r.id == record.id for r in self.store.schedules()):
                raise RoundIdUsed(f"schedule {record.id} already exists; ids are used once")
            self.store.save_schedule(record)
        self._wake.set()
        return self._view(record)

    def cancel(self, schedule_id: str, by: str) -> ScheduleView:
        with self._lock:
            record = self._get(schedule_id)
            if SCHEDULE.allows(record.state, ScheduleEvent.CANCEL):
                record = replace(
                    record, state=_moved(record, SchedulePhase.CANCELLED), cancelled_by=by
                )
                self.store.save_schedule(record)
                log.info("schedule %s cancelled by %s", schedule_id, by)
        return self._view(record)

    def views(self) -> list[ScheduleView]:
        with self._lock:
            return [self._view(r) for r in self.store.schedules()]

    def tick(self) -> list[str]:
        """Start every run due now; the round ids started."""
        now = self.clock()
        started = []
        with self._lock:
            for record in self.store.schedules():
                if not SCHEDULE.allows(record.state, ScheduleEvent.RUN):
                    continue
                round_id = self._step(record, now)
                if round_id is None and self.epochs is not None:
                    round_id = self._repair(self._get(record.id), now, self.epochs)
                if round_id is not None:
                    started.append(round_id)
        return started

    def _step(self, record: ScheduleRecord, now: float) -> str | None:
        signed = SignedOrder(record.order, record.signature, record.operator_cert)
        order = serde.order_from_bytes(record.order)
        k = order.due_run(now)
        if order.next_time(record.last_run) is None:
            self.store.save_schedule(replace(record, state=_moved(record, SchedulePhase.ENDED)))
            log.info("schedule %s ended: no run left before its end", record.id)
            return None
        if k is None or (record.last_run is not None and k <= record.last_run):
            return None
        missed = k - (0 if record.last_run is None else record.last_run + 1)
        record = replace(record, last_run=k, skipped=record.skipped + missed)
        if now - order.run_time(k) > MAX_SPEC_AGE:  # nodes would refuse it as stale
            self.store.save_schedule(replace(record, skipped=record.skipped + 1))
            log.warning("schedule %s: run %d skipped, it is over an hour late", record.id, k)
            return None
        if record.last_round is not None and self.running(record.last_round):
            self.store.save_schedule(replace(record, skipped=record.skipped + 1))
            log.warning(
                "schedule %s: run %d skipped, run %s is still going",
                record.id,
                k,
                record.last_round,
            )
            return None
        run = serde.scheduled_run(signed, order, k)
        round_id = order.run_spec(k).round_id
        try:
            self.start_run(run, record.operator)
        except Exception as exc:  # a refused run is this run's loss, not the schedule's
            self.store.save_schedule(replace(record, skipped=record.skipped + 1))
            log.warning("schedule %s: run %d not started: %s", record.id, k, exc)
            return None
        self.store.save_schedule(replace(record, runs=record.runs + 1, last_round=round_id))
        return round_id

    def _repair(self, record: ScheduleRecord, now: float, epochs: Epochs) -> str | None:
        """Start the next repair of the epoch of the schedule's latest run, if it needs one."""
        k, last = record.last_run, record.last_round
        if k is None or last is None or not SCHEDULE.allows(record.state, ScheduleEvent.RUN):
            return None
        order = serde.order_from_bytes(record.order)
        if not order.template.watching or order.due_run(now) != k:
            return None
        end = order.run_time(k + 1) if not order.until else min(order.run_time(k + 1), order.until)
        if now >= end or now < self._repaired.get(record.id, -REPAIR_PAUSE) + REPAIR_PAUSE:
            return None
        epoch_id = epochs.open_epoch_id
        this_period = re.compile(rf"{re.escape(record.id)}-{k}(r[0-9]+)?")
        if epoch_id is None or not this_period.fullmatch(epoch_id) or self.running(last):
            return None
        if not epochs.repairable(epoch_id):
            return None
        done = re.fullmatch(rf"{re.escape(record.id)}-{k}r([0-9]+)", last)
        repair = 1 + (int(done.group(1)) if done else 0)
        if repair > MAX_REPAIRS:
            if (record.id, k) not in self._exhausted:
                self._exhausted.add((record.id, k))
                log.warning(
                    "schedule %s: epoch %s lost a key, but run %d's %d repairs are used; "
                    "run %d opens the next epoch",
                    record.id,
                    epoch_id,
                    k,
                    MAX_REPAIRS,
                    k + 1,
                )
            return None
        signed = SignedOrder(record.order, record.signature, record.operator_cert)
        run = serde.scheduled_run(signed, order, k, repair)
        round_id = run.spec.round_id
        # kept before the start: the nodes may have recorded the id even if the start fails
        self.store.save_schedule(replace(record, last_round=round_id))
        self._repaired[record.id] = now
        log.info(
            "schedule %s: epoch %s lost a key; repair %s starts", record.id, epoch_id, round_id
        )
        try:
            self.start_run(run, record.operator)
        except Exception as exc:  # this repair's loss; the next may follow after the pause
            log.warning("schedule %s: repair %s not started: %s", record.id, round_id, exc)
            return None
        return round_id

    def _get(self, schedule_id: str) -> ScheduleRecord:
        for record in self.store.schedules():
            if record.id == schedule_id:
                return record
        raise UnknownRound(f"no schedule with id {schedule_id!r} on this coordinator")

    def _view(self, record: ScheduleRecord) -> ScheduleView:
        order = serde.order_from_bytes(record.order)
        next_run = None
        if SCHEDULE.allows(record.state, ScheduleEvent.RUN):
            next_run = order.next_time(record.last_run)
            due = order.due_run(self.clock())
            # run 0 is a run: `last_run or -1` read "run 0 started" as "none yet" and showed the
            # run that had just started as the next one
            last = -1 if record.last_run is None else record.last_run
            if next_run is not None and due is not None and due > last:
                next_run = order.run_time(due)  # overdue: it starts at the next tick
        return ScheduleView(record, order, next_run)

    # --- the thread ----------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="scheduler", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception:  # one bad tick must not end every schedule
                log.exception("scheduler tick failed")
            self._wake.wait(TICK)
            self._wake.clear()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(5.0)


def _moved(record: ScheduleRecord, to: SchedulePhase) -> SchedulePhase:
    return SCHEDULE.move(f"schedule {record.id}", record.state, to)
