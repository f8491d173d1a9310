"""`node serve`'s connector work: each source pulled on its `every`, sinks pushed after rounds.

Rules:
- One background thread with its own store connection, so a pull or push never holds the lock
  the round service uses; SQLite serialises the short page transactions with the rounds' writes.
- Every sink is pushed to as soon as a round has ended well (``push_now``, which the round
  registry calls), and polled every PUSH_EVERY seconds besides; ``push_sink`` makes no connection
  when there is nothing new, and the round never waits for it.
- A failing job is logged and retried after RETRY_FIRST seconds, doubling up to RETRY_MAX; it
  never stops the thread, the other jobs or the node. Time comes from an injected clock, and
  ``step`` runs what is due once, so tests drive the schedule without sleeping.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

from blindmatch.core.oprf import hash_indicators
from node.config import NodeConfig
from node.connectors.push import push_sink
from node.connectors.sync import sync_source
from node.metrics import NO_METRICS, NodeHooks
from node.store import Store
from node.store.sightings import Hasher

log = logging.getLogger("blindmatch.node.connectors")

PUSH_EVERY: Final = 60.0
RETRY_FIRST: Final = 30.0
RETRY_MAX: Final = 3600.0


@dataclass
class Job:
    name: str  # "pull national-taxii", "push national-taxii-sightings"
    every: float
    run: Callable[[], object]
    due: float = 0.0  # clock time of its next run; 0 = at once
    failures: int = 0  # in a row
    push: bool = False  # a sink's push, brought forward when a round ends


def retry_delay(failures: int) -> float:
    return min(RETRY_FIRST * 2.0 ** (failures - 1), RETRY_MAX)


class Scheduler:
    def __init__(self, jobs: Sequence[Job], clock: Callable[[], float] = time.monotonic) -> None:
        self.jobs = list(jobs)
        self.clock = clock
        self.wake = threading.Event()

    def push_now(self) -> None:
        """A round has ended well: push to every sink now (one in backoff keeps its delay)."""
        for job in self.jobs:
            if job.push and job.failures == 0:
                job.due = 0.0
        self.wake.set()

    def step(self) -> float:
        """Run every job that is due; the seconds until the next one is."""
        for job in self.jobs:
            now = self.clock()
            if job.due > now:
                continue
            try:
                job.run()
            except Exception as exc:  # any failure is the job's, never the node's
                job.failures += 1
                delay = retry_delay(job.failures)
                log.warning("%s failed (%s); retrying in %.0f s", job.name, exc, delay)
                job.due = self.clock() + delay
            else:
                job.failures = 0
                job.due = self.clock() + job.every
        return max(0.0, min((j.due for j in self.jobs), default=RETRY_MAX) - self.clock())

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            self.wake.wait(self.step())
            self.wake.clear()


def jobs_for(
    config: NodeConfig,
    store: Store,
    metrics: NodeHooks = NO_METRICS,
    hasher: Hasher = hash_indicators,
) -> list[Job]:
    jobs = [
        Job(
            f"pull {source.name}",
            source.every,
            metrics.pulling(
                source.name,
                lambda source=source: sync_source(  # type: ignore[misc]
                    store, source, default_tlp=config.default_tlp, hasher=hasher
                ),
            ),
        )
        for source in config.sources
        if source.every is not None
    ]
    jobs += [
        Job(
            f"push {sink.name}",
            PUSH_EVERY,
            metrics.pushing(
                sink.name,
                lambda sink=sink: push_sink(store, sink, node=config.name),  # type: ignore[misc]
            ),
            push=True,
        )
        for sink in config.sinks
    ]
    return jobs


class ConnectorThread:
    """The background thread ``node serve`` runs when node.toml has sources or sinks.

    Built before the round registry, which is given ``push_now``; started (``start``) only once
    the node serves, so a node that failed to start has nothing pulling in the background."""

    def __init__(
        self, config: NodeConfig, metrics: NodeHooks = NO_METRICS, hasher: Hasher = hash_indicators
    ) -> None:
        self._store = Store.open(config.store)
        self._stop = threading.Event()
        self.scheduler = Scheduler(jobs_for(config, self._store, metrics, hasher))
        self._thread = threading.Thread(
            target=self.scheduler.run, args=(self._stop,), name="connectors", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def push_now(self) -> None:
        self.scheduler.push_now()

    def stop(self) -> None:
        """Stop the thread, if it was started, and close its store."""
        self._stop.set()
        self.scheduler.wake.set()
        if self._thread.ident is not None:
            self._thread.join()
        self._store.close()
