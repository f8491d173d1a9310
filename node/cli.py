"""Handlers of ``blindmatch node ...``: the only node code that reads flags, files and the terminal."""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

from blindmatch.cli.errors import BadInput, command
from blindmatch.cli.initdir import init_dir, refuse_existing, server_hosts
from blindmatch.core.identity import validate_name
from blindmatch.runtime import pki
from blindmatch.runtime.net import load_tls, split_host_port
from node.budgets import Budgets
from node.config import ConnectorConfig, NodeConfig, load_config, render_config
from node.connectors.stix_out import stix_bundle
from node.importing import SHOWN_INVALID
from node.pool import Blinder
from node.store import MatchRow, PartnerCount, Store, StoreError

# A store that is missing or not a store is an input error like a bad config.
node_command = command(StoreError)


def existing_store(config: NodeConfig) -> None:
    if not config.store.exists():
        raise BadInput(f"{config.store}: no store here (run `blindmatch node init` first)")


@contextmanager
def open_store(args: argparse.Namespace) -> Iterator[tuple[NodeConfig, Store]]:
    config = load_config(args.config)
    existing_store(config)
    with Store.open(config.store) as store:
        yield config, store


@node_command
def cmd_init(args: argparse.Namespace) -> int:
    node_dir = Path(args.node_dir)
    config_path = node_dir / "node.toml"
    refuse_existing(config_path)
    hosts = server_hosts(args.listen)
    if getattr(args, "coordinator", None):
        split_host_port(args.coordinator)
    validate_name(args.name)
    with init_dir(node_dir):
        issued = pki.issue_to_dir(args.pki, args.name, "node", hosts=hosts, out_dir=node_dir)
    config_path.write_text(
        render_config(
            name=args.name,
            listen=args.listen,
            ca=issued.ca.name,
            cert=issued.cert.name,
            key=issued.key.name,
            coordinator=args.coordinator_name,
            coordinator_address=getattr(args, "coordinator", None) or "",
        )
    )
    config = load_config(config_path)
    Store.open(config.store).close()
    print(
        f"node {args.name}: wrote {config_path}, {issued.cert}, {issued.key}, store {config.store}"
    )
    print(f"next: blindmatch node import --config {config_path} FILE...")
    return 0


@node_command
def cmd_import(args: argparse.Namespace) -> int:
    from node.importing import import_paths

    missing = [p for p in args.paths if not Path(p).exists()]
    if missing:
        raise BadInput(f"no such file or directory: {', '.join(missing)}")
    with open_store(args) as (config, store):
        blinder = Blinder(os.cpu_count() or 1)
        try:
            fill_hashes(store, blinder)
            show = _progress_printer()
            report = import_paths(
                store,
                args.paths,
                fmt=args.format,
                tlp=args.tlp or config.default_tlp,
                source=args.source,
                progress=show,
                hasher=blinder.hash_all,
            )
            show(None)
        finally:
            blinder.close()
    print(report.format())
    return 0 if not report.failed else 1


def fill_hashes(store: Store, blinder: Blinder) -> None:
    """Compute the hashes a store lacks (one from before hash once, or of another hash version)
    in the blinding pool, with progress on a terminal."""
    stale = store.stale_hashes()
    if stale:
        show = _progress_printer("hashed", f"of {stale:,} stored indicators")
        store.fill_hashes(blinder.hash_all, progress=show)
        show(None)


def _progress_printer(verb: str = "read", what: str = "entries") -> Callable[[int | None], None]:
    """Progress on stderr for long imports: one updating line on a terminal, nothing otherwise."""
    tty = sys.stderr.isatty()
    start = time.monotonic()
    shown = False

    def show(n: int | None) -> None:
        nonlocal shown
        if not tty:
            return
        if n is None:
            if shown:
                print(file=sys.stderr)
            return
        if time.monotonic() - start > 0.5:
            rate = n / max(time.monotonic() - start, 1e-9)
            print(f"\r{verb} {n:,} {what} ({rate:,.0f}/s)", end="", file=sys.stderr, flush=True)
            shown = True

    return show


@node_command
def cmd_stats(args: argparse.Namespace) -> int:
    with open_store(args) as (config, store):
        stats = store.stats()
    if args.json:
        print(json.dumps({"node": config.name, **asdict(stats)}, indent=2))
        return 0
    print(f"node {config.name}: {stats.sightings:,} indicators in {config.store}")
    for title, table in (
        ("kind", stats.per_kind),
        ("TLP", stats.per_tlp),
        ("source", stats.sources),
    ):
        if table:
            print(f"  by {title}: " + ", ".join(f"{k} {v:,}" for k, v in sorted(table.items())))
    print(f"  imports: {stats.imports}, last {stats.last_import or 'never'}")
    print(f"  rounds: {stats.rounds_joined} completed of {stats.rounds_recorded} recorded")
    return 0


@node_command
def cmd_serve(args: argparse.Namespace) -> int:
    from node.server import serve

    config = load_config(args.config)
    existing_store(config)
    if not args.insecure:  # a bad certificate or key is named now, not after a long hash fill
        load_tls(config.tls.ca, config.tls.cert, config.tls.key)
    # Before serving, so that every round from the start only blinds.
    with Store.open(config.store) as store:
        blinder = Blinder(config.worker_count)
        try:
            fill_hashes(store, blinder)
        finally:
            blinder.close()
    serve(config, insecure=args.insecure)
    return 0


def _connectors(kind: str, configured: tuple[ConnectorConfig, ...], name: str | None) -> list[Any]:
    if name is None:
        if not configured:
            raise BadInput(f"node.toml has no [[{kind}]]; see docs/OPERATIONS.md, Connectors")
        return list(configured)
    chosen = [c for c in configured if c.name == name]
    if not chosen:
        known = ", ".join(c.name for c in configured) or "none"
        raise BadInput(f"no {kind[:-1]} named {name!r} in node.toml (configured: {known})")
    return chosen


@node_command
def cmd_sync(args: argparse.Namespace) -> int:
    from node.connectors.base import ConnectorError
    from node.connectors.sync import SyncResult, sync_source

    with open_store(args) as (config, store):
        results: list[dict[str, Any]] = []
        blinder = Blinder(os.cpu_count() or 1)
        try:
            for source in _connectors("sources", config.sources, args.source):
                show = _progress_printer()
                try:
                    result = sync_source(
                        store,
                        source,
                        default_tlp=config.default_tlp,
                        progress=show,
                        hasher=blinder.hash_all,
                    )
                    error = None
                except ConnectorError as exc:
                    # Pages stored before the failure stay, and the cursor after them.
                    result = SyncResult(source.name, cursor=store.cursor(source.name))
                    error = str(exc)
                show(None)
                results.append({**result.as_json(), **({"error": error} if error else {})})
                if not args.json:
                    _print_sync(result, error)
        finally:
            blinder.close()
    if args.json:
        print(json.dumps(results, indent=2))
    return 1 if any("error" in r for r in results) else 0


def _print_sync(result: Any, error: str | None) -> None:
    if error:
        print(f"error: {error}", file=sys.stderr)
    print(
        f"{result.source}: fetched {result.fetched:,} objects, {result.added:,} new indicators,"
        f" {result.known:,} known, {result.invalid:,} invalid; cursor {result.cursor or 'none'}"
    )
    for entry in result.report.invalid[:SHOWN_INVALID]:
        print(f"  invalid {entry.path} {entry.where}: {entry.message}")
    if result.invalid > SHOWN_INVALID:
        print(f"  ... and {result.invalid - SHOWN_INVALID:,} more")


@node_command
def cmd_push(args: argparse.Namespace) -> int:
    from node.connectors.base import ConnectorError
    from node.connectors.push import PushResult, push_sink

    with open_store(args) as (config, store):
        results: list[dict[str, Any]] = []
        for sink in _connectors("sinks", config.sinks, args.sink):
            try:
                result = push_sink(store, sink, node=config.name, round_id=args.round)
                error = None
            except ConnectorError as exc:
                result, error = PushResult(sink.name), str(exc)
            results.append({**result.as_json(), **({"error": error} if error else {})})
            if not args.json:
                if error:
                    print(f"error: {error}", file=sys.stderr)
                print(
                    f"{sink.name}: pushed {result.matches:,} matches"
                    f" ({result.objects:,} STIX objects)"
                )
    if args.json:
        print(json.dumps(results, indent=2))
    return 1 if any("error" in r for r in results) else 0


@node_command
def cmd_matches(args: argparse.Namespace) -> int:
    with open_store(args) as (config, store):
        rows = store.matches(args.round)
        counts = store.partner_counts(args.round)
        # the sightings a push sends, in the bundle: the same ids for the same matches
        outgoing = store.outgoing(args.round) if args.format == "stix" else []
    if args.round and not rows and not counts:
        print(f"no results for round {args.round}", file=sys.stderr)
    if args.format == "json":
        print(json.dumps([*map(_match_json, rows), *map(_count_json, counts)], indent=2))
    elif args.format == "csv":
        out = csv.writer(sys.stdout)
        out.writerow(["round", "kind", "value", "partners", "count"])
        for r in rows:
            out.writerow([r.round_id, r.kind, r.value, ";".join(r.partners), r.count or ""])
        for c in counts:
            out.writerow([c.round_id, "", "", c.partner, c.count])
    elif args.format == "stix":
        print(json.dumps(stix_bundle(config.name, outgoing), indent=2))
    else:
        _match_table(rows, counts)
    return 0


def _match_json(r: MatchRow) -> dict[str, Any]:
    return {
        "round": r.round_id,
        "kind": r.kind,
        "value": r.value,
        "partners": r.partners,
        "count": r.count,
        "finished": r.finished,
    }


def _count_json(c: PartnerCount) -> dict[str, Any]:
    return {"round": c.round_id, "partner": c.partner, "count": c.count, "finished": c.finished}


def _match_table(rows: list[MatchRow], counts: list[PartnerCount]) -> None:
    if not rows and not counts:
        print("no matches yet")
        return
    if rows:
        width = min(max(len(r.value) for r in rows), 70)
        print(f"{'round':<14} {'kind':<7} {'value':<{width}}  partners / nations")
        for r in rows:
            who = ", ".join(r.partners) if r.partners else r.nations
            print(f"{r.round_id[:12]:<14} {r.kind:<7} {r.value:<{width}}  {who}")
    for c in counts:
        print(f"round {c.round_id[:12]}: {c.count:,} indicators shared with {c.partner}")


@node_command
def cmd_audit(args: argparse.Namespace) -> int:
    with open_store(args) as (config, store):
        entries = store.audit()
        epochs, checks = store.epochs(), store.checks()
        budgets = Budgets(store, config.budgets, config.name).use()
    if args.json:
        every: list[Any] = [*entries, *epochs, *checks, *budgets]
        print(json.dumps([{"type": type(e).__name__, **asdict(e)} for e in every], indent=2))
        return 0
    if not entries:
        print("nothing recorded yet")
    for e in entries:
        d = asdict(e)
        if "round_id" in d:
            blinded = ", ".join(f"{p} {n:,}" for p, n in d["blinded_for"].items()) or "none"
            mode = d["mode"] + (f" {d['threshold']}" if d["threshold"] else "")
            print(
                f"{d['started']} round {d['round_id'][:12]} {mode} with "
                f"{', '.join(p for p in d['participants'] if p != config.name)}: {d['outcome']}"
                + (f" ({d['reason']})" if d["reason"] else "")
                + f"; own set {d['own_size']:,}; blinded for {blinded}"
                + (f"; asked by operator {d['operator']}" if d["operator"] else "")
            )
        else:
            summary = d["summary"]
            # a failed import stored nothing: say so, rather than list it like the others
            done = (
                f"failed: {summary['error']}"
                if "error" in summary
                else f"{summary.get('new', 0):,} new"
            )
            print(f"{d['time']} import {d['path']} ({d['fmt']}, source {d['source']}): {done}")
    # early warning (docs/WATCH.md): epochs held and checks made or blinded for
    for ep in epochs:
        end = f"key destroyed {ep.closed} ({ep.reason})" if ep.closed else "key held"
        print(
            f"{ep.started} epoch {ep.epoch_id[:12]} until {ep.ends} with "
            f"{', '.join(p for p in ep.participants if p != config.name)}: {ep.tags:,} tags; {end}"
        )
    for c in checks:
        who = "own check" if c.checker == config.name else f"check by {c.checker}"
        print(
            f"{c.time} {who} in epoch {c.epoch_id[:12]}: {c.elements:,} elements, {c.outcome}"
            + (f", {c.hits} hits" if c.hits is not None else "")
            + (f" ({c.reason})" if c.reason else "")
        )
    # budgets across rounds (node.budgets): what each partner has used of this window
    for b in budgets:
        print(
            f"budget {b.partner} (last {b.window}): rounds {b.round_used:,} of "
            f"{b.round_limit:,} elements, checks {b.check_used:,} of {b.check_limit:,}"
        )
    return 0
