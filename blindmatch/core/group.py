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
The two exponentiations (one square root per Elligator 2 map) are about 75% of a hash; the rest is
kept to a few dozen GMP operations per item, with the divisions of a batch sharing inversions
(``_ratios``). When a node hashes and blinds its own set, the blinding clears the cofactor
(``cofactor_clearing_key``) and hashing skips it: same bytes, one doubling chain fewer.
"""

from __future__ import annotations

import functools
import hashlib
import secrets
from collections.abc import Iterable, Sequence

import gmpy2
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from blindmatch.core.canon import CANON_VERSION, indicator_message

PROTOCOL_VERSION = "blindmatch-v1"
SUITE = "curve25519_XMD:SHA-512_ELL2_RO_"
DST = f"{PROTOCOL_VERSION}-{CANON_VERSION}-with-{SUITE}".encode()
# Tags a stored H(v) (node/store): 16 hex digits of SHA-256(DST), short enough to repeat on every
# row of a 10M-indicator store, and it changes whenever the DST (protocol, canon, suite) does.
HASH_VERSION = hashlib.sha256(DST).hexdigest()[:16]
ELEMENT_BYTES = 32
ORDER = 2**252 + 27742317777372353535851937790883648493  # of the prime-order subgroup

_P = gmpy2.mpz(2**255 - 19)
_P_INT = 2**255 - 19
_A = gmpy2.mpz(486662)
_MINUS_A = _P - _A
_A24 = gmpy2.mpz(121666)  # (A + 2) / 4, the constant of x-only doubling
_ONE = gmpy2.mpz(1)
_SQRT_M1 = gmpy2.powmod(2, (_P - 1) // 4, _P)  # a square root of -1 mod p
_EXP_SQRT = (_P + 3) // 8
_SQRT_EXP_OF_Z = gmpy2.powmod(2, _EXP_SQRT, _P)  # Z^((p+3)/8) with Z = 2
_L = 48  # bytes per field element: ceil((ceil(log2 p) + k) / 8) with k = 128
_FIELD_MASK = gmpy2.mpz(2 ** (8 * _L) - 1)
_mpz_from_bytes = gmpy2.mpz.from_bytes
_sha512 = hashlib.sha512


class InvalidElement(ValueError):
    """A received group element that must not be used; the message says why."""


def expand_message_xmd(msg: bytes, dst: bytes, length: int) -> bytes:
    """RFC 9380 section 5.3.1 with SHA-512, any length (the reference for ``_field_elements``)."""
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


@functools.lru_cache(maxsize=8)
def _xmd_constants(dst: bytes) -> tuple[hashlib._Hash, bytes, bytes, bytes]:
    """What expand_message_xmd(msg, dst, 96) hashes around every message.

    Z_pad is exactly one SHA-512 block, so its compression is done once here and the state copied
    for each message. The state is never updated, only copied.
    """
    if len(dst) > 255:
        raise ValueError("DST longer than 255 bytes")
    dst_prime = dst + bytes([len(dst)])
    tail0 = (2 * _L).to_bytes(2, "big") + b"\x00" + dst_prime
    return _sha512(bytes(128)), tail0, b"\x01" + dst_prime, b"\x02" + dst_prime


def _field_elements(msgs: Iterable[bytes], dst: bytes) -> list[gmpy2.mpz]:
    """u0, u1, u0, u1, ... of RFC 9380 ``hash_to_field(msg, 2)`` for every message, in order.

    Left unreduced (48-byte integers): every use multiplies and reduces mod p anyway.
    """
    z_pad, tail0, tail1, tail2 = _xmd_constants(dst)
    sha512, from_bytes = _sha512, _mpz_from_bytes
    out: list[gmpy2.mpz] = []
    append = out.append
    for msg in msgs:
        h = z_pad.copy()
        h.update(msg + tail0)
        b0 = h.digest()
        b1 = sha512(b0 + tail1).digest()
        b2 = sha512((int.from_bytes(b0) ^ int.from_bytes(b1)).to_bytes(64) + tail2).digest()
        both = from_bytes(b1 + b2[: 2 * _L - 64])
        append(both >> 8 * _L)
        append(both & _FIELD_MASK)
    return out


def hash_to_field(msg: bytes, dst: bytes = DST) -> tuple[int, int]:
    """Two field elements, as RFC 9380 ``hash_to_field(msg, 2)`` for this suite."""
    u0, u1 = _field_elements([msg], dst)
    return int(u0 % _P), int(u1 % _P)


def _ratios(numerator: gmpy2.mpz, denominators: list[gmpy2.mpz]) -> list[gmpy2.mpz]:
    """``numerator / d mod p`` for every (non-zero) d, by Montgomery's trick.

    One inversion for the whole batch and three multiplications per element: an inversion costs
    about as much as eight multiplications with their reductions.
    """
    prefix: list[gmpy2.mpz] = []
    append = prefix.append
    acc = _ONE
    for d in denominators:
        append(acc)
        acc = acc * d % _P
    inv = numerator * gmpy2.invert(acc, _P) % _P
    out = prefix  # overwritten in place, back to front: prefix[i] is read before out[i] is set
    for i in range(len(denominators) - 1, -1, -1):
        out[i] = inv * prefix[i] % _P
        inv = inv * denominators[i] % _P
    return out


def _map(u: gmpy2.mpz, x1: gmpy2.mpz) -> tuple[gmpy2.mpz, gmpy2.mpz]:
    """RFC 9380 section 6.7.1 (J = A, K = 1, Z = 2) given x1 = -A / (1 + Z u^2): one exponentiation.

    Branches instead of constant-time selects: hashing only ever touches a node's own indicators.
    """
    gx1 = x1 * (x1 * (x1 + _A) + 1) % _P
    r = gmpy2.powmod(gx1, _EXP_SQRT, _P)  # a square root of gx1, up to sqrt(-1), if one exists
    r2 = r * r % _P
    if r2 == gx1:
        return x1, (r if r & 1 else _P - r)  # sgn0(y) must be 1 for x1
    if r2 + gx1 == _P:
        y = r * _SQRT_M1 % _P
        return x1, (y if y & 1 else _P - y)
    # gx1 is not a square (it is never 0: x1 != 0 and x^2 + A x + 1 has no root mod p). Then
    # x2 = -x1 - A, gx2 = Z u^2 gx1 and Z gx1 is a square, so sqrt(gx2) = u sqrt(Z gx1) with
    # (Z gx1)^((p+3)/8) = Z^((p+3)/8) r: no second exponentiation.
    s = r * _SQRT_EXP_OF_Z % _P
    if s * s % _P != 2 * gx1 % _P:
        s = s * _SQRT_M1 % _P
    y = u * s % _P
    return (_MINUS_A - x1) % _P, (_P - y if y & 1 else y)  # sgn0(y) must be 0 for x2


def map_to_curve_elligator2(u: int) -> tuple[int, int]:
    """RFC 9380 ``map_to_curve_elligator2`` for curve25519: the affine point (x, y) the field
    element u maps to. One element, no batching: hashing maps its batches with ``_curve_us``."""
    mu = gmpy2.mpz(u)
    x, y = _map(mu, _ratios(_MINUS_A, [(mu * mu * 2 + 1) % _P])[0])
    return int(x), int(y)


def _curve_us(msgs: Iterable[bytes], dst: bytes, *, clear_cofactor: bool = True) -> list[gmpy2.mpz]:
    """u-coordinates of RFC 9380 ``hash_to_curve(msg)`` for curve25519_XMD:SHA-512_ELL2_RO_.

    Per message: two Elligator 2 maps (one exponentiation each: the floor, about 80% of the
    cost), their sum and three doublings (cofactor clearing) in projective x-only form; the
    divisions of a whole batch share two inversions (``_ratios``). Without ``clear_cofactor``:
    u(Q0 + Q1), for a caller that clears the cofactor itself (``hash_and_blind_packed``).
    """
    us = _field_elements(msgs, dst)
    # 1 + 2 u^2 is never 0: -1/2 is not a square mod p.
    xs = _ratios(_MINUS_A, [(u * u * 2 + 1) % _P for u in us])
    doublings = 3 if clear_cofactor else 0
    numerators: list[gmpy2.mpz] = []
    denominators: list[gmpy2.mpz] = []
    u_pairs, x_pairs = iter(us), iter(xs)
    for u0, u1, x0, x1 in zip(u_pairs, u_pairs, x_pairs, x_pairs, strict=True):
        x0, y0 = _map(u0, x0)
        x1, y1 = _map(u1, x1)
        dx = x1 - x0
        if dx:
            # u(Q0 + Q1) = lam^2 - A - x0 - x1 with lam = dy / dx, kept as the fraction x / z.
            dy = y1 - y0
            zz = dx * dx
            x, z, more = (dy * dy - (_A + x0 + x1) * zz) % _P, zz % _P, doublings
        elif (y0 + y1) % _P:  # Q0 == Q1 (probability about 2^-254): Q0 + Q1 = 2 Q0
            x, z, more = x0, _ONE, doublings + 1
        else:  # Q0 == -Q1, probability about 2^-254
            raise ArithmeticError("hash_to_curve produced the identity")
        for _ in range(more):
            s, d = x + z, x - z
            ss, dd = s * s, d * d
            e = ss - dd
            x, z = ss * dd % _P, e * (dd + _A24 * e) % _P
        if not z:  # 8 (Q0 + Q1) is the identity: probability about 2^-250
            raise ArithmeticError("hash_to_curve produced the identity")
        numerators.append(x)
        denominators.append(z)
    return [x * inv % _P for x, inv in zip(numerators, _ratios(_ONE, denominators), strict=True)]


def hash_to_curve_u(msg: bytes, dst: bytes = DST) -> int:
    """u-coordinate of RFC 9380 ``hash_to_curve(msg)`` for curve25519_XMD:SHA-512_ELL2_RO_."""
    return int(_curve_us([msg], dst)[0])


def hash_to_group(kind: str, value: str) -> bytes:
    """The group element of one canonical indicator, as 32 little-endian bytes."""
    return hash_to_curve_u(indicator_message(kind, value)).to_bytes(32, "little")


def hash_indicators(items: Iterable[tuple[str, str]]) -> list[bytes]:
    """Batch form of :func:`hash_to_group` over (kind, canonical value) pairs."""
    us = _curve_us((indicator_message(k, v) for k, v in items), DST)
    return [u.to_bytes(ELEMENT_BYTES, "little") for u in us]


def hash_packed(items: Sequence[tuple[str, str]]) -> bytes:
    """Worker entry point: :func:`hash_indicators` as a wire chunk (cofactor cleared, so that
    ``blind_packed`` on it gives the bytes ``hash_and_blind_packed`` gives on the items)."""
    return b"".join(hash_indicators(items))


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


def _clamp(key_bytes: bytes) -> int:
    """RFC 7748 clamping: the scalar X25519 really multiplies by."""
    return int.from_bytes(key_bytes, "little") & ~7 & (2**255 - 1) | 2**254


_INVERSE_OF_8 = pow(8, -1, ORDER)


def _scalar_acting_as(residue: int) -> bytes | None:
    """A key that X25519 leaves unchanged by clamping and that multiplies every point of the
    prime-order subgroup by ``residue`` (mod ORDER), or None.

    Such a key s is a multiple of 8 in [2^254, 2^255) with s = +-residue modulo ORDER (u(-P) = u(P),
    so either sign serves): the two candidates are 8m and 8(ORDER - m) with m = residue / 8 mod
    ORDER. Each lies in range with probability about 1/2, so callers draw again on None. Python
    integer arithmetic is not constant time; it runs on the node's own machine only.
    """
    m = residue * _INVERSE_OF_8 % ORDER
    for s in (8 * m, 8 * (ORDER - m)):
        if 2**254 <= s < 2**255:
            return s.to_bytes(ELEMENT_BYTES, "little")
    return None


def cofactor_clearing_key(key_bytes: bytes) -> bytes | None:
    """A key that blinds a point before cofactor clearing as ``key_bytes`` blinds it after.

    For the clamped key k, a clamped scalar s with s = 8k or s = -8k modulo 8 * ORDER: then
    X25519(s, u(R)) = u(8kR) = X25519(k, u(8R)) for every curve point R, since 8 * ORDER R = O
    and u(-P) = u(P). None when neither survives clamping unchanged: probability about 2^-126,
    because 8k mod ORDER is itself a multiple of 8 below 2^255 for almost every key.
    """
    return _scalar_acting_as(8 * _clamp(key_bytes) % ORDER)


def combined_key(first: RoundKey, then: RoundKey) -> RoundKey | None:
    """One key that blinds as ``first`` and then ``then`` do, or None (draw ``first`` again).

    On the prime-order subgroup (every hashed or blinded element) X25519 multiplies by the
    clamped scalar modulo ORDER, so the two blindings are the one multiplication by
    clamp(first) * clamp(then) mod ORDER; ``_scalar_acting_as`` finds the key that survives
    clamping and acts so, which exists for about half the pairs. The key, like any other, also
    serves ``hash_and_blind_packed`` (it clears the cofactor itself). A checker masks and blinds
    its check in one pass this way (docs/WATCH.md, section 3).
    """
    residue = _clamp(first.export()) * _clamp(then.export()) % ORDER
    raw = _scalar_acting_as(residue)
    return None if raw is None else RoundKey.from_bytes(raw)


class Mask:
    """A one-use re-randomisation of elements: ``apply``, then any keys, then ``remove`` gives
    what those keys alone give, for every element of the prime-order subgroup (every hashed or
    blinded element). A checker masks its check so the partners that re-blind it see a fresh
    random-looking element each time and cannot link two checks of the same value, nor compare
    the result with the final tags of a round (docs/WATCH.md)."""

    __slots__ = ("apply", "remove")

    def __init__(self, apply: RoundKey, remove: RoundKey) -> None:
        self.apply = apply
        self.remove = remove

    @classmethod
    def generate(cls) -> Mask:
        while True:
            raw = secrets.token_bytes(ELEMENT_BYTES)
            inverse = _scalar_acting_as(pow(_clamp(raw) % ORDER, -1, ORDER))
            if inverse is not None:
                return cls(RoundKey.from_bytes(raw), RoundKey.from_bytes(inverse))

    def destroy(self) -> None:
        self.apply.destroy()
        self.remove.destroy()


def hash_and_blind_packed(key_bytes: bytes, items: Sequence[tuple[str, str]]) -> bytes:
    """Worker entry point: hash (kind, canonical value) pairs and blind them, as a wire chunk.

    The same bytes as blinding ``hash_indicators(items)`` under ``key_bytes``, but the blinding
    clears the cofactor (``cofactor_clearing_key``), so hashing skips its three doublings.
    """
    scalar = cofactor_clearing_key(key_bytes)
    if scalar is None:
        return b"".join(RoundKey.from_bytes(key_bytes).blind(hash_indicators(items)))
    us = _curve_us((indicator_message(k, v) for k, v in items), DST, clear_cofactor=False)
    return b"".join(
        RoundKey.from_bytes(scalar).blind([u.to_bytes(ELEMENT_BYTES, "little") for u in us])
    )
