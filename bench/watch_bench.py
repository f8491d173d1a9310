"""Early-warning benchmark: check latency and throughput, Bloom filter bytes per tag.

Runs a real federation in this process (four nodes, one coordinator, mTLS on 127.0.0.1, each
node with one blinding worker per core), opens a watch epoch, then measures:

- a check of one value across three partners (median and worst of --repeat checks);
- a check of --batch values, beside the time of 3 x --batch blindings on the same worker pools
  (the target: about equal, since each partner blinds the batch once, one after the other);
- the coordinator's filter bytes per tag at FILTER_ERROR_RATE, beside an exact set of tags.

Usage: .venv/bin/python bench/watch_bench.py [--batch 10000] [--repeat 20] [--json]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import secrets
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from blindmatch import net
from blindmatch.group import RoundKey, hash_indicators
from blindmatch.protocol import Policy
from blindmatch.v1 import coordinator_pb2, watch_pb2, watch_pb2_grpc
from blindmatch.watch import FILTER_ERROR_RATE, bloom_bits_per_element
from coordinator.watch import _new_filter
from node.config import NodeConfig
from node.store import Sighting
from tests.federation import Federation
from tests.pkifixtures import FederationPki

NAMES = ("alpha", "bravo", "charlie", "delta")


class BenchFederation(Federation):
    @staticmethod
    def _node_config(
        root: Path, pki: FederationPki, name: str, policy: Policy, timeout: float
    ) -> NodeConfig:
        base = Federation._node_config(root, pki, name, policy, timeout)
        return replace(base, workers=os.cpu_count() or 1, check_budget=10_000_000)

    def start_coordinator(self) -> Any:
        running = super().start_coordinator()
        for node in self.nodes.values():
            assert node.watch is not None
            node.watch.connect_coordinator(f"127.0.0.1:{running.port}")
        return running


def bloom_sizes(counts: list[int]) -> list[dict[str, float]]:
    out = []
    for n in counts:
        bloom = _new_filter(n)
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
        root = Path(tmp)
        pki = FederationPki(root / "pki")
        fed = BenchFederation(root / "fed", pki, NAMES)
        try:
            for i, name in enumerate(NAMES):
                with fed.store(name) as store:
                    store.add_sightings(
                        (
                            Sighting("domain", f"n{(i * args.set_size // 2) + j}.example", "x")
                            for j in range(args.set_size)
                        ),
                        source="bench",
                        default_tlp="amber",
                    )
            start = time.perf_counter()
            info = fed.stub.StartRound(
                coordinator_pb2.StartRoundRequest(nodes=list(NAMES), mode="watch"), timeout=10
            )
            info = fed.wait(info.id, 600)
            assert info.state == "done", info.error
            results["watch_round_s"] = time.perf_counter() - start
            results["set_size"] = args.set_size
            tls = pki.tls("alpha", "node")
            channel = net.open_channel(
                f"127.0.0.1:{fed.nodes['alpha'].port}",
                tls,
                insecure=False,
                expect=net.Allow("node", "alpha"),
            )
            stub = watch_pb2_grpc.NodeWatchServiceStub(channel)

            def check(values: list[str]) -> float:
                t0 = time.perf_counter()
                stub.Check(watch_pb2.NodeCheckRequest(values=values, kind="domain"), timeout=600)
                return time.perf_counter() - t0

            check(["warm-up.example"])
            singles = [check([f"single{i}.example"]) for i in range(args.repeat)]
            results["one_value_median_ms"] = statistics.median(singles) * 1000
            results["one_value_max_ms"] = max(singles) * 1000
            batch = [f"batch{i}.example" for i in range(args.batch)]
            results["batch"] = args.batch
            results["batch_check_s"] = check(batch)
            # the reference: 3 x batch blindings on one node's worker pool, as a partner does it
            elements = b"".join(hash_indicators([("domain", v) for v in batch]))
            key = RoundKey.generate().export()
            blinder = fed.nodes["bravo"].blinder
            per = -(-args.batch // blinder.workers) * 32
            t0 = time.perf_counter()
            for _ in range(3):
                futures = [
                    blinder.blind(key, elements[i : i + per]) for i in range(0, len(elements), per)
                ]
                for f in futures:
                    f.result()
            results["three_batch_blindings_s"] = time.perf_counter() - t0
            channel.close()
        finally:
            fed.close()
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
