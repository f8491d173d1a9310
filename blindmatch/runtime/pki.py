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

import contextlib
import datetime
import fcntl
import ipaddress
import json
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.exceptions import InvalidSignature
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
# The CA's record of what it issued (``Registry``), the lock its writers take, and a copy of
# every certificate it issued by serial: renewing needs the holder's public key, not its files.
REGISTRY_FILE: Final = "registry.json"
REGISTRY_LOCK: Final = "registry.lock"
CERTS_DIR: Final = "certs"
# A replaced certificate or key stays beside its successor under this suffix until the operator
# confirms the new one works and deletes it (docs/OPERATIONS.md, section 1).
OLD_SUFFIX: Final = ".old"

_DNS_LABEL_RE: Final = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")


class PkiFileExists(PkiError, FileExistsError):
    """A file the PKI would write already exists; nothing is ever overwritten."""


class NameTaken(PkiError):
    """The registry holds a live certificate for this role and name: renew or replace it."""


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
    key = ec.generate_private_key(ec.SECP256R1())
    cert_pem = certify(ca, key.public_key(), name, role, hosts, not_before, not_after)
    return CertMaterial(cert_pem=cert_pem, key_pem=_key_pem(key))


def certify(
    ca: CaMaterial,
    public_key: ec.EllipticCurvePublicKey,
    name: str,
    role: str,
    hosts: Iterable[str] = (),
    not_before: datetime.datetime | None = None,
    not_after: datetime.datetime | None = None,
) -> bytes:
    """``issue`` for a key that already exists: the certificate alone (``pki renew`` keeps the
    holder's key, see ``renew_in_dir``)."""
    identity = Identity(validate_role(role), validate_name(name))
    host_list = list(hosts) or (list(DEFAULT_SERVER_HOSTS) if role in SERVER_ROLES else [])
    ca_cert, ca_key = _load_ca(ca)
    start, end = _validity(not_before, not_after, LEAF_VALIDITY)
    sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(identity_uri(identity))]
    sans += [x509.DNSName(host) for host in identity_hosts(identity)]
    sans += [_host_san(host) for host in host_list]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_cert.subject)
        .public_key(public_key)
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
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return _cert_pem(cert)


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
    *,
    replace: bool = False,
) -> IssuedPaths:
    """Issue a certificate with the CA in ``pki_dir`` and write ``<name>.pem`` and ``<name>.key``.

    Files go to ``pki_dir/issued/`` by default. With ``out_dir`` (a node's own directory, say) the
    CA certificate is copied there too as ``ca.pem``, so that directory holds everything the
    holder needs; an identical ``ca.pem`` already there is kept, a different one is an error.

    The registry refuses a second live certificate for the same role and name (``NameTaken``)
    unless ``replace``: then the new key pair takes the old one's place in the registry and, when
    written to the same files, on disk (the old files kept as ``*.old``).
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
    if not replace:
        _refuse_existing([paths.cert, paths.key])
    copy_ca = out_dir is not None and not _same_content(paths.ca, ca.cert_pem)
    if copy_ca:
        _refuse_existing([paths.ca])
    with Registry.open(pki_dir) as registry:
        current = registry.live(role, name)
        if current and not replace:
            raise NameTaken(registry.taken_message(current[0]))
        material = issue(ca, name, role, hosts)
        target.mkdir(mode=0o700, parents=True, exist_ok=True)
        if copy_ca:
            _write_new(paths.ca, ca.cert_pem, secret=False)
        if replace:  # key first: a server reloading in between refuses a mismatched pair
            _install(paths.key, material.key_pem, secret=True)
            _install(paths.cert, material.cert_pem, secret=False)
        else:
            _write_new(paths.key, material.key_pem, secret=True)
            _write_new(paths.cert, material.cert_pem, secret=False)
        registry.record(material.cert_pem, paths.cert, replaces=current)
    return paths


@dataclass(frozen=True)
class Renewal:
    """What ``renew_in_dir`` did: the files written and the registry entries old and new."""

    paths: IssuedPaths
    old: Issued
    new: Issued
    new_key: bool


def renew_in_dir(
    pki_dir: Path | str,
    name: str,
    role: str,
    *,
    cert_path: Path | str | None = None,
    hosts: Iterable[str] = (),
    new_key: bool = False,
) -> Renewal:
    """Issue a fresh certificate for ``role``/``name`` in place of its current one.

    The current certificate is the registry's latest for that identity, live or expired; one the
    registry never saw (issued before it existed, into a node's directory) is adopted from
    ``cert_path`` once it proves to be this CA's. The new certificate is written where the old one
    is (``cert_path`` overrides), the old kept as ``<name>.pem.old``; the hosts stay unless
    ``hosts`` are given.

    The key stays unless ``new_key``: the key is what partners hold for rounds in flight and what
    alerts of an open watch epoch are sealed to, so a certificate for the same key is one a running
    node can take on SIGHUP at any moment (``check_renewal``). A new key (a key that may have
    leaked) is written as ``<name>.key``, the old kept as ``<name>.key.old``; the holder must
    restart to use it.
    """
    validate_name(name)
    validate_role(role)
    ca = _read_ca(Path(pki_dir), CaPaths(Path(pki_dir) / CA_CERT_FILE, Path(pki_dir) / CA_KEY_FILE))
    with Registry.open(pki_dir) as registry:
        old = registry.latest(role, name)
        given = None if cert_path is None else _read_issued(Path(cert_path), ca, role, name)
        if old is None:
            if given is None:
                raise PkiError(
                    f"the registry of {pki_dir} holds no certificate for {role}/{name}: issue "
                    f"one with `blindmatch pki issue {pki_dir} {name} --role {role}`, or name "
                    "the current certificate with --cert PATH if it was issued before the "
                    "registry existed"
                )
            old = registry.record(given, Path(cert_path or ""), replaces=[])
        elif given is not None and _fingerprint(given) != old.fingerprint:
            raise PkiError(
                f"{cert_path} is not the current certificate of {role}/{name} (serial "
                f"{old.serial}); `blindmatch pki list {pki_dir}` shows it"
            )
        cert_file = Path(cert_path) if cert_path is not None else Path(old.path)
        if not old.path and cert_path is None:
            raise PkiError(
                f"where {role}/{name} keeps its certificate is unknown: pass --cert PATH"
            )
        if not cert_file.parent.is_dir():
            raise PkiError(
                f"{cert_file.parent} (where {role}/{name} keeps its certificate) does not exist "
                "here; copy its current certificate to this machine and pass --cert PATH"
            )
        old_pem = given if given is not None else registry.certificate(old)
        old_cert = x509.load_pem_x509_certificate(old_pem)
        host_list = list(hosts) or _served_hosts(old_cert)
        key_file = cert_file.with_suffix(".key")
        paths = IssuedPaths(ca=Path(pki_dir) / CA_CERT_FILE, cert=cert_file, key=key_file)
        if new_key:
            material = issue(ca, name, role, host_list)
            _install(key_file, material.key_pem, secret=True)
            cert_pem = material.cert_pem
        else:
            public_key = old_cert.public_key()
            if not isinstance(public_key, ec.EllipticCurvePublicKey):
                raise PkiError(f"{role}/{name} has no ECDSA key; renew it with --new-key")
            cert_pem = certify(ca, public_key, name, role, host_list)
        _install(cert_file, cert_pem, secret=False)
        new = registry.record(cert_pem, cert_file, replaces=[old])
    return Renewal(paths=paths, old=old, new=new, new_key=new_key)


def check_renewal(
    current: tuple[bytes, bytes], renewed: tuple[bytes, bytes], *, same_key: bool
) -> None:
    """Raise PkiError unless ``renewed`` (CA PEM, certificate PEM) may replace ``current`` in a
    running server: the same CA and identity (a reload must not change who the server is or whom
    it trusts) and, with ``same_key``, the same key (a node signs rounds in flight with it)."""
    (ca, cert), (new_ca, new_cert) = current, renewed
    if new_ca != ca:
        raise PkiError("the CA certificate changed; a new CA needs a restart")
    old_id, new_id = identity_of(cert), identity_of(new_cert)
    if new_id != old_id:
        raise PkiError(f"the new certificate is for {new_id}, not {old_id}")
    old_key = x509.load_pem_x509_certificate(cert).public_key()
    if same_key and x509.load_pem_x509_certificate(new_cert).public_key() != old_key:
        raise PkiError(
            "the new certificate is for a new key (pki renew --new-key): restart to use it; "
            "rounds in flight and the watch epoch are signed and sealed with the old one"
        )


@dataclass(frozen=True)
class Issued:
    """One certificate the CA issued, as its registry records it."""

    serial: str  # hex, as openssl prints it
    role: str
    name: str
    not_before: str  # ISO 8601, UTC
    not_after: str
    fingerprint: str  # SHA-256 of the DER certificate, hex
    path: str  # where it was written (absolute); "" when unknown
    replaced_by: str | None = None
    replaces: str | None = None

    def state(self, now: datetime.datetime) -> str:
        if self.replaced_by is not None:
            return f"replaced by {self.replaced_by}"
        return "expired" if datetime.datetime.fromisoformat(self.not_after) <= now else "live"


class Registry:
    """The CA's record of the certificates it issued: ``PKI_DIR/registry.json``, and a copy of
    each under ``PKI_DIR/certs/<serial>.pem``.

    Read and written under an exclusive lock (two ``node init`` at once must not both take a
    name), and written whole to a temporary file renamed over the old one, so a crash leaves the
    old registry or the new. A PKI_DIR made before the registry existed gets one built from the
    certificates in ``issued/`` that this CA signed (``rebuilt``); those it wrote elsewhere (into
    a node's directory) it never kept, so they join when renewed with ``--cert``.
    """

    def __init__(self, pki_dir: Path, ca_pem: bytes, entries: list[Issued], rebuilt: bool) -> None:
        self.dir = pki_dir
        self._ca = x509.load_pem_x509_certificate(ca_pem)
        self.entries = entries
        self.rebuilt = rebuilt

    @classmethod
    @contextlib.contextmanager
    def open(cls, pki_dir: Path | str) -> Iterator[Registry]:
        """The registry, locked until the block ends and saved if the block succeeds."""
        pki_dir = Path(pki_dir)
        ca_pem = _read_ca(pki_dir, CaPaths(pki_dir / CA_CERT_FILE, pki_dir / CA_KEY_FILE)).cert_pem
        fd = os.open(
            pki_dir / REGISTRY_LOCK, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o600
        )
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            registry = cls._load(pki_dir, ca_pem)
            yield registry
            registry._save()
        finally:
            os.close(fd)  # closing releases the lock

    @classmethod
    def read(cls, pki_dir: Path | str) -> Registry:
        """The registry as it stands (built from ``issued/`` in an old PKI_DIR, and saved)."""
        with cls.open(pki_dir) as registry:
            return registry

    @classmethod
    def _load(cls, pki_dir: Path, ca_pem: bytes) -> Registry:
        try:
            raw = json.loads((pki_dir / REGISTRY_FILE).read_text())
        except FileNotFoundError:
            registry = cls(pki_dir, ca_pem, [], rebuilt=True)
            issued = pki_dir / ISSUED_DIR
            for pem_file in sorted(issued.glob("*.pem")) if issued.is_dir() else []:
                with contextlib.suppress(ValueError, PkiError, OSError):
                    registry.record(_read_issued(pem_file, None, None, None, ca_pem), pem_file)
            return registry
        except (OSError, ValueError) as exc:
            raise PkiError(f"cannot read the registry {pki_dir / REGISTRY_FILE}: {exc}") from exc
        try:
            entries = [Issued(**e) for e in raw["certificates"]]
        except (KeyError, TypeError) as exc:
            raise PkiError(f"the registry {pki_dir / REGISTRY_FILE} is malformed: {exc}") from exc
        return cls(pki_dir, ca_pem, entries, rebuilt=False)

    def _save(self) -> None:
        content = json.dumps(
            {"version": 1, "certificates": [asdict(e) for e in self.entries]}, indent=1
        ).encode()
        _install(self.dir / REGISTRY_FILE, content, secret=False, keep_old=False)

    def live(self, role: str, name: str) -> list[Issued]:
        """The live certificates of ``role``/``name`` (more than one only in a rebuilt registry)."""
        now = datetime.datetime.now(datetime.UTC)
        return [
            e for e in self.entries if (e.role, e.name) == (role, name) and e.state(now) == "live"
        ]

    def latest(self, role: str, name: str) -> Issued | None:
        """The certificate of ``role``/``name`` nothing replaced, the last to expire."""
        mine = [
            e for e in self.entries if (e.role, e.name) == (role, name) and e.replaced_by is None
        ]
        return max(mine, key=lambda e: e.not_after, default=None)

    def certificate(self, entry: Issued) -> bytes:
        try:
            return (self.dir / CERTS_DIR / f"{entry.serial}.pem").read_bytes()
        except FileNotFoundError:
            return Path(entry.path).read_bytes()

    def record(self, cert_pem: bytes, path: Path, *, replaces: Iterable[Issued] = ()) -> Issued:
        """Enter a certificate this CA issued, marking ``replaces`` replaced by it."""
        cert = x509.load_pem_x509_certificate(cert_pem)
        identity = identity_of(cert_pem)
        entry = Issued(
            serial=f"{cert.serial_number:x}",
            role=identity.role,
            name=identity.name,
            not_before=cert.not_valid_before_utc.isoformat(),
            not_after=cert.not_valid_after_utc.isoformat(),
            fingerprint=_fingerprint(cert_pem),
            path=str(path.absolute()) if str(path) else "",
        )
        old = list(replaces)
        if old:
            entry = replace(entry, replaces=old[0].serial)
        self.entries = [
            replace(e, replaced_by=entry.serial) if e in old else e for e in self.entries
        ]
        self.entries.append(entry)
        copy = self.dir / CERTS_DIR / f"{entry.serial}.pem"
        copy.parent.mkdir(mode=0o700, exist_ok=True)
        if not copy.exists():
            _write_new(copy, cert_pem, secret=False)
        return entry

    def taken_message(self, entry: Issued) -> str:
        return (
            f"{entry.role}/{entry.name} already has a live certificate: serial {entry.serial}, "
            f"valid until {entry.not_after[:10]}, written to {entry.path or '(unknown)'}; a name "
            f"is one party. Renew it with `blindmatch pki renew {self.dir} {entry.name} --role "
            f"{entry.role}`, or put a new key pair in its place with `blindmatch pki issue "
            f"{self.dir} {entry.name} --role {entry.role} --replace`; or choose another name"
        )


def _read_issued(
    path: Path, ca: CaMaterial | None, role: str | None, name: str | None, ca_pem: bytes = b""
) -> bytes:
    """The certificate in ``path``, if this CA signed it (for ``role``/``name`` when given)."""
    try:
        pem = path.read_bytes()
        cert = x509.load_pem_x509_certificate(pem)
    except (OSError, ValueError) as exc:
        raise PkiError(f"cannot read the certificate {path}: {exc}") from exc
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem if ca is not None else ca_pem)
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise PkiError(f"{path} was not issued by this CA") from exc
    identity = identity_of(pem)
    if role is not None and (identity.role, identity.name) != (role, name):
        raise PkiError(f"{path} is the certificate of {identity}, not of {role}/{name}")
    return pem


def _served_hosts(cert: x509.Certificate) -> list[str]:
    """The hosts a certificate names besides its identity names (what ``issue`` got as hosts)."""
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    dns = [n for n in sans.get_values_for_type(x509.DNSName) if not _is_identity_host(n)]
    return dns + [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)]


def _fingerprint(cert_pem: bytes) -> str:
    return x509.load_pem_x509_certificate(cert_pem).fingerprint(hashes.SHA256()).hex()


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


def _install(path: Path, content: bytes, *, secret: bool, keep_old: bool = True) -> None:
    """Put ``content`` at ``path`` in one rename, so a reader (a server on SIGHUP) sees the old
    file or the new, never a part; ``keep_old``: the file it replaces stays as ``*.old``."""
    staged = path.with_name(path.name + ".new")
    with contextlib.suppress(FileNotFoundError):
        staged.unlink()  # left by an interrupted run; unlink never follows a symlink
    _write_new(staged, content, secret=secret)
    with open(staged, "rb") as f:
        os.fsync(f.fileno())
    if keep_old and path.exists():
        old = path.with_name(path.name + OLD_SUFFIX)
        with contextlib.suppress(FileNotFoundError):
            old.unlink()
        os.link(path, old)  # a second name, so ``path`` never goes missing
    os.replace(staged, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # the rename itself survives a crash
    finally:
        os.close(dir_fd)


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
