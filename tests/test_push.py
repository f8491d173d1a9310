"""Nothing pushed is lost (issue 19): every matched value reaches a TAXII sink, a match is marked
pushed only once the sink confirmed it, threshold rounds say what they know, STIX carries TLP 2.0,
bearer tokens and timeouts.

The sink and source are real medallion servers on loopback (tests/taxiiserver.py). Where a test
needs what medallion's memory backend never does (refuse an object, hold one pending), medallion
runs tests/medallion_backends.PolicyBackend; where it needs what medallion does not speak (bearer
tokens, a transfer cut off), a small real HTTP server (taxiiserver.Gate) stands in front of it.
The node side runs as an operator runs it: `blindmatch node sync` / `node push` / `node matches`.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from node.config import load_config
from node.connectors.stix_out import TLP2_MARKINGS
from node.store import Sighting, Store
from tests.clirun import run
from tests.storedata import NODE_TOML_HEAD, record_pairwise_round
from tests.taxiiserver import PASSWORD, SINK_ID, USER, Gate, Taxii, add, indicator

AMBER = TLP2_MARKINGS["amber"]["id"]
OR_PATTERN = "[domain-name:value = 'a.example'] OR [domain-name:value = 'b.example']"


@pytest.fixture
def taxii(tmp_path: Path) -> Iterator[Taxii]:
    server = Taxii(tmp_path / "taxii", backend="tests.medallion_backends:PolicyBackend")
    server.directory.mkdir()
    server.start()
    yield server
    server.stop()


def node_toml(
    tmp_path: Path, source: str, sink: str, monkeypatch: pytest.MonkeyPatch, extra: str = ""
) -> Path:
    """A node.toml with one TAXII source at ``source`` and one sink at ``sink`` (API roots or
    discovery URLs), basic auth unless ``extra`` says otherwise; its store created."""
    monkeypatch.setenv("TEST_TAXII_PASSWORD", PASSWORD)
    path = tmp_path / "node" / "node.toml"
    path.parent.mkdir(exist_ok=True)
    auth = f'username = "{USER}"\npassword_env = "TEST_TAXII_PASSWORD"'
    path.write_text(
        NODE_TOML_HEAD
        + f"""
[[sources]]
name = "feed"
type = "taxii"
url = "{source}"
collection = "indicators"
{auth if "token_env" not in extra else ""}
tlp = "green"

[[sinks]]
name = "sightings"
type = "taxii"
url = "{sink}"
collection = "{SINK_ID}"
{auth if "token_env" not in extra else ""}
{extra}
"""
    )
    Store.open(load_config(path).store).close()
    return path


def push(config: Path) -> tuple[int, dict[str, Any]]:
    status, out, _ = run("node", "push", "--config", str(config), "--json")
    return status, json.loads(out)[0]


def or_round(taxii: Taxii, config: Path) -> dict[str, Any]:
    """An amber indicator whose OR pattern names two domains, pulled; a done pairwise round in
    which bravo holds both. The indicator."""
    original = indicator(OR_PATTERN, object_marking_refs=[AMBER])
    add(taxii, original)
    assert run("node", "sync", "--config", str(config))[0] == 0
    with Store.open(load_config(config).store) as store:
        rows = [store.lookup("domain", d) for d in ("a.example", "b.example")]
        assert all(r is not None and r.tlp == "amber" for r in rows)
        record_pairwise_round(store, [r.sighting_id for r in rows if r is not None])
    return original


def sightings(taxii: Taxii) -> list[dict[str, Any]]:
    return [o for o in taxii.objects(SINK_ID) if o["type"] == "sighting"]


def test_every_value_an_or_pattern_matched_reaches_the_sink_marked_amber(
    tmp_path: Path, taxii: Taxii, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = node_toml(tmp_path, taxii.discovery, taxii.discovery, monkeypatch)
    original = or_round(taxii, config)
    status, result = push(config)
    assert (status, result["matches"], result["unconfirmed"]) == (0, 2, 0)

    held = sightings(taxii)
    # one sighting per matched value, each with its own id, both on the analyst's indicator
    assert len({s["id"] for s in held}) == 2
    assert {s["sighting_of_ref"] for s in held} == {original["id"]}
    assert sorted("a.example" in s["description"] for s in held) == [False, True]
    assert sorted("b.example" in s["description"] for s in held) == [False, True]
    # the indicator's TLP: its sightings are amber, and the OASIS marking object went with them
    assert all(s["object_marking_refs"] == [AMBER] for s in held)
    assert TLP2_MARKINGS["amber"] in taxii.objects(SINK_ID)

    # `node matches --format stix` prints the same objects, by the same ids, marked the same
    status, out, _ = run("node", "matches", "--config", str(config), "--format", "stix")
    printed = {o["id"]: o for o in json.loads(out)["objects"]}
    assert {s["id"] for s in held} <= set(printed)
    assert all(printed[s["id"]]["object_marking_refs"] == [AMBER] for s in held)
    assert printed[AMBER] == TLP2_MARKINGS["amber"]

    assert push(config)[1]["matches"] == 0  # each once


@pytest.mark.parametrize("policy", ["refuse", "pending"])
def test_a_match_the_sink_did_not_confirm_stays_unpushed_and_goes_next_time(
    tmp_path: Path, taxii: Taxii, monkeypatch: pytest.MonkeyPatch, policy: str
) -> None:
    # a short timeout: a pending status is polled for that long, then left for the next push
    config = node_toml(
        tmp_path, taxii.discovery, taxii.discovery, monkeypatch, extra='timeout = "2s"'
    )
    or_round(taxii, config)
    taxii.policy.write_text(json.dumps({policy: ["b.example"]}))
    status, result = push(config)
    assert status == 1
    assert (result["matches"], result["unconfirmed"]) == (1, 1)
    assert ("refused" if policy == "refuse" else "pending") in result["error"]
    assert [s for s in sightings(taxii) if "b.example" in s["description"]] == []

    taxii.policy.unlink()  # the server takes it now
    status, result = push(config)
    assert (status, result["matches"], result["unconfirmed"]) == (0, 1, 0)
    held = sightings(taxii)
    assert sorted(v for s in held for v in ("a.example", "b.example") if v in s["description"]) == [
        "a.example",
        "b.example",
    ]


def test_threshold_sightings_say_what_the_round_knows(
    tmp_path: Path, taxii: Taxii, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = node_toml(tmp_path, taxii.discovery, taxii.discovery, monkeypatch)
    with Store.open(load_config(config).store) as store:
        store.add_sightings(
            [Sighting(kind="domain", value=v, raw=v) for v in ("lower.example", "exact.example")],
            source="file",
            default_tlp="green",
        )
        for round_id, value, count in (
            ("t-lower", "lower.example", None),
            ("t-exact", "exact.example", 4),
        ):
            store.record_round(
                round_id,
                started="2026-01-06T00:00:00Z",
                coordinator="coordinator",
                participants=["alpha", "bravo", "charlie", "delta"],
                mode="threshold",
                threshold=3,
                kinds=["domain"],
                own_size=2,
                outcome="done",
                finished="2026-01-06T00:01:00Z",
            )
            row = store.lookup("domain", value)
            assert row is not None
            store.record_matches(round_id, "threshold", [(row.sighting_id, [], count)])
    # alpha's identity, TLP:GREEN, and an indicator and a sighting for each value
    assert push(config) == (
        0,
        {"sink": "sightings", "matches": 2, "objects": 6, "skipped": 0, "unconfirmed": 0},
    )
    held = {s["description"].split()[4]: s for s in sightings(taxii)}
    lower, exact = held["lower.example"], held["exact.example"]
    assert lower["description"].endswith("held by at least 3 nations") and "count" not in lower
    assert exact["description"].endswith("held by 4 nations") and exact["count"] == 4
    assert all("where_sighted_refs" not in s for s in held.values())
    _, table, _ = run("node", "matches", "--config", str(config))
    assert "held by at least 3 nations" in table and "held by 4 nations" in table
    assert "None" not in table


def test_a_bearer_token_reaches_the_server(
    tmp_path: Path, taxii: Taxii, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = Gate(taxii, token="opencti-token")
    try:
        monkeypatch.setenv("TEST_TAXII_TOKEN", "opencti-token")
        config = node_toml(
            tmp_path,
            gate.api_root,
            gate.api_root,
            monkeypatch,
            extra='token_env = "TEST_TAXII_TOKEN"',
        )
        text = config.read_text().replace(
            'tlp = "green"', 'tlp = "green"\ntoken_env = "TEST_TAXII_TOKEN"'
        )
        config.write_text(text)  # the source sends it too
        add(taxii, indicator("[ipv4-addr:value = '198.51.100.20']"))
        status, out, err = run("node", "sync", "--config", str(config), "--json")
        assert (status, json.loads(out)[0]["added"]) == (0, 1), err
        with Store.open(load_config(config).store) as store:
            row = store.lookup("ipv4", "198.51.100.20")
            assert row is not None
            record_pairwise_round(store, [row.sighting_id])
        assert push(config)[1]["matches"] == 1
        assert gate.seen and set(gate.seen) == {"Bearer opencti-token"}
        assert len(sightings(taxii)) == 1

        monkeypatch.setenv("TEST_TAXII_TOKEN", "stale-token")
        status, out, _ = run("node", "sync", "--config", str(config), "--json")
        assert status == 1 and "HTTP 401" in json.loads(out)[0]["error"]
    finally:
        gate.stop()


def test_a_pull_the_server_cuts_off_reports_what_it_stored(
    tmp_path: Path, taxii: Taxii, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = Gate(taxii, cut_after=2)  # medallion's pages hold two objects: 4 arrive, then the cut
    try:
        config = node_toml(tmp_path, gate.api_root, taxii.discovery, monkeypatch)
        for i in range(1, 7):  # one by one: each its own date_added, which the cursor follows
            add(taxii, indicator(f"[ipv4-addr:value = '198.51.100.{i}']"))
        status, out, err = run("node", "sync", "--config", str(config))
        assert status == 1
        assert "feed: fetched 4 objects before it stopped, 4 new indicators" in out
        assert "cut the transfer off" in err
        gate.cut_after = None
        status, out, _ = run("node", "sync", "--config", str(config), "--json")
        assert (status, json.loads(out)[0]["fetched"]) == (0, 2)  # resumed after the 4 stored
    finally:
        gate.stop()


def test_every_taxii_and_misp_call_has_a_timeout(
    tmp_path: Path, taxii: Taxii, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A server that takes the connection and never answers: the kernel accepts it into the backlog.
    silent = socket.create_server(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{silent.getsockname()[1]}/"
    try:
        config = node_toml(tmp_path, taxii.discovery, url, monkeypatch, extra='timeout = "1s"')
        assert load_config(config).sources[0].timeout == 60.0  # the default
        assert load_config(config).sinks[0].timeout == 1.0
        or_round(taxii, config)
        began = time.monotonic()
        status, result = push(config)
        assert status == 1 and "no answer within 1 s (timeout)" in result["error"]
        assert time.monotonic() - began < 20
        assert push(config)[1]["unconfirmed"] == 2  # nothing was marked: both go again

        monkeypatch.setenv("TEST_MISP_KEY", "k" * 40)
        text = (
            config.read_text()
            + f'\n[[sources]]\nname = "misp"\ntype = "misp"\nurl = "{url}"\nkey_env = "TEST_MISP_KEY"\ntimeout = "1s"\n'
        )
        config.write_text(text)
        began = time.monotonic()
        status, out, _ = run("node", "sync", "--config", str(config), "--source", "misp", "--json")
        assert status == 1 and json.loads(out)[0]["source"] == "misp"
        assert time.monotonic() - began < 20
    finally:
        silent.close()
