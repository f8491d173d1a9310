"""Parsers for the files CERTs already have: plain lists, CSV, STIX 2.1, MISP events and feeds.

`read_path` picks the parser (by content, unless a format is forced) and returns the stream of
`Record` / `Skipped` / `Invalid` events. Parsers never canonicalise and never touch the store:
node.importing does both.

Detection: a directory with manifest.json is a MISP feed. A file whose first non-blank character
is `{` or `[` is JSON, and its shape decides between STIX (a bundle, or objects with STIX ids) and
MISP (Event, response, Attribute or Object keys). Any other file is CSV if its first line that is
not blank or a `#` comment is a header naming `value`, refused if that line is a row of column
names without `value` (a CSV file with no usable column), and a plain list otherwise. A file
that is not text (node.importers.text.check_text_head) is refused, whatever the format.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from node.importers.common import (
    MAX_VALUE_CHARS,
    Event,
    ImportFileError,
    Invalid,
    Record,
    Skipped,
    load_json,
)
from node.importers.misp import is_misp_document, parse_misp, parse_misp_feed
from node.importers.stix import parse_stix
from node.importers.text import check_text_head, looks_like_csv, parse_csv, parse_text

__all__ = [
    "FORMATS",
    "MAX_VALUE_CHARS",
    "Event",
    "ImportFileError",
    "Invalid",
    "Record",
    "Skipped",
    "detect_format",
    "read_path",
]

# What --format accepts; "misp" also covers a feed directory.
FORMATS = ("auto", "text", "csv", "stix", "misp")
_SNIFF_BYTES = 4096


def detect_format(path: Path) -> str:
    """ "text", "csv", "stix", "misp" or "misp-feed", judged by content."""
    return _detect(path)[0]


def read_path(path: Path, fmt: str = "auto") -> tuple[str, Iterator[Event]]:
    """The format of `path` and its events. Raises ImportFileError if it cannot be read at all.

    The JSON formats are decoded in full before the first event, so a truncated or malformed
    document fails here, before anything is imported; plain lists and CSV stream line by line.
    """
    if fmt not in (*FORMATS, "misp-feed"):
        raise ValueError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    if path.is_dir():
        _check_feed(path, fmt)
        return "misp-feed", parse_misp_feed(path)
    if not path.is_file():
        raise ImportFileError(path, "no such file")
    if fmt == "text":
        return "text", parse_text(path)
    if fmt == "csv":
        return "csv", parse_csv(path)
    if fmt == "misp-feed":
        raise ImportFileError(path, "is a file; a MISP feed is a directory with manifest.json")
    if fmt in ("stix", "misp"):
        document = load_json(path)
    else:
        fmt, document = _detect(path)
    if fmt == "stix":
        return "stix", parse_stix(path, document)
    if fmt == "misp":
        return "misp", parse_misp(path, document)
    return fmt, parse_csv(path) if fmt == "csv" else parse_text(path)


def _check_feed(path: Path, fmt: str) -> None:
    if fmt not in ("auto", "misp", "misp-feed"):
        raise ImportFileError(path, f"is a directory; --format {fmt} reads a file")
    if not (path / "manifest.json").is_file():
        raise ImportFileError(
            path, "is a directory without manifest.json; only MISP feed directories can be imported"
        )


def _detect(path: Path) -> tuple[str, object]:
    """The format of `path`, and its decoded JSON document when it is JSON (else None)."""
    if path.is_dir():
        _check_feed(path, "auto")
        return "misp-feed", None
    try:
        with path.open("rb") as handle:
            head = handle.read(_SNIFF_BYTES)
    except OSError as exc:
        raise ImportFileError(path, f"cannot read the file: {exc.strerror or exc}") from None
    check_text_head(path, head)
    if head.removeprefix(b"\xef\xbb\xbf").lstrip()[:1] in (b"{", b"["):
        document = load_json(path)
        if is_misp_document(document):
            return "misp", document
        if _is_stix_document(document):
            return "stix", document
        raise ImportFileError(
            path,
            "JSON that is neither a STIX 2.1 bundle/object nor a MISP event; "
            "if it is one of them, say so with --format stix or --format misp",
        )
    return ("csv" if looks_like_csv(path) else "text"), None


def _is_stix_document(document: object) -> bool:
    sample = document[0] if isinstance(document, list) and document else document
    if not isinstance(sample, dict) or not isinstance(sample.get("type"), str):
        return False
    object_id = sample.get("id")
    return (
        sample["type"] == "bundle"
        or "spec_version" in sample
        or (isinstance(object_id, str) and object_id.startswith(sample["type"] + "--"))
    )
