"""The federation PKI: one CA, and certificates that bind a role and a name.

A certificate's identity is the URI SAN ``blindmatch://<role>/<name>``; the subject CN only repeats
the name for humans. The identity is repeated as two DNS SANs under ``blindmatch.invalid`` (a
domain reserved never to resolve): ``<name>.<role>.blindmatch.invalid`` and
``<role>.blindmatch.invalid``. grpc python never hands a client the server's certificate, but it
does check the server's DNS SANs against a name the client picks, so these names are how a client
proves it reached the party it meant to (see ``blindmatch.runtime.net.open_channel``). The hosts a server
listens on are ordinary DNS or IP SANs besides, for other TLS clients. Every leaf carries both serverAuth and clientAuth, because a node serves round
RPCs and also dials the coordinator with the same certificate.

Keys are ECDSA P-256: grpc's BoringSSL offers no Ed25519 signature algorithm in its TLS handshake
(``NO_COMMON_SIGNATURE_ALGORITHMS``), so Ed25519 certificates cannot be used for mTLS there.

The functions that build certificates are pure (PEM bytes in, PEM bytes out); the file layer below
them is what ``blindmatch pki init`` and ``blindmatch pki issue`` call.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from blindmatch.core.identity import (
    URI_SCHEME,
    Identity,
    PkiError,
    identity_of,
    san_values,
    validate_name,
    validate_role,
)

# Roles that accept connections; their certificates need DNS/IP SANs for hostname checks.
# operator and checker only dial out, so their certificates get no host names by default.
SERVER_ROLES: Final = frozenset({"node", "coordinator"})
DEFAULT_SERVER_HOSTS: Final = ("localhost", "127.0.0.1")
# RFC 6761 reserves .invalid: no resolver answers for it, so these names never reach a real host.
IDENTITY_DOMAIN: Final = "blindmatch.invalid"
CA_VALIDITY: Final = datetime.timedelta(days=3652)
LEAF_VALIDITY: Final = datetime.timedelta(days=731)
# Backdating absorbs small clock differences between the issuing machine and its peers.
CLOCK_SKEW: Final = datetime.timedelta(minutes=5)

CA_CERT_FILE: Final = "ca.pem"
CA_KEY_FILE: Final = "ca.key"
ISSUED_DIR: Final = "issued"

_DNS_LABEL_RE: Final = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")


class PkiFileExists(PkiError, FileExistsError):
    """A file the PKI would write already exists; nothing is ever overwritten."""


@dataclass(frozen=True)
class CaMaterial:
    cert_pem: bytes
    key_pem: bytes = field(repr=False)


@dataclass(frozen=True)
class CertMaterial:
    cert_pem: bytes
    key_pem: bytes = field(repr=False)


@dataclass(frozen=True)
class CaPaths:
    cert: Path
    key: Path


@dataclass(frozen=True)
class IssuedPaths:
    ca: Path
    cert: Path
    key: Path


def identity_uri(identity: Identity) -> str:
    return f"{URI_SCHEME}{identity.role}/{identity.name}"


def identity_host(role: str, name: str | None = None) -> str:
    """The DNS SAN that proves ``role``/``name`` (any holder of ``role`` when name is None)."""
    # Names are lowercase without dots, so distinct identities never share a host name.
    return f"{role}.{IDENTITY_DOMAIN}" if name is None else f"{name}.{role}.{IDENTITY_DOMAIN}"


def identity_hosts(identity: Identity) -> list[str]:
    return [identity_host(identity.role, identity.name), identity_host(identity.role)]


def new_ca(
    name: str = "blindmatch federation CA",
    *,
    not_before: datetime.datetime | None = None,
    not_after: datetime.datetime | None = None,
) -> CaMaterial:
    """Make a self-signed federation CA that may sign leaves but no further CAs."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    start, end = _validity(not_before, not_after, CA_VALIDITY)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return CaMaterial(cert_pem=_cert_pem(cert), key_pem=_key_pem(key))


def issue(
    ca: CaMaterial,
    name: str,
    role: str,
    hosts: Iterable[str] = (),
    not_before: datetime.datetime | None = None,
    not_after: datetime.datetime | None = None,
) -> CertMaterial:
    """Issue a leaf certificate for ``role``/``name`` signed by ``ca``.

    ``hosts`` become DNS or IP SANs. When none are given, node and coordinator certificates get
    ``localhost`` and ``127.0.0.1``; a deployment should pass the hosts it serves on, for TLS
    clients other than blindmatch's (which check the identity names, see the module docstring).
    """
    identity = Identity(validate_role(role), validate_name(name))
    host_list = list(hosts) or (list(DEFAULT_SERVER_HOSTS) if role in SERVER_ROLES else [])
    ca_cert, ca_key = _load_ca(ca)
    key = ec.generate_private_key(ec.SECP256R1())
    start, end = _validity(not_before, not_after, LEAF_VALIDITY)
    sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(identity_uri(identity))]
    sans += [x509.DNSName(host) for host in identity_hosts(identity)]
    sans += [_host_san(host) for host in host_list]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return CertMaterial(cert_pem=_cert_pem(cert), key_pem=_key_pem(key))


def served_identity(cert_pem: bytes) -> Identity:
    """``identity_of``, for a certificate its holder serves with: it must also carry exactly its
    identity's DNS SANs (``identity_hosts``), or clients that check them can never reach it."""
    identity = identity_of(cert_pem)
    dns_names = san_values(x509.load_pem_x509_certificate(cert_pem), x509.DNSName)
    ours = {n.lower() for n in dns_names if _is_identity_host(n)}
    if not ours:
        raise PkiError(
            f"the certificate of {identity} carries no {IDENTITY_DOMAIN} name: it was issued "
            "before blindmatch clients checked whom they reach, and they will refuse it; move "
            "it and its key away and issue a new one with `blindmatch pki issue` (same name, "
            "role and --host)"
        )
    expected = set(identity_hosts(identity))
    if ours != expected:
        raise PkiError(
            f"the certificate of {identity} carries the names {', '.join(sorted(ours))}, "
            f"not exactly {', '.join(sorted(expected))}; issue it with `blindmatch pki issue`"
        )
    return identity


# --- file layer -------------------------------------------------------------------------------


def init_pki_dir(path: Path | str) -> CaPaths:
    """Create a federation CA in ``path`` (``ca.pem``, and ``ca.key`` readable by the owner only)."""
    pki_dir = Path(path)
    paths = CaPaths(cert=pki_dir / CA_CERT_FILE, key=pki_dir / CA_KEY_FILE)
    _refuse_existing([paths.cert, paths.key])
    pki_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    ca = new_ca()
    _write_new(paths.key, ca.key_pem, secret=True)
    _write_new(paths.cert, ca.cert_pem, secret=False)
    return paths


def issue_to_dir(
    pki_dir: Path | str,
    name: str,
    role: str,
    hosts: Iterable[str] = (),
    out_dir: Path | str | None = None,
) -> IssuedPaths:
    """Issue a certificate with the CA in ``pki_dir`` and write ``<name>.pem`` and ``<name>.key``.

    Files go to ``pki_dir/issued/`` by default. With ``out_dir`` (a node's own directory, say) the
    CA certificate is copied there too as ``ca.pem``, so that directory holds everything the
    holder needs; an identical ``ca.pem`` already there is kept, a different one is an error.
    """
    validate_name(name)
    validate_role(role)
    if name == Path(CA_CERT_FILE).stem:
        raise ValueError(f"the name {name!r} is reserved for the CA's own files; choose another")
    ca_paths = CaPaths(cert=Path(pki_dir) / CA_CERT_FILE, key=Path(pki_dir) / CA_KEY_FILE)
    ca = _read_ca(Path(pki_dir), ca_paths)
    target = Path(out_dir) if out_dir is not None else Path(pki_dir) / ISSUED_DIR
    paths = IssuedPaths(
        ca=ca_paths.cert if out_dir is None else target / CA_CERT_FILE,
        cert=target / f"{name}.pem",
        key=target / f"{name}.key",
    )
    _refuse_existing([paths.cert, paths.key])
    copy_ca = out_dir is not None and not _same_content(paths.ca, ca.cert_pem)
    if copy_ca:
        _refuse_existing([paths.ca])
    material = issue(ca, name, role, hosts)
    target.mkdir(mode=0o700, parents=True, exist_ok=True)
    if copy_ca:
        _write_new(paths.ca, ca.cert_pem, secret=False)
    _write_new(paths.key, material.key_pem, secret=True)
    _write_new(paths.cert, material.cert_pem, secret=False)
    return paths


# --- helpers ----------------------------------------------------------------------------------


def _validity(
    not_before: datetime.datetime | None,
    not_after: datetime.datetime | None,
    default_length: datetime.timedelta,
) -> tuple[datetime.datetime, datetime.datetime]:
    start = not_before or datetime.datetime.now(datetime.UTC) - CLOCK_SKEW
    end = not_after or start + default_length
    if end <= start:
        raise ValueError(f"not_after ({end}) must be later than not_before ({start})")
    return start, end


def _host_san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        pass
    dns = host.lower().removesuffix(".")
    if _is_identity_host(dns):
        # Such a host would let this certificate pass for another identity.
        raise ValueError(
            f"invalid host {host!r}: {IDENTITY_DOMAIN} names are set from the identity"
        )
    if len(dns) > 253 or not all(_DNS_LABEL_RE.fullmatch(label) for label in dns.split(".")):
        raise ValueError(f"invalid host {host!r}: give a DNS name or an IP address")
    return x509.DNSName(dns)


def _is_identity_host(dns: str) -> bool:
    dns = dns.lower().removesuffix(".")
    return dns == IDENTITY_DOMAIN or dns.endswith("." + IDENTITY_DOMAIN)


def _load_ca(ca: CaMaterial) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    try:
        cert = x509.load_pem_x509_certificate(ca.cert_pem)
        key = serialization.load_pem_private_key(ca.key_pem, password=None)
    except (ValueError, TypeError) as exc:
        raise PkiError(f"cannot load the CA certificate or key: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise PkiError("the CA key is not an ECDSA key; recreate the CA with `blindmatch pki init`")
    if key.public_key() != cert.public_key():
        raise PkiError("the CA key does not belong to the CA certificate")
    return cert, key


def _read_ca(pki_dir: Path, paths: CaPaths) -> CaMaterial:
    if not pki_dir.is_dir():
        raise PkiError(
            f"PKI directory {pki_dir} does not exist; run `blindmatch pki init {pki_dir}` first"
        )
    for p in (paths.cert, paths.key):
        if not p.is_file():
            raise PkiError(
                f"{p} is missing: {pki_dir} is not an initialised PKI directory; "
                f"run `blindmatch pki init {pki_dir}` first"
            )
    try:
        ca = CaMaterial(cert_pem=paths.cert.read_bytes(), key_pem=paths.key.read_bytes())
    except OSError as exc:
        raise PkiError(f"cannot read the CA in {pki_dir}: {exc}") from exc
    _load_ca(ca)
    return ca


def _same_content(path: Path, content: bytes) -> bool:
    try:
        return path.read_bytes() == content
    except FileNotFoundError:
        return False


def _refuse_existing(paths: Iterable[Path]) -> None:
    for p in paths:
        if p.exists() or p.is_symlink():
            raise PkiFileExists(f"{p} exists; refusing to overwrite it (move it away first)")


def _write_new(path: Path, content: bytes, *, secret: bool) -> None:
    # O_EXCL: never clobber, never follow a planted symlink; a key is 0600 from its first byte.
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags, 0o600 if secret else 0o644)
    except FileExistsError as exc:
        raise PkiFileExists(
            f"{path} exists; refusing to overwrite it (move it away first)"
        ) from exc
    with os.fdopen(fd, "wb") as f:
        f.write(content)


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
