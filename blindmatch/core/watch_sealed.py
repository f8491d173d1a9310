"""Watch epochs of protocol v2: holders' salted epoch filters, and sealed alerts (DESIGN.md 2).

During a watch epoch each holder puts its epoch tags (``oprf.tag(epoch, T)`` for T = K·H(x)) into an
``EpochFilter`` that the coordinator stores. A checker gets T for its value through a verified
evaluation, tests the tag against the filters it may read, and then sends **every** tested holder
one ``seal``-ed message per value: the alert on a hit, a dummy on a miss. Both are MESSAGE_BYTES
long and encrypted to the holder, so the coordinator, which carries them, learns neither hits nor
values.

**Filters.** A Bloom filter of m bits and k positions per tag, with the standard sizes for n tags
and a target false-positive rate p: m = ⌈n·ln(1/p) / (ln 2)²⌉ rounded up to whole bytes,
k = round((m/n)·ln 2). The k positions of a tag are k independent 64-bit words mod m, two from
each AES-256_salt(tag ⊕ j), with salt = SHA-256(FILTER_SALT_DST ‖ statement(epoch, holder)).
(Double hashing, h1 + i·h2, keeps p only asymptotically: on the small filters of small holders it
gave 200 times p.) A keyed permutation serves as
the salted hash because a tag is already uniform (a SHA-256 output of T): the permutation spreads
it as a hash would, another salt gives an unrelated permutation, and AES over 1M tags end to end
takes well under a second (a build of 1M tags took 0.44 s here) where a hash per tag in Python
takes 0.7 s before any position is set. So the filters of two
epochs or of two holders share no positions: the coordinator cannot line up two holders' filters
to see their overlap, and a filter relabelled as another holder's or another epoch's contains
nothing. (The salt is public; it separates filters, it hides nothing. What hides a value is that
only the committee can make its T.)

What a false positive costs: with probability about p per tested holder, a checker finds a value in
the filter of a holder that does not hold it, and sends that holder an alert. The holder cannot map
the alert's tag to any of its indicators, and ignores it. That holder does then have the tag of a
value the checker checked: it could confirm a guess of that value, but only with an evaluation of
its own, charged to it by every committee member like any check. At p = 1e-6 this is about one
holder in a million checks.

A filter is refused (``MalformedWatchData``) when its bytes are malformed or oversized, when more
of its bits are set than its announced count of tags could set, or when its density makes its
false-positive rate exceed what the reader accepts: a saturated filter would turn every check into
an "alert" and hand its holder the tag of every value checked. The reader should also compare the
count with the holder-set size announced in the epoch's transcript.

**Sealed messages.** A checker sends each tested holder one batch: a message per checked value,
in an order drawn afresh for that holder. An ECIES-style construction on P-256, to the key of the
holder's federation certificate (or any P-256 key the caller has verified as the holder's):

- an ephemeral key pair (e, E = e·G), fresh per batch, and the ECDH secret z = x(e·P_holder);
- key = HKDF-SHA256(ikm = z, salt = none, info = SEAL_DST ‖ E ‖ P_holder, 32 bytes), with both
  points compressed (33 bytes): binding E and the recipient into the key means a re-encoded E
  (say -E, which gives the same z) or another recipient yields another key;
- message i = AES-256-GCM under that key with nonce i (12 bytes, big-endian) of flag ‖ length ‖
  payload padded with zeros to ALERT_BYTES, with associated data
  ``signing.statement("watch-sealed-binding", epoch, check id, request digest, checker, holder)``:
  MESSAGE_BYTES (35) whatever the payload, and a message moved to another place does not open;
- sealed = E ‖ message 0 ‖ message 1 ‖ …: ``sealed_bytes(n)``.

One ECDH per batch instead of one per message: a check of 10,000 values against three holders
took 30,000 ECDH, signatures and verifications each way, 75% of its time (docs/BENCHMARKS.md).

The flag is 1 for an alert and 0 for a dummy (whose payload is all zeros); only the holder sees it.
The binding names the checker as well as the holder: without it, a checker colluding with the
coordinator could re-sign another checker's sealed alert as its own, and the holder would
attribute the sighting to the wrong partner. The checker signs ``sealed_statement`` over the
whole batch (signing happens outside); the holder verifies that signature against the checker's
certificate, then ``open_sealed`` with the same binding.

The ECDH key is the certificate's signing key. That is what the design asks for, but the
certificates (runtime.pki) carry KeyUsage digitalSignature only, and anyone who later obtains a
holder's key can open every sealed message the coordinator kept. A per-epoch encryption key,
announced and signed in the transcript and destroyed with the epoch, would fix both; ``seal``
accepts any P-256 public key, so that needs no change here.

Pure: no I/O, no clock; randomness only from the OS CSPRNG (ephemeral keys).
"""

from __future__ import annotations

import hashlib
import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt
from cryptography import x509
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from blindmatch.core.errors import BadMessage, ForgedMessage
from blindmatch.core.oprf import TAG_BYTES
from blindmatch.core.signing import DIGEST_BYTES, MAX_CERTIFICATE_BYTES, statement

# Domain separation: each hash, key derivation and statement of this module has its own string.
FILTER_SALT_DST: Final = b"blindmatch-v2-watch-filter-salt"
SEAL_DST: Final = b"blindmatch-v2-watch-sealed-kdf"
BINDING_KIND: Final = "watch-sealed-binding"  # the AEAD's associated data
STATEMENT_KIND: Final = "watch-sealed"  # what the checker signs

MIN_ERROR_RATE: Final = 1e-12
MAX_ERROR_RATE: Final = 1e-3
# An honest filter's density scatters around its target; the reader allows this much above it.
ERROR_SLACK: Final = 2.0
MAX_HASHES: Final = 64
MAX_TAGS: Final = 2**32 - 1  # the count is encoded in 4 bytes
MAX_FILTER_BYTES: Final = 64 * 1024 * 1024  # 16M tags at p = 1e-6 need about 58 MiB
MAX_ID_BYTES: Final = 255

ALERT_BYTES: Final = TAG_BYTES + 1  # an alert: the indicator kind (one byte) and the 16-byte tag
_PLAIN_BYTES: Final = 2 + ALERT_BYTES  # flag, length, padded payload
_POINT_BYTES: Final = 33  # a compressed P-256 point
_GCM_TAG_BYTES: Final = 16
MESSAGE_BYTES: Final = _PLAIN_BYTES + _GCM_TAG_BYTES  # one sealed message, alert or dummy
MAX_MESSAGES: Final = 1 << 20  # messages in one batch: a check's values
_KEY_BYTES: Final = 32
_NONCE_BYTES: Final = 12
_DUMMY: Final = 0
_ALERT: Final = 1

_MAGIC: Final = b"BMF\x02"
# Positions are made a slice of tags at a time: an (n, k) array of 1M x 20 positions is 160 MB.
_CHUNK: Final = 1 << 16

# Tags: a sequence of 16-byte tags, or one buffer of them end to end (the form matching uses).
Tags = Sequence[bytes] | bytes | bytearray | memoryview


class MalformedWatchData(BadMessage, ValueError):
    """A filter, key or binding that is malformed, oversized or out of range."""

    code = "INVALID_ARGUMENT"


class SealedMessageRejected(ForgedMessage):
    """A sealed message that does not open: not for this holder's key, not for this binding
    (epoch, check, request, checker, holder), or altered on the way."""


def _text(value: str, what: str) -> bytes:
    raw = value.encode("utf-8")
    if not 1 <= len(raw) <= MAX_ID_BYTES:
        raise MalformedWatchData(f"{what} must be 1 to {MAX_ID_BYTES} bytes of UTF-8")
    return raw


def bloom_parameters(count: int, error_rate: float) -> tuple[int, int]:
    """(m bits, k positions) for ``count`` tags at false-positive rate ``error_rate``."""
    if not MIN_ERROR_RATE <= error_rate <= MAX_ERROR_RATE:
        raise MalformedWatchData(
            f"error rate {error_rate!r} outside [{MIN_ERROR_RATE}, {MAX_ERROR_RATE}]"
        )
    if not 0 <= count <= MAX_TAGS:
        raise MalformedWatchData(f"a filter holds 0 to {MAX_TAGS} tags, not {count}")
    n = max(count, 1)  # an empty filter still has a shape, so that it parses like any other
    exact = n * math.log(1 / error_rate) / math.log(2) ** 2
    hashes_ = max(1, min(MAX_HASHES, round(exact / n * math.log(2))))
    bits = 8 * math.ceil(exact / 8)
    return bits, hashes_


def _salt(epoch_id: str, holder: str) -> bytes:
    fields = statement("watch-filter-salt", _text(epoch_id, "epoch id"), _text(holder, "holder"))
    return hashlib.sha256(FILTER_SALT_DST + fields).digest()


def _tag_buffer(tags: Tags) -> bytes | bytearray | memoryview:
    if isinstance(tags, bytes | bytearray | memoryview):
        if len(tags) % TAG_BYTES:
            raise MalformedWatchData(f"a tag buffer is a whole number of {TAG_BYTES}-byte tags")
        return tags
    if any(len(tag) != TAG_BYTES for tag in tags):
        raise MalformedWatchData(f"every tag is {TAG_BYTES} bytes")
    return b"".join(tags)


def _permute(salt: bytes, buffer: bytes | bytearray | memoryview) -> bytes:
    """AES-256 under the salt, one 16-byte block per tag (ECB: every tag on its own, as a hash
    would treat it)."""
    encryptor = Cipher(algorithms.AES(salt), modes.ECB()).encryptor()
    return encryptor.update(bytes(buffer)) + encryptor.finalize()


def _positions(
    salt: bytes, buffer: bytes | bytearray | memoryview, hashes_: int, m: int
) -> npt.NDArray[np.uint64]:
    """The k bit positions of each tag, one (n, k) array: k independent words from the salted
    permutation of (tag, j) for j = 0, 1, ..., each reduced mod m.

    Independent words, not h1 + i·h2 (double hashing): with m a few hundred bits, double
    hashing's positions repeat or collapse (h2 ≡ 0 puts all k on one bit), measured at 200
    times the designed false-positive rate for a 42-tag filter."""
    tags = np.frombuffer(bytes(buffer), dtype="<u8").reshape(-1, 2)
    words = []
    for j in range((hashes_ + 1) // 2):
        block = tags.copy()
        block[:, 1] ^= np.uint64(j)  # (tag, j): distinct inputs to the permutation
        words.append(np.frombuffer(_permute(salt, block.tobytes()), dtype="<u8").reshape(-1, 2))
    return np.concatenate(words, axis=1)[:, :hashes_] % np.uint64(m)


class EpochFilter:
    """One holder's epoch tags, as a salted Bloom filter (module docstring).

    ``bits`` is the packed bit array, bit i at byte i // 8, bit i % 8 (little-endian bit order).
    The constructor checks only the shape; ``from_bytes`` is what a reader of untrusted bytes
    calls."""

    __slots__ = ("_salt", "bits", "count", "epoch_id", "hashes", "holder")

    def __init__(
        self, epoch_id: str, holder: str, count: int, hashes: int, bits: npt.NDArray[np.uint8]
    ) -> None:
        if not 1 <= hashes <= MAX_HASHES:
            raise MalformedWatchData(f"a filter uses 1 to {MAX_HASHES} positions per tag")
        if not 0 <= count <= MAX_TAGS:
            raise MalformedWatchData(f"a filter holds 0 to {MAX_TAGS} tags, not {count}")
        if bits.dtype != np.uint8 or bits.ndim != 1 or not 1 <= bits.size <= MAX_FILTER_BYTES:
            raise MalformedWatchData(f"a filter has 1 to {MAX_FILTER_BYTES} bytes of bits")
        self._salt = _salt(epoch_id, holder)
        self.epoch_id = epoch_id
        self.holder = holder
        self.count = count
        self.hashes = hashes
        self.bits = bits

    @property
    def size_bits(self) -> int:
        return 8 * int(self.bits.size)

    @classmethod
    def build(cls, epoch_id: str, holder: str, tags: Tags, error_rate: float = 1e-6) -> EpochFilter:
        """The filter of ``holder``'s epoch tags, sized for ``error_rate``."""
        buffer = _tag_buffer(tags)
        count = len(buffer) // TAG_BYTES
        m, k = bloom_parameters(count, error_rate)
        if m // 8 > MAX_FILTER_BYTES:
            raise MalformedWatchData(
                f"{count} tags at error rate {error_rate} need {m // 8} bytes, over the "
                f"{MAX_FILTER_BYTES}-byte limit"
            )
        salt = _salt(epoch_id, holder)
        flags = np.zeros(m, dtype=np.bool_)
        for start in range(0, count, _CHUNK):
            chunk = buffer[start * TAG_BYTES : (start + _CHUNK) * TAG_BYTES]
            flags[_positions(salt, chunk, k, m).ravel()] = True
        return cls(epoch_id, holder, count, k, np.packbits(flags, bitorder="little"))

    def contains(self, tag: bytes) -> bool:
        if len(tag) != TAG_BYTES:
            raise MalformedWatchData(f"a tag is {TAG_BYTES} bytes")
        return bool(self.contains_many(tag)[0])

    def contains_many(self, tags: Tags) -> npt.NDArray[np.bool_]:
        """``contains`` for every tag, vectorised: what a checker of many values uses."""
        buffer = _tag_buffer(tags)
        count = len(buffer) // TAG_BYTES
        out = np.empty(count, dtype=np.bool_)
        for start in range(0, count, _CHUNK):
            chunk = buffer[start * TAG_BYTES : (start + _CHUNK) * TAG_BYTES]
            pos = _positions(self._salt, chunk, self.hashes, self.size_bits)
            hit = (self.bits[pos >> np.uint64(3)] >> (pos & np.uint64(7)).astype(np.uint8)) & 1
            out[start : start + len(pos)] = hit.all(axis=1)
        return out

    @property
    def error_rate(self) -> float:
        """The false-positive rate this filter's density gives a tag it does not hold."""
        ones = int(np.bitwise_count(self.bits).sum())
        return float((ones / self.size_bits) ** self.hashes)

    def to_bytes(self) -> bytes:
        epoch, holder = _text(self.epoch_id, "epoch id"), _text(self.holder, "holder")
        header = b"".join(
            [
                _MAGIC,
                bytes([len(epoch)]),
                epoch,
                bytes([len(holder)]),
                holder,
                struct.pack(">IBI", self.count, self.hashes, self.bits.size),
            ]
        )
        return header + self.bits.tobytes()

    @classmethod
    def from_bytes(
        cls,
        data: bytes,
        *,
        max_bytes: int = MAX_FILTER_BYTES,
        max_error_rate: float = MAX_ERROR_RATE,
    ) -> EpochFilter:
        """Parse an untrusted filter. Refused: malformed bytes, more than ``max_bytes`` of bits,
        more bits set than ``count`` tags set, or a density whose false-positive rate exceeds
        ERROR_SLACK x ``max_error_rate``. The caller compares epoch_id, holder and count with
        what it expects."""
        view = memoryview(data)
        at = 0

        def take(n: int) -> memoryview:
            nonlocal at
            if at + n > len(view):
                raise MalformedWatchData("a filter is truncated")
            at += n
            return view[at - n : at]

        def text(what: str) -> str:
            raw = bytes(take(take(1)[0]))
            try:
                value = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise MalformedWatchData(f"a filter's {what} is not UTF-8") from None
            _text(value, what)
            return value

        if bytes(take(len(_MAGIC))) != _MAGIC:
            raise MalformedWatchData("not an epoch filter of protocol v2")
        epoch_id, holder = text("epoch id"), text("holder")
        count, hashes_, size = struct.unpack(">IBI", take(9))
        if not 1 <= size <= min(max_bytes, MAX_FILTER_BYTES):
            raise MalformedWatchData(f"a filter of {size} bytes of bits (at most {max_bytes})")
        if len(view) - at != size:
            raise MalformedWatchData(
                f"a filter announces {size} bytes of bits and carries {len(view) - at}"
            )
        bits = np.frombuffer(take(size), dtype=np.uint8).copy()
        parsed = cls(epoch_id, holder, count, hashes_, bits)
        m = parsed.size_bits
        ones = int(np.bitwise_count(bits).sum())
        # At most as many bits as `count` tags set, with 8 standard deviations to spare: a
        # holder cannot hold more tags than it announced by filling its filter by hand.
        expected = m * -math.expm1(hashes_ * count * math.log1p(-1 / m))
        if ones > expected + 8 * math.sqrt(expected) + 8:
            raise MalformedWatchData(
                f"{holder}'s filter sets {ones} bits; {count} tags set about {expected:.0f}"
            )
        if parsed.error_rate > ERROR_SLACK * max_error_rate:
            raise MalformedWatchData(
                f"{holder}'s filter is dense enough for a false-positive rate of "
                f"{parsed.error_rate:.2g}, over {max_error_rate:.2g}"
            )
        return parsed


# --- Sealed alerts -------------------------------------------------------------------------------


def _binding(
    epoch_id: str, check_id: str, request_digest: bytes, checker: str, holder: str
) -> bytes:
    if len(request_digest) != DIGEST_BYTES:
        raise MalformedWatchData(f"a request digest is {DIGEST_BYTES} bytes")
    return statement(
        BINDING_KIND,
        _text(epoch_id, "epoch id"),
        _text(check_id, "check id"),
        request_digest,
        _text(checker, "checker"),
        _text(holder, "holder"),
    )


def _holder_public_key(key: bytes | ec.EllipticCurvePublicKey) -> ec.EllipticCurvePublicKey:
    loaded: object = key
    if isinstance(key, bytes):
        if not key or len(key) > MAX_CERTIFICATE_BYTES:
            raise MalformedWatchData("a holder's certificate or key is missing or oversized")
        try:
            if b"-----BEGIN CERTIFICATE-----" in key:
                loaded = x509.load_pem_x509_certificate(key).public_key()
            else:
                loaded = serialization.load_pem_public_key(key)
        except ValueError as exc:
            raise MalformedWatchData(f"unusable holder certificate or key: {exc}") from None
    if not isinstance(loaded, ec.EllipticCurvePublicKey) or not isinstance(
        loaded.curve, ec.SECP256R1
    ):
        raise MalformedWatchData("a holder's key must be a P-256 key")
    return loaded


def _compressed(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint)


def _aead(shared: bytes, ephemeral: bytes, recipient: bytes) -> AESGCM:
    key = HKDF(
        algorithm=hashes.SHA256(),
        length=_KEY_BYTES,
        salt=None,
        info=SEAL_DST + ephemeral + recipient,
    ).derive(shared)
    return AESGCM(key)


def _nonce(index: int) -> bytes:
    # One key per batch, one message per nonce: message i opens only at place i.
    return index.to_bytes(_NONCE_BYTES, "big")


def sealed_bytes(count: int) -> int:
    """The length of a batch of ``count`` sealed messages."""
    return _POINT_BYTES + count * MESSAGE_BYTES


def message_count(sealed: bytes) -> int:
    """How many messages a sealed batch carries; MalformedWatchData if its length is no batch's."""
    count, rest = divmod(len(sealed) - _POINT_BYTES, MESSAGE_BYTES)
    if count < 1 or rest or count > MAX_MESSAGES:
        raise MalformedWatchData(
            f"a sealed batch is {_POINT_BYTES} bytes and 1 to {MAX_MESSAGES} messages of "
            f"{MESSAGE_BYTES}, not {len(sealed)} bytes"
        )
    return count


def seal(
    holder_key: bytes | ec.EllipticCurvePublicKey,
    epoch_id: str,
    check_id: str,
    request_digest: bytes,
    holder: str,
    payloads: Sequence[bytes | None],
    *,
    checker: str,
) -> bytes:
    """A batch encrypted to ``holder_key`` (a PEM certificate or public key, or a key the caller
    verified as ``holder``'s): one MESSAGE_BYTES message per payload, the alert (at most
    ALERT_BYTES) or a dummy for None. Alerts and dummies cost the same work and length."""
    if not 1 <= len(payloads) <= MAX_MESSAGES:
        raise MalformedWatchData(f"a sealed batch carries 1 to {MAX_MESSAGES} messages")
    if any(p is not None and len(p) > ALERT_BYTES for p in payloads):
        raise MalformedWatchData(f"an alert carries at most {ALERT_BYTES} bytes")
    aad = _binding(epoch_id, check_id, request_digest, checker, holder)
    recipient = _holder_public_key(holder_key)
    ephemeral = ec.generate_private_key(ec.SECP256R1())
    encoded = _compressed(ephemeral.public_key())
    aead = _aead(ephemeral.exchange(ec.ECDH(), recipient), encoded, _compressed(recipient))
    out = [encoded]
    for index, payload in enumerate(payloads):
        body = payload or b""
        flag = _DUMMY if payload is None else _ALERT
        plain = bytes([flag, len(body)]) + body + bytes(ALERT_BYTES - len(body))
        out.append(aead.encrypt(_nonce(index), plain, aad))
    return b"".join(out)


def open_sealed(
    holder_private_key: bytes | ec.EllipticCurvePrivateKey,
    epoch_id: str,
    check_id: str,
    request_digest: bytes,
    holder: str,
    sealed: bytes,
    *,
    checker: str,
) -> list[bytes | None]:
    """Each message's alert payload, or None for a dummy. SealedMessageRejected when the batch
    is not for this key and binding, or any message was altered or moved."""
    aad = _binding(epoch_id, check_id, request_digest, checker, holder)
    if isinstance(holder_private_key, bytes):
        try:
            loaded = serialization.load_pem_private_key(holder_private_key, password=None)
        except ValueError as exc:
            raise MalformedWatchData(f"unusable holder key: {exc}") from None
    else:
        loaded = holder_private_key
    if not isinstance(loaded, ec.EllipticCurvePrivateKey) or not isinstance(
        loaded.curve, ec.SECP256R1
    ):
        raise MalformedWatchData("a holder's key must be a P-256 key")
    what = f"the sealed messages of check {check_id!r} by {checker} for {holder}"
    try:
        count = message_count(sealed)
    except MalformedWatchData as exc:
        raise SealedMessageRejected(f"{what}: {exc}") from None
    encoded = bytes(sealed[:_POINT_BYTES])
    try:
        ephemeral = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), encoded)
        shared = loaded.exchange(ec.ECDH(), ephemeral)
    except ValueError:
        raise SealedMessageRejected(f"{what} carry no valid ephemeral key") from None
    aead = _aead(shared, encoded, _compressed(loaded.public_key()))
    out: list[bytes | None] = []
    for index in range(count):
        start = _POINT_BYTES + index * MESSAGE_BYTES
        try:
            plain = aead.decrypt(_nonce(index), bytes(sealed[start : start + MESSAGE_BYTES]), aad)
        except InvalidTag:
            raise SealedMessageRejected(
                f"{what} do not open: another key, epoch, check, request or party, or altered"
            ) from None
        flag, length, body = plain[0], plain[1], plain[2:]
        # Authenticated, so only the checker could have written a malformed plaintext.
        if flag == _DUMMY and not any(plain[1:]):
            out.append(None)
        elif flag == _ALERT and length <= ALERT_BYTES and not any(body[length:]):
            out.append(body[:length])
        else:
            raise SealedMessageRejected(f"{what} open to a malformed plaintext")
    return out


def sealed_statement(
    epoch_id: str,
    check_id: str,
    request_digest: bytes,
    holder: str,
    sealed: bytes,
    *,
    checker: str,
) -> bytes:
    """What the checker signs over a sealed batch and its binding; the holder verifies it
    against the checker's certificate before ``open_sealed``: one signature covers the whole
    batch, so no message can be dropped or added unseen."""
    message_count(sealed)
    return statement(
        STATEMENT_KIND,
        _binding(epoch_id, check_id, request_digest, checker, holder),
        bytes(sealed),
    )


# --- what a holder signs over its filter ---------------------------------------------------------

# The protocol's false-positive rate for every epoch filter. A holder's filter above it (with
# the slack of an estimate) is refused: each false positive hands its holder the tag of a value it
# does not hold.
FILTER_ERROR_RATE: Final = 1e-6


def filter_statement(bloom: EpochFilter) -> bytes:
    """What a holder signs over its filter. The coordinator stores and serves the filters; a
    filter its holder did not sign (an empty one, say) would let the coordinator suppress that
    holder's alerts unseen."""
    return statement(
        "v2-epoch-filter", bloom.epoch_id, bloom.holder, hashlib.sha256(bloom.to_bytes()).digest()
    )


@dataclass(frozen=True, slots=True)
class SignedFilter:
    filter: EpochFilter
    signature: bytes
