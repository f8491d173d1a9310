"""Hostile and broken input sent straight to a real NodeService and CoordinatorService.

The caller holds the coordinator's own certificate, the one identity a node serves, so every
refusal here comes from the servicer and the core's validation, not from the access policy. After
each refusal the node must be as it was: its store unchanged except the audit log, no round left
behind, the refused round's key destroyed, and a normal round through the coordinator succeeding.
"""

from __future__ import annotations

import itertools
import sqlite3
import uuid
from collections.abc import Callable, Iterator
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
from blindmatch.core.group import RoundKey, hash_to_group
from blindmatch.core.round_coordinator import Caps
from blindmatch.core.spec import Policy
from blindmatch.runtime import net, serde
from blindmatch.v1 import coordinator_pb2, coordinator_pb2_grpc, node_pb2, node_pb2_grpc
from coordinator.config import CoordinatorConfig
from coordinator.service import start as start_coordinator
from node.store import RoundAudit
from tests.federation import (
    Federation,
    Setup,
    domains,
    held,
    node_certificates,
    signed_chunk,
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
PARTNER_CAP = 30  # delta re-blinds at most 30 elements of any partner ...
ROUND_CAP = 45  # ... and at most 45 elements in a round, its own included
POLICIES = {
    "charlie": Policy(max_own_set=OWN_CAP),
    "delta": Policy(
        partners=frozenset({"alpha"}), max_partner_set=PARTNER_CAP, max_round_elements=ROUND_CAP
    ),
}

P = 2**255 - 19
# The u-coordinates of Curve25519's points of order 8 (with 0, 1 and p - 1 the low-order points).
ORDER_8 = (
    325606250916557431795983626356110631294008115727848805560023387167927233504,
    39382357235489614581723060781553021112529911719440698176882885853963445705823,
)
GOOD = hash_to_group("domain", "zulu.example")  # a valid element: a partner's hashed indicator


def u(n: int) -> bytes:
    return n.to_bytes(32, "little")


@dataclass
class Env:
    fed: Federation
    stubs: dict[str, node_pb2_grpc.NodeServiceStub]  # straight to each node, as the coordinator
    channels: dict[str, grpc.Channel]
    pki: FederationPki

    @property
    def alpha(self) -> node_pb2_grpc.NodeServiceStub:
        return self.stubs["alpha"]


STUBS: dict[str, node_pb2_grpc.NodeServiceStub] = {}


@pytest.fixture(scope="module")
def federation_setup() -> Setup:
    return Setup(list(DOMAINS), held(domains(DOMAINS)), policies=POLICIES)


@pytest.fixture(scope="module")
def env(fed: Federation, pki: FederationPki) -> Iterator[Env]:
    channels = {name: fed.as_coordinator(name) for name in DOMAINS}
    try:
        stubs = {name: node_pb2_grpc.NodeServiceStub(ch) for name, ch in channels.items()}
        STUBS.clear()
        STUBS.update(stubs)
        PKI[:] = [pki]
        yield Env(fed, stubs, channels, pki)
    finally:
        for channel in channels.values():
            channel.close()


@pytest.fixture
def keys(monkeypatch: pytest.MonkeyPatch) -> list[RoundKey]:
    """Every round key drawn while the test runs: the real keys, recorded on their way out."""
    drawn: list[RoundKey] = []
    generate = RoundKey.generate

    def recording(cls: type[RoundKey]) -> RoundKey:
        key = generate()
        drawn.append(key)
        return key

    monkeypatch.setattr(RoundKey, "generate", classmethod(recording))
    return drawn


# --- helpers ----------------------------------------------------------------------------------


def new_id() -> str:
    return uuid.uuid4().hex


def spec(
    round_id: str,
    participants: tuple[str, ...] = ("alpha", "zulu"),
    mode: str = "pairwise",
    threshold: int = 0,
    chunk_size: int = 16,
) -> node_pb2.RoundSpec:
    return node_pb2.RoundSpec(
        round_id=round_id,
        participants=participants,
        mode=mode,
        threshold=threshold,
        kinds=["domain"],
        chunk_size=chunk_size,
    )


# The hostile input here is everything but the signatures: the test operator signs every spec and
# each chunk is signed by the node that must have produced it (tests/test_adversary.py forges them).
SIGNED: dict[str, node_pb2.SignedSpec] = {}  # round id -> its spec as the operator signed it
PKI: list[FederationPki] = []


def prepare_request(
    round_spec: node_pb2.RoundSpec, timeout: float = 0.0
) -> node_pb2.PrepareRequest:
    signed = signed_spec(round_spec, pki=PKI[0])
    SIGNED[round_spec.round_id] = signed
    return node_pb2.PrepareRequest(signed_spec=signed, timeout_seconds=timeout)


def prepare(stub: node_pb2_grpc.NodeServiceStub, round_id: str, **kw: Any) -> int:
    reply = stub.Prepare(prepare_request(spec(round_id, **kw)), timeout=T)
    size: int = reply.size
    return size


def participants(round_id: str) -> list[str]:
    signed = SIGNED.get(round_id)
    return [] if signed is None else list(node_pb2.RoundSpec.FromString(signed.spec).participants)


def start(round_id: str, sizes: dict[str, int]) -> node_pb2.ReblindRequest:
    """RoutingStart with every participant's real certificate, as an honest coordinator sends."""
    names = [n for n in participants(round_id) if is_valid_name(n)]
    return serde.routing_start_to_proto(round_id, sizes, node_certificates(PKI[0], names))


def chunk(owner: str, seq: int, elements: bytes) -> node_pb2.ReblindRequest:
    """A chunk, signed by ``signed_by`` once the stream it goes on is known."""
    return node_pb2.ReblindRequest(chunk=node_pb2.Chunk(owner=owner, seq=seq, elements=elements))


def signed_by_producers(
    receiver: str, messages: tuple[node_pb2.ReblindRequest, ...] | list[node_pb2.ReblindRequest]
) -> list[node_pb2.ReblindRequest]:
    """``messages`` to ``receiver`` with each chunk of a participant's set signed by the node
    that must have produced it for ``receiver`` (the previous one of the ring)."""
    round_id = next((m.start.round_id for m in messages if m.WhichOneof("body") == "start"), "")
    names = participants(round_id)
    out = []
    for m in messages:
        c = m.chunk
        if (
            m.WhichOneof("body") == "chunk"
            and not c.signature
            and c.owner != receiver  # its own set: refused before any signature matters
            and {c.owner, receiver} <= set(names)
        ):
            r, o = names.index(receiver), names.index(c.owner)
            producer = names[(r - 1) % len(names)]
            hop = (r - o) % len(names) - 1
            by = signer(PKI[0], producer, "node")
            signed = signed_chunk(by, SIGNED[round_id], c.owner, hop, c.seq, c.elements)
            m = node_pb2.ReblindRequest(chunk=signed)
        out.append(m)
    return out


def reblind(stub: node_pb2_grpc.NodeServiceStub, *messages: node_pb2.ReblindRequest) -> list[bytes]:
    receiver = next(name for name, s in STUBS.items() if s is stub)
    signed = signed_by_producers(receiver, messages)
    return [c.elements for c in stub.Reblind(iter(signed), timeout=T)]


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


def routing(env: Env, round_id: str, zulu: int = 0) -> int:
    """Prepare a round of alpha with an invented partner and start its routing; alpha's size."""
    size = prepare(env.alpha, round_id)
    assert reblind(env.alpha, start(round_id, {"alpha": size, "zulu": zulu})) == []
    return size


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


# --- the direct driver works (so the refusals below are about the input) -----------------------


def test_a_round_driven_by_hand_completes(env: Env, keys: list[RoundKey]) -> None:
    round_id = new_id()
    size = prepare(env.alpha, round_id)
    assert size == len(DOMAINS["alpha"])
    key = keys[-1]
    own = b"".join(c.elements for c in env.alpha.OwnSet(node_pb2.RoundRef(round_id=round_id)))
    assert len(own) == 32 * size
    out = reblind(
        env.alpha, start(round_id, {"alpha": size, "zulu": 2}), chunk("zulu", 0, GOOD * 2)
    )
    assert out == [b"".join(key.blind([GOOD, GOOD]))]
    reply = env.alpha.Deliver(
        node_pb2.DeliverRequest(
            round_id=round_id,
            pairwise=node_pb2.PairwiseDelivery(
                positions=[0], partners=[node_pb2.PartnerList(partners=[1])]
            ),
        ),
        timeout=T,
    )
    assert reply.recorded == 1
    assert key.destroyed
    entry = audit(env, "alpha", round_id)
    assert entry is not None
    assert (entry.outcome, entry.blinded_for) == ("done", {"zulu": 2})
    with env.fed.store("alpha") as store:
        assert [m.partners for m in store.matches(round_id)] == [["zulu"]]


# --- unknown rounds ---------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["OwnSet", "Reblind", "Deliver"])
def test_an_unknown_round_is_not_found(env: Env, method: str) -> None:
    before = snapshot(env)
    round_id = new_id()
    calls: dict[str, Callable[[], object]] = {
        "OwnSet": lambda: list(env.alpha.OwnSet(node_pb2.RoundRef(round_id=round_id), timeout=T)),
        "Reblind": lambda: reblind(env.alpha, start(round_id, {"alpha": 60, "zulu": 1})),
        "Deliver": lambda: env.alpha.Deliver(
            node_pb2.DeliverRequest(round_id=round_id, count=node_pb2.CountDelivery()), timeout=T
        ),
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


def test_deliver_before_routing_is_failed_precondition(env: Env, keys: list[RoundKey]) -> None:
    before = snapshot(env)
    round_id = new_id()
    prepare(env.alpha, round_id)
    details = refused(
        Code.FAILED_PRECONDITION,
        lambda: env.alpha.Deliver(
            node_pb2.DeliverRequest(round_id=round_id, count=node_pb2.CountDelivery()), timeout=T
        ),
    )
    assert "is prepared; this message needs routing" in details
    # a message out of turn changes nothing: the round waits, with its key, until aborted
    assert env.fed.nodes["alpha"].rounds.active() == [round_id]
    assert not keys[-1].destroyed
    assert env.alpha.Abort(node_pb2.AbortRequest(round_id=round_id, reason="test"), timeout=T).known
    assert keys[-1].destroyed
    entry = audit(env, "alpha", round_id)
    assert entry is not None and (entry.outcome, entry.reason) == ("aborted", "test")
    assert_consistent(env, before)


def test_routing_start_twice_is_failed_precondition(env: Env, keys: list[RoundKey]) -> None:
    before = snapshot(env)
    round_id = new_id()
    size = routing(env, round_id)
    details = refused(
        Code.FAILED_PRECONDITION, lambda: reblind(env.alpha, start(round_id, {"alpha": size}))
    )
    assert "is routing; this message needs prepared" in details
    assert not keys[-1].destroyed
    env.alpha.Abort(node_pb2.AbortRequest(round_id=round_id), timeout=T)
    assert keys[-1].destroyed
    assert_consistent(env, before)


def test_prepare_twice_is_already_exists(env: Env, keys: list[RoundKey]) -> None:
    before = snapshot(env)
    round_id = new_id()
    prepare(env.alpha, round_id)
    details = refused(Code.ALREADY_EXISTS, lambda: prepare(env.alpha, round_id))
    assert f"round {round_id} is already prepared" in details
    assert len(keys) == 1 and not keys[0].destroyed  # the first preparation stands
    env.alpha.Abort(node_pb2.AbortRequest(round_id=round_id), timeout=T)
    assert_consistent(env, before)


@pytest.mark.parametrize("ending", ["aborted", "refused"])
def test_a_round_id_the_audit_knows_cannot_be_prepared_again(
    env: Env, keys: list[RoundKey], ending: str
) -> None:
    """A replayed round id must not overwrite the audit record of the round that used it."""
    round_id = new_id()
    if ending == "aborted":
        prepare(env.stubs["delta"], round_id, participants=("delta", "alpha"))
        env.stubs["delta"].Abort(node_pb2.AbortRequest(round_id=round_id, reason="r"), timeout=T)
    else:
        refused(
            Code.PERMISSION_DENIED,
            lambda: prepare(env.stubs["delta"], round_id, participants=("delta", "bravo")),
        )
    first = audit(env, "delta", round_id)
    assert first is not None and first.outcome == ending
    drawn = len(keys)
    details = refused(
        Code.ALREADY_EXISTS,
        lambda: prepare(env.stubs["delta"], round_id, participants=("delta", "alpha")),
    )
    assert f"round {round_id} is already in this node's audit log" in details
    assert audit(env, "delta", round_id) == first
    assert len(keys) == drawn
    assert env.fed.nodes["delta"].rounds.active() == []


def test_a_reblind_stream_must_open_with_routing_start(env: Env, keys: list[RoundKey]) -> None:
    """A chunk names no round, so before RoutingStart it belongs to nothing: the stream is
    malformed (INVALID_ARGUMENT) and no round is touched."""
    before = snapshot(env)
    round_id = new_id()
    prepare(env.alpha, round_id)
    details = refused(Code.INVALID_ARGUMENT, lambda: reblind(env.alpha, chunk("zulu", 0, GOOD)))
    assert "Reblind must open with RoutingStart" in details
    assert refused(Code.INVALID_ARGUMENT, lambda: reblind(env.alpha))  # an empty stream too
    assert not keys[-1].destroyed
    env.alpha.Abort(node_pb2.AbortRequest(round_id=round_id), timeout=T)
    assert_consistent(env, before)


def test_routing_start_twice_in_one_stream_drops_the_round(env: Env, keys: list[RoundKey]) -> None:
    before = snapshot(env)
    round_id = new_id()
    size = prepare(env.alpha, round_id)
    sizes = {"alpha": size, "zulu": 1}
    details = refused(
        Code.INVALID_ARGUMENT,
        lambda: reblind(env.alpha, start(round_id, sizes), start(round_id, sizes)),
    )
    assert "RoutingStart sent twice" in details
    assert keys[-1].destroyed
    entry = audit(env, "alpha", round_id)
    assert entry is not None and entry.outcome == "failed"
    assert_consistent(env, before)


# --- malformed elements and chunks --------------------------------------------------------------

TOP_BIT = GOOD[:31] + bytes([GOOD[31] | 0x80])


@pytest.mark.parametrize(
    ("elements", "message"),
    [
        (GOOD[:31], "chunk 0 of zulu's set is not whole 32-byte elements"),
        (GOOD + GOOD[:1], "chunk 0 of zulu's set is not whole 32-byte elements"),
        (GOOD + u(0), "element 1: low-order point"),
        (GOOD + u(1), "element 1: low-order point"),
        (GOOD + u(ORDER_8[0]), "element 1: low-order point"),
        (GOOD + u(ORDER_8[1]), "element 1: low-order point"),
        (GOOD + u(P - 1), "element 1: low-order point"),
        (GOOD + u(P), "element 1: element is not a canonical u-coordinate"),
        (GOOD + u(P + 1), "element 1: element is not a canonical u-coordinate"),
        (GOOD + TOP_BIT, "element 1: element is not a canonical u-coordinate"),
        (GOOD + b"\xff" * 32, "element 1: element is not a canonical u-coordinate"),
    ],
    ids=[
        "31-bytes",
        "33-bytes",
        "all-zero",
        "u=1",
        "order-8-a",
        "order-8-b",
        "u=p-1",
        "u=p",
        "u=p+1",
        "top-bit-set",
        "all-ones",
    ],
)
def test_a_malformed_element_is_invalid_argument_and_drops_the_round(
    env: Env, keys: list[RoundKey], elements: bytes, message: str
) -> None:
    before = snapshot(env)
    round_id = new_id()
    size = prepare(env.alpha, round_id)
    details = refused(
        Code.INVALID_ARGUMENT,
        lambda: reblind(
            env.alpha, start(round_id, {"alpha": size, "zulu": 2}), chunk("zulu", 0, elements)
        ),
    )
    assert message in details
    assert keys[-1].destroyed
    entry = audit(env, "alpha", round_id)
    assert entry is not None and entry.outcome == "failed"
    assert entry.reason is not None and message in entry.reason
    assert_consistent(env, before)


@pytest.mark.parametrize(
    ("chunks", "message", "blinded"),
    [
        (
            [("zulu", 0, GOOD), ("zulu", 0, GOOD)],
            "duplicate chunk 0 of zulu's set; expected chunk 1",
            1,
        ),
        ([("zulu", 1, GOOD)], "out-of-order chunk 1 of zulu's set; expected chunk 0", 0),
        (
            [("zulu", 0, GOOD * 3)],
            "zulu's set was announced with 2 elements; chunk 0 brings it to 3",
            0,
        ),
        (
            [("zulu", 0, GOOD), ("zulu", 1, GOOD * 2)],
            "zulu's set was announced with 2 elements; chunk 1 brings it to 3",
            1,
        ),
        ([("alpha", 0, GOOD)], "a node never re-blinds its own set", 0),
        ([("yankee", 0, GOOD)], "'yankee' is not a participant", 0),
        ([("zulu", 0, b"")], "empty chunk 0 of zulu's set", 0),
    ],
    ids=[
        "duplicate",
        "out-of-order",
        "more-than-announced",
        "more-later",
        "own-set",
        "stranger",
        "empty",
    ],
)
def test_a_malformed_chunk_sequence_is_invalid_argument_and_drops_the_round(
    env: Env,
    keys: list[RoundKey],
    chunks: list[tuple[str, int, bytes]],
    message: str,
    blinded: int,
) -> None:
    before = snapshot(env)
    round_id = new_id()
    size = prepare(env.alpha, round_id)
    messages = [start(round_id, {"alpha": size, "zulu": 2}), *(chunk(*c) for c in chunks)]
    details = refused(Code.INVALID_ARGUMENT, lambda: reblind(env.alpha, *messages))
    assert message in details
    assert keys[-1].destroyed
    entry = audit(env, "alpha", round_id)
    assert entry is not None and entry.outcome == "failed"
    assert entry.blinded_for == {"zulu": blinded}
    assert_consistent(env, before)


@pytest.mark.parametrize(
    ("sizes", "message"),
    [
        ({"alpha": 60}, "announced sizes must name every participant exactly once"),
        ({"alpha": 60, "zulu": 1, "yankee": 1}, "announced sizes must name every participant"),
        ({"alpha": 59, "zulu": 1}, "announced size 59 for alpha but it has 60"),
    ],
)
def test_a_bad_routing_start_is_invalid_argument_and_drops_the_round(
    env: Env, keys: list[RoundKey], sizes: dict[str, int], message: str
) -> None:
    before = snapshot(env)
    round_id = new_id()
    prepare(env.alpha, round_id)
    assert message in refused(
        Code.INVALID_ARGUMENT, lambda: reblind(env.alpha, start(round_id, sizes))
    )
    assert keys[-1].destroyed
    entry = audit(env, "alpha", round_id)
    assert entry is not None and (entry.outcome, entry.blinded_for) == ("refused", {})
    assert_consistent(env, before)


def pairwise(positions: list[int], partners: list[list[int]]) -> dict[str, Any]:
    return {
        "pairwise": node_pb2.PairwiseDelivery(
            positions=positions, partners=[node_pb2.PartnerList(partners=p) for p in partners]
        )
    }


@pytest.mark.parametrize(
    ("result", "message"),
    [
        (pairwise([60], [[1]]), "position 60 outside this node's set of 60"),
        (pairwise([0], [[0]]), "position 0: invalid partner list"),
        (pairwise([0], [[2]]), "position 0: invalid partner list"),
        (pairwise([0], [[1, 1]]), "position 0: invalid partner list"),
        (pairwise([0], [[]]), "position 0: invalid partner list"),
        (pairwise([0, 0], [[1], [1]]), "a position is delivered twice"),
        (pairwise([0, 1], [[1]]), "one partner list per position"),
        (
            {"threshold": node_pb2.ThresholdDelivery(positions=[0], counts=[2])},
            "delivery does not fit the round's mode (pairwise)",
        ),
        (
            {"count": node_pb2.CountDelivery(shared={"yankee": 1})},
            "'yankee' is not a participant",
        ),
        ({}, "delivery carries no result"),
    ],
    ids=[
        "position-out-of-range",
        "partner-is-self",
        "partner-out-of-range",
        "partner-twice",
        "no-partner",
        "position-twice",
        "lengths-differ",
        "wrong-mode",
        "count-names-a-stranger",
        "empty",
    ],
)
def test_a_malformed_delivery_is_invalid_argument_and_drops_the_round(
    env: Env, keys: list[RoundKey], result: dict[str, Any], message: str
) -> None:
    before = snapshot(env)
    round_id = new_id()
    routing(env, round_id)
    details = refused(
        Code.INVALID_ARGUMENT,
        lambda: env.alpha.Deliver(node_pb2.DeliverRequest(round_id=round_id, **result), timeout=T),
    )
    assert message in details
    assert keys[-1].destroyed
    entry = audit(env, "alpha", round_id)
    assert entry is not None and entry.outcome == "failed"
    assert entry.reason is not None and message in entry.reason
    assert_consistent(env, before)  # nothing of the delivery was recorded


# --- caps and policy, straight to the node --------------------------------------------------------


def test_an_own_set_over_the_cap_is_refused_before_any_key_is_drawn(
    env: Env, keys: list[RoundKey]
) -> None:
    before = snapshot(env)
    round_id = new_id()
    details = refused(
        Code.RESOURCE_EXHAUSTED,
        lambda: prepare(env.stubs["charlie"], round_id, participants=("charlie", "alpha")),
    )
    assert f"own set of 60 indicators exceeds this node's cap of {OWN_CAP}" in details
    assert "max_own_set" in details
    assert keys == []
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
def test_a_partner_set_over_the_caps_is_refused_before_any_blinding(
    env: Env, keys: list[RoundKey], alpha_size: int, message: str
) -> None:
    before = snapshot(env)
    round_id = new_id()
    delta = env.stubs["delta"]
    size = prepare(delta, round_id, participants=("delta", "alpha"))
    assert size == len(DOMAINS["delta"])
    details = refused(
        Code.RESOURCE_EXHAUSTED,
        lambda: reblind(
            delta, start(round_id, {"delta": size, "alpha": alpha_size}), chunk("alpha", 0, GOOD)
        ),
    )
    assert details == message
    assert keys[-1].destroyed
    entry = audit(env, "delta", round_id)
    assert entry is not None
    assert (entry.outcome, entry.reason, entry.blinded_for) == ("refused", message, {})
    assert_consistent(env, before)


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
def test_a_round_the_policy_refuses_draws_no_key(
    env: Env,
    keys: list[RoundKey],
    node: str,
    participants: tuple[str, ...],
    code: grpc.StatusCode,
    message: str,
) -> None:
    before = snapshot(env)
    round_id = new_id()
    details = refused(code, lambda: prepare(env.stubs[node], round_id, participants=participants))
    assert message in details
    assert keys == []
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
            # refused at RoutingStart: told on whichever of delta's streams is heard first
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
    env: Env, keys: list[RoundKey], participants: list[str], refuser: str, message: str
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
    assert all(k.destroyed for k in keys)
    assert_consistent(env, before)


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
    env: Env, keys: list[RoundKey], tmp_path: Path, caps: Caps, message: str
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
    assert len(keys) == 2 and all(k.destroyed for k in keys)
    assert_consistent(env, before)


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

NODE_SERVICE = "/blindmatch.v1.NodeService/"
COORDINATOR_SERVICE = "/blindmatch.v1.CoordinatorService/"
NODE_METHODS = {
    "Prepare": "unary",
    "OwnSet": "server-stream",
    "Reblind": "bidi",
    "Deliver": "unary",
    "Abort": "unary",
}
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
UNPARSABLE = (Code.INTERNAL, "Exception deserializing request!")
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
    assert code in PROPER or status == UNPARSABLE, f"{what}: {code} {details}"
    if seen is not None:
        seen.add(code)


def assert_serving(channel: grpc.Channel) -> None:
    reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=T)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def wait_until_rounds_end(env: Env, timeout: float = 60.0) -> None:
    request = coordinator_pb2.ListRoundsRequest(limit=1000)

    def ended() -> bool:
        rounds = env.fed.stub.ListRounds(request).rounds
        return all(r.state in ("done", "failed") for r in rounds)

    until("rounds started by the fuzzer end", ended, timeout)


def test_random_bytes_to_every_rpc_get_a_proper_status(env: Env) -> None:
    before = snapshot(env)
    methods = [(NODE_SERVICE + m, k, "node") for m, k in NODE_METHODS.items()]
    methods += [(COORDINATOR_SERVICE + m, k, "coordinator") for m, k in COORDINATOR_METHODS.items()]
    coordinator = env.fed.channel
    seen: set[Any] = set()

    @settings(max_examples=60, deadline=None, derandomize=True)
    @given(
        method=st.sampled_from(methods),
        payloads=st.lists(st.binary(max_size=120), min_size=1, max_size=3),
    )
    def fuzz(method: tuple[str, str, str], payloads: list[bytes]) -> None:
        path, kind, service = method
        channel = env.channels["alpha"] if service == "node" else coordinator
        assert_proper(raw_call(channel, path, kind, payloads), path, seen)

    fuzz()
    # bytes that parse reach the handlers: empty messages are refused by the services themselves
    assert {Code.INTERNAL, Code.INVALID_ARGUMENT, Code.NOT_FOUND} <= seen
    assert_serving(env.channels["alpha"])
    assert_serving(coordinator)
    wait_until_rounds_end(env)
    assert_consistent(env, before)


NAMES = st.sampled_from(["alpha", "bravo", "zulu", "yankee", "", "Alpha", "x" * 70])
ELEMENTS = st.one_of(
    st.binary(max_size=100),
    st.integers(1, 3).map(lambda n: GOOD * n),
    st.lists(st.sampled_from([GOOD, u(0), u(1), u(ORDER_8[0]), u(P), TOP_BIT]), max_size=4).map(
        b"".join
    ),
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
            chunk_size=draw(st.sampled_from([1, 7, 16, 4096])),
        )
    return node_pb2.RoundSpec(
        participants=draw(st.lists(NAMES, max_size=4)),
        mode=draw(st.sampled_from(["", "pairwise", "threshold", "count", "tally"])),
        threshold=draw(st.integers(0, 2**32 - 1)),
        kinds=draw(st.lists(st.sampled_from([*KINDS, "phone", ""]), max_size=3)),
        chunk_size=draw(st.sampled_from([0, 1, 65536, 65537, 2**32 - 1])),
    )


SIZES = st.one_of(
    st.none(),  # the true sizes: alpha's own and 3 for every partner
    st.none(),
    st.dictionaries(NAMES, st.integers(0, 2**64 - 1), max_size=4),
)
CHUNKS = st.one_of(
    st.none(),  # a valid chunk of the first partner's set
    st.none(),
    st.lists(st.tuples(NAMES, st.integers(0, 3), ELEMENTS), max_size=3),
)
DELIVERIES = st.one_of(
    st.builds(
        pairwise,
        st.lists(st.integers(0, 70), max_size=4),
        st.lists(st.lists(st.integers(0, 6), max_size=3), max_size=4),
    ),
    st.builds(
        lambda pos, counts: {"threshold": node_pb2.ThresholdDelivery(positions=pos, counts=counts)},
        st.lists(st.integers(0, 70), max_size=4),
        st.lists(st.integers(0, 6), max_size=4),
    ),
    st.builds(
        lambda shared: {"count": node_pb2.CountDelivery(shared=shared)},
        st.dictionaries(NAMES, st.integers(0, 2**64 - 1), max_size=3),
    ),
    st.just({}),
)
ACTIONS = st.lists(
    st.one_of(
        st.tuples(st.just("ownset")),
        st.tuples(st.just("reblind"), SIZES, CHUNKS),
        st.tuples(st.just("deliver"), DELIVERIES),
        st.tuples(st.just("abort")),
    ),
    max_size=5,
)


def status(call: Callable[[], object]) -> tuple[Any, str]:
    """The status a call ends with: OK, or the code and details it was refused with."""
    try:
        call()
    except grpc.RpcError as err:
        e: Any = err
        return e.code(), e.details() or ""
    return Code.OK, ""


@pytest.mark.slow  # hundreds of random messages against a real node
def test_random_messages_to_the_node_get_proper_statuses_and_leave_no_key(
    env: Env, keys: list[RoundKey]
) -> None:
    before = contents(env.fed.stores["alpha"])["sightings"]
    counter = itertools.count()
    stub = env.alpha
    seen: dict[str, set[Any]] = {}

    def act(round_id: str, size: int, participants: list[str], action: tuple[Any, ...]) -> None:
        ref = node_pb2.RoundRef(round_id=round_id)
        if action[0] == "ownset":
            got = status(lambda: list(stub.OwnSet(ref, timeout=FUZZ_DEADLINE)))
        elif action[0] == "reblind":
            sizes = action[1]
            if sizes is None:
                sizes = {name: size if name == "alpha" else 3 for name in participants}
            partners = [name for name in participants if name != "alpha"][:1]
            chunks = [(p, 0, GOOD * 2) for p in partners] if action[2] is None else action[2]
            messages = signed_by_producers(
                "alpha", [start(round_id, sizes), *(chunk(*c) for c in chunks)]
            )
            got = status(lambda: list(stub.Reblind(iter(messages), timeout=FUZZ_DEADLINE)))
        elif action[0] == "deliver":
            deliver = node_pb2.DeliverRequest(round_id=round_id, **action[1])
            got = status(lambda: stub.Deliver(deliver, timeout=FUZZ_DEADLINE))
        else:
            abort = node_pb2.AbortRequest(round_id=round_id)
            got = status(lambda: stub.Abort(abort, timeout=FUZZ_DEADLINE))
        assert_proper(got, action[0], seen.setdefault(action[0], set()))

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
        actions=ACTIONS,
    )
    def fuzz(
        valid_id: bool,
        odd_id: str,
        round_spec: node_pb2.RoundSpec,
        timeout: float,
        actions: list[tuple[Any, ...]],
    ) -> None:
        drawn = len(keys)
        round_id = f"fuzz-{next(counter)}-{uuid.uuid4().hex[:8]}" if valid_id else odd_id
        round_spec.round_id = round_id
        request = prepare_request(round_spec, timeout)
        got = status(lambda: stub.Prepare(request, timeout=FUZZ_DEADLINE))
        assert_proper(got, "Prepare", seen.setdefault("Prepare", set()))
        size = len(DOMAINS["alpha"]) if got[0] == Code.OK else 0
        for action in actions:
            act(round_id, size, list(round_spec.participants), action)
        abort = node_pb2.AbortRequest(round_id=round_id)
        assert_proper(status(lambda: stub.Abort(abort, timeout=FUZZ_DEADLINE)), "Abort")
        assert round_id not in env.fed.nodes["alpha"].rounds.active()
        assert all(k.destroyed for k in keys[drawn:])

    fuzz()
    # the fuzzer got rounds prepared, and its messages both through and past every check
    assert {Code.OK, Code.INVALID_ARGUMENT} <= seen["Prepare"]
    assert {Code.OK, Code.INVALID_ARGUMENT, Code.NOT_FOUND} <= set().union(*seen.values())
    assert Code.OK in seen["reblind"]
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
