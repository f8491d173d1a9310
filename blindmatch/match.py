"""Tag intersection and what each participant may learn from it.

Input: every participant's fully blinded tags, by position (one contiguous ``bytes`` of 32-byte
tags per participant, in that participant's shuffled order). Output, per participant, exactly what
the round's mode lets it learn about its own positions:

- ``pairwise``: for each of its positions held by at least one allowed partner, those partners;
- ``threshold t``: for each of its positions held by at least ``t`` participants (itself included),
  that count and nothing else;
- ``count``: for each partner, how many of its tags that partner also holds; no positions.

Matching sorts all tags once by their first 64 bits (numpy, fixed-width arrays: about 50 bytes per
tag at peak, no Python object per tag) and confirms equal prefixes on all 256 bits; on a prefix
collision between different tags it falls back to an exact sort on all four words.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from blindmatch.group import ELEMENT_BYTES

MODES = ("pairwise", "threshold", "count")
MAX_PARTICIPANTS = 64  # presence is a uint64 bit mask per tag

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
    counts: tuple[int, ...]  # participants holding each position, self included


@dataclass(frozen=True, slots=True)
class CountResult:
    shared: Mapping[int, int]  # partner index -> number of this participant's tags it holds


Delivery = PairwiseResult | ThresholdResult | CountResult


def _words(tags: bytes) -> npt.NDArray[np.uint64]:
    if len(tags) % ELEMENT_BYTES:
        raise ValueError(f"tag buffer of {len(tags)} bytes is not a whole number of tags")
    return np.frombuffer(tags, dtype="<u8").reshape(-1, 4)


def presence(final_tags: Sequence[bytes]) -> list[Masks]:
    """For every participant and position, the bit mask of participants holding that tag."""
    n = len(final_tags)
    if not 2 <= n <= MAX_PARTICIPANTS:
        raise ValueError(f"a round needs 2 to {MAX_PARTICIPANTS} participants, got {n}")
    sets = [_words(t) for t in final_tags]
    sizes = [len(s) for s in sets]
    total = sum(sizes)
    if total == 0:
        return [np.zeros(0, dtype=np.uint64) for _ in sets]
    words = np.concatenate(sets) if n > 1 else sets[0]
    bits = np.repeat(
        np.left_shift(np.uint64(1), np.arange(n, dtype=np.uint64)), np.asarray(sizes)
    ).astype(np.uint64)

    order = np.argsort(words[:, 0], kind="stable")
    ws = words[order]
    same = ws[1:, 0] == ws[:-1, 0]
    if same.any():
        full = np.all(ws[1:][same] == ws[:-1][same], axis=1)
        if not full.all():  # a 64-bit prefix shared by different tags: sort on everything
            order = np.lexsort((words[:, 3], words[:, 2], words[:, 1], words[:, 0]))
            ws = words[order]
            same = np.all(ws[1:] == ws[:-1], axis=1)
    del ws
    starts = np.flatnonzero(np.concatenate(([True], ~same)))
    group_mask = np.bitwise_or.reduceat(bits[order], starts)
    group_of = np.cumsum(np.concatenate(([True], ~same))) - 1
    mask = np.empty(total, dtype=np.uint64)
    mask[order] = group_mask[group_of]
    out: list[Masks] = []
    offset = 0
    for size in sizes:
        out.append(mask[offset : offset + size])
        offset += size
    return out


def _bits_of(mask: int, n: int) -> tuple[int, ...]:
    return tuple(j for j in range(n) if mask >> j & 1)


def deliveries(
    final_tags: Sequence[bytes],
    mode: str,
    *,
    threshold: int | None = None,
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
            counts = np.bitwise_count(m).astype(np.int64)
            positions = np.flatnonzero(counts >= threshold)
            out.append(
                ThresholdResult(tuple(positions.tolist()), tuple(counts[positions].tolist()))
            )
        return out
    if mode == "count":
        out = []
        for i, m in enumerate(masks):
            shared = {j: int(np.count_nonzero(m & np.uint64(1 << j))) for j in range(n) if j != i}
            out.append(CountResult(shared))
        return out
    raise ValueError(f"unknown mode {mode!r}; expected one of {', '.join(MODES)}")
