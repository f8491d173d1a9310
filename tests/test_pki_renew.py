"""Issue 19, requirement 4: the CA's registry (one live certificate per role and name), ``pki
renew``, and a node taking a renewed certificate on SIGHUP while a stream runs on.

Everything runs the real CLI (tests/clirun.py) against real PKI directories; the SIGHUP test runs
a real ``blindmatch node serve`` process and reads the certificate it presents from a raw TLS
handshake, since grpc python never shows a client the server's certificate.
"""

from __future__ import annotations

import datetime
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from grpc_health.v1 import health_pb2, health_pb2_grpc

from blindmatch.core.identity import Identity
from blindmatch.runtime import net
from blindmatch.runtime.pki import (
    REGISTRY_FILE,
    NameTaken,
    Registry,
    init_pki_dir,
    issue_to_dir,
)
from tests.clirun import run
from tests.federation import NAMES, Federation, Setup, start_request
from tests.pkifixtures import FederationPki
from tests.waiting import until

T = 30.0


def fingerprint(pem_or_der: bytes) -> str:
    cert = (
        x509.load_pem_x509_certificate(pem_or_der)
        if pem_or_der.startswith(b"-----")
        else x509.load_der_x509_certificate(pem_or_der)
    )
    return cert.fingerprint(hashes.SHA256()).hex()


def test_a_second_live_certificate_for_a_name_is_refused_until_replaced(tmp_path: Path) -> None:
    init_pki_dir(tmp_path / "pki")
    first = issue_to_dir(tmp_path / "pki", "fr", "node")
    with pytest.raises(NameTaken, match=r"node/fr already has a live certificate.*pki renew"):
        issue_to_dir(tmp_path / "pki", "fr", "node", out_dir=tmp_path / "elsewhere")
    # the same name under another role is another party (identities are role and name)
    issue_to_dir(tmp_path / "pki", "fr", "operator", out_dir=tmp_path / "ops")
    old = first.cert.read_bytes()
    status, out, err = run(
        "pki", "issue", str(tmp_path / "pki"), "fr", "--role", "node", "--replace"
    )
    assert status == 0, err
    assert first.cert.read_bytes() != old
    assert Path(f"{first.cert}.old").read_bytes() == old
    status, out, _ = run("pki", "list", str(tmp_path / "pki"), "--json")
    rows = {(r["role"], r["fingerprint"]): r for r in json.loads(out)}
    replaced = rows[("node", fingerprint(old))]
    assert replaced["state"] == f"replaced by {replaced['replaced_by']}"
    assert rows[("node", fingerprint(first.cert.read_bytes()))]["state"] == "live"
    assert rows[("node", fingerprint(first.cert.read_bytes()))]["replaces"] == replaced["serial"]


def test_node_init_refuses_a_second_node_of_the_same_name(tmp_path: Path) -> None:
    pki = str(tmp_path / "pki")
    assert run("pki", "init", pki)[0] == 0
    listen = ("--listen", "127.0.0.1:0", "--pki", pki)
    assert run("node", "init", str(tmp_path / "alpha"), "--name", "alpha", *listen)[0] == 0
    status, _, err = run("node", "init", str(tmp_path / "alpha-dup"), "--name", "alpha", *listen)
    assert status == 2
    assert "node/alpha already has a live certificate" in err
    assert f"blindmatch pki renew {pki} alpha --role node" in err
    assert not (tmp_path / "alpha-dup").exists()


def test_renew_keeps_the_key_and_the_old_certificate_and_records_it(tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    init_pki_dir(pki)
    paths = issue_to_dir(pki, "fr", "node", ["fr.cert.example"], out_dir=tmp_path / "fr")
    old, key = paths.cert.read_bytes(), paths.key.read_bytes()
    status, out, err = run("pki", "renew", str(pki), "fr", "--role", "node")
    assert status == 0, err
    new = paths.cert.read_bytes()
    assert new != old and paths.key.read_bytes() == key
    assert Path(f"{paths.cert}.old").read_bytes() == old
    # the renewed certificate is a working pair with the unchanged key, and keeps its hosts
    net.load_tls(paths.ca, paths.cert, paths.key)
    sans = x509.load_pem_x509_certificate(new).extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    )
    assert "fr.cert.example" in sans.value.get_values_for_type(x509.DNSName)
    status, out, _ = run("pki", "list", str(pki))
    assert status == 0
    lines = [line for line in out.splitlines() if " fr " in line]
    assert len(lines) == 2 and "replaced by" in lines[0] and lines[1].endswith("live")
    # a new key: the old one stays beside it as .old
    status, out, err = run("pki", "renew", str(pki), "fr", "--role", "node", "--new-key")
    assert status == 0, err
    assert paths.key.read_bytes() != key and Path(f"{paths.key}.old").read_bytes() == key
    assert "restart" in out
    net.load_tls(paths.ca, paths.cert, paths.key)


def test_an_old_pki_dir_without_a_registry_gets_one_from_its_issued_certificates(
    tmp_path: Path,
) -> None:
    pki = tmp_path / "pki"
    init_pki_dir(pki)
    paths = issue_to_dir(pki, "fr", "node")
    elsewhere = issue_to_dir(pki, "de", "node", out_dir=tmp_path / "de")
    # as an older blindmatch left it: no registry, no copies
    (pki / REGISTRY_FILE).unlink()
    for copy in (pki / "certs").iterdir():
        copy.unlink()
    status, out, err = run("pki", "list", str(pki))
    assert status == 0
    assert "built it from" in err
    assert [line.split()[1:3] for line in out.splitlines()[1:]] == [["node", "fr"]]
    with pytest.raises(NameTaken):
        issue_to_dir(pki, "fr", "node", out_dir=tmp_path / "fr2")
    # one written into a node's directory joins when renewed from its file
    status, _, err = run("pki", "renew", str(pki), "de", "--role", "node")
    assert status == 2 and "--cert" in err
    status, _, err = run(
        "pki", "renew", str(pki), "de", "--role", "node", "--cert", str(elsewhere.cert)
    )
    assert status == 0, err
    states = {
        (e.name, e.state(datetime.datetime.now(datetime.UTC))) for e in Registry.read(pki).entries
    }
    assert ("de", "live") in states and ("fr", "live") in states
    assert paths.cert.exists()


# --- SIGHUP -------------------------------------------------------------------------------------


@pytest.fixture
def node_process(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], Path, Path]]:
    pki = tmp_path / "pki"
    assert run("pki", "init", str(pki))[0] == 0
    node_dir = tmp_path / "alpha"
    status, _, err = run(
        "node",
        "init",
        str(node_dir),
        "--name",
        "alpha",
        "--listen",
        "127.0.0.1:0",
        "--pki",
        str(pki),
    )
    assert status == 0, err
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "blindmatch.cli.main",
            "node",
            "serve",
            "--config",
            str(node_dir / "node.toml"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        yield proc, pki, node_dir
    finally:
        proc.terminate()
        proc.communicate(timeout=60)


def _line(proc: subprocess.Popen[str], prefix: str) -> str:
    """The next stdout line with ``prefix``: what the test waits for."""
    assert proc.stdout is not None
    for line in proc.stdout:
        if prefix in line:
            return line
    raise AssertionError(
        f"the node exited without printing {prefix!r}: {proc.stderr and proc.stderr.read()}"
    )


def _presented(port: int, client: tuple[Path, Path], ca: Path) -> bytes:
    """The certificate (DER) the server presents to a new TLS connection."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(ca)
    context.load_cert_chain(*client)
    context.check_hostname = False  # identity names are checked by grpc clients, not here
    context.set_alpn_protocols(["h2"])
    with socket.create_connection(("127.0.0.1", port)) as raw, context.wrap_socket(raw) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return der


def test_sighup_takes_a_renewed_certificate_while_a_stream_runs_on(
    node_process: tuple[subprocess.Popen[str], Path, Path],
) -> None:
    proc, pki, node_dir = node_process
    port = int(_line(proc, "listening on").split(" on ")[1].split()[0].rpartition(":")[2])
    coordinator = issue_to_dir(pki, "coordinator", "coordinator")
    client = (coordinator.cert, coordinator.key)
    ca = node_dir / "ca.pem"
    old = (node_dir / "alpha.pem").read_bytes()
    assert fingerprint(_presented(port, client, ca)) == fingerprint(old)

    # a long stream, open across the reload, as a round's streams are
    tls = net.load_tls(ca, coordinator.cert, coordinator.key)
    channel = net.open_channel(
        f"127.0.0.1:{port}", tls, insecure=False, expect=Identity("node", "alpha")
    )
    stream = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest())
    assert next(stream).status == health_pb2.HealthCheckResponse.SERVING

    assert run("pki", "renew", str(pki), "alpha", "--role", "node")[0] == 0
    new = (node_dir / "alpha.pem").read_bytes()
    proc.send_signal(signal.SIGHUP)
    assert "reloaded its certificate" in _line(proc, "alpha reloaded")

    assert fingerprint(_presented(port, client, ca)) == fingerprint(new) != fingerprint(old)
    assert stream.is_active()  # the connection made before the reload runs on
    # and a new grpc channel, checking the node's identity names, reaches it with the new one
    with net.open_channel(
        f"127.0.0.1:{port}", tls, insecure=False, expect=Identity("node", "alpha")
    ) as fresh:
        reply = health_pb2_grpc.HealthStub(fresh).Check(health_pb2.HealthCheckRequest(), timeout=30)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    stream.cancel()
    channel.close()


def test_sighup_refuses_a_new_key_and_serves_on_with_the_old(
    node_process: tuple[subprocess.Popen[str], Path, Path],
) -> None:
    proc, pki, node_dir = node_process
    port = int(_line(proc, "listening on").split(" on ")[1].split()[0].rpartition(":")[2])
    coordinator = issue_to_dir(pki, "coordinator", "coordinator")
    old = (node_dir / "alpha.pem").read_bytes()
    assert run("pki", "renew", str(pki), "alpha", "--role", "node", "--new-key")[0] == 0
    proc.send_signal(signal.SIGHUP)
    assert proc.stderr is not None
    line = next(line for line in proc.stderr if "kept its certificate" in line)
    assert "restart" in line
    presented = _presented(port, (coordinator.cert, coordinator.key), node_dir / "ca.pem")
    assert fingerprint(presented) == fingerprint(old)


def test_a_round_in_flight_completes_across_renewals_of_a_node_and_the_coordinator(
    tmp_path: Path,
) -> None:
    """A round held mid-way (the coordinator's link to bravo stalled after Prepare began): alpha's
    and the coordinator's certificates are renewed and reloaded, the link released, and the round
    completes; the next round, on fresh handshakes, completes too."""
    pki = FederationPki(tmp_path / "pki")
    with Federation(tmp_path / "fed", pki, Setup(relays=True)) as fed:
        assert fed.coordinator is not None
        relay = fed.relays["bravo"]
        relay.hold_after(0)
        started = fed.stub.StartRound(start_request(pki, NAMES), timeout=T)
        until("the round waits on bravo", lambda: relay.holding, T)
        for name, role in (("alpha", "node"), ("coordinator", "coordinator")):
            assert run("pki", "renew", str(pki.dir), name, "--role", role)[0] == 0
        links = fed.coordinator.coordinator.links
        before = links.channels()
        alpha = fed.nodes["alpha"].reload_certificate()
        coordinator = fed.coordinator.reload_certificate()
        assert alpha.startswith("serial ") and coordinator.startswith("serial ")
        # the coordinator's later calls go over channels presenting its renewed certificate
        assert all(links.channels()[n] is not before[n] for n in NAMES)
        relay.release()
        assert fed.wait(started.id).state == "done"
        again = fed.run_round(NAMES)
        assert again.state == "done", again.error
