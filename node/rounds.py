"""The node's round registry: the rounds it is in, when they time out, and how each one ends.

A round enters with ``prepare`` and leaves through ``end``, once: its share destroyed and its audit
record written with the outcome (done, failed, aborted or refused). The reaper ends a round the
coordinator has been silent on for the round's timeout; ``shutdown`` ends them all.

Early warning (``WatchHooks``, node/watch.py) hears of a watch round twice: at Prepare, where it
may refuse it, and at its end, where a stored delivery opens the epoch the round staged and any
other end, or an Abort of a round already delivered, closes it.
It looks rounds up (BeginEpoch) in ``LiveRounds``, the table of live rounds the registry keeps:
built first and handed to both, so neither is wired to the other after it is built.

``prepare`` acts on a spec only once its operator's signature is verified (``node.auth``), and
``sign_transcript`` only once every participant's certificate is; the operator is in the audit.
Budgets across rounds (``node.budgets``) are charged at ``begin``, after every check passed.
"""

from __future__ import annotations

import collections
import contextlib
import copy
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, Protocol

from blindmatch.core.committee import CommitteeNode, Handover, RoundTerms
from blindmatch.core.errors import (
    PolicyRefusal,
    ProtocolError,
    RoundIdUsed,
    UnknownRound,
    WrongPhase,
)
from blindmatch.core.evaluation import Transcript
from blindmatch.core.match import Delivery
from blindmatch.core.oprf import LAMBDA
from blindmatch.core.orders import ScheduledRun
from blindmatch.core.round_node import Candidate, Ids, NodeRound
from blindmatch.core.signing import SignedSpec, Signs, Verifies
from blindmatch.core.spec import Policy, RoundSpec
from blindmatch.core.states import NODE, Outcome
from blindmatch.runtime.logs import about_round
from node.answerlog import SpilledAnswers
from node.auth import Authority
from node.budgets import Budgets
from node.metrics import NO_METRICS, NodeHooks
from node.store import RoundAudit, Store, utc_now

__all__ = [
    "LiveRound",
    "LiveRounds",
    "RoundIdUsed",
    "RoundRegistry",
    "StoreFailed",
    "fail_unfinished",
]

log = logging.getLogger("blindmatch.node")

RESTART_REASON = "node restarted during the round"
# A round's key lives at most this long after Prepare once the signed sizes are known: a base for
# the calls, and a generous allowance per element (v2 evaluates about 25,000 elements a second
# per core, 40 us each; 1 ms leaves a factor of 25 for a loaded machine and a large committee).
LIFETIME_BASE: Final = 600.0
LIFETIME_PER_ELEMENT: Final = 0.001


def lifetime_for(sizes: Mapping[str, int], cap: float) -> float:
    """Seconds a round of these signed set sizes may live after Prepare, at most ``cap``."""
    return min(cap, LIFETIME_BASE + LIFETIME_PER_ELEMENT * sum(sizes.values()))


class RoundEnded(WrongPhase):
    """A call for a round this node has ended: says how it ended, and why."""


class WatchHooks(Protocol):
    def admit(self, spec: RoundSpec) -> None:
        """Refuse (raise a ProtocolError) a watch round this node does not allow."""

    def check_caps(self, spec: RoundSpec) -> dict[str, int]:
        """What each partner may ask for its checks in the watch round's epoch."""

    def opened(
        self, spec: RoundSpec, handed: Handover, ids: Ids, coordinator: str, signer: Signs
    ) -> None:
        """The watch round's delivery is stored: open its epoch with what it hands over."""

    def round_ended(self, round_id: str, outcome: str, reason: str | None) -> None:
        """The round ended with ``outcome``: any end but DONE closes the epoch it opened."""


class StoreFailed(Exception):
    """The results of a round could not be stored; the round has failed."""


@dataclass
class LiveRound:
    round: NodeRound
    coordinator: str
    started: str
    timeout: float
    deadline: float  # the coordinator's silence ends the round here; each call pushes it back
    expires: float  # the round's key dies here whatever the coordinator does (monotonic)
    operator: str  # who signed the spec (verified)
    committee: CommitteeNode  # the node's share, requests and tags
    parties: dict[str, Verifies] = field(default_factory=dict)  # verified at SignTranscript
    lock: threading.Lock = field(default_factory=threading.Lock)
    began: float = field(default_factory=time.monotonic)  # for the round's duration (metrics)
    # why this node refused or ended the round: every later call for the round (its other
    # streams run meanwhile, the coordinator's Abort) reports this cause, not what it led to
    refusal: ProtocolError | None = None

    def check_live(self) -> None:
        """Raise the round's refusal, or WrongPhase once it has ended."""
        if self.refusal is not None:
            raise self.refusal
        if NODE.final(self.round.phase):
            raise WrongPhase(f"round {self.round.spec.round_id} is {self.round.phase.value}")

    def touch(self) -> None:
        """The coordinator has been heard from: the round lives another ``timeout``."""
        self.deadline = time.monotonic() + self.timeout


@dataclass(frozen=True, slots=True)
class StoredSet:
    """A round's own set read from the node's store: ids at Prepare, rows as the set streams."""

    store: Store
    tlps: tuple[str, ...]

    def ids(self, kinds: frozenset[str]) -> Ids:
        return self.store.eligible_ids(kinds, self.tlps)

    def rows(self, ids: Ids) -> Sequence[Candidate]:
        return self.store.rows_by_id(ids)


_REFUSALS_KEPT: Final = 1024


class LiveRounds:
    """The rounds this node is in, by id. The registry adds and drops them; early warning only
    looks them up (``get``), which is why the table is its own object: both are built on it, and
    neither needs the other."""

    def __init__(self) -> None:
        self._rounds: dict[str, LiveRound] = {}
        # The refusals of rounds already dropped, newest last: a call that comes after the drop
        # hears the refusal, not "no round". Bounded: only the recent ones can still be asked.
        self._refused: collections.OrderedDict[str, ProtocolError] = collections.OrderedDict()
        self._lock = threading.Lock()

    def get(self, round_id: str) -> LiveRound:
        """A live round, its deadline pushed back: the coordinator is asking about it."""
        live = self.find(round_id)
        if live is None:
            with self._lock:
                refusal = self._refused.get(round_id)
            if refusal is not None:
                raise refusal.with_traceback(None)  # each raise would extend the kept one
            raise UnknownRound(
                f"no round {round_id!r} on this node (finished, aborted or never prepared)"
            )
        live.touch()
        return live

    def find(self, round_id: str) -> LiveRound | None:
        with self._lock:
            return self._rounds.get(round_id)

    def add(self, live: LiveRound) -> bool:
        """Take ``live`` in; False if a round of its id is live already."""
        with self._lock:
            if live.round.spec.round_id in self._rounds:
                return False
            self._rounds[live.round.spec.round_id] = live
            return True

    def drop(self, live: LiveRound) -> bool:
        """Let ``live`` go; False if it had gone already."""
        # a copy: the refusal itself goes on with a traceback whose frames hold the round (and
        # its secrets) alive
        kept = None if live.refusal is None else copy.copy(live.refusal).with_traceback(None)
        with self._lock:
            if self._rounds.get(live.round.spec.round_id) is not live:
                return False
            del self._rounds[live.round.spec.round_id]
            if kept is not None:  # in the same step: no call in between hears "no round"
                self._keep(live.round.spec.round_id, kept)
        return True

    def keep(self, round_id: str, refusal: ProtocolError) -> None:
        """What every later call for ``round_id`` hears: why this node refused or ended it."""
        kept = copy.copy(refusal).with_traceback(None)
        with self._lock:
            self._keep(round_id, kept)

    def _keep(self, round_id: str, kept: ProtocolError) -> None:
        self._refused[round_id] = kept
        while len(self._refused) > _REFUSALS_KEPT:
            self._refused.popitem(last=False)

    def ids(self) -> list[str]:
        with self._lock:
            return list(self._rounds)

    def all(self) -> list[LiveRound]:
        with self._lock:
            return list(self._rounds.values())


class RoundRegistry:
    def __init__(
        self,
        *,
        name: str,
        store: Store,
        policy: Policy,
        tlps: tuple[str, ...],
        round_timeout: float,
        authority: Authority,
        round_lifetime: float = 6 * 3600.0,
        live: LiveRounds,
        budgets: Budgets | None = None,
        watch: WatchHooks | None = None,
        metrics: NodeHooks = NO_METRICS,
        on_idle: Callable[[], None] | None = None,
        on_done: Callable[[], None] | None = None,
    ) -> None:
        """``budgets`` None: no budgets across rounds (tests of other things). ``watch``: early
        warning (node/watch.py). ``metrics``: node/metrics.py when [metrics] is on.

        ``on_idle`` (at rest, issue 10) is called when the last live round has ended, so the
        pool's workers are replaced by fresh ones that hold nothing from before (Blinder.retire).
        ``on_done`` (connectors, node serve) is called when a round ended well: it has matches
        for the sinks."""
        self.name = name
        self.authority = authority
        self.budgets = budgets
        self.store = store
        self.policy = policy
        self.tlps = tlps
        self.round_timeout = round_timeout
        self.round_lifetime = round_lifetime
        self.live = live
        self.watch = watch
        self.metrics = metrics
        self.on_idle = on_idle
        self.on_done = on_done
        self._stop = threading.Event()
        self._reaper = threading.Thread(target=self._reap, name="round-reaper", daemon=True)
        self._reaper.start()

    def active(self) -> list[str]:
        return self.live.ids()

    def get(self, round_id: str) -> LiveRound:
        """A live round, its deadline pushed back: the coordinator is asking about it."""
        return self.live.get(round_id)

    def prepare(
        self,
        signed: SignedSpec | ScheduledRun,
        spec: RoundSpec,
        coordinator: str,
        timeout_seconds: float,
    ) -> LiveRound:
        """Verify who signed ``spec`` (the bytes of ``signed``, or the run of the standing order
        it derives from), then fix the round's set and draw its share (or refuse it, audited);
        ``timeout_seconds`` > 0 asks for a shorter timeout than this node's."""
        if self.live.find(spec.round_id) is not None:
            raise RoundIdUsed(f"round {spec.round_id} is already prepared")
        if self.store.has_round(spec.round_id):
            # A replayed id must not overwrite the audit record of the round that used it.
            raise RoundIdUsed(
                f"round {spec.round_id} is already in this node's audit log; round ids are used once"
            )
        timeout = self.round_timeout
        if timeout_seconds > 0:
            timeout = min(timeout, timeout_seconds)
        operator = None
        try:
            operator = self.authority.operator(signed, spec)
            check_caps: dict[str, int] = {}
            if spec.watching:  # a watch round is announced here: the node may refuse it
                if self.watch is None:
                    raise PolicyRefusal(f"node {self.name} takes no part in watch rounds")
                self.watch.admit(spec)
                check_caps = self.watch.check_caps(spec)
            # read only for a spec an allowed operator signed
            machine = NodeRound(spec, self.name, self.policy, StoredSet(self.store, self.tlps))
            if not machine.size:
                # An owner commits to its tags, and there is no commitment to nothing.
                kinds = ", ".join(k for k in spec.kinds if k in self.policy.kinds)
                raise PolicyRefusal(
                    f"{self.name} has no indicator of the round's kinds to take part with "
                    f"({kinds or 'none its policy allows'}); start the round without it"
                )
            committee = CommitteeNode(
                RoundTerms.of(spec, signed.digest),
                self.name,
                self.authority.signer,
                machine.size,
                self.policy,
                SpilledAnswers(),
                check_caps,
            )
        except ProtocolError as exc:
            log.info(
                "round %s refused at Prepare: %s",
                spec.round_id,
                exc,
                extra=about_round(spec.round_id),
            )
            self.live.keep(spec.round_id, exc)
            self._record(
                spec,
                Outcome.REFUSED,
                str(exc),
                started=utc_now(),
                coordinator=coordinator,
                operator=operator,
            )
            self.metrics.round_ended(Outcome.REFUSED, None, {})
            raise
        now = time.monotonic()
        live = LiveRound(
            round=machine,
            coordinator=coordinator,
            started=utc_now(),
            timeout=timeout,
            deadline=now + timeout,
            expires=now + self.round_lifetime,
            operator=operator,
            committee=committee,
        )
        if not self.live.add(live):
            machine.abort("duplicate prepare")
            raise RoundIdUsed(f"round {spec.round_id} is already prepared")
        self._audit(live, Outcome.STARTED, None)
        log.info(
            "round %s prepared: %s round of %s signed by %s, %d own indicators",
            spec.round_id,
            "watch" if spec.watching else spec.mode,
            ", ".join(spec.participants),
            operator,
            machine.size,
            extra=about_round(spec.round_id),
        )
        return live

    def sign_transcript(
        self, live: LiveRound, transcript: Transcript, certificates: dict[str, bytes]
    ) -> bytes:
        """Every participant's certificate verified, then the transcript; this node's signature
        over it. A refusal ends the round."""
        with self._refusing(live):
            live.parties = self.authority.partners(live.round.spec, certificates)
            return live.committee.sign_transcript(transcript, live.parties)

    def begin(self, live: LiveRound, signatures: dict[str, bytes]) -> None:
        """Every participant's signature over the transcript verified, then the sizes checked
        against this node's caps, then what each partner may ask of it charged to its budget
        (its announced size and λ checks) — all before anything is evaluated."""
        with self._refusing(live):
            committee = live.committee
            committee.begin(signatures)
            assert committee.transcript is not None
            sizes = dict(committee.transcript.sizes)
            live.round.begin(sizes)
            live.expires = min(live.expires, live.began + lifetime_for(sizes, self.round_lifetime))
            if self.budgets is not None:
                self.budgets.charge_round(
                    live.round.spec.round_id,
                    {p: n + LAMBDA for p, n in sizes.items()},
                    committee.check_caps,
                )

    @contextlib.contextmanager
    def _refusing(self, live: LiveRound) -> Iterator[None]:
        """A protocol error inside ends the round as refused (kept as its refusal) and goes on."""
        try:
            with live.lock:
                yield
        except ProtocolError as exc:
            if not isinstance(exc, UnknownRound | WrongPhase):
                live.refusal = exc
                self.end(live, Outcome.REFUSED, str(exc))
            raise

    def deliver(self, round_id: str, decode: Callable[[LiveRound], Delivery]) -> int:
        """Resolve the delivery ``decode`` reads (and verifies) for the round, store the results
        and end the round; the number of results stored. A broken or forged delivery ends the
        round: nothing is kept."""
        live = self.get(round_id)
        handed: tuple[Handover, Ids] | None = None
        try:
            with live.lock:
                live.check_live()
                ids = live.round.sighting_ids()  # before resolve: a watch epoch maps alerts by it
                outcome = live.round.resolve(decode(live))
                if live.round.spec.watching:
                    handed = (live.committee.handover(), ids)
        except (UnknownRound, WrongPhase):
            raise
        except ProtocolError as exc:
            self.end(live, Outcome.FAILED, f"refused the delivery: {exc}")
            raise
        spec = live.round.spec
        try:
            if spec.mode == "count":
                self.store.record_partner_counts(spec.round_id, outcome.partner_counts)
                recorded = len(outcome.partner_counts)
            else:
                recorded = self.store.record_matches(
                    spec.round_id,
                    spec.mode,
                    [(m.sighting_id, list(m.partners), m.count) for m in outcome.matches],
                )
        except Exception as exc:
            self.end(live, Outcome.FAILED, f"could not store matches: {exc}")
            raise StoreFailed(f"node {self.name} could not store matches: {exc}") from exc
        if handed is not None and self.watch is not None:
            try:
                self.watch.opened(spec, *handed, live.coordinator, self.authority.signer)
            except Exception as exc:
                self.end(live, Outcome.FAILED, f"could not record its watch epoch: {exc}")
                raise StoreFailed(
                    f"node {self.name} could not record its watch epoch (its share is destroyed): "
                    f"{exc}"
                ) from exc
        self.end(live, Outcome.DONE, None)
        log.info(
            "round %s done: %d results recorded",
            spec.round_id,
            recorded,
            extra=about_round(spec.round_id),
        )
        return recorded

    def abort(self, round_id: str, reason: str) -> bool:
        """End a round the coordinator has given up on; False if this node had no such round."""
        live = self.live.find(round_id)
        if live is None:
            # A watch round that delivered here but failed elsewhere: its epoch must not live.
            self._watch_ended(round_id, Outcome.ABORTED, reason)
            return False
        self.end(live, Outcome.ABORTED, reason)
        return True

    def end(self, live: LiveRound, outcome: str, reason: str | None) -> None:
        """Drop a round: share destroyed, audit written. Safe to call twice."""
        round_id = live.round.spec.round_id
        if outcome != Outcome.DONE and live.refusal is None:
            # before the phase moves: a call in flight meanwhile hears this, not "is aborted"
            live.refusal = RoundEnded(f"round {round_id} {outcome}: {reason or outcome}")
        if not self.live.drop(live):
            return
        if outcome != Outcome.DONE:
            live.round.abort(reason or outcome)
            # the one line for every end but done (deliver says how many results it stored)
            log.log(
                logging.WARNING if outcome == Outcome.FAILED else logging.INFO,
                "round %s %s: %s",
                round_id,
                outcome,
                reason or outcome,
                extra=about_round(round_id),
            )
        # its share and seed go with the round, whatever the outcome (a delivered round's are
        # gone already); never mid-answer
        with live.lock:
            live.committee.abort()
        self._audit(live, outcome, reason)
        self.metrics.round_ended(outcome, time.monotonic() - live.began, live.round.blinded_for)
        self._watch_ended(round_id, outcome, reason)
        if outcome == Outcome.DONE and self.on_done is not None:
            self.on_done()  # only wakes a background thread: the round never waits for sinks
        if not self.live.ids() and self.on_idle is not None:
            try:
                self.on_idle()
            except Exception:  # the round has ended cleanly; a failed retire must not undo that
                log.exception("could not retire the hashing workers after round %s", round_id)

    def _watch_ended(self, round_id: str, outcome: str, reason: str | None) -> None:
        if self.watch is None:
            return
        try:
            self.watch.round_ended(round_id, outcome, reason)
        except Exception:  # the round is over either way; its epoch must not outlive a crash
            log.exception("round %s: early warning could not follow its end", round_id)

    def _audit(self, live: LiveRound, outcome: str, reason: str | None) -> None:
        self._record(
            live.round.spec,
            outcome,
            reason,
            started=live.started,
            coordinator=live.coordinator,
            operator=live.operator,
            own_size=live.round.size,
            blinded_for=live.round.blinded_for,
        )

    def _record(
        self,
        spec: RoundSpec,
        outcome: str,
        reason: str | None,
        *,
        started: str,
        coordinator: str,
        operator: str | None,
        own_size: int = 0,
        blinded_for: Mapping[str, int] | None = None,
    ) -> None:
        """The round's audit record; a round refused at Prepare has no set and blinded nothing."""
        try:
            self.store.record_round(
                spec.round_id,
                started=started,
                coordinator=coordinator,
                participants=spec.participants,
                mode=spec.mode,
                threshold=spec.threshold,
                kinds=spec.kinds,
                own_size=own_size,
                blinded_for=blinded_for,
                outcome=outcome,
                reason=reason,
                finished=None if outcome == Outcome.STARTED else utc_now(),
                operator=operator,
                epoch_seconds=spec.epoch_seconds,
            )
        except Exception:  # the audit must not turn a clean refusal into a crash
            log.exception("could not write the audit record of round %s", spec.round_id)

    def _reap(self) -> None:
        while not self._stop.wait(0.5):
            now = time.monotonic()
            expired = [live for live in self.live.all() if min(live.deadline, live.expires) < now]
            while expired:  # popped, so that no name here keeps a dropped round alive
                self._expire(expired.pop(), now)

    def _expire(self, live: LiveRound, now: float) -> None:
        if live.expires < now:
            reason = (
                f"its key's lifetime of {live.expires - live.began:.0f} s after Prepare is over "
                "(round_lifetime, sized from the signed set sizes)"
            )
        else:
            reason = f"timed out: no word from the coordinator for {live.timeout:.0f} s"
        self.end(live, Outcome.FAILED, reason)  # which logs it

    def shutdown(self) -> None:
        self._stop.set()
        for live in self.live.all():
            self.end(live, Outcome.ABORTED, "node shut down")


def fail_unfinished(store: Store, rounds: list[RoundAudit]) -> None:
    """Audit as failed the rounds a previous run of this node was in when it ended (killed,
    crashed): their shares died with that process, and no delivery can reach this one."""
    for r in rounds:
        store.end_round(r.round_id, outcome=Outcome.FAILED, reason=RESTART_REASON)
        log.warning(
            "round %s failed: %s", r.round_id, RESTART_REASON, extra=about_round(r.round_id)
        )
