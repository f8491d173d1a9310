"""The node's metrics (docs/OPERATIONS.md, Metrics): what they are and the hooks that move them.

Rules:
- The node's code reports through a ``NodeHooks``: the base does nothing (no ``[metrics]``
  table), ``NodeMetrics`` counts. Call sites hold one line each; the core (blindmatch/) never
  sees a metric.
- One CollectorRegistry per node, never the global one: several nodes in one process (tests)
  keep their own counts.
- Labels are bounded: outcome, partner, source and sink names. Never a value or a round id.
- Budget use is read from the store when scraped, so it is the ledger's own figure.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Final, TypeVar

from prometheus_client import CollectorRegistry, Counter, Histogram, make_wsgi_app
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from blindmatch.core.states import Outcome
from blindmatch.runtime.metrics_endpoint import MetricsEndpoint, serve_metrics

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from node.budgets import Budgets
    from node.connectors.push import PushResult
    from node.connectors.sync import SyncResult

_T = TypeVar("_T")
_R = TypeVar("_R")
_U = TypeVar("_U")

# Rounds last seconds to an hour (round_timeout); checks, milliseconds to a coordinator timeout.
ROUND_BUCKETS: Final = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
CHECK_BUCKETS: Final = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class NodeHooks:
    """What the node reports; these do nothing (metrics off)."""

    def round_ended(self, outcome: str, seconds: float | None, blinded: Mapping[str, int]) -> None:
        """A round ended with ``outcome`` after ``seconds`` (None: refused before it began),
        having blinded ``blinded[partner]`` elements of each partner's set."""

    def timed_check(self, check: Callable[[_T], _U], flow: _T) -> _U:
        """Run one of the node's own checks."""
        return check(flow)

    def check_ended(self, checker: str, outcome: str) -> None:
        """A check was audited: ``checker`` is this node (its own) or a partner (evaluated)."""

    def pulling(self, source: str, pull: Callable[[], SyncResult]) -> Callable[[], SyncResult]:
        """``pull``, counted."""
        return pull

    def pushing(self, sink: str, push: Callable[[], PushResult]) -> Callable[[], PushResult]:
        """``push``, counted."""
        return push


NO_METRICS: Final = NodeHooks()


class NodeMetrics(NodeHooks):
    def __init__(self, name: str, budgets: Budgets | None) -> None:
        self.name = name
        self.registry = CollectorRegistry()
        r = self.registry
        self.rounds = Counter(
            "blindmatch_node_rounds", "Rounds ended, by outcome", ["outcome"], registry=r
        )
        for outcome in Outcome:  # every series from the start: rate() needs a first zero
            if outcome != Outcome.STARTED:
                self.rounds.labels(outcome.value)
        self.round_seconds = Histogram(
            "blindmatch_node_round_duration_seconds",
            "Rounds from Prepare to their end",
            buckets=ROUND_BUCKETS,
            registry=r,
        )
        self.blinded = Counter(
            "blindmatch_node_elements_blinded",
            "Elements of each partner's sets this node blinded in rounds",
            ["partner"],
            registry=r,
        )
        self.check_seconds = Histogram(
            "blindmatch_node_check_duration_seconds",
            "This node's own checks, end to end",
            buckets=CHECK_BUCKETS,
            registry=r,
        )
        self.own_checks = Counter(
            "blindmatch_node_checks", "This node's own checks, by outcome", ["outcome"], registry=r
        )
        self.reblinded = Counter(
            "blindmatch_node_checks_reblinded",
            "Partners' checks this node evaluated (or refused), by partner and outcome",
            ["partner", "outcome"],
            registry=r,
        )
        self.pulls = Counter(
            "blindmatch_node_pulls", "Source pulls that completed", ["source"], registry=r
        )
        self.pull_errors = Counter(
            "blindmatch_node_pull_errors", "Source pulls that failed", ["source"], registry=r
        )
        self.objects = Counter(
            "blindmatch_node_source_objects",
            "Objects pulled from a source: fetched, added (new indicators), invalid",
            ["source", "result"],
            registry=r,
        )
        self.pushes = Counter(
            "blindmatch_node_pushes", "Sink pushes that completed", ["sink"], registry=r
        )
        self.push_errors = Counter(
            "blindmatch_node_push_errors", "Sink pushes that failed", ["sink"], registry=r
        )
        self.pushed = Counter(
            "blindmatch_node_matches_pushed", "Matches delivered to a sink", ["sink"], registry=r
        )
        if budgets is not None:
            r.register(BudgetCollector(budgets))

    def round_ended(self, outcome: str, seconds: float | None, blinded: Mapping[str, int]) -> None:
        self.rounds.labels(outcome).inc()
        if seconds is not None:
            self.round_seconds.observe(seconds)
        for partner, n in blinded.items():
            self.blinded.labels(partner).inc(n)

    def timed_check(self, check: Callable[[_T], _U], flow: _T) -> _U:
        with self.check_seconds.time():
            return check(flow)

    def check_ended(self, checker: str, outcome: str) -> None:
        if checker == self.name:
            self.own_checks.labels(outcome).inc()
        else:
            self.reblinded.labels(checker, outcome).inc()

    def pulling(self, source: str, pull: Callable[[], SyncResult]) -> Callable[[], SyncResult]:
        def counted() -> SyncResult:
            result = _counting(self.pull_errors.labels(source), pull)
            self.pulls.labels(source).inc()
            for what, n in (
                ("fetched", result.fetched),
                ("added", result.added),
                ("invalid", result.invalid),
            ):
                self.objects.labels(source, what).inc(n)
            return result

        return counted

    def pushing(self, sink: str, push: Callable[[], PushResult]) -> Callable[[], PushResult]:
        def counted() -> PushResult:
            result = _counting(self.push_errors.labels(sink), push)
            self.pushes.labels(sink).inc()
            self.pushed.labels(sink).inc(result.matches)
            return result

        return counted

    def serve(self, listen: str) -> MetricsEndpoint:
        return serve_metrics(listen, make_wsgi_app(self.registry), f"node {self.name}")


def _counting(errors: Counter, run: Callable[[], _R]) -> _R:
    try:
        return run()
    except Exception:
        errors.inc()
        raise


class BudgetCollector(Collector):
    """Each partner's use of its budgets in the window ending now, read from the ledger."""

    def __init__(self, budgets: Budgets) -> None:
        self.budgets = budgets

    def collect(self) -> Iterator[Metric]:
        used = GaugeMetricFamily(
            "blindmatch_node_budget_used_elements",
            "Elements of a partner's sets (kind round) or checks (kind check) blinded in the "
            "budget window ending now",
            labels=["partner", "kind"],
        )
        limit = GaugeMetricFamily(
            "blindmatch_node_budget_limit_elements",
            "The [budgets] limit per partner and window",
            labels=["kind"],
        )
        policy = self.budgets.policy
        for kind in ("round", "check"):
            limit.add_metric([kind], policy.limit(kind))
        for line in self.budgets.use():
            used.add_metric([line.partner, "round"], line.round_used)
            used.add_metric([line.partner, "check"], line.check_used)
        yield used
        yield limit
