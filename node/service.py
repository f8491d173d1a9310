"""The node's gRPC service: a thin shell around ``blindmatch.protocol.NodeRound``.

Protobuf messages stop here: this module converts them to core types and maps core errors to
status codes in one place (``_refuse``). Hashing and blinding run in a process pool
(``Blinder``), so gRPC handler threads, health checks and other rounds stay responsive while a
round is blinding, and a round uses every core.
"""

from __future__ import annotations

import collections
import logging
import queue
import re
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from typing import NoReturn

import grpc

from blindmatch import group, net
from blindmatch.group import InvalidElement
from blindmatch.match import CountResult, Delivery, PairwiseResult, ThresholdResult
from blindmatch.protocol import (
    BadMessage,
    NodeRound,
    Policy,
    ProtocolError,
    RoundSpec,
    UnknownRound,
    WrongPhase,
)
from blindmatch.v1 import node_pb2, node_pb2_grpc, watch_pb2_grpc
from node.config import NodeConfig
from node.store import RoundAudit, Store, utc_now
from node.watch import NodeWatch
from node.watch import access_rules as watch_access_rules

log = logging.getLogger("blindmatch.node")

_ROUND_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


class Blinder:
    """A pool of worker processes that hash and blind chunks.

    Workers are spawned (not forked: forking a process that runs gRPC threads is unsafe) and get
    the round key with each task through a pipe; it never touches the disk.
    """

    def __init__(self, workers: int) -> None:
        self.workers = max(1, workers)
        self._pool = ProcessPoolExecutor(self.workers, mp_context=get_context("spawn"))

    def warm_up(self) -> None:
        key = group.RoundKey.generate()
        futures = [
            self._pool.submit(group.hash_and_blind_packed, key.export(), [("domain", "a.example")])
            for _ in range(self.workers)
        ]
        for f in futures:
            f.result()

    def blind(self, key: bytes, packed: bytes) -> Future[bytes]:
        return self._pool.submit(group.blind_packed, key, packed)

    def hash_and_blind(self, key: bytes, items: list[tuple[str, str]]) -> Future[bytes]:
        return self._pool.submit(group.hash_and_blind_packed, key, items)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


@dataclass
class _Live:
    state: NodeRound
    coordinator: str
    started: str
    timeout: float
    deadline: float
    lock: threading.Lock = field(default_factory=threading.Lock)


def _refuse(context: grpc.ServicerContext, exc: Exception) -> NoReturn:
    """The one place core errors become gRPC statuses."""
    if isinstance(exc, ProtocolError):
        code = getattr(grpc.StatusCode, exc.code)
    elif isinstance(exc, InvalidElement | ValueError):
        code = grpc.StatusCode.INVALID_ARGUMENT
    else:
        code = grpc.StatusCode.INTERNAL
    context.abort(code, str(exc))
    raise AssertionError("unreachable")  # context.abort raises


def spec_from_proto(msg: node_pb2.RoundSpec) -> RoundSpec:
    if not _ROUND_ID.fullmatch(msg.round_id):
        raise BadMessage("round_id must be 1-64 characters of letters, digits, '-' or '_'")
    return RoundSpec(
        round_id=msg.round_id,
        participants=tuple(msg.participants),
        mode=msg.mode or "pairwise",
        threshold=msg.threshold if msg.mode == "threshold" else None,
        kinds=tuple(msg.kinds),
        chunk_size=msg.chunk_size,
    )


def delivery_from_proto(msg: node_pb2.DeliverRequest, spec: RoundSpec) -> Delivery:
    which = msg.WhichOneof("result")
    if which == "pairwise":
        if len(msg.pairwise.positions) != len(msg.pairwise.partners):
            raise BadMessage("pairwise delivery: one partner list per position is required")
        return PairwiseResult(
            tuple(msg.pairwise.positions),
            tuple(tuple(p.partners) for p in msg.pairwise.partners),
        )
    if which == "threshold":
        if len(msg.threshold.positions) != len(msg.threshold.counts):
            raise BadMessage("threshold delivery: one count per position is required")
        return ThresholdResult(tuple(msg.threshold.positions), tuple(msg.threshold.counts))
    if which == "count":
        return CountResult({spec.index(name): n for name, n in msg.count.shared.items()})
    raise BadMessage("delivery carries no result")


class NodeServicer(node_pb2_grpc.NodeServiceServicer):
    def __init__(
        self,
        *,
        name: str,
        store: Store,
        policy: Policy,
        tlps: tuple[str, ...],
        blinder: Blinder,
        round_timeout: float,
    ) -> None:
        self.name = name
        self.store = store
        self.policy = policy
        self.tlps = tlps
        self.blinder = blinder
        self.round_timeout = round_timeout
        self._rounds: dict[str, _Live] = {}
        self.watch: NodeWatch | None = None  # early warning: keeps a watch round's key (issue 6)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._reaper = threading.Thread(target=self._reap, name="round-reaper", daemon=True)
        self._reaper.start()

    # --- round registry -----------------------------------------------------------------------

    def active_rounds(self) -> list[str]:
        with self._lock:
            return list(self._rounds)

    def _get(self, round_id: str) -> _Live:
        with self._lock:
            live = self._rounds.get(round_id)
        if live is None:
            raise UnknownRound(
                f"no round {round_id!r} on this node (finished, aborted or never prepared)"
            )
        live.deadline = time.monotonic() + live.timeout
        return live

    def _end(self, live: _Live, outcome: str, reason: str | None) -> None:
        """Drop a round: key destroyed, audit written. Safe to call twice."""
        with self._lock:
            if self._rounds.get(live.state.spec.round_id) is not live:
                return
            del self._rounds[live.state.spec.round_id]
        state = live.state
        if outcome != "done":
            state.abort(reason or outcome)
        self._audit(live, outcome, reason)

    def _audit(self, live: _Live, outcome: str, reason: str | None) -> None:
        spec = live.state.spec
        try:
            self.store.record_round(
                spec.round_id,
                started=live.started,
                coordinator=live.coordinator,
                participants=spec.participants,
                mode=spec.mode,
                threshold=spec.threshold,
                kinds=spec.kinds,
                own_size=live.state.size,
                blinded_for=live.state.blinded_for,
                outcome=outcome,
                reason=reason,
                finished=None if outcome == "started" else utc_now(),
            )
        except Exception:  # the audit must not turn a clean refusal into a crash
            log.exception("could not write the audit record of round %s", spec.round_id)

    def _reap(self) -> None:
        while not self._stop.wait(0.5):
            now = time.monotonic()
            with self._lock:
                expired = [live for live in self._rounds.values() if live.deadline < now]
            for live in expired:
                log.warning("round %s: coordinator silent; dropping it", live.state.spec.round_id)
                self._end(
                    live,
                    "failed",
                    f"timed out: no word from the coordinator for {live.timeout:.0f} s",
                )

    def shutdown(self) -> None:
        self._stop.set()
        with self._lock:
            lives = list(self._rounds.values())
        for live in lives:
            self._end(live, "aborted", "node shut down")

    # --- RPCs ---------------------------------------------------------------------------------

    def Prepare(
        self, request: node_pb2.PrepareRequest, context: grpc.ServicerContext
    ) -> node_pb2.PrepareReply:
        caller = net.peer_identity(context)
        try:
            spec = spec_from_proto(request.spec)
        except ProtocolError as exc:
            _refuse(context, exc)
        with self._lock:
            if spec.round_id in self._rounds:
                context.abort(
                    grpc.StatusCode.ALREADY_EXISTS, f"round {spec.round_id} is already prepared"
                )
        if any(r.round_id == spec.round_id for r in self.store.rounds()):
            # A replayed id must not overwrite the audit record of the round that used it.
            context.abort(
                grpc.StatusCode.ALREADY_EXISTS,
                f"round {spec.round_id} is already in this node's audit log; round ids are used once",
            )
        kinds = set(spec.kinds) & self.policy.kinds
        candidates = self.store.eligible(kinds, self.tlps)
        timeout = self.round_timeout
        if request.timeout_seconds > 0:
            timeout = min(timeout, request.timeout_seconds)
        try:
            state = NodeRound(spec, self.name, self.policy, candidates)
        except ProtocolError as exc:
            self.store.record_round(
                spec.round_id,
                started=utc_now(),
                coordinator=caller.name if caller else "(insecure)",
                participants=spec.participants,
                mode=spec.mode,
                threshold=spec.threshold,
                kinds=spec.kinds,
                own_size=0,
                outcome="refused",
                reason=str(exc),
                finished=utc_now(),
            )
            _refuse(context, exc)
        live = _Live(
            state=state,
            coordinator=caller.name if caller else "(insecure)",
            started=utc_now(),
            timeout=timeout,
            deadline=time.monotonic() + timeout,
        )
        with self._lock:
            if spec.round_id in self._rounds:
                state.abort("duplicate prepare")
                context.abort(
                    grpc.StatusCode.ALREADY_EXISTS, f"round {spec.round_id} is already prepared"
                )
            self._rounds[spec.round_id] = live
        self._audit(live, "started", None)
        log.info(
            "round %s prepared: %d indicators, partners %s",
            spec.round_id,
            state.size,
            spec.participants,
        )
        return node_pb2.PrepareReply(size=state.size)

    def OwnSet(
        self, request: node_pb2.RoundRef, context: grpc.ServicerContext
    ) -> Iterator[node_pb2.Chunk]:
        try:
            live = self._get(request.round_id)
            live.state.live_key()
            batches = live.state.own_batches()
        except ProtocolError as exc:
            _refuse(context, exc)
        window: collections.deque[Future[bytes]] = collections.deque()
        seq = 0
        try:
            for batch in batches:
                # Exported per batch: a stalled stream must not keep the key alive in this frame.
                window.append(self.blinder.hash_and_blind(live.state.live_key().export(), batch))
                while len(window) > self.blinder.workers * 2:
                    yield self._own_chunk(live, seq, window.popleft())
                    seq += 1
            while window:
                yield self._own_chunk(live, seq, window.popleft())
                seq += 1
        except WrongPhase as exc:
            _refuse(context, exc)
        finally:
            for f in window:
                f.cancel()

    def _own_chunk(self, live: _Live, seq: int, future: Future[bytes]) -> node_pb2.Chunk:
        elements = future.result()
        live.deadline = time.monotonic() + live.timeout
        if live.state.key is None:
            raise WrongPhase(f"round {live.state.spec.round_id} ended while its set was streaming")
        return node_pb2.Chunk(owner=self.name, seq=seq, elements=elements)

    def Reblind(
        self, request_iterator: Iterator[node_pb2.ReblindRequest], context: grpc.ServicerContext
    ) -> Iterator[node_pb2.Chunk]:
        first = next(request_iterator, None)
        if first is None or first.WhichOneof("body") != "start":
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "Reblind must open with RoutingStart")
            return
        try:
            live = self._get(first.start.round_id)
            with live.lock:
                live.state.begin_routing(dict(first.start.sizes))
        except ProtocolError as exc:
            if not isinstance(exc, UnknownRound | WrongPhase):
                self._end(live, "refused", str(exc))
            _refuse(context, exc)
        pending: queue.Queue[tuple[str, int, Future[bytes]] | Exception | None] = queue.Queue(
            maxsize=self.blinder.workers * 2
        )
        done = threading.Event()
        context.add_callback(done.set)

        def put(item: tuple[str, int, Future[bytes]] | Exception | None) -> None:
            while not done.is_set():
                try:
                    pending.put(item, timeout=0.2)
                    return
                except queue.Full:
                    continue

        def read() -> None:
            try:
                for msg in request_iterator:
                    if msg.WhichOneof("body") != "chunk":
                        raise BadMessage("RoutingStart sent twice")
                    chunk = msg.chunk
                    if len(chunk.elements) % group.ELEMENT_BYTES:
                        raise BadMessage(
                            f"chunk {chunk.seq} of {chunk.owner}'s set is not whole 32-byte elements"
                        )
                    with live.lock:
                        live.state.accept_chunk(
                            chunk.owner, chunk.seq, len(chunk.elements) // group.ELEMENT_BYTES
                        )
                        key = live.state.live_key().export()
                    put((chunk.owner, chunk.seq, self.blinder.blind(key, chunk.elements)))
                    del key  # this thread waits on the coordinator: it must not keep the key
                put(None)
            except Exception as exc:  # handed to the responding side, which refuses the call
                put(exc)

        reader = threading.Thread(
            target=read, name=f"reblind-{live.state.spec.round_id}", daemon=True
        )
        reader.start()
        try:
            while True:
                try:
                    item = pending.get(timeout=0.2)
                except queue.Empty:
                    if done.is_set():  # the call ended (cancelled): nothing more will come
                        return
                    if live.state.key is None:  # ended meanwhile (Abort, timeout): leave
                        raise WrongPhase(
                            f"round {live.state.spec.round_id} ended while its Reblind stream "
                            "was open"
                        ) from None
                    continue
                if item is None:
                    return
                if isinstance(item, Exception):
                    raise item
                owner, seq, future = item
                elements = future.result()
                live.deadline = time.monotonic() + live.timeout
                yield node_pb2.Chunk(owner=owner, seq=seq, elements=elements)
        except grpc.RpcError:
            # The coordinator's side broke off (as when the call is cancelled, above): its
            # Abort, or this node's timeout, ends the round with the reason.
            return
        except (ProtocolError, InvalidElement) as exc:
            if not isinstance(exc, UnknownRound):
                self._end(live, "failed", f"refused a chunk: {exc}")
            _refuse(context, exc)
        finally:
            done.set()

    def Deliver(
        self, request: node_pb2.DeliverRequest, context: grpc.ServicerContext
    ) -> node_pb2.DeliverReply:
        try:
            live = self._get(request.round_id)
        except UnknownRound as exc:
            _refuse(context, exc)
        try:
            delivery = delivery_from_proto(request, live.state.spec)
            with live.lock:
                if self.watch is not None:  # a watch round's key outlives the round
                    self.watch.capture(live.state)
                outcome = live.state.resolve(delivery)
        except ProtocolError as exc:
            if isinstance(exc, BadMessage):  # a broken delivery ends the round: nothing is kept
                self._end(live, "failed", f"refused the delivery: {exc}")
            _refuse(context, exc)
        spec = live.state.spec
        try:
            if spec.mode == "count":
                self.store.record_partner_counts(spec.round_id, outcome.partner_counts)
                recorded = len(outcome.partner_counts)
            else:
                recorded = self.store.record_matches(
                    spec.round_id,
                    spec.mode,
                    [(m.sighting_id, list(m.partners), m.count) for m in outcome.matches],
                )
        except Exception as exc:
            self._end(live, "failed", f"could not store matches: {exc}")
            context.abort(
                grpc.StatusCode.INTERNAL, f"node {self.name} could not store matches: {exc}"
            )
        self._end(live, "done", None)
        log.info("round %s done: %d results recorded", spec.round_id, recorded)
        return node_pb2.DeliverReply(recorded=recorded)

    def Abort(
        self, request: node_pb2.AbortRequest, context: grpc.ServicerContext
    ) -> node_pb2.AbortReply:
        with self._lock:
            live = self._rounds.get(request.round_id)
        if live is None:
            return node_pb2.AbortReply(known=False)
        self._end(live, "aborted", request.reason or "aborted by the coordinator")
        log.info("round %s aborted: %s", request.round_id, request.reason)
        return node_pb2.AbortReply(known=True)


def access_policy(config: NodeConfig) -> net.AccessPolicy:
    return net.AccessPolicy(
        {
            "/blindmatch.v1.NodeService/": [("coordinator", config.coordinator)],
            **watch_access_rules(config.name, config.coordinator),
        }
    )


@dataclass
class RunningNode:
    handle: net.ServerHandle
    servicer: NodeServicer
    store: Store
    blinder: Blinder
    watch: NodeWatch | None = None

    @property
    def port(self) -> int:
        return self.handle.port

    def stop(self, grace: float = 2.0) -> None:
        self.handle.health.enter_graceful_shutdown()
        self.handle.server.stop(grace).wait()
        if self.watch is not None:  # a node restart ends its watch epoch
            self.watch.close()
        self.servicer.shutdown()
        self.blinder.close()
        self.store.close()


def start(config: NodeConfig, *, insecure: bool, listen: str | None = None) -> RunningNode:
    """Open the store, start the worker pool and the server; ``listen`` overrides the config."""
    tls = None if insecure else net.load_tls(config.tls.ca, config.tls.cert, config.tls.key)
    store = Store.open(config.store)
    blinder = Blinder(config.worker_count)
    try:
        # Read before serving: a round prepared from now on is this process's own.
        unfinished = [r for r in store.rounds() if r.outcome == "started"]
        blinder.warm_up()
        servicer = NodeServicer(
            name=config.name,
            store=store,
            policy=config.policy,
            tlps=config.tlps,
            blinder=blinder,
            round_timeout=config.round_timeout,
        )
        watch = servicer.watch = NodeWatch(
            name=config.name,
            store=store,
            policy=config.policy,
            blinder=blinder,
            budget=config.check_budget,
            active_rounds=servicer.active_rounds,
            coordinator_address=config.coordinator_address,
            tls=tls,
        )
        handle = net.start_server(
            listen or config.listen,
            [
                lambda s: node_pb2_grpc.add_NodeServiceServicer_to_server(servicer, s),
                lambda s: watch_pb2_grpc.add_NodeWatchServiceServicer_to_server(watch, s),
            ],
            tls,
            insecure=insecure,
            access=None if insecure else access_policy(config),
        )
        # After the bind: a second node refused the port must not touch the first one's rounds.
        _fail_unfinished(store, unfinished)
    except BaseException:
        blinder.close()
        store.close()
        raise
    return RunningNode(handle, servicer, store, blinder, watch)


RESTART_REASON = "node restarted during the round"


def _fail_unfinished(store: Store, rounds: list[RoundAudit]) -> None:
    """Audit as failed the rounds a previous run of this node was in when it ended (killed,
    crashed): their keys died with that process, and no delivery can reach this one."""
    for r in rounds:
        store.end_round(r.round_id, outcome="failed", reason=RESTART_REASON)


def serve(config: NodeConfig, *, insecure: bool) -> None:
    """Run until SIGINT/SIGTERM."""
    # Handlers first: a SIGTERM during the worker warm-up must still stop the pool cleanly.
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    node = start(config, insecure=insecure)
    mode = "PLAINTEXT (--insecure)" if insecure else "mTLS"
    # The bound port, not the configured one: with port 0 the kernel picks it.
    address = f"{config.listen.rpartition(':')[0]}:{node.port}"
    print(
        f"node {config.name} listening on {address} ({mode}), "
        f"{node.blinder.workers} blinding worker(s), store {config.store}",
        flush=True,
    )
    while not stop.wait(1.0):  # a timed wait keeps the main thread responsive to signals
        pass
    print(f"node {config.name} stopping", flush=True)
    node.stop()
