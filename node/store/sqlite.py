"""The node store in one SQLite file: the parts, one per job, put together behind ``NodeStore``."""

from __future__ import annotations

from node.store.audit import AuditLog
from node.store.base import NodeStore
from node.store.budgets import BudgetLedger
from node.store.connectors import ConnectorTable
from node.store.matches import MatchTable
from node.store.sightings import SightingsTable
from node.store.watch import WatchLog


class Store(
    SightingsTable, AuditLog, MatchTable, WatchLog, BudgetLedger, ConnectorTable, NodeStore
):
    """The node's private store. Open with ``Store.open(path)``; use as a context manager.

    Each part runs its own SQL on the connection ``node.store.db.Database`` holds; the
    interface, ``NodeStore``, states what every method promises.
    """
