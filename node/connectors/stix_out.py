"""Matches as STIX 2.1 objects, built with the stix2 library: sightings, and what they refer to.

The node's one STIX writer: a TAXII sink pushes ``sighting_objects`` and ``node matches --format
stix`` prints them in a ``stix_bundle``, so both name every object with the same id.

Rules:
- A match of an indicator imported from STIX gets one sighting per source indicator id, so it
  lands on the analyst's own object (OpenCTI, MISP). Otherwise an indicator is created for it.
- One sighting per matched value: its id covers (node, round, indicator, kind, value), so the
  two values an OR pattern matched are two sightings, and each match is confirmed and marked
  pushed on its own (docs/OPERATIONS.md, Connectors, says why this and not one per indicator).
- Partners become identities (where_sighted_refs) only where the match names them: pairwise
  rounds do; a threshold round's sighting says "held by N nations" with ``count`` N when the
  round asked for counts, else "held by at least t nations" and no ``count`` (it is not known).
- Every sighting and created indicator carries the value's TLP 2.0 marking (the OASIS
  marking-definition, included in what is sent), so an amber value's sighting is amber.
- Ids are UUIDv5 of what the object says, and times are the round's end, so pushing the same
  match twice yields the same objects (a TAXII server keeps one copy).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import stix2

from node.store import OutgoingMatch

# The TLP 2.0 marking definitions exactly as OASIS publishes them (cti-stix-common-objects,
# extension-definition-specifications/tlp-2.0): consumers know them by these fixed ids.
_TLP2_EXTENSION: Final = "extension-definition--60a3c5c5-0d10-413e-aab3-9e08dde9e88d"
TLP2_MARKINGS: Final[dict[str, dict[str, Any]]] = {
    level: {
        "type": "marking-definition",
        "spec_version": "2.1",
        "id": marking_id,
        "created": "2022-10-01T00:00:00.000Z",
        "name": f"TLP:{level.upper()}",
        "extensions": {_TLP2_EXTENSION: {"extension_type": "property-extension", "tlp_2_0": level}},
    }
    for level, marking_id in (
        ("clear", "marking-definition--94868c89-83c2-464b-929b-a1a8aa3c8487"),
        ("green", "marking-definition--bab4a63c-aed9-4cf5-a766-dfca5abac2bb"),
        ("amber", "marking-definition--55d920b0-5e8b-4f79-9ee9-91f868d9b421"),
        ("amber+strict", "marking-definition--939a9414-2ddd-4d32-a0cd-375ea402b003"),
        ("red", "marking-definition--e828b379-4e03-4974-9ac4-e53a884c97c1"),
    )
}
_STIX_NS: Final = uuid.UUID("6f0b8c52-2f5e-4d0e-9b4c-1f1d3a0e5b7a")  # blindmatch's STIX namespace
_IDENTITY_TIME: Final = "2020-01-01T00:00:00.000Z"  # identities have one version, whoever pushes
_STIX_PATH: Final = {
    "ipv4": "ipv4-addr:value",
    "ipv6": "ipv6-addr:value",
    "domain": "domain-name:value",
    "url": "url:value",
    "email": "email-addr:value",
    "md5": "file:hashes.MD5",
    "sha1": "file:hashes.'SHA-1'",
    "sha256": "file:hashes.'SHA-256'",
    "sha512": "file:hashes.'SHA-512'",
}


def stix_id(kind: str, *parts: str) -> str:
    """A deterministic STIX id: the same parts always name the same object."""
    return f"{kind}--{uuid.uuid5(_STIX_NS, '|'.join(parts))}"


def stix_pattern(kind: str, value: str) -> str:
    path = _STIX_PATH.get(kind)
    if kind == "cidr":
        path = "ipv6-addr:value" if ":" in value else "ipv4-addr:value"
    if path is None:
        raise ValueError(f"no STIX pattern for kind {kind!r}")
    escaped = value.replace("\\", "\\\\").replace("'", "\\'")
    return f"[{path} = '{escaped}']"


@dataclass(frozen=True, slots=True)
class Sightings:
    """The objects that tell some matches, and what each match needs delivered."""

    objects: list[dict[str, Any]]  # JSON-ready, each id once
    needs: list[frozenset[str]]  # per match, in order: the ids that must reach a sink for it


def sighting_objects(node: str, matches: Sequence[OutgoingMatch]) -> list[dict[str, Any]]:
    """The STIX objects that tell ``matches`` from ``node``, as JSON-ready dicts, each once."""
    return build_sightings(node, matches).objects


def build_sightings(node: str, matches: Sequence[OutgoingMatch]) -> Sightings:
    """``sighting_objects``, and for each match the ids it is told by (module docstring)."""
    objects: dict[str, Any] = {}
    me = _identity(stix_id("identity", "node", node), node)
    objects[me.id] = me
    needs: list[frozenset[str]] = []
    for m in matches:
        when = m.finished or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        marking = TLP2_MARKINGS[m.tlp]
        objects.setdefault(marking["id"], marking)
        needed = {me.id, marking["id"]}
        partners = []
        for partner in m.partners:
            ident = stix_id("identity", "partner", partner)
            objects.setdefault(ident, _identity(ident, partner))
            partners.append(ident)
        targets = list(m.stix_ids)
        if not targets:
            indicator = stix2.Indicator(
                id=stix_id("indicator", m.kind, m.value),
                name=f"{m.kind} {m.value}",
                pattern=stix_pattern(m.kind, m.value),
                pattern_type="stix",
                valid_from=when,
                created=when,
                modified=when,
                created_by_ref=me.id,
                object_marking_refs=[marking["id"]],
            )
            objects.setdefault(indicator.id, indicator)
            targets = [indicator.id]
            needed.add(indicator.id)
        extra: dict[str, Any] = {}
        if partners:
            extra["where_sighted_refs"] = partners
            said = f"also sighted by {', '.join(m.partners)}"
        else:
            said = m.nations
            if m.count is not None:
                extra["count"] = m.count
        for target in targets:
            # One sighting per matched value: an indicator whose OR pattern matched two values
            # gets two sightings, each with its own id, so neither overwrites the other.
            sighting = stix2.Sighting(
                id=stix_id("sighting", node, m.round_id, target, m.kind, m.value),
                sighting_of_ref=target,
                created=when,
                modified=when,
                created_by_ref=me.id,
                description=f"blindmatch round {m.round_id}: {m.kind} {m.value} {said}",
                object_marking_refs=[marking["id"]],
                **extra,
            )
            objects[sighting.id] = sighting
            needed.add(sighting.id)
        needs.append(frozenset(needed | set(partners)))
    return Sightings(
        [obj if isinstance(obj, dict) else json.loads(obj.serialize()) for obj in objects.values()],
        needs,
    )


def stix_bundle(node: str, matches: Sequence[OutgoingMatch]) -> dict[str, Any]:
    """``sighting_objects`` as one bundle, the way ``node matches --format stix`` prints them."""
    now = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
    return {
        "type": "bundle",
        "id": stix_id("bundle", node, now),
        "objects": sighting_objects(node, matches),
    }


def _identity(ident: str, name: str) -> stix2.Identity:
    return stix2.Identity(
        id=ident,
        name=name,
        identity_class="organization",
        created=_IDENTITY_TIME,
        modified=_IDENTITY_TIME,
    )
