"""Import files into the node's store: parse, canonicalise, store, audit, report.

Rules:
- One file (or MISP feed directory) is one transaction: its valid records are stored together or
  not at all. A file that cannot be read, or a crash midway, leaves nothing of that file behind,
  so running the import again never counts the same sightings twice. Records stream from the
  parser through canonicalisation into the store, so memory does not grow with the file.
- Invalid records (malformed lines, objects or values canon refuses) do not stop the file: they
  are reported with the file and the line number or object id, and the rest is stored.
- TLP: a record's own marking wins; `tlp` is what records without one get (default amber, the
  same as the node configuration's `import.default_tlp`).
- `source` (default: the file's name) is recorded with every sighting and in the import audit,
  one audit entry per file, including files that could not be read.
- Hash once: the indicators a file adds get their H(v) from `hasher` (the CLI passes its
  blinding pool's, so hashing uses every core) in the file's transaction (node.store).
- Names must end in a public suffix (blindmatch.core.canon, the suffix rule);
  `allow_private_suffix` lets internal names in.
- Dry run: everything is read, canonicalised and counted (per kind and TLP), and nothing reaches
  the store, not even the audit.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from blindmatch.core.canon import InvalidIndicator, canonicalize
from blindmatch.core.oprf import hash_indicators
from node.importers import Event, ImportFileError, Invalid, Skipped, read_path
from node.store import AddResult, Sighting, Store, normalize_tlp
from node.store.sightings import Hasher

DEFAULT_TLP = "amber"
PROGRESS_EVERY = 10_000
MAX_INVALID_KEPT = 1000  # the report counts every invalid record but keeps only the first ones
SHOWN_INVALID = 20


class InvalidEntry(NamedTuple):
    path: str
    where: str  # "line 12", "indicator--<uuid>", "attribute <uuid>"
    message: str


class FailedFile(NamedTuple):
    path: str
    problem: str


@dataclass(frozen=True, slots=True)
class FileImport:
    path: str
    fmt: str
    source: str
    new: int
    known: int
    import_id: int  # its audit entry; 0 in a dry run, which records nothing


@dataclass
class ImportReport:
    imported: Counter[str] = field(default_factory=Counter)  # new indicators per kind
    known: int = 0  # sightings merged into an indicator already stored (or repeated in the file)
    skipped: Counter[str] = field(default_factory=Counter)  # reason -> how many
    invalid: list[InvalidEntry] = field(default_factory=list)  # the first MAX_INVALID_KEPT
    invalid_count: int = 0
    failed: list[FailedFile] = field(default_factory=list)  # nothing was imported from these
    files: list[FileImport] = field(default_factory=list)
    total: int = 0  # records, skipped and invalid entries read
    valid: Counter[str] = field(default_factory=Counter)  # usable sightings per kind
    per_tlp: Counter[str] = field(default_factory=Counter)  # usable sightings per TLP
    dry_run: bool = False  # nothing was stored: `valid` and `per_tlp` say what would have been

    @property
    def new(self) -> int:
        return sum(self.imported.values())

    @property
    def ok(self) -> bool:
        """Whether every file was read and every record was usable."""
        return not self.failed and self.invalid_count == 0

    def format(self) -> str:
        """The human summary the CLI prints."""
        lines = [
            f"Read {_plural(self.total, 'entry', 'entries')} from {_plural(len(self.files), 'file')}."
        ]
        if self.dry_run:
            lines[0] = "Dry run: nothing was stored. " + lines[0]
            per_kind = ", ".join(f"{kind} {n:,}" for kind, n in sorted(self.valid.items()))
            per_tlp = ", ".join(f"{tlp} {n:,}" for tlp, n in sorted(self.per_tlp.items()))
            lines.append(
                f"Would store {_plural(sum(self.valid.values()), 'sighting')}"
                + (f": {per_kind}" if per_kind else "")
            )
            if per_tlp:
                lines.append(f"  by TLP: {per_tlp}")
        else:
            per_kind = ", ".join(f"{kind} {n:,}" for kind, n in sorted(self.imported.items()))
            lines.append(
                f"Imported {_plural(self.new, 'new indicator')}"
                + (f": {per_kind}" if per_kind else "")
            )
            # The store counts a value repeated within the import as known from its second time.
            lines.append(f"Already known or repeated: {self.known:,}")
        if self.skipped:
            lines.append(f"Skipped {sum(self.skipped.values()):,}:")
            for reason, n in sorted(self.skipped.items(), key=lambda item: (-item[1], item[0])):
                lines.append(f"  {reason}: {n:,}")
        if self.invalid_count:
            lines.append(f"Invalid {_plural(self.invalid_count, 'record')} (not imported):")
            for entry in self.invalid[:SHOWN_INVALID]:
                lines.append(f"  {entry.path} {entry.where}: {entry.message}")
            if self.invalid_count > SHOWN_INVALID:
                lines.append(f"  ... and {self.invalid_count - SHOWN_INVALID:,} more")
        if self.failed:
            lines.append(f"Could not import {_plural(len(self.failed), 'file')} (nothing stored):")
            for failed in self.failed:
                lines.append(f"  {failed.problem}")
        return "\n".join(lines)

    def note_invalid(self, path: str, where: str, message: str) -> None:
        self.invalid_count += 1
        if len(self.invalid) < MAX_INVALID_KEPT:
            self.invalid.append(InvalidEntry(path, where, message))


def import_paths(
    store: Store,
    paths: Iterable[Path | str],
    *,
    fmt: str = "auto",
    tlp: str | None = None,
    source: str | None = None,
    progress: Callable[[int], None] | None = None,
    hasher: Hasher = hash_indicators,
    allow_private_suffix: bool = False,
    dry_run: bool = False,
) -> ImportReport:
    """Import every path (file or MISP feed directory), each in its own transaction.

    `progress` is called with the running number of entries read, every PROGRESS_EVERY entries
    and once at the end. Raises ValueError for an unknown `fmt` or `tlp` before reading anything.
    """
    default_tlp = normalize_tlp(tlp) if tlp is not None else DEFAULT_TLP
    report = ImportReport(dry_run=dry_run)
    for item in paths:
        path = Path(item)
        name = source or _text(path.resolve().name) or _text(str(path))
        import_events(
            store,
            _text(str(path)),
            functools.partial(read_path, path, fmt),
            fmt=fmt,
            default_tlp=default_tlp,
            source=name,
            report=report,
            progress=progress,
            hasher=hasher,
            allow_private_suffix=allow_private_suffix,
        )
    if progress is not None:
        progress(report.total)
    return report


def import_events(
    store: Store,
    shown: str,
    read: Callable[[], tuple[str, Iterator[Event]]],
    *,
    fmt: str,
    default_tlp: str,
    source: str,
    report: ImportReport,
    progress: Callable[[int], None] | None = None,
    cursor: tuple[str, str] | None = None,
    hasher: Hasher = hash_indicators,
    allow_private_suffix: bool = False,
) -> FileImport | None:
    """Import what ``read()`` yields, named ``shown``, as one transaction and one audit entry.

    A file, a feed directory or one page a connector fetched: ``read`` returns the detected format
    and the events. ``cursor`` (source, position) is saved with the sightings (node.store). Returns
    None, with the failure in ``report``, when ``read`` raised ImportFileError. With
    ``report.dry_run`` the store is not touched: the result counts what would be stored.
    """
    skipped: Counter[str] = Counter()
    valid: Counter[str] = Counter()
    per_tlp: Counter[str] = Counter()
    entries_before, invalid_before = report.total, report.invalid_count
    detected = fmt
    try:
        detected, events = read()
        sightings = _sightings(shown, events, report, skipped, progress, allow_private_suffix)
        counted = _counted(sightings, valid, per_tlp, default_tlp)
        if report.dry_run:
            seen = sum(1 for _ in counted)
            result = AddResult(new=0, known=seen)
        else:
            result = store.add_sightings(
                counted, source=source, default_tlp=default_tlp, cursor=cursor, hasher=hasher
            )
    except ImportFileError as exc:
        # The transaction rolled back: the file's entries count as not read.
        report.total = entries_before
        del report.invalid[invalid_before:]
        report.invalid_count = invalid_before
        problem = _text(str(exc))
        report.failed.append(FailedFile(shown, problem))
        if not report.dry_run:
            store.record_import(source, shown, detected, {"error": problem})
        return None
    report.valid.update(valid)
    report.per_tlp.update(per_tlp)
    if report.dry_run:
        report.skipped.update(skipped)
        report.files.append(FileImport(shown, detected, source, 0, result.known, import_id=0))
        return None
    imported = Counter(result.new_per_kind)
    report.imported.update(imported)
    report.known += result.known
    report.skipped.update(skipped)
    summary = {
        "imported": dict(imported),
        "new": result.new,
        "known": result.known,
        "skipped": dict(skipped),
        "invalid": report.invalid_count - invalid_before,
        "entries": report.total - entries_before,
        "default_tlp": default_tlp,
    }
    import_id = store.record_import(source, shown, detected, summary)
    done = FileImport(shown, detected, source, result.new, result.known, import_id)
    report.files.append(done)
    return done


def _sightings(
    path: str,
    events: Iterator[Event],
    report: ImportReport,
    skipped: Counter[str],
    progress: Callable[[int], None] | None,
    allow_private_suffix: bool,
) -> Iterator[Sighting]:
    """The canonical sightings among `events`; skipped and invalid entries go to the report."""
    for event in events:
        report.total += 1
        if progress is not None and report.total % PROGRESS_EVERY == 0:
            progress(report.total)
        if isinstance(event, Skipped):
            skipped[event.reason] += 1
        elif isinstance(event, Invalid):
            report.note_invalid(path, event.where, event.message)
        else:
            try:
                indicator = canonicalize(
                    event.kind_hint, event.raw, allow_private_suffix=allow_private_suffix
                )
            except InvalidIndicator as exc:
                report.note_invalid(path, event.where, str(exc))
                continue
            yield Sighting(
                kind=indicator.kind,
                value=indicator.value,
                raw=event.raw,
                first_seen=event.first_seen,
                last_seen=event.last_seen,
                count=event.count,
                tlp=event.tlp,
                tags=event.tags,
                stix_id=event.stix_id,
                misp_uuid=event.misp_uuid,
            )


def _counted(
    sightings: Iterator[Sighting], valid: Counter[str], per_tlp: Counter[str], default_tlp: str
) -> Iterator[Sighting]:
    """``sightings``, counted per kind and TLP on the way through."""
    for sighting in sightings:
        valid[sighting.kind] += 1
        # Parsers hand over canonical TLP names (common.tlp_from_name).
        per_tlp[sighting.tlp or default_tlp] += 1
        yield sighting


def _text(name: str) -> str:
    """`name` with any undecodable file-name bytes replaced, so SQLite can store it."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _plural(n: int, noun: str, nouns: str | None = None) -> str:
    return f"{n:,} {noun}" if n == 1 else f"{n:,} {nouns or noun + 's'}"
