"""Ids as operators type them: the whole id, or a unique prefix of it.

Tables print round ids cut to 12 characters (and schedule ids as they are), so the id an operator
copies from a table is often a prefix. Every command that takes a round or schedule id reads it
here, so that they all agree on what a prefix names.
"""

from __future__ import annotations

from collections.abc import Iterable

from blindmatch.cli.errors import BadInput

SHOWN_CANDIDATES = 5  # ids an ambiguity error names; more would bury the message


def by_prefix(given: str, ids: Iterable[str], what: str = "round") -> str | None:
    """The id ``given`` names: itself, or the only id that starts with it; None when none does
    (the caller says what an unknown id means for its command).

    Raises BadInput naming the candidates when more than one id starts with ``given``.
    """
    known = set(ids)
    if given in known:
        return given
    matching = sorted(i for i in known if i.startswith(given))
    if len(matching) == 1:
        return matching[0]
    if not matching:
        return None
    shown = ", ".join(matching[:SHOWN_CANDIDATES])
    more = (
        f" and {len(matching) - SHOWN_CANDIDATES} more" if len(matching) > SHOWN_CANDIDATES else ""
    )
    raise BadInput(
        f"{given!r} is the start of {len(matching)} {what} ids ({shown}{more}); give more of it"
    )
