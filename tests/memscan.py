"""Looking for a 32-byte secret in this process's memory, or in bytes, without a copy of it.

A test records ``fingerprints`` of the secret while it lives: for each form it could take (the
big-endian bytes, as the key travels; the little-endian bytes, as libsecp256k1's scalar limbs lie
in memory on a little-endian machine; its hex), the first 4 bytes, which are not the key, and the
SHA-256 of the whole. ``find`` then reads every readable private mapping through /proc/self/mem
(a process may read its own memory even when it is not dumpable) and hashes what follows each
place where a prefix occurs; ``found_in`` does the same over bytes (a file, a local variable).

The chunks are read into one buffer allocated before the scan, whose own addresses are skipped:
what the scan reads is a copy of the process's memory, and it must not find that copy.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np

KEY_BYTES: Final = 32
PREFIX_BYTES: Final = 4  # 2^-32 false candidates per position, and no part of a key to speak of
LONGEST: Final = 2 * KEY_BYTES  # the hex form
CHUNK: Final = 1 << 22
OVERLAP: Final = LONGEST - 1  # a form that straddles two chunks lies whole in the second
BLOCK: Final = 1 << 12  # the granularity at which zeros are skipped
PAGE: Final = os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True)
class Fingerprint:
    """One form of a secret, recognisable and not recoverable: its length, its first 4 bytes and
    its SHA-256."""

    what: str
    length: int
    prefix: bytes
    digest: bytes


def fingerprints(what: str, secret: memoryview) -> tuple[Fingerprint, ...]:
    """The secret's big-endian, little-endian and hex forms.

    None of them is made as a Python object: each hash reads the buffer, or is fed from it a byte
    (two hex digits) at a time."""
    if len(secret) != KEY_BYTES:
        raise ValueError(f"a {KEY_BYTES}-byte secret, not {len(secret)}")
    backward = hashlib.sha256()
    for i in range(KEY_BYTES - 1, -1, -1):
        backward.update(secret[i : i + 1])
    hexed = hashlib.sha256()
    for i in range(KEY_BYTES):
        hexed.update(b"%02x" % secret[i])
    last = range(KEY_BYTES - 1, KEY_BYTES - 1 - PREFIX_BYTES, -1)
    return (
        Fingerprint(
            f"{what} (big-endian)",
            KEY_BYTES,
            bytes(secret[:PREFIX_BYTES]),
            hashlib.sha256(secret).digest(),
        ),
        Fingerprint(
            f"{what} (little-endian)", KEY_BYTES, bytes(secret[i] for i in last), backward.digest()
        ),
        Fingerprint(
            f"{what} (hex)",
            LONGEST,
            b"".join(b"%02x" % secret[i] for i in range(PREFIX_BYTES // 2)),
            hexed.digest(),
        ),
    )


def _matches(
    data: bytes | bytearray, size: int, needles: Sequence[Fingerprint], low: int, high: int
) -> Iterator[tuple[int, Fingerprint]]:
    """(offset, needle) for every needle that starts in data[low:high] and ends within
    data[:size]."""
    view = memoryview(data)
    try:
        for needle in needles:
            end = min(high + PREFIX_BYTES - 1, size - needle.length + PREFIX_BYTES)
            i = data.find(needle.prefix, low, end)
            while i >= 0:
                if hashlib.sha256(view[i : i + needle.length]).digest() == needle.digest:
                    yield i, needle
                i = data.find(needle.prefix, i + 1, end)
    finally:
        view.release()


def found_in(data: bytes | bytearray, needles: Sequence[Fingerprint]) -> list[str]:
    """The forms of the fingerprinted secrets that ``data`` holds."""
    return [needle.what for _, needle in _matches(data, len(data), needles, 0, len(data))]


@dataclass(frozen=True)
class Mapping:
    start: int
    end: int
    name: str


def private_mappings() -> list[Mapping]:
    """Every readable private mapping of this process: heap, stacks, anonymous memory, and the
    private pages of the files it maps. Shared mappings hold no copy this process made alone;
    [vvar] and [vsyscall] cannot be read."""
    found = []
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split(maxsplit=5)
            perms = fields[1]
            name = fields[5].strip() if len(fields) > 5 else ""
            if perms[0] != "r" or perms[3] != "p" or name in ("[vvar]", "[vsyscall]"):
                continue
            start, end = (int(x, 16) for x in fields[0].split("-"))
            found.append(Mapping(start, end, name))
    return found


@dataclass(frozen=True)
class Found:
    what: str
    address: int
    mapping: str


def find(needles: Sequence[Fingerprint]) -> list[Found]:
    """Every place in this process's private memory that holds a fingerprinted secret.

    Other threads run on meanwhile: what they write during the scan may be missed, which is why a
    test scans once its round has ended everywhere. A page the kernel will not read is skipped."""
    buffer = bytearray(CHUNK)
    mine = ctypes.addressof(ctypes.c_char.from_buffer(buffer))
    mappings = private_mappings()
    found = []
    fd = os.open("/proc/self/mem", os.O_RDONLY)
    view = memoryview(buffer)
    try:
        for start, end in _ranges(mappings, (mine, mine + CHUNK)):
            at = start
            while at < end:
                want = min(CHUNK, end - at)
                try:
                    got = os.preadv(fd, [view[:want]], at)
                except OSError:
                    got = 0
                if got < want:  # the page at at + got cannot be read: go on after it
                    stop, following = got, ((at + got) // PAGE + 1) * PAGE
                elif at + got == end:
                    stop, following = got, end
                else:  # the next chunk starts where a form that may not fit in this one starts
                    stop = got - OVERLAP
                    following = at + stop
                for low, high in _nonzero(buffer, got):
                    # A secret starts at most OVERLAP bytes before the first nonzero byte it holds.
                    starts = max(0, low - OVERLAP), min(high, stop)
                    for i, needle in _matches(buffer, got, needles, *starts):
                        found.append(Found(needle.what, at + i, _name(mappings, at + i)))
                at = following
    finally:
        view.release()
        os.close(fd)
    return found


def _ranges(mappings: Sequence[Mapping], skip: tuple[int, int]) -> Iterator[tuple[int, int]]:
    for m in mappings:
        for start, end in ((m.start, min(m.end, skip[0])), (max(m.start, skip[1]), m.end)):
            if start < end:
                yield start, end


def _nonzero(buffer: bytearray, size: int) -> Iterator[tuple[int, int]]:
    """The runs of ``buffer[:size]``, in BLOCK-sized blocks, that hold a nonzero byte.

    Most of what a process maps is zero (the unused depth of every thread's stack), and
    ``bytearray.find`` crawls over zeros: skipping them makes the scan several times faster."""
    whole = size // BLOCK
    busy = np.ones(-(-size // BLOCK), dtype=bool)  # a partial last block is searched
    if whole:
        words = np.frombuffer(buffer, dtype=np.uint64, count=whole * BLOCK // 8)
        busy[:whole] = words.reshape(whole, -1).any(axis=1)
        del words  # the buffer is exported while an array views it
    edges = np.flatnonzero(np.diff(np.concatenate(([False], busy, [False])).astype(np.int8)))
    for start, end in zip(edges[::2], edges[1::2], strict=True):
        yield int(start) * BLOCK, min(int(end) * BLOCK, size)


def _name(mappings: Sequence[Mapping], address: int) -> str:
    return next(m.name for m in mappings if m.start <= address < m.end) or "[anonymous]"
