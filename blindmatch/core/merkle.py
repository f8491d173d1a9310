"""Merkle trees over a participant's sorted tags (protocol v2, DESIGN.md 2 "Matching").

Each owner signs the root of its sorted, distinct 16-byte tags. The coordinator delivers every match
with an inclusion proof against each holder's signed root, so it cannot claim that a partner holds
a tag that partner never committed to. Because the committed leaves are sorted, two adjacent
leaves whose values bracket a tag also prove that the tag is *not* in the tree.

Shape and proofs are those of RFC 9162 section 2.1 (as in RFC 6962): a tree of n > 1 leaves splits
at k, the largest power of two below n; an inclusion path lists sibling hashes from the leaf up.
Only the hashes differ, by a prefix of their own, so no hash here equals any other hash of the
project or of a Certificate Transparency log:

    leaf  = SHA-256(DST || 0x00 || tag)
    node  = SHA-256(DST || 0x01 || left || right)
    root  = SHA-256(DST || 0x02 || size as 8 bytes, big-endian || top node)

The root binds the size, which RFC 9162 leaves to the signed tree head: an RFC inclusion path does
not fix it (the path of leaf 0 among 33 leaves also verifies as leaf 0 among 34). Here a root is
only ever valid for one size, so a signature over the root alone commits to the size, and an
index is authenticated along with the leaf; absence proofs, which rest on indexes being adjacent,
then need no further reasoning about sizes.

There is no empty tree: an owner with no tags has nothing to commit to, and refusing it keeps
"size >= 1" true of every root that is ever signed.

Pure: no I/O, no clock, no randomness.
"""

from __future__ import annotations

import hashlib
import hmac
import operator
from bisect import bisect_left
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

from blindmatch.core.errors import BadMessage

DST: Final = b"blindmatch-v2-merkle/"
LEAF_BYTES: Final = 16
HASH_BYTES: Final = 32

_LEAF_PREFIX: Final = DST + b"\x00"
_NODE_PREFIX: Final = DST + b"\x01"
_ROOT_PREFIX: Final = DST + b"\x02"
_MAX_SIZE: Final = 2**64 - 1  # the size is encoded in 8 bytes
# Hashes are made a slice at a time and written into one preallocated level, so neither a list
# of 1M digest objects (about 70 MB) nor a second copy of a level ever exists.
_CHUNK: Final = 1 << 16

# Leaves: a sequence of 16-byte tags, or one buffer of them end to end (the form matching uses).
Leaves = Sequence[bytes] | bytes | bytearray | memoryview

_sha256 = hashlib.sha256


class InvalidLeaves(BadMessage, ValueError):
    """Leaves that cannot be committed to: none, a wrong size or type, unsorted, or repeated.

    A ValueError for pure callers, and a BadMessage so that a server maps it like every other
    refusal (INVALID_ARGUMENT).
    """

    code = "INVALID_ARGUMENT"


def _leaf_hash(leaf: bytes) -> bytes:
    return _sha256(_LEAF_PREFIX + leaf).digest()


def _node_hash(left: bytes, right: bytes) -> bytes:
    return _sha256(_NODE_PREFIX + left + right).digest()


def _root_hash(size: int, top: bytes) -> bytes:
    return _sha256(_ROOT_PREFIX + size.to_bytes(8, "big") + top).digest()


def _joined(leaves: Leaves) -> bytes:
    """The leaves as one immutable run of 16-byte tags, once they are known to be committable.

    Joining first turns every later check into one pass over a buffer: sortedness is tested by
    numpy in milliseconds, where comparing 1M bytes objects in Python takes a quarter of a
    second. Any bytes-like leaf is accepted, since only a copy of its bytes is kept.
    """
    if isinstance(leaves, bytes | bytearray | memoryview):
        # A buffer cannot be mistaken for a sequence of leaves: its items are ints.
        tags = bytes(leaves)
        if len(tags) % LEAF_BYTES:
            raise InvalidLeaves(f"a tag buffer of {len(tags)} bytes is not whole 16-byte tags")
    else:
        try:
            tags = b"".join(leaves)
        except TypeError:
            raise InvalidLeaves("leaves must be bytes") from None
        # The total catches a memoryview whose len() counts wider items than bytes.
        if len(tags) != LEAF_BYTES * len(leaves) or set(map(len, leaves)) - {LEAF_BYTES}:
            raise InvalidLeaves(f"every leaf must be {LEAF_BYTES} bytes")
    if not tags:
        raise InvalidLeaves("a Merkle tree needs at least one leaf")
    _check_sorted(tags)
    return tags


def _check_sorted(tags: bytes) -> None:
    # Sorting is what makes absence provable, and distinctness what makes a tag's position
    # unique. A 16-byte tag compares as its two big-endian 64-bit halves, high half first.
    words = np.frombuffer(tags, dtype=">u8").reshape(-1, 2)
    high, low = words[:, 0], words[:, 1]
    increasing = (high[1:] > high[:-1]) | ((high[1:] == high[:-1]) & (low[1:] > low[:-1]))
    if not increasing.all():
        at = int(np.argmin(increasing)) + 1
        what = "repeated" if (words[at] == words[at - 1]).all() else "not sorted"
        raise InvalidLeaves(f"leaves must be sorted and distinct: leaf {at} is {what}")


def _hash_leaves(tags: bytes) -> bytearray:
    sha, prefix, width = _sha256, _LEAF_PREFIX, LEAF_BYTES
    level = bytearray(len(tags) // width * HASH_BYTES)
    step = _CHUNK * width
    for start in range(0, len(tags), step):
        stop = min(start + step, len(tags))
        chunk = [sha(prefix + tags[i : i + width]).digest() for i in range(start, stop, width)]
        level[start * 2 : stop * 2] = b"".join(chunk)
    return level


def _parent_level(level: bytearray) -> bytearray:
    """The level above ``level`` (concatenated 32-byte hashes), in the promotion form of RFC 9162.

    Adjacent pairs are hashed; an odd last node is carried up unchanged. Carrying it up gives
    exactly the RFC's split at the largest power of two below n: the last node of each level
    is the root of the right-most, incomplete subtree, which the RFC pairs only higher up.
    """
    sha, prefix, pair = _sha256, _NODE_PREFIX, 2 * HASH_BYTES
    paired = len(level) // pair * pair
    parent = bytearray(paired // 2 + len(level) - paired)
    step = _CHUNK * pair
    for start in range(0, paired, step):
        stop = min(start + step, paired)
        chunk = [sha(prefix + level[i : i + pair]).digest() for i in range(start, stop, pair)]
        parent[start // 2 : stop // 2] = b"".join(chunk)
    parent[paired // 2 :] = level[paired:]
    return parent


def _levels(tags: bytes) -> list[bytearray]:
    levels = [_hash_leaves(tags)]
    while len(levels[-1]) > HASH_BYTES:
        levels.append(_parent_level(levels[-1]))
    return levels


def path_length(index: int, size: int) -> int:
    """How many hashes the inclusion path of leaf ``index`` has in a tree of ``size`` leaves."""
    if not 0 <= index < size:
        raise InvalidLeaves(f"leaf index {index} is outside a tree of {size} leaves")
    length = 0
    last = size - 1
    while last:
        # A node without a right sibling (the last one of its level, at an even position) is
        # carried up and adds nothing to the path.
        if index & 1 or index != last:
            length += 1
        index >>= 1
        last >>= 1
    return length


@dataclass(frozen=True, slots=True)
class Neighbour:
    """A committed leaf next to an absent value, with its inclusion path."""

    index: int
    leaf: bytes
    path: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class Absence:
    """The committed leaves just below and just above a value that is not in the tree.

    ``below`` is None when the value is smaller than every leaf, ``above`` when it is larger.
    """

    below: Neighbour | None
    above: Neighbour | None


class Tree:
    """A Merkle tree built once over sorted, distinct 16-byte leaves, for its root and paths.

    The leaves and every level are kept as single buffers (80 bytes per leaf in all, against
    some 150 for separate objects), so a path for any index is read in O(log n) without
    rebuilding anything, and no caller's later change to its own list can reach the tree. To
    prove a few leaves of a large set and keep nothing, ``paths()`` needs less memory.
    """

    __slots__ = ("_levels", "_root", "_size", "_tags")

    def __init__(self, leaves: Leaves) -> None:
        self._tags = _joined(leaves)
        self._size = len(self._tags) // LEAF_BYTES
        self._levels = _levels(self._tags)
        self._root = _root_hash(self._size, bytes(self._levels[-1]))

    @property
    def size(self) -> int:
        return self._size

    @property
    def root(self) -> bytes:
        return self._root

    def leaf(self, index: int) -> bytes:
        self._check_index(index)
        return self._leaf(index)

    def _leaf(self, index: int) -> bytes:
        return self._tags[index * LEAF_BYTES : (index + 1) * LEAF_BYTES]

    def _position(self, value: bytes) -> int:
        return bisect_left(range(self._size), value, key=self._leaf)

    def index(self, leaf: bytes) -> int | None:
        """The position of ``leaf``, or None when it is not in the tree."""
        at = self._position(leaf)
        return at if at < self._size and self._leaf(at) == leaf else None

    def path(self, index: int) -> list[bytes]:
        """The inclusion path of leaf ``index``: sibling hashes, the leaf's own sibling first."""
        self._check_index(index)
        index = operator.index(index)
        path = []
        for level in self._levels[:-1]:
            sibling = (index ^ 1) * HASH_BYTES
            if sibling < len(level):
                path.append(bytes(level[sibling : sibling + HASH_BYTES]))
            index >>= 1
        return path

    def paths(self, indexes: Iterable[int]) -> list[list[bytes]]:
        return [self.path(i) for i in indexes]

    def absence(self, value: bytes) -> Absence | None:
        """Proof that ``value`` is not a leaf, or None when it is one."""
        if type(value) is not bytes or len(value) != LEAF_BYTES:
            raise InvalidLeaves(f"a tag must be {LEAF_BYTES} bytes")
        at = self._position(value)
        if at < self._size and self._leaf(at) == value:
            return None
        below = self._neighbour(at - 1) if at > 0 else None
        above = self._neighbour(at) if at < self._size else None
        return Absence(below, above)

    def _neighbour(self, index: int) -> Neighbour:
        return Neighbour(index, self._leaf(index), tuple(self.path(index)))

    def _check_index(self, index: int) -> None:
        if isinstance(index, bool) or not 0 <= operator.index(index) < self._size:
            raise InvalidLeaves(f"leaf index {index} is outside a tree of {self._size}")


def root(leaves: Leaves) -> bytes:
    """The root of the tree over ``leaves``: sorted, distinct, 16 bytes each, at least one."""
    tags = _joined(leaves)
    level = _hash_leaves(tags)
    # Each level is dropped as soon as the next is built: a root needs only the current one.
    while len(level) > HASH_BYTES:
        level = _parent_level(level)
    return _root_hash(len(tags) // LEAF_BYTES, bytes(level))


def path(leaves: Leaves, index: int) -> list[bytes]:
    """The inclusion path of one leaf."""
    return paths(leaves, [index])[0]


def paths(leaves: Leaves, indexes: Iterable[int]) -> list[list[bytes]]:
    """The inclusion paths of ``indexes``, in one pass that keeps no more than two levels.

    For the coordinator, which proves a few matched leaves of each of many large sets: it needs
    the paths, not a ``Tree`` of 80 bytes per leaf held for each set.
    """
    tags = _joined(leaves)
    size = len(tags) // LEAF_BYTES
    positions = [operator.index(i) for i in indexes]
    for i in positions:
        if not 0 <= i < size:
            raise InvalidLeaves(f"leaf index {i} is outside a tree of {size}")
    found: list[list[bytes]] = [[] for _ in positions]
    level = _hash_leaves(tags)
    while len(level) > HASH_BYTES:
        for k, i in enumerate(positions):
            sibling = (i ^ 1) * HASH_BYTES
            if sibling < len(level):
                found[k].append(bytes(level[sibling : sibling + HASH_BYTES]))
            positions[k] = i >> 1
        level = _parent_level(level)
    return found


def verify(root: bytes, leaf: bytes, index: int, size: int, path: Sequence[bytes]) -> bool:
    """Whether ``path`` proves that ``leaf`` is leaf ``index`` of the ``size``-leaf tree ``root``.

    Returns False, and never raises, for every proof that does not prove it, malformed ones
    included. A bool rather than a ForgedMessage because this function cannot know whom to
    blame: the proof may come from the coordinator, from a relay, or from the caller's own store.
    The caller raises, naming the party that handed it the proof.

    The walk is RFC 9162 2.1.3.2: ``last`` follows the right-most node of each level, so a node
    with no right sibling is recognised and carried up without consuming a path element.
    """
    if not (
        type(root) is bytes
        and len(root) == HASH_BYTES
        and type(leaf) is bytes
        and len(leaf) == LEAF_BYTES
    ):
        return False
    if isinstance(index, bool) or isinstance(size, bool):
        return False
    try:
        # operator.index: positions may arrive as numpy integers; floats are refused.
        index, size = operator.index(index), operator.index(size)
    except TypeError:
        return False
    if not 0 <= index < size <= _MAX_SIZE:
        return False
    # The length first, so that an overlong path is refused before any of it is read: a valid
    # one has exactly path_length() elements, at most 64.
    if len(path) != path_length(index, size) or not all(
        type(p) is bytes and len(p) == HASH_BYTES for p in path
    ):
        return False
    node = _leaf_hash(leaf)
    last = size - 1
    for sibling in path:
        # Carry the node up while it is the right-most of its level and has no right sibling.
        while not index & 1 and index == last:
            if not last:
                return False
            index >>= 1
            last >>= 1
        node = _node_hash(sibling, node) if index & 1 else _node_hash(node, sibling)
        index >>= 1
        last >>= 1
    return last == 0 and hmac.compare_digest(_root_hash(size, node), root)


def verify_absent(root: bytes, value: bytes, size: int, proof: Absence) -> bool:
    """Whether ``proof`` shows that ``value`` is not a leaf of the ``size``-leaf tree ``root``.

    Sound only for a root whose signer committed to sorted leaves, which ``Tree`` and ``root``
    enforce: a signer that commits to unsorted leaves can "prove" anything absent, but only
    about its own signed claim. Like ``verify``, returns False rather than raising.
    """
    if type(value) is not bytes or len(value) != LEAF_BYTES or not isinstance(proof, Absence):
        return False
    below, above = proof.below, proof.above
    if below is None and above is None:
        return False
    if below is not None and not (
        type(below.leaf) is bytes
        and below.leaf < value
        and (above is not None or below.index == size - 1)
        and verify(root, below.leaf, below.index, size, below.path)
    ):
        return False
    return above is None or (
        type(above.leaf) is bytes
        and value < above.leaf
        and (above.index == below.index + 1 if below is not None else above.index == 0)
        and verify(root, above.leaf, above.index, size, above.path)
    )


# --- multiproofs: many leaves of one tree in one proof ------------------------------------------

Indexes = npt.NDArray[np.int64]
# Leaves hashed at a time when proving: the tree is built one aligned subtree of this many leaves
# at a time, so the prover never holds a whole level (32 bytes per leaf) of a large set.
_BLOCK_BITS: Final = 16


def _width(size: int, level: int) -> int:
    return ((size - 1) >> level) + 1


def _distinct(ordered: Indexes) -> Indexes:
    if len(ordered) < 2:
        return ordered
    keep = np.empty(len(ordered), dtype=bool)
    keep[0] = True
    np.not_equal(ordered[1:], ordered[:-1], out=keep[1:])
    return ordered[keep]


def _parents(marked: Indexes) -> Indexes:
    return _distinct(marked >> 1)


def _siblings(level: bytearray, marked: Indexes, width: int, offset: int) -> bytes:
    """The hashes a verifier of ``marked`` (sorted nodes of this level) cannot compute itself.

    A node's sibling is known when it is marked too; the last node of an odd level has none (it
    is carried up). ``offset`` is the level index of ``level``'s first node."""
    even = (marked & 1) == 0
    known = np.zeros(len(marked), dtype=bool)
    if len(marked) > 1:
        step = marked[1:] == marked[:-1] + 1
        known[:-1] |= even[:-1] & step
        known[1:] |= ~even[1:] & step
    sibling = marked ^ 1
    need = ~known & (sibling < width)
    nodes = np.frombuffer(level, dtype=np.uint8).reshape(-1, HASH_BYTES)
    return bytes(nodes[sibling[need] - offset].tobytes())


def multiproofs(tags: bytes, requests: Sequence[Indexes]) -> tuple[bytes, list[bytes]]:
    """The root of ``tags`` and one multiproof per request (sorted, distinct leaf indexes within
    the tree; the caller's to ensure).

    The tree is hashed once for all requests, one aligned subtree of 2^16 leaves at a time: every
    level of such a subtree is the same nodes as in the whole tree (the last, partial subtree's
    nodes too, since the RFC 9162 shape carries the last node of a level up unchanged), so only
    the subtrees' tops are ever kept for the whole set. Proof hashes come out subtree by subtree
    and are put in level order at the end.
    """
    if not tags or len(tags) % LEAF_BYTES:
        raise InvalidLeaves(f"{len(tags)} bytes are not a whole, non-empty set of tags")
    # Owners who share the same tags with P get the same proof: made once, held once.
    distinct: list[Indexes] = []
    which: list[int] = []
    for request in requests:
        same = (k for k, d in enumerate(distinct) if np.array_equal(d, request))
        which.append(next(same, len(distinct)))
        if which[-1] == len(distinct):
            distinct.append(request)
    root, made = _multiproofs(tags, distinct)
    return root, [made[k] for k in which]


def _multiproofs(tags: bytes, requests: Sequence[Indexes]) -> tuple[bytes, list[bytes]]:
    size = len(tags) // LEAF_BYTES
    depth = (size - 1).bit_length()
    low = min(_BLOCK_BITS, depth)
    found: list[list[list[bytes]]] = [[[] for _ in range(depth)] for _ in requests]
    tops = bytearray()
    for start in range(0, size, 1 << low):
        stop = min(start + (1 << low), size)
        level = _hash_leaves(tags[start * LEAF_BYTES : stop * LEAF_BYTES])
        marked = [r[np.searchsorted(r, start) : np.searchsorted(r, stop)] for r in requests]
        for height in range(low):
            width = _width(size, height)
            for k, nodes in enumerate(marked):
                if len(nodes):
                    found[k][height].append(_siblings(level, nodes, width, start >> height))
                    marked[k] = _parents(nodes)
            level = _parent_level(level)
        tops += level
    level = tops
    marked = [_distinct(r >> low) for r in requests]
    for height in range(low, depth):
        width = _width(size, height)
        for k, nodes in enumerate(marked):
            if len(nodes):
                found[k][height].append(_siblings(level, nodes, width, 0))
                marked[k] = _parents(nodes)
        level = _parent_level(level)
    if len(level) != HASH_BYTES:
        raise AssertionError("a tree that does not end in one node")
    return _root_hash(size, bytes(level)), [
        b"".join(b"".join(chunks) for chunks in levels) for levels in found
    ]


def verify_multiproof(
    root: bytes, size: int, indexes: Sequence[int], leaves: Sequence[bytes], hashes: bytes
) -> bool:
    """Whether ``hashes`` proves that each ``leaves[i]`` is leaf ``indexes[i]`` of the
    ``size``-leaf tree ``root``. ``indexes`` must be strictly increasing and within the tree
    (the caller checks, and names whom to blame); every hash must be used, exactly once.

    Each level is walked left to right: a node whose sibling is also proved is paired with it,
    the last node of an odd level is carried up, and any other sibling is the next hash."""
    if len(hashes) % HASH_BYTES or len(hashes) > HASH_BYTES * 64 * len(indexes):
        return False
    idx = list(indexes)
    nodes = [_leaf_hash(leaf) for leaf in leaves]
    if not nodes or len(nodes) != len(idx):
        return False
    cursor, width = 0, size
    while width > 1:
        up_idx: list[int] = []
        up_nodes: list[bytes] = []
        count, i = len(idx), 0
        while i < count:
            j, node = idx[i], nodes[i]
            if j & 1 or (j != width - 1 and not (i + 1 < count and idx[i + 1] == j + 1)):
                if cursor == len(hashes):
                    return False
                sibling = hashes[cursor : cursor + HASH_BYTES]
                cursor += HASH_BYTES
                node = _node_hash(sibling, node) if j & 1 else _node_hash(node, sibling)
            elif j != width - 1:
                i += 1
                node = _node_hash(node, nodes[i])
            up_idx.append(j >> 1)
            up_nodes.append(node)
            i += 1
        idx, nodes = up_idx, up_nodes
        width = (width + 1) >> 1
    return (
        cursor == len(hashes)
        and idx == [0]
        and hmac.compare_digest(_root_hash(size, nodes[0]), root)
    )


# --- the coordinator: matching ----------------------------------------------------------------
