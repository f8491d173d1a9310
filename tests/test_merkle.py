"""Merkle commitments to sorted tags (blindmatch/core/merkle.py), against an independent reference.

The reference below is the recursive definition of RFC 9162 section 2.1 written out as plainly as
possible, checked first against the Certificate Transparency test vectors (with no prefix), so
that the fast, level-by-level implementation is compared with something known to be right.
"""

from __future__ import annotations

import hashlib
import itertools
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from blindmatch.core import merkle
from blindmatch.core.errors import BadMessage
from blindmatch.core.merkle import (
    DST,
    Absence,
    InvalidLeaves,
    Neighbour,
    Tree,
    path_length,
    verify,
    verify_absent,
)

# --- the reference: RFC 9162 2.1.1 (MTH) and 2.1.3.1 (PATH), recursively, with a chosen prefix ---


def split(n: int) -> int:
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def ref_mth(leaves: list[bytes], prefix: bytes = DST) -> bytes:
    if len(leaves) == 1:
        return hashlib.sha256(prefix + b"\x00" + leaves[0]).digest()
    k = split(len(leaves))
    left, right = ref_mth(leaves[:k], prefix), ref_mth(leaves[k:], prefix)
    return hashlib.sha256(prefix + b"\x01" + left + right).digest()


def ref_root(leaves: list[bytes]) -> bytes:
    """The project's root: the RFC's top node, bound to the size under a third prefix."""
    size = len(leaves).to_bytes(8, "big")
    return hashlib.sha256(DST + b"\x02" + size + ref_mth(leaves)).digest()


def ref_path(m: int, leaves: list[bytes], prefix: bytes = DST) -> list[bytes]:
    if len(leaves) == 1:
        return []
    k = split(len(leaves))
    if m < k:
        return [*ref_path(m, leaves[:k], prefix), ref_mth(leaves[k:], prefix)]
    return [*ref_path(m - k, leaves[k:], prefix), ref_mth(leaves[:k], prefix)]


# The inputs and roots of the Certificate Transparency reference tests (RFC 6962, no prefix).
CT_LEAVES = [
    b"",
    b"\x00",
    b"\x10",
    b"\x20\x21",
    b"\x30\x31",
    b"\x40\x41\x42\x43",
    bytes(range(0x50, 0x58)),
    bytes(range(0x60, 0x70)),
]
CT_ROOTS = [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]


def tags(n: int, seed: int = 0) -> list[bytes]:
    rng = random.Random(seed)
    found: set[bytes] = set()
    while len(found) < n:
        found.add(rng.randbytes(16))
    return sorted(found)


def test_the_reference_gives_the_rfc_6962_roots() -> None:
    for n, expected in enumerate(CT_ROOTS, start=1):
        assert ref_mth(CT_LEAVES[:n], prefix=b"").hex() == expected


@pytest.mark.parametrize("n", range(1, 71))
def test_roots_and_paths_agree_with_the_reference(n: int) -> None:
    leaves = tags(n, seed=n)
    expected = ref_root(leaves)
    assert merkle.root(leaves) == expected
    tree = Tree(leaves)
    assert tree.root == expected and tree.size == n
    for i in range(n):
        assert tree.path(i) == ref_path(i, leaves)


def test_the_prefix_separates_these_hashes_from_plain_rfc_6962() -> None:
    leaves = tags(5)
    assert ref_mth(leaves) != ref_mth(leaves, prefix=b"")
    one = hashlib.sha256(DST + b"\x00" + leaves[0]).digest()
    assert (
        merkle.root(leaves[:1]) == hashlib.sha256(DST + b"\x02" + bytes(7) + b"\x01" + one).digest()
    )


def test_a_root_is_pinned() -> None:
    # Any change to the DST, the leaf or node encoding, or the shape changes this root, and every
    # signed root with it: that needs a new protocol version, not a quiet edit.
    leaves = [bytes([i]) * 16 for i in range(7)]
    assert merkle.root(leaves) == ref_root(leaves)
    assert merkle.root(leaves).hex() == PINNED_ROOT_OF_7


PINNED_ROOT_OF_7 = "4d0512500c190ef6eb23a64b29c49f7a4947d69a15a1e79bee5ae57a0f3e919e"


@pytest.mark.parametrize("n", [*range(1, 34), 1000, 1024, 1025, 4097])
def test_every_path_verifies(n: int) -> None:
    leaves = tags(n, seed=n)
    tree = Tree(leaves)
    for i, leaf in enumerate(leaves):
        p = tree.path(i)
        assert len(p) == path_length(i, n)
        assert verify(tree.root, leaf, i, n, p)


def test_paths_in_a_large_tree_verify() -> None:
    n = 100_003
    leaves = tags(n, seed=1)
    tree = Tree(leaves)
    rng = random.Random(2)
    indexes = [0, 1, 65535, 65536, 65537, 98303, 98304, n - 2, n - 1]
    indexes += rng.sample(range(n), 200)
    for i, p in zip(indexes, tree.paths(indexes), strict=True):
        assert verify(tree.root, leaves[i], i, n, p)
    assert merkle.root(leaves) == tree.root


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8, 13, 32, 33])
def test_a_path_proves_only_its_own_leaf_index_size_and_root(n: int) -> None:
    leaves = tags(n, seed=100 + n)
    tree = Tree(leaves)
    other = Tree(tags(n, seed=200 + n)).root
    stranger = bytes(16)
    for i, leaf in enumerate(leaves):
        p = tree.path(i)
        assert verify(tree.root, leaf, i, n, p)
        assert not verify(other, leaf, i, n, p)
        assert not verify(tree.root, stranger, i, n, p)
        for j in range(n):
            if j != i:
                assert not verify(tree.root, leaf, j, n, p), (i, j)
                assert not verify(tree.root, leaves[j], i, n, p), (i, j)
        for size in range(1, 2 * n + 3):
            if size != n:
                assert not verify(tree.root, leaf, i, size, p), (i, size)
        bogus = hashlib.sha256(b"bogus").digest()
        for forged in ([*p, bogus], [bogus, *p], [*p, p[-1]] if p else [tree.root]):
            assert not verify(tree.root, leaf, i, n, forged)
        if p:
            assert not verify(tree.root, leaf, i, n, p[:-1])
            assert not verify(tree.root, leaf, i, n, p[1:])
            for k in range(len(p)):
                flipped = bytes([p[k][0] ^ 1]) + p[k][1:]
                assert not verify(tree.root, leaf, i, n, [*p[:k], flipped, *p[k + 1 :]])
        if len(p) > 1:
            assert not verify(tree.root, leaf, i, n, p[::-1])


def test_an_inner_node_is_not_accepted_as_a_root_of_a_smaller_tree() -> None:
    # The left subtree of 8 leaves is the root of its first 4: a path valid there must not
    # pass against the 8-leaf root, nor the reverse.
    leaves = tags(8, seed=3)
    small, big = Tree(leaves[:4]), Tree(leaves)
    assert big.path(0)[:2] == small.path(0)
    assert not verify(big.root, leaves[0], 0, 8, small.path(0))
    assert not verify(big.root, leaves[0], 0, 4, small.path(0))
    assert not verify(small.root, leaves[0], 0, 8, big.path(0))


def test_malformed_proofs_are_false_not_errors() -> None:
    leaves = tags(6)
    tree = Tree(leaves)
    r, p = tree.root, tree.path(2)
    assert verify(r, leaves[2], 2, 6, p)
    cases = [
        (r[:31], leaves[2], 2, 6, p),
        (r, leaves[2][:15], 2, 6, p),
        (r, leaves[2] + b"\x00", 2, 6, p),
        (r, bytearray(leaves[2]), 2, 6, p),
        (r, leaves[2], -1, 6, p),
        (r, leaves[2], 6, 6, p),
        (r, leaves[2], 2, 0, p),
        (r, leaves[2], 2, -6, p),
        (r, leaves[2], 2.0, 6, p),
        (r, leaves[2], True, 6, p),
        (r, leaves[2], 2, 6, [x[:31] for x in p]),
        (r, leaves[2], 2, 6, [x.hex() for x in p]),
        (r, leaves[2], 2, 2**200, p),
    ]
    for case in cases:
        assert verify(*case) is False, case  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "bad",
    [
        [],
        [bytes(16), bytes(16)],
        [bytes([2]) * 16, bytes([1]) * 16],
        [bytes([1]) * 16, bytes([3]) * 16, bytes([2]) * 16],
        [bytes([1]) * 16, bytes([2]) * 16, bytes([2]) * 16],
        [bytes(15)],
        [bytes(17)],
        [bytes(16), bytes([1]) * 15],
        ["0" * 16],
        [memoryview(bytes(32)).cast("H")],
    ],
)
def test_leaves_that_cannot_be_committed_to_are_refused(bad: list[bytes]) -> None:
    for build in (merkle.root, Tree, lambda leaves: merkle.path(leaves, 0)):
        with pytest.raises(InvalidLeaves) as caught:
            build(bad)
        assert isinstance(caught.value, ValueError) and isinstance(caught.value, BadMessage)
        assert caught.value.code == "INVALID_ARGUMENT"


def test_refusals_name_the_problem() -> None:
    with pytest.raises(InvalidLeaves, match="repeated"):
        merkle.root([bytes(16), bytes([1]) * 16, bytes([1]) * 16])
    with pytest.raises(InvalidLeaves, match="leaf 2 is not sorted"):
        merkle.root([bytes(16), bytes([2]) * 16, bytes([1]) * 16])


def test_a_tree_keeps_its_own_copy_of_the_leaves() -> None:
    leaves = tags(4)
    mutable = [bytearray(leaf) for leaf in leaves]
    tree = Tree(mutable)
    assert tree.root == merkle.root(leaves) == merkle.root(mutable)
    mutable[1][0] ^= 1
    assert tree.leaf(1) == leaves[1] and type(tree.leaf(1)) is bytes
    assert verify(tree.root, tree.leaf(1), 1, 4, tree.path(1))


def test_indexes_outside_the_tree_are_refused() -> None:
    tree = Tree(tags(3))
    for bad in (-1, 3):
        with pytest.raises(InvalidLeaves):
            tree.path(bad)
        with pytest.raises(InvalidLeaves):
            tree.leaf(bad)


def test_helpers_agree_with_the_tree() -> None:
    leaves = tags(37, seed=9)
    tree = Tree(leaves)
    assert merkle.paths(leaves, range(37)) == tree.paths(range(37))
    assert merkle.paths(b"".join(leaves), [5, 5, 36, 0]) == tree.paths([5, 5, 36, 0])
    assert merkle.root(b"".join(leaves)) == tree.root
    for bad in (-1, 37):
        with pytest.raises(InvalidLeaves):
            merkle.paths(leaves, [0, bad])
    assert [merkle.path(leaves, i) for i in (0, 36)] == [tree.path(0), tree.path(36)]
    assert Tree(b"".join(leaves)).root == tree.root
    assert Tree(bytearray(b"".join(leaves))).root == tree.root
    for bad in (b"", b"".join(leaves)[:-1], b"".join(leaves[::-1]), b"".join(leaves[:2]) * 2):
        with pytest.raises(InvalidLeaves):
            Tree(bad)
    assert [tree.index(leaf) for leaf in leaves] == list(range(37))
    assert tree.index(bytes(16)) is None and tree.index(b"\xff" * 16) is None


def test_path_length_known_values() -> None:
    # Boundary cases from the Certificate Transparency over DNS draft and Chromium's tests.
    assert path_length(0, 1) == 0
    assert path_length(0, 257) == 9
    assert path_length(255, 257) == 9
    assert path_length(256, 257) == 1
    assert path_length(123456, 999999) == 20
    with pytest.raises(InvalidLeaves):
        path_length(3, 3)


# --- absence ---


def between(a: bytes, b: bytes) -> bytes | None:
    """A 16-byte value strictly between a and b, if there is one."""
    x, y = int.from_bytes(a, "big"), int.from_bytes(b, "big")
    return ((x + y) // 2).to_bytes(16, "big") if y - x > 1 else None


@pytest.mark.parametrize("n", [1, 2, 3, 7, 8, 9, 33])
def test_every_gap_has_a_proof_of_absence(n: int) -> None:
    leaves = tags(n, seed=300 + n)
    tree = Tree(leaves)
    gaps = [bytes(16), b"\xff" * 16]
    gaps += [g for a, b in itertools.pairwise(leaves) if (g := between(a, b))]
    for value in gaps:
        proof = tree.absence(value)
        assert proof is not None
        assert verify_absent(tree.root, value, n, proof)
        assert not verify_absent(tree.root, value, n + 1, proof)
        assert not verify_absent(Tree(tags(n, seed=1)).root, value, n, proof)
    for leaf in leaves:
        assert tree.absence(leaf) is None


def test_a_forged_absence_fails() -> None:
    leaves = tags(9, seed=5)
    tree = Tree(leaves)
    n, r = 9, tree.root

    def nb(i: int) -> Neighbour:
        return Neighbour(i, leaves[i], tuple(tree.path(i)))

    present = leaves[4]
    just_above = (int.from_bytes(present, "big") + 1).to_bytes(16, "big")
    assert verify_absent(r, just_above, n, Absence(nb(4), nb(5)))
    # A present value bracketed by its own neighbours' neighbours, or claimed by non-adjacent ones.
    assert not verify_absent(r, present, n, Absence(nb(3), nb(5)))
    assert not verify_absent(r, present, n, Absence(nb(4), nb(5)))
    assert not verify_absent(r, present, n, Absence(nb(3), nb(4)))
    # One side dropped where the value is not beyond the first or last leaf.
    assert not verify_absent(r, just_above, n, Absence(nb(4), None))
    assert not verify_absent(r, just_above, n, Absence(None, nb(5)))
    assert not verify_absent(r, present, n, Absence(None, nb(0)))
    assert not verify_absent(r, present, n, Absence(nb(n - 1), None))
    assert not verify_absent(r, just_above, n, Absence(None, None))
    # Sides swapped, and a neighbour whose path is for another index.
    assert not verify_absent(r, just_above, n, Absence(nb(5), nb(4)))
    wrong = Neighbour(5, leaves[5], tuple(tree.path(6)))
    assert not verify_absent(r, just_above, n, Absence(nb(4), wrong))
    # A neighbour claiming a leaf value the tree does not hold at its index.
    moved = Neighbour(5, between(just_above, leaves[5]) or leaves[5], tuple(tree.path(5)))
    assert not verify_absent(r, just_above, n, Absence(nb(4), moved))
    # Below the first and above the last leaf: the edge leaves only.
    assert verify_absent(r, bytes(16), n, Absence(None, nb(0)))
    assert not verify_absent(r, bytes(16), n, Absence(None, nb(1)))
    assert verify_absent(r, b"\xff" * 16, n, Absence(nb(n - 1), None))
    assert not verify_absent(r, b"\xff" * 16, n, Absence(nb(n - 2), None))
    assert not verify_absent(r, b"\xff" * 15, n, Absence(nb(n - 1), None))


# --- properties ---

leaf_sets = st.sets(st.binary(min_size=16, max_size=16), min_size=1, max_size=80).map(sorted)


@settings(max_examples=150, deadline=None)
@given(leaves=leaf_sets, data=st.data())
def test_property_paths_verify_and_match_the_reference(
    leaves: list[bytes], data: st.DataObject
) -> None:
    n = len(leaves)
    i = data.draw(st.integers(0, n - 1))
    tree = Tree(leaves)
    assert tree.root == ref_root(leaves)
    assert tree.path(i) == ref_path(i, leaves)
    assert verify(tree.root, leaves[i], i, n, tree.path(i))
    j = data.draw(st.integers(0, n - 1))
    if j != i:
        assert not verify(tree.root, leaves[i], j, n, tree.path(i))
    value = data.draw(st.binary(min_size=16, max_size=16))
    proof = tree.absence(value)
    assert (proof is None) == (value in leaves)
    if proof is not None:
        assert verify_absent(tree.root, value, n, proof)


def test_a_path_of_the_wrong_length_is_refused_before_it_is_read() -> None:
    leaves = tags(5)
    tree = Tree(leaves)

    class Huge(list[bytes]):
        def __len__(self) -> int:
            return 10**9

        def __iter__(self):  # type: ignore[no-untyped-def]
            raise AssertionError("a path of the wrong length was read")

    assert not verify(tree.root, leaves[0], 0, 5, Huge(tree.path(0)))
