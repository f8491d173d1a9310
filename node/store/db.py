"""The SQLite store's connection: opening the file privately, the lock, read and write transactions.

Rules:
- Thread-safety: one connection, opened with ``check_same_thread=False``, and every use of it
  holds the store's lock. The gRPC servicer's worker threads and the CLI can share one store;
  other processes open their own and SQLite's file locking (with ``busy_timeout``) serialises
  the writers.
- The file holds every sighting, RED included, so it and its -wal and -shm companions are
  readable by their owner only (0600) whatever the umask: the store file is created 0600 before
  SQLite opens it (SQLite gives the companions the main file's mode), and a store left readable
  by others (an older blindmatch, a copy) is tightened when opened.
- Every read runs in one read transaction and every write in one write transaction, so a
  multi-query read sees one snapshot and a batch is stored all or nothing.
"""

from __future__ import annotations

import os
import sqlite3
import stat
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Final, Self

from node.store.schema import BUSY_TIMEOUT_MS, StoreError, configure, migrate

_PRIVATE: Final = 0o600
_OTHERS: Final = 0o077  # group and world bits
_COMPANIONS: Final = ("-wal", "-shm")


def write_many(conn: sqlite3.Connection, sql: str, rows: Iterable[Sequence[object]]) -> int:
    """Run ``sql`` once per row; how many rows it wrote (an ignored conflict writes none)."""
    before = conn.total_changes
    conn.executemany(sql, rows)
    return conn.total_changes - before


class Database:
    """Holds the connection; the store's parts run their SQL through ``_transaction``/``_reading``."""

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self._conn = conn
        self.path = path
        self._lock = threading.RLock()
        self._closed = False

    @classmethod
    def open(cls, path: str | Path) -> Self:
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
            _create_private(path)
            conn = sqlite3.connect(
                path,
                timeout=BUSY_TIMEOUT_MS / 1000,
                isolation_level=None,  # transactions are explicit: see _transaction()
                check_same_thread=False,  # guarded by the store's lock instead
            )
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open store {path}: {exc}") from exc
        try:
            configure(conn, path)
            # After configure: only a file SQLite accepted has its mode changed.
            _make_private(path)
            migrate(conn, path)
        except BaseException:
            conn.close()
            raise
        return cls(conn, path)

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._conn.close()

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


def _create_private(path: Path) -> None:
    """Create ``path`` empty with mode 0600 unless it exists, so the umask never widens it."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, _PRIVATE)
    except FileExistsError:
        return
    try:
        os.fchmod(fd, _PRIVATE)  # a umask such as 0o277 would otherwise leave it unwritable
    finally:
        os.close(fd)


def _make_private(path: Path) -> None:
    """Take the group and world permissions off the store file and its companions."""
    for file in (path, *(path.with_name(path.name + suffix) for suffix in _COMPANIONS)):
        try:
            mode = stat.S_IMODE(file.stat().st_mode)
            if mode & _OTHERS:
                os.chmod(file, mode & ~_OTHERS)
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise StoreError(
                f"cannot open store {path}: {file} is readable by other users and its mode"
                f" cannot be changed ({exc}); make it 0600"
            ) from exc
