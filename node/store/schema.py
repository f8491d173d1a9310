"""The store file's format: tables, their versioned migrations, connection settings, times.

Rules:
- One SQLite file per node, in WAL mode so a reader (the CLI) never blocks the node's writer.
- The schema version is ``PRAGMA user_version``: the number of ``MIGRATIONS`` applied. Opening a
  store brings it up to date, one migration per transaction; a store from a newer blindmatch is
  refused rather than guessed at.
- No table has a column for key material.
- Times are ISO 8601 UTC strings with second resolution, "2026-11-26T23:00:00Z", so that they
  order as text.
"""

from __future__ import annotations

import re
import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import Final


class StoreError(Exception):
    """The store file cannot be used as asked (missing directory, newer schema, not a store)."""


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
    # 2 -> 3: budgets across rounds (issue 10): what this node blinded for each partner, when.
    # ``at`` is unix seconds, not ISO text: budgets sum over a rolling window by comparing it.
    (
        """
        CREATE TABLE budget_charges (
            id       INTEGER PRIMARY KEY,
            partner  TEXT NOT NULL,
            at       REAL NOT NULL,
            elements INTEGER NOT NULL CHECK (elements > 0),
            what     TEXT NOT NULL CHECK (what IN ('round', 'check')),
            ref      TEXT NOT NULL  -- the round or epoch id
        )
        """,
        "CREATE INDEX budget_charges_by_partner ON budget_charges (what, partner, at)",
    ),
    # 3 -> 4: signed specs (docs/PROTOCOL.md): the operator who signed a round's spec; NULL for
    # rounds recorded before, and for specs refused before their signature was verified.
    ("ALTER TABLE rounds ADD COLUMN operator TEXT",),
    # 4 -> 5: connectors (node/store/connectors.py): the STIX ids indicators came with, each source's
    # cursor, and which matches each sink has received.
    (
        """
        CREATE TABLE stix_refs (
            sighting_id INTEGER NOT NULL REFERENCES sightings (id),
            stix_id     TEXT NOT NULL,  -- the source's own indicator--<uuid>
            PRIMARY KEY (sighting_id, stix_id)
        ) WITHOUT ROWID
        """,
        """
        CREATE TABLE source_cursors (
            source  TEXT PRIMARY KEY,
            cursor  TEXT NOT NULL,  -- opaque to the store: what the source resumes from
            updated TEXT NOT NULL
        )
        """,
        """
        CREATE TABLE pushed (
            sink        TEXT NOT NULL,
            round_id    TEXT NOT NULL REFERENCES rounds (round_id) ON DELETE CASCADE,
            sighting_id INTEGER NOT NULL REFERENCES sightings (id),
            pushed_at   TEXT NOT NULL,
            PRIMARY KEY (sink, round_id, sighting_id)
        ) WITHOUT ROWID
        """,
    ),
    # 5 -> 6: MISP connectors (node/store/connectors.py): the ids an indicator came with, from any
    # scheme (a STIX indicator id, a MISP attribute uuid), replace the STIX-only table.
    (
        """
        CREATE TABLE source_refs (
            sighting_id INTEGER NOT NULL REFERENCES sightings (id),
            scheme      TEXT NOT NULL CHECK (scheme IN ('stix', 'misp')),
            ref         TEXT NOT NULL,  -- indicator--<uuid> (stix), an attribute uuid (misp)
            PRIMARY KEY (sighting_id, scheme, ref)
        ) WITHOUT ROWID
        """,
        "INSERT INTO source_refs (sighting_id, scheme, ref)"
        " SELECT sighting_id, 'stix', stix_id FROM stix_refs",
        "DROP TABLE stix_refs",
    ),
    # 6 -> 7: hash once (issue 12): H(v) of each indicator and the hash version it was computed
    # under (then protocol v1's: 32-byte X25519 u-coordinates). SQL cannot hash to the curve, so
    # existing rows keep NULL here and the node fills them (SightingsTable.fill_hashes) when it
    # serves or imports.
    (
        "ALTER TABLE sightings ADD COLUMN hash BLOB CHECK (hash IS NULL OR length(hash) = 32)",
        "ALTER TABLE sightings ADD COLUMN hash_version TEXT",
    ),
    # 7 -> 8: the store keeps protocol v2's H(v) (blindmatch.core.oprf.hash_indicators, 65-byte
    # uncompressed secp256k1 points, version blindmatch.core.oprf.HASH_VERSION). v1's hashes are
    # stale under that version anyway, so the column is dropped and added again with the new size
    # (SQLite cannot alter a CHECK): every row is NULL, hence stale, and the node fills it as above.
    (
        "ALTER TABLE sightings DROP COLUMN hash",
        "ALTER TABLE sightings ADD COLUMN hash BLOB CHECK (hash IS NULL OR length(hash) = 65)",
    ),
    # 8 -> 9: junk can be taken out (issue 19). ``seen_at``: when this node last imported or
    # pulled the indicator (``last_seen`` is what the feed claims), for ``[policy] max_age``.
    # An existing row gets the last import of any of its sources: it cannot have been seen after
    # that, and no earlier time is known, so nothing expires sooner than it should on upgrade.
    # ``forgets``: the audit of ``node forget``.
    (
        "ALTER TABLE sightings ADD COLUMN seen_at TEXT NOT NULL DEFAULT ''",
        """
        UPDATE sightings SET seen_at = coalesce(
            (SELECT max(i.imported_at) FROM imports i
             WHERE i.source IN (SELECT value FROM json_each(sightings.sources))),
            last_seen)
        """,
        """
        CREATE TABLE forgets (
            id        INTEGER PRIMARY KEY,
            time      TEXT NOT NULL,
            who       TEXT NOT NULL,  -- the user who ran it
            how       TEXT NOT NULL,  -- what was asked: values, a source, a file or a date
            summary   TEXT NOT NULL   -- JSON object: counts of what was deleted
        )
        """,
    ),
    # 9 -> 10: a watch round is recorded as one (issue 19): it runs as a pairwise round, and its
    # ``epoch_seconds`` (> 0) is what says it was a watch round, opened epoch or not.
    ("ALTER TABLE rounds ADD COLUMN epoch_seconds REAL NOT NULL DEFAULT 0",),
)
SCHEMA_VERSION: Final = len(MIGRATIONS)

BUSY_TIMEOUT_MS: Final = 10_000
# SQLite keeps a WAL file at its largest size unless told otherwise; one import of 1M rows
# would otherwise leave hundreds of MB behind.
_WAL_SIZE_LIMIT: Final = 64 * 1024 * 1024
_CACHE_KIB: Final = 64 * 1024


def configure(conn: sqlite3.Connection, path: Path) -> None:
    try:
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    except sqlite3.DatabaseError as exc:
        raise StoreError(f"cannot open store {path}: {exc} (is it a blindmatch store?)") from exc
    if mode != "wal":
        raise StoreError(
            f"cannot open store {path}: SQLite refused WAL mode (got {mode!r});"
            " put the store on a local file system"
        )
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA foreign_keys = ON")
    # FULL: a commit the store has reported (an audit record, a batch) survives a power cut.
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute(f"PRAGMA journal_size_limit = {_WAL_SIZE_LIMIT}")
    # Upserts into the (kind, value) index touch random pages; a bigger cache keeps a
    # 1M-row import of hashes at ~120k rows/s instead of ~85k (measured, 2-core machine).
    conn.execute(f"PRAGMA cache_size = -{_CACHE_KIB}")


def migrate(conn: sqlite3.Connection, path: Path) -> None:
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


# --- times ----------------------------------------------------------------------------------------

_CANONICAL_TIME: Final = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")


def utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def utc_text(unix: float) -> str:
    """Unix seconds as the store's time text."""
    return datetime.fromtimestamp(unix, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def normalize_time(value: str | datetime, what: str) -> str:
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
