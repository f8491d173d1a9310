"""Who a certificate says its holder is: the ``blindmatch://<role>/<name>`` URI SAN, read from PEM.

The protocol core needs this to verify who signed a message; issuing certificates and the TLS
names that prove them are ``runtime.pki``'s.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from cryptography import x509

# A checker holds no round power: it may call a node's Check when node.toml lists it (a SIEM).
ROLES: Final = ("node", "coordinator", "operator", "checker")
URI_SCHEME: Final = "blindmatch://"
_NAME_RE: Final = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")


class PkiError(Exception):
    """A certificate, key or PKI directory is missing, malformed or inconsistent."""


@dataclass(frozen=True)
class Identity:
    """Who a certificate says its holder is."""

    role: str
    name: str

    def __str__(self) -> str:
        return f"{self.role}/{self.name}"


def validate_name(name: str) -> str:
    """Return ``name`` if it is a valid participant name, else raise ValueError."""
    if not _NAME_RE.fullmatch(name):
        raise ValueError(
            f"invalid name {name!r}: use 1 to 63 characters from a-z, 0-9, '_' and '-', "
            "starting with a letter or digit"
        )
    return name


def validate_role(role: str) -> str:
    """Return ``role`` if it is one of ROLES, else raise ValueError."""
    if role not in ROLES:
        raise ValueError(f"invalid role {role!r}: use one of {', '.join(ROLES)}")
    return role


def san_values(
    cert: x509.Certificate, kind: type[x509.UniformResourceIdentifier] | type[x509.DNSName]
) -> list[str]:
    """The subject alternative names of one kind; none when the certificate has no SAN."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return san.get_values_for_type(kind)


def identity_of(cert_pem: bytes) -> Identity:
    """Read the blindmatch identity from a certificate's URI SAN; raise PkiError if it has none."""
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError as exc:
        raise PkiError(f"not a PEM X.509 certificate: {exc}") from exc
    subject = cert.subject.rfc4514_string() or "(empty subject)"
    uris = san_values(cert, x509.UniformResourceIdentifier)
    ours = [u for u in uris if u.startswith(URI_SCHEME)]
    if len(ours) != 1:
        found = "none" if not ours else ", ".join(ours)
        raise PkiError(
            f"certificate {subject} must carry exactly one {URI_SCHEME}<role>/<name> URI SAN "
            f"(found {found}); issue it with `blindmatch pki issue`"
        )
    role, sep, name = ours[0].removeprefix(URI_SCHEME).partition("/")
    try:
        if not sep:
            raise ValueError("expected <role>/<name>")
        return Identity(validate_role(role), validate_name(name))
    except ValueError as exc:
        raise PkiError(
            f"certificate {subject} has a malformed identity {ours[0]!r}: {exc}"
        ) from exc
