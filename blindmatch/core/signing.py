"""Signed statements: who asked for a round, and who said what in it.

The coordinator is not trusted (DESIGN.md 3). It carries every message of a round, so a message
whose meaning matters to a node is signed by the party that made it, with the federation key of
that party's certificate, and verified by the node before it acts on it:

- a round spec (or a standing order) by the operator who asked for it;
- a round's transcript by every participant, each request by its requester, each answer by its
  member, each tag root by its owner (``committee``, ``delivery``), and a watch epoch's filters
  and sealed alerts by the nodes that made them (``watch_sealed``).

A statement is a domain tag naming its kind, then its fields, each length-prefixed, so no two
statements of different kinds or field splits share bytes. Signatures are ECDSA P-256 with
SHA-256, the keys the federation's certificates already carry (pki.py). A certificate is accepted
when the federation CA signed it, it is valid at the time given (the caller owns the clock), it is
not a CA, and its identity has the role (and name) the protocol expects at that point.

Nothing here reads files, the clock or the network: bytes in, verdicts out.
"""

from __future__ import annotations

import datetime
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final, Protocol

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from blindmatch.core.errors import ForgedMessage
from blindmatch.core.identity import Identity, PkiError, identity_of

STATEMENT_DOMAIN: Final = b"blindmatch-v1 signed statement/"
DIGEST_BYTES: Final = 32
MAX_SIGNATURE_BYTES: Final = 80  # DER ECDSA P-256: at most 72; anything longer is malformed
MAX_CERTIFICATE_BYTES: Final = 16 * 1024
MAX_SPEC_AGE: Final = 3600.0  # seconds a signed spec is accepted after it was issued
MAX_SPEC_SKEW: Final = 300.0  # seconds a spec may be issued in the future (clock skew)


class StaleSpec(ForgedMessage):
    """A signed spec outside its validity window: a replay of an old request, or a bad clock."""


def digest(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def statement(kind: str, *fields: bytes | str | int) -> bytes:
    """The bytes a signature covers: a domain tag, the kind, then every field length-prefixed."""
    parts = [STATEMENT_DOMAIN, kind.encode("ascii"), b"\0"]
    for value in fields:
        if isinstance(value, int):
            raw = value.to_bytes(8, "big")
        elif isinstance(value, str):
            raw = value.encode("utf-8")
        else:
            raw = value
        parts += [len(raw).to_bytes(4, "big"), raw]
    return b"".join(parts)


def spec_statement(spec_bytes: bytes) -> bytes:
    """What an operator signs to ask for a round: the serialized spec, exactly as nodes parse it."""
    return statement("round-spec", spec_bytes)


def order_statement(order_bytes: bytes) -> bytes:
    """What an operator signs to ask for rounds on a schedule: the serialized standing order."""
    return statement("standing-order", order_bytes)


def spec_digest(spec_bytes: bytes) -> bytes:
    """Binds a round's transcript to the spec each participant accepted, so all saw the same one."""
    return digest(spec_statement(spec_bytes))


@dataclass(frozen=True, slots=True)
class SignedSpec:
    """A round spec as its operator signed it: the serialized spec, the signature over
    ``spec_statement(spec)`` and the operator's certificate."""

    spec: bytes
    signature: bytes = field(repr=False)
    operator_cert: bytes = field(repr=False)

    @classmethod
    def sign(cls, signer: Signer, spec: bytes) -> SignedSpec:
        return cls(spec, signer.sign(spec_statement(spec)), signer.cert_pem)

    @property
    def digest(self) -> bytes:
        return spec_digest(self.spec)


@dataclass(frozen=True, slots=True)
class SignedOrder:
    """A standing order as its operator signed it: the serialized order, the signature over
    ``order_statement(order)`` and the operator's certificate."""

    order: bytes
    signature: bytes = field(repr=False)
    operator_cert: bytes = field(repr=False)

    @classmethod
    def sign(cls, signer: Signer, order: bytes) -> SignedOrder:
        return cls(order, signer.sign(order_statement(order)), signer.cert_pem)


def verify_order(trust: Trust, signed: SignedOrder, *, now: datetime.datetime) -> Party:
    """The operator who signed ``signed``: an operator certificate of the federation valid at
    ``now`` and a valid signature. When each run is due is the order's (blindmatch.core.orders)."""
    operator = trust.party(signed.operator_cert, now=now, role="operator", names=None)
    operator.verify(order_statement(signed.order), signed.signature, "the standing order")
    return operator


def verify_spec(
    trust: Trust, signed: SignedSpec, *, issued: float, now: datetime.datetime
) -> Party:
    """The operator who signed ``signed``, issued at ``issued`` (unix seconds, read from the
    spec): an operator certificate of the federation, a valid signature, and a spec neither
    older than MAX_SPEC_AGE nor further than MAX_SPEC_SKEW in the future. ForgedMessage else."""
    operator = trust.party(signed.operator_cert, now=now, role="operator", names=None)
    operator.verify(spec_statement(signed.spec), signed.signature, "the round spec")
    age = now.timestamp() - issued
    if age > MAX_SPEC_AGE:
        raise StaleSpec(
            f"the round spec was issued {age:.0f} s ago; specs are accepted for "
            f"{MAX_SPEC_AGE:.0f} s (a replayed or stale request)"
        )
    if age < -MAX_SPEC_SKEW:
        raise StaleSpec(
            f"the round spec is issued {-age:.0f} s in the future; at most {MAX_SPEC_SKEW:.0f} s "
            "of clock skew is accepted"
        )
    return operator


class Signs(Protocol):
    """Whatever signs statements as a party: a ``Signer``, or a plaintext node's stand-in."""

    def sign(self, message: bytes) -> bytes: ...


class Verifies(Protocol):
    """Whatever verifies a party's statements: a ``Party``, or a plaintext node's stand-in."""

    @property
    def identity(self) -> Identity: ...

    def verify(self, message: bytes, signature: bytes, what: str) -> None: ...


class Signer:
    """A party's federation key and certificate; signs statements as that identity."""

    def __init__(self, cert_pem: bytes, key_pem: bytes) -> None:
        try:
            key = serialization.load_pem_private_key(key_pem, password=None)
            cert = x509.load_pem_x509_certificate(cert_pem)
        except ValueError as exc:
            raise PkiError(f"unusable signing key or certificate: {exc}") from exc
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise PkiError("the signing key is not an ECDSA key")
        if key.public_key() != cert.public_key():
            raise PkiError("the signing key does not belong to the certificate")
        self._key = key
        self.cert_pem = cert_pem
        self.identity = identity_of(cert_pem)

    def sign(self, message: bytes) -> bytes:
        return self._key.sign(message, ec.ECDSA(hashes.SHA256()))

    def __repr__(self) -> str:
        return f"Signer({self.identity})"


@dataclass(frozen=True)
class Party:
    """A certificate the federation CA vouches for, with the identity it binds."""

    identity: Identity
    cert_pem: bytes = field(repr=False)
    public_key: ec.EllipticCurvePublicKey = field(repr=False, compare=False)
    not_before: datetime.datetime = field(repr=False)
    not_after: datetime.datetime = field(repr=False)

    def verify(self, message: bytes, signature: bytes, what: str) -> None:
        """Raise ForgedMessage unless ``signature`` is this party's over ``message``."""
        if not signature or len(signature) > MAX_SIGNATURE_BYTES:
            raise ForgedMessage(f"{what} carries no valid signature of {self.identity}")
        try:
            self.public_key.verify(signature, message, ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            raise ForgedMessage(f"{what} is not signed by {self.identity}") from None


class Trust:
    """The federation CA as a verifier of certificates presented inside messages."""

    def __init__(self, ca_pem: bytes) -> None:
        try:
            self._ca = x509.load_pem_x509_certificate(ca_pem)
        except ValueError as exc:
            raise PkiError(f"not a PEM CA certificate: {exc}") from exc
        ca_key = self._ca.public_key()
        if not isinstance(ca_key, ec.EllipticCurvePublicKey):
            raise PkiError("the federation CA key is not an ECDSA key")
        self._ca_key = ca_key
        self._parties: dict[bytes, Party] = {}

    def party(
        self, cert_pem: bytes, *, now: datetime.datetime, role: str, names: Iterable[str] | None
    ) -> Party:
        """The party behind ``cert_pem`` if the CA issued it for ``role`` (and one of ``names``,
        when given) and it is valid at ``now``; ForgedMessage otherwise."""
        party = self._parties.get(cert_pem) or self._vouch(cert_pem)
        if party.identity.role != role:
            raise ForgedMessage(f"certificate of {party.identity} does not have the {role} role")
        allowed = None if names is None else set(names)
        if allowed is not None and party.identity.name not in allowed:
            raise ForgedMessage(
                f"certificate of {party.identity} is not one of {', '.join(sorted(allowed))}"
            )
        if not party.not_before <= now <= party.not_after:
            raise ForgedMessage(f"certificate of {party.identity} is not valid at {now:%Y-%m-%d}")
        return party

    def _vouch(self, cert_pem: bytes) -> Party:
        if not cert_pem or len(cert_pem) > MAX_CERTIFICATE_BYTES:
            raise ForgedMessage("a certificate is missing or oversized")
        try:
            cert = x509.load_pem_x509_certificate(cert_pem)
            identity = identity_of(cert_pem)
        except (ValueError, PkiError) as exc:
            raise ForgedMessage(f"unusable certificate: {exc}") from exc
        if cert.issuer != self._ca.subject:
            raise ForgedMessage(f"certificate of {identity} was not issued by the federation CA")
        hash_algorithm = cert.signature_hash_algorithm
        if hash_algorithm is None:
            raise ForgedMessage(f"certificate of {identity} has no usable signature")
        try:
            self._ca_key.verify(
                cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(hash_algorithm)
            )
        except InvalidSignature:
            raise ForgedMessage(
                f"certificate of {identity} is not signed by the federation CA"
            ) from None
        try:
            constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        except x509.ExtensionNotFound:
            constraints = None
        if constraints is not None and constraints.ca:
            raise ForgedMessage(f"certificate of {identity} is a CA, not a party")
        public_key = cert.public_key()
        if not isinstance(public_key, ec.EllipticCurvePublicKey):
            raise ForgedMessage(f"certificate of {identity} does not carry an ECDSA key")
        party = Party(
            identity=identity,
            cert_pem=cert_pem,
            public_key=public_key,
            not_before=cert.not_valid_before_utc,
            not_after=cert.not_valid_after_utc,
        )
        if len(self._parties) < 4096:  # a cache, bounded against a flood of distinct certs
            self._parties[cert_pem] = party
        return party
