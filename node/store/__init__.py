"""The node's private store: sightings, the import and round audit, round results, early warning.

``NodeStore`` (base.py) is the interface; ``Store`` (sqlite.py) keeps it in one SQLite file,
built from one module per job:

    schema.py     tables, versioned migrations, connection settings, times
    db.py         the connection: private file modes, the lock, transactions
    tlp.py        TLP levels and their order
    sightings.py  sightings, eligibility for a round, summary counts
    audit.py      the import and round audit log
    matches.py    round results: matches and partner counts
    watch.py      early warning: epochs, checks, alerts
    budgets.py    budgets across rounds: what was blinded for each partner, when
    connectors.py STIX ids and MISP uuids of imported indicators, source cursors, matches pushed to sinks
"""

from node.store.audit import AuditEntry, ImportAudit, RoundAudit
from node.store.base import NodeStore
from node.store.budgets import BudgetUse, Overdraft
from node.store.connectors import OutgoingMatch
from node.store.matches import MatchRow, PartnerCount
from node.store.schema import MIGRATIONS, SCHEMA_VERSION, StoreError, utc_now
from node.store.sightings import AddResult, Sighting, Stats, StoredSighting
from node.store.sqlite import Store
from node.store.tlp import TLP_LEVELS, normalize_tlp
from node.store.watch import AlertRow, CheckAudit, EpochAudit

__all__ = [
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "TLP_LEVELS",
    "AddResult",
    "AlertRow",
    "AuditEntry",
    "BudgetUse",
    "CheckAudit",
    "EpochAudit",
    "ImportAudit",
    "MatchRow",
    "NodeStore",
    "OutgoingMatch",
    "Overdraft",
    "PartnerCount",
    "RoundAudit",
    "Sighting",
    "Stats",
    "Store",
    "StoreError",
    "StoredSighting",
    "normalize_tlp",
    "utc_now",
]
