"""blindmatch side by side with openmined-psi, and the throughput targets of issue 4, in one run.

    python bench/compare.py                      # 2 nations x 10k and 100k, 1 and 2 cores
    python bench/compare.py --sizes 50000 --nations 3 --cores 2
    python bench/compare.py --full               # and 3 nations x 1M (openmined-psi only to --psi-max)

blindmatch runs as a real federation: a federation CA, every node and the coordinator in its own
process on loopback, gRPC with mTLS, set up and driven with the ``blindmatch`` commands an operator
types (stores are filled directly through ``node.store``, as an import would). A round is timed by
the coordinator's own created/finished timestamps and as observed by the operator command; CPU
seconds are summed over every server process and its children (the nodes' blinding workers), and
peak RSS is each process's VmHWM. openmined-psi runs its complete two-party protocol (server setup,
client request, server response, client intersection, every message serialised and parsed as a
network would) in one fresh process on the same two sets.

The core costs the targets are computed from (hash to group, blinding, matching, ``openssl speed``,
a pool of 1 and of N blinding processes) are measured in the same run, so ratios compare like with
like. The machine may be shared: every row says how many cores other work used meanwhile. Results
go to ``--out`` (report.md, results.json; with ``--keep`` the federations and their server logs)
and the plot to ``--plot``.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import multiprocessing
import os
import platform
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import psutil
from grpc_health.v1 import health_pb2, health_pb2_grpc

from blindmatch import group, net
from blindmatch.canon import canonicalize
from blindmatch.match import presence
from node.store import Sighting, Store

ROOT = Path(__file__).resolve().parent.parent
SHARED = 0.10  # share of every set held by all nations
NATION_NAMES = ("aurelia", "borealis", "cascadia", "dalmatia", "estonia", "fennia")
HEALTH_TIMEOUT = 120.0
ROUND_TIMEOUT = 3600.0
MICRO_ITEMS = 2000
MICRO_REPEAT = 15
OPENSSL_TURNS = 5  # openssl speed runs of 1 s, between passes of the Python measurements
POOL_CHUNKS = 24  # chunks of DEFAULT_CHUNK elements per pool measurement
MATCH_SET = 1_000_000
TIMELINE_STEP = 0.25  # seconds between CPU samples during a round


# --- generated data ---------------------------------------------------------------------------


def indicator(ident: int) -> tuple[str, str]:
    """A canonical indicator per integer: addresses, domains, URLs and SHA-256 hashes in turn."""
    kind = ident % 4
    if kind == 0:
        a = ident >> 2
        return "ipv4", f"{10 + (a >> 24) % 200}.{a >> 16 & 255}.{a >> 8 & 255}.{a & 255}"
    if kind == 1:
        return "domain", f"host{ident}.example-{ident % 97}.org"
    if kind == 2:
        return "url", f"http://cdn{ident % 13}.example.net/payload/{ident}/stage2.bin"
    return "sha256", hashlib.sha256(ident.to_bytes(8, "little")).hexdigest()


def nation_items(index: int, size: int) -> list[tuple[str, str]]:
    """Nation ``index``'s set: the shared core (ids 0..) and ids only this nation holds."""
    shared = int(size * SHARED)
    own = (index + 1) << 30
    return [indicator(i) for i in range(shared)] + [
        indicator(own + i) for i in range(size - shared)
    ]


def check_canonical() -> None:
    for ident in range(8):
        kind, value = indicator(ident)
        if canonicalize(kind, value).value != value:
            raise SystemExit(f"bench data is not canonical: {kind} {value!r}; fix indicator()")


# --- measuring processes ----------------------------------------------------------------------


def _status_kib(pid: int, key: str) -> int:
    """VmRSS / VmHWM of a process from /proc, in KiB (0 if it is gone)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    match = re.search(rf"^{key}:\s+(\d+) kB", text, re.M)
    return int(match.group(1)) if match else 0


@dataclass
class ProcSample:
    label: str
    pid: int
    cpu: float  # user + system seconds so far, reaped children included
    rss: int  # bytes now
    hwm: int  # peak bytes over the process's life


def _label(proc: psutil.Process, owner: str) -> str:
    try:
        cmd = " ".join(proc.cmdline())
    except psutil.Error:
        return f"{owner} child"
    if "resource_tracker" in cmd:
        return f"{owner} resource tracker"
    if "spawn_main" in cmd:
        return f"{owner} worker"
    return f"{owner} child"


def sample(servers: dict[str, int]) -> list[ProcSample]:
    """Every server process and all its descendants."""
    out = []
    for owner, pid in servers.items():
        try:
            main = psutil.Process(pid)
            procs = [(owner, main)] + [(_label(c, owner), c) for c in main.children(recursive=True)]
        except psutil.Error:
            continue
        for label, proc in procs:
            try:
                t = proc.cpu_times()
                cpu = t.user + t.system + t.children_user + t.children_system
            except psutil.Error:
                continue
            out.append(
                ProcSample(
                    label,
                    proc.pid,
                    cpu,
                    _status_kib(proc.pid, "VmRSS") * 1024,
                    _status_kib(proc.pid, "VmHWM") * 1024,
                )
            )
    return out


def busy_cpu_seconds() -> float:
    """Machine-wide non-idle CPU seconds (all processes, all cores)."""
    t = psutil.cpu_times()
    return float(sum(t) - t.idle - getattr(t, "iowait", 0.0))


# --- the federation ---------------------------------------------------------------------------


def _free_ports(count: int) -> list[int]:
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(count)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]


def cli(*argv: str, timeout: float = 120.0) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "blindmatch.cli", *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )
    if done.returncode:
        raise SystemExit(f"`blindmatch {' '.join(argv[:2])}` failed: {done.stderr or done.stdout}")
    return done.stdout


@dataclass
class RoundRun:
    nations: int
    items: int  # per nation
    workers: int  # blinding processes per node
    wall: float  # coordinator: finished - created
    observed: float  # operator command, start to exit
    cpu: float  # every server process and child, during the round
    processes: list[dict[str, Any]]  # label, peak RSS, CPU during the round
    coordinator_bytes_per_tag: float
    matches: dict[str, int]
    expected_matches: int
    load_before: float
    other_cores: float  # CPU used by everything else on the machine during the round, in cores
    timeline: list[dict[str, float]]  # cores busy per role, every TIMELINE_STEP seconds

    @property
    def peak_rss(self) -> int:
        return max(int(p["peak_rss"]) for p in self.processes)


class Federation:
    """CA, nodes, coordinator and operator under ``root``, built with the blindmatch CLI."""

    def __init__(self, root: Path, nations: Sequence[str], chunk_size: int | None) -> None:
        self.root = root
        self.nations = list(nations)
        self.servers: dict[str, subprocess.Popen[bytes]] = {}
        ports = _free_ports(len(nations) + 1)
        self.addresses = dict(zip(nations, (f"127.0.0.1:{p}" for p in ports), strict=False))
        self.coord_address = f"127.0.0.1:{ports[-1]}"
        pki = root / "pki"
        cli("pki", "init", str(pki))
        for name in nations:
            cli(
                *("node", "init", str(self.node_dir(name)), "--name", name),
                *("--listen", self.addresses[name], "--pki", str(pki)),
            )
        nodes = [f"--node={n}={a}" for n, a in self.addresses.items()]
        cli(
            *("coordinator", "init", str(root / "coordinator"), "--listen", self.coord_address),
            *("--pki", str(pki), *nodes),
        )
        if chunk_size is not None:
            self._edit(self.coord_toml, r"^chunk_size = \d+", f"chunk_size = {chunk_size}")
        cli(
            *("operator", "init", str(root / "operator"), "--name", "bench"),
            *("--coordinator", self.coord_address, "--pki", str(pki)),
        )

    def node_dir(self, name: str) -> Path:
        return self.root / "nodes" / name

    @property
    def coord_toml(self) -> Path:
        return self.root / "coordinator" / "coordinator.toml"

    @property
    def op_toml(self) -> Path:
        return self.root / "operator" / "operator.toml"

    @staticmethod
    def _edit(path: Path, pattern: str, replacement: str) -> None:
        text, n = re.subn(pattern, replacement, path.read_text(), flags=re.M)
        if n != 1:
            raise SystemExit(f"{path}: expected one line matching {pattern!r}")
        path.write_text(text)

    def load(self, index: int, items: list[tuple[str, str]]) -> None:
        name = self.nations[index]
        with Store.open(self.node_dir(name) / "store.sqlite") as store:
            store.add_sightings(
                (Sighting(k, v, v) for k, v in items), source="bench", default_tlp="green"
            )

    def start(self, workers: int) -> None:
        logs = self.root / "logs"
        logs.mkdir(exist_ok=True)
        for name in self.nations:
            toml = self.node_dir(name) / "node.toml"
            self._edit(toml, r"^workers = \d+", f"workers = {workers}")
            self._spawn(name, ["node", "serve", "--config", str(toml)], logs)
        self._spawn("coordinator", ["coordinator", "serve", "--config", str(self.coord_toml)], logs)
        self._wait_healthy()

    def _spawn(self, label: str, argv: list[str], logs: Path) -> None:
        with (logs / f"{label}.log").open("ab") as log:
            # A session of its own: stop() can clean up workers a killed server leaves behind.
            self.servers[label] = subprocess.Popen(
                [sys.executable, "-m", "blindmatch.cli", *argv],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=ROOT,
            )

    def _wait_healthy(self) -> None:
        with self.op_toml.open("rb") as f:
            paths = tomllib.load(f)["tls"]
        base = self.op_toml.parent
        tls = net.load_tls(base / paths["ca"], base / paths["cert"], base / paths["key"])
        targets = {**self.addresses, "coordinator": self.coord_address}
        deadline = time.monotonic() + HEALTH_TIMEOUT
        request = health_pb2.HealthCheckRequest(service="")
        for label, address in targets.items():
            # a health check only: any holder of the server's role will do
            role = "coordinator" if label == "coordinator" else "node"
            channel = net.open_channel(address, tls, insecure=False, expect=net.Allow(role))
            try:
                stub = health_pb2_grpc.HealthStub(channel)
                while True:
                    if self.servers[label].poll() is not None:
                        raise SystemExit(f"{label} exited; see {self.root / 'logs'}")
                    try:
                        if stub.Check(request, timeout=1.0).status == 1:  # SERVING
                            break
                    except grpc.RpcError:
                        pass
                    if time.monotonic() > deadline:
                        raise SystemExit(f"{label} not healthy after {HEALTH_TIMEOUT:.0f} s")
                    time.sleep(0.1)
            finally:
                channel.close()

    def stop(self) -> None:
        for proc in self.servers.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.servers.values():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)  # the group this script created
        self.servers.clear()

    def run_round(self, items: int, workers: int) -> RoundRun:
        pids = {label: p.pid for label, p in self.servers.items()}
        load_before = os.getloadavg()[0]
        before = {s.pid: s for s in sample(pids)}
        timeline = Timeline(pids)
        busy0, operator0 = busy_cpu_seconds(), _children_cpu()
        t0 = time.monotonic()
        with timeline:
            done = subprocess.run(
                [
                    *(sys.executable, "-m", "blindmatch.cli", "round", "start"),
                    *("--config", str(self.op_toml), "--nodes", ",".join(self.nations)),
                    *("--wait", "--json"),
                ],
                capture_output=True,
                text=True,
                timeout=ROUND_TIMEOUT,
                cwd=ROOT,
            )
        observed = time.monotonic() - t0
        busy, operator = busy_cpu_seconds() - busy0, _children_cpu() - operator0
        after = sample(pids)
        try:
            info = json.loads(done.stdout)
        except json.JSONDecodeError:
            raise SystemExit(f"round start failed: {done.stderr}") from None
        if info.get("state") != "done":
            raise SystemExit(f"round {info.get('id')} {info.get('state')}: {info.get('error')}")
        procs: list[dict[str, Any]] = []
        for s in after:
            old = before.get(s.pid)
            procs.append(
                {
                    "label": s.label,
                    "pid": s.pid,
                    "cpu": s.cpu - (old.cpu if old else 0.0),
                    "peak_rss": s.hwm,
                    "rss_before": old.rss if old else 0,
                }
            )
        cpu = sum(p["cpu"] for p in procs)
        coord = next(p for p in procs if p["label"] == "coordinator")
        tags = items * len(self.nations)
        return RoundRun(
            nations=len(self.nations),
            items=items,
            workers=workers,
            wall=info["finished"] - info["created"],
            observed=observed,
            cpu=cpu,
            processes=procs,
            coordinator_bytes_per_tag=(coord["peak_rss"] - coord["rss_before"]) / tags,
            matches=info["match_counts"],
            expected_matches=int(items * SHARED),
            load_before=load_before,
            # the operator command (a Python start-up and a wait) is not part of the protocol
            other_cores=max(0.0, busy - cpu - operator) / max(observed, 1e-9),
            timeline=timeline.rows,
        )


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class Timeline:
    """Cores busy per role (node main processes, blinding workers, coordinator, everything else
    on the machine) every TIMELINE_STEP seconds while the ``with`` block runs.

    The process tree is read once (workers start with their server, before any round); each
    tick then reads only /proc/PID/stat of those processes, so sampling costs well under 1% of a
    core and stays out of the figures it draws.
    """

    def __init__(self, servers: dict[str, int]) -> None:
        self.procs: list[tuple[str, psutil.Process]] = []
        for label, pid in servers.items():
            with contextlib.suppress(psutil.Error):
                main = psutil.Process(pid)
                role = "coordinator" if label == "coordinator" else "nodes"
                self.procs.append((role, main))
                self.procs += [
                    ("workers" if role == "nodes" else role, c) for c in main.children(True)
                ]
        self.rows: list[dict[str, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Timeline:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _totals(self) -> dict[str, float]:
        out = dict.fromkeys(("nodes", "workers", "coordinator"), 0.0)
        for role, proc in self.procs:
            with contextlib.suppress(psutil.Error):
                t = proc.cpu_times()
                out[role] += t.user + t.system
        out["machine"] = busy_cpu_seconds()
        return out

    def _run(self) -> None:
        t0 = last_t = time.monotonic()
        last = self._totals()
        while not self._stop.wait(TIMELINE_STEP):
            now, totals = time.monotonic(), self._totals()
            dt = max(now - last_t, 1e-9)
            row = {k: max(0.0, totals[k] - last[k]) / dt for k in totals}
            row["other"] = max(
                0.0, row.pop("machine") - row["nodes"] - row["workers"] - row["coordinator"]
            )
            row["t"] = now - t0
            self.rows.append(row)
            last, last_t = totals, now


# --- openmined-psi ------------------------------------------------------------------------------


@dataclass
class PsiRun:
    items: int
    wall: float
    cpu: float
    peak_rss: int
    intersection: int
    other_cores: float  # CPU used by everything else on the machine meanwhile, in cores


def _psi_child(size: int, conn: Connection) -> None:
    """Runs in a fresh process so CPU and peak RSS are openmined-psi's alone."""
    import private_set_intersection.python as psi  # type: ignore[import-untyped]

    client_items = [f"{k}\0{v}" for k, v in nation_items(0, size)]
    server_items = [f"{k}\0{v}" for k, v in nation_items(1, size)]
    c0, t0, busy0 = time.process_time(), time.perf_counter(), busy_cpu_seconds()
    server = psi.server.CreateWithNewKey(True)
    client = psi.client.CreateWithNewKey(True)
    setup = server.CreateSetupMessage(1e-9, len(client_items), server_items, psi.DataStructure.GCS)
    request = client.CreateRequest(client_items)
    # Every message crosses the wire: serialise and parse it, as two separate parties would.
    request_in = psi.Request()
    request_in.ParseFromString(request.SerializeToString())
    response = server.ProcessRequest(request_in)
    setup_in, response_in = psi.ServerSetup(), psi.Response()
    setup_in.ParseFromString(setup.SerializeToString())
    response_in.ParseFromString(response.SerializeToString())
    intersection = client.GetIntersection(setup_in, response_in)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    other = max(0.0, busy_cpu_seconds() - busy0 - cpu) / wall
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    conn.send(asdict(PsiRun(size, wall, cpu, peak, len(intersection), other)))
    conn.close()


def run_psi(size: int) -> PsiRun:
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_psi_child, args=(size, child))
    proc.start()
    child.close()
    try:
        result = PsiRun(**parent.recv())
    except EOFError:
        raise SystemExit(f"openmined-psi at {size} items died (exit {proc.exitcode})") from None
    finally:
        proc.join()
    return result


# --- core costs ---------------------------------------------------------------------------------


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
    passes: dict[str, list[float]] = {"hash": [], "blind": [], "hash_and_blind": []}
    for _ in range(OPENSSL_TURNS):
        rate = openssl_x25519()
        if rate is not None:
            openssl.append(rate)
        costs = median_costs(
            {
                "hash": lambda: group.hash_indicators(items),
                "blind": lambda: key.blind(elements),
                "hash_and_blind": lambda: group.hash_and_blind_packed(raw, items),
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


# --- report -------------------------------------------------------------------------------------


def _mb(n: float) -> str:
    return f"{n / 2**20:,.0f} MB"


def table(runs: list[RoundRun], psi: dict[int, PsiRun]) -> list[list[str]]:
    rows = [
        [
            *("system", "parties", "items", "cores", "wall s", "CPU s", "items/s", "peak RSS"),
            *("ratio", "other load"),
        ]
    ]
    for size in sorted({r.items for r in runs} | set(psi)):
        ref = psi.get(size)
        if ref is not None:
            rows.append(
                [
                    "openmined-psi",
                    "2",
                    f"{size:,}",
                    "1",
                    f"{ref.wall:.2f}",
                    f"{ref.cpu:.2f}",
                    f"{2 * size / ref.wall:,.0f}",
                    _mb(ref.peak_rss),
                    "1.00",
                    f"{ref.other_cores:.2f}",
                ]
            )
        for r in sorted((r for r in runs if r.items == size), key=lambda r: r.workers):
            ratio = f"{r.wall / ref.wall:.2f}" if ref is not None and r.nations == 2 else "-"
            rows.append(
                [
                    "blindmatch",
                    str(r.nations),
                    f"{size:,}",
                    str(r.workers),
                    f"{r.wall:.2f}",
                    f"{r.cpu:.2f}",
                    f"{r.nations * size / r.wall:,.0f}",
                    _mb(r.peak_rss),
                    ratio,
                    f"{r.other_cores:.2f}",
                ]
            )
    return rows


def render(rows: list[list[str]], markdown: bool) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for n, row in enumerate(rows):
        cells = [
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append(("| " + " | ".join(cells) + " |") if markdown else "  ".join(cells))
        if n == 0:
            dashes = ["-" * w for w in widths]
            lines.append(("| " + " | ".join(dashes) + " |") if markdown else "  ".join(dashes))
    return "\n".join(lines)


def report(
    info: dict[str, Any],
    core: Core,
    runs: list[RoundRun],
    rows: list[list[str]],
    verdict_lines: list[str],
    cpus: int,
) -> str:
    """The run in Markdown, ready for docs/BENCHMARKS.md."""
    load = info["load_at_start"]
    out = [
        f"Machine: {info['cpus']} x {info['cpu_model']}, {info['ram_gib']} GiB RAM, Python "
        f"{info['python']}, {info['platform']}; load average at start {load[0]:.2f} / "
        f"{load[1]:.2f} / {load[2]:.2f}.",
        "",
        f"Core costs (CPU time, medians, same run): hash to group {core.hash_us:.1f} us, blinding "
        f"{core.blind_us:.1f} us, hash and blind {core.hash_and_blind_us:.1f} us per item; "
        f"`openssl speed ecdhx25519` {core.openssl_ops or 0:,.0f} ops/s; blinding pool "
        + ", ".join(f"{w} process(es) {r:,.0f} ops/s" for w, r in core.pool_rates.items())
        + f"; matching {core.match_tags_per_s / 1e6:.1f}M tags/s.",
        "",
        render(rows, markdown=True),
        "",
        "```",
        *verdict_lines,
        "```",
    ]
    for r in runs:
        floor = floor_seconds(r, core, cpus)
        out += [
            "",
            f"{r.nations} x {r.items:,}, {r.workers} worker(s)/node: wall {r.wall:.2f} s "
            f"(observed by the operator command {r.observed:.2f} s), compute floor {floor:.2f} s, "
            f"wall/floor {r.wall / floor:.2f}; coordinator {r.coordinator_bytes_per_tag:.0f} "
            f"bytes/tag; other load {r.other_cores:.2f} cores.",
            "",
            "| process | peak RSS | CPU s in the round |",
            "| --- | ---: | ---: |",
            *(f"| {p['label']} | {_mb(p['peak_rss'])} | {p['cpu']:.2f} |" for p in r.processes),
        ]
    return "\n".join(out) + "\n"


def floor_seconds(run: RoundRun, core: Core, cores: int) -> float:
    """(hashes x hash cost + blindings x blinding cost) / cores: every set is blinded by every node."""
    hashes = run.nations * run.items
    blindings = run.nations * run.nations * run.items
    return (hashes * core.hash_us + blindings * core.blind_us) / 1e6 / cores


def _load(other_cores: float) -> str:
    """A warning when other work took a noticeable share of the machine during a run."""
    if other_cores < 0.1:
        return ""
    return f" (other work used {other_cores:.2f} of the machine's cores meanwhile)"


def verdicts(runs: list[RoundRun], psi: dict[int, PsiRun], core: Core, cores: int) -> list[str]:
    out = []

    def say(ok: bool | None, text: str) -> None:
        out.append(f"{'n/a ' if ok is None else 'MET ' if ok else 'MISS'}  {text}")

    blind_ops = 1e6 / core.blind_us
    if core.openssl_ops:
        ratio = blind_ops / core.openssl_ops
        say(
            ratio >= 0.9,
            f"1a blinding per core {blind_ops:,.0f} ops/s = {ratio:.2f} x openssl speed "
            f"ecdhx25519 ({core.openssl_ops:,.0f} ops/s); target >= 0.90",
        )
    else:
        say(None, "1a openssl not found: no reference for blinding per core")
    hash_pipeline = core.hash_and_blind_us - core.blind_us
    say(
        core.hash_us <= core.blind_us,
        f"1b hash to group {core.hash_us:.1f} us = {core.hash_us / core.blind_us:.2f} x one "
        f"blinding ({core.blind_us:.1f} us); in the own-set pipeline (hash and blind minus "
        f"blind) {hash_pipeline:.1f} us = {hash_pipeline / core.blind_us:.2f} x; target <= 1.00",
    )
    if cores in core.pool_rates and cores > 1:
        scale = core.pool_rates[cores] / core.pool_rates[1]
        say(
            scale >= 0.9 * cores,
            f"2  blinding on {cores} cores {core.pool_rates[cores]:,.0f} ops/s = {scale:.2f} x "
            f"one core ({core.pool_rates[1]:,.0f} ops/s); target >= {0.9 * cores:.1f}",
        )
    else:
        say(None, "2  one core only: no scaling to measure")
    for r in runs:
        ref = psi.get(r.items)
        if r.nations == 2 and ref is not None and r.items >= 100_000:
            what = f"2 x {r.items:,}, {r.workers} worker(s)/node"
            # openmined-psi is single threaded: on an idle core its wall time is its CPU time.
            # Taking the smaller keeps other work on the machine from flattering blindmatch.
            psi_wall = min(ref.wall, ref.cpu)
            say(
                r.wall <= psi_wall / 3,
                f"3a {what}: wall {r.wall:.2f} s = {r.wall / psi_wall:.2f} x openmined-psi "
                f"({psi_wall:.2f} s); target <= 0.33{_load(r.other_cores)}",
            )
            say(
                r.cpu < ref.cpu,
                f"3b {what}: CPU {r.cpu:.1f} s = {r.cpu / ref.cpu:.2f} x openmined-psi "
                f"({ref.cpu:.1f} s); target < 1",
            )
    for r in runs:
        if r.nations >= 3 and r.items >= 1_000_000:
            what = f"{r.nations} x {r.items:,}, {r.workers} worker(s)/node"
            floor = floor_seconds(r, core, cores)
            say(
                r.wall <= 1.25 * floor,
                f"4a {what} completed: wall {r.wall:.1f} s = {r.wall / floor:.2f} x the compute "
                f"floor {floor:.1f} s; target <= 1.25{_load(r.other_cores)}",
            )
            say(
                r.coordinator_bytes_per_tag <= 100,
                f"4b {what}: coordinator {r.coordinator_bytes_per_tag:.0f} bytes/tag (peak RSS "
                "growth over the tags of the round); target <= 100",
            )
    say(
        core.match_tags_per_s >= 5e6,
        f"5  matching {core.match_tags_per_s / 1e6:.1f}M tags/s ({core.match_tags:,} tags); "
        "target >= 5M",
    )
    return out


def plot(runs: list[RoundRun], psi: dict[int, PsiRun], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (by_size, by_cores, busy) = plt.subplots(1, 3, figsize=(16, 4.6))
    groups = sorted({(r.nations, r.workers) for r in runs})
    for nations, workers in groups:
        pts = sorted(
            (r.items, r.wall) for r in runs if (r.nations, r.workers) == (nations, workers)
        )
        by_size.plot(
            [x for x, _ in pts],
            [y for _, y in pts],
            marker="o",
            label=f"blindmatch, {nations} nations, {workers} worker(s)/node",
        )
    if psi:
        pts = sorted((size, run.wall) for size, run in psi.items())
        by_size.plot(
            [x for x, _ in pts],
            [y for _, y in pts],
            marker="s",
            ls="--",
            color="black",
            label="openmined-psi, 2 parties",
        )
    by_size.set(xscale="log", yscale="log", xlabel="indicators per nation", ylabel="wall s")
    by_size.set_title("Round time against set size")
    by_size.legend(fontsize=8)
    by_size.grid(True, which="both", alpha=0.3)
    for nations, size in sorted({(r.nations, r.items) for r in runs}):
        pts = sorted((r.workers, r.wall) for r in runs if (r.nations, r.items) == (nations, size))
        by_cores.plot(
            [x for x, _ in pts], [y for _, y in pts], marker="o", label=f"{nations} x {size:,}"
        )
    by_cores.set(xlabel="blinding worker processes per node", ylabel="wall s", yscale="log")
    by_cores.set_xticks(sorted({r.workers for r in runs}))
    by_cores.set_title(f"Round time against cores ({os.cpu_count()}-core machine)")
    by_cores.legend(fontsize=8)
    by_cores.grid(True, which="both", alpha=0.3)
    largest = max(runs, key=lambda r: (r.nations * r.items, r.workers), default=None)
    if largest is not None and largest.timeline:
        t = [row["t"] for row in largest.timeline]
        roles = ("workers", "nodes", "coordinator", "other")
        labels = ("node blinding workers", "node main processes", "coordinator", "everything else")
        busy.stackplot(t, *([row[k] for row in largest.timeline] for k in roles), labels=labels)
        busy.axhline(os.cpu_count() or 1, color="black", lw=0.8, ls=":")
        busy.set(xlabel="seconds into the round", ylabel="cores busy", ylim=(0, None))
        busy.set_title(
            f"Where the time goes: {largest.nations} x {largest.items:,}, "
            f"{largest.workers} worker(s)/node"
        )
        busy.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def machine() -> dict[str, Any]:
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_at_start": os.getloadavg(),
    }


# --- main ---------------------------------------------------------------------------------------


def run_federation(
    nations: list[str], size: int, cores: list[int], args: argparse.Namespace
) -> list[RoundRun]:
    """One federation with ``size`` indicators per nation, one round per ``workers`` setting."""
    root = Path(tempfile.mkdtemp(prefix=f"fed-{len(nations)}x{size}-", dir=args.out))
    print(f"{len(nations)} nations x {size:,}: federation in {root}", flush=True)
    fed = Federation(root, nations, args.chunk)
    runs = []
    try:
        for i in range(len(nations)):
            fed.load(i, nation_items(i, size))
        for workers in cores:
            fed.start(workers)
            try:
                run = fed.run_round(size, workers)
            finally:
                fed.stop()
            runs.append(run)
            wrong = {n: c for n, c in run.matches.items() if c != run.expected_matches}
            print(
                f"  {workers} worker(s)/node: {run.wall:.2f} s (observed {run.observed:.2f} s), "
                f"CPU {run.cpu:.1f} s, peak RSS {_mb(run.peak_rss)}, coordinator "
                f"{run.coordinator_bytes_per_tag:.0f} B/tag, other load {run.other_cores:.2f} cores"
                + (f"; WRONG match counts {wrong}" if wrong else ""),
                flush=True,
            )
    finally:
        fed.stop()
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    return runs


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
        "--chunk", type=int, default=None, help="coordinator chunk_size (default: its own)"
    )
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "out", help="results and logs")
    p.add_argument(
        "--plot",
        type=Path,
        help="the PNG (default: docs/benchmarks.png with --full, else OUT/benchmarks.png)",
    )
    p.add_argument("--keep", action="store_true", help="keep the federations' directories")
    args = p.parse_args(argv)
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
        f"  hash {core.hash_us:.1f} us, blind {core.blind_us:.1f} us, hash+blind "
        f"{core.hash_and_blind_us:.1f} us per item; openssl {core.openssl_ops or 0:,.0f} ops/s; "
        f"pool {', '.join(f'{w}: {r:,.0f}/s' for w, r in core.pool_rates.items())}",
        flush=True,
    )
    # (nations, indicators per nation) -> node `workers` settings to run
    plan = {(args.nations, size): args.cores for size in args.sizes}
    if args.full:
        plan[(3, 1_000_000)] = [cpus]
    runs: list[RoundRun] = []
    for (count, size), cores in plan.items():
        runs += run_federation(list(NATION_NAMES[:count]), size, cores, args)
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
            f"\n{r.nations} x {r.items:,}, {r.workers} worker(s)/node: floor "
            f"{floor_seconds(r, core, cpus):.2f} s, wall/floor {r.wall / floor_seconds(r, core, cpus):.2f}"
        )
        for p in r.processes:
            print(f"  {p['label']:<28} peak RSS {_mb(p['peak_rss']):>9}  CPU {p['cpu']:7.2f} s")
    (args.out / "report.md").write_text(report(info, core, runs, rows, lines, cpus))
    (args.out / "results.json").write_text(
        json.dumps(
            {
                "machine": info,
                "load_at_end": os.getloadavg(),
                "core": asdict(core),
                "runs": [asdict(r) for r in runs],
                "psi": {k: asdict(v) for k, v in psi.items()},
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
