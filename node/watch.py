"""The node's side of early warning (docs/WATCH.md): its epoch, checks, budgets and alerts.

The epoch (``blindmatch.core.watch_node.NodeEpoch``: the kept key and the tag map) lives in this process's
memory only. It ends at its end time, when the coordinator closes it, when a new watch round
replaces it, or when the node stops: a node restart ends its epoch, and checks through it are
refused until the next watch round.

How a watch round becomes an epoch: the round was announced as one at Prepare, where the round
registry asked ``admit`` (node.toml ``[watch]``). The coordinator calls ``BeginEpoch`` with the
node's own k_c-tags before it calls ``Deliver``: the epoch is staged with a copy of the round's
key. The registry reports how every round ends (``round_ended``): a stored delivery opens the
staged epoch, any other end (failure, refused delivery, Abort, even after the delivery) closes
it and destroys the key.

Every decision (epoch expiry, validation, signatures, budgets, which values to check, what the
coordinator's answer means) is the core's (``blindmatch.core.watch_node.NodeWatchCore`` and ``NodeCheck``,
with the clock given here); this module keeps the lock, the store, the blinding workers, the
node's federation key (it signs what it blinds) and the calls.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

import grpc

from blindmatch.core.errors import ProtocolError, UnknownRound, WrongPhase
from blindmatch.core.group import ELEMENT_BYTES, InvalidElement
from blindmatch.core.signing import Signer, Trust
from blindmatch.core.spec import Policy, RoundSpec
from blindmatch.core.states import Outcome
from blindmatch.core.watch_node import NodeCheck, NodeEpoch, NodeWatchCore, end_reason
from blindmatch.core.watch_rules import (
    BadReply,
    CheckHop,
    Clock,
    WatchSettings,
    shares_with,
    utc_text,
)
from blindmatch.runtime import net, serde, status
from blindmatch.v1 import watch_pb2, watch_pb2_grpc
from node.budgets import Budgets
from node.metrics import NO_METRICS, NodeHooks
from node.pool import Blinder
from node.rounds import LiveRound
from node.store import Store

log = logging.getLogger("blindmatch.node.watch")

SERVICE_PREFIX = "/blindmatch.v1.NodeWatchService/"
CHECK_METHOD = SERVICE_PREFIX + "Check"
COORDINATOR_CALL_TIMEOUT = 120.0  # seconds for one check at the coordinator, all hops included

_R = TypeVar("_R")


class CheckFailed(status.StatusError):
    """The coordinator could not complete a check; carries its status code."""


def access_rules(
    node_name: str, coordinator: str, check_clients: Sequence[tuple[str, str]] = ()
) -> dict[str, list[tuple[str, str | None]]]:
    """Check for this node's own certificate and the identities node.toml names (never every
    operator: an operator starts rounds, it does not learn who holds what); the rest for its
    coordinator."""
    clients: list[tuple[str, str | None]] = [(role, name) for role, name in check_clients]
    return {
        SERVICE_PREFIX: [("coordinator", coordinator)],
        CHECK_METHOD: [("node", node_name), *clients],
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
        round_of: Callable[[str], LiveRound],
        coordinator_address: str,
        tls: net.TlsConfig | None,
        settings: WatchSettings | None = None,
        clock: Clock = time.time,
        budgets: Budgets | None = None,
        metrics: NodeHooks = NO_METRICS,
    ) -> None:
        self.name = name
        self.store = store
        self.policy = policy
        self.blinder = blinder
        self.budget = budget
        self.budgets = budgets  # the rolling per-partner budgets, checks' share (node.budgets)
        self.metrics = metrics  # node/metrics.py when [metrics] is on
        self._round_of = round_of
        self._tls = tls
        # The node's federation identity: it signs what it blinds for a check, and verifies
        # who produced what it is asked to blind. Without mTLS there is none: no checks.
        self._signer = None if tls is None else Signer(tls.cert, tls.key)
        self._trust = None if tls is None else Trust(tls.ca)
        self._channel: grpc.Channel | None = None
        self._coordinator_address = ""
        self._lock = threading.Lock()
        self.core = NodeWatchCore(name, budget, clock, settings)
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
                self._channel = net.open_channel(
                    address, self._tls, insecure=self._tls is None, expect=net.Allow("coordinator")
                )
        if old is not None:
            old.close()

    @property
    def epoch(self) -> NodeEpoch | None:
        return self.core.epoch

    @property
    def clock(self) -> Clock:
        return self.core.clock

    @clock.setter
    def clock(self, clock: Clock) -> None:  # tests drive time instead of sleeping
        self.core.clock = clock

    def admit(self, spec: RoundSpec) -> None:
        """At Prepare: refuse a watch round node.toml's ``[watch]`` does not allow."""
        self.core.settings.admit(spec, self.name)

    def round_ended(self, round_id: str, outcome: str, reason: str | None) -> None:
        """Every end of a round (the registry's hook): its delivery stored opens the epoch the
        round staged; any other end closes the epoch it staged or opened."""
        opened = None
        with self._lock:
            if outcome == Outcome.DONE:
                opened = self.core.delivered(round_id)
                ending = None
            else:
                ending = self.core.abandoned(round_id)
        if ending is not None:
            self._close(ending, f"watch round {round_id} {outcome}: {reason or outcome}")
        if opened is None:
            return
        epoch, old = opened
        if old is not None:
            self._close(old, f"replaced by epoch {epoch.epoch_id}")
        self.store.record_epoch(
            epoch.epoch_id,
            ends=utc_text(epoch.ends),
            coordinator=epoch.coordinator,
            participants=epoch.participants,
            tags=len(epoch.tags),
        )
        log.info("epoch %s: key kept until %s", epoch.epoch_id, utc_text(epoch.ends))

    def _close(self, epoch: NodeEpoch, reason: str) -> None:
        with self._lock:
            was_open = self.core.close(epoch, reason)
        if was_open:
            log.info("epoch %s closed: %s", epoch.epoch_id, reason)
            self.blinder.retire()  # workers that blinded checks held the epoch key
            try:
                self.store.close_epoch(epoch.epoch_id, reason)
            except Exception:  # the key is gone either way; only the audit line is missing
                log.exception("could not record the end of epoch %s", epoch.epoch_id)

    def _reap(self) -> None:
        while not self._stop.wait(0.2):
            self.expire()

    def expire(self) -> None:
        """One pass of the reaper: end the epoch at its end time."""
        with self._lock:
            ended = self.core.expired()
        if ended is not None:
            self._close(ended, end_reason(ended))

    def close(self) -> None:
        self._stop.set()
        with self._lock:
            epochs = [*self.core.pending.values(), *filter(None, [self.core.epoch])]
        for epoch in epochs:
            self._close(epoch, "node stopped")
        with self._lock:
            channel, self._channel = self._channel, None
        if channel is not None:
            channel.close()

    # --- blinding ---------------------------------------------------------------------------

    # A check (or a chunk of one) is split in one task per worker so that it uses every core.

    def _blind(self, key: bytes, packed: bytes) -> bytes:
        per = (-(-len(packed) // ELEMENT_BYTES // self.blinder.workers) or 1) * ELEMENT_BYTES
        futures = [self.blinder.blind(key, packed[i : i + per]) for i in range(0, len(packed), per)]
        return b"".join(f.result() for f in futures)

    def _hash_and_blind(self, key: bytes, items: Sequence[tuple[str, str]]) -> bytes:
        """v1's H(v) of each item blinded under ``key`` (group.hash_and_blind_packed), hashed on
        the fly: the store keeps protocol v2's hashes (secp256k1 points), never v1 elements."""
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
        caller = net.peer_identity(context)
        coordinator = caller.name if caller else "(insecure)"
        try:
            try:
                live: LiveRound | None = self._round_of(request.round_id)
            except UnknownRound:
                live = None
            with live.lock if live else contextlib.nullcontext(), self._lock:
                epoch = self.core.begin(
                    request.round_id,
                    live.round if live else None,
                    request.ends,
                    request.tags,
                    coordinator,
                    live.spec_digest if live else b"",
                )
        except ProtocolError as exc:
            status.abort(context, exc)
        return watch_pb2.BeginEpochReply(tags=len(epoch.tags))

    def ReblindCheck(
        self, request: watch_pb2.ReblindCheckRequest, context: grpc.ServicerContext
    ) -> watch_pb2.ReblindCheckReply:
        count = len(request.elements) // ELEMENT_BYTES
        try:
            with self._lock:  # exported under the lock: the reaper may destroy the key
                book = None if self.budgets is None else self.budgets.charge_check
                hop = serde.check_hop_from_proto(request)
                key, output_claim = self.core.reblind(hop, self._trust, book)
                key_bytes = key.export()
                epoch = self.core.current(hop.epoch_id)
            elements = self._blind(key_bytes, request.elements)
        except (ProtocolError, InvalidElement) as exc:
            self._audit(request.epoch_id, request.checker, count, Outcome.REFUSED, str(exc))
            status.abort(context, exc)
        assert self._signer is not None  # the core refuses without a federation identity
        signature = self._signer.sign(output_claim(elements).message())
        with self._lock:
            total = epoch.blinded(hop.checker, hop.check_id, count)
        if total is not None:  # one audit record per check, once its last chunk is blinded
            self._audit(request.epoch_id, request.checker, total, Outcome.DONE, None)
        return watch_pb2.ReblindCheckReply(
            elements=elements,
            share=shares_with(self.policy, request.checker),
            signature=signature,
            certificate=self._signer.cert_pem,
        )

    def Alert(
        self, request: watch_pb2.AlertRequest, context: grpc.ServicerContext
    ) -> watch_pb2.AlertReply:
        try:
            with self._lock:
                found = self.core.alert(request.epoch_id, request.tags)
        except ProtocolError as exc:
            status.abort(context, exc)
        rows = [(k, v, request.checker, "sighted") for k, v in (f for f in found if f)]
        if rows:
            self.store.record_alerts(request.epoch_id, rows)
            for kind, value, _, _ in rows:
                log.warning("alert: %s has now sighted your %s %s", request.checker, kind, value)
        return watch_pb2.AlertReply(known=[f is not None for f in found])

    def CloseEpoch(
        self, request: watch_pb2.CloseEpochRequest, context: grpc.ServicerContext
    ) -> watch_pb2.CloseEpochReply:
        with self._lock:
            epoch = self.core.to_close(request.epoch_id)
        if epoch is None:
            return watch_pb2.CloseEpochReply(known=False)
        self._close(epoch, request.reason or "closed by the coordinator")
        return watch_pb2.CloseEpochReply(known=True)

    # --- a check of this node's own sightings -------------------------------------------------

    def Check(
        self, request: watch_pb2.NodeCheckRequest, context: grpc.ServicerContext
    ) -> watch_pb2.NodeCheckReply:
        try:
            flow = self.core.start_check(request.values, request.kind, self.policy)
        except ProtocolError as exc:
            status.abort(context, exc)
        results = [
            watch_pb2.ValueResult(value=r.value, kind=r.kind, canonical=r.canonical, error=r.error)
            for r in flow.results
        ]
        if not flow.items:
            return watch_pb2.NodeCheckReply(results=results)
        try:
            self.metrics.timed_check(self._check, flow)
        except (ProtocolError, CheckFailed, InvalidElement) as exc:
            eid = flow.epoch.epoch_id if flow.epoch else self.epoch.epoch_id if self.epoch else ""
            self._audit(eid, self.name, len(flow.items), Outcome.FAILED, str(exc))
            status.abort(context, exc)
        finally:
            flow.discard_mask()
        epoch = flow.epoch
        assert epoch is not None
        for result, checked in zip(results, flow.results, strict=True):
            result.partners.extend(checked.partners)
        if flow.alerts:
            self.store.record_alerts(epoch.epoch_id, flow.alerts)
        self._audit(
            epoch.epoch_id, self.name, len(flow.items), Outcome.DONE, None, hits=flow.hit_values
        )
        return watch_pb2.NodeCheckReply(
            epoch_id=epoch.epoch_id, epoch_ends=epoch.ends, results=results
        )

    def _check(self, flow: NodeCheck) -> None:
        """Rules 1, 3 and 4: mask, blind and sign; unmask what the coordinator returns; learn
        the hits."""
        with self._lock:
            channel = self._channel
            address = self._coordinator_address
            masked_key, unmask = flow.open(self.core.epoch, self.core.clock())
            key_bytes, remove = masked_key.export(), unmask.export()
        epoch = flow.epoch
        assert epoch is not None
        if channel is None:
            raise WrongPhase(
                f"node {self.name} has no coordinator_address in its node.toml; add "
                'coordinator_address = "host:port" to check values'
            )
        if self._signer is None:
            raise WrongPhase(f"node {self.name} runs without mTLS: it has no key to sign checks")
        # masked and blinded in one pass (the mask and the epoch key as one key)
        elements = self._hash_and_blind(key_bytes, flow.items)
        signer = self._signer
        first = [
            CheckHop(
                c.epoch_id,
                c.checker,
                c.check_id,
                0,
                c.elements,
                signer.sign(c.message()),
                signer.cert_pem,
                c.seq,
                c.chunks,
            )
            for c in flow.claims(elements)
        ]
        stub = watch_pb2_grpc.CoordinatorWatchServiceStub(channel)
        sealed: watch_pb2.CheckReply = self._ask(
            address,
            lambda: stub.Check(
                serde.check_to_proto(first, self.policy.partners), timeout=COORDINATOR_CALL_TIMEOUT
            ),
        )
        if len(sealed.masked) != len(elements):
            raise BadReply(
                f"the coordinator answered {len(sealed.masked)} bytes for {len(elements)}"
            )
        flow.unmasked(self._blind(remove, sealed.masked))
        finish = watch_pb2.FinishCheckRequest(
            epoch_id=epoch.epoch_id, check_id=flow.check_id, tags=flow.tags
        )
        reply: watch_pb2.FinishCheckReply = self._ask(
            address, lambda: stub.FinishCheck(finish, timeout=COORDINATOR_CALL_TIMEOUT)
        )
        with self._lock:  # the answer joins the tag map, which the reaper may destroy
            flow.on_hits(serde.check_hits_from_proto(reply))

    @staticmethod
    def _ask(address: str, call: Callable[[], _R]) -> _R:
        try:
            return call()
        except grpc.RpcError as err:
            raise CheckFailed(
                err.code(),
                f"the coordinator at {address} could not complete the check: "
                f"{err.code().name}: {err.details() or '(no details)'}",
            ) from None

    def _audit(
        self,
        epoch_id: str,
        checker: str,
        elements: int,
        outcome: str,
        reason: str | None,
        hits: int | None = None,
    ) -> None:
        self.metrics.check_ended(checker, outcome)
        try:
            self.store.record_check(
                epoch_id, checker, elements, outcome=outcome, reason=reason, hits=hits
            )
        except Exception:  # the audit must not turn a clean refusal into a crash
            log.exception("could not write the audit record of a check in epoch %s", epoch_id)
