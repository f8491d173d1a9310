"""Hostile and broken input sent straight to a real NodeService and CoordinatorService.

The caller holds the coordinator's own certificate, the one identity a node serves, so every
refusal here comes from the servicer and the core's validation, not from the access policy. After
each refusal the node must be as it was: its store unchanged except the audit log, no round left
behind, the refused round's share destroyed, and a normal round through the coordinator succeeding.

Rounds run on ``blindmatch.v2.NodeService``: the tests drive them by hand (tests/byhand.py ``HandRound``), with an invented partner, zulu, played by the test itself
with a certificate the federation CA issued to zulu (``OwningPuppet``): what zulu signs is hostile
input the node must refuse on its merits, since its signature holds.
"""

from __future__ import annotations

import dataclasses
import itertools
import sqlite3
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from blindmatch.cli.tomlconfig import TlsPaths, is_valid_name
from blindmatch.core.canon import KINDS
from blindmatch.core.committee import CommitteeCoordinator, Prepared, RoundTerms
from blindmatch.core.evaluation import Commitment, EvaluationAnswer, elements_digest
from blindmatch.core.member import Member
from blindmatch.core.oprf import LAMBDA, hash_indicator
from blindmatch.core.proofs import PROOF_BYTES
from blindmatch.core.secp256k1 import ORDER, POINT_BYTES, point_to_bytes, points_from_bytes
from blindmatch.core.signing import Signer
from blindmatch.core.spec import Caps, Policy
from blindmatch.runtime import net, serde, serde_v2
from blindmatch.v1 import coordinator_pb2, coordinator_pb2_grpc, node_pb2
from blindmatch.v2 import node_pb2 as v2
from blindmatch.v2 import node_pb2_grpc as v2_grpc
from coordinator.config import CoordinatorConfig
from coordinator.service import start as start_coordinator
from node.store import RoundAudit
from tests.byhand import HandRound, OwningPuppet, Puppet, v2_stubs
from tests.federation import (
    Federation,
    Setup,
    domains,
    held,
    node_certificates,
    signed_spec,
    signer,
    start_request,
)
from tests.pkifixtures import FederationPki
from tests.waiting import until

T = 10.0  # seconds: deadline of every call
Code = grpc.StatusCode

SHARED = [f"shared{i}.example" for i in range(20)]
DOMAINS = {
    "alpha": SHARED + [f"a{i}.example" for i in range(40)],  # 60
    "bravo": SHARED + [f"b{i}.example" for i in range(40)],  # 60
    "charlie": [f"c{i}.example" for i in range(60)],  # over its own-set cap
    "delta": SHARED[:10] + [f"d{i}.example" for i in range(10)],  # 20
}
OWN_CAP = 10  # charlie contributes at most 10 indicators to a round
PARTNER_CAP = 30  # delta evaluates a set of at most 30 elements of any partner ...
ROUND_CAP = 45  # ... and at most 45 elements in a round, its own included
POLICIES = {
    "charlie": Policy(max_own_set=OWN_CAP),
    "delta": Policy(
        partners=frozenset({"alpha"}), max_partner_set=PARTNER_CAP, max_round_elements=ROUND_CAP
    ),
}
CHUNK = 16  # alpha's 60 elements go out in 4 requests, then its 40 subset checks
ZULU = (SHARED[0], SHARED[1], "z0.example")  # the invented partner's set: 2 of alpha's values


# --- the federation, the coordinator's view of it, and the shares drawn -------------------------


@dataclass
class Env:
    fed: Federation
    stubs: dict[str, v2_grpc.NodeServiceStub]  # straight to each node, as the coordinator
    channels: dict[str, grpc.Channel]
    pki: FederationPki

    @property
    def alpha(self) -> v2_grpc.NodeServiceStub:
        return self.stubs["alpha"]


@pytest.fixture(scope="module")
def federation_setup() -> Setup:
    return Setup(list(DOMAINS), held(domains(DOMAINS)), policies=POLICIES)


@pytest.fixture(scope="module")
def env(fed: Federation, pki: FederationPki) -> Iterator[Env]:
    channels = {name: fed.as_coordinator(name) for name in DOMAINS}
    try:
        PKI[:] = [pki]
        yield Env(fed, v2_stubs(channels), channels, pki)
    finally:
        for channel in channels.values():
            channel.close()


@pytest.fixture(autouse=True)
def no_round_outlives_its_test(env: Env) -> Iterator[None]:
    """A test that fails with a round live
    must not fail the next one's consistency check: every round left on a node is aborted after
    the test."""
    yield
    for name, node in env.fed.nodes.items():
        for round_id in node.rounds.active():
            env.stubs[name].Abort(
                node_pb2.AbortRequest(round_id=round_id, reason="left by a test"), timeout=T
            )


def destroyed(member: Member) -> bool:
    # Member has no public accessor for it: ``destroy`` sets ``_share`` to None.
    return member._share is None


def shares(members: Sequence[Member], *puppets: Puppet) -> list[Member]:
    """The shares real nodes drew: ``members`` but the puppets' own."""
    theirs = [p.node.member for p in puppets if p.node is not None]
    return [m for m in members if not any(m is t for t in theirs)]


def assert_destroyed(drawn: Sequence[Member]) -> None:
    kept = [f"{m.name} ({m.ident})" for m in drawn if not destroyed(m)]
    assert not kept, f"shares not destroyed: {', '.join(kept)}"


# --- helpers ----------------------------------------------------------------------------------


def new_id() -> str:
    return uuid.uuid4().hex


def spec(
    round_id: str,
    participants: tuple[str, ...] = ("alpha", "zulu"),
    mode: str = "pairwise",
    threshold: int = 0,
    chunk_size: int = CHUNK,
) -> node_pb2.RoundSpec:
    return node_pb2.RoundSpec(
        round_id=round_id,
        participants=participants,
        mode=mode,
        threshold=threshold,
        kinds=["domain"],
        chunk_size=chunk_size,
    )


# The hostile input here is everything but the operator's signature over the spec: the test
# operator signs every spec (tests/test_adversary.py forges them).
PKI: list[FederationPki] = []


def prepare_request(
    round_spec: node_pb2.RoundSpec, timeout: float = 0.0
) -> node_pb2.PrepareRequest:
    signed = signed_spec(round_spec, pki=PKI[0])
    return node_pb2.PrepareRequest(signed_spec=signed, timeout_seconds=timeout)


def prepare(stub: v2_grpc.NodeServiceStub, round_id: str, **kw: Any) -> int:
    reply = stub.Prepare(prepare_request(spec(round_id, **kw)), timeout=T)
    size: int = reply.size
    return size


def puppet(env: Env, name: str = "zulu", values: Sequence[str] = ZULU) -> OwningPuppet:
    """``name`` played by the test, with its real certificate, owning ``values``."""
    return OwningPuppet(env.pki.tls(name, "node"), [hash_indicator("domain", v) for v in values])


def hand(env: Env, *puppets: OwningPuppet, **kw: Any) -> HandRound:
    """A round of alpha and the puppets (``participants`` in ``kw`` for others), by hand."""
    names = kw.pop("participants", ("alpha", *(p.name for p in puppets)))
    request = prepare_request(spec(new_id(), names, **kw))
    stubs = {**env.stubs, **{p.name: p for p in puppets}}
    return HandRound(stubs, request, node_certificates(env.pki, names))  # type: ignore[arg-type]


def begun(env: Env, zulu: OwningPuppet, **kw: Any) -> HandRound:
    """A round of alpha and zulu, prepared, signed and begun: both evaluate from now on."""
    r = hand(env, zulu, **kw)
    r.prepare()
    r.sign()
    r.begin()
    return r


def refused(code: grpc.StatusCode, call: Callable[[], object]) -> str:
    """Make the call, expect it refused with ``code``; the status details."""
    with pytest.raises(grpc.RpcError) as info:
        call()
    err: Any = info.value
    assert err.code() == code, err.details()
    details: str = err.details()
    return details


def contents(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Everything a node's store holds except the round audit."""
    conn = sqlite3.connect(path)
    try:
        return {
            table: conn.execute(f"SELECT * FROM {table} ORDER BY 1, 2").fetchall()
            for table in ("sightings", "imports", "matches", "partner_counts")
        }
    finally:
        conn.close()


def audit(env: Env, node: str, round_id: str) -> RoundAudit | None:
    with env.fed.store(node) as store:
        return next((r for r in store.rounds() if r.round_id == round_id), None)


class RoundLeftBehind(AssertionError):
    """A refusal that should have ended the round left it live on the node."""


def assert_dropped(env: Env, node: str, round_id: str) -> None:
    if round_id in env.fed.nodes[node].rounds.active():
        raise RoundLeftBehind(f"{node} still holds round {round_id} after refusing it")


def abort(env: Env, node: str, round_id: str, reason: str = "test") -> bool:
    request = node_pb2.AbortRequest(round_id=round_id, reason=reason)
    known: bool = env.stubs[node].Abort(request, timeout=T).known
    return known


def assert_consistent(env: Env, before: dict[str, dict[str, list[tuple[Any, ...]]]]) -> None:
    """Stores as they were (audit aside), no round left anywhere, and a normal round works."""
    for name, tables in before.items():
        assert contents(env.fed.stores[name]) == tables, f"{name}'s store changed"
    for name, node in env.fed.nodes.items():
        assert node.rounds.active() == [], f"{name} still holds a round"
    info = env.fed.run_round(["alpha", "bravo"], timeout=30)
    assert info.state == "done", info.error
    assert dict(info.match_counts) == {"alpha": len(SHARED), "bravo": len(SHARED)}


def snapshot(env: Env) -> dict[str, dict[str, list[tuple[Any, ...]]]]:
    return {name: contents(path) for name, path in env.fed.stores.items()}


def signed_answer(
    zulu: Puppet, answer: v2.SignedAnswer, points: bytes, proof: bytes | None = None
) -> v2.SignedAnswer:
    """``answer`` with other ``points`` (and ``proof``), signed again by zulu: an answer zulu
    stands behind, so only its content can be refused."""
    a = serde_v2.answer_from_proto(answer).answer
    made = EvaluationAnswer(a.request, a.member, elements_digest(points), a.proof)
    if proof is not None:
        made = dataclasses.replace(made, proof=proof)
    return zulu.sign_answer(made, points)


# --- the direct driver works (so the refusals below are about the input) -----------------------


def test_a_round_driven_by_hand_completes(env: Env, members: list[Member]) -> None:
    zulu = puppet(env)
    r = hand(env, zulu)
    replies = r.prepare()
    assert replies["alpha"].size == len(DOMAINS["alpha"])
    assert replies["alpha"].HasField("commitment") and replies["alpha"].protocol == 2
    (share,) = shares(members, zulu)
    assert share.name == "alpha" and not destroyed(share)
    r.sign()
    r.begin()
    own = r.open_own("alpha")
    requests = own.read_requests()
    assert [q.request.count for q in requests] == [16, 16, 16, 12, LAMBDA]
    assert [q.request.proved for q in requests] == [False] * 4 + [True]
    assert all(len(q.points) == POINT_BYTES * q.request.count for q in requests)
    r.roots["alpha"] = serde_v2.root_from_proto(own.answer(r.evaluate("zulu", requests)))
    zulu.own(r)
    # alpha answered zulu's set and checks with its share: Y = k·X for each of zulu's points
    assert [a.request.count for a in zulu.sent] == [len(ZULU), LAMBDA]
    for asked, answer in zip(zulu.sent, zulu.answers, strict=True):
        assert answer.answer.member == "alpha"
        assert points_from_bytes(answer.points) == share.own_part(points_from_bytes(asked.points))
    recorded = r.deliver(r.match(r.reveal()))
    assert recorded == {"alpha": 2, "zulu": 2}
    assert destroyed(share)
    entry = audit(env, "alpha", r.round_id)
    assert entry is not None
    assert (entry.outcome, entry.blinded_for) == ("done", {"zulu": len(ZULU) + LAMBDA})
    with env.fed.store("alpha") as store:
        matches = store.matches(r.round_id)
    assert sorted(m.value for m in matches) == sorted(ZULU[:2])
    assert [m.partners for m in matches] == [["zulu"], ["zulu"]]


# --- unknown rounds ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "method", ["SignTranscript", "Begin", "Own", "Evaluate", "Reveal", "Deliver"]
)
def test_an_unknown_round_is_not_found(env: Env, method: str) -> None:
    before = snapshot(env)
    round_id = new_id()
    alpha = env.alpha
    request = v2.SignedRequest(
        request=v2.EvaluationRequest(purpose="round", ident=round_id, requester="zulu")
    )
    calls: dict[str, Callable[[], object]] = {
        "SignTranscript": lambda: alpha.SignTranscript(
            v2.TranscriptRequest(round_id=round_id), timeout=T
        ),
        "Begin": lambda: alpha.Begin(v2.BeginRequest(round_id=round_id), timeout=T),
        "Own": lambda: list(
            alpha.Own(iter([v2.OwnIn(start=v2.OwnStart(round_id=round_id))]), timeout=T)
        ),
        "Evaluate": lambda: list(alpha.Evaluate(iter([request]), timeout=T)),
        "Reveal": lambda: alpha.Reveal(v2.RevealRequest(round_id=round_id), timeout=T),
        "Deliver": lambda: alpha.Deliver(v2.DeliverRequest(round_id=round_id), timeout=T),
    }
    details = refused(Code.NOT_FOUND, calls[method])
    assert f"no round {round_id!r} on this node" in details
    assert audit(env, "alpha", round_id) is None
    assert_consistent(env, before)


def test_abort_of_an_unknown_round_is_harmless(env: Env) -> None:
    round_id = new_id()
    reply = env.alpha.Abort(node_pb2.AbortRequest(round_id=round_id, reason="x"), timeout=T)
    assert reply.known is False
    assert audit(env, "alpha", round_id) is None


# --- wrong phase ------------------------------------------------------------------------------


def _begin_early(env: Env, r: HandRound, zulu: OwningPuppet) -> object:
    r.prepare()
    return env.alpha.Begin(v2.BeginRequest(round_id=r.round_id), timeout=T)


def _own_early(env: Env, r: HandRound, zulu: OwningPuppet) -> object:
    r.prepare()
    r.sign()
    own = r.open_own("alpha")
    try:
        return own.read_requests()
    finally:
        own.cancel()


def _evaluate_early(env: Env, r: HandRound, zulu: OwningPuppet) -> object:
    r.prepare()
    r.sign()
    return r.evaluate("alpha", [zulu.request(0, point_to_bytes(hash_indicator("domain", "x")))])


def _reveal_early(env: Env, r: HandRound, zulu: OwningPuppet) -> object:
    r.prepare()
    r.sign()
    r.begin()
    return env.alpha.Reveal(v2.RevealRequest(round_id=r.round_id), timeout=T)


def _deliver_early(env: Env, r: HandRound, zulu: OwningPuppet) -> object:
    r.prepare()
    r.sign()
    r.begin()
    request = v2.DeliverRequest(round_id=r.round_id, mode="pairwise")
    return env.alpha.Deliver(request, timeout=T)


def _sign_twice(env: Env, r: HandRound, zulu: OwningPuppet) -> object:
    r.prepare()
    r.sign()
    return env.alpha.SignTranscript(r.transcript_request(), timeout=T)


def _begin_twice(env: Env, r: HandRound, zulu: OwningPuppet) -> object:
    r.prepare()
    r.sign()
    r.begin()
    return env.alpha.Begin(v2.BeginRequest(round_id=r.round_id, signatures=r.signatures), timeout=T)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (_begin_early, "is prepared; this message needs signed"),
        (_own_early, "is signed; this message needs evaluating"),
        (_evaluate_early, "is signed; this message needs evaluating or tagged"),
        (_reveal_early, "is evaluating; this message needs tagged"),
        (_deliver_early, "is evaluating; this message needs tagged"),
        (_sign_twice, "is signed; this message needs prepared"),
        (_begin_twice, "is evaluating; this message needs signed"),
    ],
    ids=[
        "begin-before-sign",
        "own-before-begin",
        "evaluate-before-begin",
        "reveal-before-root",
        "deliver-before-reveal",
        "sign-twice",
        "begin-twice",
    ],
)
def test_a_message_out_of_turn_is_failed_precondition(
    env: Env,
    members: list[Member],
    call: Callable[[Env, HandRound, OwningPuppet], object],
    message: str,
) -> None:
    before = snapshot(env)
    zulu = puppet(env)
    r = hand(env, zulu)
    details = refused(Code.FAILED_PRECONDITION, lambda: call(env, r, zulu))
    assert f"round {r.round_id} {message}" in details
    # a message out of turn changes nothing: the round waits, with its share, until aborted
    assert env.fed.nodes["alpha"].rounds.active() == [r.round_id]
    (share,) = shares(members, zulu)
    assert not destroyed(share)
    assert abort(env, "alpha", r.round_id)
    entry = audit(env, "alpha", r.round_id)
    assert entry is not None and (entry.outcome, entry.reason) == ("aborted", "test")
    assert_consistent(env, before)
    assert_destroyed([share])


def test_a_delivery_before_reveal_is_refused_and_fails_the_round(
    env: Env, members: list[Member]
) -> None:
    """Once alpha's root is out (tagged), a delivery is in turn by phase; but no root was
    revealed to it yet, so no proof can hold: refused as forged, and the round fails."""
    before = snapshot(env)
    zulu = puppet(env)
    r = begun(env, zulu)
    r.own("alpha")
    request = v2.DeliverRequest(round_id=r.round_id, mode="pairwise")
    details = refused(Code.PERMISSION_DENIED, lambda: env.alpha.Deliver(request, timeout=T))
    message = "a delivery proved against other roots than those revealed to"
    assert message in details
    assert_dropped(env, "alpha", r.round_id)
    entry = audit(env, "alpha", r.round_id)
    assert entry is not None and entry.outcome == "failed"
    assert entry.reason is not None and message in entry.reason
    assert_consistent(env, before)
    assert_destroyed(shares(members, zulu))


def test_prepare_twice_is_already_exists(env: Env, members: list[Member]) -> None:
    before = snapshot(env)
    round_id = new_id()
    prepare(env.alpha, round_id)
    details = refused(Code.ALREADY_EXISTS, lambda: prepare(env.alpha, round_id))
    assert f"round {round_id} is already prepared" in details
    assert len(members) == 1 and not destroyed(members[0])  # the first preparation stands
    abort(env, "alpha", round_id)
    assert_consistent(env, before)


@pytest.mark.parametrize("ending", ["aborted", "refused"])
def test_a_round_id_the_audit_knows_cannot_be_prepared_again(
    env: Env, members: list[Member], ending: str
) -> None:
    """A replayed round id must not overwrite the audit record of the round that used it."""
    round_id = new_id()
    delta = env.stubs["delta"]
    if ending == "aborted":
        prepare(delta, round_id, participants=("delta", "alpha"))
        abort(env, "delta", round_id, "r")
    else:
        refused(
            Code.PERMISSION_DENIED,
            lambda: prepare(delta, round_id, participants=("delta", "bravo")),
        )
    first = audit(env, "delta", round_id)
    assert first is not None and first.outcome == ending
    drawn = len(members)
    details = refused(
        Code.ALREADY_EXISTS, lambda: prepare(delta, round_id, participants=("delta", "alpha"))
    )
    assert f"round {round_id} is already in this node's audit log" in details
    assert audit(env, "delta", round_id) == first
    assert len(members) == drawn
    assert env.fed.nodes["delta"].rounds.active() == []


def test_an_own_stream_must_open_with_own_start(env: Env, members: list[Member]) -> None:
    """An answer names no round, so before OwnStart it belongs to nothing: the stream is
    malformed (INVALID_ARGUMENT) and no round is touched."""
    before = snapshot(env)
    zulu = puppet(env)
    r = begun(env, zulu)
    answer = v2.OwnIn(answer=v2.SignedAnswer(answer=v2.EvaluationAnswer(member="zulu")))
    details = refused(Code.INVALID_ARGUMENT, lambda: list(env.alpha.Own(iter([answer]), timeout=T)))
    assert "Own must open with OwnStart" in details
    assert refused(Code.INVALID_ARGUMENT, lambda: list(env.alpha.Own(iter([]), timeout=T)))
    assert env.fed.nodes["alpha"].rounds.active() == [r.round_id]
    (share,) = shares(members, zulu)
    assert not destroyed(share)
    abort(env, "alpha", r.round_id)
    assert_consistent(env, before)


def test_own_start_twice_in_one_stream_drops_the_round(env: Env, members: list[Member]) -> None:
    before = snapshot(env)
    zulu = puppet(env)
    r = begun(env, zulu)
    opening = v2.OwnIn(start=v2.OwnStart(round_id=r.round_id))
    details = refused(
        Code.INVALID_ARGUMENT, lambda: list(env.alpha.Own(iter([opening, opening]), timeout=T))
    )
    assert "after OwnStart, Own carries only answers" in details
    assert_dropped(env, "alpha", r.round_id)
    entry = audit(env, "alpha", r.round_id)
    assert entry is not None and entry.outcome == "failed"
    assert_consistent(env, before)
    assert_destroyed(shares(members, zulu))


@pytest.mark.parametrize(
    ("sizes", "message"),
    [
        ({"alpha": 60}, "the transcript's participants are not the signed spec's"),
        (
            {"alpha": 60, "zulu": len(ZULU), "yankee": 1},
            "the transcript's participants are not the signed spec's",
        ),
        ({"alpha": 59, "zulu": len(ZULU)}, "the transcript gives alpha a set it did not announce"),
    ],
    ids=["a-participant-missing", "a-stranger", "another-own-size"],
)
def test_a_transcript_with_other_sizes_is_refused_and_drops_the_round(
    env: Env, members: list[Member], sizes: dict[str, int], message: str
) -> None:
    """Every set's size is in the transcript: alpha signs none that does not give every
    participant, and only them, a size, and itself the size it announced."""
    before = snapshot(env)
    zulu = puppet(env)
    r = hand(env, zulu)
    r.prepare()
    assert r.transcript is not None
    shown = dataclasses.replace(r.transcript, sizes=sizes)
    details = refused(
        Code.PERMISSION_DENIED,
        lambda: env.alpha.SignTranscript(r.transcript_request(shown), timeout=T),
    )
    assert message in details
    assert_dropped(env, "alpha", r.round_id)
    entry = audit(env, "alpha", r.round_id)
    assert entry is not None and (entry.outcome, entry.blinded_for) == ("refused", {})
    assert entry.reason is not None and message in entry.reason
    assert_consistent(env, before)
    assert_destroyed(shares(members, zulu))


# --- malformed points -----------------------------------------------------------------------------

FIELD = 2**256 - 2**32 - 977  # secp256k1's p


def _small_x_point() -> tuple[int, int]:
    """A point of the curve with the smallest x: x + p still fits 32 bytes."""
    for x in itertools.count(1):
        rhs = (x**3 + 7) % FIELD
        y = pow(rhs, (FIELD + 1) // 4, FIELD)
        if y * y % FIELD == rhs:
            return x, y
    raise AssertionError("unreachable")


GOOD = point_to_bytes(hash_indicator("domain", "zulu.example"))  # a partner's blinded point
_X, _Y = GOOD[1:33], GOOD[33:]
_SX, _SY = _small_x_point()
_LOW = (_SY + 1) % FIELD


def _b32(n: int) -> bytes:
    return n.to_bytes(32, "big")


ENCODING = "a point is 65 bytes in uncompressed SEC1 form (04 || x || y); got 65 bytes starting"
NOT_ON_CURVE = "not a point of secp256k1"
# (the bad point, what the refusal says of it); each in a 65-byte slot, so only its content
# is wrong
BAD_POINTS = {
    "compressed-02": (b"\x02" + _X + _Y, f"{ENCODING} 02"),
    "compressed-03": (b"\x03" + _X + _Y, f"{ENCODING} 03"),
    "hybrid-06": (b"\x06" + _X + _Y, f"{ENCODING} 06"),
    "hybrid-07": (b"\x07" + _X + _Y, f"{ENCODING} 07"),
    "all-zero": (bytes(65), f"{ENCODING} 00"),
    "infinity-padded": (b"\x00" + b"\xff" * 64, f"{ENCODING} 00"),
    "x=p": (b"\x04" + _b32(FIELD) + _Y, NOT_ON_CURVE),
    "x=p+x0": (b"\x04" + _b32(_SX + FIELD) + _b32(_SY), NOT_ON_CURVE),  # x0 on the curve
    "y=p": (b"\x04" + _X + _b32(FIELD), NOT_ON_CURVE),
    "all-ones": (b"\x04" + b"\xff" * 64, NOT_ON_CURVE),
    "off-curve": (b"\x04" + _b32(_SX) + _b32(_LOW), NOT_ON_CURVE),
}
COMPRESSED = bytes([2 + (_Y[-1] & 1)]) + _X  # GOOD in its true 33-byte compressed form
# (bytes of a request of one point, what the refusal says of them)
BAD_LENGTHS = {
    "64-bytes": (GOOD[:64], "zulu's request 1: 1 points are 65 bytes, not 64"),
    "66-bytes": (GOOD + b"\x00", "zulu's request 1: 1 points are 65 bytes, not 66"),
    "compressed-33-bytes": (COMPRESSED, "zulu's request 1: 1 points are 65 bytes, not 33"),
    "infinity-1-byte": (b"\x00", "zulu's request 1: 1 points are 65 bytes, not 1"),
    "two-points-for-one": (GOOD * 2, "zulu's request 1: 1 points are 65 bytes, not 130"),
}


@pytest.mark.parametrize(
    ("points", "message"),
    [pytest.param(*case, id=name) for name, case in BAD_POINTS.items()]
    + [pytest.param(*case, id=name) for name, case in BAD_LENGTHS.items()],
)
def test_a_malformed_point_in_a_request_is_invalid_argument_and_drops_the_round(
    env: Env, members: list[Member], points: bytes, message: str
) -> None:
    """zulu, a partner, sends alpha's member a good request and then one whose points do not
    decode: alpha answers the first, refuses the second and ends the round."""
    before = snapshot(env)
    zulu = puppet(env)
    r = begun(env, zulu)
    sent = [zulu.request(0, GOOD), zulu.request(1, points, count=1)]
    details = refused(Code.INVALID_ARGUMENT, lambda: r.evaluate("alpha", sent))
    assert message in details
    assert_dropped(env, "alpha", r.round_id)
    entry = audit(env, "alpha", r.round_id)
    assert entry is not None and entry.outcome == "failed"
    assert entry.reason is not None and message in entry.reason
    assert entry.blinded_for == {"zulu": 1}
    assert_consistent(env, before)
    assert_destroyed(shares(members, zulu))


def _answer_cases() -> list[Any]:
    cases = [
        pytest.param(lambda good, point=point: good[:-POINT_BYTES] + point, message, id=name)
        for name, (point, message) in BAD_POINTS.items()
    ]
    not_whole = f"zulu's answer is not whole {POINT_BYTES}-byte points"
    cases += [
        pytest.param(lambda good: good[:-1], not_whole, id="64-bytes-last"),
        pytest.param(lambda good: good + b"\x00", not_whole, id="66-bytes-last"),
        pytest.param(
            lambda good: good[:-POINT_BYTES],
            f"zulu answered {CHUNK - 1} of {CHUNK} points",
            id="a-point-short",
        ),
        pytest.param(
            lambda good: good[:-POINT_BYTES] + COMPRESSED + bytes(32),
            f"{ENCODING} 0",
            id="compressed-33-bytes-padded",
        ),
    ]
    return cases


@pytest.mark.parametrize(("bad", "message"), _answer_cases())
def test_a_malformed_point_in_an_answer_is_invalid_argument_and_no_tag_leaves(
    env: Env, members: list[Member], bad: Callable[[bytes], bytes], message: str
) -> None:
    """zulu, a member, answers alpha's first chunk with points that do not decode, and signs
    that answer: alpha refuses it, ends the round, and no tag of its set leaves."""
    before = snapshot(env)
    zulu = puppet(env)
    r = begun(env, zulu)
    own = r.open_own("alpha")
    answers = r.evaluate("zulu", own.read_requests())
    forged = signed_answer(zulu, answers[0], bad(answers[0].points))
    try:
        details = refused(Code.INVALID_ARGUMENT, lambda: own.answer([forged, *answers[1:]]))
    finally:
        own.cancel()
    assert message in details
    assert_dropped(env, "alpha", r.round_id)
    entry = audit(env, "alpha", r.round_id)
    assert entry is not None and entry.outcome == "failed"
    assert entry.reason is not None and message in entry.reason
    assert_consistent(env, before)
    assert_destroyed(shares(members, zulu))


# --- scalars from the wire: the proofs' -----------------------------------------------------------

BAD_SCALARS = [
    pytest.param(lambda c, s: _b32(0) + _b32(s), id="c=0"),
    pytest.param(lambda c, s: _b32(c) + _b32(0), id="s=0"),
    pytest.param(lambda c, s: _b32(ORDER) + _b32(s), id="c=n"),
    pytest.param(lambda c, s: _b32(c) + _b32(ORDER), id="s=n"),
    pytest.param(lambda c, s: _b32(c) + _b32(2**256 - 1), id="s=2^256-1"),
    pytest.param(lambda c, s: (_b32(c) + _b32(s))[:-1], id="63-bytes"),
]


def _scalars(proof: bytes) -> tuple[int, int]:
    assert len(proof) == PROOF_BYTES
    return int.from_bytes(proof[:32], "big"), int.from_bytes(proof[32:], "big")


@pytest.mark.parametrize("forge", BAD_SCALARS)
def test_a_commitment_proof_with_a_scalar_out_of_range_is_refused(
    env: Env, members: list[Member], forge: Callable[[int, int], bytes]
) -> None:
    """zulu's commitment comes with a Schnorr proof whose c or s is 0, n or more: alpha
    refuses to sign the transcript, and the round ends before anything is evaluated."""
    before = snapshot(env)
    zulu = puppet(env)
    r = hand(env, zulu)
    r.prepare()
    assert r.transcript is not None
    commitments = tuple(
        c if c.member != "zulu" else Commitment(c.member, c.point, forge(*_scalars(c.proof)))
        for c in r.transcript.commitments
    )
    shown = dataclasses.replace(r.transcript, commitments=commitments)
    details = refused(
        Code.PERMISSION_DENIED,
        lambda: env.alpha.SignTranscript(r.transcript_request(shown), timeout=T),
    )
    message = "a proof is 64 bytes" if len(commitments[1].proof) != 64 else "a proof's scalars"
    assert message in details
    assert_dropped(env, "alpha", r.round_id)
    entry = audit(env, "alpha", r.round_id)
    assert entry is not None and entry.outcome == "refused"
    assert entry.reason is not None and message in entry.reason
    assert entry.blinded_for == {}
    assert_consistent(env, before)
    assert_destroyed(shares(members, zulu))


@pytest.mark.parametrize("forge", BAD_SCALARS)
def test_an_answer_proof_with_a_scalar_out_of_range_is_refused(
    env: Env, members: list[Member], forge: Callable[[int, int], bytes]
) -> None:
    """zulu answers alpha's subset checks with the right points and a DLEQ proof whose c or s
    is 0, n or more, signed: alpha refuses it and no tag leaves."""
    before = snapshot(env)
    zulu = puppet(env)
    r = begun(env, zulu)
    own = r.open_own("alpha")
    answers = r.evaluate("zulu", own.read_requests())
    checks = answers[-1]
    assert checks.answer.proof
    forged = signed_answer(zulu, checks, checks.points, forge(*_scalars(checks.answer.proof)))
    try:
        details = refused(Code.PERMISSION_DENIED, lambda: own.answer([*answers[:-1], forged]))
    finally:
        own.cancel()
    # the proof's bytes do not even make a proof: as forged as one that does not verify
    message = "zulu signed a proof of its subset checks that does not hold against its commitment"
    assert message in details
    assert_dropped(env, "alpha", r.round_id)
    entry = audit(env, "alpha", r.round_id)
    assert entry is not None and entry.outcome == "failed"
    assert entry.reason is not None and message in entry.reason
    assert_consistent(env, before)
    assert_destroyed(shares(members, zulu))


# --- requests: equivocation, budgets, strangers -------------------------------------------------

ALLOWED = len(ZULU) + LAMBDA  # what zulu may ask of alpha's share: its set and its checks
# a chunk size that lets one request carry more than zulu may ask for: the budget is what refuses
WHOLE = 2 * ALLOWED


def _points(n: int) -> bytes:
    return b"".join(point_to_bytes(hash_indicator("domain", f"p{i}.example")) for i in range(n))


def _equivocation(r: HandRound, zulu: OwningPuppet) -> list[v2.SignedRequest]:
    return [zulu.request(0, _points(1)), zulu.request(0, GOOD)]


def _over_budget(r: HandRound, zulu: OwningPuppet) -> list[v2.SignedRequest]:
    return [zulu.request(0, _points(ALLOWED + 1))]


def _over_budget_later(r: HandRound, zulu: OwningPuppet) -> list[v2.SignedRequest]:
    return [zulu.request(0, _points(ALLOWED)), zulu.request(1, GOOD)]


def _own_request(r: HandRound, zulu: OwningPuppet) -> list[v2.SignedRequest]:
    """alpha's own signed request, as the coordinator relays it, sent back to alpha."""
    own = r.open_own("alpha")
    try:
        return own.read_requests()[:1]
    finally:
        # Broken off, not closed: an Own stream closed before every answer is in fails the
        # round (another refusal than the one this case is about); one broken off leaves it.
        own.call.cancel()
        own.inbox.put(None)


def yankee() -> Signer:
    """A signer with the certificate and key the federation CA issued to yankee, a node name
    that is no participant of the round."""
    return signer(PKI[0], "yankee", "node")


def _stranger(r: HandRound, zulu: OwningPuppet) -> list[v2.SignedRequest]:
    return [zulu.request(0, GOOD, requester="yankee", by=yankee())]


def _signed_by_another(r: HandRound, zulu: OwningPuppet) -> list[v2.SignedRequest]:
    return [zulu.request(0, GOOD, by=yankee())]


def _another_transcript(r: HandRound, zulu: OwningPuppet) -> list[v2.SignedRequest]:
    return [zulu.request(0, GOOD, transcript=bytes(32))]


def _empty(r: HandRound, zulu: OwningPuppet) -> list[v2.SignedRequest]:
    return [zulu.request(0, b"")]


def _count_past_any_request(r: HandRound, zulu: OwningPuppet) -> list[v2.SignedRequest]:
    return [zulu.request(0, GOOD, count=2**32 - 1)]


@pytest.mark.parametrize(
    ("requests", "code", "message", "blinded"),
    [
        (
            _equivocation,
            Code.PERMISSION_DENIED,
            "zulu signed two different requests at seq 0",
            1,
        ),
        (
            _over_budget,
            Code.RESOURCE_EXHAUSTED,
            f"zulu asks for {ALLOWED + 1} evaluations; its announced set of {len(ZULU)} and "
            f"{LAMBDA} checks allow {ALLOWED}",
            0,
        ),
        (
            _over_budget_later,
            Code.RESOURCE_EXHAUSTED,
            f"zulu asks for {ALLOWED + 1} evaluations; its announced set of {len(ZULU)} and "
            f"{LAMBDA} checks allow {ALLOWED}",
            ALLOWED,
        ),
        (_own_request, Code.PERMISSION_DENIED, "a request in the name of alpha, not a partner", 0),
        (_stranger, Code.PERMISSION_DENIED, "a request in the name of yankee, not a partner", 0),
        (_signed_by_another, Code.PERMISSION_DENIED, "zulu's request", 0),
        (
            _another_transcript,
            Code.PERMISSION_DENIED,
            "zulu's request carries another transcript than the one this member signed",
            0,
        ),
        (_empty, Code.INVALID_ARGUMENT, "zulu's request 0: count 0 is out of range", 0),
        (
            _count_past_any_request,
            Code.INVALID_ARGUMENT,
            f"zulu's request 0: count {2**32 - 1} is out of range",
            0,
        ),
    ],
    ids=[
        "equivocation",
        "over-the-budget",
        "over-the-budget-later",
        "own-set",
        "stranger",
        "signed-by-another",
        "another-transcript",
        "empty",
        "count-past-any-request",
    ],
)
def test_a_refused_request_ends_the_round(
    env: Env,
    members: list[Member],
    requests: Callable[[HandRound, OwningPuppet], list[v2.SignedRequest]],
    code: grpc.StatusCode,
    message: str,
    blinded: int,
) -> None:
    before = snapshot(env)
    zulu = puppet(env)
    r = begun(env, zulu, chunk_size=WHOLE)
    sent = requests(r, zulu)
    details = refused(code, lambda: r.evaluate("alpha", sent))
    assert message in details
    assert_dropped(env, "alpha", r.round_id)
    entry = audit(env, "alpha", r.round_id)
    assert entry is not None and entry.outcome == "failed"
    assert entry.reason is not None and message in entry.reason
    assert entry.blinded_for == {"zulu": blinded}
    assert_consistent(env, before)
    assert_destroyed(shares(members, zulu))


def test_a_repeated_request_gets_the_same_answer_and_costs_nothing(
    env: Env, members: list[Member]
) -> None:
    """A retry after a lost reply: the same signed request again, on the same stream or a new
    one, is answered with the same points and not charged again, so zulu can still ask for
    everything it announced; one evaluation more is refused."""
    before = snapshot(env)
    zulu = puppet(env)
    r = begun(env, zulu, chunk_size=WHOLE)
    first = zulu.request(0, _points(len(ZULU)))
    (answer,) = r.evaluate("alpha", [first])
    again = r.evaluate("alpha", [first, first, zulu.request(1, _points(LAMBDA))])
    assert [a.points for a in again[:2]] == [answer.points, answer.points]
    assert [a.answer for a in again[:2]] == [answer.answer, answer.answer]
    assert len(again) == 3  # the whole allowance answered: the repeats cost nothing
    message = f"zulu asks for {ALLOWED + 1} evaluations"
    assert message in refused(
        Code.RESOURCE_EXHAUSTED, lambda: r.evaluate("alpha", [zulu.request(2, GOOD)])
    )
    assert_dropped(env, "alpha", r.round_id)
    entry = audit(env, "alpha", r.round_id)
    assert entry is not None and entry.outcome == "failed"
    assert entry.reason is not None and message in entry.reason
    assert_consistent(env, before)
    assert_destroyed(shares(members, zulu))


# --- malformed deliveries ------------------------------------------------------------------------


def _proof(msg: v2.DeliverRequest) -> v2.Inclusion:
    assert len(msg.proofs) == 1 and msg.proofs[0].partner == "zulu"
    return msg.proofs[0]


def _position_out_of_range(msg: v2.DeliverRequest) -> None:
    _proof(msg).positions[-1] = len(DOMAINS["alpha"])


def _leaf_out_of_range(msg: v2.DeliverRequest) -> None:
    _proof(msg).indexes[-1] = len(ZULU)


def _for_a_stranger(msg: v2.DeliverRequest) -> None:
    _proof(msg).partner = "yankee"


def _for_itself(msg: v2.DeliverRequest) -> None:
    _proof(msg).partner = "alpha"


def _wrong_hash(msg: v2.DeliverRequest) -> None:
    proof = _proof(msg)
    assert proof.hashes
    proof.hashes = bytes([proof.hashes[0] ^ 1]) + proof.hashes[1:]


def _lengths_differ(msg: v2.DeliverRequest) -> None:
    _proof(msg).indexes.pop()


def _empty_proof(msg: v2.DeliverRequest) -> None:
    del _proof(msg).positions[:]
    del _proof(msg).indexes[:]


def _proof_twice(msg: v2.DeliverRequest) -> None:
    msg.proofs.append(_proof(msg))


def _wrong_mode(msg: v2.DeliverRequest) -> None:
    msg.mode = "threshold"


def _hits_in_pairwise(msg: v2.DeliverRequest) -> None:
    msg.has_hits = True
    msg.hits.extend(_proof(msg).positions)


def _other_roots(msg: v2.DeliverRequest) -> None:
    del msg.roots[-1]


def _no_result(msg: v2.DeliverRequest) -> None:
    msg.CopyFrom(v2.DeliverRequest(round_id=msg.round_id, roots=msg.roots))


def _counts_unasked(msg: v2.DeliverRequest) -> None:
    msg.has_counts = True
    msg.counts.extend([2] * len(msg.hits))


def _counts_without_hits(msg: v2.DeliverRequest) -> None:
    msg.has_hits = False
    del msg.hits[:]
    msg.has_counts = True
    msg.counts.append(2)


def _hit_without_proof(msg: v2.DeliverRequest) -> None:
    held = set(msg.hits)
    msg.hits[:] = sorted(held | {next(p for p in range(len(DOMAINS["alpha"])) if p not in held)})


def _count_names_a_stranger(msg: v2.DeliverRequest) -> None:
    msg.shared["yankee"] = 1


def _count_over_size(msg: v2.DeliverRequest) -> None:
    msg.shared["zulu"] = len(ZULU) + 1


U64 = 2**64 - 1  # the largest uint64: no set has a position, leaf or count anywhere near it


def _position_past_any_set(msg: v2.DeliverRequest) -> None:
    _proof(msg).positions[-1] = U64


def _count_past_any_set(msg: v2.DeliverRequest) -> None:
    msg.shared["zulu"] = U64


FORGED = Code.PERMISSION_DENIED  # core.delivery.ForgedDelivery is a ForgedMessage


@pytest.mark.parametrize(
    ("mode", "tamper", "code", "message"),
    [
        (
            "pairwise",
            _position_out_of_range,
            FORGED,
            "positions proved by zulu include a position out of range (0 to 59)",
        ),
        (
            "pairwise",
            _leaf_out_of_range,
            FORGED,
            "leaf indexes of zulu include a position out of range (0 to 2)",
        ),
        ("pairwise", _for_a_stranger, FORGED, "a proof against no signed root of 'yankee'"),
        ("pairwise", _for_itself, FORGED, "a delivery names alpha as its own partner"),
        (
            "pairwise",
            _wrong_hash,
            FORGED,
            "a claim that zulu holds 2 of alpha's tags is not proved against zulu's signed root",
        ),
        (
            "pairwise",
            _lengths_differ,
            Code.INVALID_ARGUMENT,
            "an inclusion proof for zulu: positions and leaves differ",
        ),
        ("pairwise", _empty_proof, FORGED, "an empty or uneven proof for zulu"),
        ("pairwise", _proof_twice, FORGED, "two proofs for zulu in one delivery"),
        ("pairwise", _wrong_mode, FORGED, "a 'threshold' delivery in a pairwise round"),
        ("pairwise", _hits_in_pairwise, FORGED, "a pairwise delivery with threshold hits"),
        (
            "pairwise",
            _other_roots,
            FORGED,
            "a delivery proved against other roots than those revealed to",
        ),
        ("pairwise", _no_result, FORGED, "a '' delivery in a pairwise round"),
        ("threshold", _counts_unasked, FORGED, "threshold counts the spec does not ask for"),
        (
            "threshold",
            _counts_without_hits,
            Code.INVALID_ARGUMENT,
            "counts come only with threshold hits",
        ),
        ("threshold", _hit_without_proof, FORGED, "is claimed held by 2 with 0 holders' proofs"),
        (
            "count",
            _count_names_a_stranger,
            FORGED,
            "a count delivery that does not give one count per partner",
        ),
        (
            "count",
            _count_over_size,
            FORGED,
            f"a count of {len(ZULU) + 1} shared with zulu, whose set has {len(ZULU)} tags",
        ),
        (
            "pairwise",
            _position_past_any_set,
            Code.INVALID_ARGUMENT,
            f"a position proved by zulu {U64} is out of range",
        ),
        (
            "count",
            _count_past_any_set,
            Code.INVALID_ARGUMENT,
            f"the count shared with zulu {U64} is out of range",
        ),
    ],
    ids=[
        "position-out-of-range",
        "leaf-out-of-range",
        "proof-for-a-stranger",
        "proof-for-itself",
        "wrong-hash",
        "lengths-differ",
        "empty-proof",
        "proof-twice",
        "wrong-mode",
        "hits-in-pairwise",
        "other-roots",
        "no-result",
        "threshold-counts-unasked",
        "threshold-counts-without-hits",
        "threshold-hit-without-proof",
        "count-names-a-stranger",
        "count-over-a-set",
        "position-past-any-set",
        "count-past-any-set",
    ],
)
def test_a_malformed_delivery_is_refused_and_nothing_is_recorded(
    env: Env,
    members: list[Member],
    mode: str,
    tamper: Callable[[v2.DeliverRequest], None],
    code: grpc.StatusCode,
    message: str,
) -> None:
    before = snapshot(env)
    zulu = puppet(env)
    r = begun(env, zulu, mode=mode, threshold=2 if mode == "threshold" else 0)
    r.own("alpha")
    zulu.own(r)
    delivery, roots = r.match(r.reveal())["alpha"]
    request = serde_v2.delivery_to_proto(delivery, roots)
    tamper(request)
    details = refused(code, lambda: env.alpha.Deliver(request, timeout=T))
    assert message in details
    assert_dropped(env, "alpha", r.round_id)
    entry = audit(env, "alpha", r.round_id)
    assert entry is not None and entry.outcome == "failed"
    assert entry.reason is not None and message in entry.reason
    assert_consistent(env, before)  # nothing of the delivery was recorded
    assert_destroyed(shares(members, zulu))


# --- caps and policy, straight to the node --------------------------------------------------------


def test_an_own_set_over_the_cap_is_refused_before_any_share_is_drawn(
    env: Env, members: list[Member]
) -> None:
    before = snapshot(env)
    round_id = new_id()
    details = refused(
        Code.RESOURCE_EXHAUSTED,
        lambda: prepare(env.stubs["charlie"], round_id, participants=("charlie", "alpha")),
    )
    assert f"own set of 60 indicators exceeds this node's cap of {OWN_CAP}" in details
    assert "max_own_set" in details
    assert members == []
    entry = audit(env, "charlie", round_id)
    assert entry is not None
    assert (entry.outcome, entry.own_size, entry.blinded_for) == ("refused", 0, {})
    assert entry.reason == details
    assert_consistent(env, before)


@pytest.mark.parametrize(
    ("alpha_size", "message"),
    [
        (
            PARTNER_CAP + 1,
            f"alpha's set of {PARTNER_CAP + 1} elements exceeds this node's cap of {PARTNER_CAP} "
            "per partner (policy max_partner_set)",
        ),
        (
            PARTNER_CAP,
            f"round would blind {PARTNER_CAP + 20} elements; this node's cap is {ROUND_CAP} "
            "(policy max_round_elements)",
        ),
    ],
    ids=["partner-set", "round-total"],
)
def test_a_partner_set_over_the_caps_is_refused_at_begin_before_any_evaluation(
    env: Env, members: list[Member], alpha_size: int, message: str
) -> None:
    """alpha (played by the test with its real key) announces a set over delta's caps: delta
    signs the transcript, then refuses at Begin, and answers nothing for alpha."""
    before = snapshot(env)
    alpha = puppet(env, "alpha", [f"x{i}.example" for i in range(alpha_size)])
    r = hand(env, alpha, participants=("delta", "alpha"))
    replies = r.prepare()
    assert replies["delta"].size == len(DOMAINS["delta"])
    r.sign()
    request = v2.BeginRequest(round_id=r.round_id, signatures=r.signatures)
    details = refused(Code.RESOURCE_EXHAUSTED, lambda: env.stubs["delta"].Begin(request, timeout=T))
    assert details == message
    alpha.Begin(request)
    # alpha's first chunk, as it would ask for it: refused with the same refusal, unanswered
    asked = serde_v2.request_to_proto(alpha.machine.request(alpha.hashes[:CHUNK]))
    assert refused(Code.RESOURCE_EXHAUSTED, lambda: r.evaluate("delta", [asked])) == message
    assert_dropped(env, "delta", r.round_id)
    entry = audit(env, "delta", r.round_id)
    assert entry is not None
    assert (entry.outcome, entry.reason, entry.blinded_for) == ("refused", message, {})
    assert_consistent(env, before)
    assert_destroyed(shares(members, alpha))


@pytest.mark.parametrize(
    ("node", "participants", "code", "message"),
    [
        (
            "delta",
            ("delta", "alpha", "bravo"),
            Code.PERMISSION_DENIED,
            "policy of delta does not allow matching with bravo",
        ),
        (
            "alpha",
            ("bravo", "zulu"),
            Code.INVALID_ARGUMENT,
            "this node (alpha) is not a participant",
        ),
    ],
    ids=["outside-the-allow-list", "not-a-participant"],
)
def test_a_round_the_policy_refuses_draws_no_share(
    env: Env,
    members: list[Member],
    node: str,
    participants: tuple[str, ...],
    code: grpc.StatusCode,
    message: str,
) -> None:
    before = snapshot(env)
    round_id = new_id()
    details = refused(code, lambda: prepare(env.stubs[node], round_id, participants=participants))
    assert message in details
    assert members == []
    entry = audit(env, node, round_id)
    assert entry is not None and (entry.outcome, entry.reason) == ("refused", details)
    assert_consistent(env, before)


# --- caps and policy through the coordinator: the operator is told why ----------------------------


@pytest.mark.parametrize(
    ("participants", "refuser", "message"),
    [
        (
            ["alpha", "delta"],
            "delta",
            # refused at Begin: the coordinator hears it from delta's Begin
            "RESOURCE_EXHAUSTED: alpha's set of 60 elements exceeds "
            f"this node's cap of {PARTNER_CAP} per partner (policy max_partner_set)",
        ),
        (
            ["alpha", "charlie"],
            "charlie",
            "charlie refused: RESOURCE_EXHAUSTED: own set of 60 indicators exceeds this node's "
            f"cap of {OWN_CAP} (policy max_own_set)",
        ),
        (
            ["alpha", "bravo", "delta"],
            "delta",
            "delta refused: PERMISSION_DENIED: policy of delta does not allow matching with bravo",
        ),
    ],
    ids=["partner-cap", "own-cap", "allow-list"],
)
def test_a_node_refusal_reaches_the_operator_and_nothing_is_blinded_for_the_partner(
    env: Env, members: list[Member], participants: list[str], refuser: str, message: str
) -> None:
    before = snapshot(env)
    info = env.fed.run_round(participants, timeout=30)
    assert info.state == "failed"
    assert info.error.startswith(f"{refuser} refused") and message in info.error
    assert not info.match_counts
    entry = audit(env, refuser, info.id)
    assert entry is not None and entry.outcome == "refused"
    assert sum(entry.blinded_for.values()) == 0
    for name in participants:
        other = audit(env, name, info.id)
        assert other is not None and other.outcome != "started"
    assert_consistent(env, before)
    assert_destroyed([m for m in members if m.ident == info.id])


def coordinator_with(env: Env, caps: Caps, root: Path) -> CoordinatorConfig:
    files = env.pki.files("coordinator", "coordinator")
    return CoordinatorConfig(
        listen="127.0.0.1:0",
        tls=TlsPaths(files.ca, files.cert, files.key),
        nodes={name: f"127.0.0.1:{node.port}" for name, node in env.fed.nodes.items()},
        state=root / "coordinator.sqlite",
        caps=caps,
    )


@pytest.mark.parametrize(
    ("caps", "message"),
    [
        (
            Caps(max_set=50),
            "alpha announced a set of 60 elements; the coordinator's cap is 50 per node (max_set)",
        ),
        (
            Caps(max_total=100),
            "the round's sets total 120 elements; the coordinator's cap is 100 (max_total)",
        ),
    ],
    ids=["max-set", "max-total"],
)
def test_the_coordinator_refuses_sizes_over_its_own_caps(
    env: Env, members: list[Member], tmp_path: Path, caps: Caps, message: str
) -> None:
    before = snapshot(env)
    running = start_coordinator(coordinator_with(env, caps, tmp_path), insecure=False)
    channel = net.open_channel(
        f"127.0.0.1:{running.port}",
        env.pki.tls("ops", "operator"),
        insecure=False,
        expect=net.Allow("coordinator"),
    )
    try:
        stub = coordinator_pb2_grpc.CoordinatorServiceStub(channel)
        info = stub.StartRound(start_request(env.pki, ["alpha", "bravo"]), timeout=T)
        *_, info = stub.WatchRound(coordinator_pb2.GetRoundRequest(id=info.id), timeout=30)
    finally:
        channel.close()
        running.stop()
    assert info.state == "failed"
    assert info.error == message
    for name in ("alpha", "bravo"):
        entry = audit(env, name, info.id)
        assert entry is not None
        assert (entry.outcome, entry.blinded_for) == ("aborted", {})
    # refused on the sizes the Prepare replies announced: no transcript was ever signed
    drawn = [m for m in members if m.ident == info.id]
    assert sorted(m.name for m in drawn) == ["alpha", "bravo"]
    assert all(m.ledger is None for m in drawn)
    assert_consistent(env, before)
    assert_destroyed(drawn)


# --- the coordinator's own validation -------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        ({"nodes": ["alpha", "bravo"], "mode": "tally"}, "unknown mode 'tally'"),
        ({"nodes": ["alpha", "bravo"], "mode": "threshold"}, "threshold must be between 2 and 2"),
        (
            {"nodes": ["alpha", "bravo"], "mode": "threshold", "threshold": 3},
            "threshold must be between 2 and 2",
        ),
        ({"nodes": ["alpha", "bravo"], "threshold": 2}, "a threshold only applies to threshold"),
        ({"nodes": ["alpha", "bravo"], "kinds": ["phone"]}, "unknown or no kinds: phone"),
        ({"nodes": ["alpha"]}, "a round needs 2 to 64 participants, got 1"),
        ({"nodes": ["alpha", "zulu"]}, "unknown node(s) zulu"),
    ],
)
def test_start_round_validates_its_request(
    env: Env, request_: dict[str, Any], message: str
) -> None:
    stub = env.fed.stub
    before = stub.ListRounds(coordinator_pb2.ListRoundsRequest(limit=1000), timeout=T).rounds
    details = refused(
        Code.INVALID_ARGUMENT,
        lambda: stub.StartRound(start_request(env.pki, **request_), timeout=T),
    )
    assert message in details
    after = stub.ListRounds(coordinator_pb2.ListRoundsRequest(limit=1000), timeout=T).rounds
    assert after == before
    assert all(not n.rounds.active() for n in env.fed.nodes.values())


@pytest.mark.parametrize("method", ["GetRound", "WatchRound"])
def test_an_unknown_round_id_is_not_found_at_the_coordinator(env: Env, method: str) -> None:
    stub = env.fed.stub
    request = coordinator_pb2.GetRoundRequest(id="0" * 32)
    calls: dict[str, Callable[[], object]] = {
        "GetRound": lambda: stub.GetRound(request, timeout=T),
        "WatchRound": lambda: list(stub.WatchRound(request, timeout=T)),
    }
    assert "no round with id '000" in refused(Code.NOT_FOUND, calls[method])


# --- property tests: random bytes and random messages to every RPC ------------------------------

COORDINATOR_SERVICE = "/blindmatch.v1.CoordinatorService/"
COORDINATOR_METHODS = {
    "StartRound": "unary",
    "GetRound": "unary",
    "ListRounds": "unary",
    "WatchRound": "server-stream",
}
PROPER = {
    Code.OK,
    Code.INVALID_ARGUMENT,
    Code.NOT_FOUND,
    Code.FAILED_PRECONDITION,
    Code.ALREADY_EXISTS,
    Code.RESOURCE_EXHAUSTED,
    Code.PERMISSION_DENIED,
}
# What grpc itself answers when a request does not parse as its message type.
# bytes that are no message of the method: refused by the server's gate before any handler
UNPARSABLE = "the message does not parse"
FUZZ_DEADLINE = 5.0


def raw_call(channel: grpc.Channel, path: str, kind: str, payloads: list[bytes]) -> tuple[Any, str]:
    """Call ``path`` with raw bytes (no serializer): the status code and details."""
    try:
        if kind == "unary":
            channel.unary_unary(path)(payloads[0], timeout=FUZZ_DEADLINE)
        elif kind == "server-stream":
            list(channel.unary_stream(path)(payloads[0], timeout=FUZZ_DEADLINE))
        else:
            list(channel.stream_stream(path)(iter(payloads), timeout=FUZZ_DEADLINE))
    except grpc.RpcError as err:
        e: Any = err
        return e.code(), e.details() or ""
    return Code.OK, ""


def assert_proper(status: tuple[Any, str], what: str, seen: set[Any] | None = None) -> None:
    code, details = status
    assert code in PROPER, f"{what}: {code} {details}"
    if seen is not None:
        seen.add(UNPARSABLE if details.endswith(UNPARSABLE) else code)


def assert_serving(channel: grpc.Channel) -> None:
    reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=T)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def wait_until_rounds_end(env: Env, timeout: float = 60.0) -> None:
    request = coordinator_pb2.ListRoundsRequest(limit=1000)

    def ended() -> bool:
        rounds = env.fed.stub.ListRounds(request).rounds
        return all(r.state in ("done", "failed") for r in rounds)

    until("rounds started by the fuzzer end", ended, timeout)


def test_random_bytes_to_every_coordinator_rpc_get_a_proper_status(env: Env) -> None:
    before = snapshot(env)
    methods = [(COORDINATOR_SERVICE + m, k) for m, k in COORDINATOR_METHODS.items()]
    coordinator = env.fed.channel
    seen: set[Any] = set()

    @settings(max_examples=60, deadline=None, derandomize=True)
    @given(
        method=st.sampled_from(methods),
        payloads=st.lists(st.binary(max_size=120), min_size=1, max_size=3),
    )
    def fuzz(method: tuple[str, str], payloads: list[bytes]) -> None:
        path, kind = method
        assert_proper(raw_call(coordinator, path, kind, payloads), path, seen)

    fuzz()
    # bytes that parse reach the handlers: empty messages are refused by the services themselves
    assert {UNPARSABLE, Code.INVALID_ARGUMENT, Code.NOT_FOUND} <= seen
    assert_serving(coordinator)
    wait_until_rounds_end(env)
    assert_consistent(env, before)


NODE_SERVICE = "/blindmatch.v2.NodeService/"
NODE_METHODS = {
    "Prepare": "unary",
    "SignTranscript": "unary",
    "Begin": "unary",
    # Not Evaluate: an Evaluate stream whose first message does not parse leaves the node's
    # server unable to stop (RunningNode.stop hangs in server.stop(grace).wait()) in about half
    # the runs, which would hang this module's teardown; reported, not tested here.
    "Own": "bidi",
    "Reveal": "unary",
    "Deliver": "unary",
    "Abort": "unary",
}


def test_random_bytes_to_every_node_rpc_get_a_proper_status(env: Env) -> None:
    before = snapshot(env)
    methods = [(NODE_SERVICE + m, k) for m, k in NODE_METHODS.items()]
    seen: set[Any] = set()

    @settings(max_examples=80, deadline=None, derandomize=True)
    @given(
        method=st.sampled_from(methods),
        payloads=st.lists(st.binary(max_size=120), min_size=1, max_size=3),
    )
    def fuzz(method: tuple[str, str], payloads: list[bytes]) -> None:
        path, kind = method
        assert_proper(raw_call(env.channels["alpha"], path, kind, payloads), path, seen)

    fuzz()
    # bytes that parse reach the handlers: empty messages are refused by the services themselves
    assert {UNPARSABLE, Code.INVALID_ARGUMENT, Code.NOT_FOUND} <= seen
    assert_serving(env.channels["alpha"])
    assert_consistent(env, before)


NAMES = st.sampled_from(["alpha", "bravo", "zulu", "yankee", "", "Alpha", "x" * 70])
POINTS = st.one_of(
    st.binary(max_size=140),
    st.integers(1, 3).map(lambda n: GOOD * n),
    st.lists(
        st.sampled_from([GOOD, COMPRESSED, *(p for p, _ in BAD_POINTS.values())]),
        min_size=1,
        max_size=3,
    ).map(b"".join),
)


@st.composite
def round_specs(draw: st.DrawFn) -> node_pb2.RoundSpec:
    """Most of them valid for alpha, the rest anything the message can carry."""
    if draw(st.integers(0, 3)):
        partners = draw(st.lists(st.sampled_from(["bravo", "zulu"]), min_size=1, unique=True))
        names = draw(st.permutations(["alpha", *partners]))
        mode = draw(st.sampled_from(["pairwise", "threshold", "count"]))
        return node_pb2.RoundSpec(
            participants=names,
            mode=mode,
            threshold=draw(st.integers(2, len(names))) if mode == "threshold" else 0,
            kinds=["domain"],
            chunk_size=draw(st.sampled_from([7, 16, 4096])),
        )
    return node_pb2.RoundSpec(
        participants=draw(st.lists(NAMES, max_size=4)),
        mode=draw(st.sampled_from(["", "pairwise", "threshold", "count", "tally"])),
        threshold=draw(st.integers(0, 2**32 - 1)),
        kinds=draw(st.lists(st.sampled_from([*KINDS, "phone", ""]), max_size=3)),
        chunk_size=draw(st.sampled_from([0, 1, 65536, 65537, 2**32 - 1])),
    )


REQUESTS = st.one_of(
    # signed by a partner (a puppet) under the transcript it signed, when there is one
    st.tuples(
        st.just("signed"), st.integers(0, 3), POINTS, st.one_of(st.none(), st.integers(0, 5))
    ),
    st.tuples(
        st.just("raw"),
        NAMES,
        st.integers(0, 2**32 - 1),
        st.integers(0, 2**32 - 1),
        POINTS,
        st.binary(max_size=80),
        st.sampled_from(["", "set", "check", "round"]),
    ),
)
ANSWERS = st.lists(
    st.builds(
        lambda member, request, digest, proof, points, signature: v2.SignedAnswer(
            answer=v2.EvaluationAnswer(request=request, member=member, answers=digest, proof=proof),
            points=points,
            signature=signature,
        ),
        NAMES,
        st.binary(max_size=40),
        st.binary(max_size=40),
        st.binary(max_size=70),
        POINTS,
        st.binary(max_size=80),
    ),
    min_size=1,  # an answer that fails ends the Own call; none would keep it waiting
    max_size=2,
)
ROOTS = st.lists(
    st.builds(
        lambda owner, size, root, signature: v2.SignedRoot(
            owner=owner, size=size, root=root, signature=signature
        ),
        NAMES,
        st.integers(0, 2**64 - 1),
        st.binary(max_size=40),
        st.binary(max_size=80),
    ),
    max_size=3,
)
DELIVERIES = st.builds(
    lambda mode, proofs, hits, counts, has_hits, has_counts, shared, roots: {
        "mode": mode,
        "proofs": proofs,
        "hits": hits,
        "counts": counts,
        "has_hits": has_hits,
        "has_counts": has_counts,
        "shared": shared,
        "roots": roots,
    },
    st.sampled_from(["", "pairwise", "threshold", "count", "tally"]),
    st.lists(
        st.builds(
            lambda partner, positions, indexes, hashes: v2.Inclusion(
                partner=partner, positions=positions, indexes=indexes, hashes=hashes
            ),
            NAMES,
            st.lists(st.integers(0, 70), max_size=3),
            st.lists(st.one_of(st.integers(0, 5), st.integers(0, 2**64 - 1)), max_size=3),
            st.binary(max_size=64),
        ),
        max_size=2,
    ),
    st.lists(st.integers(0, 70), max_size=3),
    st.lists(st.integers(0, 6), max_size=3),
    st.booleans(),
    st.booleans(),
    st.dictionaries(NAMES, st.integers(0, 2**64 - 1), max_size=2),
    ROOTS,
)
ACTIONS = st.lists(
    st.one_of(
        st.tuples(st.just("sign"), st.booleans()),  # True: the honest transcript, if any
        st.tuples(st.just("begin"), st.booleans()),  # True: every signature collected
        st.tuples(st.just("evaluate"), REQUESTS),
        st.tuples(st.just("own"), ANSWERS),
        st.tuples(st.just("reveal"), ROOTS),
        st.tuples(st.just("deliver"), DELIVERIES),
        st.tuples(st.just("abort")),
    ),
    max_size=4,
)
HONEST = [("sign", True), ("begin", True), ("evaluate", ("signed", 0, GOOD, None))]


def status(call: Callable[[], object]) -> tuple[Any, str]:
    """The status a call ends with: OK, or the code and details it was refused with."""
    try:
        call()
    except grpc.RpcError as err:
        e: Any = err
        return e.code(), e.details() or ""
    return Code.OK, ""


class FuzzedRound:
    """One fuzzed round on alpha, with a puppet for every other participant when the spec lets
    them prepare: their commitments and signatures make the transcript and the Begin an honest
    coordinator would send, which the fuzzer sends, alters or skips."""

    def __init__(
        self, env: Env, round_id: str, request: node_pb2.PrepareRequest, prepared: Any
    ) -> None:
        self.env = env
        self.round_id = round_id
        self.request = request
        self.names = list(node_pb2.RoundSpec.FromString(request.signed_spec.spec).participants)
        self.puppets: dict[str, OwningPuppet] = {}
        self.transcript: v2.Transcript | None = None
        self.signatures: dict[str, bytes] = {}
        self.certificates = node_certificates(
            env.pki, sorted(set(filter(is_valid_name, self.names)))
        )
        if prepared is None or len(set(self.names)) != len(self.names):
            return
        if not all(is_valid_name(n) for n in self.names):
            return
        try:
            signed, core_spec = serde.prepare_from_proto(request)
            coordinator = CommitteeCoordinator(RoundTerms.of(core_spec, signed.digest))
            commitment = serde_v2.commitment_from_proto(prepared.commitment)
            transcript = coordinator.on_prepared(Prepared("alpha", prepared.size, commitment))
            for name in self.names:
                if name == "alpha":
                    continue
                values = [f"{name}{i}.example" for i in range(3)]
                p = self.puppets[name] = puppet(env, name, values)
                reply = p.Prepare(request)
                c = serde_v2.commitment_from_proto(reply.commitment)
                transcript = coordinator.on_prepared(Prepared(name, reply.size, c))
        except ValueError:  # the core's refusals (ProtocolError) and bad values alike
            self.puppets = {}
            return
        assert transcript is not None
        self.transcript = serde_v2.transcript_to_proto(transcript)

    def sign(self, honest: bool) -> tuple[Any, str]:
        shown = v2.Transcript(purpose="round", ident=self.round_id)
        if self.transcript is not None:
            shown.CopyFrom(self.transcript)
            if not honest:
                shown.sizes["alpha"] += 1
        request = v2.TranscriptRequest(
            round_id=self.round_id, transcript=shown, certificates=self.certificates
        )
        replies: list[Any] = []
        got = status(lambda: replies.append(self.env.alpha.SignTranscript(request, timeout=T)))
        if replies and honest and self.transcript is not None:
            self.signatures["alpha"] = replies[0].signature
            for name, p in self.puppets.items():
                if name not in self.signatures:
                    self.signatures[name] = p.SignTranscript(request).signature
        return got

    def begin(self, honest: bool) -> tuple[Any, str]:
        signatures = self.signatures if honest else {n: b"\x01" * 64 for n in self.names}
        request = v2.BeginRequest(round_id=self.round_id, signatures=signatures)
        got = status(lambda: self.env.alpha.Begin(request, timeout=FUZZ_DEADLINE))
        if got[0] == Code.OK:
            for p in self.puppets.values():
                if p.machine.owner is None:
                    p.Begin(request)
        return got

    def evaluate(self, request: tuple[Any, ...]) -> tuple[Any, str]:
        ready = [p for p in self.puppets.values() if p.machine.transcript is not None]
        if request[0] == "signed" and ready:
            _, seq, points, count = request
            sent = [ready[0].request(seq, points, count=count)]
        else:
            _, requester, seq, count, points, signature, kind = (
                request if request[0] == "raw" else ("raw", "zulu", 0, 1, GOOD, b"", "set")
            )
            sent = [
                v2.SignedRequest(
                    request=v2.EvaluationRequest(
                        purpose="round",
                        ident=self.round_id,
                        requester=requester,
                        seq=seq,
                        count=count,
                        elements=elements_digest(points),
                        kind=kind,
                    ),
                    points=points,
                    signature=signature,
                )
            ]
        return status(lambda: list(self.env.alpha.Evaluate(iter(sent), timeout=FUZZ_DEADLINE)))

    def own(self, answers: list[v2.SignedAnswer]) -> tuple[Any, str]:
        messages = [v2.OwnIn(start=v2.OwnStart(round_id=self.round_id))]
        messages += [v2.OwnIn(answer=a) for a in answers]
        return status(lambda: list(self.env.alpha.Own(iter(messages), timeout=FUZZ_DEADLINE)))

    def reveal(self, roots: list[v2.SignedRoot]) -> tuple[Any, str]:
        request = v2.RevealRequest(round_id=self.round_id, roots=roots)
        return status(lambda: self.env.alpha.Reveal(request, timeout=FUZZ_DEADLINE))

    def deliver(self, fields: dict[str, Any]) -> tuple[Any, str]:
        request = v2.DeliverRequest(round_id=self.round_id, **fields)
        return status(lambda: self.env.alpha.Deliver(request, timeout=FUZZ_DEADLINE))

    def abort(self) -> tuple[Any, str]:
        request = node_pb2.AbortRequest(round_id=self.round_id)
        return status(lambda: self.env.alpha.Abort(request, timeout=FUZZ_DEADLINE))


@pytest.mark.slow  # hundreds of random messages against a real node
def test_random_messages_to_the_node_get_proper_statuses_and_leave_no_share(
    env: Env, members: list[Member]
) -> None:
    before = contents(env.fed.stores["alpha"])["sightings"]
    counter = itertools.count()
    stub = env.alpha
    seen: dict[str, set[Any]] = {}

    def check(got: tuple[Any, str], what: str) -> None:
        assert_proper(got, what, seen.setdefault(what, set()))

    @settings(
        max_examples=100,
        deadline=None,
        derandomize=True,  # the same examples every run, so the coverage checks below are stable
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(
        valid_id=st.integers(0, 3).map(bool),
        odd_id=st.text(max_size=70),
        round_spec=round_specs(),
        timeout=st.one_of(st.just(0.0), st.floats()),
        honest=st.integers(0, len(HONEST)),
        actions=ACTIONS,
    )
    def fuzz(
        valid_id: bool,
        odd_id: str,
        round_spec: node_pb2.RoundSpec,
        timeout: float,
        honest: int,
        actions: list[tuple[Any, ...]],
    ) -> None:
        drawn = len(members)
        round_id = f"fuzz-{next(counter)}-{uuid.uuid4().hex[:8]}" if valid_id else odd_id
        round_spec.round_id = round_id
        request = prepare_request(round_spec, timeout)
        replies: list[Any] = []
        got = status(lambda: replies.append(stub.Prepare(request, timeout=FUZZ_DEADLINE)))
        check(got, "Prepare")
        r = FuzzedRound(env, round_id, request, replies[0] if replies else None)
        for action in [*HONEST[:honest], *actions]:
            name, *args = action
            check(getattr(r, name)(*args), name)
        check(r.abort(), "Abort")
        assert round_id not in env.fed.nodes["alpha"].rounds.active()
        assert_destroyed(shares(members[drawn:], *r.puppets.values()))

    fuzz()
    # the fuzzer got rounds prepared, and its messages both through and past every check
    assert {Code.OK, Code.INVALID_ARGUMENT} <= seen["Prepare"]
    assert Code.OK in seen["sign"] and Code.OK in seen["begin"] and Code.OK in seen["evaluate"]
    everything = set().union(*seen.values())
    assert {
        Code.OK,
        Code.INVALID_ARGUMENT,
        Code.NOT_FOUND,
        Code.FAILED_PRECONDITION,
        Code.PERMISSION_DENIED,
    } <= everything
    assert_serving(env.channels["alpha"])
    assert env.fed.nodes["alpha"].rounds.active() == []
    assert contents(env.fed.stores["alpha"])["sightings"] == before
    conn = sqlite3.connect(env.fed.stores["alpha"])
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    finally:
        conn.close()
    info = env.fed.run_round(["alpha", "bravo"], timeout=30)
    assert info.state == "done", info.error


def test_random_round_requests_to_the_coordinator_get_proper_statuses(env: Env) -> None:
    stub = env.fed.stub
    started: set[Any] = set()

    @settings(max_examples=30, deadline=None, derandomize=True)
    @given(
        nodes=st.lists(
            st.sampled_from(["alpha", "bravo", "charlie", "delta", "zulu", ""]),
            max_size=4,
            unique=True,
        ),
        mode=st.sampled_from(["", "pairwise", "threshold", "count", "tally"]),
        threshold=st.one_of(st.just(0), st.integers(0, 4), st.integers(0, 2**32 - 1)),
        kinds=st.one_of(st.just([]), st.lists(st.sampled_from([*KINDS, "phone", ""]), max_size=3)),
        round_id=st.text(max_size=40),
        limit=st.integers(0, 2**32 - 1),
    )
    def fuzz(
        nodes: list[str], mode: str, threshold: int, kinds: list[str], round_id: str, limit: int
    ) -> None:
        request = start_request(env.pki, nodes, mode, threshold=threshold, kinds=kinds)
        got = status(lambda: stub.StartRound(request, timeout=FUZZ_DEADLINE))
        assert_proper(got, "StartRound", started)
        get = coordinator_pb2.GetRoundRequest(id=round_id)
        assert_proper(status(lambda: stub.GetRound(get, timeout=FUZZ_DEADLINE)), "GetRound")
        assert_proper(
            status(lambda: list(stub.WatchRound(get, timeout=FUZZ_DEADLINE))), "WatchRound"
        )
        listing = coordinator_pb2.ListRoundsRequest(limit=limit)
        assert_proper(status(lambda: stub.ListRounds(listing, timeout=FUZZ_DEADLINE)), "ListRounds")

    fuzz()
    assert {Code.OK, Code.INVALID_ARGUMENT} <= started  # some rounds did start
    assert_serving(env.fed.channel)
    wait_until_rounds_end(env)
    for name, node in env.fed.nodes.items():
        assert node.rounds.active() == [], name
    info = env.fed.run_round(["alpha", "bravo"], timeout=30)
    assert info.state == "done", info.error
