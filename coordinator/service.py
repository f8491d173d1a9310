"""The coordinator's gRPC service, and the server that runs it.

The servicer is thin: it converts messages and maps errors to statuses through
``blindmatch.runtime.serde``, and calls ``Coordinator`` or ``RoundBoard``. Who may call it is decided before
any handler runs, by ``net.AccessPolicy``: the whole service is open to operators, all of them or
the names listed in the config's ``operators``.
"""

from __future__ import annotations

import datetime
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import FrameType
from typing import Any, Final

import grpc
from cryptography import x509

from blindmatch.cli.tomlconfig import ConfigError
from blindmatch.core.errors import ForgedMessage, ProtocolError
from blindmatch.core.identity import Identity, PkiError, identity_of
from blindmatch.core.match import MAX_PARTICIPANTS
from blindmatch.core.orders import StandingOrder
from blindmatch.core.signing import Trust, verify_order, verify_spec
from blindmatch.core.watch_rules import MAX_CHECK_VALUES
from blindmatch.core.watch_sealed import sealed_bytes
from blindmatch.runtime import serde, status
from blindmatch.runtime.hardening import no_core_dumps
from blindmatch.runtime.logs import log_native_stderr, setup_logging
from blindmatch.runtime.memory import return_large_buffers
from blindmatch.runtime.metrics_endpoint import MetricsEndpoint
from blindmatch.runtime.net import (
    AccessPolicy,
    NetError,
    ServerHandle,
    Slots,
    TlsConfig,
    load_tls,
    peer_identity,
    split_host_port,
    start_server,
)
from blindmatch.runtime.pki import check_renewal
from blindmatch.v1 import coordinator_pb2, coordinator_pb2_grpc
from blindmatch.v2 import watch_pb2_grpc
from coordinator.config import ANY_OPERATOR, CoordinatorConfig
from coordinator.driver import Coordinator, NodeLinks, RoundFailure, RoundSettings
from coordinator.metrics import NO_METRICS, CoordinatorHooks, CoordinatorMetrics
from coordinator.records import RoundBoard, SqliteRoundStore
from coordinator.schedules import Scheduler, ScheduleView
from coordinator.watch import SERVICE_PREFIX as WATCH_PREFIX
from coordinator.watch import CheckServicer, WatchHub, round_info
from coordinator.watch import access_rules as watch_access_rules

SERVICE_PREFIX: Final = "/blindmatch.v1.CoordinatorService/"
# The largest message each method legitimately carries (net.Gate); anything else takes 64 KiB.
RECEIVE_LIMITS: Final = {
    SERVICE_PREFIX + "StartRound": 1 << 20,  # a signed spec and the operator's certificate
    SERVICE_PREFIX + "Schedule": 1 << 20,
    # a check: one chunk of MAX_CHECK_VALUES points and its subset checks
    WATCH_PREFIX + "Check": 65 * MAX_CHECK_VALUES + (1 << 20),
    # one sealed batch of MAX_CHECK_VALUES messages for every other participant
    WATCH_PREFIX + "Seal": (MAX_PARTICIPANTS - 1) * (sealed_bytes(MAX_CHECK_VALUES) + 1024)
    + (1 << 20),
}
DEFAULT_LIST_LIMIT: Final = 50
MAX_LIST_LIMIT: Final = 1000
INSECURE_OPERATOR: Final = "(insecure)"  # plaintext callers have no certificate, hence no name

# Who signed a spec or an order, verified against the federation CA at a time.
SignerOf = Callable[[Trust, datetime.datetime], Identity]


class CoordinatorServicer(coordinator_pb2_grpc.CoordinatorServiceServicer):
    def __init__(self, coordinator: Coordinator, trust: Trust | None, scheduler: Scheduler) -> None:
        self.coordinator = coordinator
        self.board = coordinator.board
        self.trust = trust  # the federation CA; None when serving plaintext
        self.scheduler = scheduler

    def StartRound(
        self, request: coordinator_pb2.StartRoundRequest, context: grpc.ServicerContext
    ) -> coordinator_pb2.RoundInfo:
        with status.refusing(context, ProtocolError, RoundFailure):
            signed, spec = serde.signed_spec_from_proto(request.signed_spec)
            operator = self._operator(
                context,
                "the round spec",
                lambda trust, now: verify_spec(trust, signed, issued=spec.issued, now=now).identity,
            )
            record = self.coordinator.start_round(signed, spec, operator=operator)
        return round_info(self.coordinator.watch, record)

    def _operator(self, context: grpc.ServicerContext, what: str, signer_of: SignerOf) -> str:
        """Who signed ``what``, which must be who calls: an operator starts only its own rounds
        and orders, so their signature and their record name the same party."""
        if self.trust is None:
            return INSECURE_OPERATOR
        signer = signer_of(self.trust, datetime.datetime.now(datetime.UTC))
        caller = _caller(context)
        if signer != caller:
            raise ForgedMessage(f"{what} is signed by {signer}, but {caller} sent it")
        return signer.name

    def Schedule(
        self, request: coordinator_pb2.ScheduleRequest, context: grpc.ServicerContext
    ) -> coordinator_pb2.ScheduleInfo:
        with status.refusing(context, ProtocolError):
            signed, order = serde.signed_order_from_proto(request.order)
            self._check_runs(order)
            operator = self._operator(
                context,
                "the standing order",
                lambda trust, now: verify_order(trust, signed, now=now).identity,
            )
            view = self.scheduler.add(signed, order, operator)
        return _schedule_info(view)

    def _check_runs(self, order: StandingOrder) -> None:
        """Refuse now what every run would be refused for (its spec is the order's)."""
        self.coordinator.check_spec(order.run_spec(0))

    def ListSchedules(
        self, request: coordinator_pb2.ListSchedulesRequest, context: grpc.ServicerContext
    ) -> coordinator_pb2.ListSchedulesReply:
        return coordinator_pb2.ListSchedulesReply(
            schedules=[_schedule_info(v) for v in self.scheduler.views()]
        )

    def CancelSchedule(
        self, request: coordinator_pb2.CancelScheduleRequest, context: grpc.ServicerContext
    ) -> coordinator_pb2.ScheduleInfo:
        # any operator the coordinator serves may cancel (the access policy let the caller in)
        caller = _caller(context)
        by = caller.name if caller is not None else INSECURE_OPERATOR
        with status.refusing(context, ProtocolError):
            return _schedule_info(self.scheduler.cancel(request.id, by))

    def GetRound(
        self, request: coordinator_pb2.GetRoundRequest, context: grpc.ServicerContext
    ) -> coordinator_pb2.RoundInfo:
        with status.refusing(context, ProtocolError, RoundFailure):
            return round_info(self.coordinator.watch, self.board.get(request.id))

    def ListRounds(
        self, request: coordinator_pb2.ListRoundsRequest, context: grpc.ServicerContext
    ) -> coordinator_pb2.ListRoundsReply:
        # A larger limit is capped, not refused: it asks for "as many as there are", and gets
        # the most one reply carries (uint32 on the wire, so never negative).
        limit = min(request.limit or DEFAULT_LIST_LIMIT, MAX_LIST_LIMIT)
        return coordinator_pb2.ListRoundsReply(
            rounds=[round_info(self.coordinator.watch, r) for r in self.board.recent(limit)]
        )

    def WatchRound(
        self, request: coordinator_pb2.GetRoundRequest, context: grpc.ServicerContext
    ) -> Iterator[coordinator_pb2.RoundInfo]:
        # wake the watch as soon as the client goes away, instead of at its next poll
        context.add_callback(self.board.wake)
        with status.refusing(context, ProtocolError, RoundFailure):
            for record in self.board.watch(request.id, context.is_active):
                yield round_info(self.coordinator.watch, record)


def _schedule_info(view: ScheduleView) -> coordinator_pb2.ScheduleInfo:
    return serde.schedule_to_proto(view.record, view.order, view.next_run)


def _caller(context: grpc.ServicerContext) -> Identity | None:
    try:
        return peer_identity(context)
    except PkiError:  # the access policy has already refused such a caller
        return None


def access_policy(operators: tuple[str, ...]) -> AccessPolicy:
    """The whole service for operators: any of them with "*", else the names listed; checks
    for nodes."""
    if ANY_OPERATOR in operators:
        allowed: list[tuple[str, str | None]] = [("operator", None)]
    else:
        allowed = [("operator", name) for name in operators]
    # the early-warning Check is for nodes (coordinator/watch.py)
    return AccessPolicy({SERVICE_PREFIX: allowed, **watch_access_rules()})


@dataclass
class RunningCoordinator:
    """A started coordinator: its server, its rounds and its state file."""

    handle: ServerHandle
    coordinator: Coordinator
    store: SqliteRoundStore
    failed_on_start: list[str]  # ids of rounds a previous run left unfinished
    scheduler: Scheduler
    watch: WatchHub | None = None
    metrics: MetricsEndpoint | None = None  # the [metrics] endpoint, when configured
    checks: Slots | None = None  # early-warning checks in flight (limits)
    config: CoordinatorConfig | None = None  # where reload_certificate reads the certificate

    @property
    def port(self) -> int:
        return self.handle.port

    def reload_certificate(self) -> str:
        """Take a certificate renewed for the same key (``blindmatch pki renew``; SIGHUP): new
        handshakes present it; connections made, and rounds on them, run on. Later calls to the
        nodes go over channels opened again with it. A new key or CA needs a restart, as
        nodes do (one rule for both). Raises NetError, PkiError or ConfigError, keeping the
        certificate in use."""
        certificates = self.handle.certificates
        if certificates is None or self.config is None:
            raise PkiError("this coordinator serves without mTLS: it has no certificate to reload")
        new = _coordinator_tls(self.config)
        old = certificates.current
        check_renewal((old.ca, old.cert), (new.ca, new.cert), same_key=True)
        certificates.swap(new)
        # the channels it opens to the nodes present the renewed certificate too
        self.coordinator.links.renew(new)
        if self.watch is not None:
            self.watch.use_channels(self.coordinator.links.channels())
        cert = x509.load_pem_x509_certificate(new.cert)
        return f"serial {cert.serial_number:x}, valid until {cert.not_valid_after_utc:%Y-%m-%d}"

    def stop(self, grace: float = 2.0) -> None:
        """Refuse new calls, fail and abort rounds in flight, end watches, close the state."""
        if self.metrics is not None:
            self.metrics.stop()
        self.handle.health.enter_graceful_shutdown()
        self.scheduler.stop()
        self.coordinator.stop()
        self.coordinator.board.close()
        self.handle.server.stop(grace).wait()
        if self.watch is not None:
            self.watch.close()
        self.coordinator.links.close()
        self.store.close()


def start(config: CoordinatorConfig, *, insecure: bool) -> RunningCoordinator:
    """Open the state, connect to the registry's nodes and start serving ``config.listen``.

    Raises ConfigError (the certificate does not match the config), net.NetError (TLS files,
    plaintext off loopback, address in use) or state.StateError.
    """
    no_core_dumps()  # the coordinator's watch key k_c and its filters must not reach a core file
    return_large_buffers()  # chunk buffers must not pile up in malloc arenas
    tls = None if insecure else _coordinator_tls(config)
    store = SqliteRoundStore(config.state)
    links: NodeLinks | None = None
    endpoint: MetricsEndpoint | None = None
    try:
        links = NodeLinks(config.nodes, tls, insecure=insecure)
        settings = RoundSettings(
            call_timeout=config.call_timeout,
            round_timeout=config.round_timeout,
            chunk_size=config.chunk_size,
            caps=config.caps,
        )
        # early warning: filters live beside the state file, e.g. coordinator.sqlite.watch/
        watch = WatchHub(
            config.state.with_name(config.state.name + ".watch"),
            links.channels(),
            links.addresses,
            config.call_timeout,
        )
        watch.poll_seconds = config.epoch_poll
        hooks: CoordinatorHooks = NO_METRICS
        if config.metrics is not None:  # before the gRPC bind: a port in use stops nothing live
            metrics = CoordinatorMetrics(config.name, watch.epoch_open, watch.degraded_count)
            endpoint = metrics.serve(config.metrics)
            hooks = metrics
        coordinator = Coordinator(RoundBoard(store), links, settings, watch=watch, metrics=hooks)
        scheduler = Scheduler(
            store,
            lambda run, operator: coordinator.start_round(run, run.spec, operator=operator),
            coordinator.running,
            epochs=watch,  # a standing watch order's lost epoch is repaired (schedules.py)
        )
        trust = None if tls is None else Trust(tls.ca)
        servicer = CoordinatorServicer(coordinator, trust, scheduler)
        # checks in flight: a node flooding the coordinator is refused before any is parsed
        checks = Slots(
            "checks",
            config.limits.checks_in_flight,
            config.limits.checks_per_checker,
            "limits.checks_in_flight",
            "limits.checks_per_checker",
        )
        handle = start_server(
            config.listen,
            [
                lambda s: coordinator_pb2_grpc.add_CoordinatorServiceServicer_to_server(
                    servicer, s
                ),
                lambda s: watch_pb2_grpc.add_CoordinatorWatchServiceServicer_to_server(
                    CheckServicer(watch, trust, hooks), s
                ),
            ],
            tls,
            insecure=insecure,
            access=access_policy(config.operators),
            limits=RECEIVE_LIMITS,
            slots={WATCH_PREFIX: checks},
            # every WatchRound holds a worker thread while it follows its round
            max_workers=32,
            max_concurrent_rpcs=config.limits.concurrent_calls,
        )
    except BaseException:
        if endpoint is not None:
            endpoint.stop()
        if links is not None:
            links.close()
        store.close()
        raise
    scheduler.start()
    return RunningCoordinator(
        handle,
        coordinator,
        store,
        store.failed_on_open,
        scheduler,
        watch,
        endpoint,
        checks,
        config,
    )


def _coordinator_tls(config: CoordinatorConfig) -> TlsConfig:
    tls = load_tls(config.tls.ca, config.tls.cert, config.tls.key)
    identity = identity_of(tls.cert)
    expected = Identity("coordinator", config.name)
    if identity != expected:
        raise ConfigError(
            f"certificate {config.tls.cert} is for {identity}, but this coordinator is "
            f"{expected} (name = {config.name!r} in its config); issue a coordinator "
            f"certificate with `blindmatch pki issue PKI_DIR {config.name} --role coordinator`"
        )
    return tls


def serve(config: CoordinatorConfig, *, insecure: bool) -> None:
    """Run the coordinator until SIGINT or SIGTERM, then stop cleanly; SIGHUP reloads its
    certificate (``RunningCoordinator.reload_certificate``)."""
    setup_logging(config.log)  # before anything that logs; a bad log file stops nothing live
    if config.log.file is not None:  # gRPC's own lines (refused handshakes) into that file too
        log_native_stderr()
    running = start(config, insecure=insecure)
    if running.failed_on_start:
        print(
            f"marked {len(running.failed_on_start)} unfinished round(s) failed: coordinator "
            "restarted during the round",
            file=sys.stderr,
        )
    host, _ = split_host_port(config.listen)
    shown = f"[{host}]" if ":" in host else host
    print(f"coordinator listening on {shown}:{running.port}", flush=True)
    if running.metrics is not None:
        print(f"coordinator metrics on {running.metrics.address}", flush=True)
    stop = threading.Event()
    wake = threading.Event()  # a signal arrived: the main loop acts on it at once
    hup = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        (hup if signum == signal.SIGHUP else stop).set()
        wake.set()

    previous: dict[signal.Signals, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            previous[sig] = signal.signal(sig, on_signal)
    try:
        while not stop.is_set():
            wake.wait(0.5)
            wake.clear()
            if hup.is_set() and not stop.is_set():
                hup.clear()
                try:
                    done = running.reload_certificate()
                    print(f"coordinator reloaded its certificate: {done}", flush=True)
                except (NetError, PkiError, ConfigError) as exc:  # it serves on with the old one
                    print(f"coordinator kept its certificate: {exc}", file=sys.stderr, flush=True)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        print("coordinator stopping", file=sys.stderr, flush=True)
        running.stop()
