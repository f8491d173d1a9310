"""TAXII 2.1 collections with taxii2-client: a source of indicators and a sink for sightings.

Rules (TAXII 2.1, OASIS, sections 3.4 and 5.3):
- ``url`` is a discovery URL (its API roots are searched, the default first) or an API root; the
  collection is the one whose id, or else title, is ``collection``.
- A pull asks for objects added after the saved cursor. The server orders them by the time it
  added them; each page's ``X-TAXII-Date-Added-Last`` header is the cursor once that page is
  stored. Further pages come with the envelope's ``next`` while ``more`` is true, or, from a
  server that gives no ``next``, by asking again with ``added_after`` set to that header.
- A push posts one envelope per batch. An object the server reports as failed but already holds
  (the same id and version, pushed before a crash) counts as delivered: ids are deterministic.
- Every failure (unreachable, refused credentials, a collection that is missing or not readable
  or writable, a malformed answer) becomes a ConnectorError naming the connector.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Final

import requests
from taxii2client.exceptions import TAXIIServiceException
from taxii2client.v21 import ApiRoot, Collection, Server

from node.config import ConnectorConfig
from node.connectors.base import ConnectorError, Page, read_secret
from node.connectors.stix_out import sighting_objects
from node.importers.stix import parse_stix
from node.store import OutgoingMatch

PAGE_SIZE: Final = 1000  # objects asked for per request; a server may send fewer
_LAST: Final = "X-TAXII-Date-Added-Last"
_FIRST: Final = "X-TAXII-Date-Added-First"


class _Auth(requests.auth.AuthBase):
    """Basic auth when a username is set, and a note of each response's headers.

    taxii2-client returns only the JSON body; the pull's cursor is in the headers.
    """

    def __init__(self, username: str, password: str | None) -> None:
        self.basic = requests.auth.HTTPBasicAuth(username, password or "") if username else None
        self.headers: dict[str, str] = {}

    def __call__(self, request: Any) -> Any:
        if self.basic is not None:
            request = self.basic(request)
        request.register_hook("response", self._note)
        return request

    def _note(self, response: requests.Response, *args: object, **kwargs: object) -> None:
        self.headers = dict(response.headers)


class _TaxiiCollection:
    """The configured collection, found on first use over one authenticated session."""

    def __init__(self, config: ConnectorConfig) -> None:
        self.config = config
        self.auth = _Auth(config.username, read_secret(config))
        self.verify: bool | str = str(config.ca_file) if config.ca_file else config.verify
        self._collection: Collection | None = None

    def collection(self) -> Collection:
        if self._collection is None:
            self._collection = self._find()
        return self._collection

    def _find(self) -> Collection:
        c, url = self.config, self.config.url.rstrip("/") + "/"
        server = Server(url, auth=self.auth, verify=self.verify)
        roots = list(server.api_roots)
        if server.default is not None:
            roots.sort(key=lambda root: root.url != server.default.url)
        if not roots:  # not a discovery resource with roots: take the URL as an API root
            roots = [ApiRoot(url, auth=self.auth, verify=self.verify)]
        found: list[Collection] = []
        for root in roots:
            found += [col for col in root.collections if c.collection in (col.id, col.title)]
            if found:
                break
        if not found:
            names = sorted(f"{col.title} ({col.id})" for root in roots for col in root.collections)
            raise ConnectorError(
                f"{c.name}: no collection {c.collection!r} at {c.url}; "
                f"the server offers: {', '.join(names) or 'none'}"
            )
        by_id = [col for col in found if col.id == c.collection]
        if len(found) > 1 and not by_id:
            raise ConnectorError(
                f"{c.name}: several collections are titled {c.collection!r};"
                f" name one by id: {', '.join(col.id for col in found)}"
            )
        return (by_id or found)[0]

    @contextmanager
    def failures(self, doing: str) -> Iterator[None]:
        """Turn what requests and taxii2-client raise into one ConnectorError."""
        c = self.config
        try:
            yield
        except requests.HTTPError as exc:
            status = exc.response.status_code if exc.response is not None else 0
            why = {
                401: "the server refused the username or password",
                403: "the account may not do this",
                404: "no such resource (check the URL and the collection)",
            }.get(status, "the server answered with an error")
            raise ConnectorError(f"{c.name}: {doing} {c.url}: HTTP {status}: {why}") from None
        except requests.ConnectionError as exc:
            raise ConnectorError(f"{c.name}: cannot reach {c.url} ({_reason(exc)})") from None
        except requests.RequestException as exc:
            raise ConnectorError(f"{c.name}: {doing} {c.url}: {exc}") from None
        except (TAXIIServiceException, ValueError, KeyError, TypeError) as exc:
            raise ConnectorError(f"{c.name}: {doing} {c.url}: unexpected answer: {exc}") from None


class TaxiiSource:
    def __init__(self, config: ConnectorConfig) -> None:
        self.config = config
        self._remote = _TaxiiCollection(config)

    def pull(self, cursor: str | None) -> Iterator[Page]:
        with self._remote.failures("pulling from"):
            collection = self._remote.collection()
            query: dict[str, Any] = {"limit": PAGE_SIZE}
            if cursor:
                query["added_after"] = cursor
            following: str | None = None
            number = 0
            while True:
                self._remote.auth.headers = {}
                envelope = collection.get_objects(
                    **query, **({"next": following} if following else {})
                )
                headers = self._remote.auth.headers
                # A page of one object may carry only the First header (medallion does).
                last = headers.get(_LAST) or headers.get(_FIRST)
                objects = envelope.get("objects", [])
                if not isinstance(objects, list):
                    raise ValueError("the envelope's 'objects' is not a list")
                if objects:
                    number += 1
                    name = f"{self.config.name} page {number}"
                    yield Page(name, "taxii", len(objects), parse_stix(name, objects), last)
                if not envelope.get("more"):
                    return
                following = envelope.get("next")
                if not following:
                    if not last:
                        raise ValueError("'more' is true but there is no 'next' nor X-TAXII-Date")
                    query["added_after"] = last


class TaxiiSink:
    def __init__(self, config: ConnectorConfig) -> None:
        self.config = config
        self._remote = _TaxiiCollection(config)

    def push(self, node: str, matches: Sequence[OutgoingMatch]) -> int:
        objects = sighting_objects(node, matches)
        with self._remote.failures("pushing to"):
            collection = self._remote.collection()
            status = collection.add_objects({"objects": objects})
            failed = [f.get("id") for f in status.failures or [] if isinstance(f, dict)]
            # Already there (a push interrupted before it was recorded) is delivered.
            missing = [i for i in failed if not self._holds(collection, i)]
            if missing or status.status != "complete":
                raise ConnectorError(
                    f"{self.config.name}: the server did not take {len(missing)} object(s)"
                    f" ({', '.join(map(str, missing[:5]))}); status {status.status}"
                )
        return len(objects)

    def _holds(self, collection: Collection, object_id: object) -> bool:
        if not isinstance(object_id, str):
            return False
        try:
            found = collection.get_object(object_id)
        except requests.HTTPError:
            return False
        return bool(found.get("objects"))


def _reason(exc: requests.ConnectionError) -> str:
    text = str(exc.args[0] if exc.args else exc)
    if "Connection refused" in text:
        return "connection refused"
    return json.dumps(text[:200])[1:-1]
