"""A malicious coordinator against real nodes (issue 10, requirements 1 and 2).

The attacker holds the coordinator's real certificate, so the nodes serve it, and talks to real
node servers (127.0.0.1, mTLS, the session's test CA) with plain NodeService stubs. It knows
every certificate of the federation (they are public) and may replay any message it has carried,
but holds no node's or operator's key. Every attack must be refused with the right status, leave
a line naming the problem in the victim's audit, and leave the victim holding no key.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import pytest

from blindmatch.core.group import RoundKey, hash_to_group
from blindmatch.core.signing import MAX_SPEC_AGE, Signer
from blindmatch.runtime import serde
from blindmatch.runtime.pki import issue, new_ca
from blindmatch.v1 import coordinator_pb2, node_pb2, node_pb2_grpc
from node.store import RoundAudit
from tests.federation import (
    HOLDINGS,
    NAMES,
    OPERATOR,
    Federation,
    Setup,
    held,
    node_certificates,
    round_spec,
    signed_chunk,
    signed_spec,
    signer,
)
from tests.pkifixtures import FederationPki

T = 10.0
Code = grpc.StatusCode
ROGUE_OPERATOR = "rogue-ops"  # an operator of the federation that alpha's node.toml does not list


@dataclass
class Attacker:
    """The coordinator gone bad: its own key, stubs to every node, the federation's public certs."""

    fed: Federation
    pki: FederationPki
    stubs: dict[str, node_pb2_grpc.NodeServiceStub]
    key: Signer  # the coordinator's own federation key


@pytest.fixture(scope="module")
def federation_setup() -> Setup:
    return Setup(NAMES, held(HOLDINGS, tlp="green"), operators={"alpha": frozenset({OPERATOR})})


@pytest.fixture(scope="module")
def attacker(fed: Federation, pki: FederationPki) -> Iterator[Attacker]:
    channels = {name: fed.as_coordinator(name) for name in NAMES}
    try:
        stubs = {name: node_pb2_grpc.NodeServiceStub(ch) for name, ch in channels.items()}
        yield Attacker(fed, pki, stubs, signer(pki, "coordinator", "coordinator"))
    finally:
        for channel in channels.values():
            channel.close()


# --- helpers ----------------------------------------------------------------------------------


def spec_for(participants: Sequence[str], **kw: Any) -> node_pb2.RoundSpec:
    """A round on domains in chunks of 2, so every set of 7 streams in several chunks."""
    return round_spec(participants, kinds=["domain"], chunk_size=2, **kw)


def prepare(a: Attacker, node: str, signed: node_pb2.SignedSpec) -> int:
    reply = a.stubs[node].Prepare(node_pb2.PrepareRequest(signed_spec=signed), timeout=T)
    size: int = reply.size
    return size


def round_id_of(signed: node_pb2.SignedSpec) -> str:
    return node_pb2.RoundSpec.FromString(signed.spec).round_id


def own_set(a: Attacker, node: str, signed: node_pb2.SignedSpec) -> list[node_pb2.Chunk]:
    """The node's own set as it streams it: real chunks, really signed by that node."""
    ref = node_pb2.RoundRef(round_id=round_id_of(signed))
    return list(a.stubs[node].OwnSet(ref, timeout=T))


def reblind(
    a: Attacker, node: str, messages: Sequence[node_pb2.ReblindRequest]
) -> tuple[list[node_pb2.Chunk], grpc.RpcError | None]:
    """What the node sends back before it ends the stream, and how it ended it."""
    got: list[node_pb2.Chunk] = []
    try:
        for c in a.stubs[node].Reblind(iter(messages), timeout=T):
            got.append(c)
    except grpc.RpcError as err:
        return got, err
    return got, None


def routing_start(
    a: Attacker, signed: node_pb2.SignedSpec, sizes: dict[str, int], **certs: bytes
) -> node_pb2.ReblindRequest:
    """RoutingStart with the participants' real certificates, or the ones given instead (an
    empty one: none at all)."""
    names = node_pb2.RoundSpec.FromString(signed.spec).participants
    real = node_certificates(a.pki, [n for n in names if n not in certs])
    sent = {name: cert for name, cert in {**real, **certs}.items() if cert}
    return serde.routing_start_to_proto(round_id_of(signed), sizes, sent)


def audit(a: Attacker, node: str, round_id: str) -> RoundAudit | None:
    with a.fed.store(node) as store:
        return next((r for r in store.rounds() if r.round_id == round_id), None)


def assert_refused(
    a: Attacker,
    err: grpc.RpcError | None,
    code: grpc.StatusCode,
    problem: str,
    node: str,
    round_id: str,
) -> None:
    """Refused with ``code`` and ``problem``, audited with it, and no key left on ``node``."""
    assert err is not None, "the attack was not refused"
    assert err.code() == code, err.details()
    assert problem in (err.details() or "")
    entry = audit(a, node, round_id)
    assert entry is not None, f"no audit line for round {round_id} on {node}"
    assert entry.outcome in ("refused", "failed"), entry
    assert entry.reason is not None and problem in entry.reason, entry.reason
    assert a.fed.nodes[node].rounds.active() == []


def call_error(call: object) -> grpc.RpcError | None:
    assert callable(call)
    try:
        call()
    except grpc.RpcError as err:
        return err
    return None


def guesses() -> bytes:
    """Hashed guesses at alpha's values, blinded under a key the attacker holds."""
    mine = RoundKey.generate()
    values = [f"alpha{i}.example" for i in range(2)]
    return b"".join(mine.blind([hash_to_group("domain", v) for v in values]))


# --- (a) the coordinator plays a real partner ---------------------------------------------------


@pytest.mark.parametrize("how", ["signed-by-the-coordinator", "unsigned"])
def test_chunks_from_a_real_partner_made_by_the_coordinator_are_refused_before_blinding(
    attacker: Attacker, how: str
) -> None:
    a = attacker
    signed = signed_spec(spec_for(["alpha", "bravo"]), pki=a.pki)
    rid = round_id_of(signed)
    size = prepare(a, "alpha", signed)  # bravo is never asked: the coordinator plays it
    fake = node_pb2.Chunk(owner="bravo", seq=0, elements=guesses(), hop=0)
    if how == "signed-by-the-coordinator":
        fake = signed_chunk(a.key, signed, "bravo", 0, 0, fake.elements)
    got, err = reblind(
        a,
        "alpha",
        [
            routing_start(a, signed, {"alpha": size, "bravo": 2}),
            node_pb2.ReblindRequest(chunk=fake),
        ],
    )
    assert got == []  # nothing blinded came back
    problem = "is not signed by node/bravo" if how != "unsigned" else "carries no valid signature"
    assert_refused(a, err, Code.PERMISSION_DENIED, problem, "alpha", rid)


def test_the_coordinators_certificate_passed_off_as_a_partners_is_refused(
    attacker: Attacker,
) -> None:
    a = attacker
    signed = signed_spec(spec_for(["alpha", "bravo"]), pki=a.pki)
    rid = round_id_of(signed)
    size = prepare(a, "alpha", signed)
    start = routing_start(a, signed, {"alpha": size, "bravo": 2}, bravo=a.key.cert_pem)
    chunk = signed_chunk(a.key, signed, "bravo", 0, 0, guesses())
    got, err = reblind(a, "alpha", [start, node_pb2.ReblindRequest(chunk=chunk)])
    assert got == []
    assert_refused(a, err, Code.PERMISSION_DENIED, "does not have the node role", "alpha", rid)


# --- (b) an invented partner ----------------------------------------------------------------------


@pytest.mark.parametrize("how", ["no-certificate", "certificate-of-another-ca"])
def test_an_invented_partner_is_refused_even_with_partners_any(
    attacker: Attacker, how: str
) -> None:
    a = attacker
    assert a.fed.configs["alpha"].policy.partners is None  # partners = ["*"]
    signed = signed_spec(spec_for(["alpha", "ghost"]), pki=a.pki)
    rid = round_id_of(signed)
    size = prepare(a, "alpha", signed)
    certs = {"ghost": b""}  # no node of the federation is called ghost: no certificate
    problem = "no certificate for participant ghost"
    if how == "certificate-of-another-ca":
        certs["ghost"] = issue(new_ca("the attacker's CA"), "ghost", "node").cert_pem
        problem = "was not issued by the federation CA"
    start = routing_start(a, signed, {"alpha": size, "ghost": 2}, **certs)
    chunk = node_pb2.ReblindRequest(chunk=node_pb2.Chunk(owner="ghost", seq=0, elements=guesses()))
    got, err = reblind(a, "alpha", [start, chunk])
    assert got == []
    assert_refused(a, err, Code.PERMISSION_DENIED, problem, "alpha", rid)


# --- (c) a chunk replayed from another round ----------------------------------------------------


def test_a_chunk_replayed_from_another_round_is_refused(attacker: Attacker) -> None:
    a = attacker
    old = signed_spec(spec_for(["alpha", "bravo"]), pki=a.pki)
    prepare(a, "bravo", old)
    stolen = own_set(a, "bravo", old)[0]  # bravo's real, signed chunk of the old round
    a.stubs["bravo"].Abort(node_pb2.AbortRequest(round_id=round_id_of(old)), timeout=T)
    new = signed_spec(spec_for(["alpha", "bravo"]), pki=a.pki)
    size = prepare(a, "alpha", new)
    got, err = reblind(
        a,
        "alpha",
        [
            routing_start(a, new, {"alpha": size, "bravo": 7}),
            node_pb2.ReblindRequest(chunk=stolen),
        ],
    )
    assert got == []
    assert_refused(
        a, err, Code.PERMISSION_DENIED, "is not signed by node/bravo", "alpha", round_id_of(new)
    )


# --- (d) chunks reordered, or moved to another hop ------------------------------------------------


def test_reordered_chunks_are_refused(attacker: Attacker) -> None:
    a = attacker
    signed = signed_spec(spec_for(["alpha", "bravo"]), pki=a.pki)
    size = prepare(a, "alpha", signed)
    prepare(a, "bravo", signed)
    first, second, *_ = own_set(a, "bravo", signed)
    swapped = node_pb2.Chunk()
    swapped.CopyFrom(second)
    swapped.seq = 0  # chunk 1's elements and signature, presented as chunk 0
    got, err = reblind(
        a,
        "alpha",
        [
            routing_start(a, signed, {"alpha": size, "bravo": 7}),
            node_pb2.ReblindRequest(chunk=swapped),
            node_pb2.ReblindRequest(chunk=first),
        ],
    )
    assert got == []
    rid = round_id_of(signed)
    assert_refused(a, err, Code.PERMISSION_DENIED, "is not signed by node/bravo", "alpha", rid)
    a.stubs["bravo"].Abort(node_pb2.AbortRequest(round_id=rid), timeout=T)


@pytest.mark.parametrize(
    ("relabel", "problem"),
    [
        (None, "is the output of hop 0; this node is hop 2"),
        (1, "is not signed by node/charlie"),
    ],
    ids=["as-labelled", "relabelled"],
)
def test_a_chunk_moved_to_another_hop_is_refused(
    attacker: Attacker, relabel: int | None, problem: str
) -> None:
    """bravo's set goes bravo -> charlie -> alpha: the coordinator hands alpha bravo's own chunk,
    skipping charlie's key, as it is or labelled as charlie's output."""
    a = attacker
    signed = signed_spec(spec_for(["alpha", "bravo", "charlie"]), pki=a.pki)
    size = prepare(a, "alpha", signed)
    prepare(a, "bravo", signed)
    moved = own_set(a, "bravo", signed)[0]
    if relabel is not None:
        moved.hop = relabel
    got, err = reblind(
        a,
        "alpha",
        [
            routing_start(a, signed, {"alpha": size, "bravo": 7, "charlie": 7}),
            node_pb2.ReblindRequest(chunk=moved),
        ],
    )
    assert got == []
    rid = round_id_of(signed)
    assert_refused(a, err, Code.PERMISSION_DENIED, problem, "alpha", rid)
    a.stubs["bravo"].Abort(node_pb2.AbortRequest(round_id=rid), timeout=T)


# --- (e) the spec changed between nodes, or not the operator's ---------------------------------


def test_different_specs_for_different_nodes_do_not_mix(attacker: Attacker) -> None:
    """Both specs are real operator requests with the same round id, one per node: bravo's
    chunks are bound to the spec bravo accepted, so alpha refuses them."""
    a = attacker
    rid = uuid.uuid4().hex
    for_alpha = signed_spec(spec_for(["alpha", "bravo"], round_id=rid), pki=a.pki)
    for_bravo = signed_spec(spec_for(["alpha", "bravo"], round_id=rid, mode="count"), pki=a.pki)
    size = prepare(a, "alpha", for_alpha)
    prepare(a, "bravo", for_bravo)
    chunk = own_set(a, "bravo", for_bravo)[0]
    got, err = reblind(
        a,
        "alpha",
        [
            routing_start(a, for_alpha, {"alpha": size, "bravo": 7}),
            node_pb2.ReblindRequest(chunk=chunk),
        ],
    )
    assert got == []
    assert_refused(a, err, Code.PERMISSION_DENIED, "is not signed by node/bravo", "alpha", rid)
    a.stubs["bravo"].Abort(node_pb2.AbortRequest(round_id=rid), timeout=T)


def _forged(a: Attacker, how: str, spec: node_pb2.RoundSpec) -> tuple[node_pb2.SignedSpec, str]:
    """A spec alpha must not act on, and the problem its refusal names."""
    if how == "altered":  # the operator's signature, over another spec
        signed = signed_spec(spec, pki=a.pki)
        changed = node_pb2.RoundSpec.FromString(signed.spec)
        changed.kinds[:] = ["domain", "ipv4"]
        signed.spec = changed.SerializeToString()
        return signed, f"is not signed by operator/{OPERATOR}"
    if how == "unsigned":
        signed = signed_spec(spec, pki=a.pki)
        signed.signature = b""
        return signed, "carries no valid signature"
    if how == "self-signed":
        rogue = issue(new_ca("the attacker's CA"), OPERATOR, "operator")
        by = Signer(rogue.cert_pem, rogue.key_pem)
        return signed_spec(spec, by=by), "was not issued by the federation CA"
    if how == "node-signed":
        return signed_spec(spec, by=signer(a.pki, "bravo", "node")), "does not have the operator"
    if how == "coordinator-signed":
        return signed_spec(spec, by=a.key), "does not have the operator role"
    assert how == "operator-not-allowed"
    by = signer(a.pki, ROGUE_OPERATOR)
    return signed_spec(spec, by=by), f"operator {ROGUE_OPERATOR} may not start rounds"


@pytest.mark.parametrize(
    "how",
    [
        "altered",
        "unsigned",
        "self-signed",
        "node-signed",
        "coordinator-signed",
        "operator-not-allowed",
    ],
)
def test_a_spec_not_signed_by_an_allowed_operator_is_refused(attacker: Attacker, how: str) -> None:
    a = attacker
    signed, problem = _forged(a, how, spec_for(["alpha", "bravo"]))
    rid = round_id_of(signed)
    err = call_error(lambda: prepare(a, "alpha", signed))
    assert_refused(a, err, Code.PERMISSION_DENIED, problem, "alpha", rid)
    entry = audit(a, "alpha", rid)
    assert entry is not None and entry.operator is None  # nobody vouched for it


def test_the_audit_names_the_operator_who_signed(attacker: Attacker) -> None:
    a = attacker
    signed = signed_spec(spec_for(["alpha", "bravo"]), pki=a.pki)
    rid = round_id_of(signed)
    prepare(a, "alpha", signed)
    assert a.stubs["alpha"].Abort(node_pb2.AbortRequest(round_id=rid), timeout=T).known
    entry = audit(a, "alpha", rid)
    assert entry is not None and (entry.outcome, entry.operator) == ("aborted", OPERATOR)


# --- (f) stale specs and reused round ids -------------------------------------------------------


@pytest.mark.parametrize(
    ("issued_in", "problem"),
    [(-MAX_SPEC_AGE - 60, "s ago; specs are accepted for"), (3600.0, "s in the future")],
    ids=["stale", "from-the-future"],
)
def test_a_spec_outside_its_time_window_is_refused(
    attacker: Attacker, issued_in: float, problem: str
) -> None:
    a = attacker
    signed = signed_spec(spec_for(["alpha", "bravo"], issued=time.time() + issued_in), pki=a.pki)
    rid = round_id_of(signed)
    err = call_error(lambda: prepare(a, "alpha", signed))
    assert_refused(a, err, Code.PERMISSION_DENIED, problem, "alpha", rid)


def test_a_used_round_id_is_refused_and_its_audit_line_kept(attacker: Attacker) -> None:
    """A replay of a spec the operator really signed: the id's first round keeps its record."""
    a = attacker
    signed = signed_spec(spec_for(["alpha", "bravo"]), pki=a.pki)
    rid = round_id_of(signed)
    prepare(a, "alpha", signed)
    a.stubs["alpha"].Abort(node_pb2.AbortRequest(round_id=rid, reason="first run"), timeout=T)
    err = call_error(lambda: prepare(a, "alpha", signed))
    assert err is not None and err.code() == Code.ALREADY_EXISTS
    assert "round ids are used once" in (err.details() or "")
    entry = audit(a, "alpha", rid)
    assert entry is not None and (entry.outcome, entry.reason) == ("aborted", "first run")
    assert a.fed.nodes["alpha"].rounds.active() == []


# --- the coordinator's own checks of who asks ---------------------------------------------------


def test_the_coordinator_starts_only_the_callers_own_signed_round(attacker: Attacker) -> None:
    a = attacker
    by_another = signed_spec(spec_for(["alpha", "bravo"]), by=signer(a.pki, ROGUE_OPERATOR))
    err = call_error(
        lambda: a.fed.stub.StartRound(
            coordinator_pb2.StartRoundRequest(signed_spec=by_another), timeout=T
        )
    )
    assert err is not None and err.code() == Code.PERMISSION_DENIED
    assert f"signed by operator/{ROGUE_OPERATOR}, but operator/{OPERATOR} sent it" in (
        err.details() or ""
    )


def test_the_coordinator_refuses_a_round_id_it_knows(attacker: Attacker) -> None:
    a = attacker
    signed = signed_spec(spec_for(["bravo", "charlie"]), pki=a.pki)
    request = coordinator_pb2.StartRoundRequest(signed_spec=signed)
    info = a.fed.stub.StartRound(request, timeout=T)
    assert a.fed.wait(info.id, 60).state == "done"
    err = call_error(lambda: a.fed.stub.StartRound(request, timeout=T))
    assert err is not None and err.code() == Code.ALREADY_EXISTS


def test_an_honest_round_still_completes(attacker: Attacker) -> None:
    info = attacker.fed.run_round(list(NAMES), kinds=["domain"])
    assert info.state == "done", info.error
    assert dict(info.match_counts) == {name: 1 for name in NAMES}  # shared.example
