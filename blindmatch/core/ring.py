"""The ring: the participants in the coordinator's order, around which every set travels once.

The set of the participant at place o (of N) is held at hop h by the participant at place
(o + h) mod N: hop 0 is the owner itself, hops 1 to N - 1 its partners in ring order. What a hop
outputs is labelled with that hop and signed by its holder, so what hop h takes in must come
from the holder of hop h - 1. A round's sets and a watch check's chunks travel the same ring.

Places are indices into ``participants``: each caller turns names into places with its own
refusal (a round's ``BadMessage``, a check's ``PolicyRefusal``).
"""

from __future__ import annotations

from collections.abc import Sequence


def hop_of(size: int, owner: int, node: int) -> int:
    """Which hop of the owner's set the participant at place ``node`` is (0: its own set)."""
    return (node - owner) % size


def holder(participants: Sequence[str], owner: int, hop: int) -> str:
    """Who holds the owner's set at ``hop``, and signs its output of that hop."""
    return participants[(owner + hop) % len(participants)]


def partners(participants: Sequence[str], owner: int) -> tuple[str, ...]:
    """The owner's partners in ring order: the holders of hops 1 to N - 1."""
    return tuple(holder(participants, owner, hop) for hop in range(1, len(participants)))
