"""Budgets across rounds (issue 10): the elements this node blinded for each partner, when.

One row per charge: a partner, the unix time of the charge, how many elements, what for (a
round's set or a check) and the round or epoch it belongs to. Whether a charge fits is
``node.budgets``'s decision; the store only makes "read what was used, then charge" one
transaction, so two rounds routed at the same moment cannot both spend the last of a budget.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from node.store.db import Database

KINDS: Final = ("round", "check")


@dataclass(frozen=True, slots=True)
class Overdraft:
    """The partner whose charge would not fit, with what it had used and what it asked."""

    partner: str
    used: int
    asked: int
    what: str = "round"  # the budget it would overdraw: 'round' or 'check'


@dataclass(frozen=True, slots=True)
class BudgetUse:
    partner: str
    what: str  # 'round' or 'check'
    elements: int  # charged since the window's start


def _require_kind(what: str) -> None:
    if what not in KINDS:
        raise ValueError(f"budget charge for {what!r}; expected one of {', '.join(KINDS)}")


class BudgetLedger(Database):
    """Charging and reading the budget ledger."""

    def charge_budget(
        self,
        ref: str,
        charges: Mapping[str, Mapping[str, int]],
        *,
        at: float,
        since: float,
        limits: Mapping[str, int],
    ) -> Overdraft | None:
        for what, amounts in charges.items():
            _require_kind(what)
            if any(n < 0 for n in amounts.values()):
                raise ValueError(f"negative budget charge for {ref}: {dict(amounts)}")
        with self._transaction() as conn:
            for what in sorted(charges):
                amounts = charges[what]
                for partner in sorted(amounts):
                    used = _used(conn, what, partner, since)
                    if used + amounts[partner] > limits[what]:
                        return Overdraft(partner, used, amounts[partner], what)
            conn.executemany(
                "INSERT INTO budget_charges (partner, at, elements, what, ref)"
                " VALUES (?, ?, ?, ?, ?)",
                [
                    (p, at, n, what, ref)
                    for what in sorted(charges)
                    for p, n in sorted(charges[what].items())
                    if n > 0
                ],
            )
        return None

    def budget_use(self, since: float) -> list[BudgetUse]:
        with self._reading() as conn:
            rows = conn.execute(
                "SELECT partner, what, SUM(elements) FROM budget_charges WHERE at > ?"
                " GROUP BY partner, what ORDER BY partner, what",
                (since,),
            ).fetchall()
        return [BudgetUse(partner=p, what=w, elements=n) for p, w, n in rows]


def _used(conn: sqlite3.Connection, what: str, partner: str, since: float) -> int:
    row = conn.execute(
        "SELECT COALESCE(SUM(elements), 0) FROM budget_charges"
        " WHERE what = ? AND partner = ? AND at > ?",
        (what, partner, since),
    ).fetchone()
    return int(row[0])
