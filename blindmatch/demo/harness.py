"""A federation of real processes, driven through the ``blindmatch`` command as an operator would.

One place for what the demo, the benchmarks and the fault tests all need: set a federation up
(CA, nodes, coordinator, operator) with ``blindmatch ... init``, start every server as its own
``blindmatch ... serve`` process, wait until each answers the gRPC health service over mTLS, and
stop them all (SIGTERM, then SIGKILL), their logs kept in one directory.

This module never imports ``node`` or ``coordinator`` (the core package points inward): it sees
the product only as its CLI and its public gRPC services.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from blindmatch.runtime import net

CLI: Final = (sys.executable, "-m", "blindmatch.cli.main")
HEALTH_TIMEOUT: Final = 120.0  # seconds a server may take to come up (spawning blinding workers)
STOP_TIMEOUT: Final = 10.0  # seconds between SIGTERM and SIGKILL
COMMAND_TIMEOUT: Final = 600.0  # seconds one `blindmatch` command may run
HEALTH_POLL: Final = 0.1  # seconds between health checks of a server that is not up yet
_LISTENING: Final = re.compile(r"listening on [^\s:]+:(\d+)")


class HarnessError(Exception):
    """A process of the federation failed; the message says which and what it said."""


def free_ports(count: int) -> list[int]:
    """Ports the kernel calls free now; held open together so they differ from each other."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]


def run(*argv: str, timeout: float = COMMAND_TIMEOUT) -> str:
    """Run one ``blindmatch`` command to completion; its standard output, or HarnessError."""
    result = subprocess.run([*CLI, *argv], capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise HarnessError(
            f"`blindmatch {' '.join(argv[:2])}` failed (exit {result.returncode}): "
            + last_line(result.stderr or result.stdout)
        )
    return result.stdout.rstrip("\n")


def run_json(*argv: str, timeout: float = COMMAND_TIMEOUT) -> Any:
    """Run a ``blindmatch`` command that prints JSON (its ``--json`` form); the parsed output."""
    return json.loads(run(*argv, timeout=timeout))


def last_line(text: str) -> str:
    """The last thing a command said, without its ``error:`` prefix."""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1].removeprefix("error: ") if lines else "(no output)"


def log_tail(log: Path, lines: int = 3) -> str:
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


def set_setting(path: Path, key: str, value: int | float | str | list[str]) -> None:
    """Give a setting of a config file ``blindmatch ... init`` wrote (its first line ``key =``,
    in any table) a new value.

    Edits the line in place, so the file keeps the comments an operator reads."""
    rendered = json.dumps(value) if isinstance(value, str | list) else str(value)
    pattern = rf"^({re.escape(key)}\s*=\s*)\S+"
    text, n = re.subn(
        pattern, lambda m: m.group(1) + rendered, path.read_text(), count=1, flags=re.M
    )
    if n != 1:
        raise HarnessError(f"{path}: no setting {key!r} to change")
    path.write_text(text)


def load_tls(config: Path) -> net.TlsConfig:
    """The mTLS material a node, coordinator or operator config file names (relative paths)."""
    with config.open("rb") as f:
        paths = tomllib.load(f)["tls"]
    base = config.parent
    return net.load_tls(base / paths["ca"], base / paths["cert"], base / paths["key"])


class Server:
    """One ``blindmatch ROLE serve`` process, in a session of its own with its blinding workers.

    The session makes the server and its workers one process group, so signals reach them all and
    a server killed mid-start leaves nothing behind. Its output goes to ``log``, appended across
    restarts.
    """

    def __init__(self, name: str, role: str, config: Path, log: Path, address: str = "") -> None:
        self.name, self.role, self.config, self.log = name, role, config, log
        self.address = address  # host:port, or "" until the server says where it listens
        self.process: subprocess.Popen[bytes] | None = None
        self._log_offset = 0

    def start(self, *, verbose: bool = False) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self._log_offset = self.log.stat().st_size if self.log.exists() else 0
        command = [*CLI, *(["-v"] if verbose else []), self.role, "serve", "--config"]
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [*command, str(self.config)],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        assert self.process is not None, f"{self.name} was never started"
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def listening_port(self, timeout: float = HEALTH_TIMEOUT) -> int:
        """The port this run of the server says it listens on (for ``listen = "host:0"``)."""
        end = time.monotonic() + timeout
        while True:
            said = self.log.read_bytes()[self._log_offset :].decode(errors="replace")
            found = _LISTENING.findall(said)
            if found:
                port = int(found[-1])
                self.address = f"127.0.0.1:{port}"
                return port
            self._check_running("before it listened")
            if time.monotonic() > end:
                raise HarnessError(f"{self.name} did not listen within {timeout:.0f} s")
            time.sleep(HEALTH_POLL)

    def signal(self, sig: signal.Signals) -> None:
        """Send ``sig`` to the server and its workers."""
        os.killpg(self.pid, sig)

    def kill(self) -> None:
        """SIGKILL now, as a crash would; waits until the server is gone."""
        if self.alive():
            self.signal(signal.SIGKILL)
        if self.process is not None:
            self.process.wait(STOP_TIMEOUT)

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM, SIGKILL after ``timeout``, then whatever the server left behind."""
        process = self.process
        if process is None:
            return
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGCONT)  # a frozen server cannot act on SIGTERM
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        # A server killed before it set up its signal handling leaves its workers running.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)

    def _check_running(self, when: str) -> None:
        code = None if self.process is None else self.process.poll()
        if code is not None:
            raise HarnessError(
                f"{self.name} exited with status {code} {when}; "
                f"it said: {log_tail(self.log)} (log: {self.log})"
            )

    def wait_healthy(self, tls: net.TlsConfig | None, deadline: float) -> None:
        """Until the server answers SERVING on the gRPC health service (``tls`` None: plaintext)."""
        request = health_pb2.HealthCheckRequest(service="")
        expect = net.Allow(self.role, self.name.removeprefix(f"{self.role} "))
        with net.open_channel(self.address, tls, insecure=tls is None, expect=expect) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while True:
                self._check_running("before it was ready")
                try:
                    if stub.Check(request, timeout=1.0).status == _SERVING:
                        return
                except grpc.RpcError:
                    pass
                if time.monotonic() > deadline:
                    raise HarnessError(
                        f"{self.name} did not become healthy on {self.address}; "
                        f"it said: {log_tail(self.log)} (log: {self.log})"
                    )
                time.sleep(HEALTH_POLL)


_SERVING: Final = health_pb2.HealthCheckResponse.SERVING


def wait_healthy(
    servers: Iterable[Server],
    tls: net.TlsConfig | None,
    timeout: float = HEALTH_TIMEOUT,
    on_ready: Callable[[Server, float], None] | None = None,
) -> None:
    """Wait until every server is healthy; ``on_ready(server, seconds waited)`` after each."""
    deadline = time.monotonic() + timeout
    for server in servers:
        started = time.monotonic()
        server.wait_healthy(tls, deadline)
        if on_ready is not None:
            on_ready(server, time.monotonic() - started)


def stop_all(servers: Sequence[Server], timeout: float = STOP_TIMEOUT) -> None:
    """Stop every server: all get SIGTERM first, so they shut down side by side."""
    for server in servers:
        if server.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.pid, signal.SIGCONT)
            server.process.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
    for server in servers:
        server.stop(timeout)


class Federation:
    """A CA, nodes, a coordinator and an operator under ``root``, made with ``blindmatch`` commands.

    Layout: ``pki/``, ``nodes/<name>/node.toml``, ``coordinator/coordinator.toml``,
    ``operator/operator.toml``, ``logs/<server>.log``. ``routes`` names where the coordinator
    dials a node when that is not where the node listens (a relay in between, for instance).
    """

    def __init__(
        self,
        root: Path,
        nodes: Sequence[str],
        *,
        coordinator: str = "coordinator",
        operator: str = "operator",
    ) -> None:
        self.root = root.resolve()
        self.names = list(nodes)
        self.coordinator_name = coordinator
        self.operator_name = operator
        ports = free_ports(len(self.names) + 1)
        self.addresses = {n: f"127.0.0.1:{p}" for n, p in zip(self.names, ports, strict=False)}
        self.coordinator_address = f"127.0.0.1:{ports[-1]}"
        self.pki_dir = self.root / "pki"
        self.logs = self.root / "logs"
        self.coordinator_toml = self.root / "coordinator" / "coordinator.toml"
        self.operator_toml = self.root / "operator" / "operator.toml"
        self.nodes = {
            n: Server(f"node {n}", "node", self.node_toml(n), self._log(n), self.addresses[n])
            for n in self.names
        }
        self.coordinator = Server(
            coordinator,
            "coordinator",
            self.coordinator_toml,
            self._log(coordinator),
            self.coordinator_address,
        )

    def node_dir(self, name: str) -> Path:
        return self.root / "nodes" / name

    def node_toml(self, name: str) -> Path:
        return self.node_dir(name) / "node.toml"

    def store(self, name: str) -> Path:
        return self.node_dir(name) / "store.sqlite"

    def _log(self, name: str) -> Path:
        return self.logs / f"{name.replace(' ', '-')}.log"

    @property
    def servers(self) -> list[Server]:
        return [*self.nodes.values(), self.coordinator]

    def init(self, routes: Mapping[str, str] | None = None, *, watch: bool = False) -> None:
        """``pki init``, ``node init`` for every node, ``coordinator init``, ``operator init``.

        With ``watch``, every node is told the coordinator's address for early-warning checks."""
        run("pki", "init", str(self.pki_dir))
        for name in self.names:
            watching = ["--coordinator", self.coordinator_address] if watch else []
            run(
                *("node", "init", str(self.node_dir(name)), "--name", name),
                *("--listen", self.addresses[name], "--pki", str(self.pki_dir)),
                *("--coordinator-name", self.coordinator_name, *watching),
            )
        dials = {**self.addresses, **(routes or {})}
        run(
            *("coordinator", "init", str(self.coordinator_toml.parent)),
            *("--listen", self.coordinator_address, "--pki", str(self.pki_dir)),
            *("--name", self.coordinator_name, *(f"--node={n}={a}" for n, a in dials.items())),
        )
        run(
            *("operator", "init", str(self.operator_toml.parent), "--name", self.operator_name),
            *("--coordinator", self.coordinator_address, "--pki", str(self.pki_dir)),
            *("--coordinator-name", self.coordinator_name),
        )

    def start(
        self,
        *,
        verbose: bool = False,
        on_ready: Callable[[Server, float], None] | None = None,
        timeout: float = HEALTH_TIMEOUT,
    ) -> None:
        """Start every server that is not running and wait until all of them are healthy."""
        for server in self.servers:
            if not server.alive():
                server.start(verbose=verbose)
        self.wait_healthy(on_ready=on_ready, timeout=timeout)

    def wait_healthy(
        self,
        *,
        on_ready: Callable[[Server, float], None] | None = None,
        timeout: float = HEALTH_TIMEOUT,
    ) -> None:
        # Any federation certificate may ask for health: the operator's will do.
        wait_healthy(self.servers, load_tls(self.operator_toml), timeout, on_ready)

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        stop_all(self.servers, timeout)

    def operator(self, *argv: str, timeout: float = COMMAND_TIMEOUT) -> str:
        """An operator command (``round start``, ``round status``) with the operator's config."""
        return run(*argv[:2], "--config", str(self.operator_toml), *argv[2:], timeout=timeout)

    def round_command(self, *extra: str, nodes: Sequence[str] | None = None) -> list[str]:
        """The full ``blindmatch round start --wait --json`` command line for a round."""
        return [
            *(*CLI, "round", "start", "--config", str(self.operator_toml)),
            *("--nodes", ",".join(nodes or self.names), "--wait", "--json", *extra),
        ]

    def operator_channel(self) -> grpc.Channel:
        """A channel to the coordinator with the operator's certificate."""
        return net.open_channel(
            self.coordinator_address,
            load_tls(self.operator_toml),
            insecure=False,
            expect=net.Allow("coordinator", self.coordinator_name),
        )
