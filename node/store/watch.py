"""Early warning (docs/WATCH.md): the watch epochs a node kept a key for, checks, alerts.

No table holds an epoch's key or its tags: an epoch's record says when it started, when it was
meant to end, with whom, how many own indicators it covered, and when its key was destroyed.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass

from node.store.db import Database, write_many
from node.store.schema import utc_now


@dataclass(frozen=True, slots=True)
class EpochAudit:
    epoch_id: str
    started: str
    ends: str
    coordinator: str
    participants: list[str]
    tags: int
    closed: str | None
    reason: str | None


@dataclass(frozen=True, slots=True)
class CheckAudit:
    time: str
    epoch_id: str
    checker: str  # whose values were checked; this node's own name for its own checks
    elements: int
    hits: int | None
    outcome: str
    reason: str | None


@dataclass(frozen=True, slots=True)
class AlertRow:
    alert_id: int
    time: str
    epoch_id: str
    kind: str
    value: str
    partner: str
    direction: str  # 'check': a partner had what this node checked; 'sighted': a partner
    # has now sighted this node's indicator


class WatchLog(Database):
    """Recording and reading epochs, checks and alerts."""

    def record_epoch(
        self,
        epoch_id: str,
        *,
        ends: str,
        coordinator: str,
        participants: Iterable[str],
        tags: int,
    ) -> None:
        with self._transaction() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO epochs"
                " (epoch_id, started, ends, coordinator, participants, tags)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (epoch_id, utc_now(), ends, coordinator, json.dumps(list(participants)), tags),
            )

    def close_epoch(self, epoch_id: str, reason: str) -> None:
        with self._transaction() as conn:
            conn.execute(
                "UPDATE epochs SET closed = ?, reason = ? WHERE epoch_id = ? AND closed IS NULL",
                (utc_now(), reason, epoch_id),
            )

    def epochs(self) -> list[EpochAudit]:
        with self._reading() as conn:
            rows = conn.execute(
                "SELECT epoch_id, started, ends, coordinator, participants, tags, closed, reason"
                " FROM epochs ORDER BY started DESC, rowid DESC"
            ).fetchall()
        return [
            EpochAudit(e, s, end, c, json.loads(p), t, closed, reason)
            for e, s, end, c, p, t, closed, reason in rows
        ]

    def record_check(
        self,
        epoch_id: str,
        checker: str,
        elements: int,
        *,
        outcome: str,
        reason: str | None = None,
        hits: int | None = None,
    ) -> None:
        with self._transaction() as conn:
            conn.execute(
                "INSERT INTO watch_checks (time, epoch_id, checker, elements, hits, outcome, reason)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (utc_now(), epoch_id, checker, elements, hits, outcome, reason),
            )

    def checks(self) -> list[CheckAudit]:
        with self._reading() as conn:
            rows = conn.execute(
                "SELECT time, epoch_id, checker, elements, hits, outcome, reason"
                " FROM watch_checks ORDER BY id DESC"
            ).fetchall()
        return [CheckAudit(*row) for row in rows]

    def record_alerts(self, epoch_id: str, rows: Iterable[tuple[str, str, str, str]]) -> int:
        now = utc_now()
        with self._transaction() as conn:
            return write_many(
                conn,
                "INSERT INTO alerts (time, epoch_id, kind, value, partner, direction)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                [(now, epoch_id, k, v, p, d) for k, v, p, d in rows],
            )

    def alerts(self, after: int = 0, limit: int | None = None) -> list[AlertRow]:
        with self._reading() as conn:
            rows = conn.execute(
                "SELECT id, time, epoch_id, kind, value, partner, direction FROM alerts"
                " WHERE id > ? ORDER BY id DESC LIMIT ?",
                (after, -1 if limit is None else limit),
            ).fetchall()
        return [AlertRow(*row) for row in rows]
