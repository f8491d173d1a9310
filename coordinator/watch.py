"""The coordinator's side of early warning (docs/WATCH.md): epochs, filters, checks.

Rules:
- One epoch at a time. A watch round opens it when every node has its delivery; a newer watch
  round replaces it (the previous participants are told to destroy their keys).
- Per participant, a scalable Bloom filter of its final tags (``FILTER_ERROR_RATE``), never the
  tags: a watch round's tags are dropped once the filters are built, a check's once answered.
- Filters persist in the state directory (``<state>.watch/``: ``epoch.json`` and one
  ``<node>.bloom`` per participant, rewritten atomically after every check that adds to it), so
  they survive a coordinator restart; the nodes keep their keys meanwhile, so checks resume.
  An ended epoch's files are deleted.
- A check (``CheckServicer.Check``, node certificates only; the caller's certificate name is the
  checker) is routed through every partner's key in the round's cyclic order, tested against the
  filters both policies allow, confirmed by each partner with a hit (``Alert``), then added to
  the checker's filter.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import grpc
from pybloom_live import ScalableBloomFilter

from blindmatch.group import ELEMENT_BYTES
from blindmatch.net import peer_identity
from blindmatch.pki import PkiError
from blindmatch.protocol import BadMessage, PolicyRefusal, ProtocolError, RoundSpec
from blindmatch.v1 import watch_pb2, watch_pb2_grpc
from blindmatch.watch import (
    DEFAULT_EPOCH_SECONDS,
    FILTER_ERROR_RATE,
    EpochEnded,
    check_route,
    reported_partners,
    split_tags,
    utc_text,
)

log = logging.getLogger(__name__)

SERVICE_PREFIX: Final = "/blindmatch.v1.CoordinatorWatchService/"
MAX_CHECK_ELEMENTS: Final = 100_000  # per check: 3.2 MB of elements each way
CLOSE_TIMEOUT: Final = 5.0  # seconds: deadline of each best-effort CloseEpoch


class WatchFailure(Exception):
    """A node refused or failed a watch call; ``code`` is the status to pass on."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


def new_filter(capacity: int) -> Any:
    """An empty filter of the kind every epoch holds per node (the benchmarks measure it)."""
    return ScalableBloomFilter(
        initial_capacity=max(capacity, 1000),
        error_rate=FILTER_ERROR_RATE,
        mode=ScalableBloomFilter.SMALL_SET_GROWTH,
    )


def _key(tag: bytes) -> str:
    # pybloom_live hashes str(key) for anything but str; hex is the exact, cheap spelling.
    return tag.hex()


@dataclass
class Epoch:
    epoch_id: str
    participants: tuple[str, ...]
    ends: float  # unix seconds
    filters: dict[str, Any] = field(default_factory=dict)  # node -> ScalableBloomFilter

    def ended(self, now: float) -> bool:
        return now >= self.ends


class WatchHub:
    """The current epoch, its filters on disk, and the calls to nodes it needs."""

    def __init__(
        self,
        directory: Path,
        channels: Mapping[str, grpc.Channel],
        addresses: Mapping[str, str],
        call_timeout: float,
    ) -> None:
        self.directory = directory
        self.addresses = dict(addresses)
        self.call_timeout = call_timeout
        self._stubs = {n: watch_pb2_grpc.NodeWatchServiceStub(c) for n, c in channels.items()}
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="watch")
        self.epoch: Epoch | None = self._load()

    # --- persistence ------------------------------------------------------------------------

    def _load(self) -> Epoch | None:
        meta = self.directory / "epoch.json"
        if not meta.exists():
            return None
        try:
            data = json.loads(meta.read_text())
            epoch = Epoch(data["epoch_id"], tuple(data["participants"]), float(data["ends"]))
            if epoch.ended(time.time()):
                self._erase()
                return None
            for node in epoch.participants:
                with (self.directory / f"{node}.bloom").open("rb") as f:
                    epoch.filters[node] = ScalableBloomFilter.fromfile(f)
        except (OSError, ValueError, KeyError) as exc:
            log.error("watch state in %s is unreadable (%s); the epoch is dropped", meta, exc)
            self._erase()
            return None
        log.info("epoch %s reloaded, ends %s", epoch.epoch_id, utc_text(epoch.ends))
        return epoch

    def _save_meta(self, epoch: Epoch) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        data = {"epoch_id": epoch.epoch_id, "participants": epoch.participants, "ends": epoch.ends}
        self._atomic(self.directory / "epoch.json", json.dumps(data).encode())

    def _save_filter(self, node: str, bloom: Any) -> None:
        tmp = self.directory / f"{node}.bloom.tmp"
        with tmp.open("wb") as f:
            bloom.tofile(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.directory / f"{node}.bloom")

    @staticmethod
    def _atomic(path: Path, data: bytes) -> None:
        tmp = path.with_name(path.name + ".tmp")
        with tmp.open("wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def _erase(self) -> None:
        if self.directory.is_dir():
            for path in self.directory.iterdir():
                if path.name == "epoch.json" or path.suffix in (".bloom", ".tmp"):
                    path.unlink(missing_ok=True)

    def filter_bytes(self) -> dict[str, int]:
        """Bytes on disk of each participant's filter (for benchmarks and status)."""
        epoch = self.epoch
        if epoch is None:
            return {}
        return {n: (self.directory / f"{n}.bloom").stat().st_size for n in epoch.filters}

    # --- opening and closing epochs ----------------------------------------------------------

    def watch_round(self, spec: RoundSpec, epoch_seconds: float | None) -> WatchRound:
        return WatchRound(self, spec, epoch_seconds or DEFAULT_EPOCH_SECONDS)

    def _activate(self, epoch: Epoch, tags: Mapping[str, bytes]) -> None:
        for node, packed in tags.items():
            bloom = new_filter(len(packed) // ELEMENT_BYTES)
            add = bloom.add
            for i in range(0, len(packed), ELEMENT_BYTES):
                add(packed[i : i + ELEMENT_BYTES].hex())
            epoch.filters[node] = bloom
        with self._lock:
            previous, self.epoch = self.epoch, None
            self._erase()
            for node, bloom in epoch.filters.items():
                self.directory.mkdir(parents=True, exist_ok=True)
                self._save_filter(node, bloom)
            self._save_meta(epoch)
            self.epoch = epoch
        log.info("epoch %s open until %s", epoch.epoch_id, utc_text(epoch.ends))
        if previous is not None:
            others = [n for n in previous.participants if n not in epoch.participants]
            self._close_on(previous.epoch_id, others, f"replaced by epoch {epoch.epoch_id}")

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
        epoch = self.epoch
        now = time.time()
        if epoch is None or epoch.epoch_id != request.epoch_id:
            have = f"the current epoch is {epoch.epoch_id}" if epoch else "no epoch is open"
            raise EpochEnded(
                f"the coordinator has no epoch {request.epoch_id!r} ({have}); start a watch round"
            )
        if epoch.ended(now):
            with self._lock:
                if self.epoch is epoch:
                    self.epoch = None
                    self._erase()
            raise EpochEnded(f"epoch {epoch.epoch_id} ended at {utc_text(epoch.ends)}")
        if checker not in epoch.participants:
            raise PolicyRefusal(f"{checker} is not a participant of epoch {epoch.epoch_id}")
        count = len(request.elements) // ELEMENT_BYTES
        if len(request.elements) % ELEMENT_BYTES or not count:
            raise BadMessage("a check carries one or more whole 32-byte elements")
        if count > MAX_CHECK_ELEMENTS:
            raise BadMessage(f"a check of {count} elements; at most {MAX_CHECK_ELEMENTS} per check")
        elements = request.elements
        shares: dict[str, bool] = {}
        for partner in check_route(epoch.participants, checker):
            reply = self._call(
                partner,
                "blind the check",
                lambda stub, e=elements: stub.ReblindCheck(
                    watch_pb2.ReblindCheckRequest(
                        epoch_id=epoch.epoch_id, checker=checker, elements=e
                    ),
                    timeout=self.call_timeout,
                ),
            )
            if len(reply.elements) != len(elements):
                raise WatchFailure(
                    grpc.StatusCode.INTERNAL, f"{partner} returned a check of the wrong length"
                )
            elements = reply.elements
            shares[partner] = reply.share
        tags = split_tags(elements)
        keys = [_key(t) for t in tags]
        allows = None if request.any_partner else frozenset(request.allowed)
        candidates: dict[str, list[int]] = {}
        with self._lock:
            for partner in reported_partners(epoch.participants, checker, allows, shares):
                bloom = epoch.filters[partner]
                hit = [i for i, k in enumerate(keys) if k in bloom]
                if hit:
                    candidates[partner] = hit
        alerts: dict[str, Future[watch_pb2.AlertReply]] = {
            partner: self._pool.submit(
                self._stubs[partner].Alert,
                watch_pb2.AlertRequest(
                    epoch_id=epoch.epoch_id,
                    checker=checker,
                    tags=b"".join(tags[i] for i in hit),
                ),
                timeout=self.call_timeout,
            )
            for partner, hit in candidates.items()
        }
        reply = watch_pb2.CheckReply(tags=elements, epoch_ends=epoch.ends)
        for partner, future in alerts.items():
            try:
                known = list(future.result().known)
            except grpc.RpcError as err:
                log.warning("epoch %s: Alert on %s failed: %s", epoch.epoch_id, partner, err)
                continue
            confirmed = [i for i, ok in zip(candidates[partner], known, strict=False) if ok]
            if confirmed:
                reply.hits[partner].indices.extend(confirmed)
        with self._lock:
            bloom = epoch.filters[checker]
            for k in keys:
                bloom.add(k)
            if self.epoch is epoch:
                self._save_filter(checker, bloom)
        return reply

    def _call(self, node: str, what: str, call: Any) -> Any:
        try:
            return call(self._stubs[node])
        except grpc.RpcError as err:
            code = err.code()
            details = err.details() or "(no details)"
            if code == grpc.StatusCode.UNAVAILABLE:
                details = f"unreachable at {self.addresses.get(node, '?')}: {details}"
            raise WatchFailure(code, f"{node} could not {what}: {code.name}: {details}") from None


class WatchRound:
    """What a watch round adds to a pairwise round, called by its driver."""

    def __init__(self, hub: WatchHub, spec: RoundSpec, epoch_seconds: float) -> None:
        self.hub = hub
        self.spec = spec
        self.epoch_seconds = epoch_seconds
        self._tags: dict[str, bytes] = {}
        self._ends = 0.0

    def before_deliver(self, tags: Mapping[str, bytes]) -> None:
        """Hand every node its own final tags and the epoch's end, in parallel."""
        self._ends = time.time() + self.epoch_seconds
        self._tags = dict(tags)
        futures = {
            node: self.hub._pool.submit(
                self.hub._stubs[node].BeginEpoch,
                watch_pb2.BeginEpochRequest(
                    round_id=self.spec.round_id, ends=self._ends, tags=tags[node]
                ),
                timeout=self.hub.call_timeout,
            )
            for node in self.spec.participants
        }
        problems = []
        for node, future in futures.items():
            try:
                future.result()
            except grpc.RpcError as err:
                problems.append(f"{node} refused BeginEpoch: {err.code().name}: {err.details()}")
        if problems:
            self._tags = {}
            raise WatchFailure(grpc.StatusCode.FAILED_PRECONDITION, "; ".join(problems))

    def after_deliver(self) -> None:
        """Every node holds its key and tag map: the coordinator keeps filters, not tags."""
        epoch = Epoch(self.spec.round_id, self.spec.participants, self._ends)
        tags, self._tags = self._tags, {}
        self.hub._activate(epoch, tags)

    @property
    def ends(self) -> float:
        return self._ends


class CheckServicer(watch_pb2_grpc.CoordinatorWatchServiceServicer):
    def __init__(self, hub: WatchHub) -> None:
        self.hub = hub

    def Check(
        self, request: watch_pb2.CheckRequest, context: grpc.ServicerContext
    ) -> watch_pb2.CheckReply:
        try:
            identity = peer_identity(context)
        except PkiError:
            identity = None
        if identity is None:
            context.abort(
                grpc.StatusCode.UNAUTHENTICATED,
                "checks need mTLS: the checker is the node named in its certificate",
            )
            raise AssertionError("unreachable")
        try:
            return self.hub.check(identity.name, request)
        except ProtocolError as exc:
            context.abort(getattr(grpc.StatusCode, exc.code), str(exc))
        except WatchFailure as exc:
            context.abort(exc.code, str(exc))
        raise AssertionError("unreachable")


def access_rules() -> dict[str, list[tuple[str, str | None]]]:
    return {SERVICE_PREFIX: [("node", None)]}
