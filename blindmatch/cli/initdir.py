"""What ``node init``, ``coordinator init`` and ``operator init`` share: a private directory that
receives a certificate from the federation CA and then the config file.

The directory holds a private key (and, for a node, every sighting), so it is created 0700 and
the key 0600 whatever the umask; a directory that already exists keeps its mode, since the
operator chose it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from blindmatch.cli.errors import BadInput
from blindmatch.cli.tomlconfig import TlsPaths
from blindmatch.runtime.hardening import PRIVATE_DIR
from blindmatch.runtime.net import split_host_port
from blindmatch.runtime.pki import DEFAULT_SERVER_HOSTS, IssuedPaths


def refuse_existing(config_path: Path) -> None:
    if config_path.exists() or config_path.is_symlink():
        raise BadInput(f"{config_path} exists; refusing to overwrite it (move it away first)")


def server_hosts(listen: str) -> list[str]:
    """The names a server listening on ``listen`` is dialled by, for its certificate."""
    host, _ = split_host_port(listen)
    # an unspecified address (listen on every interface) is not a name anyone dials
    return [h for h in dict.fromkeys([host, *DEFAULT_SERVER_HOSTS]) if h not in ("0.0.0.0", "::")]


@contextlib.contextmanager
def init_dir(path: Path) -> Iterator[Path]:
    """Create ``path`` 0700; if the block fails, a directory created here is removed if empty."""
    created = not path.exists()
    path.mkdir(mode=PRIVATE_DIR, parents=True, exist_ok=True)
    if created:
        os.chmod(path, PRIVATE_DIR)  # mkdir's mode is filtered by the umask; chmod's is not
    try:
        yield path
    except BaseException:
        if created:
            with contextlib.suppress(OSError):
                path.rmdir()
        raise


def absolute(issued: IssuedPaths) -> TlsPaths:
    # absolute, so that a config writer stores them relative to the config's own directory
    return TlsPaths(ca=issued.ca.absolute(), cert=issued.cert.absolute(), key=issued.key.absolute())
