"""blindmatch.core.evaluation: share commitments, the transcript every party signs, and what a
member charges a requester."""

from __future__ import annotations

from dataclasses import replace

import pytest

from blindmatch.core.errors import BadMessage, CapExceeded, ForgedMessage
from blindmatch.core.evaluation import (
    Commitment,
    Equivocation,
    EvaluationLedger,
    EvaluationRequest,
    Transcript,
    commit,
    elements_digest,
)
from blindmatch.core.oprf import LAMBDA
from blindmatch.core.proofs import BadProof
from blindmatch.core.secp256k1 import ORDER, add, base_mul, mul, point_to_bytes, random_scalar

SPEC = b"\x01" * 32


def transcript(**changes: object) -> Transcript:
    shares = {m: random_scalar() for m in ("alpha", "bravo", "charlie")}
    base = Transcript(
        "round",
        "r1",
        SPEC,
        tuple(commit(k, "round", "r1", m) for m, k in sorted(shares.items())),
        {"alpha": 100, "bravo": 50, "charlie": 10},
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def test_a_commitment_proves_its_share_for_its_round_and_member_only() -> None:
    k = random_scalar()
    c = commit(k, "round", "r1", "alpha")
    assert c.verify("round", "r1") == base_mul(k)
    with pytest.raises(BadProof):
        c.verify("round", "r2")
    with pytest.raises(BadProof):
        c.verify("epoch", "r1")
    with pytest.raises(BadProof):  # bravo cannot present alpha's commitment as its own
        replace(c, member="bravo").verify("round", "r1")


def test_a_commitment_chosen_to_cancel_another_cannot_be_proved() -> None:
    """P_b = c·G - P_a would cancel alpha's share from K; bravo does not know its logarithm,
    so any proof it offers fails."""
    k_a, c = random_scalar(), random_scalar()
    p_a = base_mul(k_a)
    p_b = add([base_mul(c), mul(p_a, ORDER - 1)])
    borrowed = commit(random_scalar(), "round", "r1", "bravo").proof
    forged = Commitment("bravo", point_to_bytes(p_b), borrowed)
    with pytest.raises(BadProof):
        forged.verify("round", "r1")


def test_every_party_verifies_every_proof_of_the_transcript() -> None:
    t = transcript()
    assert set(t.verified_keys()) == {"alpha", "bravo", "charlie"}
    other = commit(random_scalar(), "round", "r1", "charlie")
    bad = replace(t, commitments=(*t.commitments[:2], replace(other, proof=t.commitments[0].proof)))
    with pytest.raises(BadProof):
        bad.verified_keys()


@pytest.mark.parametrize(
    "change",
    [
        {"sizes": {"alpha": 101, "bravo": 50, "charlie": 10}},
        {"holder_sizes": {"alpha": 1}},
        {"caps": {("alpha", "bravo"): 5}},
        {"ident": "r2"},
        {"spec_digest": b"\x02" * 32},
    ],
)
def test_any_difference_in_the_transcript_changes_its_digest(change: dict[str, object]) -> None:
    t = transcript()
    assert replace(t, **change).digest() != t.digest()  # type: ignore[arg-type]


def test_a_transcript_refuses_nonsense() -> None:
    t = transcript()
    with pytest.raises(BadMessage, match="sorted by member"):
        replace(t, commitments=tuple(reversed(t.commitments)))
    with pytest.raises(BadMessage, match="one each"):
        replace(t, commitments=(t.commitments[0], t.commitments[0]))
    with pytest.raises(BadMessage, match="committee of at least one"):
        replace(t, commitments=())
    with pytest.raises(BadMessage, match="out of range"):
        replace(t, sizes={"alpha": -1})
    with pytest.raises(BadMessage, match="out of range"):
        replace(t, caps={("alpha", "bravo"): 1 << 40})
    with pytest.raises(BadMessage, match="unknown purpose"):
        replace(t, purpose="ring")


def request(t: Transcript, seq: int = 0, count: int = 10, who: str = "bravo") -> EvaluationRequest:
    return EvaluationRequest(
        "round", "r1", t.digest(), who, seq, count, elements_digest(f"{seq}:{count}".encode())
    )


def test_a_member_charges_up_to_the_announced_size_plus_lambda() -> None:
    t = transcript()
    ledger = EvaluationLedger(t)
    assert ledger.admit(request(t, 0, 50))
    assert ledger.admit(request(t, 1, LAMBDA))
    with pytest.raises(CapExceeded, match=f"asks for {51 + LAMBDA} .* allow {50 + LAMBDA}"):
        ledger.admit(request(t, 2, 1))
    assert ledger.charged == {("bravo", "set"): 50 + LAMBDA}


def test_the_same_request_again_costs_nothing_and_another_at_its_seq_is_equivocation() -> None:
    t = transcript()
    ledger = EvaluationLedger(t)
    first = request(t, 0, 10)
    assert ledger.admit(first) is True
    assert ledger.admit(first) is False
    assert ledger.charged == {("bravo", "set"): 10}
    with pytest.raises(Equivocation, match="two different requests at seq 0"):
        ledger.admit(replace(first, elements=elements_digest(b"other")))
    with pytest.raises(Equivocation):
        ledger.admit(replace(first, count=9))
    assert ledger.charged == {("bravo", "set"): 10}


def test_a_request_under_another_transcript_or_for_another_round_is_refused() -> None:
    t = transcript()
    ledger = EvaluationLedger(t)
    shown_other = replace(t, sizes={"alpha": 100, "bravo": 5000, "charlie": 10})
    with pytest.raises(ForgedMessage, match="another transcript"):
        ledger.admit(request(shown_other, 0, 4000))
    with pytest.raises(ForgedMessage, match="sent to round r1"):
        ledger.admit(replace(request(t), ident="r2"))
    with pytest.raises(ForgedMessage, match="announced no set"):
        ledger.admit(request(t, who="delta"))
    with pytest.raises(BadMessage):
        ledger.admit(request(t, count=0))
    assert ledger.charged == {}


def test_a_holders_epoch_set_and_its_checks_are_charged_to_separate_budgets() -> None:
    t = replace(
        transcript(),
        purpose="epoch",
        holder_sizes={"alpha": 30, "bravo": 20},
        caps={("alpha", "bravo"): 3, ("bravo", "alpha"): 3},
    )
    ledger = EvaluationLedger(t)
    assert ledger.admit(replace(request(t, 0, 20 + LAMBDA), purpose="epoch"))  # bravo's set
    check = replace(request(t, 1, 3), purpose="epoch", kind="check")
    assert ledger.admit(check)
    with pytest.raises(CapExceeded, match="alpha's, allows 3"):
        ledger.admit(replace(check, seq=2, count=1))
    assert ledger.charged == {("bravo", "set"): 20 + LAMBDA, ("bravo", "check"): 3}


def test_a_request_refuses_counters_that_do_not_fit_a_statement() -> None:
    t = transcript()
    with pytest.raises(BadMessage, match="seq and count"):
        request(t, seq=1 << 64)
    with pytest.raises(BadMessage, match="one of set, check"):
        replace(request(t), kind="everything")
