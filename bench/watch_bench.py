"""Early-warning benchmark (protocol v2): check latency and throughput, filter bytes per tag.

Runs a real federation (``blindmatch.demo.harness``: four nodes and a coordinator, each its own
process, mTLS on 127.0.0.1), opens a watch epoch whose committee is every node, then measures:

- a check of one value by alpha (median and worst of --repeat checks): one proved request to the
  three other members, their DLEQ proofs verified, three filters tested, three sealed messages.
  Target (issue 17): median at most 25 ms;
- a check of --batch values, beside the evaluations it needs, made here in one process, one
  party after the other, on the same core objects (``core.checker.Check``, ``core.member``): the
  checker's hash to curve of the new values, its blinding, each member's evaluation, the subset
  checks and the unblinding. Target: at most 1.3 x their sum;
- the epoch filters' bytes per tag at the protocol's false-positive rate, and their build rate.

Usage: .venv/bin/python bench/watch_bench.py [--batch 10000] [--repeat 20] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from blindmatch.core.checker import Check
from blindmatch.core.evaluation import Transcript
from blindmatch.core.member import Member
from blindmatch.core.oprf import hash_indicators
from blindmatch.core.secp256k1 import points_from_bytes
from blindmatch.core.watch_sealed import FILTER_ERROR_RATE, EpochFilter
from blindmatch.demo import harness
from blindmatch.runtime import net
from blindmatch.v1 import coordinator_pb2, coordinator_pb2_grpc
from blindmatch.v2 import watch_pb2, watch_pb2_grpc
from coordinator.config import load_operator_config
from coordinator.operator_cli import new_round, start_request
from node.store import Sighting, Store

NAMES = ("alpha", "bravo", "charlie", "delta")
CHECK_BUDGET = 10_000_000  # evaluations per partner's checks per epoch: no limit for the bench


def start_federation(root: Path, set_size: int) -> harness.Federation:
    """Four nodes that may check against each other, each holding ``set_size`` indicators."""
    fed = harness.Federation(root, NAMES, operator="bench")
    fed.init(watch=True)
    for i, name in enumerate(NAMES):
        harness.set_setting(fed.node_toml(name), "check_budget", CHECK_BUDGET)
        harness.set_setting(fed.node_toml(name), "check_elements", 4 * CHECK_BUDGET)
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


def needed_evaluations(values: list[str]) -> dict[str, float]:
    """Seconds of the group work a check of ``values`` needs, one party after the other, in this
    process: alpha blinds and asks, each other member answers, alpha verifies and unblinds."""
    members = {m: Member("epoch", "bench", m) for m in NAMES}
    sizes = dict.fromkeys(NAMES, 1)
    caps = {(h, c): CHECK_BUDGET for h in NAMES for c in NAMES if h != c}
    transcript = Transcript(
        "epoch",
        "bench",
        b"\x00" * 32,
        tuple(m.commitment for m in members.values()),
        sizes,
        sizes,
        caps,
    )
    for m in members.values():
        m.accept(transcript)
    out: dict[str, float] = {}
    # the values are new sightings: the checker hashes them, as the node does for values its
    # store lacks
    t0 = time.process_time()
    hashes = points_from_bytes(b"".join(hash_indicators([("domain", v) for v in values])))
    out["hash_s"] = time.process_time() - t0
    t0 = time.process_time()
    check = Check(
        "alpha", transcript, transcript.verified_keys(), hashes, members["alpha"], "c1", seq=10
    )
    out["checker_s"] = time.process_time() - t0
    out["members_s"] = 0.0
    for request, points in check.requests():
        for name in NAMES[1:]:
            t0 = time.process_time()
            answer, answered = members[name].answer(request, points)
            out["members_s"] += time.process_time() - t0
            t0 = time.process_time()
            check.answer(answer, answered)
            out["checker_s"] += time.process_time() - t0
    t0 = time.process_time()
    check.tags()
    out["checker_s"] += time.process_time() - t0
    out["checker_s"] += out.pop("hash_s")
    out["total_s"] = out["checker_s"] + out["members_s"]
    return out


def filter_sizes(counts: list[int]) -> list[dict[str, float]]:
    out = []
    for n in counts:
        tags = secrets.token_bytes(16 * n)
        start = time.perf_counter()
        bloom = EpochFilter.build("bench", "alpha", tags, FILTER_ERROR_RATE)
        built = time.perf_counter() - start
        probes = secrets.token_bytes(16 * min(n, 100_000))
        start = time.perf_counter()
        false_hits = int(bloom.contains_many(probes).sum())
        queried = time.perf_counter() - start
        out.append(
            {
                "tags": n,
                "filter_bytes_per_tag": len(bloom.to_bytes()) / n,
                "exact_packed_bytes_per_tag": 16.0,
                "builds_per_s": n / built,
                "queries_per_s": len(probes) // 16 / queried,
                "false_hits_in_probes": false_hits,
            }
        )
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=10_000)
    p.add_argument("--repeat", type=int, default=20)
    p.add_argument("--set-size", type=int, default=5_000, help="indicators per node")
    p.add_argument("--filters", default="10000,100000,1000000", help="filter sizes to measure")
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
            results["load_average"] = os.getloadavg()
        finally:
            fed.stop()
    needed = needed_evaluations(batch)
    results["needed"] = needed
    results["ratio_to_needed"] = results["batch_check_s"] / needed["total_s"]
    results["filters"] = filter_sizes([int(n) for n in args.filters.split(",") if n])
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(
        f"cores: {results['cores']}; watch round of 4 x {args.set_size} (committee of 4): "
        f"{results['watch_round_s']:.2f} s"
    )
    median = results["one_value_median_ms"]
    print(
        f"check of 1 value, 3 other members, 3 filters: median {median:.1f} ms, max "
        f"{results['one_value_max_ms']:.1f} ms ({args.repeat} checks): "
        f"{'MET' if median <= 25 else 'MISS'} (target median <= 25 ms)"
    )
    ratio = results["ratio_to_needed"]
    print(
        f"check of {args.batch} values: {results['batch_check_s']:.2f} s; the evaluations it "
        f"needs, one party after the other: {needed['total_s']:.2f} s CPU (checker "
        f"{needed['checker_s']:.2f}, 3 members {needed['members_s']:.2f}): {ratio:.2f} x: "
        f"{'MET' if ratio <= 1.3 else 'MISS'} (target <= 1.3)"
    )
    print("load average (1, 5, 15 min): " + ", ".join(f"{x:.2f}" for x in results["load_average"]))
    for f in results["filters"]:
        print(
            f"filter of {f['tags']:,} tags at {FILTER_ERROR_RATE:g}: "
            f"{f['filter_bytes_per_tag']:.2f} B/tag (the tags themselves 16 B); build "
            f"{f['builds_per_s']:,.0f} tags/s, test {f['queries_per_s']:,.0f} tags/s, "
            f"{f['false_hits_in_probes']} false hits"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
