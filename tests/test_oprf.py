"""blindmatch.core.oprf: the distributed evaluation gives K·H for K = Σ k_i, and the subset checks
catch every wrong answer before a tag could leave, naming the member who gave it."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pytest

from blindmatch.core import oprf
from blindmatch.core.oprf import LAMBDA, SubsetCheck, blind, evaluate, tag, unblind
from blindmatch.core.secp256k1 import ORDER, Point, add, base_mul, mul, random_scalar

GENERATOR = base_mul(1)
Answer = Callable[[str, int, list[Point]], list[Point]]  # member, its share, the request


@dataclass
class Evaluation:
    """One owner's set evaluated by a committee, and everything the checks need."""

    hashes: list[Point]
    tags: list[Point]
    check: SubsetCheck
    answers: dict[str, list[Point]]
    unblinders: list[int]
    proved: dict[str, list[Point]]
    key: int  # K, which only a test may assemble


@dataclass
class Share:
    """An owner's own share, applied to its own points (core.member.Member in the product)."""

    k: int

    def own_part(self, points: Sequence[Point]) -> list[Point]:
        return evaluate(self.k, points)


def random_points(n: int) -> list[Point]:
    return [base_mul(random_scalar()) for _ in range(n)]


def run(
    n: int,
    members: Sequence[str] = ("alpha", "bravo", "charlie"),
    owner: str | None = None,
    answer: Answer | None = None,
    chunk: int = 1000,
) -> Evaluation:
    """Evaluate ``n`` hashes of ``owner``'s (a member too when named in ``members``); ``answer``
    lets a member reply what it likes to the main request (the proved check answers stay
    honest, as a DLEQ proof forces them to be)."""
    shares = {m: random_scalar() for m in members}
    remote = [m for m in members if m != owner]
    hashes = random_points(n)
    check = SubsetCheck(n)
    blinded, unblinders = [], []
    for start in range(0, n, chunk):
        part = hashes[start : start + chunk]
        check.add_hashes(part)
        xs, rs = blind(part)
        blinded += xs
        unblinders += rs
    challenge = check.challenge()
    reply = answer or (lambda _m, share, xs: evaluate(share, xs))
    answers = {m: reply(m, shares[m], blinded) for m in remote}
    own = (Share(shares[owner]), hashes) if owner in shares else None
    tags = []
    for start in range(0, n, chunk):
        part = slice(start, start + chunk)
        owned = None if own is None else (own[0], own[1][part])
        got = unblind([answers[m][part] for m in remote], unblinders[part], owned)
        check.add_tags(got)
        tags += got
    proved = {m: evaluate(shares[m], challenge) for m in remote}
    return Evaluation(
        hashes, tags, check, answers, unblinders, proved, sum(shares.values()) % ORDER
    )


def failing(e: Evaluation) -> list[int]:
    return e.check.failing(e.check.expected(list(e.proved.values())))


def test_the_committee_evaluates_k_times_h_and_the_checks_pass() -> None:
    e = run(300, chunk=128)
    assert e.tags == [mul(h, e.key) for h in e.hashes]
    assert failing(e) == []


def test_an_owner_in_the_committee_adds_its_own_share() -> None:
    shares: dict[str, int] = {}

    def honest(m: str, xs: list[Point]) -> list[Point]:
        return evaluate(shares.setdefault(m, random_scalar()), xs)

    n, members = 50, ("alpha", "bravo", "charlie")
    own_share = random_scalar()
    hashes = random_points(n)
    check = SubsetCheck(n)
    check.add_hashes(hashes)
    xs, rs = blind(hashes)
    challenge = check.challenge()
    answers = [honest(m, xs) for m in members[1:]]
    tags = unblind(answers, rs, (Share(own_share), hashes))
    check.add_tags(tags)
    key = (own_share + sum(shares.values())) % ORDER
    assert tags == [mul(h, key) for h in hashes]
    proved = [evaluate(shares[m], challenge) for m in members[1:]]
    own_parts = [mul(a, own_share) for a in check.hash_sums()]
    assert check.failing(check.expected(proved, own_parts)) == []
    # Without its own share the owner's expectation is wrong: the share is really used.
    assert check.failing(check.expected(proved)) != []


def test_the_cancellation_attack_is_caught_and_its_member_named() -> None:
    """A colluding member who has seen the honest member's answers replies c·X - Y_h: the
    owner's tags become c·H, an offline dictionary for the coalition, unless checked."""
    c = random_scalar()
    honest_answers: dict[str, list[Point]] = {}
    shares = {"alpha": random_scalar(), "bravo": random_scalar()}

    def answer(m: str, xs: list[Point]) -> list[Point]:
        honest_answers[m] = evaluate(shares[m], xs)
        if m == "bravo":
            return [
                add([mul(x, c), mul(y, ORDER - 1)])
                for x, y in zip(xs, honest_answers["alpha"], strict=True)
            ]
        return honest_answers[m]

    n = 64
    hashes = random_points(n)
    check = SubsetCheck(n)
    check.add_hashes(hashes)
    xs, rs = blind(hashes)
    challenge = check.challenge()
    answers = {m: answer(m, xs) for m in ("alpha", "bravo")}
    tags = unblind(list(answers.values()), rs)
    assert tags == [mul(h, c) for h in hashes]  # the attack works on the arithmetic
    check.add_tags(tags)
    proved = {m: evaluate(shares[m], challenge) for m in shares}
    failed = check.failing(check.expected(list(proved.values())))
    assert len(failed) == LAMBDA  # every subset: the tags are all wrong
    at_fault = check.members_at_fault(failed, answers, rs, proved)
    assert at_fault == ["bravo"]


def one_wrong(at: set[tuple[str, int]]) -> Answer:
    """Members that answer honestly but for the (member, element) pairs in ``at``."""

    def answer(m: str, share: int, xs: list[Point]) -> list[Point]:
        ys = evaluate(share, xs)
        return [add([y, GENERATOR]) if (m, j) in at else y for j, y in enumerate(ys)]

    return answer


def test_one_wrong_element_in_4096_is_caught() -> None:
    answer = one_wrong({("charlie", 2917)})
    e = run(4096, answer=answer, chunk=1024)
    assert sum(t != mul(h, e.key) for t, h in zip(e.tags, e.hashes, strict=True)) == 1
    failed = failing(e)
    assert failed, "a wrong tag passed all 40 subset checks"
    named = e.check.members_at_fault(failed, e.answers, e.unblinders, e.proved)
    assert named == ["charlie"]


def test_errors_of_two_colluders_in_one_owners_answers_are_caught() -> None:
    """Two members shift different elements by opposite amounts, so a plain sum over the whole
    set would cancel; a secret subset splits them."""
    answer = one_wrong({("alpha", 10), ("bravo", 11)})
    e = run(64, answer=answer)
    failed = failing(e)
    assert failed
    named = e.check.members_at_fault(failed, e.answers, e.unblinders, e.proved)
    assert named == ["alpha", "bravo"]


def test_a_set_of_one_is_checked_by_every_subset() -> None:
    answer = one_wrong({("bravo", 0)})
    e = run(1, answer=answer)
    assert len(failing(e)) == LAMBDA


def test_every_subset_is_non_empty_for_small_sets() -> None:
    for n in (1, 2, 3):
        check = SubsetCheck(n)
        check.add_hashes(random_points(n))
        assert len(check.challenge()) == LAMBDA  # an empty subset would have no A_t to send


def test_the_check_is_used_once_and_in_order() -> None:
    check = SubsetCheck(2)
    with pytest.raises(ValueError, match="beyond the 2 elements"):
        check.add_tags(random_points(3))
    check.add_hashes(random_points(1))
    with pytest.raises(ValueError, match="1 of 2 hashes"):
        check.challenge()
    with pytest.raises(ValueError, match="more than the 2 hashes"):
        check.add_hashes(random_points(2))
    check.add_hashes(random_points(1))
    check.challenge()
    with pytest.raises(ValueError, match="one challenge per set"):
        check.challenge()
    with pytest.raises(ValueError, match="nothing to check"):
        SubsetCheck(0)


def test_group_operations_per_element(monkeypatch: pytest.MonkeyPatch) -> None:
    """c + 2 multiplications per element, member or not: a non-member does 2 locally and its c
    members one each; a member owner does 3 locally and its c - 1 partners one each."""
    calls = {"n": 0}
    real = oprf.mul

    def counting(point: Point, k: int) -> Point:
        calls["n"] += 1
        return real(point, k)

    monkeypatch.setattr(oprf, "mul", counting)
    n, c = 200, 3
    hashes = random_points(n)
    shares = [random_scalar() for _ in range(c)]

    xs, rs = blind(hashes)
    answers = [evaluate(k, xs) for k in shares]
    unblind(answers, rs)
    assert calls["n"] == n * (2 + c)  # non-member: 2 local, c remote

    calls["n"] = 0
    xs, rs = blind(hashes)
    answers = [evaluate(k, xs) for k in shares[1:]]
    unblind(answers, rs, (Share(shares[0]), hashes))
    assert calls["n"] == n * (3 + (c - 1))  # member: 3 local, c - 1 remote


def test_tags_are_16_bytes_and_bound_to_their_round() -> None:
    t = base_mul(random_scalar())
    assert len(tag(b"round-a", t)) == 16
    assert tag(b"round-a", t) == tag(b"round-a", t)
    assert tag(b"round-a", t) != tag(b"round-b", t)
    assert tag(b"round-a", t) != tag(b"round-a", add([t, GENERATOR]))
