"""Per-item costs of the round's core: hash to curve, blinding, evaluation, tag matching.

Run with ``.venv/bin/python -m pytest bench --benchmark-only``. Each benchmark stores its per-item
figures in ``extra_info`` (microseconds per item and items per second, from the median round), so
``--benchmark-json`` output carries them. Blinding and evaluation are one secp256k1
multiplication per element each.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np
import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from blindmatch.core.delivery import match
from blindmatch.core.oprf import TAG_BYTES, blind, evaluate, hash_indicators
from blindmatch.core.secp256k1 import Point, points_from_bytes, random_scalar

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


@pytest.fixture(scope="module")
def hashes() -> list[Point]:
    return points_from_bytes(b"".join(hash_indicators(indicators(BATCH))))


def test_hash_to_curve(benchmark: BenchmarkFixture) -> None:
    # H(x), as a node stores it at import (hash once): no round hashes again.
    items = indicators(BATCH)
    out = benchmark(hash_indicators, items)
    assert len(out) == BATCH
    record(benchmark, BATCH, "items")


def test_blind(benchmark: BenchmarkFixture, hashes: list[Point]) -> None:
    # An owner's side: r·H(x) with a fresh r each, and the r⁻¹ of the chunk in one inversion.
    blinded, unblinders = benchmark(blind, hashes)
    assert len(blinded) == len(unblinders) == BATCH
    record(benchmark, BATCH, "items")


def test_evaluate(benchmark: BenchmarkFixture, hashes: list[Point]) -> None:
    # A member's side: its share times every element of a request.
    out = benchmark(evaluate, random_scalar(), hashes)
    assert len(out) == BATCH
    record(benchmark, BATCH, "ops")


@pytest.fixture(scope="module")
def tag_sets() -> dict[str, bytes]:
    # A shared core of 10% in every set, the rest unique, each sorted as its owner sends it.
    shared = os.urandom(TAG_BYTES * SET_SIZE // 10)
    return {
        f"p{i}": np.sort(
            np.frombuffer(shared + os.urandom(TAG_BYTES * SET_SIZE - len(shared)), f"S{TAG_BYTES}")
        ).tobytes()
        for i in range(PARTIES)
    }


def test_match(benchmark: BenchmarkFixture, tag_sets: dict[str, bytes]) -> None:
    # The coordinator's matching: every pair's common tags (count mode, so no inclusion proofs).
    out = benchmark(match, "bench", "count", None, False, tag_sets)
    assert [sum(d.shared.values()) for d in out.values()] == [2 * SET_SIZE // 10] * PARTIES
    record(benchmark, PARTIES * SET_SIZE, "tags")
