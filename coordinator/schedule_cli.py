"""``blindmatch round schedule``: an operator signs a standing order, lists or cancels one.

A standing order (blindmatch/core/orders.py) is signed like a round spec, with the operator's
federation key; the coordinator keeps it and starts each run when it is due, and every node
checks the signature and the run's time for itself (docs/PROTOCOL.md, "Standing orders").
Exit statuses are ``blindmatch.cli.errors``'s, as for ``round start``; its runs are built as
``round start`` builds a round (``operator_cli.new_round``), and a schedule is shown in one line
as ``round status`` shows it (``operator_cli.schedule_line``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import time
import uuid
from collections.abc import Sequence
from typing import Any

from blindmatch.cli.errors import BadInput
from blindmatch.cli.ids import by_prefix
from blindmatch.core.errors import BadMessage
from blindmatch.core.orders import StandingOrder
from blindmatch.core.signing import SignedOrder
from blindmatch.runtime import serde
from blindmatch.v1 import coordinator_pb2, coordinator_pb2_grpc
from coordinator.cli import coordinator_command
from coordinator.config import OperatorConfig, load_operator_config
from coordinator.operator_cli import new_round, refuse_stray_flags, schedule_line
from coordinator.operator_client import CALL_TIMEOUT, call, connect, signer


@coordinator_command
def cmd_round_schedule(args: argparse.Namespace) -> int:
    """``blindmatch round schedule --config OP_TOML --name NAME --nodes A,B[,C] --every D
    [--mode M] [--threshold T] [--counts] [--epoch D] [--kinds K,...] [--chunk-size N]
    [--first ISO-TIME] [--until ISO-TIME] [--json] [--insecure]``, or ``--list`` or
    ``--cancel ID`` in place of the order.

    Prints the new schedule's id (``--json``: the schedule as one JSON object); ``--list`` one
    line per schedule with its next run (``--json``: an array); ``--cancel`` the schedule.
    """
    config = load_operator_config(args.config)
    if args.list or args.cancel:
        with connect(config, args.insecure) as stub:
            if args.cancel:
                cancel = coordinator_pb2.CancelScheduleRequest(
                    id=_schedule_id(config, stub, args.cancel)
                )
                info = call(config, lambda: stub.CancelSchedule(cancel, timeout=CALL_TIMEOUT))
                print(json.dumps(schedule_dict(info)) if args.json else schedule_line(info))
                return 0
            listed = call(
                config,
                lambda: stub.ListSchedules(
                    coordinator_pb2.ListSchedulesRequest(), timeout=CALL_TIMEOUT
                ),
            ).schedules
        if args.json:
            print(json.dumps([schedule_dict(s) for s in listed]))
        else:
            print("\n".join(schedule_line(s) for s in listed) or "no schedules")
        return 0
    order = _order(args)
    signed = SignedOrder.sign(signer(config), serde.order_to_bytes(order))
    request = coordinator_pb2.ScheduleRequest(order=serde.signed_order_to_proto(signed))
    with connect(config, args.insecure) as stub:
        info = call(config, lambda: stub.Schedule(request, timeout=CALL_TIMEOUT))
    print(json.dumps(schedule_dict(info)) if args.json else info.id)
    return 0


def _schedule_id(
    config: OperatorConfig, stub: coordinator_pb2_grpc.CoordinatorServiceStub, given: str
) -> str:
    """The schedule ``given`` names, whole or a unique prefix, as round ids are read; an id
    no schedule has goes to the coordinator as it is, whose refusal names it."""
    listed = call(
        config,
        lambda: stub.ListSchedules(coordinator_pb2.ListSchedulesRequest(), timeout=CALL_TIMEOUT),
    ).schedules
    return by_prefix(given, (s.id for s in listed), "schedule") or given


def _order(args: argparse.Namespace) -> StandingOrder:
    missing = [f for f in ("name", "nodes", "every") if getattr(args, f) is None]
    if missing:
        flags = ", ".join(f"--{f}" for f in missing)
        raise BadInput(f"a schedule needs {flags} (or give --list or --cancel ID)")
    refuse_stray_flags(args.mode, epoch=args.epoch, counts=args.counts)
    now = time.time()
    try:
        return new_order(
            args.name,
            args.nodes,
            args.mode,
            every=args.every,
            first=_time(args.first, "--first") if args.first else now,
            until=_time(args.until, "--until") if args.until else 0.0,
            threshold=args.threshold,
            kinds=args.kinds or (),
            epoch=args.epoch,
            counts=args.counts,
            chunk_size=args.chunk_size,
            issued=now,
            committee=getattr(args, "committee", None) or (),
        )
    except BadMessage as exc:
        raise BadInput(str(exc)) from None


def new_order(
    name: str,
    nodes: Sequence[str],
    mode: str = "pairwise",
    *,
    every: float,
    first: float,
    until: float = 0.0,
    threshold: int | None = None,
    kinds: Sequence[str] = (),
    epoch: float | None = None,
    counts: bool = False,
    chunk_size: int | None = None,
    issued: float,
    committee: Sequence[str] = (),
) -> StandingOrder:
    """The standing order an operator asks for: a fresh schedule id, runs as ``round start``
    would build them ("watch" mode: pairwise rounds that open an epoch)."""
    template = new_round(
        nodes,
        mode,
        threshold=threshold,
        kinds=kinds,
        epoch=epoch,
        counts=counts,
        chunk_size=chunk_size,
        round_id="run",  # each run's id is the schedule's and the run number
        issued=first,
        committee=committee,
    )
    return StandingOrder(uuid.uuid4().hex, name, template, every, first, until, issued)


def _time(text: str, flag: str) -> float:
    """An ISO 8601 time; without an offset it is this machine's local time."""
    try:
        when = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise BadInput(
            f"{flag}: {text!r} is not an ISO time, e.g. 2026-12-01T06:00+00:00"
        ) from None
    return (when if when.tzinfo else when.astimezone()).timestamp()


def schedule_dict(info: coordinator_pb2.ScheduleInfo) -> dict[str, Any]:
    """A schedule as plain JSON types; absent values (no end, no next run) are null."""
    return {
        "id": info.id,
        "name": info.name,
        "state": info.state,
        "participants": list(info.participants),
        "mode": info.mode,
        "threshold": info.threshold or None,
        "every_seconds": info.every_seconds,
        "until": info.until or None,
        "operator": info.operator,
        "next_run": info.next_run or None,
        "runs": info.runs,
        "skipped": info.skipped,
        "last_round": info.last_round or None,
        "cancelled_by": info.cancelled_by or None,
    }
