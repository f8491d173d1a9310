from __future__ import annotations

import datetime
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from blindmatch.core.identity import Identity
from blindmatch.runtime.net import (
    AccessPolicy,
    Allow,
    BindError,
    InsecureBindRefused,
    ServerHandle,
    TlsConfig,
    TlsConfigError,
    is_loopback,
    load_tls,
    open_channel,
    peer_identity,
    split_host_port,
    start_server,
)
from blindmatch.runtime.pki import CaMaterial, issue, new_ca
from tests.pkifixtures import FederationPki, leaf_with_uris

UTC = datetime.UTC
TIMEOUT = 10

# A test service reached through generic handlers: bytes in, bytes out, no generated code.
PROBE = "/blindmatch.test.Probe/"
ADMIN = "/blindmatch.test.Admin/"
HIDDEN = "/blindmatch.test.Hidden/"

POLICY = AccessPolicy(
    {
        PROBE: [("node", None), ("coordinator", None), ("operator", None)],
        PROBE + "Stream": [("coordinator", None)],
        PROBE + "Upload": [("coordinator", None)],
        PROBE + "Chat": [("coordinator", None)],
        ADMIN: [("operator", "ops")],
    }
)


class Probe:
    """Handlers that answer with the caller's identity and record that they ran."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def _who(self, method: str, context: grpc.ServicerContext) -> bytes:
        self.calls.append(method)
        identity = peer_identity(context)
        return b"anonymous" if identity is None else str(identity).encode()

    def whoami(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        return self._who("Whoami", context)

    def stream(self, request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        who = self._who("Stream", context)
        for _ in range(3):
            yield who

    def upload(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
        who = self._who("Upload", context)
        return who + b":" + str(sum(1 for _ in requests)).encode()

    def chat(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
        who = self._who("Chat", context)
        for request in requests:
            yield who + b":" + request

    def launch(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        return self._who("Launch", context)

    def register(self, server: grpc.Server) -> None:
        server.add_generic_rpc_handlers(
            [
                grpc.method_handlers_generic_handler(
                    PROBE.strip("/"),
                    {
                        "Whoami": grpc.unary_unary_rpc_method_handler(self.whoami),
                        "Stream": grpc.unary_stream_rpc_method_handler(self.stream),
                        "Upload": grpc.stream_unary_rpc_method_handler(self.upload),
                        "Chat": grpc.stream_stream_rpc_method_handler(self.chat),
                    },
                ),
                grpc.method_handlers_generic_handler(
                    ADMIN.strip("/"),
                    {"Launch": grpc.unary_unary_rpc_method_handler(self.launch)},
                ),
                grpc.method_handlers_generic_handler(
                    HIDDEN.strip("/"),
                    {"Secret": grpc.unary_unary_rpc_method_handler(self.whoami)},
                ),
            ]
        )


@contextmanager
def serving(
    tls: TlsConfig | None, *, insecure: bool = False, policy: AccessPolicy | None = POLICY
) -> Iterator[tuple[ServerHandle, Probe]]:
    probe = Probe()
    handle = start_server("127.0.0.1:0", [probe.register], tls, insecure=insecure, access=policy)
    try:
        yield handle, probe
    finally:
        handle.server.stop(None)


def call(channel: grpc.Channel, method: str, kind: str = "unary") -> Any:
    if kind == "unary":
        return channel.unary_unary(method)(b"hi", timeout=TIMEOUT)
    if kind == "server-stream":
        return list(channel.unary_stream(method)(b"hi", timeout=TIMEOUT))
    if kind == "client-stream":
        return channel.stream_unary(method)(iter([b"a", b"b"]), timeout=TIMEOUT)
    return list(channel.stream_stream(method)(iter([b"a", b"b"]), timeout=TIMEOUT))


def rpc_error(channel: grpc.Channel, method: str, kind: str = "unary") -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call(channel, method, kind)
    return info.value


@pytest.fixture(scope="module")
def coordinator_server(pki: FederationPki) -> Iterator[tuple[ServerHandle, Probe]]:
    with serving(pki.tls("coordinator", "coordinator")) as running:
        yield running


COORDINATOR = Identity("coordinator", "coordinator")


@contextmanager
def client(
    port: int, tls: TlsConfig, expect: Identity | Allow = COORDINATOR
) -> Iterator[grpc.Channel]:
    channel = open_channel(f"127.0.0.1:{port}", tls, insecure=False, expect=expect)
    try:
        yield channel
    finally:
        channel.close()


def with_client_cert(pki: FederationPki, leaf_cert: bytes, leaf_key: bytes) -> TlsConfig:
    return TlsConfig(ca=pki.ca.cert_pem, cert=leaf_cert, key=leaf_key)


# --- mTLS and identities ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "role"), [("fr", "node"), ("ops", "operator"), ("coordinator", "coordinator")]
)
def test_mtls_handshake_shows_the_callers_identity(
    pki: FederationPki, coordinator_server: tuple[ServerHandle, Probe], name: str, role: str
) -> None:
    handle, _ = coordinator_server
    with client(handle.port, pki.tls(name, role)) as channel:
        assert call(channel, PROBE + "Whoami") == f"{role}/{name}".encode()


def test_health_is_open_to_any_authenticated_caller(
    pki: FederationPki, coordinator_server: tuple[ServerHandle, Probe]
) -> None:
    handle, _ = coordinator_server
    with client(handle.port, pki.tls("eve", "operator")) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=TIMEOUT)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_health_status_can_be_flipped(pki: FederationPki) -> None:
    fr = Identity("node", "fr")
    with (
        serving(pki.tls("fr", "node")) as (handle, _),
        client(handle.port, pki.tls("de"), fr) as ch,
    ):
        stub = health_pb2_grpc.HealthStub(ch)
        handle.health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=TIMEOUT)
        assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING


def test_operator_calling_a_coordinator_only_method_is_denied_before_it_runs(
    pki: FederationPki,
) -> None:
    with serving(pki.tls("coordinator", "coordinator")) as (handle, probe):
        with client(handle.port, pki.tls("ops", "operator")) as channel:
            error = rpc_error(channel, PROBE + "Stream", "server-stream")
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "requires coordinator/*" in error.details()
        assert "presented operator/ops" in error.details()
        assert probe.calls == []


@pytest.mark.parametrize("kind", ["server-stream", "client-stream", "bidi"])
def test_streaming_methods_are_guarded_too(
    pki: FederationPki, coordinator_server: tuple[ServerHandle, Probe], kind: str
) -> None:
    handle, _ = coordinator_server
    method = PROBE + {"server-stream": "Stream", "client-stream": "Upload", "bidi": "Chat"}[kind]
    with client(handle.port, pki.tls("fr", "node")) as channel:
        assert rpc_error(channel, method, kind).code() == grpc.StatusCode.PERMISSION_DENIED
    with client(handle.port, pki.tls("coordinator", "coordinator")) as channel:
        expected = {
            "server-stream": [b"coordinator/coordinator"] * 3,
            "client-stream": b"coordinator/coordinator:2",
            "bidi": [b"coordinator/coordinator:a", b"coordinator/coordinator:b"],
        }[kind]
        assert call(channel, method, kind) == expected


def test_rules_can_name_a_single_holder_of_a_role(
    pki: FederationPki, coordinator_server: tuple[ServerHandle, Probe]
) -> None:
    handle, _ = coordinator_server
    with client(handle.port, pki.tls("ops", "operator")) as channel:
        assert call(channel, ADMIN + "Launch") == b"operator/ops"
    with client(handle.port, pki.tls("eve", "operator")) as channel:
        error = rpc_error(channel, ADMIN + "Launch")
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "requires operator/ops; the caller presented operator/eve" in error.details()


def test_methods_without_a_rule_are_denied(
    pki: FederationPki, coordinator_server: tuple[ServerHandle, Probe]
) -> None:
    handle, _ = coordinator_server
    with client(handle.port, pki.tls("coordinator", "coordinator")) as channel:
        error = rpc_error(channel, HIDDEN + "Secret")
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "not open to any caller" in error.details()


def test_unknown_methods_stay_unimplemented(
    pki: FederationPki, coordinator_server: tuple[ServerHandle, Probe]
) -> None:
    handle, _ = coordinator_server
    with client(handle.port, pki.tls("coordinator", "coordinator")) as channel:
        assert rpc_error(channel, PROBE + "Nope").code() == grpc.StatusCode.UNIMPLEMENTED


def test_a_ca_signed_certificate_without_identity_is_denied(
    pki: FederationPki, coordinator_server: tuple[ServerHandle, Probe]
) -> None:
    handle, probe = coordinator_server
    odd = leaf_with_uris(pki.ca, [])
    before = len(probe.calls)
    with client(handle.port, with_client_cert(pki, odd.cert_pem, odd.key_pem)) as channel:
        error = rpc_error(channel, PROBE + "Whoami")
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "blindmatch://<role>/<name> URI SAN" in error.details()
    assert len(probe.calls) == before


# --- refused handshakes -----------------------------------------------------------------------


def test_client_certificate_from_another_ca_fails_the_handshake(
    pki: FederationPki, coordinator_server: tuple[ServerHandle, Probe]
) -> None:
    handle, probe = coordinator_server
    other_ca = new_ca("rogue CA")
    rogue = issue(other_ca, "coordinator", "coordinator")
    # The rogue client trusts the real CA, so only the server's check can stop it.
    tls = with_client_cert(pki, rogue.cert_pem, rogue.key_pem)
    before = len(probe.calls)
    with client(handle.port, tls) as channel:
        assert rpc_error(channel, PROBE + "Whoami").code() == grpc.StatusCode.UNAVAILABLE
    assert len(probe.calls) == before


@pytest.mark.parametrize(
    ("not_before", "not_after"),
    [
        (datetime.datetime(2020, 1, 1, tzinfo=UTC), datetime.datetime(2021, 1, 1, tzinfo=UTC)),
        (datetime.datetime(2090, 1, 1, tzinfo=UTC), datetime.datetime(2091, 1, 1, tzinfo=UTC)),
    ],
    ids=["expired", "not-yet-valid"],
)
def test_client_certificates_outside_their_validity_are_refused(
    pki: FederationPki,
    coordinator_server: tuple[ServerHandle, Probe],
    not_before: datetime.datetime,
    not_after: datetime.datetime,
) -> None:
    handle, _ = coordinator_server
    leaf = issue(pki.ca, "coordinator", "coordinator", not_before=not_before, not_after=not_after)
    with client(handle.port, with_client_cert(pki, leaf.cert_pem, leaf.key_pem)) as channel:
        assert rpc_error(channel, PROBE + "Whoami").code() == grpc.StatusCode.UNAVAILABLE


def test_client_without_a_certificate_is_refused(
    pki: FederationPki, coordinator_server: tuple[ServerHandle, Probe]
) -> None:
    handle, _ = coordinator_server
    credentials = grpc.ssl_channel_credentials(root_certificates=pki.ca.cert_pem)
    with grpc.secure_channel(f"127.0.0.1:{handle.port}", credentials) as channel:
        assert rpc_error(channel, PROBE + "Whoami").code() == grpc.StatusCode.UNAVAILABLE


def test_client_refuses_a_server_from_another_ca(pki: FederationPki) -> None:
    rogue_ca = new_ca("rogue CA")
    rogue = issue(rogue_ca, "coordinator", "coordinator")
    server_tls = TlsConfig(ca=pki.ca.cert_pem, cert=rogue.cert_pem, key=rogue.key_pem)
    with serving(server_tls) as (handle, probe), client(handle.port, pki.tls("fr")) as channel:
        assert rpc_error(channel, PROBE + "Whoami").code() == grpc.StatusCode.UNAVAILABLE
        assert probe.calls == []


def test_the_identity_is_checked_not_the_host_dialled(pki: FederationPki) -> None:
    leaf = issue(pki.ca, "remote", "node", hosts=["node-remote.cert.example"])
    server_tls = TlsConfig(ca=pki.ca.cert_pem, cert=leaf.cert_pem, key=leaf.key_pem)
    coordinator = pki.tls("coordinator", "coordinator")
    with serving(server_tls) as (handle, _):
        # Dialled as 127.0.0.1, which the certificate does not name: its identity is what counts.
        with client(handle.port, coordinator, Identity("node", "remote")) as channel:
            assert call(channel, PROBE + "Whoami") == b"coordinator/coordinator"
        with client(handle.port, coordinator, Allow("node")) as channel:
            assert call(channel, PROBE + "Whoami") == b"coordinator/coordinator"


@pytest.fixture(scope="module")
def alpha_and_bravo(pki: FederationPki) -> Iterator[dict[str, tuple[ServerHandle, Probe]]]:
    with serving(pki.tls("alpha", "node")) as alpha, serving(pki.tls("bravo", "node")) as bravo:
        yield {"alpha": alpha, "bravo": bravo}


@pytest.mark.parametrize(
    ("dialled", "expect"),
    [
        ("bravo", Identity("node", "alpha")),  # a coordinator misrouted to another node
        ("alpha", COORDINATOR),  # a node answering a channel opened to the coordinator
        ("alpha", Allow("coordinator")),
        ("alpha", Identity("operator", "alpha")),  # same name, another role
    ],
)
def test_a_client_refuses_a_federation_server_that_is_not_the_one_it_expects(
    pki: FederationPki,
    alpha_and_bravo: dict[str, tuple[ServerHandle, Probe]],
    dialled: str,
    expect: Identity | Allow,
) -> None:
    handle, probe = alpha_and_bravo[dialled]
    before = len(probe.calls)
    with client(handle.port, pki.tls("coordinator", "coordinator"), expect) as channel:
        error = rpc_error(channel, PROBE + "Whoami")
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert "Hostname Verification Check failed" in (error.details() or "")
    assert len(probe.calls) == before


@pytest.mark.parametrize(
    ("dialled", "expect"),
    [
        ("alpha", Identity("node", "alpha")),
        ("bravo", Allow("node", "bravo")),
        ("bravo", Allow("node")),
    ],
)
def test_a_client_reaches_the_server_it_expects(
    pki: FederationPki,
    alpha_and_bravo: dict[str, tuple[ServerHandle, Probe]],
    dialled: str,
    expect: Identity | Allow,
) -> None:
    handle, _ = alpha_and_bravo[dialled]
    with client(handle.port, pki.tls("coordinator", "coordinator"), expect) as channel:
        assert call(channel, PROBE + "Whoami") == b"coordinator/coordinator"


def test_a_server_certificate_from_before_identity_names(
    pki: FederationPki, tmp_path: Path
) -> None:
    old = leaf_with_uris(pki.ca, ["blindmatch://node/old"])
    # Loading it says what to do, instead of every client failing its handshake ...
    with pytest.raises(
        TlsConfigError,
        match=r"node/old carries no blindmatch.invalid name.*"
        r"issue a new one with `blindmatch pki issue`",
    ):
        load_tls(*write_tls(tmp_path, pki.ca.cert_pem, old.cert_pem, old.key_pem))
    # ... which is what an older server holding it would give them.
    server_tls = TlsConfig(ca=pki.ca.cert_pem, cert=old.cert_pem, key=old.key_pem)
    expect = Identity("node", "old")
    with serving(server_tls) as (handle, _), client(handle.port, pki.tls("fr"), expect) as channel:
        assert rpc_error(channel, PROBE + "Whoami").code() == grpc.StatusCode.UNAVAILABLE


def test_a_client_certificate_from_before_identity_names_still_loads(
    pki: FederationPki, tmp_path: Path
) -> None:
    """An operator only ever dials: nobody checks its identity names, so it need not re-issue."""
    old = leaf_with_uris(pki.ca, ["blindmatch://operator/old-ops"])
    tls = load_tls(*write_tls(tmp_path, pki.ca.cert_pem, old.cert_pem, old.key_pem))
    with (
        serving(pki.tls("coordinator", "coordinator")) as (handle, _),
        client(handle.port, tls) as ch,
    ):
        assert call(ch, PROBE + "Whoami") == b"operator/old-ops"


def test_the_expected_server_must_be_a_valid_identity(pki: FederationPki) -> None:
    with pytest.raises(ValueError, match="invalid role"):
        open_channel("127.0.0.1:1", pki.tls("fr"), insecure=False, expect=Allow("admin"))
    with pytest.raises(ValueError, match="invalid name"):
        open_channel("127.0.0.1:1", pki.tls("fr"), insecure=False, expect=Allow("node", "A.b"))


# --- the access policy without a network ------------------------------------------------------


def test_policy_decisions() -> None:
    ops = Identity("operator", "ops")
    assert POLICY.denial(PROBE + "Whoami", ops) is None
    assert POLICY.denial(PROBE + "Stream", ops) == grpc.StatusCode.PERMISSION_DENIED
    assert POLICY.denial(PROBE + "Stream", Identity("coordinator", "c2")) is None
    assert POLICY.denial("/grpc.health.v1.Health/Check", ops) is None
    # Without a certificate nothing is open, not even health.
    assert POLICY.denial("/grpc.health.v1.Health/Check", None) == grpc.StatusCode.UNAUTHENTICATED
    assert POLICY.denial(PROBE + "Whoami", None) == grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.parametrize(
    ("rules", "message"),
    [
        ({PROBE: [("admin", None)]}, "invalid role"),
        ({PROBE: [("node", "FR")]}, "invalid name"),
        ({"blindmatch.test.Probe/": [("node", None)]}, "must start with '/'"),
    ],
)
def test_policy_rejects_malformed_rules(
    rules: dict[str, list[tuple[str, str | None]]], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        AccessPolicy(rules)


# --- servers, channels, plaintext -------------------------------------------------------------


def test_port_zero_gives_a_real_port_that_is_not_shared(pki: FederationPki) -> None:
    with serving(pki.tls("fr")) as (handle, _):
        assert handle.port > 0
        with pytest.raises(BindError, match=f"cannot listen on 127.0.0.1:{handle.port}"):
            start_server(
                f"127.0.0.1:{handle.port}", [], pki.tls("fr"), insecure=False, access=POLICY
            )


def test_insecure_loopback_works_without_identities() -> None:
    with serving(None, insecure=True) as (handle, _):
        channel = open_channel(f"localhost:{handle.port}", None, insecure=True, expect=COORDINATOR)
        with channel:
            # No certificates, so no policy: even the coordinator-only method answers.
            assert call(channel, PROBE + "Stream", "server-stream") == [b"anonymous"] * 3


@pytest.mark.parametrize("bind", ["10.1.2.3:0", "0.0.0.0:0", "[::]:0", "example.org:0"])
def test_insecure_bind_is_refused_off_loopback(bind: str) -> None:
    with pytest.raises(InsecureBindRefused, match=r"only allowed on loopback"):
        start_server(bind, [], None, insecure=True, access=None)


@pytest.mark.parametrize(
    "target", ["10.1.2.3:50051", "node.example:443", "dns:///localhost:1", "unix:/tmp/x"]
)
def test_insecure_target_is_refused_off_loopback(target: str) -> None:
    with pytest.raises(InsecureBindRefused, match=r"only allowed on loopback"):
        open_channel(target, None, insecure=True, expect=COORDINATOR)


def test_transport_settings_must_be_coherent(pki: FederationPki) -> None:
    tls = pki.tls("fr")
    with pytest.raises(ValueError, match="needs tls"):
        start_server("127.0.0.1:0", [], None, insecure=False, access=POLICY)
    with pytest.raises(ValueError, match="needs an AccessPolicy"):
        start_server("127.0.0.1:0", [], tls, insecure=False, access=None)
    with pytest.raises(ValueError, match="not both"):
        start_server("127.0.0.1:0", [], tls, insecure=True, access=None)
    with pytest.raises(ValueError, match="needs tls"):
        open_channel("127.0.0.1:1", None, insecure=False, expect=COORDINATOR)
    with pytest.raises(ValueError, match="not both"):
        open_channel("127.0.0.1:1", tls, insecure=True, expect=COORDINATOR)


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("localhost", True),
        ("LOCALHOST.", True),
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("[::1]", True),
        ("::ffff:127.0.0.1", True),
        ("0.0.0.0", False),
        ("::", False),
        ("10.1.2.3", False),
        ("128.0.0.1", False),
        ("localhost.example.org", False),
        ("", False),
    ],
)
def test_is_loopback(host: str, expected: bool) -> None:
    assert is_loopback(host) is expected


def test_split_host_port() -> None:
    assert split_host_port("127.0.0.1:0") == ("127.0.0.1", 0)
    assert split_host_port("[::1]:50051") == ("::1", 50051)
    assert split_host_port("node.example:443") == ("node.example", 443)
    for bad in ["127.0.0.1", "::1:50051", ":50051", "host:", "host:x", "host:70000", "[::1]"]:
        with pytest.raises(ValueError, match="use host:port"):
            split_host_port(bad)


# --- load_tls ---------------------------------------------------------------------------------


def write_tls(directory: Path, ca: bytes, cert: bytes, key: bytes) -> tuple[Path, Path, Path]:
    directory.mkdir(exist_ok=True)
    paths = (directory / "ca.pem", directory / "me.pem", directory / "me.key")
    for path, content in zip(paths, (ca, cert, key), strict=True):
        path.write_bytes(content)
    paths[2].chmod(0o600)  # load_tls refuses a key others may read
    return paths


def test_load_tls_reads_the_three_files(pki: FederationPki) -> None:
    paths = pki.files("fr")
    tls = load_tls(paths.ca, paths.cert, paths.key)
    assert tls == TlsConfig(paths.ca.read_bytes(), paths.cert.read_bytes(), paths.key.read_bytes())
    assert "PRIVATE KEY" not in repr(tls)


def test_load_tls_names_a_missing_or_unusable_file(pki: FederationPki, tmp_path: Path) -> None:
    paths = pki.files("fr")
    with pytest.raises(TlsConfigError, match=r"private key file .*nope.key does not exist"):
        load_tls(paths.ca, paths.cert, tmp_path / "nope.key")
    with pytest.raises(TlsConfigError, match="is a directory"):
        load_tls(tmp_path, paths.cert, paths.key)
    (tmp_path / "junk.pem").write_bytes(b"junk")
    with pytest.raises(TlsConfigError, match=r"certificate .*junk.pem is not a PEM certificate"):
        load_tls(paths.ca, tmp_path / "junk.pem", paths.key)


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o700, 0o610])
def test_load_tls_refuses_a_key_others_may_read(
    pki: FederationPki, tmp_path: Path, mode: int
) -> None:
    fr = pki.files("fr")
    ca, cert, key = write_tls(
        tmp_path, fr.ca.read_bytes(), fr.cert.read_bytes(), fr.key.read_bytes()
    )
    key.chmod(mode)
    if mode & 0o077:
        with pytest.raises(TlsConfigError) as err:
            load_tls(ca, cert, key)
        assert str(err.value) == (
            f"private key {key} is open to its group or others (mode {mode:04o}); whoever can "
            f"read it can act as this certificate: run `chmod 600 {key}`"
        )
    else:
        load_tls(ca, cert, key)
    key.chmod(0o600)  # what the message says to run
    load_tls(ca, cert, key)


def test_load_tls_quotes_the_chmod_of_an_odd_path(pki: FederationPki, tmp_path: Path) -> None:
    fr = pki.files("fr")
    ca, cert, key = write_tls(
        tmp_path / "my keys", fr.ca.read_bytes(), fr.cert.read_bytes(), fr.key.read_bytes()
    )
    key.chmod(0o644)
    with pytest.raises(TlsConfigError) as err:
        load_tls(ca, cert, key)
    assert str(err.value).endswith(f"run `chmod 600 '{tmp_path}/my keys/me.key'`")


def test_load_tls_cross_checks_the_files(pki: FederationPki, tmp_path: Path) -> None:
    fr, de = pki.files("fr"), pki.files("de")
    with pytest.raises(TlsConfigError, match="does not belong to certificate"):
        load_tls(fr.ca, fr.cert, de.key)
    rogue_ca: CaMaterial = new_ca("rogue CA")
    with pytest.raises(TlsConfigError, match="was not issued by the CA"):
        load_tls(write_tls(tmp_path / "r", rogue_ca.cert_pem, b"", b"")[0], fr.cert, fr.key)
    odd = leaf_with_uris(pki.ca, ["blindmatch://root/x"])
    with pytest.raises(TlsConfigError, match="malformed identity"):
        load_tls(*write_tls(tmp_path / "o", pki.ca.cert_pem, odd.cert_pem, odd.key_pem))


@pytest.mark.parametrize(
    ("not_before", "not_after", "message"),
    [
        (
            datetime.datetime(2020, 1, 1, tzinfo=UTC),
            datetime.datetime(2021, 1, 1, tzinfo=UTC),
            "expired on 2021-01-01",
        ),
        (
            datetime.datetime(2090, 1, 1, tzinfo=UTC),
            datetime.datetime(2091, 1, 1, tzinfo=UTC),
            "not valid until 2090-01-01",
        ),
    ],
)
def test_load_tls_reports_certificates_outside_their_validity(
    pki: FederationPki,
    tmp_path: Path,
    not_before: datetime.datetime,
    not_after: datetime.datetime,
    message: str,
) -> None:
    leaf = issue(pki.ca, "fr", "node", not_before=not_before, not_after=not_after)
    with pytest.raises(TlsConfigError, match=message):
        load_tls(*write_tls(tmp_path, pki.ca.cert_pem, leaf.cert_pem, leaf.key_pem))
