"""Ids read as operators type them (blindmatch/cli/ids.py): whole, or a unique prefix."""

from __future__ import annotations

import pytest

from blindmatch.cli.errors import BAD_INPUT, BadInput
from blindmatch.cli.ids import by_prefix

IDS = ["722e15a76972aa", "722e15a76972bb", "9f00", "9f"]


def test_a_unique_prefix_names_its_id_and_a_whole_id_names_itself() -> None:
    assert by_prefix("722e15a76972a", IDS) == "722e15a76972aa"
    assert by_prefix("9f", IDS) == "9f"  # whole, though also the start of 9f00
    assert by_prefix("0", IDS) is None  # the caller says what unknown means for its command


def test_an_ambiguous_prefix_is_bad_input_naming_the_candidates() -> None:
    with pytest.raises(BadInput) as err:
        by_prefix("722e15a76972", IDS, "round")
    assert err.value.status == BAD_INPUT
    assert "722e15a76972aa, 722e15a76972bb" in str(err.value) and "2 round ids" in str(err.value)
