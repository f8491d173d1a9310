"""Drives rounds over gRPC: one thread per round, one reader thread per node stream.

A round, as the coordinator runs it (the rules themselves are ``CoordinatorRound``'s):
  1. Prepare every participant in parallel, each call with ``call_timeout``. Any error from any
     node fails the round, naming the node and its status.
  2. Open one ``Reblind`` stream per node (first message ``RoutingStart``, then chunks fed from
     that node's queue) and one ``OwnSet`` stream per node. Every chunk that comes back, from
     either stream, goes through ``CoordinatorRound.on_chunk`` under the round's lock, and the
     ``Forward`` it returns is queued for the next hop at once: a chunk moves on as soon as it
     is ready, so every node works at the same time and no phase waits for a whole set.
  3. Once every set is fully blinded, the Reblind queues close, the streams end, and every node
     gets its ``Deliver`` in parallel. Done.
  Anything else (an error, a stream ending early, the round deadline ``round_timeout``, the
  coordinator stopping) fails the round: every stream is cancelled, every node gets ``Abort``
  (best effort, in parallel, short deadline), and the record says why.

The queues are unbounded on purpose: bounding them would let the reader of node A block on
node B's full queue while B waits on A, a cycle around the ring. Their total is bounded by the
round's sets (``Caps.max_total``), which the coordinator holds anyway as final tags.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Final

import grpc

from blindmatch.core.errors import BadMessage, ProtocolError, RoundIdUsed, UnknownRound
from blindmatch.core.identity import Identity
from blindmatch.core.match import CountResult, Delivery
from blindmatch.core.round_coordinator import Caps, CoordinatorRound
from blindmatch.core.spec import DEFAULT_CHUNK, RoundSpec, Stream
from blindmatch.runtime import serde
from blindmatch.runtime.net import TlsConfig, open_channel
from blindmatch.v1 import node_pb2, node_pb2_grpc
from coordinator.metrics import NO_METRICS, CoordinatorHooks
from coordinator.records import RoundBoard, RoundRecord

if TYPE_CHECKING:
    from coordinator.watch import EpochOpener, WatchHub

log = logging.getLogger(__name__)

STOP_REASON: Final = "coordinator stopped during the round"
PUBLISH_INTERVAL: Final = 0.25  # seconds between progress updates of one round
ABORT_TIMEOUT: Final = 5.0  # seconds: deadline of each best-effort Abort
SECONDARY_GRACE: Final = 1.0  # seconds a "round not found" waits for the reason behind it


class RoundFailure(Exception):
    """The round cannot go on; the message is the reason recorded and sent to every node."""

    code = "UNAVAILABLE"  # the status an operator's call gets (blindmatch.status.status_for)


class NodeLinks:
    """One channel per registered node, opened once and reused by every round."""

    def __init__(self, nodes: Mapping[str, str], tls: TlsConfig | None, *, insecure: bool) -> None:
        self.addresses = dict(nodes)
        self._channels = {
            name: open_channel(address, tls, insecure=insecure, expect=Identity("node", name))
            for name, address in self.addresses.items()
        }
        self._stubs = {
            name: node_pb2_grpc.NodeServiceStub(channel) for name, channel in self._channels.items()
        }

    def stub(self, node: str) -> node_pb2_grpc.NodeServiceStub:
        return self._stubs[node]

    def channels(self) -> dict[str, grpc.Channel]:
        """The channels themselves, for other services on the nodes (early warning)."""
        return dict(self._channels)

    def close(self) -> None:
        for channel in self._channels.values():
            channel.close()


@dataclass(frozen=True)
class RoundSettings:
    call_timeout: float = 60.0
    round_timeout: float = 3600.0
    chunk_size: int = DEFAULT_CHUNK
    caps: Caps = field(default_factory=Caps)


class Coordinator:
    """Starts rounds and keeps track of the ones in flight."""

    def __init__(
        self,
        board: RoundBoard,
        links: NodeLinks,
        settings: RoundSettings,
        *,
        watch: WatchHub | None = None,
        metrics: CoordinatorHooks = NO_METRICS,
    ) -> None:
        self.board = board
        self.links = links
        self.settings = settings
        self.watch = watch  # early warning (coordinator/watch.py); None: watch rounds refused
        self.metrics = metrics  # coordinator/metrics.py when [metrics] is on
        self._lock = threading.Lock()
        self._running: dict[str, tuple[RoundDriver, threading.Thread]] = {}
        self._stopping = False

    def start_round(
        self, signed: serde.Authorization, spec: RoundSpec, *, operator: str
    ) -> RoundRecord:
        """Launch the round an operator signed (``spec`` is what ``signed`` says: a signed spec,
        or a run of a standing order; the caller has verified who signed it) in the background;
        return its first record.

        A watch round (``spec.epoch_seconds`` > 0) runs as a pairwise round and then opens an
        epoch (coordinator/watch.py).
        """
        self.check_spec(spec)
        record = RoundRecord(
            id=spec.round_id,
            participants=spec.participants,
            mode="watch" if spec.watching else spec.mode,
            threshold=spec.threshold,
            kinds=spec.kinds,
            operator=operator,
            created=time.time(),
        )
        with self._lock:
            if self._stopping:
                raise RoundFailure("the coordinator is stopping; start the round after it restarts")
            if spec.round_id in self._running or self._known(spec.round_id):
                raise RoundIdUsed(f"round {spec.round_id} already exists; round ids are used once")
            self.board.publish(record)
            opener = None
            if spec.watching:
                assert self.watch is not None
                opener = self.watch.epoch_opener(spec)
            driver = RoundDriver(
                signed, spec, record, self.links, self.board, self.settings, opener
            )
            thread = threading.Thread(
                target=self._run, args=(driver,), name=f"round-{spec.round_id[:8]}", daemon=True
            )
            self._running[spec.round_id] = (driver, thread)
            self.metrics.round_started()
        thread.start()
        return record

    def check_spec(self, spec: RoundSpec) -> None:
        """BadMessage unless this coordinator can run ``spec``: every node in its registry, watch
        supported if asked for, chunks no larger than it forwards."""
        unknown = [n for n in spec.participants if n not in self.links.addresses]
        if unknown:
            known = ", ".join(sorted(self.links.addresses)) or "(none)"
            raise BadMessage(
                f"unknown node(s) {', '.join(unknown)}; this coordinator's registry knows: {known}"
            )
        if spec.watching and self.watch is None:
            raise BadMessage("this coordinator has no early-warning support; watch is unavailable")
        if spec.chunk_size > self.settings.chunk_size:
            raise BadMessage(
                f"chunks of {spec.chunk_size} elements; this coordinator forwards at most "
                f"{self.settings.chunk_size} (its chunk_size; start the round with --chunk-size)"
            )

    def running(self, round_id: str) -> bool:
        """Whether the round with this id is still going."""
        with self._lock:
            return round_id in self._running

    def _known(self, round_id: str) -> bool:
        try:
            self.board.get(round_id)
        except UnknownRound:
            return False
        return True

    def _run(self, driver: RoundDriver) -> None:
        try:
            driver.run()
        finally:
            with self._lock:
                self._running.pop(driver.spec.round_id, None)
            self.metrics.round_ended(driver.record)

    def stop(self, reason: str = STOP_REASON, wait: float = ABORT_TIMEOUT + 5) -> None:
        """Fail every round in flight (their nodes get Abort) and wait for their threads."""
        with self._lock:
            self._stopping = True
            running = list(self._running.values())
        for driver, _ in running:
            driver.cancel(reason)
        end = time.monotonic() + wait
        for _, thread in running:
            thread.join(max(0.0, end - time.monotonic()))


class RoundDriver:
    def __init__(
        self,
        signed: serde.Authorization,
        spec: RoundSpec,
        record: RoundRecord,
        links: NodeLinks,
        board: RoundBoard,
        settings: RoundSettings,
        opener: EpochOpener | None = None,
    ) -> None:
        self.signed = signed
        self.spec = spec
        self.opener = opener  # a watch round's: its epoch opens around the deliveries
        self.round = CoordinatorRound(spec, settings.caps)
        self._certificates: dict[str, bytes] = {}  # from PrepareReplies, for RoutingStart
        self.record = record
        self.links = links
        self.board = board
        self.settings = settings
        self._deadline = time.monotonic() + settings.round_timeout
        # One lock for the round: the state machine, the queues, the record and the failure.
        self._cond = threading.Condition()
        self._failure: str | None = None
        self._queues: dict[str, queue.SimpleQueue[node_pb2.ReblindRequest | None]] = {}
        self._queues_closed = False
        self._calls: list[Any] = []  # streaming calls, cancelled on failure
        self._open_streams = 0
        self._last_publish = 0.0

    # --- the round, step by step -------------------------------------------------------------

    def run(self) -> None:
        log.info(
            "round %s: starting with %s", self.spec.round_id, ", ".join(self.spec.participants)
        )
        try:
            self._prepare()
            self._route()
            self._deliver()
            log.info("round %s: done, matches %s", self.spec.round_id, self.record.match_counts)
        except RoundFailure as exc:
            self._finish_failed(str(exc))
            log.warning("round %s: failed: %s", self.spec.round_id, self.record.error)
        except Exception as exc:
            log.exception("round %s: unexpected error", self.spec.round_id)
            self._finish_failed(f"internal error in the coordinator: {exc!r}")

    def cancel(self, reason: str) -> None:
        """Fail the round from outside (the coordinator is stopping)."""
        self._fail(reason)

    def _prepare(self) -> None:
        # a node drops the round (and its key) if the coordinator goes silent this long
        request = serde.prepare_to_proto(self.signed, self.settings.round_timeout)
        replies = self._unary_all("Prepare", lambda stub: stub.Prepare, lambda _: request)
        with self._cond:
            try:
                for node in self.spec.participants:
                    self.round.on_prepared(node, replies[node].size)
                    self._certificates[node] = replies[node].certificate
            except ProtocolError as exc:
                raise RoundFailure(str(exc)) from None
            self._publish(
                sizes=dict(self.round.sizes),
                hops_total=self.round.progress()[1],
                force=True,
            )

    def _route(self) -> None:
        sizes = dict(self.round.sizes)
        for node in self.spec.participants:
            q: queue.SimpleQueue[node_pb2.ReblindRequest | None] = queue.SimpleQueue()
            q.put(serde.routing_start_to_proto(self.spec.round_id, sizes, self._certificates))
            self._queues[node] = q
        # Reblind first, so a node has its RoutingStart before it sees any partner's chunk.
        for node in self.spec.participants:
            call = self.links.stub(node).Reblind(_drain(self._queues[node]), timeout=self._left())
            self._follow(node, call, Stream.REBLIND)
        for node in self.spec.participants:
            ref = node_pb2.RoundRef(round_id=self.spec.round_id)
            self._follow(
                node, self.links.stub(node).OwnSet(ref, timeout=self._left()), Stream.OWN_SET
            )
        with self._cond:
            if self.round.routed():  # every set empty: nothing will ever arrive
                self._close_queues()
        self._wait_for(lambda: self._open_streams == 0, "routing to finish")
        if not self.round.routed():
            raise RoundFailure("every stream ended before every set was fully blinded")

    def _deliver(self) -> None:
        with self._cond:
            watch_tags = self.round.final_tags() if self.opener is not None else None
            results = self.round.deliveries()
            self._publish(hops_done=self.record.hops_total, force=True)
        if self.opener is not None and watch_tags is not None:
            try:
                self.opener.before_deliver(watch_tags)
            except Exception as exc:
                raise RoundFailure(f"could not open the watch epoch: {exc}") from None
            del watch_tags
        names = self.spec.participants
        requests = {
            node: serde.delivery_to_proto(self.spec.round_id, delivery, names)
            for node, delivery in results.items()
        }
        counts = {node: match_count(delivery) for node, delivery in results.items()}
        del results
        self._unary_all("Deliver", lambda stub: stub.Deliver, requests.__getitem__)
        if self.opener is not None:
            self.opener.after_deliver()
        with self._cond:
            for node in names:
                self.round.on_delivered(node)
            self._publish(match_counts=counts, finished=time.time(), force=True)

    def _finish_failed(self, reason: str) -> None:
        self._fail(reason)
        with self._cond:
            reason = self._failure or reason
            self.round.fail(reason)
        request = node_pb2.AbortRequest(round_id=self.spec.round_id, reason=reason)
        pending = [
            self.links.stub(node).Abort.future(request, timeout=ABORT_TIMEOUT)
            for node in self.spec.participants
        ]
        for future in pending:
            # best effort: a node that misses it drops the round at its own timeout
            with contextlib.suppress(grpc.RpcError):
                future.result()
        with self._cond:
            self._publish(error=reason, finished=time.time(), force=True)

    # --- calls and streams -------------------------------------------------------------------

    def _unary_all(
        self,
        what: str,
        method: Callable[[node_pb2_grpc.NodeServiceStub], Any],
        request_for: Callable[[str], Any],
    ) -> dict[str, Any]:
        """Call ``what`` on every participant in parallel; every reply, or a RoundFailure that
        names every node that failed."""
        timeout = min(self.settings.call_timeout, self._left())
        futures = {
            node: method(self.links.stub(node)).future(request_for(node), timeout=timeout)
            for node in self.spec.participants
        }
        for future in futures.values():
            future.add_done_callback(lambda _: self._notify())
        try:
            self._wait_for(lambda: all(f.done() for f in futures.values()), f"{what} replies")
        except RoundFailure:
            for future in futures.values():
                future.cancel()
            raise
        replies: dict[str, Any] = {}
        problems = []
        for node, future in futures.items():
            try:
                replies[node] = future.result()
            except grpc.RpcError as err:
                problems.append(self._rpc_problem(node, what, err, timeout))
        if problems:
            raise RoundFailure("; ".join(problems))
        return replies

    def _follow(self, node: str, call: Any, stream: Stream) -> None:
        with self._cond:
            self._calls.append(call)
            self._open_streams += 1
            if self._failure is not None:
                call.cancel()
        threading.Thread(
            target=self._read,
            args=(node, call, stream),
            name=f"{stream.value}-{node}-{self.spec.round_id[:8]}",
            daemon=True,
        ).start()

    def _read(self, node: str, call: Any, stream: Stream) -> None:
        what = stream.value
        problem: str | None = None
        try:
            for chunk in call:
                self._on_chunk(node, chunk, stream)
            self._stream_ended(node, stream)
        except grpc.RpcError as err:
            problem = self._rpc_problem(node, what, err, self.settings.round_timeout)
            if err.code() == grpc.StatusCode.NOT_FOUND:
                # The node has already dropped the round, most likely for a reason its other
                # stream is about to report (a cap refused at RoutingStart ends its OwnSet too);
                # give that reason a moment to arrive first, since it is the one worth showing.
                # The stream counts as open until then, so the round cannot end meanwhile.
                later = threading.Timer(SECONDARY_GRACE, self._stream_closed, args=(problem,))
                later.daemon = True
                later.start()
                return
        except RoundFailure as exc:
            problem = str(exc)
        except Exception as exc:
            log.exception("round %s: reading %s of %s", self.spec.round_id, what, node)
            problem = f"internal error in the coordinator reading {what} of {node}: {exc!r}"
        self._stream_closed(problem)

    def _stream_closed(self, problem: str | None) -> None:
        """A stream has ended, with ``problem`` unless it ended well."""
        if problem is not None:
            self._fail(problem)
        with self._cond:
            self._open_streams -= 1
            self._cond.notify_all()

    def _on_chunk(self, sender: str, chunk: node_pb2.Chunk, stream: Stream) -> None:
        with self._cond:
            if self._failure is not None:
                return
            try:
                forward = self.round.on_chunk(
                    sender,
                    chunk.owner,
                    chunk.seq,
                    chunk.elements,
                    stream,
                    hop=chunk.hop,
                    signature=chunk.signature,
                )
            except ProtocolError as exc:
                raise RoundFailure(str(exc)) from None
            if forward is not None:
                self._queues[forward.to].put(serde.forward_to_proto(forward))
            elif self.round.routed():
                self._close_queues()
            self._publish(hops_done=self.round.progress()[0])

    def _stream_ended(self, node: str, stream: Stream) -> None:
        with self._cond:
            if self._failure is not None:
                return
            try:
                self.round.on_stream_end(node, stream)
            except ProtocolError as exc:
                raise RoundFailure(str(exc)) from None

    def _rpc_problem(self, node: str, what: str, err: grpc.RpcError, timeout: float) -> str:
        code = err.code()
        details = err.details() or "(no details)"
        if code == grpc.StatusCode.UNAVAILABLE:
            return f"node {node} unreachable at {self.links.addresses[node]}: {details}"
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return f"timeout after {timeout:g} s waiting for {what} of node {node}"
        if code == grpc.StatusCode.CANCELLED:
            return f"{what} of node {node} was cancelled: {details}"
        verb = "refused" if what == "Prepare" else f"refused {what}"
        return f"{node} {verb}: {code.name}: {details}"

    # --- shared state ------------------------------------------------------------------------

    def _fail(self, reason: str) -> None:
        """Record the first failure, cancel every stream and wake the round's thread."""
        with self._cond:
            if self._failure is not None:
                return
            self._failure = reason
            calls = list(self._calls)
            self._close_queues()
            self._cond.notify_all()
        for call in calls:
            call.cancel()

    def _close_queues(self) -> None:
        if not self._queues_closed:
            self._queues_closed = True
            for q in self._queues.values():
                q.put(None)

    def _notify(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def _wait_for(self, done: Callable[[], bool], what: str) -> None:
        with self._cond:
            finished = self._cond.wait_for(
                lambda: self._failure is not None or done(), timeout=self._left()
            )
            if self._failure is not None:
                raise RoundFailure(self._failure)
            if not finished:
                hops, total = self.round.progress()
                raise RoundFailure(
                    f"timeout after {self.settings.round_timeout:g} s waiting for {what} "
                    f"({hops} of {total} element-hops done; round_timeout)"
                )

    def _left(self) -> float:
        return max(0.0, self._deadline - time.monotonic())

    def _publish(self, *, force: bool = False, **changes: Any) -> None:
        """Update the record; publish it now if ``force``, else at most every PUBLISH_INTERVAL.

        The record's phase is always the round's: ``CoordinatorRound`` is the one place it moves.
        """
        self.record = replace(self.record, state=self.round.phase, **changes)
        now = time.monotonic()
        if force or now - self._last_publish >= PUBLISH_INTERVAL:
            self._last_publish = now
            self.board.publish(self.record)


def _drain(
    q: queue.SimpleQueue[node_pb2.ReblindRequest | None],
) -> Iterator[node_pb2.ReblindRequest]:
    while (item := q.get()) is not None:
        yield item


def match_count(delivery: Delivery) -> int:
    """Matches delivered to one node; in count mode, the total over its partners."""
    if isinstance(delivery, CountResult):
        return sum(delivery.shared.values())
    return len(delivery.positions)
