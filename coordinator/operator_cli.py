"""CLI handlers of operators: ``operator init``, ``round start`` and ``round status``
(``round schedule`` is coordinator/schedule_cli.py, which builds its runs with ``new_round``;
the link to the coordinator is coordinator/operator_client.py).

An operator signs the spec of every round it asks for (docs/PROTOCOL.md, "Signed specs"), with
the federation key its operator.toml names; the coordinator only carries it.

Handlers, exit statuses and ``--insecure`` follow the rules in coordinator/cli.py.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final, cast

import grpc

from blindmatch.cli.errors import BadInput, Failed, Interrupted, flag_address, flag_value
from blindmatch.cli.ids import by_prefix
from blindmatch.cli.initdir import absolute, init_dir, refuse_existing
from blindmatch.core.canon import KINDS
from blindmatch.core.errors import BadMessage
from blindmatch.core.identity import validate_name
from blindmatch.core.signing import SignedSpec
from blindmatch.core.spec import DEFAULT_CHUNK, RoundSpec
from blindmatch.core.states import COORDINATOR_FINAL, CoordinatorPhase
from blindmatch.core.watch_rules import DEFAULT_EPOCH_SECONDS
from blindmatch.runtime import serde
from blindmatch.runtime.pki import issue_to_dir
from blindmatch.v1 import coordinator_pb2, coordinator_pb2_grpc
from coordinator.cli import coordinator_command
from coordinator.config import (
    OPERATOR_FILE,
    OperatorConfig,
    load_operator_config,
    write_operator_config,
)
from coordinator.operator_client import CALL_TIMEOUT, call, connect, rpc_message, shown, signer


@coordinator_command
def cmd_operator_init(args: argparse.Namespace) -> int:
    """``blindmatch operator init OP_DIR --name NAME --coordinator HOST:PORT --pki PKI_DIR``

    Reads ``args.op_dir``, ``args.name``, ``args.coordinator`` and ``args.pki``. Writes
    OP_DIR/operator.toml and the operator's certificate, key and CA certificate into OP_DIR.
    """
    name = flag_value(validate_name, args.name, "--name")
    coordinator = flag_address(args.coordinator, "--coordinator")
    coordinator_name = flag_value(validate_name, args.coordinator_name, "--coordinator-name")
    op_dir = Path(args.op_dir)
    config_path = op_dir / OPERATOR_FILE
    refuse_existing(config_path)
    with init_dir(op_dir):
        issued = issue_to_dir(args.pki, name, "operator", out_dir=op_dir)
    write_operator_config(
        config_path,
        OperatorConfig(
            name=name,
            coordinator=coordinator,
            tls=absolute(issued),
            coordinator_name=coordinator_name,
        ),
    )
    print(f"wrote {config_path}")
    print(f"issued operator/{name}: {issued.cert}, {issued.key}")
    print(f"start a round with: blindmatch round start --config {config_path} --nodes A,B --wait")
    return 0


@coordinator_command
def cmd_round_start(args: argparse.Namespace) -> int:
    """``blindmatch round start --config OP_TOML --nodes A,B[,C...] [--mode M] [--threshold T]
    [--counts] [--epoch D] [--chunk-size N] [--kinds K,...] [--wait] [--json] [--insecure]``

    Reads ``args.config``, ``args.nodes`` (list of names), ``args.mode`` ("pairwise",
    "threshold", "count" or "watch"), ``args.threshold`` (int or None), ``args.counts``,
    ``args.epoch`` (seconds or None), ``args.chunk_size`` (int or None), ``args.kinds`` (list or
    None: every kind), ``args.wait``, ``args.json`` and ``args.insecure``.

    Draws the round id, builds the round spec and signs it with the operator's federation key
    (operator.toml's [tls] key): nodes act only on the spec this operator signed.

    Without ``--wait``: prints the round id (``--json``: the round as one JSON object) and exits 0.
    With ``--wait``: follows the round, progress on stderr, then a summary on stdout (``--json``:
    exactly one JSON object); exits 0 when the round is done and 1 when it failed.
    """
    nodes = list(args.nodes)
    kinds = list(args.kinds or ())
    epoch = getattr(args, "epoch", None)
    counts = bool(getattr(args, "counts", False))
    refuse_stray_flags(args.mode, epoch=epoch, counts=counts)
    try:
        spec = new_round(
            nodes,
            args.mode,
            threshold=args.threshold,
            kinds=kinds,
            epoch=epoch,
            counts=counts,
            chunk_size=getattr(args, "chunk_size", None),
            committee=getattr(args, "committee", None) or (),
        )
    except BadMessage as exc:
        hint = ""
        if args.threshold is not None and args.mode != "threshold":
            hint = " (add --mode threshold, or drop --threshold)"
        elif args.mode == "threshold" and args.threshold is None:
            hint = " (threshold mode needs --threshold T)"
        raise BadInput(f"{exc}{hint}") from None
    config = load_operator_config(args.config)
    request = start_request(config, spec)
    with connect(config, args.insecure) as stub:
        info = call(config, lambda: stub.StartRound(request, timeout=CALL_TIMEOUT))
        if not args.wait:
            print(json.dumps(info_dict(info)) if args.json else info.id)
            return 0
        print(f"round {info.id} started", file=sys.stderr)
        final = _follow(config, stub, info, progress=_Progress())
    print(json.dumps(info_dict(final)) if args.json else summary(final))
    return 0 if final.state == CoordinatorPhase.DONE else 1


@coordinator_command
def cmd_round_status(args: argparse.Namespace) -> int:
    """``blindmatch round status --config OP_TOML [ID] [--json] [--insecure]``

    Reads ``args.config``, ``args.id`` (a round id, a unique prefix of one, or None: the recent
    rounds, then a line per standing order with its next run), ``args.json`` and
    ``args.insecure``. Exits 0 (also for a failed round: the status
    was shown), 1 when the coordinator cannot be reached or knows no such round.
    """
    config = load_operator_config(args.config)
    with connect(config, args.insecure) as stub:
        if args.id:
            info = _find(config, stub, args.id)
            print(json.dumps(info_dict(info)) if args.json else summary(info))
            return 0
        rounds = call(
            config,
            lambda: stub.ListRounds(coordinator_pb2.ListRoundsRequest(), timeout=CALL_TIMEOUT),
        ).rounds
        schedules = call(
            config,
            lambda: stub.ListSchedules(
                coordinator_pb2.ListSchedulesRequest(), timeout=CALL_TIMEOUT
            ),
        ).schedules
    if args.json:  # the rounds alone; `round schedule --list --json` gives the schedules
        print(json.dumps([info_dict(r) for r in rounds]))
        return 0
    if not rounds:
        print("no rounds yet; start one with `blindmatch round start`")
    else:
        print(table(rounds))
    for info in schedules:
        print(schedule_line(info))
    return 0


# --- asking for a round -----------------------------------------------------------------------


def new_round(
    nodes: Sequence[str],
    mode: str = "pairwise",
    *,
    threshold: int | None = None,
    kinds: Sequence[str] = (),
    epoch: float | None = None,
    counts: bool = False,
    chunk_size: int | None = None,
    round_id: str | None = None,
    issued: float | None = None,
    committee: Sequence[str] = (),
) -> RoundSpec:
    """The spec of a round as the operator asks for it: a fresh round id, issued now, unless
    given. ``mode`` "watch" is a pairwise round that then opens an epoch (docs/WATCH.md)."""
    watching = mode == "watch"
    return RoundSpec(
        round_id=round_id or uuid.uuid4().hex,
        participants=tuple(nodes),
        mode="pairwise" if watching else mode,
        threshold=threshold,
        kinds=tuple(kinds) or KINDS,
        chunk_size=chunk_size or DEFAULT_CHUNK,
        epoch_seconds=(epoch or DEFAULT_EPOCH_SECONDS) if watching else 0.0,
        counts=counts,
        issued=time.time() if issued is None else issued,
        committee=tuple(committee),
    )


def refuse_stray_flags(mode: str, *, epoch: float | None, counts: bool) -> None:
    """BadInput for a flag ``mode`` has no use for, before anything is signed or sent."""
    if epoch is not None and mode != "watch":
        raise BadInput("--epoch only applies to --mode watch")
    if counts and mode != "threshold":
        raise BadInput("--counts only applies to --mode threshold")


def start_request(config: OperatorConfig, spec: RoundSpec) -> coordinator_pb2.StartRoundRequest:
    """``spec`` signed with the operator's federation key: nodes act only on what it signed."""
    signed = SignedSpec.sign(signer(config), serde.spec_to_bytes(spec))
    return coordinator_pb2.StartRoundRequest(signed_spec=serde.signed_spec_to_proto(signed))


def _find(
    config: OperatorConfig, stub: coordinator_pb2_grpc.CoordinatorServiceStub, round_id: str
) -> coordinator_pb2.RoundInfo:
    """The round with this id, or the only recent round whose id starts with it."""
    try:
        return cast(
            coordinator_pb2.RoundInfo,
            stub.GetRound(coordinator_pb2.GetRoundRequest(id=round_id), timeout=CALL_TIMEOUT),
        )
    except grpc.RpcError as err:
        if err.code() != grpc.StatusCode.NOT_FOUND:
            raise Failed(rpc_message(config, err)) from None
    rounds: Sequence[coordinator_pb2.RoundInfo] = call(
        config,
        lambda: stub.ListRounds(
            coordinator_pb2.ListRoundsRequest(limit=1000), timeout=CALL_TIMEOUT
        ),
    ).rounds
    found = by_prefix(round_id, (r.id for r in rounds))
    if found is not None:
        return next(r for r in rounds if r.id == found)
    raise Failed(
        f"no round {round_id!r} on the coordinator at {config.coordinator}; "
        "`blindmatch round status` lists the recent ones",
    )


def _follow(
    config: OperatorConfig,
    stub: coordinator_pb2_grpc.CoordinatorServiceStub,
    info: coordinator_pb2.RoundInfo,
    progress: _Progress,
) -> coordinator_pb2.RoundInfo:
    last = info
    try:
        for last in stub.WatchRound(coordinator_pb2.GetRoundRequest(id=info.id)):
            shown(config, last)
            progress.show(last)
    except grpc.RpcError as err:
        progress.end()
        raise Failed(
            f"lost track of round {info.id}: {rpc_message(config, err)} "
            f"(check it later with `blindmatch round status {info.id}`)",
        ) from None
    except KeyboardInterrupt:
        progress.end()
        raise Interrupted(
            f"stopped following round {info.id}; it goes on. "
            f"Check it with `blindmatch round status {info.id}`",
        ) from None
    progress.end()
    if last.state not in COORDINATOR_FINAL:
        raise Failed(
            f"the coordinator stopped reporting round {info.id} while it was {last.state} "
            f"(check it later with `blindmatch round status {info.id}`)",
        )
    return last


class _Progress:
    """Progress on stderr: one updating line on a terminal, a line per phase or 10% otherwise."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self._shown = ""
        self._key: tuple[str, int] | None = None

    def show(self, info: coordinator_pb2.RoundInfo) -> None:
        pct = _percent(info)
        line = f"{info.state}"
        if info.state == CoordinatorPhase.ROUTING:
            line += f" {pct}%"
        if info.sizes:
            line += " — sets: " + ", ".join(f"{n} {info.sizes[n]}" for n in info.participants)
        if self.tty:
            sys.stderr.write("\r" + line.ljust(len(self._shown)))
            sys.stderr.flush()
            self._shown = line
            return
        key = (info.state, pct // 10)
        if key != self._key:
            self._key = key
            print(line, file=sys.stderr, flush=True)

    def end(self) -> None:
        if self.tty and self._shown:
            sys.stderr.write("\n")
            sys.stderr.flush()
            self._shown = ""


def _percent(info: coordinator_pb2.RoundInfo) -> int:
    if info.state in (CoordinatorPhase.DELIVERING, CoordinatorPhase.DONE):
        return 100
    return int(100 * info.hops_done / info.hops_total) if info.hops_total else 0


# --- output -----------------------------------------------------------------------------------


def info_dict(info: coordinator_pb2.RoundInfo) -> dict[str, Any]:
    """A round as plain JSON types; absent values (no threshold, still running) are null."""
    return {
        "id": info.id,
        "state": info.state,
        "mode": info.mode,
        "threshold": info.threshold or None,
        "participants": list(info.participants),
        "kinds": list(info.kinds),
        "sizes": {n: info.sizes[n] for n in info.participants if n in info.sizes},
        "match_counts": {
            n: info.match_counts[n] for n in info.participants if n in info.match_counts
        },
        "error": info.error or None,
        "created": info.created,
        "finished": info.finished or None,
        "hops_done": info.hops_done,
        "hops_total": info.hops_total,
        "operator": info.operator,
        **_epoch(info),
    }


def _epoch(info: coordinator_pb2.RoundInfo) -> dict[str, Any]:
    """The open epoch of a watch round as the coordinator sees it (``epoch_state`` None: not the
    open epoch); a time that is no time is shown as none rather than crash the display."""
    try:
        return serde.epoch_from_proto(info)
    except BadMessage:
        return {
            "epoch_state": info.epoch_state or None,
            "degraded": {d.node: {"since": None, "reason": d.reason} for d in info.degraded},
        }


def _epoch_lines(info: coordinator_pb2.RoundInfo) -> list[str]:
    epoch = _epoch(info)
    if epoch["epoch_state"] != "degraded":
        state = epoch["epoch_state"]
        return [f"  epoch {state}: every node holds its key"] if state else []
    # partners' checks through these nodes fail until a new epoch opens (OPERATIONS.md)
    lines = [f"  epoch degraded: {len(epoch['degraded'])} node(s) cannot serve checks"]
    for node, loss in epoch["degraded"].items():
        since = f" since {local_time(loss['since'])}" if loss["since"] else ""
        lines.append(f"    {node}{since}: {loss['reason']}")
    return lines


def summary(info: coordinator_pb2.RoundInfo) -> str:
    mode = info.mode + (f" {info.threshold}" if info.mode == "threshold" else "")
    kinds = "all kinds" if set(info.kinds) == set(KINDS) else ",".join(info.kinds)
    head = f"round {info.id} {info.state}"
    if info.finished:
        head += f" after {info.finished - info.created:.1f} s"
    elif info.state == CoordinatorPhase.ROUTING:
        head += f" ({_percent(info)}% of the evaluations done)"
    lines = [
        head,
        f"  mode {mode}, {kinds}; started {local_time(info.created)} by {info.operator or '-'}",
    ]
    if info.error:
        lines.append(f"  error: {info.error}")
        hint = tls_hint(info.error)
        if hint:
            lines.append(f"  likely cause: {hint}")
    # a count round delivers each node a count per partner; the coordinator hears their sum,
    # which may exceed the node's set size (a value two partners hold counts twice)
    label = "in common, summed over its partners" if info.mode == "count" else "matches"
    lines.extend(_epoch_lines(info))
    width = max(len(n) for n in [*info.participants, "node"])
    lines.append(f"  {'node':<{width}}  {'set size':>10}  {label}")
    for n in info.participants:
        size = str(info.sizes[n]) if n in info.sizes else "-"
        count = str(info.match_counts[n]) if n in info.match_counts else "-"
        lines.append(f"  {n:<{width}}  {size:>10}  {count}")
    return "\n".join(lines)


# What the TLS library says when one side's certificate is not from the CA the other trusts.
# A node cannot say it itself: grpc python never shows a server the handshakes it refused, so
# the coordinator's side of the failure is all there is to read.
_FOREIGN_CA_SIGNS: Final = {
    "CERTIFICATE_VERIFY_FAILED": (
        "the node's certificate is not from the CA this coordinator trusts (its certificate was "
        "issued by another federation's CA, or the coordinator's ca.pem is another CA); check "
        "with `openssl verify -CAfile CA.pem NODE.pem` on the node's files"
    ),
    "ALERT_UNKNOWN_CA": (
        "the node does not trust the coordinator's certificate: the ca.pem in its node.toml is "
        "not the CA that issued the coordinator's certificate"
    ),
    "ALERT_BAD_CERTIFICATE": (
        "the node refused the coordinator's certificate: check that the node's node.toml [tls] "
        "ca is this federation's CA certificate"
    ),
}


def tls_hint(error: str) -> str | None:
    """The likely cause of a round that failed in a TLS handshake with a node, or None."""
    return next((hint for sign, hint in _FOREIGN_CA_SIGNS.items() if sign in error), None)


def table(rounds: Sequence[coordinator_pb2.RoundInfo]) -> str:
    rows = [("ID", "STATE", "MODE", "NODES", "STARTED", "NOTE")]
    for r in rounds:
        if r.state == CoordinatorPhase.FAILED:
            note = _clip(r.error, 60)
        elif r.state == CoordinatorPhase.DONE:
            what = "in common (each node's partners, summed)" if r.mode == "count" else "matches"
            note = f"{sum(r.match_counts.values())} {what} in {r.finished - r.created:.1f} s"
            if r.epoch_state == "degraded":
                note += f"; epoch degraded ({','.join(d.node for d in r.degraded)})"
            elif r.epoch_state:
                note += f"; epoch {r.epoch_state}"
        else:
            note = f"{_percent(r)}%"
        rows.append((r.id, r.state, r.mode, ",".join(r.participants), local_time(r.created), note))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row[:-1], widths, strict=True)) + "  " + row[-1]
        for row in rows
    )


def schedule_line(info: coordinator_pb2.ScheduleInfo) -> str:
    """A standing order in one line, as ``round status`` and ``round schedule`` show it."""
    nxt = f"next run {local_time(info.next_run)}" if info.next_run else "no next run"
    state = info.state + (f" by {info.cancelled_by}" if info.cancelled_by else "")
    return (
        f"schedule {info.id} {info.name!r} {state}: {info.mode} on {','.join(info.participants)} "
        f"every {info.every_seconds:g} s; {nxt}; {info.runs} run(s), {info.skipped} skipped"
    )


def local_time(unix: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(unix))


def _clip(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"
