"""Signed statements: a party's signature verifies only for its statement, its role and its name."""

from __future__ import annotations

import datetime

import pytest

from blindmatch.core.delivery import tag_root_statement
from blindmatch.core.errors import ForgedMessage
from blindmatch.core.identity import PkiError
from blindmatch.core.signing import Signer, Trust, spec_digest, statement
from blindmatch.runtime.pki import CertMaterial, issue, new_ca
from tests.pkifixtures import leaf_with_uris

NOW = datetime.datetime.now(datetime.UTC)
CA = new_ca()
OTHER_CA = new_ca()  # same subject name as CA, another key
STRANGE_CA = new_ca("another federation")


def signer(name: str, role: str = "node", ca: object = CA) -> Signer:
    material = issue(ca, name, role)  # type: ignore[arg-type]
    return Signer(material.cert_pem, material.key_pem)


ALPHA = signer("alpha")
BRAVO = signer("bravo")
OPS = signer("ops", "operator")
# what alpha signs as an owner: the root of its tags (statements bound field by field are
# tested with their modules, e.g. test_delivery.py for this one)
MESSAGE = tag_root_statement("r1", "alpha", 3, b"\x09" * 32)


def test_a_signed_statement_verifies_for_its_signer() -> None:
    party = Trust(CA.cert_pem).party(ALPHA.cert_pem, now=NOW, role="node", names=["alpha"])
    party.verify(MESSAGE, ALPHA.sign(MESSAGE), "the tag root")
    assert party.identity.name == "alpha"


def test_another_statement_is_refused() -> None:
    party = Trust(CA.cert_pem).party(ALPHA.cert_pem, now=NOW, role="node", names=["alpha"])
    other = tag_root_statement("r1", "alpha", 4, b"\x09" * 32)
    with pytest.raises(ForgedMessage, match="not signed by node/alpha"):
        party.verify(other, ALPHA.sign(MESSAGE), "the tag root")


def test_another_partys_signature_is_refused() -> None:
    party = Trust(CA.cert_pem).party(ALPHA.cert_pem, now=NOW, role="node", names=["alpha"])
    with pytest.raises(ForgedMessage, match="not signed by node/alpha"):
        party.verify(MESSAGE, BRAVO.sign(MESSAGE), "the tag root")


@pytest.mark.parametrize("signature", [b"", b"\x30" * 200, b"garbage"])
def test_malformed_signatures_are_refused(signature: bytes) -> None:
    party = Trust(CA.cert_pem).party(ALPHA.cert_pem, now=NOW, role="node", names=None)
    with pytest.raises(ForgedMessage):
        party.verify(MESSAGE, signature, "the tag root")


def test_a_certificate_must_have_the_expected_role_and_name() -> None:
    trust = Trust(CA.cert_pem)
    with pytest.raises(ForgedMessage, match="does not have the node role"):
        trust.party(OPS.cert_pem, now=NOW, role="node", names=None)
    with pytest.raises(ForgedMessage, match="is not one of bravo"):
        trust.party(ALPHA.cert_pem, now=NOW, role="node", names=["bravo"])


def test_a_certificate_of_another_ca_is_refused() -> None:
    stranger = signer("alpha", ca=STRANGE_CA)
    with pytest.raises(ForgedMessage, match="not issued by the federation CA"):
        Trust(CA.cert_pem).party(stranger.cert_pem, now=NOW, role="node", names=["alpha"])


def test_a_certificate_whose_issuer_name_is_copied_is_refused() -> None:
    forged: CertMaterial = issue(OTHER_CA, "alpha", "node")
    with pytest.raises(ForgedMessage, match="federation CA"):
        Trust(CA.cert_pem).party(forged.cert_pem, now=NOW, role="node", names=["alpha"])


def test_an_expired_or_future_certificate_is_refused() -> None:
    party_cert = ALPHA.cert_pem
    trust = Trust(CA.cert_pem)
    with pytest.raises(ForgedMessage, match="not valid at"):
        trust.party(party_cert, now=NOW + datetime.timedelta(days=800), role="node", names=None)
    with pytest.raises(ForgedMessage, match="not valid at"):
        trust.party(party_cert, now=NOW - datetime.timedelta(days=2), role="node", names=None)


def test_a_certificate_without_an_identity_is_refused() -> None:
    odd = leaf_with_uris(CA, [])
    with pytest.raises(ForgedMessage, match="unusable certificate"):
        Trust(CA.cert_pem).party(odd.cert_pem, now=NOW, role="node", names=None)


@pytest.mark.parametrize("cert", [b"", b"not a certificate", b"x" * 20000])
def test_garbage_certificates_are_refused(cert: bytes) -> None:
    with pytest.raises(ForgedMessage):
        Trust(CA.cert_pem).party(cert, now=NOW, role="node", names=None)


def test_a_signer_refuses_a_key_of_another_certificate() -> None:
    alpha = issue(CA, "alpha", "node")
    bravo = issue(CA, "bravo", "node")
    with pytest.raises(PkiError, match="does not belong"):
        Signer(alpha.cert_pem, bravo.key_pem)


def test_statements_separate_kinds_and_field_boundaries() -> None:
    assert statement("chunk", "ab", "c") != statement("chunk", "a", "bc")
    assert statement("chunk", "a") != statement("check", "a")
    assert statement("chunk", 1) != statement("chunk", b"\x01")
    assert spec_digest(b"a") != spec_digest(b"b")
