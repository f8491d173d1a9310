"""MISP connectors: the REST source and sink (pymisp), and MISP feeds over HTTP.

No MISP server installs here, so the MISP REST tests run against a loopback HTTP server (stdlib
http.server in a thread, port 0) that answers as MISP's documented automation API does, as far
as these connectors use it: the calls pymisp makes when it connects (servers/getPyMISPVersion,
servers/getVersion, users/view/me; describeTypes is left unanswered, so pymisp uses its own
copy), /attributes/restSearch with its JSON body filters (to_ids, published, tags, timestamp,
deleted, includeEventTags, limit/page, ordered by attribute id) and /sightings/add/<attribute>,
all behind the Authorization header (a wrong key: 403 with MISP's JSON error). It is a stand-in
written from the documentation, not MISP.

The MISP feed is served by a real HTTP server (http.server's file handler) from a feed directory
the tests write: manifest.json and one <uuid>.json per event, as MISP publishes feeds. The node
side runs as an operator runs it: `blindmatch node sync` / `node push --json` on a node.toml with
[[sources]] and [[sinks]], and through the modules.
"""

from __future__ import annotations

import functools
import json
import sys
import threading
import types
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pymisp
import pytest

from blindmatch.cli.tomlconfig import ConfigError
from node.config import load_config
from node.connectors import misp as misp_connector
from node.connectors.base import ConnectorError, open_source
from node.connectors.sync import sync_source
from node.store import Sighting, Store
from tests.clirun import run
from tests.storedata import NODE_TOML_HEAD, record_pairwise_round

KEY = "k" * 40
GREEN = {"name": "tlp:green"}
RED = {"name": "tlp:red"}


# --- a loopback stand-in for MISP's REST API ------------------------------------------------------


@dataclass
class MispState:
    attributes: list[dict[str, Any]] = field(default_factory=list)
    sightings: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    searches: list[dict[str, Any]] = field(default_factory=list)

    def add(
        self,
        kind: str,
        value: str,
        timestamp: int,
        *,
        to_ids: bool = True,
        published: bool = True,
        tags: list[dict[str, Any]] | None = None,
        event_tags: list[dict[str, Any]] | None = None,
    ) -> str:
        attribute_uuid = str(uuid.uuid4())
        self.attributes.append(
            {
                "id": str(len(self.attributes) + 1),
                "uuid": attribute_uuid,
                "type": kind,
                "category": "Network activity",
                "value": value,
                "to_ids": to_ids,
                "deleted": False,
                "timestamp": str(timestamp),
                "Tag": tags or [],
                "_event": {
                    "id": "1",
                    "uuid": "5e1b0c2e-0000-4000-8000-000000000001",
                    "info": "test event",
                    "published": published,
                    "Tag": event_tags or [],
                },
            }
        )
        return attribute_uuid

    def search(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        self.searches.append(body)
        found = []
        wanted = {str(t) for t in body.get("tags") or []}
        for a in self.attributes:
            event = a["_event"]
            if str(body.get("to_ids", "")) in ("1", "True", "true") and not a["to_ids"]:
                continue
            if body.get("published") in (True, 1, "1") and not event["published"]:
                continue
            if "timestamp" in body and int(a["timestamp"]) < int(body["timestamp"]):
                continue
            if body.get("deleted") in (False, 0, "0") and a["deleted"]:
                continue
            names = {t["name"] for t in a["Tag"] + event["Tag"]}
            if wanted and not wanted & names:
                continue
            out = {k: v for k, v in a.items() if k != "_event"}
            out["Event"] = {k: event[k] for k in ("id", "uuid", "info")}
            if body.get("includeEventTags") in (1, True, "1"):
                out["Tag"] = a["Tag"] + [{**t, "inherited": 1} for t in event["Tag"]]
            found.append(out)
        limit, page = body.get("limit"), int(body.get("page") or 1)
        if limit:
            found = found[(page - 1) * int(limit) : page * int(limit)]
        return found


def _misp_handler(state: MispState) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def _send(self, status: int, body: object) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _authorized(self) -> bool:
            if self.headers.get("Authorization") == KEY:
                return True
            message = "Authentication failed. Please make sure you pass the API key of an API enabled user along in the Authorization header."
            self._send(403, {"name": message, "message": message, "url": self.path})
            return False

        def do_GET(self) -> None:
            if not self._authorized():
                return
            path = self.path.removesuffix(".json")
            if path == "/servers/getPyMISPVersion":
                self._send(200, {"version": pymisp.__version__})
            elif path == "/servers/getVersion":
                self._send(200, {"version": "2.5.0", "perm_sync": False, "perm_sighting": True})
            elif path == "/users/view/me":
                user = {"id": "1", "email": "alpha@cert.example", "org_id": "1", "role_id": "3"}
                role = {"id": "3", "name": "User", "perm_sighting": True}
                self._send(200, {"User": user, "Role": role, "UserSetting": []})
            else:
                self._send(404, {"name": "Not Found", "message": "Not Found", "url": self.path})

        def do_POST(self) -> None:
            if not self._authorized():
                return
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length) or b"{}")
            if self.path == "/attributes/restSearch":
                self._send(200, {"response": {"Attribute": state.search(body)}})
            elif self.path.startswith("/sightings/add"):
                target = self.path.removeprefix("/sightings/add").strip("/") or body.get("uuid")
                known = {a["uuid"] for a in state.attributes} | {a["id"] for a in state.attributes}
                if target not in known:
                    error = {"name": "Invalid attribute.", "message": "Invalid attribute."}
                    self._send(404, {**error, "url": self.path})
                    return
                state.sightings.append((str(target), body))
                self._send(200, {"Sighting": {"id": str(len(state.sightings)), **body}})
            else:
                self._send(404, {"name": "Not Found", "message": "Not Found", "url": self.path})

    return Handler


class Served:
    """A ThreadingHTTPServer on 127.0.0.1 that can be stopped and started again on its port."""

    def __init__(self, handler: Any) -> None:
        self.handler = handler
        self.port = 0
        self.server: ThreadingHTTPServer | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def start(self) -> None:
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), self.handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


@pytest.fixture
def misp() -> Iterator[tuple[MispState, Served]]:
    state = MispState()
    served = Served(_misp_handler(state))
    yield state, served
    served.stop()


@pytest.fixture
def feed(tmp_path: Path) -> Iterator[tuple[Path, Served]]:
    directory = tmp_path / "feed"
    directory.mkdir()
    (directory / "manifest.json").write_text("{}")
    quiet = type("Quiet", (SimpleHTTPRequestHandler,), {"log_message": lambda *a: None})
    served = Served(functools.partial(quiet, directory=str(directory)))
    yield directory, served
    served.stop()


def publish(directory: Path, timestamp: int, *attributes: dict[str, Any]) -> str:
    """Add one event to the feed directory, as MISP writes a feed."""
    event_uuid = str(uuid.uuid4())
    event = {
        "uuid": event_uuid,
        "info": f"event {timestamp}",
        "timestamp": str(timestamp),
        "Tag": [GREEN],
        "Attribute": [
            {"uuid": str(uuid.uuid4()), "timestamp": str(timestamp), **a} for a in attributes
        ],
    }
    (directory / f"{event_uuid}.json").write_text(json.dumps({"Event": event}))
    manifest = json.loads((directory / "manifest.json").read_text())
    manifest[event_uuid] = {"info": event["info"], "timestamp": str(timestamp), "Tag": [GREEN]}
    (directory / "manifest.json").write_text(json.dumps(manifest))
    return event_uuid


def write_toml(tmp_path: Path, misp_url: str, feed_url: str, extra: str = "") -> Path:
    path = tmp_path / "node" / "node.toml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(
        NODE_TOML_HEAD
        + f"""
[[sources]]
name = "national-misp"
type = "misp"
url = "{misp_url}"
key_env = "TEST_MISP_KEY"
tlp = "amber"
{extra}

[[sources]]
name = "osint-feed"
type = "misp-feed"
url = "{feed_url}"

[[sinks]]
name = "national-misp-sightings"
type = "misp"
url = "{misp_url}"
key_env = "TEST_MISP_KEY"
"""
    )
    Store.open(load_config(path).store).close()
    return path


@pytest.fixture
def node_toml(
    tmp_path: Path,
    misp: tuple[MispState, Served],
    feed: tuple[Path, Served],
    monkeypatch: pytest.MonkeyPatch,
) -> Path:
    monkeypatch.setenv("TEST_MISP_KEY", KEY)
    monkeypatch.setattr(misp_connector, "PAGE_SIZE", 2)  # pulls take several pages
    return write_toml(tmp_path, misp[1].url, feed[1].url)


def sync(config: Path, source: str) -> tuple[int, dict[str, Any], str]:
    status, out, err = run("node", "sync", "--config", str(config), "--source", source, "--json")
    return status, json.loads(out)[0], err


# --- MISP REST source -----------------------------------------------------------------------------


def test_misp_pull_filters_pages_and_then_pulls_only_newer_attributes(
    misp: tuple[MispState, Served], node_toml: Path
) -> None:
    state, _ = misp
    ip = state.add("ip-dst", "198.51.100.7", 1000, tags=[GREEN])
    both = state.add("domain|ip", "evil.example|203.0.113.5", 1001, event_tags=[RED])
    state.add("domain", "not-for-ids.example", 1002, to_ids=False)
    state.add("domain", "draft.example", 1003, published=False)
    bad = state.add("ip-src", "999.1.1.1", 1004)
    state.add("comment", "free text", 1005)

    status, first, _ = sync(node_toml, "national-misp")
    assert status == 0
    # four attributes pass the server's filters, in pages of two (+ an empty last page)
    assert (first["fetched"], first["added"], first["invalid"]) == (4, 3, 1)
    assert first["cursor"] == "1005"
    assert {s.get("to_ids") for s in state.searches} == {1}
    assert all(s["published"] is True and s["includeEventTags"] == 1 for s in state.searches)
    with Store.open(load_config(node_toml).store) as store:
        row = store.lookup("ipv4", "198.51.100.7")
        assert row is not None and row.tlp == "green" and row.sources == ["national-misp"]
        assert store.misp_refs(row.sighting_id) == [ip]
        red = store.lookup("domain", "evil.example")
        assert red is not None and red.tlp == "red"  # the event's TLP, inherited
        assert store.misp_refs(red.sighting_id) == [both]
        assert store.lookup("domain", "not-for-ids.example") is None
        assert store.lookup("domain", "draft.example") is None

    status, out, _ = run("node", "sync", "--config", str(node_toml), "--source", "national-misp")
    assert status == 0 and "national-misp: fetched 0 objects" in out
    assert f"attribute {bad}" not in out  # an attribute already read is not asked for again

    state.add("sha256", "a" * 64, 2000)
    status, again, _ = sync(node_toml, "national-misp")
    assert (status, again["fetched"], again["added"], again["cursor"]) == (0, 1, 1, "2000")
    assert state.searches[-1]["timestamp"] == 1006


def test_misp_invalid_attributes_are_named_by_uuid(
    misp: tuple[MispState, Served], node_toml: Path
) -> None:
    state, _ = misp
    bad = state.add("ip-src", "999.1.1.1", 1000)
    status, out, _ = run("node", "sync", "--config", str(node_toml), "--source", "national-misp")
    assert status == 0
    assert f"attribute {bad}" in out


def test_misp_tags_and_filters_are_sent_as_configured(
    tmp_path: Path, misp: tuple[MispState, Served], feed: tuple[Path, Served], monkeypatch: Any
) -> None:
    state, served = misp
    monkeypatch.setenv("TEST_MISP_KEY", KEY)
    state.add("domain", "tagged.example", 10, to_ids=False, published=False, tags=[{"name": "apt"}])
    state.add("domain", "other.example", 11, to_ids=False, published=False)
    config = write_toml(
        tmp_path, served.url, feed[1].url, 'to_ids = false\npublished = false\ntags = ["apt"]'
    )
    status, result, _ = sync(config, "national-misp")
    assert (status, result["added"]) == (0, 1)
    body = state.searches[-1]
    assert body["tags"] == ["apt"] and "to_ids" not in body and "published" not in body


def test_misp_page_cursor_resumes_a_pull_that_failed_midway(
    misp: tuple[MispState, Served], node_toml: Path
) -> None:
    state, served = misp
    for n in range(5):
        state.add("ip-dst", f"192.0.2.{n + 1}", 100 + n)
    config = next(s for s in load_config(node_toml).sources if s.name == "national-misp")
    with Store.open(load_config(node_toml).store) as store:
        pages = open_source(config).pull(None)
        first = next(pages)
        assert first.cursor == "0:2:101" and first.fetched == 2
        from node.importing import ImportReport, import_events

        import_events(
            store,
            first.name,
            lambda: (first.fmt, first.events),
            fmt=first.fmt,
            default_tlp="amber",
            source=config.name,
            report=ImportReport(),
            cursor=(config.name, first.cursor),
        )
        served.stop()  # the pull breaks after its first page
        with pytest.raises(ConnectorError, match="cannot reach"):
            next(pages)
        served.start()
        result = sync_source(store, config, default_tlp="amber")
        assert (result.fetched, result.added, result.cursor) == (3, 3, "104")
        assert all(store.lookup("ipv4", f"192.0.2.{n + 1}") for n in range(5))
    assert state.searches[-1]["page"] == 3 and state.searches[-1]["timestamp"] == 1


def test_misp_wrong_key_and_stopped_server_are_clear_errors_and_lose_nothing(
    misp: tuple[MispState, Served], node_toml: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state, served = misp
    state.add("ip-dst", "192.0.2.10", 500)
    monkeypatch.setenv("TEST_MISP_KEY", "wrong")
    status, out, err = run(
        "node", "sync", "--config", str(node_toml), "--source", "national-misp", "--json"
    )
    assert status == 1
    [result] = json.loads(out)
    assert "national-misp" in result["error"] and "HTTP 403" in result["error"]
    assert "API key" in result["error"] and KEY not in err + out
    assert result["cursor"] is None

    monkeypatch.setenv("TEST_MISP_KEY", KEY)
    served.stop()
    status, _, err = run("node", "sync", "--config", str(node_toml), "--source", "national-misp")
    assert status == 1 and "national-misp: cannot reach" in err and "connection refused" in err
    with Store.open(load_config(node_toml).store) as store:
        assert store.cursor("national-misp") is None

    served.start()  # the same port: a retry later works
    status, result, _ = sync(node_toml, "national-misp")
    assert (status, result["added"], result["cursor"]) == (0, 1, "500")


def test_warninglists_without_the_package_is_a_config_error(
    tmp_path: Path,
    misp: tuple[MispState, Served],
    feed: tuple[Path, Served],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TEST_MISP_KEY", KEY)
    config = write_toml(tmp_path, misp[1].url, feed[1].url, "warninglists = true")
    monkeypatch.setitem(sys.modules, "pymispwarninglists", None)  # not installed
    status, _, err = run("node", "sync", "--config", str(config), "--source", "national-misp")
    assert status == 2 and "pymispwarninglists" in err and "national-misp" in err


def test_warninglists_drop_known_benign_values(
    tmp_path: Path,
    misp: tuple[MispState, Served],
    feed: tuple[Path, Served],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    state, served = misp
    state.add("ip-dst", "8.8.8.8", 10)
    state.add("ip-dst", "198.51.100.77", 11)

    class Hit:
        name = "List of known IPv4 public DNS resolvers"

    class WarningLists:
        def __init__(self, slow_search: bool) -> None:
            pass

        def search(self, value: str) -> list[Hit]:
            return [Hit()] if value == "8.8.8.8" else []

    fake = types.ModuleType("pymispwarninglists")
    fake.WarningLists = WarningLists  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "pymispwarninglists", fake)
    monkeypatch.setenv("TEST_MISP_KEY", KEY)
    config = write_toml(tmp_path, served.url, feed[1].url, "warninglists = true")
    status, result, _ = sync(config, "national-misp")
    assert (status, result["fetched"], result["added"]) == (0, 2, 1)
    with Store.open(load_config(config).store) as store:
        assert store.lookup("ipv4", "8.8.8.8") is None


@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        ('collection = "c"', "unknown key [sources[0]] collection"),
        ('password_env = "X"', "unknown key [sources[0]] password_env"),
        ('to_ids = "yes"', "must be true or false"),
        ("tags = [1]", "must be a list of tag names"),
        ('key_file = "k"', "sets both key_env and key_file"),
    ],
)
def test_misp_config_errors_name_the_key(tmp_path: Path, entry: str, problem: str) -> None:
    path = tmp_path / "node.toml"
    path.write_text(
        'name = "alpha"\nlisten = "127.0.0.1:0"\n[tls]\nca = "a"\ncert = "b"\nkey = "c"\n'
        '[[sources]]\nname = "m"\ntype = "misp"\nurl = "https://misp.example/"\n'
        f'key_env = "K"\n{entry}\n'
    )
    with pytest.raises(ConfigError, match=r"node\.toml") as caught:
        load_config(path)
    assert problem in str(caught.value)


def test_a_misp_source_without_a_key_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    path.write_text(
        'name = "alpha"\nlisten = "127.0.0.1:0"\n[tls]\nca = "a"\ncert = "b"\nkey = "c"\n'
        '[[sources]]\nname = "m"\ntype = "misp"\nurl = "https://misp.example/"\n'
    )
    with pytest.raises(ConfigError, match="needs its API key"):
        load_config(path)


# --- MISP sink ------------------------------------------------------------------------------------


def test_push_adds_sightings_on_the_source_attributes_once(
    misp: tuple[MispState, Served], node_toml: Path
) -> None:
    state, served = misp
    attribute = state.add("ip-dst", "198.51.100.7", 1000)
    assert sync(node_toml, "national-misp")[0] == 0
    with Store.open(load_config(node_toml).store) as store:
        store.add_sightings(
            [Sighting("domain", "local.example", "local.example")],
            source="file",
            default_tlp="amber",
        )
        from_misp = store.lookup("ipv4", "198.51.100.7")
        local = store.lookup("domain", "local.example")
        assert from_misp is not None and local is not None
        record_pairwise_round(store, [from_misp.sighting_id, local.sighting_id])

    served.stop()
    status, out, _ = run("node", "push", "--config", str(node_toml), "--json")
    [result] = json.loads(out)
    assert status == 1 and "cannot reach" in result["error"] and state.sightings == []

    served.start()
    status, out, _ = run("node", "push", "--config", str(node_toml), "--json")
    assert status == 0, out
    [result] = json.loads(out)
    assert (result["matches"], result["objects"], result["skipped"]) == (1, 1, 1)
    [(target, sighting)] = state.sightings
    assert target == attribute
    assert sighting["source"] == "blindmatch" and sighting["type"] == "0"
    assert sighting["timestamp"] == "1767657660"  # the round's end, 2026-01-06T00:01:00Z

    # each match once; the one with no MISP attribute is still only skipped
    status, out, _ = run("node", "push", "--config", str(node_toml), "--json")
    assert (status, json.loads(out)[0]["matches"], json.loads(out)[0]["skipped"]) == (0, 0, 1)
    assert len(state.sightings) == 1


def test_push_with_a_wrong_key_marks_nothing(
    misp: tuple[MispState, Served], node_toml: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state, _ = misp
    state.add("ip-dst", "198.51.100.8", 1000)
    assert sync(node_toml, "national-misp")[0] == 0
    with Store.open(load_config(node_toml).store) as store:
        row = store.lookup("ipv4", "198.51.100.8")
        assert row is not None
        store.record_round(
            "round-2",
            started="2026-01-06T00:00:00Z",
            coordinator="coordinator",
            participants=["alpha", "bravo"],
            mode="threshold",
            threshold=2,
            kinds=["ipv4"],
            own_size=1,
            outcome="done",
        )
        store.record_matches("round-2", "threshold", [(row.sighting_id, [], 3)])
    monkeypatch.setenv("TEST_MISP_KEY", "wrong")
    status, out, _ = run("node", "push", "--config", str(node_toml), "--json")
    assert status == 1 and "HTTP 403" in json.loads(out)[0]["error"]
    monkeypatch.setenv("TEST_MISP_KEY", KEY)
    status, out, _ = run("node", "push", "--config", str(node_toml), "--json")
    assert (status, json.loads(out)[0]["matches"]) == (0, 1)
    assert len(state.sightings) == 1 and "timestamp" not in state.sightings[0][1]


# --- MISP feed ------------------------------------------------------------------------------------


def test_feed_pull_then_pull_only_newer_events(feed: tuple[Path, Served], node_toml: Path) -> None:
    directory, _ = feed
    publish(
        directory,
        1000,
        {"type": "ip-dst", "value": "198.51.100.20"},
        {"type": "domain", "value": "feed.example", "Tag": [RED]},
    )
    publish(directory, 1001, {"type": "ip-dst", "value": "999.1.1.1"})
    status, first, _ = sync(node_toml, "osint-feed")
    assert status == 0
    assert (first["fetched"], first["added"], first["invalid"]) == (2, 2, 1)
    assert first["cursor"].startswith("1001:")
    with Store.open(load_config(node_toml).store) as store:
        row = store.lookup("ipv4", "198.51.100.20")
        assert row is not None and row.tlp == "green" and row.sources == ["osint-feed"]
        red = store.lookup("domain", "feed.example")
        assert red is not None and red.tlp == "red"
        assert len(store.misp_refs(row.sighting_id)) == 1

    status, again, _ = sync(node_toml, "osint-feed")
    assert (status, again["fetched"], again["cursor"]) == (0, 0, first["cursor"])

    newer = publish(directory, 2000, {"type": "sha1", "value": "b" * 40})
    status, again, _ = sync(node_toml, "osint-feed")
    assert (status, again["fetched"], again["added"], again["cursor"]) == (
        0,
        1,
        1,
        f"2000:{newer}",
    )


def test_feed_stopped_server_and_missing_event(feed: tuple[Path, Served], node_toml: Path) -> None:
    directory, served = feed
    gone = publish(directory, 1000, {"type": "ip-dst", "value": "198.51.100.30"})
    (directory / f"{gone}.json").unlink()
    publish(directory, 1001, {"type": "ip-dst", "value": "198.51.100.31"})
    served.stop()
    status, result, _ = sync(node_toml, "osint-feed")
    assert status == 1 and "osint-feed: cannot reach" in result["error"]
    assert result["cursor"] is None
    served.start()
    status, out, _ = run("node", "sync", "--config", str(node_toml), "--source", "osint-feed")
    assert status == 0
    assert f"event {gone}: listed in manifest.json but the server has no such file" in out
    assert "1 new indicators" in out or "1 new indicator" in out


# --- the store: source refs ----------------------------------------------------------------------


def test_migration_keeps_the_stix_ids_of_a_store_from_before_source_refs(tmp_path: Path) -> None:
    import sqlite3

    from node.store import SCHEMA_VERSION

    SOURCE_REFS_SCHEMA = 6  # the migration that replaced stix_refs with source_refs
    assert SCHEMA_VERSION >= SOURCE_REFS_SCHEMA
    path = tmp_path / "store.sqlite"
    with Store.open(path) as store:
        store.add_sightings(
            [Sighting("ipv4", "192.0.2.1", "192.0.2.1")], source="f", default_tlp="amber"
        )
    # Rewind the file to the schema before source_refs: its STIX-only table, one id in it.
    conn = sqlite3.connect(path)
    with conn:
        conn.execute(
            "CREATE TABLE stix_refs (sighting_id INTEGER NOT NULL REFERENCES sightings (id),"
            " stix_id TEXT NOT NULL, PRIMARY KEY (sighting_id, stix_id)) WITHOUT ROWID"
        )
        conn.execute("INSERT INTO stix_refs SELECT id, 'indicator--x' FROM sightings")
        conn.execute("DROP TABLE source_refs")
        # ... and without what later migrations added (schema 7: the stored hashes)
        conn.execute("ALTER TABLE sightings DROP COLUMN hash")
        conn.execute("ALTER TABLE sightings DROP COLUMN hash_version")
        # (schema 9: when each indicator was last seen, and the forget audit)
        conn.execute("ALTER TABLE sightings DROP COLUMN seen_at")
        conn.execute("DROP TABLE forgets")
        # (schema 10: a watch round's epoch length in its record)
        conn.execute("ALTER TABLE rounds DROP COLUMN epoch_seconds")
        conn.execute(f"PRAGMA user_version = {SOURCE_REFS_SCHEMA - 1}")
    conn.close()

    with Store.open(path) as store:
        row = store.lookup("ipv4", "192.0.2.1")
        assert row is not None
        assert store.stix_refs(row.sighting_id) == ["indicator--x"]
        assert store.misp_refs(row.sighting_id) == []
        store.add_sightings(
            [
                Sighting(
                    "ipv4",
                    "192.0.2.1",
                    "192.0.2.1",
                    misp_uuid="0" * 8 + "-0000-4000-8000-" + "0" * 12,
                )
            ],
            source="m",
            default_tlp="amber",
        )
        assert store.misp_refs(row.sighting_id) == ["00000000-0000-4000-8000-000000000000"]
