"""What a participant learns about its own set, by position, in each mode of a round.

A node's verified delivery (``committee.CommitteeNode.by_position``) is one of these, indexed by
the positions of its shuffled set; ``round_node.NodeRound.resolve`` maps them to its sightings:

- ``pairwise``: for each of its positions held by at least one partner, those partners;
- ``threshold t``: its positions held by at least ``t`` participants (itself included), and only
  if the round asks for counts, how many hold each (a count of N names every holder);
- ``count``: for each partner, how many of its indicators that partner also holds; no positions.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

MODES = ("pairwise", "threshold", "count")
MAX_PARTICIPANTS = 64  # v1 matched on a 64-bit mask of holders per tag; the bound stayed


@dataclass(frozen=True, slots=True)
class PairwiseResult:
    positions: tuple[int, ...]
    partners: tuple[
        tuple[int, ...], ...
    ]  # participant indices holding each position, self excluded


@dataclass(frozen=True, slots=True)
class ThresholdResult:
    positions: tuple[int, ...]
    counts: tuple[int, ...]  # participants holding each position, self included; () without counts


@dataclass(frozen=True, slots=True)
class CountResult:
    shared: Mapping[int, int]  # partner index -> number of this participant's tags it holds


Delivery = PairwiseResult | ThresholdResult | CountResult
