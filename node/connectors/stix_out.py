"""Matches as STIX 2.1 objects, built with the stix2 library: sightings, and what they refer to.

The node's one STIX writer: a TAXII sink pushes ``sighting_objects`` and ``node matches --format
stix`` prints them in a ``stix_bundle``, so both name every object with the same id.

Rules:
- A match of an indicator imported from STIX gets one sighting per source indicator id, so it
  lands on the analyst's own object (OpenCTI, MISP). Otherwise an indicator is created for it.
- Partners become identities (where_sighted_refs) only where the match names them: pairwise
  rounds do, threshold rounds give a count of nations instead (or, when the round did not ask
  for counts, its threshold).
- Ids are UUIDv5 of what the object says, and times are the round's end, so pushing the same
  match twice yields the same objects (a TAXII server keeps one copy).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Sequence
from typing import Any, Final

import stix2

from node.store import OutgoingMatch

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


def sighting_objects(node: str, matches: Sequence[OutgoingMatch]) -> list[dict[str, Any]]:
    """The STIX objects that tell ``matches`` from ``node``, as JSON-ready dicts, each once."""
    objects: dict[str, Any] = {}
    me = _identity(stix_id("identity", "node", node), node)
    objects[me.id] = me
    for m in matches:
        when = m.finished or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
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
            )
            objects.setdefault(indicator.id, indicator)
            targets = [indicator.id]
        who = ", ".join(m.partners) if m.partners else f"{m.nations} in all"
        for target in targets:
            extra: dict[str, Any] = {"where_sighted_refs": partners} if partners else {}
            if m.count is not None and not m.partners:
                extra["count"] = m.count
            sighting = stix2.Sighting(
                id=stix_id("sighting", node, m.round_id, target),
                sighting_of_ref=target,
                created=when,
                modified=when,
                created_by_ref=me.id,
                description=f"blindmatch round {m.round_id}: {m.kind} {m.value} also sighted by {who}",
                **extra,
            )
            objects[sighting.id] = sighting
    return [json.loads(obj.serialize()) for obj in objects.values()]


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
