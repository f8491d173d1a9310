"""Deliveries of protocol v2 (blindmatch/core/delivery.py): honest ones against a set oracle, and
every way a coordinator could claim a match that no holder's signed root contains."""

from __future__ import annotations

import dataclasses
import random
from bisect import bisect_left
from collections.abc import Mapping

import numpy as np
import pytest

from blindmatch.core import merkle
from blindmatch.core.delivery import (
    ForgedDelivery,
    Inclusion,
    NodeDelivery,
    SharedCount,
    SignedRoot,
    TagRootMismatch,
    VerifiedMatch,
    match,
    tag_root_statement,
    verify_delivery,
)
from blindmatch.core.errors import BadMessage, ForgedMessage
from blindmatch.core.merkle import InvalidLeaves, multiproofs, verify_multiproof

ROUND = "round-1"
NAMES = ("alpha", "bravo", "charlie", "delta", "echo")


def tags_of(values: set[bytes]) -> bytes:
    return b"".join(sorted(values))


def universe(rnd: random.Random, count: int) -> list[bytes]:
    # Some tags end in zero bytes: numpy's fixed-width strings must still compare them whole.
    found = {rnd.randbytes(16) for _ in range(count)}
    found |= {rnd.randbytes(15) + b"\0" for _ in range(8)} | {rnd.randbytes(12) + bytes(4)}
    found |= {bytes(16), b"\xff" * 16}
    return sorted(found)


def random_sets(seed: int, owners: int, count: int = 300) -> dict[str, set[bytes]]:
    rnd = random.Random(seed)
    pool = universe(rnd, count)
    sets = {}
    for name in NAMES[:owners]:
        keep = rnd.uniform(0.2, 0.8)
        sets[name] = {t for t in pool if rnd.random() < keep} or {pool[0]}
    return sets


def roots_of(sets: Mapping[str, set[bytes]], round_id: str = ROUND) -> dict[str, SignedRoot]:
    # Signatures are made and checked outside delivery.py: the bytes here stand for a valid one.
    return {
        o: SignedRoot(o, len(s), merkle.root(tags_of(s)), b"signature") for o, s in sets.items()
    }


def deliver(
    sets: Mapping[str, set[bytes]],
    mode: str,
    threshold: int | None = None,
    counts: bool = False,
    seed: bytes | None = b"secret seed",
) -> dict[str, NodeDelivery]:
    buffers = {o: tags_of(s) for o, s in sets.items()}
    return match(ROUND, mode, threshold, counts, buffers, seed=seed, signed_roots=roots_of(sets))


def check(
    sets: Mapping[str, set[bytes]],
    owner: str,
    delivery: NodeDelivery,
    mode: str,
    threshold: int | None = None,
    counts: bool = False,
    roots: Mapping[str, SignedRoot] | None = None,
) -> list[VerifiedMatch] | list[SharedCount]:
    return verify_delivery(
        ROUND,
        owner,
        tags_of(sets[owner]),
        delivery,
        roots_of(sets) if roots is None else roots,
        mode=mode,
        threshold=threshold,
        counts=counts,
    )


def proof_of(delivery: NodeDelivery, partner: str) -> Inclusion:
    return next(p for p in delivery.proofs if p.partner == partner)


def with_proof(delivery: NodeDelivery, proof: Inclusion) -> NodeDelivery:
    others = tuple(p for p in delivery.proofs if p.partner != proof.partner)
    return dataclasses.replace(delivery, proofs=(*others, proof))


def forged(
    sets: Mapping[str, set[bytes]],
    partner: str | None,
    tags: bytes,
    positions: list[int],
    indexes: list[int],
) -> Inclusion:
    """What a cheating coordinator can make: a well-formed multiproof from ``tags``."""
    _, (hashes,) = multiproofs(tags, [np.array(indexes, dtype=np.int64)])
    return Inclusion(
        partner or "",
        np.array(positions, dtype=np.int64),
        np.array(indexes, dtype=np.int64),
        hashes,
    )


def refused(partner: str | None, call: object, *args: object, **kwargs: object) -> ForgedDelivery:
    with pytest.raises(ForgedDelivery) as caught:
        call(*args, **kwargs)  # type: ignore[operator]
    assert isinstance(caught.value, ForgedMessage)
    assert caught.value.partner == partner
    if partner is not None:
        assert partner in str(caught.value)
    return caught.value


# --- statements -------------------------------------------------------------------------------


def test_the_root_statement_binds_round_owner_size_and_root() -> None:
    root = merkle.root(bytes(16))
    base = tag_root_statement(ROUND, "alpha", 1, root)
    assert SignedRoot("alpha", 1, root, b"s").statement(ROUND) == base
    others = {
        tag_root_statement("round-2", "alpha", 1, root),
        tag_root_statement(ROUND, "bravo", 1, root),
        tag_root_statement(ROUND, "alpha", 2, root),
        tag_root_statement(ROUND, "alpha", 1, bytes(32)),
    }
    assert base not in others and len(others) == 4
    for size, bad_root in ((0, root), (True, root), (1, root[:31]), (1, bytearray(root))):
        with pytest.raises(BadMessage):
            tag_root_statement(ROUND, "alpha", size, bad_root)  # type: ignore[arg-type]


# --- multiproofs ------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [1, 2, 3, 5, 8, 13, 64, 100, 1000, 65537])
def test_multiproofs_verify_against_merkle_roots_and_only_exactly(size: int) -> None:
    rnd = random.Random(size)
    tags = tags_of({rnd.randbytes(16) for _ in range(size)})
    size = len(tags) // 16
    picks = [[0], [size - 1], sorted(rnd.sample(range(size), min(size, 7)))]
    if size <= 1000:
        picks.append(list(range(size)))
    root, made = multiproofs(tags, [np.array(p, dtype=np.int64) for p in picks])
    assert root == merkle.root(tags)
    for indexes, hashes in zip(picks, made, strict=True):
        leaves = [tags[i * 16 : i * 16 + 16] for i in indexes]
        assert verify_multiproof(root, size, indexes, leaves, hashes)
        if len(indexes) == 1:  # one leaf: the multiproof is the ordinary inclusion path
            assert hashes == b"".join(merkle.path(tags, indexes[0]))
        assert not verify_multiproof(root, size + 1, indexes, leaves, hashes)
        assert not verify_multiproof(root, size, indexes, leaves, hashes + bytes(32))
        if hashes:
            assert not verify_multiproof(root, size, indexes, leaves, hashes[:-32])
            flip = rnd.randrange(len(hashes))
            bent = hashes[:flip] + bytes([hashes[flip] ^ 1]) + hashes[flip + 1 :]
            assert not verify_multiproof(root, size, indexes, leaves, bent)
        bad_leaf = bytes([leaves[-1][0] ^ 1]) + leaves[-1][1:]
        assert not verify_multiproof(root, size, indexes, [*leaves[:-1], bad_leaf], hashes)


# --- honest deliveries against the set oracle ---------------------------------------------------


def oracle(sets: Mapping[str, set[bytes]], owner: str) -> dict[int, tuple[str, ...]]:
    """Position in the owner's sorted tags -> partners holding that tag."""
    mine = sorted(sets[owner])
    found = {}
    for position, tag in enumerate(mine):
        partners = tuple(sorted(p for p, s in sets.items() if p != owner and tag in s))
        if partners:
            found[position] = partners
    return found


CASES = [(n, seed) for n in (2, 3, 5) for seed in range(3)]


@pytest.mark.parametrize(("owners", "seed"), CASES)
def test_pairwise_delivers_every_shared_tag_with_its_holders(owners: int, seed: int) -> None:
    sets = random_sets(seed, owners)
    for owner, delivery in deliver(sets, "pairwise").items():
        got = check(sets, owner, delivery, "pairwise")
        assert {m.position: m.partners for m in got} == oracle(sets, owner)  # type: ignore[union-attr]
        assert all(m.count is None for m in got)  # type: ignore[union-attr]


@pytest.mark.parametrize(("owners", "seed"), CASES)
@pytest.mark.parametrize("counts", [False, True])
def test_threshold_delivers_hits_with_enough_holders(owners: int, seed: int, counts: bool) -> None:
    sets = random_sets(seed, owners)
    for t in range(2, owners + 1):
        for owner, delivery in deliver(sets, "threshold", t, counts).items():
            expected = {p: 1 + len(h) for p, h in oracle(sets, owner).items() if 1 + len(h) >= t}
            got = check(sets, owner, delivery, "threshold", t, counts)
            assert [m.position for m in got] == sorted(expected)  # type: ignore[union-attr]
            assert all(m.partners == () for m in got)  # type: ignore[union-attr]
            if counts:
                assert {m.position: m.count for m in got} == expected  # type: ignore[union-attr]
            # Without counts each hit names exactly t - 1 holders, each a true holder.
            named: dict[int, list[str]] = {}
            for proof in delivery.proofs:
                for position in proof.positions.tolist():
                    named.setdefault(position, []).append(proof.partner)
            truth = oracle(sets, owner)
            for position, partners in named.items():
                assert set(partners) <= set(truth[position])
                assert len(partners) == (expected[position] - 1 if counts else t - 1)


@pytest.mark.parametrize(("owners", "seed"), CASES)
def test_count_delivers_the_size_of_each_intersection(owners: int, seed: int) -> None:
    sets = random_sets(seed, owners)
    for owner, delivery in deliver(sets, "count").items():
        got = check(sets, owner, delivery, "count")
        expected = [SharedCount(p, len(sets[owner] & sets[p])) for p in sorted(sets) if p != owner]
        assert got == expected
        assert delivery.proofs == ()


def test_threshold_choice_without_a_seed_is_the_first_holders() -> None:
    tag = b"\x01" * 16
    sets = {name: {tag, bytes([i + 2]) * 16} for i, name in enumerate(NAMES[:4])}
    delivery = deliver(sets, "threshold", 3, seed=None)["delta"]
    assert sorted(p.partner for p in delivery.proofs) == ["alpha", "bravo"]
    check(sets, "delta", delivery, "threshold", 3)


def test_the_coordinator_refuses_tags_that_are_not_the_signed_ones() -> None:
    sets = random_sets(7, 3)
    buffers = {o: tags_of(s) for o, s in sets.items()}
    roots = roots_of(sets)
    roots["bravo"] = dataclasses.replace(roots["bravo"], root=roots["alpha"].root)
    with pytest.raises(TagRootMismatch) as caught:
        match(ROUND, "pairwise", None, False, buffers, signed_roots=roots)
    assert caught.value.owner == "bravo"
    unsorted = dict(buffers, alpha=buffers["alpha"][16:32] + buffers["alpha"][:16])
    with pytest.raises(InvalidLeaves, match="alpha"):
        match(ROUND, "pairwise", None, False, unsorted)


# --- a coordinator that invents hits ------------------------------------------------------------


@pytest.fixture
def three() -> dict[str, set[bytes]]:
    sets = random_sets(11, 3)
    assert all(oracle(sets, o) for o in sets)
    return sets


def unmatched(sets: Mapping[str, set[bytes]], owner: str, partner: str) -> tuple[int, int]:
    """A position of a tag ``partner`` does not hold, and a leaf index free to claim for it."""
    mine, theirs = sorted(sets[owner]), sorted(sets[partner])
    used = {bisect_left(theirs, t) for t in mine if t in sets[partner]}
    for position, tag in enumerate(mine):
        index = min(bisect_left(theirs, tag), len(theirs) - 1)
        if tag not in sets[partner] and index not in used:
            return position, index
    raise AssertionError("no unmatched tag")


def test_a_tag_the_partner_does_not_hold_is_refused(three: dict[str, set[bytes]]) -> None:
    delivery = deliver(three, "pairwise")["alpha"]
    honest = proof_of(delivery, "bravo")
    position, index = unmatched(three, "alpha", "bravo")
    pairs = sorted(
        [*zip(honest.positions.tolist(), honest.indexes.tolist(), strict=True), (position, index)]
    )
    positions, indexes = [p for p, _ in pairs], [i for _, i in pairs]
    assert sorted(indexes) == indexes  # a well-formed claim, so only the proof can refuse it
    lie = forged(three, "bravo", tags_of(three["bravo"]), positions, indexes)
    refused("bravo", check, three, "alpha", with_proof(delivery, lie), "pairwise")
    # The same claim alone, with the proof the coordinator can make, against bravo's tree.
    alone = forged(three, "bravo", tags_of(three["bravo"]), [position], [index])
    refused("bravo", check, three, "alpha", with_proof(delivery, alone), "pairwise")
    check(three, "alpha", delivery, "pairwise")


def test_a_proof_for_another_index_is_refused(three: dict[str, set[bytes]]) -> None:
    delivery = deliver(three, "pairwise")["alpha"]
    honest = proof_of(delivery, "bravo")
    indexes = honest.indexes.tolist()
    size = len(three["bravo"])
    k = next(k for k in range(len(indexes)) if indexes[k] + 1 < [*indexes, size][k + 1])
    moved = [*indexes[:k], indexes[k] + 1, *indexes[k + 1 :]]
    remade = forged(three, "bravo", tags_of(three["bravo"]), honest.positions.tolist(), moved)
    refused("bravo", check, three, "alpha", with_proof(delivery, remade), "pairwise")
    kept = dataclasses.replace(honest, indexes=np.array(moved, dtype=np.int64))
    refused("bravo", check, three, "alpha", with_proof(delivery, kept), "pairwise")


def test_a_proof_against_another_rounds_root_is_refused(three: dict[str, set[bytes]]) -> None:
    # In another round bravo holds alpha's tag (tags differ per round; here the coordinator
    # replays a set in which it does), and the proof is genuine against that round's root.
    delivery = deliver(three, "pairwise")["alpha"]
    position, _ = unmatched(three, "alpha", "bravo")
    tag = sorted(three["alpha"])[position]
    other_round = three["bravo"] | {tag}
    index = sorted(other_round).index(tag)
    replayed = forged(three, "bravo", tags_of(other_round), [position], [index])
    other_root = merkle.root(tags_of(other_round))
    leaf = [tag]
    assert verify_multiproof(other_root, len(other_round), [index], leaf, replayed.hashes)
    refused("bravo", check, three, "alpha", with_proof(delivery, replayed), "pairwise")
    # And that round's signed root is not this round's statement: the signature check fails.
    signed = SignedRoot("bravo", len(other_round), other_root, b"signature")
    assert signed.statement("round-0") != signed.statement(ROUND)


def test_a_proof_re_attributed_to_another_partner_is_refused(three: dict[str, set[bytes]]) -> None:
    delivery = deliver(three, "pairwise")["alpha"]
    honest = proof_of(delivery, "bravo")
    as_charlie = dataclasses.replace(honest, partner="charlie")
    refused("charlie", check, three, "alpha", with_proof(delivery, as_charlie), "pairwise")


def test_the_owner_as_its_own_partner_is_refused(three: dict[str, set[bytes]]) -> None:
    delivery = deliver(three, "pairwise")["alpha"]
    size = len(three["alpha"])
    # A genuine proof: alpha holds its own tags, against its own signed root.
    own = forged(three, "alpha", tags_of(three["alpha"]), list(range(size)), list(range(size)))
    refused("alpha", check, three, "alpha", with_proof(delivery, own), "pairwise")


def test_an_unknown_or_repeated_partner_is_refused(three: dict[str, set[bytes]]) -> None:
    delivery = deliver(three, "pairwise")["alpha"]
    ghost = dataclasses.replace(proof_of(delivery, "bravo"), partner="zulu")
    refused("zulu", check, three, "alpha", with_proof(delivery, ghost), "pairwise")
    twice = dataclasses.replace(delivery, proofs=(*delivery.proofs, proof_of(delivery, "bravo")))
    refused("bravo", check, three, "alpha", twice, "pairwise")


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("positions", "size", "out of range"),
        ("positions", -1, "out of range"),
        ("indexes", "partner size", "out of range"),
        ("indexes", -1, "out of range"),
        ("positions", "unsorted", "strictly increasing"),
        ("positions", 2.0, "not a list of positions"),
    ],
)
def test_positions_out_of_range_are_refused(
    three: dict[str, set[bytes]], field: str, value: object, reason: str
) -> None:
    delivery = deliver(three, "pairwise")["alpha"]
    honest = proof_of(delivery, "bravo")
    values = getattr(honest, field).tolist()
    if value == "size":
        values[-1] = len(three["alpha"])
    elif value == "partner size":
        values[-1] = len(three["bravo"])
    elif value == "unsorted":
        values = values[::-1] if len(values) > 1 else [*values, values[0]]
    else:
        values[0] = value
    bad = dataclasses.replace(honest, **{field: np.array(values)})
    error = refused("bravo", check, three, "alpha", with_proof(delivery, bad), "pairwise")
    assert reason in str(error)


def test_a_threshold_hit_needs_enough_holders_proofs() -> None:
    tag = b"\x07" * 16
    sets = {name: {tag, bytes([i + 20]) * 16} for i, name in enumerate(NAMES[:4])}
    sets["alpha"].add(b"\x30" * 16)
    sets["bravo"].add(b"\x30" * 16)  # held by two: below a threshold of 3
    for counts in (False, True):
        delivery = deliver(sets, "threshold", 3, counts)["alpha"]
        check(sets, "alpha", delivery, "threshold", 3, counts)
        one_short = dataclasses.replace(delivery, proofs=delivery.proofs[1:])
        refused(None, check, sets, "alpha", one_short, "threshold", 3, counts)
    # A hit invented outright: the position held by two is claimed at the threshold of 3, with
    # the one genuine proof there is (bravo's) and a claimed count of 3.
    delivery = deliver(sets, "threshold", 3, True)["alpha"]
    position = sorted(sets["alpha"]).index(b"\x30" * 16)
    index = sorted(sets["bravo"]).index(b"\x30" * 16)
    extra = forged(sets, "bravo", tags_of(sets["bravo"]), [0, position], [0, index])
    hits = sorted([*delivery.hits.tolist(), position])  # type: ignore[union-attr]
    claimed = dataclasses.replace(
        with_proof(delivery, extra),
        hits=np.array(hits, dtype=np.int64),
        counts=np.array([4 if h == 0 else 3 for h in hits], dtype=np.int64),
    )
    error = refused(None, check, sets, "alpha", claimed, "threshold", 3, True)
    assert f"position {position} is claimed held by 3 with 1 holders' proofs" in str(error)


def test_a_delivery_beyond_its_mode_is_refused(three: dict[str, set[bytes]]) -> None:
    pairwise = deliver(three, "pairwise")["alpha"]
    # Threshold without counts: one holder per hit at t = 2, no names beyond that.
    threshold = deliver(three, "threshold", 2)["alpha"]
    check(three, "alpha", threshold, "threshold", 2)
    both = [p for p, h in oracle(three, "alpha").items() if len(h) == 2]
    assert both, "the fixture needs a tag held by all three"
    every = dataclasses.replace(
        threshold, proofs=pairwise.proofs, hits=np.array(sorted(oracle(three, "alpha")))
    )
    refused(None, check, three, "alpha", every, "threshold", 2)
    # A pairwise delivery (which names every holder) in a threshold round.
    refused(None, check, three, "alpha", pairwise, "threshold", 2)
    with_counts = deliver(three, "threshold", 2, True)["alpha"]
    refused(None, check, three, "alpha", with_counts, "threshold", 2, False)
    # A proof for a position below the threshold: a pairwise match in a threshold-3 round.
    at_three = deliver(three, "threshold", 3)["alpha"]
    below = dataclasses.replace(at_three, proofs=pairwise.proofs)
    refused(None, check, three, "alpha", below, "threshold", 3)
    # Count mode: no positions, one count per partner, none above either set's size.
    count = deliver(three, "count")["alpha"]
    check(three, "alpha", count, "count")
    refused(
        None, check, three, "alpha", dataclasses.replace(count, proofs=pairwise.proofs), "count"
    )
    big = dict(count.shared, bravo=min(len(three["alpha"]), len(three["bravo"])) + 1)
    refused("bravo", check, three, "alpha", dataclasses.replace(count, shared=big), "count")
    missing = {k: v for k, v in count.shared.items() if k != "bravo"}
    refused(None, check, three, "alpha", dataclasses.replace(count, shared=missing), "count")


def test_a_delivery_of_another_round_owner_or_mode_is_refused(three: dict[str, set[bytes]]) -> None:
    delivery = deliver(three, "pairwise")["alpha"]
    for changed in ({"round_id": "round-2"}, {"owner": "bravo"}, {"mode": "count"}):
        refused(None, check, three, "alpha", dataclasses.replace(delivery, **changed), "pairwise")
