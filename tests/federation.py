"""A real federation for end-to-end tests: nodes and a coordinator on 127.0.0.1, port 0.

Every part is the production code started in-process: gRPC servers with mTLS certificates from
the session's test CA (or plaintext on loopback when a test asks for ``insecure``), SQLite stores
under tmp_path, the nodes' hashing worker processes. Tests talk to the coordinator the way an
operator does: over gRPC with an operator certificate.

The one home of the end-to-end scaffolding: ``Federation`` is the factory, built from a ``Setup``
(nodes, what they hold, options such as ``metrics``); conftest.py's ``fed`` fixture builds one per
module from the module's ``federation_setup`` fixture. ``HOLDINGS`` is what nodes hold unless a
module says otherwise. Every server binds port 0 and reports the port it got; an address where
nothing may listen comes from ``refusing_address``. Waiting is tests/waiting.py's ``until``.
"""

from __future__ import annotations

import contextlib
import random
import socket
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import TracebackType
from typing import Any

import grpc

from blindmatch.cli.tomlconfig import TlsPaths
from blindmatch.core.canon import KINDS, canonicalize
from blindmatch.core.signing import SignedSpec, Signer
from blindmatch.core.spec import Policy
from blindmatch.core.watch_rules import DEFAULT_EPOCH_SECONDS, WatchSettings
from blindmatch.runtime import net, serde
from blindmatch.v1 import coordinator_pb2, coordinator_pb2_grpc, node_pb2
from blindmatch.v2 import watch_pb2, watch_pb2_grpc
from coordinator.config import CoordinatorConfig
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
ON = "127.0.0.1:0"  # where a test server listens: port 0, and the port it bound is read back


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


def node_certificates(pki: FederationPki, names: Iterable[str]) -> dict[str, bytes]:
    """What an honest coordinator sends with the transcript: every participant's certificate."""
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
    committee: Sequence[str] = (),
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
        committee=list(committee),
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


# --- what the nodes hold -----------------------------------------------------------------------

Holdings = Mapping[str, Sequence[tuple[str, str]]]  # node -> the (kind, canonical value)s it holds

NAMES = ("alpha", "bravo", "charlie")
# The federation's holdings unless a module needs others: a few domains of its own per node, and
# one every node holds (a round of any of them matches exactly that one).
HOLDINGS: Holdings = {
    name: [("domain", f"{name}{i}.example") for i in range(6)] + [("domain", "shared.example")]
    for name in NAMES
}


# For early-warning tests: a value alpha and charlie hold (a check finds it at the other), one only
# alpha holds, and bravo holding nothing of theirs.
WATCH_SHARED = ("domain", "shared.example")
WATCH_HOLDINGS: Holdings = {
    "alpha": [WATCH_SHARED, ("domain", "alpha-only.example")],
    "bravo": [("ipv4", "10.1.2.3")],
    "charlie": [WATCH_SHARED],
}


def domains(table: Mapping[str, Sequence[str]]) -> Holdings:
    """Holdings of domain names only: ``{node: [name, ...]}``."""
    return {node: [("domain", value) for value in values] for node, values in table.items()}


def held(holdings: Holdings, tlp: str = "amber") -> dict[str, NodeData]:
    """``holdings`` as imported, each value spelt canonically and marked ``tlp``."""
    return {
        node: NodeData(tlp=dict.fromkeys(pairs, tlp), raw={pair: pair[1] for pair in pairs})
        for node, pairs in holdings.items()
    }


# --- the factory --------------------------------------------------------------------------------

CHECK_BUDGET = 40  # elements a node blinds for each partner's checks per epoch, in watch tests


def watching(config: NodeConfig) -> NodeConfig:
    """A node for the watch tests: a small check budget; charlie's SIEM (checker/siem) may call
    its Check, no operator may (node.toml [watch] check_clients)."""
    clients = (("checker", "siem"),) if config.name == "charlie" else ()
    return replace(config, check_budget=CHECK_BUDGET, watch=WatchSettings(check_clients=clients))


@dataclass(frozen=True)
class Setup:
    """What a test federation is: its nodes, what they hold, and how they are configured."""

    names: Sequence[str] = NAMES
    # what each node imports once it serves; make_datasets() or held(HOLDINGS-like table)
    holdings: Mapping[str, NodeData] = field(default_factory=lambda: held(HOLDINGS))
    policies: Mapping[str, Policy] = field(default_factory=dict)
    operators: Mapping[str, frozenset[str]] = field(default_factory=dict)  # node.toml operators
    configure: Callable[[NodeConfig], NodeConfig] | None = None  # any other node.toml change
    configs: Mapping[str, NodeConfig] | None = None  # node.toml files already written (node init)
    metrics: bool = False  # [metrics] listen = "127.0.0.1:0" on every node and the coordinator
    coordinator: bool = True  # False: the nodes only, for a test that starts its own coordinator
    insecure: bool = False
    relays: bool = False
    round_timeout: float = 60.0
    node_timeout: float = 600.0


class Federation:
    """Nodes and a coordinator as ``setup`` says, serving on 127.0.0.1 port 0; a context manager
    that closes them."""

    def __init__(self, root: Path, pki: FederationPki, setup: Setup | None = None) -> None:
        setup = setup or Setup()
        self.root = root
        self.pki = pki
        self.setup = setup
        self.insecure = setup.insecure
        self.relayed = setup.relays
        self.round_timeout = setup.round_timeout
        self.nodes: dict[str, RunningNode] = {}
        self.configs: dict[str, NodeConfig] = {}
        self.relays: dict[str, Relay] = {}
        self.stores: dict[str, Path] = {}
        self.coordinator: RunningCoordinator | None = None
        try:
            for name in setup.names:
                self.configs[name] = self._config(name)
                self.stores[name] = self.configs[name].store
                Store.open(self.configs[name].store).close()
            for name in setup.names:
                self.start_node(name)
            if setup.coordinator:
                self.start_coordinator()
            for name in setup.names:  # a table may hold more nodes than the federation has
                if name in setup.holdings:
                    with self.store(name) as store:
                        load(store, setup.holdings[name])
        except BaseException:
            self.close()
            raise

    def _config(self, name: str) -> NodeConfig:
        setup = self.setup
        if setup.configs is not None:
            config = setup.configs[name]
        else:
            policy = setup.policies.get(name, Policy())
            config = node_config(self.root, self.pki, name, policy, setup.node_timeout)
        if name in setup.operators:
            config = replace(config, operators=setup.operators[name])
        if setup.metrics:
            config = replace(config, metrics=ON)
        return setup.configure(config) if setup.configure else config

    def __enter__(self) -> Federation:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.close()

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
        """The coordinator, and the nodes told where it listens for their checks (node.toml
        ``coordinator_address``, known only once it has bound its port)."""
        files = self.pki.files("coordinator", "coordinator")
        config = CoordinatorConfig(
            listen=ON,
            tls=TlsPaths(files.ca, files.cert, files.key),
            nodes={name: self.node_address(name) for name in self.configs},
            state=self.root / "coordinator.sqlite",
            call_timeout=20.0,
            round_timeout=self.round_timeout,
            chunk_size=TEST_CHUNK,
            metrics=ON if self.setup.metrics else None,
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
        for node in self.nodes.values():
            if node.watch is not None:
                node.watch.connect_coordinator(f"127.0.0.1:{self.coordinator.port}")
        return self.coordinator

    def restart_coordinator(self) -> RunningCoordinator:
        assert self.coordinator is not None
        self.channel.close()
        self.coordinator.stop(grace=0.5)
        self.coordinator = None
        return self.start_coordinator()

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

    def start_watch(self, nodes: Sequence[str], epoch: float) -> coordinator_pb2.RoundInfo:
        """A watch round of ``nodes`` opening an epoch of ``epoch`` seconds, followed to its end."""
        info = self.stub.StartRound(
            start_request(self.pki, nodes, "watch", epoch_seconds=epoch), timeout=10
        )
        return self.wait(info.id, 60)

    def wait(self, round_id: str, timeout: float = 120.0) -> coordinator_pb2.RoundInfo:
        last = None
        for last in self.stub.WatchRound(
            coordinator_pb2.GetRoundRequest(id=round_id), timeout=timeout
        ):
            if last.state in ("done", "failed"):
                return last
        assert last is not None
        return last

    def as_coordinator(self, name: str) -> grpc.Channel:
        """A channel to node ``name`` holding the coordinator's real certificate: the one
        identity a node serves, so what it refuses is refused past its access policy."""
        return net.open_channel(
            f"127.0.0.1:{self.nodes[name].port}",
            self.pki.tls("coordinator", "coordinator"),
            insecure=False,
            expect=net.Allow("node", name),
        )

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


def node_config(
    root: Path, pki: FederationPki, name: str, policy: Policy | None = None, timeout: float = 600.0
) -> NodeConfig:
    """The node.toml of node ``name`` of a test federation, its files under ``root / name``."""
    files = pki.files(name, "node")
    (root / name).mkdir(parents=True, exist_ok=True)
    return NodeConfig(
        path=root / name / "node.toml",
        name=name,
        listen=ON,
        store=root / name / "store.sqlite",
        coordinator="coordinator",
        workers=1,
        round_timeout=timeout,
        tls=TlsPaths(files.ca, files.cert, files.key),
        policy=policy or Policy(),
        tlps=DEFAULT_TLPS,
        default_tlp="amber",
    )


# --- calling a node's Check ---------------------------------------------------------------------


def check(
    fed: Federation, node: str, values: list[str], *, as_name: str | None = None, role: str = "node"
) -> watch_pb2.NodeCheckReply:
    """Call the node's Check RPC the way its CLI or a SIEM does."""
    tls = fed.pki.tls(as_name or node, role)
    address = f"127.0.0.1:{fed.nodes[node].port}"
    expect = net.Allow("node", node)
    with net.open_channel(address, tls, insecure=False, expect=expect) as channel:
        reply: watch_pb2.NodeCheckReply = watch_pb2_grpc.NodeWatchServiceStub(channel).Check(
            watch_pb2.NodeCheckRequest(values=values), timeout=30
        )
    return reply


def partners_of(reply: watch_pb2.NodeCheckReply) -> dict[str, set[str]]:
    return {r.canonical or r.value: set(r.partners) for r in reply.results}


# --- addresses ----------------------------------------------------------------------------------


@contextlib.contextmanager
def refusing_address() -> Iterator[str]:
    """A 127.0.0.1 address where nothing listens, for as long as the block runs: its port is
    bound from port 0 and held, never listened on, so every connection to it is refused and no
    other server can take it meanwhile."""
    with socket.socket() as held_port:
        held_port.bind(("127.0.0.1", 0))
        yield f"127.0.0.1:{held_port.getsockname()[1]}"


def node_matches(store: Store, round_id: str) -> dict[Key, set[str]]:
    return {(m.kind, m.value): set(m.partners) for m in store.matches(round_id)}


def rpc_code(call: grpc.RpcError) -> grpc.StatusCode:
    code: grpc.StatusCode = call.code()
    return code
