from __future__ import annotations

import argparse
import datetime
import ipaddress
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from blindmatch.cli.main import cmd_pki_init, cmd_pki_issue
from blindmatch.core.identity import ROLES, Identity, PkiError, identity_of
from blindmatch.runtime.net import load_tls
from blindmatch.runtime.pki import (
    CaMaterial,
    PkiFileExists,
    identity_host,
    init_pki_dir,
    issue,
    issue_to_dir,
    new_ca,
    served_identity,
)
from tests.clirun import run
from tests.pkifixtures import FederationPki, leaf_with_uris

UTC = datetime.UTC
# What every certificate carries besides its hosts, so that clients can check whom they reach.
IDENTITY_NAMES = {
    "node/fr": ["fr.node.blindmatch.invalid", "node.blindmatch.invalid"],
    "operator/ops": ["ops.operator.blindmatch.invalid", "operator.blindmatch.invalid"],
    "coordinator/coord": ["coord.coordinator.blindmatch.invalid", "coordinator.blindmatch.invalid"],
}


@pytest.fixture(scope="module")
def ca() -> CaMaterial:
    return new_ca()


@pytest.fixture
def open_umask() -> Iterator[None]:
    # With umask 0 a file gets exactly the mode it is created with: a 0644 key would show.
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def load(pem: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem)


def sans(cert: x509.Certificate) -> x509.SubjectAlternativeName:
    return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --- certificates -----------------------------------------------------------------------------


def test_ca_may_sign_leaves_only(ca: CaMaterial) -> None:
    cert = load(ca.cert_pem)
    constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca and constraints.value.path_length == 0
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign and not usage.digital_signature
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert cert.public_key().curve.name == "secp256r1"  # type: ignore[union-attr]
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert datetime.timedelta(days=3650) <= lifetime <= datetime.timedelta(days=3660)
    cert.verify_directly_issued_by(cert)


@pytest.mark.parametrize("role", ROLES)
def test_identity_round_trips_for_every_role(ca: CaMaterial, role: str) -> None:
    leaf = issue(ca, "fr_cert-1", role)
    assert identity_of(leaf.cert_pem) == Identity(role, "fr_cert-1")


def test_leaf_is_signed_by_the_ca_and_serves_both_ends(ca: CaMaterial) -> None:
    cert = load(issue(ca, "fr", "node").cert_pem)
    cert.verify_directly_issued_by(load(ca.cert_pem))
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature and not usage.key_cert_sign
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert datetime.timedelta(days=730) <= lifetime <= datetime.timedelta(days=732)


def test_servers_default_to_loopback_hosts_operators_get_none(ca: CaMaterial) -> None:
    node = sans(load(issue(ca, "fr", "node").cert_pem))
    assert node.get_values_for_type(x509.DNSName) == [*IDENTITY_NAMES["node/fr"], "localhost"]
    assert node.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    operator = sans(load(issue(ca, "ops", "operator").cert_pem))
    assert operator.get_values_for_type(x509.DNSName) == IDENTITY_NAMES["operator/ops"]
    assert operator.get_values_for_type(x509.IPAddress) == []


def test_given_hosts_replace_the_defaults(ca: CaMaterial) -> None:
    leaf = issue(ca, "coord", "coordinator", hosts=["Coord.CERT.example", "10.0.0.7", "::1"])
    names = sans(load(leaf.cert_pem))
    assert names.get_values_for_type(x509.DNSName) == [
        *IDENTITY_NAMES["coordinator/coord"],
        "coord.cert.example",
    ]
    assert names.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("10.0.0.7"),
        ipaddress.ip_address("::1"),
    ]
    assert names.get_values_for_type(x509.UniformResourceIdentifier) == [
        "blindmatch://coordinator/coord"
    ]


@pytest.mark.parametrize(
    "host",
    [
        "",
        "bad host",
        "-x.example",
        "a..b",
        "x_y.example",
        # the identity names: a node given another's could pass for it
        "alpha.node.blindmatch.invalid",
        "Coordinator.Blindmatch.Invalid.",
        "blindmatch.invalid",
    ],
)
def test_bad_hosts_are_rejected(ca: CaMaterial, host: str) -> None:
    with pytest.raises(ValueError, match="invalid host"):
        issue(ca, "fr", "node", hosts=[host])


def test_validity_window_is_honoured(ca: CaMaterial) -> None:
    start = datetime.datetime(2020, 1, 1, tzinfo=UTC)
    end = datetime.datetime(2021, 1, 1, tzinfo=UTC)
    cert = load(issue(ca, "old", "node", not_before=start, not_after=end).cert_pem)
    assert (cert.not_valid_before_utc, cert.not_valid_after_utc) == (start, end)
    with pytest.raises(ValueError, match="must be later"):
        issue(ca, "old", "node", not_before=end, not_after=start)


@pytest.mark.parametrize(
    "name", ["", "FR", "-fr", "_fr", "fr.cert", "fr/x", "../x", "fr cert", "é", "a" * 64]
)
def test_bad_names_are_rejected(ca: CaMaterial, name: str) -> None:
    with pytest.raises(ValueError, match="invalid name"):
        issue(ca, name, "node")


@pytest.mark.parametrize("name", ["a", "0", "a" * 63, "fr_cert-1"])
def test_good_names_are_accepted(ca: CaMaterial, name: str) -> None:
    assert identity_of(issue(ca, name, "node").cert_pem).name == name


def test_bad_role_is_rejected(ca: CaMaterial) -> None:
    with pytest.raises(ValueError, match="invalid role 'admin'"):
        issue(ca, "fr", "admin")


def test_issue_refuses_a_ca_key_that_does_not_match(ca: CaMaterial) -> None:
    other = new_ca()
    with pytest.raises(PkiError, match="does not belong"):
        issue(CaMaterial(cert_pem=ca.cert_pem, key_pem=other.key_pem), "fr", "node")


@pytest.mark.parametrize(
    ("uris", "message"),
    [
        ([], "found none"),
        (["https://example.org/node/fr"], "found none"),
        (["blindmatch://node/fr", "blindmatch://node/de"], "exactly one"),
        (["blindmatch://node"], "malformed identity"),
        (["blindmatch://admin/fr"], "invalid role"),
        (["blindmatch://node/FR"], "invalid name"),
        (["blindmatch://node/fr/x"], "invalid name"),
    ],
)
def test_identity_of_rejects_certificates_without_one_valid_identity(
    ca: CaMaterial, uris: list[str], message: str
) -> None:
    with pytest.raises(PkiError, match=message):
        identity_of(leaf_with_uris(ca, uris).cert_pem)


def test_identity_hosts_name_a_holder_or_a_whole_role() -> None:
    assert identity_host("node", "alpha") == "alpha.node.blindmatch.invalid"
    assert identity_host("coordinator") == "coordinator.blindmatch.invalid"
    # Any valid name makes a host name grpc matches, '_' and a trailing '-' included.
    assert identity_host("node", "a_b-") == "a_b-.node.blindmatch.invalid"


@pytest.mark.parametrize("role", ROLES)
def test_issued_certificates_serve_their_identity(ca: CaMaterial, role: str) -> None:
    assert served_identity(issue(ca, "x_1", role).cert_pem) == Identity(role, "x_1")


def test_a_certificate_from_before_identity_names_must_be_reissued(ca: CaMaterial) -> None:
    old = leaf_with_uris(ca, ["blindmatch://node/alpha"])
    assert identity_of(old.cert_pem) == Identity("node", "alpha")
    with pytest.raises(
        PkiError,
        match=r"node/alpha carries no blindmatch.invalid name: it was "
        r"issued before .* issue a new one with `blindmatch pki issue`",
    ):
        served_identity(old.cert_pem)


@pytest.mark.parametrize(
    "names",
    [
        ["alpha.node.blindmatch.invalid"],  # the role name missing
        [
            "alpha.node.blindmatch.invalid",
            "node.blindmatch.invalid",
            "bravo.node.blindmatch.invalid",
        ],
        ["bravo.node.blindmatch.invalid", "node.blindmatch.invalid"],
    ],
)
def test_a_certificate_naming_another_identity_is_refused(ca: CaMaterial, names: list[str]) -> None:
    odd = leaf_with_uris(ca, ["blindmatch://node/alpha"], dns=names)
    with pytest.raises(PkiError, match=r"not exactly alpha\.node\.blindmatch\.invalid"):
        served_identity(odd.cert_pem)


def test_identity_of_rejects_non_certificates() -> None:
    with pytest.raises(PkiError, match=r"not a PEM X\.509 certificate"):
        identity_of(b"-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n")


# --- files ------------------------------------------------------------------------------------


def test_init_writes_a_private_ca_key(tmp_path: Path, open_umask: None) -> None:
    paths = init_pki_dir(tmp_path / "pki")
    assert (paths.cert, paths.key) == (tmp_path / "pki/ca.pem", tmp_path / "pki/ca.key")
    assert mode(paths.key) == 0o600
    assert mode(paths.cert) == 0o644
    assert mode(tmp_path / "pki") == 0o700
    assert (
        load(paths.cert.read_bytes())
        .extensions.get_extension_for_class(x509.BasicConstraints)
        .value.ca
    )


def test_init_refuses_to_overwrite(tmp_path: Path) -> None:
    paths = init_pki_dir(tmp_path)
    before = paths.key.read_bytes()
    with pytest.raises(PkiFileExists, match=r"ca\.pem exists; refusing to overwrite"):
        init_pki_dir(tmp_path)
    paths.cert.unlink()
    # Even with only the key left, a new CA must not replace it.
    with pytest.raises(FileExistsError, match=r"ca\.key exists; refusing to overwrite"):
        init_pki_dir(tmp_path)
    assert paths.key.read_bytes() == before
    assert not paths.cert.exists()


def test_issue_writes_into_issued_with_a_private_key(tmp_path: Path, open_umask: None) -> None:
    ca_paths = init_pki_dir(tmp_path)
    paths = issue_to_dir(tmp_path, "fr", "node", ["fr.cert.example"])
    assert paths.ca == ca_paths.cert
    assert (paths.cert, paths.key) == (tmp_path / "issued/fr.pem", tmp_path / "issued/fr.key")
    assert mode(paths.key) == 0o600
    assert mode(paths.cert) == 0o644
    cert = load(paths.cert.read_bytes())
    cert.verify_directly_issued_by(load(ca_paths.cert.read_bytes()))
    assert identity_of(paths.cert.read_bytes()) == Identity("node", "fr")
    assert sans(cert).get_values_for_type(x509.DNSName) == [
        *IDENTITY_NAMES["node/fr"],
        "fr.cert.example",
    ]


def test_issue_refuses_to_overwrite(tmp_path: Path) -> None:
    init_pki_dir(tmp_path)
    paths = issue_to_dir(tmp_path, "fr", "node")
    key = paths.key.read_bytes()
    with pytest.raises(PkiFileExists, match=r"fr\.pem exists; refusing to overwrite"):
        issue_to_dir(tmp_path, "fr", "operator")
    paths.cert.unlink()
    with pytest.raises(PkiFileExists, match=r"fr\.key exists; refusing to overwrite"):
        issue_to_dir(tmp_path, "fr", "node")
    assert paths.key.read_bytes() == key
    assert not paths.cert.exists()


def test_issue_does_not_follow_a_planted_symlink(tmp_path: Path) -> None:
    init_pki_dir(tmp_path / "pki")
    (tmp_path / "pki/issued").mkdir()
    (tmp_path / "pki/issued/fr.key").symlink_to(tmp_path / "stolen")
    with pytest.raises(PkiFileExists):
        issue_to_dir(tmp_path / "pki", "fr", "node")
    assert not (tmp_path / "stolen").exists()


def test_issue_to_out_dir_brings_the_ca_certificate(tmp_path: Path) -> None:
    ca_paths = init_pki_dir(tmp_path / "pki")
    node_dir = tmp_path / "node-fr"
    first = issue_to_dir(tmp_path / "pki", "fr", "node", out_dir=node_dir)
    assert first.ca == node_dir / "ca.pem"
    assert first.ca.read_bytes() == ca_paths.cert.read_bytes()
    assert (first.cert, first.key) == (node_dir / "fr.pem", node_dir / "fr.key")
    assert not (tmp_path / "pki/issued").exists()
    # A second certificate in the same directory shares the identical ca.pem.
    second = issue_to_dir(tmp_path / "pki", "fr-ops", "operator", out_dir=node_dir)
    assert second.ca == first.ca


def test_issue_to_out_dir_refuses_a_different_ca_certificate(tmp_path: Path) -> None:
    init_pki_dir(tmp_path / "pki")
    node_dir = tmp_path / "node-fr"
    node_dir.mkdir()
    (node_dir / "ca.pem").write_bytes(new_ca().cert_pem)
    with pytest.raises(PkiFileExists, match=r"ca\.pem exists; refusing to overwrite"):
        issue_to_dir(tmp_path / "pki", "fr", "node", out_dir=node_dir)
    assert not (node_dir / "fr.key").exists()


def test_ca_is_a_reserved_name(tmp_path: Path) -> None:
    init_pki_dir(tmp_path)
    with pytest.raises(ValueError, match="reserved"):
        issue_to_dir(tmp_path, "ca", "node", out_dir=tmp_path / "out")


def test_issue_without_an_initialised_pki_dir_says_what_to_run(tmp_path: Path) -> None:
    with pytest.raises(PkiError, match=r"does not exist; run `blindmatch pki init"):
        issue_to_dir(tmp_path / "missing", "fr", "node")
    paths = init_pki_dir(tmp_path / "pki")
    paths.key.unlink()
    with pytest.raises(PkiError, match=r"ca.key is missing.*run `blindmatch pki init"):
        issue_to_dir(tmp_path / "pki", "fr", "node")


def test_session_fixture_issues_usable_files(pki: FederationPki) -> None:
    paths = pki.files("fixture-check", "coordinator")
    assert identity_of(paths.cert.read_bytes()) == Identity("coordinator", "fixture-check")
    assert pki.files("fixture-check", "coordinator") == paths
    with pytest.raises(ValueError, match="already issued as a coordinator"):
        pki.files("fixture-check", "node")


# --- CLI handlers -----------------------------------------------------------------------------


def test_cli_init_and_issue(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pki_dir = tmp_path / "pki"
    assert cmd_pki_init(argparse.Namespace(pki_dir=str(pki_dir))) == 0
    assert "ca.key" in capsys.readouterr().out
    args = argparse.Namespace(
        pki_dir=str(pki_dir), name="de", role="node", host=["de.example"], replace=False
    )
    assert cmd_pki_issue(args) == 0
    out = capsys.readouterr().out
    assert str(pki_dir / "issued/de.pem") in out and str(pki_dir / "issued/de.key") in out
    names = sans(load((pki_dir / "issued/de.pem").read_bytes()))
    assert names.get_values_for_type(x509.DNSName) == [
        "de.node.blindmatch.invalid",
        "node.blindmatch.invalid",
        "de.example",
    ]


def test_cli_issues_a_checker_certificate(tmp_path: Path, open_umask: None) -> None:
    """A SIEM's certificate: the checker role, no host names (it never serves), a 0600 key."""
    pki_dir = tmp_path / "pki"
    assert run("pki", "init", str(pki_dir))[0] == 0
    status, out, err = run("pki", "issue", str(pki_dir), "siem-1", "--role", "checker")
    assert status == 0, err
    assert "issued checker/siem-1" in out
    cert, key = pki_dir / "issued/siem-1.pem", pki_dir / "issued/siem-1.key"
    assert identity_of(cert.read_bytes()) == Identity("checker", "siem-1")
    names = sans(load(cert.read_bytes()))
    assert names.get_values_for_type(x509.DNSName) == [
        "siem-1.checker.blindmatch.invalid",
        "checker.blindmatch.invalid",
    ]
    assert names.get_values_for_type(x509.IPAddress) == []
    assert mode(key) == 0o600
    load_tls(pki_dir / "ca.pem", cert, key)  # usable as it is: its key is not refused


def test_cli_offers_every_role(tmp_path: Path) -> None:
    # main.py spells the roles out (it does not import identity): they must not drift apart
    status, out, _ = run("pki", "issue", "--help")
    assert status == 0
    assert "{" + ",".join(ROLES) + "}" in out
    status, _, err = run("pki", "issue", str(tmp_path), "x", "--role", "siem")
    assert status == 2 and "invalid choice: 'siem'" in err


def test_cli_reports_errors_on_stderr(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    init_pki_dir(tmp_path)
    # existing files and invalid names are bad input: exit 2, as in every other command
    assert cmd_pki_init(argparse.Namespace(pki_dir=str(tmp_path))) == 2
    assert "refusing to overwrite" in capsys.readouterr().err
    args = argparse.Namespace(
        pki_dir=str(tmp_path), name="Bad", role="node", host=None, replace=False
    )
    assert cmd_pki_issue(args) == 2
    assert "invalid name 'Bad'" in capsys.readouterr().err
