"""CLI handlers of the coordinator (init, serve); ``blindmatch.cli.main`` wires argparse to them.
The operator's commands are in ``coordinator.operator_cli`` (init, round start, round status) and
``coordinator.schedule_cli`` (round schedule), and follow the same rules as these.

Each handler takes the parsed ``argparse.Namespace`` and returns the exit status of
``blindmatch.cli.errors`` (0 success, 1 the operation failed, 2 usage or bad input; a round the
coordinator finds invalid, naming unknown nodes say, is bad input). No traceback reaches an
operator: every error is one line saying what was wrong and what to do.

``--insecure`` means plaintext, loopback only; the other side must run with ``--insecure`` too.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from blindmatch.cli.errors import BadInput, command, flag_address, flag_value
from blindmatch.cli.initdir import absolute, init_dir, refuse_existing, server_hosts
from blindmatch.core.identity import validate_name
from blindmatch.runtime.pki import issue_to_dir
from coordinator.config import (
    COORDINATOR_FILE,
    CoordinatorConfig,
    load_config,
    write_config,
)
from coordinator.records import StateError

# A state file that is not a usable coordinator state is an input error like a bad config.
coordinator_command = command(StateError)


# --- coordinator ------------------------------------------------------------------------------


@coordinator_command
def cmd_init(args: argparse.Namespace) -> int:
    """``blindmatch coordinator init COORD_DIR --listen HOST:PORT --pki PKI_DIR --node NAME=HOST:PORT...``

    Reads ``args.coord_dir``, ``args.listen``, ``args.pki``, ``args.node`` (list of
    "NAME=HOST:PORT") and ``args.name`` (default "coordinator"). Writes COORD_DIR/coordinator.toml
    and the coordinator's certificate, key and CA certificate into COORD_DIR.
    """
    name = flag_value(validate_name, args.name, "--name")
    listen = flag_address(args.listen, "--listen")
    nodes: dict[str, str] = {}
    for entry in args.node or ():
        node, sep, address = entry.partition("=")
        if not sep:
            raise BadInput(f"--node {entry!r}: expected NAME=HOST:PORT, e.g. alpha=10.0.0.5:7001")
        node = flag_value(validate_name, node.strip(), f"--node {entry!r}")
        if node in nodes:
            raise BadInput(f"--node: {node} is given twice")
        nodes[node] = flag_address(address.strip(), f"--node {entry!r}")
    coord_dir = Path(args.coord_dir)
    config_path = coord_dir / COORDINATOR_FILE
    refuse_existing(config_path)
    hosts = server_hosts(listen)
    with init_dir(coord_dir):
        issued = issue_to_dir(args.pki, name, "coordinator", hosts=hosts, out_dir=coord_dir)
    config = CoordinatorConfig(
        name=name,
        listen=listen,
        tls=absolute(issued),
        nodes=nodes,
        state=Path("coordinator.sqlite"),
    )
    write_config(config_path, config)
    print(f"wrote {config_path}")
    print(f"issued coordinator/{name}: {issued.cert} (valid for {', '.join(hosts)}), {issued.key}")
    print(f"registry: {', '.join(f'{n}={a}' for n, a in nodes.items()) or '(empty)'}")
    print(f'each node\'s node.toml must say coordinator = "{name}"')
    print(f"start it with: blindmatch coordinator serve --config {config_path}")
    return 0


@coordinator_command
def cmd_serve(args: argparse.Namespace) -> int:
    """``blindmatch coordinator serve --config COORD_TOML [--insecure]``

    Reads ``args.config`` and ``args.insecure``. Runs until SIGINT or SIGTERM.
    """
    from coordinator.service import serve  # the server side is not needed by operator commands

    serve(load_config(args.config), insecure=args.insecure)
    return 0
