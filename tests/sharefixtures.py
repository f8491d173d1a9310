"""The shares nodes draw during a test, recorded as they are made (``Member.__init__`` draws one):
a test then asserts what became of each (destroyed, never drawn)."""

from __future__ import annotations

import pytest

from blindmatch.core.member import Member

__all__ = ["members"]


@pytest.fixture
def members(monkeypatch: pytest.MonkeyPatch) -> list[Member]:
    """Every v2 share drawn while the test runs, puppets' included: the real members."""
    drawn: list[Member] = []
    init = Member.__init__

    def recording(self: Member, purpose: str, ident: str, name: str) -> None:
        init(self, purpose, ident, name)
        drawn.append(self)

    monkeypatch.setattr(Member, "__init__", recording)
    return drawn
