"""Proofs of protocol v2: a Schnorr proof of knowledge and a batched DLEQ (blindmatch.core.proofs).

Every forgery below is one the design names: a proof replayed under another round or member, for
another commitment, over swapped or altered answers, and errors of a colluder that cancel in a plain
sum. Group operations are counted, because the issue's targets are counts.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

import blindmatch.core
from blindmatch.core import proofs
from blindmatch.core.errors import ForgedMessage, WrongPhase
from blindmatch.core.proofs import (
    DSTS,
    PROOF_BYTES,
    BadProof,
    Proof,
    coefficients,
    composites,
    composites_fast,
    prove_equal,
    prove_knowledge,
    verify_equal,
    verify_knowledge,
)
from blindmatch.core.secp256k1 import (
    ORDER,
    Point,
    SecretScalar,
    add,
    base_mul,
    mul,
    point_to_bytes,
    random_scalar,
)

CONTEXT = b"round r-0017 member alpha"
OTHER_CONTEXT = b"round r-0018 member alpha"
G = base_mul(1)


def neg(point: Point) -> Point:
    return mul(point, ORDER - 1)


@dataclass
class Share:
    k: int = field(default_factory=random_scalar)

    @property
    def P(self) -> Point:
        return base_mul(self.k)


def batch(share: Share, n: int) -> tuple[list[Point], list[Point]]:
    inputs = [base_mul(random_scalar()) for _ in range(n)]
    return inputs, [mul(c, share.k) for c in inputs]


@pytest.fixture(scope="module")
def share() -> Share:
    return Share()


@pytest.fixture(scope="module")
def big(share: Share) -> tuple[list[Point], list[Point], Proof]:
    """4,096 honest answers and their proof: the size where one bad answer must still show."""
    inputs, outputs = batch(share, 4096)
    return inputs, outputs, prove_equal(share.k, share.P, inputs, outputs, CONTEXT)


# --- Schnorr proof of knowledge -------------------------------------------------------------------


def test_an_honest_proof_of_knowledge_verifies(share: Share) -> None:
    verify_knowledge(share.P, prove_knowledge(share.k, share.P, CONTEXT), CONTEXT)


def test_a_proof_of_knowledge_is_bound_to_its_context(share: Share) -> None:
    proof = prove_knowledge(share.k, share.P, CONTEXT)
    with pytest.raises(BadProof):
        verify_knowledge(share.P, proof, OTHER_CONTEXT)


def test_a_proof_of_knowledge_is_bound_to_its_commitment(share: Share) -> None:
    proof = prove_knowledge(share.k, share.P, CONTEXT)
    with pytest.raises(BadProof):
        verify_knowledge(Share().P, proof, CONTEXT)


def test_a_proof_of_knowledge_needs_the_share() -> None:
    # A member that commits to P without its logarithm cannot prove it with another share.
    honest, other = Share(), Share()
    with pytest.raises(BadProof):
        verify_knowledge(honest.P, prove_knowledge(other.k, honest.P, CONTEXT), CONTEXT)


def test_an_altered_proof_of_knowledge_fails(share: Share) -> None:
    proof = prove_knowledge(share.k, share.P, CONTEXT)
    for altered in (
        Proof(proof.c, proof.s % (ORDER - 1) + 1),
        Proof(proof.c % (ORDER - 1) + 1, proof.s),
    ):
        with pytest.raises(BadProof):
            verify_knowledge(share.P, altered, CONTEXT)


def test_a_proof_of_knowledge_whose_nonce_point_is_the_identity_is_refused(share: Share) -> None:
    # s·G + c·P = O when s = −c·k: the verifier must refuse it as a proof, not crash on the sum.
    c = 12345
    with pytest.raises(BadProof):
        verify_knowledge(share.P, Proof(c, (-c * share.k) % ORDER), CONTEXT)


# --- Batched DLEQ ---------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 40])
def test_an_honest_batch_proof_verifies(share: Share, n: int) -> None:
    inputs, outputs = batch(share, n)
    verify_equal(
        share.P, inputs, outputs, prove_equal(share.k, share.P, inputs, outputs, CONTEXT), CONTEXT
    )


def test_an_honest_proof_of_4096_answers_verifies(
    share: Share, big: tuple[list[Point], list[Point], Proof]
) -> None:
    inputs, outputs, proof = big
    verify_equal(share.P, inputs, outputs, proof, CONTEXT)


def test_a_batch_proof_is_bound_to_its_context(share: Share) -> None:
    inputs, outputs = batch(share, 8)
    proof = prove_equal(share.k, share.P, inputs, outputs, CONTEXT)
    with pytest.raises(BadProof):
        verify_equal(share.P, inputs, outputs, proof, OTHER_CONTEXT)


def test_a_batch_proof_is_bound_to_its_commitment(share: Share) -> None:
    inputs, outputs = batch(share, 8)
    proof = prove_equal(share.k, share.P, inputs, outputs, CONTEXT)
    with pytest.raises(BadProof):
        verify_equal(Share().P, inputs, outputs, proof, CONTEXT)


def test_answers_under_another_share_fail_against_the_commitment(share: Share) -> None:
    # The cancellation attack's member answers with something other than k_i: here another share.
    inputs, _ = batch(share, 8)
    other = Share()
    outputs = [mul(c, other.k) for c in inputs]
    with pytest.raises(BadProof):
        verify_equal(
            share.P,
            inputs,
            outputs,
            prove_equal(share.k, share.P, inputs, outputs, CONTEXT),
            CONTEXT,
        )
    with pytest.raises(BadProof):
        verify_equal(
            share.P,
            inputs,
            outputs,
            prove_equal(other.k, share.P, inputs, outputs, CONTEXT),
            CONTEXT,
        )


def test_swapped_outputs_fail(share: Share) -> None:
    inputs, outputs = batch(share, 8)
    proof = prove_equal(share.k, share.P, inputs, outputs, CONTEXT)
    swapped = [outputs[1], outputs[0], *outputs[2:]]
    with pytest.raises(BadProof):
        verify_equal(share.P, inputs, swapped, proof, CONTEXT)
    # Nor does a proof made over the swapped list: the prover's own Z = k·M ignores D.
    with pytest.raises(BadProof):
        verify_equal(
            share.P,
            inputs,
            swapped,
            prove_equal(share.k, share.P, inputs, swapped, CONTEXT),
            CONTEXT,
        )


def refused_either_way(
    share: Share, inputs: list[Point], altered: list[Point], proof: Proof
) -> None:
    """Neither the proof of the honest outputs nor a proof made over the altered ones holds."""
    with pytest.raises(BadProof):
        verify_equal(share.P, inputs, altered, proof, CONTEXT)
    with pytest.raises(BadProof):
        verify_equal(
            share.P,
            inputs,
            altered,
            prove_equal(share.k, share.P, inputs, altered, CONTEXT),
            CONTEXT,
        )


@pytest.mark.parametrize("j", [0, 1234, 4095])
def test_one_altered_output_of_4096_fails(
    share: Share, big: tuple[list[Point], list[Point], Proof], j: int
) -> None:
    inputs, outputs, proof = big
    altered = list(outputs)
    altered[j] = add([outputs[j], G])
    refused_either_way(share, inputs, altered, proof)


def test_errors_that_cancel_in_a_plain_sum_fail(share: Share) -> None:
    inputs, outputs = batch(share, 16)
    e = base_mul(random_scalar())
    altered = list(outputs)
    altered[1] = add([outputs[1], e])
    altered[2] = add([outputs[2], neg(e)])
    # Guards the test: an unweighted sum cannot see these errors, the composites must.
    assert add(altered) == add(outputs)
    proof = prove_equal(share.k, share.P, inputs, outputs, CONTEXT)
    refused_either_way(share, inputs, altered, proof)


def test_a_batch_proof_does_not_verify_a_longer_or_shorter_batch(share: Share) -> None:
    inputs, outputs = batch(share, 8)
    proof = prove_equal(share.k, share.P, inputs, outputs, CONTEXT)
    with pytest.raises(BadProof):
        verify_equal(share.P, inputs[:-1], outputs[:-1], proof, CONTEXT)
    extra_in = base_mul(random_scalar())
    with pytest.raises(BadProof):
        verify_equal(
            share.P, [*inputs, extra_in], [*outputs, mul(extra_in, share.k)], proof, CONTEXT
        )


@pytest.mark.parametrize(("n_in", "n_out"), [(0, 0), (3, 2), (2, 3)])
def test_empty_or_mismatched_batches_are_refused(share: Share, n_in: int, n_out: int) -> None:
    inputs, outputs = batch(share, 3)
    proof = prove_equal(share.k, share.P, inputs, outputs, CONTEXT)
    # The prover's own lists are a bug of its caller; a verifier's are a forgery.
    with pytest.raises(ValueError, match=r"inputs but|no element"):
        prove_equal(share.k, share.P, inputs[:n_in], outputs[:n_out], CONTEXT)
    with pytest.raises(BadProof):
        verify_equal(share.P, inputs[:n_in], outputs[:n_out], proof, CONTEXT)


def test_a_batch_proof_whose_nonce_point_is_the_identity_is_refused(share: Share) -> None:
    inputs, outputs = batch(share, 2)
    c = 6789
    with pytest.raises(BadProof):
        verify_equal(share.P, inputs, outputs, Proof(c, (-c * share.k) % ORDER), CONTEXT)


def test_the_fast_composite_agrees_with_the_verifiers(share: Share) -> None:
    inputs, outputs = batch(share, 40)
    assert composites_fast(share.k, share.P, inputs, outputs, CONTEXT) == composites(
        share.P, inputs, outputs, CONTEXT
    )
    # Guards the comparison: with one wrong output the verifier's Z moves and the prover's does not.
    altered = [add([outputs[0], G]), *outputs[1:]]
    m, z = composites(share.P, inputs, altered, CONTEXT)
    m_fast, z_fast = composites_fast(share.k, share.P, inputs, altered, CONTEXT)
    assert m == m_fast
    assert z != z_fast


def test_composite_coefficients_depend_on_context_commitment_and_order(share: Share) -> None:
    inputs, outputs = batch(share, 4)
    m = composites(share.P, inputs, outputs, CONTEXT)[0]
    assert composites(share.P, inputs, outputs, OTHER_CONTEXT)[0] != m
    assert composites(Share().P, inputs, outputs, CONTEXT)[0] != m
    reordered = composites(share.P, inputs[::-1], outputs[::-1], CONTEXT)[0]
    assert reordered != m


# --- The secrets ----------------------------------------------------------------------------------


@pytest.fixture
def nonces(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, SecretScalar]]:
    """Every nonce the provers draw, and its value: known here, so that a test can redo the
    prover's arithmetic with integers."""
    drawn = []

    def draw() -> SecretScalar:
        r = random_scalar()
        drawn.append((r, SecretScalar.from_int(r)))
        return drawn[-1][1]

    monkeypatch.setattr(proofs, "SecretScalar", draw)
    return drawn


def test_proofs_are_what_integer_arithmetic_gives_and_their_nonces_are_destroyed(
    share: Share, nonces: list[tuple[int, SecretScalar]]
) -> None:
    """The transcripts and s = r − c·k mod n, which libsecp256k1 computes on the secrets' buffers,
    are those of the integer formulas, bit for bit."""
    k, P = SecretScalar.from_int(share.k), share.P
    proof = prove_knowledge(k, P, CONTEXT)
    r, nonce = nonces[-1]
    c = proofs._knowledge_challenge(point_to_bytes(P), base_mul(r), CONTEXT)
    assert proof == Proof(c, (r - c * share.k) % ORDER)
    assert nonce.destroyed

    inputs, outputs = batch(share, 5)
    proof = prove_equal(k, P, inputs, outputs, CONTEXT)
    r, nonce = nonces[-1]
    m, z = composites(P, inputs, outputs, CONTEXT)
    c = proofs._equal_challenge(point_to_bytes(P), m, z, base_mul(r), mul(m, r), CONTEXT)
    assert proof == Proof(c, (r - c * share.k) % ORDER)
    assert nonce.destroyed
    assert len(nonces) == 2 and not k.destroyed


def test_a_destroyed_share_proves_nothing() -> None:
    k = SecretScalar()
    P = base_mul(k)
    inputs = [base_mul(random_scalar())]
    outputs = [mul(inputs[0], k)]
    verify_equal(P, inputs, outputs, prove_equal(k, P, inputs, outputs, CONTEXT), CONTEXT)
    k.destroy()
    with pytest.raises(WrongPhase):
        prove_knowledge(k, P, CONTEXT)
    with pytest.raises(WrongPhase):
        prove_equal(k, P, inputs, outputs, CONTEXT)


# --- Encoding -------------------------------------------------------------------------------------


def test_a_proof_round_trips_through_its_bytes(share: Share) -> None:
    inputs, outputs = batch(share, 3)
    for proof in (
        prove_knowledge(share.k, share.P, CONTEXT),
        prove_equal(share.k, share.P, inputs, outputs, CONTEXT),
    ):
        data = proof.to_bytes()
        assert len(data) == PROOF_BYTES == 64
        assert Proof.from_bytes(data) == proof
    assert Proof(1, ORDER - 1).to_bytes() == (1).to_bytes(32, "big") + (ORDER - 1).to_bytes(
        32, "big"
    )
    verify_knowledge(
        share.P, Proof.from_bytes(prove_knowledge(share.k, share.P, CONTEXT).to_bytes()), CONTEXT
    )


@pytest.mark.parametrize("length", [0, 32, 63, 65, 96])
def test_a_proof_of_the_wrong_length_is_refused(share: Share, length: int) -> None:
    data = (prove_knowledge(share.k, share.P, CONTEXT).to_bytes() * 2)[:length]
    with pytest.raises(BadProof, match="64 bytes"):
        Proof.from_bytes(data)


@pytest.mark.parametrize(
    ("c", "s"), [(0, 1), (1, 0), (ORDER, 1), (1, ORDER), (2**256 - 1, 1), (1, 2**256 - 1)]
)
def test_a_proof_with_a_scalar_out_of_range_is_refused(c: int, s: int) -> None:
    # c + n or s + n would verify like c or s if reduced: refusing them keeps one encoding per proof.
    with pytest.raises(BadProof):
        Proof.from_bytes(c.to_bytes(32, "big") + s.to_bytes(32, "big"))
    with pytest.raises(BadProof):
        Proof(c, s)


def test_a_bad_proof_is_a_forged_message() -> None:
    assert issubclass(BadProof, ForgedMessage)
    assert BadProof.code == "PERMISSION_DENIED"


def core_dsts() -> Iterator[tuple[str, bytes]]:
    for info in pkgutil.iter_modules(blindmatch.core.__path__, "blindmatch.core."):
        module = importlib.import_module(info.name)
        for name, value in vars(module).items():
            if isinstance(value, bytes) and ("DST" in name or "DOMAIN" in name):
                yield f"{info.name}.{name}", value


def test_every_dst_of_this_module_is_its_own() -> None:
    assert len(set(DSTS)) == len(DSTS) == 4
    others = {value: name for name, value in core_dsts() if not name.startswith(proofs.__name__)}
    # Guards the scan: it finds the hash-to-curve DST and the signed-statement domain.
    assert {
        "blindmatch.core.oprf.INDICATOR_DST",
        "blindmatch.core.signing.STATEMENT_DOMAIN",
    } <= set(others.values())
    for dst in DSTS:
        assert dst.startswith(b"blindmatch-v2-proofs-")
        assert not any(dst.startswith(o) or o.startswith(dst) for o in others), dst


# --- Group operations -----------------------------------------------------------------------------


@dataclass
class Counts:
    mul: int = 0
    base_mul: int = 0
    add: int = 0

    def wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def counted(*args: Any) -> Any:
            setattr(self, name, getattr(self, name) + 1)
            return fn(*args)

        return counted


@pytest.fixture
def counts(monkeypatch: pytest.MonkeyPatch) -> Counts:
    found = Counts()
    for name in ("mul", "base_mul", "add"):
        monkeypatch.setattr(proofs, name, found.wrap(name, getattr(proofs, name)))
    return found


def as_tuple(c: Counts) -> tuple[int, int, int]:
    return c.mul, c.base_mul, c.add


def measure(counts: Counts, action: Callable[[], object]) -> tuple[int, int, int]:
    counts.mul = counts.base_mul = counts.add = 0
    action()
    return as_tuple(counts)


def test_knowledge_proofs_cost_what_the_docstring_says(counts: Counts, share: Share) -> None:
    P = share.P
    proof = prove_knowledge(share.k, P, CONTEXT)
    assert measure(counts, lambda: prove_knowledge(share.k, P, CONTEXT)) == (0, 1, 0)
    assert measure(counts, lambda: verify_knowledge(P, proof, CONTEXT)) == (1, 1, 1)


@pytest.mark.parametrize("n", [1, 40, 257])
def test_batch_proofs_cost_what_the_docstring_says(counts: Counts, share: Share, n: int) -> None:
    P = share.P
    inputs, outputs = batch(share, n)
    proof = prove_equal(share.k, P, inputs, outputs, CONTEXT)
    # (mul, base_mul, add): the prover n + 2 and one by G, the verifier 2n + 3 and one by G.
    assert measure(counts, lambda: prove_equal(share.k, P, inputs, outputs, CONTEXT)) == (
        n + 2,
        1,
        1,
    )
    assert measure(counts, lambda: verify_equal(P, inputs, outputs, proof, CONTEXT)) == (
        2 * n + 3,
        1,
        4,
    )


def test_counting_sees_every_multiplication(counts: Counts, share: Share) -> None:
    # Guards the counts: an operation that bypassed the patched names would go uncounted.
    inputs, outputs = batch(share, 5)
    counts.mul = 0
    composites(share.P, inputs, outputs, CONTEXT)
    assert counts.mul == 10


def test_every_coefficient_depends_on_every_output(share: Share) -> None:
    """Were d_i hashed from (P, context, i, C_i, D_i) alone, as in RFC 9497, a prover could
    change one output without moving the other coefficients, and search for errors that cancel
    in the composite (a k-sum problem, far below 2^128 work). The seed covers the whole batch."""
    inputs, outputs = batch(share, 8)
    altered = list(outputs)
    altered[3] = add([outputs[3], G])
    p = point_to_bytes(share.P)
    honest = coefficients(p, inputs, outputs, CONTEXT)
    moved = coefficients(p, inputs, altered, CONTEXT)
    assert all(a != b for a, b in zip(honest, moved, strict=True))
