"""The coordinator's metrics (docs/OPERATIONS.md, Metrics): what they are and the hooks that move
them.

Rules:
- The coordinator's code reports through a ``CoordinatorHooks``: the base does nothing (no
  ``[metrics]`` table), ``CoordinatorMetrics`` counts. Call sites hold one line each.
- One CollectorRegistry per coordinator, never the global one (several in one process in tests).
- Labels are bounded: outcome, mode, node names. Never a round id or an element.
- Whether a watch epoch is open, and how many of its nodes cannot serve it, are asked at every
  scrape (of ``WatchHub.epoch_open`` and ``WatchHub.degraded_count``, given to the constructor),
  so they cannot drift; this module knows nothing of the hub.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app

from blindmatch.runtime.metrics_endpoint import MetricsEndpoint, serve_metrics

if TYPE_CHECKING:
    from coordinator.records import RoundRecord

ROUND_BUCKETS: Final = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)


class CoordinatorHooks:
    """What the coordinator reports; these do nothing (metrics off)."""

    def round_started(self) -> None:
        """A round was launched."""

    def round_ended(self, record: RoundRecord) -> None:
        """A launched round has ended; ``record`` is its last state."""

    def check_routed(self, checker: str) -> None:
        """A check of node ``checker`` went through every partner it allows."""


NO_METRICS: Final = CoordinatorHooks()


class CoordinatorMetrics(CoordinatorHooks):
    def __init__(
        self,
        name: str,
        epoch_open: Callable[[], bool],
        epoch_degraded: Callable[[], int] = lambda: 0,
    ) -> None:
        self.name = name
        self.registry = CollectorRegistry()
        r = self.registry
        self.rounds = Counter(
            "blindmatch_coordinator_rounds",
            "Rounds ended, by outcome (done, failed) and mode",
            ["outcome", "mode"],
            registry=r,
        )
        self.round_seconds = Histogram(
            "blindmatch_coordinator_round_duration_seconds",
            "Rounds from their start to their end",
            buckets=ROUND_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge(
            "blindmatch_coordinator_rounds_in_flight", "Rounds running now", registry=r
        )
        self.checks = Counter(
            "blindmatch_coordinator_checks_routed",
            "Early-warning checks routed through every partner, by checking node",
            ["checker"],
            registry=r,
        )
        self.epoch_open = Gauge(
            "blindmatch_coordinator_epoch_open", "1 while a watch epoch is open", registry=r
        )
        self.epoch_open.set_function(lambda: float(epoch_open()))
        self.epoch_degraded = Gauge(
            "blindmatch_coordinator_epoch_degraded_nodes",
            "Nodes of the open watch epoch that lost their key or cannot be reached (0: healthy)",
            registry=r,
        )
        self.epoch_degraded.set_function(lambda: float(epoch_degraded()))

    def round_started(self) -> None:
        self.in_flight.inc()

    def round_ended(self, record: RoundRecord) -> None:
        self.in_flight.dec()
        self.rounds.labels(record.state.value, record.mode).inc()
        if record.finished:
            self.round_seconds.observe(max(0.0, record.finished - record.created))

    def check_routed(self, checker: str) -> None:
        self.checks.labels(checker).inc()

    def serve(self, listen: str) -> MetricsEndpoint:
        return serve_metrics(listen, make_wsgi_app(self.registry), f"coordinator {self.name}")
