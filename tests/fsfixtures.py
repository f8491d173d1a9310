"""File-system fixtures: a permissive umask, so tests prove modes do not depend on the caller's."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

__all__ = ["umask_022"]


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)
