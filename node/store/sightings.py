"""Sightings: the indicators a node holds, merged per (kind, value), with their TLP.

Rules:
- A sighting is keyed by (kind, canonical value). Re-importing never duplicates: counts add,
  first_seen takes the minimum, last_seen the maximum, sources and tags are unions, and the TLP
  becomes the more restrictive of the two (clear < green < amber < amber+strict < red).
- A batch of sightings is stored in one transaction: all of it or none of it, also when the
  process is killed midway (SQLite's journal guarantees that, the tests check it).
- Hash once: each indicator's H(v), protocol v2's (blindmatch.core.oprf.hash_indicators, a
  65-byte secp256k1 point), is computed when it is first stored, in the same transaction, and kept
  with the hash version it was computed under (blindmatch.core.oprf.HASH_VERSION). Rounds and
  checks read it and only blind. A row whose hash is missing (a store from before schema 7, or
  schema 8 dropped v1's hashes) or of another version is stale: ``fill_hashes`` recomputes those,
  and readers treat a stale hash as absent (None).
- Seen again (issue 19): every import or pull of an indicator sets its ``seen_at`` to now. With a
  ``max_age`` (node.toml ``[policy] max_age``, given to the store by ``set_max_age``), an
  indicator not seen within it has expired: it stays stored, but ``eligible``/``eligible_ids``
  (every round's and so every watch epoch's set) leave it out, and ``stats`` counts it.
- Taken out: ``forget`` deletes indicators with everything derived from them (their matches,
  pushes, source ids and alerts, and the stored hash with the row), and audits it.
"""

from __future__ import annotations

import collections
import itertools
import json
import sqlite3
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Final

import numpy as np
import numpy.typing as npt

from blindmatch.core.oprf import HASH_VERSION, hash_indicators
from blindmatch.core.states import Outcome
from node.store.connectors import save_cursor, save_source_refs
from node.store.db import Database
from node.store.schema import StoreError, normalize_time, utc_now, utc_text
from node.store.tlp import TLP_LEVELS, tlp_rank

HASH_CHUNK: Final = 20_000  # rows hashed per step, at import and when filling stale hashes
_HASHING_AHEAD: Final = 2  # chunks an import may upsert ahead of their hashing

# H(v) of each (kind, canonical value), in order: oprf.hash_indicators in this process, or the
# node's blinding pool (node.pool.Blinder.hash_all) to use every core.
Hasher = Callable[[Sequence[tuple[str, str]]], list[bytes]]
# (sighting id, kind, value, H(v) or None when the stored hash is missing or stale)
EligibleRow = tuple[int, str, str, bytes | None]


@dataclass(frozen=True, slots=True)
class Sighting:
    """One observation of an indicator, as an importer hands it to the store."""

    kind: str  # one of blindmatch.core.canon.KINDS
    value: str  # canonical form (blindmatch.core.canon.canonicalize)
    raw: str  # the value exactly as it appeared in the source
    first_seen: str | None = None  # ISO 8601 UTC, "2026-11-26T23:00:00Z"
    last_seen: str | None = None
    count: int = 1  # sightings this record stands for (STIX sighting objects raise it)
    # clear | green | amber | amber+strict | red; None = the import's default
    tlp: str | None = None
    tags: tuple[str, ...] = ()
    stix_id: str | None = None  # the STIX indicator it came from (node/store/connectors.py)
    misp_uuid: str | None = None  # the MISP attribute it came from (node/store/connectors.py)


@dataclass(frozen=True, slots=True)
class AddResult:
    """What one batch did: ``new`` indicators stored, ``known`` sightings merged into existing ones."""

    new: int
    known: int
    new_per_kind: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class StoredSighting:
    """An indicator as the store holds it, all its sightings merged."""

    sighting_id: int
    kind: str
    value: str
    raw_first: str  # the raw value as first imported
    raw_last: str  # ... and as most recently imported
    first_seen: str
    last_seen: str
    count: int
    tlp: str
    sources: list[str]
    tags: list[str]
    seen_at: str = ""  # when this node last imported or pulled it ([policy] max_age)


@dataclass(frozen=True, slots=True)
class Forget:
    """What ``node forget`` takes out: indicators by value, by source, not seen since a time.

    A source's indicators that another source also reported stay, without that source.
    """

    values: tuple[tuple[str, str], ...] = ()  # (kind, canonical value)
    source: str | None = None
    before: str | None = None  # ISO 8601 UTC: indicators not imported or pulled since


@dataclass(frozen=True, slots=True)
class ForgetResult:
    """What ``forget`` deleted (or, dry, would delete)."""

    deleted: dict[str, int]  # kind -> indicators deleted
    kept_without_source: int  # the source's indicators another source also reported
    not_found: int  # values asked for that the store does not hold
    matches: int
    pushed: int
    source_refs: int
    alerts: int

    @property
    def indicators(self) -> int:
        return sum(self.deleted.values())


@dataclass(frozen=True, slots=True)
class Stats:
    sightings: int
    per_kind: dict[str, int]
    per_tlp: dict[str, int]
    sources: dict[str, int]  # source -> indicators it contributed
    imports: int
    rounds_recorded: int
    rounds_joined: int  # rounds that ended 'done'
    last_import: str | None
    expired: int = 0  # stored, but not seen within max_age: in no round
    max_age: float | None = None  # seconds ([policy] max_age); None = nothing expires


# --- the sightings table --------------------------------------------------------------------------


def _json_union(old: str, new: str) -> str:
    """SQL for the sorted union of two JSON arrays of strings."""
    return (
        f"CASE WHEN {new} = '[]' OR {new} = {old} THEN {old} ELSE ("
        f"SELECT json_group_array(value) FROM ("
        f"SELECT value FROM json_each({old}) UNION SELECT value FROM json_each({new}) "
        f"ORDER BY value)) END"
    )


_UPSERT_SIGHTING: Final = f"""
    INSERT INTO sightings
        (kind, value, raw_first, raw_last, first_seen, last_seen, count, tlp, sources, tags,
         seen_at)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
    ON CONFLICT (kind, value) DO UPDATE SET
        seen_at = excluded.seen_at,
        raw_last = excluded.raw_last,
        first_seen = min(sightings.first_seen, excluded.first_seen),
        last_seen = max(sightings.last_seen, excluded.last_seen),
        count = sightings.count + excluded.count,
        tlp = max(sightings.tlp, excluded.tlp),
        sources = {_json_union("sightings.sources", "excluded.sources")},
        tags = {_json_union("sightings.tags", "excluded.tags")}
"""


class SightingsTable(Database):
    """Storing, finding and selecting sightings; the store's summary counts."""

    max_age: float | None = None  # seconds; set_max_age

    def set_max_age(self, seconds: float | None) -> None:
        if seconds is not None and seconds <= 0:
            raise ValueError(f"max_age must be more than 0 seconds, got {seconds}")
        self.max_age = seconds

    def is_expired(self, seen_at: str) -> bool:
        """Whether an indicator last seen at ``seen_at`` is out of rounds ([policy] max_age): the
        rule the round queries apply, for ``node explain``."""
        since = self._seen_since()
        return since is not None and seen_at < since

    def _seen_since(self) -> str | None:
        """The oldest seen_at still in rounds, or None when nothing expires."""
        if self.max_age is None:
            return None
        return utc_text(time.time() - self.max_age)

    def add_sightings(
        self,
        sightings: Iterable[Sighting],
        *,
        source: str,
        default_tlp: str,
        cursor: tuple[str, str] | None = None,
        hasher: Hasher = hash_indicators,
    ) -> AddResult:
        if not source or not source.strip():
            raise ValueError("source must name where the sightings come from, e.g. 'misp-feed'")
        default_rank = tlp_rank(default_tlp)
        now = utc_now()
        sources_json = json.dumps([source])
        seen = 0
        refs: list[tuple[str, str, str, str]] = []  # (scheme, ref, kind, value), after the upsert

        def rows() -> Iterator[tuple[str, str, str, str, str, str, int, int, str, str, str]]:
            nonlocal seen
            rank_of: dict[str, int] = {}  # the same few TLP spellings recur; normalise each once
            for index, s in enumerate(sightings):
                if not s.kind or not s.value:
                    raise ValueError(f"sighting #{index} has an empty kind or value: {s!r}")
                if s.count < 1:
                    raise ValueError(f"sighting #{index} has count {s.count}; it must be >= 1")
                if s.tlp is None:
                    rank = default_rank
                else:
                    cached = rank_of.get(s.tlp)
                    if cached is None:
                        try:
                            cached = rank_of[s.tlp] = tlp_rank(s.tlp)
                        except ValueError as exc:
                            raise ValueError(f"sighting #{index} ({s.value!r}): {exc}") from None
                    rank = cached
                first = now if s.first_seen is None else normalize_time(s.first_seen, "first_seen")
                last = now if s.last_seen is None else normalize_time(s.last_seen, "last_seen")
                if s.first_seen is None and s.last_seen is not None:
                    first = last
                elif s.last_seen is None and s.first_seen is not None:
                    last = first
                if first > last:
                    first, last = last, first
                tags = json.dumps(sorted(set(s.tags))) if s.tags else "[]"
                if s.stix_id is not None:
                    refs.append(("stix", s.stix_id, s.kind, s.value))
                if s.misp_uuid is not None:
                    refs.append(("misp", s.misp_uuid, s.kind, s.value))
                seen += 1
                yield (
                    s.kind,
                    s.value,
                    s.raw,
                    s.raw,
                    first,
                    last,
                    s.count,
                    rank,
                    sources_json,
                    tags,
                    now,
                )

        with self._transaction() as conn:
            before = _count_per_kind(conn)
            # Rowids only grow, so the rows this batch creates are those above the largest now.
            top: int = conn.execute("SELECT coalesce(max(id), 0) FROM sightings").fetchone()[0]
            _upsert_and_hash(conn, rows(), hasher, above=top)
            after = _count_per_kind(conn)
            save_source_refs(conn, refs)
            if cursor is not None:
                save_cursor(conn, *cursor)
        per_kind = {k: n - before.get(k, 0) for k, n in after.items() if n > before.get(k, 0)}
        new = sum(per_kind.values())
        return AddResult(new=new, known=seen - new, new_per_kind=per_kind)

    def lookup(self, kind: str, value: str) -> StoredSighting | None:
        with self._reading() as conn:
            row = conn.execute(
                "SELECT id, kind, value, raw_first, raw_last, first_seen, last_seen, count, tlp,"
                " sources, tags, seen_at FROM sightings WHERE kind = ? AND value = ?",
                (kind, value),
            ).fetchone()
        if row is None:
            return None
        (
            sid,
            kind,
            value,
            raw_first,
            raw_last,
            first_seen,
            last_seen,
            count,
            tlp,
            sources,
            tags,
        ) = row[:11]
        return StoredSighting(
            sighting_id=sid,
            kind=kind,
            value=value,
            raw_first=raw_first,
            raw_last=raw_last,
            first_seen=first_seen,
            last_seen=last_seen,
            count=count,
            tlp=TLP_LEVELS[tlp],
            sources=json.loads(sources),
            tags=json.loads(tags),
            seen_at=row[11],
        )

    def stored_hashes(self, items: Sequence[tuple[str, str]]) -> list[bytes | None]:
        with self._reading() as conn:
            found = [
                conn.execute(
                    "SELECT hash FROM sightings WHERE kind = ? AND value = ? AND hash_version = ?",
                    (kind, value, HASH_VERSION),
                ).fetchone()
                for kind, value in items
            ]
        return [None if row is None else row[0] for row in found]

    def stale_hashes(self) -> int:
        with self._reading() as conn:
            n: int = conn.execute(
                f"SELECT count(*) FROM sightings WHERE {_STALE}", (HASH_VERSION,)
            ).fetchone()[0]
        return n

    def fill_hashes(
        self,
        hasher: Hasher = hash_indicators,
        *,
        chunk: int = HASH_CHUNK,
        progress: Callable[[int], None] | None = None,
    ) -> int:
        done = after = 0
        while True:
            with self._reading() as conn:
                rows = conn.execute(
                    f"SELECT id, kind, value FROM sightings WHERE id > ? AND {_STALE}"
                    " ORDER BY id LIMIT ?",
                    (after, HASH_VERSION, chunk),
                ).fetchall()
            if not rows:
                return done
            # Hashed outside the lock: the node's rounds and imports go on meanwhile.
            hashes = hasher([(kind, value) for _, kind, value in rows])
            with self._transaction() as conn:
                conn.executemany(
                    "UPDATE sightings SET hash = ?, hash_version = ? WHERE id = ?",
                    [(h, HASH_VERSION, sid) for h, (sid, _, _) in zip(hashes, rows, strict=True)],
                )
            done += len(rows)
            after = rows[-1][0]
            if progress is not None:
                progress(done)

    def eligible(self, kinds: Collection[str], tlps: Collection[str]) -> list[EligibleRow]:
        query = _EligibleQuery.build(kinds, tlps, self._seen_since())
        if query is None:
            return []
        with self._reading() as conn:
            return query.rows(conn)

    def eligible_ids(self, kinds: Collection[str], tlps: Collection[str]) -> npt.NDArray[np.int64]:
        query = _EligibleQuery.build(kinds, tlps, self._seen_since())
        if query is None:
            return np.empty(0, dtype=np.int64)
        with self._reading() as conn:
            return query.ids(conn)

    def rows_by_id(self, ids: Sequence[int] | npt.NDArray[np.int64]) -> list[EligibleRow]:
        if not len(ids):
            return []
        wanted = json.dumps(ids.tolist() if isinstance(ids, np.ndarray) else [int(i) for i in ids])
        with self._reading() as conn:
            rows: list[EligibleRow] = conn.execute(
                "SELECT s.id, s.kind, s.value, CASE WHEN s.hash_version = ? THEN s.hash END"
                " FROM json_each(?) j JOIN sightings s ON s.id = j.value ORDER BY j.key",
                (HASH_VERSION, wanted),
            ).fetchall()
        if len(rows) != len(ids):
            # Only `node forget` deletes sightings; a round's set was fixed before it ran.
            found = {r[0] for r in rows}
            missing = [int(sid) for sid in ids if int(sid) not in found]
            raise StoreError(
                f"store {self.path}: sighting ids {missing[:5]} are gone ({len(missing)} in all);"
                " were they forgotten (node forget) while the round ran?"
            )
        return rows

    def stats(self) -> Stats:
        with self._reading() as conn:
            total = _count_sightings(conn)
            per_kind = dict(
                conn.execute("SELECT kind, count(*) FROM sightings GROUP BY kind ORDER BY kind")
            )
            per_tlp = {
                TLP_LEVELS[rank]: n
                for rank, n in conn.execute(
                    "SELECT tlp, count(*) FROM sightings GROUP BY tlp ORDER BY tlp"
                )
            }
            sources = dict(
                conn.execute(
                    "SELECT j.value, count(*) FROM sightings, json_each(sightings.sources) j"
                    " GROUP BY j.value ORDER BY j.value"
                )
            )
            imports, last_import = conn.execute(
                "SELECT count(*), max(imported_at) FROM imports"
            ).fetchone()
            recorded, joined = conn.execute(
                "SELECT count(*), count(*) FILTER (WHERE outcome = ?) FROM rounds", (Outcome.DONE,)
            ).fetchone()
            since = self._seen_since()
            expired = 0
            if since is not None:
                expired = conn.execute(
                    "SELECT count(*) FROM sightings WHERE seen_at < ?", (since,)
                ).fetchone()[0]
        return Stats(
            sightings=total,
            per_kind=per_kind,
            per_tlp=per_tlp,
            sources=sources,
            imports=imports,
            rounds_recorded=recorded,
            rounds_joined=joined,
            last_import=last_import,
            expired=expired,
            max_age=self.max_age,
        )

    def forget(self, what: Forget, *, who: str, how: str, dry_run: bool = False) -> ForgetResult:
        try:
            with self._transaction() as conn:
                result = _forget(conn, what)
                if dry_run:
                    raise _DryRun(result)
                conn.execute(
                    "INSERT INTO forgets (time, who, how, summary) VALUES (?, ?, ?, ?)",
                    (utc_now(), who, how, json.dumps(asdict(result), sort_keys=True)),
                )
        except _DryRun as dry:  # rolled back: nothing was deleted
            return dry.result
        return result


class _DryRun(Exception):
    def __init__(self, result: ForgetResult) -> None:
        super().__init__("dry run")
        self.result = result


def _forget(conn: sqlite3.Connection, what: Forget) -> ForgetResult:
    """Delete what ``what`` selects, in the caller's transaction, and count it."""
    conn.execute("CREATE TEMP TABLE IF NOT EXISTS forget_ids (id INTEGER PRIMARY KEY)")
    conn.execute("DELETE FROM forget_ids")
    found = 0
    for kind, value in what.values:
        found += conn.execute(
            "INSERT OR IGNORE INTO forget_ids SELECT id FROM sightings WHERE kind = ? AND value = ?",
            (kind, value),
        ).rowcount
    kept = 0
    if what.source is not None:
        # Only the source's own indicators go; one another source also reported is still a
        # sighting, and only loses the source's name.
        conn.execute(
            "INSERT OR IGNORE INTO forget_ids SELECT id FROM sightings"
            " WHERE json_array_length(sources) = 1 AND json_extract(sources, '$[0]') = ?",
            (what.source,),
        )
        kept = conn.execute(
            "UPDATE sightings SET sources = (SELECT json_group_array(value) FROM"
            " (SELECT value FROM json_each(sightings.sources) WHERE value != ?1 ORDER BY value))"
            " WHERE id NOT IN (SELECT id FROM forget_ids)"
            " AND EXISTS (SELECT 1 FROM json_each(sightings.sources) WHERE value = ?1)",
            (what.source,),
        ).rowcount
    if what.before is not None:
        conn.execute(
            "INSERT OR IGNORE INTO forget_ids SELECT id FROM sightings WHERE seen_at < ?",
            (normalize_time(what.before, "before"),),
        )
    chosen = "(SELECT id FROM forget_ids)"
    deleted = dict(
        conn.execute(
            f"SELECT kind, count(*) FROM sightings WHERE id IN {chosen} GROUP BY kind ORDER BY kind"
        ).fetchall()
    )
    alerts = conn.execute(
        "DELETE FROM alerts WHERE (kind, value) IN"
        f" (SELECT kind, value FROM sightings WHERE id IN {chosen})"
    ).rowcount
    counts = {
        table: conn.execute(f"DELETE FROM {table} WHERE sighting_id IN {chosen}").rowcount
        for table in ("pushed", "matches", "source_refs")
    }
    conn.execute(f"DELETE FROM sightings WHERE id IN {chosen}")
    return ForgetResult(
        deleted=deleted,
        kept_without_source=kept,
        not_found=len(what.values) - found,
        matches=counts["matches"],
        pushed=counts["pushed"],
        source_refs=counts["source_refs"],
        alerts=alerts,
    )


def _count_per_kind(conn: sqlite3.Connection) -> dict[str, int]:
    return dict(conn.execute("SELECT kind, count(*) FROM sightings GROUP BY kind").fetchall())


_STALE: Final = "(hash IS NULL OR hash_version IS NOT ?)"


def _upsert_and_hash(
    conn: sqlite3.Connection, rows: Iterator[tuple[object, ...]], hasher: Hasher, *, above: int
) -> None:
    """Upsert ``rows`` and store H(v) of the rows they create, in the caller's transaction.

    Hashing (in the blinding pool, whose workers do the work while a thread waits on them)
    runs beside the upserts of the next chunks, so an import keeps every core busy. Only rows
    the batch creates, those with an id above ``above``, are hashed: merged rows keep theirs.
    At most ``_HASHING_AHEAD`` chunks are in flight, so memory does not grow with the batch.
    """
    pending: collections.deque[tuple[list[int], Future[list[bytes]]]] = collections.deque()

    def store(ids: list[int], hashes: list[bytes]) -> None:
        conn.executemany(
            "UPDATE sightings SET hash = ?, hash_version = ? WHERE id = ?",
            [(h, HASH_VERSION, sid) for h, sid in zip(hashes, ids, strict=True)],
        )

    with ThreadPoolExecutor(1, thread_name_prefix="import-hashing") as hashing:
        try:
            while chunk := list(itertools.islice(rows, HASH_CHUNK)):
                conn.executemany(_UPSERT_SIGHTING, chunk)
                # Rowids only grow, so the rows this chunk created are those above the last seen.
                new = conn.execute(
                    "SELECT id, kind, value FROM sightings WHERE id > ? ORDER BY id", (above,)
                ).fetchall()
                if new:
                    above = new[-1][0]
                    items = [(kind, value) for _, kind, value in new]
                    pending.append(([sid for sid, _, _ in new], hashing.submit(hasher, items)))
                while pending and (len(pending) > _HASHING_AHEAD or pending[0][1].done()):
                    ids, future = pending.popleft()
                    store(ids, future.result())
            while pending:
                ids, future = pending.popleft()
                store(ids, future.result())
        finally:
            for _, future in pending:
                future.cancel()


def _count_sightings(conn: sqlite3.Connection) -> int:
    count: int = conn.execute("SELECT count(*) FROM sightings").fetchone()[0]
    return count


@dataclass(frozen=True, slots=True)
class _EligibleQuery:
    where: str  # FROM ... WHERE ...: the indicators of some kinds at some TLP levels
    params: tuple[object, ...]
    kinds: tuple[str, ...]

    @classmethod
    def build(
        cls, kinds: Collection[str], tlps: Collection[str], seen_since: str | None = None
    ) -> _EligibleQuery | None:
        """The selection for these kinds and TLP levels, seen at or after ``seen_since`` if
        given, or None if nothing can match."""
        ranks = sorted({tlp_rank(t) for t in tlps})
        kind_list = tuple(sorted(set(kinds)))
        if not ranks or not kind_list:
            return None
        where = (
            # NOT INDEXED: walking the (kind, value) index then sorting by id is ~4x slower.
            " FROM sightings NOT INDEXED"
            f" WHERE kind IN ({', '.join('?' * len(kind_list))})"
            f" AND tlp IN ({', '.join('?' * len(ranks))})"
            + ("" if seen_since is None else " AND seen_at >= ?")
            + " ORDER BY id"
        )
        since = () if seen_since is None else (seen_since,)
        return cls(where, (*kind_list, *ranks, *since), kind_list)

    def ids(self, conn: sqlite3.Connection) -> npt.NDArray[np.int64]:
        # 8 bytes per row, not a Python int: a national store has millions of them
        rows = conn.execute("SELECT id" + self.where, self.params)
        return np.fromiter((sid for (sid,) in rows), dtype=np.int64)

    def rows(self, conn: sqlite3.Connection) -> list[EligibleRow]:
        # SQLite hands back a new str per row; one shared object per kind saves ~50 MB per
        # million rows.
        shared = {k: k for k in self.kinds}
        sql = "SELECT id, kind, value, CASE WHEN hash_version = ? THEN hash END" + self.where
        return [
            (sid, shared[kind], value, h)
            for sid, kind, value, h in conn.execute(sql, (HASH_VERSION, *self.params))
        ]
