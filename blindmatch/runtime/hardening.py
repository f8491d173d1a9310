"""Keeping secrets at rest private: no core dumps, owner-only files and directories.

A round's share lives only in memory; a core dump (a crash, or ``gcore`` by another process of
the same user) would write it to disk. Servers call ``no_core_dumps`` at start, and the hashing
pool runs it in every worker it spawns. What does go to disk (the coordinator's state and watch
filters) is readable by its owner only, whatever the umask.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import resource
import stat
import sys
import threading
import time
from pathlib import Path
from typing import BinaryIO, Final

_PR_SET_DUMPABLE: Final = 4


def no_core_dumps() -> None:
    """Forbid core dumps of this process (and, on Linux, ptrace attach by other processes).

    Best effort where the platform lacks a part: the rlimit is POSIX, prctl is Linux only.
    """
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
            libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0)


def exit_with_parent(parent: int, every: float = 0.5) -> None:
    """End this process (``os._exit``) as soon as ``parent`` is no longer its parent.

    For worker processes, which must not outlive the server that spawned them, also after a
    ``kill -9`` that gives it no chance to stop them. A daemon thread polls ``os.getppid()``: an
    orphan is re-parented to init or a subreaper, so its parent id changes. Not Linux's
    PR_SET_PDEATHSIG: that fires when the *thread* that spawned the worker ends, and the hashing
    pool spawns from short-lived threads too, so it would kill healthy workers.
    """

    def watch() -> None:
        # The first check is immediate: the parent may have died before this process got here.
        while os.getppid() == parent:
            time.sleep(every)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def dumpable() -> bool:
    """Whether this process may dump core: for tests and `serve`'s startup line."""
    soft, _ = resource.getrlimit(resource.RLIMIT_CORE)
    if soft != 0:
        return True
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        return bool(libc.prctl(3, 0, 0, 0, 0))  # PR_GET_DUMPABLE
    return False


# --- files at rest ----------------------------------------------------------------------------

PRIVATE_FILE: Final = 0o600
PRIVATE_DIR: Final = 0o700


def private_dir(path: Path) -> None:
    """Create ``path`` (and parents) if needed and make it 0700 whatever the umask."""
    path.mkdir(mode=PRIVATE_DIR, parents=True, exist_ok=True)
    os.chmod(path, PRIVATE_DIR)  # mkdir's mode is filtered by the umask; chmod's is not


def open_private(path: Path) -> BinaryIO:
    """Open ``path`` for writing, truncated, 0600 whatever the umask (also if it existed)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE)
    try:
        os.fchmod(fd, PRIVATE_FILE)
    except BaseException:
        os.close(fd)
        raise
    return os.fdopen(fd, "wb")


def exposed_mode(path: Path) -> int | None:
    """``path``'s permission bits if its group or others have any access to it, else None.

    For secrets a user put in place (TLS keys, connector passwords): they are refused, as ssh
    refuses such a key, rather than fixed behind the user's back. Raises what ``stat`` raises.
    """
    mode = stat.S_IMODE(path.stat().st_mode)
    return mode if mode & 0o077 else None


def make_private(*paths: Path) -> None:
    """Take group and world permissions off each existing file of ``paths``."""
    for path in paths:
        try:
            mode = stat.S_IMODE(path.stat().st_mode)
        except FileNotFoundError:
            continue
        if mode & 0o077:
            os.chmod(path, mode & ~0o077)
