"""Who the node believes during a round: the operator behind a spec, the partners behind names.

The coordinator carries every message of a round and is not trusted (docs/PROTOCOL.md, "Signed
specs"). A node acts on a spec (or a run of a standing order) only once the operator's signature
over it is verified, and on a partner name only with that partner's certificate in hand; what
partners sign during the round is verified by the core against those certificates
(``committee``). This module holds the node's federation key and CA and applies
``blindmatch.core.signing`` with the node's own clock.

A node serving plaintext (``--insecure``, loopback only) has no federation identity:
``Unauthenticated`` then signs nothing and verifies nothing, as its transport does.
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from blindmatch.core.errors import ForgedMessage
from blindmatch.core.identity import Identity
from blindmatch.core.orders import ScheduledRun
from blindmatch.core.signing import (
    SignedSpec,
    Signer,
    Signs,
    Trust,
    Verifies,
    verify_order,
    verify_spec,
)
from blindmatch.core.spec import RoundSpec
from blindmatch.runtime.net import TlsConfig

INSECURE_OPERATOR = "(insecure)"


class RoundAuthority:
    """The node's federation identity (its TLS certificate and key) and the operators its
    node.toml lets start rounds (None: any operator of the federation)."""

    def __init__(
        self,
        tls: TlsConfig,
        operators: frozenset[str] | None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._signer = Signer(tls.cert, tls.key)
        self._trust = Trust(tls.ca)
        self.operators = operators
        self._clock = clock

    @property
    def certificate(self) -> bytes:
        """What partners verify this node's signatures with (sent in PrepareReply)."""
        return self._signer.cert_pem

    @property
    def signer(self) -> Signs:
        return self._signer

    def operator(self, signed: SignedSpec | ScheduledRun, spec: RoundSpec) -> str:
        """The name of the operator who signed ``spec`` if this node accepts it from them. A run
        of a standing order is accepted as a spec is: the operator's signature over the order,
        and the run due now by this node's clock (``spec`` is the run's, derived here). A repair
        of a watch order's run is accepted within that run's period, up to MAX_REPAIRS of them
        (core/orders.py): the order signed it, and its id is used once like any other."""
        now = self._now()
        if isinstance(signed, ScheduledRun):
            party = verify_order(self._trust, signed.signed, now=now)
            if signed.repair:
                signed.order.check_repair(signed.run, signed.repair, now.timestamp())
            else:
                signed.order.check_due(signed.run, now.timestamp())
        else:
            party = verify_spec(self._trust, signed, issued=spec.issued, now=now)
        name = party.identity.name
        if self.operators is not None and name not in self.operators:
            raise ForgedMessage(
                f"operator {name} may not start rounds on this node (policy operators: "
                f"{', '.join(sorted(self.operators))})"
            )
        return name

    def partners(self, spec: RoundSpec, certificates: Mapping[str, bytes]) -> dict[str, Verifies]:
        """Every participant's certificate, verified: issued by the federation CA to that very
        node name, valid now. A missing, extra, foreign or invented one refuses the round."""
        extra = sorted(set(certificates) - set(spec.participants))
        if extra:
            raise ForgedMessage(f"certificates of non-participants sent: {', '.join(extra)}")
        now = self._now()
        parties: dict[str, Verifies] = {}
        for name in spec.participants:
            cert = certificates.get(name)
            if not cert:
                raise ForgedMessage(f"no certificate for participant {name}: is it a real node?")
            parties[name] = self._trust.party(cert, now=now, role="node", names=(name,))
        return parties

    def _now(self) -> datetime.datetime:
        return datetime.datetime.fromtimestamp(self._clock(), datetime.UTC)


@dataclass(frozen=True, slots=True)
class Unverified:
    """A partner of a plaintext node: named, never verified (loopback, ``--insecure`` only)."""

    identity: Identity

    def sign(self, message: bytes) -> bytes:
        return b""

    def verify(self, message: bytes, signature: bytes, what: str) -> None:
        return None


class Unauthenticated:
    """A plaintext node's stand-in: no identity, nothing signed, nothing verified."""

    certificate = b""
    signer: Signs = Unverified(Identity("node", "(insecure)"))

    def operator(self, signed: SignedSpec | ScheduledRun, spec: RoundSpec) -> str:
        return INSECURE_OPERATOR

    def partners(self, spec: RoundSpec, certificates: Mapping[str, bytes]) -> dict[str, Verifies]:
        return {name: Unverified(Identity("node", name)) for name in spec.participants}


Authority = RoundAuthority | Unauthenticated
