"""A federation PKI for tests: one CA per test session, certificates issued on demand.

Usage: ``pki.tls("fr", "node")`` gives a TlsConfig for node ``fr``; ``pki.files("fr", "node")``
gives the paths of its ``ca.pem``/``fr.pem``/``fr.key`` (what a config file would point at).
The same name always yields the same certificate within a session.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from blindmatch.runtime.net import TlsConfig, load_tls
from blindmatch.runtime.pki import CaMaterial, CertMaterial, IssuedPaths, init_pki_dir, issue_to_dir

__all__ = ["FederationPki", "leaf_with_uris", "own_pki", "pki"]


class FederationPki:
    def __init__(self, pki_dir: Path) -> None:
        self.dir = pki_dir
        paths = init_pki_dir(pki_dir)
        self.ca = CaMaterial(cert_pem=paths.cert.read_bytes(), key_pem=paths.key.read_bytes())
        self._issued: dict[str, tuple[str, IssuedPaths]] = {}

    def files(self, name: str, role: str = "node") -> IssuedPaths:
        """The CA, certificate and key files for ``role``/``name`` (hosts localhost, 127.0.0.1)."""
        if name not in self._issued:
            self._issued[name] = (role, issue_to_dir(self.dir, name, role))
        issued_role, paths = self._issued[name]
        if issued_role != role:
            raise ValueError(f"{name!r} was already issued as a {issued_role}, not a {role}")
        return paths

    def tls(self, name: str, role: str = "node") -> TlsConfig:
        paths = self.files(name, role)
        return load_tls(paths.ca, paths.cert, paths.key)


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> FederationPki:
    return FederationPki(tmp_path_factory.mktemp("pki") / "federation")


@pytest.fixture
def own_pki(tmp_path: Path) -> FederationPki:
    """A CA of the test's own, for tests that run ``init`` commands: the CA's registry refuses a
    second live certificate for a name, and the session's CA is shared by every test."""
    return FederationPki(tmp_path / "own-pki")


def leaf_with_uris(
    ca: CaMaterial, uris: Sequence[str], dns: Sequence[str] = ("localhost",)
) -> CertMaterial:
    """A leaf signed by ``ca`` with arbitrary URI SANs (none at all if empty) and DNS SANs
    (by default only localhost, as certificates were before they named their identity): what
    ``blindmatch.runtime.pki.issue`` refuses to make, for testing how it is rejected."""
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem)
    ca_key = serialization.load_pem_private_key(ca.key_pem, password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    sans: list[x509.GeneralName] = [x509.DNSName(name) for name in dns]
    sans += [x509.UniformResourceIdentifier(u) for u in uris]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "odd")]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return CertMaterial(cert_pem=cert.public_bytes(serialization.Encoding.PEM), key_pem=key_pem)
