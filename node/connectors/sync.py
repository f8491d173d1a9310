"""Pulling sources into the store, through the same path as imported files.

Rules:
- Every page a source fetches goes through node.importing.import_events: the same STIX (or other)
  parser, canonicalisation, TLP from markings (the source's ``tlp`` for unmarked objects, else
  the node's ``import.default_tlp``), invalid objects named by id, nothing lost on a bad object.
- One page is one store transaction and one import audit entry, and the source's cursor is saved
  in that transaction: a pull that fails midway keeps the pages it stored, and the next pull
  resumes after the last of them. Its ConnectorError carries (``done``) the SyncResult of
  those pages, so a pull the server cut off reports what it stored.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from blindmatch.core.oprf import hash_indicators
from node.config import ConnectorConfig
from node.connectors.base import ConnectorError, Source, open_source
from node.importing import ImportReport, import_events
from node.store import Store
from node.store.sightings import Hasher


@dataclass
class SyncResult:
    """One source's pull: the counts `node sync --json` prints, and the full import report."""

    source: str
    fetched: int = 0  # objects received
    added: int = 0  # indicators new to the store
    known: int = 0
    invalid: int = 0
    cursor: str | None = None
    report: ImportReport = field(default_factory=ImportReport)

    def as_json(self) -> dict[str, object]:
        return {
            "source": self.source,
            "fetched": self.fetched,
            "added": self.added,
            "known": self.known,
            "invalid": self.invalid,
            "cursor": self.cursor,
        }


def sync_source(
    store: Store,
    config: ConnectorConfig,
    *,
    default_tlp: str,
    source: Source | None = None,
    progress: Callable[[int], None] | None = None,
    hasher: Hasher = hash_indicators,
) -> SyncResult:
    """Pull ``config`` once from its saved cursor, H(v) of new indicators from ``hasher`` (the
    node's blinding pool). Raises ConnectorError when the pull fails (whatever pages came
    before the failure stay stored)."""
    result = SyncResult(config.name, cursor=store.cursor(config.name))
    remote = source or open_source(config)
    report = result.report
    try:
        for page in remote.pull(result.cursor):
            import_events(
                store,
                page.name,
                lambda page=page: (page.fmt, page.events),  # type: ignore[misc]
                fmt=page.fmt,
                default_tlp=config.tlp or default_tlp,
                source=config.name,
                report=report,
                progress=progress,
                cursor=None if page.cursor is None else (config.name, page.cursor),
                hasher=hasher,
            )
            # Counted once stored: a page whose transfer or transaction failed is not.
            result.fetched += page.fetched
            if page.cursor is not None:
                result.cursor = page.cursor
            result.added, result.known = report.new, report.known
            result.invalid = report.invalid_count
    except ConnectorError as exc:
        # What the pages before the failure stored stays stored: say so, not "fetched 0".
        raise ConnectorError(str(exc), done=result) from None
    return result
