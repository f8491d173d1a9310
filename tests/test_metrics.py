"""The opt-in Prometheus endpoint of node and coordinator, scraped over HTTP.

A real federation (mTLS on 127.0.0.1) runs with ``[metrics] listen = "127.0.0.1:0"`` on every
node and on the coordinator; the tests run rounds and read what the endpoints say.
"""

from __future__ import annotations

import logging
import re
import urllib.request
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from blindmatch.cli.tomlconfig import ConfigError, TlsPaths
from blindmatch.core.oprf import LAMBDA
from blindmatch.core.spec import Policy
from blindmatch.runtime import net
from blindmatch.runtime.metrics_endpoint import DEFAULT_LISTEN, serve_metrics
from blindmatch.runtime.net import BindError
from blindmatch.v2 import watch_pb2, watch_pb2_grpc
from coordinator.config import CoordinatorConfig, write_config
from coordinator.config import load_config as load_coordinator_config
from node.config import load_config as load_node_config
from node.config import render_config
from node.connectors.push import PushResult
from node.connectors.sync import SyncResult
from node.metrics import NO_METRICS, NodeMetrics
from node.server import start as start_node
from tests.federation import ON, Federation, Setup, make_datasets, node_config, start_request
from tests.pkifixtures import FederationPki
from tests.waiting import until

NAMES = ("alpha", "bravo", "charlie")

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


# straight to the endpoint: an http_proxy in the environment must not see loopback scrapes
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def scrape(address: str) -> Samples:
    with _DIRECT.open(f"http://{address}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


DATA = make_datasets(NAMES, 300)


@pytest.fixture(scope="module")
def federation_setup() -> Setup:
    # charlie matches with alpha only: a round with bravo is refused at Prepare
    policies = {"charlie": Policy(partners=frozenset({"alpha"}))}
    return Setup(NAMES, DATA, policies=policies, metrics=True)


def node_address(federation: Federation, name: str) -> str:
    endpoint = federation.nodes[name].metrics
    assert endpoint is not None
    return endpoint.address


def coordinator_address(federation: Federation) -> str:
    assert federation.coordinator is not None and federation.coordinator.metrics is not None
    return federation.coordinator.metrics.address


def coordinator_after(federation: Federation, outcome: str, mode: str) -> Samples:
    """The coordinator's metrics once they count a round ended so: its thread counts it just
    after publishing the state the operator's WatchRound returned."""
    address = coordinator_address(federation)

    def counted() -> Samples | None:
        got = scrape(address)
        rounds = value(got, "blindmatch_coordinator_rounds_total", outcome=outcome, mode=mode)
        return got if rounds else None

    return until(f"the coordinator counts a {mode} round {outcome}", counted, 30)


def test_a_round_moves_the_counters(fed: Federation) -> None:
    federation, data = fed, DATA
    info = federation.run_round(["alpha", "bravo"])
    assert info.state == "done", info.error
    alpha = scrape(node_address(federation, "alpha"))
    assert value(alpha, "blindmatch_node_rounds_total", outcome="done") == 1
    # alpha, a member of the committee, answered bravo's set and its LAMBDA subset checks
    evaluations = len(data["bravo"].eligible()) + LAMBDA
    assert value(alpha, "blindmatch_node_elements_blinded_total", partner="bravo") == evaluations
    assert value(alpha, "blindmatch_node_round_duration_seconds_count") == 1
    # the ledger's figure, read at the scrape: what Begin charged bravo (its size and the checks)
    assert (
        value(alpha, "blindmatch_node_budget_used_elements", partner="bravo", kind="round")
        == evaluations
    )
    assert value(alpha, "blindmatch_node_budget_limit_elements", kind="round") > 0
    coordinator = coordinator_after(federation, "done", "pairwise")
    assert (
        value(coordinator, "blindmatch_coordinator_rounds_total", outcome="done", mode="pairwise")
        == 1
    )
    assert value(coordinator, "blindmatch_coordinator_round_duration_seconds_count") >= 1
    assert value(coordinator, "blindmatch_coordinator_rounds_in_flight") == 0
    assert value(coordinator, "blindmatch_coordinator_epoch_open") == 0


def test_a_refused_round_counts_as_refused(fed: Federation) -> None:
    federation = fed
    info = federation.run_round(["bravo", "charlie"])
    assert info.state == "failed"
    charlie = scrape(node_address(federation, "charlie"))
    assert value(charlie, "blindmatch_node_rounds_total", outcome="refused") == 1
    assert value(charlie, "blindmatch_node_rounds_total", outcome="done") == 0
    # refused before it began: no duration, nothing blinded
    assert value(charlie, "blindmatch_node_round_duration_seconds_count") == 0
    assert value(charlie, "blindmatch_node_elements_blinded_total", partner="bravo") == 0
    coordinator = coordinator_after(federation, "failed", "pairwise")
    assert (
        value(coordinator, "blindmatch_coordinator_rounds_total", outcome="failed", mode="pairwise")
        == 1
    )


def test_a_check_moves_the_check_metrics(fed: Federation) -> None:
    federation, data = fed, DATA
    coordinator = federation.coordinator
    assert coordinator is not None
    for name in ("alpha", "bravo"):
        watch = federation.nodes[name].watch
        assert watch is not None
        watch.connect_coordinator(f"127.0.0.1:{coordinator.port}")
    info = federation.stub.StartRound(
        start_request(federation.pki, ["alpha", "bravo"], "watch"), timeout=10
    )
    assert federation.wait(info.id, 60).state == "done"
    value_held = data["bravo"].raw[next(iter(data["bravo"].eligible()))]
    with net.open_channel(
        f"127.0.0.1:{federation.nodes['alpha'].port}",
        federation.pki.tls("alpha", "node"),
        insecure=False,
        expect=net.Allow("node", "alpha"),
    ) as channel:
        watch_pb2_grpc.NodeWatchServiceStub(channel).Check(
            watch_pb2.NodeCheckRequest(values=[value_held]), timeout=30
        )
    alpha = scrape(node_address(federation, "alpha"))
    assert value(alpha, "blindmatch_node_check_duration_seconds_count") == 1
    assert value(alpha, "blindmatch_node_checks_total", outcome="done") == 1
    bravo = scrape(node_address(federation, "bravo"))
    assert (
        value(bravo, "blindmatch_node_checks_reblinded_total", partner="alpha", outcome="done") == 1
    )
    # the check budget is charged with the cap bravo announced for alpha, at the watch round
    cap = federation.configs["bravo"].check_budget
    assert (
        value(bravo, "blindmatch_node_budget_used_elements", partner="alpha", kind="check") == cap
    )
    routed = coordinator_after(federation, "done", "watch")
    assert value(routed, "blindmatch_coordinator_checks_routed_total", checker="alpha") == 1
    assert value(routed, "blindmatch_coordinator_epoch_open") == 1
    assert value(routed, "blindmatch_coordinator_rounds_total", outcome="done", mode="watch") == 1


def test_metrics_are_off_by_default(tmp_path: Path, pki: FederationPki) -> None:
    config = node_config(tmp_path, pki, "alpha")
    assert config.metrics is None
    node = start_node(config, insecure=False)
    try:
        assert node.metrics is None  # no endpoint, no port
        assert node.rounds.metrics is NO_METRICS
    finally:
        node.stop(grace=0.5)


def test_a_metrics_port_in_use_stops_the_start(tmp_path: Path, pki: FederationPki) -> None:
    busy = NodeMetrics("other", None).serve(ON)
    try:
        config = node_config(tmp_path, pki, "alpha")
        with pytest.raises(BindError, match=f"node alpha cannot serve metrics on {busy.address}"):
            start_node(replace(config, metrics=busy.address), insecure=False)
    finally:
        busy.stop()


def test_connector_hooks_count_pulls_pushes_and_errors() -> None:
    metrics = NodeMetrics("alpha", None)
    pull = metrics.pulling(
        "national-taxii",
        lambda: SyncResult("national-taxii", fetched=5, added=3, known=1, invalid=1),
    )
    pull()
    pull()

    def broken() -> PushResult:
        raise OSError("sink down")

    metrics.pushing("sightings", lambda: PushResult("sightings", matches=4, objects=6))()
    with pytest.raises(OSError):
        metrics.pushing("sightings", broken)()
    get: Any = metrics.registry.get_sample_value
    assert get("blindmatch_node_pulls_total", {"source": "national-taxii"}) == 2
    assert get("blindmatch_node_pull_errors_total", {"source": "national-taxii"}) == 0
    for result, n in (("fetched", 10), ("added", 6), ("invalid", 2)):
        labels = {"source": "national-taxii", "result": result}
        assert get("blindmatch_node_source_objects_total", labels) == n
    assert get("blindmatch_node_pushes_total", {"sink": "sightings"}) == 1
    assert get("blindmatch_node_push_errors_total", {"sink": "sightings"}) == 1
    assert get("blindmatch_node_matches_pushed_total", {"sink": "sightings"}) == 4


def test_check_hooks_split_own_checks_from_partners() -> None:
    metrics = NodeMetrics("alpha", None)
    seen: list[int] = []
    metrics.timed_check(seen.append, 7)
    metrics.check_ended("alpha", "done")
    metrics.check_ended("bravo", "refused")
    get: Any = metrics.registry.get_sample_value
    assert seen == [7]
    assert get("blindmatch_node_check_duration_seconds_count") == 1
    assert get("blindmatch_node_checks_total", {"outcome": "done"}) == 1
    labels = {"partner": "bravo", "outcome": "refused"}
    assert get("blindmatch_node_checks_reblinded_total", labels) == 1
    assert (
        get("blindmatch_node_checks_reblinded_total", {"partner": "alpha", "outcome": "done"})
        is None
    )


def test_registries_are_per_server() -> None:
    a, b = NodeMetrics("alpha", None), NodeMetrics("alpha", None)
    a.round_ended("done", 1.0, {"bravo": 3})
    assert a.registry.get_sample_value("blindmatch_node_rounds_total", {"outcome": "done"}) == 1
    assert b.registry.get_sample_value("blindmatch_node_rounds_total", {"outcome": "done"}) == 0


def test_beyond_loopback_is_served_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    app = NodeMetrics("alpha", None)
    with caplog.at_level(logging.WARNING, logger="blindmatch.metrics"):
        endpoint = serve_metrics("0.0.0.0:0", lambda e, s: [], "node alpha")
        endpoint.stop()
        assert "beyond loopback" in caplog.text and "partners" in caplog.text
        caplog.clear()
        app.serve(ON).stop()
        assert not caplog.text


# --- configuration --------------------------------------------------------------------------


def node_toml(tmp_path: Path, extra: str) -> Path:
    path = tmp_path / "node.toml"
    text = render_config(
        name="alpha", listen="127.0.0.1:50051", ca="ca.pem", cert="n.pem", key="n.key"
    )
    path.write_text(text + extra)
    return path


def test_node_toml_metrics(tmp_path: Path) -> None:
    assert load_node_config(node_toml(tmp_path, "")).metrics is None
    assert load_node_config(node_toml(tmp_path, "\n[metrics]\n")).metrics == DEFAULT_LISTEN
    assert DEFAULT_LISTEN.startswith("127.0.0.1:")
    got = load_node_config(node_toml(tmp_path, '\n[metrics]\nlisten = "[::1]:9464"\n'))
    assert got.metrics == "[::1]:9464"


@pytest.mark.parametrize(
    ("extra", "error"),
    [
        ('\n[metrics]\nlisten = "9464"\n', "metrics.listen is not host:port"),
        ("\n[metrics]\nlisten = 9464\n", 'metrics.listen must be a string "host:port"'),
        ('\n[metrics]\nport = "9464"\n', "unknown key [metrics] port"),
    ],
)
def test_node_toml_metrics_errors_are_named(tmp_path: Path, extra: str, error: str) -> None:
    with pytest.raises(ConfigError, match=r"node\.toml: .*" + re.escape(error)):
        load_node_config(node_toml(tmp_path, extra))


def test_node_toml_metrics_must_be_a_table(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    text = render_config(name="alpha", listen="127.0.0.1:1", ca="c", cert="n", key="k")
    path.write_text('metrics = "127.0.0.1:9464"\n' + text)
    with pytest.raises(ConfigError, match="metrics must be a table"):
        load_node_config(path)


def test_coordinator_toml_metrics(tmp_path: Path) -> None:
    base = CoordinatorConfig(
        listen="127.0.0.1:50050",
        tls=TlsPaths(Path("ca.pem"), Path("c.pem"), Path("c.key")),
        nodes={"alpha": "127.0.0.1:50051"},
    )
    write_config(tmp_path / "off.toml", base)
    assert load_coordinator_config(tmp_path / "off.toml").metrics is None
    write_config(tmp_path / "on.toml", replace(base, metrics="127.0.0.1:9465"))
    assert load_coordinator_config(tmp_path / "on.toml").metrics == "127.0.0.1:9465"
    bad = tmp_path / "bad.toml"
    bad.write_text((tmp_path / "off.toml").read_text() + '\n[metrics]\nlisten = "nowhere"\n')
    with pytest.raises(ConfigError, match=r"bad\.toml: metrics\.listen is not host:port"):
        load_coordinator_config(bad)
