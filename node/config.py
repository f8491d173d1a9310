"""node.toml: reading it (with errors that name the file and key) and writing a complete one."""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from blindmatch.canon import KINDS
from blindmatch.net import split_host_port
from blindmatch.protocol import Policy
from blindmatch.watch import DEFAULT_CHECK_BUDGET
from node.importing import DEFAULT_TLP
from node.store import TLP_LEVELS, normalize_tlp

DEFAULT_TLPS = tuple(t for t in TLP_LEVELS if t != "red")


class ConfigError(Exception):
    """node.toml is missing, unreadable or wrong; the message names the file and the key."""


@dataclass(frozen=True, slots=True)
class NodeConfig:
    path: Path
    name: str
    listen: str
    store: Path
    coordinator: str  # the coordinator certificate name allowed to call round RPCs
    workers: int  # blinding processes; 0 = one per core
    round_timeout: float  # seconds a round may stay silent before the node drops it
    ca: Path
    cert: Path
    key: Path
    policy: Policy
    tlps: tuple[str, ...]  # TLP levels allowed into rounds
    default_tlp: str  # for imported records that carry none
    # Early warning (docs/WATCH.md): where checks go, and what this node blinds per partner.
    coordinator_address: str = ""  # host:port of the coordinator; "" = this node cannot check
    check_budget: int = DEFAULT_CHECK_BUDGET  # elements blinded per partner's checks per epoch

    @property
    def worker_count(self) -> int:
        return self.workers or os.cpu_count() or 1


def load_config(path: str | Path) -> NodeConfig:
    path = Path(path)
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: no such file (create one with `blindmatch node init`)"
        ) from None
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read node config: {exc}") from None
    base = path.parent

    def get(table: dict[str, Any], key: str, typ: type, where: str, default: Any = ...) -> Any:
        if key not in table:
            if default is ...:
                raise ConfigError(f"{path}: missing key {where}{key}")
            return default
        value = table[key]
        if typ is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, typ) or (isinstance(value, bool) and typ is not bool):
            raise ConfigError(f"{path}: {where}{key} must be a {typ.__name__}, not {value!r}")
        return value

    def table(key: str) -> dict[str, Any]:
        value = data.get(key, {})
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: [{key}] must be a table")
        return value

    tls = table("tls")
    pol = table("policy")
    partners = get(pol, "partners", list, "policy.", ["*"])
    kinds = get(pol, "kinds", list, "policy.", list(KINDS))
    bad = [k for k in kinds if k not in KINDS]
    if bad:
        raise ConfigError(f"{path}: policy.kinds: unknown kind(s) {bad}; known: {', '.join(KINDS)}")
    try:
        tlps = tuple(normalize_tlp(t) for t in get(pol, "tlp", list, "policy.", list(DEFAULT_TLPS)))
        default_tlp = normalize_tlp(
            get(table("import"), "default_tlp", str, "import.", DEFAULT_TLP)
        )
    except ValueError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    defaults = Policy()
    caps = {
        key: get(pol, key, int, "policy.", getattr(defaults, key))
        for key in ("max_partner_set", "max_own_set", "max_round_elements")
    }
    for key, value in caps.items():
        if value < 0:
            raise ConfigError(f"{path}: policy.{key} must not be negative")
    policy = Policy(
        partners=None if "*" in partners else frozenset(str(p) for p in partners),
        kinds=frozenset(kinds),
        **caps,
    )
    workers = get(data, "workers", int, "", 0)
    timeout = get(data, "round_timeout", float, "", 600.0)
    if workers < 0 or timeout <= 0:
        raise ConfigError(f"{path}: workers must be >= 0 and round_timeout > 0")
    coordinator_address = get(data, "coordinator_address", str, "", "")
    if coordinator_address:
        try:
            split_host_port(coordinator_address)
        except ValueError as exc:
            raise ConfigError(f"{path}: coordinator_address: {exc}") from None
    check_budget = get(data, "check_budget", int, "", DEFAULT_CHECK_BUDGET)
    if check_budget < 0:
        raise ConfigError(f"{path}: check_budget must not be negative")
    return NodeConfig(
        path=path,
        name=get(data, "name", str, ""),
        listen=get(data, "listen", str, ""),
        store=base / get(data, "store", str, "", "store.sqlite"),
        coordinator=get(data, "coordinator", str, "", "coordinator"),
        workers=workers,
        round_timeout=timeout,
        ca=base / get(tls, "ca", str, "tls."),
        cert=base / get(tls, "cert", str, "tls."),
        key=base / get(tls, "key", str, "tls."),
        policy=policy,
        tlps=tlps,
        default_tlp=default_tlp,
        coordinator_address=coordinator_address,
        check_budget=check_budget,
    )


def render_config(
    *,
    name: str,
    listen: str,
    ca: str,
    cert: str,
    key: str,
    coordinator: str = "coordinator",
    coordinator_address: str = "",
) -> str:
    """A complete, commented node.toml; paths are relative to the file's directory."""
    kinds = ", ".join(f'"{k}"' for k in KINDS)
    tlps = ", ".join(f'"{t}"' for t in DEFAULT_TLPS)
    p = Policy()
    return f"""\
# blindmatch node configuration. Paths are relative to this file's directory.

name = "{name}"                 # must match the name in this node's certificate
listen = "{listen}"        # where `blindmatch node serve` listens (host:port)
store = "store.sqlite"          # the private SQLite store of sightings, matches and audit log
coordinator = "{coordinator}"     # the only coordinator (certificate name) allowed to run rounds here
workers = 0                     # blinding processes; 0 = one per CPU core
round_timeout = 600             # seconds a round may stay silent before this node drops it and its key
coordinator_address = "{coordinator_address}"       # host:port of the coordinator, for `blindmatch node check` ("" = no checks)
check_budget = {DEFAULT_CHECK_BUDGET}             # elements this node blinds for each partner's checks per watch epoch

[tls]                           # mTLS material from the federation CA (`blindmatch pki ...`)
ca = "{ca}"
cert = "{cert}"
key = "{key}"

[policy]                        # what this node lets into rounds
partners = ["*"]                # partner node names it matches with; "*" = every node of the federation
tlp = [{tlps}]   # TLP levels that may enter a round (RED never, by default)
kinds = [{kinds}]
max_partner_set = {p.max_partner_set}       # largest partner set it re-blinds in one round
max_own_set = {p.max_own_set}           # largest own set it contributes to one round
max_round_elements = {p.max_round_elements}   # everything it blinds in one round, all partners together

[import]
default_tlp = "{DEFAULT_TLP}"           # TLP given to imported records that carry no marking (override: --tlp)
"""
