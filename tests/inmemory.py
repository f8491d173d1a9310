"""Rounds of protocol v2 driven in memory between real signing parties (core.committee): the
parties, and the steps tests/test_committee_round.py, tests/test_watch_epoch.py and
tests/test_protocol.py share."""

from __future__ import annotations

import datetime
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from blindmatch.core.committee import (
    CommitteeCoordinator,
    CommitteeNode,
    RoundTerms,
    SignedAnswer,
    SignedRequest,
)
from blindmatch.core.delivery import NodeDelivery, SignedRoot
from blindmatch.core.evaluation import Transcript
from blindmatch.core.signing import Signer, Trust
from blindmatch.runtime.pki import issue, new_ca
from tests.values import hashes

NAMES = ("alpha", "bravo", "charlie", "delta")
CA = new_ca("committee round test CA")
CERTS = {name: issue(CA, name, "node") for name in NAMES}
SIGNERS = {name: Signer(c.cert_pem, c.key_pem) for name, c in CERTS.items()}
NOW = datetime.datetime.now(datetime.UTC)
TRUST = Trust(CA.cert_pem)
PARTIES = {
    name: TRUST.party(c.cert_pem, now=NOW, role="node", names=[name]) for name, c in CERTS.items()
}
SPEC = b"\x09" * 32


@dataclass
class Round:
    terms: RoundTerms
    nodes: dict[str, CommitteeNode]
    coordinator: CommitteeCoordinator


def sign_all(
    r: Round, shown: Callable[[str, Transcript], Transcript] | None = None
) -> dict[str, bytes]:
    transcript = None
    for node in r.nodes.values():
        transcript = r.coordinator.on_prepared(node.prepared()) or transcript
    assert transcript is not None
    parties = {n: PARTIES[n] for n in r.nodes}
    signatures = None
    for name, node in r.nodes.items():
        view = shown(name, transcript) if shown else transcript
        signatures = r.coordinator.on_signature(name, node.sign_transcript(view, parties))
    assert signatures is not None
    return signatures


# What a member the coordinator colludes with sends instead of its answer: identity when honest.
Cheat = Callable[[str, SignedRequest, SignedAnswer], SignedAnswer]


def evaluate(r: Round, sets: Mapping[str, Sequence[str]], cheat: Cheat | None = None) -> None:
    for owner, values in sets.items():
        node = r.nodes[owner]
        hs = hashes(values)
        asks = [node.request(hs[i : i + 32]) for i in range(0, len(hs), 32)]
        asks.append(node.challenge())
        for signed in asks:
            for member in r.coordinator.members_for(signed):
                answer = r.nodes[member].on_request(signed)
                node.on_answer(cheat(member, signed, answer) if cheat else answer)


def reveal_all(r: Round) -> dict[str, tuple[NodeDelivery, dict[str, SignedRoot]]]:
    """Every node's signed root, then its tags once every root is in: what the coordinator
    delivers to each node, with the roots its proofs are made against."""
    roots = None
    for node in r.nodes.values():
        roots = r.coordinator.on_root(node.root()) or roots
    assert roots is not None
    delivered = None
    for node in r.nodes.values():
        delivered = r.coordinator.on_tags(node.reveal(roots)) or delivered
    assert delivered is not None
    return delivered
