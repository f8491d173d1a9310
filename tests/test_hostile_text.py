"""Hostile text in files (issue 10, req 9, the importer half): raw bytes in a URL are escaped.

A URL row holding bytes that are not UTF-8 imports as its percent-escaped canonical form, as
`blindmatch canonicalize url` treats the same bytes from argv; such bytes in any other kind,
or outside the value of a CSV row, still make the line invalid, named.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from blindmatch.core.canon import canonicalize
from node.importers import Invalid, Record, read_path
from node.importing import import_paths
from node.store import Store

RAW = b"http://evil.example/caf\xe9/\xff?q=\xc0"
ESCAPED = "http://evil.example/caf%E9/%FF?q=%C0"


def events(path: Path) -> list[object]:
    return list(read_path(path, "auto")[1])


def test_the_argv_and_the_file_give_the_same_indicator() -> None:
    # argv bytes reach Python as surrogateescape text: the importer must agree with the CLI
    assert canonicalize("url", RAW.decode("utf-8", "surrogateescape")).value == ESCAPED


def test_a_text_line_holding_a_raw_byte_url_imports_percent_escaped(tmp_path: Path) -> None:
    path = tmp_path / "feed.txt"
    path.write_bytes(RAW + b"\nbad\xff.example\nok.example\n")
    found = events(path)
    assert [(e.kind_hint, e.raw, e.where) for e in found if isinstance(e, Record)] == [
        ("url", ESCAPED, "line 1"),
        ("auto", "ok.example", "line 3"),
    ]
    # a domain with the same byte is still refused, the line named
    assert {e.where: e.message for e in found if isinstance(e, Invalid)} == {
        "line 2": "not valid UTF-8 (byte 0xff at column 4)"
    }


def test_a_csv_url_row_holding_raw_bytes_imports_and_other_kinds_do_not(tmp_path: Path) -> None:
    path = tmp_path / "feed.csv"
    path.write_bytes(
        b"kind,value,tags\n"
        b"url," + RAW + b",x\n"
        b"," + RAW + b",x\n"  # kind detected
        b"domain,bad\xff.example,x\n"
        b"url,http://fine.example/,t\xffg\n"  # the byte is in a tag, not the URL
    )
    found = events(path)
    got = [(e.kind_hint, e.raw, e.where) for e in found if isinstance(e, Record)]
    assert got == [("url", ESCAPED, "line 2"), ("url", ESCAPED, "line 3")]
    assert {e.where: e.message for e in found if isinstance(e, Invalid)} == {
        "line 4": "not valid UTF-8 (byte 0xff at column 4)",
        "line 5": "not valid UTF-8 (byte 0xff at column 2)",
    }


def test_the_store_holds_valid_utf8(tmp_path: Path) -> None:
    path = tmp_path / "feed.txt"
    path.write_bytes(RAW + b"\n")
    with Store.open(tmp_path / "node.sqlite") as store:
        report = import_paths(store, [path], source="feed")
        assert not report.failed
        assert store.lookup("url", ESCAPED) is not None
    with sqlite3.connect(tmp_path / "node.sqlite") as conn:
        assert conn.execute("SELECT kind, value, raw_first FROM sightings").fetchall() == [
            ("url", ESCAPED, ESCAPED)
        ]
