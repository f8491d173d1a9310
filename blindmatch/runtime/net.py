"""The shared gRPC transport: mTLS credentials, servers, channels and the access policy.

Rules:
- Every server uses mTLS with client certificates required, unless started with ``insecure=True``,
  which is refused on anything but a loopback address. The same holds for client channels.
- A caller's identity is the ``blindmatch://<role>/<name>`` URI SAN of its verified certificate.
- A client names the server it means to reach (``open_channel(..., expect=...)``) and the handshake
  fails unless the server's certificate carries that identity's DNS SAN (``pki.identity_host``):
  grpc python cannot show a client the server's certificate, but its hostname check can prove
  this, so the identity name is what the client checks, never the host it dials.
- Authorisation happens in one place, ``AccessPolicy``, applied by the ``Gate`` interceptor to
  the caller's certificate before any request body is parsed and before any handler (unary or
  streaming) runs. Methods without a rule are denied; the standard health service is open to
  any authenticated caller. The gate then holds each message to its method's receive limit.
- In insecure mode there are no certificates, hence no identities: every caller may call every
  method (the limits still hold). That mode is for local development only.

Outside the generated ``blindmatch.v1``, this is the one module of ``blindmatch`` that imports grpc.
"""

from __future__ import annotations

import datetime
import functools
import ipaddress
import shlex
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, NamedTuple

import grpc
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from blindmatch.core.identity import Identity, PkiError, identity_of, validate_name, validate_role
from blindmatch.runtime.hardening import exposed_mode
from blindmatch.runtime.pki import SERVER_ROLES, identity_host, served_identity

HEALTH_PREFIX: Final = "/grpc.health.v1.Health/"
LOOPBACK_HINT: Final = (
    "plaintext is only allowed on loopback (127.0.0.0/8, ::1, localhost); use mTLS"
)


# The largest message either side takes. Protocol v2 sends a set's tags in one Reveal reply
# (16 bytes a tag: 80 MB at the coordinator's default max_set of 5M) and a delivery's proofs in
# one Deliver; both are bounded by the sets' caps. gRPC's default of 4 MB would stop a round of
# 1M at Reveal. (Streaming both is the better shape; DESIGN.md 2 notes it.)
MAX_MESSAGE_BYTES = 256 * 1024 * 1024
_CHANNEL_OPTIONS: Final = [("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)]


class NetError(Exception):
    """A transport setting is unusable."""


class TlsConfigError(NetError):
    """A CA, certificate or key file is missing, unreadable or inconsistent."""


class InsecureBindRefused(NetError):
    """Plaintext was requested for a non-loopback address."""


class BindError(NetError):
    """The server could not listen on the requested address."""


@dataclass(frozen=True)
class TlsConfig:
    """PEM bytes for mTLS: the federation CA, this party's certificate and its private key."""

    ca: bytes
    cert: bytes
    key: bytes = field(repr=False)


class Allow(NamedTuple):
    """A caller an access rule admits: a role, and a name or None for any holder of the role."""

    role: str
    name: str | None = None

    def __str__(self) -> str:
        return f"{self.role}/{self.name or '*'}"


def load_tls(ca_path: Path | str, cert_path: Path | str, key_path: Path | str) -> TlsConfig:
    """Read and cross-check the CA, certificate and key files.

    Problems that would otherwise surface as an opaque handshake failure on the other side
    (a key that does not match, a certificate from another CA, an expired certificate, a
    certificate with no blindmatch identity) are reported here, naming the file. A private key
    its group or others may read is refused, as ssh refuses one, with the chmod that fixes it.
    """
    tls = TlsConfig(
        ca=_read(ca_path, "CA certificate"),
        cert=_read(cert_path, "certificate"),
        key=_read(key_path, "private key"),
    )
    _refuse_exposed_key(key_path)
    try:
        ca_cert = x509.load_pem_x509_certificate(tls.ca)
    except ValueError as exc:
        raise TlsConfigError(f"CA certificate {ca_path} is not a PEM certificate: {exc}") from exc
    try:
        cert = x509.load_pem_x509_certificate(tls.cert)
    except ValueError as exc:
        raise TlsConfigError(f"certificate {cert_path} is not a PEM certificate: {exc}") from exc
    try:
        key = serialization.load_pem_private_key(tls.key, password=None)
    except (ValueError, TypeError) as exc:
        raise TlsConfigError(
            f"private key {key_path} is not an unencrypted PEM private key: {exc}"
        ) from exc
    if key.public_key() != cert.public_key():
        raise TlsConfigError(f"private key {key_path} does not belong to certificate {cert_path}")
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise TlsConfigError(
            f"certificate {cert_path} was not issued by the CA in {ca_path}; "
            "issue it with that CA's `blindmatch pki issue`"
        ) from exc
    now = datetime.datetime.now(datetime.UTC)
    if now < cert.not_valid_before_utc:
        raise TlsConfigError(
            f"certificate {cert_path} is not valid until {cert.not_valid_before_utc:%Y-%m-%d %H:%M} "
            "UTC; check this machine's clock"
        )
    if now > cert.not_valid_after_utc:
        raise TlsConfigError(
            f"certificate {cert_path} expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC; "
            "issue a new one with `blindmatch pki issue`"
        )
    try:
        identity = identity_of(tls.cert)
        # A server certificate without its identity names would fail every client's handshake.
        if identity.role in SERVER_ROLES:
            served_identity(tls.cert)
    except PkiError as exc:
        raise TlsConfigError(f"certificate {cert_path}: {exc}") from exc
    return tls


def _refuse_exposed_key(key_path: Path | str) -> None:
    try:
        mode = exposed_mode(Path(key_path))
    except OSError as exc:
        raise TlsConfigError(f"cannot read private key file {key_path}: {exc.strerror}") from exc
    if mode is not None:
        raise TlsConfigError(
            f"private key {key_path} is open to its group or others (mode {mode:04o}); "
            f"whoever can read it can act as this certificate: run "
            f"`chmod 600 {shlex.quote(str(key_path))}`"
        )


def server_credentials(tls: TlsConfig) -> grpc.ServerCredentials:
    return grpc.ssl_server_credentials(
        [(tls.key, tls.cert)], root_certificates=tls.ca, require_client_auth=True
    )


def channel_credentials(tls: TlsConfig) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=tls.ca, private_key=tls.key, certificate_chain=tls.cert
    )


def peer_identity(context: grpc.ServicerContext) -> Identity | None:
    """The caller's identity, or None when it presented no certificate (or the link is plaintext).

    Raises PkiError when the certificate verified but carries no valid blindmatch identity.
    """
    pem = peer_certificate(context)
    return None if pem is None else _identity_from_pem(pem)


def peer_certificate(context: grpc.ServicerContext) -> bytes | None:
    """The caller's verified certificate (PEM), or None without one (or on plaintext)."""
    pems = context.auth_context().get("x509_pem_cert")
    return pems[0] if pems else None


@functools.lru_cache(maxsize=256)
def _identity_from_pem(pem: bytes) -> Identity:
    # Every RPC on a connection presents the same certificate; parse it once.
    return identity_of(pem)


class AccessPolicy:
    """Which callers may call which methods (applied by ``Gate``, before any body is parsed).

    ``rules`` maps a method prefix (``/pkg.Service/`` for a whole service, or a full method name
    ``/pkg.Service/Method``) to the callers it admits. The longest matching prefix decides;
    a method no rule matches is denied.
    """

    def __init__(self, rules: Mapping[str, Iterable[tuple[str, str | None]]]) -> None:
        self._rules: dict[str, frozenset[Allow]] = {}
        for prefix, allowed in rules.items():
            if not prefix.startswith("/"):
                raise ValueError(
                    f"access rule {prefix!r} must start with '/' (e.g. '/blindmatch.v1.Node/')"
                )
            entries = frozenset(Allow(*a) for a in allowed)
            for entry in entries:
                validate_role(entry.role)
                if entry.name is not None:
                    validate_name(entry.name)
            self._rules[prefix] = entries

    def denial(self, method: str, caller: Identity | None) -> grpc.StatusCode | None:
        """The status code to refuse ``caller`` with, or None if it may call ``method``."""
        return self.decide(method, caller)[0]

    def decide(self, method: str, caller: Identity | None) -> tuple[grpc.StatusCode | None, str]:
        if caller is None:
            return grpc.StatusCode.UNAUTHENTICATED, (
                f"{method} needs a client certificate from the federation CA; none was presented"
            )
        if method.startswith(HEALTH_PREFIX):
            return None, ""
        prefixes = [p for p in self._rules if method.startswith(p)]
        if not prefixes:
            return grpc.StatusCode.PERMISSION_DENIED, f"{method} is not open to any caller"
        allowed = self._rules[max(prefixes, key=len)]
        if any(a.role == caller.role and a.name in (None, caller.name) for a in allowed):
            return None, ""
        required = " or ".join(sorted(str(a) for a in allowed)) or "nobody"
        return grpc.StatusCode.PERMISSION_DENIED, (
            f"{method} requires {required}; the caller presented {caller}"
        )


# Per-method receive limits (``start_server(limits=...)``): a method prefix, as in the access
# rules, to the largest message the method takes. A method no limit names takes DEFAULT_LIMIT.
DEFAULT_LIMIT: Final = 64 * 1024


class Slots:
    """Calls of a kind (``start_server(slots=...)``) served at once, in total and per caller:
    an excess is refused RESOURCE_EXHAUSTED before its body is parsed."""

    def __init__(
        self, what: str, total: int, per_caller: int, total_setting: str, caller_setting: str
    ) -> None:
        if total < 1 or per_caller < 1:
            raise ValueError(f"{what}: at least one call at a time, in total and per caller")
        self.what = what
        self.total = total
        self.per_caller = per_caller
        self._settings = (total_setting, caller_setting)
        self._lock = threading.Lock()
        self._by: dict[str, int] = {}

    def take(self, caller: str) -> None:
        """One slot for ``caller``, or RuntimeError saying which cap is reached."""
        with self._lock:
            mine = self._by.get(caller, 0)
            if mine >= self.per_caller:
                raise RuntimeError(
                    f"{caller} has {mine} {self.what} in flight, the most one caller may have "
                    f"({self._settings[1]}); retry when one has ended"
                )
            if sum(self._by.values()) >= self.total:
                raise RuntimeError(
                    f"{self.total} {self.what} are in flight, the most this server takes at once "
                    f"({self._settings[0]}); retry shortly"
                )
            self._by[caller] = mine + 1

    def give_back(self, caller: str) -> None:
        with self._lock:
            left = self._by.pop(caller) - 1
            if left:
                self._by[caller] = left

    def in_flight(self) -> int:
        with self._lock:
            return sum(self._by.values())


class Gate(grpc.ServerInterceptor):  # type: ignore[misc]
    """Every call, before its body is parsed: the caller authorised (``access``; None in insecure
    mode), then each message's size checked against the method's limit, and only then parsed.

    gRPC parses a request before any handler or interceptor sees the caller, so a caller that may
    call nothing could make the server build millions of objects before its refusal (a review sent
    20 MB Deliver requests of empty entries: 455 MB). Here the handler's deserializer is replaced
    by the identity, and the raw bytes are parsed in the handler's thread after the checks.
    """

    def __init__(
        self,
        access: AccessPolicy | None,
        limits: Mapping[str, int],
        slots: Mapping[str, Slots] | None = None,
    ) -> None:
        self._access = access
        self._limits = dict(limits)
        self._slots = dict(slots or {})
        for prefix, limit in self._limits.items():
            if not prefix.startswith("/") or limit <= 0:
                raise ValueError(f"receive limit {prefix!r}: {limit} must name a method, > 0")

    def limit(self, method: str) -> int:
        prefixes = [p for p in self._limits if method.startswith(p)]
        return self._limits[max(prefixes, key=len)] if prefixes else DEFAULT_LIMIT

    def _slots_of(self, method: str) -> Slots | None:
        prefixes = [p for p in self._slots if method.startswith(p)]
        return self._slots[max(prefixes, key=len)] if prefixes else None

    @property
    def largest(self) -> int:
        """The server-wide receive limit: nothing larger is ever buffered."""
        return max([DEFAULT_LIMIT, *self._limits.values()])

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method: str = handler_call_details.method
        limit = self.limit(method)
        parse = handler.request_deserializer
        slots = self._slots_of(method)
        if slots is not None and handler.response_streaming:
            raise ValueError(f"{method}: slots are for calls with one reply")

        def admit(context: grpc.ServicerContext) -> str | None:
            """The caller, once authorised; with ``slots``, the slot it took."""
            try:
                caller = peer_identity(context)
            except PkiError as exc:
                context.abort(grpc.StatusCode.PERMISSION_DENIED, f"{method}: {exc}")
            if self._access is not None:
                code, message = self._access.decide(method, caller)
                if code is not None:
                    context.abort(code, message)
            if slots is None:
                return None
            name = str(caller) if caller is not None else "(insecure)"
            try:
                slots.take(name)
            except RuntimeError as exc:
                context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
            return name

        def read(raw: bytes, context: grpc.ServicerContext) -> Any:
            if len(raw) > limit:
                context.abort(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"{method} takes messages of at most {limit} bytes; this one is {len(raw)}",
                )
            if parse is None:
                return raw
            try:
                return parse(raw)
            except Exception:  # protobuf's DecodeError, or whatever a custom parser raises
                context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT, f"{method}: the message does not parse"
                )

        return _gated(handler, admit, read, None if slots is None else slots.give_back)


def _gated(
    handler: grpc.RpcMethodHandler,
    admit: Callable[[grpc.ServicerContext], str | None],
    read: Callable[[bytes, grpc.ServicerContext], Any],
    give_back: Callable[[str], None] | None,
) -> grpc.RpcMethodHandler:
    """The same handler of whichever of the four kinds, taking raw bytes: ``admit`` runs before
    anything, ``read`` parses each message."""
    if handler.request_streaming and handler.response_streaming:
        behaviour, make = handler.stream_stream, grpc.stream_stream_rpc_method_handler
    elif handler.request_streaming:
        behaviour, make = handler.stream_unary, grpc.stream_unary_rpc_method_handler
    elif handler.response_streaming:
        behaviour, make = handler.unary_stream, grpc.unary_stream_rpc_method_handler
    else:
        behaviour, make = handler.unary_unary, grpc.unary_unary_rpc_method_handler

    def gated(request: Any, context: grpc.ServicerContext) -> Any:
        slot = admit(context)
        try:
            if handler.request_streaming:  # an iterator of raw messages, each parsed as it comes
                return behaviour((read(raw, context) for raw in request), context)
            return behaviour(read(request, context), context)
        finally:  # one reply (Gate refuses slots otherwise): the call is over when it returns
            if slot is not None and give_back is not None:
                give_back(slot)

    return make(gated, request_deserializer=None, response_serializer=handler.response_serializer)


class ServerCertificates:
    """The certificate an mTLS server presents, replaceable while it serves (SIGHUP, after
    ``blindmatch pki renew``): grpc asks ``_fetch`` before each new handshake, and a swapped
    configuration is handed over once. Connections already made keep theirs, so a round's
    streams run on."""

    def __init__(self, tls: TlsConfig) -> None:
        self._lock = threading.Lock()
        self._pending: grpc.ServerCertificateConfiguration | None = None
        self.current = tls

    def credentials(self) -> grpc.ServerCredentials:
        return grpc.dynamic_ssl_server_credentials(
            _certificate_configuration(self.current),
            self._fetch,
            require_client_authentication=True,
        )

    def swap(self, tls: TlsConfig) -> None:
        with self._lock:
            self._pending = _certificate_configuration(tls)
            self.current = tls

    def _fetch(self) -> grpc.ServerCertificateConfiguration | None:
        with self._lock:
            pending, self._pending = self._pending, None
        return pending  # None: keep the configuration in use


def _certificate_configuration(tls: TlsConfig) -> grpc.ServerCertificateConfiguration:
    return grpc.ssl_server_certificate_configuration([(tls.key, tls.cert)], tls.ca)


class ServerHandle(NamedTuple):
    server: grpc.Server
    port: int
    health: health.HealthServicer
    certificates: ServerCertificates | None = None  # None in insecure mode


def start_server(
    bind: str,
    servicers: Sequence[Callable[[grpc.Server], object]],
    tls: TlsConfig | None,
    *,
    insecure: bool,
    access: AccessPolicy | None,
    limits: Mapping[str, int] | None = None,
    slots: Mapping[str, Slots] | None = None,
    max_workers: int = 16,
    max_concurrent_rpcs: int | None = None,
) -> ServerHandle:
    """Start a gRPC server on ``bind`` (``host:port``; port 0 picks a free port).

    ``servicers`` are callables that register a servicer on the server, e.g.
    ``lambda s: node_pb2_grpc.add_NodeServicer_to_server(servicer, s)``. The standard health
    service is added and set to SERVING; flip it through the returned ``health``. With mTLS an
    ``access`` policy is required; with ``insecure=True`` it is ignored (there are no identities).
    ``limits`` maps method prefixes to the largest message each takes (``Gate``); calls beyond
    ``max_concurrent_rpcs`` (running and queued for a worker) are refused RESOURCE_EXHAUSTED.
    """
    host, _ = split_host_port(bind)
    if insecure:
        if tls is not None:
            raise ValueError("pass either tls or insecure=True, not both")
        if not is_loopback(host):
            raise InsecureBindRefused(f"cannot listen on {bind} without TLS: {LOOPBACK_HINT}")
        access = None
    else:
        if tls is None:
            raise ValueError("a server needs tls (mTLS material) unless insecure=True is given")
        if access is None:
            raise ValueError("an mTLS server needs an AccessPolicy saying who may call what")
    gate = Gate(access, limits or {}, slots)
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers),
        interceptors=[gate],
        # gRPC sets SO_REUSEPORT by default, which lets a second server silently share the port.
        options=[
            ("grpc.so_reuseport", 0),
            ("grpc.max_receive_message_length", gate.largest),
        ],
        maximum_concurrent_rpcs=max_concurrent_rpcs,
    )
    for register in servicers:
        register(server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    certificates = None if tls is None else ServerCertificates(tls)
    try:
        if certificates is None:
            port = server.add_insecure_port(bind)
        else:
            port = server.add_secure_port(bind, certificates.credentials())
    except RuntimeError as exc:
        raise BindError(
            f"cannot listen on {bind}: {exc} (port in use, or no such address?)"
        ) from exc
    if port == 0:
        raise BindError(f"cannot listen on {bind} (port in use, or no such address?)")
    server.start()
    health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    return ServerHandle(server=server, port=port, health=health_servicer, certificates=certificates)


def open_channel(
    target: str, tls: TlsConfig | None, *, insecure: bool, expect: Identity | Allow
) -> grpc.Channel:
    """Open a channel to ``target`` (``host:port``), over mTLS unless ``insecure=True``.

    ``expect`` is the server this channel must reach: an Identity, or ``Allow(role)`` for any
    holder of a role (an operator, whose config names only the coordinator's address). The
    handshake fails (UNAVAILABLE, "Hostname Verification Check failed") unless the server's
    certificate carries that identity, whatever host ``target`` names. Required even in
    insecure mode, where nothing can be checked, so that no call site can forget it.
    """
    if insecure:
        if tls is not None:
            raise ValueError("pass either tls or insecure=True, not both")
        try:
            host, _ = split_host_port(target)
        except ValueError:
            host = ""
        if not is_loopback(host):
            raise InsecureBindRefused(f"cannot connect to {target} without TLS: {LOOPBACK_HINT}")
        return grpc.insecure_channel(target, options=_CHANNEL_OPTIONS)
    if tls is None:
        raise ValueError("a channel needs tls (mTLS material) unless insecure=True is given")
    validate_role(expect.role)
    if expect.name is not None:
        validate_name(expect.name)
    options = [
        ("grpc.ssl_target_name_override", identity_host(expect.role, expect.name)),
        *_CHANNEL_OPTIONS,
    ]
    return grpc.secure_channel(target, channel_credentials(tls), options=options)


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an IP address, IPv6 with or without brackets) is loopback."""
    host = host.removeprefix("[").removesuffix("]")
    if host.lower().removesuffix(".") == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def split_host_port(address: str) -> tuple[str, int]:
    """Split ``host:port`` or ``[v6]:port``; raise ValueError with an example when malformed."""
    if address.startswith("["):
        host, sep, port = address[1:].partition("]:")
    else:
        host, sep, port = address.rpartition(":")
        if ":" in host:
            sep = ""
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(
            f"invalid address {address!r}: use host:port, e.g. 127.0.0.1:50051 or [::1]:50051"
        )
    return host, int(port)


def _read(path: Path | str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError as exc:
        raise TlsConfigError(f"{what} file {path} does not exist") from exc
    except IsADirectoryError as exc:
        raise TlsConfigError(f"{what} file {path} is a directory, not a file") from exc
    except OSError as exc:
        raise TlsConfigError(f"cannot read {what} file {path}: {exc.strerror}") from exc
