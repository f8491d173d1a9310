"""The benchmark's data sets: every nation's indicators, generated, canonical, with a known overlap."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

from blindmatch.core.canon import canonicalize

SHARED = 0.10  # share of every set held by all nations
NATION_NAMES = (
    "aurelia",
    "borealis",
    "cascadia",
    "dalmatia",
    "estonia",
    "fennia",
    "galicia",
    "helvetia",
    "illyria",
    "jutland",
)


def indicator(ident: int) -> tuple[str, str]:
    """A canonical indicator per integer: addresses, domains, URLs and SHA-256 hashes in turn."""
    kind = ident % 4
    if kind == 0:
        a = ident >> 2
        return "ipv4", f"{10 + (a >> 24) % 200}.{a >> 16 & 255}.{a >> 8 & 255}.{a & 255}"
    if kind == 1:
        return "domain", f"host{ident}.example-{ident % 97}.org"
    if kind == 2:
        return "url", f"http://cdn{ident % 13}.example.net/payload/{ident}/stage2.bin"
    return "sha256", hashlib.sha256(ident.to_bytes(8, "little")).hexdigest()


def nation_ids(index: int, size: int) -> Iterator[int]:
    """Nation ``index``'s indicator ids: the shared core (0..) and ids only this nation holds."""
    shared = int(size * SHARED)
    own = (index + 1) << 30
    yield from range(shared)
    yield from range(own, own + size - shared)


def nation_items(index: int, size: int) -> list[tuple[str, str]]:
    """Nation ``index``'s set, whole."""
    return [indicator(i) for i in nation_ids(index, size)]


def nation_batches(index: int, size: int, batch: int) -> Iterator[list[tuple[str, str]]]:
    """Nation ``index``'s set in lists of at most ``batch``: a 10M set is ~2 GB as one list."""
    out: list[tuple[str, str]] = []
    for ident in nation_ids(index, size):
        out.append(indicator(ident))
        if len(out) == batch:
            yield out
            out = []
    if out:
        yield out


def check_canonical() -> None:
    for ident in range(8):
        kind, value = indicator(ident)
        if canonicalize(kind, value).value != value:
            raise SystemExit(f"bench data is not canonical: {kind} {value!r}; fix indicator()")
