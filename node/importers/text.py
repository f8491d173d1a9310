"""Plain lists (one value per line) and CSV files with a header row.

Both are read as UTF-8 with `surrogateescape`, so an undecodable byte only spoils its own line:
that line becomes an `Invalid` event naming the byte and the rest of the file still imports.
A URL is the exception (issue 10, req 9): raw bytes in a URL are what the Safe Browsing rules
percent-escape, so such a row imports as its canonical, percent-escaped form, valid UTF-8 the
store can hold, exactly as `blindmatch canonicalize url` treats the same bytes from argv.
A leading byte-order mark and CRLF line ends are accepted.

A file that is not text at all is refused whole, naming the file (issue 19): a NUL byte in its
first block (binary data, or UTF-16), or so many bytes that are not UTF-8 or are control
characters that it cannot be a list someone wrote. One stray byte still spoils only its line.
"""

from __future__ import annotations

import codecs
import csv
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

from blindmatch.core.canon import KINDS, InvalidIndicator, canonicalize
from node.importers.common import (
    Event,
    ImportFileError,
    Invalid,
    Record,
    check_value,
    parse_timestamp,
    shorten,
    tlp_from_name,
)

CSV_COLUMNS = ("kind", "value", "first_seen", "last_seen", "tlp", "tags")
_TAG_SEPARATORS = re.compile(r"[;|]")
# surrogateescape maps each undecodable byte 0xNN to the lone surrogate U+DCNN.
_UNDECODABLE = re.compile("[\udc80-\udcff]")


HEAD_BYTES = 4096
# More than this share of the first block undecodable or control bytes: not a text file. Random
# bytes are far above it (about 40%, and a NUL is all but certain in 4 KiB); a short list whose
# URLs carry raw Latin-1 bytes (tests/test_hostile_text.py: 3 of 31 bytes) is below it.
_MAX_BINARY_SHARE = 0.25
_CONTROL_BYTES = frozenset(range(0x20)) - frozenset(b"\t\n\r\f\v")


@contextmanager
def _open_text(path: Path) -> Iterator[TextIO]:
    try:
        with path.open("rb") as raw:
            check_text_head(path, raw.read(HEAD_BYTES))
        with path.open(encoding="utf-8-sig", errors="surrogateescape", newline="") as handle:
            yield handle
    except OSError as exc:
        raise ImportFileError(path, f"cannot read the file: {exc.strerror or exc}") from None


def check_text_head(path: Path, head: bytes) -> None:
    """Raise ImportFileError "not a text file" if ``head``, a file's first block, is not text."""
    if b"\x00" in head:
        offset = head.index(b"\x00")
        raise ImportFileError(
            path,
            f"not a text file (a NUL byte at offset {offset}: binary data, or UTF-16; "
            "a list or CSV file must be UTF-8)",
        )
    # Incremental, so a character cut at the end of the block is not counted as bad.
    decoded = codecs.getincrementaldecoder("utf-8")("surrogateescape").decode(head, final=False)
    bad = len(_UNDECODABLE.findall(decoded)) + sum(1 for b in head if b in _CONTROL_BYTES)
    if head and bad > _MAX_BINARY_SHARE * len(head):
        raise ImportFileError(
            path,
            f"not a text file ({bad} of its first {len(head)} bytes are not UTF-8 text); "
            "a list or CSV file must be UTF-8",
        )


def _undecodable(text: str) -> str | None:
    """Why `text` (decoded with surrogateescape) is not valid UTF-8, or None if it is."""
    found = _UNDECODABLE.search(text)
    if found is None:
        return None
    byte = ord(found.group()) - 0xDC00
    return f"not valid UTF-8 (byte 0x{byte:02x} at column {found.start() + 1})"


def _raw_bytes_url(kind: str, value: str) -> str | None:
    """A URL holding bytes that are not UTF-8, as its percent-escaped canonical form; None if
    ``value`` is not such a URL (``kind`` "url" or "auto"), which stays refused."""
    if kind not in ("url", "auto"):
        return None
    try:
        indicator = canonicalize(kind, value)
    except InvalidIndicator:
        return None
    return indicator.value if indicator.kind == "url" else None


def _is_comment_or_blank(text: str) -> bool:
    stripped = text.strip()
    return not stripped or stripped.startswith("#")


def _header_key(name: str) -> str:
    return name.strip().lower().replace(" ", "_").replace("-", "_")


_COLUMN_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_ -]*")


def looks_like_csv(path: Path) -> bool:
    """Whether the first line that is not blank or a comment is a CSV header naming ``value``.

    A header without one (``indicator,type``, or ``kind;value`` with another separator) raises
    ImportFileError: read as a list, each of its rows would be refused or, worse, misread.
    """
    with _open_text(path) as handle:
        for line in handle:
            if _is_comment_or_blank(line):
                continue
            try:
                header = next(csv.reader([line]), [])
            except csv.Error:
                return False
            keys = {_header_key(name) for name in header}
            if "value" in keys:
                return True
            _refuse_unusable_header(path, line)
            return False
    return False


def _refuse_unusable_header(path: Path, line: str) -> None:
    """Raise if ``line`` is a row of two or more column names: a CSV header this cannot use."""
    for separator in (",", ";", "\t", "|"):
        names = [name.strip() for name in line.strip().split(separator)]
        if len(names) < 2 or not all(_COLUMN_NAME_RE.fullmatch(name) for name in names):
            continue
        found = ", ".join(shorten(name, 30) for name in names[:10])
        if separator != "," and "value" in {_header_key(name) for name in names}:
            problem = f"separates its columns with {separator!r}; blindmatch reads CSV with ','"
        else:
            problem = f"has no 'value' column (found {found})"
        raise ImportFileError(
            path,
            f"looks like CSV, but its header {problem}; name the columns "
            f"{', '.join(CSV_COLUMNS)} (value at least), or pass --format text for a list",
        )


def parse_text(path: Path) -> Iterator[Event]:
    """One value per line, kind detected; blank lines and lines starting with # are ignored."""
    with _open_text(path) as handle:
        for number, line in enumerate(handle, 1):
            if _is_comment_or_blank(line):
                continue
            where = f"line {number}"
            value = line.strip()
            problem = _undecodable(value)
            url = _raw_bytes_url("auto", value) if problem else None
            if url is not None:
                yield Record("url", url, where)
                continue
            problem = problem or check_value(value)
            if problem is not None:
                yield Invalid(where, problem)
            else:
                yield Record("auto", value, where)


def parse_csv(path: Path) -> Iterator[Event]:
    """A CSV file whose header names a `value` column and optionally the other CSV_COLUMNS.

    A missing or empty `kind` means "detect it". Tags are separated by `;` or `|`. Other columns
    are ignored.
    """
    with _open_text(path) as handle:
        reader = csv.reader(handle)
        columns: dict[str, int] | None = None
        while True:
            try:
                row = next(reader)
            except StopIteration:
                break
            except csv.Error as exc:
                yield Invalid(f"line {reader.line_num}", f"unreadable CSV row: {exc}")
                continue
            if not row or all(_is_comment_or_blank(field) for field in row):
                continue
            if row[0].lstrip().startswith("#"):
                continue
            if columns is None:
                columns = _read_header(path, row)
                continue
            yield _csv_record(row, columns, f"line {reader.line_num}")
        if columns is None:
            raise ImportFileError(path, "CSV file has no header row (expected kind,value,...)")


def _read_header(path: Path, row: list[str]) -> dict[str, int]:
    columns: dict[str, int] = {}
    for index, name in enumerate(row):
        key = _header_key(name)
        if key in CSV_COLUMNS and key not in columns:
            columns[key] = index
    if "value" not in columns:
        found = ", ".join(shorten(name, 30) for name in row[:10])
        raise ImportFileError(
            path,
            f"CSV header has no 'value' column (found {found}); "
            f"the header names the columns {', '.join(CSV_COLUMNS)} (kind and value at least)",
        )
    return columns


def _csv_record(row: list[str], columns: dict[str, int], where: str) -> Event:
    def field(name: str) -> str:
        index = columns.get(name)
        return row[index].strip() if index is not None and index < len(row) else ""

    value = field("value")
    kind = field("kind").lower() or "auto"
    for index, text in enumerate(row):
        problem = _undecodable(text)
        if problem is None:
            continue
        url = _raw_bytes_url(kind, value) if index == columns["value"] else None
        if url is None:
            return Invalid(where, problem)
        kind, value = "url", url

    problem = check_value(value)
    if problem is not None:
        return Invalid(where, problem)

    if kind != "auto" and kind not in KINDS:
        return Invalid(
            where, f"unknown kind {shorten(kind, 30)}; expected one of {', '.join(KINDS)}"
        )

    seen: dict[str, str | None] = {}
    for name in ("first_seen", "last_seen"):
        text = field(name)
        try:
            seen[name] = parse_timestamp(text) if text else None
        except ValueError as exc:
            return Invalid(where, f"{name}: {exc}")
    first_seen, last_seen = seen["first_seen"], seen["last_seen"]
    if first_seen is not None and last_seen is not None and last_seen < first_seen:
        return Invalid(where, f"last_seen {last_seen} is before first_seen {first_seen}")

    tlp_text = field("tlp")
    tlp = tlp_from_name(tlp_text) if tlp_text else None
    if tlp_text and tlp is None:
        return Invalid(
            where,
            f"unknown TLP {shorten(tlp_text, 30)}; expected clear, green, amber, amber+strict or red",
        )

    tags = tuple(
        dict.fromkeys(t.strip() for t in _TAG_SEPARATORS.split(field("tags")) if t.strip())
    )
    return Record(kind, value, where, first_seen, last_seen, tlp, tags)
