"""Protocol v2's group: secp256k1 encodings and scalars, and RFC 9380 hashing to it.

The vectors are RFC 9380 appendices J.8.1 (secp256k1_XMD:SHA-256_SSWU_RO_) and K.1
(expand_message_xmd with SHA-256), as the CFRG draft's repository publishes them in
poc/vectors/. Curve facts are checked with pure-Python arithmetic written here, not with the code
under test.
"""

from __future__ import annotations

import copy
import gc
import pickle

import pytest
from coincurve import PublicKey
from hypothesis import given, settings
from hypothesis import strategies as st

from blindmatch.core.errors import WrongPhase
from blindmatch.core.secp256k1 import (
    ORDER,
    POINT_BYTES,
    InvalidPoint,
    InvalidScalar,
    SecretScalar,
    add,
    base_mul,
    batch_inverse,
    check_scalar,
    expand_message_xmd,
    hash_to_curve,
    hash_to_field,
    hash_to_scalar,
    inverse,
    map_to_curve,
    mul,
    point_from_bytes,
    point_to_bytes,
    points_from_bytes,
    random_scalar,
    response,
    scalar_from_bytes,
    scalar_to_bytes,
)

P = 2**256 - 2**32 - 977
G_X = 0x79BE667EF9DCBBAC55A06295CE870B07029BFCDB2DCE28D959F2815B16F81798
G_Y = 0x483ADA7726A3C4655DA4FBFC0E1108A8FD17B448A68554199C47D08FFB10D4B8
# E' and the isogeny's x denominator, RFC 9380 section 8.7 and appendix E.1.
ISO_A = 0x3F8731ABDD661ADCA08A5558F0F5D272E953D363CB6F0E5D405447C01A444533
ISO_B = 1771
K20 = 0xD35771193D94918A9CA34CCBB7B640DD86CD409542F8487D9FE6B745781EB49B
K21 = 0xEDADC6F64383DC1DF7C4B2D51B54225406D36B641F5E41BBC52A56612A8C6D14
K40 = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEFFFFF93B
K41 = 0x7A06534BB8BDB49FD5E9E6632722C2989467C1BFC8E8D978DFB425D2685C2573
K42 = 0x6484AA716545CA2CF3A70C3FA8FE337E0A3D21162F0D6299A7BF8192BFD2A76F

H2C_DST = b"QUUX-V01-CS02-with-secp256k1_XMD:SHA-256_SSWU_RO_"
XMD_DST = b"QUUX-V01-CS02-with-expander-SHA256-128"
XMD_LONG_DST = b"QUUX-V01-CS02-with-expander-SHA256-128-long-DST-" + b"1" * 208
Q128 = b"q128_" + b"q" * 128
A512 = b"a512_" + b"a" * 512


def on_curve(x: int, y: int) -> bool:
    return (y * y - x**3 - 7) % P == 0


def is_square(a: int) -> bool:
    return pow(a, (P - 1) // 2, P) == 1


def uncompressed(x: int, y: int, prefix: int = 0x04) -> bytes:
    return bytes([prefix]) + x.to_bytes(32, "big") + y.to_bytes(32, "big")


def affine(point: PublicKey) -> tuple[int, int]:
    data = point_to_bytes(point)
    return int.from_bytes(data[1:33], "big"), int.from_bytes(data[33:], "big")


# --- RFC 9380 appendix J.8.1 --------------------------------------------------------------------

H2C_VECTORS = [
    pytest.param(
        b"",
        0x6B0F9910DD2BA71C78F2EE9F04D73B5F4C5F7FC773A701ABEA1E573CAB002FB3,
        0x1AE6C212E08FE1A5937F6202F929A2CC8EF4EE5B9782DB68B0D5799FD8F09E16,
        0x74519EF88B32B425A095E4EBCC84D81B64E9E2C2675340A720BB1A1857B99F1E,
        0xC174FA322AB7C192E11748BEED45B508E9FDB1CE046DEE9C2CD3A2A86B410936,
        0x44548ADB1B399263DED3510554D28B4BEAD34B8CF9A37B4BD0BD2BA4DB87AE63,
        0x96EB8E2FAF05E368EFE5957C6167001760233E6DD2487516B46AE725C4CCE0C6,
        0xC1CAE290E291AEE617EBAEF1BE6D73861479C48B841EABA9B7B5852DDFEB1346,
        0x64FA678E07AE116126F08B022A94AF6DE15985C996C3A91B64C406A960E51067,
        id="empty",
    ),
    pytest.param(
        b"abc",
        0x128AAB5D3679A1F7601E3BDF94CED1F43E491F544767E18A4873F397B08A2B61,
        0x5897B65DA3B595A813D0FDCC75C895DC531BE76A03518B044DAAA0F2E4689E00,
        0x07DD9432D426845FB19857D1B3A91722436604CCBBBADAD8523B8FC38A5322D7,
        0x604588EF5138CFFE3277BBD590B8550BCBE0E523BBAF1BED4014A467122EB33F,
        0xE9EF9794D15D4E77DDE751E06C182782046B8DAC05F8491EB88764FC65321F78,
        0xCB07CE53670D5314BF236EE2C871455C562DD76314AA41F012919FE8E7F717B3,
        0x3377E01EAB42DB296B512293120C6CEE72B6ECF9F9205760BD9FF11FB3CB2C4B,
        0x7F95890F33EFEBD1044D382A01B1BEE0900FB6116F94688D487C6C7B9C8371F6,
        id="abc",
    ),
    pytest.param(
        b"abcdef0123456789",
        0xEA67A7C02F2CD5D8B87715C169D055A22520F74DAEB080E6180958380E2F98B9,
        0x7434D0D1A500D38380D1F9615C021857AC8D546925F5F2355319D823A478DA18,
        0x576D43AB0260275ADF11AF990D130A5752704F79478628761720808862544B5D,
        0x643C4A7FB68AE6CFF55EDD66B809087434BBAFF0C07F3F9EC4D49BB3C16623C3,
        0xF89D6D261A5E00FE5CF45E827B507643E67C2A947A20FD9AD71039F8B0E29FF8,
        0xB33855E0CC34A9176EAD91C6C3ACB1AACB1CE936D563BC1CEE1DCFFC806CAF57,
        0xBAC54083F293F1FE08E4A70137260AA90783A5CB84D3F35848B324D0674B0E3A,
        0x4436476085D4C3C4508B60FCF4389C40176ADCE756B398BDEE27BCA19758D828,
        id="abcdef0123456789",
    ),
    pytest.param(
        Q128,
        0xEDA89A5024FAC0A8207A87E8CC4E85AA3BCE10745D501A30DEB87341B05BCDF5,
        0xDFE78CD116818FC2C16F3837FEDBE2639FAB012C407EAC9DFE9245BF650AC51D,
        0x9C91513CCFE9520C9C645588DFF5F9B4E92EAF6AD4AB6F1CD720D192EB58247A,
        0xC7371DCD0134412F221E386F8D68F49E7FA36F9037676E163D4A063FBF8A1FB8,
        0x10FEE3284D7BE6BD5912503B972FC52BF4761F47141A0015F1C6AE36848D869B,
        0x0B163D9B4BF21887364332BE3EFF3C870FA053CF508732900FC69A6EB0E1B672,
        0xE2167BC785333A37AA562F021F1E881DEFB853839BABF52A7F72B102E41890E9,
        0xF2401DD95CC35867FFED4F367CD564763719FBC6A53E969FB8496A1E6685D873,
        id="q128_qqqqqqqqqqq",
    ),
    pytest.param(
        A512,
        0x8D862E7E7E23D7843FE16D811D46D7E6480127A6B78838C277BCA17DF6900E9F,
        0x68071D2530F040F081BA818D3C7188A94C900586761E9115EFA47AE9BD847938,
        0xB32B0AB55977B936F1E93FDC68CEC775E13245E161DBFE556BBB1F72799B4181,
        0x2F5317098360B722F132D7156A94822641B615C91F8663BE69169870A12AF9E8,
        0x148F98780F19388B9FA93E7DC567B5A673E5FCA7079CD9CDAFD71982EC4C5E12,
        0x3989645D83A433BC0C001F3DAC29AF861F33A6FD1E04F4B36873F5BFF497298A,
        0xE3C8D35AAAF0B9B647E88A0A0A7EE5D5BED5AD38238152E4E6FD8C1F8CB7C998,
        0x8446EEB6181BF12F56A9D24E262221CC2F0C4725C7E3803024B5888EE5823AA6,
        id="a512_aaaaaaaaaaa",
    ),
]


@pytest.mark.parametrize(("msg", "u0", "u1", "q0x", "q0y", "q1x", "q1y", "px", "py"), H2C_VECTORS)
def test_hash_to_curve_matches_rfc_9380_j_8_1(
    msg: bytes, u0: int, u1: int, q0x: int, q0y: int, q1x: int, q1y: int, px: int, py: int
) -> None:
    assert hash_to_field(msg, H2C_DST) == (u0, u1)
    assert map_to_curve(u0) == (q0x, q0y)
    assert map_to_curve(u1) == (q1x, q1y)
    assert affine(hash_to_curve(msg, H2C_DST)) == (px, py)


# --- RFC 9380 appendix K.1 ----------------------------------------------------------------------

XMD_VECTORS = [
    (b"", 32, "68a985b87eb6b46952128911f2a4412bbc302a9d759667f87f7a21d803f07235"),
    (b"abc", 32, "d8ccab23b5985ccea865c6c97b6e5b8350e794e603b4b97902f53a8a0d605615"),
    (b"abcdef0123456789", 32, "eff31487c770a893cfb36f912fbfcbff40d5661771ca4b2cb4eafe524333f5c1"),
    (Q128, 32, "b23a1d2b4d97b2ef7785562a7e8bac7eed54ed6e97e29aa51bfe3f12ddad1ff9"),
    (A512, 32, "4623227bcc01293b8c130bf771da8c298dede7383243dc0993d2d94823958c4c"),
    (
        b"",
        128,
        "af84c27ccfd45d41914fdff5df25293e221afc53d8ad2ac06d5e3e29485dadbe"
        "e0d121587713a3e0dd4d5e69e93eb7cd4f5df4cd103e188cf60cb02edc3edf18"
        "eda8576c412b18ffb658e3dd6ec849469b979d444cf7b26911a08e63cf31f9dc"
        "c541708d3491184472c2c29bb749d4286b004ceb5ee6b9a7fa5b646c993f0ced",
    ),
    (
        b"abc",
        128,
        "abba86a6129e366fc877aab32fc4ffc70120d8996c88aee2fe4b32d6c7b6437a"
        "647e6c3163d40b76a73cf6a5674ef1d890f95b664ee0afa5359a5c4e07985635"
        "bbecbac65d747d3d2da7ec2b8221b17b0ca9dc8a1ac1c07ea6a1e60583e2cb00"
        "058e77b7b72a298425cd1b941ad4ec65e8afc50303a22c0f99b0509b4c895f40",
    ),
    (
        b"abcdef0123456789",
        128,
        "ef904a29bffc4cf9ee82832451c946ac3c8f8058ae97d8d629831a74c6572bd9"
        "ebd0df635cd1f208e2038e760c4994984ce73f0d55ea9f22af83ba4734569d4b"
        "c95e18350f740c07eef653cbb9f87910d833751825f0ebefa1abe5420bb52be1"
        "4cf489b37fe1a72f7de2d10be453b2c9d9eb20c7e3f6edc5a60629178d9478df",
    ),
    (
        Q128,
        128,
        "80be107d0884f0d881bb460322f0443d38bd222db8bd0b0a5312a6fedb49c1bb"
        "d88fd75d8b9a09486c60123dfa1d73c1cc3169761b17476d3c6b7cbbd727acd0"
        "e2c942f4dd96ae3da5de368d26b32286e32de7e5a8cb2949f866a0b80c58116b"
        "29fa7fabb3ea7d520ee603e0c25bcaf0b9a5e92ec6a1fe4e0391d1cdbce8c68a",
    ),
    (
        A512,
        128,
        "546aff5444b5b79aa6148bd81728704c32decb73a3ba76e9e75885cad9def1d0"
        "6d6792f8a7d12794e90efed817d96920d728896a4510864370c207f99bd4a608"
        "ea121700ef01ed879745ee3e4ceef777eda6d9e5e38b90c86ea6fb0b36504ba4"
        "a45d22e86f6db5dd43d98a294bebb9125d5b794e9d2a81181066eb954966a487",
    ),
]

XMD_LONG_DST_VECTORS = [
    (b"", 32, "e8dc0c8b686b7ef2074086fbdd2f30e3f8bfbd3bdf177f73f04b97ce618a3ed3"),
    (b"abc", 32, "52dbf4f36cf560fca57dedec2ad924ee9c266341d8f3d6afe5171733b16bbb12"),
    (b"abcdef0123456789", 32, "35387dcf22618f3728e6c686490f8b431f76550b0b2c61cbc1ce7001536f4521"),
    (Q128, 32, "01b637612bb18e840028be900a833a74414140dde0c4754c198532c3a0ba42bc"),
    (A512, 32, "20cce7033cabc5460743180be6fa8aac5a103f56d481cf369a8accc0c374431b"),
    (
        b"",
        128,
        "14604d85432c68b757e485c8894db3117992fc57e0e136f71ad987f789a0abc2"
        "87c47876978e2388a02af86b1e8d1342e5ce4f7aaa07a87321e691f6fba7e007"
        "2eecc1218aebb89fb14a0662322d5edbd873f0eb35260145cd4e64f748c5dfe6"
        "0567e126604bcab1a3ee2dc0778102ae8a5cfd1429ebc0fa6bf1a53c36f55dfc",
    ),
    (
        b"abc",
        128,
        "1a30a5e36fbdb87077552b9d18b9f0aee16e80181d5b951d0471d55b66684914"
        "aef87dbb3626eaabf5ded8cd0686567e503853e5c84c259ba0efc37f71c839da"
        "2129fe81afdaec7fbdc0ccd4c794727a17c0d20ff0ea55e1389d6982d1241cb8"
        "d165762dbc39fb0cee4474d2cbbd468a835ae5b2f20e4f959f56ab24cd6fe267",
    ),
    (
        b"abcdef0123456789",
        128,
        "d2ecef3635d2397f34a9f86438d772db19ffe9924e28a1caf6f1c8f15603d402"
        "8f40891044e5c7e39ebb9b31339979ff33a4249206f67d4a1e7c765410bcd249"
        "ad78d407e303675918f20f26ce6d7027ed3774512ef5b00d816e51bfcc96c353"
        "9601fa48ef1c07e494bdc37054ba96ecb9dbd666417e3de289d4f424f502a982",
    ),
    (
        Q128,
        128,
        "ed6e8c036df90111410431431a232d41a32c86e296c05d426e5f44e75b9a50d3"
        "35b2412bc6c91e0a6dc131de09c43110d9180d0a70f0d6289cb4e43b05f7ee5e"
        "9b3f42a1fad0f31bac6a625b3b5c50e3a83316783b649e5ecc9d3b1d9471cb50"
        "24b7ccf40d41d1751a04ca0356548bc6e703fca02ab521b505e8e45600508d32",
    ),
    (
        A512,
        128,
        "78b53f2413f3c688f07732c10e5ced29a17c6a16f717179ffbe38d92d6c9ec29"
        "6502eb9889af83a1928cd162e845b0d3c5424e83280fed3d10cffb2f8431f14e"
        "7a23f4c68819d40617589e4c41169d0b56e0e3535be1fd71fbb08bb70c5b5ffe"
        "d953d6c14bf7618b35fc1f4c4b30538236b4b08c9fbf90462447a8ada60be495",
    ),
]


@pytest.mark.parametrize(("msg", "length", "expected"), XMD_VECTORS)
def test_expand_message_xmd_matches_rfc_9380_k_1(msg: bytes, length: int, expected: str) -> None:
    assert expand_message_xmd(msg, XMD_DST, length).hex() == expected


@pytest.mark.parametrize(("msg", "length", "expected"), XMD_LONG_DST_VECTORS)
def test_expand_message_xmd_hashes_a_dst_over_255_bytes(
    msg: bytes, length: int, expected: str
) -> None:
    assert len(XMD_LONG_DST) == 256
    assert expand_message_xmd(msg, XMD_LONG_DST, length).hex() == expected


def test_expand_message_xmd_refuses_lengths_out_of_range() -> None:
    assert len(expand_message_xmd(b"m", XMD_DST, 255 * 32)) == 8160
    assert expand_message_xmd(b"m", XMD_DST, 0) == b""
    for length in (-1, 255 * 32 + 1, 65535, 65536):
        with pytest.raises(ValueError):
            expand_message_xmd(b"m", XMD_DST, length)


@pytest.mark.parametrize("dst", [H2C_DST, XMD_LONG_DST, b"x" * 255, b"x" * 256, b"x"])
@pytest.mark.parametrize("msg", [b"", b"abc", A512])
def test_the_fast_paths_agree_with_expand_message_xmd(dst: bytes, msg: bytes) -> None:
    uniform = expand_message_xmd(msg, dst, 96)
    expected = (int.from_bytes(uniform[:48], "big") % P, int.from_bytes(uniform[48:], "big") % P)
    assert hash_to_field(msg, dst) == expected
    x, y = affine(hash_to_curve(msg, dst))
    p0, p1 = (PublicKey(uncompressed(*map_to_curve(u))) for u in expected)
    assert (x, y) == affine(PublicKey.combine_keys([p0, p1]))
    scalar = int.from_bytes(expand_message_xmd(msg, dst, 48), "big") % ORDER
    assert hash_to_scalar(msg, dst) == scalar


def test_an_empty_dst_is_refused() -> None:
    # RFC 9380 section 3.1: tags MUST have nonzero length.
    for hash_with_dst in (
        lambda: expand_message_xmd(b"m", b"", 32),
        lambda: hash_to_field(b"m", b""),
        lambda: hash_to_curve(b"m", b""),
        lambda: hash_to_scalar(b"m", b""),
    ):
        with pytest.raises(ValueError):
            hash_with_dst()


def test_hash_to_curve_depends_on_message_and_dst() -> None:
    points = {
        point_to_bytes(hash_to_curve(msg, dst))
        for msg in (b"", b"a", b"b", b"\x00")
        for dst in (b"blindmatch-v2-a", b"blindmatch-v2-b")
    }
    assert len(points) == 8


@settings(max_examples=60, deadline=None)
@given(st.integers(min_value=0, max_value=P - 1))
def test_map_to_curve_lands_on_secp256k1(u: int) -> None:
    x, y = map_to_curve(u)
    assert on_curve(x, y)
    assert point_to_bytes(point_from_bytes(uncompressed(x, y))) == uncompressed(x, y)
    assert map_to_curve(u + P) == (x, y)


def test_map_to_curve_handles_the_exceptional_u_0() -> None:
    # RFC 9380 section 6.6.2: Z^2 u^4 + Z u^2 = 0 takes x1 = B' / (Z A').
    assert on_curve(*map_to_curve(0))


def test_the_isogeny_denominators_are_powers_of_the_kernel_and_never_vanish() -> None:
    """x_den = (x' - x0)^2 and y_den = (x' - x0)^3, which the module relies on; and x0 is not the x
    of a point of E'(F_p) (g'(x0) is not a square), as it must not be in a group of prime order,
    so the map never divides by zero."""
    assert (K21 * K21 - 4 * K20) % P == 0
    x0 = -K21 * pow(2, -1, P) % P
    assert (x0 * x0 % P, -2 * x0 % P) == (K20, K21)
    assert (-(x0**3) % P, 3 * x0 * x0 % P, -3 * x0 % P) == (K40, K41, K42)
    assert not is_square((x0**3 + ISO_A * x0 + ISO_B) % P)


def test_hash_to_scalar_is_a_valid_scalar() -> None:
    k = hash_to_scalar(b"abc", b"blindmatch-v2-test")
    assert 0 < k < ORDER
    assert check_scalar(k) == k


# --- encodings ----------------------------------------------------------------------------------


def test_the_generator_parses_from_its_uncompressed_encoding() -> None:
    g = point_from_bytes(uncompressed(G_X, G_Y))
    assert point_to_bytes(g) == point_to_bytes(base_mul(1))
    assert len(point_to_bytes(g)) == POINT_BYTES


@pytest.mark.parametrize("k", [1, 2, 3, 0xDEADBEEF, ORDER - 1])
def test_hybrid_and_compressed_forms_are_refused(k: int) -> None:
    point = base_mul(k)
    x, y = affine(point)
    hybrid = uncompressed(x, y, 0x06 + (y & 1))
    compressed = point.format(compressed=True)
    # libsecp256k1 parses both: the refusal must be ours.
    assert point_to_bytes(PublicKey(hybrid)) == point_to_bytes(point)
    assert point_to_bytes(PublicKey(compressed)) == point_to_bytes(point)
    for data in (hybrid, compressed, uncompressed(x, y, 0x07 - (y & 1))):
        with pytest.raises(InvalidPoint):
            point_from_bytes(data)


@pytest.mark.parametrize(
    "data",
    [b"", b"\x04", b"\x00" * 65, uncompressed(G_X, G_Y)[:64], uncompressed(G_X, G_Y) + b"\x00"],
)
def test_wrong_lengths_and_the_identity_are_refused(data: bytes) -> None:
    with pytest.raises(InvalidPoint):
        point_from_bytes(data)


def test_an_off_curve_point_is_refused() -> None:
    with pytest.raises(InvalidPoint):
        point_from_bytes(uncompressed(G_X, (G_Y + 1) % P))
    with pytest.raises(InvalidPoint):
        point_from_bytes(uncompressed(0, 0))


def test_a_coordinate_not_below_p_is_refused() -> None:
    # A point with x < 2^256 - p, so that x + p still fits in 32 bytes.
    x = next(x for x in range(1, 100) if is_square((x**3 + 7) % P))
    y = pow((x**3 + 7) % P, (P + 1) // 4, P)
    assert on_curve(x, y)
    point_from_bytes(uncompressed(x, y))
    with pytest.raises(InvalidPoint):
        point_from_bytes(uncompressed(x + P, y))
    with pytest.raises(InvalidPoint):
        point_from_bytes(uncompressed(2**256 - 1, y))


def test_points_travel_concatenated() -> None:
    points = [base_mul(k) for k in (1, 2, 3)]
    data = b"".join(point_to_bytes(p) for p in points)
    assert [point_to_bytes(p) for p in points_from_bytes(data)] == [
        point_to_bytes(p) for p in points
    ]
    with pytest.raises(InvalidPoint):
        points_from_bytes(data[:-1])


# --- scalars ------------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [0, ORDER, ORDER + 1, -1])
def test_zero_and_n_scalars_are_refused(k: int) -> None:
    with pytest.raises(InvalidScalar):
        check_scalar(k)
    with pytest.raises(InvalidScalar):
        scalar_to_bytes(k)
    with pytest.raises(InvalidScalar):
        mul(base_mul(1), k)
    with pytest.raises(InvalidScalar):
        base_mul(k)
    with pytest.raises(InvalidScalar):
        inverse(k)
    with pytest.raises(InvalidScalar):
        batch_inverse([1, k])


@pytest.mark.parametrize("value", [0, ORDER, 2**256 - 1])
def test_scalar_bytes_out_of_range_are_refused(value: int) -> None:
    with pytest.raises(InvalidScalar):
        scalar_from_bytes(value.to_bytes(32, "big"))


def test_scalar_bytes_round_trip_and_have_one_length() -> None:
    for k in (1, 2, ORDER - 1, random_scalar()):
        assert scalar_from_bytes(scalar_to_bytes(k)) == k
    with pytest.raises(InvalidScalar):
        scalar_from_bytes(b"\x01" * 31)


@pytest.mark.parametrize("count", [1, 2, 3, 100])
def test_batch_inverse_inverts_every_scalar(count: int) -> None:
    scalars = [random_scalar() for _ in range(count)]
    if count == 2:
        scalars = [1, ORDER - 1]
    inverses = batch_inverse(scalars)
    assert len(inverses) == count
    assert all(k * i % ORDER == 1 for k, i in zip(scalars, inverses, strict=True))
    assert inverses == [inverse(k) for k in scalars]
    assert batch_inverse([]) == []


# --- arithmetic ---------------------------------------------------------------------------------


def test_a_sum_that_cancels_raises() -> None:
    point = hash_to_curve(b"x", b"blindmatch-v2-test")
    negated = mul(point, ORDER - 1)
    with pytest.raises(InvalidPoint):
        add([point, negated])
    with pytest.raises(InvalidPoint):
        add([point, base_mul(5), negated, mul(base_mul(5), ORDER - 1)])
    with pytest.raises(InvalidPoint):
        add([])


def test_add_and_mul_agree() -> None:
    g = base_mul(1)
    assert point_to_bytes(add([g])) == point_to_bytes(g)
    assert point_to_bytes(add([g, g])) == point_to_bytes(base_mul(2))
    assert point_to_bytes(add([g, base_mul(2), base_mul(4)])) == point_to_bytes(mul(g, 7))
    k = random_scalar()
    assert point_to_bytes(mul(mul(g, k), inverse(k))) == point_to_bytes(g)


# --- secret scalars -----------------------------------------------------------------------------


def test_a_secret_scalar_computes_what_its_integer_does() -> None:
    point = hash_to_curve(b"x", b"blindmatch-v2-test")
    for k in (1, 2, ORDER - 1, random_scalar()):
        secret = SecretScalar.from_int(k)
        assert point_to_bytes(mul(point, secret)) == point_to_bytes(mul(point, k))
        assert point_to_bytes(base_mul(secret)) == point_to_bytes(base_mul(k))


@pytest.mark.parametrize(
    ("r", "c", "k"),
    [
        (5, 2, 3),
        (1, 1, 2),
        (ORDER - 1, ORDER - 1, 1),
        (random_scalar(), random_scalar(), random_scalar()),
    ],
)
def test_a_response_is_r_minus_c_k_mod_n(r: int, c: int, k: int) -> None:
    assert response(SecretScalar.from_int(r), c, SecretScalar.from_int(k)) == (r - c * k) % ORDER


def test_a_response_of_zero_is_reported_as_zero() -> None:
    # r = c·k: libsecp256k1 refuses a zero result, which the prover turns into a new nonce
    c, k = 7, random_scalar()
    assert response(SecretScalar.from_int(c * k % ORDER), c, SecretScalar.from_int(k)) == 0


def test_random_secret_scalars_are_distinct_and_in_range() -> None:
    secrets = [SecretScalar() for _ in range(64)]
    values = {int.from_bytes(s._buf, "big") for s in secrets}  # a test may look; nothing else does
    assert len(values) == 64
    assert all(0 < v < ORDER for v in values)


def test_a_destroyed_secret_is_zero_and_refuses_every_use() -> None:
    secret = SecretScalar()
    secret.destroy()
    assert secret.destroyed and secret._buf == bytes(32)
    with pytest.raises(WrongPhase, match="destroyed"):
        mul(base_mul(1), secret)
    with pytest.raises(WrongPhase, match="destroyed"):
        base_mul(secret)
    with pytest.raises(WrongPhase, match="destroyed"):
        response(SecretScalar(), 3, secret)
    with pytest.raises(WrongPhase, match="destroyed"):
        response(secret, 3, SecretScalar())


def test_a_secret_zeroed_during_a_multiplication_gives_no_result() -> None:
    # What a multiplication sees when ``destroy`` runs in another thread between the check
    # and libsecp256k1's read of the key.
    secret = SecretScalar()
    secret._buf[:] = bytes(32)
    with pytest.raises(WrongPhase, match="while in use"):
        mul(base_mul(1), secret)
    with pytest.raises(WrongPhase, match="while in use"):
        base_mul(secret)


def test_a_secret_dropped_without_destroy_is_overwritten() -> None:
    secret = SecretScalar()
    view = memoryview(secret._buf)  # outlives the secret, to look at its buffer afterwards
    assert any(view)
    del secret
    gc.collect()
    assert not any(view)


def test_a_secret_is_neither_shown_nor_converted_nor_copied() -> None:
    secret = SecretScalar()
    assert repr(secret) == str(secret) == "SecretScalar(live)"
    for convert in (int, bytes, bytearray, memoryview, pickle.dumps, copy.copy, copy.deepcopy):
        with pytest.raises(TypeError):
            convert(secret)
    secret.destroy()
    assert repr(secret) == "SecretScalar(destroyed)"
