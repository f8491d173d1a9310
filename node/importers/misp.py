"""MISP event JSON and MISP feed directories.

- A file holds `{"Event": {...}}`, a bare event, a list of either, or `{"response": [...]}`.
  A feed directory holds `manifest.json` (event uuid -> metadata) and one `<uuid>.json` per event;
  an event file that is missing or unreadable is one Invalid entry, the other events still import.
- Attributes come from `Event.Attribute` and `Event.Object[].Attribute`. The types in
  MISP_TYPES give records (both halves of `domain|ip`, the IP of `ip-*|port`, the hash of
  `filename|<hash>`); every other type is skipped and counted by type. Deleted attributes are
  skipped. `to_ids` is ignored: an attribute not meant for detection is still something a partner
  may have seen, and matching is about what partners hold, not about alerting.
- TLP: the attribute's `tlp:*` tags, else the event's; several TLP tags: the strictest wins.
  `tlp:white` means clear. A tag list that is not a list of tags makes its attribute (or, for the
  event's tags, the whole event) invalid, so nothing is imported with a TLP it might not have.
- Times: first_seen is the attribute's `first_seen`, else its `timestamp`, else the event's;
  last_seen is its `last_seen`, else its `timestamp`, else the event's. Unix seconds may be numbers
  or strings; ISO 8601 strings are accepted too.
- Tags are the other tag names of the event and the attribute.
- A record keeps its attribute's uuid (when it is one), so a sighting can be sent back to it.
- MISP's attribute search (``parse_misp_attributes``) gives attributes each with its ``Event``;
  tags marked ``inherited`` came from the event and count as the event's.
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
    decode_json,
    load_json,
    ordered_window,
    parse_timestamp,
    shorten,
    strictest_tlp,
    tlp_from_name,
    type_name,
)

_HASH_TYPES = ("md5", "sha1", "sha256", "sha512")
MISP_TYPES = frozenset(
    {
        "ip-src", "ip-dst", "ip-src|port", "ip-dst|port", "domain", "hostname", "domain|ip",
        "url", "uri", "link", "email", "email-src", "email-dst",
        *_HASH_TYPES,
        *(f"filename|{name}" for name in _HASH_TYPES),
    }
)  # fmt: skip
_EVENT_KEYS = ("Attribute", "Object", "uuid", "info")
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


@dataclass(frozen=True, slots=True)
class _EventContext:
    where: str
    tlp: str | None
    tags: tuple[str, ...]
    timestamp: str | None


def is_misp_document(document: object) -> bool:
    """Whether `document` has the shape of MISP event JSON (judged on its first event)."""
    sample = document[0] if isinstance(document, list) and document else document
    if not isinstance(sample, dict):
        return False
    return "Event" in sample or "response" in sample or "Attribute" in sample or "Object" in sample


def parse_misp(path: Path, document: object) -> Iterator[Event]:
    for where, event in _events(path, document):
        yield from _event_records(where, event)


def parse_misp_feed(directory: Path) -> Iterator[Event]:
    manifest = load_json(directory / "manifest.json")
    if not isinstance(manifest, dict):
        raise ImportFileError(
            directory / "manifest.json",
            f"is {type_name(manifest)}, expected an object mapping event uuids to metadata",
        )
    for key in manifest:
        if not _UUID.fullmatch(key):
            # Keys name files: anything but a uuid could point outside the feed directory.
            yield Invalid(f"manifest entry {shorten(key, 60)}", "is not an event uuid")
            continue
        event_path = directory / f"{key}.json"
        try:
            data = event_path.read_bytes()
        except OSError as exc:
            problem = f"listed in manifest.json but {event_path.name} cannot be read"
            yield Invalid(f"event {key}", f"{problem}: {exc.strerror or exc}")
            continue
        try:
            document = decode_json(event_path.name, data)
            events = _events(event_path, document)
        except ImportFileError as exc:
            yield Invalid(f"event {key}", str(exc))
            continue
        for where, event in events:
            yield from _event_records(where, event)


def parse_misp_attributes(attributes: object) -> Iterator[Event]:
    """Attributes as MISP's attribute search returns them, each read as in its own event."""
    if not isinstance(attributes, list):
        yield Invalid("search result", f"Attribute is {type_name(attributes)}, expected a list")
        return
    for number, attribute in enumerate(attributes, 1):
        where = f"attribute #{number}"
        if not isinstance(attribute, dict):
            yield Invalid(where, f"is {type_name(attribute)}, expected an object")
            continue
        event = attribute.get("Event", {})
        tags = attribute.get("Tag", [])
        if not isinstance(event, dict) or not isinstance(tags, list):
            yield Invalid(where, "Event or Tag has the wrong shape")
            continue
        inherited = [t for t in tags if isinstance(t, dict) and _truthy(t.get("inherited"))]
        own = [t for t in tags if t not in inherited]
        event_tags = event.get("Tag", [])
        event_tags = [*event_tags, *inherited] if isinstance(event_tags, list) else event_tags
        try:
            tlp, names = _tags({"Tag": event_tags})
            timestamp = _time(event, "timestamp")
        except ValueError as exc:
            yield Invalid(where, f"event: {exc}")
            continue
        context = _EventContext(where, tlp, names, timestamp)
        yield from _attributes([{**attribute, "Tag": own}], "attribute", context)


def _events(path: Path, document: object) -> list[tuple[str, object]]:
    """The events of a document, each with a fallback `where` for when it has no uuid."""
    if isinstance(document, dict) and "response" in document:
        items = document["response"]
        if not isinstance(items, list):
            raise ImportFileError(path, f"'response' is {type_name(items)}, expected a list")
    elif isinstance(document, list):
        items = document
    else:
        items = [document]
    events: list[tuple[str, object]] = []
    for number, item in enumerate(items, 1):
        event = item.get("Event", item) if isinstance(item, dict) else item
        events.append((f"event #{number}", event))
    first = events[0][1] if len(events) == 1 else None
    if isinstance(first, dict) and not any(key in first for key in _EVENT_KEYS):
        raise ImportFileError(path, "not a MISP event (no Attribute, Object, uuid or info)")
    return events


def _event_records(where: str, event: object) -> Iterator[Event]:
    if not isinstance(event, dict):
        yield Invalid(where, f"is {type_name(event)}, expected a MISP event object")
        return
    uuid = event.get("uuid")
    if isinstance(uuid, str) and uuid:
        where = f"event {uuid[:64]}"
    try:
        tlp, tags = _tags(event)
        timestamp = _time(event, "timestamp")
    except ValueError as exc:
        yield Invalid(where, f"{exc}; the event's attributes are not imported")
        return
    context = _EventContext(where, tlp, tags, timestamp)

    attributes = event.get("Attribute", [])
    yield from _attributes(attributes, f"{where} attribute", context)
    objects = event.get("Object", [])
    if not isinstance(objects, list):
        yield Invalid(where, f"Object is {type_name(objects)}, expected a list")
        return
    for number, obj in enumerate(objects, 1):
        object_where = f"{where} object #{number}"
        if not isinstance(obj, dict):
            yield Invalid(object_where, f"is {type_name(obj)}, expected a MISP object")
            continue
        yield from _attributes(obj.get("Attribute", []), f"{object_where} attribute", context)


def _attributes(attributes: object, where: str, context: _EventContext) -> Iterator[Event]:
    if not isinstance(attributes, list):
        yield Invalid(where, f"Attribute is {type_name(attributes)}, expected a list")
        return
    for number, attribute in enumerate(attributes, 1):
        if not isinstance(attribute, dict):
            yield Invalid(f"{where} #{number}", f"is {type_name(attribute)}, expected an object")
            continue
        uuid = attribute.get("uuid")
        label = f"attribute {uuid[:64]}" if isinstance(uuid, str) and uuid else f"{where} #{number}"
        yield from _attribute_records(label, attribute, context)


def _misp_uuid(attribute: dict[str, object]) -> str | None:
    uuid = attribute.get("uuid")
    return uuid.lower() if isinstance(uuid, str) and _UUID.fullmatch(uuid) else None


def _attribute_records(
    where: str, attribute: dict[str, object], context: _EventContext
) -> Iterator[Event]:
    if _truthy(attribute.get("deleted")):
        yield Skipped(where, "MISP deleted attribute")
        return
    kind = attribute.get("type")
    if not isinstance(kind, str):
        yield Invalid(where, f"attribute 'type' is {type_name(kind)}, expected a string")
        return
    if kind not in MISP_TYPES:
        yield Skipped(where, f"MISP type {clip(kind)}")
        return
    value = attribute.get("value")
    if not isinstance(value, str):
        yield Invalid(where, f"attribute 'value' is {type_name(value)}, expected a string")
        return
    if kind == "uri" and value.lstrip().startswith("/"):
        # MISP uri attributes are often a bare path ("/gate.php"): nothing a partner could match.
        yield Skipped(where, "MISP uri without a host (path only)")
        return
    try:
        values = _split_value(kind, value)
        own_tlp, own_tags = _tags(attribute)
        first = _time(attribute, "first_seen") or _time(attribute, "timestamp")
        last = _time(attribute, "last_seen") or _time(attribute, "timestamp")
    except ValueError as exc:
        yield Invalid(where, str(exc))
        return
    first, last = ordered_window(first or context.timestamp, last or context.timestamp)
    tlp = own_tlp or context.tlp
    tags = tuple(dict.fromkeys(context.tags + own_tags))
    for kind_hint, raw in values:
        problem = check_value(raw)
        if problem is not None:
            yield Invalid(where, problem)
        else:
            yield Record(
                kind_hint,
                raw.strip(),
                where,
                first,
                last,
                tlp,
                tags,
                misp_uuid=_misp_uuid(attribute),
            )


def _split_value(kind: str, value: str) -> list[tuple[str, str]]:
    """The (kind hint, raw value) pairs a supported MISP attribute stands for."""
    if kind in ("ip-src", "ip-dst"):
        return [(_ip_kind(value), value)]
    if kind in ("ip-src|port", "ip-dst|port"):
        address = _pair(kind, value)[0]
        return [(_ip_kind(address), address)]
    if kind == "domain|ip":
        domain, address = _pair(kind, value)
        return [("domain", domain), (_ip_kind(address), address)]
    if kind.startswith("filename|"):
        # rsplit: the hash never contains '|', a file name might.
        return [(kind.removeprefix("filename|"), _pair(kind, value, from_right=True)[1])]
    if kind in ("domain", "hostname"):
        return [("domain", value)]
    if kind in ("url", "uri", "link"):
        return [("url", value)]
    if kind.startswith("email"):
        return [("email", value)]
    return [(kind, value)]  # the hash types


def _pair(kind: str, value: str, *, from_right: bool = False) -> tuple[str, str]:
    parts = value.rsplit("|", 1) if from_right else value.split("|")
    if len(parts) != 2:
        raise ValueError(f"{kind} value {shorten(value, 60)} is not of the form a|b")
    return parts[0], parts[1]


def _ip_kind(value: str) -> str:
    if "/" in value:
        return "cidr"
    return "ipv6" if ":" in value else "ipv4"


def _tags(owner: dict[str, object]) -> tuple[str | None, tuple[str, ...]]:
    """The strictest TLP among `owner`'s tags, and its other tag names."""
    tags = owner.get("Tag", [])
    if not isinstance(tags, list):
        raise ValueError(f"Tag is {type_name(tags)}, expected a list")
    levels: list[str] = []
    names: list[str] = []
    for tag in tags:
        if not isinstance(tag, dict):
            raise ValueError(f"a Tag entry is {type_name(tag)}, expected an object")
        name = tag.get("name")
        if not isinstance(name, str):
            raise ValueError(f"a Tag entry's name is {type_name(name)}, expected a string")
        level = tlp_from_name(name) if name.strip().lower().startswith("tlp:") else None
        if level is not None:
            levels.append(level)
        else:
            names.append(name)
    return strictest_tlp(levels), tuple(names)


def _time(owner: dict[str, object], key: str) -> str | None:
    value = owner.get(key)
    if value is None or value == "":
        return None
    try:
        return parse_timestamp(value)
    except ValueError as exc:
        raise ValueError(f"{key}: {exc}") from None


def _truthy(value: object) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes")
    return value is True or (isinstance(value, int) and value == 1)
