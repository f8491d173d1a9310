"""The node's blinding pool: hashing and blinding run in worker processes.

So gRPC handler threads, health checks and other rounds stay responsive while a round is
blinding, and a round uses every core.
"""

from __future__ import annotations

from concurrent.futures import Future, ProcessPoolExecutor
from multiprocessing import get_context

from blindmatch import group


class Blinder:
    """A pool of worker processes that hash and blind chunks.

    Workers are spawned (not forked: forking a process that runs gRPC threads is unsafe) and get
    the round key with each task through a pipe; it never touches the disk.
    """

    def __init__(self, workers: int) -> None:
        self.workers = max(1, workers)
        self._pool = ProcessPoolExecutor(self.workers, mp_context=get_context("spawn"))

    def warm_up(self) -> None:
        key = group.RoundKey.generate()
        futures = [
            self._pool.submit(group.hash_and_blind_packed, key.export(), [("domain", "a.example")])
            for _ in range(self.workers)
        ]
        for f in futures:
            f.result()

    def blind(self, key: bytes, packed: bytes) -> Future[bytes]:
        return self._pool.submit(group.blind_packed, key, packed)

    def hash_and_blind(self, key: bytes, items: list[tuple[str, str]]) -> Future[bytes]:
        return self._pool.submit(group.hash_and_blind_packed, key, items)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
