"""Reading the TOML configuration files, with errors that name the file and the key.

Shared by node.toml, coordinator.toml and operator.toml: paths in a file are relative to that
file's directory and come back absolute; unknown keys are errors (a typo must not silently fall
back to a default). The three files carry their mTLS material in the same ``[tls]`` table,
read and written here.
"""

from __future__ import annotations

import json
import math
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Final

from blindmatch.core.identity import validate_name
from blindmatch.runtime.metrics_endpoint import DEFAULT_LISTEN
from blindmatch.runtime.net import split_host_port


class ConfigError(Exception):
    """A configuration file is missing, unreadable or invalid; the message names file and key."""


@dataclass(frozen=True)
class TlsPaths:
    """The ``[tls]`` table of every config: the federation CA, this holder's certificate and key."""

    ca: Path
    cert: Path
    key: Path


class TomlReader:
    """Typed access to one parsed file, raising ConfigError naming the file and the key."""

    def __init__(self, path: Path, *, made_by: str) -> None:
        """``made_by`` names the command that writes such a file, for the missing-file hint."""
        self.path = path
        self.base = Path(os.path.abspath(path)).parent
        try:
            with path.open("rb") as f:
                self.data: dict[str, Any] = tomllib.load(f)
        except FileNotFoundError:
            raise ConfigError(
                f"config file {path} does not exist (create one with `{made_by}`)"
            ) from None
        except IsADirectoryError:
            raise ConfigError(f"config file {path} is a directory, not a file") from None
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None

    def fail(self, key: str, problem: str) -> ConfigError:
        return ConfigError(f"{self.path}: {key} {problem}")

    def check(self, ok: bool, key: str, problem: str) -> None:
        if not ok:
            raise self.fail(key, problem)

    def value(self, key: str, table: Mapping[str, Any], default: Any, kind: type) -> Any:
        name = key.rpartition(".")[2]
        if name not in table:
            if default is None:
                raise self.fail(key, "is missing")
            return default
        got = table[name]
        # bool is an int in Python, never a valid count or duration here
        if not isinstance(got, kind) or (isinstance(got, bool) and kind is not bool):
            raise self.fail(key, f"must be {_TOML_TYPE[kind]}, not {got!r}")
        return got

    def table(self, key: str, *, required: bool) -> dict[str, Any]:
        if key not in self.data and not required:
            return {}
        table = self.value(key, self.data, None, dict)
        assert isinstance(table, dict)
        return table

    def integer(
        self, key: str, table: Mapping[str, Any], default: int, *, low: int, high: int | None = None
    ) -> int:
        got = self.value(key, table, default, int)
        assert isinstance(got, int)
        if got < low or (high is not None and got > high):
            bound = f"between {low} and {high}" if high is not None else f"at least {low}"
            raise self.fail(key, f"must be {bound}, not {got}")
        return got

    def seconds(self, key: str, default: float) -> float:
        got = self.value(key, self.data, default, int | float)  # type: ignore[arg-type]
        if not (math.isfinite(got) and got > 0):
            raise self.fail(key, f"must be a positive number of seconds, not {got}")
        return float(got)

    def name(self, key: str, table: Mapping[str, Any], default: str | None) -> str:
        got = self.value(key, table, default, str)
        assert isinstance(got, str)
        self.check(
            is_valid_name(got),
            key,
            f"{got!r} is not a valid name: use a-z, 0-9, '_' and '-', up to 63 characters",
        )
        return got

    def address(self, key: str, got: Any) -> str:
        if not isinstance(got, str):
            raise self.fail(key, f'must be a string "host:port", not {got!r}')
        try:
            split_host_port(got)
        except ValueError as exc:
            raise self.fail(key, f"is not host:port: {exc}") from None
        return got

    def file_path(self, key: str, table: Mapping[str, Any], default: str | None) -> Path:
        got = self.value(key, table, default, str)
        assert isinstance(got, str)
        self.check(bool(got), key, "must not be empty")
        return self.base / got

    def tls(self) -> TlsPaths:
        table = self.table("tls", required=True)
        self.no_unknown(table, "tls", {f.name for f in fields(TlsPaths)})
        return TlsPaths(
            ca=self.file_path("tls.ca", table, None),
            cert=self.file_path("tls.cert", table, None),
            key=self.file_path("tls.key", table, None),
        )

    def no_unknown(self, table: Mapping[str, Any], prefix: str, known: set[str]) -> None:
        extra = sorted(set(table) - known)
        if extra:
            where = f"[{prefix}] " if prefix else ""
            raise ConfigError(
                f"{self.path}: unknown key {where}{', '.join(extra)}; "
                f"known keys: {', '.join(sorted(known))}"
            )


_TOML_TYPE: Final[dict[Any, str]] = {
    str: "a string",
    int: "an integer",
    dict: "a table",
    list: "a list",
    int | float: "a number",
}


def is_valid_name(name: object) -> bool:
    if not isinstance(name, str):
        return False
    try:
        validate_name(name)
    except ValueError:
        return False
    return True


# --- writing ----------------------------------------------------------------------------------


def toml_string(text: str) -> str:
    # A JSON string is a valid TOML basic string (same escapes, \uXXXX for control characters).
    return json.dumps(text, ensure_ascii=False)


def relative_path(path: Path, base: Path | None) -> str:
    """``path`` relative to ``base`` when it lies below it, so the directory can be moved."""
    if base is None or not path.is_absolute():
        return path.as_posix()  # already relative to the file's directory, or kept as given
    try:
        return path.relative_to(base).as_posix()
    except ValueError:
        return path.as_posix()


def tls_lines(tls: TlsPaths, base: Path | None) -> list[str]:
    """The ``[tls]`` table; paths below ``base`` (the file's directory) are written relative."""
    return [
        f"{'[tls]':<33} # mTLS material from the federation CA; paths relative to this file",
        *(
            f"{f.name} = {toml_string(relative_path(getattr(tls, f.name), base))}"
            for f in fields(TlsPaths)
        ),
    ]


def read_listen(r: TomlReader) -> str | None:
    """``[metrics] listen`` of a config file; None when the file has no ``[metrics]`` table."""
    if "metrics" not in r.data:
        return None
    table = r.table("metrics", required=True)
    r.no_unknown(table, "metrics", {"listen"})
    return r.address("metrics.listen", table.get("listen", DEFAULT_LISTEN))
