"""The distributed OPRF of protocol v2: blind, evaluate, unblind, and verify before anything leaves.

The round key is K = Σ k_i over the committee; no party ever holds it. An owner turns each stored
hash H_j = H(x_j) into T_j = K·H_j without any member seeing H_j, and checks every T_j before a
tag is made of it:

1. The owner blinds each hash with a fresh, independent, non-zero r_j: X_j = r_j·H_j.
2. Member i answers Y_ij = k_i·X_j (``evaluate``).
3. The owner unblinds: T_j = r_j⁻¹·Σ_i Y_ij, plus k_own·H_j when it is a member itself.
4. Verification (``SubsetCheck``): for t = 1..λ the owner draws a secret subset S_t of its set
   (each element with probability 1/2, from the CSPRNG) and a fresh r_t, and asks every member
   to evaluate B_t = r_t·A_t, where A_t = Σ_{S_t} H_j. The member proves its λ answers with one
   batched DLEQ against its commitment P_i (``evaluate_proved``). Then K·A_t is known for sure,
   and the owner checks Σ_{S_t} T_j = K·A_t.

Why this is sound: write T_j = K·H_j + E_j. A check passes only if Σ_{S_t} E_j = 0. For any
non-zero error vector, flipping one erroneous element in or out of S_t changes that sum, so at
most half the subsets pass: λ = 40 checks miss with probability at most 2^-40 (a little more,
because empty subsets are drawn again; DESIGN.md 2). B_t is a uniformly random point to a member,
so no member learns S_t, and the answers it gave before cannot be fitted to it. An answer that
cancels an honest member's (c·X - Y_h) makes T_j = c·H_j, which fails the check unless c = K.

When a check fails, ``culprits`` names the member whose own answers do not sum to k_i·A_t:
Σ_{S_t} r_j⁻¹·Y_ij = r_t⁻¹·Z_it, where Z_it = k_i·B_t was proved. That costs a multiplication per
element and member, so it runs only after a failure.

r_j, S_t, r_t, A_t and T_j are the owner's secrets: none of them goes into evidence or a log.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable, Mapping, Sequence
from typing import Final, Protocol

import numpy as np
import numpy.typing as npt

from blindmatch.core.canon import CANON_VERSION, indicator_message
from blindmatch.core.secp256k1 import (
    Point,
    SecretScalar,
    add,
    batch_inverse,
    hash_to_curve,
    inverse,
    mul,
    point_to_bytes,
    random_scalar,
)

LAMBDA: Final = 40  # subset checks per set: a wrong tag goes unnoticed with probability <= 2^-40
TAG_BYTES: Final = 16
_TAG_DST: Final = b"blindmatch-v2-tag"
# H(x): RFC 9380 secp256k1_XMD:SHA-256_SSWU_RO_ under a DST of its own.
# The canonical forms' version is in it: a change of canonicalisation makes new hashes that
# match no old one, visibly, and every stored hash stale.
INDICATOR_DST: Final = (
    f"blindmatch-v2-indicator-{CANON_VERSION}-secp256k1_XMD:SHA-256_SSWU_RO_".encode()
)
# What a node stores with each H(x): a change of DST or suite makes every stored hash stale.
HASH_VERSION: Final = hashlib.sha256(INDICATOR_DST).hexdigest()[:16]


def hash_indicator(kind: str, value: str) -> Point:
    return hash_to_curve(indicator_message(kind, value), INDICATOR_DST)


def hash_indicators(items: Iterable[tuple[str, str]]) -> list[bytes]:
    """H(x) of each (kind, canonical value), as the 65-byte points a node stores."""
    return [point_to_bytes(hash_indicator(kind, value)) for kind, value in items]


def blind(hashes: Sequence[Point]) -> tuple[list[Point], list[int]]:
    """X_j = r_j·H_j with a fresh r_j each, and the r_j⁻¹ that undo it (one batch inversion)."""
    rs = [random_scalar() for _ in hashes]
    return [mul(h, r) for h, r in zip(hashes, rs, strict=True)], batch_inverse(rs)


def evaluate(share: SecretScalar | int, blinded: Sequence[Point]) -> list[Point]:
    """A member's answer: k_i·X_j for every element of a request (an int share only in tests)."""
    return [mul(x, share) for x in blinded]


def unblind(
    answers: Sequence[Sequence[Point]],
    unblinders: Sequence[int],
    own: tuple[Evaluator, Sequence[Point]] | None = None,
) -> list[Point]:
    """T_j = r_j⁻¹·Σ_i Y_ij, plus k_own·H_j when ``own`` = (the owner's share, its hashes).

    ``answers`` holds one list per member, in any order. Summing before unblinding costs one
    multiplication per element whatever the committee's size; the additions are cheap."""
    n = len(unblinders)
    if any(len(a) != n for a in answers):
        raise ValueError("every member's answer must cover every element of the request")
    own_parts = own[0].own_part(own[1]) if own is not None else None
    tags: list[Point] = []
    for j in range(n):
        parts = [a[j] for a in answers]
        total = [mul(add(parts), unblinders[j])] if parts else []
        if own_parts is not None:
            total.append(own_parts[j])
        tags.append(add(total))
    return tags


class Evaluator(Protocol):
    """Whoever holds a share and applies it to points of the owner's own making."""

    def own_part(self, points: Sequence[Point]) -> list[Point]: ...


def tag(context: bytes, point: Point) -> bytes:
    """What the coordinator compares: SHA-256(DST ‖ context ‖ T)[:16]. The context (the round or
    epoch id) makes tags of one round useless in any other."""
    digest = hashlib.sha256(_TAG_DST)
    digest.update(len(context).to_bytes(2, "big") + context)
    digest.update(point_to_bytes(point))
    return digest.digest()[:TAG_BYTES]


class SubsetCheck:
    """The owner's λ secret subsets of one set of ``size`` elements, fed chunk by chunk in
    position order.

    Feed every hash with ``add_hashes``, send ``challenge()`` to every member, feed the tags as
    they are unblinded with ``add_tags``, then compare with ``expected`` from the members' proved
    answers. The subsets are drawn at construction, when the set's size is fixed (Prepare)."""

    def __init__(self, size: int, lam: int = LAMBDA) -> None:
        if not 1 <= lam <= 63:
            raise ValueError("between 1 and 63 subset checks")
        if size < 1:
            raise ValueError("an empty set has nothing to check")
        self.size = size
        self.lam = lam
        # Bit t of masks[j]: element j is in S_t. 8 bytes an element, from the CSPRNG.
        drawn = np.frombuffer(secrets.token_bytes(8 * size), dtype=np.uint64)
        self._masks = drawn >> np.uint64(64 - lam)  # a new array: the drawn bytes are read-only
        for t in range(lam):
            # An empty S_t checks nothing, and its A_t would be the identity, which has no
            # encoding: it gets one element, drawn as secretly as the rest.
            if not (self._masks >> np.uint64(t) & np.uint64(1)).any():
                self._masks[secrets.randbelow(size)] |= np.uint64(1 << t)
        self._hash_sums: list[Point | None] = [None] * lam
        self._tag_sums: list[Point | None] = [None] * lam
        self._hashed = 0
        self._tagged = 0
        self._challenge: list[int] | None = None  # the r_t

    @staticmethod
    def _members(t: int, masks: npt.NDArray[np.uint64]) -> list[int]:
        return np.flatnonzero(masks >> np.uint64(t) & np.uint64(1)).tolist()

    def _accumulate(self, sums: list[Point | None], start: int, points: Sequence[Point]) -> None:
        masks = self._masks[start : start + len(points)]
        for t in range(self.lam):
            chosen = [points[i] for i in self._members(t, masks)]
            previous = sums[t]
            if previous is not None:
                chosen.append(previous)
            if chosen:
                sums[t] = add(chosen)

    def add_hashes(self, hashes: Sequence[Point]) -> None:
        if self._hashed + len(hashes) > self.size:
            raise ValueError(f"more than the {self.size} hashes of the set")
        self._accumulate(self._hash_sums, self._hashed, hashes)
        self._hashed += len(hashes)

    def challenge(self) -> list[Point]:
        """B_t = r_t·A_t for every subset, for every member to evaluate with a proof."""
        if self._challenge is not None:
            raise ValueError("one challenge per set: a second would let a member compare them")
        if self._hashed != self.size:
            raise ValueError(f"{self._hashed} of {self.size} hashes were fed")
        self._challenge = [random_scalar() for _ in range(self.lam)]
        return [mul(_present(a), r) for a, r in zip(self._hash_sums, self._challenge, strict=True)]

    def add_tags(self, tags: Sequence[Point], start: int | None = None) -> None:
        """The unblinded T of elements ``start``.. (default: right after the last ones fed);
        chunks may come in any order, each once. The sums need only the subsets, drawn at
        construction, so tags may come before the challenge is out."""
        start = self._tagged if start is None else start
        if start < 0 or start + len(tags) > self.size:
            raise ValueError(f"tags beyond the {self.size} elements of the set")
        self._accumulate(self._tag_sums, start, tags)
        self._tagged += len(tags)

    def hash_sums(self) -> list[Point]:
        """A_t for every subset: the owner's secrets, for its own share's part of K·A_t."""
        if self._hashed != self.size:
            raise ValueError(f"{self._hashed} of {self.size} hashes were fed")
        return [_present(a) for a in self._hash_sums]

    def expected(
        self, proved: Sequence[Sequence[Point]], own_parts: Sequence[Point] | None = None
    ) -> list[Point]:
        """K·A_t from every member's proved answers Z_it = k_i·B_t (one list per member), plus
        the owner's own k_own·A_t when it is a member: r_t⁻¹·Σ_i Z_it + k_own·A_t."""
        if self._challenge is None:
            raise ValueError("no challenge is out")
        if any(len(z) != self.lam for z in proved):
            raise ValueError(f"every member answers all {self.lam} subset checks")
        if own_parts is not None and len(own_parts) != self.lam:
            raise ValueError(f"the owner's part covers all {self.lam} subset checks")
        if not proved and own_parts is None:
            raise ValueError("a committee of no one")
        out = []
        for t, r in enumerate(self._challenge):
            parts = []
            if proved:
                parts.append(mul(add([z[t] for z in proved]), inverse(r)))
            if own_parts is not None:
                parts.append(own_parts[t])
            out.append(add(parts))
        return out

    def failing(self, expected: Sequence[Point]) -> list[int]:
        """The subsets whose tags do not sum to K·A_t; empty when every tag is right."""
        if self._tagged != self.size:
            raise ValueError(f"{self._tagged} of {self.size} tags were fed")
        if self._challenge is None:
            raise ValueError("no challenge is out")
        return [t for t in range(self.lam) if _present(self._tag_sums[t]) != expected[t]]

    def members_at_fault(
        self,
        failed: Sequence[int],
        answers: Mapping[str, Sequence[Point]],
        unblinders: Sequence[int],
        proved: Mapping[str, Sequence[Point]],
    ) -> list[str]:
        """After subsets ``failed`` failed: the members whose own answers do not sum to
        k_i·A_t in one of them.

        ``answers`` maps a member to its Y_ij for the whole set, ``proved`` to its proved
        Z_it = k_i·B_t, and ``unblinders`` are the owner's r_j⁻¹. Each member's answers are
        unblinded once (a multiplication per element), then each subset costs only additions."""
        if self._challenge is None:
            raise ValueError("no challenge is out")
        at_fault = []
        for name, ys in answers.items():
            own = [mul(y, r) for y, r in zip(ys, unblinders, strict=True)]
            for t in failed:
                claimed = add([own[j] for j in self._members(t, self._masks)])
                if claimed != mul(proved[name][t], inverse(self._challenge[t])):
                    at_fault.append(name)
                    break
        return sorted(at_fault)


def _present(point: Point | None) -> Point:
    if point is None:
        raise ValueError("a subset with no element")  # prevented at construction
    return point
