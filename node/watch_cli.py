"""Handlers of ``blindmatch node check`` and ``blindmatch node alerts`` (docs/WATCH.md)."""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import grpc

from blindmatch.cli.errors import BAD_INPUT, OK, Failed, rpc_failure
from blindmatch.core.canon import wire_value
from blindmatch.core.errors import BadMessage
from blindmatch.core.spec import check_time
from blindmatch.core.watch_rules import utc_text
from blindmatch.runtime import net
from blindmatch.v2 import watch_pb2, watch_pb2_grpc
from node.cli import node_command, open_store
from node.config import load_config
from node.store import AlertRow

CHECK_TIMEOUT = 150.0  # seconds; the node gives the coordinator 120 s for each call of a check
FOLLOW_POLL = 1.0  # seconds between looks at the store for new alerts


def _dial_address(listen: str) -> str:
    """Where this machine reaches a node listening on ``listen``."""
    host, port = net.split_host_port(listen)
    if host.strip("[]") in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    return f"{host}:{port}"


@node_command
def cmd_check(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    tls = net.load_tls(config.tls.ca, config.tls.cert, config.tls.key)
    address = _dial_address(config.listen)
    channel = net.open_channel(address, tls, insecure=False, expect=net.Allow("node", config.name))
    try:
        stub = watch_pb2_grpc.NodeWatchServiceStub(channel)
        # argv may hold raw bytes (lone surrogates), which protobuf cannot carry
        values = [wire_value(args.kind or "auto", v) for v in args.values]
        request = watch_pb2.NodeCheckRequest(values=values, kind=args.kind or "auto")
        try:
            reply: watch_pb2.NodeCheckReply = stub.Check(request, timeout=CHECK_TIMEOUT)
        except grpc.RpcError as err:
            code = err.code()
            hint = ""
            if code == grpc.StatusCode.UNAVAILABLE:
                hint = f" — is `blindmatch node serve --config {args.config}` running?"
            where = f"node {config.name} at {address}"
            raise rpc_failure(err, f"{where}: {code.name}: {err.details()}{hint}") from None
    finally:
        channel.close()
    rows = [_result_json(r) for r in reply.results]
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        if reply.epoch_id:
            try:  # the node's own number, but a number from the wire all the same
                ends = utc_text(check_time(reply.epoch_ends, "epoch_ends"))
            except BadMessage as exc:
                raise Failed(
                    f"node {config.name} sent a reply that cannot be shown: {exc}"
                ) from None
            print(f"epoch {reply.epoch_id[:12]}, ends {ends}")
        for r in rows:
            if r["error"]:
                print(f"refused  {r['input']}: {r['error']}")
            elif r["partners"]:
                print(
                    f"HIT      {r['kind']} {r['value']}: already sighted by "
                    + ", ".join(r["partners"])
                )
            else:
                print(f"no hit   {r['kind']} {r['value']}")
    return BAD_INPUT if any(r["error"] for r in rows) else OK  # values refused as invalid


def _result_json(r: watch_pb2.ValueResult) -> dict[str, Any]:
    return {
        "kind": r.kind or None,
        "value": r.canonical or r.value,
        "input": r.value,
        "partners": sorted(r.partners),
        "error": r.error or None,
    }


def _alert_json(a: AlertRow) -> dict[str, Any]:
    return {
        "id": a.alert_id,
        "time": a.time,
        "kind": a.kind,
        "value": a.value,
        "partner": a.partner,
        "direction": a.direction,
        "epoch": a.epoch_id,
    }


def _alert_line(a: AlertRow) -> str:
    if a.direction == "sighted":
        what = f"{a.partner} has now sighted your indicator"
    else:
        what = f"{a.partner} already had it when you checked it"
    return f"{a.time}  {a.kind:<7} {a.value}  {what}"


@node_command
def cmd_alerts(args: argparse.Namespace) -> int:
    with open_store(args) as (_, store):
        alerts = store.alerts()
        if args.json and not args.follow:
            print(json.dumps([_alert_json(a) for a in alerts], indent=2))
            return 0

        def emit(a: AlertRow) -> None:
            print(json.dumps(_alert_json(a)) if args.json else _alert_line(a), flush=True)

        if not alerts and not args.follow and not args.json:
            print("no alerts yet")
        for a in alerts:
            emit(a)
        if not args.follow:
            return 0
        # --follow: JSON Lines with --json; new alerts as they are stored, oldest first.
        last = alerts[0].alert_id if alerts else 0
        try:
            while True:
                time.sleep(FOLLOW_POLL)
                for a in reversed(store.alerts(after=last)):
                    emit(a)
                    last = a.alert_id
        except KeyboardInterrupt:
            return 0
