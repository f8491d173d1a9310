"""The node's side of early warning on protocol v2 (docs/WATCH.md): its epoch, checks and alerts.

The epoch (``blindmatch.core.epoch.WatchEpoch``: the node's share when it is a committee member,
its own epoch tags and the transcript) lives in this process's memory only. It opens when the
node stores the delivery of a watch round (``opened``, called by the round registry with what
the round hands over) and ends at its end time, when the coordinator closes it, when a new watch
round replaces it, when the round is aborted after its delivery, or when the node stops: a node
restart ends its epoch, and checks through it are refused until the next watch round.

What this node lets each partner ask for its checks in an epoch is announced at Prepare
(``check_caps``: node.toml ``check_budget`` for every partner; a node joins only rounds whose
partners its policy allows) and charged to that partner's rolling budget at Begin, with its set: a refused
round costs nothing, and no check needs a budget charge of its own.

Every decision (who may ask what, the caps, the verification of answers and filters, what a
sealed message says) is the core's (``core.epoch``, ``core.checker``); this module keeps the lock,
the store, the node's federation key and the calls.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import grpc
import numpy as np

from blindmatch.core.canon import InvalidIndicator, canonicalize
from blindmatch.core.committee import Handover
from blindmatch.core.epoch import WatchEpoch
from blindmatch.core.errors import BadMessage, ForgedMessage, ProtocolError, WrongPhase
from blindmatch.core.identity import Identity
from blindmatch.core.oprf import hash_indicator
from blindmatch.core.round_node import Ids
from blindmatch.core.secp256k1 import Point, point_from_bytes
from blindmatch.core.signing import Signer, Signs
from blindmatch.core.spec import Policy, RoundSpec
from blindmatch.core.states import Outcome
from blindmatch.core.watch_rules import (
    MAX_CHECK_VALUES,
    Clock,
    WatchSettings,
    shares_with,
    utc_text,
)
from blindmatch.runtime import net, serde_v2, status
from blindmatch.v2 import watch_pb2, watch_pb2_grpc
from node.metrics import NO_METRICS, NodeHooks
from node.store import Store

log = logging.getLogger("blindmatch.node.watch")

SERVICE_PREFIX = "/blindmatch.v2.NodeWatchService/"
CHECK_METHOD = SERVICE_PREFIX + "Check"
COORDINATOR_CALL_TIMEOUT = 120.0  # seconds for one call of a check at the coordinator

_R = TypeVar("_R")


class CheckFailed(status.StatusError):
    """The coordinator could not complete a check; carries its status code."""


def access_rules(
    node_name: str, coordinator: str, check_clients: Sequence[tuple[str, str]] = ()
) -> dict[str, list[tuple[str, str | None]]]:
    """Check for this node's own certificate and the checker certificates node.toml names
    (``[watch] check_clients``); the rest for its coordinator.

    Only checkers: an operator starts rounds and must not also learn who holds what, and a
    checker certificate can do nothing but Check. node.config refuses other roles with advice;
    this holds for settings built any other way too.
    """
    others = sorted({f"{role}/{name}" for role, name in check_clients if role != "checker"})
    if others:
        raise ValueError(
            f"check clients must be checker certificates, not {', '.join(others)} "
            "(node.toml [watch] check_clients)"
        )
    clients: list[tuple[str, str | None]] = [(role, name) for role, name in check_clients]
    return {
        SERVICE_PREFIX: [("coordinator", coordinator)],
        CHECK_METHOD: [("node", node_name), *clients],
    }


@dataclass
class CheckedValue:
    value: str  # as given
    kind: str = ""
    canonical: str = ""
    partners: list[str] = field(default_factory=list)
    error: str = ""  # why it was not checked, if it was not


def plan_check(
    values: Sequence[str], kind: str, kinds: frozenset[str]
) -> tuple[list[CheckedValue], list[int]]:
    """Each value canonicalised (or refused, with why), and the indexes of those to check: the
    valid ones of a kind this node's policy allows."""
    if not values:
        raise BadMessage("no values to check")
    if len(values) > MAX_CHECK_VALUES:
        raise BadMessage(f"{len(values)} values in one check; at most {MAX_CHECK_VALUES}")
    kind = kind or "auto"
    results: list[CheckedValue] = []
    checked: list[int] = []
    for value in values:
        result = CheckedValue(value)
        try:
            ind = canonicalize(kind, value)
        except InvalidIndicator as exc:
            result.error = str(exc)
        else:
            result.kind, result.canonical = ind.kind, ind.value
            if ind.kind in kinds:
                checked.append(len(results))
            else:
                result.error = f"kind {ind.kind} is outside this node's policy (policy.kinds)"
        results.append(result)
    return results, checked


class NodeWatch(watch_pb2_grpc.NodeWatchServiceServicer):
    def __init__(
        self,
        *,
        name: str,
        store: Store,
        policy: Policy,
        budget: int,
        coordinator: str,
        coordinator_address: str,
        tls: net.TlsConfig | None,
        settings: WatchSettings | None = None,
        clock: Clock = time.time,
        metrics: NodeHooks = NO_METRICS,
    ) -> None:
        self.name = name
        self.coordinator = coordinator  # its certificate name (node.toml ``coordinator``)
        self.store = store
        self.policy = policy
        self.budget = budget  # evaluations each partner may ask for its checks, per epoch
        self.settings = settings or WatchSettings()
        self.clock = clock  # tests drive time instead of sleeping
        self.metrics = metrics  # node/metrics.py when [metrics] is on
        self._tls = tls
        # Checks are signed, and sealed messages opened, with the node's federation key:
        # without mTLS there is none, and no checks.
        self._signer = None if tls is None else Signer(tls.cert, tls.key)
        self._channel: grpc.Channel | None = None
        self._coordinator_address = ""
        self._lock = threading.Lock()  # the epoch in place, its ids, the channel
        self._answering = threading.Lock()  # a member's ledger, partners' checks
        self._checking = threading.Lock()  # this node's own checks: seqs and kept filters
        self.epoch: WatchEpoch | None = None
        self._ids: Ids | None = None  # the epoch's set: position -> sighting id
        self._stop = threading.Event()
        self.connect_coordinator(coordinator_address)
        self._reaper = threading.Thread(target=self._reap, name="epoch-reaper", daemon=True)
        self._reaper.start()

    def renew(self, tls: net.TlsConfig) -> None:
        """A renewed certificate for the same key (``RunningNode.reload_certificate``): checks
        sign with it, and the channel to the coordinator is opened again presenting it."""
        with self._lock:
            self._tls = tls
            self._signer = Signer(tls.cert, tls.key)
            address = self._coordinator_address
        self.connect_coordinator(address)

    def connect_coordinator(self, address: str) -> None:
        """Where checks go (node.toml ``coordinator_address``)."""
        with self._lock:
            old, self._channel = self._channel, None
            self._coordinator_address = address
            if address:
                self._channel = net.open_channel(
                    address,
                    self._tls,
                    insecure=self._tls is None,
                    # the coordinator node.toml names, not any holder of the role: another
                    # coordinator certificate would see this node's checks
                    expect=Identity("coordinator", self.coordinator),
                )
        if old is not None:
            old.close()

    # --- the epoch, as the round registry opens and ends it ------------------------------------

    def admit(self, spec: RoundSpec) -> None:
        """At Prepare: refuse a watch round node.toml's ``[watch]`` does not allow."""
        self.settings.admit(spec, self.name)

    def check_caps(self, spec: RoundSpec) -> dict[str, int]:
        """What this node announces at Prepare: each partner may ask for ``check_budget``
        evaluations in the epoch. (A partner the policy does not share with is no partner: the
        round was refused before this.)"""
        return {p: self.budget for p in spec.participants if p != self.name}

    def opened(
        self, spec: RoundSpec, handed: Handover, ids: Ids, coordinator: str, signer: Signs
    ) -> None:
        """The watch round's delivery is stored: its epoch opens, replacing any other, once its
        audit record is written. It ends ``epoch_seconds`` (signed, and within ``max_epoch``) after
        now by this node's clock, or earlier: nothing the coordinator sends makes it later.

        Raises (the share destroyed) when the audit record cannot be written: a key the audit
        does not show must not exist."""
        epoch = WatchEpoch(self.name, handed, signer, self.clock() + spec.epoch_seconds)
        try:
            self.store.record_epoch(
                epoch.epoch_id,
                ends=utc_text(epoch.ends),
                coordinator=coordinator,
                participants=epoch.participants,
                tags=epoch.tag_count,
            )
        except Exception:
            epoch.close("its audit record could not be written")
            raise
        with self._lock:
            old, self.epoch = self.epoch, epoch
            self._ids = ids
        if old is not None:
            self._close(old, f"replaced by epoch {epoch.epoch_id}")
        log.info("epoch %s: share and tags kept until %s", epoch.epoch_id, utc_text(epoch.ends))

    def round_ended(self, round_id: str, outcome: str, reason: str | None) -> None:
        """Every end of a round (the registry's hook): any end but a stored delivery closes
        the epoch of that round, if it opened (an Abort after this node's delivery)."""
        if outcome == Outcome.DONE:
            return
        with self._lock:
            epoch = self.epoch if self.epoch and self.epoch.epoch_id == round_id else None
        if epoch is not None:
            self._close(epoch, f"watch round {round_id} {outcome}: {reason or outcome}")

    def _close(self, epoch: WatchEpoch, reason: str) -> None:
        with self._lock:
            closed = epoch.close(reason)
            if self.epoch is epoch:
                self.epoch, self._ids = None, None
        if closed:
            log.info("epoch %s closed: %s", epoch.epoch_id, reason)
            try:
                self.store.close_epoch(epoch.epoch_id, reason)
            except Exception:  # the share is gone either way; only the audit line is missing
                log.exception("could not record the end of epoch %s", epoch.epoch_id)

    def _reap(self) -> None:
        while not self._stop.wait(0.2):
            self.expire()

    def expire(self) -> None:
        """One pass of the reaper: end the epoch at its end time."""
        with self._lock:
            epoch = self.epoch
        if epoch is not None and epoch.expired(self.clock()):
            self._close(epoch, f"ended at {utc_text(epoch.ends)}")

    def close(self) -> None:
        self._stop.set()
        with self._lock:
            epoch = self.epoch
            channel, self._channel = self._channel, None
        if epoch is not None:
            self._close(epoch, "node stopped")
        if channel is not None:
            channel.close()

    def _current(self, epoch_id: str) -> WatchEpoch:
        epoch = self.epoch
        if epoch is None or epoch.epoch_id != epoch_id:
            have = f"its epoch is {epoch.epoch_id}" if epoch else "it has no open epoch"
            raise WrongPhase(f"node {self.name} has no epoch {epoch_id!r} ({have})")
        return epoch

    # --- RPCs from the coordinator ---------------------------------------------------------------

    def EvaluateCheck(
        self, request: watch_pb2.CheckRequests, context: grpc.ServicerContext
    ) -> watch_pb2.CheckAnswers:
        checker, count = "", 0
        try:
            signed = [serde_v2.request_from_proto(r) for r in request.requests]
            if not signed:
                raise BadMessage("a check carries at least one request")
            checker = signed[0].request.requester
            count = sum(s.request.count for s in signed)
            with self._lock:
                epoch = self._current(request.epoch_id)
            # One answer at a time, so the ledger's caps hold across calls; not under the
            # node's lock, which the reaper, alerts and the node's own checks also take.
            with self._answering:
                before = epoch.charged(checker)
                answers = [epoch.answer(s, self.clock()) for s in signed]
                charged = epoch.charged(checker) - before
        except ProtocolError as exc:
            self._audit(request.epoch_id, checker or "?", count, Outcome.REFUSED, str(exc))
            status.abort(context, exc)
        if charged:  # a repeat is answered again for free, and not audited twice
            self._audit(request.epoch_id, checker, charged, Outcome.DONE, None)
        return watch_pb2.CheckAnswers(answers=[serde_v2.answer_to_proto(a) for a in answers])

    def Alert(
        self, request: watch_pb2.SealedMessages, context: grpc.ServicerContext
    ) -> watch_pb2.AlertReply:
        with status.refusing(context, ProtocolError):
            messages = serde_v2.sealed_from_proto(request)
            if self._tls is None:
                raise WrongPhase(f"node {self.name} runs without mTLS: it opens no alert")
            with self._lock:
                epoch = self._current(request.epoch_id)
                found = epoch.alerts(messages, self._tls.key, self.clock())
                ids = self._ids
            assert ids is not None
        if found:
            rows = self.store.rows_by_id(ids[np.array([a.position for a in found])])
            alerts = [
                (row[1], row[2], a.checker, "sighted") for row, a in zip(rows, found, strict=True)
            ]
            self.store.record_alerts(request.epoch_id, alerts)
            for kind, value, checker, _ in alerts:
                log.warning("alert: %s has now sighted your %s %s", checker, kind, value)
        # Whatever was found, the same empty reply: the coordinator learns no hit.
        return watch_pb2.AlertReply()

    def CloseEpoch(
        self, request: watch_pb2.CloseEpochRequest, context: grpc.ServicerContext
    ) -> watch_pb2.CloseEpochReply:
        with self._lock:
            epoch = self.epoch if self.epoch and self.epoch.epoch_id == request.epoch_id else None
        if epoch is None:
            return watch_pb2.CloseEpochReply(known=False)
        self._close(epoch, request.reason or "closed by the coordinator")
        return watch_pb2.CloseEpochReply(known=True)

    def EpochState(
        self, request: watch_pb2.EpochStateRequest, context: grpc.ServicerContext
    ) -> watch_pb2.EpochStateReply:
        """Whether this node holds the epoch's share and tags: the coordinator polls it, since a
        restart ends them without a word to anyone (it tells nothing a Check would not)."""
        with self._lock:
            epoch = self.epoch
        if epoch is not None and epoch.expired(self.clock()):
            epoch = None  # past its end: the reaper is about to close it
        if epoch is None:
            return watch_pb2.EpochStateReply()
        if epoch.epoch_id != request.epoch_id:
            return watch_pb2.EpochStateReply(current=epoch.epoch_id)
        return watch_pb2.EpochStateReply(held=True, ends=epoch.ends, current=epoch.epoch_id)

    # --- a check of this node's own sightings ----------------------------------------------------

    def Check(
        self, request: watch_pb2.NodeCheckRequest, context: grpc.ServicerContext
    ) -> watch_pb2.NodeCheckReply:
        with status.refusing(context, ProtocolError):
            results, checked = plan_check(list(request.values), request.kind, self.policy.kinds)
        reply = watch_pb2.NodeCheckReply()
        epoch = self.epoch
        if checked:
            items = [(results[i].kind, results[i].canonical) for i in checked]
            try:
                epoch, hits = self.metrics.timed_check(self._check, items)
            except (ProtocolError, CheckFailed) as exc:
                eid = epoch.epoch_id if epoch else ""
                self._audit(eid, self.name, len(items), Outcome.FAILED, str(exc))
                status.abort(context, exc)
            alerts = []
            for holder, positions in sorted(hits.items()):
                for j in positions:
                    result = results[checked[j]]
                    result.partners.append(holder)
                    alerts.append((result.kind, result.canonical, holder, "check"))
            if alerts:
                self.store.record_alerts(epoch.epoch_id, alerts)
            found = sum(1 for i in checked if results[i].partners)
            self._audit(epoch.epoch_id, self.name, len(items), Outcome.DONE, None, hits=found)
            reply.epoch_id, reply.epoch_ends = epoch.epoch_id, epoch.ends
        reply.results.extend(
            watch_pb2.ValueResult(
                value=r.value,
                kind=r.kind,
                canonical=r.canonical,
                partners=r.partners,
                error=r.error,
            )
            for r in results
        )
        return reply

    def _check(self, items: Sequence[tuple[str, str]]) -> tuple[WatchEpoch, dict[str, list[int]]]:
        """Evaluate, verify, test the filters and seal: the epoch and each holder's hits."""
        with self._lock:
            channel, address, epoch = self._channel, self._coordinator_address, self.epoch
        if epoch is None:
            raise WrongPhase(
                f"node {self.name} has no watch epoch (none started, or it ended or the node "
                "restarted); an operator starts one with `blindmatch round start --mode watch`"
            )
        if channel is None:
            raise WrongPhase(
                f"node {self.name} has no coordinator_address in its node.toml; add "
                'coordinator_address = "host:port" to check values'
            )
        if self._signer is None:
            raise WrongPhase(f"node {self.name} runs without mTLS: it has no key to sign checks")
        hashes = self._hashes(items)
        with self._checking:  # its seqs are the epoch's, one check at a time
            check, requests = epoch.check(hashes, [k for k, _ in items], self.clock())
        stub = watch_pb2_grpc.CoordinatorWatchServiceStub(channel)
        asked = watch_pb2.CheckRequests(
            epoch_id=epoch.epoch_id,
            requests=[serde_v2.request_to_proto(r) for r in requests],
            want_filters=epoch.needs_filters,
        )
        reply: watch_pb2.CheckReply = self._ask(
            address, lambda: stub.Check(asked, timeout=COORDINATOR_CALL_TIMEOUT)
        )
        answers = [serde_v2.answer_from_proto(a) for a in reply.answers]
        filters = {}
        for msg in reply.filters:
            signed = serde_v2.filter_from_proto(msg)
            if signed.filter.holder in filters:
                raise ForgedMessage(f"two filters of {signed.filter.holder} came with a check")
            filters[signed.filter.holder] = signed
        epoch.verified_tags(check, answers)
        with self._checking:  # the filters it keeps for the epoch
            hits = epoch.hits(check, filters, lambda holder: shares_with(self.policy, holder))
        sealed = serde_v2.sealed_to_proto(epoch.epoch_id, epoch.sealed(check))
        self._ask(address, lambda: stub.Seal(sealed, timeout=COORDINATOR_CALL_TIMEOUT))
        return epoch, hits

    def _hashes(self, items: Sequence[tuple[str, str]]) -> list[Point]:
        """H(v) of each item: the store's where it has the value hashed, computed otherwise."""
        stored = self.store.stored_hashes(items)
        return [
            point_from_bytes(h) if h is not None else hash_indicator(kind, value)
            for (kind, value), h in zip(items, stored, strict=True)
        ]

    def _ask(self, address: str, call: Callable[[], _R]) -> _R:
        try:
            return call()
        except grpc.RpcError as err:
            hint = ""
            if err.code() == grpc.StatusCode.UNAVAILABLE:
                hint = (
                    f" (is it running, and does its certificate name it {self.coordinator!r}, "
                    "the coordinator node.toml names? no other is accepted)"
                )
            raise CheckFailed(
                err.code(),
                f"the coordinator at {address} could not complete the check: "
                f"{err.code().name}: {err.details() or '(no details)'}{hint}",
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
        # every check answered or made here, as the audit has it: counts only, never a value
        log.info(
            "epoch %s: check by %s of %d elements %s%s",
            epoch_id or "(none)",
            checker,
            elements,
            outcome,
            f": {reason}" if reason else ("" if hits is None else f", {hits} hit(s)"),
        )
        self.metrics.check_ended(checker, outcome)
        try:
            self.store.record_check(
                epoch_id, checker, elements, outcome=outcome, reason=reason, hits=hits
            )
        except Exception:  # the audit must not turn a clean refusal into a crash
            log.exception("could not write the audit record of a check in epoch %s", epoch_id)
