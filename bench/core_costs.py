"""The core costs the targets are computed from: hash to group, blinding, matching, openssl."""

from __future__ import annotations

import multiprocessing
import re
import statistics
import subprocess
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from bench.datasets import nation_items
from blindmatch.core import group, secp256k1
from blindmatch.core.match import presence

MICRO_ITEMS = 2000
MICRO_REPEAT = 15
OPENSSL_TURNS = 5  # openssl speed runs of 1 s, between passes of the Python measurements
POOL_CHUNKS = 24  # chunks of DEFAULT_CHUNK elements per pool measurement
MATCH_SET = 1_000_000


def cpu_seconds(fn: Callable[[], object]) -> float:
    """CPU seconds of one call: what ``openssl speed`` measures too (user CPU time), and less
    at the mercy of other work on the machine than wall time."""
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


def openssl_x25519() -> float | None:
    """ops/s of ``openssl speed -seconds 1 ecdhx25519`` (one core), or None without openssl."""
    try:
        out = subprocess.run(
            ["openssl", "speed", "-seconds", "1", "ecdhx25519"],
            capture_output=True,
            text=True,
            timeout=120,
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r"X25519\)\s+\S+s\s+([\d.]+)", out)
    return float(match.group(1)) if match else None


def pool_rate(workers: int, key: bytes, chunks: list[bytes]) -> float:
    """Elements/s a spawn pool of ``workers`` processes blinds, as a node's Blinder does.

    The best of three passes: a throughput is capped by whatever else the machine runs, and the
    least disturbed pass is the closest to what the pool itself can do.
    """
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=ctx) as pool:
        list(pool.map(group.blind_packed, [key] * workers, [chunks[0][:32]] * workers))
        rates = []
        for _ in range(3):
            t0 = time.perf_counter()
            for f in [pool.submit(group.blind_packed, key, c) for c in chunks]:
                f.result()
            rates.append(sum(len(c) for c in chunks) // 32 / (time.perf_counter() - t0))
    return max(rates)


@dataclass
class Core:
    openssl_ops: float | None
    hash_us: float
    blind_us: float
    hash_and_blind_us: float
    mul_us: float = 0.0  # one secp256k1 multiplication: protocol v2's unit of work
    pool_rates: dict[int, float] = field(default_factory=dict)
    match_tags_per_s: float = 0.0
    match_tags: int = 0


def measure_core(cores: int) -> Core:
    items = nation_items(0, MICRO_ITEMS)
    key = group.RoundKey.generate()
    elements = group.hash_indicators(items)
    raw = key.export()
    # openssl speed takes turns with the Python measurements: this machine's speed drifts by
    # several percent over minutes, and the ratios must compare the same moments.
    openssl: list[float] = []
    passes: dict[str, list[float]] = {"hash": [], "blind": [], "hash_and_blind": [], "mul": []}
    points = [secp256k1.base_mul(secp256k1.random_scalar()) for _ in items]
    scalar = secp256k1.random_scalar()
    for _ in range(OPENSSL_TURNS):
        rate = openssl_x25519()
        if rate is not None:
            openssl.append(rate)
        costs = median_costs(
            {
                "hash": lambda: group.hash_indicators(items),
                "blind": lambda: key.blind(elements),
                "hash_and_blind": lambda: group.hash_and_blind_packed(raw, items),
                "mul": lambda: [secp256k1.mul(p, scalar) for p in points],
            },
            MICRO_REPEAT // OPENSSL_TURNS,
        )
        for name, seconds in costs.items():
            passes[name].append(seconds / len(items) * 1e6)
    us = {name: statistics.median(values) for name, values in passes.items()}
    core = Core(
        statistics.median(openssl) if openssl else None,
        us["hash"],
        us["blind"],
        us["hash_and_blind"],
        us["mul"],
    )
    packed = b"".join(group.hash_indicators(nation_items(1, 4096)))
    chunks = [packed] * POOL_CHUNKS
    for w in sorted({1, cores}):
        core.pool_rates[w] = pool_rate(w, raw, chunks)
    rng = np.random.default_rng(4)
    shared = rng.bytes(32 * MATCH_SET // 10)
    sets = [shared + rng.bytes(32 * (MATCH_SET - MATCH_SET // 10)) for _ in range(3)]
    core.match_tags = 3 * MATCH_SET
    seconds = median_costs({"match": lambda: presence(sets)}, 5)["match"]
    core.match_tags_per_s = core.match_tags / seconds
    return core
