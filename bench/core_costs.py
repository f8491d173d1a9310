"""The core costs the targets are computed from: hash to curve, a multiplication, matching."""

from __future__ import annotations

import multiprocessing
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from bench.datasets import nation_items
from blindmatch.core import oprf, secp256k1
from blindmatch.core.delivery import match

MICRO_ITEMS = 2000
MICRO_REPEAT = 15
POOL_CHUNKS = 24  # chunks of POOL_CHUNK indicators per pool measurement
POOL_CHUNK = 1024
MATCH_SET = 1_000_000


def cpu_seconds(fn: Callable[[], object]) -> float:
    """CPU seconds of one call: less at the mercy of other work on the machine than wall time."""
    t0 = time.process_time()
    fn()
    return time.process_time() - t0


def median_costs(fns: dict[str, Callable[[], object]], repeat: int) -> dict[str, float]:
    """Median CPU seconds of each function, the functions taking turns so they share the same
    conditions (other work on the machine comes and goes)."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            times[name].append(cpu_seconds(fn))
    return {name: statistics.median(t) for name, t in times.items()}


def pool_rate(workers: int, chunks: list[list[tuple[str, str]]]) -> float:
    """Indicators/s a spawn pool of ``workers`` processes hashes, as a node's Blinder does.

    The best of three passes: a throughput is capped by whatever else the machine runs, and the
    least disturbed pass is the closest to what the pool itself can do.
    """
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=ctx) as pool:
        list(pool.map(oprf.hash_indicators, [chunks[0][:1]] * workers))
        rates = []
        for _ in range(3):
            t0 = time.perf_counter()
            for f in [pool.submit(oprf.hash_indicators, c) for c in chunks]:
                f.result()
            rates.append(sum(len(c) for c in chunks) / (time.perf_counter() - t0))
    return max(rates)


def sorted_tags(rng: np.random.Generator, shared: bytes, size: int) -> bytes:
    """An owner's tags as it sends them: ``shared`` and fresh random ones, sorted."""
    raw = shared + rng.bytes(oprf.TAG_BYTES * size - len(shared))
    return np.sort(np.frombuffer(raw, dtype=f"S{oprf.TAG_BYTES}")).tobytes()


@dataclass
class Core:
    hash_us: float  # H(x) of one indicator, paid once, when it is stored (hash once)
    mul_us: float  # one secp256k1 multiplication: protocol v2's unit of work
    lib_mul_us: float  # the same multiplication through libsecp256k1 (coincurve) directly
    pool_rates: dict[int, float] = field(default_factory=dict)  # hashing pool: indicators/s
    match_tags_per_s: float = 0.0
    match_tags: int = 0


def measure_core(cores: int) -> Core:
    items = nation_items(0, MICRO_ITEMS)
    points = [secp256k1.base_mul(secp256k1.random_scalar()) for _ in items]
    scalar = secp256k1.random_scalar()
    raw = secp256k1.scalar_to_bytes(scalar)
    costs = median_costs(
        {
            "hash": lambda: oprf.hash_indicators(items),
            "mul": lambda: [secp256k1.mul(p, scalar) for p in points],
            "lib_mul": lambda: [p.multiply(raw) for p in points],
        },
        MICRO_REPEAT,
    )
    us = {name: seconds / len(items) * 1e6 for name, seconds in costs.items()}
    core = Core(us["hash"], us["mul"], us["lib_mul"])
    batch = nation_items(1, POOL_CHUNK)
    for w in sorted({1, cores}):
        core.pool_rates[w] = pool_rate(w, [batch] * POOL_CHUNKS)
    # The coordinator's matching: every pair's common tags (count mode: no inclusion proofs).
    rng = np.random.default_rng(4)
    shared = rng.bytes(oprf.TAG_BYTES * (MATCH_SET // 10))
    sets = {name: sorted_tags(rng, shared, MATCH_SET) for name in ("a", "b", "c")}
    core.match_tags = len(sets) * MATCH_SET
    seconds = median_costs({"match": lambda: match("bench", "count", None, False, sets)}, 5)
    core.match_tags_per_s = core.match_tags / seconds["match"]
    return core
