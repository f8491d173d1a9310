"""The audit log: every import, every ``node forget``, and every round this node took part in
and how it ended.

Rules:
- A round's record says who asked, with whom, what was blinded for whom and how it ended. It
  never records key material: no table has a column for it.
- A round id names one record (the table's primary key): recording the round again updates
  it, keeping the first start time, so ``has_round`` is one index lookup.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeAlias

from blindmatch.core.match import MODES
from blindmatch.core.states import ROUND_ENDS, ROUND_OUTCOMES
from node.store.db import Database
from node.store.schema import normalize_time, utc_now


@dataclass(frozen=True, slots=True)
class ImportAudit:
    import_id: int
    time: str
    source: str
    path: str
    fmt: str
    summary: dict[str, Any]


@dataclass(frozen=True, slots=True)
class RoundAudit:
    round_id: str
    started: str
    coordinator: str
    participants: list[str]
    mode: str
    threshold: int | None
    kinds: list[str]
    own_size: int
    blinded_for: dict[str, int]  # partner -> elements this node blinded for that partner
    outcome: str
    reason: str | None
    finished: str | None
    operator: str | None = None  # who signed the spec; None before it was verified
    epoch_seconds: float = 0.0  # > 0: a watch round (it runs as pairwise), its epoch's length
    watch: bool = False  # a watch round: by its epoch_seconds, or the epoch it opened (older rows)

    @property
    def time(self) -> str:
        return self.started

    @property
    def shown_mode(self) -> str:
        """The mode as the operator asked for it: "watch" for a watch round."""
        return "watch" if self.watch else self.mode


def watched(alias: str) -> str:
    """SQL: whether the round row ``alias`` was a watch round. It runs as pairwise; its record
    says so by ``epoch_seconds`` since store schema 10, the epoch it opened for older rows."""
    return (
        f"({alias}.epoch_seconds > 0 OR EXISTS "
        f"(SELECT 1 FROM epochs WHERE epochs.epoch_id = {alias}.round_id))"
    )


@dataclass(frozen=True, slots=True)
class ForgetAudit:
    """One ``node forget`` (node.store.sightings.SightingsTable.forget): who, what, how many."""

    forget_id: int
    time: str
    who: str
    how: str  # what was asked, as the command line said it
    summary: dict[str, Any]  # node.store.sightings.ForgetResult as JSON


AuditEntry: TypeAlias = ImportAudit | RoundAudit | ForgetAudit


class AuditLog(Database):
    """Recording imports and rounds, and reading them back."""

    def record_import(self, source: str, path: str, fmt: str, summary: Mapping[str, Any]) -> int:
        try:
            summary_json = json.dumps(summary, sort_keys=True)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"import summary must be JSON-serialisable: {exc}") from None
        with self._transaction() as conn:
            cursor = conn.execute(
                "INSERT INTO imports (imported_at, source, path, format, summary)"
                " VALUES (?, ?, ?, ?, ?)",
                (utc_now(), source, str(path), fmt, summary_json),
            )
            import_id = cursor.lastrowid
        assert import_id is not None  # an INSERT into a rowid table always sets it
        return import_id

    def record_round(
        self,
        round_id: str,
        *,
        started: str | datetime,
        coordinator: str,
        participants: Iterable[str],
        mode: str,
        threshold: int | None,
        kinds: Iterable[str],
        own_size: int,
        blinded_for: Mapping[str, int] | None = None,
        outcome: str,
        reason: str | None = None,
        finished: str | datetime | None = None,
        operator: str | None = None,
        epoch_seconds: float = 0.0,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown round mode {mode!r}: expected one of {', '.join(MODES)}")
        if outcome not in ROUND_OUTCOMES:
            raise ValueError(
                f"unknown round outcome {outcome!r}: expected one of {', '.join(ROUND_OUTCOMES)}"
            )
        if (mode == "threshold") != (threshold is not None):
            raise ValueError(
                f"round {round_id}: a threshold is given exactly when the mode is 'threshold'"
                f" (mode {mode!r}, threshold {threshold!r})"
            )
        if threshold is not None and threshold < 1:
            raise ValueError(f"round {round_id}: threshold must be >= 1, got {threshold}")
        if own_size < 0:
            raise ValueError(f"round {round_id}: own_size must be >= 0, got {own_size}")
        started_at = normalize_time(started, "started")
        finished_at = None if finished is None else normalize_time(finished, "finished")
        with self._transaction() as conn:
            conn.execute(
                """
                INSERT INTO rounds (round_id, started, coordinator, participants, mode, threshold,
                                    kinds, own_size, outcome, reason, finished, operator,
                                    epoch_seconds)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                ON CONFLICT (round_id) DO UPDATE SET
                    coordinator = excluded.coordinator,
                    participants = excluded.participants,
                    mode = excluded.mode,
                    threshold = excluded.threshold,
                    kinds = excluded.kinds,
                    own_size = excluded.own_size,
                    outcome = excluded.outcome,
                    reason = excluded.reason,
                    finished = excluded.finished,
                    operator = excluded.operator,
                    epoch_seconds = excluded.epoch_seconds
                """,
                (
                    round_id,
                    started_at,
                    coordinator,
                    json.dumps(list(participants)),
                    mode,
                    threshold,
                    json.dumps(list(kinds)),
                    own_size,
                    outcome,
                    reason,
                    finished_at,
                    operator,
                    epoch_seconds,
                ),
            )
            for partner, elements in (blinded_for or {}).items():
                _check_elements(round_id, partner, elements)
                conn.execute(
                    "INSERT INTO round_blinded (round_id, partner, elements) VALUES (?, ?, ?)"
                    " ON CONFLICT (round_id, partner) DO UPDATE SET elements = excluded.elements",
                    (round_id, partner, elements),
                )

    def end_round(self, round_id: str, *, outcome: str, reason: str | None) -> None:
        if outcome not in ROUND_ENDS:
            raise ValueError(f"unknown final round outcome {outcome!r}")
        with self._transaction() as conn:
            require_round(conn, round_id)
            conn.execute(
                "UPDATE rounds SET outcome = ?, reason = ?, finished = ? WHERE round_id = ?",
                (outcome, reason, utc_now(), round_id),
            )

    def add_blinded(self, round_id: str, partner: str, n: int) -> None:
        _check_elements(round_id, partner, n)
        with self._transaction() as conn:
            require_round(conn, round_id)
            conn.execute(
                "INSERT INTO round_blinded (round_id, partner, elements) VALUES (?, ?, ?)"
                " ON CONFLICT (round_id, partner) DO UPDATE SET elements = elements + excluded.elements",
                (round_id, partner, n),
            )

    def has_round(self, round_id: str) -> bool:
        with self._reading() as conn:
            row = conn.execute("SELECT 1 FROM rounds WHERE round_id = ?", (round_id,)).fetchone()
        return row is not None

    def round_ids(self) -> list[str]:
        """Every round recorded: what a round id an operator typed (or a prefix) may name."""
        with self._reading() as conn:
            return [rid for (rid,) in conn.execute("SELECT round_id FROM rounds")]

    def rounds_for_kind(self, kind: str, since: str) -> list[RoundAudit]:
        """The rounds done here since ``since`` (a stored time) that asked for ``kind``: those a
        value of that kind stored then could have entered, newest first (``node explain``)."""
        return [
            r
            for r in self.rounds()
            if r.outcome == "done" and r.started >= since and kind in r.kinds
        ]

    def rounds(self) -> list[RoundAudit]:
        with self._reading() as conn:
            return _rounds(conn, limit=None)

    def audit(self, limit: int | None = None) -> list[AuditEntry]:
        with self._reading() as conn:
            rounds = _rounds(conn, limit)
            rows = conn.execute(
                "SELECT id, imported_at, source, path, format, summary FROM imports"
                " ORDER BY imported_at DESC, id DESC LIMIT ?",
                (-1 if limit is None else limit,),
            ).fetchall()
            forgotten = conn.execute(
                "SELECT id, time, who, how, summary FROM forgets ORDER BY time DESC, id DESC"
                " LIMIT ?",
                (-1 if limit is None else limit,),
            ).fetchall()
        imports = [
            ImportAudit(import_id=i, time=t, source=src, path=p, fmt=f, summary=json.loads(summary))
            for i, t, src, p, f, summary in rows
        ]
        forgets = [
            ForgetAudit(forget_id=i, time=t, who=who, how=how, summary=json.loads(summary))
            for i, t, who, how, summary in forgotten
        ]
        entries: list[AuditEntry] = [*rounds, *imports, *forgets]
        # Stable sort: within each list the order is already newest first.
        entries.sort(key=lambda entry: entry.time, reverse=True)
        return entries if limit is None else entries[:limit]


def require_round(conn: sqlite3.Connection, round_id: str) -> str:
    """The recorded mode of ``round_id``; raises if the round was never recorded."""
    row = conn.execute("SELECT mode FROM rounds WHERE round_id = ?", (round_id,)).fetchone()
    if row is None:
        raise ValueError(f"round {round_id} is not in the audit log; record_round it first")
    mode: str = row[0]
    return mode


def _check_elements(round_id: str, partner: str, n: int) -> None:
    if n < 0:
        raise ValueError(
            f"round {round_id}: elements blinded for {partner} cannot be negative: {n}"
        )


def _rounds(conn: sqlite3.Connection, limit: int | None) -> list[RoundAudit]:
    rows = conn.execute(
        f"""
        SELECT round_id, started, coordinator, participants, mode, threshold, kinds, own_size,
               outcome, reason, finished, operator, epoch_seconds, {watched("rounds")}
        FROM rounds ORDER BY started DESC, rowid DESC LIMIT ?
        """,
        (-1 if limit is None else limit,),
    ).fetchall()
    blinded: dict[str, dict[str, int]] = {}
    for round_id, partner, elements in conn.execute(
        "SELECT round_id, partner, elements FROM round_blinded ORDER BY round_id, partner"
    ):
        blinded.setdefault(round_id, {})[partner] = elements
    return [
        RoundAudit(
            round_id=rid,
            started=started,
            coordinator=coordinator,
            participants=json.loads(participants),
            mode=mode,
            threshold=threshold,
            kinds=json.loads(kinds),
            own_size=own_size,
            blinded_for=blinded.get(rid, {}),
            outcome=outcome,
            reason=reason,
            finished=finished,
            operator=operator,
            epoch_seconds=epoch_seconds,
            watch=bool(watch),
        )
        for rid, started, coordinator, participants, mode, threshold, kinds, own_size, outcome, reason, finished, operator, epoch_seconds, watch in rows
    ]
