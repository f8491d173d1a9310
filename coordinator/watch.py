"""The coordinator's side of early warning (docs/WATCH.md): epochs, filters, checks.

Rules:
- One epoch at a time. A watch round opens it when every node has its delivery; a newer watch
  round replaces it (the previous participants are told to destroy their keys).
- The epoch has the coordinator's own key k_c, drawn when the watch round is fully blinded and
  applied to every final tag before anything is kept or handed back: each node's tag map and
  every filter hold k_c-tags, which no node can compute.
- Per participant, a scalable Bloom filter of its k_c-tags (``FILTER_ERROR_RATE``), never the
  tags: a watch round's tags are dropped once the filters are built, a check's once answered.
- Filters and k_c persist in the state directory (``<state>.watch/``: ``epoch.json``,
  ``epoch.key`` and one ``<node>.bloom`` per participant, all 0600, a filter rewritten
  atomically after every check that adds to it), so they survive a coordinator restart; the
  nodes keep their keys meanwhile, so checks resume. An ended epoch's files are deleted.
- A check (node certificates only; the caller's certificate name is the checker) takes two
  calls. ``Check``: the checker's signed, masked chunks are routed through every partner's key
  in the round's cyclic order, pipelined (each chunk moves on as soon as a hop returns it, a few
  in flight per hop), each hop's signed output forwarded to the next, each chunk sealed with k_c
  once routed, and the whole returned. ``FinishCheck``: the checker's unmasked k_c-tags are tested against the
  filters both policies allow, confirmed by each partner with a hit (``Alert``), then added to
  the checker's filter.
Every decision (which epoch, expiry, validation, routing, Bloom tests, fan-out) is the core's
(``blindmatch.core.watch_coordinator.CoordinatorWatch`` and ``CheckFlow``); this module keeps the
files and the calls to nodes: ``WatchHub`` holds them, ``EpochOpener`` is what a watch round's
driver calls to open its epoch through the hub, ``CheckPipe`` runs one check's calls on the pool
the hub hands it, and ``CheckServicer`` serves checks and counts them (coordinator/metrics.py).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO, Final, TypeVar

import grpc
from pybloom_live import ScalableBloomFilter

from blindmatch.core.errors import ProtocolError
from blindmatch.core.group import ELEMENT_BYTES, RoundKey
from blindmatch.core.identity import Identity, PkiError
from blindmatch.core.spec import RoundSpec
from blindmatch.core.watch_coordinator import (
    CheckFlow,
    CoordinatorEpoch,
    CoordinatorWatch,
    filter_key,
    seal,
)
from blindmatch.core.watch_rules import (
    DEFAULT_EPOCH_SECONDS,
    FILTER_ERROR_RATE,
    CheckHop,
    Clock,
    utc_text,
)
from blindmatch.runtime import serde, status
from blindmatch.runtime.hardening import open_private, private_dir
from blindmatch.runtime.net import peer_identity
from blindmatch.v1 import watch_pb2, watch_pb2_grpc
from coordinator.metrics import NO_METRICS, CoordinatorHooks

log = logging.getLogger(__name__)

SERVICE_PREFIX: Final = "/blindmatch.v1.CoordinatorWatchService/"
CLOSE_TIMEOUT: Final = 5.0  # seconds: deadline of each best-effort CloseEpoch
T = TypeVar("T")


class WatchFailure(status.StatusError):
    """A node refused or failed a watch call; ``code`` is the status to pass on."""


def new_filter(capacity: int) -> Any:
    """An empty filter of the kind every epoch holds per node (the benchmarks measure it)."""
    return ScalableBloomFilter(
        initial_capacity=max(capacity, 1000),
        error_rate=FILTER_ERROR_RATE,
        mode=ScalableBloomFilter.SMALL_SET_GROWTH,
    )


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
        self._stubs = {n: watch_pb2_grpc.NodeWatchServiceStub(c) for n, c in channels.items()}
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="watch")
        self.core = CoordinatorWatch(clock)
        loaded = self._load()
        if loaded is not None:
            self.core.open(loaded)

    @property
    def epoch(self) -> CoordinatorEpoch | None:
        return self.core.epoch

    @property
    def clock(self) -> Clock:
        return self.core.clock

    @clock.setter
    def clock(self, clock: Clock) -> None:  # tests drive time instead of sleeping
        self.core.clock = clock

    def epoch_open(self) -> bool:
        """Whether an epoch is open now (the metrics ask at every scrape)."""
        # an epoch past its end stays loaded until the next check reaps it; it is not open
        epoch = self.epoch
        return epoch is not None and epoch.closed is None and not epoch.ended(self.clock())

    # --- persistence ------------------------------------------------------------------------

    def _load(self) -> CoordinatorEpoch | None:
        meta = self.directory / "epoch.json"
        if not meta.exists():
            return None
        try:
            data = json.loads(meta.read_text())
            epoch = CoordinatorEpoch(
                data["epoch_id"], tuple(data["participants"]), float(data["ends"])
            )
            if not self.core.restorable(epoch):
                self._erase()
                return None
            epoch.key = RoundKey.from_bytes((self.directory / "epoch.key").read_bytes())
            for node in epoch.participants:
                with (self.directory / f"{node}.bloom").open("rb") as f:
                    epoch.filters[node] = ScalableBloomFilter.fromfile(f)
        except (OSError, ValueError, KeyError) as exc:
            log.error("watch state in %s is unreadable (%s); the epoch is dropped", meta, exc)
            self._erase()
            return None
        log.info("epoch %s reloaded, ends %s", epoch.epoch_id, utc_text(epoch.ends))
        return epoch

    def _save_meta(self, epoch: CoordinatorEpoch) -> None:
        private_dir(self.directory)
        assert epoch.key is not None
        # k_c first: epoch.json is what a restart looks for, and it needs the key beside it
        self._atomic(self.directory / "epoch.key", epoch.key.export())
        data = {"epoch_id": epoch.epoch_id, "participants": epoch.participants, "ends": epoch.ends}
        self._atomic(self.directory / "epoch.json", json.dumps(data).encode())

    def _save_filter(self, node: str, bloom: Any) -> None:
        # filters test membership of a nation's tags: owner only, like everything here
        self._atomic(self.directory / f"{node}.bloom", bloom.tofile)

    @staticmethod
    def _atomic(path: Path, data: bytes | Callable[[BinaryIO], object]) -> None:
        """Write ``data`` (bytes, or a writer of a file) to ``path`` at once, owner-only."""
        tmp = path.with_name(path.name + ".tmp")
        with open_private(tmp) as f:
            if isinstance(data, bytes):
                f.write(data)
            else:
                data(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def _erase(self) -> None:
        if self.directory.is_dir():
            for path in self.directory.iterdir():
                if path.name in ("epoch.json", "epoch.key") or path.suffix in (".bloom", ".tmp"):
                    path.unlink(missing_ok=True)

    def filter_bytes(self) -> dict[str, int]:
        """Bytes on disk of each participant's filter (for benchmarks and status)."""
        epoch = self.epoch
        if epoch is None:
            return {}
        return {n: (self.directory / f"{n}.bloom").stat().st_size for n in epoch.filters}

    # --- opening and closing epochs ----------------------------------------------------------

    def epoch_opener(self, spec: RoundSpec) -> EpochOpener:
        """What opens the epoch of watch round ``spec``: the one its spec announced to the nodes."""
        return EpochOpener(self, spec, spec.epoch_seconds or DEFAULT_EPOCH_SECONDS)

    def begin_epoch(self, round_id: str, ends: float, tags: Mapping[str, bytes]) -> None:
        """Hand every node of ``tags`` its own k_c-tags and the epoch's end, in parallel;
        WatchFailure naming every node that refused."""
        futures = {
            node: self._pool.submit(
                self._stubs[node].BeginEpoch,
                watch_pb2.BeginEpochRequest(round_id=round_id, ends=ends, tags=packed),
                timeout=self.call_timeout,
            )
            for node, packed in tags.items()
        }
        problems = []
        for node, future in futures.items():
            try:
                future.result()
            except grpc.RpcError as err:
                problems.append(f"{node} refused BeginEpoch: {err.code().name}: {err.details()}")
        if problems:
            raise WatchFailure(grpc.StatusCode.FAILED_PRECONDITION, "; ".join(problems))

    def open_epoch(self, epoch: CoordinatorEpoch, tags: Mapping[str, bytes]) -> None:
        """Every node holds its tag map: keep filters of ``tags`` (k_c-tags by node), on disk
        too, and make ``epoch`` the current one, closing the one it replaces."""
        for node, packed in tags.items():
            bloom = new_filter(len(packed) // ELEMENT_BYTES)
            add = bloom.add
            for i in range(0, len(packed), ELEMENT_BYTES):
                add(filter_key(packed[i : i + ELEMENT_BYTES]))
            epoch.filters[node] = bloom
        with self._lock:
            self._erase()
            private_dir(self.directory)
            for node, bloom in epoch.filters.items():
                self._save_filter(node, bloom)
            self._save_meta(epoch)
            closing = self.core.open(epoch)
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
        self._pool.shutdown(wait=False, cancel_futures=True)

    # --- checks -----------------------------------------------------------------------------

    def check(self, checker: str, request: watch_pb2.CheckRequest) -> watch_pb2.CheckReply:
        """The first call of a check: route its chunks through every partner, pipelined, and
        seal each with k_c as it leaves the last one."""
        allows = serde.check_partners_from_proto(request)
        with self._lock:
            if self.core.expire() is not None:
                self._erase()
            self.core.epoch_of(request.epoch_id)  # an ended epoch is named before the chunks
            flow = self.core.begin_check(
                serde.check_hops_from_proto(request, checker), allows, checker=checker
            )
        CheckPipe(flow, self._pool, self._call, self.call_timeout).run()
        return watch_pb2.CheckReply(masked=flow.sealed(), epoch_ends=flow.epoch.ends)

    def finish_check(
        self, checker: str, request: watch_pb2.FinishCheckRequest
    ) -> watch_pb2.FinishCheckReply:
        """The second call: the checker's k_c-tags against the filters, Alerts, the answer."""
        with self._lock:
            flow = self.core.finishing(checker, request.epoch_id, request.check_id)
            flow.on_unmasked(request.tags)
            candidates = flow.alerts()
        self._fan_out(flow, candidates)
        with self._lock:
            result = flow.finish()
            if self.core.epoch is flow.epoch:
                self._save_filter(checker, flow.epoch.filters[checker])
        return serde.check_hits_to_proto(result.hits, result.epoch_ends)

    def _fan_out(self, flow: CheckFlow, candidates: Mapping[str, bytes]) -> None:
        """Alert every partner with a hit, in parallel; each answers which tags it holds."""
        futures: dict[str, Future[watch_pb2.AlertReply]] = {
            partner: self._pool.submit(
                self._stubs[partner].Alert,
                watch_pb2.AlertRequest(epoch_id=flow.epoch.epoch_id, checker=flow.checker, tags=t),
                timeout=self.call_timeout,
            )
            for partner, t in candidates.items()
        }
        for partner, future in futures.items():
            try:
                known = list(future.result().known)
            except grpc.RpcError as err:
                log.warning("epoch %s: Alert on %s failed: %s", flow.epoch.epoch_id, partner, err)
                flow.on_alert_failed(partner)
                continue
            flow.on_alert_reply(partner, known)

    def _call(self, node: str, what: str, call: Any) -> Any:
        try:
            return call(self._stubs[node])
        except grpc.RpcError as err:
            code = err.code()
            details = err.details() or "(no details)"
            if code == grpc.StatusCode.UNAVAILABLE:
                details = f"unreachable at {self.addresses.get(node, '?')}: {details}"
            raise WatchFailure(code, f"{node} could not {what}: {code.name}: {details}") from None


# Makes one call on a node's watch service: (node, what it is asked to do, the call on its stub).
NodeCall = Callable[[str, str, Callable[[watch_pb2_grpc.NodeWatchServiceStub], Any]], Any]


class CheckPipe:
    """One check's chunks on their way through the hops: every call and every k_c sealing is a
    task of the hub's pool, and each task, once done, starts what the flow lets go next."""

    def __init__(
        self, flow: CheckFlow, pool: Executor, call_node: NodeCall, call_timeout: float
    ) -> None:
        self.flow = flow
        self.pool = pool
        self.call_node = call_node
        self.call_timeout = call_timeout
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._failure: Exception | None = None

    def run(self) -> None:
        with self._lock:
            self._launch()
        # each call has its deadline, so every task ends; this bounds a pool that stopped
        if not self._done.wait(self.call_timeout * (len(self.flow.route) + 1)):
            self._fail(WatchFailure(grpc.StatusCode.DEADLINE_EXCEEDED, "the check timed out"))
        if self._failure is not None:
            raise self._failure

    def _launch(self) -> None:
        """Start what the flow allows now; under ``_lock``."""
        if self._failure is not None:
            return
        for node, chunk in self.flow.sends():
            self._submit(self._reblind, node, chunk)
        for seq in self.flow.to_seal():
            self._submit(self._seal, seq)
        if self.flow.routed:
            self._done.set()

    def _submit(self, task: Callable[..., None], *args: Any) -> None:
        try:
            self.pool.submit(self._guarded, task, *args)
        except RuntimeError:  # the pool is shut down: the coordinator is stopping
            self._failure = WatchFailure(grpc.StatusCode.UNAVAILABLE, "the coordinator stopped")
            self._done.set()

    def _guarded(self, task: Callable[..., None], *args: Any) -> None:
        try:
            task(*args)
        except Exception as exc:  # any failure of a task is the check's, passed on to the checker
            self._fail(exc)

    def _fail(self, exc: Exception) -> None:
        with self._lock:
            if self._failure is None:
                self._failure = exc
            self._done.set()

    def _reblind(self, node: str, chunk: CheckHop) -> None:
        request = serde.check_hop_to_proto(chunk)
        reply = self.call_node(
            node,
            "blind the check",
            lambda stub: stub.ReblindCheck(request, timeout=self.call_timeout),
        )
        with self._lock:
            if self._failure is not None:
                return
            self.flow.on_reblinded(
                node, chunk.seq, reply.elements, reply.share, reply.signature, reply.certificate
            )
            self._launch()

    def _seal(self, seq: int) -> None:
        sealed = self.flow.seal(seq)
        with self._lock:
            if self._failure is not None:
                return
            self.flow.on_sealed(seq, sealed)
            self._launch()


class EpochOpener:
    """What a watch round adds to a pairwise round, called by its driver: the epoch it opens."""

    def __init__(self, hub: WatchHub, spec: RoundSpec, epoch_seconds: float) -> None:
        self.hub = hub
        self.spec = spec
        self.epoch_seconds = epoch_seconds
        self._tags: dict[str, bytes] = {}  # node -> its k_c-tags, until the epoch opens
        self._key: RoundKey | None = None  # k_c, until the epoch opens
        self._ends = 0.0

    def before_deliver(self, tags: Mapping[str, bytes]) -> None:
        """Draw k_c, and hand every node its own k_c-tags and the epoch's end, in parallel."""
        self._ends = self.hub.core.epoch_end(self.epoch_seconds)
        self._key = RoundKey.generate()
        self._tags = {node: seal(self._key, packed) for node, packed in tags.items()}
        try:
            self.hub.begin_epoch(
                self.spec.round_id,
                self._ends,
                {node: self._tags[node] for node in self.spec.participants},
            )
        except WatchFailure:
            self.abandon()
            raise

    def after_deliver(self) -> None:
        """Every node holds its key and tag map: the coordinator keeps filters, not tags."""
        epoch = CoordinatorEpoch(
            self.spec.round_id, self.spec.participants, self._ends, key=self._key
        )
        tags, self._tags, self._key = self._tags, {}, None
        self.hub.open_epoch(epoch, tags)

    def abandon(self) -> None:
        """The round failed: no epoch, k_c destroyed."""
        self._tags = {}
        if self._key is not None:
            self._key.destroy()
            self._key = None

    @property
    def ends(self) -> float:
        return self._ends


class CheckServicer(watch_pb2_grpc.CoordinatorWatchServiceServicer):
    def __init__(self, hub: WatchHub, metrics: CoordinatorHooks = NO_METRICS) -> None:
        self.hub = hub
        self.metrics = metrics

    def Check(
        self, request: watch_pb2.CheckRequest, context: grpc.ServicerContext
    ) -> watch_pb2.CheckReply:
        def route(checker: str) -> watch_pb2.CheckReply:
            reply = self.hub.check(checker, request)
            self.metrics.check_routed(checker)
            return reply

        return self._as_checker(context, route)

    def FinishCheck(
        self, request: watch_pb2.FinishCheckRequest, context: grpc.ServicerContext
    ) -> watch_pb2.FinishCheckReply:
        return self._as_checker(context, lambda checker: self.hub.finish_check(checker, request))

    def _as_checker(self, context: grpc.ServicerContext, handle: Callable[[str], T]) -> T:
        """``handle`` for the node named in the caller's certificate; its errors as statuses."""
        checker = _checker(context)
        with status.refusing(context, ProtocolError, WatchFailure):
            return handle(checker.name)
        raise AssertionError("unreachable")  # refusing() aborts


def _checker(context: grpc.ServicerContext) -> Identity:
    try:
        identity = peer_identity(context)
    except PkiError:
        identity = None
    if identity is None:
        status.abort(
            context,
            status.StatusError(
                grpc.StatusCode.UNAUTHENTICATED,
                "checks need mTLS: the checker is the node named in its certificate",
            ),
        )
    return identity


def access_rules() -> dict[str, list[tuple[str, str | None]]]:
    return {SERVICE_PREFIX: [("node", None)]}
