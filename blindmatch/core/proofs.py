"""Zero-knowledge proofs of protocol v2 over secp256k1: a share's knowledge, and its evaluations.

Two non-interactive proofs (Fiat–Shamir), both a pair of scalars ``(c, s)``:

- **Schnorr proof of knowledge** of k for a commitment P = k·G (``prove_knowledge``,
  ``verify_knowledge``). A committee member sends one with P_i at Prepare. The ``context`` binds it
  to one round or watch epoch and to the member: the caller builds it (round or epoch id, member
  name), so a proof cannot be replayed in another round or under another member's name.
  Prover: R = r·G, c = H(P, R, context), s = r − c·k. Verifier: R' = s·G + c·P, accept iff
  c = H(P, R', context).
- **Batched DLEQ** (``prove_equal``, ``verify_equal``) in the style of RFC 9497 section 2.2: one
  proof that D_i = k·C_i for every i, with the same k as P = k·G. Composite coefficients d_i are
  hashed from a seed (P and the context) and from (i, C_i, D_i), so a prover cannot pick errors that
  cancel in the composites; then a single DLEQ proves M = Σ d_i·C_i and Z = Σ d_i·D_i share k
  with (G, P). The prover knows k, so its composite is Z = k·M (RFC 9497's ComputeCompositesFast);
  the verifier computes both sums (ComputeComposites). A prover handed wrong outputs makes a proof
  that fails: its Z = k·M is not Σ d_i·D_i.

Where this deviates from RFC 9497, and why:
- Every hash is ``hash_to_scalar`` (RFC 9380 hash_to_field into Z_n) under its own DST, listed
  below, including the seed, which RFC 9497 takes from the suite's plain hash. The RFC's fixed
  labels "Seed-"/"Composite"/"Challenge" become those DSTs, distinct from every other DST of the
  project, so no hash of this module can be mistaken for another protocol's.
- Transcripts frame every field with a 4-byte length (RFC 9497: 2 bytes), and the index i is
  4 bytes: a batch may exceed 65,535 elements, where the RFC's I2OSP(i, 2) would stop.
- The context goes into the seed (so into every d_i) and into the challenge. RFC 9497 has only its
  suite's contextString there; here it separates rounds, epochs, members and purposes.
- Scalars of a proof are in [1, n − 1], as every scalar of the group module: ``from_bytes``
  refuses 0 and values of n or more, so a proof has one encoding. ``hash_to_scalar`` never returns
  0 (it raises, probability 2^-256), and the prover draws a fresh nonce if s comes out 0. The
  honest proofs this excludes have probability about 2^-255: soundness and zero knowledge are
  unchanged, and no zero scalar exists anywhere in v2.
- A zero seed or composite coefficient (probability 2^-256 per hash, not steerable without
  breaking the hash) makes ``prove_equal`` raise ``InvalidScalar`` and ``verify_equal`` raise
  ``BadProof`` for that batch; at that probability nothing more is done about it.

Group operations (counted in tests/test_proofs.py; ``mul`` is a variable-base multiplication,
``base_mul`` one by G, ``add`` one call to the group's ``add``, whatever its number of points):

===============  ==========  ========  =====
                 mul         base_mul  add
===============  ==========  ========  =====
prove_knowledge  0           1         0
verify_knowledge 1           1         1
prove_equal      n + 2       1         1     (M: n; Z = k·M; t3 = r·M; t2 = r·G)
verify_equal     2n + 3      1         4     (M, Z: 2n; c·P, s·M, c·Z; s·G)
===============  ==========  ========  =====

Each ``add`` of the composites sums n points in one library call (n − 1 additions). Hashing costs
one ``hash_to_scalar`` per element plus two per proof.

Secrets: the share k and the nonce r are ``SecretScalar``s (an int k is accepted for tests and
benchmarks, made one here). r is drawn for one proof and destroyed when it is made; s = r − c·k
mod n is computed by libsecp256k1 in a buffer it wipes (``response``), so neither secret becomes a
Python int, and everything they touch runs in libsecp256k1's constant-time code.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from blindmatch.core.errors import ForgedMessage
from blindmatch.core.secp256k1 import (
    ORDER,
    SCALAR_BYTES,
    InvalidPoint,
    InvalidScalar,
    Point,
    SecretScalar,
    add,
    as_secret,
    base_mul,
    hash_to_scalar,
    mul,
    point_to_bytes,
    response,
)

_DST_PREFIX: Final = b"blindmatch-v2-proofs-"
KNOWLEDGE_CHALLENGE_DST: Final = _DST_PREFIX + b"knowledge-challenge"
EQUAL_SEED_DST: Final = _DST_PREFIX + b"equal-seed"
EQUAL_COMPOSITE_DST: Final = _DST_PREFIX + b"equal-composite"
EQUAL_CHALLENGE_DST: Final = _DST_PREFIX + b"equal-challenge"
DSTS: Final = (
    KNOWLEDGE_CHALLENGE_DST,
    EQUAL_SEED_DST,
    EQUAL_COMPOSITE_DST,
    EQUAL_CHALLENGE_DST,
)
PROOF_BYTES: Final = 2 * SCALAR_BYTES


class BadProof(ForgedMessage):
    """A proof that does not verify, or bytes that are no proof: the party that signed it lied or
    a party in between altered it. Mapped like every forged message (PERMISSION_DENIED)."""


@dataclass(frozen=True)
class Proof:
    """A challenge c and a response s, each in [1, n − 1]."""

    c: int
    s: int

    def __post_init__(self) -> None:
        if not (0 < self.c < ORDER and 0 < self.s < ORDER):
            raise BadProof("a proof's scalars must be in [1, n - 1]")

    def to_bytes(self) -> bytes:
        return self.c.to_bytes(SCALAR_BYTES, "big") + self.s.to_bytes(SCALAR_BYTES, "big")

    @classmethod
    def from_bytes(cls, data: bytes) -> Proof:
        if len(data) != PROOF_BYTES:
            raise BadProof(f"a proof is {PROOF_BYTES} bytes; got {len(data)}")
        return cls(
            int.from_bytes(data[:SCALAR_BYTES], "big"), int.from_bytes(data[SCALAR_BYTES:], "big")
        )


def _frame(*parts: bytes) -> bytes:
    # A length before every field, so no two different tuples of fields give the same transcript.
    return b"".join(len(part).to_bytes(4, "big") + part for part in parts)


# --- Schnorr proof of knowledge -------------------------------------------------------------------


def _knowledge_challenge(p: bytes, r: Point, context: bytes) -> int:
    return hash_to_scalar(_frame(p, point_to_bytes(r), context), KNOWLEDGE_CHALLENGE_DST)


def prove_knowledge(k: SecretScalar | int, P: Point, context: bytes) -> Proof:
    """A proof that the caller knows k with P = k·G, bound to ``context``."""
    k = as_secret(k)
    p = point_to_bytes(P)
    while True:
        r = SecretScalar()
        try:
            c = _knowledge_challenge(p, base_mul(r), context)
            s = response(r, c, k)
        finally:
            r.destroy()
        if s:
            return Proof(c, s)


def verify_knowledge(P: Point, proof: Proof, context: bytes) -> None:
    """Raises ``BadProof`` unless ``proof`` shows knowledge of log_G(P) under ``context``."""
    try:
        expected = _knowledge_challenge(
            point_to_bytes(P), add([base_mul(proof.s), mul(P, proof.c)]), context
        )
    except (InvalidPoint, InvalidScalar):
        raise BadProof("the proof of knowledge does not verify") from None
    if expected != proof.c:
        raise BadProof("the proof of knowledge does not verify")


# --- Batched DLEQ ---------------------------------------------------------------------------------


def _check_batch(inputs: Sequence[Point], outputs: Sequence[Point], error: type[Exception]) -> None:
    if len(inputs) != len(outputs):
        raise error(f"{len(inputs)} inputs but {len(outputs)} outputs")
    if not inputs:
        raise error("a proof over no element proves nothing")


def coefficients(
    p: bytes, inputs: Sequence[Point], outputs: Sequence[Point], context: bytes
) -> list[int]:
    """The composite weights d_i of a batch, for the commitment ``p`` (encoded P)."""
    # Every input and output goes into the seed: with only (P, context) a prover could change
    # one output without changing the others' coefficients, and search for errors that cancel
    # (a k-sum problem, about 2^43 work for 64 elements; RFC 9497's seed has the same gap).
    batch = hashlib.sha256()
    for ci, di in zip(inputs, outputs, strict=True):
        batch.update(point_to_bytes(ci) + point_to_bytes(di))
    seed = hash_to_scalar(_frame(p, context, batch.digest()), EQUAL_SEED_DST).to_bytes(
        SCALAR_BYTES, "big"
    )
    return [
        hash_to_scalar(
            _frame(seed, i.to_bytes(4, "big"), point_to_bytes(ci), point_to_bytes(di)),
            EQUAL_COMPOSITE_DST,
        )
        for i, (ci, di) in enumerate(zip(inputs, outputs, strict=True))
    ]


def _weighted_sum(coefficients: Sequence[int], points: Sequence[Point]) -> Point:
    return add([mul(point, d) for d, point in zip(coefficients, points, strict=True)])


def composites(
    P: Point, inputs: Sequence[Point], outputs: Sequence[Point], context: bytes
) -> tuple[Point, Point]:
    """(M, Z) = (Σ d_i·C_i, Σ d_i·D_i), as the verifier computes them (RFC 9497 ComputeComposites).

    Raises ``BadProof`` for mismatched or empty lists, ``InvalidPoint`` if a sum is the identity,
    and ``InvalidScalar`` for a zero coefficient."""
    _check_batch(inputs, outputs, BadProof)
    d = coefficients(point_to_bytes(P), inputs, outputs, context)
    return _weighted_sum(d, inputs), _weighted_sum(d, outputs)


def composites_fast(
    k: SecretScalar | int,
    P: Point,
    inputs: Sequence[Point],
    outputs: Sequence[Point],
    context: bytes,
) -> tuple[Point, Point]:
    """(M, k·M): the same composites for a prover that knows k and honest outputs, for n + 1
    multiplications instead of 2n (RFC 9497 ComputeCompositesFast).

    Raises ``ValueError`` for mismatched or empty lists: the prover's own lists, not a forgery."""
    _check_batch(inputs, outputs, ValueError)
    d = coefficients(point_to_bytes(P), inputs, outputs, context)
    m = _weighted_sum(d, inputs)
    return m, mul(m, k)


def _equal_challenge(p: bytes, m: Point, z: Point, t2: Point, t3: Point, context: bytes) -> int:
    return hash_to_scalar(
        _frame(p, *(point_to_bytes(x) for x in (m, z, t2, t3)), context), EQUAL_CHALLENGE_DST
    )


def prove_equal(
    k: SecretScalar | int,
    P: Point,
    inputs: Sequence[Point],
    outputs: Sequence[Point],
    context: bytes,
) -> Proof:
    """A proof that outputs[i] = k·inputs[i] for every i, with P = k·G, bound to ``context``.

    Raises ``ValueError`` for mismatched or empty lists (nothing to prove)."""
    k = as_secret(k)
    p = point_to_bytes(P)
    m, z = composites_fast(k, P, inputs, outputs, context)
    while True:
        r = SecretScalar()
        try:
            c = _equal_challenge(p, m, z, base_mul(r), mul(m, r), context)
            s = response(r, c, k)
        finally:
            r.destroy()
        if s:
            return Proof(c, s)


def verify_equal(
    P: Point, inputs: Sequence[Point], outputs: Sequence[Point], proof: Proof, context: bytes
) -> None:
    """Raises ``BadProof`` unless ``proof`` shows outputs[i] = log_G(P)·inputs[i] for every i."""
    try:
        m, z = composites(P, inputs, outputs, context)
        t2 = add([base_mul(proof.s), mul(P, proof.c)])
        t3 = add([mul(m, proof.s), mul(z, proof.c)])
        expected = _equal_challenge(point_to_bytes(P), m, z, t2, t3, context)
    except (InvalidPoint, InvalidScalar):
        # An identity composite or nonce point, or a zero hash, is as good as a wrong proof.
        raise BadProof("the proof of equal logarithms does not verify") from None
    if expected != proof.c:
        raise BadProof("the proof of equal logarithms does not verify")
