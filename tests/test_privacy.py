"""What a node receives, and what it keeps, checked on a real federation over mTLS.

Recording wrappers (the real code runs underneath; nothing is replaced) capture what crosses the
node's servicer and the round keys the nodes draw:
- a node in ``count`` mode receives no positions, a node in ``threshold`` mode no partner names;
- after any round, done or failed, no node holds key material: no live round, every round's key
  destroyed and its position map dropped, no thread keeping the key's bytes, and the store files
  (database, WAL, shared memory) contain none of them.
(test_rounds.py records every byte on the wire in every mode and finds no value there.)
"""

from __future__ import annotations

import re
import sys
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest

import node.rounds
from blindmatch.core.group import RoundKey, hash_to_group
from blindmatch.core.round_coordinator import CoordinatorRound
from blindmatch.core.round_node import NodeRound
from blindmatch.core.spec import Policy
from blindmatch.core.states import NodePhase
from blindmatch.runtime import net, serde
from blindmatch.v1 import node_pb2, node_pb2_grpc
from node.servicer import NodeServicer
from tests.federation import (
    Federation,
    NodeData,
    Setup,
    make_datasets,
    node_certificates,
    signed_chunk,
    signed_spec,
    signer,
)
from tests.pkifixtures import FederationPki
from tests.waiting import until

NAMES = ("alpha", "bravo", "charlie", "delta")
SIZE = 600
NODE_TIMEOUT = 3.0  # seconds a node keeps a round the coordinator has gone silent on
T = 10.0


@dataclass
class Env:
    fed: Federation
    data: dict[str, NodeData]
    deliveries: list[tuple[str, node_pb2.DeliverRequest]]  # (receiving node, request)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, pki: FederationPki) -> Iterator[Env]:
    deliveries: list[tuple[str, node_pb2.DeliverRequest]] = []
    deliver = NodeServicer.Deliver

    def recording_deliver(
        self: NodeServicer, request: node_pb2.DeliverRequest, context: grpc.ServicerContext
    ) -> node_pb2.DeliverReply:
        copy = node_pb2.DeliverRequest()
        copy.CopyFrom(request)
        deliveries.append((self.name, copy))
        return deliver(self, request, context)

    with pytest.MonkeyPatch.context() as mp:
        # before the nodes start: the server binds the servicer's methods when it registers it
        mp.setattr(NodeServicer, "Deliver", recording_deliver)
        data = make_datasets(NAMES, SIZE, seed=5)
        setup = Setup(
            NAMES,
            data,
            relays=True,
            node_timeout=NODE_TIMEOUT,
            policies={"delta": Policy(max_partner_set=SIZE // 2)},
        )
        fed = Federation(tmp_path_factory.mktemp("privacy"), pki, setup)
    try:
        yield Env(fed, data, deliveries)
    finally:
        fed.close()


def received(env: Env, round_id: str) -> dict[str, node_pb2.DeliverRequest]:
    got = {name: r for name, r in env.deliveries if r.round_id == round_id}
    assert len(got) == len([r for _, r in env.deliveries if r.round_id == round_id])
    return got


# --- what a node receives in each mode -------------------------------------------------------------


def test_a_count_mode_node_receives_no_positions(env: Env) -> None:
    participants = ["alpha", "bravo", "charlie"]
    info = env.fed.run_round(participants, mode="count")
    assert info.state == "done", info.error
    got = received(env, info.id)
    assert set(got) == set(participants)
    for name, request in got.items():
        assert request.WhichOneof("result") == "count"
        # nothing but the round and the per-partner counts: no position, no partner list
        assert [f.name for f, _ in request.ListFields()] == ["round_id", "count"]
        assert set(request.count.shared) == set(participants) - {name}
        eligible = {n: env.data[n].eligible() for n in participants}
        assert dict(request.count.shared) == {
            p: len(eligible[name] & eligible[p]) for p in participants if p != name
        }


def test_a_threshold_mode_node_receives_no_partner_names(env: Env) -> None:
    participants = ["alpha", "bravo", "charlie"]
    info = env.fed.run_round(participants, mode="threshold", threshold=2)
    assert info.state == "done", info.error
    got = received(env, info.id)
    assert set(got) == set(participants)
    for request in got.values():
        assert request.WhichOneof("result") == "threshold"
        assert [f.name for f, _ in request.ListFields()] == ["round_id", "threshold"]
        # positions only: the round did not ask for counts (a count of N names every holder)
        assert len(request.threshold.positions) > 0 and len(request.threshold.counts) == 0
        wire = request.SerializeToString()
        assert not [n for n in NAMES if n.encode() in wire]


def test_a_pairwise_node_receives_partners_as_indices(env: Env) -> None:
    participants = ["alpha", "bravo", "charlie"]
    info = env.fed.run_round(participants)
    assert info.state == "done", info.error
    for name, request in received(env, info.id).items():
        assert request.WhichOneof("result") == "pairwise"
        me = participants.index(name)
        lists = [list(p.partners) for p in request.pairwise.partners]
        assert lists and all(p and me not in p and max(p) < 3 for p in lists)
        assert not [n for n in NAMES if n.encode() in request.SerializeToString()]


# --- no key material after a round ---------------------------------------------------------------


@dataclass
class Recorder:
    """The round keys and NodeRounds the nodes create while a test runs."""

    keys: list[tuple[RoundKey, bytes]] = field(default_factory=list)  # key, its raw scalar
    rounds: list[NodeRound] = field(default_factory=list)

    def secrets(self) -> set[bytes]:
        raw = {b for _, b in self.keys}
        return raw | {b.hex().encode() for b in raw}


@pytest.fixture
def recorder(monkeypatch: pytest.MonkeyPatch) -> Recorder:
    rec = Recorder()
    generate = RoundKey.generate

    def recording_generate(cls: type[RoundKey]) -> RoundKey:
        key = generate()
        rec.keys.append((key, key.export()))
        return key

    class RecordingRound(NodeRound):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            rec.rounds.append(self)

    monkeypatch.setattr(RoundKey, "generate", classmethod(recording_generate))
    monkeypatch.setattr(node.rounds, "NodeRound", RecordingRound)
    return rec


def frames_holding(secrets: set[bytes]) -> list[str]:
    """Functions of other threads that hold one of ``secrets`` in a local variable."""
    found = []
    me = threading.get_ident()
    for ident, frame in sys._current_frames().items():
        if ident == me:
            continue
        f: Any = frame
        while f is not None:
            found += [
                f"{f.f_code.co_name}.{name}"
                for name, value in f.f_locals.items()
                if isinstance(value, bytes) and value in secrets
            ]
            f = f.f_back
    return found


def ended_everywhere(env: Env, rec: Recorder) -> bool:
    """Every node has let go of every recorded round and written its audit (which it does last)."""
    if any(n.rounds.active() for n in env.fed.nodes.values()):
        return False
    if any(state.phase not in (NodePhase.DONE, NodePhase.ABORTED) for state in rec.rounds):
        return False
    ids = {state.spec.round_id for state in rec.rounds}
    for name in env.fed.stores:
        with env.fed.store(name) as store:
            if any(r.outcome == "started" for r in store.rounds() if r.round_id in ids):
                return False
    return True


def assert_no_key_material(env: Env, rec: Recorder, expected_rounds: int) -> None:
    assert len(rec.rounds) == expected_rounds and len(rec.keys) == expected_rounds
    # a round ends everywhere within the node's timeout, whatever happened to the coordinator
    until("every node has ended every round", lambda: ended_everywhere(env, rec), 10)
    for state in rec.rounds:
        assert state.key is None
        assert state.phase in (NodePhase.DONE, NodePhase.ABORTED)
        assert state.positions_held == 0
    assert all(key.destroyed for key, _ in rec.keys)
    secrets = rec.secrets()
    # a thread serving a stream may take a moment to notice that its round has ended
    until("no thread holds key material", lambda: not frames_holding(secrets), 5)
    for path in env.fed.stores.values():
        for file in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
            if file.exists():
                content = file.read_bytes()
                assert not [s for s in secrets if s in content], f"key material in {file}"


@pytest.mark.parametrize("mode", ["pairwise", "threshold", "count"])
def test_no_key_material_after_a_round_that_succeeded(
    env: Env, recorder: Recorder, mode: str
) -> None:
    info = env.fed.run_round(NAMES[:3], mode=mode, threshold=2 if mode == "threshold" else 0)
    assert info.state == "done", info.error
    assert_no_key_material(env, recorder, 3)


def test_no_key_material_after_a_round_a_node_refused(env: Env, recorder: Recorder) -> None:
    info = env.fed.run_round(["alpha", "bravo", "delta"])
    assert info.state == "failed"
    # the refusal at RoutingStart reaches the coordinator on whichever of delta's streams is first
    assert re.match(r"delta refused (Reblind|OwnSet): RESOURCE_EXHAUSTED", info.error)
    assert_no_key_material(env, recorder, 3)


@pytest.mark.slow
def test_no_key_material_after_a_connection_cut_mid_stream(
    env: Env, recorder: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    relay = env.fed.relays["charlie"]
    cut = threading.Event()
    on_chunk = CoordinatorRound.on_chunk

    def cut_after_the_first_hop(self: CoordinatorRound, *args: Any, **kwargs: Any) -> Any:
        forward = on_chunk(self, *args, **kwargs)
        # Cut in the coordinator's own thread, before it forwards anything more: the round is
        # past Prepare and its first element-hop, and charlie still has sets to re-blind.
        if not cut.is_set() and self.progress()[0] > 0:
            relay.cut_after(0)  # and every later connection through charlie's relay
            relay.cut_now()
            cut.set()
        return forward

    try:
        with monkeypatch.context() as mp:
            mp.setattr(CoordinatorRound, "on_chunk", cut_after_the_first_hop)
            info = env.fed.run_round(["alpha", "bravo", "charlie"], timeout=30)
        assert cut.is_set()
        assert info.state == "failed"
        assert "charlie" in info.error
        assert info.hops_done > 0  # it was cut mid-round, not before
        # charlie, out of reach of the coordinator's Abort, drops the round at its own timeout
        assert_no_key_material(env, recorder, 3)
    finally:
        relay.cut_after(1 << 62)
    with env.fed.store("charlie") as store:
        entry = next(r for r in store.rounds() if r.round_id == info.id)
    assert entry.outcome in ("failed", "aborted")
    # After the broken connections gRPC waits (backoff) before it dials charlie again; the next
    # round is started once the coordinator's channel to charlie is up, as an operator would.
    assert env.fed.coordinator is not None
    channel = env.fed.coordinator.coordinator.links.channels()["charlie"]
    grpc.channel_ready_future(channel).result(timeout=60)
    ok = env.fed.run_round(["alpha", "bravo", "charlie"])
    assert ok.state == "done", ok.error


@pytest.mark.slow
def test_no_key_material_while_a_stalled_coordinator_holds_a_stream_open(
    env: Env, recorder: Recorder, pki: FederationPki
) -> None:
    """A coordinator that stops talking mid-stream, without closing it: the node drops the round
    at its timeout, and the thread serving the stream lets go of the key too."""
    round_id = uuid.uuid4().hex
    release = threading.Event()
    channel = net.open_channel(
        f"127.0.0.1:{env.fed.nodes['alpha'].port}",
        pki.tls("coordinator", "coordinator"),
        insecure=False,
        expect=net.Allow("node", "alpha"),
    )
    try:
        stub = node_pb2_grpc.NodeServiceStub(channel)
        spec = node_pb2.RoundSpec(
            round_id=round_id, participants=["alpha", "zulu"], kinds=["domain"], chunk_size=64
        )
        signed = signed_spec(spec, pki=pki)
        size = stub.Prepare(node_pb2.PrepareRequest(signed_spec=signed), timeout=T).size
        element = hash_to_group("domain", "zulu.example")  # a partner's element

        def stalled() -> Iterator[node_pb2.ReblindRequest]:
            sizes = {"alpha": size, "zulu": 5}
            certificates = node_certificates(pki, ["alpha", "zulu"])
            yield serde.routing_start_to_proto(round_id, sizes, certificates)
            zulu = signer(pki, "zulu", "node")
            yield node_pb2.ReblindRequest(chunk=signed_chunk(zulu, signed, "zulu", 0, 0, element))
            release.wait(30)  # then silence, with the stream still open

        call = stub.Reblind(stalled(), timeout=30)
        assert next(call).seq == 0
        assert round_id in env.fed.nodes["alpha"].rounds.active()
        assert_no_key_material(env, recorder, 1)
        with pytest.raises(grpc.RpcError) as err:
            next(call)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "ended while its Reblind stream was open" in (err.value.details() or "")
    finally:
        release.set()
        channel.close()
    with env.fed.store("alpha") as store:
        entry = next(r for r in store.rounds() if r.round_id == round_id)
    assert entry.outcome == "failed" and "timed out" in (entry.reason or "")
    assert entry.blinded_for == {"zulu": 1}
