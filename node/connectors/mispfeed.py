"""A MISP feed over HTTP(S), fetched as MISP itself fetches one: a source of indicators.

Rules (MISP feed format: ``manifest.json`` maps event uuids to their metadata, each event is
``<uuid>.json``):
- A pull reads the manifest, then each event whose manifest ``timestamp`` is after the cursor,
  oldest first (ties by uuid). One event is one page; its cursor ``T:UUID`` is that event's
  (timestamp, uuid), so a pull that fails midway resumes after the last event stored, and an
  event republished with a newer timestamp is fetched again.
- Events are read by node.importers.misp exactly as a feed directory on disk is: an event the
  server does not have (404) or that is not MISP JSON is one Invalid entry and the pull goes on;
  a manifest entry that is not a uuid with a timestamp is named as invalid each pull.
- ``username`` with ``password_env`` / ``password_file`` sends HTTP basic auth; without them the
  feed is fetched anonymously. ``verify`` and ``ca_file`` set the TLS check.
- Every other failure (unreachable, refused, a manifest that is not JSON) is a ConnectorError
  naming the connector; nothing after the last stored event is skipped.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import requests

from node.config import ConnectorConfig
from node.connectors.base import ConnectorError, Page, read_secret
from node.importers import Event, ImportFileError, Invalid
from node.importers.common import decode_json, shorten
from node.importers.misp import parse_misp

_UUID: Final = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.I)
_CURSOR: Final = re.compile(rf"(\d+):({_UUID.pattern})", re.I)


class MispFeedSource:
    def __init__(self, config: ConnectorConfig) -> None:
        self.config = config
        self.base = config.url.rstrip("/") + "/"
        self.session = requests.Session()
        secret = read_secret(config)
        if config.username:
            self.session.auth = (config.username, secret or "")
        self.session.verify = str(config.ca_file) if config.ca_file else config.verify

    def pull(self, cursor: str | None) -> Iterator[Page]:
        after = _parse_cursor(self.config.name, cursor)
        manifest = self._get("manifest.json")
        if manifest is None:
            raise ConnectorError(f"{self.config.name}: {self.base}manifest.json: HTTP 404")
        try:
            document = decode_json("manifest.json", manifest)
        except ImportFileError as exc:
            raise ConnectorError(f"{self.config.name}: {exc}") from None
        if not isinstance(document, dict):
            raise ConnectorError(f"{self.config.name}: manifest.json is not a JSON object")
        entries, problems = _entries(document)
        if problems:
            name = f"{self.config.name} manifest"
            yield Page(name, "misp-feed", len(problems), iter(problems), None)
        for stamp, key in sorted(e for e in entries if after is None or e > after):
            name = f"{self.config.name} event {key}"
            yield Page(name, "misp-feed", 1, self._event(key), f"{stamp}:{key}")

    def _event(self, key: str) -> Iterator[Event]:
        # Fetched when the page is read, inside the store's transaction: a failure stores nothing.
        data = self._get(f"{key}.json")
        if data is None:
            yield Invalid(f"event {key}", "listed in manifest.json but the server has no such file")
            return
        try:
            document = decode_json(f"{key}.json", data)
            yield from parse_misp(Path(f"{key}.json"), document)
        except ImportFileError as exc:
            yield Invalid(f"event {key}", str(exc))

    def _get(self, name: str) -> bytes | None:
        """The file's bytes, or None when the server says it has none (404)."""
        c, url = self.config, self.base + name
        try:
            response = self.session.get(url, timeout=c.timeout)
        except requests.ConnectionError as exc:
            text = str(exc)
            why = "connection refused" if "refused" in text.lower() else shorten(text, 200)
            raise ConnectorError(f"{c.name}: cannot reach {c.url} ({why})") from None
        except requests.RequestException as exc:
            raise ConnectorError(f"{c.name}: fetching {url}: {exc}") from None
        if response.status_code == 404:
            return None
        if response.status_code in (401, 403):
            raise ConnectorError(
                f"{c.name}: fetching {url}: HTTP {response.status_code}:"
                " the server refused the username or password"
            )
        if response.status_code != 200:
            raise ConnectorError(f"{c.name}: fetching {url}: HTTP {response.status_code}")
        return response.content


def _entries(manifest: dict[str, Any]) -> tuple[list[tuple[int, str]], list[Event]]:
    """(timestamp, uuid) of each well-formed manifest entry, and the others as Invalid."""
    entries: list[tuple[int, str]] = []
    problems: list[Event] = []
    for key, meta in manifest.items():
        where = f"manifest entry {shorten(key, 60)}"
        if not _UUID.fullmatch(key):
            # Keys name files on the server: anything but a uuid could point elsewhere.
            problems.append(Invalid(where, "is not an event uuid"))
            continue
        stamp = meta.get("timestamp") if isinstance(meta, dict) else None
        if not (isinstance(stamp, int | str) and str(stamp).isdigit()):
            problems.append(Invalid(where, "has no timestamp (unix seconds)"))
            continue
        entries.append((int(stamp), key))
    return entries, problems


def _parse_cursor(name: str, cursor: str | None) -> tuple[int, str] | None:
    if cursor is None:
        return None
    match = _CURSOR.fullmatch(cursor)
    if match is None:
        raise ConnectorError(f"{name}: saved cursor {cursor!r} is not a MISP feed cursor")
    return int(match[1]), match[2]
