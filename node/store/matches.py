"""Round results: the matches of pairwise and threshold rounds, the counts of count rounds.

A result belongs to a round recorded in the audit log, in the mode it was recorded with; a match
points at a sighting the store holds (the foreign keys enforce both).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

from node.store.audit import require_round, watched
from node.store.db import Database, write_many


@dataclass(frozen=True, slots=True)
class MatchRow:
    round_id: str
    kind: str
    value: str
    partners: list[str]  # empty in threshold mode: it names no one
    count: int | None  # nations holding it, in a threshold round that asked for counts
    finished: str | None
    threshold: int | None = None  # threshold mode: held by at least this many (count or not)
    watch: bool = False  # found by a watch round (it runs as pairwise)

    @property
    def mode(self) -> str:
        if self.watch:
            return "watch"
        return "threshold" if self.threshold else "pairwise"

    @property
    def nations(self) -> str:
        """How many hold a threshold match, as much as the round told: the exact count when it
        asked for counts, else at least its threshold."""
        if self.count is not None:
            return f"held by {self.count} nations"
        # Every threshold round has t >= 2 (RoundSpec refuses less), so 2 is a true lower bound
        # for a row whose threshold was never recorded.
        return f"held by at least {self.threshold or 2} nations"


@dataclass(frozen=True, slots=True)
class PartnerCount:
    round_id: str
    partner: str
    count: int
    finished: str | None


class MatchTable(Database):
    """Storing and reading round results."""

    def record_matches(
        self, round_id: str, mode: str, rows: Iterable[tuple[int, list[str], int | None]]
    ) -> int:
        if mode not in ("pairwise", "threshold"):
            raise ValueError(
                f"record_matches takes mode 'pairwise' or 'threshold', not {mode!r}"
                " (count mode results go to record_partner_counts)"
            )

        def params() -> Iterator[tuple[str, int, str, int | None]]:
            for sighting_id, partners, count in rows:
                if mode == "pairwise" and not partners:
                    raise ValueError(
                        f"round {round_id}: pairwise match for sighting {sighting_id} names no partner"
                    )
                yield (round_id, sighting_id, json.dumps(sorted(partners)), count)

        with self._transaction() as conn:
            recorded_mode = require_round(conn, round_id)
            if recorded_mode != mode:
                raise ValueError(
                    f"round {round_id} was recorded in mode {recorded_mode!r}, not {mode!r}"
                )
            try:
                return write_many(
                    conn,
                    "INSERT INTO matches (round_id, sighting_id, partners, count)"
                    " VALUES (?, ?, ?, ?) ON CONFLICT (round_id, sighting_id)"
                    " DO UPDATE SET partners = excluded.partners, count = excluded.count",
                    params(),
                )
            except sqlite3.IntegrityError as exc:
                raise ValueError(
                    f"round {round_id}: a match names a sighting this store does not hold ({exc})"
                ) from None

    def record_partner_counts(self, round_id: str, counts: Mapping[str, int]) -> None:
        with self._transaction() as conn:
            recorded_mode = require_round(conn, round_id)
            if recorded_mode != "count":
                raise ValueError(
                    f"round {round_id} was recorded in mode {recorded_mode!r};"
                    " partner counts belong to a 'count' round"
                )
            for partner, count in counts.items():
                if count < 0:
                    raise ValueError(f"round {round_id}: count for {partner} is negative: {count}")
            conn.executemany(
                "INSERT INTO partner_counts (round_id, partner, count) VALUES (?, ?, ?)"
                " ON CONFLICT (round_id, partner) DO UPDATE SET count = excluded.count",
                [(round_id, partner, count) for partner, count in counts.items()],
            )

    def matches(self, round_id: str | None = None) -> list[MatchRow]:
        return self._matches("?1 IS NULL OR m.round_id = ?1", (round_id,))

    def matches_of(self, sighting_id: int, limit: int) -> list[MatchRow]:
        """The last ``limit`` rounds that found this sighting, newest first (``node explain``)."""
        return self._matches("m.sighting_id = ?1", (sighting_id,), limit)

    def _matches(self, where: str, params: tuple[object, ...], limit: int = -1) -> list[MatchRow]:
        """Match rows, each with its value and its round's end and threshold, newest round first
        (``where`` is fixed SQL from the two callers above, never user input)."""
        with self._reading() as conn:
            rows = conn.execute(
                f"""
                SELECT m.round_id, s.kind, s.value, m.partners, m.count, r.finished, r.threshold,
                       {watched("r")}
                FROM matches m
                JOIN rounds r ON r.round_id = m.round_id
                JOIN sightings s ON s.id = m.sighting_id
                WHERE {where}
                ORDER BY r.started DESC, r.rowid DESC, s.kind, s.value
                LIMIT {int(limit)}
                """,
                params,
            ).fetchall()
        return [
            MatchRow(
                round_id=r,
                kind=k,
                value=v,
                partners=json.loads(p),
                count=c,
                finished=f,
                threshold=t,
                watch=bool(w),
            )
            for r, k, v, p, c, f, t, w in rows
        ]

    def partner_counts(self, round_id: str | None = None) -> list[PartnerCount]:
        with self._reading() as conn:
            rows = conn.execute(
                """
                SELECT p.round_id, p.partner, p.count, r.finished
                FROM partner_counts p JOIN rounds r ON r.round_id = p.round_id
                WHERE ?1 IS NULL OR p.round_id = ?1
                ORDER BY r.started DESC, r.rowid DESC, p.partner
                """,
                (round_id,),
            ).fetchall()
        return [PartnerCount(round_id=r, partner=p, count=c, finished=f) for r, p, c, f in rows]
