"""The node's hashing pool: H(v) of its indicators, computed in worker processes.

So gRPC handler threads, health checks and rounds stay responsive while an import or a store's
stale hashes are hashed, and hashing uses every core. ``hash`` and ``hash_all`` give the H(v) the
store keeps (blindmatch.core.oprf.hash_indicators); a round reads those and never sends work here.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from multiprocessing import get_context
from typing import TypeVar

from blindmatch.core import oprf
from blindmatch.runtime.hardening import exit_with_parent, no_core_dumps

# Fewer items than this are hashed in the caller's process unless the workers are already up:
# spawning them (about a second) costs more than hashing a small import.
SPAWN_WORTH = 5_000

_T = TypeVar("_T")


def _start_worker(parent: int) -> None:
    """Each worker's initializer: no core dumps, and no life after its node (even a kill -9)."""
    no_core_dumps()
    exit_with_parent(parent)


class Blinder:
    """A pool of worker processes that hash indicators.

    Workers are spawned (not forked: forking a process that runs gRPC threads is unsafe) and get
    the values with each task through a pipe; a worker may not dump core, and exits when its
    parent does, even by ``kill -9`` (it holds its task pipe's write end too, so it would never
    read end-of-file and would wait forever). ``retire`` (called when the last live round has
    ended) ends the workers and warms fresh ones in the background, so the next task does not
    wait for processes to spawn. It dates from v1, whose workers held
    round keys; no round sends work here now.
    """

    def __init__(self, workers: int) -> None:
        self.workers = max(1, workers)
        self._lock = threading.Lock()
        self._pool: ProcessPoolExecutor | None = None
        self._closed = False

    def _submit(self, fn: Callable[..., _T], *args: object) -> Future[_T]:
        # Under the lock: ``retire`` must not shut down the pool between lookup and submit.
        with self._lock:
            if self._closed:
                raise RuntimeError("the blinding pool is closed")
            if self._pool is None:
                self._pool = ProcessPoolExecutor(
                    self.workers,
                    mp_context=get_context("spawn"),
                    initializer=_start_worker,
                    initargs=(os.getpid(),),
                )
            return self._pool.submit(fn, *args)

    def warm_up(self) -> None:
        # A public value: warming up holds nothing of the node's.
        futures = [self.hash([("domain", "a.example")]) for _ in range(self.workers)]
        for f in futures:
            f.result()

    def hash(self, items: list[tuple[str, str]]) -> Future[list[bytes]]:
        """H(v) of each item as the store keeps it (oprf.hash_indicators)."""
        return self._submit(oprf.hash_indicators, items)

    def hash_all(self, items: Sequence[tuple[str, str]]) -> list[bytes]:
        """H(v) of each item (oprf.hash_indicators), in order, one task per worker so that a
        batch uses every core.

        The store's ``Hasher`` for imports and for filling a store's missing or stale hashes.
        """
        with self._lock:
            cold = self._pool is None
        if cold and len(items) < SPAWN_WORTH:
            return oprf.hash_indicators(items)
        per = -(-len(items) // self.workers) or 1
        futures = [self.hash(list(items[i : i + per])) for i in range(0, len(items), per)]
        return [e for f in futures for e in f.result()]

    def worker_pids(self) -> set[int]:
        """The running workers' process ids (none before the first task or after ``retire``)."""
        with self._lock:
            pool = self._pool
        # ProcessPoolExecutor keeps its processes in a private dict; read-only here, for tests.
        procs = getattr(pool, "_processes", None) or {}
        return set(procs)

    def retire(self) -> None:
        """End the current workers once their tasks are done; later tasks start new ones."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)
            threading.Thread(target=self._warm_quietly, name="blinder-warm-up", daemon=True).start()

    def _warm_quietly(self) -> None:
        with contextlib.suppress(RuntimeError):  # closed meanwhile: the node is stopping
            self.warm_up()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
