"""At rest (issue 10, req 7): private files whatever the umask, no core dumps, no stale workers.

The coordinator's state and watch filters are 0600 in 0700 directories under a umask of 0o022;
servers and their hashing workers may not dump core; the workers a node ran during a round have
exited once the round is over.
"""

from __future__ import annotations

import os
import resource
import stat
import threading
from pathlib import Path

import pytest

from blindmatch.core.epoch import EpochRelay
from blindmatch.core.watch_sealed import EpochFilter, SignedFilter
from blindmatch.runtime.hardening import dumpable, make_private, open_private, private_dir
from coordinator.records import SqliteRoundStore
from coordinator.watch import WatchHub
from node.pool import Blinder
from tests.federation import Federation, Setup, make_datasets
from tests.pkifixtures import FederationPki


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_hardening_helpers_ignore_the_umask(tmp_path: Path, umask_022: None) -> None:
    private_dir(tmp_path / "a" / "b")
    assert mode(tmp_path / "a" / "b") == 0o700
    with open_private(tmp_path / "f") as f:
        f.write(b"x")
    assert mode(tmp_path / "f") == 0o600
    (tmp_path / "g").write_text("y")
    assert mode(tmp_path / "g") == 0o644
    make_private(tmp_path / "g", tmp_path / "missing")
    assert mode(tmp_path / "g") == 0o600


def test_the_coordinator_state_file_is_private(tmp_path: Path, umask_022: None) -> None:
    path = tmp_path / "coordinator.sqlite"
    state = SqliteRoundStore(path)
    try:
        files = [p for p in tmp_path.iterdir() if p.name.startswith("coordinator.sqlite")]
        assert {p.name for p in files} >= {"coordinator.sqlite", "coordinator.sqlite-wal"}
        assert {p.name: mode(p) for p in files} == {p.name: 0o600 for p in files}
    finally:
        state.close()
    # a state file left readable by others (an older blindmatch, a copy) is tightened on open
    os.chmod(path, 0o644)
    SqliteRoundStore(path).close()
    assert mode(path) == 0o600


def test_watch_filters_are_private(tmp_path: Path, umask_022: None) -> None:
    hub = WatchHub(tmp_path / "watch", {}, {}, call_timeout=1.0)
    signed = SignedFilter(EpochFilter.build("e1", "alpha", b"t" * 16), b"signature")
    hub._save(EpochRelay("e1", ("alpha",), ("alpha",), {"alpha": signed}, ends=1e12))
    assert mode(hub.directory) == 0o700
    assert {p.name: mode(p) for p in hub.directory.iterdir()} == {
        "alpha.filter": 0o600,
        "epoch.json": 0o600,
    }


def _worker_state() -> bytes:
    soft, hard = resource.getrlimit(resource.RLIMIT_CORE)
    return bytes([soft == 0, hard == 0, not dumpable()])


def test_hashing_workers_cannot_dump_core() -> None:
    blinder = Blinder(1)
    try:
        assert blinder._submit(_worker_state).result() == b"\x01\x01\x01"
    finally:
        blinder.close()


def test_retired_workers_exit_and_new_ones_start() -> None:
    blinder = Blinder(2)
    try:
        blinder.warm_up()
        first = blinder.worker_pids()
        assert len(first) == 2
        blinder.retire()  # ends these workers, and starts fresh ones at once
        assert all(not _alive(pid) for pid in first)
        assert blinder.worker_pids().isdisjoint(first)
        blinder.warm_up()
        assert len(blinder.worker_pids()) == 2 and blinder.worker_pids().isdisjoint(first)
    finally:
        blinder.close()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_after_a_round_the_workers_of_its_node_have_exited(
    tmp_path: Path, pki: FederationPki, monkeypatch: pytest.MonkeyPatch
) -> None:
    names = ("alpha", "bravo")
    used: set[int] = set()
    submit = Blinder._submit

    def recording(self: Blinder, fn: object, *args: object) -> object:
        future = submit(self, fn, *args)  # type: ignore[arg-type]
        if threading.current_thread().name != "blinder-warm-up":  # fresh workers, after the round
            used.update(self.worker_pids())  # the workers that may run this task
        return future

    monkeypatch.setattr(Blinder, "_submit", recording)
    fed = Federation(tmp_path, pki, Setup(names, make_datasets(names, 40, seed=5, red_share=0.0)))
    try:
        info = fed.run_round(names)
        assert info.state == "done", info.error
        assert used
        assert [pid for pid in used if _alive(pid)] == []
        # the servers that ran the round may not dump core either
        assert not dumpable()
        # and the next round starts fresh workers
        again = fed.run_round(names)
        assert again.state == "done", again.error
    finally:
        fed.close()
