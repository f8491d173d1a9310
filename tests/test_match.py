"""Tag intersection and per-mode deliveries on hand-made tag sets, checked against Python sets."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from blindmatch.core import match
from blindmatch.core.match import (
    MAX_PARTICIPANTS,
    CountResult,
    PairwiseResult,
    ThresholdResult,
    deliveries,
    presence,
)


def tag(n: int) -> bytes:
    """A distinct 32-byte tag per n whose 64-bit prefix is unique too."""
    return n.to_bytes(8, "little") + bytes(24)


def buf(*tags: bytes) -> bytes:
    return b"".join(tags)


def masks(final_tags: Sequence[bytes]) -> list[list[int]]:
    return [m.tolist() for m in presence(final_tags)]


# Tags that share their first 64 bits (the sort key) but differ later, in each other word.
PREFIX = os.urandom(8)
COLLIDING = (
    [PREFIX + bytes(24)]
    + [PREFIX + bytes(8 * w) + b"\x01" + bytes(23 - 8 * w) for w in range(3)]
    + [PREFIX + bytes(23) + b"\x80"]
)


def test_collision_fixture_is_what_it_claims() -> None:
    assert len(set(COLLIDING)) == len(COLLIDING)
    assert all(len(t) == 32 and t[:8] == PREFIX for t in COLLIDING)


# --- presence --------------------------------------------------------------------------------------


def test_presence_marks_who_holds_each_position() -> None:
    a, b, c, d = tag(1), tag(2), tag(3), tag(4)
    got = masks([buf(a, b, c), buf(c, d), buf(d, a, c)])
    assert got == [[0b101, 0b001, 0b111], [0b111, 0b110], [0b110, 0b101, 0b111]]
    assert all(m.dtype == np.uint64 for m in presence([buf(a), buf(a)]))


def test_duplicates_within_a_set_mark_both_positions() -> None:
    a, b = tag(1), tag(2)
    assert masks([buf(a, b, a), buf(a)]) == [[0b11, 0b01, 0b11], [0b11]]
    # A tag held twice by one participant alone is still unmatched.
    assert masks([buf(b, b), buf(a)]) == [[0b01, 0b01], [0b10]]


def test_empty_sets() -> None:
    assert masks([b"", b""]) == [[], []]
    assert masks([b"", buf(tag(1), tag(2)), b""]) == [[], [0b010, 0b010], []]
    assert masks([buf(tag(1)), b"", buf(tag(1))]) == [[0b101], [], [0b101]]


def test_prefix_collision_does_not_match_different_tags() -> None:
    x, y = COLLIDING[0], COLLIDING[1]
    assert masks([buf(x), buf(y)]) == [[0b01], [0b10]]


def test_prefix_collision_keeps_exact_matches() -> None:
    x, y, z, w, v = COLLIDING
    got = masks([buf(x, y, tag(7)), buf(y, z, tag(7)), buf(w, x, v)])
    assert got == [[0b101, 0b011, 0b011], [0b011, 0b010, 0b011], [0b100, 0b101, 0b100]]


def test_prefix_collision_within_one_set_and_duplicates() -> None:
    x, y = COLLIDING[0], COLLIDING[3]
    assert masks([buf(x, y, x), buf(y, y)]) == [[0b01, 0b11, 0b01], [0b11, 0b11]]


def test_presence_refuses_bad_input() -> None:
    with pytest.raises(ValueError, match="2 to 64 participants, got 1"):
        presence([buf(tag(1))])
    with pytest.raises(ValueError, match="2 to 64 participants, got 65"):
        presence([b""] * 65)
    with pytest.raises(ValueError, match="33 bytes is not a whole number of tags"):
        presence([buf(tag(1)) + b"\x00", b""])


def test_sixty_four_participants_use_every_bit() -> None:
    shared = tag(99)
    sets = [buf(shared, tag(i)) for i in range(MAX_PARTICIPANTS)]
    got = presence(sets)
    assert all(m[0] == np.uint64(2**64 - 1) for m in got)
    assert [int(m[1]) for m in got] == [1 << i for i in range(MAX_PARTICIPANTS)]
    top = deliveries(sets, "threshold", threshold=MAX_PARTICIPANTS, counts=True)
    assert top[63] == ThresholdResult((0,), (64,))


# --- deliveries ------------------------------------------------------------------------------------


SETS = [
    buf(tag(1), tag(2), tag(3), tag(4)),  # P0
    buf(tag(3), tag(5), tag(1)),  # P1
    buf(tag(6), tag(1), tag(3), tag(2)),  # P2
]


def test_pairwise_names_partners_without_self() -> None:
    got = deliveries(SETS, "pairwise")
    assert got == [
        PairwiseResult((0, 1, 2), ((1, 2), (2,), (1, 2))),
        PairwiseResult((0, 2), ((0, 2), (0, 2))),
        PairwiseResult((1, 2, 3), ((0, 1), (0, 1), (0,))),
    ]


def test_threshold_counts_include_self_and_hide_partners() -> None:
    assert deliveries(SETS, "threshold", threshold=3, counts=True) == [
        ThresholdResult((0, 2), (3, 3)),
        ThresholdResult((0, 2), (3, 3)),
        ThresholdResult((1, 2), (3, 3)),
    ]
    assert deliveries(SETS, "threshold", threshold=2, counts=True) == [
        ThresholdResult((0, 1, 2), (3, 2, 3)),
        ThresholdResult((0, 2), (3, 3)),
        ThresholdResult((1, 2, 3), (3, 3, 2)),
    ]


def test_threshold_without_counts_gives_positions_only() -> None:
    # a count of N would name every holder: unless the round asks, only "held by >= t" goes out
    assert deliveries(SETS, "threshold", threshold=2) == [
        ThresholdResult((0, 1, 2), ()),
        ThresholdResult((0, 2), ()),
        ThresholdResult((1, 2, 3), ()),
    ]


def test_count_reports_every_partner_only() -> None:
    assert deliveries(SETS, "count") == [
        CountResult({1: 2, 2: 3}),
        CountResult({0: 2, 2: 2}),
        CountResult({0: 3, 1: 2}),
    ]


def test_deliveries_with_duplicates_count_positions() -> None:
    a, b = tag(1), tag(2)
    sets = [buf(a, a, b), buf(a)]
    assert deliveries(sets, "pairwise") == [
        PairwiseResult((0, 1), ((1,), (1,))),
        PairwiseResult((0,), ((0,),)),
    ]
    assert deliveries(sets, "count") == [CountResult({1: 2}), CountResult({0: 1})]


def test_deliveries_on_empty_sets() -> None:
    assert deliveries([b"", b""], "pairwise") == [PairwiseResult((), ())] * 2
    assert deliveries([b"", buf(tag(1))], "count") == [CountResult({1: 0}), CountResult({0: 0})]
    assert deliveries([b"", b"", b""], "threshold", threshold=2) == [ThresholdResult((), ())] * 3


def test_deliveries_with_prefix_collisions() -> None:
    x, y = COLLIDING[0], COLLIDING[2]
    assert deliveries([buf(x), buf(y)], "pairwise") == [PairwiseResult((), ())] * 2
    assert deliveries([buf(x), buf(y, x)], "pairwise") == [
        PairwiseResult((0,), ((1,),)),
        PairwiseResult((1,), ((0,),)),
    ]


@pytest.mark.parametrize("threshold", [None, 1, 4])
def test_threshold_out_of_range_is_refused(threshold: int | None) -> None:
    with pytest.raises(ValueError, match="threshold must be between 2 and 3"):
        deliveries(SETS, "threshold", threshold=threshold)


def test_unknown_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown mode 'all'"):
        deliveries(SETS, "all")


# --- against Python sets ---------------------------------------------------------------------------

# A small pool with prefix collisions, so random sets overlap and exercise the exact fallback.
POOL = [tag(i) for i in range(8)] + COLLIDING


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.lists(st.integers(0, len(POOL) - 1), max_size=12), min_size=2, max_size=6),
    st.data(),
)
def test_matches_python_sets(picks: list[list[int]], data: st.DataObject) -> None:
    sets = [[POOL[i] for i in p] for p in picks]
    n = len(sets)
    final = [buf(*s) for s in sets]
    holders = [{j for j in range(n) if t in sets[j]} for t in POOL]
    want_masks = [[sum(1 << j for j in holders[POOL.index(t)]) for t in s] for s in sets]
    assert masks(final) == want_masks

    pairwise = deliveries(final, "pairwise")
    for i, s in enumerate(sets):
        want = [
            (pos, tuple(sorted(holders[POOL.index(t)] - {i})))
            for pos, t in enumerate(s)
            if holders[POOL.index(t)] - {i}
        ]
        got = pairwise[i]
        assert isinstance(got, PairwiseResult)
        assert list(zip(got.positions, got.partners, strict=True)) == want

    t = data.draw(st.integers(2, n))
    for i, got in enumerate(deliveries(final, "threshold", threshold=t, counts=True)):
        assert isinstance(got, ThresholdResult)
        want_t = [
            (pos, len(holders[POOL.index(x)]))
            for pos, x in enumerate(sets[i])
            if len(holders[POOL.index(x)]) >= t
        ]
        assert list(zip(got.positions, got.counts, strict=True)) == want_t

    for i, got in enumerate(deliveries(final, "count")):
        assert isinstance(got, CountResult)
        assert dict(got.shared) == {
            j: sum(1 for x in sets[i] if x in sets[j]) for j in range(n) if j != i
        }


@settings(max_examples=40, deadline=None)
@given(st.lists(st.lists(st.integers(0, len(POOL) - 1), max_size=12), min_size=2, max_size=4))
def test_presence_compares_sorted_keys_across_block_borders(picks: list[list[int]]) -> None:
    # The sorted keys are gathered a block at a time; blocks of 1 and 2 put a border between
    # almost every pair of equal keys.
    final = [buf(*(POOL[i] for i in p)) for p in picks]
    whole = masks(final)
    for block in (1, 2, 3):
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(match, "_GATHER_BLOCK", block)
            assert masks(final) == whole
