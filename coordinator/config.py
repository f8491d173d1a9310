"""The coordinator's and the operator's TOML configuration files.

Paths in a file are relative to that file's directory; ``load_*`` returns them absolute, so a
loaded config works from any working directory. Unknown keys are errors (a typo must not silently
fall back to a default), and every error names the file and the key.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Final

from blindmatch.cli.logconfig import log_lines, read_log
from blindmatch.cli.tomlconfig import (
    ConfigError,
    TlsPaths,
    TomlReader,
    is_valid_name,
    read_listen,
    relative_path,
    tls_lines,
)
from blindmatch.cli.tomlconfig import toml_string as _s
from blindmatch.core.spec import Caps
from blindmatch.runtime.logs import LogSettings

COORDINATOR_FILE: Final = "coordinator.toml"
OPERATOR_FILE: Final = "operator.toml"
ANY_OPERATOR: Final = "*"
_DEFAULT_CAPS: Final = Caps()


@dataclass(frozen=True)
class Limits:
    """What the coordinator takes on at once, before it knows a caller is honest."""

    concurrent_calls: int = 128  # gRPC calls served or queued; more are refused
    checks_in_flight: int = 16  # checks (Check and Seal calls) relayed at once, all nodes
    checks_per_checker: int = 2  # of those, from one node


@dataclass(frozen=True)
class CoordinatorConfig:
    listen: str
    tls: TlsPaths
    nodes: Mapping[str, str]  # node name -> "host:port", the registry
    name: str = "coordinator"
    state: Path = Path("coordinator.sqlite")
    call_timeout: float = 60.0  # seconds: deadline of each unary call to a node
    round_timeout: float = 3600.0  # seconds: a round not finished by then fails
    epoch_poll: float = 5.0  # seconds between asking the nodes whether they still hold the epoch
    chunk_size: int = 4096  # elements per chunk
    operators: tuple[str, ...] = (ANY_OPERATOR,)
    caps: Caps = field(default_factory=Caps)
    metrics: str | None = None  # [metrics] listen: the Prometheus endpoint; None = no endpoint
    limits: Limits = field(default_factory=Limits)
    log: LogSettings = field(default_factory=LogSettings)  # [log]: where `coordinator serve` logs


@dataclass(frozen=True)
class OperatorConfig:
    name: str
    coordinator: str  # "host:port"
    tls: TlsPaths
    # the name in the coordinator's certificate; None (a file older than the key): any coordinator
    coordinator_name: str | None = None


# --- loading ----------------------------------------------------------------------------------


def load_config(path: Path | str) -> CoordinatorConfig:
    """Read a coordinator.toml."""
    r = TomlReader(Path(path), made_by="blindmatch coordinator init")
    # unknown keys first: a misspelt key is the cause of the "missing" error it would lead to
    r.no_unknown(r.data, "", {f.name for f in fields(CoordinatorConfig)})
    name = r.name("name", r.data, "coordinator")
    listen = r.address("listen", r.value("listen", r.data, None, str))
    operators = r.value("operators", r.data, [ANY_OPERATOR], list)
    r.check(bool(operators), "operators", 'names nobody; list operator names, or "*" for any')
    for op in operators:
        r.check(
            isinstance(op, str) and (op == ANY_OPERATOR or is_valid_name(op)),
            "operators",
            f'entry {op!r} is neither "*" nor a valid operator name',
        )
    caps_table = r.table("caps", required=False)
    r.no_unknown(caps_table, "caps", {f.name for f in fields(Caps)})
    limits_table = r.table("limits", required=False)
    r.no_unknown(limits_table, "limits", {f.name for f in fields(Limits)})
    limits = {
        f.name: r.integer(f"limits.{f.name}", limits_table, f.default, low=1)  # type: ignore[arg-type]
        for f in fields(Limits)
    }
    nodes: dict[str, str] = {}
    for node, address in r.table("nodes", required=True).items():
        r.check(
            is_valid_name(node), f"nodes.{node}", "is not a valid node name (a-z, 0-9, _ and -)"
        )
        nodes[node] = r.address(f"nodes.{node}", address)
    return CoordinatorConfig(
        name=name,
        listen=listen,
        state=r.file_path("state", r.data, "coordinator.sqlite"),
        call_timeout=r.seconds("call_timeout", CoordinatorConfig.call_timeout),
        round_timeout=r.seconds("round_timeout", CoordinatorConfig.round_timeout),
        epoch_poll=r.seconds("epoch_poll", CoordinatorConfig.epoch_poll),
        chunk_size=r.integer("chunk_size", r.data, CoordinatorConfig.chunk_size, low=1, high=65536),
        operators=tuple(operators),
        tls=r.tls(),
        caps=Caps(
            max_set=r.integer("caps.max_set", caps_table, _DEFAULT_CAPS.max_set, low=0),
            max_total=r.integer("caps.max_total", caps_table, _DEFAULT_CAPS.max_total, low=0),
        ),
        nodes=nodes,
        metrics=read_listen(r),
        limits=Limits(**limits),
        log=read_log(r),
    )


def load_operator_config(path: Path | str) -> OperatorConfig:
    """Read an operator.toml."""
    r = TomlReader(Path(path), made_by="blindmatch operator init")
    r.no_unknown(r.data, "", {f.name for f in fields(OperatorConfig)})
    return OperatorConfig(
        name=r.name("name", r.data, None),
        coordinator=r.address("coordinator", r.value("coordinator", r.data, None, str)),
        tls=r.tls(),
        coordinator_name=(
            r.name("coordinator_name", r.data, None) if "coordinator_name" in r.data else None
        ),
    )


# --- writing ----------------------------------------------------------------------------------


def write_config(path: Path | str, config: CoordinatorConfig) -> None:
    """Write a complete, commented coordinator.toml; refuses to overwrite an existing file.

    Absolute paths below the file's directory are written relative to it; relative paths are
    written as they are, that is, taken as relative to the file's directory.
    """
    target = Path(path)
    base = Path(os.path.abspath(target)).parent
    lines = [
        "# blindmatch coordinator configuration",
        _line("name", _s(config.name), "must match the name in this coordinator's certificate"),
        _line("listen", _s(config.listen), "host:port this coordinator listens on"),
        _line(
            "state",
            _s(relative_path(config.state, base)),
            "round state (SQLite); never holds a tag or an indicator",
        ),
        _line(
            "call_timeout",
            _num(config.call_timeout),
            "seconds: deadline of each unary call to a node",
        ),
        _line(
            "round_timeout",
            _num(config.round_timeout),
            "seconds: a round that has not finished by then fails",
        ),
        _line(
            "epoch_poll",
            _num(config.epoch_poll),
            "seconds between asking the nodes whether they still hold the open epoch",
        ),
        _line("chunk_size", str(config.chunk_size), "elements per chunk"),
        _line(
            "operators",
            "[" + ", ".join(_s(o) for o in config.operators) + "]",
            'operator names allowed to start rounds ("*" = any operator certificate)',
        ),
        "",
        *tls_lines(config.tls, base),
        "",
        "[caps]",
        _line("max_set", str(config.caps.max_set), "largest set accepted from one node"),
        _line("max_total", str(config.caps.max_total), "all sets of one round together"),
        "",
        _line("[limits]", None, "what it takes on at once (docs/OPERATIONS.md, Resource limits)"),
        _line(
            "concurrent_calls",
            str(config.limits.concurrent_calls),
            "gRPC calls served or queued; more are refused",
        ),
        _line(
            "checks_in_flight",
            str(config.limits.checks_in_flight),
            "early-warning checks relayed at once; more are refused",
        ),
        _line("checks_per_checker", str(config.limits.checks_per_checker), "of those, per node"),
        "",
        _line("[nodes]", None, 'the registry: node name = "host:port"'),
        *(f"{n} = {_s(a)}" for n, a in config.nodes.items()),
        *_metrics_lines(config.metrics),
        "",
        *log_lines(config.log, base),
    ]
    _write_new(target, "\n".join(lines) + "\n")


def write_operator_config(path: Path | str, config: OperatorConfig) -> None:
    """Write a complete, commented operator.toml; refuses to overwrite an existing file."""
    target = Path(path)
    base = Path(os.path.abspath(target)).parent
    lines = [
        "# blindmatch operator configuration",
        _line("name", _s(config.name), "must match the name in this operator's certificate"),
        _line(
            "coordinator",
            _s(config.coordinator),
            "host:port where `blindmatch coordinator serve` listens",
        ),
        *(
            []
            if config.coordinator_name is None
            else [
                _line(
                    "coordinator_name",
                    _s(config.coordinator_name),
                    "the name in its certificate: no other coordinator certificate is accepted",
                )
            ]
        ),
        "",
        *tls_lines(config.tls, base),
    ]
    _write_new(target, "\n".join(lines) + "\n")


def _metrics_lines(listen: str | None) -> list[str]:
    if listen is None:
        return []
    return [
        "",
        _line("[metrics]", None, "Prometheus endpoint (docs/OPERATIONS.md, Metrics)"),
        _line("listen", _s(listen), "names nodes and carries volumes: keep it on loopback"),
    ]


def _line(key: str, value: str | None, comment: str) -> str:
    assignment = key if value is None else f"{key} = {value}"
    return f"{assignment:<33} # {comment}"


def _num(seconds: float) -> str:
    return str(int(seconds)) if seconds == int(seconds) else repr(seconds)


def _write_new(path: Path, text: str) -> None:
    try:
        with path.open("x", encoding="utf-8") as f:
            f.write(text)
    except FileExistsError:
        raise ConfigError(f"{path} exists; refusing to overwrite it (move it away first)") from None
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc.strerror}") from None
