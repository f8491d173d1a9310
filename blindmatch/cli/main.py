"""The ``blindmatch`` command: the CLI contract in one place, dispatching lazily to node/coordinator.

Operators script these names; keep them. Exit statuses are those of ``blindmatch.cli.errors``:
0 success, 1 the operation failed (a round failed, a server unreachable), 2 usage or bad input,
130 interrupted, 141 stdout's reader went away (``| head``), silently. No traceback reaches an operator: every handler goes through
``clierrors.command``, which prints ``error: what was wrong; what to do``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Callable, Sequence

from blindmatch.cli.errors import BAD_INPUT, INTERRUPTED, OK, command, quiet_broken_pipe
from blindmatch.core.canon import KINDS

Handler = Callable[[argparse.Namespace], int]


# identity.ROLES, spelled out: importing it pulls in cryptography on every CLI start (a test keeps
# the two equal)
ROLES = ("node", "coordinator", "operator", "checker")


def _lazy(module: str, func: str) -> Handler:
    def run(args: argparse.Namespace) -> int:
        handler: Handler = getattr(importlib.import_module(module), func)
        return handler(args)

    return run


def _kinds(text: str) -> list[str]:
    kinds = [k.strip() for k in text.split(",") if k.strip()]
    bad = [k for k in kinds if k not in KINDS]
    if bad or not kinds:
        raise argparse.ArgumentTypeError(
            f"unknown kind(s) {', '.join(bad) or '(none)'}; choose from {','.join(KINDS)}"
        )
    return kinds


def _names(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if len(names) < 2:
        raise argparse.ArgumentTypeError("a round needs at least two nodes: --nodes A,B[,C...]")
    return names


def _duration(text: str) -> float:
    from blindmatch.core.watch_rules import parse_duration

    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="blindmatch",
        description="Find the threat indicators national CERTs share, without showing each other their data.",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="log protocol events to stderr")
    top = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    # pki
    pki = top.add_parser("pki", help="the federation CA and certificates").add_subparsers(
        dest="pki_command", required=True, metavar="SUBCOMMAND"
    )
    s = pki.add_parser("init", help="create a federation CA in PKI_DIR")
    s.add_argument("pki_dir", metavar="PKI_DIR")
    s.set_defaults(handler=cmd_pki_init)
    s = pki.add_parser("issue", help="issue a certificate binding a role and a name")
    s.add_argument("pki_dir", metavar="PKI_DIR")
    s.add_argument("name", metavar="NAME")
    s.add_argument(
        "--role",
        required=True,
        choices=ROLES,
        help="checker: may only call the Check of nodes whose [watch] check_clients list it "
        "(a SIEM)",
    )
    s.add_argument(
        "--host", action="append", metavar="H", help="DNS name or IP the holder serves on"
    )
    s.add_argument(
        "--replace",
        action="store_true",
        help="a new key pair in place of the live certificate of this role and name",
    )
    s.set_defaults(handler=cmd_pki_issue)
    s = pki.add_parser("renew", help="a fresh certificate for a name, in place of its current one")
    s.add_argument("pki_dir", metavar="PKI_DIR")
    s.add_argument("name", metavar="NAME")
    s.add_argument("--role", required=True, choices=ROLES)
    s.add_argument(
        "--cert",
        metavar="PATH",
        help="the current certificate, where the renewed one goes (default: where it was issued)",
    )
    s.add_argument("--host", action="append", metavar="H", help="(default: the current hosts)")
    s.add_argument(
        "--new-key",
        action="store_true",
        help="a new key too (one that may have leaked); the holder must restart, SIGHUP is not enough",
    )
    s.set_defaults(handler=cmd_pki_renew)
    s = pki.add_parser("list", help="the certificates the CA issued (its registry)")
    s.add_argument("pki_dir", metavar="PKI_DIR")
    s.add_argument("--json", action="store_true")
    s.set_defaults(handler=cmd_pki_list)

    # node
    node = top.add_parser("node", help="a national node: store, imports, server, matches")
    ns = node.add_subparsers(dest="node_command", required=True, metavar="SUBCOMMAND")
    s = ns.add_parser("init", help="create a node directory: certificate, node.toml, empty store")
    s.add_argument("node_dir", metavar="NODE_DIR")
    s.add_argument("--name", required=True)
    s.add_argument("--listen", required=True, metavar="HOST:PORT")
    s.add_argument("--pki", required=True, metavar="PKI_DIR")
    s.add_argument(
        "--coordinator-name", default="coordinator", help="name in the coordinator's certificate"
    )
    s.add_argument(
        "--coordinator",
        metavar="HOST:PORT",
        help="the coordinator's address, for early-warning checks (node.toml coordinator_address)",
    )
    s.set_defaults(handler=_lazy("node.cli", "cmd_init"))
    s = ns.add_parser("import", help="import sightings from text/CSV, STIX 2.1 or MISP files")
    s.add_argument("--config", required=True, metavar="NODE_TOML")
    s.add_argument("--format", default="auto", choices=["auto", "text", "csv", "stix", "misp"])
    s.add_argument(
        "--tlp", help="TLP for records that carry none (default: node.toml import.default_tlp)"
    )
    s.add_argument(
        "--source", help="source name recorded with each sighting (default: the file name)"
    )
    s.add_argument(
        "--allow-private-suffix",
        action="store_true",
        help="accept internal names (.local, .internal, suffixes on no public list)",
    )
    s.add_argument(
        "--dry-run",
        action="store_true",
        help="show what would be stored and what is refused; store nothing",
    )
    s.add_argument("paths", nargs="+", metavar="PATH")
    s.set_defaults(handler=_lazy("node.cli", "cmd_import"))
    s = ns.add_parser("forget", help="delete indicators and everything derived from them (audited)")
    s.add_argument("--config", required=True, metavar="NODE_TOML")
    what = s.add_mutually_exclusive_group(required=True)
    what.add_argument("values", nargs="*", default=[], metavar="VALUE")
    what.add_argument("--source", metavar="NAME", help="what this source brought")
    what.add_argument("--file", metavar="FILE", help="the values in this file (any import format)")
    what.add_argument(
        "--before", metavar="DATE", help="indicators not imported or pulled since (ISO 8601)"
    )
    s.add_argument("--dry-run", action="store_true", help="show what would go; delete nothing")
    s.set_defaults(handler=_lazy("node.cli", "cmd_forget"))
    s = ns.add_parser("stats", help="what the store holds")
    s.add_argument("--config", required=True, metavar="NODE_TOML")
    s.add_argument("--json", action="store_true")
    s.set_defaults(handler=_lazy("node.cli", "cmd_stats"))
    s = ns.add_parser(
        "backup", help="a consistent copy of the store, safe while the node serves and imports"
    )
    s.add_argument("--config", required=True, metavar="NODE_TOML")
    s.add_argument("--to", required=True, metavar="FILE", help="a new file (never overwritten)")
    s.set_defaults(handler=_lazy("node.cli", "cmd_backup"))
    s = ns.add_parser("serve", help="serve round RPCs to the coordinator")
    s.add_argument("--config", required=True, metavar="NODE_TOML")
    s.add_argument("--insecure", action="store_true", help="plaintext, loopback only (experiments)")
    s.set_defaults(handler=_lazy("node.cli", "cmd_serve"))
    # connectors (docs/OPERATIONS.md, Connectors)
    s = ns.add_parser("sync", help="pull indicators from the sources in node.toml, once")
    s.add_argument("--config", required=True, metavar="NODE_TOML")
    s.add_argument("--source", metavar="NAME", help="only this source")
    s.add_argument("--json", action="store_true")
    s.set_defaults(handler=_lazy("node.cli", "cmd_sync"))
    s = ns.add_parser("push", help="push sightings of matches not yet pushed to the sinks")
    s.add_argument("--config", required=True, metavar="NODE_TOML")
    s.add_argument("--sink", metavar="NAME", help="only this sink")
    s.add_argument("--round", metavar="ID", help="only this round's matches")
    s.add_argument("--json", action="store_true")
    s.set_defaults(handler=_lazy("node.cli", "cmd_push"))
    s = ns.add_parser("matches", help="indicators partners have also seen")
    s.add_argument("--config", required=True, metavar="NODE_TOML")
    s.add_argument("--round", metavar="ID")
    s.add_argument("--format", default="table", choices=["table", "json", "csv", "stix"])
    s.set_defaults(handler=_lazy("node.cli", "cmd_matches"))
    s = ns.add_parser("audit", help="every import and every round this node joined")
    s.add_argument("--config", required=True, metavar="NODE_TOML")
    s.add_argument("--json", action="store_true")
    s.set_defaults(handler=_lazy("node.cli", "cmd_audit"))
    s = ns.add_parser("explain", help="why a value did or did not match: stored? in rounds? found?")
    s.add_argument("--config", required=True, metavar="NODE_TOML")
    s.add_argument("--kind", choices=[*KINDS, "auto"], default="auto")
    s.add_argument("--json", action="store_true")
    s.add_argument("values", nargs="+", metavar="VALUE")
    s.set_defaults(handler=_lazy("node.cli", "cmd_explain"))
    # early warning (docs/WATCH.md)
    s = ns.add_parser("check", help="check new sightings against partners' watchlists, now")
    s.add_argument("--config", required=True, metavar="NODE_TOML")
    s.add_argument("--kind", choices=[*KINDS, "auto"], default="auto")
    s.add_argument("--json", action="store_true")
    s.add_argument("values", nargs="+", metavar="VALUE")
    s.set_defaults(handler=_lazy("node.watch_cli", "cmd_check"))
    s = ns.add_parser("alerts", help="early-warning alerts, newest first")
    s.add_argument("--config", required=True, metavar="NODE_TOML")
    s.add_argument("--follow", action="store_true", help="keep printing new alerts")
    s.add_argument("--json", action="store_true", help="a JSON array (--follow: JSON Lines)")
    s.set_defaults(handler=_lazy("node.watch_cli", "cmd_alerts"))

    # coordinator
    coord = top.add_parser("coordinator", help="the coordinator: registry of nodes, round driver")
    cs = coord.add_subparsers(dest="coordinator_command", required=True, metavar="SUBCOMMAND")
    s = cs.add_parser("init", help="create a coordinator directory: certificate, coordinator.toml")
    s.add_argument("coord_dir", metavar="COORD_DIR")
    s.add_argument("--listen", required=True, metavar="HOST:PORT")
    s.add_argument("--pki", required=True, metavar="PKI_DIR")
    s.add_argument("--node", action="append", required=True, metavar="NAME=HOST:PORT")
    s.add_argument("--name", default="coordinator")
    s.set_defaults(handler=_lazy("coordinator.cli", "cmd_init"))
    s = cs.add_parser("serve", help="serve operators and drive rounds")
    s.add_argument("--config", required=True, metavar="COORD_TOML")
    s.add_argument("--insecure", action="store_true", help="plaintext, loopback only (experiments)")
    s.set_defaults(handler=_lazy("coordinator.cli", "cmd_serve"))

    # operator
    op = top.add_parser("operator", help="an operator identity for launching rounds")
    os_ = op.add_subparsers(dest="operator_command", required=True, metavar="SUBCOMMAND")
    s = os_.add_parser("init", help="create an operator directory: certificate, operator.toml")
    s.add_argument("op_dir", metavar="OP_DIR")
    s.add_argument("--name", required=True)
    s.add_argument("--coordinator", required=True, metavar="HOST:PORT")
    s.add_argument(
        "--coordinator-name", default="coordinator", help="name in the coordinator's certificate"
    )
    s.add_argument("--pki", required=True, metavar="PKI_DIR")
    s.set_defaults(handler=_lazy("coordinator.operator_cli", "cmd_operator_init"))

    # round
    rnd = top.add_parser("round", help="launch and watch match rounds")
    rs = rnd.add_subparsers(dest="round_command", required=True, metavar="SUBCOMMAND")
    s = rs.add_parser("start", help="start a match round")
    s.add_argument("--config", required=True, metavar="OP_TOML")
    _round_flags(s, nodes_required=True)
    s.add_argument("--wait", action="store_true", help="follow the round until it ends")
    s.add_argument("--json", action="store_true")
    s.add_argument("--insecure", action="store_true")
    s.set_defaults(handler=_lazy("coordinator.operator_cli", "cmd_round_start"))
    s = rs.add_parser("status", help="one round, or the recent ones")
    s.add_argument("--config", required=True, metavar="OP_TOML")
    s.add_argument("id", nargs="?", metavar="ID")
    s.add_argument("--json", action="store_true")
    s.add_argument("--insecure", action="store_true")
    s.set_defaults(handler=_lazy("coordinator.operator_cli", "cmd_round_status"))
    s = rs.add_parser("schedule", help="sign a standing order of rounds; list or cancel one")
    s.add_argument("--config", required=True, metavar="OP_TOML")
    s.add_argument("--name", help="the schedule's name, for people")
    # --nodes is optional here: --list and --cancel name no round
    _round_flags(s, nodes_required=False)
    s.add_argument("--every", type=_duration, metavar="DURATION", help="between runs, e.g. 24h")
    s.add_argument("--first", metavar="ISO-TIME", help="when the first run is due (default: now)")
    s.add_argument("--until", metavar="ISO-TIME", help="no run is due at or after this time")
    s.add_argument("--list", action="store_true", help="the schedules and their next run")
    s.add_argument("--cancel", metavar="ID", help="stop a schedule: no further run starts")
    s.add_argument("--json", action="store_true")
    s.add_argument("--insecure", action="store_true")
    s.set_defaults(handler=_lazy("coordinator.schedule_cli", "cmd_round_schedule"))

    # canonicalize
    s = top.add_parser("canonicalize", help="print the canonical form of indicators")
    s.add_argument("kind", metavar="KIND", choices=[*KINDS, "auto"])
    s.add_argument("values", nargs="+", metavar="VALUE")
    s.set_defaults(handler=cmd_canonicalize)

    # demo
    s = top.add_parser("demo", help="a local federation on loopback with built-in sample data")
    s.add_argument("--nations", type=int, default=3, metavar="N")
    s.add_argument("--size", type=int, default=3000, metavar="N", help="indicators per nation")
    s.add_argument("--keep", metavar="DIR", help="build the federation in DIR and keep it")
    s.set_defaults(handler=_lazy("blindmatch.demo.demo", "cmd_demo"))
    return p


def _round_flags(s: argparse.ArgumentParser, *, nodes_required: bool) -> None:
    """What a round is, as ``round start`` and each run of ``round schedule`` ask for it."""
    s.add_argument("--nodes", required=nodes_required, type=_names, metavar="A,B[,C...]")
    s.add_argument(
        "--mode", default="pairwise", choices=["pairwise", "threshold", "count", "watch"]
    )
    s.add_argument("--threshold", type=int, metavar="T")
    s.add_argument(
        "--epoch",
        type=_duration,
        metavar="DURATION",
        help="watch mode: how long partners' watchlists stay open, e.g. 24h (default), 90m",
    )
    s.add_argument(
        "--counts",
        action="store_true",
        help="threshold mode: deliver how many nations hold each match, not only 'at least T'",
    )
    s.add_argument(
        "--chunk-size",
        type=int,
        metavar="N",
        help="elements per chunk (default 4096; at most the coordinator's chunk_size)",
    )
    s.add_argument("--kinds", type=_kinds, metavar="K,...")
    s.add_argument(
        "--committee",
        type=_names,
        metavar="A,B[,C...]",
        help="the nodes whose shares make the round key (default: every node of --nodes); a "
        "node outside it joins only if its [policy] trusted_committee is inside it",
    )


@command()
def cmd_pki_init(args: argparse.Namespace) -> int:
    """``blindmatch pki init PKI_DIR``."""
    from pathlib import Path

    from blindmatch.cli.initdir import init_dir
    from blindmatch.runtime.pki import init_pki_dir

    with init_dir(Path(args.pki_dir)):
        paths = init_pki_dir(args.pki_dir)
    print(f"wrote CA certificate {paths.cert}")
    print(f"wrote CA key {paths.key} (mode 0600; keep it offline, it can mint any identity)")
    return OK


@command()
def cmd_pki_issue(args: argparse.Namespace) -> int:
    """``blindmatch pki issue PKI_DIR NAME --role R [--host H ...]``."""
    from blindmatch.runtime.pki import issue_to_dir

    paths = issue_to_dir(args.pki_dir, args.name, args.role, args.host or (), replace=args.replace)
    print(f"issued {args.role}/{args.name}")
    print(f"wrote certificate {paths.cert}")
    print(f"wrote key {paths.key} (mode 0600)")
    print(f"CA certificate: {paths.ca}")
    return OK


@command()
def cmd_pki_renew(args: argparse.Namespace) -> int:
    """``blindmatch pki renew PKI_DIR NAME --role R [--cert PATH] [--host H ...] [--new-key]``."""
    from blindmatch.runtime.pki import renew_in_dir

    done = renew_in_dir(
        args.pki_dir,
        args.name,
        args.role,
        cert_path=args.cert,
        hosts=args.host or (),
        new_key=args.new_key,
    )
    print(f"renewed {args.role}/{args.name}: serial {done.new.serial} replaces {done.old.serial}")
    print(f"wrote certificate {done.paths.cert} (valid until {done.new.not_after[:10]})")
    print(f"kept the previous one as {done.paths.cert}.old")
    if done.new_key:
        print(f"wrote a new key {done.paths.key} (mode 0600), the previous one kept as .old")
        print("next: restart the holder (a new key is not taken on SIGHUP)")
    else:
        print("the key is unchanged; next: `kill -HUP` the node or coordinator that uses it")
    return OK


@command()
def cmd_pki_list(args: argparse.Namespace) -> int:
    """``blindmatch pki list PKI_DIR [--json]``."""
    import dataclasses
    import datetime
    import json

    from blindmatch.runtime.pki import Registry

    registry = Registry.read(args.pki_dir)
    now = datetime.datetime.now(datetime.UTC)
    if args.json:
        rows = [{**dataclasses.asdict(e), "state": e.state(now)} for e in registry.entries]
        print(json.dumps(rows, indent=2))
        return OK
    if registry.rebuilt:
        print(
            f"(no registry in {args.pki_dir}: built it from {args.pki_dir}/issued; certificates "
            "issued into other directories join it when renewed with --cert)",
            file=sys.stderr,
        )
    print(f"{'SERIAL':<40} {'ROLE':<11} {'NAME':<20} {'NOT AFTER':<10}  STATE")
    for e in registry.entries:
        print(f"{e.serial:<40} {e.role:<11} {e.name:<20} {e.not_after[:10]}  {e.state(now)}")
    return OK


def cmd_canonicalize(args: argparse.Namespace) -> int:
    from blindmatch.core.canon import InvalidIndicator, canonicalize

    status = OK
    for value in args.values:  # every value gets its line; one bad value does not stop the rest
        try:
            print(canonicalize(args.kind, value).value)
        except InvalidIndicator as exc:
            print(f"error: {exc}", file=sys.stderr)
            status = BAD_INPUT
    return status


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    try:
        code: int = args.handler(args)
        # Short output is still in the buffer: a reader that is gone must be found here, not
        # at interpreter exit, where Python prints "Exception ignored" and exits 120.
        sys.stdout.flush()
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return INTERRUPTED
    except BrokenPipeError:  # `blindmatch node audit | head`: every command, handled once here
        return quiet_broken_pipe()
    return code


if __name__ == "__main__":
    sys.exit(main())
