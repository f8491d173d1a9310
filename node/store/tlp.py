"""Traffic Light Protocol levels: their names, spellings feeds use, and their order.

The store keeps a level as its rank (0 = clear ... 4 = red), so the stricter of two is the max.
"""

from __future__ import annotations

from typing import Final

# Least to most restrictive; the index is the rank stored in the database.
TLP_LEVELS: Final = ("clear", "green", "amber", "amber+strict", "red")
_TLP_RANK: Final = {name: rank for rank, name in enumerate(TLP_LEVELS)}
# TLP 1.0 called "clear" "white"; feeds still carry it.
_TLP_ALIASES: Final = {"white": "clear"}


def normalize_tlp(text: str) -> str:
    """Return the TLP 2.0 level name for ``text``: "TLP:AMBER" -> "amber", "white" -> "clear"."""
    name = text.strip().lower()
    if name.startswith("tlp:"):
        name = name[4:].strip()
    name = _TLP_ALIASES.get(name, name)
    if name not in _TLP_RANK:
        raise ValueError(
            f"unknown TLP level {text!r}: expected one of {', '.join(TLP_LEVELS)} "
            "(optionally prefixed 'TLP:'; TLP 1.0 'white' is read as 'clear')"
        )
    return name


def tlp_rank(text: str) -> int:
    return _TLP_RANK[normalize_tlp(text)]
