"""MISP over its REST API with pymisp: attributes as a source, sightings on them as a sink.

Rules (MISP automation API: /attributes/restSearch, /sightings/add):
- A pull searches attributes (JSON body filters): ``to_ids`` only and ``published`` events only
  unless turned off, the configured ``tags`` (an attribute carrying or inheriting one), deleted
  ones never, event tags included so TLP can come from the event. Attributes are read by
  node.importers.misp, as in an exported event: the same types, TLP and invalid entries named by
  attribute uuid, and each record keeps its attribute's uuid.
- Incremental by attribute timestamp: the cursor ``T`` asks for attributes changed after T (MISP's
  ``timestamp`` filter is inclusive, so T + 1). A pull pages with limit/page under fixed filters;
  until its last page the cursor is ``T:P:H`` (resume at page P, H the newest timestamp so far),
  so a pull that fails midway resumes where it stopped; the last page's cursor is ``H``.
- ``warninglists = true`` drops values on MISP's warning lists (known-benign: public resolvers,
  top domains) with the optional package pymispwarninglists; without it that setting is a
  configuration error, not a silent no-op.
- A push adds one sighting (type 0, source "blindmatch", at the round's end) on every MISP
  attribute a match was imported from; a match from nowhere in MISP is skipped (``can_sight``).
  A match is confirmed once MISP answered each of its sightings without an error; the first
  error answer ends the batch, and that match and those after it stay unmarked.
  Each sighting carries a uuid derived from (node, round, attribute), so a MISP that already holds
  it (a push interrupted before it was recorded) keeps one. An attribute deleted since (404)
  takes no sighting and does not stop the others.
- Every failure (unreachable, refused key, an error answer) becomes a ConnectorError naming the
  connector; pymisp's own error logging is silenced, the ConnectorError says it once.
"""

from __future__ import annotations

import calendar
import logging
import re
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Final

import requests
from pymisp import PyMISP, PyMISPError

from blindmatch.cli.tomlconfig import ConfigError
from node.config import ConnectorConfig
from node.connectors.base import ConnectorError, Delivery, Page, read_secret
from node.importers import Event, Record, Skipped
from node.importers.common import clip
from node.importers.misp import parse_misp_attributes
from node.store import OutgoingMatch

PAGE_SIZE: Final = 1000  # attributes asked for per request
SIGHTING_SOURCE: Final = "blindmatch"
_SIGHTING_NS: Final = uuid.UUID("0c3b5c8e-6a4e-4f58-9a0e-3d1f7a1b2c4d")
_CURSOR: Final = re.compile(r"(\d+)(?::(\d+):(\d+))?")
_REFUSED: Final = re.compile(r"\((401|403),")

logging.getLogger("pymisp").setLevel(logging.CRITICAL + 1)


class _Misp:
    """One PyMISP client, connected on first use; pymisp's failures as ConnectorErrors."""

    def __init__(self, config: ConnectorConfig) -> None:
        self.config = config
        key = read_secret(config)
        if not key:
            raise ConfigError(
                f"connector {config.name}: a MISP connector needs key_env or key_file"
            )
        self.key: str = key
        self._client: PyMISP | None = None

    def client(self) -> PyMISP:
        if self._client is None:
            c = self.config
            ssl: bool | str = str(c.ca_file) if c.ca_file else c.verify
            try:
                self._client = PyMISP(c.url, self.key, ssl=ssl, timeout=c.timeout)
            except PyMISPError as exc:
                raise self._error("connecting to", exc) from None
        return self._client

    def answer(self, doing: str, call: Callable[[], Any]) -> Any:
        """``call()``'s JSON answer; an error answer or exception raises ConnectorError."""
        try:
            got = call()
        except (PyMISPError, requests.ConnectionError) as exc:
            raise self._error(doing, exc) from None
        except Exception as exc:  # requests' other errors, unexpected shapes
            raise ConnectorError(f"{self.config.name}: {doing} {self.config.url}: {exc}") from None
        if isinstance(got, dict) and "errors" in got:
            raise self._error(doing, got["errors"])
        return got

    def _error(self, doing: str, problem: object) -> ConnectorError:
        c, text = self.config, str(problem)
        status = problem[0] if isinstance(problem, tuple) and problem else None
        refused = _REFUSED.search(text)
        if status in (401, 403) or refused:
            code = status or refused[1]  # type: ignore[index]
            why = f"HTTP {code}: the server refused the API key (or the key may not do this)"
        elif "Connection refused" in text or "Failed to establish" in text:
            why = "connection refused" if "refused" in text else clip(text, 200)
            return ConnectorError(f"{c.name}: cannot reach {c.url} ({why})")
        else:
            why = f"the server answered with an error: {clip(text, 300)}"
        return ConnectorError(f"{c.name}: {doing} {c.url}: {why}")


class MispSource:
    def __init__(self, config: ConnectorConfig) -> None:
        self.config = config
        self._remote = _Misp(config)
        self._benign = _warninglists(config) if config.warninglists else None

    def pull(self, cursor: str | None) -> Iterator[Page]:
        since, page, newest = _parse_cursor(self.config.name, cursor)
        client = self._remote.client()
        c = self.config
        filters: dict[str, Any] = {
            "controller": "attributes",
            "return_format": "json",
            "limit": PAGE_SIZE,
            "timestamp": since + 1,
            "to_ids": 1 if c.to_ids else None,
            "published": True if c.published else None,
            "tags": list(c.tags) or None,
            "include_event_tags": True,
            "deleted": False,
            "pythonify": False,
        }
        while True:
            found = self._remote.answer(
                "searching attributes at",
                lambda page=page: client.search(page=page, **filters),  # type: ignore[misc]
            )
            attributes = found.get("Attribute", []) if isinstance(found, dict) else found
            if not isinstance(attributes, list):
                raise ConnectorError(f"{c.name}: the attribute search answered {found!r:.200}")
            newest = max([newest, *map(_timestamp, attributes)])
            last = len(attributes) < PAGE_SIZE
            following = str(newest) if last else f"{since}:{page + 1}:{newest}"
            if attributes or (last and page > 1):
                name = f"{c.name} page {page}"
                yield Page(name, "misp", len(attributes), self._events(attributes), following)
            if last:
                return
            page += 1

    def _events(self, attributes: list[Any]) -> Iterator[Event]:
        benign = self._benign
        for event in parse_misp_attributes(attributes):
            listed = benign(event.raw) if benign is not None and isinstance(event, Record) else None
            yield Skipped(event.where, f"MISP warning list {clip(listed)}") if listed else event


class MispSink:
    def __init__(self, config: ConnectorConfig) -> None:
        self.config = config
        self._remote = _Misp(config)

    def can_sight(self, match: OutgoingMatch) -> bool:
        return bool(match.misp_uuids)

    def push(self, node: str, matches: Sequence[OutgoingMatch]) -> Delivery:
        client = self._remote.client()
        added = 0
        confirmed: list[OutgoingMatch] = []
        for m in matches:
            try:
                added += self._sight(client, node, m)
            except ConnectorError as exc:
                # MISP answered with an error (or stopped answering): this match and the ones
                # after it stay unmarked; those it confirmed before are delivered.
                return Delivery(confirmed, added, [str(exc)])
            confirmed.append(m)
        return Delivery(confirmed, added, [])

    def _sight(self, client: PyMISP, node: str, m: OutgoingMatch) -> int:
        """Add a sighting on each of ``m``'s attributes; how many MISP confirmed it took."""
        added = 0
        for attribute in m.misp_uuids:
            sighting: dict[str, Any] = {
                "uuid": str(uuid.uuid5(_SIGHTING_NS, f"{node}|{m.round_id}|{attribute}")),
                "type": "0",
                "source": SIGHTING_SOURCE,
            }
            if m.finished:
                when = time.strptime(m.finished, "%Y-%m-%dT%H:%M:%SZ")
                sighting["timestamp"] = str(calendar.timegm(when))
            got = self._remote.answer(
                f"adding a sighting on attribute {attribute} at",
                lambda s=sighting, a=attribute: _allow_gone(client.add_sighting(s, a)),  # type: ignore[misc]
            )
            added += got is not None
        return added


def _allow_gone(answer: Any) -> Any:
    """None for an attribute MISP no longer has (404); any other answer unchanged."""
    errors = answer.get("errors") if isinstance(answer, dict) else None
    if isinstance(errors, tuple | list) and errors and errors[0] == 404:
        return None
    return answer


def _parse_cursor(name: str, cursor: str | None) -> tuple[int, int, int]:
    """(since, page, newest so far) from a saved cursor (module docstring)."""
    if cursor is None:
        return 0, 1, 0
    match = _CURSOR.fullmatch(cursor)
    if match is None:
        raise ConnectorError(f"{name}: saved cursor {cursor!r} is not a MISP timestamp cursor")
    since = int(match[1])
    if match[2] is None:
        return since, 1, since
    return since, int(match[2]), int(match[3])


def _timestamp(attribute: object) -> int:
    value = attribute.get("timestamp") if isinstance(attribute, dict) else None
    try:
        return int(str(value))
    except ValueError:
        return 0  # the importer names what is wrong with it; it cannot move the cursor


def _warninglists(config: ConnectorConfig) -> Callable[[str], str | None]:
    """The name of a warning list holding a value, or None; needs pymispwarninglists."""
    try:
        from pymispwarninglists import WarningLists  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        raise ConfigError(
            f"connector {config.name}: warninglists = true needs the optional package"
            " pymispwarninglists (pip install pymispwarninglists), which is not installed"
        ) from None
    lists = WarningLists(slow_search=False)

    def listed(value: str) -> str | None:
        hits = lists.search(value)
        return str(hits[0].name) if hits else None

    return listed
