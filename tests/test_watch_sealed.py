"""Salted epoch filters and sealed alerts of protocol v2 watch epochs (core/watch_sealed.py)."""

from __future__ import annotations

import datetime
import secrets
import struct

import numpy as np
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from blindmatch.core.errors import ForgedMessage
from blindmatch.core.signing import Signer, Trust
from blindmatch.core.watch_sealed import (
    ALERT_BYTES,
    MESSAGE_BYTES,
    EpochFilter,
    MalformedWatchData,
    SealedMessageRejected,
    bloom_parameters,
    open_sealed,
    seal,
    sealed_bytes,
    sealed_statement,
)
from blindmatch.runtime.pki import issue, new_ca

CA = new_ca("watch-sealed test CA")
ALPHA = issue(CA, "alpha", "node")
BRAVO = issue(CA, "bravo", "node")
CHARLIE = issue(CA, "charlie", "node")


def private_key(pem: bytes) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(pem, password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key


def tags(n: int) -> list[bytes]:
    return [secrets.token_bytes(16) for _ in range(n)]


# --- Filters --------------------------------------------------------------------------------------

HELD = tags(20_000)


@pytest.fixture(scope="module")
def alpha_filter() -> EpochFilter:
    return EpochFilter.build("epoch-1", "alpha", HELD, 1e-6)


def test_the_filter_contains_every_tag_put_in(alpha_filter: EpochFilter) -> None:
    assert all(alpha_filter.contains(t) for t in HELD)
    assert alpha_filter.contains_many(HELD).all()
    assert alpha_filter.contains_many(b"".join(HELD)).all()
    assert alpha_filter.count == len(HELD)


def test_contains_and_contains_many_agree_on_absent_tags() -> None:
    small = EpochFilter.build("epoch-1", "alpha", tags(200), 1e-3)
    probe = tags(20_000)
    one_by_one = np.array([small.contains(t) for t in probe])
    assert (one_by_one == small.contains_many(probe)).all()
    assert 0 < one_by_one.sum() < 200  # some false positives, so the comparison saw both answers


def test_measured_false_positive_rate_is_within_2x_of_the_target() -> None:
    # 100 false positives expected: outside [50, 200] with probability below 1e-6.
    error_rate = 1e-3
    built = EpochFilter.build("epoch-1", "alpha", tags(100_000), error_rate)
    rate = float(built.contains_many(tags(100_000)).mean())
    assert error_rate / 2 <= rate <= 2 * error_rate, rate


def test_sizes_follow_the_standard_formulas() -> None:
    m, k = bloom_parameters(1_000_000, 1e-6)
    assert k == 20
    assert 28_755_000 <= m <= 28_756_000  # n·ln(1/p)/ln²2 = 28,755,175
    assert bloom_parameters(0, 1e-6) == bloom_parameters(1, 1e-6)
    for bad in (0.0, 1e-13, 0.5, float("nan")):
        with pytest.raises(MalformedWatchData):
            bloom_parameters(10, bad)


@pytest.mark.parametrize(("epoch", "holder"), [("epoch-2", "alpha"), ("epoch-1", "bravo")])
def test_a_filter_relabelled_for_another_epoch_or_holder_contains_none_of_the_tags(
    alpha_filter: EpochFilter, epoch: str, holder: str
) -> None:
    relabelled = EpochFilter(
        epoch, holder, alpha_filter.count, alpha_filter.hashes, alpha_filter.bits
    )
    # At p = 1e-6 over 20k tags, 4 or more false positives has probability below 1e-9.
    assert relabelled.contains_many(HELD).sum() <= 3


@pytest.mark.parametrize(("epoch", "holder"), [("epoch-2", "alpha"), ("epoch-1", "bravo")])
def test_filters_of_the_same_tags_for_another_epoch_or_holder_share_no_positions(
    alpha_filter: EpochFilter, epoch: str, holder: str
) -> None:
    other = EpochFilter.build(epoch, holder, HELD, 1e-6)
    assert other.bits.size == alpha_filter.bits.size
    ones_a = np.unpackbits(alpha_filter.bits).astype(bool)
    ones_b = np.unpackbits(other.bits).astype(bool)
    fill_a, fill_b, both = ones_a.mean(), ones_b.mean(), (ones_a & ones_b).mean()
    # Independent layouts overlap in fill_a·fill_b of the bits (about 0.25); the same layout in
    # fill_a (about 0.5).
    assert abs(both - fill_a * fill_b) < 0.01, (both, fill_a, fill_b)


def test_serialisation_round_trips(alpha_filter: EpochFilter) -> None:
    data = alpha_filter.to_bytes()
    parsed = EpochFilter.from_bytes(data)
    assert (parsed.epoch_id, parsed.holder, parsed.count, parsed.hashes) == (
        "epoch-1",
        "alpha",
        len(HELD),
        alpha_filter.hashes,
    )
    assert parsed.to_bytes() == data
    assert parsed.contains_many(HELD).all()
    empty = EpochFilter.build("epoch-1", "alpha", [], 1e-6)
    assert EpochFilter.from_bytes(empty.to_bytes()).count == 0
    assert not empty.contains(HELD[0])


def test_a_filter_is_deterministic() -> None:
    # The checker and the holder must agree on every position; nothing random goes in.
    a = EpochFilter.build("epoch-1", "alpha", HELD[:100], 1e-6).to_bytes()
    assert EpochFilter.build("epoch-1", "alpha", b"".join(HELD[:100]), 1e-6).to_bytes() == a


def _header(
    epoch: bytes = b"epoch-1", holder: bytes = b"alpha", count: int = 1, k: int = 1, size: int = 8
) -> bytes:
    return (
        b"BMF\x02"
        + bytes([len(epoch)])
        + epoch
        + bytes([len(holder)])
        + holder
        + struct.pack(">IBI", count, k, size)
    )


SMALL = EpochFilter.build("epoch-1", "alpha", tags(50), 1e-3).to_bytes()
MALFORMED = {
    "empty": b"",
    "magic": b"BMF\x01" + SMALL[4:],
    "truncated header": SMALL[:10],
    "truncated bits": SMALL[:-1],
    "trailing byte": SMALL + b"\0",
    "no bits": _header(size=0),
    "zero hashes": _header(k=0) + bytes(8),
    "too many hashes": _header(k=65) + bytes(8),
    "empty epoch id": _header(epoch=b"") + bytes(8),
    "empty holder": _header(holder=b"") + bytes(8),
    "holder not utf-8": _header(holder=b"\xff\xfe") + bytes(8),
    "saturated": _header(count=1_000_000, k=10, size=8) + b"\xff" * 8,
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_filters_are_refused(name: str) -> None:
    with pytest.raises(MalformedWatchData) as refused:
        EpochFilter.from_bytes(MALFORMED[name])
    assert refused.value.code == "INVALID_ARGUMENT"
    assert isinstance(refused.value, ValueError)


def test_the_well_formed_baseline_of_the_malformed_cases_parses() -> None:
    # Guards the cases above against failing for a reason other than the one they name.
    EpochFilter.from_bytes(SMALL)
    EpochFilter.from_bytes(_header(count=1, k=1, size=1024) + b"\x01" + bytes(1023))


def test_oversized_filters_are_refused(alpha_filter: EpochFilter) -> None:
    data = alpha_filter.to_bytes()
    EpochFilter.from_bytes(data, max_bytes=alpha_filter.bits.size)
    with pytest.raises(MalformedWatchData, match="at most"):
        EpochFilter.from_bytes(data, max_bytes=alpha_filter.bits.size - 1)


def test_a_filter_with_more_bits_than_its_count_sets_is_refused() -> None:
    # One tag at k = 20 sets at most 20 of these 8192 bits; 200 set bits are hand-made, and
    # sparse enough that the false-positive bound alone would let them through.
    bits = np.zeros(8192, dtype=bool)
    bits[:: 8192 // 200][:200] = True
    packed = np.packbits(bits, bitorder="little").tobytes()
    EpochFilter.from_bytes(_header(count=10, k=20, size=1024) + packed)
    with pytest.raises(MalformedWatchData, match="sets 200 bits"):
        EpochFilter.from_bytes(_header(count=1, k=20, size=1024) + packed)


def test_a_filter_denser_than_the_reader_accepts_is_refused() -> None:
    loose = EpochFilter.build("epoch-1", "alpha", tags(10_000), 1e-3).to_bytes()
    EpochFilter.from_bytes(loose, max_error_rate=1e-3)
    with pytest.raises(MalformedWatchData, match="false-positive"):
        EpochFilter.from_bytes(loose, max_error_rate=1e-5)


def test_build_refuses_tags_of_the_wrong_length() -> None:
    with pytest.raises(MalformedWatchData):
        EpochFilter.build("epoch-1", "alpha", [b"\0" * 15], 1e-6)
    with pytest.raises(MalformedWatchData):
        EpochFilter.build("epoch-1", "alpha", b"\0" * 17, 1e-6)
    with pytest.raises(MalformedWatchData):
        EpochFilter.build("epoch-1", "alpha", HELD, 0.5)


# --- Sealed messages ------------------------------------------------------------------------------

EPOCH, CHECK, REQUEST = "epoch-1", "check-7", secrets.token_bytes(32)
ALERT = bytes([3]) + secrets.token_bytes(16)


def seal_to_alpha(*payloads: bytes | None) -> bytes:
    return seal(ALPHA.cert_pem, EPOCH, CHECK, REQUEST, "alpha", list(payloads), checker="bravo")


def test_alert_and_dummy_have_the_same_fixed_length() -> None:
    assert len(ALERT) == ALERT_BYTES
    lengths = {len(seal_to_alpha(p)) for p in (ALERT, b"\x01", b"", None)}
    assert lengths == {sealed_bytes(1)}
    assert len(seal_to_alpha(ALERT, None, None)) == sealed_bytes(3) == 33 + 3 * MESSAGE_BYTES


def test_the_holder_opens_an_alert_and_a_dummy() -> None:
    key = private_key(ALPHA.key_pem)
    assert open_sealed(
        key, EPOCH, CHECK, REQUEST, "alpha", seal_to_alpha(ALERT), checker="bravo"
    ) == [ALERT]
    assert open_sealed(
        key, EPOCH, CHECK, REQUEST, "alpha", seal_to_alpha(None), checker="bravo"
    ) == [None]
    short = seal_to_alpha(b"\x09")
    assert open_sealed(ALPHA.key_pem, EPOCH, CHECK, REQUEST, "alpha", short, checker="bravo") == [
        b"\x09"
    ]


def test_seal_takes_a_public_key_as_well_as_a_certificate() -> None:
    public = x509.load_pem_x509_certificate(ALPHA.cert_pem).public_key()
    pem = public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert isinstance(public, ec.EllipticCurvePublicKey)
    for key in (public, pem):
        sealed = seal(key, EPOCH, CHECK, REQUEST, "alpha", [ALERT], checker="bravo")
        opened = open_sealed(ALPHA.key_pem, EPOCH, CHECK, REQUEST, "alpha", sealed, checker="bravo")
        assert opened == [ALERT]


WRONG: dict[str, dict[str, object]] = {
    "epoch": dict(epoch_id="epoch-2"),
    "check id": dict(check_id="check-8"),
    "request digest": dict(request_digest=bytes(32)),
    "holder": dict(holder="charlie"),
    "checker": dict(checker="charlie"),
    "key": dict(holder_private_key=private_key(CHARLIE.key_pem)),
}


@pytest.mark.parametrize("payload", [ALERT, None], ids=["alert", "dummy"])
@pytest.mark.parametrize("name", sorted(WRONG))
def test_opening_with_another_binding_or_key_fails(name: str, payload: bytes | None) -> None:
    sealed = seal_to_alpha(payload)
    args: dict[str, object] = dict(
        holder_private_key=private_key(ALPHA.key_pem),
        epoch_id=EPOCH,
        check_id=CHECK,
        request_digest=REQUEST,
        holder="alpha",
        sealed=sealed,
        checker="bravo",
    )
    assert open_sealed(**args) == [payload]  # type: ignore[arg-type]
    args.update(WRONG[name])
    with pytest.raises(SealedMessageRejected) as refused:
        open_sealed(**args)  # type: ignore[arg-type]
    assert isinstance(refused.value, ForgedMessage)
    assert refused.value.code == "PERMISSION_DENIED"


@pytest.mark.parametrize("payload", [ALERT, None], ids=["alert", "dummy"])
def test_every_flipped_bit_is_refused(payload: bytes | None) -> None:
    sealed = seal_to_alpha(payload)
    key = private_key(ALPHA.key_pem)
    for bit in range(8 * len(sealed)):
        altered = bytearray(sealed)
        altered[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(SealedMessageRejected):
            open_sealed(key, EPOCH, CHECK, REQUEST, "alpha", bytes(altered), checker="bravo")


def test_the_negated_ephemeral_key_is_refused() -> None:
    # -E gives the same ECDH secret as E; only binding E into the key derivation refuses it.
    sealed = bytearray(seal_to_alpha(ALERT))
    sealed[0] ^= 0x02 ^ 0x03
    with pytest.raises(SealedMessageRejected):
        open_sealed(ALPHA.key_pem, EPOCH, CHECK, REQUEST, "alpha", bytes(sealed), checker="bravo")


@pytest.mark.parametrize("cut", [0, 1, 33, sealed_bytes(1) - 1])
def test_a_sealed_message_of_another_length_is_refused(cut: int) -> None:
    sealed = seal_to_alpha(ALERT)
    for wrong in (sealed[:cut], sealed + b"\0"):
        with pytest.raises(SealedMessageRejected):
            open_sealed(ALPHA.key_pem, EPOCH, CHECK, REQUEST, "alpha", wrong, checker="bravo")


def test_two_seals_of_the_same_payload_differ() -> None:
    for payload in (ALERT, None):
        first, second = seal_to_alpha(payload), seal_to_alpha(payload)
        assert first[:33] != second[:33]  # fresh ephemeral keys
        assert first[33:] != second[33:]


def test_seal_refuses_what_it_cannot_send() -> None:
    with pytest.raises(MalformedWatchData):
        seal_to_alpha(b"\0" * (ALERT_BYTES + 1))
    with pytest.raises(MalformedWatchData):
        seal(ALPHA.cert_pem, EPOCH, CHECK, b"\0" * 31, "alpha", [None], checker="bravo")
    with pytest.raises(MalformedWatchData):
        seal(ALPHA.cert_pem, "", CHECK, REQUEST, "alpha", [None], checker="bravo")
    with pytest.raises(MalformedWatchData):
        seal(ALPHA.cert_pem, EPOCH, CHECK, REQUEST, "alpha", [], checker="bravo")
    other_curve = ec.generate_private_key(ec.SECP384R1()).public_key()
    with pytest.raises(MalformedWatchData):
        seal(other_curve, EPOCH, CHECK, REQUEST, "alpha", [None], checker="bravo")
    with pytest.raises(MalformedWatchData):
        seal(b"not a key", EPOCH, CHECK, REQUEST, "alpha", [None], checker="bravo")


def test_a_batch_opens_in_order_and_a_message_moved_in_it_does_not_open() -> None:
    payloads = [None, ALERT, None, b"\x05", None]
    sealed = seal_to_alpha(*payloads)
    key = private_key(ALPHA.key_pem)
    assert open_sealed(key, EPOCH, CHECK, REQUEST, "alpha", sealed, checker="bravo") == payloads
    # swap messages 1 and 2: each is bound to its place by its nonce
    first, second = 33 + MESSAGE_BYTES, 33 + 2 * MESSAGE_BYTES
    swapped = (
        sealed[:first]
        + sealed[second : second + MESSAGE_BYTES]
        + sealed[first:second]
        + sealed[second + MESSAGE_BYTES :]
    )
    with pytest.raises(SealedMessageRejected):
        open_sealed(key, EPOCH, CHECK, REQUEST, "alpha", swapped, checker="bravo")
    # a batch cut short still opens what is left; the checker's signature over the whole batch
    # (sealed_statement) is what tells the holder, below
    assert sealed_statement(
        EPOCH, CHECK, REQUEST, "alpha", sealed[:-MESSAGE_BYTES], checker="bravo"
    ) != sealed_statement(EPOCH, CHECK, REQUEST, "alpha", sealed, checker="bravo")


def test_the_checker_signs_the_sealed_message_and_its_binding() -> None:
    sealed = seal_to_alpha(ALERT)
    message = sealed_statement(EPOCH, CHECK, REQUEST, "alpha", sealed, checker="bravo")
    signature = Signer(BRAVO.cert_pem, BRAVO.key_pem).sign(message)
    now = datetime.datetime.now(datetime.UTC)
    party = Trust(CA.cert_pem).party(BRAVO.cert_pem, now=now, role="node", names=["bravo"])
    party.verify(message, signature, "a sealed alert")
    variants = [
        sealed_statement("epoch-2", CHECK, REQUEST, "alpha", sealed, checker="bravo"),
        sealed_statement(EPOCH, "check-8", REQUEST, "alpha", sealed, checker="bravo"),
        sealed_statement(EPOCH, CHECK, bytes(32), "alpha", sealed, checker="bravo"),
        sealed_statement(EPOCH, CHECK, REQUEST, "charlie", sealed, checker="bravo"),
        sealed_statement(EPOCH, CHECK, REQUEST, "alpha", sealed, checker="charlie"),
        sealed_statement(EPOCH, CHECK, REQUEST, "alpha", seal_to_alpha(ALERT), checker="bravo"),
    ]
    for other in variants:
        with pytest.raises(ForgedMessage):
            party.verify(other, signature, "a sealed alert")
    with pytest.raises(MalformedWatchData):
        sealed_statement(EPOCH, CHECK, REQUEST, "alpha", sealed[:-1], checker="bravo")


@pytest.mark.parametrize("count", [5, 42, 1000])
def test_small_filters_keep_their_false_positive_rate(count: int) -> None:
    """Double hashing (h1 + i·h2) collapsed on filters of a few hundred bits: a 42-tag filter
    built for 1e-6 answered yes to 2e-4 of absent tags, and a 5-tag one to 5e-3. Expected here:
    one or two in a million."""
    tags = [secrets.token_bytes(16) for _ in range(count)]
    bloom = EpochFilter.build("epoch-1", "bravo", tags, 1e-6)
    assert all(bloom.contains(t) for t in tags)
    absent = bloom.contains_many(secrets.token_bytes(16 * 1_000_000))
    assert int(absent.sum()) <= 20
