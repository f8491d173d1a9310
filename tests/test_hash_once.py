"""Hash once (issue 12): H(v) is computed when an indicator is stored, and rounds and checks blind
the stored hash; tags are the bytes hashing on the fly gives."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from concurrent.futures import Future
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import pytest

from blindmatch.core.group import (
    HASH_VERSION,
    RoundKey,
    blind_packed,
    hash_and_blind_packed,
    hash_indicators,
)
from blindmatch.core.round_node import NodeRound
from blindmatch.core.spec import Policy, RoundSpec
from node.cli import fill_hashes
from node.pool import Blinder
from node.rounds import StoredSet
from node.store import MIGRATIONS, Sighting, Store
from node.watch import NodeWatch

HASH_SCHEMA = 7  # the migration that added sightings.hash and sightings.hash_version


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
        "UPDATE sightings SET hash = zeroblob(32), hash_version = 'older' WHERE value LIKE 'd1%'"
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


def test_the_pool_hashes_as_group_does() -> None:
    items = [("domain", f"p{i}.example") for i in range(9)]
    blinder = Blinder(2)
    try:
        blinder.warm_up()  # warm workers: even a small batch goes through them
        assert blinder.hash_all(items) == hash_indicators(items)
        assert blinder.hash_all([]) == []
    finally:
        blinder.close()


def test_round_tags_from_stored_hashes_equal_hashing_on_the_fly(tmp_path: Path) -> None:
    with Store.open(tmp_path / "node.db") as store:
        store.add_sightings(_domains(30), source="feed", default_tlp="green")
        store.add_sightings(
            [Sighting("ipv4", f"192.0.2.{i}", "x") for i in range(7)],
            source="feed",
            default_tlp="green",
        )
        for _ in range(3):  # several keys: each may or may not take the cofactor shortcut
            node = NodeRound(_spec(), "at", Policy(), StoredSet(store, ("green",)))
            key = node.live_key().export()
            hashed = list(node.own_hashed())
            assert [b.items for b in hashed] == list(node.own_batches())
            for batch in hashed:
                assert batch.hashes is not None
                assert blind_packed(key, batch.hashes) == hash_and_blind_packed(key, batch.items)
            node.abort("test over")


def test_a_chunk_with_a_missing_hash_is_hashed_on_the_fly(tmp_path: Path) -> None:
    _old_store(tmp_path / "node.db", [f"o{i}.example" for i in range(5)])
    with Store.open(tmp_path / "node.db") as store:
        store.add_sightings(_domains(3), source="feed", default_tlp="green")
        candidates = store.eligible(["domain"], ["green"])
        node = NodeRound(_spec(chunk_size=100), "at", Policy(), StoredSet(store, ("green",)))
        (batch,) = node.own_hashed()
        assert batch.hashes is None and len(batch.items) == 8
        # the position map keeps its (sighting id, kind, value) form
        node.begin_routing({"at": 8, "be": 1})
        assert sorted(node.position_map()) == sorted(c[:3] for c in candidates)
        node.abort("test over")


class _InlineBlinder:
    workers = 2

    def __init__(self) -> None:
        self.hashed: list[tuple[str, str]] = []

    def blind(self, key: bytes, packed: bytes) -> Future[bytes]:
        done: Future[bytes] = Future()
        done.set_result(blind_packed(key, packed))
        return done

    def hash_all(self, items: Sequence[tuple[str, str]]) -> list[bytes]:
        self.hashed.extend(items)
        return hash_indicators(items)


def test_a_check_blinds_stored_hashes_and_hashes_only_unknown_values(tmp_path: Path) -> None:
    with Store.open(tmp_path / "node.db") as store:
        store.add_sightings(_domains(4), source="feed", default_tlp="green")
        blinder = _InlineBlinder()
        watch = SimpleNamespace(store=store, blinder=blinder)
        watch._blind = lambda key, packed: NodeWatch._blind(cast(NodeWatch, watch), key, packed)
        items = [("domain", "d2.example"), ("domain", "unknown.example"), ("domain", "d0.example")]
        key = RoundKey.generate().export()
        got = NodeWatch._hash_and_blind(cast(NodeWatch, watch), key, items)
        assert got == hash_and_blind_packed(key, items)
        assert blinder.hashed == [("domain", "unknown.example")]
