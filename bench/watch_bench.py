"""Early-warning benchmark: check latency and throughput, Bloom filter bytes per tag.

Runs a real federation (``blindmatch.demo.harness``: four nodes and a coordinator, each its own
process, mTLS on 127.0.0.1, each node with one blinding worker per core), opens a watch epoch,
then measures:

- a check of one value across three partners (median and worst of --repeat checks);
- a check of --batch values, beside the blindings it needs, run one party after the other on a
  worker pool like a node's: the checker's hash-and-blind (mask and epoch key as one key) and its
  unmask, each partner's blinding, and the coordinator's k_c (in one process, as the coordinator
  applies it). The target: the check within 1.2 x their sum. The old reference, 3 x --batch
  partner blindings, is printed too;
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

from blindmatch.core.group import RoundKey, blind_packed, hash_and_blind_packed
from blindmatch.core.watch_coordinator import seal
from blindmatch.core.watch_rules import FILTER_ERROR_RATE, bloom_bits_per_element
from blindmatch.demo import harness
from blindmatch.runtime import net
from blindmatch.v1 import coordinator_pb2, coordinator_pb2_grpc, watch_pb2, watch_pb2_grpc
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


def needed_blindings(workers: int, items: list[tuple[str, str]], partners: int) -> dict[str, float]:
    """Seconds of every blinding a check of ``items`` needs, one party after the other, each
    split in one task per worker of a spawn pool like a node's (the coordinator's k_c in this
    process, as the coordinator applies it)."""
    key = RoundKey.generate().export()
    per = -(-len(items) // workers)
    ctx = multiprocessing.get_context("spawn")
    out: dict[str, float] = {}
    with ProcessPoolExecutor(workers, mp_context=ctx) as pool:

        def timed(what: str, fn: Any, work: Any, step: int) -> bytes:
            t0 = time.perf_counter()
            parts = [pool.submit(fn, key, work[i : i + step]) for i in range(0, len(work), step)]
            done = b"".join(f.result() for f in parts)
            out[what] = out.get(what, 0.0) + time.perf_counter() - t0
            return done

        list(pool.map(hash_and_blind_packed, [key] * workers, [items[:1]] * workers))  # warm up
        elements = timed("checker_in_s", hash_and_blind_packed, items, per)
        for _ in range(partners):
            elements = timed("partners_s", blind_packed, elements, per * 32)
        t0 = time.perf_counter()
        sealed = seal(RoundKey.generate(), elements)
        out["coordinator_kc_s"] = time.perf_counter() - t0
        timed("checker_unmask_s", blind_packed, sealed, per * 32)
    out["total_s"] = sum(out.values())
    return out


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
            # the reference: the blindings the check needs, one party after the other
            items = [("domain", v) for v in batch]
            needed = needed_blindings(os.cpu_count() or 1, items, len(NAMES) - 1)
            results["needed_blindings"] = needed
            results["three_batch_blindings_s"] = needed["partners_s"]
            results["ratio_to_needed"] = results["batch_check_s"] / needed["total_s"]
            results["ratio_to_three_batch"] = results["batch_check_s"] / needed["partners_s"]
            results["load_average"] = os.getloadavg()
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
    needed = results["needed_blindings"]
    print(
        f"check of {args.batch} values across 3 partners: {results['batch_check_s']:.2f} s; "
        f"the blindings it needs: {needed['total_s']:.2f} s (checker in "
        f"{needed['checker_in_s']:.2f}, partners {needed['partners_s']:.2f}, coordinator k_c "
        f"{needed['coordinator_kc_s']:.2f}, unmask {needed['checker_unmask_s']:.2f}): "
        f"{results['ratio_to_needed']:.2f} x (target <= 1.2); old reference 3 x {args.batch} "
        f"blindings {results['three_batch_blindings_s']:.2f} s: "
        f"{results['ratio_to_three_batch']:.2f} x"
    )
    print("load average (1, 5, 15 min): " + ", ".join(f"{x:.2f}" for x in results["load_average"]))
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
