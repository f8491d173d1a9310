"""Connectors against a real TAXII 2.1 server: medallion, the OASIS reference implementation.

Each test starts medallion on 127.0.0.1 (tests/taxiiserver.py: a socket bound to port 0 that the
test hands it, its memory backend, a page size of 2 so pulls take several pages) from a data file
the test writes, waits until it answers, and writes its objects through TAXII itself. The node side runs as an operator runs it: `blindmatch node
sync` / `node push` on a node.toml with [[sources]] and [[sinks]].
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from blindmatch.cli.tomlconfig import ConfigError
from blindmatch.core.oprf import hash_indicators
from node.config import load_config
from node.connectors.scheduler import Job, Scheduler, retry_delay
from node.store import Store
from tests.clirun import run
from tests.storedata import NODE_TOML_HEAD, record_pairwise_round
from tests.taxiiserver import PASSWORD, SINK_ID, USER, Taxii, add, indicator
from tests.waiting import until


@pytest.fixture
def taxii(tmp_path: Path) -> Iterator[Taxii]:
    server = Taxii(tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def node_toml(tmp_path: Path, taxii: Taxii, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TEST_TAXII_PASSWORD", PASSWORD)
    path = tmp_path / "node" / "node.toml"
    path.parent.mkdir()
    path.write_text(
        NODE_TOML_HEAD
        + f"""
[[sources]]
name = "national-taxii"
type = "taxii"
url = "{taxii.discovery}"
collection = "indicators"
username = "{USER}"
password_env = "TEST_TAXII_PASSWORD"
every = "1h"
tlp = "green"

[[sinks]]
name = "national-taxii-sightings"
type = "taxii"
url = "http://127.0.0.1:{taxii.port}/api1/"
collection = "{SINK_ID}"
username = "{USER}"
password_env = "TEST_TAXII_PASSWORD"
"""
    )
    Store.open(load_config(path).store).close()
    return path


def sync(config: Path) -> tuple[int, list[dict[str, Any]], str]:
    status, out, err = run("node", "sync", "--config", str(config), "--json")
    return status, json.loads(out), err


def test_pull_then_pull_again_fetches_only_what_was_added(taxii: Taxii, node_toml: Path) -> None:
    poison_ivy = indicator(
        "[domain-name:value = 'domain autuo.xicp.net' OR ipv4-addr:value = '60.10.1.115']"
    )
    red = indicator(
        "[domain-name:value = 'red.example']",
        object_marking_refs=["marking-definition--5e57c739-391a-4eb3-b6be-7d15ca92d5ed"],
    )
    add(taxii, poison_ivy, red, indicator("[url:value = 'http://bad.example/x']"))

    status, results, _ = sync(node_toml)
    assert status == 0, results[0].get("error")
    first = results[0]
    # three objects over two pages of two; the typo'd domain is named, the IP beside it kept
    assert (first["source"], first["fetched"], first["added"], first["invalid"]) == (
        "national-taxii",
        3,
        3,
        1,
    )
    assert first["cursor"]
    with Store.open(load_config(node_toml).store) as store:
        ip = store.lookup("ipv4", "60.10.1.115")
        assert ip is not None and ip.tlp == "green"  # the source's tlp for unmarked objects
        assert ip.sources == ["national-taxii"]
        assert store.stix_refs(ip.sighting_id) == [poison_ivy["id"]]
        red_row = store.lookup("domain", "red.example")
        assert red_row is not None and red_row.tlp == "red"  # the marking wins
        assert store.cursor("national-taxii") == first["cursor"]
        # hash once: what a pull adds carries its H(v), as an import's rows do
        assert store.stale_hashes() == 0
        assert store.stored_hashes([("ipv4", "60.10.1.115")]) == hash_indicators(
            [("ipv4", "60.10.1.115")]
        )

    add(
        taxii,
        indicator("[ipv4-addr:value = '203.0.113.9']"),
        indicator("[url:value = 'http://x.example/']"),
    )
    status, results, _ = sync(node_toml)
    again = results[0]
    assert (again["fetched"], again["added"]) == (2, 2)
    assert again["cursor"] > first["cursor"]

    status, results, _ = sync(node_toml)
    assert (status, results[0]["fetched"], results[0]["cursor"]) == (0, 0, again["cursor"])

    status, out, _ = run("node", "sync", "--config", str(node_toml))
    assert status == 0 and "national-taxii: fetched 0 objects" in out


def _round_of_two_matches(taxii: Taxii, node_toml: Path) -> dict[str, Any]:
    """A done round matching an indicator pulled from TAXII and one imported from a file; the
    pulled indicator."""
    original = indicator("[ipv4-addr:value = '198.51.100.7']")
    add(taxii, original)
    assert sync(node_toml)[0] == 0
    config = load_config(node_toml)
    with Store.open(config.store) as store:
        store.add_sightings(
            [_sighting("domain", "local.example")], source="file", default_tlp="amber"
        )
        from_taxii = store.lookup("ipv4", "198.51.100.7")
        local = store.lookup("domain", "local.example")
        assert from_taxii is not None and local is not None
        record_pairwise_round(store, [from_taxii.sighting_id, local.sighting_id])

    return original


def _sink_objects(taxii: Taxii) -> list[dict[str, Any]]:
    return taxii.objects(SINK_ID)


def test_push_sightings_land_on_the_original_indicators(taxii: Taxii, node_toml: Path) -> None:
    original = _round_of_two_matches(taxii, node_toml)
    status, out, _ = run("node", "push", "--config", str(node_toml), "--json")
    assert status == 0, out
    assert json.loads(out)[0]["matches"] == 2
    objects = _sink_objects(taxii)
    by_type: dict[str, list[dict[str, Any]]] = {}
    for obj in objects:
        by_type.setdefault(obj["type"], []).append(obj)
    refs = {s["sighting_of_ref"] for s in by_type["sighting"]}
    created = by_type["indicator"]
    assert len(created) == 1 and created[0]["pattern"] == "[domain-name:value = 'local.example']"
    assert refs == {original["id"], created[0]["id"]}
    bravo = [i for i in by_type["identity"] if i["name"] == "bravo"]
    assert all(s["where_sighted_refs"] == [bravo[0]["id"]] for s in by_type["sighting"])

    # each match once
    status, out, _ = run("node", "push", "--config", str(node_toml), "--json")
    assert (status, json.loads(out)[0]["matches"]) == (0, 0)


def test_node_matches_stix_names_each_object_as_the_push_did(taxii: Taxii, node_toml: Path) -> None:
    # one STIX writer: a sighting printed for an analyst is the one the sink already holds
    _round_of_two_matches(taxii, node_toml)
    assert run("node", "push", "--config", str(node_toml))[0] == 0
    status, out, _ = run("node", "matches", "--config", str(node_toml), "--format", "stix")
    assert status == 0
    printed = json.loads(out)["objects"]
    assert sorted(o["id"] for o in printed) == sorted(o["id"] for o in _sink_objects(taxii))
    assert sorted(o["type"] for o in printed) == [
        "identity",  # alpha
        "identity",  # bravo
        "indicator",  # local.example: the one pulled from TAXII is the analyst's own
        "marking-definition",  # TLP:GREEN, the source's tlp for the pulled indicator
        "marking-definition",  # TLP:AMBER, the file's default_tlp
        "sighting",
        "sighting",
    ]


def test_wrong_password_and_stopped_server_are_clear_errors_and_lose_nothing(
    taxii: Taxii, node_toml: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    add(taxii, indicator("[ipv4-addr:value = '192.0.2.10']"))
    monkeypatch.setenv("TEST_TAXII_PASSWORD", "wrong")
    status, _, err = run("node", "sync", "--config", str(node_toml))
    assert status == 1
    assert "national-taxii" in err and "HTTP 401" in err and "password" in err
    config = load_config(node_toml)
    with Store.open(config.store) as store:
        assert store.stats().sightings == 0 and store.cursor("national-taxii") is None

    monkeypatch.setenv("TEST_TAXII_PASSWORD", PASSWORD)
    taxii.stop()
    status, results, err = sync(node_toml)
    assert status == 1
    assert "cannot reach" in results[0]["error"] and results[0]["fetched"] == 0

    taxii.start()  # the memory backend starts empty again
    add(taxii, indicator("[ipv4-addr:value = '192.0.2.10']"))
    status, results, _ = sync(node_toml)
    assert (status, results[0]["added"]) == (0, 1)


def test_sync_of_an_unknown_source_or_missing_secret_is_bad_input(
    node_toml: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    status, _, err = run("node", "sync", "--config", str(node_toml), "--source", "nope")
    assert status == 2 and "national-taxii" in err
    monkeypatch.delenv("TEST_TAXII_PASSWORD")
    status, _, err = run("node", "sync", "--config", str(node_toml))
    assert status == 2 and "TEST_TAXII_PASSWORD" in err


def test_password_file_readable_by_others_is_refused(tmp_path: Path, node_toml: Path) -> None:
    secret = tmp_path / "node" / "taxii.pw"
    secret.write_text(PASSWORD)
    os.chmod(secret, 0o644)
    text = node_toml.read_text().replace(
        'password_env = "TEST_TAXII_PASSWORD"\nevery', 'password_file = "taxii.pw"\nevery'
    )
    node_toml.write_text(text)
    status, _, err = run("node", "sync", "--config", str(node_toml))
    assert status == 2 and "readable by others" in err
    os.chmod(secret, 0o600)
    status, _, err = run("node", "sync", "--config", str(node_toml))
    assert status == 0, err


@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        ('type = "misp-rest"', "is not one of: taxii"),
        ('every = "soon"', "must be a duration"),
        ('colour = "blue"', "unknown key [sources[0]] colour"),
        ('url = "ftp://x"', "is not an http(s) URL"),
        ('verify = "yes"', "must be true or false"),
    ],
)
def test_connector_config_errors_name_the_key(tmp_path: Path, entry: str, problem: str) -> None:
    path = tmp_path / "node.toml"
    base = {
        "name": '"s"',
        "type": '"taxii"',
        "url": '"https://t.example/taxii2/"',
        "collection": '"c"',
    }
    key = entry.split(" = ")[0]
    lines = [f"{k} = {v}" for k, v in base.items() if k != key] + [entry]
    path.write_text(
        'name = "alpha"\nlisten = "127.0.0.1:0"\n[tls]\nca = "a"\ncert = "b"\nkey = "c"\n'
        "[[sources]]\n" + "\n".join(lines) + "\n"
    )
    with pytest.raises(ConfigError, match=r"node\.toml") as caught:
        load_config(path)
    assert problem in str(caught.value)


def test_node_serve_pulls_in_the_background(taxii: Taxii, node_toml: Path) -> None:
    from node.server import start

    add(taxii, indicator("[ipv4-addr:value = '192.0.2.77']"))
    node = start(load_config(node_toml), insecure=True, listen="127.0.0.1:0")
    try:
        until("the source is pulled", lambda: node.store.lookup("ipv4", "192.0.2.77"), 60)
        assert node.store.stored_hashes([("ipv4", "192.0.2.77")]) == hash_indicators(
            [("ipv4", "192.0.2.77")]
        )
    finally:
        node.stop()


def test_scheduler_runs_due_jobs_and_backs_off_a_failing_one() -> None:
    now = [0.0]
    runs: list[str] = []

    def failing() -> None:
        runs.append("bad")
        raise RuntimeError("server down")

    good = Job("pull good", 100.0, lambda: runs.append("good"))
    bad = Job("pull bad", 100.0, failing)
    scheduler = Scheduler([good, bad], clock=lambda: now[0])
    assert scheduler.step() == retry_delay(1)  # both ran; the failing one is due first
    assert runs == ["good", "bad"]
    now[0] = retry_delay(1)
    scheduler.step()
    assert runs == ["good", "bad", "bad"] and bad.failures == 2
    assert bad.due == retry_delay(1) + retry_delay(2) > retry_delay(1) * 2
    now[0] = 100.0
    scheduler.step()
    assert runs.count("good") == 2


def _sighting(kind: str, value: str) -> Any:
    from node.store import Sighting

    return Sighting(kind=kind, value=value, raw=value)


def test_a_round_brings_every_sinks_push_forward_and_wakes_the_thread() -> None:
    now = [1000.0]
    runs: list[str] = []
    pull = Job("pull feed", 3600.0, lambda: runs.append("pull"))
    push = Job("push sightings", 60.0, lambda: runs.append("push"), push=True)
    scheduler = Scheduler([pull, push], clock=lambda: now[0])
    scheduler.step()
    assert runs == ["pull", "push"]
    now[0] += 1.0
    scheduler.step()
    assert runs == ["pull", "push"]  # nothing due yet
    scheduler.push_now()
    assert scheduler.wake.is_set()  # the thread's wait ends now, not in 59 s
    scheduler.step()
    assert runs == ["pull", "push", "push"]  # the push ran, the pull stays on its schedule
