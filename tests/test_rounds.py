"""End-to-end rounds: real nodes and a real coordinator over gRPC with mTLS on 127.0.0.1.

Each result is compared with plain set intersection of the canonical values the nodes imported,
TLP:RED excluded, in every mode.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path

import grpc
import pytest

from blindmatch.core.delivery import NodeDelivery, SignedRoot
from blindmatch.core.oprf import LAMBDA, hash_indicators
from blindmatch.core.spec import Policy
from blindmatch.runtime import serde_v2
from blindmatch.v1 import coordinator_pb2
from blindmatch.v2 import node_pb2
from tests.federation import (
    Federation,
    NodeData,
    Setup,
    expected_pairwise,
    make_datasets,
    node_matches,
    start_request,
)
from tests.pkifixtures import FederationPki

NAMES = ("alpha", "bravo", "charlie", "delta", "echo")
DATA = make_datasets(NAMES, 400)


@pytest.fixture(scope="module")
def federation_setup() -> Setup:
    return Setup(NAMES, DATA, policies={"echo": Policy(partners=frozenset({"alpha", "bravo"}))})


@pytest.mark.parametrize("participants", [NAMES[:2], NAMES[:3], NAMES[:4]])
def test_pairwise_round_equals_plain_intersection(
    fed: Federation, participants: tuple[str, ...]
) -> None:
    federation, data = fed, DATA
    info = federation.run_round(participants)
    assert info.state == "done", info.error
    expected = expected_pairwise(data, participants)
    for name in participants:
        with federation.store(name) as store:
            got = node_matches(store, info.id)
        assert got == expected[name]
        assert all(key[0] != "red" for key in got)
        assert info.sizes[name] == len(data[name].eligible())
        assert info.match_counts[name] == len(expected[name])
    assert any(expected[n] for n in participants)  # the data does overlap


def test_tlp_red_never_matches(fed: Federation) -> None:
    federation, data = fed, DATA
    info = federation.run_round(NAMES[:4])
    assert info.state == "done", info.error
    red_everywhere = {key for key, tlp in data["alpha"].tlp.items() if tlp == "red"} & set(
        data["bravo"].tlp
    )
    assert red_everywhere  # the data has RED sightings others also hold
    with federation.store("alpha") as store:
        got = node_matches(store, info.id)
    assert not red_everywhere & set(got)


def threshold_round(
    federation: Federation, participants: tuple[str, ...], threshold: int, counts: bool
) -> coordinator_pb2.RoundInfo:
    """A threshold round; ``counts`` as the operator's signed spec asks (round start --counts)."""
    request = start_request(
        federation.pki, participants, "threshold", threshold=threshold, counts=counts
    )
    return federation.wait(federation.stub.StartRound(request, timeout=10).id)


@pytest.mark.parametrize("counts", [False, True])
@pytest.mark.parametrize("threshold", [2, 3])
def test_threshold_round_gives_counts_without_names(
    fed: Federation,
    threshold: int,
    counts: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    federation, data = fed, DATA
    participants = NAMES[:4]
    received: dict[str, node_pb2.DeliverRequest] = {}
    decode = serde_v2.delivery_from_proto

    def recording(
        msg: node_pb2.DeliverRequest, owner: str
    ) -> tuple[NodeDelivery, dict[str, SignedRoot]]:
        received[owner] = msg  # what reached a node, as it parsed it off the wire
        return decode(msg, owner)

    monkeypatch.setattr(serde_v2, "delivery_from_proto", recording)
    info = threshold_round(federation, participants, threshold, counts)
    assert info.state == "done", info.error
    sets = {n: data[n].eligible() for n in participants}
    for name in participants:
        holders = {key: sum(key in sets[p] for p in participants) for key in sets[name]}
        expected = {key: c if counts else None for key, c in holders.items() if c >= threshold}
        with federation.store(name) as store:
            rows = store.matches(info.id)
        assert {(r.kind, r.value): r.count for r in rows} == expected
        assert all(r.partners == [] and r.threshold == threshold for r in rows)
    # without counts no count crossed the wire: a count of N would name every holder
    assert set(received) == set(participants)
    assert any(msg.hits for msg in received.values())
    for name, msg in received.items():
        assert (msg.mode, msg.has_hits, msg.has_counts) == ("threshold", True, counts)
        assert len(msg.counts) == (len(msg.hits) if counts else 0)
        assert not msg.shared
        # What v2 does reveal (core/delivery.py): each hit is proved against the signed roots
        # of some of its holders, named. Without counts, exactly threshold - 1 of them; with
        # counts, every other holder. The node records none of these names (above).
        proved: Counter[int] = Counter()
        for proof in msg.proofs:
            assert proof.partner in participants and proof.partner != name
            proved.update(proof.positions)
        needed = [c - 1 for c in msg.counts] if counts else [threshold - 1] * len(msg.hits)
        assert dict(proved) == {h: n for h, n in zip(msg.hits, needed, strict=True)}


def test_count_round_gives_only_per_partner_counts(
    fed: Federation,
) -> None:
    federation, data = fed, DATA
    participants = NAMES[:3]
    info = federation.run_round(participants, mode="count")
    assert info.state == "done", info.error
    sets = {n: data[n].eligible() for n in participants}
    for name in participants:
        with federation.store(name) as store:
            assert store.matches(info.id) == []
            counts = {c.partner: c.count for c in store.partner_counts(info.id)}
        assert counts == {p: len(sets[name] & sets[p]) for p in participants if p != name}


def test_kinds_restrict_the_round(fed: Federation) -> None:
    federation, data = fed, DATA
    participants = NAMES[:2]
    info = federation.run_round(participants, kinds=["domain", "sha256"])
    assert info.state == "done", info.error
    expected = expected_pairwise(data, participants, kinds=["domain", "sha256"])
    for name in participants:
        with federation.store(name) as store:
            got = node_matches(store, info.id)
        assert got == expected[name]
        assert {k for k, _ in got} <= {"domain", "sha256"}
        assert info.sizes[name] == len(data[name].eligible(["domain", "sha256"]))


def test_policy_outside_the_allow_list_refuses_the_round(
    fed: Federation,
) -> None:
    federation = fed
    info = federation.run_round(["alpha", "charlie", "echo"])
    assert info.state == "failed"
    assert "echo" in info.error and "charlie" in info.error
    assert "PERMISSION_DENIED" in info.error
    for name in ("alpha", "charlie", "echo"):
        with federation.store(name) as store:
            assert store.matches(info.id) == []
            assert not federation.nodes[name].rounds.active()
    # echo matches with the partners its policy names
    ok = federation.run_round(["alpha", "bravo", "echo"])
    assert ok.state == "done", ok.error


def test_every_round_is_in_each_nodes_audit(fed: Federation) -> None:
    federation, data = fed, DATA
    info = federation.run_round(NAMES[:3])
    assert info.state == "done"
    with federation.store("bravo") as store:
        entry = next(r for r in store.rounds() if r.round_id == info.id)
    assert entry.outcome == "done"
    assert entry.participants == list(NAMES[:3])
    assert entry.own_size == len(data["bravo"].eligible())
    # bravo, a member of the committee, answered every partner's whole set and its subset checks
    assert entry.blinded_for == {
        "alpha": len(data["alpha"].eligible()) + LAMBDA,
        "charlie": len(data["charlie"].eligible()) + LAMBDA,
    }


def test_unknown_node_is_invalid_argument(fed: Federation) -> None:
    federation = fed
    with pytest.raises(grpc.RpcError) as err:
        federation.stub.StartRound(start_request(federation.pki, ["alpha", "zulu"]), timeout=5)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "zulu" in (err.value.details() or "")


def _forbidden_strings(data: dict[str, NodeData]) -> list[bytes]:
    """Every raw value, canonical value, their md5/sha1/sha256 and unkeyed group element, H(x)
    (the 65-byte point a node stores, sent only blinded as r·H(x))."""
    needles: list[bytes] = []
    for d in data.values():
        for (kind, value), raw in d.raw.items():
            for text in {value, raw}:
                b = text.encode()
                needles.append(b)
                for h in (hashlib.md5, hashlib.sha1, hashlib.sha256):
                    digest = h(b).digest()
                    needles += [digest, digest.hex().encode(), digest.hex().upper().encode()]
            needles += hash_indicators([(kind, value)])
    return needles


@pytest.mark.parametrize("mode", ["pairwise", "threshold", "count"])
def test_wire_carries_no_value_and_no_unkeyed_hash(
    tmp_path: Path, pki: FederationPki, mode: str
) -> None:
    """Plaintext on loopback through recording relays: every byte between all parties is searched."""
    names = NAMES[:3]
    data = make_datasets(names, 150, seed=11, red_share=0.0)
    federation = Federation(tmp_path, pki, Setup(names, data, insecure=True, relays=True))
    try:
        info = federation.run_round(names, mode=mode, threshold=2 if mode == "threshold" else 0)
        assert info.state == "done", info.error
        wire = b"".join(r.recorded for r in federation.relays.values())
    finally:
        federation.close()
    # the relays did see the round: every set travelled through them
    sizes = sum(len(d.eligible()) for d in data.values())
    assert len(wire) > sizes * 32 * len(names)
    leaks = Counter(n for n in _forbidden_strings(data) if len(n) >= 8 and n in wire)
    assert not leaks, f"{len(leaks)} forbidden strings on the wire, e.g. {next(iter(leaks))!r}"
