"""What the coordinator delivers from every owner's signed tags, and how a node checks it (v2).

Each owner sends its sorted, distinct 16-byte tags (``oprf.tag``) and signs
``tag_root_statement(round_id, owner, size, root)`` over the Merkle root of them (``merkle``).
``match`` computes, for every owner R, what the round's mode lets R learn about its own tags, by
position in R's sorted list. ``verify_delivery`` is what R runs before it records anything: every
claimed match must be proved against the signed root of each partner said to hold it, so a
coordinator cannot claim that a partner holds what that partner never committed to.

Proofs are Merkle *multiproofs*: for one partner P and the sorted positions R shares with P, the
sibling hashes that are not computable from the shared leaves themselves, level by level. For k
shared leaves among N they cost about k·log2(N/k) + k hashes instead of k·log2(N) for separate
paths: at 10% overlap of 1M tags about 3 hashes per match instead of 20, which is what keeps a
3 x 1M round within the coordinator's 40 bytes per tag and a node's delivery within its memory.
The root binds the size, so each leaf is proved at its index (``merkle``, module docstring).

What R learns, by mode (a trade-off for the protocol owner; PRIVACY.md must say it):

- ``pairwise``: for each of its tags held by others, which partners hold it, as the mode says.
  Through the proofs, R also learns the *rank* of each shared tag among P's sorted tags and some
  hashes of P's tree. Tags are pseudo-random, so a rank says how many of P's tags fall between
  two of R's shared tags, not which values they are; sibling hashes are hashes of P's other tags,
  which R cannot compute without evaluations it would be charged for (and a tag R does hold would
  be a match anyway). Nothing here is a value, and nothing names a tag R does not hold.
- ``threshold t``: the mode promises positions only (and counts only when the spec asks), but a
  proof is checked against a *signed* root, and R must know whose signature it checks: an opaque
  index into the round's roots hides nothing, since R receives every signed root with its owner.
  So each hit names the holders whose proofs it carries:
  - without counts, exactly t - 1 holders per hit (R learns that they hold it, and nothing about
    the others). They are chosen uniformly at random among the holders when the coordinator
    passes a secret ``seed``; without one, the first t - 1 in the round's (sorted) order, which
    also tells R that every participant before the last one named does *not* hold it;
  - with counts, every holder (c - 1 proofs for a count c), since a count proved only up to t
    could be inflated at will: for the hits, threshold-with-counts is then exactly pairwise.
  ``verify_delivery`` reports no partner names in threshold mode, so nothing downstream shows
  them, but the node has seen them. Hiding them needs anonymous membership proofs (an OR-proof
  over the round's roots), far beyond a hash tree; the alternative is to trust the coordinator
  for threshold hits. Choosing between the two is the protocol owner's call.
- ``count``: per partner, how many of R's tags that partner holds. A proof of inclusion would
  name the tags, so counts carry none: the coordinator can lie about a count. The only check is
  the cheap one, that a count never exceeds either set's signed size.

No mode proves *absence*: a coordinator can still withhold a match. Absence proofs for every
unmatched tag (``merkle.Absence``) would cost more than the matches and are not delivered.

Pure: no I/O, no clock; the coordinator draws ``seed`` and signatures are made and checked
outside (``SignedRoot.statement`` gives the bytes).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

import numpy as np
import numpy.typing as npt

from blindmatch.core.errors import BadMessage, ForgedMessage
from blindmatch.core.merkle import (
    HASH_BYTES,
    LEAF_BYTES,
    Indexes,
    InvalidLeaves,
    multiproofs,
    verify_multiproof,
)
from blindmatch.core.signing import statement

MODES: Final = ("pairwise", "threshold", "count")
MAX_PARTICIPANTS: Final = 64
# R's tags searched in P's at a time, so that the gathered candidates stay a few MB.
_SEARCH_BLOCK: Final = 1 << 18


class ForgedDelivery(ForgedMessage):
    """A delivery a node refuses. ``partner`` is the partner whose signed root a claim misuses,
    or None when the claim is the coordinator's alone (wrong round, mode, or shape)."""

    def __init__(self, message: str, partner: str | None = None) -> None:
        super().__init__(message)
        self.partner = partner


class TagRootMismatch(ForgedMessage):
    """An owner's tags whose root is not the one it signed: no proof against it would verify."""

    def __init__(self, message: str, owner: str) -> None:
        super().__init__(message)
        self.owner = owner


def tag_root_statement(round_id: str, owner: str, size: int, root: bytes) -> bytes:
    """What an owner signs over its sorted tags. The owner's name is in it so that one tree
    cannot be shown as two holders' (which would fake a threshold hit), the round so that a
    root of another round proves nothing here."""
    if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size < 2**63:
        raise BadMessage(f"a tag root of {owner} for {size!r} tags")
    if type(root) is not bytes or len(root) != HASH_BYTES:
        raise BadMessage(f"a tag root of {owner} must be {HASH_BYTES} bytes")
    return statement("v2-tag-root", round_id, owner, size, root)


@dataclass(frozen=True, slots=True)
class SignedRoot:
    owner: str
    size: int
    root: bytes
    signature: bytes = field(repr=False)

    def statement(self, round_id: str) -> bytes:
        """The bytes ``signature`` must verify over, with ``owner``'s federation key."""
        return tag_root_statement(round_id, self.owner, self.size, self.root)


@dataclass(frozen=True, slots=True, eq=False)
class Inclusion:
    """Proof that ``partner`` holds R's tags at ``positions``: they are its leaves ``indexes``.

    Both are strictly increasing (both lists are sorted by tag, so the i-th shared tag has the
    i-th shared position in each). ``hashes`` is the multiproof: 32-byte sibling hashes in the
    order ``verify_multiproof`` consumes them."""

    partner: str
    positions: Indexes
    indexes: Indexes
    hashes: bytes = field(repr=False)


@dataclass(frozen=True, slots=True, eq=False)
class NodeDelivery:
    """What the coordinator sends owner ``owner``.

    - pairwise: ``proofs`` only, one per partner sharing anything;
    - threshold: ``hits`` (positions held by at least t), ``counts`` (participants holding
      each, owner included) only when the spec asks, and ``proofs`` covering each hit;
    - count: ``shared``, partner -> number of the owner's tags it holds; no proofs.
    """

    round_id: str
    owner: str
    mode: str
    proofs: tuple[Inclusion, ...] = ()
    hits: Indexes | None = None
    counts: Indexes | None = None
    shared: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class VerifiedMatch:
    """A position of the node's own sorted tags, proved held. ``partners`` in pairwise mode only;
    ``count`` (participants holding it, the node included) in threshold mode with counts only."""

    position: int
    partners: tuple[str, ...] = ()
    count: int | None = None


@dataclass(frozen=True, slots=True)
class SharedCount:
    partner: str
    count: int


def _tag_array(owner: str, tags: bytes) -> npt.NDArray[np.bytes_]:
    # 'S16' compares as memcmp over all 16 bytes, i.e. as the bytes themselves; its scalars drop
    # trailing zero bytes, so leaves are always read from the buffer, never from the array.
    if len(tags) % LEAF_BYTES or not tags:
        raise InvalidLeaves(f"{owner} sent {len(tags)} bytes, not a whole, non-empty set of tags")
    array = np.frombuffer(tags, dtype=f"S{LEAF_BYTES}")
    if not (array[1:] > array[:-1]).all():
        raise InvalidLeaves(f"{owner} sent tags that are not sorted and distinct")
    return array


def _intersect(
    mine: npt.NDArray[np.bytes_], theirs: npt.NDArray[np.bytes_]
) -> tuple[Indexes, Indexes]:
    """Positions in ``mine`` and in ``theirs`` of their common tags, both increasing."""
    positions: list[Indexes] = [np.empty(0, dtype=np.int64)]
    indexes: list[Indexes] = [np.empty(0, dtype=np.int64)]
    for start in range(0, len(mine), _SEARCH_BLOCK):
        block = mine[start : start + _SEARCH_BLOCK]
        at = np.searchsorted(theirs, block).astype(np.int64)
        inside = at < len(theirs)
        hit = np.zeros(len(block), dtype=bool)
        hit[inside] = theirs[at[inside]] == block[inside]
        positions.append(np.flatnonzero(hit).astype(np.int64) + start)
        indexes.append(at[hit])
    return np.concatenate(positions), np.concatenate(indexes)


def _chosen(
    holders: npt.NDArray[np.bool_], take: int | None, seed: bytes | None, owner: str
) -> npt.NDArray[np.bool_]:
    """For each hit (row), the holders (columns) whose proofs are delivered: all of them when
    ``take`` is None, else ``take`` of them, at random under ``seed`` or the first ones."""
    if take is None:
        return holders
    if seed is None:
        priority = np.broadcast_to(np.arange(holders.shape[1], dtype=np.float64), holders.shape)
    else:
        # One stream per owner, so one owner's choices say nothing about another's.
        key = hashlib.sha256(b"blindmatch-v2-threshold-choice\0" + seed + owner.encode()).digest()
        rng = np.random.default_rng(np.frombuffer(key, dtype=np.uint32))
        priority = rng.random(holders.shape)
    priority = np.where(holders, priority, np.inf)
    first = np.argsort(priority, axis=1, kind="stable")[:, :take]
    chosen = np.zeros_like(holders)
    np.put_along_axis(chosen, first, True, axis=1)
    return chosen


def match(
    round_id: str,
    mode: str,
    threshold: int | None,
    counts: bool,
    tag_sets: Mapping[str, bytes],
    *,
    seed: bytes | None = None,
    signed_roots: Mapping[str, SignedRoot] | None = None,
) -> dict[str, NodeDelivery]:
    """Every owner's delivery, from every owner's sorted tags (one buffer of 16-byte tags each).

    ``seed`` (secret, fresh per round) picks which t - 1 holders prove a threshold hit; see the
    module docstring for why it should be given. With ``signed_roots``, the root of every set a
    proof is made from is compared with the one its owner signed (TagRootMismatch): a set that
    does not match its signature would make every proof against it fail at the nodes.
    """
    owners = sorted(tag_sets)
    n = len(owners)
    if not 2 <= n <= MAX_PARTICIPANTS:
        raise ValueError(f"a round needs 2 to {MAX_PARTICIPANTS} owners, got {n}")
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; expected one of {', '.join(MODES)}")
    if mode == "threshold":
        if threshold is None or not 2 <= threshold <= n:
            raise ValueError(f"threshold must be between 2 and {n} participants, got {threshold}")
    elif threshold is not None or counts:
        raise ValueError(f"threshold and counts belong to threshold mode, not {mode}")
    arrays = {owner: _tag_array(owner, tag_sets[owner]) for owner in owners}
    # (R, P) -> R's positions and P's indexes of R ∩ P, each pair computed once.
    common: dict[tuple[str, str], tuple[Indexes, Indexes]] = {}
    for i, one in enumerate(owners):
        for other in owners[i + 1 :]:
            mine, theirs = _intersect(arrays[one], arrays[other])
            common[one, other], common[other, one] = (mine, theirs), (theirs, mine)

    if mode == "count":
        return {
            owner: NodeDelivery(
                round_id,
                owner,
                mode,
                shared={p: len(common[owner, p][0]) for p in owners if p != owner},
            )
            for owner in owners
        }

    # P -> (R, R's positions, P's indexes) of every proof to be made from P's tree.
    requests: dict[str, list[tuple[str, Indexes, Indexes]]] = {p: [] for p in owners}
    hits: dict[str, Indexes] = {}
    held: dict[str, Indexes] = {}
    for owner in owners:
        partners = [p for p in owners if p != owner]
        if mode == "pairwise":
            for p in partners:
                positions, indexes = common[owner, p]
                if len(positions):
                    requests[p].append((owner, positions, indexes))
            continue
        assert threshold is not None
        holding = np.ones(len(arrays[owner]), dtype=np.uint8)
        for p in partners:
            holding[common[owner, p][0]] += 1
        hits[owner] = np.flatnonzero(holding >= threshold).astype(np.int64)
        held[owner] = holding[hits[owner]].astype(np.int64)
        del holding
        if not len(hits[owner]):
            continue
        columns = np.empty((len(hits[owner]), len(partners)), dtype=bool)
        for c, p in enumerate(partners):
            shared = common[owner, p][0]
            at = np.minimum(np.searchsorted(shared, hits[owner]), max(len(shared) - 1, 0))
            columns[:, c] = shared[at] == hits[owner] if len(shared) else False
        chosen = _chosen(columns, None if counts else threshold - 1, seed, owner)
        for c, p in enumerate(partners):
            positions = hits[owner][chosen[:, c]]
            if len(positions):
                shared, indexes = common[owner, p]
                requests[p].append((owner, positions, indexes[np.searchsorted(shared, positions)]))
    del common

    proofs: dict[str, list[Inclusion]] = {owner: [] for owner in owners}
    for p in owners:
        if not requests[p]:
            continue
        root, made = multiproofs(tag_sets[p], [indexes for _, _, indexes in requests[p]])
        signed = None if signed_roots is None else signed_roots.get(p)
        if signed_roots is not None and (
            signed is None or signed.size != len(arrays[p]) or signed.root != root
        ):
            raise TagRootMismatch(f"the tags {p} sent are not the tags it signed", p)
        for (owner, positions, indexes), hashes in zip(requests[p], made, strict=True):
            proofs[owner].append(Inclusion(p, positions, indexes, hashes))
        requests[p] = []
    return {
        owner: NodeDelivery(
            round_id,
            owner,
            mode,
            proofs=tuple(proofs[owner]),
            hits=hits.get(owner) if mode == "threshold" else None,
            counts=held.get(owner) if counts else None,
        )
        for owner in owners
    }


# --- the node: verification -------------------------------------------------------------------


def _indexes(values: object, bound: int, what: str, partner: str | None) -> list[int]:
    """``values`` as strictly increasing ints in [0, bound), or ForgedDelivery."""
    array = np.asarray(values)
    if array.ndim != 1 or (array.size and array.dtype.kind not in "iu"):
        raise ForgedDelivery(f"{what} are not a list of positions", partner)
    if array.dtype.kind == "u" and array.size and array.max() >= 2**63:
        raise ForgedDelivery(f"{what} include a position out of range", partner)
    array = array.astype(np.int64)
    if array.size and (array[0] < 0 or array[-1] >= bound):
        raise ForgedDelivery(f"{what} include a position out of range (0 to {bound - 1})", partner)
    if array.size > 1 and not (array[1:] > array[:-1]).all():
        raise ForgedDelivery(f"{what} are not strictly increasing", partner)
    return [int(v) for v in array.tolist()]


def verify_delivery(
    round_id: str,
    owner: str,
    own_tags: bytes,
    delivery: NodeDelivery,
    signed_roots: Mapping[str, SignedRoot],
    *,
    mode: str,
    threshold: int | None = None,
    counts: bool = False,
) -> list[VerifiedMatch] | list[SharedCount]:
    """What ``owner`` may record from ``delivery``, once every claim in it is proved.

    ``own_tags`` are the owner's sorted tags, as it committed to them; ``signed_roots`` every
    participant's, their signatures already verified over ``SignedRoot.statement(round_id)``;
    ``mode``, ``threshold`` and ``counts`` are the round's, from the signed spec (never from the
    delivery). Raises ForgedDelivery, naming the partner whose root a claim misuses.
    """
    if delivery.round_id != round_id:
        raise ForgedDelivery(f"a delivery of round {delivery.round_id!r} in round {round_id!r}")
    if delivery.owner != owner:
        raise ForgedDelivery(f"a delivery for {delivery.owner!r} sent to {owner}")
    if delivery.mode != mode:
        raise ForgedDelivery(f"a {delivery.mode!r} delivery in a {mode} round")
    own_tags = bytes(own_tags)
    size = len(own_tags) // LEAF_BYTES
    participants = set(signed_roots) | {owner}

    # Shape and mode first: they cost nothing, the hashes cost a walk of every proof.
    holders: dict[int, list[str]] = {}
    checks: list[tuple[SignedRoot, list[int], list[int], bytes]] = []
    for proof in delivery.proofs:
        partner = proof.partner
        if partner == owner:
            raise ForgedDelivery(f"a delivery names {owner} as its own partner", partner)
        signed = signed_roots.get(partner)
        if signed is None or signed.owner != partner:
            raise ForgedDelivery(f"a proof against no signed root of {partner!r}", partner)
        if any(c[0].owner == partner for c in checks):
            raise ForgedDelivery(f"two proofs for {partner} in one delivery", partner)
        positions = _indexes(proof.positions, size, f"positions proved by {partner}", partner)
        indexes = _indexes(proof.indexes, signed.size, f"leaf indexes of {partner}", partner)
        if not positions or len(positions) != len(indexes):
            raise ForgedDelivery(f"an empty or uneven proof for {partner}", partner)
        if type(proof.hashes) is not bytes:
            raise ForgedDelivery(f"a proof for {partner} without hashes", partner)
        checks.append((signed, positions, indexes, proof.hashes))
        for position in positions:
            holders.setdefault(position, []).append(partner)

    result: list[VerifiedMatch] | list[SharedCount]
    if mode == "pairwise":
        if delivery.hits is not None or delivery.counts is not None or delivery.shared:
            raise ForgedDelivery("a pairwise delivery with threshold hits or counts")
        result = [VerifiedMatch(p, tuple(sorted(holders[p]))) for p in sorted(holders)]
    elif mode == "threshold":
        result = _threshold(delivery, holders, size, len(participants), threshold, counts)
    elif mode == "count":
        if delivery.proofs or delivery.hits is not None or delivery.counts is not None:
            raise ForgedDelivery("a count delivery with positions: more than count mode allows")
        result = _counts(delivery.shared, owner, size, participants, signed_roots)
    else:
        raise ValueError(f"unknown mode {mode!r}; expected one of {', '.join(MODES)}")

    for signed, positions, indexes, hashes in checks:
        leaves = [own_tags[p * LEAF_BYTES : (p + 1) * LEAF_BYTES] for p in positions]
        if not verify_multiproof(signed.root, signed.size, indexes, leaves, hashes):
            raise ForgedDelivery(
                f"a claim that {signed.owner} holds {len(positions)} of {owner}'s tags is not "
                f"proved against {signed.owner}'s signed root",
                signed.owner,
            )
    return result


def _threshold(
    delivery: NodeDelivery,
    holders: Mapping[int, list[str]],
    size: int,
    participants: int,
    threshold: int | None,
    counts: bool,
) -> list[VerifiedMatch]:
    if threshold is None or not 2 <= threshold <= participants:
        raise ValueError(f"threshold must be between 2 and {participants}, got {threshold}")
    if delivery.shared:
        raise ForgedDelivery("a threshold delivery with per-partner counts")
    hits = _indexes(
        np.empty(0, dtype=np.int64) if delivery.hits is None else delivery.hits,
        size,
        "threshold hits",
        None,
    )
    if set(holders) - set(hits):
        raise ForgedDelivery("a proof for a position below the threshold: more than it allows")
    if counts:
        if delivery.counts is None:
            raise ForgedDelivery("a threshold delivery without the counts the spec asks for")
        claimed = np.asarray(delivery.counts)
        if claimed.shape != (len(hits),) or (claimed.size and claimed.dtype.kind not in "iu"):
            raise ForgedDelivery("threshold counts that do not match the hits")
        needed = [int(c) for c in claimed.tolist()]
    elif delivery.counts is not None:
        raise ForgedDelivery("threshold counts the spec does not ask for")
    else:
        needed = [threshold] * len(hits)
    result = []
    for position, count in zip(hits, needed, strict=True):
        if not threshold <= count <= participants:
            raise ForgedDelivery(f"a count of {count} among {participants} participants")
        proved = len(holders.get(position, ()))
        if proved < count - 1:
            raise ForgedDelivery(
                f"position {position} is claimed held by {count} with {proved} holders' proofs"
            )
        if proved > count - 1:
            raise ForgedDelivery(
                f"{proved} holders named for position {position}: more than threshold mode allows"
            )
        result.append(VerifiedMatch(position, (), count if counts else None))
    return result


def _counts(
    shared: Mapping[str, int],
    owner: str,
    size: int,
    participants: set[str],
    signed_roots: Mapping[str, SignedRoot],
) -> list[SharedCount]:
    if set(shared) != participants - {owner}:
        raise ForgedDelivery("a count delivery that does not give one count per partner")
    result = []
    for partner in sorted(shared):
        count = shared[partner]
        bound = min(size, signed_roots[partner].size)
        if isinstance(count, bool) or not isinstance(count, int) or not 0 <= count <= bound:
            raise ForgedDelivery(
                f"a count of {count!r} shared with {partner}, whose set has "
                f"{signed_roots[partner].size} tags against {size}",
                partner,
            )
        result.append(SharedCount(partner, count))
    return result
