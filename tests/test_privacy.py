"""What a node receives, and what it keeps, checked on a real federation over mTLS.

Recording wrappers (the real code runs underneath; nothing is replaced) capture what crosses the
node's servicer and the secrets the nodes draw:
- a node in ``count`` mode receives no positions and no proofs; a node in ``threshold`` mode
  records no partner names (its delivery proves each hit against some holders' signed roots,
  named: core/delivery.py says what that reveals);
- after any round, done or failed, no node holds key material: no live round, every committee
  member's share destroyed, every owner's blinding seed let go, the position map dropped, no
  thread keeping a secret, and the store files (database, WAL, shared memory) contain none;
- after a round, no copy of any member's share is left anywhere in the nodes' memory, freed heap
  and thread stacks included (``tests/memscan.py``).
(test_rounds.py records every byte on the wire in every mode and finds no value there.)
"""

from __future__ import annotations

import gc
import sys
import threading
import uuid
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest

import node.rounds
from blindmatch.core.delivery import NodeDelivery, SignedRoot
from blindmatch.core.member import Member
from blindmatch.core.oprf import LAMBDA, hash_indicator
from blindmatch.core.owner import Owner
from blindmatch.core.round_node import NodeRound
from blindmatch.core.secp256k1 import SecretScalar, base_mul, mul
from blindmatch.core.spec import Policy
from blindmatch.core.states import NodePhase
from blindmatch.runtime import serde_v2
from blindmatch.v1 import node_pb2 as v1
from blindmatch.v2 import node_pb2
from coordinator.driver import CommitteeDriver
from tests import memscan
from tests.byhand import HandRound, Puppet, v2_stubs
from tests.federation import (
    Federation,
    NodeData,
    Setup,
    expected_pairwise,
    make_datasets,
    node_certificates,
    round_spec,
    signed_spec,
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


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, pki: FederationPki) -> Iterator[Env]:
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
        yield Env(fed, data)
    finally:
        fed.close()


@pytest.fixture
def received(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[node_pb2.DeliverRequest]]:
    """Every v2 delivery a node parses off the wire while the test runs, by receiving node."""
    got: dict[str, list[node_pb2.DeliverRequest]] = {}
    decode = serde_v2.delivery_from_proto

    def recording(
        msg: node_pb2.DeliverRequest, owner: str
    ) -> tuple[NodeDelivery, dict[str, SignedRoot]]:
        copy = node_pb2.DeliverRequest()
        copy.CopyFrom(msg)
        got.setdefault(owner, []).append(copy)
        return decode(msg, owner)

    monkeypatch.setattr(serde_v2, "delivery_from_proto", recording)
    return got


def deliveries(
    received: dict[str, list[node_pb2.DeliverRequest]], round_id: str
) -> dict[str, node_pb2.DeliverRequest]:
    """The one delivery each node received for the round."""
    got = {}
    for name, msgs in received.items():
        mine = [m for m in msgs if m.round_id == round_id]
        assert len(mine) <= 1, f"{name} received {len(mine)} deliveries"
        if mine:
            got[name] = mine[0]
    return got


# --- what a node receives in each mode -------------------------------------------------------------


def test_a_count_mode_node_receives_no_positions(
    env: Env, received: dict[str, list[node_pb2.DeliverRequest]]
) -> None:
    participants = ["alpha", "bravo", "charlie"]
    info = env.fed.run_round(participants, mode="count")
    assert info.state == "done", info.error
    got = deliveries(received, info.id)
    assert set(got) == set(participants)
    eligible = {n: env.data[n].eligible() for n in participants}
    for name, request in got.items():
        # nothing but the round, its mode, the per-partner counts and the signed roots (one per
        # participant, as revealed): no proof, no position, no hit
        assert [f.name for f, _ in request.ListFields()] == ["round_id", "mode", "shared", "roots"]
        assert request.mode == "count"
        assert dict(request.shared) == {
            p: len(eligible[name] & eligible[p]) for p in participants if p != name
        }
        assert sorted(r.owner for r in request.roots) == sorted(participants)
        with env.fed.store(name) as store:
            assert store.matches(info.id) == []


def test_a_threshold_mode_node_records_no_partner_names(
    env: Env, received: dict[str, list[node_pb2.DeliverRequest]]
) -> None:
    participants = ["alpha", "bravo", "charlie"]
    threshold = 2
    info = env.fed.run_round(participants, mode="threshold", threshold=threshold)
    assert info.state == "done", info.error
    got = deliveries(received, info.id)
    assert set(got) == set(participants)
    for name, request in got.items():
        assert (request.mode, request.has_hits, request.has_counts) == ("threshold", True, False)
        # positions only: the round did not ask for counts (a count of N names every holder)
        assert len(request.hits) > 0 and len(request.counts) == 0 and not request.shared
        # What the delivery does name (core/delivery.py, "threshold t"): each hit is proved
        # against the signed roots of threshold - 1 of its holders, chosen at random, named.
        named: dict[int, list[str]] = {}
        for proof in request.proofs:
            assert proof.partner in participants and proof.partner != name
            for position in proof.positions:
                named.setdefault(position, []).append(proof.partner)
        assert sorted(named) == sorted(request.hits)
        assert all(len(partners) == threshold - 1 for partners in named.values())
        # What the node keeps has no partner name: positions held by at least the threshold
        with env.fed.store(name) as store:
            rows = store.matches(info.id)
        assert len(rows) == len(request.hits)
        assert all(r.partners == [] and r.count is None for r in rows)


def test_a_pairwise_node_receives_each_match_proved_by_its_partners(
    env: Env, received: dict[str, list[node_pb2.DeliverRequest]]
) -> None:
    participants = ["alpha", "bravo", "charlie"]
    info = env.fed.run_round(participants)
    assert info.state == "done", info.error
    got = deliveries(received, info.id)
    assert set(got) == set(participants)
    eligible = {n: env.data[n].eligible() for n in participants}
    expected = expected_pairwise(env.data, participants)
    for name, request in got.items():
        assert request.mode == "pairwise"
        assert not (request.hits or request.counts or request.has_hits or request.shared)
        # one proof per partner sharing anything, covering exactly what the two share
        proved = {p.partner: len(p.positions) for p in request.proofs}
        assert proved == {p: len(eligible[name] & eligible[p]) for p in participants if p != name}
        assert all(len(p.positions) == len(p.indexes) for p in request.proofs)
        # no name of a node outside the round
        wire = request.SerializeToString()
        assert not [n for n in NAMES if n not in participants and n.encode() in wire]
        with env.fed.store(name) as store:
            matches = {(m.kind, m.value): set(m.partners) for m in store.matches(info.id)}
        assert matches == expected[name]


# --- no key material after a round ---------------------------------------------------------------


@dataclass
class Recorder:
    """The secrets the federation's nodes draw while a test runs: each committee member's share
    (``Member._share``, overwritten by ``Member.destroy``), each owner's blinding seed
    (``Owner._seed``, held only as long as the owner is: weakly referenced here), and the
    NodeRounds holding the position maps. A puppet's own secrets are the test's, not recorded.

    A share is recorded by its fingerprints only (``memscan``), taken from its buffer as it is
    drawn: a copy of it here would be found by the very scans that look for one."""

    nodes: frozenset[str]
    members: list[Member] = field(default_factory=list)
    shares: list[memscan.Fingerprint] = field(default_factory=list)  # of every member's share
    owners: list[tuple[weakref.ref[Owner], str, bytes]] = field(default_factory=list)
    rounds: list[NodeRound] = field(default_factory=list)

    def seeds(self) -> set[bytes]:
        """Every seed, as it is and in hex."""
        raw = {seed for _, _, seed in self.owners}
        return raw | {b.hex().encode() for b in raw}

    def holds_secret(self, value: object) -> bool:
        """Whether ``value`` is or holds a share (in any form ``memscan`` knows) or a seed."""
        if isinstance(value, SecretScalar):
            return not value.destroyed
        if type(value) is int and 0 < value < 1 << 256:
            value = value.to_bytes(32, "big")
        if isinstance(value, bytes | bytearray):
            return value in self.seeds() or bool(memscan.found_in(value, self.shares))
        return False

    def live_shares(self) -> list[str]:
        """The members whose share is not destroyed."""
        return sorted(m.name for m in self.members if m._share is not None)

    def live_owners(self) -> list[str]:
        """The owners (and so their seeds) something still holds."""
        gc.collect()
        return sorted(name for ref, name, _ in self.owners if ref() is not None)


@pytest.fixture
def recorder(env: Env, monkeypatch: pytest.MonkeyPatch) -> Recorder:
    rec = Recorder(frozenset(env.fed.nodes))
    member_init = Member.__init__
    owner_init = Owner.__init__

    def recording_member(self: Member, *args: Any, **kwargs: Any) -> None:
        member_init(self, *args, **kwargs)
        if self.name in rec.nodes:
            assert self._share is not None
            rec.members.append(self)
            rec.shares += memscan.fingerprints(self.name, memoryview(self._share._buf))

    def recording_owner(self: Owner, *args: Any, **kwargs: Any) -> None:
        owner_init(self, *args, **kwargs)
        if self.me in rec.nodes:
            rec.owners.append((weakref.ref(self), self.me, self._seed))

    class RecordingRound(NodeRound):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            rec.rounds.append(self)

    monkeypatch.setattr(Member, "__init__", recording_member)
    monkeypatch.setattr(Owner, "__init__", recording_owner)
    monkeypatch.setattr(node.rounds, "NodeRound", RecordingRound)
    return rec


def frames_holding(rec: Recorder) -> list[str]:
    """Functions of other threads that hold a secret (a share, a seed) in a local variable."""
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
                if rec.holds_secret(value)
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


def assert_no_key_material(env: Env, rec: Recorder, rounds: int, members: int, owners: int) -> None:
    """``rounds`` NodeRounds were prepared, ``members`` shares drawn, ``owners`` seeds drawn;
    none of them outlives its round."""
    assert len(rec.rounds) == rounds
    assert len(rec.members) == members and len(rec.owners) == owners
    # a round ends everywhere within the node's timeout, whatever happened to the coordinator
    until("every node has ended every round", lambda: ended_everywhere(env, rec), 10)
    for state in rec.rounds:
        assert state.phase in (NodePhase.DONE, NodePhase.ABORTED)
        assert state.positions_held == 0
    assert rec.live_shares() == [], "shares not destroyed after their round"
    # a thread serving a stream may take a moment to notice that its round has ended
    held: list[str] = []

    def seeds_let_go() -> bool:
        held[:] = rec.live_owners()
        return not held

    try:
        until("no owner's blinding seed is held", seeds_let_go, 5)
    except AssertionError:
        raise AssertionError(f"the blinding seeds of {held} outlive their round") from None
    until("no thread holds key material", lambda: not frames_holding(rec), 5)
    seeds = rec.seeds()
    for path in env.fed.stores.values():
        for file in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
            if file.exists():
                content = file.read_bytes()
                assert not [s for s in seeds if s in content], f"a seed in {file}"
                assert not memscan.found_in(content, rec.shares), f"a share in {file}"


@pytest.mark.parametrize("mode", ["pairwise", "threshold", "count"])
def test_no_key_material_after_a_round_that_succeeded(
    env: Env, recorder: Recorder, mode: str
) -> None:
    info = env.fed.run_round(NAMES[:3], mode=mode, threshold=2 if mode == "threshold" else 0)
    assert info.state == "done", info.error
    # three nodes, each a member of the committee (every participant) and an owner
    assert_no_key_material(env, recorder, rounds=3, members=3, owners=3)


def test_no_key_material_after_a_round_a_node_refused(env: Env, recorder: Recorder) -> None:
    info = env.fed.run_round(["alpha", "delta"])
    assert info.state == "failed"
    # delta prepared (drew its share), signed the transcript and refused at Begin, where the
    # sizes meet its caps; alpha had begun (drawn its seed) and is aborted
    alpha = len(env.data["alpha"].eligible())
    assert info.error == (
        f"delta refused Begin: RESOURCE_EXHAUSTED: alpha's set of {alpha} elements exceeds this "
        f"node's cap of {SIZE // 2} per partner (policy max_partner_set)"
    )
    assert_no_key_material(env, recorder, rounds=2, members=2, owners=2)


@pytest.mark.slow
def test_no_key_material_after_a_connection_cut_mid_stream(
    env: Env, recorder: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    relay = env.fed.relays["charlie"]
    cut = threading.Event()
    on_answer = CommitteeDriver._on_answer

    def cut_after_the_first_answer(self: CommitteeDriver, *args: Any, **kwargs: Any) -> Any:
        on_answer(self, *args, **kwargs)
        # Cut in the coordinator's own thread, before it relays anything more: the round is
        # past Begin and its first evaluation, and charlie still has requests to answer.
        if not cut.is_set() and self.progress()[0] > 0:
            relay.cut_after(0)  # and every later connection through charlie's relay
            relay.cut_now()
            cut.set()

    try:
        with monkeypatch.context() as mp:
            mp.setattr(CommitteeDriver, "_on_answer", cut_after_the_first_answer)
            info = env.fed.run_round(["alpha", "bravo", "charlie"], timeout=30)
        assert cut.is_set()
        assert info.state == "failed"
        assert "charlie" in info.error
        assert 0 < info.hops_done < info.hops_total  # it was cut mid-round, not before
        # charlie, out of reach of the coordinator's Abort, drops the round at its own timeout
        assert_no_key_material(env, recorder, rounds=3, members=3, owners=3)
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
    """A coordinator that stops talking mid-round, without closing its streams: alpha drops the
    round at its timeout, and the threads serving the streams let go of its secrets too.

    The coordinator is driven by hand (tests/byhand.py); alpha's partner zulu is a puppet with
    a real node certificate. Both of alpha's streams are held open: Evaluate, where alpha has
    answered one of zulu's requests with its share, and Own, where alpha has sent its requests
    and waits for zulu's answers."""
    round_id = uuid.uuid4().hex
    release = threading.Event()
    channel = env.fed.as_coordinator("alpha")
    own = None
    try:
        stub = v2_stubs({"alpha": channel})["alpha"]
        zulu = Puppet(pki.tls("zulu", "node"), size=5)
        message = round_spec(["alpha", "zulu"], kinds=["domain"], chunk_size=64, round_id=round_id)
        prepare = v1.PrepareRequest(signed_spec=signed_spec(message, pki=pki))
        certificates = node_certificates(pki, ["alpha", "zulu"])
        r = HandRound({"alpha": stub, "zulu": zulu}, prepare, certificates)
        r.prepare()
        r.sign()
        r.begin()
        # zulu's first request, signed with zulu's key: alpha answers it with its share
        element = hash_indicator("domain", "zulu.example")
        first = serde_v2.request_to_proto(zulu.machine.request([element]))

        def stalled() -> Iterator[node_pb2.SignedRequest]:
            yield first
            release.wait(30)  # then silence, with the stream still open

        evaluate = stub.Evaluate(stalled(), timeout=30)
        assert next(evaluate).answer.member == "alpha"
        own = r.open_own("alpha")
        requests = own.read_requests()  # alpha's set, then its subset checks, all to zulu
        assert requests[-1].request.proved and requests[-1].request.count == LAMBDA
        assert round_id in env.fed.nodes["alpha"].rounds.active()
        assert_no_key_material(env, recorder, rounds=1, members=1, owners=1)
        with pytest.raises(grpc.RpcError) as err:
            next(own.call)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        # the stream hears why alpha ended the round, not only that it has ended
        assert f"round {round_id} failed: timed out: no word from the coordinator" in (
            err.value.details() or ""
        )
    finally:
        release.set()
        if own is not None:
            own.cancel()
        channel.close()
    with env.fed.store("alpha") as store:
        entry = next(r for r in store.rounds() if r.round_id == round_id)
    assert entry.outcome == "failed" and "timed out" in (entry.reason or "")
    assert entry.blinded_for == {"zulu": 1}  # the one evaluation alpha answered for zulu


# --- no copy of a share in memory ----------------------------------------------------------------


def test_no_copy_of_any_share_is_left_in_memory_after_a_round(env: Env, recorder: Recorder) -> None:
    """Issue 18, requirement 5: after a round, the nodes' memory holds no copy of any member's
    share, in big-endian, little-endian or hex form.

    The nodes serve in this process, so this process's private memory is scanned, freed heap and
    every thread's stack included (``memscan.find``). What a pass shows: nothing the round ran
    (libsecp256k1, cffi, coincurve, Python, gRPC) left those bytes in memory the process can read,
    once every node has ended the round. What it does not show: that no copy existed while the
    round ran (a copy made and overwritten, a CPU register, a stack slot some later call reused:
    libsecp256k1 leaves the scalar of every point multiplication on the calling thread's stack,
    and only later calls overwrite it), nor that no transformed form exists (libsecp256k1 splits and recodes a scalar inside its
    multiplications: those intermediates are not the key's bytes and are not looked for), nor
    anything about memory the kernel or another process saw (a swapped-out page, a core dump).
    The share's own buffer is zero by then, so it is not found either."""
    info = env.fed.run_round(NAMES[:3])
    assert info.state == "done", info.error
    assert_no_key_material(env, recorder, rounds=3, members=3, owners=3)
    gc.collect()
    assert len(recorder.shares) == 3 * 3  # three members, three forms each
    assert memscan.find(recorder.shares) == []


def test_the_memory_scan_finds_a_share_kept_on_purpose() -> None:
    """The scan's positive control: copies kept of a share are found, in either byte order, and
    once they are overwritten nothing is (the share itself was used, then destroyed)."""
    share = SecretScalar()
    prints = memscan.fingerprints("the test's share", memoryview(share._buf))
    mul(base_mul(share), share)
    kept = bytearray(share._buf)
    backwards = bytearray(32)
    for i in range(32):
        backwards[i] = share._buf[31 - i]
    share.destroy()
    found = {f.what for f in memscan.find(prints)}
    assert found == {"the test's share (big-endian)", "the test's share (little-endian)"}
    kept[:] = backwards[:] = bytes(32)
    assert memscan.find(prints) == []
