"""What a node store does, whatever holds it: the one interface the node, its CLI and the tests use.

Every method's contract is written here once; tests/test_store.py is the suite every
implementation passes. ``node.store.sqlite.Store`` (one SQLite file) is the implementation.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any, Self

import numpy as np
import numpy.typing as npt

from blindmatch.core.oprf import hash_indicators
from node.store.audit import AuditEntry, RoundAudit
from node.store.budgets import BudgetUse, Overdraft
from node.store.connectors import OutgoingMatch
from node.store.matches import MatchRow, PartnerCount
from node.store.sightings import (
    HASH_CHUNK,
    AddResult,
    EligibleRow,
    Forget,
    ForgetResult,
    Hasher,
    Sighting,
    Stats,
    StoredSighting,
)
from node.store.watch import AlertRow, CheckAudit, EpochAudit


class NodeStore(ABC):
    """A node's private store. Safe to share between threads; use as a context manager."""

    @abstractmethod
    def close(self) -> None:
        """Release the store; closing twice is harmless, using it afterwards raises StoreError."""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- sightings (node/store/sightings.py)

    @abstractmethod
    def add_sightings(
        self,
        sightings: Iterable[Sighting],
        *,
        source: str,
        default_tlp: str,
        cursor: tuple[str, str] | None = None,
        hasher: Hasher = hash_indicators,
    ) -> AddResult:
        """Store a batch in one transaction; if anything raises midway, nothing of it is stored.

        ``new`` counts indicators the store did not hold before; ``known`` counts the batch's
        sightings that merged into an indicator already stored (including one stored earlier in
        this same batch). A sighting's ``stix_id`` and ``misp_uuid`` are remembered for it; ``cursor``, (source,
        cursor), is saved in the same transaction, so the batch and the position after it are
        stored together or not at all.

        The indicators the batch creates get their H(v) from ``hasher`` (pass the node's
        blinding pool's ``hash_all`` to use every core), stored in the same transaction; those
        it merges into keep theirs.
        """

    @abstractmethod
    def lookup(self, kind: str, value: str) -> StoredSighting | None:
        """The stored indicator (kind, canonical value), or None if the store does not hold it."""

    @abstractmethod
    def stored_hashes(self, items: Sequence[tuple[str, str]]) -> list[bytes | None]:
        """The stored H(v) of each (kind, canonical value), in order; None for a value the store
        does not hold or whose hash is missing or of another hash version."""

    @abstractmethod
    def stale_hashes(self) -> int:
        """How many indicators have no hash, or one of another hash version."""

    @abstractmethod
    def fill_hashes(
        self,
        hasher: Hasher = hash_indicators,
        *,
        chunk: int = HASH_CHUNK,
        progress: Callable[[int], None] | None = None,
    ) -> int:
        """(Re)compute the stale hashes, ``chunk`` rows per transaction, hashing outside the
        store's lock; ``progress`` gets the running count. Returns how many were computed."""

    @abstractmethod
    def set_max_age(self, seconds: float | None) -> None:
        """Expire indicators not imported or pulled within ``seconds`` (None: never): they stay
        stored, but ``eligible`` and ``eligible_ids`` leave them out and ``stats`` counts them.
        node.toml's ``[policy] max_age``; an import or pull of a stored value renews it."""

    @abstractmethod
    def forget(self, what: Forget, *, who: str, how: str, dry_run: bool = False) -> ForgetResult:
        """Delete the indicators ``what`` selects and everything derived from them (matches,
        pushes, source ids, alerts, the stored hash), in one transaction, and audit it (``who``
        ran it, ``how``: what was asked). A source's indicators that another source also
        reported stay, without that source. ``dry_run``: count the same, delete nothing."""

    @abstractmethod
    def eligible(self, kinds: Collection[str], tlps: Collection[str]) -> list[EligibleRow]:
        """(sighting_id, kind, value, hash) of every indicator of one of ``kinds`` at one of
        ``tlps`` and not expired (``set_max_age``); hash is the stored H(v), or None when it is
        missing or stale.

        One consistent snapshot, ordered by sighting_id.
        """

    @abstractmethod
    def eligible_ids(self, kinds: Collection[str], tlps: Collection[str]) -> npt.NDArray[np.int64]:
        """The sighting ids of ``eligible``, in the same order, 8 bytes each: what a round
        holds of its set while it streams the rows (``rows_by_id``) one chunk at a time."""

    @abstractmethod
    def rows_by_id(self, ids: Sequence[int] | npt.NDArray[np.int64]) -> list[EligibleRow]:
        """The ``eligible`` row of each id, in the order given, whatever its TLP now (a round's
        set is fixed when it is prepared). A missing id is a StoreError: only ``forget``
        deletes sightings, so a value forgotten during a round ends that round."""

    @abstractmethod
    def stats(self) -> Stats:
        """Counts of sightings (per kind, TLP and source), imports and rounds."""

    # --- the audit log (node/store/audit.py)

    @abstractmethod
    def record_import(self, source: str, path: str, fmt: str, summary: Mapping[str, Any]) -> int:
        """Record one import (summary: counts per kind, known, skipped reasons, invalid count)."""

    @abstractmethod
    def record_round(
        self,
        round_id: str,
        *,
        started: str | datetime,
        coordinator: str,
        participants: Iterable[str],
        mode: str,
        threshold: int | None,
        kinds: Iterable[str],
        own_size: int,
        blinded_for: Mapping[str, int] | None = None,
        outcome: str,
        reason: str | None = None,
        finished: str | datetime | None = None,
        operator: str | None = None,
        epoch_seconds: float = 0.0,
    ) -> None:
        """Create or update the audit record of a round (``epoch_seconds`` > 0: a watch round).

        Write it with outcome 'started' when the round begins, then again with its outcome. An
        update keeps the first ``started`` time. ``blinded_for`` sets the counts of the partners
        it names and leaves the others (e.g. added by ``add_blinded``) as they are. ``operator``
        is who signed the round's spec, when it was verified.
        """

    @abstractmethod
    def end_round(self, round_id: str, *, outcome: str, reason: str | None) -> None:
        """Set the outcome of a recorded round (finished now), keeping everything else."""

    @abstractmethod
    def add_blinded(self, round_id: str, partner: str, n: int) -> None:
        """Add ``n`` to the elements this node blinded for ``partner`` in ``round_id``."""

    @abstractmethod
    def has_round(self, round_id: str) -> bool:
        """Whether ``round_id`` was ever recorded, whatever its outcome; without reading the log."""

    @abstractmethod
    def rounds(self) -> list[RoundAudit]:
        """Every recorded round, latest first."""

    @abstractmethod
    def audit(self, limit: int | None = None) -> list[AuditEntry]:
        """Imports, forgets and rounds, newest first (rounds by their start time)."""

    # --- round results (node/store/matches.py)

    @abstractmethod
    def record_matches(
        self, round_id: str, mode: str, rows: Iterable[tuple[int, list[str], int | None]]
    ) -> int:
        """Store a round's matches, (sighting_id, partners, count), in one transaction.

        Pairwise rows name their partners; threshold rows name no one and carry the count only
        if the round asked for counts (None: "held by at least the round's threshold").
        Returns the number of rows stored.
        """

    @abstractmethod
    def record_partner_counts(self, round_id: str, counts: Mapping[str, int]) -> None:
        """Store a count-mode round's result: partner -> indicators shared with that partner."""

    @abstractmethod
    def matches(self, round_id: str | None = None) -> list[MatchRow]:
        """Matches of one round, or of all rounds latest first; by kind and value within a round."""

    @abstractmethod
    def partner_counts(self, round_id: str | None = None) -> list[PartnerCount]:
        """Count-mode results of one round, or of all rounds latest first."""

    # --- early warning (node/store/watch.py)

    @abstractmethod
    def record_epoch(
        self,
        epoch_id: str,
        *,
        ends: str,
        coordinator: str,
        participants: Iterable[str],
        tags: int,
    ) -> None:
        """Record that this node keeps a key for a watch epoch (started now)."""

    @abstractmethod
    def close_epoch(self, epoch_id: str, reason: str) -> None:
        """Record that the epoch's key was destroyed (now, and why); a closed epoch stays closed."""

    @abstractmethod
    def epochs(self) -> list[EpochAudit]:
        """Every epoch this node kept a key for, newest first."""

    @abstractmethod
    def record_check(
        self,
        epoch_id: str,
        checker: str,
        elements: int,
        *,
        outcome: str,
        reason: str | None = None,
        hits: int | None = None,
    ) -> None:
        """Audit one check: this node's own (``checker`` is this node) or one it blinded for."""

    @abstractmethod
    def checks(self) -> list[CheckAudit]:
        """Every check in the audit log, newest first."""

    @abstractmethod
    def record_alerts(self, epoch_id: str, rows: Iterable[tuple[str, str, str, str]]) -> int:
        """Store alerts, (kind, value, partner, direction), in one transaction; how many."""

    @abstractmethod
    def alerts(self, after: int = 0, limit: int | None = None) -> list[AlertRow]:
        """Alerts with an id above ``after``, newest first."""

    # --- budgets across rounds (node/store/budgets.py)

    @abstractmethod
    def charge_budget(
        self,
        ref: str,
        charges: Mapping[str, Mapping[str, int]],
        *,
        at: float,
        since: float,
        limits: Mapping[str, int],
    ) -> Overdraft | None:
        """Charge ``charges`` (kind 'round' or 'check' -> partner -> elements) for ``ref`` at
        unix time ``at``, all or nothing, in one transaction.

        If some partner's charges of a kind after ``since`` plus its amount would exceed that
        kind's limit, nothing is charged and the first such (kind, then partner, by name) comes
        back with what it had used and asked; else everything is charged and None comes back.
        """

    @abstractmethod
    def budget_use(self, since: float) -> list[BudgetUse]:
        """Elements charged after unix time ``since``, per partner and kind, by partner."""

    # --- connectors (node/store/connectors.py)

    @abstractmethod
    def cursor(self, source: str) -> str | None:
        """The cursor saved for ``source`` by ``add_sightings``, or None before its first pull."""

    @abstractmethod
    def stix_refs(self, sighting_id: int) -> list[str]:
        """The STIX indicator ids the sighting was imported from, sorted."""

    @abstractmethod
    def misp_refs(self, sighting_id: int) -> list[str]:
        """The MISP attribute uuids the sighting was imported from, sorted."""

    @abstractmethod
    def unpushed(self, sink: str, round_id: str | None = None) -> list[OutgoingMatch]:
        """Matches (of one round, or all) not yet marked pushed to ``sink``, oldest round first."""

    @abstractmethod
    def outgoing(self, round_id: str | None = None) -> list[OutgoingMatch]:
        """Matches (of one round, or all), pushed or not, as ``unpushed`` reads them."""

    @abstractmethod
    def mark_pushed(self, sink: str, matches: Iterable[tuple[str, int]]) -> int:
        """Record (round_id, sighting_id) pairs as received by ``sink``; how many were new."""
