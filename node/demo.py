"""``blindmatch demo``: a whole federation on loopback, with built-in sample data, in one command.

It does what operators would do by hand, in order: a federation CA, one node per nation, imports
of each nation's sample files, a coordinator and an operator; then every node and the coordinator
run as separate processes over mTLS, an operator runs a pairwise round, and the demo shows what
each nation learned, what the coordinator saw, and checks the result against plain set
intersection of the sample data (``node.samples.expected_matches``).

The node package never imports the coordinator: the coordinator and operator steps run as
``blindmatch`` subprocesses, exactly the commands an operator types. Every process the demo starts
is stopped on the way out (SIGTERM, then SIGKILL), also after an error or Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, Final

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from blindmatch import net, pki
from blindmatch.canon import KINDS
from node import samples
from node.cli import cmd_init as cmd_node_init
from node.config import load_config
from node.importing import import_paths
from node.store import Store

HEALTH_TIMEOUT: Final = 60.0  # seconds a server may take to come up (spawning blinding workers)
STOP_TIMEOUT: Final = 10.0  # seconds between SIGTERM and SIGKILL
ROUND_TIMEOUT: Final = 600.0
SHOWN_MATCHES: Final = 6
VALUE_WIDTH: Final = 52
COORDINATOR: Final = "coordinator"
# The line a successful check prints; tests look for it.
VERIFIED: Final = "exactly the plain intersection of the canonical sample data, TLP:RED excluded"
OPERATOR: Final = "demo-operator"


class DemoError(Exception):
    """A step of the demo failed; the message says which and what to look at."""


@dataclass
class Server:
    name: str  # "node aurelia", "coordinator"
    address: str
    process: subprocess.Popen[bytes]
    log: Path


def cmd_demo(args: argparse.Namespace) -> int:
    nations_count: int = args.nations
    size: int = args.size
    if not samples.MIN_NATIONS <= nations_count <= len(samples.NATION_NAMES):
        return _usage(
            f"--nations {nations_count}: choose {samples.MIN_NATIONS} to "
            f"{len(samples.NATION_NAMES)} nations"
        )
    if size < samples.MIN_SIZE:
        return _usage(f"--size {size}: the sample data needs at least {samples.MIN_SIZE}")
    keep = Path(args.keep) if args.keep else None
    if keep is not None and keep.exists() and (not keep.is_dir() or any(keep.iterdir())):
        return _usage(f"--keep {keep}: exists and is not an empty directory; choose a new one")
    try:
        root = keep or Path(tempfile.mkdtemp(prefix="blindmatch-demo-"))
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        print(f"error: cannot create a directory for the demo: {exc}", file=sys.stderr)
        return 1
    demo = Demo(root, samples.nation_names(nations_count), size, bool(getattr(args, "verbose", 0)))
    previous = signal.signal(signal.SIGTERM, _terminate)
    status = 1
    try:
        status = demo.run()
    except DemoError as exc:
        print(f"error: {exc}; everything is kept in {root}", file=sys.stderr)
    except (OSError, ValueError, pki.PkiError, net.NetError) as exc:
        print(f"error: {exc}; the demo stopped, everything is kept in {root}", file=sys.stderr)
    except KeyboardInterrupt:
        status = 130
        raise
    finally:
        # Cleanup must finish: another Ctrl-C now would leave servers running.
        interrupt = signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            demo.stop_all()
            if keep is None and status in (0, 130):
                shutil.rmtree(root, ignore_errors=True)
            elif keep is not None and status == 0:
                print(f"\nThe federation is kept in {keep}; see {keep / 'README.txt'}")
        finally:
            signal.signal(signal.SIGINT, interrupt)
            signal.signal(signal.SIGTERM, previous)
    return status


def _usage(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def _terminate(signum: int, frame: FrameType | None) -> None:
    # Turn SIGTERM into an exception so the servers are stopped on the way out.
    raise KeyboardInterrupt


class Demo:
    def __init__(self, root: Path, nations: list[str], size: int, verbose: bool) -> None:
        self.root = root.resolve()
        self.nations = nations
        self.size = size
        self.verbose = verbose
        self.servers: list[Server] = []
        self.spelled: dict[str, dict[tuple[str, str], str]] = {}  # nation -> key -> as imported
        self.pki_dir = self.root / "pki"
        self.logs = self.root / "logs"
        self.node_dirs = {n: self.root / "nodes" / n for n in nations}
        self.coord_dir = self.root / "coordinator"
        self.op_config = self.root / "operator" / "operator.toml"

    def run(self) -> int:
        started = time.monotonic()
        names = ", ".join(self.nations)
        print(
            f"blindmatch demo: {len(self.nations)} nations ({names}), "
            f"{self.size:,} indicators each, in {self.root}"
        )
        ports = _free_ports(len(self.nations) + 1)
        node_address = {n: f"127.0.0.1:{p}" for n, p in zip(self.nations, ports[:-1], strict=True)}
        coord_address = f"127.0.0.1:{ports[-1]}"

        _heading("1. Federation: CA, nodes, coordinator, operator")
        self.setup(node_address, coord_address)

        _heading(f"2. Sample data (seed {samples.DEFAULT_SEED})")
        data = samples.generate(self.nations, self.size)
        files = data.write(self.root / "data")
        show_files = ", ".join(samples.FILE_NAMES[f] for f in samples.FORMATS)
        print(f"   each nation has {show_files} in {self.root / 'data'}/<nation>/")
        self.show_spellings(data)

        _heading("3. Import: parse, canonicalise, store (each nation in its own store)")
        self.import_all(files)

        _heading("4. Servers: separate processes, mTLS on loopback")
        for nation in self.nations:
            self.start(f"node {nation}", node_address[nation], self.node_dirs[nation] / "node.toml")
        self.start(COORDINATOR, coord_address, self.coord_dir / "coordinator.toml")
        self.wait_healthy()

        _heading("5. A pairwise round, launched by the operator")
        info = self.run_round()

        _heading("6. What each nation learned (from its own store)")
        got = {nation: self.read_matches(nation, info["id"]) for nation in self.nations}
        for nation in self.nations:
            self.show_matches(nation, got[nation])

        _heading("7. What the coordinator saw: set sizes and counts, never a value")
        print(
            _indent(self.blindmatch("round", "status", "--config", str(self.op_config), info["id"]))
        )

        _heading("8. Check")
        self.verify(got, data.expected_matches())
        self.write_readme()
        print(f"\ndone in {time.monotonic() - started:.1f} s")
        return 0

    # --- setup ------------------------------------------------------------------------------

    def setup(self, node_address: dict[str, str], coord_address: str) -> None:
        pki.init_pki_dir(self.pki_dir)
        print(f"   CA              {self.pki_dir / pki.CA_CERT_FILE}")
        for nation in self.nations:
            node_args = argparse.Namespace(
                node_dir=str(self.node_dirs[nation]),
                name=nation,
                listen=node_address[nation],
                pki=str(self.pki_dir),
                coordinator_name=COORDINATOR,
            )
            _quietly(f"node init {nation}", cmd_node_init, node_args)
            print(f"   node {nation:<10} {node_address[nation]:<16} {self.node_dirs[nation]}")
        nodes = [f"--node={n}={a}" for n, a in node_address.items()]
        self.blindmatch(
            *("coordinator", "init", str(self.coord_dir), "--listen", coord_address),
            *("--pki", str(self.pki_dir), "--name", COORDINATOR, *nodes),
        )
        print(f"   {COORDINATOR:<15} {coord_address:<16} {self.coord_dir}")
        self.blindmatch(
            *("operator", "init", str(self.op_config.parent), "--name", OPERATOR),
            *("--coordinator", coord_address, "--pki", str(self.pki_dir)),
        )
        print(f"   operator        {OPERATOR:<16} {self.op_config.parent}")

    def show_spellings(self, data: samples.Samples) -> None:
        """A few indicators every nation holds, each nation's spelling, and the canonical form."""
        by_nation: dict[str, dict[tuple[str, str], list[str]]] = {}
        for nation in self.nations:
            spellings = by_nation[nation] = {}
            for s in data.sightings[nation]:
                spelled = spellings.setdefault(s.key, [])
                if s.raw not in spelled:
                    spelled.append(s.raw)  # some indicators are in two of a nation's files
        shared = set.intersection(*(set(raws) for raws in by_nation.values()))
        keys = [k for k in samples.SHOWCASES if k in shared]
        for kind in ("url", "email", "ipv6", "cidr"):
            # The most varied spellings make the point best.
            candidates = sorted(
                (-len({by_nation[n][k][0] for n in self.nations}), k)
                for k in shared
                if k[0] == kind
            )
            keys += [k for _, k in candidates[:1]]
        print("   The same indicator, as each nation wrote it (canonicalisation makes them match):")
        width = max(len(n) for n in self.nations)
        for kind, value in keys:
            print(f"   {kind} {value}")
            for nation in self.nations:
                print(f"     {nation:<{width}}  {'   '.join(by_nation[nation][(kind, value)])}")

    def import_all(self, files: dict[str, list[Path]]) -> None:
        header = ("nation", "entries", "indicators", "known", "skipped", "invalid", "TLP:RED")
        print("   " + "  ".join(f"{h:>10}" if i else f"{h:<10}" for i, h in enumerate(header)))
        for nation in self.nations:
            config = load_config(self.node_dirs[nation] / "node.toml")
            with Store.open(config.store) as store:
                report = import_paths(store, files[nation], tlp=config.default_tlp)
                red = store.stats().per_tlp.get("red", 0)
            if not report.ok:
                problems = [f.problem for f in report.failed]
                problems += [f"{e.path} {e.where}: {e.message}" for e in report.invalid]
                raise DemoError(
                    f"{nation}'s sample files did not import cleanly ({len(report.failed)} "
                    f"failed, {report.invalid_count} invalid records); first: {problems[0]}"
                )
            row = (
                report.total,
                report.new,
                report.known,
                sum(report.skipped.values()),
                report.invalid_count,
                red,
            )
            print(f"   {nation:<10}  " + "  ".join(f"{n:>10,}" for n in row))
            if self.verbose:
                print(_indent(report.format(), 6))
        print(
            "   known: sightings of an indicator already imported (feeds overlap); "
            "skipped: MISP file names;\n   TLP:RED indicators stay out of every round."
        )

    # --- processes --------------------------------------------------------------------------

    def blindmatch(self, *argv: str) -> str:
        """Run one ``blindmatch`` command to completion; its output, or DemoError."""
        command = [sys.executable, "-m", "blindmatch.cli", *argv]
        result = subprocess.run(command, capture_output=True, text=True, timeout=ROUND_TIMEOUT)
        if result.returncode != 0:
            raise DemoError(
                f"`blindmatch {' '.join(argv[:2])}` failed (exit {result.returncode}): "
                + _last_line(result.stderr or result.stdout)
            )
        return result.stdout.rstrip("\n")

    def start(self, name: str, address: str, config: Path) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        log = self.logs / f"{name.replace(' ', '-')}.log"
        role = "node" if name.startswith("node ") else "coordinator"
        command = [sys.executable, "-m", "blindmatch.cli"]
        command += ["-v"] if self.verbose else []
        command += [role, "serve", "--config", str(config)]
        with log.open("wb") as out:
            # A session of its own: the server and its blinding workers form one process group,
            # so stop_all can clean up workers a server leaves behind when stopped mid-start.
            process = subprocess.Popen(
                command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.servers.append(Server(name, address, process, log))

    def wait_healthy(self) -> None:
        """Wait until every server answers a gRPC health check over mTLS."""
        # The operator's TLS material: any federation certificate may ask for health.
        with self.op_config.open("rb") as f:
            paths = tomllib.load(f)["tls"]
        base = self.op_config.parent
        tls = net.load_tls(base / paths["ca"], base / paths["cert"], base / paths["key"])
        deadline = time.monotonic() + HEALTH_TIMEOUT
        for server in self.servers:
            channel = net.open_channel(
                server.address, tls, insecure=False, expect=net.Allow(*server.name.split())
            )
            try:
                started = time.monotonic()
                self._wait_one(server, health_pb2_grpc.HealthStub(channel), deadline)
            finally:
                channel.close()
            pid = server.process.pid
            print(
                f"   {server.name:<18} {server.address:<16} pid {pid:<7} "
                f"ready ({time.monotonic() - started:.1f} s)"
            )

    def _wait_one(self, server: Server, stub: Any, deadline: float) -> None:
        request = health_pb2.HealthCheckRequest(service="")
        while True:
            code = server.process.poll()
            if code is not None:
                raise DemoError(
                    f"{server.name} exited with status {code} before it was ready; "
                    f"it said: {_tail(server.log)} (log: {server.log})"
                )
            try:
                reply = stub.Check(request, timeout=1.0)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline:
                raise DemoError(
                    f"{server.name} did not become healthy on {server.address} within "
                    f"{HEALTH_TIMEOUT:.0f} s; it said: {_tail(server.log)} (log: {server.log})"
                )
            time.sleep(0.1)

    def stop_all(self) -> None:
        """Stop every server: SIGTERM, SIGKILL after STOP_TIMEOUT, then whatever it left behind."""
        for server in self.servers:
            if server.process.poll() is None:
                server.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        for server in self.servers:
            try:
                server.process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                server.process.kill()
                server.process.wait()
            # A server killed before it set up its signal handling leaves its workers running.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(server.process.pid, signal.SIGKILL)
        self.servers.clear()

    # --- the round --------------------------------------------------------------------------

    def run_round(self) -> dict[str, Any]:
        nodes = ",".join(self.nations)
        print(f"   $ blindmatch round start --config {self.op_config} --nodes {nodes} --wait")
        command = [sys.executable, "-m", "blindmatch.cli", "round", "start"]
        command += ["--config", str(self.op_config), "--nodes", nodes, "--wait", "--json"]
        sys.stdout.flush()
        # The child reports progress on stderr, a line per phase, and the result as JSON on stdout.
        with subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        ) as child:
            assert child.stdout is not None and child.stderr is not None
            try:
                for line in child.stderr:
                    print(f"   {line.rstrip()}", flush=True)
                output = child.stdout.read()
                status = child.wait(timeout=ROUND_TIMEOUT)
            except BaseException:
                child.kill()
                raise
        try:
            info: dict[str, Any] = json.loads(output)
        except json.JSONDecodeError:
            raise DemoError(
                f"`blindmatch round start` failed (exit {status}); server logs are in {self.logs}"
            ) from None
        if info.get("state") != "done":
            raise DemoError(
                f"round {info.get('id')} {info.get('state')}: {info.get('error')}; "
                f"server logs are in {self.logs}"
            )
        took = (info.get("finished") or 0) - info.get("created", 0)
        print(f"   round {info['id']} done in {took:.1f} s")
        return info

    def read_matches(self, nation: str, round_id: str) -> dict[tuple[str, str], set[str]]:
        """The round's matches as the nation's store recorded them; also keeps its spellings."""
        config = load_config(self.node_dirs[nation] / "node.toml")
        with Store.open(config.store) as store:
            rows = store.matches(round_id)
            self.spelled[nation] = {
                (r.kind, r.value): stored.raw_first
                for r in rows
                if (stored := store.lookup(r.kind, r.value)) is not None
            }
        return {(r.kind, r.value): set(r.partners) for r in rows}

    def show_matches(self, nation: str, matches: dict[tuple[str, str], set[str]]) -> None:
        print(f"   {nation}: {len(matches):,} of its indicators are also held by partners")
        partners = [n for n in self.nations if n != nation]
        kinds = [k for k in KINDS if any(key[0] == k for key in matches)]
        table = [["partner", *kinds, "total"]]
        for partner in partners:
            mine = [key for key, who in matches.items() if partner in who]
            table.append(
                [
                    partner,
                    *(str(sum(1 for key in mine if key[0] == k)) for k in kinds),
                    str(len(mine)),
                ]
            )
        _print_table(table, numeric=True)
        examples = [["kind", "indicator (canonical)", "also held by", f"as {nation} wrote it"]]
        for (kind, value), who in _varied(matches, SHOWN_MATCHES):
            raw = self.spelled.get(nation, {}).get((kind, value), value)
            examples.append([kind, value, ", ".join(sorted(who)), "" if raw == value else raw])
        if len(examples) > 1:
            _print_table(examples, numeric=False)

    def verify(
        self,
        got: dict[str, dict[tuple[str, str], set[str]]],
        expected: samples.Matches,
    ) -> None:
        """Print the check's outcome; raise DemoError when the round got anything wrong."""
        problems = []
        for nation in self.nations:
            want, have = expected[nation], got[nation]
            missing = [k for k in want if k not in have]
            extra = [k for k in have if k not in want]
            wrong = [k for k in want if k in have and have[k] != want[k]]
            if missing or extra or wrong:
                problems.append(
                    f"{nation}: {len(missing)} missing, {len(extra)} unexpected, "
                    f"{len(wrong)} with the wrong partners, e.g. {[*missing, *extra, *wrong][0]}"
                )
        if problems:
            print("FAILED: the round's matches differ from the plain intersection:")
            for problem in problems:
                print(f"   {problem}")
            raise DemoError(
                "the round's matches differ from the plain intersection of the sample data "
                "(details above)"
            )
        total = sum(len(m) for m in expected.values())
        print(f"OK: {total:,} matches delivered, {VERIFIED}")

    def write_readme(self) -> None:
        lines = [
            "A blindmatch federation built by `blindmatch demo`.",
            "",
            "Start the servers again (one terminal each):",
            *(
                f"  blindmatch node serve --config {self.node_dirs[n] / 'node.toml'}"
                for n in self.nations
            ),
            f"  blindmatch coordinator serve --config {self.coord_dir / 'coordinator.toml'}",
            "",
            "Then run rounds and look at the results:",
            f"  blindmatch round start --config {self.op_config} --nodes {','.join(self.nations)} --wait",
            f"  blindmatch round status --config {self.op_config}",
            f"  blindmatch node matches --config {self.node_dirs[self.nations[0]] / 'node.toml'}",
            f"  blindmatch node audit --config {self.node_dirs[self.nations[0]] / 'node.toml'}",
            "",
            f"Sample files: {self.root / 'data'}; server logs: {self.logs}",
        ]
        (self.root / "README.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")


# --- helpers ----------------------------------------------------------------------------------


def _heading(title: str) -> None:
    print(f"\n{title}", flush=True)


def _indent(text: str, by: int = 3) -> str:
    return "\n".join(" " * by + line for line in text.splitlines())


def _print_table(rows: list[list[str]], *, numeric: bool) -> None:
    """Aligned columns, indented; with `numeric`, every column but the first is right-aligned."""
    widths = [min(VALUE_WIDTH, max(len(row[i]) for row in rows)) for i in range(len(rows[0]))]
    for row in rows:
        cells = [
            _clip(cell, w).rjust(w) if numeric and i else _clip(cell, w).ljust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ]
        print(("     " + "  ".join(cells)).rstrip())


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1].removeprefix("error: ") if lines else "(no output)"


def _tail(log: Path, lines: int = 3) -> str:
    """What a server said last: its own error line if it printed one, else its last lines."""
    try:
        text = log.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "(no log)"
    said = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [line.removeprefix("error: ") for line in said if line.startswith("error: ")]
    if errors:
        return errors[-1]
    return " | ".join(said[-lines:]) if said else "(nothing)"


def _free_ports(count: int) -> list[int]:
    """Ports the kernel calls free now; held open together so they differ from each other."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]


def _quietly(step: str, handler: Any, args: argparse.Namespace) -> None:
    """Run a CLI handler in this process, keeping its chatter unless it fails."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = handler(args)
    if status != 0:
        raise DemoError(f"{step} failed: {_last_line(err.getvalue() or out.getvalue())}")


def _varied(
    matches: dict[tuple[str, str], set[str]], count: int
) -> Iterator[tuple[tuple[str, str], set[str]]]:
    """Up to `count` matches, taking kinds in turn so the sample shows several."""
    by_kind: dict[str, list[tuple[str, str]]] = {}
    for key in sorted(matches):
        by_kind.setdefault(key[0], []).append(key)
    shown = 0
    queues: Sequence[list[tuple[str, str]]] = [by_kind[k] for k in KINDS if k in by_kind]
    while shown < count and any(queues):
        for queue in queues:
            if queue and shown < count:
                key = queue.pop(0)
                shown += 1
                yield key, matches[key]
