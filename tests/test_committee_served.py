"""Protocol v2 served: real nodes, real certificates, a coordinator driven by hand, and the
attacks of issue 17 by a coordinator that colludes with one node (a puppet holding that node's
real certificate and key).

Each attack is a real client against real servers; each must end with no tag of the victim's set
out of its node, the culprit named where a signature proves it, and the victim's store unchanged.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest

from blindmatch.core.evaluation import EvaluationAnswer, elements_digest
from blindmatch.core.oprf import hash_indicator
from blindmatch.core.secp256k1 import (
    ORDER,
    Point,
    add,
    mul,
    point_to_bytes,
    points_from_bytes,
    points_to_bytes,
    random_scalar,
)
from blindmatch.core.spec import Policy
from blindmatch.runtime import serde_v2
from blindmatch.v1 import node_pb2 as v1
from blindmatch.v2 import node_pb2
from node.store import Sighting
from tests.byhand import HandRound, OwnCall, Puppet, v2_stubs
from tests.federation import (
    Federation,
    Setup,
    domains,
    held,
    node_certificates,
    node_matches,
    round_spec,
    signed_spec,
    start_request,
)
from tests.pkifixtures import FederationPki

NAMES = ("alpha", "bravo", "charlie")
SHARED = [f"shared{i}.example" for i in range(12)]
DOMAINS = {
    "alpha": SHARED + [f"a{i}.example" for i in range(30)],
    "bravo": SHARED[:8] + [f"b{i}.example" for i in range(30)],
    "charlie": SHARED[4:] + [f"c{i}.example" for i in range(30)],
}
CHUNK = 16  # several requests per set


@pytest.fixture(scope="module")
def federation_setup() -> Setup:
    # charlie joins a round outside its committee when alpha is in it; bravo only from inside
    return Setup(
        NAMES,
        held(domains(DOMAINS)),
        policies={"charlie": Policy(trusted_committee=frozenset({"alpha"}))},
    )


@dataclass
class Env:
    fed: Federation
    pki: FederationPki
    stubs: dict[str, object]


@pytest.fixture(scope="module")
def env(fed: Federation, pki: FederationPki) -> Iterator[Env]:
    channels = {name: fed.as_coordinator(name) for name in NAMES}
    try:
        yield Env(fed, pki, dict(v2_stubs(channels)))
    finally:
        for channel in channels.values():
            channel.close()


def hand_round(env: Env, puppets: dict[str, Puppet] | None = None, **spec: Any) -> HandRound:
    spec.setdefault("kinds", ["domain"])
    spec.setdefault("chunk_size", CHUNK)
    message = round_spec(NAMES, **spec)
    request = v1.PrepareRequest(signed_spec=signed_spec(message, pki=env.pki))
    stubs = {**env.stubs, **(puppets or {})}
    return HandRound(stubs, request, node_certificates(env.pki, NAMES))  # type: ignore[arg-type]


def rpc_error(call: object) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call()  # type: ignore[operator]
    return info.value


def test_an_honest_round_by_hand_records_exactly_the_intersections(env: Env) -> None:
    r = hand_round(env)
    recorded = r.run()
    sets = {n: set(DOMAINS[n]) for n in NAMES}
    for name in NAMES:
        expected = {
            ("domain", v): {p for p in NAMES if p != name and v in sets[p]}
            for v in sets[name]
            if any(v in sets[p] for p in NAMES if p != name)
        }
        with env.fed.store(name) as store:
            assert node_matches(store, r.round_id) == expected
        assert recorded[name] == len(expected)


def cancelling(puppet: Puppet, honest: str, r: HandRound) -> None:
    """The cancellation attack: the puppet answers c·X − Y_h, with Y_h the honest member's
    answer to the same request, so that the owner's tags would be c·H(x) + its own share's part:
    a dictionary for the coalition, if the owner let those tags out."""
    c = random_scalar()
    own = r.open_own("alpha")
    requests = own.read_requests()
    honest_answers = r.evaluate(honest, requests)
    forged: list[node_pb2.SignedAnswer] = []
    for request, theirs in zip(requests, honest_answers, strict=True):
        if request.request.proved:  # the subset checks: answered honestly, proof and all
            forged += puppet.Evaluate(iter([request]))
            continue
        xs = points_from_bytes(request.points)
        ys = points_from_bytes(theirs.points)
        points = points_to_bytes(
            [add([mul(x, c), mul(y, ORDER - 1)]) for x, y in zip(xs, ys, strict=True)]
        )
        digest = serde_v2.request_from_proto(request).request.digest()
        answer = EvaluationAnswer(digest, puppet.name, elements_digest(points))
        forged.append(puppet.sign_answer(answer, points))
    err = rpc_error(lambda: own.answer(honest_answers + forged))
    assert err.code() == grpc.StatusCode.DATA_LOSS, err.details()
    assert "wrong answers signed by: bravo" in err.details()


def test_the_cancellation_attack_lets_no_tag_out_and_names_the_culprit(env: Env) -> None:
    bravo = Puppet(env.pki.tls("bravo", "node"), size=len(DOMAINS["bravo"]))
    r = hand_round(env, {"bravo": bravo})
    with env.fed.store("alpha") as store:
        matches_before = store.matches()
    r.prepare()
    r.sign()
    r.begin()
    cancelling(bravo, "charlie", r)
    with env.fed.store("alpha") as store:
        audit = next(a for a in store.rounds() if a.round_id == r.round_id)
        assert store.matches() == matches_before
    assert audit.outcome == "failed"
    assert "bravo" in (audit.reason or "")
    # the round is over on alpha: nothing more is answered or revealed
    err = rpc_error(lambda: r.reveal())
    assert err.code() == grpc.StatusCode.DATA_LOSS  # its refusal, kept for later calls
    assert "wrong answers signed by: bravo" in err.details()


def test_a_prepare_from_a_coordinator_of_protocol_v1_is_unimplemented(env: Env) -> None:
    """v1's node service is gone: a coordinator that still asks for its ring prepares nothing."""
    message = round_spec(NAMES, round_id=uuid.uuid4().hex)
    request = v1.PrepareRequest(signed_spec=signed_spec(message, pki=env.pki))
    channel = env.fed.as_coordinator("alpha")
    try:
        prepare = channel.unary_unary("/blindmatch.v1.NodeService/Prepare")
        err = rpc_error(lambda: prepare(request.SerializeToString(), timeout=10))
    finally:
        channel.close()
    assert err.code() == grpc.StatusCode.UNIMPLEMENTED
    assert env.fed.nodes["alpha"].rounds.active() == []
    with env.fed.store("alpha") as store:
        assert message.round_id not in {a.round_id for a in store.rounds()}


def test_a_committee_of_some_runs_through_the_coordinator(env: Env) -> None:
    """charlie, outside the committee, joins: its policy trusts alpha, who is in it."""
    request = start_request(env.pki, NAMES, kinds=["domain"], committee=["alpha", "bravo"])
    info = env.fed.wait(env.fed.stub.StartRound(request, timeout=10).id)
    assert info.state == "done", info.error
    with env.fed.store("charlie") as store:
        got = node_matches(store, info.id)
    assert got == {
        ("domain", v): {p for p in ("alpha", "bravo") if v in DOMAINS[p]}
        for v in DOMAINS["charlie"]
        if v in DOMAINS["alpha"] or v in DOMAINS["bravo"]
    }


def test_a_node_outside_a_committee_it_does_not_trust_refuses_at_prepare(env: Env) -> None:
    request = start_request(env.pki, NAMES, kinds=["domain"], committee=["alpha", "charlie"])
    info = env.fed.wait(env.fed.stub.StartRound(request, timeout=10).id)
    assert info.state == "failed"
    assert info.error == (
        "bravo refused: PERMISSION_DENIED: bravo joins only a committee that holds bravo "
        "([policy] trusted_committee)"
    )
    with env.fed.store("bravo") as store:
        audit = next(a for a in store.rounds() if a.round_id == info.id)
    assert audit.outcome == "refused"


def wrong_answers(
    r: HandRound, puppet: Puppet, corrupt: Callable[[int, Point], Point]
) -> grpc.RpcError:
    """alpha's set evaluated with the puppet's answers bent by ``corrupt`` (``Puppet.bent``)
    and charlie's honest ones; alpha's refusal."""
    own = r.open_own("alpha")
    requests = own.read_requests()
    replies = r.evaluate("charlie", requests) + puppet.bent(requests, corrupt)
    return rpc_error(lambda: own.answer(replies))


def begun(env: Env, puppet: Puppet, **spec: Any) -> HandRound:
    r = hand_round(env, {puppet.name: puppet}, **spec)
    r.prepare()
    r.sign()
    r.begin()
    return r


def test_answers_under_a_wrong_share_let_no_tag_out(env: Env) -> None:
    """The puppet answers every chunk with another share than the one it committed to."""
    bravo = Puppet(env.pki.tls("bravo", "node"), size=len(DOMAINS["bravo"]))
    r = begun(env, bravo)
    wrong = random_scalar()
    err = wrong_answers(r, bravo, lambda i, y: mul(y, wrong))
    assert err.code() == grpc.StatusCode.DATA_LOSS
    assert "wrong answers signed by: bravo" in err.details()


@pytest.fixture(scope="module")
def emails(env: Env) -> int:
    """4,096 e-mail addresses at alpha and one at charlie: a set of exactly one chunk of 4,096
    (the rounds of this module's other tests take only domains)."""
    values = [f"user{i}@mail.example" for i in range(4096)]
    for name, mine in (("alpha", values), ("charlie", values[:1])):
        with env.fed.store(name) as store:
            store.add_sightings(
                (Sighting("email", v, v, tlp="amber") for v in mine),
                source="test-feed",
                default_tlp="amber",
            )
    return len(values)


def test_one_corrupted_element_in_4096_is_caught(env: Env, emails: int) -> None:
    """One answer of 4,096 off by a random point."""
    bravo = Puppet(env.pki.tls("bravo", "node"), size=1)
    r = begun(env, bravo, kinds=["email"], chunk_size=4096)
    assert r.transcript is not None and r.transcript.sizes["alpha"] == emails
    bad = secrets.randbelow(emails)
    noise = mul(hash_indicator("email", "noise@mail.example"), random_scalar())
    err = wrong_answers(r, bravo, lambda i, y: add([y, noise]) if i == bad else y)
    assert err.code() == grpc.StatusCode.DATA_LOSS
    assert "wrong answers signed by: bravo" in err.details()


def colluding_answers(
    r: HandRound, puppets: dict[str, Puppet], errors: dict[str, dict[int, Point]]
) -> tuple[OwnCall, list[node_pb2.SignedAnswer]]:
    """alpha's open Own stream, and every puppet's answers to alpha's requests, element i of
    puppet p offset by ``errors[p][i]``."""
    own = r.open_own("alpha")
    requests = own.read_requests()
    replies: list[node_pb2.SignedAnswer] = []
    for name, puppet in puppets.items():

        def offset(i: int, y: Point, errs: dict[int, Point] = errors[name]) -> Point:
            return add([y, errs[i]]) if i in errs else y

        replies += puppet.bent(requests, offset)
    return own, replies


def two_puppets(env: Env) -> dict[str, Puppet]:
    return {
        name: Puppet(env.pki.tls(name, "node"), size=len(DOMAINS[name]))
        for name in ("bravo", "charlie")
    }


def test_errors_of_two_colluders_in_one_owners_answers_are_caught_and_both_named(
    env: Env,
) -> None:
    puppets = two_puppets(env)
    r = hand_round(env, dict(puppets))
    r.prepare()
    r.sign()
    r.begin()
    e1 = mul(hash_indicator("domain", "e1.example"), random_scalar())
    e2 = mul(hash_indicator("domain", "e2.example"), random_scalar())
    own, replies = colluding_answers(r, puppets, {"bravo": {5: e1}, "charlie": {9: e2}})
    err = rpc_error(lambda: own.answer(replies))
    assert err.code() == grpc.StatusCode.DATA_LOSS
    assert "wrong answers signed by: bravo, charlie" in err.details()


def test_errors_that_cancel_between_two_colluders_leave_every_tag_right(env: Env) -> None:
    """+E from one and −E from the other on the same element: the sum, and so the tag, is
    what honest answers give; verification passes, and nothing was gained."""
    puppets = two_puppets(env)
    r = hand_round(env, dict(puppets))
    r.prepare()
    r.sign()
    r.begin()
    e = mul(hash_indicator("domain", "e.example"), random_scalar())
    minus_e = mul(e, ORDER - 1)
    own, replies = colluding_answers(r, puppets, {"bravo": {3: e}, "charlie": {3: minus_e}})
    root = own.answer(replies)
    assert root.owner == "alpha" and root.size == len(DOMAINS["alpha"])
    r.abort()


def test_a_member_sees_nothing_it_can_link_across_owners_or_to_a_value(env: Env) -> None:
    """bravo, a member colluding with the coordinator, keeps every point it is asked to
    evaluate. alpha and charlie share values, yet no point repeats between their requests,
    and none is the hash of any value the coalition might guess (every value of the
    federation): each element carries a fresh r."""
    bravo = Puppet(env.pki.tls("bravo", "node"), size=len(DOMAINS["bravo"]))
    r = begun(env, bravo)
    seen: dict[str, set[bytes]] = {}
    for owner in ("alpha", "charlie"):
        own = r.open_own(owner)
        requests = own.read_requests()
        seen[owner] = {
            request.points[i : i + 65]
            for request in requests
            for i in range(0, len(request.points), 65)
        }
        answers = r.evaluate("alpha" if owner == "charlie" else "charlie", requests)
        answers += bravo.Evaluate(iter(requests))
        own.answer(answers)
    assert set(DOMAINS["alpha"]) & set(DOMAINS["charlie"])  # they do share values
    assert not seen["alpha"] & seen["charlie"]
    guesses = {v for values in DOMAINS.values() for v in values}
    hashed = {point_to_bytes(hash_indicator("domain", v)) for v in guesses}
    assert not (seen["alpha"] | seen["charlie"]) & hashed
    r.abort()
