"""The built-in sample data as the files CERTs exchange: a plain list, CSV, a STIX 2.1 bundle and a
MISP event per nation (what ``blindmatch.demo.samples`` invents, written as an importer will read it)."""

from __future__ import annotations

import csv
import json
import random
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from blindmatch.demo.samples import (
    DAY,
    EPOCH,
    FILE_NAMES,
    FORMATS,
    TLP_ORDER,
    WORDS,
    Samples,
    SampleSighting,
)

_STIX_HASH_PATHS: Final = {
    "md5": "file:hashes.MD5",
    "sha1": "file:hashes.'SHA-1'",
    "sha256": "file:hashes.'SHA-256'",
    "sha512": "file:hashes.'SHA-512'",
}
# The fixed ids OASIS publishes for the TLP 2.0 marking definitions.
_TLP2_MARKING: Final = {
    "clear": "marking-definition--94868c89-83c2-464b-929b-a1a8aa3c8487",
    "green": "marking-definition--bab4a63c-aed9-4cf5-a766-dfca5abac2bb",
    "amber": "marking-definition--55d920b0-5e8b-4f79-9ee9-91f868d9b421",
    "amber+strict": "marking-definition--939a9414-2ddd-4d32-a0cd-375ea402b003",
    "red": "marking-definition--e828b379-4e03-4974-9ac4-e53a884c97c1",
}


def write_samples(data: Samples, directory: Path | str) -> dict[str, list[Path]]:
    """Write every nation's four files into `directory`/<nation>/; returns their paths."""
    return {
        nation: write_nation(Path(directory) / nation, nation, data.sightings[nation])
        for nation in data.nations
    }


def write_nation(directory: Path, nation: str, sightings: Sequence[SampleSighting]) -> list[Path]:
    """Write one nation's records into `directory`, one file per format; returns the paths."""
    directory.mkdir(parents=True, exist_ok=True)
    by_format: dict[str, list[SampleSighting]] = {fmt: [] for fmt in FORMATS}
    for s in sightings:
        by_format[s.fmt].append(s)
    rng = random.Random(f"{nation}/files")  # ids and pairings; the data is already fixed
    writers: dict[str, Callable[[Path, str, list[SampleSighting], random.Random], None]] = {
        "text": _write_text,
        "csv": _write_csv,
        "stix": _write_stix,
        "misp": _write_misp,
    }
    paths = []
    for fmt in FORMATS:
        path = directory / FILE_NAMES[fmt]
        writers[fmt](path, nation, by_format[fmt], rng)
        paths.append(path)
    return paths


def _iso(seconds: int, *, millis: bool = False) -> str:
    moment = datetime.fromtimestamp(seconds, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.000Z" if millis else "%Y-%m-%dT%H:%M:%SZ")


def _write_text(path: Path, nation: str, records: list[SampleSighting], rng: random.Random) -> None:
    lines = [
        f"# {nation} CERT blocklist (blindmatch sample data, invented)",
        "# one indicator per line; lines starting with # are comments",
        "",
    ]
    for i, s in enumerate(records):
        if i and i % 250 == 0:
            lines += ["", f"# batch {i // 250 + 1}"]
        lines.append(s.raw)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _csv_tlp(tlp: str, rng: random.Random) -> str:
    if tlp == "amber" and rng.random() < 0.2:
        return ""  # unmarked: the import default (amber) applies
    if tlp == "clear" and rng.random() < 0.3:
        return "TLP:WHITE"
    return f"TLP:{tlp.upper()}" if rng.random() < 0.5 else tlp


def _write_csv(path: Path, nation: str, records: list[SampleSighting], rng: random.Random) -> None:
    with path.open("w", encoding="utf-8", newline="") as handle:
        handle.write(f"# {nation} CERT sightings export (blindmatch sample data, invented)\n")
        out = csv.writer(handle)
        out.writerow(["kind", "value", "first_seen", "last_seen", "tlp", "tags"])
        for s in records:
            out.writerow(
                [
                    "" if s.hint == "auto" else s.hint,
                    s.raw,
                    _iso(s.first_seen),
                    _iso(s.last_seen),
                    _csv_tlp(s.tlp, rng),
                    ";".join(s.tags),
                ]
            )


def _stix_id(kind: str, rng: random.Random) -> str:
    return f"{kind}--{uuid.UUID(int=rng.getrandbits(128), version=4)}"


def _stix_comparison(s: SampleSighting) -> str:
    if s.kind in _STIX_HASH_PATHS:
        target = _STIX_HASH_PATHS[s.kind]
    elif s.hint in ("cidr", "ipv4", "ipv6"):
        target = "ipv6-addr:value" if ":" in s.raw else "ipv4-addr:value"
    else:
        target = {
            "domain": "domain-name:value",
            "url": "url:value",
            "email": "email-addr:value",
        }[s.kind]
    escaped = s.raw.replace("\\", "\\\\").replace("'", "\\'")
    return f"{target} = '{escaped}'"


def _pairs(
    records: list[SampleSighting], first: str, second: str
) -> tuple[list[tuple[SampleSighting, SampleSighting]], list[SampleSighting]]:
    """Some (domain, address) pairs of equal TLP to write as one object; the rest alone."""
    firsts = [s for s in records if s.hint == first]
    seconds = [s for s in records if s.hint == second]
    pairs: list[tuple[SampleSighting, SampleSighting]] = []
    for tlp in TLP_ORDER:
        a = [s for s in firsts if s.tlp == tlp]
        b = [s for s in seconds if s.tlp == tlp]
        pairs += list(zip(a[: len(a) // 3], b, strict=False))
    paired = {id(s) for pair in pairs for s in pair}
    return pairs, [s for s in records if id(s) not in paired]


def _write_stix(path: Path, nation: str, records: list[SampleSighting], rng: random.Random) -> None:
    identity = {
        "type": "identity",
        "spec_version": "2.1",
        "id": _stix_id("identity", rng),
        "created": _iso(EPOCH, millis=True),
        "modified": _iso(EPOCH, millis=True),
        "name": f"{nation} CERT",
        "identity_class": "organization",
    }
    objects: list[dict[str, Any]] = [identity]
    pairs, singles = _pairs(records, "domain", "ipv4")
    groups = [list(pair) for pair in pairs] + [[s] for s in singles]
    rng.shuffle(groups)
    for group in groups:
        head = group[0]
        first = min(s.first_seen for s in group)
        last = max(s.last_seen for s in group)
        objects.append(
            {
                "type": "indicator",
                "spec_version": "2.1",
                "id": _stix_id("indicator", rng),
                "created_by_ref": identity["id"],
                "created": _iso(first, millis=True),
                "modified": _iso(last, millis=True),
                "name": " / ".join(s.raw for s in group),
                "indicator_types": ["malicious-activity"],
                "pattern": "[" + " OR ".join(_stix_comparison(s) for s in group) + "]",
                "pattern_type": "stix",
                "pattern_version": "2.1",
                "valid_from": _iso(first, millis=True),
                "labels": sorted({t for s in group for t in s.tags}),
                "object_marking_refs": [_TLP2_MARKING[head.tlp]],
            }
        )
    indicators = [o for o in objects if o["type"] == "indicator"]
    if indicators:
        seen = indicators[0]
        objects.append(
            {
                "type": "sighting",
                "spec_version": "2.1",
                "id": _stix_id("sighting", rng),
                "created_by_ref": identity["id"],
                "created": seen["modified"],
                "modified": seen["modified"],
                "first_seen": seen["valid_from"],
                "last_seen": seen["modified"],
                "count": 3,
                "sighting_of_ref": seen["id"],
                "where_sighted_refs": [identity["id"]],
                "object_marking_refs": seen["object_marking_refs"],
            }
        )
    bundle = {"type": "bundle", "id": _stix_id("bundle", rng), "objects": objects}
    path.write_text(json.dumps(bundle, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


_MISP_TYPE: Final = {
    "ipv4": "ip-dst",
    "ipv6": "ip-dst",
    "cidr": "ip-dst",
    "domain": "domain",
    "url": "url",
    "email": "email-src",
    "md5": "md5",
    "sha1": "sha1",
    "sha256": "sha256",
    "sha512": "sha512",
}
_MISP_CATEGORY: Final = {
    "ip-dst": "Network activity",
    "domain": "Network activity",
    "hostname": "Network activity",
    "domain|ip": "Network activity",
    "url": "Network activity",
    "email-src": "Payload delivery",
    "filename": "Payload delivery",
}
_MISP_EVENT_TLP: Final = "amber"  # attributes without a tlp tag of their own inherit it


def _misp_attribute(
    rng: random.Random, kind: str, value: str, records: Sequence[SampleSighting]
) -> dict[str, Any]:
    tlp = records[0].tlp
    tags = [{"name": t} for t in sorted({t for s in records for t in s.tags})]
    if tlp != _MISP_EVENT_TLP:
        tags.insert(0, {"name": f"tlp:{'white' if tlp == 'clear' and rng.random() < 0.5 else tlp}"})
    first = min(s.first_seen for s in records)
    last = max(s.last_seen for s in records)
    return {
        "uuid": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
        "type": kind,
        "category": _MISP_CATEGORY.get(kind, "Payload delivery"),
        "value": value,
        "to_ids": True,
        "timestamp": str(last),
        "first_seen": _iso(first),
        "last_seen": _iso(last),
        "Tag": tags,
    }


def _misp_type(s: SampleSighting, rng: random.Random) -> str:
    if s.kind == "domain" and rng.random() < 0.3:
        return "hostname"
    if s.kind == "email":
        return rng.choice(("email-src", "email-dst"))
    return _MISP_TYPE[s.kind]


def _write_misp(path: Path, nation: str, records: list[SampleSighting], rng: random.Random) -> None:
    pairs, singles = _pairs(records, "domain", "ipv4")
    attributes = [
        _misp_attribute(rng, "domain|ip", f"{d.raw}|{ip.raw}", (d, ip)) for d, ip in pairs[::2]
    ]
    objects: list[dict[str, Any]] = []
    for d, ip in pairs[1::2]:
        objects.append(
            {
                "name": "domain-ip",
                "meta-category": "network",
                "uuid": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                "Attribute": [
                    {**_misp_attribute(rng, "domain", d.raw, (d,)), "object_relation": "domain"},
                    {**_misp_attribute(rng, "ip-dst", ip.raw, (ip,)), "object_relation": "ip"},
                ],
            }
        )
    for s in singles:
        if s.kind in ("md5", "sha1", "sha256", "sha512") and rng.random() < 0.5:
            file_name = (
                f"{rng.choice(WORDS)}_{rng.randrange(100)}.{rng.choice(('exe', 'dll', 'js'))}"
            )
            if rng.random() < 0.5:
                attributes.append(
                    _misp_attribute(rng, f"filename|{s.kind}", f"{file_name}|{s.raw}", (s,))
                )
                continue
            file_attributes = [
                {
                    **_misp_attribute(rng, "filename", file_name, (s,)),
                    "object_relation": "filename",
                },
                {**_misp_attribute(rng, s.kind, s.raw, (s,)), "object_relation": s.kind},
            ]
            objects.append(
                {
                    "name": "file",
                    "meta-category": "file",
                    "uuid": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                    "Attribute": file_attributes,
                }
            )
            continue
        attributes.append(_misp_attribute(rng, _misp_type(s, rng), s.raw, (s,)))
    event = {
        "Event": {
            "uuid": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            "info": f"{nation} CERT: indicators of ongoing campaigns (blindmatch sample data)",
            "date": "2025-11-01",
            "timestamp": str(EPOCH + 300 * DAY),
            "published": True,
            "analysis": "2",
            "threat_level_id": "2",
            "distribution": "0",
            "Orgc": {"name": f"{nation} CERT"},
            "Tag": [{"name": f"tlp:{_MISP_EVENT_TLP}"}, {"name": "type:OSINT"}],
            "Attribute": attributes,
            "Object": objects,
        }
    }
    path.write_text(json.dumps(event, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
