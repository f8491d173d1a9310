"""`blindmatch demo` end to end: real processes, mTLS, a real round, checked against the samples."""

from __future__ import annotations

import socket
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from blindmatch.demo.demo import VERIFIED
from blindmatch.demo.samples import expected_matches, nation_names
from node.store import Store


def _demo(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "blindmatch.cli.main", "demo", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _port_is_free(address: str) -> bool:
    host, _, port = address.rpartition(":")
    with socket.socket() as s:
        # SO_REUSEADDR: connections the server closed may linger in TIME_WAIT; a listener may not.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, int(port)))
        except OSError:
            return False
    return True


@pytest.mark.slow  # the whole demo: real processes and a round
def test_demo_runs_a_round_and_verifies_it(tmp_path: Path) -> None:
    kept = tmp_path / "federation"
    result = _demo("--nations", "3", "--size", "300", "--keep", str(kept))
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    expected = expected_matches(nation_names(3), 300)
    assert f"OK: {sum(map(len, expected.values()))} matches delivered, {VERIFIED}" in out
    assert "Traceback" not in out + result.stderr
    for heading in ("1. Federation", "3. Import", "5. A pairwise round", "7. What the coordinator"):
        assert heading in out
    assert "3279880203" in out  # the showcase: one address, spelled differently by nations
    assert "   routing" in out  # the round's progress, as `round start --wait` reports it

    # Kept: each nation's store holds the round's matches, and every server is gone.
    for nation in nation_names(3):
        config = kept / "nodes" / nation / "node.toml"
        with config.open("rb") as f:
            listen = tomllib.load(f)["listen"]
        assert _port_is_free(listen), f"node {nation} still listening on {listen}"
        with Store.open(kept / "nodes" / nation / "store.sqlite") as store:
            got = {(r.kind, r.value): set(r.partners) for r in store.matches()}
        assert got == expected[nation]
    assert (kept / "README.txt").is_file()


def test_demo_refuses_bad_arguments(tmp_path: Path) -> None:
    result = _demo("--nations", "1", timeout=60)
    assert result.returncode == 2
    assert result.stderr.startswith("error: --nations 1: choose 2 to 8 nations")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "file").write_text("x")
    result = _demo("--keep", str(tmp_path / "busy"), timeout=60)
    assert result.returncode == 2
    assert "not an empty directory" in result.stderr
    assert (tmp_path / "busy" / "file").read_text() == "x"
