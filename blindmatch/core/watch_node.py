"""A node's side of early warning, without I/O: its epochs, the partners' checks it re-blinds and
its own checks (the rules are at the top of ``blindmatch.core.watch_rules``).

No real clock: a clock callable is passed in.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from blindmatch.core import ring
from blindmatch.core.canon import InvalidIndicator, canonicalize
from blindmatch.core.errors import BadMessage, CapExceeded, ForgedMessage, PolicyRefusal, WrongPhase
from blindmatch.core.group import ELEMENT_BYTES, Mask, RoundKey, combined_key
from blindmatch.core.round_node import NodeRound
from blindmatch.core.signing import CheckClaim, Trust
from blindmatch.core.spec import Policy
from blindmatch.core.states import (
    EPOCH,
    NODE_CHECK,
    EpochEvent,
    EpochPhase,
    NodeCheckEvent,
    NodeCheckPhase,
)
from blindmatch.core.watch_rules import (
    CHECK_CHUNK,
    CHECK_ID,
    CHECK_SUBJECT,
    MAX_CHECK_ELEMENTS,
    BadReply,
    CheckHop,
    CheckReplayed,
    Clock,
    EpochEnded,
    WatchSettings,
    check_chunks,
    check_elements,
    check_route,
    close_epoch,
    open_epoch,
    split_tags,
    utc_text,
)


@dataclass
class NodeEpoch:
    """One node's side of an epoch: the kept key, the tag map, budgets spent by each partner."""

    epoch_id: str
    me: str
    participants: tuple[str, ...]
    ends: float  # unix seconds
    key: RoundKey | None
    budget: int
    tags: dict[bytes, tuple[str, str]] = field(default_factory=dict)  # k_c-tag -> indicator
    spent: dict[str, int] = field(default_factory=dict)  # partner -> elements blinded for it
    seen: set[tuple[str, str, int]] = field(default_factory=set)  # (checker, check id, seq)
    # (checker, check id) -> [its chunks, chunks blinded, elements blinded], for one audit record
    # per check once its last chunk is blinded
    progress: dict[tuple[str, str], list[int]] = field(default_factory=dict)
    # staged by BeginEpoch; only ``open`` and ``close`` move it, through states.EPOCH
    phase: EpochPhase = field(default=EpochPhase.PENDING, init=False)
    closed: str | None = None  # why the epoch ended, once it has
    coordinator: str = ""
    # The digest of the watch round's signed spec (signing.spec_digest of the spec this node
    # accepted), bound into every CheckClaim: a check belongs to the epoch every node accepted.
    spec_digest: bytes = b""

    def expired(self, now: float) -> bool:
        return now >= self.ends

    def require_open(self, now: float) -> RoundKey:
        if not EPOCH.allows(self.phase, EpochEvent.CHECK):
            why = self.closed or "its watch round has not delivered yet"
            raise EpochEnded(f"epoch {self.epoch_id} is {self.phase.value} ({why})")
        if now >= self.ends or self.key is None:
            raise EpochEnded(
                f"epoch {self.epoch_id} ended at {utc_text(self.ends)}; start a new watch round "
                "(`blindmatch round start --mode watch`)"
            )
        return self.key

    def open(self) -> None:
        """The watch round delivered: checks are accepted from now on."""
        open_epoch(self)

    def charge(
        self, checker: str, count: int, now: float, book: Callable[[], None] | None = None
    ) -> RoundKey:
        """Book ``count`` elements of ``checker``'s check against its budget; the key to use.

        ``book`` charges the node's rolling budget across epochs (node.budgets): it runs once the
        epoch's own budget has room and refuses without charging, so a refusal costs nothing."""
        key = self.require_open(now)
        if checker == self.me or checker not in self.participants:
            raise PolicyRefusal(f"{checker} is not a partner of {self.me} in epoch {self.epoch_id}")
        used = self.spent.get(checker, 0)
        if used + count > self.budget:
            raise CapExceeded(
                f"{self.me} has blinded {used} of the {self.budget} elements it allows {checker}'s "
                f"checks this epoch; this check of {count} would exceed it (check_budget in "
                f"{self.me}'s node.toml; the budget renews with the next epoch, "
                f"after {utc_text(self.ends)})"
            )
        if book is not None:
            book()
        self.spent[checker] = used + count
        return key

    def blinded(self, checker: str, check_id: str, count: int) -> int | None:
        """A chunk of that check is blinded: the check's elements once all its chunks are."""
        done = self.progress[(checker, check_id)]
        done[1] += 1
        done[2] += count
        return done[2] if done[1] == done[0] else None

    def remember(self, tags: Iterable[bytes], items: Iterable[tuple[str, str]]) -> None:
        for tag, item in zip(tags, items, strict=True):
            self.tags[tag] = item

    def lookup(self, tags: Iterable[bytes]) -> list[tuple[str, str] | None]:
        return [self.tags.get(t) for t in tags]

    def close(self, reason: str) -> None:
        """Destroy the key and the tag map; idempotent."""
        close_epoch(self, reason)
        self.tags = {}


@dataclass
class CheckedValue:
    value: str  # as given
    kind: str = ""
    canonical: str = ""
    partners: list[str] = field(default_factory=list)
    error: str = ""  # why it was not checked, if it was not


class NodeCheck:
    """One check of this node's own sightings (rules 1, 3 and 4)."""

    def __init__(self, me: str, values: Sequence[str], kind: str, kinds: frozenset[str]) -> None:
        if not values:
            raise BadMessage("no values to check")
        self.me = me
        self.check_id = secrets.token_hex(16)  # fresh: a signed check cannot be replayed
        self.results: list[CheckedValue] = []
        self.items: list[tuple[str, str]] = []  # (kind, canonical) of the values to check
        self._slots: list[int] = []  # result index of each item
        for value in values:
            result = CheckedValue(value)
            try:
                ind = canonicalize(kind, value)
            except InvalidIndicator as exc:
                result.error = str(exc)
            else:
                result.kind, result.canonical = ind.kind, ind.value
                if ind.kind in kinds:
                    self._slots.append(len(self.results))
                    self.items.append((ind.kind, ind.value))
                else:
                    result.error = f"kind {ind.kind} is outside this node's policy (policy.kinds)"
            self.results.append(result)
        self.epoch: NodeEpoch | None = None
        self.mask: Mask | None = None
        self._masked_key: RoundKey | None = None  # the mask and the epoch key as one key
        self.tags = b""
        self.alerts: list[tuple[str, str, str, str]] = []  # (kind, value, partner, "check")
        self.phase = NodeCheckPhase.PLANNED

    def open(self, epoch: NodeEpoch | None, now: float) -> tuple[RoundKey, RoundKey]:
        """A fresh mask: the key that masks and blinds ``items`` under the epoch key in one
        pass, and the key that removes the mask from the coordinator's answer."""
        self._require(NodeCheckEvent.ASK)
        if epoch is None:
            raise WrongPhase(
                f"node {self.me} has no watch epoch (none started, or it ended or the node "
                "restarted); an operator starts one with `blindmatch round start --mode watch`"
            )
        key = epoch.require_open(now)
        mask = Mask.generate()
        masked_key = combined_key(mask.apply, key)
        while masked_key is None:  # about half the masks combine with a given key
            mask.destroy()
            mask = Mask.generate()
            masked_key = combined_key(mask.apply, key)
        self.epoch, self.mask, self._masked_key = epoch, mask, masked_key
        self._move(NodeCheckPhase.ASKING)
        return masked_key, mask.remove

    def claims(self, elements: bytes) -> list[CheckClaim]:
        """What the checker signs over its masked, blinded elements (hop 0): one claim per
        chunk (``check_chunks``)."""
        assert self.epoch is not None
        chunks = check_chunks(elements)
        return [
            CheckClaim(
                self.epoch.epoch_id,
                self.epoch.spec_digest,
                self.me,
                self.check_id,
                0,
                chunk,
                seq,
                len(chunks),
            )
            for seq, chunk in enumerate(chunks)
        ]

    def unmasked(self, tags: bytes) -> None:
        """The coordinator's answer with the mask removed: the k_c-tags of ``items``."""
        self._require(NodeCheckEvent.TAGS)
        n = len(self.items)
        if len(tags) != n * ELEMENT_BYTES:
            raise BadReply(f"the coordinator answered {len(tags)} bytes of tags for {n} values")
        self.tags = tags
        self.discard_mask()
        self._move(NodeCheckPhase.UNMASKED)

    def discard_mask(self) -> None:
        if self.mask is not None:
            self.mask.destroy()
            self.mask = None
        if self._masked_key is not None:
            self._masked_key.destroy()
            self._masked_key = None

    def on_hits(self, hits: Mapping[str, Sequence[int]]) -> None:
        """The coordinator's hits: validated, then the partners and alerts of each value.

        The k_c-tags join the epoch's tag map, so later checks by partners alert this node.
        """
        self._require(NodeCheckEvent.HITS)
        assert self.epoch is not None
        n = len(self.items)
        for partner, indices in hits.items():
            if partner == self.me or partner not in self.epoch.participants:
                raise BadReply(f"the coordinator reports hits of {partner!r}, not a partner")
            if len(set(indices)) != len(indices):
                raise BadReply(f"the coordinator reports a hit of {partner} twice")
            for i in indices:
                if not 0 <= i < n:
                    raise BadReply(f"the coordinator reports hit {i} of {partner} in {n} values")
        for partner, indices in hits.items():
            for i in indices:
                self.results[self._slots[i]].partners.append(partner)
                self.alerts.append((*self.items[i], partner, "check"))
        self.epoch.remember(split_tags(self.tags), self.items)
        self._move(NodeCheckPhase.DONE)

    def on_reply(self, tags: bytes, hits: Mapping[str, Sequence[int]]) -> None:
        """Both answers at once (the k_c-tags, then the hits): for tests of the rules."""
        self.unmasked(tags)
        self.on_hits(hits)

    @property
    def hit_values(self) -> int:
        return len({a[:2] for a in self.alerts})

    def _require(self, event: NodeCheckEvent) -> None:
        NODE_CHECK.require(CHECK_SUBJECT, self.phase, event)

    def _move(self, to: NodeCheckPhase) -> None:
        self.phase = NODE_CHECK.move(CHECK_SUBJECT, self.phase, to)


class NodeWatchCore:
    """A node's watch: the epochs staged by BeginEpoch, the current one, the calls it serves."""

    def __init__(
        self, me: str, budget: int, clock: Clock, settings: WatchSettings | None = None
    ) -> None:
        self.me = me
        self.budget = budget
        self.clock = clock
        self.settings = settings or WatchSettings()
        self.epoch: NodeEpoch | None = None
        self.pending: dict[str, NodeEpoch] = {}  # round id -> staged epoch

    def now_utc(self) -> datetime:
        return datetime.fromtimestamp(self.clock(), UTC)

    def begin(
        self,
        round_id: str,
        state: NodeRound | None,
        ends: float,
        tags: bytes,
        coordinator: str,
        spec_digest: bytes = b"",
    ) -> NodeEpoch:
        """BeginEpoch: stage the epoch of a watch round (PENDING) with a copy of its key; every
        check of the epoch is bound to ``spec_digest``, the digest of the round's signed spec."""
        if state is None or state.spec.round_id != round_id:
            raise WrongPhase(f"no round {round_id!r} in progress on {self.me}")
        spec = state.spec
        if spec.epoch_seconds <= 0:
            raise PolicyRefusal(
                f"round {round_id} was not announced as a watch round at Prepare; "
                f"{self.me} keeps no key beyond it"
            )
        if round_id in self.pending:
            raise WrongPhase(f"the epoch of round {round_id} is already staged")
        now = self.clock()
        if ends <= now:
            raise BadMessage(f"epoch end {utc_text(ends)} is in the past")
        positions = state.position_map()
        packed = split_tags(tags)
        if len(packed) != len(positions):
            raise BadMessage(
                f"watch round {round_id}: {len(packed)} final tags for an own set of "
                f"{len(positions)}"
            )
        epoch = NodeEpoch(
            epoch_id=round_id,
            me=self.me,
            participants=spec.participants,
            # the node keeps the key no longer than the spec it accepted at Prepare announced
            ends=min(ends, now + spec.epoch_seconds),
            key=RoundKey.from_bytes(state.live_key().export()),
            budget=self.budget,
            coordinator=coordinator,
            spec_digest=spec_digest,
        )
        epoch.remember(packed, ((kind, value) for _, kind, value in positions))
        self.pending[round_id] = epoch
        return epoch

    def delivered(self, round_id: str) -> tuple[NodeEpoch, NodeEpoch | None] | None:
        """The round delivered and stored its results: its staged epoch opens and becomes the
        current one. Returns it and the epoch it replaces (to close), or None if not staged."""
        epoch = self.pending.pop(round_id, None)
        if epoch is None:
            return None
        epoch.open()
        old, self.epoch = self.epoch, epoch
        return epoch, old

    def abandoned(self, round_id: str) -> NodeEpoch | None:
        """The round ended any other way (failed, refused, aborted, even after its delivery):
        the epoch it staged or opened, to close."""
        epoch = self.pending.pop(round_id, None)
        if epoch is None and self.epoch is not None and self.epoch.epoch_id == round_id:
            epoch = self.epoch
        return epoch

    def close(self, epoch: NodeEpoch, reason: str) -> bool:
        """Destroy ``epoch``'s key; True if it was open (its end is then recorded)."""
        was_open = epoch.phase is EpochPhase.OPEN
        epoch.close(reason)
        if self.epoch is epoch:
            self.epoch = None
        for rid in [r for r, e in self.pending.items() if e is epoch]:
            del self.pending[rid]
        return was_open

    def expired(self) -> NodeEpoch | None:
        """The current epoch if the clock has passed its end (to close with ``end_reason``)."""
        epoch = self.epoch
        return epoch if epoch is not None and epoch.expired(self.clock()) else None

    def current(self, epoch_id: str) -> NodeEpoch:
        epoch = self.epoch
        if epoch is None or epoch.epoch_id != epoch_id:
            have = f"its epoch is {epoch.epoch_id}" if epoch else "it has no epoch"
            raise WrongPhase(
                f"node {self.me} holds no key for epoch {epoch_id} ({have}; a node restart "
                "ends its epoch); start a new watch round"
            )
        return epoch

    def reblind(
        self,
        hop: CheckHop,
        trust: Trust | None,
        book: Callable[[str, int, str], None] | None = None,
    ) -> tuple[RoundKey, Callable[[bytes], CheckClaim]]:
        """ReblindCheck (rule 2): verify who produced the chunk, then book it against the
        checker's budget. The key to blind with, and the claim its output is signed with."""
        count = check_elements(hop.elements)
        if count > CHECK_CHUNK:
            raise BadMessage(f"a chunk of {count} elements; a check's chunks are {CHECK_CHUNK}")
        if not 0 <= hop.seq < hop.chunks or hop.chunks > -(-MAX_CHECK_ELEMENTS // CHECK_CHUNK):
            raise BadMessage(
                f"chunk {hop.seq} of {hop.chunks}: not a chunk of a check of at most "
                f"{MAX_CHECK_ELEMENTS} elements"
            )
        epoch = self.current(hop.epoch_id)
        epoch.require_open(self.clock())
        if trust is None:
            raise ForgedMessage(f"{self.me} has no federation identity to verify checks with")
        if not CHECK_ID.fullmatch(hop.check_id):
            raise BadMessage("a check id is 16 to 64 lowercase hex digits")
        parts = epoch.participants
        route = check_route(parts, hop.checker)  # the checker is a participant
        if self.me not in route:
            raise PolicyRefusal(f"{self.me} does not re-blind its own checks")
        checker = parts.index(hop.checker)
        mine = ring.hop_of(len(parts), checker, parts.index(self.me))
        if hop.hop != mine - 1:
            raise ForgedMessage(
                f"{self.me} is hop {mine} of {hop.checker}'s checks; it re-blinds the output of "
                f"hop {mine - 1}, not of hop {hop.hop}"
            )
        signer = ring.holder(parts, checker, hop.hop)
        what = f"chunk {hop.seq} of check {hop.check_id} of {hop.checker} at hop {hop.hop}"
        party = trust.party(hop.certificate, now=self.now_utc(), role="node", names=[signer])
        party.verify(hop.claim(epoch.spec_digest).message(), hop.signature, what)
        # Replays are refused per (check id, seq): the chunks of one check arrive in any order
        # (several are in flight per hop), but each is blinded once, and its place is signed.
        if (hop.checker, hop.check_id, hop.seq) in epoch.seen:
            raise CheckReplayed(f"{what} was already blinded by {self.me}")
        ref = (hop.checker, hop.check_id)
        progress = epoch.progress.get(ref)
        if progress is not None and progress[0] != hop.chunks:
            raise BadMessage(f"{what} names {hop.chunks} chunks; the check has {progress[0]}")
        # validated: now it costs, in this epoch's budget and the rolling one (``book``)
        charge = None if book is None else lambda: book(hop.checker, count, hop.epoch_id)
        key = epoch.charge(hop.checker, count, self.clock(), charge)
        epoch.seen.add((hop.checker, hop.check_id, hop.seq))
        epoch.progress.setdefault(ref, [hop.chunks, 0, 0])
        digest = epoch.spec_digest
        return key, lambda out: CheckClaim(
            hop.epoch_id, digest, hop.checker, hop.check_id, mine, out, hop.seq, hop.chunks
        )

    def alert(self, epoch_id: str, packed: bytes) -> list[tuple[str, str] | None]:
        """Alert: the indicator behind each k_c-tag, None for a tag not in the tag map."""
        return self.current(epoch_id).lookup(split_tags(packed))

    def to_close(self, epoch_id: str) -> NodeEpoch | None:
        """CloseEpoch: the epoch to close, if it is the current one (idempotent otherwise)."""
        epoch = self.epoch
        return epoch if epoch is not None and epoch.epoch_id == epoch_id else None

    def start_check(self, values: Sequence[str], kind: str, policy: Policy) -> NodeCheck:
        return NodeCheck(self.me, values, kind or "auto", policy.kinds)


def end_reason(epoch: NodeEpoch) -> str:
    return f"epoch ended at {utc_text(epoch.ends)}"
