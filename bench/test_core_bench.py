"""Per-item costs of the matching core: hash to group, blinding, tag matching.

Run with ``.venv/bin/python -m pytest bench --benchmark-only``. Each benchmark stores its per-item
figures in ``extra_info`` (microseconds per item and items per second, from the median round), so
``--benchmark-json`` output carries them. Compare blinding with ``openssl speed ecdhx25519``.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from blindmatch.core.group import (
    RoundKey,
    blind_packed,
    hash_and_blind_packed,
    hash_indicators,
    hash_packed,
)
from blindmatch.core.match import presence

BATCH = 1000
SET_SIZE = 100_000
PARTIES = 3


def record(benchmark: BenchmarkFixture, items: int, unit: str) -> None:
    assert benchmark.stats is not None
    median = benchmark.stats.stats.median
    benchmark.extra_info["items_per_round"] = items
    benchmark.extra_info["us_per_item"] = round(median / items * 1e6, 3)
    benchmark.extra_info[f"{unit}_per_s"] = round(items / median)


def indicators(n: int) -> list[tuple[str, str]]:
    # Realistic lengths: a quarter each of addresses, domains, URLs and sha256 hashes.
    kinds: list[Callable[[int], tuple[str, str]]] = [
        lambda i: ("ipv4", f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}"),
        lambda i: ("domain", f"host{i}.bad-example-{i % 97}.org"),
        lambda i: ("url", f"http://cdn{i % 13}.example.net/payload/{i}/stage2.bin"),
        lambda i: ("sha256", os.urandom(32).hex()),
    ]
    return [kinds[i % 4](i) for i in range(n)]


def test_hash_to_group(benchmark: BenchmarkFixture) -> None:
    items = indicators(BATCH)
    out = benchmark(hash_indicators, items)
    assert len(out) == BATCH
    record(benchmark, BATCH, "items")


def test_blind(benchmark: BenchmarkFixture) -> None:
    key = RoundKey.generate()
    elements = hash_indicators(indicators(BATCH))
    out = benchmark(key.blind, elements)
    assert len(out) == BATCH
    record(benchmark, BATCH, "ops")


@pytest.fixture(scope="module")
def tag_sets() -> list[bytes]:
    # A shared core of 10% in every set, the rest unique, so the sort sees realistic overlaps.
    shared = os.urandom(32 * SET_SIZE // 10)
    return [shared + os.urandom(32 * (SET_SIZE - SET_SIZE // 10)) for _ in range(PARTIES)]


def test_presence(benchmark: BenchmarkFixture, tag_sets: list[bytes]) -> None:
    masks = benchmark(presence, tag_sets)
    full = (1 << PARTIES) - 1
    assert [int((m == full).sum()) for m in masks] == [SET_SIZE // 10] * PARTIES
    record(benchmark, PARTIES * SET_SIZE, "tags")


def test_hash_and_blind(benchmark: BenchmarkFixture) -> None:
    # The own-set stage of a node: the blinding clears the cofactor, so hashing skips it.
    key = RoundKey.generate().export()
    items = indicators(BATCH)
    out = benchmark(hash_and_blind_packed, key, items)
    assert len(out) == BATCH * 32
    record(benchmark, BATCH, "items")


def test_blind_stored_hashes(benchmark: BenchmarkFixture) -> None:
    # The own-set stage since hash once (issue 12): H(v) was stored at import, a round only
    # blinds; compare its us_per_item with test_hash_and_blind's.
    key = RoundKey.generate().export()
    stored = hash_packed(indicators(BATCH))
    out = benchmark(blind_packed, key, stored)
    assert len(out) == BATCH * 32
    record(benchmark, BATCH, "items")
