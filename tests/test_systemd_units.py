"""The systemd units in contrib/systemd (issue 19, requirement 4): the hardening a Debian admin
expects is there, ExecStart runs a real ``blindmatch`` command, ``systemd-analyze verify``
accepts them, and the MemoryDenyWriteExecute= they set does not break a real round."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from blindmatch.cli.main import build_parser
from blindmatch.demo import harness

ROOT = Path(__file__).resolve().parent.parent
UNITS = ROOT / "contrib" / "systemd"
NODE_UNIT = UNITS / "blindmatch-node@.service"
COORDINATOR_UNIT = UNITS / "blindmatch-coordinator.service"
INSTALLED = "/opt/blindmatch/bin/blindmatch"  # where the units expect the command

# key -> the value it must have ("" for an empty value; None: present, any value)
HARDENING = {
    "User": "blindmatch",
    "Group": "blindmatch",
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "ReadWritePaths": None,
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "PrivateDevices": "yes",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectKernelLogs": "yes",
    "ProtectControlGroups": "yes",
    "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
    "RestrictNamespaces": "yes",
    "LockPersonality": "yes",
    "MemoryDenyWriteExecute": "yes",
    "SystemCallFilter": "@system-service",
    "CapabilityBoundingSet": "",
    "UMask": "0077",
    "LimitCORE": "0",
    "Restart": "on-failure",
    "KillSignal": "SIGTERM",
    "KillMode": "mixed",
    "TimeoutStopSec": None,
}


def service_section(path: Path) -> dict[str, list[str]]:
    """The [Service] keys of a unit file, each with every value it is given (keys repeat)."""
    found: dict[str, list[str]] = defaultdict(list)
    section = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line
        elif section == "[Service]":
            key, _, value = line.partition("=")
            found[key.strip()].append(value.strip())
    return found


@pytest.mark.parametrize(
    ("unit", "argv", "writable"),
    [
        (NODE_UNIT, ["node", "serve", "--config", "%f/node.toml"], "%f"),
        (
            COORDINATOR_UNIT,
            [
                "coordinator",
                "serve",
                "--config",
                "/var/lib/blindmatch/coordinator/coordinator.toml",
            ],
            "/var/lib/blindmatch/coordinator",
        ),
    ],
    ids=["node", "coordinator"],
)
def test_each_unit_has_the_hardening_and_runs_a_real_command(
    unit: Path, argv: list[str], writable: str
) -> None:
    keys = service_section(unit)
    missing = [k for k in HARDENING if k not in keys]
    assert not missing, f"{unit.name} lacks {missing}"
    wrong = {
        k: keys[k] for k, want in HARDENING.items() if want is not None and want not in keys[k]
    }
    assert not wrong, f"{unit.name}: {wrong}"
    assert keys["ReadWritePaths"] == [writable]
    assert 10 <= int(keys["TimeoutStopSec"][0]) <= 90  # a graceful stop, then SIGKILL
    (exec_start,) = keys["ExecStart"]
    command = shlex.split(exec_start)
    assert command[0] == INSTALLED and command[1:] == argv
    parsed = build_parser().parse_args(command[1:])  # a command the CLI has, with its flags
    assert getattr(parsed, f"{argv[0]}_command") == "serve" and parsed.config == argv[-1]
    assert parsed.insecure is False


def test_systemd_analyze_verifies_the_units(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed here (Debian: apt install systemd)")
    # verify checks that ExecStart's program exists: point it at the blindmatch of this venv
    here = Path(sys.executable).with_name("blindmatch")
    assert here.exists(), f"no blindmatch command next to {sys.executable}"
    for unit in (NODE_UNIT, COORDINATOR_UNIT):
        (tmp_path / unit.name).write_text(unit.read_text().replace(INSTALLED, str(here)))
    # a template is verified as one of its instances: a node directory, path-escaped
    instance = tmp_path / "blindmatch-node@var-lib-blindmatch-alpha.service"
    for target in (instance, tmp_path / COORDINATOR_UNIT.name):
        done = subprocess.run(
            [analyze, "verify", str(target)], capture_output=True, text=True, timeout=60
        )
        if done.returncode != 0 and "System has not been booted with systemd" in done.stderr:
            pytest.skip(f"systemd-analyze cannot run here: {done.stderr.strip()}")
        assert done.returncode == 0 and not done.stderr.strip(), done.stderr


# Run by each server under test: PR_SET_MDWE is the kernel's own form of what systemd's
# MemoryDenyWriteExecute= enforces (no mapping both writable and executable, ever), and it
# is inherited by the hashing workers.
_MDWE = (
    "import ctypes, os, sys\n"
    "if ctypes.CDLL(None, use_errno=True).prctl(65, 1, 0, 0, 0):\n"
    "    sys.exit('PR_SET_MDWE: ' + os.strerror(ctypes.get_errno()))\n"
    "os.execv(sys.executable, [sys.executable, '-m', 'blindmatch.cli.main', *sys.argv[1:]])\n"
)


def _mdwe_supported() -> bool:
    probe = subprocess.run(
        [sys.executable, "-c", _MDWE.split("os.execv")[0]], capture_output=True, timeout=60
    )
    return probe.returncode == 0


class MdweServer(harness.Server):
    def start(self, *, verbose: bool = False) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-c", _MDWE, self.role, "serve", "--config", str(self.config)],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )


@pytest.mark.slow
def test_a_watch_round_and_a_check_run_with_memory_deny_write_execute(tmp_path: Path) -> None:
    if not sys.platform.startswith("linux") or not _mdwe_supported():
        pytest.skip("PR_SET_MDWE needs Linux 6.3 or later")
    fed = harness.Federation(tmp_path, ["alpha", "bravo"])
    fed.init(watch=True)
    for name, held in (("alpha", range(0, 300)), ("bravo", range(200, 500))):
        harness.set_setting(fed.node_toml(name), "workers", 1)
        feed = fed.node_dir(name) / "feed.txt"
        feed.write_text("".join(f"host{i}.blindmatch-mdwe.com\n" for i in held))
        harness.run("node", "import", "--config", str(fed.node_toml(name)), str(feed))
    for name, server in fed.nodes.items():
        fed.nodes[name] = MdweServer(server.name, server.role, server.config, server.log)
        fed.nodes[name].address = server.address
    old = fed.coordinator
    fed.coordinator = MdweServer(old.name, old.role, old.config, old.log, old.address)
    fed.start()
    try:
        command = fed.round_command("--mode", "watch", "--epoch", "1h")
        got = harness.run_json(*command[len(harness.CLI) :])
        assert got["state"] == "done", got
        said = harness.run(
            *("node", "check", "--config", str(fed.node_toml("alpha"))),
            *("host250.blindmatch-mdwe.com", "host1.blindmatch-mdwe.com"),
        )
        assert "already sighted by bravo" in said
    finally:
        fed.stop()
