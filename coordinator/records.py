"""Round records: what the coordinator remembers about each round and schedule, and who is watching it.

Rules:
- A record holds a round's participants, mode, phase (``CoordinatorPhase``: the core's vocabulary,
  stored as its string), set sizes, match counts and failure reason.
  Never a tag, an element or an indicator: no table has a column that could hold one.
- Two stores behind one interface, tested by one suite: ``MemoryRoundStore`` and
  ``SqliteRoundStore`` (one file, WAL, schema versioned with ``PRAGMA user_version``).
- A round in flight lives in the coordinator's memory; its nodes drop their keys when the
  coordinator goes silent. So opening a SQLite store marks every round still running
  (``COORDINATOR_RUNNING``) as failed, with the reason ``RESTART_REASON``.
- ``RoundBoard`` is the one place records are published: it saves them and wakes the watchers.
- Standing orders (``ScheduleRecord``) are kept as the operator signed them, with where their
  scheduler is (coordinator/schedules.py); they outlive a restart, the rounds they started do not.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final

from blindmatch.core.errors import UnknownRound
from blindmatch.core.states import (
    COORDINATOR,
    COORDINATOR_RUNNING,
    CoordinatorPhase,
    SchedulePhase,
)
from blindmatch.runtime.hardening import make_private, open_private

RESTART_REASON: Final = "coordinator restarted during the round"


class StateError(Exception):
    """The state file cannot be opened or is from an incompatible version."""


@dataclass(frozen=True, slots=True)
class RoundRecord:
    id: str
    participants: tuple[str, ...]
    mode: str
    threshold: int | None
    kinds: tuple[str, ...]
    operator: str  # who started it
    created: float  # unix seconds
    state: CoordinatorPhase = CoordinatorPhase.PREPARING
    finished: float | None = None
    sizes: Mapping[str, int] = field(default_factory=dict)
    match_counts: Mapping[str, int] = field(default_factory=dict)
    error: str | None = None
    hops_done: int = 0  # evaluations answered so far (the name is v1's: its ring counted hops)
    hops_total: int = 0  # evaluations to answer in the whole round

    @property
    def final(self) -> bool:
        return COORDINATOR.final(self.state)


@dataclass(frozen=True, slots=True)
class ScheduleRecord:
    """A standing order the coordinator keeps: the signed order, sent to nodes with each run, and
    its scheduler's cursor."""

    id: str
    name: str
    operator: str  # who signed it
    order: bytes = field(repr=False)  # the serialized StandingOrder, as signed
    signature: bytes = field(repr=False)
    operator_cert: bytes = field(repr=False)
    created: float = 0.0
    state: SchedulePhase = SchedulePhase.ACTIVE
    last_run: int | None = None  # the latest run started or skipped (None: none yet)
    runs: int = 0  # runs started
    skipped: int = 0  # runs not started: the previous still going, or missed
    last_round: str | None = None  # round id of the latest run started
    cancelled_by: str | None = None


class RoundStore(ABC):
    @abstractmethod
    def save(self, record: RoundRecord) -> None:
        """Insert or replace the record with this id."""

    @abstractmethod
    def get(self, round_id: str) -> RoundRecord | None: ...

    @abstractmethod
    def recent(self, limit: int) -> list[RoundRecord]:
        """The ``limit`` most recently created rounds, newest first."""

    @abstractmethod
    def fail_unfinished(self, reason: str) -> list[str]:
        """Mark every round still running as failed with ``reason``; return their ids."""

    @abstractmethod
    def save_schedule(self, record: ScheduleRecord) -> None:
        """Insert or replace the schedule with this id."""

    @abstractmethod
    def schedules(self) -> list[ScheduleRecord]:
        """Every schedule, oldest first."""

    def close(self) -> None:  # noqa: B027 (nothing to release in memory)
        pass


class MemoryRoundStore(RoundStore):
    def __init__(self) -> None:
        self._rounds: dict[str, RoundRecord] = {}
        self._schedules: dict[str, ScheduleRecord] = {}
        self._lock = threading.Lock()

    def save_schedule(self, record: ScheduleRecord) -> None:
        with self._lock:
            self._schedules[record.id] = record

    def schedules(self) -> list[ScheduleRecord]:
        with self._lock:
            return sorted(self._schedules.values(), key=lambda r: r.created)

    def save(self, record: RoundRecord) -> None:
        with self._lock:
            self._rounds[record.id] = record

    def get(self, round_id: str) -> RoundRecord | None:
        with self._lock:
            return self._rounds.get(round_id)

    def recent(self, limit: int) -> list[RoundRecord]:
        with self._lock:
            records = sorted(self._rounds.values(), key=lambda r: r.created, reverse=True)
        return records[:limit]

    def fail_unfinished(self, reason: str) -> list[str]:
        now = time.time()
        with self._lock:
            stale = [r for r in self._rounds.values() if not r.final]
            for r in stale:
                self._rounds[r.id] = replace(
                    r, state=CoordinatorPhase.FAILED, error=reason, finished=now
                )
        return [r.id for r in stale]


# Each entry brings the schema from version i to i + 1; never edit one that has shipped.
MIGRATIONS: Final = (
    """
    CREATE TABLE rounds (
        id           TEXT PRIMARY KEY,
        created      REAL NOT NULL,
        operator     TEXT NOT NULL,
        participants TEXT NOT NULL,  -- JSON list of node names, in the round's order
        mode         TEXT NOT NULL,
        threshold    INTEGER,
        kinds        TEXT NOT NULL,  -- JSON list
        state        TEXT NOT NULL,
        finished     REAL,
        sizes        TEXT NOT NULL,  -- JSON object: node -> set size
        match_counts TEXT NOT NULL,  -- JSON object: node -> matches delivered
        error        TEXT,
        hops_done    INTEGER NOT NULL,
        hops_total   INTEGER NOT NULL
    );
    CREATE INDEX rounds_by_created ON rounds (created);
    """,
    """
    CREATE TABLE schedules (
        id            TEXT PRIMARY KEY,
        name          TEXT NOT NULL,
        operator      TEXT NOT NULL,
        signed_order  BLOB NOT NULL,  -- the serialized StandingOrder the operator signed
        signature     BLOB NOT NULL,
        operator_cert BLOB NOT NULL,
        created       REAL NOT NULL,
        state         TEXT NOT NULL,
        last_run      INTEGER,
        runs          INTEGER NOT NULL,
        skipped       INTEGER NOT NULL,
        last_round    TEXT,
        cancelled_by  TEXT
    );
    """,
)

_SCHEDULE_COLUMNS: Final = (
    "id, name, operator, signed_order, signature, operator_cert, created, state, last_run, runs, "
    "skipped, last_round, cancelled_by"
)

_COLUMNS: Final = (
    "id, created, operator, participants, mode, threshold, kinds, state, finished, sizes, "
    "match_counts, error, hops_done, hops_total"
)


class SqliteRoundStore(RoundStore):
    """One SQLite file; one connection shared by the coordinator's threads under a lock."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        try:
            if not self.path.exists() and self.path.parent.is_dir():
                # created 0600 before SQLite opens it: its -wal and -shm take the same mode
                open_private(self.path).close()
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA busy_timeout = 5000")
            self._db.execute("PRAGMA journal_mode = WAL")
            # the round log names every operator and partner: owner only, also for an older file
            make_private(*(self.path.with_name(self.path.name + x) for x in ("", "-wal", "-shm")))
            self._db.execute("PRAGMA synchronous = NORMAL")
            self._migrate()
        except (sqlite3.Error, OSError) as exc:
            raise StateError(
                f"cannot open the coordinator state file {self.path}: {exc} "
                "(check the `state` path in the coordinator config and its permissions)"
            ) from exc
        self._lock = threading.Lock()
        self.failed_on_open = self.fail_unfinished(RESTART_REASON)

    def _migrate(self) -> None:
        version: int = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version > len(MIGRATIONS):
            raise StateError(
                f"state file {self.path} has schema version {version}, newer than this "
                f"blindmatch understands ({len(MIGRATIONS)}); upgrade blindmatch"
            )
        for target in range(version + 1, len(MIGRATIONS) + 1):
            # executescript would commit on its own; run the statements inside one transaction
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for statement in MIGRATIONS[target - 1].split(";"):
                    if statement.strip():
                        self._db.execute(statement)
                self._db.execute(f"PRAGMA user_version = {target}")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def save(self, record: RoundRecord) -> None:
        row = (
            record.id,
            record.created,
            record.operator,
            json.dumps(list(record.participants)),
            record.mode,
            record.threshold,
            json.dumps(list(record.kinds)),
            record.state,
            record.finished,
            json.dumps(dict(record.sizes)),
            json.dumps(dict(record.match_counts)),
            record.error,
            record.hops_done,
            record.hops_total,
        )
        with self._lock:
            self._db.execute(
                f"INSERT OR REPLACE INTO rounds ({_COLUMNS}) VALUES ({', '.join('?' * 14)})", row
            )

    def get(self, round_id: str) -> RoundRecord | None:
        with self._lock:
            row = self._db.execute(
                f"SELECT {_COLUMNS} FROM rounds WHERE id = ?", (round_id,)
            ).fetchone()
        return None if row is None else _record(row)

    def recent(self, limit: int) -> list[RoundRecord]:
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_COLUMNS} FROM rounds ORDER BY created DESC, rowid DESC LIMIT ?",
                (limit,),
            ).fetchall()
        return [_record(row) for row in rows]

    def fail_unfinished(self, reason: str) -> list[str]:
        placeholders = ", ".join("?" * len(COORDINATOR_RUNNING))
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                ids = [
                    row[0]
                    for row in self._db.execute(
                        f"SELECT id FROM rounds WHERE state IN ({placeholders})",
                        COORDINATOR_RUNNING,
                    )
                ]
                self._db.execute(
                    f"UPDATE rounds SET state = ?, error = ?, finished = ? "
                    f"WHERE state IN ({placeholders})",
                    (CoordinatorPhase.FAILED, reason, time.time(), *COORDINATOR_RUNNING),
                )
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        return ids

    def save_schedule(self, record: ScheduleRecord) -> None:
        row = (
            record.id,
            record.name,
            record.operator,
            record.order,
            record.signature,
            record.operator_cert,
            record.created,
            record.state,
            record.last_run,
            record.runs,
            record.skipped,
            record.last_round,
            record.cancelled_by,
        )
        with self._lock:
            self._db.execute(
                f"INSERT OR REPLACE INTO schedules ({_SCHEDULE_COLUMNS}) "
                f"VALUES ({', '.join('?' * 13)})",
                row,
            )

    def schedules(self) -> list[ScheduleRecord]:
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_SCHEDULE_COLUMNS} FROM schedules ORDER BY created, rowid"
            ).fetchall()
        return [replace(ScheduleRecord(*row), state=SchedulePhase(row[7])) for row in rows]

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _record(row: tuple[Any, ...]) -> RoundRecord:
    (
        id_,
        created,
        operator,
        participants,
        mode,
        threshold,
        kinds,
        state,
        finished,
        sizes,
        match_counts,
        error,
        hops_done,
        hops_total,
    ) = row
    return RoundRecord(
        id=id_,
        participants=tuple(json.loads(participants)),
        mode=mode,
        threshold=threshold,
        kinds=tuple(json.loads(kinds)),
        operator=operator,
        created=created,
        state=CoordinatorPhase(state),
        finished=finished,
        sizes=json.loads(sizes),
        match_counts=json.loads(match_counts),
        error=error,
        hops_done=hops_done,
        hops_total=hops_total,
    )


class RoundBoard:
    """Publishes round records to the store and to everyone watching a round."""

    WATCH_POLL: Final = 1.0  # seconds between checks that a watcher is still wanted

    def __init__(self, store: RoundStore) -> None:
        self.store = store
        self._changed = threading.Condition()
        self._live: dict[str, RoundRecord] = {}  # rounds in flight, served without the store
        self._closed = False

    def publish(self, record: RoundRecord) -> None:
        with self._changed:
            self.store.save(record)
            if record.final:
                self._live.pop(record.id, None)
            else:
                self._live[record.id] = record
            self._changed.notify_all()

    def get(self, round_id: str) -> RoundRecord:
        with self._changed:
            record = self._live.get(round_id) or self.store.get(round_id)
        if record is None:
            raise UnknownRound(f"no round with id {round_id!r} on this coordinator")
        return record

    def recent(self, limit: int) -> list[RoundRecord]:
        with self._changed:
            live = dict(self._live)
            records = self.store.recent(limit)
        return [live.get(r.id, r) for r in records]

    def watch(self, round_id: str, wanted: Callable[[], bool]) -> Iterator[RoundRecord]:
        """The round's record now, then at each change, until it is final, the board closes,
        or ``wanted()`` turns false (the client went away)."""
        last = self.get(round_id)
        yield last
        while not last.final:
            with self._changed:
                while True:
                    record = self._live.get(round_id) or self.store.get(round_id)
                    if record != last or self._closed or not wanted():
                        break
                    self._changed.wait(self.WATCH_POLL)
            if record is None or record == last:
                return
            last = record
            yield record

    def wake(self) -> None:
        """Make watchers re-check ``wanted()`` now (e.g. when an RPC ends)."""
        with self._changed:
            self._changed.notify_all()

    def close(self) -> None:
        """End every watch; publishing still works (a stopping round records its failure)."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()
