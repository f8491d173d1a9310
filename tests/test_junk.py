"""Issue 19, requirement 3: junk stays out (the suffix rule, binary and unusable CSV files, dry
runs), and can be taken out (``node forget``, ``[policy] max_age``). Real stores under tmp_path,
real CLI runs."""

from __future__ import annotations

import random
import sqlite3
import string
from pathlib import Path

import pytest

from node.config import load_config
from node.importing import import_paths
from node.store import Sighting, Store
from node.store.schema import MIGRATIONS
from node.store.sightings import Forget
from tests.clirun import run
from tests.pkifixtures import FederationPki

REAL = ["evil.com", "c2.bad.co.uk", "phish.example", "x7hq3abc.onion", "login.paypa1.de"]


@pytest.fixture
def node(tmp_path: Path) -> Path:
    """A new node directory; its node.toml."""
    home = tmp_path / "node"
    args = ["node", "init", str(home), "--name", "junk", "--listen", "127.0.0.1:0"]
    assert run(*args, "--pki", str(FederationPki(tmp_path / "pki").dir))[0] == 0
    return home / "node.toml"


def random_lines(n: int, seed: int = 19) -> list[str]:
    rng = random.Random(seed)
    alphabet = string.ascii_lowercase + string.digits
    lines = []
    for _ in range(n):
        left = "".join(rng.choices(alphabet, k=rng.randint(4, 10)))
        # a letter first, so no line is a number: every line looks like a domain to auto
        right = rng.choice(string.ascii_lowercase) + "".join(rng.choices(alphabet, k=7))
        lines.append(f"{left}.{right}")
    return lines


def test_random_lines_are_refused_and_named_and_real_domains_stored(
    node: Path, tmp_path: Path
) -> None:
    junk = random_lines(3000)
    feed = tmp_path / "random.txt"
    feed.write_text("\n".join(junk[:1000] + REAL + junk[1000:]) + "\n")
    status, out, _ = run("node", "import", "--config", str(node), str(feed))
    assert status == 1  # mostly refused: likely no list of indicators
    assert f"Imported {len(REAL)} new indicators: domain {len(REAL)}" in out
    assert "Invalid 3,000 records (not imported):" in out
    assert f"random.txt line 1: invalid auto {junk[0]!r}: the name {junk[0]!r} does not end" in out
    with Store.open(load_config(node).store) as store:
        assert store.stats().sightings == len(REAL)
        assert all(store.lookup("domain", name) is not None for name in REAL)


def test_allow_private_suffix_lets_internal_names_in(node: Path, tmp_path: Path) -> None:
    feed = tmp_path / "internal.txt"
    feed.write_text("dc1.corp.acme\nprinter.local\nevil.com\n")
    status, out, _ = run("node", "import", "--config", str(node), str(feed))
    assert "Imported 1 new indicator: domain 1" in out and "--allow-private-suffix" in out
    status, out, _ = run(
        "node", "import", "--config", str(node), "--allow-private-suffix", str(feed)
    )
    assert status == 0 and "Imported 2 new indicators: domain 2" in out


@pytest.mark.parametrize("fmt", ["auto", "text", "csv"])
def test_a_binary_file_is_refused_as_not_a_text_file(node: Path, tmp_path: Path, fmt: str) -> None:
    blob = tmp_path / "malware.bin"
    blob.write_bytes(b"MZ\x90\x00" + random.Random(1).randbytes(8000))
    status, out, _ = run("node", "import", "--config", str(node), "--format", fmt, str(blob))
    assert status == 1
    assert f"{blob}: not a text file (a NUL byte at offset 3" in out
    utf16 = tmp_path / "list-utf16.txt"
    utf16.write_text("evil.com\n", encoding="utf-16")
    status, out, _ = run("node", "import", "--config", str(node), str(utf16))
    assert status == 1 and f"{utf16}: not a text file" in out
    noise = tmp_path / "noise.txt"  # no NUL, but mostly not UTF-8
    noise.write_bytes(bytes(range(0x80, 0x100)) * 30)
    status, out, _ = run("node", "import", "--config", str(node), str(noise))
    assert status == 1 and f"{noise}: not a text file (" in out
    with Store.open(load_config(node).store) as store:
        assert store.stats().sightings == 0


def test_one_stray_byte_still_spoils_only_its_line(node: Path, tmp_path: Path) -> None:
    feed = tmp_path / "latin1.txt"
    feed.write_bytes(b"evil.com\ncaf\xe9.de\nbad.co.uk\n")
    status, out, _ = run("node", "import", "--config", str(node), str(feed))
    assert status == 0  # kept: 2 of 3 lines are indicators
    assert "Imported 2 new indicators" in out and "latin1.txt line 2: not valid UTF-8" in out


@pytest.mark.parametrize(
    ("header", "problem"),
    [
        ("indicator,type,first", "has no 'value' column (found 'indicator', 'type', 'first')"),
        ("kind;value;tlp", "separates its columns with ';'; blindmatch reads CSV with ','"),
    ],
)
def test_a_csv_without_a_usable_column_is_refused_not_read_as_text(
    node: Path, tmp_path: Path, header: str, problem: str
) -> None:
    feed = tmp_path / "export.csv"
    feed.write_text(f"{header}\nevil.com,domain,2024-01-01\n")
    status, out, _ = run("node", "import", "--config", str(node), str(feed))
    assert status == 1
    assert f"{feed}: looks like CSV, but its header {problem}" in out
    with Store.open(load_config(node).store) as store:
        assert store.stats().sightings == 0


def test_dry_run_shows_counts_and_rejections_and_stores_nothing(node: Path, tmp_path: Path) -> None:
    store_path = load_config(node).store
    feed = tmp_path / "feed.csv"
    feed.write_text(
        "kind,value,tlp\ndomain,evil.com,green\nipv4,203.0.113.7:8080,\n"
        "auto,sha256:" + "ab" * 32 + ",red\nauto,9lb1dnwrh.ab6nu5e5,\n"
    )
    before = store_path.read_bytes()
    status, out, _ = run("node", "import", "--config", str(node), "--dry-run", str(feed))
    assert status == 0, out
    assert "Dry run: nothing was stored. Read 4 entries from 1 file." in out
    assert "Would store 3 sightings: domain 1, ipv4 1, sha256 1" in out
    assert "  by TLP: amber 1, green 1, red 1" in out
    assert "feed.csv line 5: invalid auto '9lb1dnwrh.ab6nu5e5'" in out
    assert store_path.read_bytes() == before
    assert not store_path.with_name(store_path.name + "-wal").exists()
    status, out, _ = run("node", "audit", "--config", str(node))
    assert "import" not in out  # not even audited


def stored(node: Path, *lines: str, source: str) -> None:
    feed = node.parent / f"{source}.txt"
    feed.write_text("\n".join(lines) + "\n")
    status, out, _ = run("node", "import", "--config", str(node), "--source", source, str(feed))
    assert status == 0, out


def derived_rows(store_path: Path) -> dict[str, int]:
    with sqlite3.connect(store_path) as conn:
        return {
            table: conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
            for table in ("sightings", "matches", "pushed", "source_refs", "alerts")
        }


def with_derived_rows(store_path: Path, values: list[str]) -> None:
    """A round that matched ``values``, pushed to a sink, with source ids and alerts for them."""
    with Store.open(store_path) as store:
        ids = [s.sighting_id for v in values if (s := store.lookup("domain", v)) is not None]
        store.record_round(
            "r1",
            started="2026-01-01T00:00:00Z",
            coordinator="coordinator",
            participants=["junk", "beta"],
            mode="pairwise",
            threshold=None,
            kinds=["domain"],
            own_size=len(ids),
            outcome="done",
        )
        store.record_matches("r1", "pairwise", [(sid, ["beta"], None) for sid in ids])
        store.mark_pushed("taxii", [("r1", sid) for sid in ids])
        store.record_alerts("e1", [("domain", v, "beta", "sighted") for v in values])
    with sqlite3.connect(store_path) as conn:
        conn.executemany(
            "INSERT INTO source_refs (sighting_id, scheme, ref) VALUES (?, 'stix', ?)",
            [(sid, f"indicator--{sid}") for sid in ids],
        )


def test_forget_values_takes_out_everything_derived_and_is_audited(node: Path) -> None:
    store_path = load_config(node).store
    stored(node, "evil.com", "bad.co.uk", "keep.example", source="feed-a")
    with_derived_rows(store_path, ["evil.com", "bad.co.uk", "keep.example"])
    assert derived_rows(store_path) == {
        "sightings": 3,
        "matches": 3,
        "pushed": 3,
        "source_refs": 3,
        "alerts": 3,
    }
    status, out, _ = run(
        "node", "forget", "--config", str(node), "--dry-run", "Evil.COM", "bad.co.uk:443"
    )
    assert status == 0 and out.startswith("Dry run: would forget 2 indicators (domain 2)")
    assert derived_rows(store_path)["sightings"] == 3
    status, out, _ = run(
        "node", "forget", "--config", str(node), "Evil.COM", "bad.co.uk:443", "never.example"
    )
    assert status == 0
    assert "Forgot 2 indicators (domain 2)" in out
    assert "with 2 matches, 2 pushes, 2 source ids and 2 alerts" in out
    assert "Not stored: 1 of the values given" in out
    assert derived_rows(store_path) == {
        "sightings": 1,
        "matches": 1,
        "pushed": 1,
        "source_refs": 1,
        "alerts": 1,
    }
    _, audit, _ = run("node", "audit", "--config", str(node))
    assert "forget by " in audit and "(3 values: evil.com, bad.co.uk, never.example)" in audit
    assert ": 2 indicators deleted" in audit


def test_forget_a_source_keeps_what_others_also_reported(node: Path) -> None:
    stored(node, "evil.com", "both.example", source="noisy")
    stored(node, "both.example", "other.example", source="good")
    status, out, _ = run("node", "forget", "--config", str(node), "--source", "noisy")
    assert status == 0 and "Forgot 1 indicators (domain 1)" in out
    assert "Kept 1 indicators other sources also reported, without source noisy" in out
    with Store.open(load_config(node).store) as store:
        assert store.lookup("domain", "evil.com") is None
        kept = store.lookup("domain", "both.example")
        assert kept is not None and kept.sources == ["good"]
        assert store.stats().sources == {"good": 2}


def test_forget_the_values_of_a_file(node: Path, tmp_path: Path) -> None:
    stored(node, "evil.com", "bad.co.uk", "keep.example", source="feed")
    listing = tmp_path / "retract.csv"
    listing.write_text("kind,value\ndomain,evil.com\nauto,bad.co.uk\nipv4,not-an-ip\n")
    status, out, err = run("node", "forget", "--config", str(node), "--file", str(listing))
    assert status == 1  # one line was no value: named
    assert "Forgot 2 indicators (domain 2)" in out
    assert "retract.csv line 4: invalid ipv4 'not-an-ip'" in err
    with Store.open(load_config(node).store) as store:
        assert store.stats().sightings == 1


def test_forget_before_a_date_and_junk_stored_by_older_rules(node: Path) -> None:
    store_path = load_config(node).store
    with Store.open(store_path) as store:  # junk an older blindmatch stored, long ago
        store.add_sightings(
            [Sighting("domain", "9lb1dnwrh.ab6nu5e5", "9lb1dnwrh.ab6nu5e5")],
            source="old",
            default_tlp="amber",
        )
    with sqlite3.connect(store_path) as conn:
        conn.execute("UPDATE sightings SET seen_at = '2019-05-01T00:00:00Z'")
    stored(node, "fresh.example", source="new")
    status, out, _ = run("node", "forget", "--config", str(node), "--before", "2020-01-01")
    assert (
        status == 0
        and "Forgot 1 indicators (domain 1) (not seen since 2020-01-01T00:00:00Z)" in out
    )
    assert run("node", "forget", "--config", str(node), "--before", "soon")[0] == 2
    assert run("node", "forget", "--config", str(node))[0] == 2  # nothing named
    with Store.open(store_path) as store:
        assert store.lookup("domain", "fresh.example") is not None
        assert store.stats().sightings == 1


def test_max_age_takes_unseen_indicators_out_of_rounds_until_seen_again(
    node: Path, tmp_path: Path
) -> None:
    text = node.read_text()
    node.write_text(text.replace('max_age = ""', 'max_age = "180d"'))
    config = load_config(node)
    assert config.max_age == 180 * 86400
    stored(node, "old.example", "new.example", source="feed")
    with sqlite3.connect(config.store) as conn:
        conn.execute(
            "UPDATE sightings SET seen_at = '2019-01-01T00:00:00Z' WHERE value = 'old.example'"
        )
    with Store.open(config.store) as store:
        every = store.eligible_ids({"domain"}, ["amber"])
        store.set_max_age(config.max_age)
        ids = store.eligible_ids({"domain"}, ["amber"])  # what node/rounds.py StoredSet reads
        [new] = store.rows_by_id(ids)
        assert (len(every), new[2]) == (2, "new.example")
        assert [r[2] for r in store.eligible({"domain"}, ["amber"])] == ["new.example"]
        assert (store.stats().expired, store.stats().sightings) == (1, 2)
    _, audit, _ = run("node", "audit", "--config", str(node))
    assert "expired ([policy] max_age 180 days): 1 indicators" in audit
    _, stats, _ = run("node", "stats", "--config", str(node))
    assert "expired ([policy] max_age 180 days): 1 not imported or pulled since" in stats
    # seen again: an import of a stored value renews it
    stored(node, "old.example", source="feed")
    with Store.open(config.store) as store:
        store.set_max_age(config.max_age)
        assert len(store.eligible_ids({"domain"}, ["amber"])) == 2
        assert store.stats().expired == 0


def test_a_bad_max_age_is_named(node: Path) -> None:
    node.write_text(node.read_text().replace('max_age = ""', 'max_age = "six months"'))
    status, _, err = run("node", "stats", "--config", str(node))
    assert status == 2 and "policy.max_age" in err and "180d" in err


def test_a_store_from_before_seen_at_gets_the_last_import_of_its_sources(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as conn:
        for migration in MIGRATIONS[:8]:
            for statement in migration:
                conn.execute(statement)
        conn.execute("PRAGMA user_version = 8")
        conn.execute(
            "INSERT INTO sightings (kind, value, raw_first, raw_last, first_seen, last_seen,"
            " count, tlp, sources, tags) VALUES ('domain', 'a.example', 'a.example', 'a.example',"
            " '2018-01-01T00:00:00Z', '2018-01-01T00:00:00Z', 1, 2, '[\"feed\"]', '[]'),"
            " ('domain', 'b.example', 'b.example', 'b.example', '2018-01-01T00:00:00Z',"
            " '2018-02-01T00:00:00Z', 1, 2, '[\"gone\"]', '[]')"
        )
        conn.execute(
            "INSERT INTO imports (imported_at, source, path, format, summary)"
            " VALUES ('2024-03-01T00:00:00Z', 'feed', 'f.txt', 'text', '{}')"
        )
    conn.close()
    with Store.open(path) as store:
        a, b = store.lookup("domain", "a.example"), store.lookup("domain", "b.example")
        assert a is not None and a.seen_at == "2024-03-01T00:00:00Z"
        assert b is not None and b.seen_at == "2018-02-01T00:00:00Z"  # no import: last_seen


def test_import_paths_dry_run_never_touches_the_store(tmp_path: Path) -> None:
    feed = tmp_path / "f.txt"
    feed.write_text("evil.com\n")
    with Store.open(tmp_path / "s.sqlite") as store:
        report = import_paths(store, [feed], dry_run=True)
        assert (report.valid, report.per_tlp) == ({"domain": 1}, {"amber": 1})
        assert store.stats().sightings == 0 and store.audit() == []
        assert (
            store.forget(Forget(values=(("domain", "x.example"),)), who="t", how="x").not_found == 1
        )
