"""The node's private SQLite store: sightings, import and round audit, matches.

One SQLite file per node, in WAL mode so a reader (the CLI) never blocks the node's writer.

Rules:
- A sighting is keyed by (kind, canonical value). Re-importing never duplicates: counts add,
  first_seen takes the minimum, last_seen the maximum, sources and tags are unions, and the TLP
  becomes the more restrictive of the two (clear < green < amber < amber+strict < red).
- A batch of sightings is stored in one transaction: all of it or none of it, also when the
  process is killed midway (SQLite's journal guarantees that, the tests check it).
- The round audit records who asked, with whom, what was blinded for whom and how it ended. It
  never records key material: no table has a column for it.
- Thread-safety: one connection, opened with ``check_same_thread=False``, and every use of it
  holds the store's lock. The gRPC servicer's worker threads and the CLI can share one Store;
  other processes open their own Store and SQLite's file locking (with ``busy_timeout``)
  serialises the writers.
- Times are ISO 8601 UTC strings with second resolution, "2026-11-26T23:00:00Z", so that they
  order as text.
"""

from __future__ import annotations

import json
import re
import sqlite3
import threading
from collections.abc import Collection, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self, TypeAlias

from blindmatch.match import MODES


@dataclass(frozen=True, slots=True)
class Sighting:
    """One observation of an indicator, as an importer hands it to the store."""

    kind: str  # one of blindmatch.canon.KINDS
    value: str  # canonical form (blindmatch.canon.canonicalize)
    raw: str  # the value exactly as it appeared in the source
    first_seen: str | None = None  # ISO 8601 UTC, "2026-11-26T23:00:00Z"
    last_seen: str | None = None
    count: int = 1  # sightings this record stands for (STIX sighting objects raise it)
    # clear | green | amber | amber+strict | red; None = the import's default
    tlp: str | None = None
    tags: tuple[str, ...] = ()


# --- TLP ------------------------------------------------------------------------------------------

# Least to most restrictive; the index is the rank stored in the database.
TLP_LEVELS: Final = ("clear", "green", "amber", "amber+strict", "red")
_TLP_RANK: Final = {name: rank for rank, name in enumerate(TLP_LEVELS)}
# TLP 1.0 called "clear" "white"; feeds still carry it.
_TLP_ALIASES: Final = {"white": "clear"}


def normalize_tlp(text: str) -> str:
    """Return the TLP 2.0 level name for ``text``: "TLP:AMBER" -> "amber", "white" -> "clear"."""
    name = text.strip().lower()
    if name.startswith("tlp:"):
        name = name[4:].strip()
    name = _TLP_ALIASES.get(name, name)
    if name not in _TLP_RANK:
        raise ValueError(
            f"unknown TLP level {text!r}: expected one of {', '.join(TLP_LEVELS)} "
            "(optionally prefixed 'TLP:'; TLP 1.0 'white' is read as 'clear')"
        )
    return name


def _tlp_rank(text: str) -> int:
    return _TLP_RANK[normalize_tlp(text)]


# --- result and audit types -----------------------------------------------------------------------

OUTCOMES: Final = ("started", "done", "failed", "refused", "aborted")


class StoreError(Exception):
    """The store file cannot be used as asked (missing directory, newer schema, not a store)."""


@dataclass(frozen=True, slots=True)
class AddResult:
    """What one batch did: ``new`` indicators stored, ``known`` sightings merged into existing ones."""

    new: int
    known: int
    new_per_kind: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class StoredSighting:
    """An indicator as the store holds it, all its sightings merged."""

    sighting_id: int
    kind: str
    value: str
    raw_first: str  # the raw value as first imported
    raw_last: str  # ... and as most recently imported
    first_seen: str
    last_seen: str
    count: int
    tlp: str
    sources: list[str]
    tags: list[str]


@dataclass(frozen=True, slots=True)
class ImportAudit:
    import_id: int
    time: str
    source: str
    path: str
    fmt: str
    summary: dict[str, Any]


@dataclass(frozen=True, slots=True)
class RoundAudit:
    round_id: str
    started: str
    coordinator: str
    participants: list[str]
    mode: str
    threshold: int | None
    kinds: list[str]
    own_size: int
    blinded_for: dict[str, int]  # partner -> elements this node blinded for that partner
    outcome: str
    reason: str | None
    finished: str | None

    @property
    def time(self) -> str:
        return self.started


AuditEntry: TypeAlias = ImportAudit | RoundAudit


@dataclass(frozen=True, slots=True)
class MatchRow:
    round_id: str
    kind: str
    value: str
    partners: list[str]  # empty in threshold mode: it names no one
    count: int | None  # nations holding the indicator, in threshold mode
    finished: str | None


@dataclass(frozen=True, slots=True)
class PartnerCount:
    round_id: str
    partner: str
    count: int
    finished: str | None


@dataclass(frozen=True, slots=True)
class Stats:
    sightings: int
    per_kind: dict[str, int]
    per_tlp: dict[str, int]
    sources: dict[str, int]  # source -> indicators it contributed
    imports: int
    rounds_recorded: int
    rounds_joined: int  # rounds that ended 'done'
    last_import: str | None


@dataclass(frozen=True, slots=True)
class EpochAudit:
    epoch_id: str
    started: str
    ends: str
    coordinator: str
    participants: list[str]
    tags: int
    closed: str | None
    reason: str | None


@dataclass(frozen=True, slots=True)
class CheckAudit:
    time: str
    epoch_id: str
    checker: str  # whose values were checked; this node's own name for its own checks
    elements: int
    hits: int | None
    outcome: str
    reason: str | None


@dataclass(frozen=True, slots=True)
class AlertRow:
    alert_id: int
    time: str
    epoch_id: str
    kind: str
    value: str
    partner: str
    direction: str  # 'check': a partner had what this node checked; 'sighted': a partner
    # has now sighted this node's indicator


# --- schema ---------------------------------------------------------------------------------------

# Migration i (0-based) takes the schema from version i to i + 1. Append, never edit: a store
# file records in PRAGMA user_version how many of these it has applied.
MIGRATIONS: Final[tuple[tuple[str, ...], ...]] = (
    (
        """
        CREATE TABLE sightings (
            id          INTEGER PRIMARY KEY,
            kind        TEXT NOT NULL,
            value       TEXT NOT NULL,
            raw_first   TEXT NOT NULL,
            raw_last    TEXT NOT NULL,
            first_seen  TEXT NOT NULL,
            last_seen   TEXT NOT NULL,
            count       INTEGER NOT NULL CHECK (count > 0),
            tlp         INTEGER NOT NULL CHECK (tlp BETWEEN 0 AND 4),
            sources     TEXT NOT NULL,  -- JSON array of source names, sorted
            tags        TEXT NOT NULL,  -- JSON array, sorted
            UNIQUE (kind, value)
        )
        """,
        """
        CREATE TABLE imports (
            id          INTEGER PRIMARY KEY,
            imported_at TEXT NOT NULL,
            source      TEXT NOT NULL,
            path        TEXT NOT NULL,
            format      TEXT NOT NULL,
            summary     TEXT NOT NULL  -- JSON object
        )
        """,
        """
        CREATE TABLE rounds (
            round_id     TEXT PRIMARY KEY,
            started      TEXT NOT NULL,
            coordinator  TEXT NOT NULL,
            participants TEXT NOT NULL,  -- JSON array
            mode         TEXT NOT NULL CHECK (mode IN ('pairwise', 'threshold', 'count')),
            threshold    INTEGER,
            kinds        TEXT NOT NULL,  -- JSON array
            own_size     INTEGER NOT NULL CHECK (own_size >= 0),
            outcome      TEXT NOT NULL
                CHECK (outcome IN ('started', 'done', 'failed', 'refused', 'aborted')),
            reason       TEXT,
            finished     TEXT
        )
        """,
        """
        CREATE TABLE round_blinded (
            round_id TEXT NOT NULL REFERENCES rounds (round_id) ON DELETE CASCADE,
            partner  TEXT NOT NULL,
            elements INTEGER NOT NULL CHECK (elements >= 0),
            PRIMARY KEY (round_id, partner)
        ) WITHOUT ROWID
        """,
        """
        CREATE TABLE matches (
            round_id    TEXT NOT NULL REFERENCES rounds (round_id) ON DELETE CASCADE,
            sighting_id INTEGER NOT NULL REFERENCES sightings (id),
            partners    TEXT NOT NULL,  -- JSON array
            count       INTEGER,
            PRIMARY KEY (round_id, sighting_id)
        ) WITHOUT ROWID
        """,
        """
        CREATE TABLE partner_counts (
            round_id TEXT NOT NULL REFERENCES rounds (round_id) ON DELETE CASCADE,
            partner  TEXT NOT NULL,
            count    INTEGER NOT NULL CHECK (count >= 0),
            PRIMARY KEY (round_id, partner)
        ) WITHOUT ROWID
        """,
    ),
    # 1 -> 2: early warning (docs/WATCH.md): watch epochs, checks, alerts.
    (
        """
        CREATE TABLE epochs (
            epoch_id     TEXT PRIMARY KEY,  -- the watch round's id
            started      TEXT NOT NULL,
            ends         TEXT NOT NULL,
            coordinator  TEXT NOT NULL,
            participants TEXT NOT NULL,  -- JSON array
            tags         INTEGER NOT NULL CHECK (tags >= 0),  -- own indicators in the tag map
            closed       TEXT,           -- when the key was destroyed
            reason       TEXT
        )
        """,
        """
        CREATE TABLE watch_checks (
            id        INTEGER PRIMARY KEY,
            time      TEXT NOT NULL,
            epoch_id  TEXT NOT NULL,
            checker   TEXT NOT NULL,  -- whose values: this node's own checks name this node
            elements  INTEGER NOT NULL CHECK (elements >= 0),
            hits      INTEGER,        -- own checks: values some partner had
            outcome   TEXT NOT NULL CHECK (outcome IN ('done', 'refused', 'failed')),
            reason    TEXT
        )
        """,
        """
        CREATE TABLE alerts (
            id        INTEGER PRIMARY KEY,
            time      TEXT NOT NULL,
            epoch_id  TEXT NOT NULL,
            kind      TEXT NOT NULL,
            value     TEXT NOT NULL,
            partner   TEXT NOT NULL,
            direction TEXT NOT NULL CHECK (direction IN ('check', 'sighted'))
        )
        """,
    ),
)
SCHEMA_VERSION: Final = len(MIGRATIONS)


def _json_union(old: str, new: str) -> str:
    """SQL for the sorted union of two JSON arrays of strings."""
    return (
        f"CASE WHEN {new} = '[]' OR {new} = {old} THEN {old} ELSE ("
        f"SELECT json_group_array(value) FROM ("
        f"SELECT value FROM json_each({old}) UNION SELECT value FROM json_each({new}) "
        f"ORDER BY value)) END"
    )


_UPSERT_SIGHTING: Final = f"""
    INSERT INTO sightings
        (kind, value, raw_first, raw_last, first_seen, last_seen, count, tlp, sources, tags)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
    ON CONFLICT (kind, value) DO UPDATE SET
        raw_last = excluded.raw_last,
        first_seen = min(sightings.first_seen, excluded.first_seen),
        last_seen = max(sightings.last_seen, excluded.last_seen),
        count = sightings.count + excluded.count,
        tlp = max(sightings.tlp, excluded.tlp),
        sources = {_json_union("sightings.sources", "excluded.sources")},
        tags = {_json_union("sightings.tags", "excluded.tags")}
"""

# --- times ----------------------------------------------------------------------------------------

_CANONICAL_TIME: Final = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")


def utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _normalize_time(value: str | datetime, what: str) -> str:
    """Return ``value`` as "YYYY-MM-DDTHH:MM:SSZ"; a time without a zone is taken as UTC."""
    if isinstance(value, str):
        if _CANONICAL_TIME.fullmatch(value):
            return value
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            raise ValueError(
                f"{what} {value!r} is not an ISO 8601 time (expected like 2026-11-26T23:00:00Z)"
            ) from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --- the store ------------------------------------------------------------------------------------

_BUSY_TIMEOUT_MS: Final = 10_000
# SQLite keeps a WAL file at its largest size unless told otherwise; one import of 1M rows
# would otherwise leave hundreds of MB behind.
_WAL_SIZE_LIMIT: Final = 64 * 1024 * 1024
_ELIGIBLE_CHUNK: Final = 50_000
_CACHE_KIB: Final = 64 * 1024


class Store:
    """The node's private store. Open with ``Store.open(path)``; use as a context manager."""

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self._conn = conn
        self.path = path
        self._lock = threading.RLock()
        self._closed = False

    # --- lifecycle

    @classmethod
    def open(cls, path: str | Path) -> Store:
        """Open the store at ``path``, creating it (and bringing its schema up to date) if needed.

        The parent directory must exist: a typo in a path should fail, not create a fresh store.
        """
        path = Path(path)
        if not path.parent.is_dir():
            raise StoreError(
                f"cannot open store {path}: directory {path.parent} does not exist; create it first"
            )
        if path.exists() and not path.is_file():
            raise StoreError(f"cannot open store {path}: it exists and is not a file")
        try:
            conn = sqlite3.connect(
                path,
                timeout=_BUSY_TIMEOUT_MS / 1000,
                isolation_level=None,  # transactions are explicit: see _transaction()
                check_same_thread=False,  # guarded by the store's lock instead
            )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open store {path}: {exc}") from exc
        try:
            _configure(conn, path)
            _migrate(conn, path)
        except BaseException:
            conn.close()
            raise
        return cls(conn, path)

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._conn.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """Hold the lock and a write transaction; commit on success, roll back on any exception."""
        with self._lock:
            conn = self._open_conn()
            # IMMEDIATE takes the write lock now, so a concurrent writer waits (busy_timeout)
            # at BEGIN instead of failing halfway through with SQLITE_BUSY.
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                # Also after a failed COMMIT (disk full): the connection must not stay inside
                # a transaction, or the next BEGIN fails.
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    @contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        """Hold the lock and a read transaction, so multi-query reads see one snapshot."""
        with self._lock:
            conn = self._open_conn()
            conn.execute("BEGIN")
            try:
                yield conn
            finally:
                conn.execute("COMMIT")

    def _open_conn(self) -> sqlite3.Connection:
        if self._closed:
            raise StoreError(f"store {self.path} is closed")
        return self._conn

    # --- sightings

    def add_sightings(
        self, sightings: Iterable[Sighting], *, source: str, default_tlp: str
    ) -> AddResult:
        """Store a batch in one transaction; if anything raises midway, nothing of it is stored.

        ``new`` counts indicators the store did not hold before; ``known`` counts the batch's
        sightings that merged into an indicator already stored (including one stored earlier in
        this same batch).
        """
        if not source or not source.strip():
            raise ValueError("source must name where the sightings come from, e.g. 'misp-feed'")
        default_rank = _tlp_rank(default_tlp)
        now = utc_now()
        sources_json = json.dumps([source])
        seen = 0

        def rows() -> Iterator[tuple[str, str, str, str, str, str, int, int, str, str]]:
            nonlocal seen
            rank_of: dict[str, int] = {}  # the same few TLP spellings recur; normalise each once
            for index, s in enumerate(sightings):
                if not s.kind or not s.value:
                    raise ValueError(f"sighting #{index} has an empty kind or value: {s!r}")
                if s.count < 1:
                    raise ValueError(f"sighting #{index} has count {s.count}; it must be >= 1")
                if s.tlp is None:
                    rank = default_rank
                else:
                    cached = rank_of.get(s.tlp)
                    if cached is None:
                        try:
                            cached = rank_of[s.tlp] = _tlp_rank(s.tlp)
                        except ValueError as exc:
                            raise ValueError(f"sighting #{index} ({s.value!r}): {exc}") from None
                    rank = cached
                first = now if s.first_seen is None else _normalize_time(s.first_seen, "first_seen")
                last = now if s.last_seen is None else _normalize_time(s.last_seen, "last_seen")
                if s.first_seen is None and s.last_seen is not None:
                    first = last
                elif s.last_seen is None and s.first_seen is not None:
                    last = first
                if first > last:
                    first, last = last, first
                tags = json.dumps(sorted(set(s.tags))) if s.tags else "[]"
                seen += 1
                yield (
                    s.kind,
                    s.value,
                    s.raw,
                    s.raw,
                    first,
                    last,
                    s.count,
                    rank,
                    sources_json,
                    tags,
                )

        with self._transaction() as conn:
            before = _count_per_kind(conn)
            conn.executemany(_UPSERT_SIGHTING, rows())
            after = _count_per_kind(conn)
        per_kind = {k: n - before.get(k, 0) for k, n in after.items() if n > before.get(k, 0)}
        new = sum(per_kind.values())
        return AddResult(new=new, known=seen - new, new_per_kind=per_kind)

    def lookup(self, kind: str, value: str) -> StoredSighting | None:
        """The stored indicator (kind, canonical value), or None if the store does not hold it."""
        with self._reading() as conn:
            row = conn.execute(
                "SELECT id, kind, value, raw_first, raw_last, first_seen, last_seen, count, tlp,"
                " sources, tags FROM sightings WHERE kind = ? AND value = ?",
                (kind, value),
            ).fetchone()
        if row is None:
            return None
        sid, kind, value, raw_first, raw_last, first_seen, last_seen, count, tlp, sources, tags = (
            row
        )
        return StoredSighting(
            sighting_id=sid,
            kind=kind,
            value=value,
            raw_first=raw_first,
            raw_last=raw_last,
            first_seen=first_seen,
            last_seen=last_seen,
            count=count,
            tlp=TLP_LEVELS[tlp],
            sources=json.loads(sources),
            tags=json.loads(tags),
        )

    def eligible(self, kinds: Collection[str], tlps: Collection[str]) -> list[tuple[int, str, str]]:
        """(sighting_id, kind, value) of every indicator of one of ``kinds`` at one of ``tlps``.

        One consistent snapshot, ordered by sighting_id.
        """
        query = _EligibleQuery.build(kinds, tlps)
        if query is None:
            return []
        with self._reading() as conn:
            return query.fetch(conn, after=0, limit=-1)

    def iter_eligible(
        self, kinds: Collection[str], tlps: Collection[str], *, chunk: int = _ELIGIBLE_CHUNK
    ) -> Iterator[list[tuple[int, str, str]]]:
        """Like ``eligible`` but in chunks, holding the lock only while fetching each chunk.

        Chunks are not one snapshot: an import running meanwhile may add rows to later chunks.
        """
        query = _EligibleQuery.build(kinds, tlps)
        if query is None:
            return
        after = 0
        while True:
            with self._reading() as conn:
                batch = query.fetch(conn, after=after, limit=chunk)
            if not batch:
                return
            yield batch
            after = batch[-1][0]

    # --- import audit

    def record_import(self, source: str, path: str, fmt: str, summary: Mapping[str, Any]) -> int:
        """Record one import (summary: counts per kind, known, skipped reasons, invalid count)."""
        try:
            summary_json = json.dumps(summary, sort_keys=True)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"import summary must be JSON-serialisable: {exc}") from None
        with self._transaction() as conn:
            cursor = conn.execute(
                "INSERT INTO imports (imported_at, source, path, format, summary)"
                " VALUES (?, ?, ?, ?, ?)",
                (utc_now(), source, str(path), fmt, summary_json),
            )
            import_id = cursor.lastrowid
        assert import_id is not None  # an INSERT into a rowid table always sets it
        return import_id

    # --- round audit

    def record_round(
        self,
        round_id: str,
        *,
        started: str | datetime,
        coordinator: str,
        participants: Iterable[str],
        mode: str,
        threshold: int | None,
        kinds: Iterable[str],
        own_size: int,
        blinded_for: Mapping[str, int] | None = None,
        outcome: str,
        reason: str | None = None,
        finished: str | datetime | None = None,
    ) -> None:
        """Create or update the audit record of a round.

        Write it with outcome 'started' when the round begins, then again with its outcome. An
        update keeps the first ``started`` time. ``blinded_for`` sets the counts of the partners
        it names and leaves the others (e.g. added by ``add_blinded``) as they are.
        """
        if mode not in MODES:
            raise ValueError(f"unknown round mode {mode!r}: expected one of {', '.join(MODES)}")
        if outcome not in OUTCOMES:
            raise ValueError(
                f"unknown round outcome {outcome!r}: expected one of {', '.join(OUTCOMES)}"
            )
        if (mode == "threshold") != (threshold is not None):
            raise ValueError(
                f"round {round_id}: a threshold is given exactly when the mode is 'threshold'"
                f" (mode {mode!r}, threshold {threshold!r})"
            )
        if threshold is not None and threshold < 1:
            raise ValueError(f"round {round_id}: threshold must be >= 1, got {threshold}")
        if own_size < 0:
            raise ValueError(f"round {round_id}: own_size must be >= 0, got {own_size}")
        started_at = _normalize_time(started, "started")
        finished_at = None if finished is None else _normalize_time(finished, "finished")
        with self._transaction() as conn:
            conn.execute(
                """
                INSERT INTO rounds (round_id, started, coordinator, participants, mode, threshold,
                                    kinds, own_size, outcome, reason, finished)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                ON CONFLICT (round_id) DO UPDATE SET
                    coordinator = excluded.coordinator,
                    participants = excluded.participants,
                    mode = excluded.mode,
                    threshold = excluded.threshold,
                    kinds = excluded.kinds,
                    own_size = excluded.own_size,
                    outcome = excluded.outcome,
                    reason = excluded.reason,
                    finished = excluded.finished
                """,
                (
                    round_id,
                    started_at,
                    coordinator,
                    json.dumps(list(participants)),
                    mode,
                    threshold,
                    json.dumps(list(kinds)),
                    own_size,
                    outcome,
                    reason,
                    finished_at,
                ),
            )
            for partner, elements in (blinded_for or {}).items():
                _check_elements(round_id, partner, elements)
                conn.execute(
                    "INSERT INTO round_blinded (round_id, partner, elements) VALUES (?, ?, ?)"
                    " ON CONFLICT (round_id, partner) DO UPDATE SET elements = excluded.elements",
                    (round_id, partner, elements),
                )

    def end_round(self, round_id: str, *, outcome: str, reason: str | None) -> None:
        """Set the outcome of a recorded round (finished now), keeping everything else."""
        if outcome not in OUTCOMES or outcome == "started":
            raise ValueError(f"unknown final round outcome {outcome!r}")
        with self._transaction() as conn:
            _require_round(conn, round_id)
            conn.execute(
                "UPDATE rounds SET outcome = ?, reason = ?, finished = ? WHERE round_id = ?",
                (outcome, reason, utc_now(), round_id),
            )

    def has_round(self, round_id: str) -> bool:
        """Whether the audit log has a record of ``round_id`` (a primary-key lookup)."""
        with self._reading() as conn:
            row = conn.execute("SELECT 1 FROM rounds WHERE round_id = ?", (round_id,)).fetchone()
        return row is not None

    def add_blinded(self, round_id: str, partner: str, n: int) -> None:
        """Add ``n`` to the elements this node blinded for ``partner`` in ``round_id``."""
        _check_elements(round_id, partner, n)
        with self._transaction() as conn:
            _require_round(conn, round_id)
            conn.execute(
                "INSERT INTO round_blinded (round_id, partner, elements) VALUES (?, ?, ?)"
                " ON CONFLICT (round_id, partner) DO UPDATE SET elements = elements + excluded.elements",
                (round_id, partner, n),
            )

    def rounds(self) -> list[RoundAudit]:
        """Every recorded round, latest first."""
        with self._reading() as conn:
            return _rounds(conn, limit=None)

    def audit(self, limit: int | None = None) -> list[AuditEntry]:
        """Imports and rounds, newest first (rounds by their start time)."""
        with self._reading() as conn:
            rounds = _rounds(conn, limit)
            rows = conn.execute(
                "SELECT id, imported_at, source, path, format, summary FROM imports"
                " ORDER BY imported_at DESC, id DESC LIMIT ?",
                (-1 if limit is None else limit,),
            ).fetchall()
        imports = [
            ImportAudit(import_id=i, time=t, source=src, path=p, fmt=f, summary=json.loads(summary))
            for i, t, src, p, f, summary in rows
        ]
        entries: list[AuditEntry] = [*rounds, *imports]
        # Stable sort: within each list the order is already newest first.
        entries.sort(key=lambda entry: entry.time, reverse=True)
        return entries if limit is None else entries[:limit]

    # --- matches

    def record_matches(
        self, round_id: str, mode: str, rows: Iterable[tuple[int, list[str], int | None]]
    ) -> int:
        """Store a round's matches, (sighting_id, partners, count), in one transaction.

        Pairwise rows name their partners; threshold rows carry the count and name no one.
        Returns the number of rows stored.
        """
        if mode not in ("pairwise", "threshold"):
            raise ValueError(
                f"record_matches takes mode 'pairwise' or 'threshold', not {mode!r}"
                " (count mode results go to record_partner_counts)"
            )

        def params() -> Iterator[tuple[str, int, str, int | None]]:
            for sighting_id, partners, count in rows:
                if mode == "pairwise" and not partners:
                    raise ValueError(
                        f"round {round_id}: pairwise match for sighting {sighting_id} names no partner"
                    )
                if mode == "threshold" and count is None:
                    raise ValueError(
                        f"round {round_id}: threshold match for sighting {sighting_id} has no count"
                    )
                yield (round_id, sighting_id, json.dumps(sorted(partners)), count)

        with self._transaction() as conn:
            recorded_mode = _require_round(conn, round_id)
            if recorded_mode != mode:
                raise ValueError(
                    f"round {round_id} was recorded in mode {recorded_mode!r}, not {mode!r}"
                )
            before = conn.total_changes
            try:
                conn.executemany(
                    "INSERT INTO matches (round_id, sighting_id, partners, count)"
                    " VALUES (?, ?, ?, ?) ON CONFLICT (round_id, sighting_id)"
                    " DO UPDATE SET partners = excluded.partners, count = excluded.count",
                    params(),
                )
            except sqlite3.IntegrityError as exc:
                raise ValueError(
                    f"round {round_id}: a match names a sighting this store does not hold ({exc})"
                ) from None
            return conn.total_changes - before

    def record_partner_counts(self, round_id: str, counts: Mapping[str, int]) -> None:
        """Store a count-mode round's result: partner -> indicators shared with that partner."""
        with self._transaction() as conn:
            recorded_mode = _require_round(conn, round_id)
            if recorded_mode != "count":
                raise ValueError(
                    f"round {round_id} was recorded in mode {recorded_mode!r};"
                    " partner counts belong to a 'count' round"
                )
            for partner, count in counts.items():
                if count < 0:
                    raise ValueError(f"round {round_id}: count for {partner} is negative: {count}")
            conn.executemany(
                "INSERT INTO partner_counts (round_id, partner, count) VALUES (?, ?, ?)"
                " ON CONFLICT (round_id, partner) DO UPDATE SET count = excluded.count",
                [(round_id, partner, count) for partner, count in counts.items()],
            )

    def matches(self, round_id: str | None = None) -> list[MatchRow]:
        """Matches of one round, or of all rounds latest first; by kind and value within a round."""
        with self._reading() as conn:
            rows = conn.execute(
                """
                SELECT m.round_id, s.kind, s.value, m.partners, m.count, r.finished
                FROM matches m
                JOIN rounds r ON r.round_id = m.round_id
                JOIN sightings s ON s.id = m.sighting_id
                WHERE ?1 IS NULL OR m.round_id = ?1
                ORDER BY r.started DESC, r.rowid DESC, s.kind, s.value
                """,
                (round_id,),
            ).fetchall()
        return [
            MatchRow(round_id=r, kind=k, value=v, partners=json.loads(p), count=c, finished=f)
            for r, k, v, p, c, f in rows
        ]

    def partner_counts(self, round_id: str | None = None) -> list[PartnerCount]:
        """Count-mode results of one round, or of all rounds latest first."""
        with self._reading() as conn:
            rows = conn.execute(
                """
                SELECT p.round_id, p.partner, p.count, r.finished
                FROM partner_counts p JOIN rounds r ON r.round_id = p.round_id
                WHERE ?1 IS NULL OR p.round_id = ?1
                ORDER BY r.started DESC, r.rowid DESC, p.partner
                """,
                (round_id,),
            ).fetchall()
        return [PartnerCount(round_id=r, partner=p, count=c, finished=f) for r, p, c, f in rows]

    # --- stats

    def stats(self) -> Stats:
        with self._reading() as conn:
            total = _count_sightings(conn)
            per_kind = dict(
                conn.execute("SELECT kind, count(*) FROM sightings GROUP BY kind ORDER BY kind")
            )
            per_tlp = {
                TLP_LEVELS[rank]: n
                for rank, n in conn.execute(
                    "SELECT tlp, count(*) FROM sightings GROUP BY tlp ORDER BY tlp"
                )
            }
            sources = dict(
                conn.execute(
                    "SELECT j.value, count(*) FROM sightings, json_each(sightings.sources) j"
                    " GROUP BY j.value ORDER BY j.value"
                )
            )
            imports, last_import = conn.execute(
                "SELECT count(*), max(imported_at) FROM imports"
            ).fetchone()
            recorded, joined = conn.execute(
                "SELECT count(*), count(*) FILTER (WHERE outcome = 'done') FROM rounds"
            ).fetchone()
        return Stats(
            sightings=total,
            per_kind=per_kind,
            per_tlp=per_tlp,
            sources=sources,
            imports=imports,
            rounds_recorded=recorded,
            rounds_joined=joined,
            last_import=last_import,
        )

    # --- watch epochs, checks and alerts (docs/WATCH.md)

    def record_epoch(
        self,
        epoch_id: str,
        *,
        ends: str,
        coordinator: str,
        participants: Iterable[str],
        tags: int,
    ) -> None:
        with self._transaction() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO epochs"
                " (epoch_id, started, ends, coordinator, participants, tags)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (epoch_id, utc_now(), ends, coordinator, json.dumps(list(participants)), tags),
            )

    def close_epoch(self, epoch_id: str, reason: str) -> None:
        with self._transaction() as conn:
            conn.execute(
                "UPDATE epochs SET closed = ?, reason = ? WHERE epoch_id = ? AND closed IS NULL",
                (utc_now(), reason, epoch_id),
            )

    def epochs(self) -> list[EpochAudit]:
        """Every epoch this node kept a key for, newest first."""
        with self._reading() as conn:
            rows = conn.execute(
                "SELECT epoch_id, started, ends, coordinator, participants, tags, closed, reason"
                " FROM epochs ORDER BY started DESC, rowid DESC"
            ).fetchall()
        return [
            EpochAudit(e, s, end, c, json.loads(p), t, closed, reason)
            for e, s, end, c, p, t, closed, reason in rows
        ]

    def record_check(
        self,
        epoch_id: str,
        checker: str,
        elements: int,
        *,
        outcome: str,
        reason: str | None = None,
        hits: int | None = None,
    ) -> None:
        """Audit one check: this node's own (``checker`` is this node) or one it blinded for."""
        with self._transaction() as conn:
            conn.execute(
                "INSERT INTO watch_checks (time, epoch_id, checker, elements, hits, outcome, reason)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (utc_now(), epoch_id, checker, elements, hits, outcome, reason),
            )

    def checks(self) -> list[CheckAudit]:
        """Every check in the audit log, newest first."""
        with self._reading() as conn:
            rows = conn.execute(
                "SELECT time, epoch_id, checker, elements, hits, outcome, reason"
                " FROM watch_checks ORDER BY id DESC"
            ).fetchall()
        return [CheckAudit(*row) for row in rows]

    def record_alerts(self, epoch_id: str, rows: Iterable[tuple[str, str, str, str]]) -> int:
        """Store alerts, (kind, value, partner, direction), in one transaction; how many."""
        now = utc_now()
        with self._transaction() as conn:
            before = conn.total_changes
            conn.executemany(
                "INSERT INTO alerts (time, epoch_id, kind, value, partner, direction)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                [(now, epoch_id, k, v, p, d) for k, v, p, d in rows],
            )
            return conn.total_changes - before

    def alerts(self, after: int = 0, limit: int | None = None) -> list[AlertRow]:
        """Alerts with an id above ``after``, newest first."""
        with self._reading() as conn:
            rows = conn.execute(
                "SELECT id, time, epoch_id, kind, value, partner, direction FROM alerts"
                " WHERE id > ? ORDER BY id DESC LIMIT ?",
                (after, -1 if limit is None else limit),
            ).fetchall()
        return [AlertRow(*row) for row in rows]


# --- helpers --------------------------------------------------------------------------------------


def _configure(conn: sqlite3.Connection, path: Path) -> None:
    try:
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    except sqlite3.DatabaseError as exc:
        raise StoreError(f"cannot open store {path}: {exc} (is it a blindmatch store?)") from exc
    if mode != "wal":
        raise StoreError(
            f"cannot open store {path}: SQLite refused WAL mode (got {mode!r});"
            " put the store on a local file system"
        )
    conn.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA foreign_keys = ON")
    # FULL: a commit the store has reported (an audit record, a batch) survives a power cut.
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute(f"PRAGMA journal_size_limit = {_WAL_SIZE_LIMIT}")
    # Upserts into the (kind, value) index touch random pages; a bigger cache keeps a
    # 1M-row import of hashes at ~120k rows/s instead of ~85k (measured, 2-core machine).
    conn.execute(f"PRAGMA cache_size = -{_CACHE_KIB}")


def _migrate(conn: sqlite3.Connection, path: Path) -> None:
    def check(version: int) -> None:
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"store {path} has schema version {version}, newer than this blindmatch knows"
                f" ({SCHEMA_VERSION}); upgrade blindmatch to open it"
            )

    current: int = conn.execute("PRAGMA user_version").fetchone()[0]
    check(current)
    # An up-to-date store needs no write lock: opening it never waits for a running import.
    for target in range(current + 1, SCHEMA_VERSION + 1):
        conn.execute("BEGIN IMMEDIATE")
        try:
            # Re-read under the write lock: another process may have migrated while we waited.
            current = conn.execute("PRAGMA user_version").fetchone()[0]
            check(current)
            if current < target:
                for statement in MIGRATIONS[target - 1]:
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {target}")
            conn.execute("COMMIT")
        except BaseException as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error):
                raise StoreError(
                    f"cannot upgrade store {path} to schema version {target}: {exc};"
                    f" it is left unchanged at version {current}"
                ) from exc
            raise


def _count_per_kind(conn: sqlite3.Connection) -> dict[str, int]:
    return dict(conn.execute("SELECT kind, count(*) FROM sightings GROUP BY kind").fetchall())


def _count_sightings(conn: sqlite3.Connection) -> int:
    count: int = conn.execute("SELECT count(*) FROM sightings").fetchone()[0]
    return count


@dataclass(frozen=True, slots=True)
class _EligibleQuery:
    sql: str
    params: tuple[object, ...]
    # SQLite hands back a new str per row; mapping each row's kind to one shared object saves
    # ~50 MB per million rows in a round's selection.
    shared_kinds: dict[str, str]

    @classmethod
    def build(cls, kinds: Collection[str], tlps: Collection[str]) -> _EligibleQuery | None:
        """The query for these kinds and TLP levels, or None if nothing can match."""
        ranks = sorted({_tlp_rank(t) for t in tlps})
        kind_list = sorted(set(kinds))
        if not ranks or not kind_list:
            return None
        sql = (
            # NOT INDEXED: walking the (kind, value) index then sorting by id is ~4x slower.
            "SELECT id, kind, value FROM sightings NOT INDEXED"
            f" WHERE kind IN ({', '.join('?' * len(kind_list))})"
            f" AND tlp IN ({', '.join('?' * len(ranks))})"
            " AND id > ? ORDER BY id LIMIT ?"
        )
        return cls(sql, (*kind_list, *ranks), {k: k for k in kind_list})

    def fetch(
        self, conn: sqlite3.Connection, *, after: int, limit: int
    ) -> list[tuple[int, str, str]]:
        """Rows with sighting_id > ``after``, at most ``limit`` of them (-1: all)."""
        shared = self.shared_kinds
        return [
            (sid, shared[kind], value)
            for sid, kind, value in conn.execute(self.sql, (*self.params, after, limit))
        ]


def _require_round(conn: sqlite3.Connection, round_id: str) -> str:
    """The recorded mode of ``round_id``; raises if the round was never recorded."""
    row = conn.execute("SELECT mode FROM rounds WHERE round_id = ?", (round_id,)).fetchone()
    if row is None:
        raise ValueError(f"round {round_id} is not in the audit log; record_round it first")
    mode: str = row[0]
    return mode


def _check_elements(round_id: str, partner: str, n: int) -> None:
    if n < 0:
        raise ValueError(
            f"round {round_id}: elements blinded for {partner} cannot be negative: {n}"
        )


def _rounds(conn: sqlite3.Connection, limit: int | None) -> list[RoundAudit]:
    rows = conn.execute(
        """
        SELECT round_id, started, coordinator, participants, mode, threshold, kinds, own_size,
               outcome, reason, finished
        FROM rounds ORDER BY started DESC, rowid DESC LIMIT ?
        """,
        (-1 if limit is None else limit,),
    ).fetchall()
    blinded: dict[str, dict[str, int]] = {}
    for round_id, partner, elements in conn.execute(
        "SELECT round_id, partner, elements FROM round_blinded ORDER BY round_id, partner"
    ):
        blinded.setdefault(round_id, {})[partner] = elements
    return [
        RoundAudit(
            round_id=rid,
            started=started,
            coordinator=coordinator,
            participants=json.loads(participants),
            mode=mode,
            threshold=threshold,
            kinds=json.loads(kinds),
            own_size=own_size,
            blinded_for=blinded.get(rid, {}),
            outcome=outcome,
            reason=reason,
            finished=finished,
        )
        for rid, started, coordinator, participants, mode, threshold, kinds, own_size, outcome, reason, finished in rows
    ]
