"""A real federation for end-to-end tests: nodes and a coordinator on 127.0.0.1, port 0.

Every part is the production code started in-process: gRPC servers with mTLS certificates from
the session's test CA (or plaintext on loopback when a test asks for ``insecure``), SQLite stores
under tmp_path, the nodes' blinding worker processes. Tests talk to the coordinator the way an
operator does: over gRPC with an operator certificate.
"""

from __future__ import annotations

import contextlib
import random
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import grpc

from blindmatch.core.canon import KINDS, canonicalize
from blindmatch.core.signing import ChunkClaim, SignedSpec, Signer, spec_digest
from blindmatch.core.spec import Policy
from blindmatch.core.watch_rules import DEFAULT_EPOCH_SECONDS
from blindmatch.runtime import net, serde
from blindmatch.v1 import coordinator_pb2, coordinator_pb2_grpc, node_pb2
from coordinator.config import CoordinatorConfig, TlsPaths
from coordinator.service import RunningCoordinator
from coordinator.service import start as start_coordinator
from node.config import DEFAULT_TLPS, NodeConfig
from node.server import RunningNode
from node.server import start as start_node
from node.store import Sighting, Store
from tests.pkifixtures import FederationPki
from tests.relay import Relay

Key = tuple[str, str]  # (kind, canonical value)

OPERATOR = "ops"  # the operator identity tests start rounds as
TEST_CHUNK = 256  # elements per chunk in test rounds: sets of a few hundred span several chunks


def signer(pki: FederationPki, name: str = OPERATOR, role: str = "operator") -> Signer:
    """A party of the test federation as a signer (an operator by default)."""
    tls = pki.tls(name, role)
    return Signer(tls.cert, tls.key)


def signed_spec(
    spec: node_pb2.RoundSpec, by: Signer | None = None, pki: FederationPki | None = None
) -> node_pb2.SignedSpec:
    """``spec`` (any message, valid or not: tests send hostile ones) signed as an operator
    would, issued now unless it says when; by ``by``, else by the test operator of ``pki``."""
    msg = node_pb2.RoundSpec()
    msg.CopyFrom(spec)
    if not msg.issued:
        msg.issued = time.time()
    if by is None:
        assert pki is not None, "sign with a Signer or the operator of a pki"
        by = signer(pki)
    return serde.signed_spec_to_proto(SignedSpec.sign(by, msg.SerializeToString()))


def signed_chunk(
    by: Signer, signed: node_pb2.SignedSpec, owner: str, hop: int, seq: int, elements: bytes
) -> node_pb2.Chunk:
    """A chunk of the round ``signed`` asks for, signed by ``by`` as the output of ``hop``."""
    round_id = node_pb2.RoundSpec.FromString(signed.spec).round_id
    claim = ChunkClaim(round_id, spec_digest(signed.spec), owner, hop, seq, elements)
    return serde.chunk_to_proto(owner, seq, elements, hop, by.sign(claim.message()))


def node_certificates(pki: FederationPki, names: Iterable[str]) -> dict[str, bytes]:
    """What an honest coordinator sends in RoutingStart: every participant's certificate."""
    return {name: pki.tls(name, "node").cert for name in names}


def round_spec(
    nodes: Sequence[str],
    mode: str = "pairwise",
    threshold: int = 0,
    kinds: Sequence[str] = (),
    *,
    epoch_seconds: float = 0.0,
    counts: bool = False,
    chunk_size: int = TEST_CHUNK,
    round_id: str | None = None,
    issued: float | None = None,
) -> node_pb2.RoundSpec:
    """The spec an operator's ``round start`` builds; ``mode`` may be "watch" as on its CLI."""
    watching = mode == "watch"
    return node_pb2.RoundSpec(
        round_id=round_id or uuid.uuid4().hex,
        participants=list(nodes),
        mode="pairwise" if watching else mode,
        threshold=threshold,
        kinds=list(kinds or KINDS),
        chunk_size=chunk_size,
        epoch_seconds=(epoch_seconds or DEFAULT_EPOCH_SECONDS) if watching else epoch_seconds,
        counts=counts,
        issued=time.time() if issued is None else issued,
    )


def start_request(
    pki: FederationPki, nodes: Sequence[str], mode: str = "pairwise", **kw: Any
) -> coordinator_pb2.StartRoundRequest:
    """What ``round start`` sends: the round spec, signed by the test operator."""
    return coordinator_pb2.StartRoundRequest(
        signed_spec=signed_spec(round_spec(nodes, mode, **kw), pki=pki)
    )


def sample_universe(n: int, seed: int) -> list[tuple[str, str, str]]:
    """(kind, raw, canonical) triples across every kind, raw spellings that need canonicalising."""
    rng = random.Random(seed)
    out: list[tuple[str, str, str]] = []
    makers = [
        ("ipv4", lambda i: f"10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}"),
        ("ipv6", lambda i: f"2001:DB8::{i:x}"),
        ("cidr", lambda i: f"172.{16 + i % 16}.{i // 16 % 256}.7/24"),
        ("domain", lambda i: f"Host{i}.Example.ORG."),
        ("url", lambda i: f"HTTP://www.evil{i}.example/a/./b/../c#frag"),
        ("email", lambda i: f"Phish{i}@Mail.Example"),
        ("md5", lambda i: f"{rng.getrandbits(128):032X}"),
        ("sha1", lambda i: f"{rng.getrandbits(160):040x}"),
        ("sha256", lambda i: f"{rng.getrandbits(256):064x}"),
        ("sha512", lambda i: f"{rng.getrandbits(512):0128x}"),
    ]
    for i in range(n):
        kind, make = makers[i % len(makers)]
        raw = make(i // len(makers) + seed * 1000)
        ind = canonicalize(kind, raw)
        out.append((ind.kind, raw, ind.value))
    return out


@dataclass
class NodeData:
    """What one nation imported: (kind, canonical) -> TLP, and the raw spellings used."""

    tlp: dict[Key, str] = field(default_factory=dict)
    raw: dict[Key, str] = field(default_factory=dict)

    def eligible(self, kinds: Iterable[str] = KINDS) -> set[Key]:
        ks = set(kinds)
        return {k for k, t in self.tlp.items() if t != "red" and k[0] in ks}


def make_datasets(
    names: Sequence[str], size: int, seed: int = 7, red_share: float = 0.05
) -> dict[str, NodeData]:
    """Random overlapping sets: each nation draws from a common universe, some of it TLP:RED."""
    universe = sample_universe(size * 3, seed)
    rng = random.Random(seed)
    data: dict[str, NodeData] = {}
    for name in names:
        d = NodeData()
        for kind, raw, value in rng.sample(universe, size):
            d.tlp[(kind, value)] = "red" if rng.random() < red_share else rng.choice(DEFAULT_TLPS)
            d.raw[(kind, value)] = raw
        data[name] = d
    return data


def load(store: Store, data: NodeData) -> None:
    store.add_sightings(
        (Sighting(k, v, data.raw[(k, v)], tlp=t) for (k, v), t in data.tlp.items()),
        source="test-feed",
        default_tlp="amber",
    )


def expected_pairwise(
    data: Mapping[str, NodeData], participants: Sequence[str], kinds: Iterable[str] = KINDS
) -> dict[str, dict[Key, set[str]]]:
    sets = {n: data[n].eligible(kinds) for n in participants}
    return {
        n: {
            key: {p for p in participants if p != n and key in sets[p]}
            for key in sets[n]
            if any(key in sets[p] for p in participants if p != n)
        }
        for n in participants
    }


class Federation:
    def __init__(
        self,
        root: Path,
        pki: FederationPki,
        names: Sequence[str],
        *,
        insecure: bool = False,
        relays: bool = False,
        policies: Mapping[str, Policy] | None = None,
        round_timeout: float = 60.0,
        node_timeout: float = 600.0,
        operators: Mapping[str, frozenset[str]] | None = None,
    ) -> None:
        self.root = root
        self.insecure = insecure
        self.nodes: dict[str, RunningNode] = {}
        self.configs: dict[str, NodeConfig] = {}
        self.relays: dict[str, Relay] = {}
        self.stores: dict[str, Path] = {}
        self.coordinator: RunningCoordinator | None = None
        try:
            for name in names:
                self.configs[name] = self._node_config(
                    root, pki, name, (policies or {}).get(name, Policy()), node_timeout
                )
                if operators and name in operators:
                    self.configs[name] = replace(self.configs[name], operators=operators[name])
                self.stores[name] = self.configs[name].store
                Store.open(self.configs[name].store).close()
            self.pki = pki
            self.round_timeout = round_timeout
            self.relayed = relays
            for name in names:
                self.start_node(name)
            self.start_coordinator()
        except BaseException:
            self.close()
            raise

    @staticmethod
    def _node_config(
        root: Path, pki: FederationPki, name: str, policy: Policy, timeout: float
    ) -> NodeConfig:
        files = pki.files(name, "node")
        (root / name).mkdir(parents=True, exist_ok=True)
        return NodeConfig(
            path=root / name / "node.toml",
            name=name,
            listen="127.0.0.1:0",
            store=root / name / "store.sqlite",
            coordinator="coordinator",
            workers=1,
            round_timeout=timeout,
            tls=TlsPaths(files.ca, files.cert, files.key),
            policy=policy,
            tlps=DEFAULT_TLPS,
            default_tlp="amber",
        )

    def start_node(self, name: str) -> RunningNode:
        node = start_node(self.configs[name], insecure=self.insecure)
        self.nodes[name] = node
        if self.relayed:
            old = self.relays.pop(name, None)
            if old is not None:
                old.close()
            self.relays[name] = Relay(("127.0.0.1", node.port))
        return node

    def node_address(self, name: str) -> str:
        if name in self.relays:
            return self.relays[name].address
        return f"127.0.0.1:{self.nodes[name].port}"

    def start_coordinator(self) -> RunningCoordinator:
        files = self.pki.files("coordinator", "coordinator")
        config = CoordinatorConfig(
            listen="127.0.0.1:0",
            tls=TlsPaths(files.ca, files.cert, files.key),
            nodes={name: self.node_address(name) for name in self.configs},
            state=self.root / "coordinator.sqlite",
            call_timeout=20.0,
            round_timeout=self.round_timeout,
            chunk_size=TEST_CHUNK,
        )
        self.coordinator = start_coordinator(config, insecure=self.insecure)
        op_target = f"127.0.0.1:{self.coordinator.port}"
        if self.relayed:
            self.relays["coordinator"] = Relay(("127.0.0.1", self.coordinator.port))
            op_target = self.relays["coordinator"].address
        tls = None if self.insecure else self.pki.tls(OPERATOR, "operator")
        self.channel = net.open_channel(
            op_target, tls, insecure=self.insecure, expect=net.Allow("coordinator")
        )
        self.stub = coordinator_pb2_grpc.CoordinatorServiceStub(self.channel)
        return self.coordinator

    def store(self, name: str) -> Store:
        return Store.open(self.stores[name])

    def run_round(
        self,
        nodes: Sequence[str],
        mode: str = "pairwise",
        threshold: int = 0,
        kinds: Sequence[str] = (),
        timeout: float = 120.0,
    ) -> coordinator_pb2.RoundInfo:
        """Start a round as an operator and follow it to its end."""
        info = self.stub.StartRound(
            start_request(self.pki, nodes, mode, threshold=threshold, kinds=kinds), timeout=10
        )
        return self.wait(info.id, timeout)

    def wait(self, round_id: str, timeout: float = 120.0) -> coordinator_pb2.RoundInfo:
        last = None
        for last in self.stub.WatchRound(
            coordinator_pb2.GetRoundRequest(id=round_id), timeout=timeout
        ):
            if last.state in ("done", "failed"):
                return last
        assert last is not None
        return last

    def close(self) -> None:
        if self.coordinator is not None:
            with contextlib.suppress(AttributeError):
                self.channel.close()
            self.coordinator.stop(grace=0.5)
            self.coordinator = None
        for node in self.nodes.values():
            with contextlib.suppress(Exception):
                node.stop(grace=0.5)
        self.nodes.clear()
        for relay in self.relays.values():
            relay.close()


def node_matches(store: Store, round_id: str) -> dict[Key, set[str]]:
    return {(m.kind, m.value): set(m.partners) for m in store.matches(round_id)}


def rpc_code(call: grpc.RpcError) -> grpc.StatusCode:
    code: grpc.StatusCode = call.code()
    return code
