"""Early-warning benchmark: check latency and throughput, Bloom filter bytes per tag.

Runs a real federation (``blindmatch.harness``: four nodes and a coordinator, each its own
process, mTLS on 127.0.0.1, each node with one blinding worker per core), opens a watch epoch,
then measures:

- a check of one value across three partners (median and worst of --repeat checks);
- a check of --batch values, beside the time of 3 x --batch blindings on a worker pool like a
  node's (the target: about equal, since each partner blinds the batch once, one after the other);
- the coordinator's filter bytes per tag at FILTER_ERROR_RATE, beside an exact set of tags.

Usage: .venv/bin/python bench/watch_bench.py [--batch 10000] [--repeat 20] [--json]
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing
import os
import secrets
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from blindmatch import harness, net
from blindmatch.group import RoundKey, blind_packed, hash_indicators
from blindmatch.v1 import coordinator_pb2, coordinator_pb2_grpc, watch_pb2, watch_pb2_grpc
from blindmatch.watch import FILTER_ERROR_RATE, bloom_bits_per_element
from coordinator.config import load_operator_config
from coordinator.operator_cli import new_round, start_request
from coordinator.watch import new_filter
from node.store import Sighting, Store

NAMES = ("alpha", "bravo", "charlie", "delta")
CHECK_BUDGET = 10_000_000  # elements a node blinds for checks per epoch: no limit for the bench


def start_federation(root: Path, set_size: int) -> harness.Federation:
    """Four nodes that may check against each other, each holding ``set_size`` indicators."""
    fed = harness.Federation(root, NAMES, operator="bench")
    fed.init(watch=True)
    for i, name in enumerate(NAMES):
        harness.set_setting(fed.node_toml(name), "workers", os.cpu_count() or 1)
        harness.set_setting(fed.node_toml(name), "check_budget", CHECK_BUDGET)
        with Store.open(fed.store(name)) as store:
            store.add_sightings(
                (
                    Sighting("domain", f"n{(i * set_size // 2) + j}.example", "x")
                    for j in range(set_size)
                ),
                source="bench",
                default_tlp="amber",
            )
    fed.start()
    return fed


def watch_round(fed: harness.Federation) -> float:
    """Open a watch epoch of every node; the seconds the round took, as the operator sees it."""
    with fed.operator_channel() as channel:
        stub = coordinator_pb2_grpc.CoordinatorServiceStub(channel)
        start = time.perf_counter()
        request = start_request(load_operator_config(fed.operator_toml), new_round(NAMES, "watch"))
        info = stub.StartRound(request, timeout=10)
        *_, info = stub.WatchRound(coordinator_pb2.GetRoundRequest(id=info.id), timeout=600)
        if info.state != "done":
            raise SystemExit(f"watch round {info.id} {info.state}: {info.error}")
        return time.perf_counter() - start


def pool_blindings(workers: int, elements: bytes, times: int) -> float:
    """Seconds a spawn pool of ``workers`` processes takes to blind ``elements`` ``times`` times,
    split in one chunk per worker, as a node's blinding pool does for a partner's check."""
    key = RoundKey.generate().export()
    per = -(-len(elements) // 32 // workers) * 32
    chunks = [elements[i : i + per] for i in range(0, len(elements), per)]
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=ctx) as pool:
        list(pool.map(blind_packed, [key] * workers, [elements[:32]] * workers))  # warm up
        t0 = time.perf_counter()
        for _ in range(times):
            for f in [pool.submit(blind_packed, key, c) for c in chunks]:
                f.result()
        return time.perf_counter() - t0


def bloom_sizes(counts: list[int]) -> list[dict[str, float]]:
    out = []
    for n in counts:
        bloom = new_filter(n)
        tags = [secrets.token_bytes(32) for _ in range(n)]
        start = time.perf_counter()
        for t in tags:
            bloom.add(t.hex())
        add_rate = n / (time.perf_counter() - start)
        probes = [secrets.token_bytes(32).hex() for _ in range(min(n, 100_000))]
        start = time.perf_counter()
        false_hits = sum(p in bloom for p in probes)
        query_rate = len(probes) / (time.perf_counter() - start)
        buf = io.BytesIO()
        bloom.tofile(buf)
        exact_python = sys.getsizeof(set(tags)) + sum(sys.getsizeof(t) for t in tags)
        out.append(
            {
                "tags": n,
                "bloom_bytes_per_tag": len(buf.getvalue()) / n,
                "optimal_bytes_per_tag": bloom_bits_per_element(FILTER_ERROR_RATE) / 8,
                "exact_packed_bytes_per_tag": 32.0,
                "exact_python_set_bytes_per_tag": exact_python / n,
                "adds_per_s": add_rate,
                "queries_per_s": query_rate,
                "false_hits_in_probes": false_hits,
            }
        )
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=10_000)
    p.add_argument("--repeat", type=int, default=20)
    p.add_argument("--set-size", type=int, default=5_000, help="indicators per node")
    p.add_argument("--bloom", default="10000,100000,1000000", help="filter sizes to measure")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    results: dict[str, Any] = {"cores": os.cpu_count()}
    with tempfile.TemporaryDirectory() as tmp:
        fed = start_federation(Path(tmp), args.set_size)
        try:
            results["watch_round_s"] = watch_round(fed)
            results["set_size"] = args.set_size
            tls = harness.load_tls(fed.node_toml("alpha"))
            with net.open_channel(
                fed.addresses["alpha"], tls, insecure=False, expect=net.Allow("node", "alpha")
            ) as channel:
                stub = watch_pb2_grpc.NodeWatchServiceStub(channel)

                def check(values: list[str]) -> float:
                    t0 = time.perf_counter()
                    request = watch_pb2.NodeCheckRequest(values=values, kind="domain")
                    stub.Check(request, timeout=600)
                    return time.perf_counter() - t0

                check(["warm-up.example"])
                singles = [check([f"single{i}.example"]) for i in range(args.repeat)]
                results["one_value_median_ms"] = statistics.median(singles) * 1000
                results["one_value_max_ms"] = max(singles) * 1000
                batch = [f"batch{i}.example" for i in range(args.batch)]
                results["batch"] = args.batch
                results["batch_check_s"] = check(batch)
            # the reference: 3 x batch blindings on a pool like one node's, as a partner does it
            elements = b"".join(hash_indicators([("domain", v) for v in batch]))
            results["three_batch_blindings_s"] = pool_blindings(os.cpu_count() or 1, elements, 3)
        finally:
            fed.stop()
    results["bloom"] = bloom_sizes([int(n) for n in args.bloom.split(",") if n])
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(
        f"cores: {results['cores']}; watch round of 4 x {args.set_size}: "
        f"{results['watch_round_s']:.2f} s"
    )
    print(
        f"check of 1 value across 3 partners: median {results['one_value_median_ms']:.1f} ms, "
        f"max {results['one_value_max_ms']:.1f} ms ({args.repeat} checks)"
    )
    print(
        f"check of {args.batch} values across 3 partners: {results['batch_check_s']:.2f} s; "
        f"3 x {args.batch} blindings: {results['three_batch_blindings_s']:.2f} s"
    )
    for b in results["bloom"]:
        print(
            f"filter of {b['tags']:,} tags at {FILTER_ERROR_RATE:g}: "
            f"{b['bloom_bytes_per_tag']:.2f} B/tag (optimal {b['optimal_bytes_per_tag']:.2f}); "
            f"exact set 32 B/tag packed, {b['exact_python_set_bytes_per_tag']:.0f} B/tag as a "
            f"Python set; add {b['adds_per_s']:,.0f}/s, query {b['queries_per_s']:,.0f}/s"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
