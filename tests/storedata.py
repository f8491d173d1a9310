"""Rows written straight into a node's store, for tests of what reads them back (push, matches)."""

from __future__ import annotations

from collections.abc import Sequence

from node.store import NodeStore

# The top of a connectors test's node.toml: node alpha, its TLS files (never read by those tests).
NODE_TOML_HEAD = """
name = "alpha"
listen = "127.0.0.1:0"
[tls]
ca = "ca.pem"
cert = "alpha.pem"
key = "alpha.key"
"""


def record_pairwise_round(store: NodeStore, sighting_ids: Sequence[int]) -> None:
    """A done pairwise round, round-1 between alpha and bravo, in which bravo holds every one of
    ``sighting_ids``."""
    store.record_round(
        "round-1",
        started="2026-01-06T00:00:00Z",
        coordinator="coordinator",
        participants=["alpha", "bravo"],
        mode="pairwise",
        threshold=None,
        kinds=["ipv4", "domain"],
        own_size=len(sighting_ids),
        outcome="done",
        finished="2026-01-06T00:01:00Z",
    )
    store.record_matches("round-1", "pairwise", [(i, ["bravo"], None) for i in sighting_ids])
