"""Who may call what, checked against the real NodeService and CoordinatorService over mTLS.

test_net.py checks the transport (AccessPolicy on a probe service); these tests check that the
services as started in production are wired to the right rules: a node serves round RPCs only to
the coordinator its config names, the coordinator starts rounds only for its operators, and a
certificate from another CA, or outside its validity, never completes a handshake.
"""

from __future__ import annotations

import datetime
import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import pytest

from blindmatch.cli.main import main
from blindmatch.cli.tomlconfig import TlsPaths
from blindmatch.runtime import net
from blindmatch.runtime.net import TlsConfig
from blindmatch.runtime.pki import CertMaterial, issue, new_ca
from blindmatch.v1 import coordinator_pb2, coordinator_pb2_grpc, node_pb2
from blindmatch.v2 import node_pb2 as node_v2
from blindmatch.v2 import node_pb2_grpc
from coordinator.config import CoordinatorConfig
from coordinator.service import RunningCoordinator
from coordinator.service import start as start_coordinator
from node.server import start as start_node
from tests.federation import Federation, Setup, domains, held, signed_spec, start_request
from tests.pkifixtures import FederationPki, leaf_with_uris

T = 10.0
UTC = datetime.UTC
NODES = ("alpha", "bravo")
SHARED = [f"s{i}.example" for i in range(5)]


@pytest.fixture(scope="module")
def federation_setup() -> Setup:
    # each node holds the five SHARED domains and five of its own: a round matches exactly SHARED
    return Setup(
        NODES, held(domains({n: SHARED + [f"{n}{i}.example" for i in range(5)] for n in NODES}))
    )


@pytest.fixture(scope="module")
def named_operators(
    fed: Federation, pki: FederationPki, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningCoordinator]:
    """A coordinator whose config lets only the operator ``ops`` start rounds."""
    files = pki.files("coordinator", "coordinator")
    config = CoordinatorConfig(
        listen="127.0.0.1:0",
        tls=TlsPaths(files.ca, files.cert, files.key),
        nodes={name: fed.node_address(name) for name in NODES},
        state=tmp_path_factory.mktemp("named") / "coordinator.sqlite",
        operators=("ops",),
    )
    running = start_coordinator(config, insecure=False)
    yield running
    running.stop()


ALPHA, BRAVO = net.Allow("node", "alpha"), net.Allow("node", "bravo")
COORDINATOR = net.Allow("coordinator")


def channel_to(port: int, tls: TlsConfig, expect: net.Allow) -> grpc.Channel:
    return net.open_channel(f"127.0.0.1:{port}", tls, insecure=False, expect=expect)


def rpc_error(call: Callable[[], object]) -> Any:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value


def tls_of(pki: FederationPki, material: CertMaterial) -> TlsConfig:
    """A client that trusts the federation CA and presents ``material``."""
    return TlsConfig(ca=pki.ca.cert_pem, cert=material.cert_pem, key=material.key_pem)


# --- the node serves its coordinator and nobody else ----------------------------------------------

ROUND = "access-check"
SPEC = node_pb2.RoundSpec(
    round_id=ROUND, participants=["alpha", "bravo"], kinds=["domain"], chunk_size=16
)
# unsigned: the access policy refuses the caller before anything reads the spec
PREPARE = node_pb2.PrepareRequest(signed_spec=node_pb2.SignedSpec(spec=SPEC.SerializeToString()))
NODE_CALLS: dict[str, Callable[[node_pb2_grpc.NodeServiceStub], object]] = {
    "Prepare": lambda s: s.Prepare(PREPARE, timeout=T),
    "SignTranscript": lambda s: s.SignTranscript(
        node_v2.TranscriptRequest(round_id=ROUND), timeout=T
    ),
    "Begin": lambda s: s.Begin(node_v2.BeginRequest(round_id=ROUND), timeout=T),
    "Evaluate": lambda s: list(s.Evaluate(iter([node_v2.SignedRequest()]), timeout=T)),
    "Own": lambda s: list(
        s.Own(iter([node_v2.OwnIn(start=node_v2.OwnStart(round_id=ROUND))]), timeout=T)
    ),
    "Reveal": lambda s: s.Reveal(node_v2.RevealRequest(round_id=ROUND), timeout=T),
    "Deliver": lambda s: s.Deliver(node_v2.DeliverRequest(round_id=ROUND, mode="count"), timeout=T),
    "Abort": lambda s: s.Abort(node_pb2.AbortRequest(round_id=ROUND), timeout=T),
}


def _on(call: Callable[[node_pb2_grpc.NodeServiceStub], object]) -> Callable[[Any], object]:
    return lambda channel: call(node_pb2_grpc.NodeServiceStub(channel))


# every round RPC, as a call on a channel
CALLS: dict[str, Callable[[grpc.Channel], object]] = {
    name: _on(call) for name, call in NODE_CALLS.items()
}


def rounds_on(fed: Federation, name: str) -> list[str]:
    with fed.store(name) as store:
        return [r.round_id for r in store.rounds()]


def test_the_node_serves_the_coordinator_its_config_names(
    fed: Federation, pki: FederationPki
) -> None:
    """Prepare on blindmatch.v2.NodeService, then Abort."""
    assert fed.configs["alpha"].coordinator == "coordinator"
    with channel_to(
        fed.nodes["alpha"].port, pki.tls("coordinator", "coordinator"), ALPHA
    ) as channel:
        stub = node_pb2_grpc.NodeServiceStub(channel)
        round_id = "access-positive"
        spec = node_pb2.RoundSpec(
            round_id=round_id, participants=["alpha", "bravo"], kinds=["domain"], chunk_size=16
        )
        request = node_pb2.PrepareRequest(signed_spec=signed_spec(spec, pki=pki))
        reply = stub.Prepare(request, timeout=T)
        assert (reply.size, reply.protocol) == (10, 2)
        assert reply.HasField("commitment")  # alpha is in the committee: every participant
        assert round_id in fed.nodes["alpha"].rounds.active()
        assert stub.Abort(node_pb2.AbortRequest(round_id=round_id), timeout=T).known
    assert round_id in rounds_on(fed, "alpha")
    assert fed.nodes["alpha"].rounds.active() == []


@pytest.mark.parametrize("method", list(CALLS))
@pytest.mark.parametrize(
    ("name", "role"),
    [("hub", "coordinator"), ("ops", "operator"), ("bravo", "node")],
    ids=["another-coordinator", "operator", "node"],
)
def test_the_node_refuses_every_other_identity(
    fed: Federation, pki: FederationPki, name: str, role: str, method: str
) -> None:
    before = rounds_on(fed, "alpha")
    with channel_to(fed.nodes["alpha"].port, pki.tls(name, role), ALPHA) as channel:
        err = rpc_error(lambda: CALLS[method](channel))
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "requires coordinator/coordinator" in err.details()
    assert f"the caller presented {role}/{name}" in err.details()
    # refused before the handler ran: no round, no audit entry
    assert fed.nodes["alpha"].rounds.active() == []
    assert rounds_on(fed, "alpha") == before


def test_the_node_refuses_a_federation_certificate_without_an_identity(
    fed: Federation, pki: FederationPki
) -> None:
    odd = leaf_with_uris(pki.ca, [])
    with channel_to(fed.nodes["alpha"].port, tls_of(pki, odd), ALPHA) as channel:
        err = rpc_error(lambda: CALLS["Prepare"](channel))
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "URI SAN" in err.details()
    assert fed.nodes["alpha"].rounds.active() == []


# --- the coordinator starts rounds for operators only --------------------------------------------


def start(pki: FederationPki) -> coordinator_pb2.StartRoundRequest:
    return start_request(pki, list(NODES))


def listed(fed: Federation) -> list[str]:
    request = coordinator_pb2.ListRoundsRequest(limit=1000)
    return [r.id for r in fed.stub.ListRounds(request, timeout=T).rounds]


@pytest.mark.parametrize(
    ("name", "role"),
    [("alpha", "node"), ("coordinator", "coordinator")],
    ids=["node", "coordinator"],
)
def test_node_and_coordinator_certificates_cannot_start_a_round(
    fed: Federation, pki: FederationPki, name: str, role: str
) -> None:
    assert fed.coordinator is not None
    before = listed(fed)
    with channel_to(fed.coordinator.port, pki.tls(name, role), COORDINATOR) as channel:
        stub = coordinator_pb2_grpc.CoordinatorServiceStub(channel)
        err = rpc_error(lambda: stub.StartRound(start(pki), timeout=T))
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    assert f"requires operator/*; the caller presented {role}/{name}" in err.details()
    assert listed(fed) == before
    assert all(node.rounds.active() == [] for node in fed.nodes.values())


def test_an_operator_the_config_does_not_list_cannot_start_a_round(
    fed: Federation, pki: FederationPki, named_operators: RunningCoordinator
) -> None:
    before = named_operators.store.recent(1000)
    with channel_to(named_operators.port, pki.tls("intruder", "operator"), COORDINATOR) as channel:
        stub = coordinator_pb2_grpc.CoordinatorServiceStub(channel)
        err = rpc_error(lambda: stub.StartRound(start(pki), timeout=T))
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "requires operator/ops; the caller presented operator/intruder" in err.details()
    assert named_operators.store.recent(1000) == before


def test_a_listed_operator_starts_a_round(
    fed: Federation, pki: FederationPki, named_operators: RunningCoordinator
) -> None:
    with channel_to(named_operators.port, pki.tls("ops", "operator"), COORDINATOR) as channel:
        stub = coordinator_pb2_grpc.CoordinatorServiceStub(channel)
        info = stub.StartRound(start(pki), timeout=T)
        *_, final = stub.WatchRound(coordinator_pb2.GetRoundRequest(id=info.id), timeout=30)
    assert (final.state, final.operator) == ("done", "ops"), final.error
    assert dict(final.match_counts) == {"alpha": len(SHARED), "bravo": len(SHARED)}


# --- handshakes that must fail ----------------------------------------------------------------

ROGUE_CA = new_ca("rogue federation CA")
EXPIRED = (datetime.datetime(2020, 1, 1, tzinfo=UTC), datetime.datetime(2021, 1, 1, tzinfo=UTC))
NOT_YET = (datetime.datetime(2090, 1, 1, tzinfo=UTC), datetime.datetime(2091, 1, 1, tzinfo=UTC))


def refused_client(pki: FederationPki, how: str, name: str, role: str) -> CertMaterial:
    """The right name and role, wrong in one way: another CA, expired, or not yet valid."""
    if how == "another-ca":
        return issue(ROGUE_CA, name, role)
    not_before, not_after = EXPIRED if how == "expired" else NOT_YET
    return issue(pki.ca, name, role, not_before=not_before, not_after=not_after)


HOWS = ["another-ca", "expired", "not-yet-valid"]


@pytest.mark.parametrize("how", HOWS)
def test_the_node_refuses_the_handshake_of_a_bad_coordinator_certificate(
    fed: Federation, pki: FederationPki, how: str
) -> None:
    before = rounds_on(fed, "alpha")
    tls = tls_of(pki, refused_client(pki, how, "coordinator", "coordinator"))
    with channel_to(fed.nodes["alpha"].port, tls, ALPHA) as channel:
        err = rpc_error(lambda: CALLS["Prepare"](channel))
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    assert fed.nodes["alpha"].rounds.active() == []
    assert rounds_on(fed, "alpha") == before


@pytest.mark.parametrize("how", HOWS)
def test_the_coordinator_refuses_the_handshake_of_a_bad_operator_certificate(
    fed: Federation, pki: FederationPki, how: str
) -> None:
    assert fed.coordinator is not None
    before = listed(fed)
    tls = tls_of(pki, refused_client(pki, how, "ops", "operator"))
    with channel_to(fed.coordinator.port, tls, COORDINATOR) as channel:
        stub = coordinator_pb2_grpc.CoordinatorServiceStub(channel)
        err = rpc_error(lambda: stub.StartRound(start(pki), timeout=T))
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    assert listed(fed) == before


# --- blindmatch pki: private keys 0600, nothing overwritten ---------------------------------------


def test_pki_cli_writes_private_keys_0600_and_never_overwrites(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """test_pki.py covers the functions; this runs the commands an operator types."""
    pki_dir = tmp_path / "pki"
    old = os.umask(0)  # the modes must not depend on the caller's umask
    try:
        assert main(["pki", "init", str(pki_dir)]) == 0
        assert main(["pki", "issue", str(pki_dir), "fr", "--role", "node"]) == 0
    finally:
        os.umask(old)
    key = pki_dir / "issued" / "fr.key"
    assert stat.S_IMODE((pki_dir / "ca.key").stat().st_mode) == 0o600
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    capsys.readouterr()
    saved = {p: p.read_bytes() for p in (pki_dir / "ca.key", pki_dir / "ca.pem", key)}
    assert main(["pki", "issue", str(pki_dir), "fr", "--role", "node"]) == 2
    assert main(["pki", "init", str(pki_dir)]) == 2
    err = capsys.readouterr().err
    assert "fr.pem exists; refusing to overwrite it" in err
    assert "ca.pem exists; refusing to overwrite it" in err
    assert {p: p.read_bytes() for p in saved} == saved


def test_a_config_naming_another_coordinator_locks_the_usual_one_out(
    fed: Federation, pki: FederationPki, tmp_path: Path
) -> None:
    """The name in node.toml is what counts: rename it and the old coordinator is refused."""
    config = replace(fed.configs["bravo"], coordinator="hub", store=tmp_path / "store.sqlite")
    node = start_node(config, insecure=False)
    try:
        with channel_to(node.port, pki.tls("coordinator", "coordinator"), BRAVO) as channel:
            err = rpc_error(lambda: CALLS["Abort"](channel))
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "requires coordinator/hub" in err.details()
        with channel_to(node.port, pki.tls("hub", "coordinator"), BRAVO) as channel:
            reply = node_pb2_grpc.NodeServiceStub(channel).Abort(
                node_pb2.AbortRequest(round_id=ROUND), timeout=T
            )
        assert reply.known is False
    finally:
        node.stop(grace=0.5)
