"""Drives rounds over gRPC: one thread per round, one reader thread per node stream.

A round, as the coordinator runs it (what each message may say is ``CommitteeCoordinator``'s):
  1. Prepare every participant in parallel, each call with ``call_timeout``; then SignTranscript
     with the transcript their replies make, then Begin with every signature. Any error from any
     node fails the round, naming the node and its status.
  2. Open one ``Evaluate`` stream per committee member and one ``Own`` stream per participant.
     Every request an owner signs is queued at once for each member that must answer it, and
     every answer for its owner: a chunk moves on as soon as it is ready, so every node works at
     the same time and no step waits for a whole set.
  3. Once every participant's signed tag root is in, the queues close and the streams end; every
     node gets Reveal, then its ``Deliver``, in parallel. Done.
  Anything else (an error, a stream ending early, the round deadline ``round_timeout``, the
  coordinator stopping) fails the round: every stream is cancelled, every node gets ``Abort``
  (best effort, in parallel, short deadline), and the record says why.

The queues are unbounded on purpose: bounding them would let the reader of node A block on
node B's full queue while B waits on A. An honest owner bounds their total: it has only a few
chunks out without every answer at a time (node/committee.py).
"""

from __future__ import annotations

import collections
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Final

import grpc

from blindmatch.core.committee import CommitteeCoordinator, Prepared, RoundTerms
from blindmatch.core.delivery import NodeDelivery, SignedRoot
from blindmatch.core.errors import BadMessage, ProtocolError, RoundIdUsed, UnknownRound
from blindmatch.core.identity import Identity
from blindmatch.core.oprf import LAMBDA
from blindmatch.core.spec import DEFAULT_CHUNK, Caps, RoundSpec
from blindmatch.core.states import COORDINATOR, CoordinatorPhase
from blindmatch.runtime import serde, serde_v2
from blindmatch.runtime.logs import about_round
from blindmatch.runtime.net import TlsConfig, open_channel
from blindmatch.v1 import node_pb2
from blindmatch.v2 import node_pb2 as node_v2
from blindmatch.v2 import node_pb2_grpc as node_v2_grpc
from coordinator.metrics import NO_METRICS, CoordinatorHooks
from coordinator.records import RoundBoard, RoundRecord

if TYPE_CHECKING:
    from coordinator.watch import EpochOpener, WatchHub

log = logging.getLogger(__name__)

STOP_REASON: Final = "coordinator stopped during the round"
PUBLISH_INTERVAL: Final = 0.25  # seconds between progress updates of one round
ABORT_TIMEOUT: Final = 5.0  # seconds: deadline of each best-effort Abort


class RoundFailure(Exception):
    """The round cannot go on; the message is the reason recorded and sent to every node."""

    code = "UNAVAILABLE"  # the status an operator's call gets (blindmatch.status.status_for)


class NodeLinks:
    """One channel per registered node, opened once and reused by every round, until ``renew``
    (a renewed certificate) opens new ones for every later call."""

    def __init__(self, nodes: Mapping[str, str], tls: TlsConfig | None, *, insecure: bool) -> None:
        self.addresses = dict(nodes)
        self._insecure = insecure
        self._retired: list[grpc.Channel] = []
        self._open(tls)

    def _open(self, tls: TlsConfig | None) -> None:
        channels = {
            name: open_channel(address, tls, insecure=self._insecure, expect=Identity("node", name))
            for name, address in self.addresses.items()
        }
        self._stubs_v2 = {
            name: node_v2_grpc.NodeServiceStub(channel) for name, channel in channels.items()
        }
        self._channels = channels

    def renew(self, tls: TlsConfig) -> None:
        """Present ``tls`` (a renewed certificate) from now on: later calls, rounds in flight
        included, go over new channels; streams already open run on over the old ones, which
        close with the coordinator."""
        self._retired.extend(self._channels.values())
        self._open(tls)

    def v2(self, node: str) -> node_v2_grpc.NodeServiceStub:
        return self._stubs_v2[node]

    def channels(self) -> dict[str, grpc.Channel]:
        """The channels themselves, for other services on the nodes (early warning)."""
        return dict(self._channels)

    def close(self) -> None:
        for channel in [*self._channels.values(), *self._retired]:
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
        self._running: dict[str, tuple[CommitteeDriver, threading.Thread]] = {}
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
        try:
            self.check_spec(spec)
        except BadMessage as exc:
            log.info("round %s refused: %s", spec.round_id, exc, extra=about_round(spec.round_id))
            raise
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
            driver = CommitteeDriver(
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

    def _run(self, driver: CommitteeDriver) -> None:
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


class CommitteeDriver:
    """One round (DESIGN.md 2): the coordinator assembles the transcript, relays requests and
    answers, and matches tags; every node verifies what it is shown (``core.committee``). Here:
    parallel calls, followed streams, the first failure, the deadline and the published record."""

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
        self.record = record
        self.links = links
        self.board = board
        self.settings = settings
        self._deadline = time.monotonic() + settings.round_timeout
        # One lock for the round: the state machine, the queues, the record and the failure.
        self._cond = threading.Condition()
        self._failure: str | None = None
        self._queues: dict[str, queue.SimpleQueue[Any]] = {}  # request streams, by node
        self._queues_closed = False
        self._calls: list[Any] = []  # streaming calls, cancelled on failure
        self._open_streams = 0
        self._last_publish = 0.0
        self.opener = opener  # a watch round's: its epoch opens once every node has delivered
        self.machine = CommitteeCoordinator(RoundTerms.of(spec, signed.digest), settings.caps)
        self._phase = CoordinatorPhase.PREPARING
        self._awaiting: dict[str, collections.deque[tuple[str, int]]] = {}  # member -> owners
        self._roots: dict[str, SignedRoot] | None = None
        self._answered = 0
        self._total = 0

    @property
    def phase(self) -> CoordinatorPhase:
        return self._phase

    def progress(self) -> tuple[int, int]:
        """Evaluations answered and to answer, for a timeout's message."""
        return self._answered, self._total

    def _move(self, to: CoordinatorPhase) -> None:
        self._phase = COORDINATOR.move(f"round {self.spec.round_id}", self._phase, to)

    def run(self) -> None:
        about = about_round(self.spec.round_id)
        log.info(
            "round %s started: %s round of %s for %s",
            self.spec.round_id,
            self.record.mode,
            ", ".join(self.spec.participants),
            self.record.operator,
            extra=about,
        )
        try:
            self._steps()
            log.info(
                "round %s done: matches %s",
                self.spec.round_id,
                self.record.match_counts,
                extra=about,
            )
        except RoundFailure as exc:
            self._finish_failed(str(exc))
            # the cause: the first failure, which names each node that refused and why
            log.warning("round %s failed: %s", self.spec.round_id, self.record.error, extra=about)
        except Exception as exc:
            log.exception("round %s: unexpected error", self.spec.round_id, extra=about)
            self._finish_failed(f"internal error in the coordinator: {exc!r}")
            log.warning("round %s failed: %s", self.spec.round_id, self.record.error, extra=about)

    def cancel(self, reason: str) -> None:
        """Fail the round from outside (the coordinator is stopping)."""
        self._fail(reason)

    def _finish_failed(self, reason: str) -> None:
        self._fail(reason)
        with self._cond:
            reason = self._failure or reason
            self._move(CoordinatorPhase.FAILED)
        request = node_pb2.AbortRequest(round_id=self.spec.round_id, reason=reason)
        pending = [
            self.links.v2(node).Abort.future(request, timeout=ABORT_TIMEOUT)
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
        method: Callable[[str], Any],
        request_for: Callable[[str], Any],
    ) -> dict[str, Any]:
        """Call ``method(node)`` on every participant in parallel; every reply, or a
        RoundFailure that names every node that failed."""
        timeout = min(self.settings.call_timeout, self._left())
        futures = {
            node: method(node).future(request_for(node), timeout=timeout)
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

    def _follow(
        self,
        node: str,
        call: Any,
        what: str,
        on_message: Callable[[str, Any], None],
        on_end: Callable[[str], None],
    ) -> None:
        """Read ``call`` in a thread of its own: each message to ``on_message`` and the end to
        ``on_end``, both under the round's lock; an error fails the round."""
        with self._cond:
            self._calls.append(call)
            self._open_streams += 1
            if self._failure is not None:
                call.cancel()
        threading.Thread(
            target=self._read,
            args=(node, call, what, on_message, on_end),
            name=f"{what}-{node}-{self.spec.round_id[:8]}",
            daemon=True,
        ).start()

    def _read(
        self,
        node: str,
        call: Any,
        what: str,
        on_message: Callable[[str, Any], None],
        on_end: Callable[[str], None],
    ) -> None:
        problem: str | None = None
        try:
            for message in call:
                with self._cond:
                    if self._failure is not None:
                        continue
                    try:
                        on_message(node, message)
                    except ProtocolError as exc:
                        raise RoundFailure(str(exc)) from None
            with self._cond:
                if self._failure is None:
                    try:
                        on_end(node)
                    except ProtocolError as exc:
                        raise RoundFailure(str(exc)) from None
        except grpc.RpcError as err:
            # A node answers every call for a round it refused or ended with that first cause
            # (node/rounds.py), so whichever of its calls fails first reports the root cause.
            problem = self._rpc_problem(node, what, err, self.settings.round_timeout)
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

    def _rpc_problem(self, node: str, what: str, err: grpc.RpcError, timeout: float) -> str:
        code = err.code()
        details = err.details() or "(no details)"
        if code == grpc.StatusCode.UNAVAILABLE:
            return f"node {node} unreachable at {self.links.addresses[node]}: {details}"
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return f"timeout after {timeout:g} s waiting for {what} of node {node}"
        if code == grpc.StatusCode.CANCELLED:
            return f"{what} of node {node} was cancelled: {details}"
        if code == grpc.StatusCode.UNIMPLEMENTED:
            return (
                f"node {node} does not serve {what} of this round's protocol ({details}); "
                "is it older than the coordinator?"
            )
        verb = "refused" if what == "Prepare" else f"refused {what}"
        if code == grpc.StatusCode.PERMISSION_DENIED and "blindmatch.v2." in details:
            details += " (a node older than protocol v2 serves none of its calls: upgrade it)"
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
                done_, total = self.progress()
                raise RoundFailure(
                    f"timeout after {self.settings.round_timeout:g} s waiting for {what} "
                    f"({done_} of {total} evaluations done; round_timeout)"
                )

    def _left(self) -> float:
        return max(0.0, self._deadline - time.monotonic())

    def _publish(self, *, force: bool = False, **changes: Any) -> None:
        """Update the record; publish it now if ``force``, else at most every PUBLISH_INTERVAL.

        The record's phase is always the round's own state's (``phase``)."""
        self.record = replace(self.record, state=self.phase, **changes)
        now = time.monotonic()
        if force or now - self._last_publish >= PUBLISH_INTERVAL:
            self._last_publish = now
            self.board.publish(self.record)

    # --- the round's steps -------------------------------------------------------------------

    def _steps(self) -> None:
        certificates = self._prepare()
        self._sign(certificates)
        self._evaluate()
        deliveries = self._reveal()
        self._deliver(deliveries)

    def _all(self, what: str, request_for: Callable[[str], Any]) -> dict[str, Any]:
        return self._unary_all(what, lambda node: getattr(self.links.v2(node), what), request_for)

    def _prepare(self) -> dict[str, bytes]:
        # a node drops the round (and its share) if the coordinator goes silent this long
        request = serde.prepare_to_proto(self.signed, self.settings.round_timeout)
        replies = self._all("Prepare", lambda _: request)
        certificates = {}
        with self._cond:
            try:
                for node in self.spec.participants:
                    reply = replies[node]
                    if reply.protocol != serde_v2.PROTOCOL:
                        raise RoundFailure(
                            f"{node} answered Prepare for protocol v{reply.protocol or 1}, "
                            f"not v{serde_v2.PROTOCOL}"
                        )
                    commitment = (
                        serde_v2.commitment_from_proto(reply.commitment)
                        if reply.HasField("commitment")
                        else None
                    )
                    caps = serde_v2.check_caps_from_proto(reply.check_caps)
                    transcript = self.machine.on_prepared(
                        Prepared(node, reply.size, commitment, caps)
                    )
                    certificates[node] = reply.certificate
            except ProtocolError as exc:
                raise RoundFailure(str(exc)) from None
            assert transcript is not None
            self.transcript = transcript
            sizes = dict(transcript.sizes)
            members = len(self.machine.terms.committee)
            self._total = sum(
                (n + LAMBDA) * (members - (name in self.machine.terms.committee))
                for name, n in sizes.items()
            )
            self._publish(sizes=sizes, hops_total=self._total, force=True)
        return certificates

    def _sign(self, certificates: dict[str, bytes]) -> None:
        request = node_v2.TranscriptRequest(
            round_id=self.spec.round_id,
            transcript=serde_v2.transcript_to_proto(self.transcript),
            certificates=certificates,
        )
        replies = self._all("SignTranscript", lambda _: request)
        with self._cond:
            signatures = None
            for node in self.spec.participants:
                signatures = self.machine.on_signature(node, replies[node].signature)
            assert signatures is not None
        begin = node_v2.BeginRequest(round_id=self.spec.round_id, signatures=signatures)
        self._all("Begin", lambda _: begin)

    def _evaluate(self) -> None:
        with self._cond:
            self._move(CoordinatorPhase.ROUTING)
            self._publish(force=True)
            for member in self.machine.terms.committee:
                self._queues[f"evaluate:{member}"] = queue.SimpleQueue()
                self._awaiting[member] = collections.deque()
            for owner in self.spec.participants:
                q: queue.SimpleQueue[Any] = queue.SimpleQueue()
                q.put(node_v2.OwnIn(start=node_v2.OwnStart(round_id=self.spec.round_id)))
                self._queues[f"own:{owner}"] = q
        for member in self.machine.terms.committee:
            call = self.links.v2(member).Evaluate(
                _drain(self._queues[f"evaluate:{member}"]), timeout=self._left()
            )
            self._follow(member, call, "Evaluate", self._on_answer, self._evaluate_ended)
        for owner in self.spec.participants:
            call = self.links.v2(owner).Own(
                _drain(self._queues[f"own:{owner}"]), timeout=self._left()
            )
            self._follow(owner, call, "Own", self._on_own, self._own_ended)
        self._wait_for(lambda: self._open_streams == 0, "every set's evaluations")
        if self._roots is None:
            raise RoundFailure("every stream ended before every participant's tag root was in")

    def _on_own(self, owner: str, message: node_v2.OwnOut) -> None:
        if message.HasField("request"):
            signed = serde_v2.request_from_proto(message.request)
            if signed.request.requester != owner:
                raise RoundFailure(
                    f"{owner} sent a request in the name of {signed.request.requester}"
                )
            for member in self.machine.members_for(signed):
                self._queues[f"evaluate:{member}"].put(message.request)
                self._awaiting[member].append((owner, signed.request.count))
            return
        root = serde_v2.root_from_proto(message.root)
        if root.owner != owner:
            raise RoundFailure(f"{owner} sent a tag root in the name of {root.owner}")
        self._roots = self.machine.on_root(root)
        if self._roots is not None:  # no request will come: the streams may end
            self._close_queues()

    def _on_answer(self, member: str, message: node_v2.SignedAnswer) -> None:
        waiting = self._awaiting[member]
        if not waiting:
            raise RoundFailure(f"{member} answered a request it was never sent")
        owner, count = waiting.popleft()
        self._queues[f"own:{owner}"].put(node_v2.OwnIn(answer=message))
        self._answered += count
        self._publish(hops_done=self._answered)

    def _evaluate_ended(self, member: str) -> None:
        if self._awaiting[member]:
            raise RoundFailure(f"{member}'s Evaluate stream ended with requests unanswered")

    def _own_ended(self, owner: str) -> None:
        if owner not in self.machine.roots:
            raise RoundFailure(f"{owner}'s Own stream ended before its tag root")

    def _reveal(self) -> dict[str, tuple[NodeDelivery, dict[str, SignedRoot]]]:
        assert self._roots is not None
        request = node_v2.RevealRequest(
            round_id=self.spec.round_id, roots=serde_v2.roots_to_proto(self._roots)
        )
        replies = self._all("Reveal", lambda _: request)
        deliveries = None
        with self._cond:
            try:
                for node in self.spec.participants:
                    tags = serde_v2.tags_from_proto(replies[node])
                    if tags.owner != node:
                        raise RoundFailure(f"{node} revealed tags in the name of {tags.owner}")
                    deliveries = self.machine.on_tags(tags)
            except ProtocolError as exc:
                raise RoundFailure(str(exc)) from None
            assert deliveries is not None
            self._move(CoordinatorPhase.DELIVERING)
            self._publish(hops_done=self._total, force=True)
        return deliveries

    def _deliver(self, deliveries: dict[str, tuple[NodeDelivery, dict[str, SignedRoot]]]) -> None:
        requests = {
            node: serde_v2.delivery_to_proto(d, roots) for node, (d, roots) in deliveries.items()
        }
        counts = {node: delivered(d) for node, (d, _) in deliveries.items()}
        del deliveries
        self._all("Deliver", requests.__getitem__)
        if self.opener is not None:
            self.opener.after_deliver(self.machine.terms.committee, self.machine.filters())
        with self._cond:
            self._move(CoordinatorPhase.DONE)
            self._publish(match_counts=counts, finished=time.time(), force=True)


def delivered(delivery: NodeDelivery) -> int:
    """Matches delivered to one node; in count mode, the total over its partners."""
    if delivery.mode == "count":
        return sum(delivery.shared.values())
    if delivery.hits is not None:
        return len(delivery.hits)
    return len({int(p) for proof in delivery.proofs for p in proof.positions})


def _drain(q: queue.SimpleQueue[Any]) -> Iterator[Any]:
    while (item := q.get()) is not None:
        yield item
