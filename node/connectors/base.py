"""What every connector is: a Source yields pages of import events, a Sink takes matches.

Rules:
- A source never touches the store. ``pull(cursor)`` yields ``Page``s, each with the events a
  parser made of it (node.importers: Record / Skipped / Invalid) and the cursor to resume from
  once that page is stored; node.connectors.sync stores a page and its cursor together.
- A sink never touches the store either: ``push(node, matches)`` sends what it is given and
  returns a ``Delivery`` naming the matches the remote side confirmed, object by object;
  node.connectors.push marks those pushed, and only those.
- Secrets never sit in node.toml: ``password_env`` (``key_env``, ``token_env``) names an
  environment variable, or ``password_file`` (``key_file``) a file no one but its owner may read
  (a wider file is refused, as ssh does).
- Every HTTP call a connector makes has a timeout (``timeout``, default 60 s): a server that
  stops answering fails the call instead of holding ``node serve``'s connector thread for ever.
- ``ConnectorError`` means the operation failed (server unreachable, wrong password, refused):
  the CLI exits 1. A wrong setting is a ``ConfigError`` (exit 2).
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from blindmatch.cli.tomlconfig import ConfigError
from blindmatch.runtime.hardening import exposed_mode
from node.config import ConnectorConfig
from node.connectors import SINK_TYPES, SOURCE_TYPES
from node.importers import Event
from node.store import OutgoingMatch


class ConnectorError(Exception):
    """A source or sink could not do what was asked; the message names it and says why.

    ``done`` is what the operation completed before it failed (a SyncResult, a PushResult), so
    the operator hears what was stored or pushed, not a zero."""

    def __init__(self, message: str, done: object = None) -> None:
        super().__init__(message)
        self.done = done


@dataclass(frozen=True, slots=True)
class Delivery:
    """What a sink confirmed of one ``push``: only these matches may be marked pushed."""

    confirmed: list[OutgoingMatch]  # every object a sighting of each needs was confirmed
    objects: int  # objects the sink confirmed
    problems: list[str]  # why the others were not (one line per refused or pending object)


@dataclass(frozen=True, slots=True)
class Page:
    """One unit a source fetched: stored in one transaction, then ``cursor`` is saved."""

    name: str  # how the import audit names it, e.g. "national-taxii page 3"
    fmt: str  # the audit's format column: "taxii", "misp", ...
    fetched: int  # objects received
    events: Iterator[Event]
    cursor: str | None  # where the next pull starts once this page is stored; None = unchanged


class Source(Protocol):
    config: ConnectorConfig

    def pull(self, cursor: str | None) -> Iterator[Page]:
        """Everything added since ``cursor`` (None: everything), page by page."""
        ...


class Sink(Protocol):
    config: ConnectorConfig

    def push(self, node: str, matches: Sequence[OutgoingMatch]) -> Delivery:
        """Send sightings of ``matches`` from ``node``; which of them the remote side confirmed.

        Partners are named only where the match names them (the round's mode delivered names).
        Raises ConnectorError only when nothing can be known (unreachable, refused credentials).
        """
        ...


def open_source(config: ConnectorConfig) -> Source:
    source: Source = _load(SOURCE_TYPES, config)(config)
    return source


def open_sink(config: ConnectorConfig) -> Sink:
    sink: Sink = _load(SINK_TYPES, config)(config)
    return sink


def _load(registry: dict[str, str], config: ConnectorConfig) -> type:
    target = registry.get(config.type)
    if target is None:
        raise ConfigError(f"connector {config.name}: type {config.type!r} is not supported here")
    module, _, name = target.partition(":")
    cls: type = getattr(importlib.import_module(module), name)
    return cls


def read_secret(config: ConnectorConfig) -> str | None:
    """The secret ``config`` points at (a password, or MISP's API key), or None when it names
    none (no authentication)."""
    for env_key, file_key in (("password_env", "password_file"), ("key_env", "key_file")):
        env: str = getattr(config, env_key)
        path: Path | None = getattr(config, file_key)
        if env:
            secret = os.environ.get(env)
            if not secret:
                raise ConfigError(
                    f"connector {config.name}: environment variable {env} ({env_key}) is not set"
                )
            return secret
        if path is not None:
            return _secret_file(config.name, file_key, path)
    return None


def read_token(config: ConnectorConfig) -> str | None:
    """The bearer token ``token_env`` names, or None when it names none."""
    if not config.token_env:
        return None
    token = os.environ.get(config.token_env)
    if not token:
        raise ConfigError(
            f"connector {config.name}: environment variable {config.token_env} (token_env)"
            " is not set"
        )
    return token


def _secret_file(name: str, key: str, path: Path) -> str:
    try:
        mode = exposed_mode(path)
        if mode is not None:
            raise ConfigError(
                f"connector {name}: {key} {path} is readable by others"
                f" (mode {mode:04o}); make it 0600"
            )
        secret = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"connector {name}: cannot read {key} {path}: {exc.strerror}") from None
    if not secret:
        raise ConfigError(f"connector {name}: {key} {path} is empty")
    return secret
