"""The node's server: what it runs, who may call it, and how it starts and stops.

``start`` opens the store, warms the hashing pool, builds each part before the parts that use
it (metrics, connectors, the live-round table, early warning, the round registry, the round
service), each given its collaborators in its constructor, and serves them; ``serve`` runs that
until a signal.
"""

from __future__ import annotations

import signal
import sys
import threading
from dataclasses import dataclass
from typing import Final

from cryptography import x509

from blindmatch.core.identity import PkiError
from blindmatch.core.spec import MAX_CHUNK
from blindmatch.core.states import Outcome
from blindmatch.core.watch_rules import MAX_CHECK_VALUES
from blindmatch.core.watch_sealed import sealed_bytes
from blindmatch.runtime import net
from blindmatch.runtime.hardening import no_core_dumps
from blindmatch.runtime.logs import log_native_stderr, setup_logging
from blindmatch.runtime.memory import return_large_buffers
from blindmatch.runtime.metrics_endpoint import MetricsEndpoint
from blindmatch.runtime.pki import check_renewal
from blindmatch.v2 import node_pb2_grpc, watch_pb2_grpc
from node.auth import RoundAuthority, Unauthenticated
from node.budgets import Budgets
from node.committee import CommitteeServicer
from node.config import NodeConfig
from node.connectors.scheduler import ConnectorThread
from node.metrics import NO_METRICS, NodeHooks, NodeMetrics
from node.pool import Blinder
from node.rounds import LiveRounds, RoundRegistry, fail_unfinished
from node.store import Store
from node.watch import CHECK_METHOD, NodeWatch
from node.watch import access_rules as watch_access_rules

# The largest message each method legitimately carries (net.Gate); anything else takes 64 KiB.
_POINTS = 65 * MAX_CHUNK  # a request or an answer: at most one chunk of 65-byte points
_CHECK_POINTS = 65 * MAX_CHECK_VALUES
RECEIVE_LIMITS: Final = {
    "/blindmatch.v2.NodeService/Prepare": 1 << 20,  # a spec and the operator's certificate
    # every participant's certificate (MAX_PARTICIPANTS of them) and commitment
    "/blindmatch.v2.NodeService/SignTranscript": 4 << 20,
    "/blindmatch.v2.NodeService/Begin": 1 << 20,
    "/blindmatch.v2.NodeService/Evaluate": _POINTS + (1 << 16),  # per message of the stream
    "/blindmatch.v2.NodeService/Own": _POINTS + (1 << 16),
    "/blindmatch.v2.NodeService/Reveal": 1 << 20,
    # matches with their inclusion proofs, bounded by the sets' caps: the largest message there is
    "/blindmatch.v2.NodeService/Deliver": net.MAX_MESSAGE_BYTES,
    "/blindmatch.v2.NodeWatchService/EvaluateCheck": _CHECK_POINTS + (1 << 20),
    "/blindmatch.v2.NodeWatchService/Alert": sealed_bytes(MAX_CHECK_VALUES) + (1 << 16),
    # MAX_CHECK_VALUES values of 600 bytes on average (URLs run long)
    CHECK_METHOD: 64 << 20,
}


def access_policy(config: NodeConfig) -> net.AccessPolicy:
    return net.AccessPolicy(
        {
            "/blindmatch.v2.NodeService/": [("coordinator", config.coordinator)],
            **watch_access_rules(config.name, config.coordinator, config.watch.check_clients),
        }
    )


@dataclass
class RunningNode:
    handle: net.ServerHandle
    rounds: RoundRegistry
    store: Store
    blinder: Blinder
    watch: NodeWatch | None = None
    connectors: ConnectorThread | None = None  # pulls and pushes in the background
    metrics: MetricsEndpoint | None = None  # the [metrics] endpoint, when configured
    config: NodeConfig | None = None  # where reload_certificate reads the certificate again
    committee: CommitteeServicer | None = None

    @property
    def port(self) -> int:
        return self.handle.port

    def reload_certificate(self) -> str:
        """Take a certificate renewed for the same key (``blindmatch pki renew``; SIGHUP).

        New handshakes present it, and new rounds send it to partners; rounds in flight keep the
        certificate they announced, and sign with the key they began with, which is the same.
        A new key is refused (PkiError): the open watch epoch's alerts are sealed to the old one.
        Its channel to the coordinator (checks) is opened again with the new certificate.
        Raises net.NetError or PkiError, keeping the certificate in use."""
        certificates = self.handle.certificates
        if certificates is None or self.config is None:
            raise PkiError("this node serves without mTLS: it has no certificate to reload")
        tls = self.config.tls
        new = net.load_tls(tls.ca, tls.cert, tls.key)
        old = certificates.current
        check_renewal((old.ca, old.cert), (new.ca, new.cert), same_key=True)
        authority = RoundAuthority(new, self.config.operators)
        self.rounds.authority = authority
        if self.committee is not None:
            self.committee.authority = authority
        certificates.swap(new)
        if self.watch is not None:  # its checks to the coordinator present the renewed one too
            self.watch.renew(new)
        cert = x509.load_pem_x509_certificate(new.cert)
        return f"serial {cert.serial_number:x}, valid until {cert.not_valid_after_utc:%Y-%m-%d}"

    def stop(self, grace: float = 2.0) -> None:
        if self.metrics is not None:
            self.metrics.stop()
        if self.connectors is not None:
            self.connectors.stop()
        self.handle.health.enter_graceful_shutdown()
        self.handle.server.stop(grace).wait()
        if self.watch is not None:  # a node restart ends its watch epoch
            self.watch.close()
        self.rounds.shutdown()
        self.blinder.close()
        self.store.close()


def start(config: NodeConfig, *, insecure: bool, listen: str | None = None) -> RunningNode:
    """Open the store, start the worker pool and the server; ``listen`` overrides the config."""
    no_core_dumps()  # before any key exists: a crash must not write one to disk
    return_large_buffers()  # chunk buffers must not pile up in malloc arenas
    tls = None if insecure else net.load_tls(config.tls.ca, config.tls.cert, config.tls.key)
    store = Store.open(config.store)
    store.set_max_age(config.max_age)  # [policy] max_age: expired indicators enter no round
    blinder = Blinder(config.worker_count)
    endpoint: MetricsEndpoint | None = None
    connectors: ConnectorThread | None = None
    try:
        # Read before serving: a round prepared from now on is this process's own.
        unfinished = [r for r in store.rounds() if r.outcome == Outcome.STARTED]
        blinder.warm_up()
        budgets = Budgets(store, config.budgets, config.name)
        metrics: NodeHooks = NO_METRICS
        if config.metrics is not None:  # before the gRPC bind: a port in use stops nothing live
            metrics = NodeMetrics(config.name, budgets)
            endpoint = metrics.serve(config.metrics)
        if config.sources or config.sinks:  # started last, once the node serves
            connectors = ConnectorThread(config, metrics, blinder.hash_all)
        live = LiveRounds()
        watch = NodeWatch(
            name=config.name,
            store=store,
            policy=config.policy,
            budget=config.check_budget,
            coordinator=config.coordinator,
            coordinator_address=config.coordinator_address,
            tls=tls,
            settings=config.watch,
            metrics=metrics,
        )
        rounds = RoundRegistry(
            name=config.name,
            store=store,
            policy=config.policy,
            tlps=config.tlps,
            round_timeout=config.round_timeout,
            round_lifetime=config.round_lifetime,
            # the node's TLS identity is its federation identity: it signs with it
            authority=Unauthenticated() if tls is None else RoundAuthority(tls, config.operators),
            live=live,
            budgets=budgets,
            watch=watch,
            metrics=metrics,
            on_idle=blinder.retire,
            # matches reach the sinks right after a round
            on_done=None if connectors is None else connectors.push_now,
        )
        committee = CommitteeServicer(name=config.name, rounds=rounds)
        handle = net.start_server(
            listen or config.listen,
            [
                lambda s: node_pb2_grpc.add_NodeServiceServicer_to_server(committee, s),
                lambda s: watch_pb2_grpc.add_NodeWatchServiceServicer_to_server(watch, s),
            ],
            tls,
            insecure=insecure,
            access=None if insecure else access_policy(config),
            limits=RECEIVE_LIMITS,
            max_concurrent_rpcs=config.concurrent_calls,
        )
        # After the bind: a second node refused the port must not touch the first one's rounds.
        fail_unfinished(store, unfinished)
        # Last: a node that failed to start has nothing pulling in the background.
        if connectors is not None:
            connectors.start()
    except BaseException:
        if connectors is not None:
            connectors.stop()
        if endpoint is not None:
            endpoint.stop()
        blinder.close()
        store.close()
        raise
    return RunningNode(
        handle, rounds, store, blinder, watch, connectors, endpoint, config, committee
    )


def serve(config: NodeConfig, *, insecure: bool) -> None:
    """Run until SIGINT/SIGTERM; SIGHUP reloads the certificate (``reload_certificate``)."""
    setup_logging(config.log)  # before anything that logs; a bad log file stops nothing live
    if config.log.file is not None:  # gRPC's own lines (refused handshakes) into that file too
        log_native_stderr()
    # Handlers first: a SIGTERM during the worker warm-up must still stop the pool cleanly.
    stop = threading.Event()
    wake = threading.Event()  # a signal arrived: the main loop acts on it at once
    hup = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        (hup if signum == signal.SIGHUP else stop).set()
        wake.set()

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)
    node = start(config, insecure=insecure)
    mode = "PLAINTEXT (--insecure)" if insecure else "mTLS"
    # The bound port, not the configured one: with port 0 the kernel picks it.
    address = f"{config.listen.rpartition(':')[0]}:{node.port}"
    print(
        f"node {config.name} listening on {address} ({mode}), "
        f"{node.blinder.workers} hashing worker(s), store {config.store}",
        flush=True,
    )
    if node.metrics is not None:
        print(f"node {config.name} metrics on {node.metrics.address}", flush=True)
    while not stop.is_set():
        wake.wait(1.0)  # a timed wait keeps the main thread responsive to signals
        wake.clear()
        if hup.is_set() and not stop.is_set():
            hup.clear()
            try:
                print(f"node {config.name} reloaded its certificate: {node.reload_certificate()}")
            except (net.NetError, PkiError) as exc:  # the node serves on with the old one
                print(f"node {config.name} kept its certificate: {exc}", file=sys.stderr)
            sys.stdout.flush()
            sys.stderr.flush()
    print(f"node {config.name} stopping", flush=True)
    node.stop()
