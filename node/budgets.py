"""Budgets across rounds (issue 10, docs/OPERATIONS.md): what this node blinds for each partner.

A round's caps (``[policy]``) bound one round; a coordinator could still run many small rounds
and add them up to a dictionary of guesses blinded under this node's keys. So every element this
node blinds for a partner is charged to that partner, and the sum over a rolling window may not
pass the ``[budgets]`` limits of node.toml: one for partners' sets in rounds, one for their checks.

Charges are made only after a round or check was validated, all partners at once or none: a
refused round or check costs nothing. The ledger is the store's (``NodeStore.charge_budget``);
the decisions and the refusal's wording are here. Time is passed in (``clock``) so tests can
move it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final

from blindmatch.core.errors import CapExceeded
from node.store import NodeStore, Overdraft

DEFAULT_WINDOW: Final = 24 * 3600.0
# Two rounds a day at the default per-partner round cap (Policy.max_partner_set, 2M).
DEFAULT_ROUND_ELEMENTS: Final = 4_000_000
DEFAULT_CHECK_ELEMENTS: Final = 100_000

# The node.toml key that sets each kind's limit, named in refusals.
KEYS: Final = {"round": "budgets.round_elements", "check": "budgets.check_elements"}


class BudgetExceeded(CapExceeded):
    """A partner's budget for the window would be exceeded; nothing was charged."""


def window_text(seconds: float) -> str:
    """A window as node.toml spells it: 24h, 90m, 7d, 45s (days only from two on)."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= max(size, 2 * 86400 if unit == "d" else 0) and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


@dataclass(frozen=True, slots=True)
class BudgetPolicy:
    """node.toml ``[budgets]``: per partner, per rolling window."""

    window: float = DEFAULT_WINDOW  # seconds
    round_elements: int = DEFAULT_ROUND_ELEMENTS
    check_elements: int = DEFAULT_CHECK_ELEMENTS

    def limit(self, what: str) -> int:
        if what == "round":
            return self.round_elements
        if what == "check":
            return self.check_elements
        raise ValueError(f"no budget for {what!r}; expected one of {', '.join(KEYS)}")

    def since(self, now: float) -> float:
        """Charges after this time count against the window ending ``now``."""
        return now - self.window

    def refusal(self, me: str, what: str, ref: str, over: Overdraft) -> BudgetExceeded:
        asks = f"this round {ref} asks" if what == "round" else f"watch round {ref}'s checks ask"
        return BudgetExceeded(
            f"budget {KEYS[what]} of {me} exhausted for partner {over.partner}: used "
            f"{over.used:,} of {self.limit(what):,} elements in the last "
            f"{window_text(self.window)} (window), {asks} {over.asked:,}; "
            f"nothing was charged (raise [budgets] in {me}'s node.toml, or wait)"
        )


@dataclass(frozen=True, slots=True)
class BudgetLine:
    """One partner's use of both budgets in the window ending now, for ``node audit``."""

    partner: str
    round_used: int
    round_limit: int
    check_used: int
    check_limit: int
    window: str


class Budgets:
    """This node's budgets, charged in its store."""

    def __init__(
        self,
        store: NodeStore,
        policy: BudgetPolicy,
        me: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.policy = policy
        self.me = me
        self.clock = clock

    def _charge(self, ref: str, charges: Mapping[str, Mapping[str, int]]) -> None:
        now = self.clock()
        over = self.store.charge_budget(
            ref,
            charges,
            at=now,
            since=self.policy.since(now),
            limits={what: self.policy.limit(what) for what in charges},
        )
        if over is not None:
            raise self.policy.refusal(self.me, over.what, ref, over)

    def charge_round(
        self, round_id: str, sizes: Mapping[str, int], checks: Mapping[str, int] | None = None
    ) -> None:
        """Charge every partner's announced set size (validated) to its round budget, and for a
        watch round the checks it may ask for in the epoch to its check budget, or refuse the
        round (BudgetExceeded, RESOURCE_EXHAUSTED) charging nothing."""
        charges = {"round": {p: n for p, n in sizes.items() if p != self.me}}
        if checks:
            charges["check"] = {p: n for p, n in checks.items() if p != self.me}
        self._charge(round_id, charges)

    def use(self) -> list[BudgetLine]:
        used: dict[str, dict[str, int]] = {}
        for row in self.store.budget_use(self.policy.since(self.clock())):
            used.setdefault(row.partner, {})[row.what] = row.elements
        return [
            BudgetLine(
                partner=partner,
                round_used=kinds.get("round", 0),
                round_limit=self.policy.round_elements,
                check_used=kinds.get("check", 0),
                check_limit=self.policy.check_elements,
                window=window_text(self.policy.window),
            )
            for partner, kinds in sorted(used.items())
        ]
