"""Events every parser yields, and the small helpers they share with the connectors that read
the same documents (node.connectors.misp, node.connectors.mispfeed).

A parser never touches the store and never canonicalises: it turns a file into a stream of
`Record` (one candidate indicator), `Skipped` (something deliberately left out, with a reason that
is counted) and `Invalid` (something that should have been an indicator but is malformed). A file
that cannot be read at all raises `ImportFileError` before or while streaming; the importer then
rolls back everything that file produced.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from node.store import TLP_LEVELS, normalize_tlp

# Values longer than this are rejected before canonicalisation: no real indicator is this long,
# and a multi-megabyte "value" would otherwise be copied into error messages and the store.
MAX_VALUE_CHARS = 8192


@dataclass(frozen=True, slots=True)
class Record:
    """One candidate indicator, as it appeared in the source, not yet canonicalised."""

    kind_hint: str  # a blindmatch.core.canon kind, or "auto"
    raw: str
    where: str  # "line 12", "indicator--<uuid>", "attribute <uuid>"
    first_seen: str | None = None  # ISO 8601 UTC, seconds precision
    last_seen: str | None = None
    tlp: str | None = None  # one of node.store.TLP_LEVELS; None = the import's default
    tags: tuple[str, ...] = ()
    count: int = 1
    stix_id: str | None = None  # the STIX indicator's own id, so a sighting can point back at it
    misp_uuid: str | None = None  # the MISP attribute's uuid, for the same reason


@dataclass(frozen=True, slots=True)
class Skipped:
    """Something left out on purpose; `reason` is a short, countable phrase."""

    where: str
    reason: str


@dataclass(frozen=True, slots=True)
class Invalid:
    """Something that should have been an indicator but is malformed."""

    where: str
    message: str


Event = Record | Skipped | Invalid


class ImportFileError(Exception):
    """The whole file (or feed directory) cannot be read; nothing from it is imported."""

    def __init__(self, path: Path | str, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = str(path)
        self.problem = problem


def clip(text: str, limit: int = 40) -> str:
    """`text` cut to `limit` characters, for skip reasons (which are counted, so must stay few)."""
    return text if len(text) <= limit else text[:limit] + "..."


def shorten(text: str, limit: int = 80) -> str:
    """`text` quoted and cut to `limit` characters, for error messages."""
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text)} characters)"


def type_name(value: object) -> str:
    """The JSON name of a decoded value's type, for messages about wrong types."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def check_value(raw: str) -> str | None:
    """Why `raw` cannot be a value at all (before canonicalisation), or None if it may be one."""
    if not raw.strip():
        return "empty value"
    if len(raw) > MAX_VALUE_CHARS:
        return f"value is {len(raw)} characters long; the limit is {MAX_VALUE_CHARS}"
    return None


def iso_utc(moment: datetime) -> str:
    """`moment` as the store's timestamp form: ISO 8601, UTC, seconds precision, "Z"."""
    if moment.tzinfo is None:
        # Feeds that omit the zone mean UTC in practice (MISP, most CSV exports).
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_timestamp(value: object) -> str:
    """An ISO 8601 string or unix seconds (a number or a string of digits) as ISO 8601 UTC.

    Raises ValueError naming the value.
    """
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is a boolean, not a time")
    if isinstance(value, str):
        text = value.strip()
        if text.isascii() and text.isdigit() and len(text) <= 12:
            return _from_unix(int(text), value)
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            raise ValueError(f"{shorten(value, 40)} is neither ISO 8601 nor unix seconds") from None
        try:
            return iso_utc(moment)
        except OverflowError:  # year 1 or 9999 pushed out of range by its UTC offset
            raise ValueError(f"{shorten(value, 40)} is out of range for a time") from None
    if isinstance(value, int | float):
        return _from_unix(value, value)
    raise ValueError(f"is {type_name(value)}, expected a time (a string or a number)")


def _from_unix(seconds: float, original: object) -> str:
    try:
        return iso_utc(datetime.fromtimestamp(seconds, UTC))
    except (OverflowError, OSError, ValueError):
        raise ValueError(f"{original!r} is out of range for a time") from None


def widen(
    first: str | None, last: str | None, other_first: str | None, other_last: str | None
) -> tuple[str | None, str | None]:
    """The smallest first-seen/last-seen window covering both windows (None = unknown)."""
    firsts = [t for t in (first, other_first) if t is not None]
    lasts = [t for t in (last, other_last) if t is not None]
    return (min(firsts) if firsts else None, max(lasts) if lasts else None)


def ordered_window(first: str | None, last: str | None) -> tuple[str | None, str | None]:
    """A window whose last_seen is never before its first_seen."""
    if first is not None and last is not None and last < first:
        return first, first
    return first, last


def strictest_tlp(levels: Iterable[str]) -> str | None:
    """The most restrictive of `levels` (canonical names), or None if there are none.

    An object marked twice is treated as the stricter marking: sharing it more widely than one of
    its markings allows would be the worse mistake.
    """
    known = [level for level in levels if level in TLP_LEVELS]
    return max(known, key=TLP_LEVELS.index) if known else None


def tlp_from_name(name: str) -> str | None:
    """The TLP level a name such as "TLP:AMBER", "tlp:white" or "amber+strict" denotes, or None."""
    text = name.strip()
    if text.lower().startswith("tlp:"):
        text = text[4:]
    try:
        return normalize_tlp(text)
    except ValueError:
        return None


def load_json(path: Path) -> object:
    """The decoded JSON document at `path`; any failure is an ImportFileError naming the file."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ImportFileError(path, f"cannot read the file: {exc.strerror or exc}") from None
    return decode_json(path, data)


def decode_json(path: Path | str, data: bytes) -> object:
    """`data` decoded as UTF-8 JSON; any failure is an ImportFileError naming `path`."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ImportFileError(
            path, f"not valid UTF-8 (byte 0x{data[exc.start]:02x} at offset {exc.start})"
        ) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        where = f"line {exc.lineno} column {exc.colno}"
        if exc.msg.startswith("Unterminated string"):
            # The scanner reports the opening quote of a string that never closes.
            problem = f"truncated JSON: the file ends inside the string that starts at {where}"
        elif exc.pos >= len(text.rstrip()):
            problem = f"truncated JSON: the file ends early ({where}): {exc.msg}"
        else:
            problem = f"not valid JSON at {where}: {exc.msg}"
        raise ImportFileError(path, problem) from None
    except RecursionError:
        problem = "JSON nested too deeply to read (more than about 1000 levels)"
        raise ImportFileError(path, problem) from None
    except ValueError as exc:  # e.g. an integer literal longer than Python's digit limit
        raise ImportFileError(path, f"not readable JSON: {exc}") from None
