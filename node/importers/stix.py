"""STIX 2.1: bundles, plain lists of objects, or a single object.

- Indicators with `pattern_type` "stix" (or none) give one record per usable value of their
  pattern (see stix_pattern). Other pattern types and revoked indicators are skipped.
- Times: first_seen is `valid_from` (the time from which the producer vouches for the indicator),
  falling back to `created`; last_seen is `modified`, falling back to first_seen. `valid_until` is
  an expiry, not an observation, so it is not used. Sighting objects then widen the window.
- `sighting` objects whose `sighting_of_ref` names an indicator in the same file raise its count
  by their `count` (default 1).
- TLP comes from `object_marking_refs`: the fixed TLP 1.0 and TLP 2.0 marking-definition ids, and
  any TLP marking-definition object in the file. Several TLP markings: the strictest wins.
  Unmarked indicators get the import's default.
- Tags are the indicator's `labels`. Records keep the indicator's id (`stix_id`), so that a
  sighting pushed back later can point at it.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from node.importers.common import (
    Event,
    ImportFileError,
    Invalid,
    Record,
    Skipped,
    check_value,
    clip,
    ordered_window,
    parse_timestamp,
    shorten,
    strictest_tlp,
    tlp_from_name,
    type_name,
    widen,
)
from node.importers.stix_pattern import PatternError, PatternValue, pattern_values

# Fixed ids published by OASIS for the TLP marking definitions.
TLP_MARKING_IDS = {
    # TLP 1.0, STIX 2.1 specification section 7.2.1.4
    "marking-definition--613f2e26-407d-48c7-9eca-b8e91df99dc9": "clear",  # TLP:WHITE
    "marking-definition--34098fce-860f-48ae-8e50-ebd3cc5e41da": "green",
    "marking-definition--f88d31f6-486f-44da-b317-01333bde0b82": "amber",
    "marking-definition--5e57c739-391a-4eb3-b6be-7d15ca92d5ed": "red",
    # TLP 2.0, oasis-open/cti-stix-common-objects extension-definition-specifications/tlp-2.0
    "marking-definition--94868c89-83c2-464b-929b-a1a8aa3c8487": "clear",
    "marking-definition--bab4a63c-aed9-4cf5-a766-dfca5abac2bb": "green",
    "marking-definition--55d920b0-5e8b-4f79-9ee9-91f868d9b421": "amber",
    "marking-definition--939a9414-2ddd-4d32-a0cd-375ea402b003": "amber+strict",
    "marking-definition--e828b379-4e03-4974-9ac4-e53a884c97c1": "red",
}
# The STIX 2.1 limit for a sighting's count; it also keeps sums far from SQLite's 64-bit limit.
MAX_COUNT = 999_999_999
# An indicator id worth pointing a sighting at: the type and a UUID, nothing else.
_STIX_ID = re.compile(r"indicator--[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}")
_TLP2_EXTENSION = "extension-definition--60a3c5c5-0d10-413e-aab3-9e08dde9e88d"


@dataclass
class _Seen:
    """What the file's sighting objects add to one indicator."""

    count: int = 0
    first_seen: str | None = None
    last_seen: str | None = None


def stix_objects(path: Path | str, document: object) -> list[object]:
    """The objects of a bundle, a plain list of objects or a single object."""
    if isinstance(document, list):
        return document
    if not isinstance(document, dict) or not isinstance(document.get("type"), str):
        raise ImportFileError(path, "not a STIX 2.1 bundle or object (no 'type' property)")
    if document["type"] != "bundle":
        return [document]
    objects = document.get("objects", [])
    if not isinstance(objects, list):
        raise ImportFileError(
            path, f"the bundle's 'objects' is {type_name(objects)}, expected a list"
        )
    return objects


def parse_stix(path: Path | str, document: object) -> Iterator[Event]:
    objects = stix_objects(path, document)
    markings = dict(TLP_MARKING_IDS)
    indicators: list[tuple[str, dict[str, object]]] = []
    sightings: list[tuple[str, dict[str, object]]] = []
    for index, obj in enumerate(objects):
        where = f"objects[{index}]"
        if not isinstance(obj, dict):
            yield Invalid(where, f"is {type_name(obj)}, expected a STIX object")
            continue
        object_id = obj.get("id")
        if isinstance(object_id, str) and object_id:
            where = object_id if len(object_id) <= 100 else object_id[:100] + "..."
        kind = obj.get("type")
        if kind == "indicator":
            indicators.append((where, obj))
        elif kind == "sighting":
            sightings.append((where, obj))
        elif kind == "marking-definition" and isinstance(object_id, str):
            level = _marking_tlp(obj)
            if level is not None:
                markings[object_id] = level

    seen: dict[str, _Seen] = {}
    indicator_ids = {obj.get("id") for _, obj in indicators}
    for where, sighting in sightings:
        yield from _add_sighting(where, sighting, indicator_ids, seen)

    for where, indicator in indicators:
        object_id = indicator.get("id")
        extra = seen.get(object_id) if isinstance(object_id, str) else None
        yield from _indicator_events(where, indicator, markings, extra or _Seen())


def _marking_tlp(marking: dict[str, object]) -> str | None:
    """The TLP level a marking-definition object defines, or None if it is not a TLP marking."""
    definition = marking.get("definition")
    if marking.get("definition_type") == "tlp" and isinstance(definition, dict):
        level = definition.get("tlp")
        if isinstance(level, str):
            return tlp_from_name(level)
    extensions = marking.get("extensions")
    if isinstance(extensions, dict):
        tlp2 = extensions.get(_TLP2_EXTENSION)
        if isinstance(tlp2, dict) and isinstance(tlp2.get("tlp_2_0"), str):
            return tlp_from_name(str(tlp2["tlp_2_0"]))
    name = marking.get("name")
    if (
        marking.get("definition_type") in (None, "tlp")
        and isinstance(name, str)
        and name.strip().lower().startswith("tlp:")
    ):
        return tlp_from_name(name)
    return None


def _add_sighting(
    where: str, sighting: dict[str, object], indicator_ids: set[object], seen: dict[str, _Seen]
) -> Iterator[Event]:
    target = sighting.get("sighting_of_ref")
    if not isinstance(target, str) or not target.startswith("indicator--"):
        return  # sightings of malware, campaigns, ... say nothing about an indicator value
    if target not in indicator_ids:
        yield Skipped(where, "STIX sighting of an indicator not in the file")
        return
    count = sighting.get("count", 1)
    if isinstance(count, bool) or not isinstance(count, int) or not 0 <= count <= MAX_COUNT:
        shown = shorten(count, 30) if isinstance(count, str) else clip(str(count), 30)
        yield Invalid(where, f"sighting count {shown} is not a whole number from 0 to {MAX_COUNT}")
        return
    try:
        first = _optional_time(sighting, "first_seen") or _optional_time(sighting, "created")
        last = _optional_time(sighting, "last_seen") or first
    except ValueError as exc:
        yield Invalid(where, str(exc))
        return
    entry = seen.setdefault(target, _Seen())
    entry.count += count
    entry.first_seen, entry.last_seen = widen(entry.first_seen, entry.last_seen, first, last)


def _optional_time(obj: dict[str, object], key: str) -> str | None:
    value = obj.get(key)
    if value is None:
        return None
    try:
        return parse_timestamp(value)
    except ValueError as exc:
        raise ValueError(f"{key}: {exc}") from None


def _indicator_events(
    where: str, indicator: dict[str, object], markings: dict[str, str], seen: _Seen
) -> Iterator[Event]:
    pattern_type = indicator.get("pattern_type", "stix")
    if pattern_type != "stix":
        yield Skipped(where, f"STIX pattern_type {clip(str(pattern_type))}")
        return
    if indicator.get("revoked") is True:
        yield Skipped(where, "STIX revoked indicator")
        return
    pattern = indicator.get("pattern")
    if not isinstance(pattern, str):
        yield Invalid(where, f"indicator 'pattern' is {type_name(pattern)}, expected a string")
        return
    try:
        first = _optional_time(indicator, "valid_from") or _optional_time(indicator, "created")
        last = _optional_time(indicator, "modified") or first
        tlp = _object_tlp(indicator, markings)
        tags = _labels(indicator)
        values = pattern_values(pattern)
    except PatternError as exc:
        yield Invalid(where, f"pattern {shorten(pattern, 60)}: {exc}")
        return
    except ValueError as exc:
        yield Invalid(where, str(exc))
        return
    first, last = widen(*ordered_window(first, last), seen.first_seen, seen.last_seen)
    object_id = indicator.get("id")
    stix_id = object_id if isinstance(object_id, str) and _STIX_ID.fullmatch(object_id) else None
    for value in values:
        if not isinstance(value, PatternValue):
            yield Skipped(where, value)
            continue
        problem = check_value(value.raw)
        if problem is not None:
            yield Invalid(where, problem)
            continue
        yield Record(
            value.kind_hint, value.raw, where, first, last, tlp, tags, 1 + seen.count, stix_id
        )


def _object_tlp(obj: dict[str, object], markings: dict[str, str]) -> str | None:
    refs = obj.get("object_marking_refs", [])
    if not isinstance(refs, list):
        raise ValueError(f"object_marking_refs is {type_name(refs)}, expected a list")
    return strictest_tlp(markings[ref] for ref in refs if isinstance(ref, str) and ref in markings)


def _labels(obj: dict[str, object]) -> tuple[str, ...]:
    labels = obj.get("labels", [])
    if not isinstance(labels, list):
        raise ValueError(f"labels is {type_name(labels)}, expected a list")
    return tuple(dict.fromkeys(label for label in labels if isinstance(label, str)))
