"""One CLI style: the same mistake exits with the same status in node, coordinator, operator and
pki commands (docs/OPERATIONS.md, "Exit status"), init commands keep their directories private,
and the three configs share one [tls] shape."""

from __future__ import annotations

import stat
from pathlib import Path

from blindmatch.cli.errors import BAD_INPUT, FAILED, BadInput, status_of
from blindmatch.cli.tomlconfig import ConfigError, TlsPaths
from blindmatch.core.identity import PkiError
from blindmatch.runtime.net import BindError, InsecureBindRefused, TlsConfigError
from coordinator.config import load_config as load_coordinator_config
from coordinator.config import load_operator_config
from coordinator.records import StateError
from node.config import load_config as load_node_config
from node.store import StoreError
from tests import clirun
from tests.pkifixtures import FederationPki


def run(*argv: str) -> tuple[int, str]:
    """``blindmatch ARGV`` in this process: exit status and stderr, which holds no traceback."""
    status, _, err = clirun.run(*argv)
    assert "Traceback" not in err
    return status, err


def node_init(
    home: Path, pki: str, name: str = "style-n", listen: str = "127.0.0.1:0"
) -> list[str]:
    return ["node", "init", str(home), "--name", name, "--listen", listen, "--pki", pki]


def coordinator_init(
    home: Path, pki: str, name: str = "style-c", listen: str = "127.0.0.1:0"
) -> list[str]:
    return [
        "coordinator", "init", str(home), "--name", name, "--listen", listen, "--pki", pki,
        "--node", "alpha=127.0.0.1:7001",
    ]  # fmt: skip


def operator_init(
    home: Path, pki: str, name: str = "style-o", coordinator: str = "127.0.0.1:7000"
) -> list[str]:
    return [
        "operator", "init", str(home), "--name", name, "--coordinator", coordinator, "--pki", pki
    ]  # fmt: skip


# --- the same mistake, the same status ----------------------------------------------------------


def test_an_existing_config_is_bad_input_everywhere(tmp_path: Path, pki: FederationPki) -> None:
    ca = str(FederationPki(tmp_path / "pki").dir)  # its own CA: it issues names others do
    for command in (
        node_init(tmp_path / "n", ca),
        coordinator_init(tmp_path / "c", ca),
        operator_init(tmp_path / "o", ca),
        ["pki", "init", str(tmp_path / "p")],
    ):
        assert run(*command)[0] == 0, command
        status, err = run(*command)
        assert status == BAD_INPUT, command
        assert "exists; refusing to overwrite it" in err, command


def test_invalid_values_are_bad_input_everywhere(tmp_path: Path, pki: FederationPki) -> None:
    ca = str(FederationPki(tmp_path / "pki").dir)  # its own CA: it issues names others do
    bad_name = [
        node_init(tmp_path / "n1", ca, name="Bad"),
        coordinator_init(tmp_path / "c1", ca, name="Bad"),
        operator_init(tmp_path / "o1", ca, name="Bad"),
        ["pki", "issue", ca, "Bad", "--role", "node"],
    ]
    bad_address = [
        node_init(tmp_path / "n2", ca, listen="nowhere"),
        coordinator_init(tmp_path / "c2", ca, listen="nowhere"),
        operator_init(tmp_path / "o2", ca, coordinator="nowhere"),
    ]
    no_pki = str(tmp_path / "no-pki")
    missing_pki = [
        node_init(tmp_path / "n3", no_pki),
        coordinator_init(tmp_path / "c3", no_pki),
        operator_init(tmp_path / "o3", no_pki),
        ["pki", "issue", no_pki, "fr", "--role", "node"],
    ]
    for command in [*bad_name, *bad_address, *missing_pki]:
        status, err = run(*command)
        assert status == BAD_INPUT and err.startswith("error: "), command
    for n in ("n1", "c1", "o1", "n2", "c2", "o2", "n3", "c3", "o3"):
        assert not (tmp_path / n).exists(), n  # a refused init leaves nothing behind


def test_a_missing_config_is_bad_input_everywhere(tmp_path: Path) -> None:
    nope = str(tmp_path / "nope.toml")
    for command in (
        ["node", "stats", "--config", nope],
        ["node", "serve", "--config", nope],
        ["node", "check", "--config", nope, "x.example"],
        ["node", "alerts", "--config", nope],
        ["coordinator", "serve", "--config", nope],
        ["round", "status", "--config", nope],
        ["round", "start", "--config", nope, "--nodes", "a,b"],
    ):
        status, err = run(*command)
        assert status == BAD_INPUT, command
        assert "does not exist (create one with `blindmatch" in err, command


def test_an_unreachable_server_fails_the_operation_everywhere(
    tmp_path: Path, pki: FederationPki, nowhere: str
) -> None:
    ca = str(FederationPki(tmp_path / "pki").dir)  # its own CA: it issues names others do
    # neither the node nor the coordinator listens where the configs say
    assert run(*node_init(tmp_path / "n", ca, listen=nowhere))[0] == 0
    assert run(*operator_init(tmp_path / "o", ca, coordinator=nowhere))[0] == 0
    for command in (
        ["node", "check", "--config", str(tmp_path / "n" / "node.toml"), "x.example"],
        ["round", "status", "--config", str(tmp_path / "o" / "operator.toml")],
        ["round", "start", "--config", str(tmp_path / "o" / "operator.toml"), "--nodes", "a,b"],
    ):
        status, err = run(*command)
        assert status == FAILED, command
        assert "UNAVAILABLE" in err, command


def test_the_status_of_each_known_error() -> None:
    for exc in (
        ConfigError("x"),
        PkiError("x"),
        TlsConfigError("x"),
        InsecureBindRefused("x"),
        ValueError("x"),
        FileNotFoundError(2, "No such file", "x"),
        BadInput("x"),
    ):
        assert status_of(exc) == BAD_INPUT, exc
    assert status_of(BindError("port in use")) == FAILED
    # a package's own input errors: a store or state file that is not one
    assert status_of(StoreError("x"), (StoreError, StateError)) == BAD_INPUT
    assert status_of(StateError("x"), (StoreError, StateError)) == BAD_INPUT
    assert status_of(RuntimeError("a bug")) is None  # keeps its traceback


# --- at rest: private directories whatever the umask -------------------------------------------


def test_init_commands_make_private_directories_and_keys(
    tmp_path: Path, pki: FederationPki, umask_022: None
) -> None:
    ca = str(FederationPki(tmp_path / "pki").dir)  # its own CA: it issues names others do
    homes = {
        "style-n": (tmp_path / "n", node_init(tmp_path / "n", ca)),
        "style-c": (tmp_path / "c", coordinator_init(tmp_path / "c", ca)),
        "style-o": (tmp_path / "o", operator_init(tmp_path / "o", ca)),
    }
    for name, (home, command) in homes.items():
        assert run(*command)[0] == 0, command
        assert stat.S_IMODE(home.stat().st_mode) == 0o700, home
        assert stat.S_IMODE((home / f"{name}.key").stat().st_mode) == 0o600, name
    assert run("pki", "init", str(tmp_path / "p"))[0] == 0
    assert stat.S_IMODE((tmp_path / "p").stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "p" / "ca.key").stat().st_mode) == 0o600


# --- one [tls] shape ----------------------------------------------------------------------------


def test_the_three_configs_share_one_tls_shape(tmp_path: Path, pki: FederationPki) -> None:
    ca = str(FederationPki(tmp_path / "pki").dir)  # its own CA: it issues names others do
    assert run(*node_init(tmp_path / "n", ca))[0] == 0
    assert run(*coordinator_init(tmp_path / "c", ca))[0] == 0
    assert run(*operator_init(tmp_path / "o", ca))[0] == 0
    loaded = {
        "n": load_node_config(tmp_path / "n" / "node.toml").tls,
        "c": load_coordinator_config(tmp_path / "c" / "coordinator.toml").tls,
        "o": load_operator_config(tmp_path / "o" / "operator.toml").tls,
    }
    names = {"n": "style-n", "c": "style-c", "o": "style-o"}
    for d, tls in loaded.items():
        home = tmp_path / d
        assert tls == TlsPaths(home / "ca.pem", home / f"{names[d]}.pem", home / f"{names[d]}.key")


# node.toml and coordinator.toml as `node init` and `coordinator init` wrote them before the
# [tls] table had one writer: the same keys, other comments. They must keep loading.
OLD_NODE_TOML = """\
name = "old-node"
listen = "127.0.0.1:7001"
store = "store.sqlite"

[tls]                           # mTLS material from the federation CA (`blindmatch pki ...`)
ca = "ca.pem"
cert = "old-node.pem"
key = "old-node.key"
"""

OLD_COORDINATOR_TOML = """\
# blindmatch coordinator configuration
name = "hub"                      # must match the name in this coordinator's certificate
listen = "127.0.0.1:7000"         # host:port this coordinator listens on

[tls]                             # paths are relative to this file's directory
ca = "ca.pem"
cert = "hub.pem"
key = "hub.key"

[nodes]                           # the registry: node name = "host:port"
alpha = "127.0.0.1:7001"
"""


def test_configs_written_before_load_with_the_same_tls(tmp_path: Path) -> None:
    (tmp_path / "node.toml").write_text(OLD_NODE_TOML)
    (tmp_path / "coordinator.toml").write_text(OLD_COORDINATOR_TOML)
    node = load_node_config(tmp_path / "node.toml")
    assert node.tls == TlsPaths(
        tmp_path / "ca.pem", tmp_path / "old-node.pem", tmp_path / "old-node.key"
    )
    hub = load_coordinator_config(tmp_path / "coordinator.toml")
    assert hub.tls == TlsPaths(tmp_path / "ca.pem", tmp_path / "hub.pem", tmp_path / "hub.key")
