"""A malicious coordinator against real nodes (issue 10, requirements 1 and 2), on protocol v2.

The attacker holds the coordinator's real certificate, so the nodes serve it, and talks to real
node servers (127.0.0.1, mTLS, the session's test CA) with plain NodeService stubs
(tests/byhand.py ``HandRound`` runs the honest steps between its attacks; a bare Prepare where
only the signed spec is at stake). It knows every certificate of the federation (they are
public) and may replay any message it has carried, but holds no node's or operator's key (where a
test says so, a colluding node lends it its own). Every attack must be refused with the right
status, leave a line naming the problem in the victim's audit, and leave the victim holding no
key; nothing is evaluated for, or charged to, a partner that did not sign for it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
import pytest

from blindmatch.core.committee import PURPOSE, Prepared, SignedRequest, request_statement
from blindmatch.core.delivery import SignedRoot, match
from blindmatch.core.evaluation import EvaluationRequest, Transcript, commit, elements_digest
from blindmatch.core.merkle import root as merkle_root
from blindmatch.core.oprf import TAG_BYTES, blind, hash_indicator
from blindmatch.core.secp256k1 import POINT_BYTES, points_to_bytes, random_scalar
from blindmatch.core.signing import MAX_SPEC_AGE, Signer
from blindmatch.runtime import serde_v2
from blindmatch.runtime.net import TlsConfig
from blindmatch.runtime.pki import issue, new_ca
from blindmatch.v1 import coordinator_pb2, node_pb2
from blindmatch.v2 import node_pb2 as v2
from blindmatch.v2 import node_pb2_grpc as v2_grpc
from node.store import RoundAudit
from tests.byhand import HandRound, Puppet, v2_stubs
from tests.federation import (
    HOLDINGS,
    NAMES,
    OPERATOR,
    Federation,
    Setup,
    held,
    node_certificates,
    node_matches,
    round_spec,
    signed_spec,
    signer,
)
from tests.pkifixtures import FederationPki

T = 10.0
Code = grpc.StatusCode
ROGUE_OPERATOR = "rogue-ops"  # an operator of the federation that alpha's node.toml does not list
Message = TypeVar("Message", v2.SignedRequest, v2.SignedAnswer)


@dataclass
class Attacker:
    """The coordinator gone bad: its own key, stubs to every node, the federation's public certs."""

    fed: Federation
    pki: FederationPki
    v2: dict[str, v2_grpc.NodeServiceStub]
    key: Signer  # the coordinator's own federation key


@pytest.fixture(scope="module")
def federation_setup() -> Setup:
    return Setup(NAMES, held(HOLDINGS, tlp="green"), operators={"alpha": frozenset({OPERATOR})})


@pytest.fixture(scope="module")
def attacker(fed: Federation, pki: FederationPki) -> Iterator[Attacker]:
    channels = {name: fed.as_coordinator(name) for name in NAMES}
    try:
        key = signer(pki, "coordinator", "coordinator")
        yield Attacker(fed, pki, v2_stubs(channels), key)
    finally:
        for channel in channels.values():
            channel.close()


# --- helpers ----------------------------------------------------------------------------------


def spec_for(participants: Sequence[str], **kw: Any) -> node_pb2.RoundSpec:
    """A round on domains in chunks of 2, so every set of 7 goes out in several requests."""
    return round_spec(participants, kinds=["domain"], chunk_size=2, **kw)


def prepare(a: Attacker, node: str, signed: node_pb2.SignedSpec) -> int:
    reply = a.v2[node].Prepare(node_pb2.PrepareRequest(signed_spec=signed), timeout=T)
    size: int = reply.size
    return size


def round_id_of(signed: node_pb2.SignedSpec) -> str:
    return node_pb2.RoundSpec.FromString(signed.spec).round_id


def hand_round(
    a: Attacker,
    signed: node_pb2.SignedSpec,
    *,
    puppets: Mapping[str, Puppet] | None = None,
    certificates: Mapping[str, bytes] | None = None,
) -> HandRound:
    """The round ``signed`` asks for, driven by hand against the real nodes (and ``puppets``),
    with every participant's real certificate unless ``certificates`` says which."""
    names = node_pb2.RoundSpec.FromString(signed.spec).participants
    if certificates is None:
        certificates = node_certificates(a.pki, names)
    stubs: dict[str, v2_grpc.NodeServiceStub | Puppet] = {**a.v2, **(puppets or {})}
    return HandRound(stubs, node_pb2.PrepareRequest(signed_spec=signed), certificates)


def new_round(a: Attacker, participants: Sequence[str], **kw: Any) -> HandRound:
    return hand_round(a, signed_spec(spec_for(participants, **kw), pki=a.pki))


def begun(r: HandRound) -> HandRound:
    """``r`` as an honest coordinator takes it up to evaluation: every node has begun."""
    r.prepare()
    r.sign()
    r.begin()
    return r


@contextlib.contextmanager
def ending(a: Attacker, *rounds: HandRound) -> Iterator[None]:
    """Abort ``rounds`` on every real node when the block ends, however it ends."""
    try:
        yield
    finally:
        for r in rounds:
            request = node_pb2.AbortRequest(round_id=r.round_id, reason="test over")
            for name in r.participants:
                if name in a.v2:
                    a.v2[name].Abort(request, timeout=T)


def requests_of(r: HandRound, owner: str) -> list[v2.SignedRequest]:
    """``owner``'s real, signed requests for its set, its Own stream then broken off."""
    own = r.open_own(owner)
    try:
        return list(own.read_requests())
    finally:
        own.cancel()


def evaluate(
    a: Attacker, member: str, requests: Sequence[v2.SignedRequest]
) -> tuple[list[v2.SignedAnswer], grpc.RpcError | None]:
    """What ``member`` answers before it ends the stream, and how it ended it."""
    got: list[v2.SignedAnswer] = []
    try:
        for answer in a.v2[member].Evaluate(iter(requests), timeout=T):
            got.append(answer)
    except grpc.RpcError as err:
        return got, err
    return got, None


def copied(message: Message) -> Message:
    """A copy to tamper with, signature and all."""
    out = type(message)()
    out.CopyFrom(message)
    return out


def guesses() -> bytes:
    """Hashed guesses at alpha's values, blinded as an owner blinds: points for a request."""
    blinded, _ = blind([hash_indicator("domain", f"alpha{i}.example") for i in range(2)])
    return points_to_bytes(blinded)


def request_in_the_name_of(
    r: HandRound, requester: str, by: Signer | None, points: bytes
) -> v2.SignedRequest:
    """A request of the round for ``points``, its requester ``requester``, signed by ``by``
    (or not at all)."""
    assert r.transcript is not None
    request = EvaluationRequest(
        PURPOSE,
        r.round_id,
        r.transcript.digest(),
        requester,
        0,
        len(points) // POINT_BYTES,
        elements_digest(points),
    )
    signature = by.sign(request_statement(request)) if by is not None else b""
    return serde_v2.request_to_proto(SignedRequest(request, points, signature))


def assemble(r: HandRound, replies: Mapping[str, v2.PrepareReply]) -> None:
    """The transcript of ``r`` from Prepare replies the test collected itself."""
    for name, reply in replies.items():
        commitment = (
            serde_v2.commitment_from_proto(reply.commitment)
            if reply.HasField("commitment")
            else None
        )
        r.transcript = r.coordinator.on_prepared(Prepared(name, reply.size, commitment))


def audit(a: Attacker, node: str, round_id: str) -> RoundAudit | None:
    with a.fed.store(node) as store:
        return next((r for r in store.rounds() if r.round_id == round_id), None)


def blinded_for(a: Attacker, node: str, round_id: str) -> dict[str, int]:
    """What ``node``'s audit says it evaluated for each partner in the round (a partner it
    evaluated nothing for is left out)."""
    entry = audit(a, node, round_id)
    assert entry is not None, f"no audit line for round {round_id} on {node}"
    return {partner: n for partner, n in entry.blinded_for.items() if n}


def round_budgets(a: Attacker, node: str) -> dict[str, int]:
    """What ``node`` has charged each partner's round budget so far."""
    with a.fed.store(node) as store:
        return {u.partner: u.elements for u in store.budget_use(0.0) if u.what == "round"}


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
    assert problem in (err.details() or ""), err.details()
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


# --- (a) the coordinator plays a real partner ---------------------------------------------------


@pytest.mark.parametrize(
    ("how", "problem"),
    [
        ("signed-by-the-coordinator", "bravo's request is not signed by node/bravo"),
        ("unsigned", "bravo's request carries no valid signature of node/bravo"),
        ("signed-by-another-node", "bravo's request is not signed by node/bravo"),
    ],
    ids=["signed-by-the-coordinator", "unsigned", "signed-by-another-node"],
)
def test_requests_in_a_partners_name_made_by_the_coordinator_are_refused_before_evaluation(
    attacker: Attacker, how: str, problem: str
) -> None:
    """Once every node has begun, the coordinator asks alpha to evaluate its guesses in bravo's
    name: signed with its own key, unsigned, or signed by charlie (a real partner, colluding),
    so that bravo would be charged for them. alpha's share never touches them."""
    a = attacker
    r = new_round(a, NAMES)
    with ending(a, r):
        begun(r)
        budgets = round_budgets(a, "alpha")  # Begin charged each partner's allowance
        by = {
            "signed-by-the-coordinator": a.key,
            "unsigned": None,
            "signed-by-another-node": signer(a.pki, "charlie", "node"),
        }[how]
        got, err = evaluate(a, "alpha", [request_in_the_name_of(r, "bravo", by, guesses())])
        assert got == []  # nothing evaluated came back
        assert_refused(a, err, Code.PERMISSION_DENIED, problem, "alpha", r.round_id)
        assert blinded_for(a, "alpha", r.round_id) == {}  # bravo (or charlie) charged nothing
        assert round_budgets(a, "alpha") == budgets


def test_the_coordinators_certificate_passed_off_as_a_partners_is_refused(
    attacker: Attacker,
) -> None:
    a = attacker
    signed = signed_spec(spec_for(["alpha", "bravo"]), pki=a.pki)
    certificates = {**node_certificates(a.pki, ["alpha"]), "bravo": a.key.cert_pem}
    r = hand_round(a, signed, certificates=certificates)
    with ending(a, r):
        r.prepare()
        err = call_error(lambda: a.v2["alpha"].SignTranscript(r.transcript_request(), timeout=T))
        assert_refused(
            a, err, Code.PERMISSION_DENIED, "does not have the node role", "alpha", r.round_id
        )
        assert blinded_for(a, "alpha", r.round_id) == {}


# --- (b) an invented partner ----------------------------------------------------------------------


@pytest.mark.parametrize("how", ["no-certificate", "certificate-of-another-ca"])
def test_an_invented_partner_is_refused_even_with_partners_any(
    attacker: Attacker, how: str
) -> None:
    """ghost is the coordinator's puppet: it prepares (a share and its proof of the
    coordinator's drawing) with a certificate of the attacker's own CA, sent or not."""
    a = attacker
    assert a.fed.configs["alpha"].policy.partners is None  # partners = ["*"]
    ca = new_ca("the attacker's CA")
    made = issue(ca, "ghost", "node")
    ghost = Puppet(TlsConfig(ca.cert_pem, made.cert_pem, made.key_pem), size=2)
    certificates = node_certificates(a.pki, ["alpha"])  # no node of the federation is ghost
    problem = "no certificate for participant ghost"
    if how == "certificate-of-another-ca":
        certificates["ghost"] = made.cert_pem
        problem = "was not issued by the federation CA"
    signed = signed_spec(spec_for(["alpha", "ghost"]), pki=a.pki)
    r = hand_round(a, signed, puppets={"ghost": ghost}, certificates=certificates)
    with ending(a, r):
        r.prepare()
        err = call_error(lambda: a.v2["alpha"].SignTranscript(r.transcript_request(), timeout=T))
        assert_refused(a, err, Code.PERMISSION_DENIED, problem, "alpha", r.round_id)
        assert blinded_for(a, "alpha", r.round_id) == {}


# --- (c) requests, answers and roots replayed or spliced ---------------------------------------


@pytest.mark.parametrize("how", ["as-captured", "relabelled"])
def test_a_request_replayed_from_another_round_is_refused(attacker: Attacker, how: str) -> None:
    """bravo's real, signed request of an earlier round, sent to alpha in a new one: as it was,
    or relabelled with the new round's id and transcript."""
    a = attacker
    old = new_round(a, ["alpha", "bravo"])
    with ending(a, old):
        stolen = requests_of(begun(old), "bravo")[0]
    new = new_round(a, ["alpha", "bravo"])
    with ending(a, new):
        begun(new)
        if how == "as-captured":
            got, err = evaluate(a, "alpha", [stolen])
            # the old round is over: alpha says how it ended, and answers nothing
            assert got == [] and err is not None and err.code() == Code.FAILED_PRECONDITION, err
            assert f"round {old.round_id} aborted" in (err.details() or "")
            entry = audit(a, "alpha", old.round_id)
            assert entry is not None
            assert entry.outcome == "aborted"
            assert blinded_for(a, "alpha", old.round_id) == {}
            # the replay cost alpha nothing: its new round goes on, to the honest result
            assert a.fed.nodes["alpha"].rounds.active() == [new.round_id]
            for owner in new.participants:
                new.own(owner)
            assert new.deliver(new.match(new.reveal())) == {"alpha": 1, "bravo": 1}
            return
        replayed = copied(stolen)
        assert new.transcript is not None
        replayed.request.ident = new.round_id
        replayed.request.transcript = new.transcript.digest()
        got, err = evaluate(a, "alpha", [replayed])
        assert got == []
        problem = "bravo's request is not signed by node/bravo"
        assert_refused(a, err, Code.PERMISSION_DENIED, problem, "alpha", new.round_id)
        assert blinded_for(a, "alpha", new.round_id) == {}


def test_an_answer_replayed_from_another_round_is_refused(attacker: Attacker) -> None:
    """alpha's real, signed answers to bravo in an earlier round, fed to bravo in a new one."""
    a = attacker
    old = new_round(a, ["alpha", "bravo"])
    with ending(a, old):
        requests = requests_of(begun(old), "bravo")
        stolen, err = evaluate(a, "alpha", requests)
        assert err is None and len(stolen) == len(requests)
    new = new_round(a, ["alpha", "bravo"])
    with ending(a, new):
        own = begun(new).open_own("bravo")
        try:
            own.read_requests()
            err = call_error(lambda: own.answer(stolen))
        finally:
            own.cancel()
        problem = "an answer that names no request waiting for answers"
        assert_refused(a, err, Code.PERMISSION_DENIED, problem, "bravo", new.round_id)


@pytest.mark.parametrize(
    ("how", "code", "problem"),
    [
        ("seq-relabelled", Code.PERMISSION_DENIED, "bravo's request is not signed by node/bravo"),
        (
            "points-swapped",
            Code.INVALID_ARGUMENT,
            "the points do not match the digest the requester signed",
        ),
    ],
    ids=["seq-relabelled", "points-swapped"],
)
def test_reordered_requests_are_refused(
    attacker: Attacker, how: str, code: grpc.StatusCode, problem: str
) -> None:
    """bravo's requests 0 and 1 reordered: request 1 (points and signature) presented as
    request 0, or request 0 as bravo signed it carrying request 1's points."""
    a = attacker
    r = new_round(a, ["alpha", "bravo"])
    with ending(a, r):
        first, second, *_ = requests_of(begun(r), "bravo")
        if how == "seq-relabelled":
            swapped = copied(second)
            swapped.request.seq = 0
        else:
            swapped = copied(first)
            swapped.points = second.points
        got, err = evaluate(a, "alpha", [swapped, first])
        assert got == []
        assert_refused(a, err, code, problem, "alpha", r.round_id)
        assert blinded_for(a, "alpha", r.round_id) == {}


@pytest.mark.parametrize(
    ("how", "code", "problem"),
    [
        (
            "requester-relabelled",
            Code.PERMISSION_DENIED,
            "bravo's request is not signed by node/bravo",
        ),
        (
            "points-spliced",
            Code.INVALID_ARGUMENT,
            "the points do not match the digest the requester signed",
        ),
    ],
    ids=["requester-relabelled", "points-spliced"],
)
def test_a_request_spliced_between_owners_is_refused(
    attacker: Attacker, how: str, code: grpc.StatusCode, problem: str
) -> None:
    """alpha's request re-attributed to bravo, or bravo's signed request carrying alpha's
    points, sent to charlie: bravo would be charged for alpha's set."""
    a = attacker
    r = begun(new_round(a, NAMES))
    with ending(a, r):
        alphas = requests_of(r, "alpha")
        if how == "requester-relabelled":
            spliced = copied(alphas[0])
            spliced.request.requester = "bravo"
        else:
            spliced = copied(requests_of(r, "bravo")[0])
            spliced.points = alphas[0].points
        got, err = evaluate(a, "charlie", [spliced])
        assert got == []
        assert_refused(a, err, code, problem, "charlie", r.round_id)
        assert blinded_for(a, "charlie", r.round_id) == {}


@pytest.mark.parametrize(
    ("relabel", "code", "problem"),
    [
        (False, Code.INVALID_ARGUMENT, "charlie already answered chunk 0"),
        (True, Code.PERMISSION_DENIED, "bravo's answer is not signed by node/bravo"),
    ],
    ids=["as-labelled", "relabelled"],
)
def test_an_answer_moved_to_another_member_is_refused(
    attacker: Attacker, relabel: bool, code: grpc.StatusCode, problem: str
) -> None:
    """alpha's set is evaluated by bravo and charlie: the coordinator hands alpha charlie's
    answers in place of bravo's, skipping bravo's share, as they are or labelled as bravo's."""
    a = attacker
    r = begun(new_round(a, NAMES))
    with ending(a, r):
        own = r.open_own("alpha")
        try:
            requests = own.read_requests()
            theirs, err = evaluate(a, "charlie", requests)
            assert err is None
            moved = [copied(answer) for answer in theirs]
            if relabel:
                for answer in moved:
                    answer.answer.member = "bravo"
            err = call_error(lambda: own.answer(theirs + moved))
        finally:
            own.cancel()
        assert_refused(a, err, code, problem, "alpha", r.round_id)
    assert blinded_for(a, "bravo", r.round_id) == {}  # bravo's share was never asked


@pytest.mark.parametrize("how", ["another-round", "another-owner"])
def test_a_tag_root_of_another_round_or_owner_is_refused_at_reveal(
    attacker: Attacker, how: str
) -> None:
    """At Reveal, bravo's signed root is swapped for bravo's of an earlier round (same size),
    or for charlie's relabelled as bravo's: alpha's tags do not go out."""
    a = attacker
    old = new_round(a, ["alpha", "bravo"])
    with ending(a, old):
        begun(old)
        old_root = serde_v2.root_from_proto(old.own("bravo"))
    r = begun(new_round(a, NAMES))
    with ending(a, r):
        for owner in NAMES:
            r.own(owner)
        if how == "another-round":
            assert old_root.size == r.roots["bravo"].size
            r.roots["bravo"] = old_root
        else:
            r.roots["bravo"] = dataclasses.replace(r.roots["charlie"], owner="bravo")
        request = v2.RevealRequest(round_id=r.round_id, roots=serde_v2.roots_to_proto(r.roots))
        err = call_error(lambda: a.v2["alpha"].Reveal(request, timeout=T))
        problem = "bravo's tag root is not signed by node/bravo"
        assert_refused(a, err, Code.PERMISSION_DENIED, problem, "alpha", r.round_id)


# --- (d) a transcript, or a spec, shown differently to different nodes --------------------------


def nobody_begins_when_bravo_is_shown(a: Attacker, r: HandRound, other: Transcript) -> None:
    """Every node signs; bravo signs ``other``. Each node checks every signature against the
    digest it signed itself, so none begins, none evaluates and no partner is charged."""
    budgets = {node: round_budgets(a, node) for node in NAMES}
    request = v2.BeginRequest(round_id=r.round_id, signatures=r.sign(shown={"bravo": other}))
    for node, culprit in (("alpha", "bravo"), ("bravo", "alpha"), ("charlie", "bravo")):
        err = call_error(functools.partial(a.v2[node].Begin, request, timeout=T))
        problem = f"{culprit}'s signature of the transcript is not signed by node/{culprit}"
        assert_refused(a, err, Code.PERMISSION_DENIED, problem, node, r.round_id)
    for node in NAMES:
        assert blinded_for(a, node, r.round_id) == {}
        assert round_budgets(a, node) == budgets[node]


@pytest.mark.parametrize("shown", ["sizes", "commitments"])
def test_a_transcript_shown_differently_to_different_parties_fails_at_begin(
    attacker: Attacker, shown: str
) -> None:
    """bravo is shown alpha's set as far larger (it would answer alpha that many guesses), or
    charlie's commitment swapped for one of the coordinator's making (its proof holds): bravo
    signs another digest than alpha and charlie, so no node begins and none evaluates."""
    a = attacker
    r = new_round(a, NAMES)
    with ending(a, r):
        r.prepare()
        t = r.transcript
        assert t is not None
        if shown == "sizes":
            other = dataclasses.replace(t, sizes={**t.sizes, "alpha": t.sizes["alpha"] + 10_000})
        else:
            forged = commit(random_scalar(), PURPOSE, r.round_id, "charlie")
            commitments = tuple(forged if c.member == "charlie" else c for c in t.commitments)
            other = dataclasses.replace(t, commitments=commitments)
        nobody_begins_when_bravo_is_shown(a, r, other)


def test_check_caps_shown_differently_stop_a_watch_round_before_any_evaluation(
    attacker: Attacker,
) -> None:
    """A watch round: bravo is shown alpha letting charlie check a hundred times more (charlie
    could then ask bravo for that many evaluations); alpha, shown its own caps changed, refuses
    to sign. No node begins, none evaluates, no budget is charged."""
    a = attacker
    r = new_round(a, NAMES, epoch_seconds=3600)
    with ending(a, r):
        r.prepare()
        t = r.transcript
        assert t is not None and t.purpose == "epoch" and ("alpha", "charlie") in t.caps
        other = dataclasses.replace(
            t, caps={**t.caps, ("alpha", "charlie"): 100 * t.caps["alpha", "charlie"]}
        )
        nobody_begins_when_bravo_is_shown(a, r, other)
    r = new_round(a, NAMES, epoch_seconds=3600)
    with ending(a, r):
        r.prepare()
        assert r.transcript is not None
        t = r.transcript
        other = dataclasses.replace(t, caps={**t.caps, ("alpha", "charlie"): 0})
        err = call_error(
            functools.partial(a.v2["alpha"].SignTranscript, r.transcript_request(other), timeout=T)
        )
        problem = "the transcript gives alpha check caps it did not announce"
        assert_refused(a, err, Code.PERMISSION_DENIED, problem, "alpha", r.round_id)


@pytest.mark.parametrize(
    ("shown", "victim", "problem"),
    [
        (
            "one-transcript",
            "bravo",
            "the transcript names another spec than the one this node signed",
        ),
        (
            "a-transcript-each",
            "alpha",
            "bravo's signature of the transcript is not signed by node/bravo",
        ),
    ],
    ids=["one-transcript", "a-transcript-each"],
)
def test_different_specs_for_different_nodes_do_not_mix(
    attacker: Attacker, shown: str, victim: str, problem: str
) -> None:
    """Both specs are real operator requests with the same round id, one per node: the
    transcript binds the spec each node accepted, so bravo refuses alpha's, and a signature
    over bravo's is no signature over alpha's."""
    a = attacker
    rid = uuid.uuid4().hex
    for_alpha = new_round(a, ["alpha", "bravo"], round_id=rid)
    for_bravo = new_round(a, ["alpha", "bravo"], round_id=rid, mode="count")
    with ending(a, for_alpha):
        replies = {
            "alpha": a.v2["alpha"].Prepare(for_alpha.prepare_request, timeout=T),
            "bravo": a.v2["bravo"].Prepare(for_bravo.prepare_request, timeout=T),
        }
        assemble(for_alpha, replies)
        assemble(for_bravo, replies)
        if shown == "one-transcript":
            request = for_alpha.transcript_request()
            err = call_error(lambda: a.v2["bravo"].SignTranscript(request, timeout=T))
        else:
            signatures = {
                "alpha": a.v2["alpha"].SignTranscript(for_alpha.transcript_request(), timeout=T),
                "bravo": a.v2["bravo"].SignTranscript(for_bravo.transcript_request(), timeout=T),
            }
            begin = v2.BeginRequest(
                round_id=rid, signatures={n: s.signature for n, s in signatures.items()}
            )
            err = call_error(lambda: a.v2["alpha"].Begin(begin, timeout=T))
        assert_refused(a, err, Code.PERMISSION_DENIED, problem, victim, rid)
        assert blinded_for(a, victim, rid) == {}


# --- (e) a delivery not proved against the roots the holders signed ------------------------------


def leaves(tags: bytes) -> set[bytes]:
    return {tags[i : i + TAG_BYTES] for i in range(0, len(tags), TAG_BYTES)}


@pytest.mark.parametrize(
    ("how", "problem"),
    [
        ("tags-of-another-owner", "is not proved against bravo's signed root"),
        ("a-tag-bravo-does-not-hold", "is not proved against bravo's signed root"),
        ("a-root-not-revealed", "a delivery proved against other roots than those revealed to"),
    ],
    ids=["tags-of-another-owner", "a-tag-bravo-does-not-hold", "a-root-not-revealed"],
)
def test_a_delivery_not_proved_against_the_revealed_roots_is_refused(
    attacker: Attacker, how: str, problem: str
) -> None:
    """Every node has committed and revealed; the coordinator delivers alpha matches proved
    from charlie's tags passed off as bravo's, from bravo's tags with one of alpha's own in
    place of one of bravo's (a match bravo never committed to), or against a root of its own
    making over those, put in bravo's place (with bravo's signature). Nothing is recorded."""
    a = attacker
    r = begun(new_round(a, NAMES))
    with ending(a, r):
        for owner in NAMES:
            r.own(owner)
        tags = {name: serde_v2.tags_from_proto(t).tags for name, t in r.reveal().items()}
        roots = dict(r.roots)
        claimed = dict(tags)
        if how == "tags-of-another-owner":
            claimed["bravo"] = tags["charlie"]
        else:
            # as many tags as bravo signed for, so every leaf index is in range of its root
            extra = min(leaves(tags["alpha"]) - leaves(tags["bravo"]))
            dropped = min(leaves(tags["bravo"]) - leaves(tags["alpha"]))
            claimed["bravo"] = b"".join(sorted(leaves(tags["bravo"]) - {dropped} | {extra}))
            if how == "a-root-not-revealed":
                size = len(claimed["bravo"]) // TAG_BYTES
                made = merkle_root(claimed["bravo"])
                roots["bravo"] = SignedRoot("bravo", size, made, roots["bravo"].signature)
        delivery = match(r.round_id, "pairwise", None, False, claimed)["alpha"]
        assert any(p.partner == "bravo" for p in delivery.proofs)
        request = serde_v2.delivery_to_proto(delivery, roots)
        err = call_error(lambda: a.v2["alpha"].Deliver(request, timeout=T))
        assert_refused(a, err, Code.PERMISSION_DENIED, problem, "alpha", r.round_id)
        with a.fed.store("alpha") as store:
            assert node_matches(store, r.round_id) == {}


# --- (f) the spec not the operator's ----------------------------------------------------------


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
    r = new_round(a, ["alpha", "bravo"])
    a.v2["alpha"].Prepare(r.prepare_request, timeout=T)
    abort = node_pb2.AbortRequest(round_id=r.round_id)
    assert a.v2["alpha"].Abort(abort, timeout=T).known
    entry = audit(a, "alpha", r.round_id)
    assert entry is not None and (entry.outcome, entry.operator) == ("aborted", OPERATOR)


# --- (g) stale specs and reused round ids -------------------------------------------------------


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
    r = new_round(a, ["alpha", "bravo"])
    rid = r.round_id
    a.v2["alpha"].Prepare(r.prepare_request, timeout=T)
    a.v2["alpha"].Abort(node_pb2.AbortRequest(round_id=rid, reason="first run"), timeout=T)
    err = call_error(lambda: a.v2["alpha"].Prepare(r.prepare_request, timeout=T))
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
