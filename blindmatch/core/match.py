"""Tag intersection and what each participant may learn from it.

Input: every participant's fully blinded tags, by position (one contiguous ``bytes`` of 32-byte
tags per participant, in that participant's shuffled order). Output, per participant, exactly what
the round's mode lets it learn about its own positions:

- ``pairwise``: for each of its positions held by at least one allowed partner, those partners;
- ``threshold t``: its positions held by at least ``t`` participants (itself included), and only
  if the round asks for counts, how many hold each (a count of N names every holder);
- ``count``: for each partner, how many of its tags that partner also holds; no positions.

Matching sorts all tags once by their first 64 bits (numpy, fixed-width arrays, no Python object
per tag), then reads the full 256 bits of only the tags whose keys are equal and groups those
exactly: tags that share a 64-bit prefix but differ later never match.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from blindmatch.core.group import ELEMENT_BYTES

MODES = ("pairwise", "threshold", "count")
MAX_PARTICIPANTS = 64  # presence is a uint64 bit mask per tag
_GATHER_BLOCK = 1 << 20  # sorted keys compared a block at a time

Masks = npt.NDArray[np.uint64]


@dataclass(frozen=True, slots=True)
class PairwiseResult:
    positions: tuple[int, ...]
    partners: tuple[
        tuple[int, ...], ...
    ]  # participant indices holding each position, self excluded


@dataclass(frozen=True, slots=True)
class ThresholdResult:
    positions: tuple[int, ...]
    counts: tuple[int, ...]  # participants holding each position, self included; () without counts


@dataclass(frozen=True, slots=True)
class CountResult:
    shared: Mapping[int, int]  # partner index -> number of this participant's tags it holds


Delivery = PairwiseResult | ThresholdResult | CountResult


def _words(tags: bytes | bytearray) -> npt.NDArray[np.uint64]:
    if len(tags) % ELEMENT_BYTES:
        raise ValueError(f"tag buffer of {len(tags)} bytes is not a whole number of tags")
    return np.frombuffer(tags, dtype="<u8").reshape(-1, 4)


def presence(final_tags: Sequence[bytes | bytearray]) -> list[Masks]:
    """For every participant and position, the bit mask of participants holding that tag.

    Memory beyond the tags themselves: about 24 bytes per tag at peak (the sort keys, the sort
    order and the sorted keys), then the 8-byte masks returned.
    """
    n = len(final_tags)
    if not 2 <= n <= MAX_PARTICIPANTS:
        raise ValueError(f"a round needs 2 to {MAX_PARTICIPANTS} participants, got {n}")
    sets = [_words(t) for t in final_tags]
    sizes = [len(s) for s in sets]
    offsets = np.cumsum([0, *sizes])
    total = int(offsets[-1])
    keys = np.empty(total, dtype=np.uint64)
    for words, start, size in zip(sets, offsets, sizes, strict=False):
        keys[start : start + size] = words[:, 0]
    # Within a run of equal keys the order is irrelevant, so the fast unstable sort will do.
    order = np.argsort(keys)
    dup = _equal_neighbours(keys, order)
    del keys
    members = np.union1d(dup, dup + 1)  # sorted positions inside a run of equal keys
    where = order[members]  # their index in the concatenation of all sets
    del order
    masks = [np.full(size, 1 << i, dtype=np.uint64) for i, size in enumerate(sizes)]
    if not len(members):
        return masks
    owner = np.searchsorted(offsets, where, side="right") - 1
    pos = where - offsets[owner]
    rows = np.empty((len(members), 4), dtype=np.uint64)
    for i in range(n):
        mine = owner == i
        rows[mine] = sets[i][pos[mine]]
    # members[j] continues the run of members[j - 1] exactly when members[j] - 1 is in dup.
    continues = np.zeros(len(members), dtype=bool)
    continues[np.searchsorted(members, dup + 1)] = True
    differ = np.any(rows[1:] != rows[:-1], axis=1)
    if np.any(differ & continues[1:]):
        # Equal 64-bit keys but different tags: group the members exactly, on all four words.
        exact = np.lexsort((rows[:, 3], rows[:, 2], rows[:, 1], rows[:, 0]))
        owner, pos, rows = owner[exact], pos[exact], rows[exact]
        continues[1:] = ~np.any(rows[1:] != rows[:-1], axis=1)
    starts = np.flatnonzero(~continues)
    group_mask = np.bitwise_or.reduceat(
        np.left_shift(np.uint64(1), owner.astype(np.uint64)), starts
    )
    member_mask = np.repeat(group_mask, np.diff(np.append(starts, len(members))))
    for i in range(n):
        mine = owner == i
        masks[i][pos[mine]] = member_mask[mine]
    return masks


def _equal_neighbours(
    keys: npt.NDArray[np.uint64], order: npt.NDArray[np.intp]
) -> npt.NDArray[np.intp]:
    """Sorted positions p whose key equals that of p + 1: only these tags can be held twice.

    The sorted keys are gathered a block at a time: a full sorted copy would cost 8 more bytes
    per tag at the coordinator's peak.
    """
    found = []
    for start in range(0, max(len(order) - 1, 0), _GATHER_BLOCK):
        block = keys[order[start : start + _GATHER_BLOCK + 1]]
        found.append(np.flatnonzero(block[1:] == block[:-1]) + start)
    return np.concatenate(found) if found else np.empty(0, dtype=np.intp)


def _bits_of(mask: int, n: int) -> tuple[int, ...]:
    return tuple(j for j in range(n) if mask >> j & 1)


def deliveries(
    final_tags: Sequence[bytes | bytearray],
    mode: str,
    *,
    threshold: int | None = None,
    counts: bool = False,
) -> list[Delivery]:
    """What each participant learns, by index in the round's participant order.

    Sharing policies are enforced before a round starts (a node refuses a round with a partner it
    does not allow), so every pair in a round may learn what it shares.
    """
    n = len(final_tags)
    masks = presence(final_tags)
    if mode == "pairwise":
        out: list[Delivery] = []
        for i, m in enumerate(masks):
            hits = m & np.uint64(((1 << n) - 1) ^ (1 << i))
            positions = np.flatnonzero(hits)
            partner_cache: dict[int, tuple[int, ...]] = {}
            partners = []
            for value in hits[positions].tolist():
                p = partner_cache.get(value)
                if p is None:
                    p = partner_cache[value] = _bits_of(value, n)
                partners.append(p)
            out.append(PairwiseResult(tuple(positions.tolist()), tuple(partners)))
        return out
    if mode == "threshold":
        if threshold is None or not 2 <= threshold <= n:
            raise ValueError(f"threshold must be between 2 and {n} participants, got {threshold}")
        out = []
        for m in masks:
            held = np.bitwise_count(m).astype(np.int64)
            positions = np.flatnonzero(held >= threshold)
            exact = tuple(held[positions].tolist()) if counts else ()
            out.append(ThresholdResult(tuple(positions.tolist()), exact))
        return out
    if mode == "count":
        out = []
        for i, m in enumerate(masks):
            shared = {j: int(np.count_nonzero(m & np.uint64(1 << j))) for j in range(n) if j != i}
            out.append(CountResult(shared))
        return out
    raise ValueError(f"unknown mode {mode!r}; expected one of {', '.join(MODES)}")
