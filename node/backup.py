"""``blindmatch node backup``: a consistent copy of the node's store, taken while it serves.

The store is SQLite in WAL mode (node/store/schema.py): committed transactions may sit in the
-wal file for a while, so a copy of the main file alone can miss them or be torn mid-checkpoint.
SQLite's online backup API copies the pages of one read transaction instead: every transaction
committed before it began (an import's files, a round's matches) and nothing of any committed
after, while the node and an import go on writing beside it (WAL readers never block writers).

Rules:
- The copy is taken in one step (``pages=-1``): a step-by-step copy restarts whenever another
  process writes, and could then never finish under a busy import.
- The source is opened as it is: no migration and no pragma that writes, so a backup never
  changes the store it copies (``Store.open`` would bring its schema up to date).
- The backup is created 0600 before SQLite opens it, like the store (node/store/db.py): it holds
  every sighting, RED included. An existing file is never overwritten: a backup must not replace
  the one an operator kept. A backup that fails midway is removed.
- It is checked (``PRAGMA integrity_check``) and synced to disk before it is reported written.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from node.store import StoreError
from node.store.schema import BUSY_TIMEOUT_MS

BACKUP_MODE: Final = 0o600


@dataclass(frozen=True, slots=True)
class Backup:
    path: Path
    size: int  # bytes
    schema: int  # PRAGMA user_version: the store migrations it holds
    indicators: int
    imports: int
    rounds: int


def backup_store(store: Path, to: Path) -> Backup:
    """Copy the store at ``store`` into the new file ``to``; what was written.

    Raises StoreError if ``store`` is not a node store, FileExistsError if ``to`` exists, and
    OSError if ``to`` cannot be created."""
    if not store.is_file():
        raise StoreError(f"{store}: no store here (run `blindmatch node init` first)")
    fd = os.open(to, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, BACKUP_MODE)
    try:
        os.fchmod(fd, BACKUP_MODE)  # whatever the umask
    finally:
        os.close(fd)
    try:
        _copy(store, to)
        return _check(to)
    except BaseException:
        for leftover in (to, *(to.with_name(to.name + s) for s in ("-wal", "-shm", "-journal"))):
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()
        raise


def _copy(store: Path, to: Path) -> None:
    # uri + mode=rw: the source must exist already; a plain connect would create an empty one
    uri = "file:" + _quote(store) + "?mode=rw"
    try:
        source = sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_MS / 1000)
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open store {store}: {exc}") from exc
    try:
        _require_store(source, store)
        target = sqlite3.connect(to)
        try:
            source.backup(target, pages=-1)
        finally:
            target.close()
    except sqlite3.Error as exc:
        raise StoreError(f"cannot back up store {store} to {to}: {exc}") from exc
    finally:
        source.close()


def _require_store(conn: sqlite3.Connection, path: Path) -> None:
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    except sqlite3.DatabaseError as exc:
        raise StoreError(f"{path} is not a node store: {exc}") from exc
    if not version or "sightings" not in tables:
        raise StoreError(f"{path} is not a node store (no blindmatch schema in it)")


def _check(to: Path) -> Backup:
    conn = sqlite3.connect(to)
    try:
        problems = [row[0] for row in conn.execute("PRAGMA integrity_check")]
        if problems != ["ok"]:
            raise StoreError(f"the backup {to} fails its integrity check: {'; '.join(problems)}")
        (schema,) = conn.execute("PRAGMA user_version").fetchone()
        counts = [
            conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
            for table in ("sightings", "imports", "rounds")
        ]
    finally:
        conn.close()  # the last connection: SQLite folds any -wal back into the file
    for synced in (to, to.parent):  # the file's pages, then its name in the directory
        fd = os.open(synced, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    return Backup(to, to.stat().st_size, schema, *counts)


def _quote(path: Path) -> str:
    """``path`` for a SQLite URI: the characters a URI gives a meaning to, escaped."""
    return str(path.resolve()).replace("%", "%25").replace("?", "%3f").replace("#", "%23")
