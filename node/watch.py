"""The node's side of early warning (docs/WATCH.md): its epoch, checks, budgets and alerts.

The epoch (``blindmatch.watch.NodeEpoch``: the kept key and the tag map) lives in this process's
memory only. It ends at its end time, when the coordinator closes it, when a new watch round
replaces it, or when the node stops: a node restart ends its epoch, and checks through it are
refused until the next watch round.

How a watch round becomes an epoch: the coordinator calls ``BeginEpoch`` with the node's own
final tags before it calls ``Deliver``; the round registry's ``deliver`` calls ``capture`` with the
round just before the round's key is destroyed, and the epoch keeps a copy of that key.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import grpc

from blindmatch import net, wire
from blindmatch.canon import InvalidIndicator, canonicalize
from blindmatch.group import ELEMENT_BYTES, InvalidElement, RoundKey
from blindmatch.protocol import BadMessage, NodeRound, Policy, ProtocolError, WrongPhase
from blindmatch.v1 import watch_pb2, watch_pb2_grpc
from blindmatch.watch import NodeEpoch, split_tags, utc_text
from node.pool import Blinder
from node.store import Store

log = logging.getLogger("blindmatch.node.watch")

SERVICE_PREFIX = "/blindmatch.v1.NodeWatchService/"
CHECK_METHOD = SERVICE_PREFIX + "Check"
COORDINATOR_CALL_TIMEOUT = 120.0  # seconds for one check at the coordinator, all hops included


class CheckFailed(wire.StatusError):
    """The coordinator could not complete a check; carries its status code."""


@dataclass(frozen=True)
class _Pending:
    ends: float
    tags: bytes
    coordinator: str


def access_rules(node_name: str, coordinator: str) -> dict[str, list[tuple[str, str | None]]]:
    """Check for this node's own certificate and operators; the rest for its coordinator."""
    return {
        SERVICE_PREFIX: [("coordinator", coordinator)],
        CHECK_METHOD: [("node", node_name), ("operator", None)],
    }


class NodeWatch(watch_pb2_grpc.NodeWatchServiceServicer):
    def __init__(
        self,
        *,
        name: str,
        store: Store,
        policy: Policy,
        blinder: Blinder,
        budget: int,
        active_rounds: Callable[[], list[str]],
        coordinator_address: str,
        tls: net.TlsConfig | None,
    ) -> None:
        self.name = name
        self.store = store
        self.policy = policy
        self.blinder = blinder
        self.budget = budget
        self._active_rounds = active_rounds
        self._tls = tls
        self._channel: grpc.Channel | None = None
        self._coordinator_address = ""
        self._lock = threading.Lock()
        self._epoch: NodeEpoch | None = None
        self._pending: dict[str, _Pending] = {}
        self._stop = threading.Event()
        self.connect_coordinator(coordinator_address)
        self._reaper = threading.Thread(target=self._reap, name="epoch-reaper", daemon=True)
        self._reaper.start()

    # --- the epoch --------------------------------------------------------------------------

    def connect_coordinator(self, address: str) -> None:
        """Where checks go (node.toml ``coordinator_address``)."""
        with self._lock:
            old, self._channel = self._channel, None
            self._coordinator_address = address
            if address:
                self._channel = net.open_channel(address, self._tls, insecure=self._tls is None)
        if old is not None:
            old.close()

    @property
    def epoch(self) -> NodeEpoch | None:
        return self._epoch

    def capture(self, state: NodeRound) -> None:
        """Called by Deliver before the round's key is destroyed: keep it if this is a watch round."""
        with self._lock:
            pending = self._pending.pop(state.spec.round_id, None)
        if pending is None:
            return
        positions = state.position_map()
        tags = split_tags(pending.tags)
        if len(tags) != len(positions):
            raise BadMessage(
                f"watch round {state.spec.round_id}: {len(tags)} final tags for an own set of "
                f"{len(positions)}"
            )
        epoch = NodeEpoch(
            epoch_id=state.spec.round_id,
            me=self.name,
            participants=state.spec.participants,
            ends=pending.ends,
            key=RoundKey.from_bytes(state.live_key().export()),
            budget=self.budget,
        )
        epoch.remember(tags, ((kind, value) for _, kind, value in positions))
        with self._lock:
            old, self._epoch = self._epoch, epoch
        if old is not None:
            self._close(old, f"replaced by epoch {epoch.epoch_id}")
        self.store.record_epoch(
            epoch.epoch_id,
            ends=utc_text(epoch.ends),
            coordinator=pending.coordinator,
            participants=epoch.participants,
            tags=len(tags),
        )
        log.info("epoch %s: key kept until %s", epoch.epoch_id, utc_text(epoch.ends))

    def _close(self, epoch: NodeEpoch, reason: str) -> None:
        with self._lock:
            already = epoch.key is None
            epoch.close(reason)
            if self._epoch is epoch:
                self._epoch = None
        if not already:
            log.info("epoch %s closed: %s", epoch.epoch_id, reason)
            try:
                self.store.close_epoch(epoch.epoch_id, reason)
            except Exception:  # the key is gone either way; only the audit line is missing
                log.exception("could not record the end of epoch %s", epoch.epoch_id)

    def _reap(self) -> None:
        while not self._stop.wait(0.2):
            epoch = self._epoch
            if epoch is not None and time.time() >= epoch.ends:
                self._close(epoch, f"epoch ended at {utc_text(epoch.ends)}")
            with self._lock:
                pending = list(self._pending)
            if pending:
                active = set(self._active_rounds())
                with self._lock:
                    for rid in pending:
                        if rid not in active:  # the round failed after BeginEpoch
                            self._pending.pop(rid, None)

    def close(self) -> None:
        self._stop.set()
        epoch = self._epoch
        if epoch is not None:
            self._close(epoch, "node stopped")
        with self._lock:
            channel, self._channel = self._channel, None
        if channel is not None:
            channel.close()

    def _current(self, epoch_id: str) -> NodeEpoch:
        epoch = self._epoch
        if epoch is None or epoch.epoch_id != epoch_id:
            have = f"its epoch is {epoch.epoch_id}" if epoch else "it has no epoch"
            raise WrongPhase(
                f"node {self.name} holds no key for epoch {epoch_id} ({have}; a node restart "
                "ends its epoch); start a new watch round"
            )
        return epoch

    # --- blinding ---------------------------------------------------------------------------

    # A check is one batch: split it in one task per worker so that it uses every core.

    def _blind(self, key: bytes, packed: bytes) -> bytes:
        per = (-(-len(packed) // ELEMENT_BYTES // self.blinder.workers) or 1) * ELEMENT_BYTES
        futures = [self.blinder.blind(key, packed[i : i + per]) for i in range(0, len(packed), per)]
        return b"".join(f.result() for f in futures)

    def _hash_and_blind(self, key: bytes, items: Sequence[tuple[str, str]]) -> bytes:
        per = -(-len(items) // self.blinder.workers) or 1
        futures = [
            self.blinder.hash_and_blind(key, list(items[i : i + per]))
            for i in range(0, len(items), per)
        ]
        return b"".join(f.result() for f in futures)

    # --- RPCs from the coordinator ----------------------------------------------------------

    def BeginEpoch(
        self, request: watch_pb2.BeginEpochRequest, context: grpc.ServicerContext
    ) -> watch_pb2.BeginEpochReply:
        try:
            if request.round_id not in self._active_rounds():
                raise WrongPhase(f"no round {request.round_id!r} in progress on {self.name}")
            if request.ends <= time.time():
                raise BadMessage(f"epoch end {utc_text(request.ends)} is in the past")
            if len(request.tags) % ELEMENT_BYTES:
                raise BadMessage("final tags are not whole 32-byte elements")
        except ProtocolError as exc:
            wire.abort(context, exc)
        caller = net.peer_identity(context)
        with self._lock:
            self._pending[request.round_id] = _Pending(
                request.ends, request.tags, caller.name if caller else "(insecure)"
            )
        return watch_pb2.BeginEpochReply(tags=len(request.tags) // ELEMENT_BYTES)

    def ReblindCheck(
        self, request: watch_pb2.ReblindCheckRequest, context: grpc.ServicerContext
    ) -> watch_pb2.ReblindCheckReply:
        count = len(request.elements) // ELEMENT_BYTES
        try:
            if len(request.elements) % ELEMENT_BYTES or not count:
                raise BadMessage("a check carries one or more whole 32-byte elements")
            epoch = self._current(request.epoch_id)
            with self._lock:  # exported under the lock: the reaper may destroy the key
                key = epoch.charge(request.checker, count, time.time()).export()
            elements = self._blind(key, request.elements)
        except (ProtocolError, InvalidElement) as exc:
            self._audit(request.epoch_id, request.checker, count, "refused", str(exc))
            wire.abort(context, exc)
        self._audit(request.epoch_id, request.checker, count, "done", None)
        share = self.policy.partners is None or request.checker in self.policy.partners
        return watch_pb2.ReblindCheckReply(elements=elements, share=share)

    def Alert(
        self, request: watch_pb2.AlertRequest, context: grpc.ServicerContext
    ) -> watch_pb2.AlertReply:
        try:
            epoch = self._current(request.epoch_id)
            tags = split_tags(request.tags)
            with self._lock:
                found = epoch.lookup(tags)
        except ProtocolError as exc:
            wire.abort(context, exc)
        rows = [(k, v, request.checker, "sighted") for k, v in (f for f in found if f)]
        if rows:
            self.store.record_alerts(epoch.epoch_id, rows)
            for kind, value, _, _ in rows:
                log.warning("alert: %s has now sighted your %s %s", request.checker, kind, value)
        return watch_pb2.AlertReply(known=[f is not None for f in found])

    def CloseEpoch(
        self, request: watch_pb2.CloseEpochRequest, context: grpc.ServicerContext
    ) -> watch_pb2.CloseEpochReply:
        epoch = self._epoch
        if epoch is None or epoch.epoch_id != request.epoch_id:
            return watch_pb2.CloseEpochReply(known=False)
        self._close(epoch, request.reason or "closed by the coordinator")
        return watch_pb2.CloseEpochReply(known=True)

    # --- a check of this node's own sightings -------------------------------------------------

    def Check(
        self, request: watch_pb2.NodeCheckRequest, context: grpc.ServicerContext
    ) -> watch_pb2.NodeCheckReply:
        kind = request.kind or "auto"
        results: list[watch_pb2.ValueResult] = []
        items: list[tuple[str, str]] = []
        slots: list[int] = []  # result index of each item
        for value in request.values:
            result = watch_pb2.ValueResult(value=value)
            try:
                ind = canonicalize(kind, value)
            except InvalidIndicator as exc:
                result.error = str(exc)
            else:
                result.kind, result.canonical = ind.kind, ind.value
                if ind.kind in self.policy.kinds:
                    slots.append(len(results))
                    items.append((ind.kind, ind.value))
                else:
                    result.error = f"kind {ind.kind} is outside this node's policy (policy.kinds)"
            results.append(result)
        if not items:
            if not results:
                wire.abort(context, BadMessage("no values to check"))
            return watch_pb2.NodeCheckReply(results=results)
        try:
            epoch = self._open_epoch()
            reply = self._check(epoch, items)
        except (ProtocolError, CheckFailed) as exc:
            eid = self._epoch.epoch_id if self._epoch else ""
            self._audit(eid, self.name, len(items), "failed", str(exc))
            wire.abort(context, exc)
        tags = split_tags(reply.tags)
        if len(tags) != len(items):
            wire.abort(
                context,
                CheckFailed(grpc.StatusCode.INTERNAL, "the coordinator answered the wrong number"),
            )
        alerts: list[tuple[str, str, str, str]] = []
        for partner, hits in wire.check_hits(reply).items():
            for i in hits:
                if i < len(items):
                    results[slots[i]].partners.append(partner)
                    alerts.append((*items[i], partner, "check"))
        with self._lock:
            epoch.remember(tags, items)
        if alerts:
            self.store.record_alerts(epoch.epoch_id, alerts)
        hit_values = len({a[:2] for a in alerts})
        self._audit(epoch.epoch_id, self.name, len(items), "done", None, hits=hit_values)
        return watch_pb2.NodeCheckReply(
            epoch_id=epoch.epoch_id, epoch_ends=epoch.ends, results=results
        )

    def _open_epoch(self) -> NodeEpoch:
        epoch = self._epoch
        if epoch is None:
            raise WrongPhase(
                f"node {self.name} has no watch epoch (none started, or it ended or the node "
                "restarted); an operator starts one with `blindmatch round start --mode watch`"
            )
        with self._lock:
            epoch.require_open(time.time())
        return epoch

    def _check(self, epoch: NodeEpoch, items: Sequence[tuple[str, str]]) -> watch_pb2.CheckReply:
        with self._lock:
            channel = self._channel
            address = self._coordinator_address
            key = epoch.require_open(time.time()).export()
        if channel is None:
            raise WrongPhase(
                f"node {self.name} has no coordinator_address in its node.toml; add "
                'coordinator_address = "host:port" to check values'
            )
        elements = self._hash_and_blind(key, items)
        request = wire.check_request(epoch.epoch_id, elements, self.policy.partners)
        stub = watch_pb2_grpc.CoordinatorWatchServiceStub(channel)
        try:
            reply: watch_pb2.CheckReply = stub.Check(request, timeout=COORDINATOR_CALL_TIMEOUT)
        except grpc.RpcError as err:
            raise CheckFailed(
                err.code(),
                f"the coordinator at {address} could not complete the check: "
                f"{err.code().name}: {err.details() or '(no details)'}",
            ) from None
        return reply

    def _audit(
        self,
        epoch_id: str,
        checker: str,
        elements: int,
        outcome: str,
        reason: str | None,
        hits: int | None = None,
    ) -> None:
        try:
            self.store.record_check(
                epoch_id, checker, elements, outcome=outcome, reason=reason, hits=hits
            )
        except Exception:  # the audit must not turn a clean refusal into a crash
            log.exception("could not write the audit record of a check in epoch %s", epoch_id)
