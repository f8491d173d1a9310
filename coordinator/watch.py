"""The coordinator's side of early warning on protocol v2 (docs/WATCH.md): epochs, filters, checks.

Rules:
- One epoch at a time. A watch round opens it once every node has stored its delivery; a newer
  watch round replaces it (the previous participants are told to close theirs).
- The coordinator holds no share and no tag. It keeps each holder's signed filter, exactly as
  the holder sent it at Reveal, and passes it on to checkers, who verify the holder's signature
  themselves: a filter the coordinator altered, swapped or emptied is refused by the checker.
- The filters and the epoch persist in the state directory (``<state>.watch/``: ``epoch.json``
  and one ``<node>.filter`` per participant, all 0600), so they survive a coordinator restart;
  the nodes keep their shares meanwhile, so checks resume. An ended epoch's files are deleted.
- A check (node certificates only; the caller's certificate name is the checker) takes two
  calls. ``Check``: the checker's signed requests go to every other committee member at once,
  and their signed answers come back with every other holder's filter. ``Seal``: the checker's
  signed, sealed messages go to each holder they are for (``Alert``). What comes back from a
  holder is empty whatever it found, so the coordinator learns no hit.
- A node keeps its share in memory only: a restart ends it, and partners' checks through that
  node fail. So the hub asks every participant of the open epoch whether it still holds it
  (``EpochState``, every ``poll_seconds``, and at once when a forwarded check fails) and keeps
  what it found (``health``): the epoch is degraded from the moment one node answers that it holds
  no key, or cannot be reached. A node that lost its key never regains it for that epoch; only a
  new epoch heals it, which the scheduler starts under a standing watch order once every node
  answers again (``repairable``; coordinator/schedules.py).

Every decision (which epoch, expiry, whom a check goes to, where a sealed message goes) is the
core's (``blindmatch.core.epoch.RelayEpochs`` and ``EpochRelay``); this module keeps the files
and the calls to nodes: ``WatchHub`` holds them, ``EpochOpener`` is what a watch round's driver
calls to open its epoch through the hub, and ``CheckServicer`` serves checks and counts them
(coordinator/metrics.py).
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TypeVar

import grpc

from blindmatch.core.epoch import EpochRelay, RelayEpochs
from blindmatch.core.errors import ProtocolError
from blindmatch.core.signing import Party, Trust
from blindmatch.core.spec import RoundSpec
from blindmatch.core.watch_rules import DEFAULT_EPOCH_SECONDS, Clock, utc_text
from blindmatch.core.watch_sealed import SignedFilter
from blindmatch.runtime import serde, serde_v2, status
from blindmatch.runtime.hardening import open_private, private_dir
from blindmatch.runtime.net import peer_certificate
from blindmatch.v1 import coordinator_pb2
from blindmatch.v2 import node_pb2, watch_pb2, watch_pb2_grpc
from coordinator.metrics import NO_METRICS, CoordinatorHooks

log = logging.getLogger(__name__)

SERVICE_PREFIX: Final = "/blindmatch.v2.CoordinatorWatchService/"
CLOSE_TIMEOUT: Final = 5.0  # seconds: deadline of each best-effort CloseEpoch
POLL_SECONDS: Final = 5.0  # seconds between asking the open epoch's nodes whether they hold it
STATE_TIMEOUT: Final = 5.0  # seconds: deadline of each EpochState
T = TypeVar("T")


class WatchFailure(status.StatusError):
    """A node refused or failed a watch call; ``code`` is the status to pass on."""


@dataclass(frozen=True, slots=True)
class EpochLoss:
    """A participant of the open epoch that cannot serve it: it said it holds no key (``lost``;
    for good: keys live in memory only), or it did not answer the last poll (``reachable``
    False)."""

    node: str
    since: float  # unix seconds (hub clock) the hub first saw it
    reason: str
    lost: bool
    reachable: bool


@dataclass(frozen=True, slots=True)
class EpochHealth:
    """What the hub knows of its open epoch's participants (``round status``, metrics)."""

    epoch_id: str
    losses: tuple[EpochLoss, ...]  # by node name; empty: every node holds its key

    @property
    def state(self) -> str:
        return "degraded" if self.losses else "open"


class WatchHub:
    """The current epoch, its filters on disk, and the calls to nodes it needs."""

    def __init__(
        self,
        directory: Path,
        channels: Mapping[str, grpc.Channel],
        addresses: Mapping[str, str],
        call_timeout: float,
        clock: Clock = time.time,
    ) -> None:
        self.directory = directory
        self.addresses = dict(addresses)
        self.call_timeout = call_timeout
        self.use_channels(channels)
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="watch")
        self.core = RelayEpochs(clock)
        loaded = self._load()
        if loaded is not None:
            self.core.open(loaded)
        self.poll_seconds = POLL_SECONDS  # tests set it short
        self._losses: dict[str, EpochLoss] = {}  # of the open epoch, under _lock
        self._polled = ""  # the epoch the last complete poll was of
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._poller = threading.Thread(target=self._poll_loop, name="epoch-poll", daemon=True)
        self._poller.start()

    def use_channels(self, channels: Mapping[str, grpc.Channel]) -> None:
        """The channels to the nodes (NodeLinks'), again after a renewed certificate."""
        self._stubs = {n: watch_pb2_grpc.NodeWatchServiceStub(c) for n, c in channels.items()}

    @property
    def epoch(self) -> EpochRelay | None:
        return self.core.epoch

    @property
    def clock(self) -> Clock:
        return self.core.clock

    @clock.setter
    def clock(self, clock: Clock) -> None:  # tests drive time instead of sleeping
        self.core.clock = clock

    @property
    def open_epoch_id(self) -> str | None:
        """The open epoch's id (None: none open)."""
        epoch = self.epoch
        return epoch.epoch_id if epoch is not None and self.epoch_open() else None

    def epoch_open(self) -> bool:
        """Whether an epoch is open now (the metrics ask at every scrape)."""
        # an epoch past its end stays loaded until the next check reaps it; it is not open
        epoch = self.epoch
        return epoch is not None and epoch.closed is None and not epoch.ended(self.clock())

    # --- persistence ------------------------------------------------------------------------

    def _load(self) -> EpochRelay | None:
        meta = self.directory / "epoch.json"
        if not meta.exists():
            return None
        try:
            data = json.loads(meta.read_text())
            participants = tuple(data["participants"])
            filters = {}
            for node in participants:
                msg = node_pb2.SignedFilter.FromString(
                    (self.directory / f"{node}.filter").read_bytes()
                )
                filters[node] = serde_v2.filter_from_proto(msg)
            epoch = EpochRelay(
                data["epoch_id"],
                participants,
                tuple(data["committee"]),
                filters,
                float(data["ends"]),
            )
        except (OSError, ValueError, KeyError, ProtocolError) as exc:
            log.error("watch state in %s is unreadable (%s); the epoch is dropped", meta, exc)
            self._erase()
            return None
        if epoch.ended(self.clock()):
            self._erase()
            return None
        log.info("epoch %s reloaded, ends %s", epoch.epoch_id, utc_text(epoch.ends))
        return epoch

    def _save(self, epoch: EpochRelay) -> None:
        private_dir(self.directory)
        for node, signed in epoch.filters.items():
            # filters test membership of a nation's tags: owner only, like everything here
            self._atomic(
                self.directory / f"{node}.filter",
                serde_v2.filter_to_proto(signed).SerializeToString(),
            )
        data = {
            "epoch_id": epoch.epoch_id,
            "participants": epoch.participants,
            "committee": epoch.committee,
            "ends": epoch.ends,
        }
        # last: epoch.json is what a restart looks for, and it needs the filters beside it
        self._atomic(self.directory / "epoch.json", json.dumps(data).encode())

    @staticmethod
    def _atomic(path: Path, data: bytes) -> None:
        """Write ``data`` to ``path`` at once, owner-only."""
        tmp = path.with_name(path.name + ".tmp")
        with open_private(tmp) as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def _erase(self) -> None:
        if self.directory.is_dir():
            for path in self.directory.iterdir():
                if path.name == "epoch.json" or path.suffix in (".filter", ".tmp"):
                    path.unlink(missing_ok=True)

    def filter_bytes(self) -> dict[str, int]:
        """Bytes on disk of each participant's filter (for benchmarks and status)."""
        epoch = self.epoch
        if epoch is None:
            return {}
        return {n: (self.directory / f"{n}.filter").stat().st_size for n in epoch.filters}

    # --- opening and closing epochs ----------------------------------------------------------

    def epoch_opener(self, spec: RoundSpec) -> EpochOpener:
        """What opens the epoch of watch round ``spec``: the one its spec announced to the nodes."""
        return EpochOpener(self, spec, spec.epoch_seconds or DEFAULT_EPOCH_SECONDS)

    def open_epoch(self, epoch: EpochRelay) -> None:
        """Every node has stored its delivery: keep ``epoch``'s filters, on disk too, and make it
        the current one, closing the one it replaces."""
        with self._lock:
            self._erase()
            self._save(epoch)
            closing = self.core.open(epoch)
            self._losses, self._polled = {}, ""  # a new epoch: every node holds its new key
        log.info("epoch %s open until %s", epoch.epoch_id, utc_text(epoch.ends))
        if closing is not None:
            self._close_on(closing.epoch_id, closing.nodes, closing.reason)

    def _close_on(self, epoch_id: str, nodes: Sequence[str], reason: str) -> None:
        request = watch_pb2.CloseEpochRequest(epoch_id=epoch_id, reason=reason)
        for node in nodes:
            try:
                self._stubs[node].CloseEpoch(request, timeout=CLOSE_TIMEOUT)
            except grpc.RpcError as err:  # best effort: the node ends it at its end time anyway
                log.warning("CloseEpoch on %s: %s", node, err.details())

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        self._pool.shutdown(wait=False, cancel_futures=True)

    # --- the epoch's health: who still holds its key ------------------------------------------

    def _poll_loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.poll_seconds)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self.poll()
            except Exception:  # one bad poll must not end the watching of every later epoch
                if not self._stop.is_set():  # (at close, the pool refuses calls: no news)
                    log.exception("epoch poll failed")

    def poll_now(self) -> None:
        """Ask the nodes at once rather than at the next period (a forwarded check failed)."""
        self._wake.set()

    def poll(self) -> EpochHealth | None:
        """Ask every participant of the open epoch whether it holds it; the epoch's health."""
        epoch = self.epoch
        if epoch is None or not self.epoch_open():
            with self._lock:
                self._losses, self._polled = {}, ""
            return None
        request = watch_pb2.EpochStateRequest(epoch_id=epoch.epoch_id)
        futures = {
            node: self._pool.submit(
                self._call,
                node,
                "say whether it holds the epoch",
                lambda s: s.EpochState(request, timeout=min(STATE_TIMEOUT, self.call_timeout)),
            )
            for node in epoch.participants
        }
        found: dict[str, watch_pb2.EpochStateReply | WatchFailure] = {}
        for node, future in futures.items():
            try:
                found[node] = future.result()
            except WatchFailure as exc:
                found[node] = exc
        now = self.clock()
        with self._lock:
            if self.epoch is not epoch:  # replaced meanwhile: these answers are of the old one
                return self._health()
            for node, got in found.items():
                self._note(epoch.epoch_id, node, got, now)
            self._polled = epoch.epoch_id
            return self._health()

    def _note(
        self,
        epoch_id: str,
        node: str,
        got: watch_pb2.EpochStateReply | WatchFailure,
        now: float,
    ) -> None:
        """Keep what ``node`` answered (under _lock)."""
        old = self._losses.get(node)
        if isinstance(got, watch_pb2.EpochStateReply) and got.held:
            if old is not None and not old.lost:
                del self._losses[node]
                log.info("epoch %s: %s is back and holds its key", epoch_id, node)
            return
        since = old.since if old is not None else now
        if isinstance(got, WatchFailure):
            if old is not None and old.lost:  # its key is gone either way
                self._losses[node] = EpochLoss(node, since, old.reason, True, False)
                return
            loss = EpochLoss(node, since, f"unreachable: {got}", False, False)
        else:
            other = f" (it holds epoch {got.current})" if got.current else ""
            loss = EpochLoss(
                node,
                since,
                f"holds no key for epoch {epoch_id}{other}: a node restart ends its share",
                True,
                True,
            )
        if old is None or old.lost != loss.lost:
            log.warning("epoch %s degraded: %s %s", epoch_id, node, loss.reason)
        self._losses[node] = loss

    def _health(self) -> EpochHealth | None:
        epoch = self.epoch
        if epoch is None or not self.epoch_open():
            return None
        return EpochHealth(epoch.epoch_id, tuple(self._losses[n] for n in sorted(self._losses)))

    def health(self) -> EpochHealth | None:
        """The open epoch's health as last polled (None: no epoch open)."""
        with self._lock:
            return self._health()

    def degraded_count(self) -> int:
        """Participants of the open epoch that cannot serve it (the metrics ask at every
        scrape)."""
        health = self.health()
        return 0 if health is None else len(health.losses)

    def repairable(self, epoch_id: str) -> bool:
        """Whether a new epoch would heal ``epoch_id``: it is the open one, a node lost its key,
        and every participant answered the last poll (reachable and serving)."""
        with self._lock:
            health = self._health()
            return (
                health is not None
                and health.epoch_id == epoch_id == self._polled
                and any(loss.lost for loss in health.losses)
                and all(loss.reachable for loss in health.losses)
            )

    def _current(self, epoch_id: str) -> EpochRelay:
        with self._lock:
            if self.core.expire() is not None:
                self._erase()
            return self.core.epoch_of(epoch_id)

    # --- checks -----------------------------------------------------------------------------

    def check(self, checker: Party, request: watch_pb2.CheckRequests) -> watch_pb2.CheckReply:
        """The first call of a check: its requests, once verified as the caller's own, to every
        other member at once; their signed answers back, and every other holder's filter when
        the checker asks for them."""
        signed = [serde_v2.request_from_proto(r) for r in request.requests]
        epoch = self._current(request.epoch_id)
        members = epoch.members_for(checker.identity.name, signed, checker)
        futures: dict[str, Future[watch_pb2.CheckAnswers]] = {
            member: self._pool.submit(
                self._call,
                member,
                "answer the check",
                lambda s: s.EvaluateCheck(request, timeout=self.call_timeout),
            )
            for member in members
        }
        answers: list[node_pb2.SignedAnswer] = []
        problems: list[WatchFailure] = []
        for member, future in futures.items():
            try:
                got = future.result()
            except WatchFailure as exc:
                problems.append(exc)
                continue
            if len(got.answers) != len(signed):
                raise WatchFailure(
                    grpc.StatusCode.DATA_LOSS,
                    f"{member} answered {len(got.answers)} of the check's {len(signed)} requests",
                )
            answers.extend(got.answers)
        if problems:
            # a member that holds no key (it restarted) or is gone degrades the epoch: see now
            self.poll_now()
            # the first refusal names its code; every one is in the message
            raise WatchFailure(problems[0].code, "; ".join(str(p) for p in problems))
        return watch_pb2.CheckReply(
            answers=answers,
            filters=[
                serde_v2.filter_to_proto(f)
                for f in epoch.filters_for(checker.identity.name).values()
            ]
            if request.want_filters
            else [],
            epoch_ends=epoch.ends,
        )

    def seal(self, checker: Party, request: watch_pb2.SealedMessages) -> watch_pb2.SealReply:
        """The second call: each holder its own sealed messages (verified as the caller's), in
        parallel. A holder that cannot be reached is logged and skipped: the checker already
        holds its result."""
        messages = serde_v2.sealed_from_proto(request)
        epoch = self._current(request.epoch_id)
        by_holder = epoch.by_holder(checker.identity.name, messages, checker)
        futures = {
            holder: self._pool.submit(
                self._call,
                holder,
                "take its sealed messages",
                lambda s, m=msgs: s.Alert(
                    serde_v2.sealed_to_proto(epoch.epoch_id, m), timeout=self.call_timeout
                ),
            )
            for holder, msgs in by_holder.items()
        }
        for future in futures.values():
            try:
                future.result()
            except WatchFailure as exc:
                log.warning("epoch %s: %s's check: %s", epoch.epoch_id, checker, exc)
        return watch_pb2.SealReply()

    def _call(self, node: str, what: str, call: Callable[[Any], T]) -> T:
        try:
            return call(self._stubs[node])
        except grpc.RpcError as err:
            code = err.code()
            details = err.details() or "(no details)"
            if code == grpc.StatusCode.UNAVAILABLE:
                details = f"unreachable at {self.addresses.get(node, '?')}: {details}"
            raise WatchFailure(code, f"{node} could not {what}: {code.name}: {details}") from None


class EpochOpener:
    """What a watch round adds to a pairwise round, called by its driver: the epoch it opens."""

    def __init__(self, hub: WatchHub, spec: RoundSpec, epoch_seconds: float) -> None:
        self.hub = hub
        self.spec = spec
        self.epoch_seconds = epoch_seconds

    def after_deliver(self, committee: Sequence[str], filters: Mapping[str, SignedFilter]) -> None:
        """Every node has stored its delivery, and so opened its epoch: open the coordinator's."""
        ends = self.hub.clock() + self.epoch_seconds
        epoch = EpochRelay(self.spec.round_id, self.spec.participants, committee, filters, ends)
        self.hub.open_epoch(epoch)


class CheckServicer(watch_pb2_grpc.CoordinatorWatchServiceServicer):
    def __init__(
        self, hub: WatchHub, trust: Trust | None, metrics: CoordinatorHooks = NO_METRICS
    ) -> None:
        self.hub = hub
        self.trust = trust  # the federation CA; None when serving plaintext (no checks then)
        self.metrics = metrics

    def Check(
        self, request: watch_pb2.CheckRequests, context: grpc.ServicerContext
    ) -> watch_pb2.CheckReply:
        def route(checker: Party) -> watch_pb2.CheckReply:
            reply = self.hub.check(checker, request)
            self.metrics.check_routed(checker.identity.name)
            return reply

        return self._as_checker(context, route)

    def Seal(
        self, request: watch_pb2.SealedMessages, context: grpc.ServicerContext
    ) -> watch_pb2.SealReply:
        return self._as_checker(context, lambda checker: self.hub.seal(checker, request))

    def _as_checker(self, context: grpc.ServicerContext, handle: Callable[[Party], T]) -> T:
        """``handle`` for the node whose certificate the caller presented; its errors as
        statuses. (How many checks are in flight is capped before this, by the server's gate.)"""
        with status.refusing(context, ProtocolError, WatchFailure):
            return handle(self._checker(context))
        raise AssertionError("unreachable")  # refusing() aborts

    def _checker(self, context: grpc.ServicerContext) -> Party:
        """The caller, as the party whose signature its check must carry."""
        pem = peer_certificate(context)
        if self.trust is None or pem is None:
            raise WatchFailure(
                grpc.StatusCode.UNAUTHENTICATED,
                "checks need mTLS: the checker is the node named in its certificate",
            )
        now = datetime.datetime.fromtimestamp(self.hub.clock(), datetime.UTC)
        return self.trust.party(pem, now=now, role="node", names=None)


def access_rules() -> dict[str, list[tuple[str, str | None]]]:
    return {SERVICE_PREFIX: [("node", None)]}


def round_info(hub: WatchHub | None, record: serde.RoundView) -> coordinator_pb2.RoundInfo:
    """What RoundInfo shows of ``record``, and of its epoch when it is the open one: every
    round's status tells an operator whether early warning works (a node restart degrades it)."""
    health = None if hub is None else hub.health()
    if health is None or health.epoch_id != record.id:
        return serde.round_to_proto(record)
    return serde.round_to_proto(record, health.state, health.losses)
