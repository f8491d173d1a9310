"""Connector bookkeeping: the ids indicators arrived with, source cursors, pushed matches.

Rules:
- A sighting imported from a STIX indicator keeps that object's id, and one imported from a MISP
  attribute keeps the attribute's uuid (``source_refs``, one row per scheme and id), so a sighting
  pushed back lands on the analyst's own indicator or attribute. One value may come with several.
- A source's cursor is opaque text the source resumes from; ``add_sightings(..., cursor=...)``
  saves it in the same transaction as the page it follows, so a crash never skips or repeats a
  page.
- A match is pushed to a sink once: ``mark_pushed`` records (sink, round, sighting) after the
  sink accepted it, and ``unpushed`` leaves those out. ``outgoing`` reads every match the same
  way, for the STIX that ``node matches`` prints.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass, field

from node.store.db import Database, write_many
from node.store.matches import MatchRow
from node.store.schema import utc_now
from node.store.tlp import TLP_LEVELS


@dataclass(frozen=True, slots=True, kw_only=True)
class OutgoingMatch(MatchRow):
    """A match as it leaves the node (a sink's push, STIX), with what a sighting of it needs."""

    sighting_id: int
    stix_ids: list[str]  # the source indicators it was imported from, sorted
    misp_uuids: list[str] = field(default_factory=list)  # the MISP attributes, sorted
    tlp: str = "amber"  # the value's TLP 2.0 level, which its sightings are marked with


def save_cursor(conn: sqlite3.Connection, source: str, cursor: str) -> None:
    conn.execute(
        "INSERT INTO source_cursors (source, cursor, updated) VALUES (?, ?, ?)"
        " ON CONFLICT (source) DO UPDATE SET cursor = excluded.cursor, updated = excluded.updated",
        (source, cursor, utc_now()),
    )


def save_source_refs(conn: sqlite3.Connection, refs: Iterable[tuple[str, str, str, str]]) -> None:
    """Record (scheme, ref, kind, value) for sightings already upserted in this transaction."""
    conn.executemany(
        "INSERT OR IGNORE INTO source_refs (sighting_id, scheme, ref)"
        " SELECT id, ?, ? FROM sightings WHERE kind = ? AND value = ?",
        refs,
    )


def _refs_of(scheme: str) -> str:
    """SQL for the sorted JSON array of ``scheme`` refs of the sighting ``s``."""
    return (
        "(SELECT json_group_array(ref) FROM (SELECT ref FROM source_refs x"
        f" WHERE x.sighting_id = s.id AND x.scheme = '{scheme}' ORDER BY ref))"
    )


class ConnectorTable(Database):
    """Cursors, source refs and pushed marks."""

    def cursor(self, source: str) -> str | None:
        with self._reading() as conn:
            row = conn.execute(
                "SELECT cursor FROM source_cursors WHERE source = ?", (source,)
            ).fetchone()
        return None if row is None else str(row[0])

    def stix_refs(self, sighting_id: int) -> list[str]:
        return self._refs(sighting_id, "stix")

    def misp_refs(self, sighting_id: int) -> list[str]:
        return self._refs(sighting_id, "misp")

    def _refs(self, sighting_id: int, scheme: str) -> list[str]:
        with self._reading() as conn:
            rows = conn.execute(
                "SELECT ref FROM source_refs WHERE sighting_id = ? AND scheme = ? ORDER BY ref",
                (sighting_id, scheme),
            ).fetchall()
        return [r[0] for r in rows]

    def unpushed(self, sink: str, round_id: str | None = None) -> list[OutgoingMatch]:
        return self._outgoing(sink, round_id)

    def outgoing(self, round_id: str | None = None) -> list[OutgoingMatch]:
        return self._outgoing(None, round_id)

    def _outgoing(self, sink: str | None, round_id: str | None) -> list[OutgoingMatch]:
        """The matches (of one round, or all) not marked pushed to ``sink`` (None: every one)."""
        with self._reading() as conn:
            rows = conn.execute(
                f"""
                SELECT m.round_id, s.id, s.kind, s.value, m.partners, m.count, r.finished,
                       r.threshold, {_refs_of("stix")}, {_refs_of("misp")}, s.tlp
                FROM matches m
                JOIN rounds r ON r.round_id = m.round_id
                JOIN sightings s ON s.id = m.sighting_id
                WHERE (?2 IS NULL OR m.round_id = ?2)
                  AND (?1 IS NULL OR NOT EXISTS (
                      SELECT 1 FROM pushed p WHERE p.sink = ?1
                      AND p.round_id = m.round_id AND p.sighting_id = m.sighting_id))
                ORDER BY r.started, r.rowid, s.kind, s.value
                """,
                (sink, round_id),
            ).fetchall()
        return [
            OutgoingMatch(
                r,
                k,
                v,
                json.loads(p),
                c,
                f,
                t,
                sighting_id=sid,
                stix_ids=json.loads(stix),
                misp_uuids=json.loads(misp),
                tlp=TLP_LEVELS[tlp],
            )
            for r, sid, k, v, p, c, f, t, stix, misp, tlp in rows
        ]

    def mark_pushed(self, sink: str, matches: Iterable[tuple[str, int]]) -> int:
        """Record (round_id, sighting_id) pairs as received by ``sink``; how many were new."""
        now = utc_now()
        with self._transaction() as conn:
            return write_many(
                conn,
                "INSERT OR IGNORE INTO pushed (sink, round_id, sighting_id, pushed_at)"
                " VALUES (?, ?, ?, ?)",
                [(sink, r, sid, now) for r, sid in matches],
            )
