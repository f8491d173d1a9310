"""Watch checks of protocol v2 (core.checker): verified epoch tags, filter hits, sealed alerts and
dummies, and what the holders open; and the members' epoch allowance (core.evaluation).

The roles are driven in memory, as tests/test_committee.py does: no signatures, no transport."""

from __future__ import annotations

import datetime
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

import pytest

from blindmatch.core import oprf, owner, proofs
from blindmatch.core.checker import SMALL, Check, SealedAlert, open_alerts
from blindmatch.core.errors import BadMessage, CapExceeded, ForgedMessage, WrongPhase
from blindmatch.core.evaluation import (
    Equivocation,
    EvaluationAnswer,
    EvaluationLedger,
    EvaluationRequest,
    Transcript,
    elements_digest,
)
from blindmatch.core.member import Member
from blindmatch.core.oprf import LAMBDA, tag
from blindmatch.core.owner import VerificationFailed
from blindmatch.core.proofs import BadProof
from blindmatch.core.secp256k1 import (
    Point,
    add,
    base_mul,
    mul,
    points_from_bytes,
    points_to_bytes,
    random_scalar,
)
from blindmatch.core.signing import Signer, Trust
from blindmatch.core.watch_sealed import (
    EpochFilter,
    SealedMessageRejected,
    SignedFilter,
    filter_statement,
    message_count,
    sealed_bytes,
)
from blindmatch.runtime.pki import CaMaterial, CertMaterial, issue, new_ca
from tests.values import Reply, another_share, committee, hashes

EPOCH = "epoch-7"
SPEC = b"\x05" * 32
COMMITTEE = ("alpha", "bravo", "charlie")
CA: CaMaterial = new_ca("checker test CA")
CERTS: dict[str, CertMaterial] = {
    name: issue(CA, name, "node") for name in ("alpha", "bravo", "charlie", "delta")
}
SIGNERS = {name: Signer(c.cert_pem, c.key_pem) for name, c in CERTS.items()}
PARTIES = {
    name: Trust(CA.cert_pem).party(
        c.cert_pem, now=datetime.datetime.now(datetime.UTC), role="node", names=[name]
    )
    for name, c in CERTS.items()
}
SETS = {
    "alpha": [f"alpha-{i}.example" for i in range(30)] + ["ab.example"],
    "bravo": [f"bravo-{i}.example" for i in range(20)] + ["ab.example", "b-only.example"],
    "charlie": [f"charlie-{i}.example" for i in range(10)],
    "delta": [f"delta-{i}.example" for i in range(5)],
}


@dataclass
class Epoch:
    members: dict[str, Member]
    transcript: Transcript
    keys: dict[str, Point]
    tag_maps: dict[str, dict[bytes, int]]  # holder -> its epoch tag -> position
    filters: dict[str, EpochFilter]


def epoch_tags(members: Mapping[str, Member], values: Sequence[str]) -> list[bytes]:
    """The holders' epoch tags, made here from every share (only a test holds them all): what
    each holder's own verified evaluation gives it."""
    parts = [m.own_part(hashes(values)) for m in members.values()]
    return [tag(EPOCH.encode(), add(list(ts))) for ts in zip(*parts, strict=True)]


def epoch(caps: Mapping[tuple[str, str], int] | None = None) -> Epoch:
    if caps is None:
        caps = {(h, c): 1000 for h in SETS for c in SETS if h != c}
    sizes = {h: len(v) for h, v in SETS.items()}
    members, transcript = committee("epoch", EPOCH, SPEC, COMMITTEE, sizes, sizes, caps)
    tag_maps, filters = {}, {}
    for holder, values in SETS.items():
        tags = epoch_tags(members, values)
        tag_maps[holder] = {t: i for i, t in enumerate(tags)}
        filters[holder] = EpochFilter.build(EPOCH, holder, tags, 1e-6)
    return Epoch(members, transcript, transcript.verified_keys(), tag_maps, filters)


def run_check(
    ep: Epoch,
    checker: str,
    values: Sequence[str],
    *,
    check_id: str = "check-1",
    seq: int = 0,
    small: int = SMALL,
    replies: Mapping[str, Reply] | None = None,
    given: dict[str, dict[int, tuple[EvaluationAnswer, bytes]]] | None = None,
) -> Check:
    """A check through every other member; ``given`` collects what each member answered."""
    check = Check(
        checker,
        ep.transcript,
        ep.keys,
        hashes(values),
        ep.members.get(checker),
        check_id,
        seq=seq,
        kinds=["domain"] * len(values),
        small=small,
    )
    for request, packed in check.requests():
        for m in check.remote:
            answer, points = ep.members[m].answer(request, packed)
            if replies and m in replies:
                answer, points = replies[m](request, packed, answer, points)
            if given is not None:
                given.setdefault(m, {})[request.seq] = (answer, points)
            check.answer(answer, points)
    return check


def signed(bloom: EpochFilter, by: str | None = None) -> SignedFilter:
    """``bloom`` as its holder (or ``by``) signs it."""
    return SignedFilter(bloom, SIGNERS[by or bloom.holder].sign(filter_statement(bloom)))


def others(ep: Epoch, checker: str) -> dict[str, SignedFilter]:
    return {h: signed(f) for h, f in ep.filters.items() if h != checker}


@pytest.fixture
def ep() -> Epoch:
    """A fresh epoch per test: members' ledgers remember every seq."""
    return epoch()


def opened(ep: Epoch, holder: str, messages: Sequence[SealedAlert]) -> list[int]:
    mine = [m for m in messages if m.holder == holder]
    alerts = open_alerts(holder, CERTS[holder].key_pem, EPOCH, ep.tag_maps[holder], mine)
    return sorted(a.position for a in alerts)


HOLDER_CERTS = {name: c.cert_pem for name, c in CERTS.items()}


# --- hits and alerts ------------------------------------------------------------------------------


@pytest.mark.parametrize("small", [SMALL, 0], ids=["dleq", "subset-checks"])
@pytest.mark.parametrize("checker", ["delta", "alpha"], ids=["outside", "member"])
def test_a_checked_value_raises_exactly_its_holders_alert(
    ep: Epoch, checker: str, small: int
) -> None:
    values = ["b-only.example", "nobody.example", "charlie-3.example"]
    check = run_check(ep, checker, values, small=small, seq=10)
    assert check.proved is (small == SMALL)
    tested = others(ep, checker)
    hits = check.hits(tested, PARTIES)
    assert {h: p for h, p in hits.items() if p} == {"bravo": [0], "charlie": [2]}
    messages = check.sealed_messages(HOLDER_CERTS)
    assert {m.holder for m in messages} == set(tested)
    b_only = SETS["bravo"].index("b-only.example")
    for holder in ("alpha", "bravo", "charlie"):
        if holder in tested:
            expected = {"bravo": [b_only], "charlie": [3]}.get(holder, [])
            assert opened(ep, holder, messages) == expected  # dummies only for the others
    alerts = open_alerts(
        "bravo",
        CERTS["bravo"].key_pem,
        EPOCH,
        ep.tag_maps["bravo"],
        [m for m in messages if m.holder == "bravo"],
    )
    assert [(a.kind, a.checker, a.check_id) for a in alerts] == [("domain", checker, "check-1")]


def test_a_value_two_holders_hold_alerts_both_and_the_checker_learns_both(ep: Epoch) -> None:
    check = run_check(ep, "delta", ["ab.example"])
    assert check.hits(others(ep, "delta"), PARTIES) == {"alpha": [0], "bravo": [0], "charlie": []}
    messages = check.sealed_messages(HOLDER_CERTS)
    assert opened(ep, "alpha", messages) == [SETS["alpha"].index("ab.example")]
    assert opened(ep, "bravo", messages) == [SETS["bravo"].index("ab.example")]
    assert opened(ep, "charlie", messages) == []


def test_the_sealed_messages_are_as_many_and_as_long_whether_a_value_hits_or_not(ep: Epoch) -> None:
    counts = []
    for seq, value in enumerate(("b-only.example", "nobody.example")):
        check = run_check(ep, "delta", [value, "also-nobody.example"], seq=seq)
        check.hits(others(ep, "delta"), PARTIES)
        messages = check.sealed_messages(HOLDER_CERTS)
        # one batch per holder, of one message per value, alert or dummy
        assert {len(m.sealed) for m in messages} == {sealed_bytes(2)}
        counts.append(
            {
                h: [message_count(m.sealed) for m in messages if m.holder == h]
                for h in others(ep, "delta")
            }
        )
    assert counts[0] == counts[1] == {"alpha": [2], "bravo": [2], "charlie": [2]}


def test_sealed_messages_are_made_once_and_only_after_the_filters_are_tested(ep: Epoch) -> None:
    check = run_check(ep, "delta", ["b-only.example"])
    with pytest.raises(WrongPhase, match="tested no filter"):
        check.sealed_messages(HOLDER_CERTS)
    check.hits(others(ep, "delta"), PARTIES)
    with pytest.raises(WrongPhase, match="has tested its filters"):
        check.hits(others(ep, "delta"), PARTIES)
    with pytest.raises(BadMessage, match="no certificate for tested holder"):
        check.sealed_messages({"alpha": HOLDER_CERTS["alpha"]})
    assert check.sealed_messages(HOLDER_CERTS) == check.sealed_messages(HOLDER_CERTS)


# --- verification ---------------------------------------------------------------------------------


def test_a_member_answering_a_small_check_with_another_share_fails_and_no_tag_is_used(
    ep: Epoch,
) -> None:
    with pytest.raises(BadProof):
        run_check(ep, "delta", ["b-only.example"], replies={"bravo": another_share()})
    # The same check again, driven by hand, to see what is left of it after the failure.
    check = Check(
        "delta",
        ep.transcript,
        ep.keys,
        hashes(["b-only.example"]),
        None,
        "check-2",
        seq=1,
    )
    ((request, packed),) = check.requests()
    bad = another_share()(request, packed, *ep.members["bravo"].answer(request, packed))
    with pytest.raises(BadProof):
        check.answer(*bad)
    with pytest.raises(VerificationFailed) as failed:
        check.answer(*ep.members["alpha"].answer(request, packed))
    assert failed.value.members == ("bravo",)
    for step in (check.tags, lambda: check.hits(others(ep, "delta"), PARTIES)):
        with pytest.raises(VerificationFailed):
            step()
    with pytest.raises(WrongPhase):  # nothing tested, so nothing to seal: no alert, no dummy
        check.sealed_messages(HOLDER_CERTS)


def wrong_at(index: int) -> Reply:
    def reply(
        request: EvaluationRequest, packed: bytes, answer: EvaluationAnswer, points: bytes
    ) -> tuple[EvaluationAnswer, bytes]:
        if request.proved:
            return answer, points  # the subset checks' proof would give it away
        ys = points_from_bytes(points)
        ys[index] = mul(ys[index], 2)
        out = points_to_bytes(ys)
        return replace(answer, answers=elements_digest(out)), out

    return reply


def test_a_large_check_with_one_wrong_answer_fails_and_names_the_member(ep: Epoch) -> None:
    values = [f"sighted-{i}.example" for i in range(199)] + ["b-only.example"]
    given: dict[str, dict[int, tuple[EvaluationAnswer, bytes]]] = {}
    check = run_check(ep, "delta", values, seq=3, replies={"charlie": wrong_at(123)}, given=given)
    assert not check.proved
    with pytest.raises(VerificationFailed):
        check.hits(others(ep, "delta"), PARTIES)
    with pytest.raises(VerificationFailed):
        check.tags()
    with pytest.raises(WrongPhase):
        check.sealed_messages(HOLDER_CERTS)
    assert check.blame(given) == ["charlie"]


def test_a_large_check_answered_honestly_passes_at_any_seq(ep: Epoch) -> None:
    values = [f"sighted-{i}.example" for i in range(199)] + ["b-only.example"]
    check = run_check(ep, "delta", values, seq=20)
    assert check.next_seq == 22
    assert check.hits(others(ep, "delta"), PARTIES)["bravo"] == [199]


def test_a_checkers_checks_take_seqs_of_their_own() -> None:
    ep = epoch()
    first = run_check(ep, "delta", ["b-only.example"], seq=0)
    second = run_check(ep, "delta", [f"v{i}.example" for i in range(70)], seq=first.next_seq)
    assert second.tags() != first.tags()
    with pytest.raises(Equivocation, match="two different requests at seq 0"):
        run_check(ep, "delta", ["nobody.example"], seq=0)


# --- budgets ---------------------------------------------------------------------------------------


def caps_for(checker: str, **by_holder: int) -> dict[tuple[str, str], int]:
    caps = {(h, c): 1000 for h in SETS for c in SETS if h != c}
    for holder, cap in by_holder.items():
        caps[holder, checker] = cap
    return caps


def test_a_checker_cannot_exceed_the_lowest_cap_any_holder_signed_for_it() -> None:
    ep = epoch(caps_for("delta", alpha=100, bravo=5, charlie=50))
    assert ep.transcript.allowance("delta", "check") == 5
    run_check(ep, "delta", [f"v{i}.example" for i in range(4)], seq=0)
    run_check(ep, "delta", ["v4.example"], seq=1)
    with pytest.raises(CapExceeded, match=r"asks for 6 evaluations; .*bravo's, allows 5"):
        run_check(ep, "delta", ["v5.example"], seq=2)
    assert {m.ledger.charged["delta", "check"] for m in ep.members.values() if m.ledger} == {5}


def test_a_large_checks_subset_checks_count_against_the_cap() -> None:
    ep = epoch(caps_for("delta", bravo=SMALL + LAMBDA))
    values = [f"v{i}.example" for i in range(SMALL + 1)]
    with pytest.raises(CapExceeded, match=f"asks for {SMALL + 1 + LAMBDA} evaluations"):
        run_check(ep, "delta", values)  # refused at its subset checks, its chunk charged
    ep = epoch(caps_for("delta", bravo=SMALL + LAMBDA))
    run_check(ep, "delta", values[:SMALL])  # the DLEQ path charges the values alone
    run_check(ep, "delta", values[:LAMBDA], seq=1)
    with pytest.raises(CapExceeded):
        run_check(ep, "delta", values[:1], seq=2)


def test_a_member_refuses_a_checker_that_a_holder_gave_no_cap() -> None:
    caps = caps_for("delta")
    del caps["charlie", "delta"]
    ep = epoch(caps)
    with pytest.raises(CapExceeded, match="charlie signed no check cap for delta"):
        run_check(ep, "delta", ["b-only.example"])
    for m in ep.members.values():
        assert m.ledger is not None and m.ledger.charged == {}


def test_the_epoch_allowance_needs_no_cap_from_the_checker_itself_and_rounds_are_unchanged(
    ep: Epoch,
) -> None:
    assert ("alpha", "alpha") not in ep.transcript.caps
    assert ep.transcript.allowance("alpha", "check") == 1000
    alone = replace(ep.transcript, holder_sizes={"delta": 5}, caps={})
    assert alone.allowance("delta", "check") == 0  # nobody else to check against
    # A holder's own epoch set has a budget of its own: its announced holder set and λ.
    assert alone.allowance("delta") == 5 + LAMBDA
    as_round = replace(ep.transcript, purpose="round", caps={})
    assert as_round.allowance("delta") == len(SETS["delta"]) + LAMBDA
    with pytest.raises(BadMessage, match="a 'check' request in a round"):
        as_round.allowance("delta", "check")
    ledger = EvaluationLedger(replace(ep.transcript, caps={}))
    request = EvaluationRequest(
        "epoch", EPOCH, ledger.transcript.digest(), "delta", 0, 1, b"x", kind="check"
    )
    with pytest.raises(CapExceeded, match="alpha signed no check cap for delta"):
        ledger.admit(request)


# --- what a holder opens ----------------------------------------------------------------------------


def test_alerts_sealed_for_one_check_do_not_open_under_another_check_or_epoch(ep: Epoch) -> None:
    check = run_check(ep, "delta", ["b-only.example"], check_id="check-9")
    check.hits(others(ep, "delta"), PARTIES)
    (alert,) = [m for m in check.sealed_messages(HOLDER_CERTS) if m.holder == "bravo"]
    assert opened(ep, "bravo", [alert]) == [SETS["bravo"].index("b-only.example")]
    key, tags = CERTS["bravo"].key_pem, ep.tag_maps["bravo"]
    for forged, epoch_id in [
        (replace(alert, check_id="check-10"), EPOCH),
        (replace(alert, epoch_id="epoch-8"), "epoch-8"),  # relabelled for the holder's epoch
        (alert, "epoch-8"),  # delivered as this epoch's when the holder is in another
        (replace(alert, request=b"\x00" * 32), EPOCH),
        (replace(alert, checker="alpha"), EPOCH),  # re-attributed to another checker
    ]:
        with pytest.raises(SealedMessageRejected):
            open_alerts("bravo", key, epoch_id, tags, [forged])
    with pytest.raises(SealedMessageRejected):  # bravo's message delivered to charlie
        open_alerts(
            "charlie", CERTS["charlie"].key_pem, EPOCH, tags, [replace(alert, holder="charlie")]
        )


def test_an_alert_of_a_tag_the_holder_does_not_hold_is_ignored(ep: Epoch) -> None:
    """A filter's false positive: the holder cannot map the tag, and reports nothing."""
    held = list(ep.tag_maps["bravo"])
    # bravo's filter with one of its tags swapped for the checked value's: a false positive.
    unlucky = EpochFilter.build(
        EPOCH, "bravo", held[1:] + epoch_tags(ep.members, ["nobody.example"]), 1e-6
    )
    check = run_check(ep, "delta", ["nobody.example"])
    assert check.hits({"bravo": signed(unlucky)}, PARTIES) == {"bravo": [0]}
    messages = check.sealed_messages(HOLDER_CERTS)
    assert open_alerts("bravo", CERTS["bravo"].key_pem, EPOCH, ep.tag_maps["bravo"], messages) == []


def test_filters_are_tested_only_as_announced(ep: Epoch) -> None:
    check = run_check(ep, "delta", ["b-only.example"])
    with pytest.raises(BadMessage, match="filed under alpha is bravo's"):
        check.hits({"alpha": signed(ep.filters["bravo"])}, PARTIES)
    stuffed = EpochFilter.build(EPOCH, "charlie", [bytes(16)] * 11, 1e-6)
    with pytest.raises(BadMessage, match="holds 11 tags; the transcript announced 10"):
        check.hits({"charlie": signed(stuffed)}, PARTIES)


def test_a_filter_its_holder_did_not_sign_is_refused(ep: Epoch) -> None:
    """The coordinator serves the filters: an empty one in bravo's name would suppress every
    alert to bravo, unseen."""
    check = run_check(ep, "delta", ["b-only.example"])
    empty = EpochFilter.build(EPOCH, "bravo", [], 1e-6)
    with pytest.raises(ForgedMessage, match="not signed by node/bravo"):
        check.hits({"bravo": signed(empty, by="charlie")}, PARTIES)
    with pytest.raises(ForgedMessage, match="not signed by node/bravo"):
        check.hits({"bravo": SignedFilter(empty, signed(ep.filters["bravo"]).signature)}, PARTIES)
    assert check.hits({"bravo": signed(ep.filters["bravo"])}, PARTIES) == {"bravo": [0]}


def test_a_filter_looser_than_the_protocols_error_rate_is_refused(ep: Epoch) -> None:
    """Each false positive hands its holder the tag of a value it does not hold."""
    check = run_check(ep, "delta", ["b-only.example"])
    loose = EpochFilter.build(EPOCH, "bravo", list(ep.tag_maps["bravo"]), 1e-3)
    with pytest.raises(BadMessage, match="false-positive rate"):
        check.hits({"bravo": signed(loose)}, PARTIES)


# --- cost -------------------------------------------------------------------------------------------


@dataclass
class Counts:
    mul: int = 0  # variable-base and base multiplications
    add: int = 0  # point additions (a sum of k points is k - 1)


def count_group_operations(monkeypatch: pytest.MonkeyPatch) -> Counts:
    counts = Counts()

    def counting_mul(real: Callable[..., Point]) -> Callable[..., Point]:
        def wrapped(*args: object) -> Point:
            counts.mul += 1
            return real(*args)

        return wrapped

    def counting_add(points: Sequence[Point]) -> Point:
        counts.add += len(points) - 1
        return add(points)

    for module in (oprf, proofs):
        monkeypatch.setattr(module, "add", counting_add)
    for module in (oprf, proofs, owner):
        monkeypatch.setattr(module, "mul", counting_mul(mul))
    monkeypatch.setattr(proofs, "base_mul", counting_mul(base_mul))
    return counts


def random_values(n: int) -> list[Point]:
    return [base_mul(random_scalar()) for _ in range(n)]


def check_points(ep: Epoch, points: list[Point], small: int, seq: int) -> Check:
    check = Check("delta", ep.transcript, ep.keys, points, None, "cost", seq=seq, small=small)
    for request, packed in check.requests():
        for m in check.remote:
            check.answer(*ep.members[m].answer(request, packed))
    check.tags()
    return check


def test_group_operations_per_checked_value(monkeypatch: pytest.MonkeyPatch) -> None:
    """Against c + 2 multiplications per value, the evaluations a check needs: the DLEQ path
    costs 4c + 2 per value (members: evaluate and prove; the checker: blind, unblind and verify)
    plus 5c, so a one-value check costs 35 for 5 needed; subset checks cost c + 2 per value plus
    about λ·(4c + 2), within 1.3x from a few hundred values (10,000 in bench terms)."""
    ep = epoch(caps_for("delta", alpha=20_000, bravo=20_000, charlie=20_000))
    c = len(COMMITTEE)
    counts = count_group_operations(monkeypatch)
    for seq, n in enumerate((1, 10)):
        counts.mul = 0
        check_points(ep, random_values(n), SMALL, seq)
        # checker: n blind + n unblind + c·(2n + 3 + 1); members: c·(n + n + 2 + 1)
        assert counts.mul == n * (4 * c + 2) + 7 * c
    n = 2_000
    points = random_values(n)
    counts.mul = counts.add = 0
    check_points(ep, points, 0, 2)
    assert counts.mul <= 1.3 * n * (c + 2)
    assert counts.add <= 50 * n  # λ subset sums over the hashes and over the tags: ~λ per value


def test_a_sealed_message_sent_twice_counts_once(ep: Epoch) -> None:
    """The coordinator cannot tell alerts from dummies, but it could repeat every message to
    double whatever alerts there are."""
    check = run_check(ep, "delta", ["b-only.example"], seq=20)
    check.hits(others(ep, "delta"), PARTIES)
    mine = [m for m in check.sealed_messages(HOLDER_CERTS) if m.holder == "bravo"]
    twice = open_alerts("bravo", CERTS["bravo"].key_pem, EPOCH, ep.tag_maps["bravo"], mine * 2)
    assert len(twice) == 1
