"""A watch round of protocol v2 and the epoch it opens (core.committee, core.epoch), between real
signing parties driven in memory: checks find exactly the holders of a value and alert them, and
what a coordinator colluding with a node can forge in an epoch (the ghost check, caps shown
differently, sealed messages moved) is refused by the node it is shown to."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

import pytest

from blindmatch.core.checker import SMALL
from blindmatch.core.committee import (
    CommitteeCoordinator,
    CommitteeNode,
    RoundTerms,
    SignedAnswer,
    SignedRequest,
    answer_statement,
    request_statement,
)
from blindmatch.core.delivery import VerifiedMatch
from blindmatch.core.epoch import EpochRelay, SignedSealed, WatchEpoch
from blindmatch.core.errors import BadMessage, CapExceeded, ForgedMessage
from blindmatch.core.evaluation import Equivocation, Transcript, elements_digest
from blindmatch.core.owner import VerificationFailed
from blindmatch.core.secp256k1 import mul, points_from_bytes, points_to_bytes
from blindmatch.core.spec import Policy
from blindmatch.core.watch_rules import EpochEnded
from blindmatch.core.watch_sealed import SealedMessageRejected, message_count, sealed_bytes
from tests.inmemory import (
    CERTS,
    PARTIES,
    SIGNERS,
    SPEC,
    Cheat,
    Round,
    evaluate,
    reveal_all,
    sign_all,
)
from tests.values import hashes

SETS = {
    "alpha": [f"a{i}.example" for i in range(50)] + ["ab.example", "all.example"],
    "bravo": [f"b{i}.example" for i in range(30)] + ["ab.example", "all.example", "bc.example"],
    "charlie": [f"c{i}.example" for i in range(20)] + ["all.example", "bc.example"],
}
EPOCH = "w1"
NOW = 1000.0
ENDS = NOW + 3600
KEYS = {name: c.key_pem for name, c in CERTS.items()}
Caps = Mapping[str, Mapping[str, int]]


def every_cap(cap: int = 1000) -> dict[str, dict[str, int]]:
    return {n: {p: cap for p in SETS if p != n} for n in SETS}


@dataclass
class Watch:
    round: Round
    epochs: dict[str, WatchEpoch]
    relay: EpochRelay
    matches: dict[str, list[VerifiedMatch]]


def prepared(committee: Sequence[str] | None = None, caps: Caps | None = None) -> Round:
    terms = RoundTerms(EPOCH, SPEC, tuple(SETS), tuple(committee or SETS), epoch_seconds=3600)
    trust = Policy(trusted_committee=frozenset(terms.committee))
    caps = every_cap() if caps is None else caps
    nodes = {
        n: CommitteeNode(terms, n, SIGNERS[n], len(v), trust, check_caps=caps.get(n, {}))
        for n, v in SETS.items()
    }
    return Round(terms, nodes, CommitteeCoordinator(terms))


def watch(committee: Sequence[str] | None = None, caps: Caps | None = None) -> Watch:
    r = prepared(committee, caps)
    signatures = sign_all(r)
    for node in r.nodes.values():
        node.begin(signatures)
    evaluate(r, SETS)
    delivered = reveal_all(r)
    matches = {}
    epochs = {}
    for name, node in r.nodes.items():
        found = node.deliver(*delivered[name])
        matches[name] = [m for m in found if isinstance(m, VerifiedMatch)]
        epochs[name] = WatchEpoch(name, node.handover(), SIGNERS[name], ENDS)
    relay = EpochRelay(
        EPOCH, r.terms.participants, r.terms.committee, r.coordinator.filters(), ENDS
    )
    return Watch(r, epochs, relay, matches)


@dataclass
class Checked:
    hits: dict[str, list[int]]
    sealed: list[SignedSealed]
    alerts: dict[str, list[tuple[str, str]]]  # holder -> (its value, checker)


def check(
    w: Watch,
    checker: str,
    values: Sequence[str],
    *,
    may_learn: Callable[[str], bool] = lambda holder: True,
    cheat: Cheat | None = None,
) -> Checked:
    ep = w.epochs[checker]
    chk, requests = ep.check(hashes(values), None, NOW)
    answers = []
    for signed in requests:
        for member in w.relay.members_for(checker, [signed], PARTIES[checker]):
            answer = w.epochs[member].answer(signed, NOW)
            answers.append(cheat(member, signed, answer) if cheat else answer)
    ep.verified_tags(chk, answers)
    hits = ep.hits(chk, w.relay.filters_for(checker), may_learn)
    sealed = ep.sealed(chk)
    alerts = {
        holder: [
            (SETS[holder][a.position], a.checker)
            for a in w.epochs[holder].alerts(messages, KEYS[holder], NOW)
        ]
        for holder, messages in w.relay.by_holder(checker, sealed, PARTIES[checker]).items()
    }
    return Checked(hits, sealed, alerts)


def named(values: Sequence[str], hits: Mapping[str, list[int]]) -> dict[str, set[str]]:
    return {holder: {values[i] for i in positions} for holder, positions in hits.items()}


@pytest.mark.parametrize("committee", [None, ("alpha", "bravo")])
def test_a_check_finds_exactly_the_holders_and_alerts_each_with_its_own_indicator(
    committee: tuple[str, ...] | None,
) -> None:
    w = watch(committee)
    # the round itself is a pairwise round: charlie shares all.example and bc.example
    assert sorted(sorted(m.partners) for m in w.matches["charlie"]) == [
        ["alpha", "bravo"],
        ["bravo"],
    ]
    values = ["ab.example", "all.example", "nobody.example", "a7.example"]
    got = check(w, "charlie", values)
    assert named(values, got.hits) == {
        "alpha": {"ab.example", "all.example", "a7.example"},
        "bravo": {"ab.example", "all.example"},
    }
    assert sorted(got.alerts["alpha"]) == [
        ("a7.example", "charlie"),
        ("ab.example", "charlie"),
        ("all.example", "charlie"),
    ]
    assert sorted(got.alerts["bravo"]) == [("ab.example", "charlie"), ("all.example", "charlie")]
    # every tested holder gets one message per value, alert or dummy, all of one size
    per_holder = w.relay.by_holder("charlie", got.sealed, PARTIES["charlie"])
    assert {h: [message_count(m.alert.sealed) for m in ms] for h, ms in per_holder.items()} == {
        "alpha": [4],
        "bravo": [4],
    }
    assert {len(m.alert.sealed) for m in got.sealed} == {sealed_bytes(4)}


def test_a_large_check_is_verified_by_subset_checks_and_finds_the_same() -> None:
    w = watch()
    values = [f"x{i}.example" for i in range(SMALL + 40)] + ["bc.example", "b3.example"]
    got = check(w, "alpha", values)
    assert named(values, got.hits) == {
        "bravo": {"bc.example", "b3.example"},
        "charlie": {"bc.example"},
    }
    assert sorted(got.alerts["charlie"]) == [("bc.example", "alpha")]


def test_a_checker_tests_and_alerts_only_the_holders_its_policy_lets_learn() -> None:
    w = watch()
    got = check(w, "charlie", ["ab.example"], may_learn=lambda holder: holder == "bravo")
    assert set(got.hits) == {"bravo"}
    assert set(got.alerts) == {"bravo"}


def test_a_checker_gets_the_lowest_cap_any_holder_signed_for_it() -> None:
    caps = every_cap()
    caps["alpha"]["charlie"] = 3
    w = watch(caps=caps)
    with pytest.raises(CapExceeded, match="alpha's, allows 3"):
        check(w, "charlie", [f"v{i}.example" for i in range(4)])
    # refused, so charged nothing: the three it may ask for are still there
    assert w.epochs["alpha"].charged("charlie") == 0
    check(w, "charlie", ["v0.example", "v1.example", "v2.example"])
    assert w.epochs["alpha"].charged("charlie") == 3
    with pytest.raises(CapExceeded):
        check(w, "charlie", ["v9.example"])


def test_a_holder_that_signed_no_cap_for_a_checker_stops_its_checks() -> None:
    caps = every_cap()
    del caps["bravo"]["charlie"]
    w = watch(caps=caps)
    with pytest.raises(CapExceeded, match="bravo signed no check cap for charlie"):
        check(w, "charlie", ["ab.example"])
    check(w, "alpha", ["bc.example"])  # the others check as before


def test_the_ghost_check_is_refused_and_charges_nobody() -> None:
    """The coordinator and alpha ask bravo to evaluate guesses as charlie's check, signed with
    alpha's key: bravo verifies charlie's signature, refuses, and charges neither."""
    w = watch()
    _, requests = w.epochs["alpha"].check(hashes(["guess.example"]), None, NOW)
    forged_request = replace(requests[0].request, requester="charlie")
    forged = SignedRequest(
        forged_request,
        requests[0].points,
        SIGNERS["alpha"].sign(request_statement(forged_request)),
    )
    with pytest.raises(ForgedMessage, match="charlie's check is not signed by"):
        w.epochs["bravo"].answer(forged, NOW)
    assert w.epochs["bravo"].charged("charlie") == w.epochs["bravo"].charged("alpha") == 0
    # an honest coordinator refuses it from alpha's connection too; bravo relies on no relay
    with pytest.raises(ForgedMessage, match="no check of alpha"):
        w.relay.members_for("alpha", [forged], PARTIES["alpha"])
    # and refuses charlie's own request under a signature that is not charlie's
    with pytest.raises(ForgedMessage, match="charlie's check is not signed by"):
        w.relay.members_for("charlie", [forged], PARTIES["charlie"])


def test_a_replayed_seq_with_other_points_is_equivocation_and_a_repeat_is_free() -> None:
    w = watch()
    _, requests = w.epochs["charlie"].check(hashes(["ab.example"]), None, NOW)
    bravo = w.epochs["bravo"]
    bravo.answer(requests[0], NOW)
    bravo.answer(requests[0], NOW)
    assert bravo.charged("charlie") == 1
    other = hashes(["guess.example"])
    swapped = replace(requests[0].request, elements=elements_digest(points_to_bytes(other)))
    signed = SignedRequest(
        swapped, points_to_bytes(other), SIGNERS["charlie"].sign(request_statement(swapped))
    )
    with pytest.raises(Equivocation):
        bravo.answer(signed, NOW)
    assert bravo.charged("charlie") == 1


def test_set_requests_are_not_answered_once_the_epoch_is_open() -> None:
    w = watch()
    _, requests = w.epochs["charlie"].check(hashes(["ab.example"]), None, NOW)
    as_set = replace(requests[0].request, kind="set")
    signed = SignedRequest(
        as_set, requests[0].points, SIGNERS["charlie"].sign(request_statement(as_set))
    )
    with pytest.raises(BadMessage, match="answer checks only"):
        w.epochs["bravo"].answer(signed, NOW)


def test_caps_shown_differently_stop_the_watch_round_before_any_evaluation() -> None:
    """The coordinator shows bravo a transcript in which alpha lets charlie check ten times
    more: bravo signs what it saw, and no signatures agree; alpha, shown it, refuses at once."""
    r = prepared()

    def shown(name: str, t: Transcript) -> Transcript:
        if name != "bravo":
            return t
        return replace(t, caps={**t.caps, ("alpha", "charlie"): 10_000})

    signatures = sign_all(r, shown)
    for node in r.nodes.values():
        with pytest.raises(ForgedMessage, match="signature of the transcript is not signed"):
            node.begin(signatures)
    r = prepared()
    with pytest.raises(ForgedMessage, match="check caps it did not announce"):
        sign_all(r, lambda name, t: replace(t, caps={**t.caps, ("alpha", "charlie"): 10_000}))


def test_a_members_wrong_answer_stops_the_check_and_names_it() -> None:
    """Cancellation in a check: bravo answers another share's points; the DLEQ proof fails for a
    small check, the subset checks for a large one, and bravo is named either way."""
    w = watch()

    def cheat(member: str, signed: SignedRequest, answer: SignedAnswer) -> SignedAnswer:
        if member != "bravo":
            return answer
        points = points_to_bytes([mul(p, 7) for p in points_from_bytes(answer.points)])
        bent = replace(answer.answer, answers=elements_digest(points))
        return SignedAnswer(bent, points, SIGNERS["bravo"].sign(answer_statement(bent)))

    with pytest.raises(VerificationFailed) as small:
        check(w, "charlie", ["ab.example"], cheat=cheat)
    assert small.value.members == ("bravo",)

    def unproved(member: str, signed: SignedRequest, answer: SignedAnswer) -> SignedAnswer:
        # the proof of its subset checks honest: only the sums give it away
        return answer if answer.answer.proof else cheat(member, signed, answer)

    with pytest.raises(VerificationFailed, match="signed by: bravo") as large:
        check(w, "charlie", [f"x{i}.example" for i in range(SMALL + 1)], cheat=unproved)
    assert large.value.members == ("bravo",)


def test_sealed_messages_moved_relabelled_or_altered_are_rejected() -> None:
    w = watch()
    got = check(w, "charlie", ["ab.example", "all.example"])
    to_alpha = w.relay.by_holder("charlie", got.sealed, PARTIES["charlie"])["alpha"]
    alpha, bravo = w.epochs["alpha"], w.epochs["bravo"]
    with pytest.raises(SealedMessageRejected):  # alpha's messages handed to bravo
        bravo.alerts(to_alpha, KEYS["bravo"], NOW)
    relabelled = [replace(m, alert=replace(m.alert, holder="bravo")) for m in to_alpha]
    with pytest.raises(ForgedMessage):  # the checker signed them for alpha
        bravo.alerts(relabelled, KEYS["bravo"], NOW)
    # re-attributed to alpha's partner bravo, re-signed by bravo (colluding): AEAD fails
    moved = replace(to_alpha[0].alert, checker="bravo")
    resigned = SignedSealed(moved, SIGNERS["bravo"].sign(moved.statement()))
    with pytest.raises(SealedMessageRejected):
        alpha.alerts([resigned], KEYS["alpha"], NOW)
    flipped = bytearray(to_alpha[0].alert.sealed)
    flipped[-1] ^= 1
    altered = replace(to_alpha[0].alert, sealed=bytes(flipped))
    with pytest.raises(ForgedMessage):
        alpha.alerts([SignedSealed(altered, to_alpha[0].signature)], KEYS["alpha"], NOW)
    # a message sent twice is one sighting
    assert len(alpha.alerts([*to_alpha, *to_alpha], KEYS["alpha"], NOW)) == 2


def test_a_filter_passed_off_as_another_holders_is_refused() -> None:
    w = watch()
    ep = w.epochs["charlie"]
    chk, requests = ep.check(hashes(["ab.example"]), None, NOW)
    answers = [w.epochs[m].answer(s, NOW) for s in requests for m in ("alpha", "bravo")]
    ep.verified_tags(chk, answers)
    filters = w.relay.filters_for("charlie")
    with pytest.raises(BadMessage, match="filter filed under alpha is bravo's"):
        ep.hits(chk, {**filters, "alpha": filters["bravo"]}, lambda holder: True)
    # left out, alpha's holdings would be hidden: the check stops instead
    with pytest.raises(ForgedMessage, match="no filter of alpha"):
        ep.hits(chk, {"bravo": filters["bravo"]}, lambda holder: True)
    # unless the checker's own policy leaves alpha out
    assert ep.hits(chk, {"bravo": filters["bravo"]}, lambda holder: holder == "bravo") == {
        "bravo": [0]
    }


def test_the_epoch_ends_at_its_time_or_when_closed_and_takes_the_share_with_it() -> None:
    w = watch()
    _, requests = w.epochs["charlie"].check(hashes(["ab.example"]), None, NOW)
    with pytest.raises(EpochEnded, match="has ended"):
        w.epochs["bravo"].answer(requests[0], ENDS)
    with pytest.raises(EpochEnded):
        w.epochs["charlie"].check(hashes(["ab.example"]), None, ENDS + 1)
    bravo = w.epochs["bravo"]
    member = bravo._member
    assert member is not None
    assert bravo.close("closed by the coordinator")
    assert member._share is None and bravo.tag_count == 0
    assert not bravo.close("again")
    with pytest.raises(EpochEnded, match="closed by the coordinator"):
        bravo.answer(requests[0], NOW)


def test_a_round_that_is_no_watch_round_hands_over_nothing_and_carries_no_caps() -> None:
    with pytest.raises(BadMessage, match="check caps are for watch rounds"):
        CommitteeNode(
            RoundTerms("r9", SPEC, tuple(SETS), tuple(SETS)),
            "alpha",
            SIGNERS["alpha"],
            3,
            Policy(trusted_committee=frozenset(SETS)),
            check_caps={"bravo": 5},
        )
