"""blindmatch side by side with openmined-psi, and the targets of issues 4 and 12, in one run.

    python bench/compare.py                      # 2 nations x 10k and 100k, 1 and 2 cores
    python bench/compare.py --sizes 50000 --nations 3 --cores 2
    python bench/compare.py --full               # and 3 nations x 1M (openmined-psi only to --psi-max)
    python bench/compare.py --before ../pre12 --sizes 100000 --cores 2   # two builds side by side
    python bench/compare.py --sizes 10000000 --nations 3 --cores 2 --psi-max 0 --import-rows 0

blindmatch runs as a real federation: a federation CA, every node and the coordinator in its own
process on loopback, gRPC with mTLS, set up and driven with the ``blindmatch`` commands an operator
types (stores are filled directly through ``node.store``, as an import would). A round is timed by
the coordinator's own created/finished timestamps and as observed by the operator command; CPU
seconds are summed over every server process and its children (the nodes' hashing workers), and
peak RSS is each process's VmHWM. openmined-psi runs its complete two-party protocol (server setup,
client request, server response, client intersection, every message serialised and parsed as a
network would) in one fresh process on the same two sets.

The core costs the targets are computed from (hash to curve, a secp256k1 multiplication through
blindmatch and through libsecp256k1 directly, matching, a pool of 1 and of N hashing processes) are
measured in the same run, so ratios compare like with like. The machine may be shared: every row says how many cores other work used meanwhile. Results
go to ``--out`` (report.md, results.json; with ``--keep`` the federations and their server logs)
and the plot to ``--plot``.

With ``--before TREE`` (another checkout with its own ``.venv``), the rounds of that build run in
the same run beside this one's, alternating which goes first from one size to the next, and are
reported as "blindmatch (before)" next to "blindmatch (after)"; openmined-psi runs once per size.
The import throughput (``--import-rows``) is measured for each build too.

The jobs live beside this command line: ``datasets`` (the sets), ``blindmatch_runner`` (the
federation, on ``blindmatch.demo.harness``), ``builds`` (the other build's jobs), ``import_rate``,
``psi_runner``, ``core_costs``, ``processes`` (CPU and memory), ``report`` and ``plot``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from collections.abc import Sequence
from dataclasses import asdict, fields
from pathlib import Path

# Run as a script (`python bench/compare.py`): the repository root holds the bench package.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import builds
from bench.blindmatch_runner import RoundRun, run_federation
from bench.core_costs import measure_core
from bench.datasets import NATION_NAMES, SHARED, check_canonical
from bench.import_rate import ImportRun, measure_imports
from bench.plot import plot
from bench.processes import mb
from bench.psi_runner import PsiRun, run_psi
from bench.report import floor_text, machine, render, report, table, verdicts
from blindmatch.demo.harness import HarnessError

ROOT = Path(__file__).resolve().parent.parent


def _ints(text: str) -> list[int]:
    try:
        values = [int(x.replace("_", "")) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected numbers separated by commas"
        ) from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected positive numbers")
    return values


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--sizes", type=_ints, default=[10_000, 100_000], help="indicators per nation")
    p.add_argument("--nations", type=int, default=2, help="nations in every blindmatch round")
    p.add_argument(
        "--cores", type=_ints, default=None, help="node `workers` settings to run (default 1,N)"
    )
    p.add_argument(
        "--full", action="store_true", help="also 3 nations x 1M on all cores (several minutes)"
    )
    p.add_argument("--psi-max", type=int, default=200_000, help="largest size openmined-psi runs")
    p.add_argument(
        "--committee",
        type=int,
        default=0,
        help="protocol v2: the first N nations make the committee (default 0: every nation)",
    )
    p.add_argument(
        "--chunk", type=int, default=None, help="coordinator chunk_size (default: its own)"
    )
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "out", help="results and logs")
    p.add_argument(
        "--plot",
        type=Path,
        help="the PNG (default: docs/benchmarks.png with --full, else OUT/benchmarks.png)",
    )
    p.add_argument("--keep", action="store_true", help="keep the federations' directories")
    p.add_argument(
        "--before",
        type=Path,
        help="another checkout (with its .venv): its rounds and import beside this build's",
    )
    p.add_argument(
        "--import-rows",
        type=int,
        default=100_000,
        help="rows of the import throughput measurement (0: none)",
    )
    args = p.parse_args(argv)
    args.out = args.out.resolve()  # the other build's jobs run in its own checkout
    # docs/BENCHMARKS.md shows the full run; a quick run must not replace its plot.
    args.plot = args.plot or (
        ROOT / "docs" / "benchmarks.png" if args.full else args.out / "benchmarks.png"
    )
    args.cores = args.cores or sorted({1, os.cpu_count() or 1})
    if not 2 <= args.nations <= len(NATION_NAMES):
        p.error(f"--nations: 2 to {len(NATION_NAMES)}")
    return args


def _stop(signum: int, frame: object) -> None:
    # SystemExit runs every ``finally``: the servers this script started are stopped on the way.
    raise SystemExit(f"stopped by signal {signum}")


def _rounds(
    build: str, nations: int, size: int, cores: list[int], args: argparse.Namespace
) -> list[RoundRun]:
    """One federation of ``build`` ("" or "after": this tree; "before": ``--before``)."""
    if build != "before":
        runs = run_federation(list(NATION_NAMES[:nations]), size, cores, args)
        for r in runs:
            r.build = build
        return runs
    print(f"before ({args.before}):", flush=True)
    got = builds.call(
        args.before,
        "rounds",
        nations=nations,
        size=size,
        cores=cores,
        out=str(args.out.resolve()),
        chunk=args.chunk,
    )
    # RoundRun's fields as this tree knows them: the other tree's may have more or fewer
    known = {f.name for f in fields(RoundRun)}
    return [RoundRun(**{**{k: v for k, v in r.items() if k in known}, "build": build}) for r in got]


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _stop)
    check_canonical()
    cpus = os.cpu_count() or 1
    args.out.mkdir(parents=True, exist_ok=True)
    info = machine()
    print(
        f"machine: {info['cpus']} x {info['cpu_model']}, {info['ram_gib']} GiB, Python "
        f"{info['python']}, load {info['load_at_start'][0]:.2f}",
        flush=True,
    )
    print("core costs (same run) ...", flush=True)
    core = measure_core(cpus)
    print(
        f"  hash to curve {core.hash_us:.1f} us per item; secp256k1 multiply {core.mul_us:.1f} us "
        f"(libsecp256k1 directly {core.lib_mul_us:.1f} us); hashing pool "
        f"{', '.join(f'{w}: {r:,.0f}/s' for w, r in core.pool_rates.items())}",
        flush=True,
    )
    # (nations, indicators per nation) -> node `workers` settings to run
    plan = {(args.nations, size): args.cores for size in args.sizes}
    if args.full:
        plan[(3, 1_000_000)] = [cpus]
    runs: list[RoundRun] = []
    for turn, ((count, size), cores) in enumerate(plan.items()):
        # the builds take turns going first, so neither always meets the machine fresher
        order = ["after", "before"] if turn % 2 == 0 else ["before", "after"]
        for build in order if args.before else [""]:
            try:
                runs += _rounds(build, count, size, cores, args)
            except HarnessError as exc:
                raise SystemExit(str(exc)) from None
    imports: list[ImportRun] = []
    if args.import_rows:
        trees = {"before": args.before, "after": ROOT} if args.before else {"": ROOT}
        imports = measure_imports(trees, args.import_rows, args.out)
    psi: dict[int, PsiRun] = {}
    for size in sorted({size for _, size in plan}):
        if size > args.psi_max:
            print(f"openmined-psi skipped at {size:,} (--psi-max {args.psi_max:,})")
            continue
        print(f"openmined-psi 2 x {size:,} ...", flush=True)
        psi[size] = run_psi(size)
        if psi[size].intersection < int(size * SHARED):
            print(f"  openmined-psi found {psi[size].intersection}, expected {int(size * SHARED)}")

    rows = table(runs, psi)
    print()
    print(render(rows, markdown=False))
    print()
    lines = verdicts(runs, psi, core, cpus)
    print("\n".join(lines))
    for r in runs:
        print(
            f"\n{r.system}, {r.nations} x {r.items:,}, {r.workers} worker(s)/node: "
            + floor_text(r, core, cpus)
        )
        for p in r.processes:
            print(f"  {p['label']:<28} peak RSS {mb(p['peak_rss']):>9}  CPU {p['cpu']:7.2f} s")
    (args.out / "report.md").write_text(report(info, core, runs, rows, lines, cpus, imports))
    (args.out / "results.json").write_text(
        json.dumps(
            {
                "machine": info,
                "load_at_end": os.getloadavg(),
                "core": asdict(core),
                "runs": [asdict(r) for r in runs],
                "psi": {k: asdict(v) for k, v in psi.items()},
                "imports": [
                    {**asdict(i), "rows_per_s": i.rows_per_s, "rows_per_cpu_s": i.rows_per_cpu_s}
                    for i in imports
                ],
                "verdicts": lines,
            },
            indent=2,
        )
    )
    plot(runs, psi, args.plot)
    print(f"\nwrote {args.out / 'report.md'}, {args.out / 'results.json'}, {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
