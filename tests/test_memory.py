"""The servers' malloc setting (blindmatch.runtime.memory)."""

from __future__ import annotations

import platform

import pytest

from blindmatch.runtime.memory import return_large_buffers


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="a glibc setting")
def test_glibc_takes_the_large_buffer_threshold() -> None:
    assert return_large_buffers() is True
