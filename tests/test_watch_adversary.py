"""Early warning against a malicious coordinator or a curious operator (issue 10, reqs 4 and 5).

Every attack is performed with real certificates against real node and coordinator servers
(tests/federation.py) and shown refused, with its gRPC status and a line in the audit:
- an operator certificate calling a node's Check;
- the coordinator asking a partner to blind a check in another node's name (unsigned, signed by
  the wrong node, signed by itself) or replaying a check: refused before any budget is charged;
- a ten-year epoch: refused by every node at Prepare, whatever the coordinator asks;
- a watch round that fails after BeginEpoch, or after some nodes delivered: no epoch key left;
- the last hop of a check sees neither the check's final tag nor anything that links two checks
  of the same value.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import pytest

from blindmatch.core.errors import WrongPhase
from blindmatch.core.group import RoundKey, hash_indicators
from blindmatch.core.signing import CheckClaim, Signer
from blindmatch.core.spec import Policy
from blindmatch.core.states import EpochPhase
from blindmatch.core.watch_node import NodeEpoch, NodeWatchCore
from blindmatch.core.watch_rules import CheckHop
from blindmatch.runtime import serde
from blindmatch.v1 import watch_pb2_grpc
from node.rounds import StoreFailed
from node.watch import NodeWatch
from tests.federation import Federation, Setup, check, held, partners_of, watching

NAMES = ("alpha", "bravo", "charlie")
SHARED = ("domain", "shared.example")
HELD = {
    "alpha": [SHARED, ("domain", "alpha-only.example")],
    "bravo": [("ipv4", "10.1.2.3")],
    "charlie": [SHARED],
}
TEN_YEARS = 10 * 365 * 86400.0


@pytest.fixture(scope="module")
def federation_setup() -> Setup:
    return Setup(NAMES, held(HELD), configure=watching)


def watch_of(fed: Federation, name: str) -> NodeWatch:
    watch = fed.nodes[name].watch
    assert watch is not None
    return watch


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


def record(
    monkeypatch: pytest.MonkeyPatch, core: NodeWatchCore, method: str
) -> list[tuple[Any, ...]]:
    """Wrap a core method of a running node: every call's arguments and result, in order."""
    calls: list[tuple[Any, ...]] = []
    real: Callable[..., Any] = getattr(core, method)

    def spy(*args: Any) -> Any:
        result = real(*args)
        calls.append((*args, result))
        return result

    monkeypatch.setattr(core, method, spy)
    return calls


# --- who may check ------------------------------------------------------------------------------


def test_an_operator_may_not_call_a_nodes_check(fed: Federation) -> None:
    open_epoch(fed)
    with pytest.raises(grpc.RpcError) as err:
        check(fed, "alpha", ["shared.example"], as_name="ops", role="operator")
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with fed.store("alpha") as store:
        assert not store.checks()  # refused at the door: no check was made


# --- a check in another node's name -----------------------------------------------------------


def forged_hops(fed: Federation, epoch_id: str, elements: bytes) -> dict[str, CheckHop]:
    """Ways a coordinator may try to have bravo (hop 1 of alpha's checks) blind for "alpha"."""
    claim = CheckClaim(epoch_id, b"", "alpha", "ab" * 8, 0, elements)
    unsigned = CheckHop(epoch_id, "alpha", "ab" * 8, 0, elements, b"", b"")
    bravo = signer_of(fed, "bravo")
    hub = signer_of(fed, "coordinator", "coordinator")
    charlie = signer_of(fed, "charlie")
    return {
        "unsigned": unsigned,
        "alpha's certificate, no signature": replace(
            unsigned, certificate=fed.pki.files("alpha").cert.read_bytes()
        ),
        "signed by another node": replace(
            unsigned, signature=bravo.sign(claim.message()), certificate=bravo.cert_pem
        ),
        "signed by the coordinator": replace(
            unsigned, signature=hub.sign(claim.message()), certificate=hub.cert_pem
        ),
        "another hop's output": replace(
            unsigned,
            hop=1,
            signature=charlie.sign(replace(claim, hop=1).message()),
            certificate=charlie.cert_pem,
        ),
    }


def test_a_check_in_another_nodes_name_is_refused_and_costs_nothing(
    fed: Federation,
) -> None:
    epoch_id = open_epoch(fed)
    bravo = watch_of(fed, "bravo")
    elements = b"".join(RoundKey.generate().blind(hash_indicators([SHARED])))
    channel, stub = as_coordinator(fed, "bravo")
    with channel:
        for what, hop in forged_hops(fed, epoch_id, elements).items():
            with pytest.raises(grpc.RpcError) as err:
                stub.ReblindCheck(serde.check_hop_to_proto(hop), timeout=10)
            assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED, what
    assert bravo.epoch is not None and bravo.epoch.spent == {}  # the budget is untouched
    with fed.store("bravo") as store:
        refused = [c for c in store.checks() if c.epoch_id == epoch_id]
    assert len(refused) == 5
    assert {(c.checker, c.outcome) for c in refused} == {("alpha", "refused")}
    assert all(c.reason for c in refused)


def blinded_by_bravo(
    fed: Federation, monkeypatch: pytest.MonkeyPatch
) -> tuple[NodeWatch, CheckHop]:
    """An epoch, a check of alpha's, and the signed chunk bravo (its hop 1) blinded for it."""
    open_epoch(fed)
    bravo = watch_of(fed, "bravo")
    seen = record(monkeypatch, bravo.core, "reblind")
    check(fed, "alpha", ["shared.example"])
    hop = seen[0][0]
    assert isinstance(hop, CheckHop)
    return bravo, hop


def test_a_replayed_check_is_refused_and_costs_nothing(
    fed: Federation, monkeypatch: pytest.MonkeyPatch
) -> None:
    bravo, hop = blinded_by_bravo(fed, monkeypatch)
    assert hop.checker == "alpha" and hop.hop == 0
    assert bravo.epoch is not None
    spent = dict(bravo.epoch.spent)
    channel, stub = as_coordinator(fed, "bravo")
    with channel, pytest.raises(grpc.RpcError) as err:
        stub.ReblindCheck(serde.check_hop_to_proto(hop), timeout=10)
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert bravo.epoch.spent == spent
    with fed.store("bravo") as store:
        assert store.checks()[0].outcome == "refused"


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
    settings = charlie.core.settings
    charlie.core.settings = replace(settings, enabled=False)
    try:
        info = fed.start_watch(NAMES, epoch=3600)
    finally:
        charlie.core.settings = settings
    assert info.state == "failed" and "enabled = false" in info.error


def fail_begin_epoch(monkeypatch: pytest.MonkeyPatch, fed: Federation) -> None:
    def refuse(*_: object) -> NodeEpoch:
        raise WrongPhase("injected: BeginEpoch fails")

    monkeypatch.setattr(watch_of(fed, "charlie").core, "begin", refuse)


def fail_delivery(monkeypatch: pytest.MonkeyPatch, fed: Federation) -> None:
    """alpha and bravo deliver (their epochs open), charlie's delivery fails."""

    def refuse(*_: object) -> int:
        raise StoreFailed("injected: the delivery fails")

    monkeypatch.setattr(fed.nodes["charlie"].rounds, "deliver", refuse)


@pytest.mark.parametrize(
    "fault", [fail_begin_epoch, fail_delivery], ids=["at BeginEpoch", "after a delivery"]
)
def test_a_failed_watch_round_leaves_no_epoch_key(
    fed: Federation,
    monkeypatch: pytest.MonkeyPatch,
    fault: Callable[[pytest.MonkeyPatch, Federation], None],
) -> None:
    staged = {name: record(monkeypatch, watch_of(fed, name).core, "begin") for name in NAMES}
    fault(monkeypatch, fed)
    info = fed.start_watch(NAMES, epoch=3600)  # returns once the nodes have had their Abort
    assert info.state == "failed", info.error
    epochs = [call[-1] for calls in staged.values() for call in calls]
    assert epochs  # some nodes staged the epoch (and, after a delivery, opened it)
    for epoch in epochs:
        assert epoch.key is None and epoch.phase is EpochPhase.CLOSED and epoch.tags == {}
        assert info.id in (epoch.closed or "")
    for name in NAMES:
        watch = watch_of(fed, name)
        assert watch.core.pending == {}
        assert watch.epoch is None or watch.epoch.epoch_id != info.id
    hub = fed.coordinator.watch if fed.coordinator else None
    assert hub is not None and (hub.epoch is None or hub.epoch.epoch_id != info.id)


# --- the last hop learns nothing of a check ------------------------------------------------------


def final_tag(fed: Federation, item: tuple[str, str]) -> bytes:
    """The watch round's final tag of ``item``: every node's epoch key applied to its hash."""
    (element,) = hash_indicators([item])
    for name in NAMES:
        epoch = watch_of(fed, name).epoch
        assert epoch is not None and epoch.key is not None
        (element,) = epoch.key.blind([element])
    return element


def test_checks_are_masked_from_the_last_hop(
    fed: Federation, monkeypatch: pytest.MonkeyPatch
) -> None:
    open_epoch(fed)
    # bravo's checks visit charlie, then alpha: alpha is the last hop, and alpha holds the value
    alpha = watch_of(fed, "alpha")
    seen = record(monkeypatch, alpha.core, "reblind")
    replies = [check(fed, "bravo", ["shared.example"]) for _ in range(2)]
    # the checker's answer is what it always was
    assert [partners_of(r)["shared.example"] for r in replies] == [{"alpha", "charlie"}] * 2
    received = [args[0].elements for args in seen]
    assert len(received) == 2 and received[0] != received[1]  # two checks cannot be linked
    final = final_tag(fed, SHARED)
    assert final not in received  # nor compared with the final tags of the watch round
    assert alpha.epoch is not None
    tag_map = alpha.epoch.tags
    # the tag map holds k_c-tags: neither the final tag nor what a check shows the last hop
    assert SHARED in tag_map.values() and final not in tag_map
    assert not set(received) & set(tag_map)


def test_the_coordinator_key_is_kept_owner_only(fed: Federation) -> None:
    open_epoch(fed)
    assert fed.coordinator is not None and fed.coordinator.watch is not None
    directory: Path = fed.coordinator.watch.directory
    key = directory / "epoch.key"
    assert key.stat().st_mode & 0o777 == 0o600
    assert all(p.stat().st_mode & 0o077 == 0 for p in directory.iterdir())


def test_policies_still_apply(fed: Federation) -> None:
    open_epoch(fed)
    charlie = watch_of(fed, "charlie")
    charlie.policy = Policy(partners=frozenset({"alpha"}))
    try:
        reply = check(fed, "bravo", ["shared.example"])
    finally:
        charlie.policy = Policy()
    assert partners_of(reply)["shared.example"] == {"alpha"}  # charlie holds it, refuses bravo


def test_a_chunk_replayed_or_moved_to_another_place_is_refused_and_costs_nothing(
    fed: Federation, monkeypatch: pytest.MonkeyPatch
) -> None:
    bravo, hop = blinded_by_bravo(fed, monkeypatch)
    assert (hop.seq, hop.chunks) == (0, 1)
    assert bravo.epoch is not None
    spent = dict(bravo.epoch.spent)
    with fed.store("bravo") as store:
        before = len(store.checks())
    moved = {
        # the same signed chunk presented as another chunk of the check: its place is signed
        "moved": (replace(hop, seq=1, chunks=2), grpc.StatusCode.PERMISSION_DENIED),
        "beyond the check's end": (replace(hop, seq=1), grpc.StatusCode.INVALID_ARGUMENT),
        "replayed": (hop, grpc.StatusCode.ALREADY_EXISTS),
    }
    channel, stub = as_coordinator(fed, "bravo")
    with channel:
        for what, (chunk, code) in moved.items():
            with pytest.raises(grpc.RpcError) as err:
                stub.ReblindCheck(serde.check_hop_to_proto(chunk), timeout=10)
            assert err.value.code() == code, what
    assert bravo.epoch.spent == spent
    with fed.store("bravo") as store:
        refused = store.checks()[: len(store.checks()) - before]  # newest first
    assert [c.outcome for c in refused] == ["refused"] * 3
