"""The group: RFC 9380 hash-to-curve, X25519 blinding, element validation, round keys.

Curve facts are checked with independent pure-Python arithmetic written here (Legendre symbol,
an RFC 7748 Montgomery ladder), not with the code under test.
"""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from blindmatch.core.canon import CANON_VERSION, indicator_message
from blindmatch.core.group import (
    DST,
    ELEMENT_BYTES,
    InvalidElement,
    RoundKey,
    blind,
    blind_packed,
    expand_message_xmd,
    hash_and_blind_packed,
    hash_indicators,
    hash_to_curve_u,
    hash_to_field,
    hash_to_group,
    map_to_curve_elligator2,
    split_elements,
    validate_element,
)

P = 2**255 - 19
A = 486662
L = 2**252 + 27742317777372353535851937790883648493  # order of the prime-order subgroup
BASE_U = 9

RFC_DST = b"QUUX-V01-CS02-with-curve25519_XMD:SHA-512_ELL2_RO_"
Q128 = b"q128_" + b"q" * 128
A512 = b"a512_" + b"a" * 512

# RFC 9380 appendix J.4.1, suite curve25519_XMD:SHA-512_ELL2_RO_:
# msg -> (P.x, u0, u1, Q0.x, Q0.y, Q1.x, Q1.y), big-endian hex as printed in the RFC.
J41 = {
    b"": (
        "2de3780abb67e861289f5749d16d3e217ffa722192d16bbd9d1bfb9d112b98c0",
        "005fe8a7b8fef0a16c105e6cadf5a6740b3365e18692a9c05bfbb4d97f645a6a",
        "1347edbec6a2b5d8c02e058819819bee177077c9d10a4ce165aab0fd0252261a",
        "36b4df0c864c64707cbf6cf36e9ee2c09a6cb93b28313c169be29561bb904f98",
        "6cd59d664fb58c66c892883cd0eb792e52055284dac3907dd756b45d15c3983d",
        "3fa114783a505c0b2b2fbeef0102853c0b494e7757f2a089d0daae7ed9a0db2b",
        "76c0fe7fec932aaafb8eefb42d9cbb32eb931158f469ff3050af15cfdbbeff94",
    ),
    b"abc": (
        "2b4419f1f2d48f5872de692b0aca72cc7b0a60915dd70bde432e826b6abc526d",
        "49bed021c7a3748f09fa8cdfcac044089f7829d3531066ac9e74e0994e05bc7d",
        "5c36525b663e63389d886105cee7ed712325d5a97e60e140aba7e2ce5ae851b6",
        "16b3d86e056b7970fa00165f6f48d90b619ad618791661b7b5e1ec78be10eac1",
        "4ab256422d84c5120b278cbdfc4e1facc5baadffeccecf8ee9bf3946106d50ca",
        "7ec29ddbf34539c40adfa98fcb39ec36368f47f30e8f888cc7e86f4d46e0c264",
        "10d1abc1cae2d34c06e247f2141ba897657fb39f1080d54f09ce0af128067c74",
    ),
    b"abcdef0123456789": (
        "68ca1ea5a6acf4e9956daa101709b1eee6c1bb0df1de3b90d4602382a104c036",
        "6412b7485ba26d3d1b6c290a8e1435b2959f03721874939b21782df17323d160",
        "24c7b46c1c6d9a21d32f5707be1380ab82db1054fde82865d5c9e3d968f287b2",
        "71de3dadfe268872326c35ac512164850860567aea0e7325e6b91a98f86533ad",
        "26a08b6e9a18084c56f2147bf515414b9b63f1522e1b6c5649f7d4b0324296ec",
        "5704069021f61e41779e2ba6b932268316d6d2a6f064f997a22fef16d1eaeaca",
        "50483c7540f64fb4497619c050f2c7fe55454ec0f0e79870bb44302e34232210",
    ),
    Q128: (
        "096e9c8bae6c06b554c1ee69383bb0e82267e064236b3a30608d4ed20b73ac5a",
        "5e123990f11bbb5586613ffabdb58d47f64bb5f2fa115f8ea8df0188e0c9e1b5",
        "5e8553eb00438a0bb1e7faa59dec6d8087f9c8011e5fb8ed9df31cb6c0d4ac19",
        "7a94d45a198fb5daa381f45f2619ab279744efdd8bd8ed587fc5b65d6cea1df0",
        "67d44f85d376e64bb7d713585230cdbfafc8e2676f7568e0b6ee59361116a6e1",
        "30506fb7a32136694abd61b6113770270debe593027a968a01f271e146e60c18",
        "7eeee0e706b40c6b5174e551426a67f975ad5a977ee2f01e8e20a6d612458c3b",
    ),
    A512: (
        "1bc61845a138e912f047b5e70ba9606ba2a447a4dade024c8ef3dd42b7bbc5fe",
        "20f481e85da7a3bf60ac0fb11ed1d0558fc6f941b3ac5469aa8b56ec883d6d7d",
        "017d57fd257e9a78913999a23b52ca988157a81b09c5442501d07fed20869465",
        "02d606e2699b918ee36f2818f2bc5013e437e673c9f9b9cdc15fd0c5ee913970",
        "29e9dc92297231ef211245db9e31767996c5625dfbf92e1c8107ef887365de1e",
        "38920e9b988d1ab7449c0fa9a6058192c0c797bb3d42ac345724341a1aa98745",
        "24dcc1be7c4d591d307e89049fd2ed30aae8911245a9d8554bf6032e5aa40d3d",
    ),
}

# RFC 9380 appendix K.3, expand_message_xmd(SHA-512): (msg, len_in_bytes) -> uniform_bytes.
XMD_DST = b"QUUX-V01-CS02-with-expander-SHA512-256"
K3 = {
    (b"", 32): "6b9a7312411d92f921c6f68ca0b6380730a1a4d982c507211a90964c394179ba",
    (b"abc", 32): "0da749f12fbe5483eb066a5f595055679b976e93abe9be6f0f6318bce7aca8dc",
    (b"abcdef0123456789", 32): "087e45a86e2939ee8b91100af1583c4938e0f5fc6c9db4b107b83346bc967f58",
    (Q128, 32): "7336234ee9983902440f6bc35b348352013becd88938d2afec44311caf8356b3",
    (A512, 32): "57b5f7e766d5be68a6bfe1768e3c2b7f1228b3e4b3134956dd73a59b954c66f4",
    (b"", 128): "41b037d1734a5f8df225dd8c7de38f851efdb45c372887be655212d07251b921"
    "b052b62eaed99b46f72f2ef4cc96bfaf254ebbbec091e1a3b9e4fb5e5b619d2e"
    "0c5414800a1d882b62bb5cd1778f098b8eb6cb399d5d9d18f5d5842cf5d13d7e"
    "b00a7cff859b605da678b318bd0e65ebff70bec88c753b159a805d2c89c55961",
    (b"abc", 128): "7f1dddd13c08b543f2e2037b14cefb255b44c83cc397c1786d975653e36a6b11"
    "bdd7732d8b38adb4a0edc26a0cef4bb45217135456e58fbca1703cd6032cb134"
    "7ee720b87972d63fbf232587043ed2901bce7f22610c0419751c065922b48843"
    "1851041310ad659e4b23520e1772ab29dcdeb2002222a363f0c2b1c972b3efe1",
    (b"abcdef0123456789", 128): "3f721f208e6199fe903545abc26c837ce59ac6fa45733f1baaf0222f8b7acb04"
    "24814fcb5eecf6c1d38f06e9d0a6ccfbf85ae612ab8735dfdf9ce84c372a77c8"
    "f9e1c1e952c3a61b7567dd0693016af51d2745822663d0c2367e3f4f0bed827f"
    "eecc2aaf98c949b5ed0d35c3f1023d64ad1407924288d366ea159f46287e61ac",
    (Q128, 128): "b799b045a58c8d2b4334cf54b78260b45eec544f9f2fb5bd12fb603eaee70db7"
    "317bf807c406e26373922b7b8920fa29142703dd52bdf280084fb7ef69da78af"
    "df80b3586395b433dc66cde048a258e476a561e9deba7060af40adf30c64249c"
    "a7ddea79806ee5beb9a1422949471d267b21bc88e688e4014087a0b592b695ed",
    (A512, 128): "05b0bfef265dcee87654372777b7c44177e2ae4c13a27f103340d9cd11c86cb2"
    "426ffcad5bd964080c2aee97f03be1ca18e30a1f14e27bc11ebbd650f305269c"
    "c9fb1db08bf90bfc79b42a952b46daf810359e7bc36452684784a64952c343c5"
    "2e5124cd1f71d474d5197fefc571a92929c9084ffe1112cf5eea5192ebff330b",
}

# u-coordinates of the points of order 1, 2, 4 and 8 on the curve and its twist: every one makes
# X25519 output all zeros, whatever the key.
LOW_ORDER_U = (
    0,
    1,
    325606250916557431795983626356110631294008115727848805560023387167927233504,
    39382357235489614581723060781553021112529911719440698176882885853963445705823,
    P - 1,
)
# Encodings of values >= p: p and p+1 alias 0 and 1, the rest have the top bit set.
NON_CANONICAL_U = (P, P + 1, P + 18, 2**255, 2**255 + BASE_U, 2**256 - 1)


def enc(u: int) -> bytes:
    return u.to_bytes(32, "little")


def dec(element: bytes) -> int:
    return int.from_bytes(element, "little")


def on_curve(u: int) -> bool:
    """u^3 + A u^2 + u is a square mod p (Euler's criterion): u is on the curve, not the twist."""
    rhs = (u * u * u + A * u * u + u) % P
    return rhs == 0 or pow(rhs, (P - 1) // 2, P) == 1


def ladder(k: int, u: int) -> tuple[int, int]:
    """x-only [k]P as projective (X, Z), RFC 7748 section 5; Z == 0 is the identity."""
    x1, x2, z2, x3, z3, swap = u, 1, 0, u, 1, 0
    for t in reversed(range(k.bit_length())):
        bit = (k >> t) & 1
        if swap ^ bit:
            x2, x3, z2, z3 = x3, x2, z3, z2
        swap = bit
        a, b = x2 + z2, x2 - z2
        aa, bb = a * a % P, b * b % P
        e = aa - bb
        c, d = x3 + z3, x3 - z3
        da, cb = d * a % P, c * b % P
        x3, z3 = (da + cb) ** 2 % P, x1 * (da - cb) ** 2 % P
        x2, z2 = aa * bb % P, e * (aa + 121665 * e) % P
    if swap:
        x2, z2 = x3, z3
    return x2, z2


def x25519_reference(scalar: bytes, u: int) -> int:
    k = int.from_bytes(scalar, "little")
    k = (k & ~7 & ((1 << 255) - 1)) | (1 << 254)  # clamping, RFC 7748 decodeScalar25519
    x, z = ladder(k, u)
    return x * pow(z, P - 2, P) % P


def in_prime_order_subgroup(u: int) -> bool:
    if u == 0 or not on_curve(u):  # (0, 0) has order 2; the x-only ladder cannot handle it
        return False
    return ladder(L, u)[1] == 0


# --- RFC 9380 vectors ---------------------------------------------------------------------------


@pytest.mark.parametrize(("msg", "length"), list(K3))
def test_expand_message_xmd_matches_rfc9380_k3(msg: bytes, length: int) -> None:
    assert expand_message_xmd(msg, XMD_DST, length).hex() == K3[(msg, length)]


def test_expand_message_xmd_refuses_what_the_rfc_forbids() -> None:
    with pytest.raises(ValueError, match="DST"):
        expand_message_xmd(b"", b"x" * 256, 32)
    with pytest.raises(ValueError, match="too long"):
        expand_message_xmd(b"", XMD_DST, 64 * 255 + 1)
    assert len(expand_message_xmd(b"", XMD_DST, 64 * 255)) == 64 * 255


@pytest.mark.parametrize("msg", list(J41), ids=lambda m: m[:16].decode() or "empty")
def test_hash_to_field_matches_rfc9380_j41(msg: bytes) -> None:
    _, u0, u1, *_ = J41[msg]
    assert hash_to_field(msg, RFC_DST) == (int(u0, 16), int(u1, 16))


@pytest.mark.parametrize("msg", list(J41), ids=lambda m: m[:16].decode() or "empty")
def test_elligator2_matches_rfc9380_j41(msg: bytes) -> None:
    _, u0, u1, q0x, q0y, q1x, q1y = J41[msg]
    assert map_to_curve_elligator2(int(u0, 16)) == (int(q0x, 16), int(q0y, 16))
    assert map_to_curve_elligator2(int(u1, 16)) == (int(q1x, 16), int(q1y, 16))


@pytest.mark.parametrize("msg", list(J41), ids=lambda m: m[:16].decode() or "empty")
def test_hash_to_curve_matches_rfc9380_j41(msg: bytes) -> None:
    assert hash_to_curve_u(msg, RFC_DST) == int(J41[msg][0], 16)


def test_the_dst_names_protocol_and_canonicalisation_versions() -> None:
    assert f"blindmatch-v1-{CANON_VERSION}-with-curve25519_XMD:SHA-512_ELL2_RO_".encode() == DST
    assert hash_to_curve_u(b"abc") != hash_to_curve_u(b"abc", RFC_DST)


# --- outputs are in the prime-order subgroup ---------------------------------------------------


def test_reference_checks_can_fail() -> None:
    # Elligator 2 outputs before cofactor clearing carry a torsion component here; the base
    # point does not. Without this, a subgroup check that always said yes would go unnoticed.
    q0x = int(J41[b""][3], 16)
    assert on_curve(q0x)
    assert not in_prime_order_subgroup(q0x)
    assert in_prime_order_subgroup(BASE_U)
    assert not on_curve(2)  # u = 2 is on the twist


@settings(max_examples=40, deadline=None)
@given(st.binary(max_size=200))
def test_hash_to_curve_lands_in_the_prime_order_subgroup(msg: bytes) -> None:
    u = hash_to_curve_u(msg)
    assert 0 < u < P
    assert in_prime_order_subgroup(u)


@pytest.mark.parametrize("msg", list(J41), ids=lambda m: m[:16].decode() or "empty")
def test_rfc_outputs_are_in_the_prime_order_subgroup(msg: bytes) -> None:
    assert in_prime_order_subgroup(int(J41[msg][0], 16))


# --- hash_to_group and domain separation --------------------------------------------------------


def test_hash_to_group_is_the_little_endian_u_of_the_indicator_message() -> None:
    element = hash_to_group("domain", "example.org")
    assert len(element) == ELEMENT_BYTES
    assert element == enc(hash_to_curve_u(b"domain\x00example.org"))
    assert indicator_message("domain", "exämple") == "domain\x00exämple".encode()


def test_hash_indicators_is_the_batch_form() -> None:
    items = [("domain", "example.org"), ("ipv4", "192.0.2.1"), ("domain", "example.org")]
    out = hash_indicators(items)
    assert out == [hash_to_group(k, v) for k, v in items]
    assert out[0] == out[2] != out[1]
    assert hash_indicators([]) == []


def test_domain_separation() -> None:
    same_value = {hash_to_group(kind, "abc") for kind in ("domain", "url", "email", "md5")}
    assert len(same_value) == 4
    # The NUL separator keeps (kind, value) pairs apart that a plain concatenation would merge.
    assert hash_to_group("ab", "c") != hash_to_group("a", "bc")
    msg = indicator_message("domain", "example.org")
    other_dst = b"blindmatch-v1-canon-v999-with-curve25519_XMD:SHA-512_ELL2_RO_"
    assert hash_to_curve_u(msg) != hash_to_curve_u(msg, other_dst)


# --- blinding ------------------------------------------------------------------------------------


def test_blinding_matches_rfc7748_x25519_vector() -> None:
    scalar = bytes.fromhex("a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4")
    u = bytes.fromhex("e6db6867583030db3594c1a424b15f7c726624ec26b3353b10a903a6d0ab1c4c")
    want = "c3da55379de9c6908e94ea4df28d084f32eccf03491c71f754b4075577a28552"
    assert RoundKey.from_bytes(scalar).blind([u])[0].hex() == want
    assert enc(x25519_reference(scalar, dec(u))).hex() == want


@settings(max_examples=25, deadline=None)
@given(
    keys=st.lists(st.binary(min_size=32, max_size=32), min_size=2, max_size=6),
    values=st.lists(st.text(max_size=20), min_size=1, max_size=4),
    data=st.data(),
)
def test_blinding_commutes_in_any_order(
    keys: list[bytes], values: list[str], data: st.DataObject
) -> None:
    elements = hash_indicators([("domain", v) for v in values])
    reference = elements
    for k in keys:
        reference = RoundKey.from_bytes(k).blind(reference)
    order = data.draw(st.permutations(keys))
    shuffled = elements
    for k in order:
        shuffled = RoundKey.from_bytes(k).blind(shuffled)
    assert shuffled == reference
    for element, tag in zip(elements, reference, strict=True):
        assert in_prime_order_subgroup(dec(tag))
        # A fully blinded tag is never what a single key alone would give.
        assert all(tag != RoundKey.from_bytes(k).blind([element])[0] for k in keys)


def test_blinding_agrees_with_the_reference_ladder() -> None:
    key = RoundKey.generate()
    scalar = key.export()
    elements = hash_indicators([("ipv4", f"192.0.2.{i}") for i in range(5)])
    blinded = key.blind(elements)
    assert blinded == [enc(x25519_reference(scalar, dec(e))) for e in elements]
    assert blind(scalar, elements) == blinded  # the worker-process entry point


def test_packed_forms_are_the_wire_form_of_the_list_forms() -> None:
    key = RoundKey.generate()
    items = [("domain", f"host{i}.example") for i in range(4)]
    elements = hash_indicators(items)
    packed = b"".join(elements)
    assert split_elements(packed) == elements
    assert split_elements(b"") == []
    assert blind_packed(key.export(), packed) == b"".join(key.blind(elements))
    assert hash_and_blind_packed(key.export(), items) == b"".join(key.blind(elements))
    with pytest.raises(InvalidElement, match="chunk of 65 bytes is not a whole number"):
        split_elements(packed[:65])
    with pytest.raises(InvalidElement, match="element 1: low-order point"):
        blind_packed(key.export(), packed[:32] + bytes(32))


def test_blinding_keeps_order_and_length() -> None:
    key = RoundKey.generate()
    elements = hash_indicators([("md5", f"{i:032x}") for i in range(20)])
    out = key.blind(elements)
    assert len(out) == 20
    assert [key.blind([e])[0] for e in elements] == out
    assert key.blind([]) == []


def test_fresh_keys_differ() -> None:
    element = hash_to_group("domain", "example.org")
    tags = {RoundKey.generate().blind([element])[0] for _ in range(8)}
    assert len(tags) == 8


# --- validation ------------------------------------------------------------------------------------


@pytest.mark.parametrize("length", [0, 1, 31, 33, 64])
def test_wrong_length_is_refused(length: int) -> None:
    with pytest.raises(InvalidElement, match=f"{length} bytes; expected 32"):
        validate_element(bytes(length))
    good = hash_to_group("domain", "example.org")
    with pytest.raises(InvalidElement, match=f"element 1: element is {length} bytes"):
        RoundKey.generate().blind([good, bytes(length)])


@pytest.mark.parametrize("u", LOW_ORDER_U, ids=lambda u: hex(u)[:10])
def test_low_order_points_are_refused(u: int) -> None:
    good = hash_to_group("domain", "example.org")
    with pytest.raises(InvalidElement, match="element 2: low-order point"):
        RoundKey.generate().blind([good, good, enc(u)])


def test_all_zero_element_is_refused() -> None:
    with pytest.raises(InvalidElement, match="element 0: low-order point"):
        RoundKey.generate().blind([bytes(32)])


@pytest.mark.parametrize("u", NON_CANONICAL_U, ids=lambda u: hex(u)[:12])
def test_non_canonical_encodings_are_refused(u: int) -> None:
    with pytest.raises(InvalidElement, match="not a canonical u-coordinate"):
        validate_element(enc(u))
    with pytest.raises(InvalidElement, match="element 0: element is not a canonical"):
        RoundKey.generate().blind([enc(u)])


def test_largest_canonical_encoding_is_accepted() -> None:
    first, second = RoundKey.generate(), RoundKey.generate()
    for u in (P - 2, BASE_U):
        element = enc(u)
        validate_element(element)
        (once,) = first.blind([element])
        assert len(once) == 32 and dec(once) < P  # blinding gives a canonical element again
        # the element takes part in matching: blinding it under two keys commutes
        assert second.blind(first.blind([element])) == first.blind(second.blind([element]))
    # the base point is taken as given: blinding it yields the key's X25519 public value
    public = X25519PrivateKey.from_private_bytes(first.export()).public_key().public_bytes_raw()
    assert first.blind([enc(BASE_U)]) == [public]


# --- round keys ------------------------------------------------------------------------------------


def test_destroyed_key_is_unusable() -> None:
    key = RoundKey.generate()
    element = hash_to_group("domain", "example.org")
    key.blind([element])
    assert not key.destroyed
    key.destroy()
    assert key.destroyed
    with pytest.raises(RuntimeError, match="after destroy"):
        key.blind([element])
    with pytest.raises(RuntimeError, match="after destroy"):
        key.export()
    key.destroy()  # idempotent
    assert repr(key) == "RoundKey(<destroyed>)"


def test_repr_shows_no_secret() -> None:
    key = RoundKey.generate()
    raw = key.export()
    text = repr(key) + str(key) + f"{key!r}"
    assert text == "RoundKey(<secret>)" * 3
    for encoding in (raw.hex(), raw.hex().upper(), repr(raw), str(int.from_bytes(raw, "little"))):
        assert encoding not in text
    assert not hasattr(key, "__dict__")  # no stray attribute can carry the scalar


def test_export_round_trips() -> None:
    key = RoundKey.generate()
    again = RoundKey.from_bytes(key.export())
    element = hash_to_group("url", "https://example.org/")
    assert again.blind([element]) == key.blind([element])


def test_low_order_values_really_are_low_order() -> None:
    for u in LOW_ORDER_U[1:]:
        assert ladder(8, u)[1] == 0, hex(u)  # [8]P is the identity
    assert [on_curve(u) for u in LOW_ORDER_U] == [True, True, True, True, False]


def test_hash_and_blind_without_an_equivalent_scalar() -> None:
    """Keys whose reduced scalar has no cofactor-clearing twin take the plain hash-then-blind path."""
    from blindmatch.core.group import ORDER, cofactor_clearing_key

    k = 2**254 + 8 * -(-3 * (ORDER - 2**252) // 8)  # k mod ORDER lands in [2^252, ORDER)
    raw = k.to_bytes(32, "little")
    assert cofactor_clearing_key(raw) is None
    items = [("domain", f"h{i}.example") for i in range(20)]
    assert hash_and_blind_packed(raw, items) == blind_packed(raw, b"".join(hash_indicators(items)))


@settings(max_examples=25, deadline=None)
@given(st.binary(min_size=32, max_size=32), st.lists(st.text(min_size=1, max_size=20), max_size=8))
def test_hash_and_blind_equals_blind_of_hash(raw: bytes, values: list[str]) -> None:
    items = [("domain", v) for v in values]
    assert hash_and_blind_packed(raw, items) == blind_packed(raw, b"".join(hash_indicators(items)))


def test_a_mask_is_removed_after_any_other_keys() -> None:
    from blindmatch.core.group import Mask

    elements = hash_indicators([("domain", f"m{i}.example") for i in range(16)])
    partners = [RoundKey.generate() for _ in range(3)]
    for _ in range(8):  # fresh masks take both candidate branches of the inverse
        mask = Mask.generate()
        masked = mask.apply.blind(elements)
        assert not set(masked) & set(elements)
        plain, through = list(elements), masked
        for key in partners:
            plain, through = key.blind(plain), key.blind(through)
        assert mask.remove.blind(through) == plain


def test_two_masks_of_one_value_look_unrelated() -> None:
    from blindmatch.core.group import Mask

    element = hash_to_group("ipv4", "203.0.113.7")
    first, second = Mask.generate(), Mask.generate()
    assert first.apply.blind([element]) != second.apply.blind([element])
