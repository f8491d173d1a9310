"""The prime-order group of protocol v2: secp256k1, through libsecp256k1 (``coincurve``).

Rules:
- A point travels as its uncompressed SEC1 encoding, 65 bytes ``04 || x || y``, and only so. One
  encoding per point keeps tags and digests unambiguous; the uncompressed form parses in about
  0.2 us against 4 us for the compressed one (no square root), and a round parses every point
  it receives. libsecp256k1 also parses the compressed form and the hybrid forms ``06``/``07``;
  both are refused here, before the library sees them. The identity has no encoding and is
  never produced: a sum that cancels out raises ``InvalidPoint``.
- A scalar is an int in [1, ORDER - 1]; zero is refused wherever a scalar is made or read.
- A secret scalar (a member's share, a proof's nonce) is a ``SecretScalar``: never an int or a
  bytes object, one buffer that libsecp256k1 reads through a pointer and ``destroy`` overwrites.
  ``mul`` and ``base_mul`` take either kind; ``response`` is the one piece of arithmetic the
  proofs do with a secret.
- The cofactor is 1, so every point that parses is in the group.
"""

from __future__ import annotations

import functools
import hashlib
import os
import secrets
from collections.abc import Sequence
from typing import Any, Final, NoReturn

import gmpy2
from coincurve import PublicKey
from coincurve._libsecp256k1 import ffi, lib  # type: ignore[import-not-found]  # cffi, no stubs
from coincurve.context import GLOBAL_CONTEXT

from blindmatch.core.errors import BadMessage, WrongPhase

ORDER: Final = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
POINT_BYTES: Final = 65
SCALAR_BYTES: Final = 32
_UNCOMPRESSED: Final = 0x04

Point = PublicKey
_CTX: Final = GLOBAL_CONTEXT.ctx  # libsecp256k1 reads it, never writes it, in every call made here


class InvalidPoint(BadMessage, ValueError):
    """Bytes that are not the canonical encoding of a group element, or a sum that cancels out.
    A protocol error wherever it comes from the wire: the call is refused, the round ends."""


class InvalidScalar(BadMessage, ValueError):
    """Bytes that are not a scalar in [1, ORDER - 1]."""


def point_from_bytes(data: bytes) -> Point:
    if len(data) != POINT_BYTES or data[0] != _UNCOMPRESSED:
        raise InvalidPoint(
            f"a point is {POINT_BYTES} bytes in uncompressed SEC1 form (04 || x || y); got "
            f"{len(data)} bytes starting {data[:1].hex() or 'with nothing'}"
        )
    try:
        return PublicKey(bytes(data))
    except ValueError as exc:  # not on the curve, or a coordinate not below p
        raise InvalidPoint(f"not a point of secp256k1: {exc}") from None


def points_from_bytes(data: bytes) -> list[Point]:
    """Concatenated points, as one field of a message carries them."""
    if len(data) % POINT_BYTES:
        raise InvalidPoint(f"{len(data)} bytes is not a whole number of {POINT_BYTES}-byte points")
    return [point_from_bytes(data[i : i + POINT_BYTES]) for i in range(0, len(data), POINT_BYTES)]


def point_to_bytes(point: Point) -> bytes:
    return bytes(point.format(compressed=False))


def points_to_bytes(points: Sequence[Point]) -> bytes:
    return b"".join(point.format(compressed=False) for point in points)


def random_scalar() -> int:
    """A uniform scalar in [1, ORDER - 1] from the operating system's CSPRNG."""
    return secrets.randbelow(ORDER - 1) + 1


def scalar_to_bytes(k: int) -> bytes:
    return check_scalar(k).to_bytes(SCALAR_BYTES, "big")


def scalar_from_bytes(data: bytes) -> int:
    if len(data) != SCALAR_BYTES:
        raise InvalidScalar(f"a scalar is {SCALAR_BYTES} bytes; got {len(data)}")
    return check_scalar(int.from_bytes(data, "big"))


def check_scalar(k: int) -> int:
    if not 0 < k < ORDER:
        raise InvalidScalar("a scalar must be in [1, n - 1]; zero and n or more are refused")
    return k


class SecretScalar:
    """A secret scalar in [1, ORDER - 1] that exists once: in a buffer ``destroy`` overwrites.

    It is drawn from the operating system straight into that buffer (/dev/urandom read with
    ``readv``, no bytes object in between), and every use hands libsecp256k1 the same pointer to
    it (``ffi.from_buffer``: the buffer's own memory, made once). Nothing here converts it to an
    int or bytes, slices or prints it; it refuses to be copied or pickled, since a copy would be a
    buffer no ``destroy`` reaches. A secret dropped without ``destroy`` is overwritten when it is
    collected.

    Using it after ``destroy`` raises ``WrongPhase``; so does an operation that ``destroy``
    (another thread: a round ended) overtook, whose result is thrown away, since it may have read
    a half-erased key.
    """

    __slots__ = ("_buf", "_key", "_live")

    def __init__(self) -> None:
        self._hold(bytearray(SCALAR_BYTES))
        fd = os.open("/dev/urandom", os.O_RDONLY | os.O_CLOEXEC)
        try:
            # Uniform in [1, n - 1] by rejection: a draw is refused with probability about 2^-128.
            while True:
                if os.readv(fd, [self._buf]) != SCALAR_BYTES:
                    raise OSError("a short read from /dev/urandom")
                if lib.secp256k1_ec_seckey_verify(_CTX, self._key):
                    return
        finally:
            os.close(fd)

    @classmethod
    def from_int(cls, k: int) -> SecretScalar:
        """For tests and benchmarks only: a secret made from an int had copies from the start."""
        secret = cls.__new__(cls)
        secret._hold(bytearray(scalar_to_bytes(k)))
        return secret

    def _hold(self, buffer: bytearray) -> None:
        self._buf = buffer
        self._key = ffi.from_buffer(buffer)  # the buffer's memory; it is never resized
        self._live = True

    @property
    def destroyed(self) -> bool:
        return not self._live

    def destroy(self) -> None:
        self._live = False  # first: an operation reading the key meanwhile checks afterwards
        self._buf[:] = bytes(SCALAR_BYTES)

    def __del__(self) -> None:
        if hasattr(self, "_buf"):
            self.destroy()

    def _pointer(self) -> Any:
        """The buffer as libsecp256k1 takes a scalar."""
        self._check()
        return self._key

    def _check(self) -> None:
        if not self._live:
            raise WrongPhase("the secret scalar is destroyed")

    def __repr__(self) -> str:
        return f"SecretScalar({'destroyed' if self.destroyed else 'live'})"

    def __reduce__(self) -> NoReturn:
        raise TypeError("a secret scalar is not copied or pickled: a copy would outlive destroy")

    def __copy__(self) -> NoReturn:
        self.__reduce__()

    def __deepcopy__(self, memo: object) -> NoReturn:
        self.__reduce__()


def as_secret(k: int | SecretScalar) -> SecretScalar:
    """``k`` as a SecretScalar; an int only comes from tests and benchmarks (``from_int``)."""
    return k if isinstance(k, SecretScalar) else SecretScalar.from_int(k)


def _tweak_mul(point: Point, k: Any) -> Point:
    product = ffi.new("secp256k1_pubkey *", point.public_key[0])
    if not lib.secp256k1_ec_pubkey_tweak_mul(_CTX, product, k):
        # k was checked or verified in [1, n - 1]: only a secret zeroed meanwhile gets here
        raise WrongPhase("the secret scalar was destroyed while in use")
    return PublicKey(product)


def mul(point: Point, k: int | SecretScalar) -> Point:
    if isinstance(k, SecretScalar):
        # The hot path of an evaluation: SecretScalar._check inlined, before and after.
        if not k._live:
            raise WrongPhase("the secret scalar is destroyed")
        product = _tweak_mul(point, k._key)
        if not k._live:
            raise WrongPhase("the secret scalar is destroyed")
        return product
    return _tweak_mul(point, scalar_to_bytes(k))


def base_mul(k: int | SecretScalar) -> Point:
    """k·G."""
    point = ffi.new("secp256k1_pubkey *")
    if isinstance(k, SecretScalar):
        created = lib.secp256k1_ec_pubkey_create(_CTX, point, k._pointer())
        k._check()
    else:
        created = lib.secp256k1_ec_pubkey_create(_CTX, point, scalar_to_bytes(k))
    if not created:
        raise WrongPhase("the secret scalar was destroyed while in use")
    return PublicKey(point)


def response(r: SecretScalar, c: int, k: SecretScalar) -> int:
    """r − c·k mod n, 0 included: the response of a proof, for a nonce r, a public challenge c and
    a secret k.

    Computed in libsecp256k1 on a scratch buffer that holds c·k, then −c·k, then the response,
    wiped whatever happens: neither secret nor c·k is ever a Python int. (libsecp256k1's own
    scalar arithmetic is constant time, which Python's is not.)"""
    scratch = bytearray(scalar_to_bytes(c))
    out = ffi.from_buffer(scratch)
    try:
        if not (
            lib.secp256k1_ec_seckey_tweak_mul(_CTX, out, k._pointer())
            and lib.secp256k1_ec_seckey_negate(_CTX, out)
        ):
            raise WrongPhase("the secret scalar was destroyed while in use")
        if not lib.secp256k1_ec_seckey_tweak_add(_CTX, out, r._pointer()):
            return 0  # r = c·k: the library refuses a zero key
        k._check()
        r._check()
        return int.from_bytes(scratch, "big")
    finally:
        scratch[:] = bytes(SCALAR_BYTES)


def add(points: Sequence[Point]) -> Point:
    """The sum of one or more points."""
    if not points:
        raise InvalidPoint("the sum of no points is the identity, which has no encoding")
    if len(points) == 1:
        return points[0]
    try:
        return PublicKey.combine_keys(list(points))
    except ValueError:
        raise InvalidPoint("the points sum to the identity") from None


def inverse(k: int) -> int:
    return int(gmpy2.invert(check_scalar(k), ORDER))


def batch_inverse(scalars: Sequence[int]) -> list[int]:
    """Every inverse for one field inversion and 3(n - 1) multiplications (Montgomery's trick)."""
    if not scalars:
        return []
    prefix = [gmpy2.mpz(check_scalar(scalars[0]))]
    for k in scalars[1:]:
        prefix.append(prefix[-1] * check_scalar(k) % ORDER)
    inv = gmpy2.invert(prefix[-1], ORDER)
    out = [0] * len(scalars)
    for i in range(len(scalars) - 1, 0, -1):
        out[i] = int(inv * prefix[i - 1] % ORDER)
        inv = inv * scalars[i] % ORDER
    out[0] = int(inv)
    return out


# --- RFC 9380: hashing to the group, suite secp256k1_XMD:SHA-256_SSWU_RO_ ----------------------
#
# Field arithmetic runs on GMP through gmpy2, with branches where the RFC's straight-line code has
# CMOV: every input is a value its owner hashes on its own machine, so timing is not observable by
# a partner. The two exponentiations (one sqrt_ratio per map) are most of the cost; the divisions
# of both maps, both isogenies and their sum share one inversion, because everything stays
# projective until the end.

SUITE: Final = "secp256k1_XMD:SHA-256_SSWU_RO_"
_H2C_L: Final = 48  # ceil((ceil(log2 p) + k) / 8) with k = 128, RFC 9380 section 8.7
_MAX_DST: Final = 255
_OVERSIZE_DST_PREFIX: Final = b"H2C-OVERSIZE-DST-"

_P: Final = gmpy2.mpz(2**256 - 2**32 - 977)
_ORDER_MPZ: Final = gmpy2.mpz(ORDER)
# E': y'^2 = x'^3 + A' x' + B', 3-isogenous to secp256k1 (RFC 9380 section 8.7), and Z = -11.
_ISO_A: Final = gmpy2.mpz(0x3F8731ABDD661ADCA08A5558F0F5D272E953D363CB6F0E5D405447C01A444533)
_ISO_B: Final = gmpy2.mpz(1771)
_Z: Final = _P - 11
_MINUS_ISO_A: Final = -_ISO_A % _P
_Z_ISO_A: Final = _Z * _ISO_A % _P
# sqrt_ratio_3mod4 (RFC 9380 appendix F.2.1.2): p = 3 mod 4.
_SQRT_EXP: Final = (_P - 3) // 4
_SQRT_MINUS_Z: Final = gmpy2.powmod(11, (_P + 1) // 4, _P)  # 11 is a square mod p
# The 3-isogeny map E' -> E, RFC 9380 appendix E.1: x = x_num / x_den, y = y' y_num / y_den.
_K1: Final = tuple(
    gmpy2.mpz(k)
    for k in (
        0x8E38E38E38E38E38E38E38E38E38E38E38E38E38E38E38E38E38E38DAAAAA8C7,
        0x07D3D4C80BC321D5B9F315CEA7FD44C5D595D2FC0BF63B92DFFF1044F17C6581,
        0x534C328D23F234E6E2A413DECA25CAECE4506144037C40314ECBD0B53D9DD262,
        0x8E38E38E38E38E38E38E38E38E38E38E38E38E38E38E38E38E38E38DAAAAA88C,
    )
)
_K2: Final = tuple(
    gmpy2.mpz(k)
    for k in (
        0xD35771193D94918A9CA34CCBB7B640DD86CD409542F8487D9FE6B745781EB49B,
        0xEDADC6F64383DC1DF7C4B2D51B54225406D36B641F5E41BBC52A56612A8C6D14,
    )
)
# Appendix E.1's x_den and y_den are (x' - x0)^2 and (x' - x0)^3, x0 the kernel's x (a test checks
# it against every k_(2,i) and k_(4,i)), so only x0 is kept of them.
_ISO_KERNEL_X: Final = -_K2[1] * gmpy2.invert(2, _P) % _P
_K3: Final = tuple(
    gmpy2.mpz(k)
    for k in (
        0x4BDA12F684BDA12F684BDA12F684BDA12F684BDA12F684BDA12F684B8E38E23C,
        0xC75E0C32D5CB7C0FA9D0A54B12A0A6D5647AB046D686DA6FDFFC90FC201D71A3,
        0x29A6194691F91A73715209EF6512E576722830A201BE2018A765E85A9ECEE931,
        0x2F684BDA12F684BDA12F684BDA12F684BDA12F684BDA12F684BDA12F38E38D84,
    )
)
_FIELD_MASK: Final = gmpy2.mpz(2 ** (8 * _H2C_L) - 1)
_mpz_from_bytes = gmpy2.mpz.from_bytes
_sha256 = hashlib.sha256


def _short_dst(dst: bytes) -> bytes:
    """RFC 9380 section 5.3.3: a DST over 255 bytes is replaced by its hash.

    An empty one is refused (section 3.1: tags MUST have nonzero length), so that no caller
    shares the unseparated domain by accident.
    """
    if not dst:
        raise ValueError("a domain separation tag must not be empty (RFC 9380 section 3.1)")
    if len(dst) > _MAX_DST:
        return _sha256(_OVERSIZE_DST_PREFIX + dst).digest()
    return dst


def expand_message_xmd(msg: bytes, dst: bytes, length: int) -> bytes:
    """RFC 9380 section 5.3.1 with SHA-256: ``length`` uniform bytes from msg under dst."""
    if not 0 <= length <= 65535:
        raise ValueError(f"expand_message_xmd gives 0 to 65535 bytes; {length} were asked for")
    ell = -(-length // 32)
    if ell > 255:
        raise ValueError(f"expand_message_xmd with SHA-256 gives at most 8160 bytes, not {length}")
    short_dst = _short_dst(dst)
    dst_prime = short_dst + bytes([len(short_dst)])
    b0 = _sha256(bytes(64) + msg + length.to_bytes(2, "big") + b"\x00" + dst_prime).digest()
    bi = _sha256(b0 + b"\x01" + dst_prime).digest()
    out = [bi]
    b0_int = int.from_bytes(b0, "big")
    for i in range(2, ell + 1):
        mixed = (b0_int ^ int.from_bytes(bi, "big")).to_bytes(32, "big")
        bi = _sha256(mixed + bytes([i]) + dst_prime).digest()
        out.append(bi)
    return b"".join(out)[:length]


@functools.lru_cache(maxsize=16)
def _xmd_constants(dst: bytes, length: int) -> tuple[hashlib._Hash, bytes, tuple[bytes, ...]]:
    """What expand_message_xmd(msg, dst, length) hashes around every message.

    Z_pad is exactly one SHA-256 block, so its compression is done once here and the state is
    copied for each message (never updated).
    """
    short_dst = _short_dst(dst)
    dst_prime = short_dst + bytes([len(short_dst)])
    tail0 = length.to_bytes(2, "big") + b"\x00" + dst_prime
    tails = tuple(bytes([i]) + dst_prime for i in range(1, -(-length // 32) + 1))
    return _sha256(bytes(64)), tail0, tails


def _uniform_int(msg: bytes, dst: bytes, length: int) -> gmpy2.mpz:
    """expand_message_xmd(msg, dst, length) read as one big-endian integer: the fast path."""
    z_pad, tail0, tails = _xmd_constants(dst, length)
    h = z_pad.copy()
    h.update(msg + tail0)
    b0 = h.digest()
    bi = _sha256(b0 + tails[0]).digest()
    blocks = [bi]
    b0_int = int.from_bytes(b0, "big")
    for tail in tails[1:]:
        bi = _sha256((b0_int ^ int.from_bytes(bi, "big")).to_bytes(32, "big") + tail).digest()
        blocks.append(bi)
    return _mpz_from_bytes(b"".join(blocks)[:length], "big")


def hash_to_field(msg: bytes, dst: bytes) -> tuple[int, int]:
    """u[0], u[1] of RFC 9380 ``hash_to_field(msg, 2)`` (section 5.2) for this suite."""
    both = _uniform_int(msg, dst, 2 * _H2C_L)
    return int((both >> 8 * _H2C_L) % _P), int((both & _FIELD_MASK) % _P)


def _map_to_iso(u: gmpy2.mpz) -> tuple[gmpy2.mpz, gmpy2.mpz, gmpy2.mpz]:
    """RFC 9380 appendix F.2 (simplified SWU, straight line) onto E': (x_num, x_den, y).

    x' = x_num / x_den is left as a fraction: the isogeny divides anyway, and one inversion serves
    both. u must be reduced mod p (sgn0 reads its parity).
    """
    p = _P
    tv1 = _Z * (u * u) % p
    tv2 = (tv1 * tv1 + tv1) % p
    tv3 = _ISO_B * (tv2 + 1) % p
    # tv4 = A' * CMOV(Z, -tv2, tv2 != 0): tv2 = 0 is the RFC's exceptional case (u = 0).
    tv4 = _MINUS_ISO_A * tv2 % p if tv2 else _Z_ISO_A
    tv6 = tv4 * tv4 % p
    gx_num = ((tv3 * tv3 + _ISO_A * tv6) % p * tv3 + _ISO_B * (tv6 * tv4 % p)) % p
    gx_den = tv6 * tv4 % p
    # sqrt_ratio_3mod4(gx_num, gx_den), RFC 9380 appendix F.2.1.2.
    t = gx_num * gx_den % p
    y1 = gmpy2.powmod(gx_den * gx_den % p * t % p, _SQRT_EXP, p) * t % p
    if y1 * y1 % p * gx_den % p == gx_num:
        x_num, y = tv3, y1
    else:
        x_num, y = tv1 * tv3 % p, tv1 * u % p * (y1 * _SQRT_MINUS_Z % p) % p
    if (u ^ y) & 1:  # sgn0(y) must equal sgn0(u)
        y = p - y if y else y
    return x_num, tv4, y


def _iso_map(
    x_num: gmpy2.mpz, x_den: gmpy2.mpz, y: gmpy2.mpz
) -> tuple[gmpy2.mpz, gmpy2.mpz, gmpy2.mpz]:
    """The 3-isogeny of RFC 9380 appendix E.1 at (x_num / x_den, y): (X, Y, W) with the affine
    point (X / W, Y / W) on secp256k1.

    The polynomials are made homogeneous in (x_num, x_den), which clears the inner division, and
    left unreduced until summed (one reduction instead of six). The denominators are the powers
    (x' - x0)^2 and (x' - x0)^3 of the kernel's x0, which shortens them. W is never 0: they vanish
    only on the kernel, whose points of order 3 are not in E'(F_p), a group of prime order n.
    """
    p = _P
    n, d = x_num, x_den
    n2, d2 = n * n, d * d
    n3, n2d, nd2, d3 = n2 * n, n2 * d, n * d2, d2 * d
    k1, k3 = _K1, _K3
    xn = (k1[3] * n3 + k1[2] * n2d + k1[1] * nd2 + k1[0] * d3) % p
    yn = (k3[3] * n3 + k3[2] * n2d + k3[1] * nd2 + k3[0] * d3) % p
    e = (n - _ISO_KERNEL_X * d) % p
    e3 = e * e * e % p
    # x = xn / (d e^2) and y = y yn / e^3, over the common denominator d e^3.
    return xn * e % p, y * yn * d % p, e3 * d % p


def _affine_point(x: gmpy2.mpz, y: gmpy2.mpz) -> Point:
    return PublicKey(b"\x04" + x.to_bytes(32, "big") + y.to_bytes(32, "big"))


def map_to_curve(u: int) -> tuple[int, int]:
    """RFC 9380 ``map_to_curve`` of this suite, simplified SWU then the 3-isogeny: the affine
    (x, y) on secp256k1 that the field element u maps to."""
    x, y, w = _iso_map(*_map_to_iso(gmpy2.mpz(u) % _P))
    inv = gmpy2.invert(w, _P)
    return int(x * inv % _P), int(y * inv % _P)


def hash_to_curve(msg: bytes, dst: bytes) -> Point:
    """RFC 9380 ``hash_to_curve`` (section 3) for secp256k1_XMD:SHA-256_SSWU_RO_; cofactor 1.

    Q0 + Q1 is added here, in the same projective coordinates as the maps, so that one inversion
    serves both maps and the sum, and only the sum is parsed: ``add`` (libsecp256k1's combine)
    costs about 5 us with its own inversion and the extra parse, a tenth of the hash. When
    Q0 and Q1 share x (probability about 2^-255) the points go to ``add``, which doubles, or
    raises InvalidPoint on a sum that cancels.
    """
    p = _P
    both = _uniform_int(msg, dst, 2 * _H2C_L)
    x0, y0, w0 = _iso_map(*_map_to_iso((both >> 8 * _H2C_L) % p))
    x1, y1, w1 = _iso_map(*_map_to_iso((both & _FIELD_MASK) % p))
    # lambda = (y1 - y0) / (x1 - x0) = num / den after clearing w0 w1.
    num = (y1 * w0 - y0 * w1) % p
    den = (x1 * w0 - x0 * w1) % p
    w01 = w0 * w1 % p
    if not den:
        inv = gmpy2.invert(w01, p)
        inv0, inv1 = inv * w1 % p, inv * w0 % p
        return add(
            [
                _affine_point(x0 * inv0 % p, y0 * inv0 % p),
                _affine_point(x1 * inv1 % p, y1 * inv1 % p),
            ]
        )
    inv = gmpy2.invert(den * w01 % p, p)
    inv_den_w0 = inv * w1 % p  # 1 / (den w0)
    lam = num * w0 % p * inv_den_w0 % p
    ax0, ay0 = x0 * den * inv_den_w0 % p, y0 * den * inv_den_w0 % p
    ax1 = x1 * den * w0 % p * inv % p
    x = (lam * lam - ax0 - ax1) % p
    y = (lam * (ax0 - x) - ay0) % p
    return _affine_point(x, y)


def hash_to_scalar(msg: bytes, dst: bytes) -> int:
    """A scalar from RFC 9380 ``hash_to_field`` into Z_n (L = 48), as RFC 9497 HashToScalar.

    Zero (probability 2^-256) is refused like any other zero scalar.
    """
    return check_scalar(int(_uniform_int(msg, dst, _H2C_L) % _ORDER_MPZ))
