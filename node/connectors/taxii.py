"""TAXII 2.1 collections with taxii2-client: a source of indicators and a sink for sightings.

Rules (TAXII 2.1, OASIS, sections 3.4 and 5.3):
- ``url`` is a discovery URL (its API roots are searched, the default first) or an API root; the
  collection is the one whose id, or else title, is ``collection``.
- A pull asks for objects added after the saved cursor. The server orders them by the time it
  added them; each page's ``X-TAXII-Date-Added-Last`` header is the cursor once that page is
  stored. Further pages come with the envelope's ``next`` while ``more`` is true, or, from a
  server that gives no ``next``, by asking again with ``added_after`` set to that header.
- A push posts one envelope per batch and reads the status resource (polled while it is pending,
  for ``timeout`` at most), object by object: a match counts as delivered once every object that
  tells it is among the successes, or among the failures but already held at that version (pushed
  before a crash): ids are deterministic. A refused or still pending object leaves its matches
  unmarked, to be sent again.
- ``username`` and a password send HTTP basic auth; ``token_env`` sends ``Authorization: Bearer``
  (OpenCTI's TAXII feeds take a token). Every request has the connector's ``timeout``.
- Every failure (unreachable, refused credentials, a collection that is missing or not readable
  or writable, a malformed answer) becomes a ConnectorError naming the connector.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Final

import requests
from taxii2client.common import _HTTPConnection
from taxii2client.exceptions import TAXIIServiceException
from taxii2client.v21 import ApiRoot, Collection, Server, Status

from node.config import ConnectorConfig
from node.connectors.base import ConnectorError, Delivery, Page, read_secret, read_token
from node.connectors.stix_out import build_sightings
from node.importers.stix import parse_stix
from node.store import OutgoingMatch

PAGE_SIZE: Final = 1000  # objects asked for per request; a server may send fewer
_LAST: Final = "X-TAXII-Date-Added-Last"
_FIRST: Final = "X-TAXII-Date-Added-First"


class _Auth(requests.auth.AuthBase):
    """Basic auth when a username is set, a bearer token when ``token_env`` is, and a note of
    each response's headers.

    taxii2-client returns only the JSON body; the pull's cursor is in the headers.
    """

    def __init__(self, username: str, password: str | None, token: str | None) -> None:
        self.basic = requests.auth.HTTPBasicAuth(username, password or "") if username else None
        self.token = token
        self.headers: dict[str, str] = {}

    def __call__(self, request: Any) -> Any:
        if self.basic is not None:
            request = self.basic(request)
        if self.token is not None:
            request.headers["Authorization"] = f"Bearer {self.token}"
        request.register_hook("response", self._note)
        return request

    def _note(self, response: requests.Response, *args: object, **kwargs: object) -> None:
        self.headers = dict(response.headers)


class _TimedSession(requests.Session):
    """A session whose every request has ``timeout``: taxii2-client passes none, and a server
    that stops answering would otherwise hold the caller for ever."""

    def __init__(self, timeout: float) -> None:
        super().__init__()
        self.timeout = timeout

    def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("timeout", self.timeout)
        return super().request(method, url, *args, **kwargs)


class _TaxiiCollection:
    """The configured collection, found on first use over one authenticated session."""

    def __init__(self, config: ConnectorConfig) -> None:
        self.config = config
        self.auth = _Auth(config.username, read_secret(config), read_token(config))
        self.verify: bool | str = str(config.ca_file) if config.ca_file else config.verify
        # One connection for every endpoint: Server, ApiRoot, Collection and Status share it.
        self.conn = _HTTPConnection(auth=self.auth, verify=self.verify, version="2.1")
        self.conn.session = _TimedSession(config.timeout)
        self.conn.session.auth = self.auth
        self.conn.session.verify = self.verify
        self._collection: Collection | None = None

    def collection(self) -> Collection:
        if self._collection is None:
            self._collection = self._find()
        return self._collection

    def _find(self) -> Collection:
        c, url = self.config, self.config.url.rstrip("/") + "/"
        server = Server(url, conn=self.conn)
        # taxii2-client gives the roots it finds connections of their own, without the timeout:
        # the same roots again, over this connection.
        roots = [ApiRoot(root.url, conn=self.conn) for root in server.api_roots]
        if server.default is not None:
            roots.sort(key=lambda root: root.url != server.default.url)
        if not roots:  # not a discovery resource with roots: take the URL as an API root
            roots = [ApiRoot(url, conn=self.conn)]
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
                401: "the server refused the username and password (or the token)",
                403: "the account may not do this",
                404: "no such resource (check the URL and the collection)",
            }.get(status, "the server answered with an error")
            raise ConnectorError(f"{c.name}: {doing} {c.url}: HTTP {status}: {why}") from None
        except requests.Timeout:
            raise ConnectorError(
                f"{c.name}: {doing} {c.url}: no answer within {c.timeout:g} s (timeout)"
            ) from None
        except (
            requests.exceptions.ChunkedEncodingError,
            requests.exceptions.ContentDecodingError,
        ) as exc:
            raise ConnectorError(
                f"{c.name}: {doing} {c.url}: the server cut the transfer off ({_reason(exc)})"
            ) from None
        except requests.ConnectionError as exc:
            if "Connection broken" in str(exc) or "RemoteDisconnected" in str(exc):
                raise ConnectorError(
                    f"{c.name}: {doing} {c.url}: the server cut the transfer off ({_reason(exc)})"
                ) from None
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

    def push(self, node: str, matches: Sequence[OutgoingMatch]) -> Delivery:
        told = build_sightings(node, matches)
        versions = {o["id"]: o.get("modified") or o.get("created") for o in told.objects}
        with self._remote.failures("pushing to"):
            collection = self._remote.collection()
            # Polls the status resource until it is complete, or for ``timeout`` at most.
            status = collection.add_objects(
                {"objects": told.objects},
                wait_for_completion=True,
                poll_interval=1,
                timeout=self.config.timeout,
            )
            confirmed, problems = self._confirmed(collection, status, versions)
        done = [m for m, needed in zip(matches, told.needs, strict=True) if needed <= confirmed]
        return Delivery(done, len(confirmed), problems)

    def _confirmed(
        self, collection: Collection, status: Status, versions: dict[str, Any]
    ) -> tuple[set[str], list[str]]:
        """The ids the status resource confirms (TAXII 2.1 section 4.3.1), and a line for each
        object it refused or still holds pending."""
        successes = _ids(status.successes)
        complete = status.status == "complete"
        if complete and not (status.successes or status.failure_count or status.pending_count):
            # The per-object lists are optional: a complete status that counts no failure and
            # nothing pending took every object; otherwise only the listed ones are known.
            successes = set(versions)
        problems: list[str] = []
        for detail in status.failures:
            object_id = detail.get("id") if isinstance(detail, dict) else None
            if not isinstance(object_id, str):
                continue
            # Already held at this version (pushed before a crash, or by an earlier batch) is
            # delivered: ids and versions are deterministic.
            if self._holds(collection, object_id, versions.get(object_id)):
                successes.add(object_id)
            else:
                why = detail.get("message") or "no reason given"
                problems.append(f"the server refused {object_id}: {why}")
        if not status.failures and status.failure_count:
            problems.append(f"the server refused {status.failure_count} object(s), unnamed")
        if not complete or status.pendings:
            pending = sorted(_ids(status.pendings) or set(versions) - successes)
            problems += [f"{i} still pending after {self.config.timeout:g} s" for i in pending]
        return successes & set(versions), problems

    def _holds(self, collection: Collection, object_id: str, version: object) -> bool:
        try:
            query = {"version": version} if isinstance(version, str) else {}
            found = collection.get_object(object_id, **query)
        except requests.HTTPError:
            return False
        return bool(found.get("objects"))


def _ids(details: object) -> set[str]:
    """The object ids of a status resource's successes, failures or pendings."""
    if not isinstance(details, list):
        return set()
    return {d["id"] for d in details if isinstance(d, dict) and isinstance(d.get("id"), str)}


def _reason(exc: requests.RequestException) -> str:
    text = str(exc.args[0] if exc.args else exc)
    if "Connection refused" in text:
        return "connection refused"
    return json.dumps(text[:200])[1:-1]
