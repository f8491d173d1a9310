"""The node's blinding pool: hashing and blinding run in worker processes.

So gRPC handler threads, health checks and other rounds stay responsive while a round is
blinding, and a round uses every core.

Two hashes run here: ``blind`` and ``hash_and_blind`` are protocol v1's (X25519,
blindmatch.core.group), for v1 rounds and checks; ``hash`` and ``hash_all`` are the H(v) the store
keeps, protocol v2's (secp256k1, blindmatch.core.oprf), for imports and filling stale hashes.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from multiprocessing import get_context
from typing import TypeVar

from blindmatch.core import group, oprf
from blindmatch.runtime.hardening import no_core_dumps

WARM_UP_KEY = bytes(range(32))
# Fewer items than this are hashed in the caller's process unless the workers are already up:
# spawning them (about a second) costs more than hashing a small import.
SPAWN_WORTH = 5_000

_T = TypeVar("_T")


class Blinder:
    """A pool of worker processes that hash and blind chunks.

    Workers are spawned (not forked: forking a process that runs gRPC threads is unsafe) and get
    the round key with each task through a pipe; it never touches the disk, and a worker may not
    dump core. A worker's memory may still hold the keys of the tasks it ran, so the workers do
    not outlive them: ``retire`` (called when the last live key is destroyed) ends them and
    warms fresh ones, holding no key, in the background, so the next round does not wait for
    processes to spawn.
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
                    self.workers, mp_context=get_context("spawn"), initializer=no_core_dumps
                )
            return self._pool.submit(fn, *args)

    def warm_up(self) -> None:
        # A public constant, not a round key: warming up holds nothing secret.
        futures = [
            self.hash_and_blind(WARM_UP_KEY, [("domain", "a.example")]) for _ in range(self.workers)
        ]
        for f in futures:
            f.result()

    def blind(self, key: bytes, packed: bytes) -> Future[bytes]:
        return self._submit(group.blind_packed, key, packed)

    def hash_and_blind(self, key: bytes, items: list[tuple[str, str]]) -> Future[bytes]:
        return self._submit(group.hash_and_blind_packed, key, items)

    def hash(self, items: list[tuple[str, str]]) -> Future[list[bytes]]:
        """H(v) of each item as the store keeps it (oprf.hash_indicators, protocol v2): no key is
        involved, so these tasks hold nothing secret."""
        return self._submit(oprf.hash_indicators, items)

    def hash_all(self, items: Sequence[tuple[str, str]]) -> list[bytes]:
        """H(v) of each item (oprf.hash_indicators), in order, one task per worker so that a
        batch uses every core.

        The store's ``Hasher`` for imports and for filling a store's missing or stale hashes;
        never an input of v1's blinding (that hashes with ``hash_and_blind``).
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
        # ProcessPoolExecutor keeps its processes in a private dict; read-only here, for tests
        # and the audit of what holds key material.
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
