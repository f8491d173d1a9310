"""The group: hash-to-group, round keys, batch blinding and element validation.

Group: the prime-order subgroup of Curve25519. An element travels as its 32-byte little-endian
X25519 u-coordinate (a *tag* once every participant's key is applied).

Hash to group is RFC 9380 ``hash_to_curve`` with the suite ``curve25519_XMD:SHA-512_ELL2_RO_``:
expand_message_xmd(SHA-512) -> two field elements -> Elligator 2 on each -> point addition ->
cofactor clearing (x8). It is a random oracle into the prime-order subgroup: constant structure per
item (no try-and-increment), and every output is on the curve (never on the twist), so no bit of
the hash can be recomputed from an element. The DST names the protocol and the canonicalisation
version, so a rule change gives unrelated tags instead of silent mismatches.

Blinding is X25519 scalar multiplication through pyca ``cryptography`` (OpenSSL). Clamped X25519
scalars are multiples of 8 below 2^255, and scalar multiplication commutes, so every node's key
applied in any order yields the same tag.

Field arithmetic runs on GMP through gmpy2: Python's own ``pow`` on 255-bit numbers is about 8x
slower and would make hashing dearer than blinding. Neither is constant time; hashing only ever
touches a node's own indicators on its own machine, so the timing is not observable by partners.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable, Sequence

import gmpy2
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from blindmatch.canon import CANON_VERSION

PROTOCOL_VERSION = "blindmatch-v1"
SUITE = "curve25519_XMD:SHA-512_ELL2_RO_"
DST = f"{PROTOCOL_VERSION}-{CANON_VERSION}-with-{SUITE}".encode()
ELEMENT_BYTES = 32

_P = gmpy2.mpz(2**255 - 19)
_P_INT = 2**255 - 19
_A = gmpy2.mpz(486662)
_Z = gmpy2.mpz(2)
_SQRT_M1 = gmpy2.powmod(2, (_P - 1) // 4, _P)  # a square root of -1 mod p
_EXP_SQRT = (_P + 3) // 8
_SQRT_EXP_OF_Z = gmpy2.powmod(_Z, _EXP_SQRT, _P)  # Z^((p+3)/8)
_L = 48  # bytes per field element: ceil((ceil(log2 p) + k) / 8) with k = 128


class InvalidElement(ValueError):
    """A received group element that must not be used; the message says why."""


def expand_message_xmd(msg: bytes, dst: bytes, length: int) -> bytes:
    """RFC 9380 section 5.3.1 with SHA-512."""
    if len(dst) > 255:
        raise ValueError("DST longer than 255 bytes")
    ell = -(-length // 64)
    if ell > 255 or length > 65535:
        raise ValueError("requested output too long for expand_message_xmd")
    dst_prime = dst + bytes([len(dst)])
    b0 = hashlib.sha512(bytes(128) + msg + length.to_bytes(2, "big") + b"\x00" + dst_prime).digest()
    bi = hashlib.sha512(b0 + b"\x01" + dst_prime).digest()
    out = [bi]
    b0_int = int.from_bytes(b0, "big")
    for i in range(2, ell + 1):
        mixed = (b0_int ^ int.from_bytes(bi, "big")).to_bytes(64, "big")
        bi = hashlib.sha512(mixed + bytes([i]) + dst_prime).digest()
        out.append(bi)
    return b"".join(out)[:length]


def hash_to_field(msg: bytes, dst: bytes = DST) -> tuple[int, int]:
    """Two field elements, as RFC 9380 ``hash_to_field(msg, 2)`` for this suite."""
    uniform = expand_message_xmd(msg, dst, 2 * _L)
    return (
        int.from_bytes(uniform[:_L], "big") % _P_INT,
        int.from_bytes(uniform[_L:], "big") % _P_INT,
    )


def _sqrt_candidate(a: gmpy2.mpz, r: gmpy2.mpz) -> gmpy2.mpz | None:
    """Given r = a^((p+3)/8), a square root of a, or None when a is not a square."""
    r2 = r * r % _P
    if r2 == a:
        return r
    if r2 == (-a) % _P:
        return r * _SQRT_M1 % _P
    return None


def _elligator2(u: gmpy2.mpz) -> tuple[gmpy2.mpz, gmpy2.mpz]:
    """RFC 9380 section 6.7.1 for curve25519 (J = A, K = 1, Z = 2), one exponentiation."""
    u2 = u * u % _P
    den = (1 + _Z * u2) % _P
    x1 = (-_A * gmpy2.invert(den, _P)) % _P if den else (-_A) % _P
    gx1 = (x1 * (x1 * (x1 + _A) + 1)) % _P
    r = gmpy2.powmod(gx1, _EXP_SQRT, _P)
    y = _sqrt_candidate(gx1, r)
    if y is not None:
        if y % 2 == 0:  # sgn0(y) must be 1 for x1
            y = _P - y
        return x1, y
    # gx2 = Z * u^2 * gx1 and Z * gx1 is a square, so sqrt(gx2) = u * sqrt(Z * gx1), and
    # (Z * gx1)^((p+3)/8) = Z^((p+3)/8) * r: no second exponentiation.
    x2 = (-x1 - _A) % _P
    zg = _Z * gx1 % _P
    s = _sqrt_candidate(zg, _SQRT_EXP_OF_Z * r % _P)
    if s is None:  # impossible for a field element u; kept as a guard on the algebra
        raise ArithmeticError("elligator2: no square root for gx2")
    y = u * s % _P
    if y % 2 == 1:  # sgn0(y) must be 0 for x2
        y = _P - y
    return x2, y


def _add(
    p1: tuple[gmpy2.mpz, gmpy2.mpz], p2: tuple[gmpy2.mpz, gmpy2.mpz]
) -> tuple[gmpy2.mpz, gmpy2.mpz] | None:
    """Affine addition on v^2 = u^3 + A u^2 + u; None is the point at infinity."""
    (x1, y1), (x2, y2) = p1, p2
    if x1 == x2:
        if (y1 + y2) % _P == 0:
            return None
        lam = (3 * x1 * x1 + 2 * _A * x1 + 1) * gmpy2.invert(2 * y1 % _P, _P) % _P
    else:
        lam = (y2 - y1) * gmpy2.invert((x2 - x1) % _P, _P) % _P
    x3 = (lam * lam - _A - x1 - x2) % _P
    y3 = (lam * (x1 - x3) - y1) % _P
    return x3, y3


def _times8_u(x: gmpy2.mpz) -> gmpy2.mpz | None:
    """u-coordinate of 8P from u(P) by three x-only doublings in projective form."""
    X, Z = x, gmpy2.mpz(1)
    for _ in range(3):
        xx, zz = X * X % _P, Z * Z % _P
        X, Z = (xx - zz) ** 2 % _P, 4 * X * Z * (xx + _A * X * Z + zz) % _P
    if Z == 0:
        return None
    return X * gmpy2.invert(Z, _P) % _P


def hash_to_curve_u(msg: bytes, dst: bytes = DST) -> int:
    """u-coordinate of RFC 9380 ``hash_to_curve(msg)`` for curve25519_XMD:SHA-512_ELL2_RO_."""
    u0, u1 = hash_to_field(msg, dst)
    q = _add(_elligator2(gmpy2.mpz(u0)), _elligator2(gmpy2.mpz(u1)))
    u = None if q is None else _times8_u(q[0])
    if u is None:  # probability about 2^-250; refusing beats a fixed tag shared by all inputs
        raise ArithmeticError("hash_to_curve produced the identity")
    return int(u)


def indicator_message(kind: str, value: str) -> bytes:
    # Kind names never contain NUL, so the split point is unambiguous.
    return kind.encode() + b"\x00" + value.encode()


def hash_to_group(kind: str, value: str) -> bytes:
    """The group element of one canonical indicator, as 32 little-endian bytes."""
    return hash_to_curve_u(indicator_message(kind, value)).to_bytes(32, "little")


def hash_indicators(items: Iterable[tuple[str, str]]) -> list[bytes]:
    """Batch form of :func:`hash_to_group` over (kind, canonical value) pairs."""
    return [hash_to_curve_u(indicator_message(k, v)).to_bytes(32, "little") for k, v in items]


def validate_element(element: bytes) -> None:
    """Refuse anything but a canonical 32-byte u-coordinate.

    Non-canonical encodings (u >= p, top bit set) are refused so that one point has exactly one
    encoding on the wire and tags compare as bytes.
    """
    if len(element) != ELEMENT_BYTES:
        raise InvalidElement(f"element is {len(element)} bytes; expected {ELEMENT_BYTES}")
    if int.from_bytes(element, "little") >= _P_INT:
        raise InvalidElement("element is not a canonical u-coordinate (u >= 2^255 - 19)")


class RoundKey:
    """A node's secret blinding key for one round (or one watch epoch).

    Fresh from the OS CSPRNG on creation; never serialised unless :meth:`export` is called
    explicitly (to hand it to a local worker process); :meth:`destroy` drops every reference.
    """

    __slots__ = ("_private",)

    def __init__(self, private: X25519PrivateKey | None) -> None:
        self._private = private

    @classmethod
    def generate(cls) -> RoundKey:
        return cls(X25519PrivateKey.from_private_bytes(secrets.token_bytes(32)))

    @classmethod
    def from_bytes(cls, raw: bytes) -> RoundKey:
        return cls(X25519PrivateKey.from_private_bytes(raw))

    def export(self) -> bytes:
        """The raw scalar; only for handing the key to this node's own worker processes."""
        return self._live().private_bytes_raw()

    @property
    def destroyed(self) -> bool:
        return self._private is None

    def destroy(self) -> None:
        # OpenSSL frees (and cleanses) the key when its last reference goes.
        self._private = None

    def _live(self) -> X25519PrivateKey:
        if self._private is None:
            raise RuntimeError("round key used after destroy()")
        return self._private

    def blind(self, elements: Sequence[bytes]) -> list[bytes]:
        """Apply this key to every element, keeping order; refuses invalid elements.

        Raises InvalidElement naming the position of the first bad element.
        """
        exchange = self._live().exchange
        from_bytes = X25519PublicKey.from_public_bytes
        out: list[bytes] = []
        append = out.append
        for i, element in enumerate(elements):
            if len(element) != ELEMENT_BYTES or int.from_bytes(element, "little") >= _P_INT:
                try:
                    validate_element(element)
                except InvalidElement as exc:
                    raise InvalidElement(f"element {i}: {exc}") from None
            try:
                append(exchange(from_bytes(element)))
            except ValueError:
                # OpenSSL refuses an all-zero shared secret: the input was a low-order point.
                raise InvalidElement(
                    f"element {i}: low-order point (blinding would give the all-zero value)"
                ) from None
        return out

    def __repr__(self) -> str:
        return "RoundKey(<destroyed>)" if self._private is None else "RoundKey(<secret>)"


def blind(key_bytes: bytes, elements: Sequence[bytes]) -> list[bytes]:
    """Blind a batch under a raw key: the entry point for worker processes."""
    return RoundKey.from_bytes(key_bytes).blind(elements)


def split_elements(packed: bytes) -> list[bytes]:
    """Concatenated 32-byte elements (the wire form of a chunk) as a list."""
    if len(packed) % ELEMENT_BYTES:
        raise InvalidElement(
            f"chunk of {len(packed)} bytes is not a whole number of {ELEMENT_BYTES}-byte elements"
        )
    return [packed[i : i + ELEMENT_BYTES] for i in range(0, len(packed), ELEMENT_BYTES)]


def blind_packed(key_bytes: bytes, packed: bytes) -> bytes:
    """Worker entry point: blind a wire chunk, return a wire chunk."""
    return b"".join(RoundKey.from_bytes(key_bytes).blind(split_elements(packed)))


def hash_and_blind_packed(key_bytes: bytes, items: Sequence[tuple[str, str]]) -> bytes:
    """Worker entry point: hash (kind, canonical value) pairs and blind them, as a wire chunk."""
    return b"".join(RoundKey.from_bytes(key_bytes).blind(hash_indicators(items)))
