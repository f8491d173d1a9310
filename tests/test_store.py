"""The node store's suite: every ``NodeStore`` implementation passes it, on real files under tmp_path.

The ``store`` fixture runs the contract over each entry of ``IMPLEMENTATIONS``. SQLite is the
one implementation; it runs the suite both as a new file and as a file written before early
warning existed (schema 1) and upgraded on open, since an upgraded store must behave like a new
one. The last section is what only the SQLite file promises: its schema and migrations, its
file modes, several handles on one file, a kill -9 mid-import.
"""

from __future__ import annotations

import inspect
import os
import signal
import sqlite3
import stat
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from node.store import (
    SCHEMA_VERSION,
    TLP_LEVELS,
    AddResult,
    CheckAudit,
    ImportAudit,
    NodeStore,
    Overdraft,
    RoundAudit,
    Sighting,
    Store,
    StoreError,
    normalize_tlp,
)
from node.store import schema as schema_module


def _upgraded_from_schema_1(path: Path) -> NodeStore:
    """A store file as blindmatch left it before early warning (schema 1), opened by this one."""
    conn = sqlite3.connect(path)
    try:
        for statement in schema_module.MIGRATIONS[0]:
            conn.execute(statement)
        conn.execute("PRAGMA user_version = 1")
        conn.commit()
    finally:
        conn.close()
    return Store.open(path)


# Every way to get a store that must pass the contract, given a path to a file not yet there.
IMPLEMENTATIONS: dict[str, Callable[[Path], NodeStore]] = {
    "sqlite": Store.open,
    "sqlite-upgraded-from-schema-1": _upgraded_from_schema_1,
}


@pytest.fixture(params=sorted(IMPLEMENTATIONS))
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[NodeStore]:
    with IMPLEMENTATIONS[request.param](tmp_path / "node.sqlite") as s:
        yield s


def domains(n: int, prefix: str = "d") -> list[Sighting]:
    return [Sighting("domain", f"{prefix}{i}.example", f"{prefix}{i}.EXAMPLE") for i in range(n)]


def record_round(store: NodeStore, round_id: str, *, mode: str = "pairwise", started: str) -> None:
    store.record_round(
        round_id,
        started=started,
        coordinator="coord.eu",
        participants=["fr", "de", "it"],
        mode=mode,
        threshold=2 if mode == "threshold" else None,
        kinds=["domain", "ipv4"],
        own_size=10,
        blinded_for={},
        outcome="started",
        reason=None,
        finished=None,
    )


# --- TLP ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("clear", "clear"),
        ("TLP:CLEAR", "clear"),
        ("white", "clear"),
        ("TLP:WHITE", "clear"),
        ("Green", "green"),
        ("TLP:AMBER", "amber"),
        ("tlp:amber+strict", "amber+strict"),
        ("AMBER+STRICT", "amber+strict"),
        (" red ", "red"),
    ],
)
def test_normalize_tlp_accepts_tlp_1_and_2_spellings(text: str, expected: str) -> None:
    assert normalize_tlp(text) == expected


@pytest.mark.parametrize("text", ["", "amber-strict", "TLP:PURPLE", "tlp", "secret"])
def test_normalize_tlp_rejects_unknown_levels_naming_the_valid_ones(text: str) -> None:
    with pytest.raises(ValueError, match=r"unknown TLP level .*clear, green, amber"):
        normalize_tlp(text)


def test_tlp_levels_order_from_least_to_most_restrictive() -> None:
    assert TLP_LEVELS == ("clear", "green", "amber", "amber+strict", "red")


# --- every store: lifecycle and integrity ---------------------------------------------------------


def test_a_closed_store_says_so(store: NodeStore) -> None:
    store.close()
    store.close()  # idempotent
    with pytest.raises(StoreError, match="is closed"):
        store.stats()


def test_foreign_keys_are_enforced(store: NodeStore) -> None:
    record_round(store, "r1", started="2026-01-01T00:00:00Z")
    with pytest.raises(ValueError, match="does not hold"):
        store.record_matches("r1", "pairwise", [(12345, ["de"], None)])


# --- every store: sightings -----------------------------------------------------------------------


def test_reimport_merges_counts_dates_sources_tags_and_keeps_the_stricter_tlp(
    store: NodeStore,
) -> None:
    first = Sighting(
        "ipv4",
        "198.51.100.7",
        raw="198.51.100[.]7",
        first_seen="2026-03-01T00:00:00Z",
        last_seen="2026-03-05T00:00:00Z",
        count=2,
        tlp="TLP:AMBER",
        tags=("c2", "apt"),
    )
    second = Sighting(
        "ipv4",
        "198.51.100.7",
        raw="198.51.100.007",
        first_seen="2026-02-01T00:00:00Z",
        last_seen="2026-03-02T00:00:00Z",
        count=3,
        tlp="green",
        tags=("c2", "botnet"),
    )
    third = Sighting(
        "ipv4",
        "198.51.100.7",
        raw="198.51.100.7",
        first_seen="2026-04-01T00:00:00+02:00",
        last_seen="2026-04-10T12:00:00+02:00",
        tlp="red",
    )
    store.add_sightings([first], source="misp", default_tlp="clear")
    store.add_sightings([second], source="stix", default_tlp="clear")
    row = store.lookup("ipv4", "198.51.100.7")
    assert row is not None
    assert row.count == 5
    assert row.first_seen == "2026-02-01T00:00:00Z"
    assert row.last_seen == "2026-03-05T00:00:00Z"
    assert row.sources == ["misp", "stix"]
    assert row.tags == ["apt", "botnet", "c2"]
    assert row.tlp == "amber"  # green arrived later but amber is stricter
    assert (row.raw_first, row.raw_last) == ("198.51.100[.]7", "198.51.100.007")

    store.add_sightings([third], source="misp", default_tlp="clear")
    row = store.lookup("ipv4", "198.51.100.7")
    assert row is not None
    assert row.tlp == "red"
    assert row.count == 6
    assert row.last_seen == "2026-04-10T10:00:00Z"  # converted to UTC before comparing
    assert row.sources == ["misp", "stix"]
    assert row.raw_last == "198.51.100.7"
    assert store.stats().sightings == 1


def test_default_tlp_and_missing_dates(store: NodeStore) -> None:
    store.add_sightings(
        [
            Sighting("domain", "a.example", "a.example"),
            Sighting("domain", "b.example", "b.example", last_seen="2026-05-05T05:05:05Z"),
        ],
        source="feed",
        default_tlp="TLP:GREEN",
    )
    a = store.lookup("domain", "a.example")
    b = store.lookup("domain", "b.example")
    assert a is not None and b is not None
    assert a.tlp == "green"
    assert a.first_seen == a.last_seen  # the import time stands in
    assert a.first_seen.endswith("Z") and len(a.first_seen) == 20
    assert (b.first_seen, b.last_seen) == ("2026-05-05T05:05:05Z", "2026-05-05T05:05:05Z")
    assert store.lookup("domain", "c.example") is None


def test_new_and_known_counts(store: NodeStore) -> None:
    assert store.add_sightings(domains(5), source="feed", default_tlp="green") == AddResult(
        5, 0, {"domain": 5}
    )
    batch = [*domains(7), Sighting("domain", "d6.example", "again")]
    # d0..d4 are known, d5 and d6 are new, and the second d6 merges into the one just stored.
    assert store.add_sightings(batch, source="feed", default_tlp="green") == AddResult(
        2, 6, {"domain": 2}
    )
    assert store.lookup("domain", "d6.example") is not None
    row = store.lookup("domain", "d6.example")
    assert row is not None and row.count == 2
    assert store.stats().sightings == 7


def test_the_same_value_under_two_kinds_is_two_indicators(store: NodeStore) -> None:
    result = store.add_sightings(
        [Sighting("md5", "0" * 32, "0" * 32), Sighting("ntlm", "0" * 32, "0" * 32)],
        source="feed",
        default_tlp="green",
    )
    assert result == AddResult(2, 0, {"md5": 1, "ntlm": 1})


def test_a_batch_that_raises_midway_stores_nothing(store: NodeStore) -> None:
    store.add_sightings(domains(3, "kept"), source="feed", default_tlp="green")

    def failing() -> Iterator[Sighting]:
        yield from domains(5_000)
        raise RuntimeError("parser died")

    with pytest.raises(RuntimeError, match="parser died"):
        store.add_sightings(failing(), source="feed", default_tlp="green")
    stats = store.stats()
    assert stats.sightings == 3
    assert store.lookup("domain", "d0.example") is None
    # the store still works after the rollback
    assert store.add_sightings(domains(2), source="feed", default_tlp="green") == AddResult(
        2, 0, {"domain": 2}
    )


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (Sighting("domain", "x.example", "x", tlp="orange"), r"sighting #2 .*unknown TLP level"),
        (Sighting("domain", "x.example", "x", count=0), r"sighting #2 has count 0"),
        (Sighting("domain", "", "x"), r"sighting #2 has an empty kind or value"),
        (Sighting("domain", "x.example", "x", first_seen="yesterday"), "not an ISO 8601 time"),
    ],
)
def test_an_invalid_sighting_rejects_the_whole_batch(
    store: NodeStore, bad: Sighting, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        store.add_sightings([*domains(2), bad, *domains(3, "e")], source="f", default_tlp="green")
    assert store.stats().sightings == 0


def test_add_sightings_rejects_an_unknown_default_tlp_and_an_empty_source(store: NodeStore) -> None:
    with pytest.raises(ValueError, match="unknown TLP level 'amber-ish'"):
        store.add_sightings(domains(1), source="feed", default_tlp="amber-ish")
    with pytest.raises(ValueError, match="source must name"):
        store.add_sightings(domains(1), source=" ", default_tlp="green")


def test_concurrent_batches_from_threads_all_land(store: NodeStore) -> None:
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            store.add_sightings(domains(2_000, f"t{n}-"), source=f"s{n}", default_tlp="green")
            store.stats()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert store.stats().sightings == 8_000


# --- every store: eligible ------------------------------------------------------------------------


def test_eligible_filters_by_kind_and_tlp(store: NodeStore) -> None:
    store.add_sightings(
        [
            Sighting("domain", "clear.example", "x", tlp="clear"),
            Sighting("domain", "green.example", "x", tlp="green"),
            Sighting("domain", "amber.example", "x", tlp="amber"),
            Sighting("ipv4", "192.0.2.1", "x", tlp="green"),
            Sighting("url", "http://green.example/", "x", tlp="green"),
            Sighting("domain", "red.example", "x", tlp="red"),
        ],
        source="feed",
        default_tlp="green",
    )
    got = store.eligible(["domain", "ipv4"], ["TLP:CLEAR", "green"])
    assert [(kind, value) for _, kind, value, _ in got] == [
        ("domain", "clear.example"),
        ("domain", "green.example"),
        ("ipv4", "192.0.2.1"),
    ]
    ids = [sid for sid, _, _, _ in got]
    assert ids == sorted(ids)
    green = store.lookup("domain", "green.example")
    assert green is not None and (green.sighting_id, "domain", "green.example") in [
        r[:3] for r in got
    ]

    assert store.eligible([], ["green"]) == []
    assert store.eligible(["domain"], []) == []
    with pytest.raises(ValueError, match="unknown TLP level"):
        store.eligible(["domain"], ["puce"])


def test_a_tlp_raised_by_reimport_removes_the_indicator_from_eligible(store: NodeStore) -> None:
    store.add_sightings(domains(3), source="a", default_tlp="green")
    store.add_sightings(domains(1), source="b", default_tlp="red")
    got = {value for _, _, value, _ in store.eligible(["domain"], ["clear", "green"])}
    assert got == {"d1.example", "d2.example"}


def test_eligible_ids_and_rows_by_id_give_the_eligible_rows(store: NodeStore) -> None:
    store.add_sightings(domains(1_050), source="feed", default_tlp="green")
    store.add_sightings(domains(10, "red"), source="feed", default_tlp="red")
    rows = store.eligible(["domain"], ["green"])
    ids = store.eligible_ids(["domain"], ["green"])
    assert ids.tolist() == [r[0] for r in rows]
    shuffled = ids[::-1][:100]
    assert store.rows_by_id(shuffled) == [r for r in rows[::-1][:100]]  # in the order asked
    assert store.eligible_ids([], ["green"]).tolist() == []


def test_rows_by_id_keeps_a_row_whose_tlp_was_raised_and_names_unknown_ids(
    store: NodeStore,
) -> None:
    store.add_sightings(domains(3), source="a", default_tlp="green")
    ids = store.eligible_ids(["domain"], ["green"])
    store.add_sightings(domains(1), source="b", default_tlp="red")
    # a round's set is fixed at Prepare: raising a TLP afterwards does not shrink it mid-stream
    assert [r[2] for r in store.rows_by_id(ids)] == ["d0.example", "d1.example", "d2.example"]
    with pytest.raises(StoreError, match=r"sighting ids \[999\] are gone"):
        store.rows_by_id([ids[0], 999])


# --- every store: imports and rounds audit --------------------------------------------------------


def test_record_import_round_trips_the_summary(store: NodeStore) -> None:
    summary = {"per_kind": {"domain": 3}, "known": 1, "skipped": {"private ip": 2}, "invalid": 0}
    import_id = store.record_import("misp", "/data/event.json", "misp", summary)
    [entry] = store.audit()
    assert isinstance(entry, ImportAudit)
    assert (entry.import_id, entry.source, entry.path, entry.fmt) == (
        import_id,
        "misp",
        "/data/event.json",
        "misp",
    )
    assert entry.summary == summary
    with pytest.raises(ValueError, match="JSON-serialisable"):
        store.record_import("misp", "x", "misp", {"bad": object()})


def test_round_audit_from_start_to_outcome(store: NodeStore) -> None:
    record_round(store, "r1", started="2026-06-01T10:00:00Z")
    store.add_blinded("r1", "de", 100)
    store.add_blinded("r1", "de", 50)
    store.add_blinded("r1", "it", 7)
    store.record_round(
        "r1",
        started="2026-06-01T10:00:09Z",
        coordinator="coord.eu",
        participants=["fr", "de", "it"],
        mode="pairwise",
        threshold=None,
        kinds=["domain", "ipv4"],
        own_size=10,
        blinded_for={"it": 8},
        outcome="done",
        reason=None,
        finished="2026-06-01T10:05:00Z",
    )
    [entry] = store.rounds()
    assert entry == RoundAudit(
        round_id="r1",
        started="2026-06-01T10:00:00Z",  # the first start time is kept
        coordinator="coord.eu",
        participants=["fr", "de", "it"],
        mode="pairwise",
        threshold=None,
        kinds=["domain", "ipv4"],
        own_size=10,
        blinded_for={"de": 150, "it": 8},
        outcome="done",
        reason=None,
        finished="2026-06-01T10:05:00Z",
    )
    with pytest.raises(ValueError, match="not in the audit log"):
        store.add_blinded("r-unknown", "de", 1)
    with pytest.raises(ValueError, match="cannot be negative"):
        store.add_blinded("r1", "de", -1)


@pytest.mark.parametrize(
    ("mode", "threshold", "outcome", "message"),
    [
        ("all", None, "started", "unknown round mode 'all'"),
        ("pairwise", None, "ok", "unknown round outcome 'ok'"),
        ("threshold", None, "started", "exactly when the mode is 'threshold'"),
        ("count", 3, "started", "exactly when the mode is 'threshold'"),
        ("threshold", 0, "started", "threshold must be >= 1"),
    ],
)
def test_round_audit_validates_mode_outcome_and_threshold(
    store: NodeStore, mode: str, threshold: int | None, outcome: str, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        store.record_round(
            "r",
            started="2026-06-01T10:00:00Z",
            coordinator="c",
            participants=["fr", "de"],
            mode=mode,
            threshold=threshold,
            kinds=["domain"],
            own_size=1,
            blinded_for={},
            outcome=outcome,
            reason=None,
            finished=None,
        )
    assert store.rounds() == []


def test_a_refused_round_keeps_its_reason(store: NodeStore) -> None:
    store.record_round(
        "r9",
        started="2026-06-02T00:00:00Z",
        coordinator="coord.eu",
        participants=["fr", "xx"],
        mode="count",
        threshold=None,
        kinds=["domain"],
        own_size=0,
        blinded_for={},
        outcome="refused",
        reason="policy: xx is not an allowed partner",
        finished="2026-06-02T00:00:01Z",
    )
    [entry] = store.audit()
    assert isinstance(entry, RoundAudit)
    assert (entry.outcome, entry.reason) == ("refused", "policy: xx is not an allowed partner")


def test_audit_merges_imports_and_rounds_newest_first(store: NodeStore) -> None:
    record_round(store, "old", started="2000-01-01T00:00:00Z")
    store.record_import("feed", "f.json", "stix", {"invalid": 0})  # stamped now
    record_round(store, "future", started="2999-01-01T00:00:00Z")
    entries = store.audit()
    assert [type(e).__name__ for e in entries] == ["RoundAudit", "ImportAudit", "RoundAudit"]
    assert [e.round_id for e in entries if isinstance(e, RoundAudit)] == ["future", "old"]
    assert len(store.audit(limit=2)) == 2
    assert isinstance(store.audit(limit=1)[0], RoundAudit)


def test_end_round_sets_the_outcome_and_keeps_the_record(store: NodeStore) -> None:
    store.record_round(
        "r-end",
        started="2026-01-01T00:00:00Z",
        coordinator="coordinator",
        participants=["a", "b"],
        mode="pairwise",
        threshold=None,
        kinds=["domain"],
        own_size=7,
        blinded_for={"b": 5},
        outcome="started",
    )
    store.end_round("r-end", outcome="failed", reason="node restarted")
    (entry,) = [r for r in store.rounds() if r.round_id == "r-end"]
    assert (entry.outcome, entry.reason, entry.own_size) == ("failed", "node restarted", 7)
    assert entry.blinded_for == {"b": 5} and entry.finished is not None
    with pytest.raises(ValueError, match="not in the audit log"):
        store.end_round("never", outcome="failed", reason=None)
    with pytest.raises(ValueError, match="final round outcome"):
        store.end_round("r-end", outcome="started", reason=None)


def test_has_round_knows_every_recorded_round_whatever_its_outcome(store: NodeStore) -> None:
    assert not store.has_round("r1")
    store.record_import("feed", "f.json", "stix", {})
    assert not store.has_round("r1")
    record_round(store, "r1", started="2026-06-01T00:00:00Z")
    assert store.has_round("r1")
    store.end_round("r1", outcome="failed", reason="node restarted")
    assert store.has_round("r1")
    store.record_round(
        "r2",
        started="2026-06-02T00:00:00Z",
        coordinator="coord.eu",
        participants=["fr", "xx"],
        mode="count",
        threshold=None,
        kinds=["domain"],
        own_size=0,
        outcome="refused",
        reason="policy: xx is not an allowed partner",
    )
    assert store.has_round("r2")
    assert not store.has_round("r3")
    assert not store.has_round("R1")  # round ids are compared exactly


# --- every store: matches -------------------------------------------------------------------------


def test_matches_round_trip_latest_round_first(store: NodeStore) -> None:
    store.add_sightings(
        [
            Sighting("domain", "b.example", "b"),
            Sighting("domain", "a.example", "a"),
            Sighting("ipv4", "192.0.2.9", "192.0.2.9"),
        ],
        source="feed",
        default_tlp="green",
    )
    ids = {value: sid for sid, _, value, _ in store.eligible(["domain", "ipv4"], ["green"])}
    record_round(store, "r1", started="2026-06-01T00:00:00Z")
    record_round(store, "r2", mode="threshold", started="2026-06-02T00:00:00Z")

    stored = store.record_matches(
        "r1",
        "pairwise",
        [(ids["b.example"], ["it", "de"], None), (ids["a.example"], ["de"], None)],
    )
    assert stored == 2
    store.record_matches("r2", "threshold", [(ids["192.0.2.9"], [], 3)])

    got = [(m.round_id, m.kind, m.value, m.partners, m.count) for m in store.matches()]
    assert got == [
        ("r2", "ipv4", "192.0.2.9", [], 3),
        ("r1", "domain", "a.example", ["de"], None),
        ("r1", "domain", "b.example", ["de", "it"], None),
    ]
    assert [m.value for m in store.matches("r1")] == ["a.example", "b.example"]
    assert store.matches("nope") == []


def test_record_matches_is_one_transaction_and_checks_the_round(store: NodeStore) -> None:
    store.add_sightings(domains(2), source="feed", default_tlp="green")
    ids = [sid for sid, _, _, _ in store.eligible(["domain"], ["green"])]
    record_round(store, "r1", started="2026-06-01T00:00:00Z")
    with pytest.raises(ValueError, match="does not hold"):
        store.record_matches("r1", "pairwise", [(ids[0], ["de"], None), (99999, ["de"], None)])
    with pytest.raises(ValueError, match="names no partner"):
        store.record_matches("r1", "pairwise", [(ids[0], ["de"], None), (ids[1], [], None)])
    assert store.matches() == []
    with pytest.raises(ValueError, match="recorded in mode 'pairwise', not 'threshold'"):
        store.record_matches("r1", "threshold", [(ids[0], [], 2)])
    with pytest.raises(ValueError, match="not in the audit log"):
        store.record_matches("r-unknown", "pairwise", [(ids[0], ["de"], None)])
    with pytest.raises(ValueError, match="record_partner_counts"):
        store.record_matches("r1", "count", [])


def test_partner_counts_round_trip(store: NodeStore) -> None:
    record_round(store, "c1", mode="count", started="2026-06-01T00:00:00Z")
    record_round(store, "c2", mode="count", started="2026-06-03T00:00:00Z")
    store.record_partner_counts("c1", {"it": 4, "de": 0})
    store.record_partner_counts("c2", {"de": 12})
    got = [(p.round_id, p.partner, p.count) for p in store.partner_counts()]
    assert got == [("c2", "de", 12), ("c1", "de", 0), ("c1", "it", 4)]
    assert [p.partner for p in store.partner_counts("c1")] == ["de", "it"]
    record_round(store, "p1", started="2026-06-04T00:00:00Z")
    with pytest.raises(ValueError, match="belong to a 'count' round"):
        store.record_partner_counts("p1", {"de": 1})


# --- every store: stats ---------------------------------------------------------------------------


def test_stats(store: NodeStore) -> None:
    empty = store.stats()
    assert (empty.sightings, empty.imports, empty.last_import) == (0, 0, None)

    store.add_sightings(domains(3), source="misp", default_tlp="green")
    store.add_sightings(
        [Sighting("ipv4", "192.0.2.1", "x", tlp="red"), *domains(1)],
        source="stix",
        default_tlp="amber",
    )
    store.record_import("misp", "a.json", "misp", {})
    store.record_import("stix", "b.json", "stix", {})
    record_round(store, "r1", started="2026-06-01T00:00:00Z")
    record_round(store, "r2", started="2026-06-02T00:00:00Z")
    store.record_round(
        "r2",
        started="2026-06-02T00:00:00Z",
        coordinator="coord.eu",
        participants=["fr", "de"],
        mode="pairwise",
        threshold=None,
        kinds=["domain"],
        own_size=4,
        blinded_for={"de": 4},
        outcome="done",
        reason=None,
        finished="2026-06-02T00:01:00Z",
    )

    stats = store.stats()
    assert stats.sightings == 4
    assert stats.per_kind == {"domain": 3, "ipv4": 1}
    assert stats.per_tlp == {"green": 2, "amber": 1, "red": 1}  # d0 went amber on re-import
    assert stats.sources == {"misp": 3, "stix": 2}
    assert stats.imports == 2
    assert stats.last_import is not None and stats.last_import.endswith("Z")
    assert (stats.rounds_recorded, stats.rounds_joined) == (2, 1)


# --- every store: early warning -------------------------------------------------------------------


def test_epochs_keep_their_first_close(store: NodeStore) -> None:
    store.record_epoch(
        "e1", ends="2026-07-01T00:00:00Z", coordinator="coord.eu", participants=["fr", "de"], tags=5
    )
    store.record_epoch(
        "e2", ends="2026-08-01T00:00:00Z", coordinator="coord.eu", participants=["fr"], tags=0
    )
    store.close_epoch("e1", "expired")
    store.close_epoch("e1", "aborted")  # the key was destroyed once: the first reason stays
    by_id = {e.epoch_id: e for e in store.epochs()}
    assert set(by_id) == {"e1", "e2"}
    assert (by_id["e1"].participants, by_id["e1"].tags) == (["fr", "de"], 5)
    assert by_id["e1"].reason == "expired" and by_id["e1"].closed is not None
    assert (by_id["e2"].closed, by_id["e2"].reason) == (None, None)


def test_checks_and_alerts_read_back_newest_first(store: NodeStore) -> None:
    store.record_check("e1", "fr", 10, outcome="done", hits=2)
    store.record_check("e1", "de", 3, outcome="refused", reason="budget")
    assert store.checks()[0] == CheckAudit(
        store.checks()[0].time, "e1", "de", 3, None, "refused", "budget"
    )
    assert [c.checker for c in store.checks()] == ["de", "fr"]

    stored = store.record_alerts(
        "e1",
        [("domain", "a.example", "de", "check"), ("ipv4", "192.0.2.1", "it", "sighted")],
    )
    assert stored == 2
    alerts = store.alerts()
    assert [(a.kind, a.value, a.partner, a.direction) for a in alerts] == [
        ("ipv4", "192.0.2.1", "it", "sighted"),
        ("domain", "a.example", "de", "check"),
    ]
    assert store.alerts(after=alerts[1].alert_id) == alerts[:1]
    assert store.alerts(limit=1) == alerts[:1]


# --- every store: budgets across rounds ------------------------------------------------------------


LIMITS = {"round": 10, "check": 10}


def test_budget_charges_are_all_or_nothing_within_the_window(store: NodeStore) -> None:
    assert (
        store.charge_budget("r1", {"round": {"de": 6, "it": 3}}, at=100.0, since=0.0, limits=LIMITS)
        is None
    )
    # it fits, de does not: nothing is charged, and de (used 6, asked 5) is named
    over = store.charge_budget(
        "r2", {"round": {"it": 1, "de": 5}}, at=110.0, since=10.0, limits=LIMITS
    )
    assert over == Overdraft("de", 6, 5, "round")
    assert [(u.partner, u.what, u.elements) for u in store.budget_use(0.0)] == [
        ("de", "round", 6),
        ("it", "round", 3),
    ]
    # checks are a budget of their own; a zero amount charges nothing
    assert (
        store.charge_budget(
            "e1", {"check": {"de": 10, "fr": 0}}, at=120.0, since=20.0, limits=LIMITS
        )
        is None
    )
    # a watch round charges both at once, all or nothing: here the check budget is full
    over = store.charge_budget(
        "w1", {"round": {"de": 1}, "check": {"de": 1}}, at=121.0, since=20.0, limits=LIMITS
    )
    assert over == Overdraft("de", 10, 1, "check")
    # the window rolls: charges at or before ``since`` no longer count
    assert (
        store.charge_budget("r3", {"round": {"de": 10}}, at=200.0, since=100.0, limits=LIMITS)
        is None
    )
    assert [(u.partner, u.what, u.elements) for u in store.budget_use(100.0)] == [
        ("de", "check", 10),
        ("de", "round", 10),
    ]
    with pytest.raises(ValueError, match="expected one of round, check"):
        store.charge_budget("x", {"epoch": {"de": 1}}, at=1.0, since=0.0, limits=LIMITS)
    with pytest.raises(ValueError, match="negative"):
        store.charge_budget("x", {"round": {"de": -1}}, at=1.0, since=0.0, limits=LIMITS)


# --- the SQLite file store: schema, migrations, files, processes ----------------------------------


def test_open_creates_the_current_schema_in_wal_mode(tmp_path: Path) -> None:
    path = tmp_path / "node.sqlite"
    with Store.open(path):
        pass
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    finally:
        conn.close()
    assert {
        "sightings",
        "imports",
        "rounds",
        "round_blinded",
        "matches",
        "partner_counts",
    } <= tables


def test_reopen_keeps_data_and_schema(tmp_path: Path) -> None:
    path = tmp_path / "node.sqlite"
    with Store.open(path) as s:
        s.add_sightings(domains(3), source="feed", default_tlp="green")
    for _ in range(2):
        with Store.open(path) as s:
            assert s.stats().sightings == 3
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    conn.close()


def test_a_new_migration_upgrades_an_existing_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "node.sqlite"
    with Store.open(path) as s:
        s.add_sightings(domains(2), source="feed", default_tlp="green")
    upgraded = (*schema_module.MIGRATIONS, ("ALTER TABLE sightings ADD COLUMN note TEXT",))
    monkeypatch.setattr(schema_module, "MIGRATIONS", upgraded)
    monkeypatch.setattr(schema_module, "SCHEMA_VERSION", len(upgraded))
    with Store.open(path) as s:
        assert s.stats().sightings == 2
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION + 1
        assert "note" in [c[1] for c in conn.execute("PRAGMA table_info(sightings)")]
    finally:
        conn.close()


def test_a_failing_migration_leaves_the_previous_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "node.sqlite"
    with Store.open(path):
        pass
    broken = (
        *schema_module.MIGRATIONS,
        ("CREATE TABLE half_done (x)", "ALTER TABLE no_such_table ADD COLUMN y"),
    )
    monkeypatch.setattr(schema_module, "MIGRATIONS", broken)
    monkeypatch.setattr(schema_module, "SCHEMA_VERSION", len(broken))
    with pytest.raises(
        StoreError,
        match=rf"schema version {SCHEMA_VERSION + 1}: no such table: no_such_table;"
        rf".* version {SCHEMA_VERSION}",
    ):
        Store.open(path)
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master")]
    finally:
        conn.close()
    assert "half_done" not in names


def test_open_refuses_a_newer_schema(tmp_path: Path) -> None:
    path = tmp_path / "node.sqlite"
    with Store.open(path):
        pass
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(StoreError, match=r"schema version \d+, newer .* upgrade blindmatch"):
        Store.open(path)


def test_open_requires_the_parent_directory(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="does not exist; create it first"):
        Store.open(tmp_path / "missing" / "node.sqlite")
    assert not (tmp_path / "missing").exists()


def test_open_refuses_a_file_that_is_not_a_store(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_bytes(b"these are not the pages you are looking for" * 100)
    with pytest.raises(StoreError, match="is it a blindmatch store"):
        Store.open(path)


def test_the_store_has_no_place_for_key_material(tmp_path: Path) -> None:
    path = tmp_path / "node.sqlite"
    with Store.open(path):
        pass
    conn = sqlite3.connect(path)
    try:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        columns = [
            (table, col[1])
            for table in tables
            for col in conn.execute(f"PRAGMA table_info({table})")
        ]
    finally:
        conn.close()
    assert len(columns) > 20  # the check below looked at the real schema
    forbidden = ("key", "secret", "scalar", "private")
    assert [c for c in columns if any(word in c[1].lower() for word in forbidden)] == []
    for cls in (NodeStore, Store):
        for method in (cls.record_round, cls.add_blinded, cls.record_matches):
            params = inspect.signature(method).parameters
            assert not [p for p in params if any(word in p.lower() for word in forbidden)]


def test_a_second_connection_sees_committed_batches(tmp_path: Path) -> None:
    path = tmp_path / "node.sqlite"
    with Store.open(path) as writer, Store.open(path) as reader:
        writer.add_sightings(domains(10), source="feed", default_tlp="green")
        assert reader.stats().sightings == 10


_KILLED_WRITER = """
import sys
from node.store import Sighting, Store

store = Store.open(sys.argv[1])
store.add_sightings(
    (Sighting("domain", f"committed{i}.example", "x") for i in range(1000)),
    source="before", default_tlp="green",
)
padding = "a" * 150

def batch():
    for i in range(300_000):
        if i == 120_000:
            print("writing", flush=True)
        yield Sighting("domain", f"{i:08d}{padding}.example", f"{i:08d}{padding}.EXAMPLE")

store.add_sightings(batch(), source="killed", default_tlp="green")
print("committed", flush=True)
"""


@pytest.mark.slow
def test_kill_9_mid_import_leaves_the_batch_all_or_nothing(tmp_path: Path) -> None:
    path = tmp_path / "node.sqlite"
    wal = tmp_path / "node.sqlite-wal"
    proc = subprocess.Popen(
        [sys.executable, "-c", _KILLED_WRITER, str(path)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "writing\n"
        # The batch's pages no longer fit the page cache, so uncommitted frames are on disk:
        # the kill hits a half-written transaction, not one held only in memory.
        wal_size = wal.stat().st_size
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
        if proc.stdout is not None:
            proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    assert wal_size > 8 * 1024 * 1024

    with Store.open(path) as s:
        stats = s.stats()
        assert stats.sources.get("before") == 1000
        # All or nothing, and the kill came 180k rows before the batch could commit: nothing.
        assert stats.sightings == 1000
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        conn.close()


def test_has_round_is_one_index_lookup(tmp_path: Path) -> None:
    path = tmp_path / "node.sqlite"
    with Store.open(path) as s:
        record_round(s, "r1", started="2026-06-01T00:00:00Z")
        statements: list[str] = []
        s._conn.set_trace_callback(statements.append)
        assert s.has_round("r1")
        s._conn.set_trace_callback(None)
    [query] = [sql for sql in statements if "rounds" in sql]
    conn = sqlite3.connect(path)
    try:
        plan = " ".join(row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {query}"))
    finally:
        conn.close()
    # SEARCH ... USING (COVERING) INDEX: the primary key's index, not a scan of the log.
    assert plan.startswith("SEARCH rounds USING") and "INDEX" in plan, plan


def _modes(path: Path) -> dict[str, int]:
    return {
        file.name: stat.S_IMODE(file.stat().st_mode)
        for file in (path, *(path.with_name(path.name + s) for s in ("-wal", "-shm")))
    }


@pytest.mark.parametrize("umask", [0o022, 0o000])
def test_the_store_and_its_wal_files_are_private_whatever_the_umask(
    tmp_path: Path, umask: int
) -> None:
    path = tmp_path / "node.sqlite"
    old = os.umask(umask)
    try:
        with Store.open(path) as s:
            s.add_sightings(domains(3), source="feed", default_tlp="red")
            modes = _modes(path)  # the -wal and -shm files exist while the store is open
    finally:
        os.umask(old)
    assert modes == {"node.sqlite": 0o600, "node.sqlite-wal": 0o600, "node.sqlite-shm": 0o600}


def test_opening_a_store_readable_by_others_makes_it_private(tmp_path: Path) -> None:
    path = tmp_path / "node.sqlite"
    with Store.open(path) as s:
        s.add_sightings(domains(3), source="feed", default_tlp="red")
    # As an older blindmatch left it: world-readable, and another process holding it open.
    other = sqlite3.connect(path)
    try:
        other.execute(
            "INSERT INTO imports (imported_at, source, path, format, summary)"
            " VALUES ('2026-01-01T00:00:00Z', 'x', 'x', 'x', '{}')"
        )
        other.commit()
        for file in _modes(path):
            os.chmod(tmp_path / file, 0o644)
        with Store.open(path) as s:
            assert s.stats().sightings == 3
            assert set(_modes(path).values()) == {0o600}
    finally:
        other.close()


def test_rounds_recorded_before_signed_specs_read_back_without_an_operator(tmp_path: Path) -> None:
    """Schema 3 adds the operator who signed a round's spec; older rounds keep NULL there."""
    path = tmp_path / "node.sqlite"
    conn = sqlite3.connect(path)
    try:
        for migration in schema_module.MIGRATIONS[:2]:
            for statement in migration:
                conn.execute(statement)
        conn.execute(
            "INSERT INTO rounds (round_id, started, coordinator, participants, mode, kinds,"
            " own_size, outcome) VALUES ('old', '2026-01-01T00:00:00Z', 'coord.eu', '[\"a\"]',"
            " 'pairwise', '[\"domain\"]', 1, 'done')"
        )
        conn.execute("PRAGMA user_version = 2")
        conn.commit()
    finally:
        conn.close()
    with Store.open(path) as s:
        record_round(s, "new", started="2026-01-02T00:00:00Z")
        s.record_round(
            "signed",
            started="2026-01-03T00:00:00Z",
            coordinator="coord.eu",
            participants=["a", "b"],
            mode="pairwise",
            threshold=None,
            kinds=["domain"],
            own_size=1,
            outcome="done",
            operator="ops",
        )
        operators = {r.round_id: r.operator for r in s.rounds()}
    assert operators == {"old": None, "new": None, "signed": "ops"}
