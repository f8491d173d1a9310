"""Hash once (issue 12): H(v) is computed when an indicator is stored. What the store keeps is
protocol v2's hash (blindmatch.core.oprf: 65-byte secp256k1 points, oprf.HASH_VERSION); rounds
and checks read it, and hash only what the store lacks. A store of protocol v1's hashes (32-byte
X25519 elements) migrates: they are stale, never handed out."""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import pytest

from blindmatch.core import oprf, round_node
from blindmatch.core.oprf import HASH_VERSION, hash_indicators
from blindmatch.core.round_node import NodeRound
from blindmatch.core.secp256k1 import Point, point_to_bytes
from blindmatch.core.spec import Policy, RoundSpec
from node.cli import fill_hashes
from node.pool import Blinder
from node.rounds import StoredSet
from node.store import MIGRATIONS, Sighting, Store
from node.watch import NodeWatch

HASH_SCHEMA = 7  # the migration that added sightings.hash and sightings.hash_version
V2_HASH_SCHEMA = 8  # the migration after which the store keeps v2's 65-byte hashes
POINT_BYTES = 65  # an uncompressed secp256k1 point
# What a store of hash once under protocol v1 marked its 32-byte hashes with.
V1_HASH_VERSION = hashlib.sha256(
    b"blindmatch-v1-canon-v1-with-curve25519_XMD:SHA-512_ELL2_RO_"
).hexdigest()[:16]


def _spec(chunk_size: int = 4) -> RoundSpec:
    return RoundSpec(
        round_id="r-hash-once",
        participants=("at", "be"),
        mode="pairwise",
        kinds=("domain", "ipv4"),
        chunk_size=chunk_size,
    )


def _domains(n: int, prefix: str = "d") -> list[Sighting]:
    return [Sighting("domain", f"{prefix}{i}.example", f"{prefix}{i}.example") for i in range(n)]


def _old_store(path: Path, values: Sequence[str]) -> None:
    """A store as a blindmatch before hash once wrote it: schema 6, no hash columns."""
    conn = sqlite3.connect(path, isolation_level=None)
    for migration in MIGRATIONS[: HASH_SCHEMA - 1]:
        for statement in migration:
            conn.execute(statement)
    conn.executemany(
        "INSERT INTO sightings (kind, value, raw_first, raw_last, first_seen, last_seen, count,"
        " tlp, sources, tags) VALUES ('domain', ?, ?, ?, '2026-01-01T00:00:00Z',"
        " '2026-01-01T00:00:00Z', 1, 1, '[\"old\"]', '[]')",
        [(v, v, v) for v in values],
    )
    conn.execute(f"PRAGMA user_version = {HASH_SCHEMA - 1}")
    conn.close()


def _stored(store: Store) -> dict[str, bytes | None]:
    return {value: h for _, _, value, h in store.eligible(["domain", "ipv4"], ["green"])}


def test_the_migration_fills_the_hashes_of_an_old_store(tmp_path: Path) -> None:
    values = [f"old{i}.example" for i in range(25)]
    _old_store(tmp_path / "node.db", values)
    with Store.open(tmp_path / "node.db") as store:
        assert set(_stored(store).values()) == {None}  # SQL cannot hash: the node does
        assert store.stale_hashes() == 25
        seen: list[int] = []
        assert store.fill_hashes(chunk=10, progress=seen.append) == 25
        assert seen == [10, 20, 25]
        assert store.stale_hashes() == 0
        expected = dict(zip(values, hash_indicators(("domain", v) for v in values), strict=True))
        assert _stored(store) == expected
        assert store.fill_hashes() == 0  # nothing left: a second start does no work


def test_the_cli_fills_stale_hashes_through_the_pool(tmp_path: Path) -> None:
    _old_store(tmp_path / "node.db", ["a.example", "b.example"])
    with Store.open(tmp_path / "node.db") as store:
        blinder = Blinder(1)
        try:
            fill_hashes(store, blinder)
        finally:
            blinder.close()
        assert _stored(store) == {
            "a.example": hash_indicators([("domain", "a.example")])[0],
            "b.example": hash_indicators([("domain", "b.example")])[0],
        }


def test_a_hash_version_change_recomputes_the_hashes(tmp_path: Path) -> None:
    with Store.open(tmp_path / "node.db") as store:
        store.add_sightings(_domains(6), source="feed", default_tlp="green")
        right = _stored(store)
    conn = sqlite3.connect(tmp_path / "node.db", isolation_level=None)
    conn.execute(
        "UPDATE sightings SET hash = zeroblob(65), hash_version = 'older' WHERE value LIKE 'd1%'"
        " OR value LIKE 'd2%'"
    )
    conn.close()
    with Store.open(tmp_path / "node.db") as store:
        # a hash of another version is never used: readers see none
        assert _stored(store)["d1.example"] is None
        assert store.stored_hashes([("domain", "d2.example")]) == [None]
        assert store.stale_hashes() == 2
        assert store.fill_hashes() == 2
        assert _stored(store) == right
        assert {v for (v,) in store._conn.execute("SELECT hash_version FROM sightings")} == {
            HASH_VERSION
        }


def test_an_import_hashes_new_rows_only_and_known_rows_keep_theirs(tmp_path: Path) -> None:
    asked: list[tuple[str, str]] = []

    def counting(items: Sequence[tuple[str, str]]) -> list[bytes]:
        asked.extend(items)
        return hash_indicators(items)

    with Store.open(tmp_path / "node.db") as store:
        store.add_sightings(_domains(3), source="feed", default_tlp="green", hasher=counting)
        assert sorted(asked) == [("domain", f"d{i}.example") for i in range(3)]
        first = _stored(store)
        asked.clear()
        again = [*_domains(3), Sighting("domain", "new.example", "new.example")]
        result = store.add_sightings(again, source="other", default_tlp="green", hasher=counting)
        assert (result.new, result.known) == (1, 3)
        assert asked == [("domain", "new.example")]
        after = _stored(store)
        assert {v: after[v] for v in first} == first
        assert after["new.example"] == hash_indicators([("domain", "new.example")])[0]
        # a batch that fails stores no hash either: the transaction holds both
        asked.clear()
        with pytest.raises(ValueError, match="empty kind or value"):
            store.add_sightings(
                [Sighting("domain", "gone.example", "x"), Sighting("domain", "", "x")],
                source="feed",
                default_tlp="green",
                hasher=counting,
            )
        assert store.lookup("domain", "gone.example") is None


def test_what_is_stored_is_the_v2_hash(tmp_path: Path) -> None:
    with Store.open(tmp_path / "node.db") as store:
        store.add_sightings(_domains(5), source="feed", default_tlp="green")
        stored = _stored(store)
        assert stored == dict(
            zip(
                [f"d{i}.example" for i in range(5)],
                hash_indicators(("domain", f"d{i}.example") for i in range(5)),
                strict=True,
            )
        )
        assert {len(h) for h in stored.values() if h is not None} == {POINT_BYTES}
        assert HASH_VERSION != V1_HASH_VERSION
        assert {v for (v,) in store._conn.execute("SELECT hash_version FROM sightings")} == {
            HASH_VERSION
        }
        # v1's 32-byte elements no longer fit the column
        with pytest.raises(sqlite3.IntegrityError, match="CHECK"):
            store._conn.execute("UPDATE sightings SET hash = zeroblob(32)")


def test_a_store_of_v1_hashes_migrates_to_v2(tmp_path: Path) -> None:
    """A store written when hash once kept v1's hashes (schema 7): they are stale, then refilled."""
    path = tmp_path / "node.db"
    values = [f"v1-{i}.example" for i in range(12)]
    _old_store(path, values)
    conn = sqlite3.connect(path, isolation_level=None)
    for statement in MIGRATIONS[HASH_SCHEMA - 1]:
        conn.execute(statement)
    conn.executemany(
        "UPDATE sightings SET hash = ?, hash_version = ? WHERE value = ?",
        [(hashlib.sha256(v.encode()).digest(), V1_HASH_VERSION, v) for v in values],
    )
    conn.execute(f"PRAGMA user_version = {V2_HASH_SCHEMA - 1}")
    conn.close()
    with Store.open(path) as store:
        assert store._conn.execute("PRAGMA user_version").fetchone()[0] >= V2_HASH_SCHEMA
        assert set(_stored(store).values()) == {None}  # a v1 element is never handed out
        assert store.stored_hashes([("domain", values[0])]) == [None]
        assert store.stale_hashes() == len(values)
        assert store.fill_hashes(chunk=5) == len(values)
        assert store.stale_hashes() == 0
        assert _stored(store) == dict(
            zip(values, hash_indicators(("domain", v) for v in values), strict=True)
        )


def test_the_pool_hashes_as_oprf_does() -> None:
    items = [("domain", f"p{i}.example") for i in range(9)]
    blinder = Blinder(2)
    try:
        assert blinder.hash_all(items[:3]) == hash_indicators(items[:3])  # cold: in process
        blinder.warm_up()  # warm workers: even a small batch goes through them
        assert blinder.hash_all(items) == hash_indicators(items)
        assert blinder.hash_all([]) == []
    finally:
        blinder.close()


def test_a_v2_round_evaluates_the_stored_hashes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Store.open(tmp_path / "node.db") as store:
        store.add_sightings(_domains(30), source="feed", default_tlp="green")
        node = NodeRound(_spec(), "at", Policy(), StoredSet(store, ("green",)))
        hashed: list[tuple[str, str]] = []
        real = oprf.hash_indicator

        def counting(kind: str, value: str) -> Point:
            hashed.append((kind, value))
            return real(kind, value)

        monkeypatch.setattr(round_node, "hash_indicator", counting)
        chunks = list(node.own_points())
        rows = [(c[1], c[2]) for c in store.rows_by_id(node.sighting_ids())]
        assert [point_to_bytes(p) for chunk in chunks for p in chunk] == oprf.hash_indicators(rows)
        assert hashed == []  # every point came from the store, none was hashed again
        node.abort("test over")


def test_a_chunk_with_a_missing_hash_is_hashed_on_the_fly(tmp_path: Path) -> None:
    _old_store(tmp_path / "node.db", [f"o{i}.example" for i in range(5)])
    with Store.open(tmp_path / "node.db") as store:
        store.add_sightings(_domains(3), source="feed", default_tlp="green")
        candidates = store.eligible(["domain"], ["green"])
        node = NodeRound(_spec(chunk_size=100), "at", Policy(), StoredSet(store, ("green",)))
        rows = store.rows_by_id(node.sighting_ids())
        (points,) = node.own_points()
        # the old rows' hashes are stale: the chunk is hashed here, to the same points
        assert [point_to_bytes(p) for p in points] == oprf.hash_indicators(
            (c[1], c[2]) for c in rows
        )
        assert sorted(c[:3] for c in rows) == sorted(c[:3] for c in candidates)
        assert len(rows) == 8
        node.abort("test over")


def test_a_check_reads_the_stored_hashes_and_hashes_only_the_values_the_store_lacks(
    tmp_path: Path,
) -> None:
    with Store.open(tmp_path / "node.db") as store:
        store.add_sightings(_domains(4), source="feed", default_tlp="green")
        items = [("domain", "d2.example"), ("domain", "unknown.example"), ("domain", "d0.example")]
        watch = cast(NodeWatch, SimpleNamespace(store=store))
        got = [point_to_bytes(p) for p in NodeWatch._hashes(watch, items)]
        assert got == oprf.hash_indicators(items)
    # proof that the stored hash is the one read: one made wrong on disk comes back as stored
    other = oprf.hash_indicators([("domain", "elsewhere.example")])[0]
    with sqlite3.connect(tmp_path / "node.db") as conn:
        conn.execute("UPDATE sightings SET hash = ? WHERE value = 'd2.example'", (other,))
    with Store.open(tmp_path / "node.db") as store:
        watch = cast(NodeWatch, SimpleNamespace(store=store))
        assert point_to_bytes(NodeWatch._hashes(watch, items)[0]) == other
