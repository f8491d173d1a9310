"""node.toml: reading it (with errors that name the file and key) and writing a complete one."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from blindmatch.cli.logconfig import log_lines, read_log
from blindmatch.cli.tomlconfig import TlsPaths, TomlReader, is_valid_name, read_listen, tls_lines
from blindmatch.core.canon import KINDS
from blindmatch.core.identity import validate_name, validate_role
from blindmatch.core.spec import Policy
from blindmatch.core.watch_rules import (
    DEFAULT_CHECK_BUDGET,
    DEFAULT_MAX_EPOCH,
    WatchSettings,
    parse_duration,
)
from blindmatch.runtime.logs import LogSettings
from node.budgets import BudgetPolicy, window_text
from node.connectors import SINK_TYPES, SOURCE_TYPES
from node.importing import DEFAULT_TLP
from node.store import TLP_LEVELS, normalize_tlp

DEFAULT_TLPS = tuple(t for t in TLP_LEVELS if t != "red")
DEFAULT_WATCH = WatchSettings(max_epoch=parse_duration(DEFAULT_MAX_EPOCH))


@dataclass(frozen=True, slots=True)
class ConnectorConfig:
    """One ``[[sources]]`` or ``[[sinks]]`` entry of node.toml (docs/OPERATIONS.md, Connectors).

    The secret itself is never here: ``password_env`` (``key_env`` for MISP's API key) names an
    environment variable, or ``password_file`` (``key_file``) a file readable by its owner only;
    node.connectors.base reads it when a connection is made.
    """

    name: str
    type: str
    url: str  # TAXII: the discovery URL or an API root; MISP: the base URL; a MISP feed: its URL
    collection: str = ""  # TAXII: a collection id or title
    username: str = ""
    password_env: str = ""
    password_file: Path | None = None
    # TAXII: a bearer token (OpenCTI's TAXII feeds take one) from this environment variable
    token_env: str = ""
    timeout: float = 60.0  # seconds any one HTTP call may take before it fails
    every: float | None = None  # seconds between pulls under `node serve`; None = `node sync` only
    tlp: str | None = None  # for objects without a marking; None = import.default_tlp
    verify: bool = True  # check the server's TLS certificate
    ca_file: Path | None = None  # a CA bundle for that check instead of the system's
    # MISP REST (type "misp")
    key_env: str = ""  # the environment variable holding the API key
    key_file: Path | None = None  # or a 0600 file holding it
    to_ids: bool = True  # only attributes flagged for detection
    published: bool = True  # only attributes of published events
    tags: tuple[str, ...] = ()  # only attributes carrying (or inheriting) one of these tags
    warninglists: bool = False  # drop values on MISP's warning lists (pymispwarninglists)


DEFAULT_ROUND_LIFETIME: Final = 6 * 3600.0
# A round holds two streams per participant; checks and imports take a few more.
DEFAULT_CONCURRENT_CALLS: Final = 64


@dataclass(frozen=True, slots=True)
class NodeConfig:
    path: Path
    name: str
    listen: str
    store: Path
    coordinator: str  # the coordinator certificate name allowed to call round RPCs
    workers: int  # hashing processes; 0 = one per core
    round_timeout: float  # seconds a round may stay silent before the node drops it
    tls: TlsPaths
    policy: Policy
    tlps: tuple[str, ...]  # TLP levels allowed into rounds
    default_tlp: str  # for imported records that carry none
    # Early warning (docs/WATCH.md): where checks go, and what this node blinds per partner.
    coordinator_address: str = ""  # host:port of the coordinator; "" = this node cannot check
    check_budget: int = DEFAULT_CHECK_BUDGET  # elements blinded per partner's checks per epoch
    # [watch]: whether watch rounds are allowed, the epoch cap, who may call Check
    watch: WatchSettings = DEFAULT_WATCH
    budgets: BudgetPolicy = field(default_factory=BudgetPolicy)  # per partner, rolling window
    # [policy] operators: who may sign the specs of rounds here; None = any operator ("*")
    operators: frozenset[str] | None = None
    sources: tuple[ConnectorConfig, ...] = ()  # where `node sync` pulls indicators from
    sinks: tuple[ConnectorConfig, ...] = ()  # where `node push` sends sightings of matches
    metrics: str | None = None  # [metrics] listen: the Prometheus endpoint; None = no endpoint
    # the longest a round's key lives after Prepare, whatever the coordinator does (seconds)
    round_lifetime: float = DEFAULT_ROUND_LIFETIME
    concurrent_calls: int = DEFAULT_CONCURRENT_CALLS  # calls served or queued; more: refused
    # [policy] max_age: seconds an indicator stays in rounds after it was last imported or
    # pulled (node.store: set_max_age); None = for ever
    max_age: float | None = None
    log: LogSettings = field(default_factory=LogSettings)  # [log]: where `node serve` logs

    @property
    def worker_count(self) -> int:
        return self.workers or os.cpu_count() or 1


def load_config(path: str | Path) -> NodeConfig:
    r = TomlReader(Path(path), made_by="blindmatch node init")
    data = r.data
    pol = r.table("policy", required=False)
    imp = r.table("import", required=False)
    defaults = Policy()
    caps = {
        key: r.integer(f"policy.{key}", pol, getattr(defaults, key), low=0)
        for key in ("max_partner_set", "max_own_set", "max_round_elements")
    }
    r.no_unknown(
        pol,
        "policy",
        {"partners", "operators", "tlp", "kinds", "trusted_committee", "max_age", *caps},
    )
    r.no_unknown(imp, "import", {"default_tlp"})
    watch = _watch_settings(r)
    budgets = _budgets(r)
    partners = _anyone_or(r, pol, "partners", "node")
    operators = _anyone_or(r, pol, "operators", "operator")
    trusted = r.value("policy.trusted_committee", pol, [], list)
    for name in trusted:
        r.check(
            isinstance(name, str) and is_valid_name(name),
            "policy.trusted_committee",
            f"names {name!r}, not a node name",
        )
    kinds = r.value("policy.kinds", pol, list(KINDS), list)
    bad = [k for k in kinds if k not in KINDS]
    r.check(not bad, "policy.kinds", f"names unknown kind(s) {bad}; known: {', '.join(KINDS)}")
    try:
        tlps = tuple(normalize_tlp(t) for t in r.value("policy.tlp", pol, list(DEFAULT_TLPS), list))
        default_tlp = normalize_tlp(r.value("import.default_tlp", imp, DEFAULT_TLP, str))
    except (ValueError, AttributeError) as exc:
        raise r.fail("policy.tlp / import.default_tlp", f"is wrong: {exc}") from None
    coordinator_address = r.value("coordinator_address", data, "", str)
    if coordinator_address:
        r.address("coordinator_address", coordinator_address)
    r.no_unknown(
        data,
        "",
        {
            "name",
            "listen",
            "store",
            "coordinator",
            "workers",
            "round_timeout",
            "round_lifetime",
            "concurrent_calls",
            "coordinator_address",
            "check_budget",
            "tls",
            "policy",
            "import",
            "watch",
            "budgets",
            "sources",
            "sinks",
            "metrics",
            "log",
        },
    )
    return NodeConfig(
        path=r.path,
        name=r.name("name", data, None),
        listen=r.address("listen", r.value("listen", data, None, str)),
        store=r.file_path("store", data, "store.sqlite"),
        coordinator=r.name("coordinator", data, "coordinator"),
        workers=r.integer("workers", data, 0, low=0),
        round_timeout=r.seconds("round_timeout", 600.0),
        round_lifetime=r.seconds("round_lifetime", DEFAULT_ROUND_LIFETIME),
        concurrent_calls=r.integer("concurrent_calls", data, DEFAULT_CONCURRENT_CALLS, low=1),
        tls=r.tls(),
        policy=Policy(
            partners=partners,
            kinds=frozenset(kinds),
            max_partner_set=caps["max_partner_set"],
            max_own_set=caps["max_own_set"],
            max_round_elements=caps["max_round_elements"],
            trusted_committee=frozenset(trusted),
        ),
        tlps=tlps,
        default_tlp=default_tlp,
        coordinator_address=coordinator_address,
        check_budget=r.integer("check_budget", data, DEFAULT_CHECK_BUDGET, low=0),
        watch=watch,
        budgets=budgets,
        operators=operators,
        sources=_connectors(r, "sources", SOURCE_TYPES),
        sinks=_connectors(r, "sinks", SINK_TYPES),
        metrics=read_listen(r),
        log=read_log(r),
        max_age=_max_age(r, pol),
    )


_MAX_AGE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(s|m|h|d)\s*")
_AGE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _max_age(r: TomlReader, policy: Mapping[str, Any]) -> float | None:
    """``[policy] max_age`` ("180d"; "" or absent: never expire). Its own parser: the watch
    duration rules cap a length at an epoch's, far shorter than a retention period."""
    text = r.value("policy.max_age", policy, "", str)
    if not text.strip():
        return None
    found = _MAX_AGE.fullmatch(text)
    r.check(
        found is not None and float(found[1]) > 0,
        "policy.max_age",
        f'is {text!r}; expected a length with s, m, h or d, such as "180d", or "" for never',
    )
    assert found is not None
    return float(found[1]) * _AGE_UNITS[found[2]]


def _anyone_or(
    r: TomlReader, policy: Mapping[str, Any], key: str, what: str
) -> frozenset[str] | None:
    """``[policy] key``: a list of names, or "*" (None: anyone)."""
    names = r.value(f"policy.{key}", policy, ["*"], list)
    for name in names:
        r.check(
            name == "*" or is_valid_name(name),
            f"policy.{key}",
            f'entry {name!r} is neither "*" nor a valid {what} name',
        )
    return None if "*" in names else frozenset(names)


def _watch_settings(r: TomlReader) -> WatchSettings:
    """``[watch]``: ``enabled``, ``max_epoch`` (a duration) and ``check_clients`` (checkers)."""
    table = r.table("watch", required=False)
    r.no_unknown(table, "watch", {"enabled", "max_epoch", "check_clients"})
    try:
        max_epoch = parse_duration(r.value("watch.max_epoch", table, DEFAULT_MAX_EPOCH, str))
    except ValueError as exc:
        raise r.fail("watch.max_epoch", f"is wrong: {exc}") from None
    entries = r.value("watch.check_clients", table, [], list)
    clients = [_check_client(r, entry) for entry in entries]
    enabled = table.get("enabled", True)
    r.check(isinstance(enabled, bool), "watch.enabled", f"must be true or false, not {enabled!r}")
    return WatchSettings(
        enabled=enabled,
        max_epoch=max_epoch,
        check_clients=tuple(clients),
    )


# Why a check client must be a checker: the other roles can do more than a SIEM should.
_NOT_A_CHECKER: Final = {
    "operator": "is an operator certificate, which can start rounds on every node; "
    "a SIEM needs only Check",
    "coordinator": "is a coordinator certificate, which runs rounds and must never see the "
    "values a node checks; a SIEM needs only Check",
    "node": "is a node certificate: this node's own certificate may always call Check, and "
    "another node checks through its own node (a check here is made and charged in this "
    "node's name)",
}


def _check_client(r: TomlReader, entry: object) -> tuple[str, str]:
    """One ``[watch] check_clients`` entry, "checker/NAME" or a bare "NAME": ("checker", NAME)."""
    key = "watch.check_clients"
    r.check(isinstance(entry, str), key, f'entry {entry!r} must be a string, "checker/NAME"')
    role, sep, name = str(entry).partition("/")
    if not sep:
        role, name = "checker", role
    try:
        validate_role(role)
        validate_name(name)
    except ValueError as exc:
        raise r.fail(key, f'entry {entry!r} is not "checker/NAME" or "NAME": {exc}') from None
    if role != "checker":
        raise r.fail(
            key,
            f"entry {entry!r} {_NOT_A_CHECKER.get(role, 'is not a checker')}; issue a checker "
            "certificate with "
            f'`blindmatch pki issue PKI_DIR {name} --role checker` and list it as "checker/{name}"',
        )
    return role, name


def _budgets(r: TomlReader) -> BudgetPolicy:
    table = r.table("budgets", required=False)
    r.no_unknown(table, "budgets", {"window", "round_elements", "check_elements"})
    d = BudgetPolicy()
    window = r.value("budgets.window", table, window_text(d.window), str)
    try:
        seconds = parse_duration(window)
    except ValueError as exc:
        raise r.fail("budgets.window", f"is wrong: {exc}") from None
    return BudgetPolicy(
        window=seconds,
        round_elements=r.integer("budgets.round_elements", table, d.round_elements, low=0),
        check_elements=r.integer("budgets.check_elements", table, d.check_elements, low=0),
    )


_COMMON_KEYS: Final = {"name", "type", "url", "every", "tlp", "verify", "ca_file", "timeout"}
_BASIC_AUTH_KEYS: Final = {"username", "password_env", "password_file"}
# The keys each type accepts: a key of another type is a mistake worth naming.
_CONNECTOR_KEYS: Final = {
    "taxii": _COMMON_KEYS | _BASIC_AUTH_KEYS | {"collection", "token_env"},
    "misp": _COMMON_KEYS | {"key_env", "key_file", "to_ids", "published", "tags", "warninglists"},
    "misp-feed": _COMMON_KEYS | _BASIC_AUTH_KEYS,
}
_DURATION: Final = re.compile(r"(\d+(?:\.\d+)?)\s*(s|m|h|d)")
_UNIT_SECONDS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _connectors(r: TomlReader, key: str, types: Mapping[str, str]) -> tuple[ConnectorConfig, ...]:
    entries = r.value(key, r.data, [], list)
    found: list[ConnectorConfig] = []
    for index, entry in enumerate(entries):
        where = f"{key}[{index}]"
        r.check(isinstance(entry, dict), where, f"must be a table ([[{key}]]), not {entry!r}")
        found.append(_connector(r, where, entry, types))
    names = [c.name for c in found]
    dupes = sorted({n for n in names if names.count(n) > 1})
    r.check(not dupes, key, f"name(s) {', '.join(dupes)} used more than once")
    return tuple(found)


def _connector(
    r: TomlReader, where: str, table: Mapping[str, Any], types: Mapping[str, str]
) -> ConnectorConfig:
    kind = r.value(f"{where}.type", table, None, str)
    r.check(kind in types, f"{where}.type", f"{kind!r} is not one of: {', '.join(types)}")
    r.no_unknown(table, where, _CONNECTOR_KEYS[kind])
    url = r.value(f"{where}.url", table, None, str)
    r.check(
        url.startswith(("https://", "http://")), f"{where}.url", f"{url!r} is not an http(s) URL"
    )
    password_env = r.value(f"{where}.password_env", table, "", str)
    password_file = table.get("password_file")
    r.check(
        not (password_env and password_file),
        where,
        "sets both password_env and password_file; choose one",
    )
    token_env = r.value(f"{where}.token_env", table, "", str)
    r.check(
        not (token_env and (password_env or password_file)),
        where,
        "sets both token_env (a bearer token) and a password; a server takes one or the other",
    )
    key_env = r.value(f"{where}.key_env", table, "", str)
    r.check(
        not (key_env and "key_file" in table), where, "sets both key_env and key_file; choose one"
    )
    r.check(
        kind != "misp" or bool(key_env) or "key_file" in table,
        where,
        "a MISP source needs its API key: set key_env (or key_file)",
    )
    tags = r.value(f"{where}.tags", table, [], list)
    r.check(
        all(isinstance(t, str) and t for t in tags), f"{where}.tags", "must be a list of tag names"
    )
    tlp = table.get("tlp")
    if tlp is not None:
        try:
            tlp = normalize_tlp(r.value(f"{where}.tlp", table, None, str))
        except ValueError as exc:
            raise r.fail(f"{where}.tlp", f"is wrong: {exc}") from None
    return ConnectorConfig(
        name=r.name(f"{where}.name", table, None),
        type=kind,
        url=url,
        collection=r.value(f"{where}.collection", table, None if kind == "taxii" else "", str),
        username=r.value(f"{where}.username", table, "", str),
        password_env=password_env,
        password_file=(
            None if password_file is None else r.file_path(f"{where}.password_file", table, None)
        ),
        token_env=token_env,
        timeout=_duration(r, f"{where}.timeout", table.get("timeout", 60)) or 60.0,
        every=_duration(r, f"{where}.every", table.get("every")),
        tlp=tlp,
        verify=_flag(r, f"{where}.verify", table.get("verify", True)),
        ca_file=None if "ca_file" not in table else r.file_path(f"{where}.ca_file", table, None),
        key_env=key_env,
        key_file=None if "key_file" not in table else r.file_path(f"{where}.key_file", table, None),
        to_ids=_flag(r, f"{where}.to_ids", table.get("to_ids", True)),
        published=_flag(r, f"{where}.published", table.get("published", True)),
        tags=tuple(tags),
        warninglists=_flag(r, f"{where}.warninglists", table.get("warninglists", False)),
    )


def _flag(r: TomlReader, key: str, got: object) -> bool:
    r.check(isinstance(got, bool), key, f"must be true or false, not {got!r}")
    return bool(got)


def _duration(r: TomlReader, key: str, got: object) -> float | None:
    """ "90s", "15m", "1h", "1d" (or a number of seconds) as seconds; None when absent."""
    if got is None:
        return None
    if isinstance(got, int | float) and not isinstance(got, bool) and got > 0:
        return float(got)
    match = _DURATION.fullmatch(got.strip()) if isinstance(got, str) else None
    seconds = float(match[1]) * _UNIT_SECONDS[match[2]] if match else 0.0
    r.check(seconds > 0, key, f'must be a duration such as "90s", "15m", "1h" or "1d", not {got!r}')
    return seconds


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
    """A complete, commented node.toml; relative paths are relative to the file's directory."""
    tls = "\n".join(tls_lines(TlsPaths(Path(ca), Path(cert), Path(key)), None))
    kinds = ", ".join(f'"{k}"' for k in KINDS)
    tlps = ", ".join(f'"{t}"' for t in DEFAULT_TLPS)
    p = Policy()
    b = BudgetPolicy()
    log = "\n".join(log_lines(LogSettings(), None))
    return f"""\
# blindmatch node configuration. Paths are relative to this file's directory.

name = "{name}"                 # must match the name in this node's certificate
listen = "{listen}"        # where `blindmatch node serve` listens (host:port)
store = "store.sqlite"          # the private SQLite store of sightings, matches and audit log
coordinator = "{coordinator}"     # the only coordinator (certificate name) allowed to run rounds here
workers = 0                     # hashing processes; 0 = one per CPU core
round_timeout = 600             # seconds a round may stay silent before this node drops it and its key
round_lifetime = {DEFAULT_ROUND_LIFETIME:.0f}          # seconds a round's key lives at most after Prepare, whatever the coordinator does (less for small rounds)
concurrent_calls = {DEFAULT_CONCURRENT_CALLS}           # gRPC calls served or queued at once; more are refused (RESOURCE_EXHAUSTED)
coordinator_address = "{coordinator_address}"       # host:port of the coordinator, for `blindmatch node check` ("" = no checks)
check_budget = {DEFAULT_CHECK_BUDGET}             # the check cap this node signs for each partner per watch epoch (a check of n values costs n, n + 40 above 64)

{tls}

[policy]                        # what this node lets into rounds
partners = ["*"]                # partner node names it matches with; "*" = every node of the federation
operators = ["*"]               # operators whose signed round specs it accepts; "*" = every operator of the federation
tlp = [{tlps}]   # TLP levels that may enter a round (RED never, by default)
kinds = [{kinds}]
max_partner_set = {p.max_partner_set}       # largest partner set it evaluates in one round
max_own_set = {p.max_own_set}           # largest own set it contributes to one round
max_round_elements = {p.max_round_elements}   # everything it blinds in one round, all partners together
# A round whose committee (the nodes whose key shares, together, could test guesses against this
# node's values) does not include this node is joined only if it holds every node named here.
# [] = this node must be in the committee itself (docs/OPERATIONS.md, "The committee").
trusted_committee = []
max_age = ""                    # e.g. "180d": an indicator not imported or pulled again within it leaves rounds ("" = never)

[budgets]                       # per partner, per rolling window: so many small rounds cannot add up to a dictionary
window = "{window_text(b.window)}"                  # the rolling window (s, m, h or d)
round_elements = {b.round_elements}        # elements of one partner's sets this node blinds per window (two rounds at max_partner_set)
check_elements = {b.check_elements}         # what one partner's check caps may add up to per window (charged at each watch round's Begin)

[import]
default_tlp = "{DEFAULT_TLP}"           # TLP given to imported records that carry no marking (override: --tlp)

{log}

[watch]                         # early warning (docs/WATCH.md)
enabled = true                  # take part in watch rounds (keep a round's key for an epoch)
max_epoch = "{DEFAULT_MAX_EPOCH}"              # the longest epoch this node keeps a key for; longer watch rounds are refused
# Besides this node's own certificate, who may call its Check: checker certificates, as
# "checker/NAME" or "NAME", e.g. ["siem-1"] for one issued by `blindmatch pki issue PKI_DIR siem-1
# --role checker`. Operator certificates are refused here: they can start rounds on every node.
check_clients = []
"""
