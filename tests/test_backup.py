"""``blindmatch node backup``: taken while the node serves and a real import writes, it restores
to a consistent store (issue 19, requirement 4).

Real processes: ``blindmatch node serve`` and ``blindmatch node import`` run as an operator runs
them; the backup is the CLI's. An import stores each file in one transaction (node/importing.py),
so a consistent backup holds whole files only, the first ones of the import, and never part of
one. The restore follows docs/OPERATIONS.md, "Backup and restore", step by step.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from blindmatch.demo import harness
from tests.clirun import run
from tests.pkifixtures import FederationPki
from tests.waiting import until

pytestmark = pytest.mark.slow  # a 200,000-line import and two node processes

FILES = 40
LINES = 5_000  # per file: 200,000 lines in all, so the import is still running at the backup
CLI = [sys.executable, "-m", "blindmatch.cli.main"]


def value(file: int, line: int) -> str:
    return f"f{file}-{line}.blindmatch-backup.com"


def committed_imports(store: Path) -> int:
    """Files the import has committed so far, read as any other process reads the store."""
    with sqlite3.connect(f"file:{store}?mode=ro", uri=True) as conn:
        (n,) = conn.execute("SELECT count(*) FROM imports").fetchone()
    return int(n)


@pytest.fixture
def node(tmp_path: Path, own_pki: FederationPki) -> Path:
    home = tmp_path / "alpha"
    args = ["node", "init", str(home), "--name", "alpha", "--listen", "127.0.0.1:0"]
    assert run(*args, "--pki", str(own_pki.dir))[0] == 0
    config = home / "node.toml"
    harness.set_setting(config, "workers", 1)
    return config


def test_a_backup_taken_during_an_import_restores_to_a_consistent_store(
    node: Path, tmp_path: Path
) -> None:
    feeds = tmp_path / "feeds"
    feeds.mkdir()
    paths = []
    for i in range(FILES):
        path = feeds / f"feed-{i:02d}.txt"
        path.write_text("".join(value(i, j) + "\n" for j in range(LINES)))
        paths.append(str(path))
    store = node.parent / "store.sqlite"
    server = harness.Server("node alpha", "node", node, tmp_path / "alpha.log")
    server.start()
    try:
        server.listening_port()
        importing = subprocess.Popen(
            [*CLI, "node", "import", "--config", str(node), *paths],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            until("the import commits its first file", lambda: committed_imports(store), 120)
            backup = tmp_path / "backups" / "alpha.sqlite"
            backup.parent.mkdir()
            status, out, err = run("node", "backup", "--config", str(node), "--to", str(backup))
            # the import was still writing when the backup was done: it was taken meanwhile
            still_importing = importing.poll() is None
            said, _ = importing.communicate(timeout=harness.COMMAND_TIMEOUT)
        finally:
            if importing.poll() is None:
                importing.kill()
        assert importing.returncode == 0, said
        assert status == 0, err
        assert still_importing, "the import ended before the backup: make it longer"
        assert f"wrote backup {backup}" in out and "integrity ok" in out
        assert stat.S_IMODE(backup.stat().st_mode) == 0o600

        # a second backup to the same file is refused, and the first is left as it was
        kept = backup.read_bytes()
        status, _, err = run("node", "backup", "--config", str(node), "--to", str(backup))
        assert status == 2 and "never overwrites" in err
        assert backup.read_bytes() == kept

        with sqlite3.connect(backup) as conn:
            assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
            per_file = dict(
                conn.execute(
                    "SELECT substr(value, 2, instr(value, '-') - 2), count(*) FROM sightings"
                    " GROUP BY 1"
                ).fetchall()
            )
            imports = conn.execute("SELECT count(*) FROM imports").fetchone()[0]
        # whole files only, and the first ones: a prefix of the import's transactions
        whole = len(per_file)
        assert sorted(int(f) for f in per_file) == list(range(whole))
        assert set(per_file.values()) == {LINES}
        assert 1 <= whole < FILES
        # a file's audit entry is written just after its sightings, in a transaction of its own
        assert imports in (whole - 1, whole)
    finally:
        server.stop()

    # Restore (docs/OPERATIONS.md): the node stopped, the store replaced, its -wal and -shm gone.
    shutil.copyfile(backup, store)
    for companion in ("-wal", "-shm"):
        store.with_name(store.name + companion).unlink(missing_ok=True)
    server.start()
    try:
        server.listening_port()
        server.wait_healthy(harness.load_tls(node), time.monotonic() + harness.HEALTH_TIMEOUT)
        status, out, err = run("node", "stats", "--config", str(node), "--json")
        assert status == 0, err
        stats = json.loads(out)
        assert stats["sightings"] == whole * LINES and stats["imports"] == imports
    finally:
        server.stop()
    assert stat.S_IMODE(store.stat().st_mode) == 0o600
