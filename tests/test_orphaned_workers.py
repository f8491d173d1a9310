"""Hashing workers exit with their parent (issue 18, req 5): also after ``kill -9``.

Real ``blindmatch node serve`` and ``blindmatch node import`` processes are killed with SIGKILL
while their workers run; every worker must then be gone, not left running under init.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.clirun import run
from tests.pkifixtures import FederationPki
from tests.waiting import until

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc"),
]

STARTUP = 120.0  # bounds a hang on a loaded machine; the test waits for events, not for time
GONE = 30.0  # a worker checks its parent every half second; this only bounds a failure

Process = tuple[int, str]  # pid and start time: a pid alone may be reused once it is reaped


def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (state first), or None if gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return text.rpartition(")")[2].split()


def _workers(parent: int) -> set[Process]:
    """The parent's live hashing workers: spawned children running multiprocessing's spawn_main
    (not its resource tracker, nor a child forked but not yet exec'd)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        fields = _stat(pid)
        if fields is None or fields[0] == "Z" or int(fields[1]) != parent:
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if b"spawn_main" in cmdline:
            found.add((pid, fields[19]))
    return found


def _alive(process: Process) -> bool:
    """Whether the process runs: a zombie (exited, not yet reaped) has ended."""
    pid, started = process
    fields = _stat(pid)
    return fields is not None and fields[19] == started and fields[0] != "Z"


@pytest.fixture
def node_toml(tmp_path: Path, own_pki: FederationPki) -> Path:
    home = tmp_path / "node"
    status, _, err = run(
        "node", "init", str(home), "--name", "orphans", "--listen", "127.0.0.1:0",
        "--pki", str(own_pki.dir),
    )  # fmt: skip
    assert status == 0, err
    config = home / "node.toml"
    text = config.read_text()
    assert "workers = 0" in text
    config.write_text(text.replace("workers = 0", "workers = 2"))
    return config


def _start(out: Path, *argv: str) -> subprocess.Popen[bytes]:
    with out.open("wb") as sink:
        return subprocess.Popen(
            [sys.executable, "-m", "blindmatch.cli.main", *argv],
            stdout=sink,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )


def _kill_and_expect_workers_to_exit(proc: subprocess.Popen[bytes], count: int) -> None:
    def seen() -> set[Process] | bool:
        workers = _workers(proc.pid)
        return workers if len(workers) >= count else proc.poll() is not None

    workers = until(f"{count} hashing workers of pid {proc.pid}", seen, STARTUP)
    assert isinstance(workers, set), "the command ended before its workers could be seen"
    try:
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(STARTUP) == -signal.SIGKILL
        until(
            f"the workers {sorted(pid for pid, _ in workers)} to exit after kill -9 of their parent",
            lambda: not any(_alive(w) for w in workers),
            GONE,
        )
    finally:
        for pid, started in workers:  # a failed run must not leave them behind
            if _alive((pid, started)):
                os.kill(pid, signal.SIGKILL)


def test_workers_exit_after_kill_9_of_node_serve(node_toml: Path, tmp_path: Path) -> None:
    out = tmp_path / "serve.out"
    proc = _start(out, "node", "serve", "--config", str(node_toml))
    try:
        # The startup line comes after the warm-up: both workers have run their initializer.
        def started() -> bool:
            return b"listening on" in out.read_bytes() or proc.poll() is not None

        until("the node's startup line", started, STARTUP)
        assert proc.poll() is None, out.read_text()
        _kill_and_expect_workers_to_exit(proc, 2)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def test_workers_exit_after_kill_9_of_node_import(node_toml: Path, tmp_path: Path) -> None:
    feed = tmp_path / "feed.txt"
    # Far above node.pool.SPAWN_WORTH, so the import hashes in worker processes.
    feed.write_text("".join(f"host{i}.orphan{i % 97}.example\n" for i in range(200_000)))
    out = tmp_path / "import.out"
    proc = _start(out, "node", "import", "--config", str(node_toml), str(feed))
    try:
        # `node import` runs one worker per core, whatever node.toml says.
        _kill_and_expect_workers_to_exit(proc, min(2, os.cpu_count() or 1))
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
