"""Importers: parsing each format into records, and importing them into a real store."""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from blindmatch.core.canon import KINDS
from node.importers import (
    MAX_VALUE_CHARS,
    Event,
    ImportFileError,
    Invalid,
    Record,
    Skipped,
    detect_format,
    read_path,
)
from node.importers.stix_pattern import PatternError, PatternValue, pattern_values
from node.importing import SHOWN_INVALID, ImportReport, import_paths
from node.store import TLP_LEVELS, Store

FIXTURES = Path(__file__).parent / "fixtures" / "import"
SHA256 = "2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881"
SHA1 = "11f6ad8ec52a2984abaafd7c3b516503785c2072"
MD5 = "9dd4e461268c8034f5c8564e155c67a6"
SHA512 = (
    "a4abd4448c49562d828115d13a1fccea927f52b4d5459297f8b43e42da89238b"
    "c13626e43dcb38ddb082488927ec904fb42057443983e88585179d50551afe62"
)
SHA256_EMPTY = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
STIX_ID = "indicator--00000000-0000-4000-8000-0000000000{:02d}"


def events(path: Path, fmt: str = "auto") -> list[Event]:
    return list(read_path(path, fmt)[1])


def records(found: list[Event]) -> list[Record]:
    return [e for e in found if isinstance(e, Record)]


def skipped(found: list[Event]) -> Counter[str]:
    return Counter(e.reason for e in found if isinstance(e, Skipped))


def invalid(found: list[Event]) -> dict[str, str]:
    return {e.where: e.message for e in found if isinstance(e, Invalid)}


def rows(store_path: Path) -> dict[tuple[str, str], tuple[str, str, int, int, str, str]]:
    """(kind, value) -> (first_seen, last_seen, count, tlp rank, sources, tags), read raw."""
    with sqlite3.connect(store_path) as conn:
        return {
            (kind, value): tuple(rest)
            for kind, value, *rest in conn.execute(
                "SELECT kind, value, first_seen, last_seen, count, tlp, sources, tags FROM sightings"
            )
        }


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    return tmp_path / "node.sqlite"


@pytest.fixture
def store(store_path: Path) -> Iterator[Store]:
    with Store.open(store_path) as opened:
        yield opened


# --- detection ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("list.txt", "text"),
        ("indicators.csv", "csv"),
        ("bundle.json", "stix"),
        ("misp-event.json", "misp"),
        ("misp-feed", "misp-feed"),
        ("wrong-types-misp.json", "misp"),
        ("wrong-types-stix.json", "stix"),
    ],
)
def test_detect_format_by_content(name: str, expected: str) -> None:
    assert detect_format(FIXTURES / name) == expected


def test_detect_format_ignores_the_file_name(tmp_path: Path) -> None:
    misnamed = tmp_path / "bundle.txt"
    shutil.copy(FIXTURES / "bundle.json", misnamed)
    assert detect_format(misnamed) == "stix"
    csv_without_kind = tmp_path / "values.csv"
    csv_without_kind.write_text("value\n192.0.2.1\n")
    assert detect_format(csv_without_kind) == "csv"  # a header naming value is enough


def test_json_of_unknown_shape_and_plain_directories_are_refused(tmp_path: Path) -> None:
    other = tmp_path / "other.json"
    other.write_text('{"hello": "world"}')
    with pytest.raises(ImportFileError, match=r"other\.json: .*--format stix or --format misp"):
        detect_format(other)
    with pytest.raises(ImportFileError, match=r"without manifest\.json"):
        read_path(tmp_path)
    with pytest.raises(ImportFileError, match="no such file"):
        read_path(tmp_path / "missing.txt")


def test_forced_format_overrides_detection(tmp_path: Path) -> None:
    found = events(FIXTURES / "indicators.csv", "text")
    # Read as a plain list, the header line is just one more (invalid) value.
    assert records(found)[0].raw.startswith("kind,value")
    with pytest.raises(ImportFileError, match=r"not a STIX 2\.1 bundle or object"):
        events(FIXTURES / "misp-event.json", "stix")
    with pytest.raises(ImportFileError, match="not a MISP event"):
        events(FIXTURES / "bundle.json", "misp")
    with pytest.raises(ImportFileError, match="is a directory"):
        read_path(FIXTURES / "misp-feed", "csv")


# --- text and CSV ------------------------------------------------------------------------------


def test_text_list_yields_one_record_per_value_line() -> None:
    found = events(FIXTURES / "list.txt")
    assert [(r.where, r.kind_hint, r.raw) for r in records(found)] == [
        ("line 2", "auto", "198.51.100.23"),
        ("line 4", "auto", "evil-domain.example"),
        ("line 5", "auto", "http://malware.example/path/payload.exe"),
        ("line 6", "auto", "2001:db8::dead:beef"),
        ("line 7", "auto", "phisher@bad-mail.example"),
        ("line 8", "auto", "d41d8cd98f00b204e9800998ecf8427e"),
        ("line 9", "auto", "203.0.113.0/24"),
        ("line 11", "auto", "not a valid indicator"),
        ("line 12", "auto", "E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855"),
    ]
    assert len(found) == 9  # comments and blank lines produce nothing


def test_text_tolerates_bom_and_crlf_and_reports_undecodable_lines(tmp_path: Path) -> None:
    path = tmp_path / "mixed.txt"
    path.write_bytes(
        b"\xef\xbb\xbf192.0.2.1\r\n"
        b"bad\xff\xfe.example\r\n"
        b"\r\n"
        b"good.example\r\n"
        b"caf\xc3\xa9.example\n"  # valid UTF-8: the byte check must not flag it
    )
    found = events(path)
    assert [(r.where, r.raw) for r in records(found)] == [
        ("line 1", "192.0.2.1"),
        ("line 4", "good.example"),
        ("line 5", "café.example"),
    ]
    assert invalid(found) == {"line 2": "not valid UTF-8 (byte 0xff at column 4)"}


def test_csv_columns_become_record_fields() -> None:
    found = events(FIXTURES / "indicators.csv")
    by_line = {r.where: r for r in records(found)}
    assert by_line["line 2"] == Record(
        "ipv4",
        "198.51.100.99",
        "line 2",
        "2024-01-02T03:04:05Z",
        "2024-02-01T00:00:00Z",
        "red",
        ("botnet", "c2", "emotet"),
    )
    assert by_line["line 3"].kind_hint == "auto"
    assert by_line["line 4"].raw == "http://shop.example/cart?items=1,2,3"
    assert by_line["line 4"].first_seen == "2024-01-02T03:04:05Z"  # unix seconds
    assert by_line["line 4"].tlp == "green"
    assert by_line["line 5"].first_seen == "2024-01-01T00:00:00Z"  # a date alone is midnight UTC
    assert by_line["line 5"].tlp == "amber+strict"
    assert by_line["line 10"].tlp == "clear"  # TLP 1.0 white
    assert by_line["line 10"].tags == ("phishing",)
    problems = invalid(found)
    assert set(problems) == {"line 6", "line 7", "line 8"}
    assert problems["line 6"].startswith("unknown kind 'frobnicator'; expected one of ipv4,")
    assert problems["line 7"].startswith("unknown TLP 'purple'")
    assert "before first_seen" in problems["line 8"]


def test_csv_without_value_column_is_a_file_error(tmp_path: Path) -> None:
    path = tmp_path / "no-value.csv"
    path.write_text("kind,indicator\nipv4,192.0.2.1\n")
    with pytest.raises(ImportFileError, match=r"no-value\.csv: CSV header has no 'value' column"):
        events(path, "csv")


def test_csv_with_crlf_bom_and_bad_bytes(tmp_path: Path) -> None:
    path = tmp_path / "crlf.csv"
    path.write_bytes(
        b"\xef\xbb\xbfKind,Value,TLP\r\n"
        b"domain,one.example,amber\r\n"
        b"domain,tw\xc0o.example,amber\r\n"
        b'url,"http://x.example/a,b",clear\r\n'
    )
    found = events(path)
    assert [(r.where, r.raw, r.tlp) for r in records(found)] == [
        ("line 2", "one.example", "amber"),
        ("line 4", "http://x.example/a,b", "clear"),
    ]
    assert invalid(found) == {"line 3": "not valid UTF-8 (byte 0xc0 at column 3)"}


def test_huge_values_are_invalid_without_being_echoed(tmp_path: Path) -> None:
    path = tmp_path / "huge.txt"
    path.write_text("192.0.2.1\n" + "a" * 1_000_000 + ".example\n")
    found = events(path)
    assert [r.raw for r in records(found)] == ["192.0.2.1"]
    message = invalid(found)["line 2"]
    assert message == f"value is 1000008 characters long; the limit is {MAX_VALUE_CHARS}"


# --- the STIX pattern subset -------------------------------------------------------------------


def values(pattern: str) -> list[PatternValue | str]:
    return pattern_values(pattern)


def test_pattern_strings_may_hold_quotes_brackets_and_operators() -> None:
    assert values(
        r"[url:value = 'http://x.example/it\'s] OR [a = \'b\'' OR url:value = 'c\\d']"
    ) == [
        PatternValue("url", "http://x.example/it's] OR [a = 'b'"),
        PatternValue("url", "c\\d"),
    ]


@pytest.mark.parametrize(
    "path",
    [
        "file:hashes.'SHA-256'",
        'file:hashes."SHA-256"',
        "file:hashes.sha256",
        "file:hashes.SHA256",
        "file:hashes.'sha_256'",
    ],
)
def test_hash_names_in_any_quoting_or_case(path: str) -> None:
    assert values(f"[{path} = '{SHA256}']") == [PatternValue("sha256", SHA256)]


def test_or_splits_and_every_other_construct_is_skipped_with_its_reason() -> None:
    assert values(
        "[ipv4-addr:value = '192.0.2.1' OR domain-name:value = 'a.example' AND url:value = 'http://b/']"
        " OR ([ipv6-addr:value = '2001:db8::/32'] OR [file:name = 'x']) OR [ipv4-addr:value = '192.0.2.2'] REPEATS 5 TIMES"
        " OR [email-addr:value NOT = 'x@y.example'] OR [email-addr:value LIKE '%@y.example']"
        " OR [ipv4-addr:value IN ('192.0.2.3', '192.0.2.4')] OR [ipv4-addr:value = 7]"
    ) == [
        PatternValue("ipv4", "192.0.2.1"),
        "STIX AND expression",  # AND binds tighter than OR
        PatternValue("cidr", "2001:db8::/32"),
        "STIX unsupported path file:name",
        "STIX qualifier REPEATS",
        "STIX operator NOT =",
        "STIX operator LIKE",
        PatternValue("ipv4", "192.0.2.3"),
        PatternValue("ipv4", "192.0.2.4"),
        "STIX value that is not a string",
    ]


def test_whole_and_and_followedby_patterns_are_one_skip() -> None:
    assert values("[ipv4-addr:value = '192.0.2.1'] AND [domain-name:value = 'a.example']") == [
        "STIX AND expression"
    ]
    assert values("[ipv4-addr:value = '192.0.2.1'] FOLLOWEDBY [url:value = 'http://a/']") == [
        "STIX FOLLOWEDBY expression"
    ]
    assert values(
        "[ipv4-addr:value = '192.0.2.1'] START t'2020-01-01T00:00:00Z' STOP t'2021-01-01T00:00:00Z'"
    ) == ["STIX qualifier START"]


def test_issubset_on_ip_is_a_cidr_block() -> None:
    assert values("[ipv4-addr:value ISSUBSET '198.51.100.0/24']") == [
        PatternValue("cidr", "198.51.100.0/24")
    ]
    assert values("[domain-name:value ISSUBSET 'a.example']") == ["STIX operator ISSUBSET"]


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        ("[ipv4-addr:value = '192.0.2.1'", "pattern ends where ']' was expected"),
        ("[ipv4-addr:value = '192.0.2.1]", "unterminated string starting at position 19"),
        (r"[url:value = 'a\nb']", "invalid escape"),
        ("[ipv4-addr:value '192.0.2.1']", "expected a comparison operator"),
        ("[ipv4-addr: = '1']", "object path ends early"),
        ("[ipv4-addr:value = '1'] OR", "pattern ends where '[' or '(' was expected"),
        ("", "empty pattern"),
        ("[a:b = '1'] ; DROP", "unexpected character ';'"),
        ("(" * 100 + "[ipv4-addr:value = '1']" + ")" * 100, "nested more than 64 levels"),
    ],
)
def test_malformed_patterns_raise_pattern_error(pattern: str, message: str) -> None:
    with pytest.raises(PatternError, match=re.escape(message)):
        pattern_values(pattern)


# --- STIX bundles ------------------------------------------------------------------------------


def test_stix_bundle_records_markings_and_sightings() -> None:
    found = events(FIXTURES / "bundle.json")
    got = {(r.where, r.kind_hint, r.raw): r for r in records(found)}
    assert sorted((where[-2:], kind, raw) for where, kind, raw in got) == sorted(
        [
            ("01", "ipv4", "198.51.100.1"),
            ("01", "domain", "c2.example.com"),
            ("02", "domain", "www.example.org"),
            ("02", "url", "http://tricky.example/a'b] OR [c"),
            ("05", "cidr", "203.0.113.0/24"),
            ("05", "cidr", "2001:db8:1::/48"),
            ("06", "sha256", SHA256),
            ("06", "sha1", SHA1),
            ("06", "sha512", SHA512),
            ("06", "md5", MD5),
            ("08", "ipv4", "192.0.2.55"),
            ("10", "email", "boss@ceo-fraud.example"),
            ("12", "cidr", "198.51.100.0/25"),
        ]
    )
    sighted = got[(STIX_ID.format(1), "ipv4", "198.51.100.1")]
    # valid_from 2024-01-01, modified 2024-01-05, widened by the sighting (count 4) to its window
    assert (sighted.first_seen, sighted.last_seen, sighted.count) == (
        "2023-12-25T00:00:00Z",
        "2024-02-01T12:00:00Z",
        5,
    )
    assert sighted.tlp == "amber+strict"  # TLP 2.0 id
    assert sighted.tags == ("c2", "example-bear")
    tlp_by_indicator = {where[-2:]: r.tlp for (where, _, _), r in got.items()}
    assert tlp_by_indicator == {
        "01": "amber+strict",
        "02": "green",  # TLP 1.0 id
        "05": "clear",  # TLP 2.0 id
        "06": "red",  # the bundle's own TLP marking-definition object
        "08": None,  # unmarked: the import's default applies
        "10": "amber",  # white and amber: the stricter wins
        "12": None,
    }
    unsighted = got[(STIX_ID.format(5), "cidr", "203.0.113.0/24")]
    assert (unsighted.first_seen, unsighted.last_seen, unsighted.count) == (
        "2024-01-01T00:00:00Z",
        "2024-01-05T00:00:00Z",
        1,
    )
    assert skipped(found) == Counter(
        {
            "STIX AND expression": 1,
            "STIX operator MATCHES": 1,
            "STIX qualifier WITHIN": 1,
            "STIX unsupported path email-message:subject": 1,
            "STIX operator !=": 1,
            "STIX pattern_type snort": 1,
            "STIX sighting of an indicator not in the file": 1,
        }
    )
    problems = invalid(found)
    assert list(problems) == [STIX_ID.format(11)]
    assert "pattern ends where ']' was expected" in problems[STIX_ID.format(11)]


def test_stix_single_object_and_plain_list(tmp_path: Path) -> None:
    indicator = {
        "type": "indicator",
        "spec_version": "2.1",
        "id": "indicator--11111111-0000-4000-8000-000000000001",
        "pattern": "[domain-name:value = 'single.example']",
        "pattern_type": "stix",
        "created": "2024-05-01T00:00:00.000Z",
        "modified": "2024-05-01T00:00:00.000Z",
    }
    single = tmp_path / "one.json"
    single.write_text(json.dumps(indicator))
    listed = tmp_path / "list.json"
    listed.write_text(json.dumps([indicator, {**indicator, "id": "indicator--2", "revoked": True}]))
    assert [r.raw for r in records(events(single))] == ["single.example"]
    # no valid_from: created is the first sighting
    assert records(events(single))[0].first_seen == "2024-05-01T00:00:00Z"
    found = events(listed)
    assert [r.raw for r in records(found)] == ["single.example"]
    assert skipped(found) == Counter({"STIX revoked indicator": 1})


def test_stix_wrong_types_are_invalid_per_object() -> None:
    found = events(FIXTURES / "wrong-types-stix.json")
    assert [r.raw for r in records(found)] == ["192.0.2.29"]
    assert records(found)[0].count == 1  # the sighting with count "many" added nothing
    b = "indicator--00000000-0000-4000-8000-0000000000b{}"
    assert invalid(found) == {
        "objects[0]": "is a string, expected a STIX object",
        "objects[8]": "is null, expected a STIX object",
        "objects[9]": "is a list, expected a STIX object",
        "sighting--00000000-0000-4000-8000-0000000000b6": "sighting count 'many' is not a whole number from 0 to 999999999",
        b.format(1): "indicator 'pattern' is a number, expected a string",
        b.format(2): "object_marking_refs is a string, expected a list",
        b.format(3): "valid_from: 'yesterday' is neither ISO 8601 nor unix seconds",
        b.format(4): "labels is an object, expected a list",
    }
    assert skipped(found) == Counter({"STIX value that is not a string": 1})


def test_stix_bundle_whose_objects_is_not_a_list(tmp_path: Path) -> None:
    path = tmp_path / "b.json"
    path.write_text('{"type": "bundle", "id": "bundle--1", "objects": "indicator"}')
    with pytest.raises(ImportFileError, match=r"b\.json: the bundle's 'objects' is a string"):
        events(path)


# --- MISP --------------------------------------------------------------------------------------


def misp_where(n: int, prefix: str = "a") -> str:
    return f"attribute 5f0c8a1e-0000-4000-8000-00000000{prefix}{n:03d}"


def test_misp_event_attributes_and_objects() -> None:
    found = events(FIXTURES / "misp-event.json")
    got = [(r.where, r.kind_hint, r.raw, r.tlp) for r in records(found)]
    assert got == [
        (misp_where(1), "ipv4", "198.51.100.10", "green"),
        (misp_where(2), "ipv4", "198.51.100.11", "green"),
        (misp_where(3), "domain", "mail.phish.example", "green"),
        (misp_where(3), "ipv4", "198.51.100.12", "green"),
        (misp_where(4), "url", "https://phish.example/login", "green"),
        (misp_where(5), "domain", "cdn.phish.example", "red"),  # the attribute's tag wins
        (misp_where(6), "email", "hr@phish.example", "amber+strict"),
        (misp_where(10), "ipv4", "not-an-ip", "green"),  # canon, not the parser, refuses it
        (misp_where(1, "b"), "sha256", SHA256, "green"),
        (misp_where(2, "b"), "sha1", SHA1, "green"),
    ]
    by_where = {r.where: r for r in records(found)}
    event_time = "2023-11-14T22:13:20Z"  # the event's "timestamp": "1700000000"
    assert (by_where[misp_where(1)].first_seen, by_where[misp_where(1)].last_seen) == (
        "2023-11-14T22:15:00Z",
        "2023-11-14T22:15:00Z",
    )
    assert by_where[misp_where(2)].first_seen == "2023-11-14T22:16:40Z"  # a number, not a string
    assert (by_where[misp_where(4)].first_seen, by_where[misp_where(4)].last_seen) == (
        "2023-11-01T10:00:00Z",
        "2023-11-10T10:00:00Z",
    )
    assert by_where[misp_where(5)].first_seen == event_time
    assert by_where[misp_where(5)].tags == (
        'misp-galaxy:threat-actor="Example Bear"',
        "confidence:high",
    )
    assert skipped(found) == Counter(
        {
            "MISP deleted attribute": 1,
            "MISP type text": 1,
            "MISP type regkey": 1,
            "MISP type filename": 1,
        }
    )
    assert invalid(found) == {
        misp_where(11): "domain|ip value 'no-separator.example' is not of the form a|b"
    }


@pytest.mark.parametrize("shape", ["bare", "list", "response"])
def test_misp_document_shapes(tmp_path: Path, shape: str) -> None:
    event = json.loads((FIXTURES / "misp-event.json").read_text())
    document = {
        "bare": event["Event"],
        "list": [event, event],
        "response": {"response": [event]},
    }[shape]
    path = tmp_path / "event.json"
    path.write_text(json.dumps(document))
    expected = len(records(events(FIXTURES / "misp-event.json")))
    assert len(records(events(path))) == expected * (2 if shape == "list" else 1)


def test_misp_wrong_types_are_invalid_per_event_and_attribute() -> None:
    found = events(FIXTURES / "wrong-types-misp.json")
    assert [r.raw for r in records(found)] == ["198.51.100.6"]
    event = "event 7b000000-0000-4000-8000-0000000000c{}".format
    attribute = "attribute 7b000000-0000-4000-8000-00000000c3{:02d}".format
    assert invalid(found) == {
        f"{event(1)} attribute": "Attribute is a string, expected a list",
        event(2): "Tag is a string, expected a list; the event's attributes are not imported",
        attribute(1): "attribute 'value' is a number, expected a string",
        attribute(2): "Tag is a string, expected a list",
        f"{event(3)} attribute #3": "is a string, expected an object",
        attribute(4): "timestamp: 'soon' is neither ISO 8601 nor unix seconds",
        attribute(5): "attribute 'type' is a list, expected a string",
        event(3): "Object is a string, expected a list",
        "event #4": "is a string, expected a MISP event object",
    }


def test_misp_feed_directory(tmp_path: Path) -> None:
    found = events(FIXTURES / "misp-feed")
    assert [(r.kind_hint, r.raw, r.tlp) for r in records(found)] == [
        ("ipv4", "192.0.2.200", "clear"),
        ("ipv6", "2001:db8::200", "clear"),
        ("sha256", SHA256.upper(), None),
        ("domain", "loader.example.net", None),
    ]
    assert skipped(found) == Counter({"MISP type comment": 1})

    feed = tmp_path / "feed"
    shutil.copytree(FIXTURES / "misp-feed", feed)
    manifest = json.loads((feed / "manifest.json").read_text())
    missing, broken = "6a1b2c3d-0000-4000-8000-00000000dead", "6a1b2c3d-0000-4000-8000-00000000beef"
    manifest[missing] = {"info": "listed but absent"}
    manifest[broken] = {"info": "truncated"}
    manifest["../../etc/passwd"] = {"info": "path traversal"}
    (feed / "manifest.json").write_text(json.dumps(manifest))
    (feed / f"{broken}.json").write_text('{"Event": {"Attribute": [')
    found = events(feed)
    assert len(records(found)) == 4  # the good events still import
    problems = invalid(found)
    assert problems[f"event {missing}"].startswith(f"listed in manifest.json but {missing}.json")
    assert (
        problems[f"event {broken}"]
        == f"{broken}.json: truncated JSON: the file ends early (line 1 column 26): Expecting value"
    )
    assert problems["manifest entry '../../etc/passwd'"] == "is not an event uuid"


# --- whole-file failures -----------------------------------------------------------------------


def test_truncated_json_names_the_file() -> None:
    with pytest.raises(ImportFileError, match=r"truncated\.json: truncated JSON: the file ends"):
        events(FIXTURES / "truncated.json")


@pytest.mark.parametrize("opener", ["[", '{"a":'])
def test_deeply_nested_json_is_a_clear_file_error(tmp_path: Path, opener: str) -> None:
    path = tmp_path / "deep.json"
    path.write_text(opener * 200_000)
    with pytest.raises(ImportFileError, match=r"deep\.json: JSON nested too deeply"):
        events(path, "stix")


def test_json_that_is_not_utf8_names_the_offset(tmp_path: Path) -> None:
    path = tmp_path / "latin1.json"
    path.write_bytes(b'{"type": "bundle", "objects": ["caf\xe9"]}')
    with pytest.raises(
        ImportFileError, match=r"latin1\.json: not valid UTF-8 \(byte 0xe9 at offset 35\)"
    ):
        events(path)


# --- importing into the store ------------------------------------------------------------------


def test_import_text_list_into_store(store: Store, store_path: Path) -> None:
    report = import_paths(store, [FIXTURES / "list.txt"], tlp="green")
    assert report.imported == Counter(
        {"ipv4": 1, "domain": 1, "url": 1, "ipv6": 1, "email": 1, "md5": 1, "cidr": 1, "sha256": 1}
    )
    assert report.known == 0
    assert report.total == 9
    assert [(e.where, e.path) for e in report.invalid] == [("line 11", str(FIXTURES / "list.txt"))]
    assert "invalid" in report.invalid[0].message
    stored = rows(store_path)
    assert stored[("sha256", SHA256_EMPTY)][2:5] == (1, 1, '["list.txt"]')  # count, green, source

    again = import_paths(store, [FIXTURES / "list.txt"], tlp="green")
    assert again.new == 0 and again.known == 8
    assert rows(store_path)[("sha256", SHA256_EMPTY)][2] == 2


def test_or_pattern_keeps_its_good_comparisons_and_names_the_bad_one(
    store: Store, tmp_path: Path
) -> None:
    # The public Poison Ivy bundle's indicator, typo and all.
    indicator_id = "indicator--a932fcc6-e032-476c-826f-cb970a5a1ade"
    pattern = "[domain-name:value = 'domain autuo.xicp.net' OR ipv4-addr:value = '60.10.1.115']"
    path = tmp_path / "poison-ivy.json"
    path.write_text(
        json.dumps(
            {
                "type": "bundle",
                "id": "bundle--1b1b1b1b-1b1b-4b1b-8b1b-1b1b1b1b1b1b",
                "objects": [
                    {
                        "type": "indicator",
                        "spec_version": "2.1",
                        "id": indicator_id,
                        "created": "2015-05-15T09:12:16.432Z",
                        "modified": "2015-05-15T09:12:16.432Z",
                        "pattern": pattern,
                        "pattern_type": "stix",
                        "valid_from": "2015-05-15T09:12:16.432678Z",
                    }
                ],
            }
        )
    )
    report = import_paths(store, [path])
    assert report.imported == Counter({"ipv4": 1})
    [bad] = report.invalid
    assert bad.where == indicator_id and "'domain autuo.xicp.net'" in bad.message
    kept = store.lookup("ipv4", "60.10.1.115")
    assert kept is not None and store.stix_refs(kept.sighting_id) == [indicator_id]


def test_import_stix_and_misp_keep_their_own_tlp(store: Store, store_path: Path) -> None:
    report = import_paths(
        store, [FIXTURES / "bundle.json", FIXTURES / "misp-event.json"], tlp="clear"
    )
    assert report.imported["cidr"] == 3
    assert report.skipped["STIX AND expression"] == 1
    assert report.skipped["MISP type text"] == 1
    stored = rows(store_path)
    # rank: clear 0, green 1, amber 2, amber+strict 3, red 4
    assert stored[("ipv4", "198.51.100.1")][2:4] == (5, 3)  # sighted 4 more times, amber+strict
    assert stored[("ipv4", "192.0.2.55")][3] == 0  # unmarked: --tlp
    assert stored[("domain", "cdn.phish.example")][3] == 4
    # sha256 and sha1 are in both files: counts add and the stricter TLP (red) stays
    assert stored[("sha256", SHA256)][2:5] == (2, 4, '["bundle.json","misp-event.json"]')
    assert [f.fmt for f in report.files] == ["stix", "misp"]
    assert any("invalid ipv4 'not-an-ip'" in e.message for e in report.invalid)


def test_csv_import_and_audit(store: Store) -> None:
    report = import_paths(store, [FIXTURES / "indicators.csv"], source="cert-ru")
    assert report.imported == Counter({"ipv4": 1, "domain": 1, "url": 1, "sha1": 1, "email": 1})
    assert {e.where for e in report.invalid} == {"line 6", "line 7", "line 8"}
    audit = store.audit()
    assert len(audit) == 1
    entry = audit[0]
    assert (entry.source, entry.fmt) == ("cert-ru", "csv")  # type: ignore[union-attr]
    assert entry.summary["imported"] == dict(report.imported)  # type: ignore[union-attr]
    assert entry.summary["invalid"] == 3  # type: ignore[union-attr]
    assert store.stats().sources == {"cert-ru": 5}


def test_ten_thousand_lines_with_three_bad_ones(store: Store, tmp_path: Path) -> None:
    bad = {1234: "999.1.2.3", 5000: "not_a.domain!", 9999: "x" * 65}
    lines = [bad.get(n, f"10.{n // 65536}.{n // 256 % 256}.{n % 256}") for n in range(1, 10_001)]
    path = tmp_path / "big.txt"
    path.write_text("\n".join(lines) + "\n")
    seen: list[int] = []
    report = import_paths(store, [path], progress=seen.append)
    assert report.imported == Counter({"ipv4": 9_997})
    assert [e.where for e in report.invalid] == ["line 1234", "line 5000", "line 9999"]
    assert store.stats().per_kind == {"ipv4": 9_997}
    assert seen == [10_000, 10_000]  # every PROGRESS_EVERY entries, then once at the end


def test_unreadable_file_imports_nothing_but_others_do(store: Store) -> None:
    report = import_paths(
        store, [FIXTURES / "truncated.json", FIXTURES / "list.txt", FIXTURES / "missing.json"]
    )
    assert [f.problem for f in report.failed] == [
        f"{FIXTURES / 'truncated.json'}: truncated JSON: the file ends inside the string "
        "that starts at line 21 column 18",
        f"{FIXTURES / 'missing.json'}: no such file",
    ]
    assert report.new == 8
    assert not report.ok
    # every attempt is in the audit log, failed ones with their error
    summaries = {Path(e.path).name: e.summary for e in store.audit()}  # type: ignore[union-attr]
    assert summaries["truncated.json"]["error"] == report.failed[0].problem
    assert summaries["list.txt"]["new"] == 8


def test_interrupted_import_leaves_nothing_of_the_file(store: Store, tmp_path: Path) -> None:
    path = tmp_path / "long.txt"
    path.write_text("".join(f"10.1.{n // 256}.{n % 256}\n" for n in range(25_000)))

    class Interrupted(Exception):
        pass

    def progress(done: int) -> None:
        if done >= 20_000:
            raise Interrupted

    import_paths(store, [FIXTURES / "list.txt"])
    with pytest.raises(Interrupted):
        import_paths(store, [path], progress=progress)
    assert store.stats().sightings == 8  # only the earlier, completed import


def test_report_format_lists_twenty_invalid_and_counts_the_rest(
    store: Store, tmp_path: Path
) -> None:
    path = tmp_path / "junk.txt"
    path.write_text("192.0.2.1\n" + "".join(f"junk{n}\n" for n in range(25)))
    report = import_paths(store, [FIXTURES / "bundle.json", path])
    text = report.format()
    assert (
        "Imported 14 new indicators: cidr 3, domain 2, email 1, ipv4 3, md5 1, sha1 1, sha256 1, sha512 1, url 1"
        in text
    )
    assert "Already known or repeated: 0" in text
    assert "  STIX AND expression: 1" in text
    assert "Invalid 26 records (not imported):" in text
    assert f"{path} line 2: invalid auto 'junk0'" in text
    assert text.count(f"{path} line") == SHOWN_INVALID - 1  # the bundle has the first one
    assert "  ... and 6 more" in text


def test_unknown_tlp_or_format_is_refused_before_reading(store: Store) -> None:
    with pytest.raises(ValueError, match="unknown TLP level 'purple'"):
        import_paths(store, [FIXTURES / "list.txt"], tlp="purple")
    with pytest.raises(ValueError, match="unknown format 'yaml'"):
        import_paths(store, [FIXTURES / "list.txt"], fmt="yaml")
    assert store.stats().sightings == 0


def test_empty_report_formats() -> None:
    assert ImportReport().format().splitlines() == [
        "Read 0 entries from 0 files.",
        "Imported 0 new indicators",
        "Already known or repeated: 0",
    ]


# --- fuzzing: any input gives events or one ImportFileError, never another exception ----------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(
        st.sampled_from(
            ["type", "id", "pattern", "pattern_type", "objects", "count", "sighting_of_ref",
             "object_marking_refs", "valid_from", "created", "modified", "labels", "Event",
             "Attribute", "Object", "Tag", "name", "value", "uuid", "timestamp", "first_seen",
             "last_seen", "deleted", "response", "definition", "definition_type", "extensions"]
        ) | st.text(max_size=5),
        children,
        max_size=5,
    ),
    max_leaves=30,
)  # fmt: skip


def _read_all(path: Path, fmt: str) -> None:
    """Whatever the input, reading it yields well-formed events, the same on every read, or one
    ImportFileError that names the file."""
    try:
        events = list(read_path(path, fmt)[1])
    except ImportFileError as exc:
        assert str(exc).startswith(f"{path}: ")
        return
    for event in events:
        assert event.where, event  # every event says where in the file it came from
        if isinstance(event, Record):
            assert event.kind_hint in (*KINDS, "auto")
            assert event.raw.strip() and len(event.raw) <= MAX_VALUE_CHARS
            assert event.tlp is None or event.tlp in TLP_LEVELS
            assert event.count >= 1
        elif isinstance(event, Skipped):
            assert event.reason
        else:
            assert isinstance(event, Invalid) and event.message
    assert list(read_path(path, fmt)[1]) == events


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(document=json_values, fmt=st.sampled_from(["auto", "stix", "misp"]))
def test_fuzz_json_structures(tmp_path: Path, document: object, fmt: str) -> None:
    path = tmp_path / "fuzz.json"
    for shaped in (document, {"type": "bundle", "objects": [document]}, {"Event": document}):
        path.write_text(json.dumps(shaped))
        _read_all(path, fmt)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.binary(max_size=200), fmt=st.sampled_from(["auto", "text", "csv"]))
def test_fuzz_bytes(tmp_path: Path, data: bytes, fmt: str) -> None:
    path = tmp_path / "fuzz.txt"
    path.write_bytes(data)
    _read_all(path, fmt)
    path.write_bytes(b"kind,value,first_seen,tlp,tags\n" + data)
    _read_all(path, fmt)


@settings(max_examples=500, deadline=None)
@given(
    pattern=st.lists(
        st.sampled_from(
            ["[", "]", "(", ")", "'", "\\", " OR ", " AND ", " = ", " != ", "ipv4-addr:value",
             "file:hashes.'SHA-256'", "x", "'1.2.3.4'", " WITHIN ", "5", " SECONDS", ",", " IN ",
             "t'2020'", " NOT ", ".", ":", "[*]", '"']
        ),
        max_size=12,
    ).map("".join)
)  # fmt: skip
def test_fuzz_patterns(pattern: str) -> None:
    try:
        found = pattern_values(pattern)
    except PatternError:
        return
    assert all(isinstance(v, PatternValue | str) for v in found)


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(document=json_values)
def test_fuzz_import_into_store(store: Store, tmp_path: Path, document: object) -> None:
    path = tmp_path / "fuzz.json"
    indicator = {
        "type": "indicator",
        "id": "indicator--1",
        "pattern": "[ipv4-addr:value = '1.2.3.4']",
    }
    sighting = {"type": "sighting", "id": "sighting--1", "sighting_of_ref": "indicator--1"}
    attribute = {"type": "ip-dst", "value": "1.2.3.4"}
    for shaped in (
        {"type": "bundle", "objects": [indicator, {**sighting, "count": document}]},
        {"type": "bundle", "objects": [{**indicator, "valid_from": document}]},
        {"type": "bundle", "objects": [{**indicator, "object_marking_refs": document}]},
        {"Event": {"Attribute": [{**attribute, "timestamp": document}]}},
        {"Event": {"Attribute": [{**attribute, "Tag": document}]}},
        {"Event": {"Attribute": [{**attribute, "value": document}]}},
    ):
        path.write_text(json.dumps(shaped))
        report = import_paths(store, [path])
        # every entry read ends up stored (new or known), skipped or invalid
        assert report.total == (
            report.new + report.known + report.invalid_count + sum(report.skipped.values())
        )
        assert report.total >= 1


def test_misp_uri_that_is_only_a_path_is_skipped_not_invalid(tmp_path: Path) -> None:
    event = {
        "Event": {
            "Attribute": [
                {"type": "uri", "value": "/gate.php", "uuid": "a1"},
                {"type": "uri", "value": "http://c2.example/gate.php", "uuid": "a2"},
            ]
        }
    }
    path = tmp_path / "event.json"
    path.write_text(json.dumps(event))
    _, events = read_path(path)
    got = list(events)
    assert [type(e).__name__ for e in got] == ["Skipped", "Record"]
    assert "path only" in got[0].reason  # type: ignore[union-attr]
