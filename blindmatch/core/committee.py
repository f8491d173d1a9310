"""A round of protocol v2, both sides, without I/O: what a node and the coordinator accept and send.

Served by node/committee.py and coordinator/driver.py (``CommitteeDriver``), which translate
messages to and from these types (``runtime.serde_v2``) and call these machines.

Rules, in the order a round meets them (DESIGN.md 2):
1. **Prepare.** Each participant fixes its set and announces its size; a committee member draws
   a share and commits to it (``Prepared``). A participant outside the committee joins only if
   the committee holds every node its policy trusts (``spec.Policy.trusted_committee``; by
   default, the node itself).
2. **Transcript.** The coordinator assembles the commitments and sizes (``Transcript``). Each
   node verifies every proof itself, checks its own entries, and signs the digest. Only when it
   holds every participant's signature over the same digest does it evaluate anything: a party
   shown another transcript signed another digest.
3. **Evaluation.** Each owner signs a request per chunk and one for its subset checks; each
   member verifies the requester's signature, charges it (``EvaluationLedger``) and signs its
   answer; the owner verifies each member's signature (``owner.Owner``).
4. **Tags, committed then revealed.** Verified tags, sorted; first only the owner's signature
   over their Merkle root. The tags go out once the node holds every participant's signed root,
   each over exactly the size it announced: a partner shown another's tags before committing
   could otherwise put them in its own root and be proved to hold them.
5. **Delivery.** What the mode allows, each match proved against its holders' signed roots
   (``delivery``); the node verifies every signature and proof before it records anything.

Signatures are checked with the parties' certificates (``signing.Party``), vouched for by the
federation CA outside this module; no machine here takes a name from a message on trust.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, Protocol

import numpy as np
import numpy.typing as npt

from blindmatch.core.delivery import (
    NodeDelivery,
    SharedCount,
    SignedRoot,
    VerifiedMatch,
    match,
    verify_delivery,
)
from blindmatch.core.errors import BadMessage, ForgedMessage, WrongPhase
from blindmatch.core.evaluation import (
    Commitment,
    EvaluationAnswer,
    EvaluationRequest,
    Transcript,
)
from blindmatch.core.match import CountResult, Delivery, PairwiseResult, ThresholdResult
from blindmatch.core.member import Member
from blindmatch.core.merkle import root as merkle_root
from blindmatch.core.oprf import LAMBDA
from blindmatch.core.owner import Owner, VerificationFailed
from blindmatch.core.proofs import BadProof
from blindmatch.core.secp256k1 import Point
from blindmatch.core.signing import Signs, Verifies, statement
from blindmatch.core.spec import DEFAULT_CHUNK, Caps, Policy, RoundSpec
from blindmatch.core.states import COMMITTEE_NODE, CommitteeEvent, CommitteePhase
from blindmatch.core.watch_sealed import (
    FILTER_ERROR_RATE,
    EpochFilter,
    SignedFilter,
    filter_statement,
)

PURPOSE: Final = "round"  # a round's share serves its sets only; a watch round's, its epoch


def transcript_statement(digest: bytes) -> bytes:
    return statement("v2-transcript", digest)


def request_statement(request: EvaluationRequest) -> bytes:
    return statement("v2-request", request.message())


def answer_statement(answer: EvaluationAnswer) -> bytes:
    return statement("v2-answer", answer.message())


@dataclass(frozen=True, slots=True)
class RoundTerms:
    """What the signed spec fixes for v2: the parties, the committee and the mode."""

    round_id: str
    spec_digest: bytes
    participants: tuple[str, ...]
    committee: tuple[str, ...]
    mode: str = "pairwise"
    threshold: int | None = None
    counts: bool = False
    epoch_seconds: float = 0.0  # a watch round: its share and tags serve an epoch this long
    chunk_size: int = DEFAULT_CHUNK  # the most elements one (unproved) set request carries

    def __post_init__(self) -> None:
        if not set(self.committee) <= set(self.participants) or not self.committee:
            raise BadMessage("the committee is one or more of the round's participants")
        if self.epoch_seconds and self.mode != "pairwise":
            raise BadMessage("a watch round is pairwise")

    @property
    def purpose(self) -> str:
        """What the shares serve: "epoch" for a watch round (its set, then the epoch's checks)."""
        return "epoch" if self.epoch_seconds else PURPOSE

    @classmethod
    def of(cls, spec: RoundSpec, spec_digest: bytes) -> RoundTerms:
        """What a v2 round's machines take from the signed spec whose digest is given."""
        return cls(
            spec.round_id,
            spec_digest,
            spec.participants,
            spec.members,
            spec.mode,
            spec.threshold,
            spec.counts,
            spec.epoch_seconds,
            spec.chunk_size,
        )


@dataclass(frozen=True, slots=True)
class Prepared:
    node: str
    size: int
    commitment: Commitment | None
    # watch rounds: the evaluations this node lets each partner ask for its checks in the epoch
    check_caps: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class SignedRequest:
    request: EvaluationRequest
    points: bytes
    signature: bytes


@dataclass(frozen=True, slots=True)
class SignedAnswer:
    answer: EvaluationAnswer
    points: bytes
    signature: bytes


@dataclass(frozen=True, slots=True)
class Tags:
    owner: str
    tags: bytes  # sorted, distinct, 16 bytes each
    root: SignedRoot
    filter: SignedFilter | None = None  # a watch round's: the epoch filter of these tags


@dataclass(frozen=True, slots=True)
class Handover:
    """What a delivered watch round leaves its epoch (``CommitteeNode.handover``)."""

    transcript: Transcript
    parties: Mapping[str, Verifies]
    member: Member | None
    tags: bytes  # sorted
    positions: npt.NDArray[np.intp]  # sorted tag i -> element position
    next_seq: int  # the first seq the node's requests left free on the members' ledgers


class AnswerLog(Protocol):
    """Where an owner keeps every member's signed answers until its tags are verified: to name a
    cheat if a check fails. 65 bytes per element and member, so a node may keep them on disk."""

    def put(self, member: str, seq: int, answer: EvaluationAnswer, points: bytes) -> None: ...

    def all(self) -> dict[str, dict[int, tuple[EvaluationAnswer, bytes]]]: ...

    def clear(self) -> None: ...


class InMemory:
    def __init__(self) -> None:
        self._answers: dict[str, dict[int, tuple[EvaluationAnswer, bytes]]] = {}

    def put(self, member: str, seq: int, answer: EvaluationAnswer, points: bytes) -> None:
        self._answers.setdefault(member, {})[seq] = (answer, points)

    def all(self) -> dict[str, dict[int, tuple[EvaluationAnswer, bytes]]]:
        return self._answers

    def clear(self) -> None:
        self._answers.clear()


class CommitteeNode:
    """One node's v2 round: owner of its set, and member of the committee when named."""

    def __init__(
        self,
        terms: RoundTerms,
        me: str,
        signer: Signs,
        size: int,
        policy: Policy | None = None,
        answers: AnswerLog | None = None,
        check_caps: Mapping[str, int] | None = None,
    ) -> None:
        """``check_caps``, for a watch round only: the evaluations each partner may ask for its
        checks in the epoch (a partner left out may not check while this node holds a set)."""
        if me not in terms.participants:
            raise BadMessage(f"{me} is not a participant of round {terms.round_id}")
        (policy or Policy()).check_committee(terms.committee, me)
        caps = dict(check_caps or {})
        if caps and terms.purpose != "epoch":
            raise BadMessage("check caps are for watch rounds")
        if not set(caps) <= set(terms.participants) - {me} or any(c < 0 for c in caps.values()):
            raise BadMessage("check caps are for partners, and not negative")
        self.terms = terms
        self.me = me
        self.signer = signer
        self.size = size
        self.check_caps = caps
        self.phase = CommitteePhase.PREPARED
        self.member = Member(terms.purpose, terms.round_id, me) if me in terms.committee else None
        self.transcript: Transcript | None = None
        self.parties: dict[str, Verifies] = {}
        self.owner: Owner | None = None
        self.own_tags: bytes = b""
        self.positions: npt.NDArray[np.intp] | None = None  # sorted tag i -> element position
        self.own_root: SignedRoot | None = None
        self.roots: dict[str, SignedRoot] = {}
        self.filter: SignedFilter | None = None
        # every member's signed answer to each chunk, kept to name a cheat if a check fails
        self._answers: AnswerLog = answers if answers is not None else InMemory()

    @property
    def subject(self) -> str:
        return f"round {self.terms.round_id}"

    def _accept(self, event: CommitteeEvent) -> None:
        COMMITTEE_NODE.require(self.subject, self.phase, event)

    def _move(self, to: CommitteePhase) -> None:
        self.phase = COMMITTEE_NODE.move(self.subject, self.phase, to)

    def prepared(self) -> Prepared:
        return Prepared(
            self.me, self.size, self.member.commitment if self.member else None, self.check_caps
        )

    def sign_transcript(self, transcript: Transcript, parties: Mapping[str, Verifies]) -> bytes:
        """This node's signature over ``transcript``, once it holds what this node sent and
        what the signed spec fixes. ``parties``: every participant's vouched certificate."""
        self._accept(CommitteeEvent.TRANSCRIPT)
        t = self.terms
        if (transcript.purpose, transcript.ident) != (t.purpose, t.round_id):
            raise BadMessage(f"a transcript for {transcript.purpose} {transcript.ident}")
        if transcript.spec_digest != t.spec_digest:
            raise ForgedMessage("the transcript names another spec than the one this node signed")
        if transcript.committee != tuple(sorted(t.committee)):
            raise ForgedMessage("the transcript's committee is not the signed spec's")
        if set(transcript.sizes) != set(t.participants):
            raise ForgedMessage("the transcript's participants are not the signed spec's")
        if transcript.sizes[self.me] != self.size:
            raise ForgedMessage(f"the transcript gives {self.me} a set it did not announce")
        if t.purpose == "epoch":
            # A holder's epoch set is its round set; its caps are what it announced, no more
            # and no fewer: shown other caps, a member would charge its partners otherwise.
            if dict(transcript.holder_sizes) != dict(transcript.sizes):
                raise ForgedMessage("the transcript's holder sets are not the announced sets")
            mine = {c: n for (h, c), n in transcript.caps.items() if h == self.me}
            if mine != self.check_caps:
                raise ForgedMessage(
                    f"the transcript gives {self.me} check caps it did not announce"
                )
        elif transcript.holder_sizes or transcript.caps:
            raise ForgedMessage("a transcript of a round that is no watch round carries caps")
        if set(parties) != set(t.participants) or any(
            p.identity.name != name for name, p in parties.items()
        ):
            raise ForgedMessage("every participant's certificate, under its own name")
        if self.member is not None:
            self.member.accept(transcript)
        else:
            transcript.verified_keys()
        self.transcript = transcript
        self.parties = dict(parties)
        self._move(CommitteePhase.SIGNED)
        return self.signer.sign(transcript_statement(transcript.digest()))

    def begin(self, signatures: Mapping[str, bytes]) -> dict[str, int]:
        """Start evaluating once every participant signed this node's transcript; the
        evaluations each partner may now ask of this node's share (to pre-charge in the node's
        budgets), or {} when it is no member."""
        self._accept(CommitteeEvent.BEGIN)
        assert self.transcript is not None
        message = transcript_statement(self.transcript.digest())
        if set(signatures) != set(self.terms.participants):
            raise ForgedMessage("the transcript needs every participant's signature")
        for name, signature in sorted(signatures.items()):
            self.parties[name].verify(message, signature, f"{name}'s signature of the transcript")
        keys: dict[str, Point] = self.transcript.verified_keys()
        self.owner = Owner(self.me, self.transcript, keys, self.size, self.member)
        self._move(CommitteePhase.EVALUATING)
        if self.member is None:
            return {}
        return {
            name: self.transcript.allowance(name)
            for name in self.terms.participants
            if name != self.me
        }

    # --- as an owner ------------------------------------------------------------------------------

    def request(self, hashes: Sequence[Point]) -> SignedRequest:
        self._accept(CommitteeEvent.ANSWER)
        assert self.owner is not None
        request, points = self.owner.request(hashes)
        return SignedRequest(request, points, self.signer.sign(request_statement(request)))

    def challenge(self) -> SignedRequest:
        self._accept(CommitteeEvent.ANSWER)
        assert self.owner is not None
        request, points = self.owner.challenge()
        return SignedRequest(request, points, self.signer.sign(request_statement(request)))

    def on_answer(self, signed: SignedAnswer) -> None:
        self._accept(CommitteeEvent.ANSWER)
        assert self.owner is not None
        answer = signed.answer
        party = self.parties.get(answer.member)
        if party is None or answer.member not in self.terms.committee:
            raise ForgedMessage(f"{answer.member} is no member of this round's committee")
        party.verify(answer_statement(answer), signed.signature, f"{answer.member}'s answer")
        if answer.proof:
            try:
                self.owner.challenge_answer(answer, signed.points)
            except BadProof:
                raise ForgedMessage(
                    f"{answer.member} signed a proof of its subset checks that does not hold "
                    "against its commitment: its answers are not its committed share's"
                ) from None
            return
        seq = self.owner.seq_of(answer.request)
        self.owner.answer(seq, answer, signed.points)
        self._answers.put(answer.member, seq, answer, signed.points)

    @property
    def waiting(self) -> int:
        """This owner's chunks still waiting for answers (``Owner.waiting``)."""
        return 0 if self.owner is None else self.owner.waiting

    @property
    def answered(self) -> bool:
        """Every answer and every proved check is in: ``root`` can decide."""
        return self.owner is not None and self.owner.answered

    def root(self) -> SignedRoot:
        """The signed Merkle root of the verified tags; raises (and aborts) if verification
        failed. The tags themselves wait for ``reveal``."""
        self._accept(CommitteeEvent.TAGS)
        assert self.owner is not None
        try:
            tags, positions = self.owner.tags()
        except VerificationFailed as exc:
            culprits = self.owner.blame(self._answers.all())
            self.abort()
            named = ", ".join(culprits) or "no member provably (an answer may have been altered)"
            raise VerificationFailed(f"{exc}; wrong answers signed by: {named}", culprits) from None
        except Exception:
            self.abort()
            raise
        self._answers.clear()
        unsigned = SignedRoot(self.me, self.size, merkle_root(tags), b"")
        signature = self.signer.sign(unsigned.statement(self.terms.round_id))
        self.own_tags, self.positions = tags, positions
        self.own_root = SignedRoot(self.me, self.size, unsigned.root, signature)
        self._move(CommitteePhase.TAGGED)
        return self.own_root

    def reveal(self, roots: Mapping[str, SignedRoot]) -> Tags:
        """The tags, once every participant's root is in, signed by it, over the size it
        announced; those roots are the only ones a delivery may prove against."""
        self._accept(CommitteeEvent.REVEAL)
        assert self.transcript is not None
        if set(roots) != set(self.terms.participants) or roots[self.me] != self.own_root:
            raise ForgedMessage("the tags go out against every participant's root, this one's too")
        for name, signed in roots.items():
            self._verify_root(name, signed)
            if signed.size != self.transcript.sizes[name]:
                raise ForgedMessage(
                    f"{name}'s root covers {signed.size} tags; it announced "
                    f"{self.transcript.sizes[name]}"
                )
        self.roots = dict(roots)
        if self.terms.purpose == "epoch" and self.filter is None:
            # The epoch's checkers test their tags against this, through the coordinator.
            bloom = EpochFilter.build(
                self.terms.round_id, self.me, self.own_tags, FILTER_ERROR_RATE
            )
            self.filter = SignedFilter(bloom, self.signer.sign(filter_statement(bloom)))
        return Tags(self.me, self.own_tags, self.own_root, self.filter)

    def _verify_root(self, name: str, signed: SignedRoot) -> None:
        party = self.parties.get(name)
        if party is None or signed.owner != name:
            raise ForgedMessage(f"a tag root in the name of {name}, not a participant")
        party.verify(signed.statement(self.terms.round_id), signed.signature, f"{name}'s tag root")

    # --- as a member ---------------------------------------------------------------------------

    def on_request(self, signed: SignedRequest) -> SignedAnswer:
        """Answer another owner's request, signed by that owner: the one who is charged."""
        self._accept(CommitteeEvent.REQUEST)
        if self.member is None:
            raise ForgedMessage(f"{self.me} is no member of this round's committee")
        requester = signed.request.requester
        party = self.parties.get(requester)
        if party is None or requester == self.me:
            raise ForgedMessage(f"a request in the name of {requester}, not a partner")
        party.verify(request_statement(signed.request), signed.signature, f"{requester}'s request")
        request = signed.request
        # what an honest owner asks: chunks of the spec's size, then its λ subset checks
        if request.kind == "set" and request.proved and request.count != LAMBDA:
            raise BadMessage(
                f"{requester}'s proved request carries {request.count} points, not its "
                f"{LAMBDA} subset checks"
            )
        if request.kind == "set" and not request.proved and request.count > self.terms.chunk_size:
            raise BadMessage(
                f"{requester}'s request of {request.count} evaluations exceeds the spec's chunk "
                f"size of {self.terms.chunk_size}"
            )
        answer, points = self.member.answer(request, signed.points)
        return SignedAnswer(answer, points, self.signer.sign(answer_statement(answer)))

    def charged(self, requester: str) -> int:
        """The evaluations this member has charged ``requester`` for its set (repeats free)."""
        if self.member is None or self.member.ledger is None:
            return 0
        return self.member.ledger.charged.get((requester, "set"), 0)

    # --- delivery ------------------------------------------------------------------------------

    def deliver(
        self, delivery: NodeDelivery, roots: Mapping[str, SignedRoot]
    ) -> list[VerifiedMatch] | list[SharedCount]:
        """The matches, once every root's signature and every proof holds; the positions in
        ``positions`` order map them to this node's elements."""
        self._accept(CommitteeEvent.DELIVERY)
        if not self.roots or dict(roots) != self.roots:
            raise ForgedMessage("a delivery proved against other roots than those revealed to")
        t = self.terms
        matches = verify_delivery(
            t.round_id,
            self.me,
            self.own_tags,
            delivery,
            roots,
            mode=t.mode,
            threshold=t.threshold,
            counts=t.counts,
        )
        self._move(CommitteePhase.DONE)
        if self.member is not None and self.terms.purpose != "epoch":
            self.member.destroy()  # a watch round's share serves its epoch (``handover``)
        if self.owner is not None:
            self.owner.destroy()
        return matches

    def handover(self) -> Handover:
        """A delivered watch round's share, sorted tags and their positions, for its epoch
        (``core.epoch.WatchEpoch``): from here on only the epoch holds them, and ``abort`` no
        longer reaches them. Once."""
        if self.terms.purpose != "epoch" or self.phase != CommitteePhase.DONE:
            raise WrongPhase(f"{self.subject} hands over no epoch")
        if self.positions is None or self.owner is None or self.transcript is None:
            raise WrongPhase(f"{self.subject} has handed its epoch over already")
        out = Handover(
            self.transcript,
            dict(self.parties),
            self.member,
            self.own_tags,
            self.positions,
            self.owner.next_seq,
        )
        self.member, self.own_tags, self.positions = None, b"", None
        return out

    def by_position(self, matches: Sequence[VerifiedMatch] | Sequence[SharedCount]) -> Delivery:
        """Verified matches as a delivery by element position (``NodeRound.resolve`` maps those
        to the node's sightings): a match names a place in the sorted tags."""
        assert self.positions is not None
        index = {name: i for i, name in enumerate(self.terms.participants)}
        if self.terms.mode == "count":
            return CountResult(
                {index[c.partner]: c.count for c in matches if isinstance(c, SharedCount)}
            )
        found = [m for m in matches if isinstance(m, VerifiedMatch)]
        positions = tuple(int(self.positions[m.position]) for m in found)
        if self.terms.mode == "threshold":
            counted = tuple(m.count for m in found if m.count is not None)
            return ThresholdResult(positions, counted)
        return PairwiseResult(positions, tuple(tuple(index[p] for p in m.partners) for m in found))

    def abort(self) -> None:
        if not COMMITTEE_NODE.final(self.phase):
            self._move(CommitteePhase.ABORTED)
        if self.member is not None:
            self.member.destroy()
        if self.owner is not None:
            self.owner.destroy()
        self._answers.clear()


class CommitteeCoordinator:
    """The coordinator's v2 round: it assembles, relays and matches, and can prove nothing false.

    It holds no share and sees only blinded points, answers and tags."""

    def __init__(self, terms: RoundTerms, caps: Caps | None = None) -> None:
        self.terms = terms
        self.caps = caps or Caps()
        self.prepared: dict[str, Prepared] = {}
        self.signatures: dict[str, bytes] = {}
        self.roots: dict[str, SignedRoot] = {}
        self.tag_sets: dict[str, Tags] = {}

    def on_prepared(self, prepared: Prepared) -> Transcript | None:
        if prepared.node not in self.terms.participants or prepared.node in self.prepared:
            raise BadMessage(f"an unexpected Prepare reply from {prepared.node}")
        if (prepared.commitment is not None) != (prepared.node in self.terms.committee) or (
            prepared.commitment is not None and prepared.commitment.member != prepared.node
        ):
            raise BadMessage(f"{prepared.node}'s commitment does not fit the committee")
        if prepared.check_caps and (
            self.terms.purpose != "epoch"
            or not set(prepared.check_caps) <= set(self.terms.participants) - {prepared.node}
        ):
            raise BadMessage(f"{prepared.node}'s check caps do not fit the round")
        self.caps.check(prepared.node, prepared.size, sum(p.size for p in self.prepared.values()))
        self.prepared[prepared.node] = prepared
        if len(self.prepared) < len(self.terms.participants):
            return None
        sizes = {name: p.size for name, p in self.prepared.items()}
        epoch = self.terms.purpose == "epoch"
        return Transcript(
            self.terms.purpose,
            self.terms.round_id,
            self.terms.spec_digest,
            tuple(
                c
                for name in sorted(self.terms.committee)
                if (c := self.prepared[name].commitment) is not None
            ),
            sizes,
            sizes if epoch else {},
            {(h, c): n for h, p in self.prepared.items() for c, n in p.check_caps.items()},
        )

    def filters(self) -> dict[str, SignedFilter]:
        """A watch round's epoch filters, each as its holder signed it, once every set is in."""
        return {n: t.filter for n, t in self.tag_sets.items() if t.filter is not None}

    def on_signature(self, node: str, signature: bytes) -> dict[str, bytes] | None:
        if node not in self.terms.participants:
            raise BadMessage(f"{node} is not a participant")
        self.signatures[node] = signature
        return (
            dict(self.signatures) if len(self.signatures) == len(self.terms.participants) else None
        )

    def members_for(self, signed: SignedRequest) -> list[str]:
        """Whom an owner's request goes to: every member but the owner."""
        return [m for m in self.terms.committee if m != signed.request.requester]

    def on_root(self, root: SignedRoot) -> dict[str, SignedRoot] | None:
        """Every participant's signed root, to send to every node, once all are in."""
        if root.owner not in self.terms.participants or root.owner in self.roots:
            raise BadMessage(f"an unexpected tag root from {root.owner}")
        announced = self.prepared[root.owner].size
        if root.size != announced:
            raise BadMessage(
                f"{root.owner}'s tag root counts {root.size} tags; it announced {announced}"
            )
        self.roots[root.owner] = root
        return dict(self.roots) if len(self.roots) == len(self.terms.participants) else None

    def on_tags(self, tags: Tags) -> dict[str, tuple[NodeDelivery, dict[str, SignedRoot]]] | None:
        if tags.owner not in self.roots or tags.owner in self.tag_sets:
            raise BadMessage(f"unexpected tags from {tags.owner}")
        if (tags.filter is not None) != (self.terms.purpose == "epoch") or (
            tags.filter is not None
            and (tags.filter.filter.epoch_id, tags.filter.filter.holder)
            != (self.terms.round_id, tags.owner)
        ):
            raise BadMessage(f"{tags.owner}'s epoch filter does not fit the round")
        self.tag_sets[tags.owner] = tags
        if len(self.tag_sets) < len(self.terms.participants):
            return None
        t = self.terms
        deliveries = match(
            t.round_id,
            t.mode,
            t.threshold,
            t.counts,
            {name: ts.tags for name, ts in self.tag_sets.items()},
            # Which t - 1 holders prove a threshold hit is drawn in secret: in a fixed order,
            # a node would learn that the holders before the last one named lack the value.
            seed=secrets.token_bytes(32),
            signed_roots=self.roots,
        )
        return {name: (d, dict(self.roots)) for name, d in deliveries.items()}
