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
from blindmatch.cli.tomlconfig import ConfigError, TlsPaths
from blindmatch.runtime import net
from blindmatch.runtime.net import TlsConfig
from blindmatch.runtime.pki import CertMaterial, issue, new_ca
from blindmatch.v1 import coordinator_pb2, coordinator_pb2_grpc, node_pb2
from blindmatch.v2 import node_pb2 as node_v2
from blindmatch.v2 import node_pb2_grpc, watch_pb2, watch_pb2_grpc
from coordinator.config import CoordinatorConfig
from coordinator.service import RunningCoordinator
from coordinator.service import start as start_coordinator
from node.config import load_config, render_config
from node.server import RunningNode
from node.server import start as start_node
from node.watch import access_rules as node_watch_rules
from tests.clirun import run
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


# --- a checker certificate: Check on the nodes that list it, and nothing else -----------------

SIEM = "siem-1"
NOT_A_VALUE = "not a value!!"  # answered with its error, no epoch needed: the handler ran
ON = "127.0.0.1:0"


def node_toml(home: Path, pki: FederationPki, check_clients: str) -> Path:
    """bravo's node.toml as `node init` writes it, with ``check_clients = <check_clients>``."""
    files = pki.files("bravo", "node")
    text = render_config(
        name="bravo", listen=ON, ca=str(files.ca), cert=str(files.cert), key=str(files.key)
    )
    assert "check_clients = []" in text
    text = text.replace("check_clients = []", f"check_clients = {check_clients}")
    home.mkdir(parents=True, exist_ok=True)
    path = home / "node.toml"
    path.write_text(text.replace("workers = 0", "workers = 1"))
    return path


@pytest.fixture(scope="module")
def siem_node(
    pki: FederationPki, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningNode]:
    """bravo, whose node.toml lets its SIEM check: ``check_clients = ["siem-1"]``."""
    config = load_config(node_toml(tmp_path_factory.mktemp("siem-node"), pki, f'["{SIEM}"]'))
    assert config.watch.check_clients == (("checker", SIEM),)
    node = start_node(config, insecure=False)
    yield node
    node.stop(grace=0.5)


def node_check(channel: grpc.Channel, values: list[str]) -> watch_pb2.NodeCheckReply:
    stub = watch_pb2_grpc.NodeWatchServiceStub(channel)
    reply: watch_pb2.NodeCheckReply = stub.Check(
        watch_pb2.NodeCheckRequest(values=values), timeout=T
    )
    return reply


def test_a_listed_checker_calls_check(siem_node: RunningNode, pki: FederationPki) -> None:
    """test_watch.py checks through a real epoch as a checker; without one, the call still
    reaches the handler."""
    with channel_to(siem_node.port, pki.tls(SIEM, "checker"), BRAVO) as channel:
        reply = node_check(channel, [NOT_A_VALUE])
        assert [r.value for r in reply.results] == [NOT_A_VALUE]
        assert reply.results[0].error
        err = rpc_error(lambda: node_check(channel, ["checked.example"]))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "node bravo has no watch epoch" in err.details()


def _watch(channel: grpc.Channel) -> watch_pb2_grpc.NodeWatchServiceStub:
    return watch_pb2_grpc.NodeWatchServiceStub(channel)


# every method of a node but Check, as a call on a channel
NOT_CHECK: dict[str, Callable[[grpc.Channel], object]] = {
    **CALLS,
    "EvaluateCheck": lambda ch: _watch(ch).EvaluateCheck(
        watch_pb2.CheckRequests(epoch_id="x"), timeout=T
    ),
    "Alert": lambda ch: _watch(ch).Alert(watch_pb2.SealedMessages(epoch_id="x"), timeout=T),
    "CloseEpoch": lambda ch: _watch(ch).CloseEpoch(
        watch_pb2.CloseEpochRequest(epoch_id="x"), timeout=T
    ),
}


@pytest.mark.parametrize("method", list(NOT_CHECK))
def test_a_checker_may_call_no_other_node_method(
    siem_node: RunningNode, pki: FederationPki, method: str
) -> None:
    with channel_to(siem_node.port, pki.tls(SIEM, "checker"), BRAVO) as channel:
        err = rpc_error(lambda: NOT_CHECK[method](channel))
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    assert f"the caller presented checker/{SIEM}" in err.details()
    assert siem_node.rounds.active() == []


def test_a_checker_may_not_check_at_a_node_that_does_not_list_it(
    fed: Federation, pki: FederationPki
) -> None:
    with channel_to(fed.nodes["alpha"].port, pki.tls(SIEM, "checker"), ALPHA) as channel:
        err = rpc_error(lambda: node_check(channel, [NOT_A_VALUE]))
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    assert f"requires node/alpha; the caller presented checker/{SIEM}" in err.details()


def _coordinator(channel: grpc.Channel) -> coordinator_pb2_grpc.CoordinatorServiceStub:
    return coordinator_pb2_grpc.CoordinatorServiceStub(channel)


def _coordinator_watch(channel: grpc.Channel) -> watch_pb2_grpc.CoordinatorWatchServiceStub:
    return watch_pb2_grpc.CoordinatorWatchServiceStub(channel)


GET = coordinator_pb2.GetRoundRequest(id="x")
# every method of the coordinator, as a call on a channel with the federation's pki at hand
COORDINATOR_CALLS: dict[str, Callable[[grpc.Channel, FederationPki], object]] = {
    "StartRound": lambda ch, pki: _coordinator(ch).StartRound(start(pki), timeout=T),
    "GetRound": lambda ch, _: _coordinator(ch).GetRound(GET, timeout=T),
    "ListRounds": lambda ch, _: _coordinator(ch).ListRounds(
        coordinator_pb2.ListRoundsRequest(), timeout=T
    ),
    "WatchRound": lambda ch, _: list(_coordinator(ch).WatchRound(GET, timeout=T)),
    "Schedule": lambda ch, _: _coordinator(ch).Schedule(
        coordinator_pb2.ScheduleRequest(), timeout=T
    ),
    "ListSchedules": lambda ch, _: _coordinator(ch).ListSchedules(
        coordinator_pb2.ListSchedulesRequest(), timeout=T
    ),
    "CancelSchedule": lambda ch, _: _coordinator(ch).CancelSchedule(
        coordinator_pb2.CancelScheduleRequest(id="x"), timeout=T
    ),
    "watch Check": lambda ch, _: _coordinator_watch(ch).Check(
        watch_pb2.CheckRequests(epoch_id="x"), timeout=T
    ),
    "watch Seal": lambda ch, _: _coordinator_watch(ch).Seal(
        watch_pb2.SealedMessages(epoch_id="x"), timeout=T
    ),
}


@pytest.mark.parametrize("method", list(COORDINATOR_CALLS))
def test_a_checker_may_call_nothing_at_the_coordinator(
    fed: Federation, pki: FederationPki, method: str
) -> None:
    assert fed.coordinator is not None
    before = listed(fed)
    with channel_to(fed.coordinator.port, pki.tls(SIEM, "checker"), COORDINATOR) as channel:
        err = rpc_error(lambda: COORDINATOR_CALLS[method](channel, pki))
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    assert f"the caller presented checker/{SIEM}" in err.details()
    assert listed(fed) == before


@pytest.mark.parametrize(
    ("name", "role"),
    [("ops", "operator"), ("siem-2", "checker"), ("alpha", "node"), ("coordinator", "coordinator")],
    ids=["operator", "unlisted-checker", "another-node", "coordinator"],
)
def test_only_the_node_and_its_listed_checkers_may_check(
    siem_node: RunningNode, pki: FederationPki, name: str, role: str
) -> None:
    """ops is the operator every test round is started by: round power gives no Check."""
    with channel_to(siem_node.port, pki.tls(name, role), BRAVO) as channel:
        err = rpc_error(lambda: node_check(channel, [NOT_A_VALUE]))
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    assert (
        f"requires checker/{SIEM} or node/bravo; the caller presented {role}/{name}"
        in err.details()
    )


def test_the_node_itself_may_check(siem_node: RunningNode, pki: FederationPki) -> None:
    with channel_to(siem_node.port, pki.tls("bravo", "node"), BRAVO) as channel:
        assert node_check(channel, [NOT_A_VALUE]).results[0].error


def test_check_clients_are_checkers_named_either_way(tmp_path: Path, pki: FederationPki) -> None:
    config = load_config(node_toml(tmp_path, pki, '["checker/siem-1", "siem-2"]'))
    assert config.watch.check_clients == (("checker", "siem-1"), ("checker", "siem-2"))


@pytest.mark.parametrize(
    ("entry", "why"),
    [
        (
            "operator/siem-1",
            "is an operator certificate, which can start rounds on every node; "
            "a SIEM needs only Check",
        ),
        ("coordinator/siem-1", "is a coordinator certificate, which runs rounds"),
        ("node/siem-1", "is a node certificate: this node's own certificate may always call Check"),
    ],
    ids=["operator", "coordinator", "node"],
)
def test_check_clients_refuse_every_role_but_checker(
    tmp_path: Path, pki: FederationPki, entry: str, why: str
) -> None:
    path = node_toml(tmp_path, pki, f'["{entry}"]')
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert message.startswith(f"{path}: watch.check_clients entry '{entry}' {why}")
    assert message.endswith(
        "; issue a checker certificate with `blindmatch pki issue PKI_DIR siem-1 --role checker`"
        ' and list it as "checker/siem-1"'
    )
    # every command that reads node.toml says so, as bad input
    status, _, stderr = run("node", "stats", "--config", str(path))
    assert status == 2 and why in stderr and "--role checker" in stderr


@pytest.mark.parametrize("entries", ['["root/x"]', '["Siem"]', '["checker/"]', "[5]"])
def test_check_clients_refuse_what_names_no_checker(
    tmp_path: Path, pki: FederationPki, entries: str
) -> None:
    with pytest.raises(ConfigError, match=r"watch\.check_clients entry .*"):
        load_config(node_toml(tmp_path, pki, entries))


def test_node_access_rules_admit_checkers_only() -> None:
    """Settings built in code, not read from node.toml, cannot open Check to an operator."""
    rules = node_watch_rules("bravo", "coordinator", [("checker", SIEM)])
    assert rules["/blindmatch.v2.NodeWatchService/Check"] == [("node", "bravo"), ("checker", SIEM)]
    with pytest.raises(ValueError, match="must be checker certificates, not operator/siem"):
        node_watch_rules("bravo", "coordinator", [("operator", "siem")])
