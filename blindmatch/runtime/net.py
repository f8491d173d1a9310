"""The shared gRPC transport: mTLS credentials, servers, channels and the access policy.

Rules:
- Every server uses mTLS with client certificates required, unless started with ``insecure=True``,
  which is refused on anything but a loopback address. The same holds for client channels.
- A caller's identity is the ``blindmatch://<role>/<name>`` URI SAN of its verified certificate.
- A client names the server it means to reach (``open_channel(..., expect=...)``) and the handshake
  fails unless the server's certificate carries that identity's DNS SAN (``pki.identity_host``):
  grpc python cannot show a client the server's certificate, but its hostname check can prove
  this, so the identity name is what the client checks, never the host it dials.
- Authorisation happens in one place, ``AccessPolicy``, a server interceptor that checks the
  caller before any handler (unary or streaming) runs. Methods without a rule are denied; the
  standard health service is open to any authenticated caller.
- In insecure mode there are no certificates, hence no identities: the interceptor is not
  installed and every caller may call every method. That mode is for local development only.

Outside the generated ``blindmatch.v1``, this is the one module of ``blindmatch`` that imports grpc.
"""

from __future__ import annotations

import datetime
import functools
import ipaddress
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
    certificate with no blindmatch identity) are reported here, naming the file.
    """
    tls = TlsConfig(
        ca=_read(ca_path, "CA certificate"),
        cert=_read(cert_path, "certificate"),
        key=_read(key_path, "private key"),
    )
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
    pems = context.auth_context().get("x509_pem_cert")
    if not pems:
        return None
    return _identity_from_pem(pems[0])


@functools.lru_cache(maxsize=256)
def _identity_from_pem(pem: bytes) -> Identity:
    # Every RPC on a connection presents the same certificate; parse it once.
    return identity_of(pem)


class AccessPolicy(grpc.ServerInterceptor):  # type: ignore[misc]
    """Which callers may call which methods.

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
        return self._decide(method, caller)[0]

    def _decide(self, method: str, caller: Identity | None) -> tuple[grpc.StatusCode | None, str]:
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

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method: str = handler_call_details.method

        def check(context: grpc.ServicerContext) -> None:
            try:
                code, message = self._decide(method, peer_identity(context))
            except PkiError as exc:
                code, message = grpc.StatusCode.PERMISSION_DENIED, f"{method}: {exc}"
            if code is not None:
                context.abort(code, message)

        return _guarded(handler, check)


def _guarded(
    handler: grpc.RpcMethodHandler, check: Callable[[grpc.ServicerContext], None]
) -> grpc.RpcMethodHandler:
    """The same handler, with ``check`` run before the behaviour of whichever of the four kinds."""
    if handler.request_streaming and handler.response_streaming:
        behaviour, make = handler.stream_stream, grpc.stream_stream_rpc_method_handler
    elif handler.request_streaming:
        behaviour, make = handler.stream_unary, grpc.stream_unary_rpc_method_handler
    elif handler.response_streaming:
        behaviour, make = handler.unary_stream, grpc.unary_stream_rpc_method_handler
    else:
        behaviour, make = handler.unary_unary, grpc.unary_unary_rpc_method_handler

    def guarded(request: Any, context: grpc.ServicerContext) -> Any:
        check(context)
        return behaviour(request, context)

    return make(
        guarded,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


class ServerHandle(NamedTuple):
    server: grpc.Server
    port: int
    health: health.HealthServicer


def start_server(
    bind: str,
    servicers: Sequence[Callable[[grpc.Server], object]],
    tls: TlsConfig | None,
    *,
    insecure: bool,
    access: AccessPolicy | None,
    max_workers: int = 16,
) -> ServerHandle:
    """Start a gRPC server on ``bind`` (``host:port``; port 0 picks a free port).

    ``servicers`` are callables that register a servicer on the server, e.g.
    ``lambda s: node_pb2_grpc.add_NodeServicer_to_server(servicer, s)``. The standard health
    service is added and set to SERVING; flip it through the returned ``health``. With mTLS an
    ``access`` policy is required; with ``insecure=True`` it is ignored (there are no identities).
    """
    host, _ = split_host_port(bind)
    if insecure:
        if tls is not None:
            raise ValueError("pass either tls or insecure=True, not both")
        if not is_loopback(host):
            raise InsecureBindRefused(f"cannot listen on {bind} without TLS: {LOOPBACK_HINT}")
        interceptors: list[AccessPolicy] = []
    else:
        if tls is None:
            raise ValueError("a server needs tls (mTLS material) unless insecure=True is given")
        if access is None:
            raise ValueError("an mTLS server needs an AccessPolicy saying who may call what")
        interceptors = [access]
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers),
        interceptors=interceptors,
        # gRPC sets SO_REUSEPORT by default, which lets a second server silently share the port.
        options=[
            ("grpc.so_reuseport", 0),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ],
    )
    for register in servicers:
        register(server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    try:
        if tls is None:
            port = server.add_insecure_port(bind)
        else:
            port = server.add_secure_port(bind, server_credentials(tls))
    except RuntimeError as exc:
        raise BindError(
            f"cannot listen on {bind}: {exc} (port in use, or no such address?)"
        ) from exc
    if port == 0:
        raise BindError(f"cannot listen on {bind} (port in use, or no such address?)")
    server.start()
    health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    return ServerHandle(server=server, port=port, health=health_servicer)


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
