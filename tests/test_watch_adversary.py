"""Early warning on protocol v2 against a malicious coordinator, colluding nodes and a curious
operator (issues 10 and 17).

Every attack is performed with real certificates against real node and coordinator servers
(tests/federation.py) and shown refused, with its gRPC status and a line in the audit:
- an operator certificate calling a node's Check;
- the ghost check: the coordinator asking a member to evaluate a check in another node's name
  (unsigned, signed by a colluding node, by the coordinator itself, or a check of another
  epoch): refused before anything is charged;
- a check's request replayed (answered again, charged once) or equivocated at its seq by a
  colluding checker (refused, charged nothing);
- sealed messages moved to another holder or re-attributed to another checker, and filters
  swapped or emptied by the coordinator: refused by the node they are shown to;
- a ten-year epoch, or watch disabled: refused by the nodes at Prepare;
- a watch round that fails after some nodes delivered: no share left;
- what a member and the coordinator see of a check: fresh blinded points, never H(v), and the
  same number of same-sized sealed messages whether a holder holds a value or not.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import grpc
import pytest

from blindmatch.core.committee import SignedRequest, request_statement
from blindmatch.core.epoch import SignedSealed, WatchEpoch
from blindmatch.core.evaluation import EvaluationRequest, elements_digest
from blindmatch.core.oprf import blind, hash_indicator
from blindmatch.core.secp256k1 import point_to_bytes, points_from_bytes, points_to_bytes
from blindmatch.core.signing import Signer
from blindmatch.core.watch_sealed import EpochFilter, SignedFilter, sealed_bytes
from blindmatch.runtime import serde_v2
from blindmatch.v2 import watch_pb2, watch_pb2_grpc
from coordinator.watch import WatchHub
from node.rounds import StoreFailed
from node.watch import NodeWatch
from tests.federation import (
    NAMES,
    WATCH_HOLDINGS,
    WATCH_SHARED,
    Federation,
    Setup,
    check,
    held,
    partners_of,
    watching,
)

TEN_YEARS = 10 * 365 * 86400.0


@pytest.fixture(scope="module")
def federation_setup() -> Setup:
    return Setup(NAMES, held(WATCH_HOLDINGS), configure=watching)


def watch_of(fed: Federation, name: str) -> NodeWatch:
    watch = fed.nodes[name].watch
    assert watch is not None
    return watch


def epoch_of(fed: Federation, name: str) -> WatchEpoch:
    epoch = watch_of(fed, name).epoch
    assert epoch is not None
    return epoch


def hub_of(fed: Federation) -> WatchHub:
    assert fed.coordinator is not None and fed.coordinator.watch is not None
    return fed.coordinator.watch


def open_epoch(fed: Federation) -> str:
    info = fed.start_watch(NAMES, epoch=3600)
    assert info.state == "done", info.error
    return info.id


def signer_of(fed: Federation, name: str, role: str = "node") -> Signer:
    paths = fed.pki.files(name, role)
    return Signer(paths.cert.read_bytes(), paths.key.read_bytes())


def as_coordinator(fed: Federation, node: str) -> Any:
    """A NodeWatchService stub holding the coordinator's certificate: the attacker's position."""
    channel = fed.as_coordinator(node)
    return channel, watch_pb2_grpc.NodeWatchServiceStub(channel)


def spy(monkeypatch: pytest.MonkeyPatch, obj: object, method: str) -> list[tuple[Any, ...]]:
    """Wrap a method of a running node's or coordinator's object: every call's arguments and
    result, in order."""
    calls: list[tuple[Any, ...]] = []
    real: Callable[..., Any] = getattr(obj, method)

    def wrapped(*args: Any) -> Any:
        result = real(*args)
        calls.append((*args, result))
        return result

    monkeypatch.setattr(obj, method, wrapped)
    return calls


def check_request(
    epoch: WatchEpoch, requester: str, seq: int, values: list[tuple[str, str]]
) -> tuple[EvaluationRequest, bytes]:
    """A check of ``values`` in ``requester``'s name, as the member holding ``epoch`` expects."""
    blinded, _ = blind([hash_indicator(k, v) for k, v in values])
    points = points_to_bytes(blinded)
    request = EvaluationRequest(
        "epoch",
        epoch.epoch_id,
        epoch.transcript.digest(),
        requester,
        seq,
        len(blinded),
        elements_digest(points),
        proved=True,
        kind="check",
    )
    return request, points


def send(stub: Any, epoch_id: str, signed: SignedRequest) -> Any:
    return stub.EvaluateCheck(
        watch_pb2.CheckRequests(epoch_id=epoch_id, requests=[serde_v2.request_to_proto(signed)]),
        timeout=10,
    )


# --- who may check ------------------------------------------------------------------------------


def test_an_operator_may_not_call_a_nodes_check(fed: Federation) -> None:
    open_epoch(fed)
    with pytest.raises(grpc.RpcError) as err:
        check(fed, "alpha", ["shared.example"], as_name="ops", role="operator")
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with fed.store("alpha") as store:
        assert not store.checks()  # refused at the door: no check was made


# --- the ghost check: a check in another node's name ---------------------------------------------


def test_the_ghost_check_is_refused_and_charges_nobody(fed: Federation) -> None:
    """The coordinator, with charlie, asks bravo to evaluate guesses as alpha's check: unsigned,
    signed by charlie, signed by the coordinator, or alpha's own signature from another epoch.
    bravo verifies alpha's signature under this epoch's transcript and refuses every one."""
    old = open_epoch(fed)
    old_transcript = epoch_of(fed, "bravo").transcript.digest()
    epoch_id = open_epoch(fed)
    bravo = epoch_of(fed, "bravo")
    request, points = check_request(bravo, "alpha", 10_000, [WATCH_SHARED])
    stale = replace(request, ident=old, transcript=old_transcript)
    forged = {
        "unsigned": SignedRequest(request, points, b""),
        "signed by a colluding node": SignedRequest(
            request, points, signer_of(fed, "charlie").sign(request_statement(request))
        ),
        "signed by the coordinator": SignedRequest(
            request,
            points,
            signer_of(fed, "coordinator", "coordinator").sign(request_statement(request)),
        ),
        "alpha's, of another epoch": SignedRequest(
            stale, points, signer_of(fed, "alpha").sign(request_statement(stale))
        ),
    }
    channel, stub = as_coordinator(fed, "bravo")
    with channel:
        for what, signed in forged.items():
            with pytest.raises(grpc.RpcError) as err:
                send(stub, epoch_id, signed)
            assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED, what
    assert bravo.charged("alpha") == bravo.charged("charlie") == 0
    with fed.store("bravo") as store:
        refused = [c for c in store.checks() if c.epoch_id == epoch_id]
    assert len(refused) == len(forged)
    assert {(c.checker, c.outcome) for c in refused} == {("alpha", "refused")}
    assert all(c.reason for c in refused)


def test_a_replayed_check_is_charged_once_and_an_equivocated_one_refused(
    fed: Federation, monkeypatch: pytest.MonkeyPatch
) -> None:
    epoch_id = open_epoch(fed)
    bravo = epoch_of(fed, "bravo")
    seen = spy(monkeypatch, bravo, "answer")
    check(fed, "alpha", ["shared.example"])
    (signed, _, answer), *_ = seen
    assert signed.request.requester == "alpha"
    charged = bravo.charged("alpha")
    channel, stub = as_coordinator(fed, "bravo")
    with channel:
        # the coordinator replays it: the same answer again, nothing charged
        (again,) = send(stub, epoch_id, signed).answers
        # the same points (its DLEQ proof is drawn afresh, and proves the same)
        assert serde_v2.answer_from_proto(again).points == answer.points
        assert bravo.charged("alpha") == charged
        # alpha, colluding, signs other guesses at the same seq: two checks for one charge
        request, points = check_request(bravo, "alpha", signed.request.seq, [("ipv4", "10.1.2.3")])
        other = SignedRequest(
            request, points, signer_of(fed, "alpha").sign(request_statement(request))
        )
        with pytest.raises(grpc.RpcError) as err:
            send(stub, epoch_id, other)
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "two different requests" in (err.value.details() or "")
    assert bravo.charged("alpha") == charged
    with fed.store("bravo") as store:
        assert store.checks()[0].outcome == "refused"


# --- sealed messages and filters, as the coordinator relays them ---------------------------------


def test_sealed_messages_moved_or_reattributed_are_refused(
    fed: Federation, monkeypatch: pytest.MonkeyPatch
) -> None:
    """alpha checks a value only bravo holds; the coordinator keeps its sealed messages and
    tries them on other holders and under other names. Nothing opens, nothing is recorded."""
    epoch_id = open_epoch(fed)
    sealed = spy(monkeypatch, hub_of(fed), "seal")
    check(fed, "alpha", ["10.1.2.3"])
    ((_, request, _),) = sealed
    messages = serde_v2.sealed_from_proto(request)
    to_bravo = [m for m in messages if m.alert.holder == "bravo"]
    assert to_bravo
    with fed.store("charlie") as store:
        before = store.alerts()
    relabelled = [replace(m, alert=replace(m.alert, holder="charlie")) for m in to_bravo]
    moved = replace(to_bravo[0].alert, checker="bravo")
    resigned = [SignedSealed(moved, signer_of(fed, "bravo").sign(moved.statement()))]
    attempts = {
        "bravo's messages, to charlie": ("charlie", to_bravo, grpc.StatusCode.PERMISSION_DENIED),
        "relabelled for charlie": ("charlie", relabelled, grpc.StatusCode.PERMISSION_DENIED),
        "re-attributed to bravo, re-signed": ("bravo", resigned, grpc.StatusCode.PERMISSION_DENIED),
    }
    for what, (holder, msgs, code) in attempts.items():
        channel, stub = as_coordinator(fed, holder)
        with channel, pytest.raises(grpc.RpcError) as err:
            stub.Alert(serde_v2.sealed_to_proto(epoch_id, msgs), timeout=10)
        assert err.value.code() == code, what
    with fed.store("charlie") as store:
        assert store.alerts() == before


def test_filters_swapped_or_emptied_by_the_coordinator_fail_the_check(
    fed: Federation, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The coordinator hides charlie's holding from alpha: it serves bravo's filter as
    charlie's, or an empty filter it signed itself. alpha's check fails, naming the forgery;
    no hit is reported on a filter its holder did not sign."""
    open_epoch(fed)
    relay = hub_of(fed).epoch
    assert relay is not None
    honest = dict(relay.filters)
    empty = EpochFilter.build(relay.epoch_id, "charlie", b"")
    coordinator = signer_of(fed, "coordinator", "coordinator")
    lies = {
        "bravo's as charlie's": (honest["bravo"], "two filters of bravo"),
        "an empty one": (
            SignedFilter(empty, coordinator.sign(b"anything")),
            "not signed by node/charlie",
        ),
    }
    for what, (lie, message) in lies.items():
        monkeypatch.setitem(relay.filters, "charlie", lie)
        with pytest.raises(grpc.RpcError) as err:
            check(fed, "alpha", ["shared.example"])
        assert message in (err.value.details() or ""), what
    monkeypatch.delitem(relay.filters, "charlie")  # left out
    with pytest.raises(grpc.RpcError) as err:
        check(fed, "alpha", ["shared.example"])
    assert "no filter of charlie" in (err.value.details() or "")
    monkeypatch.setattr(relay, "filters", honest)
    assert partners_of(check(fed, "alpha", ["shared.example"]))["shared.example"] == {"charlie"}


# --- epochs a node does not allow, and failed watch rounds ---------------------------------------


def test_a_ten_year_epoch_is_refused_by_the_nodes(fed: Federation) -> None:
    info = fed.start_watch(NAMES, epoch=TEN_YEARS)  # signed by an operator: only nodes refuse
    assert info.state == "failed" and "PERMISSION_DENIED" in info.error
    assert "max_epoch" in info.error
    for name in NAMES:
        with fed.store(name) as store:
            audit = next(r for r in store.rounds() if r.round_id == info.id)
        assert audit.outcome == "refused" and "max_epoch" in (audit.reason or "")
        epoch = watch_of(fed, name).epoch
        assert epoch is None or epoch.epoch_id != info.id


def test_a_node_with_watch_disabled_refuses_watch_rounds(fed: Federation) -> None:
    charlie = watch_of(fed, "charlie")
    settings = charlie.settings
    charlie.settings = replace(settings, enabled=False)
    try:
        info = fed.start_watch(NAMES, epoch=3600)
    finally:
        charlie.settings = settings
    assert info.state == "failed" and "enabled = false" in info.error


def test_a_watch_round_that_fails_after_some_deliveries_leaves_no_share(
    fed: Federation, monkeypatch: pytest.MonkeyPatch
) -> None:
    """alpha and bravo store their deliveries (their epochs open); charlie's fails. The
    coordinator aborts the round everywhere: the epochs that opened close, their shares go."""
    opened = {name: spy(monkeypatch, watch_of(fed, name), "opened") for name in NAMES}

    def refuse(*_: object) -> int:
        raise StoreFailed("injected: the delivery fails")

    monkeypatch.setattr(fed.nodes["charlie"].rounds, "deliver", refuse)
    info = fed.start_watch(NAMES, epoch=3600)  # returns once the nodes have had their Abort
    assert info.state == "failed", info.error
    assert not opened["charlie"] and opened["alpha"] and opened["bravo"]
    for name in NAMES:
        epoch = watch_of(fed, name).epoch
        assert epoch is None or epoch.epoch_id != info.id
    for name in ("alpha", "bravo"):
        with fed.store(name) as store:
            audit = next(e for e in store.epochs() if e.epoch_id == info.id)
        assert audit.closed and info.id in (audit.reason or "")
    hub = hub_of(fed)
    assert hub.epoch is None or hub.epoch.epoch_id != info.id


# --- what a member and the coordinator see of a check --------------------------------------------


def test_a_member_sees_fresh_blinded_points_and_the_coordinator_no_hit(
    fed: Federation, monkeypatch: pytest.MonkeyPatch
) -> None:
    open_epoch(fed)
    alpha = epoch_of(fed, "alpha")  # a member, and a holder of the value bravo checks
    seen = spy(monkeypatch, alpha, "answer")
    sealed = spy(monkeypatch, hub_of(fed), "seal")
    replies = [check(fed, "bravo", ["shared.example"]) for _ in range(2)]
    assert [partners_of(r)["shared.example"] for r in replies] == [{"alpha", "charlie"}] * 2
    received = [points_from_bytes(call[0].points) for call in seen]
    assert len(received) == 2 and received[0] != received[1]  # two checks cannot be linked
    plain = hash_indicator(*WATCH_SHARED)
    assert all(point_to_bytes(p) != point_to_bytes(plain) for ps in received for p in ps)
    # a check of a value only bravo holds: alpha (miss) and bravo (hit) get the same messages
    check(fed, "charlie", ["10.1.2.3"])
    messages = serde_v2.sealed_from_proto(sealed[-1][1])
    per_holder = {h: [m for m in messages if m.alert.holder == h] for h in ("alpha", "bravo")}
    assert {h: len(m) for h, m in per_holder.items()} == {"alpha": 1, "bravo": 1}
    assert {len(m.alert.sealed) for m in messages} == {sealed_bytes(1)}
    with fed.store("bravo") as store:
        got = {(a.kind, a.value, a.partner, a.direction) for a in store.alerts()}
    assert ("ipv4", "10.1.2.3", "charlie", "sighted") in got


def test_a_checker_fetches_and_verifies_its_partners_filters_once_an_epoch(
    fed: Federation, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A filter is fixed for the epoch: the first check asks for every partner's, the next ones
    ask for none, and find the same holders through the filters kept."""
    open_epoch(fed)
    replies = spy(monkeypatch, hub_of(fed), "check")
    for _ in range(2):
        assert partners_of(check(fed, "bravo", ["shared.example"]))["shared.example"] == {
            "alpha",
            "charlie",
        }
    asked = [call[1].want_filters for call in replies]
    sent = [
        sorted(serde_v2.filter_from_proto(f).filter.holder for f in call[-1].filters)
        for call in replies
    ]
    assert asked == [True, False]
    assert sent == [["alpha", "charlie"], []]


def test_the_coordinators_watch_files_are_owner_only(fed: Federation) -> None:
    open_epoch(fed)
    directory = hub_of(fed).directory
    files = list(directory.iterdir())
    assert {p.suffix for p in files} >= {".json", ".filter"}
    assert all(p.stat().st_mode & 0o077 == 0 for p in files)
    assert directory.stat().st_mode & 0o077 == 0
