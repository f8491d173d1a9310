"""Built-in sample data: every nation's sightings, deterministic, with overlaps known in advance.

The demo and the tests need data whose right answer is known without running the protocol. This
module invents it from a seeded ``random.Random`` (no network, no files read);
``blindmatch.demo.sample_files`` writes it in the four formats CERTs exchange: a plain list, CSV, a
STIX 2.1 bundle and a MISP event.

Design of one federation of nations, each holding exactly ``size`` distinct indicators:
- shared by every nation: about 4% of ``size``, at least one of each kind. The first two are
  showcases: ``195.127.0.11`` (also written ``3279880203``, ``0xc3.0x7f.0x0.0xb``,
  ``::ffff:195.127.0.11``, ...) and ``straße.example`` (also ``xn--strae-oqa.example``,
  ``XN--STRAE-OQA.EXAMPLE``, ``Straße.Example.``, ...).
- shared by each pair of nations: about 6% of ``size`` per nation, split over its partners.
- TLP:RED overlaps: a few indicators every nation holds as RED (they never match), and a few every
  nation holds where exactly one of them marks it RED (only the others match on it).
- the rest private to one nation, a few of them RED.
Every nation spells a shared indicator its own way (legacy IPv4 forms, IDN U-labels and A-labels,
upper case, trailing dots, URL ports, fragments and escapes, bracketed IPv6, CIDR with host bits
set or as IPv4-mapped IPv6), so matching only works because the importer canonicalises. Some indicators appear twice in one
nation's files, as real feeds overlap, always with the same TLP.

``expected_matches`` gives what a pairwise round must deliver: plain set intersection of the
canonical forms (``blindmatch.core.canon.canonicalize``, exactly as the importer calls it), RED left
out, as node policy does by default.
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import combinations
from typing import Final

from blindmatch.core.canon import KINDS, canonicalize

DEFAULT_SEED: Final = 20260101
NATION_NAMES: Final = (
    "aurelia",
    "borduria",
    "caledon",
    "dravia",
    "estoria",
    "florin",
    "galdora",
    "hesperia",
)
# Indicators every nation holds, each spelled in several ways; the demo shows them.
SHOWCASES: Final = (("ipv4", "195.127.0.11"), ("domain", "xn--strae-oqa.example"))
MIN_NATIONS: Final = 2
MIN_SIZE: Final = 100
FORMATS: Final = ("text", "csv", "stix", "misp")
FILE_NAMES: Final = {
    "text": "blocklist.txt",
    "csv": "sightings.csv",
    "stix": "stix-bundle.json",
    "misp": "misp-event.json",
}
# The TLP a plain list gets: it has no column for one, so the import default applies.
TEXT_TLP: Final = "amber"
# TLP 2.0's labels, least strict first: a nation holding an indicator under two labels holds it
# under the stricter one, as a node's store merges them (tests check the store uses this order).
TLP_ORDER: Final = ("clear", "green", "amber", "amber+strict", "red")

_KIND_WEIGHTS: Final = {
    "ipv4": 18,
    "ipv6": 6,
    "cidr": 4,
    "domain": 18,
    "url": 16,
    "email": 8,
    "md5": 8,
    "sha1": 6,
    "sha256": 10,
    "sha512": 6,
}
_TLP_WEIGHTS: Final = {"clear": 10, "green": 35, "amber": 45, "amber+strict": 10}
_FORMAT_WEIGHTS: Final = {"text": 40, "csv": 25, "stix": 15, "misp": 20}
_DUPLICATE_SHARE: Final = 0.05
_PRIVATE_RED_SHARE: Final = 0.01
_TAGS: Final = (
    "phishing",
    "c2",
    "botnet",
    "ransomware",
    "scanner",
    "malware-delivery",
    "credential-theft",
    "apt",
)
WORDS: Final = (
    "update",
    "cdn",
    "login",
    "secure",
    "mail",
    "portal",
    "files",
    "sync",
    "cloud",
    "static",
    "api",
    "auth",
    "account",
    "billing",
    "invoice",
    "docs",
    "drive",
    "office",
    "verify",
    "support",
)
_IDNWORDS: Final = (
    "straße",
    "bücher",
    "köln",
    "zürich",
    "café",
    "kraków",
    "αθήνα",
    "москва",
    "東京",
    "münchen",
)
_SUFFIXES: Final = ("example", "test", "example.net", "example.org", "invalid")
EPOCH: Final = int(datetime(2025, 1, 1, tzinfo=UTC).timestamp())
DAY: Final = 86400


@dataclass(frozen=True, slots=True)
class Spelling:
    """One way of writing an indicator: the kind a file states for it, and the text."""

    hint: str  # a blindmatch.core.canon kind
    text: str
    auto: bool  # whether kind detection ("auto", as for a plain list) reads it correctly


@dataclass(frozen=True, slots=True)
class SampleSighting:
    """One record in one nation's files, and the indicator it was made from."""

    kind: str  # the designed indicator: kind and canonical value
    value: str
    fmt: str  # which file: one of FORMATS
    hint: str  # the kind the importer will be told: a canon kind, or "auto"
    raw: str  # as written in the file
    tlp: str
    first_seen: int  # unix seconds
    last_seen: int
    tags: tuple[str, ...]

    @property
    def key(self) -> tuple[str, str]:
        return (self.kind, self.value)


Matches = dict[str, dict[tuple[str, str], set[str]]]


@dataclass(frozen=True)
class OverlapPlan:
    """How many distinct indicators each part of the design holds."""

    shared_all: int  # held by every nation, RED nowhere
    per_pair: int  # held by exactly one pair of nations, for each pair
    red_all: int  # held by every nation, RED everywhere
    red_one: int  # held by every nation, RED in exactly one (nation i % N for the i-th)
    private: int  # per nation


def overlap_plan(nations: int, size: int) -> OverlapPlan:
    """The overlap design for `nations` nations of `size` indicators each."""
    if nations < MIN_NATIONS or nations > len(NATION_NAMES):
        raise ValueError(
            f"sample data has {MIN_NATIONS} to {len(NATION_NAMES)} nations, not {nations}"
        )
    if size < MIN_SIZE:
        raise ValueError(f"sample data needs at least {MIN_SIZE} indicators per nation, not {size}")
    shared_all = max(len(KINDS) + 2, size * 4 // 100)
    per_pair = max(2, size * 6 // 100 // (nations - 1))
    red_all = max(2, size // 200)
    red_one = max(nations, size // 100)
    private = size - shared_all - (nations - 1) * per_pair - red_all - red_one
    return OverlapPlan(shared_all, per_pair, red_all, red_one, private)


def nation_names(count: int) -> list[str]:
    """The first `count` built-in nation names."""
    if not MIN_NATIONS <= count <= len(NATION_NAMES):
        raise ValueError(f"choose {MIN_NATIONS} to {len(NATION_NAMES)} nations, not {count}")
    return list(NATION_NAMES[:count])


@dataclass(frozen=True)
class Samples:
    nations: tuple[str, ...]
    size: int
    seed: int
    plan: OverlapPlan
    sightings: Mapping[str, tuple[SampleSighting, ...]]

    def expected_matches(self) -> Matches:
        """Per nation: each of its indicators partners also hold -> those partners (RED excluded).

        Computed by canonicalising every record as the importer does, merging a nation's records
        of one indicator to the strictest TLP as the store does, and intersecting plain sets.
        """
        eligible: dict[str, set[tuple[str, str]]] = {}
        for nation, records in self.sightings.items():
            tlp_of: dict[tuple[str, str], int] = {}
            for s in records:
                indicator = canonicalize(s.hint, s.raw)
                key = (indicator.kind, indicator.value)
                tlp_of[key] = max(tlp_of.get(key, 0), TLP_ORDER.index(s.tlp))
            red = TLP_ORDER.index("red")
            eligible[nation] = {key for key, rank in tlp_of.items() if rank < red}
        result: Matches = {nation: {} for nation in self.nations}
        for a, b in combinations(self.nations, 2):
            for key in eligible[a] & eligible[b]:
                result[a].setdefault(key, set()).add(b)
                result[b].setdefault(key, set()).add(a)
        return result


def generate(nations: Sequence[str], size: int, seed: int = DEFAULT_SEED) -> Samples:
    """Every nation's sightings; the same arguments always give the same data."""
    names = tuple(nations)
    if len(set(names)) != len(names):
        raise ValueError(f"nation names must differ: {', '.join(names)}")
    plan = overlap_plan(len(names), size)
    rng = random.Random(seed)
    maker = _Maker(rng)
    out: dict[str, list[SampleSighting]] = {n: [] for n in names}
    position = {n: i for i, n in enumerate(names)}

    def hold(group: Sequence[str], *, kind: str | None = None, red: Sequence[str] = ()) -> None:
        base = maker.new(kind or _weighted(rng, _KIND_WEIGHTS))
        start = rng.randrange(len(base.spellings))
        for nation in group:
            tlp = "red" if nation in red else _weighted(rng, _TLP_WEIGHTS)
            # Offsetting by the nation's position makes partners pick different spellings.
            out[nation].append(maker.sighting(base, tlp, start + position[nation]))

    showcases = [maker.showcase_ipv4(), maker.showcase_domain()]
    for base in showcases:
        for nation in names:
            tlp = _weighted(rng, _TLP_WEIGHTS)
            out[nation].append(maker.sighting(base, tlp, position[nation]))
    for i in range(plan.shared_all - len(showcases)):
        hold(names, kind=KINDS[i] if i < len(KINDS) else None)
    for a, b in combinations(names, 2):
        for _ in range(plan.per_pair):
            hold((a, b))
    for _ in range(plan.red_all):
        hold(names, red=names)
    for i in range(plan.red_one):
        hold(names, red=(names[i % len(names)],))
    for nation in names:
        for _ in range(plan.private):
            red = (nation,) if rng.random() < _PRIVATE_RED_SHARE else ()
            hold((nation,), red=red)
    for nation in names:
        records = out[nation]
        for original in rng.sample(records, int(len(records) * _DUPLICATE_SHARE)):
            base = maker.bases[original.key]
            records.append(maker.sighting(base, original.tlp, rng.randrange(len(base.spellings))))
        rng.shuffle(records)
    return Samples(names, size, seed, plan, {n: tuple(out[n]) for n in names})


def expected_matches(nations: Sequence[str], size: int, seed: int = DEFAULT_SEED) -> Matches:
    """What a pairwise round over `generate(nations, size, seed)` must deliver to each nation."""
    return generate(nations, size, seed).expected_matches()


# --- inventing indicators ---------------------------------------------------------------------


@dataclass(frozen=True)
class _Base:
    kind: str
    value: str  # canonical
    spellings: tuple[Spelling, ...]  # the first is the plain form


class _Maker:
    """Invents distinct indicators and the ways nations write them."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.bases: dict[tuple[str, str], _Base] = {}
        self._invent: dict[str, Callable[[], list[Spelling]]] = {
            "ipv4": lambda: _ipv4_spellings(self._public_ipv4()),
            "ipv6": self._ipv6,
            "cidr": self._cidr,
            "domain": lambda: _domain_spellings(self._domain()),
            "url": self._url,
            "email": self._email,
            **{kind: self._hash_maker(kind) for kind in ("md5", "sha1", "sha256", "sha512")},
        }

    def new(self, kind: str) -> _Base:
        while True:
            base = self._register(self._invent[kind]())
            if base is not None:
                return base

    def showcase_ipv4(self) -> _Base:
        base = self._register(_ipv4_spellings(ipaddress.IPv4Address("195.127.0.11")))
        assert base is not None
        return base

    def showcase_domain(self) -> _Base:
        base = self._register(_domain_spellings("straße.example"))
        assert base is not None
        return base

    def _register(self, spellings: list[Spelling]) -> _Base | None:
        first = spellings[0]
        indicator = canonicalize(first.hint, first.text)
        key = (indicator.kind, indicator.value)
        if key in self.bases:
            return None
        base = _Base(indicator.kind, indicator.value, tuple(spellings))
        self.bases[key] = base
        return base

    def sighting(self, base: _Base, tlp: str, choice: int) -> SampleSighting:
        rng = self.rng
        spelling = base.spellings[choice % len(base.spellings)]
        fmt = _weighted(rng, _FORMAT_WEIGHTS)
        if fmt == "text" and (tlp != TEXT_TLP or not spelling.auto):
            fmt = _weighted(rng, {f: w for f, w in _FORMAT_WEIGHTS.items() if f != "text"})
        # A plain list says nothing about kinds; a CSV row may leave its kind column empty too.
        detect = fmt == "text" or (fmt == "csv" and spelling.auto and rng.random() < 0.1)
        first = EPOCH + rng.randrange(300 * DAY)
        tags = tuple(sorted(rng.sample(_TAGS, rng.randrange(3))))
        return SampleSighting(
            kind=base.kind,
            value=base.value,
            fmt=fmt,
            hint="auto" if detect else spelling.hint,
            raw=spelling.text,
            tlp=tlp,
            first_seen=first,
            last_seen=first + rng.randrange(60 * DAY),
            tags=tags,
        )

    def _public_ipv4(self) -> ipaddress.IPv4Address:
        rng = self.rng
        while True:
            address = ipaddress.IPv4Address(rng.getrandbits(32))
            if address.is_global and not address.is_multicast:
                return address

    def _ipv6(self) -> list[Spelling]:
        rng = self.rng
        groups = [0x2001, 0xDB8] + [rng.getrandbits(16) for _ in range(6)]
        # Zero runs make the compressed and the written-out forms differ visibly.
        for i in rng.sample(range(3, 7), rng.randrange(3)):
            groups[i] = 0
        address = ipaddress.IPv6Address(":".join(f"{g:x}" for g in groups))
        text = address.compressed
        return [
            Spelling("ipv6", text, True),
            Spelling("ipv6", text.upper(), True),
            Spelling("ipv6", address.exploded, True),
            Spelling("ipv6", f"[{text}]", True),
        ]

    def _cidr(self) -> list[Spelling]:
        rng = self.rng
        if rng.random() < 0.75:
            prefix = rng.randrange(16, 30)
            network4 = ipaddress.IPv4Network((self._public_ipv4(), prefix), strict=False)
            host4 = network4.network_address + rng.randrange(1, network4.num_addresses)
            return [
                Spelling("cidr", str(network4), True),
                Spelling("cidr", f"{host4}/{prefix}", True),
                Spelling("cidr", f"::ffff:{host4}/{prefix + 96}", True),
            ]
        prefix = rng.choice((32, 48, 56, 64))
        address6 = ipaddress.IPv6Address((0x20010DB8 << 96) | rng.getrandbits(96))
        network6 = ipaddress.IPv6Network((address6, prefix), strict=False)
        return [
            Spelling("cidr", str(network6), True),
            Spelling("cidr", f"{address6}/{prefix}", True),
            Spelling("cidr", f"{network6.network_address.exploded.upper()}/{prefix}", True),
        ]

    def _domain(self) -> str:
        rng = self.rng
        suffix = rng.choice(_SUFFIXES)
        if rng.random() < 0.12:
            return f"{rng.choice(_IDNWORDS)}{rng.randrange(1, 1000)}.{suffix}"
        first, second = rng.sample(WORDS, 2)
        name = f"{first}-{second}{rng.randrange(1, 10000)}.{suffix}"
        return f"{rng.choice(WORDS)}.{name}" if rng.random() < 0.3 else name

    def _url(self) -> list[Spelling]:
        rng = self.rng
        # GSB canonicalisation leaves hosts as written, so an IDN host would only match itself.
        host = canonicalize("domain", self._domain()).value
        scheme = rng.choice(("http", "https"))
        parts = [rng.choice(WORDS) for _ in range(rng.randrange(1, 4))]
        leaf = (
            f"{rng.choice(WORDS)}-{rng.randrange(100)}.{rng.choice(('php', 'html', 'exe', 'zip'))}"
        )
        path = "/" + "/".join([*parts, leaf])
        query = f"?id={rng.getrandbits(32):x}&Ref={rng.choice(WORDS)}" if rng.random() < 0.4 else ""
        url = f"{scheme}://{host}{path}{query}"
        dotted = "/" + "/./".join([*parts, leaf])
        escaped = path.replace("-", "%2D", 1)  # every leaf has a hyphen
        spellings = [
            Spelling("url", url, True),
            Spelling("url", f"{scheme.upper()}://{host.upper()}{path}{query}", True),
            Spelling("url", f"{scheme}://{host}:{rng.choice((8080, 443, 80))}{path}{query}", True),
            Spelling("url", f"{scheme}://{host}{path}{query}#{rng.choice(WORDS)}", True),
            Spelling("url", f"{scheme}://{host}{dotted}{query}", True),
            Spelling("url", f"{scheme}://{host}{escaped}{query}", True),
        ]
        if scheme == "http":
            # A URL without a scheme is read as http://, but only a file that says "url" does so.
            spellings.append(Spelling("url", f"{host}{path}{query}", False))
        return spellings

    def _email(self) -> list[Spelling]:
        rng = self.rng
        local = rng.choice(("info", "billing", "hr", "ceo", "support", "noreply", "j.smith"))
        local = f"{local}{rng.randrange(1, 1000)}" if rng.random() < 0.6 else local
        domain = self._domain()
        ascii_domain = canonicalize("domain", domain).value
        spellings = [
            Spelling("email", f"{local}@{domain}", True),
            Spelling("email", f"{local}@{ascii_domain}".upper(), True),
            Spelling("email", f"{local.capitalize()}@{ascii_domain}.", True),
        ]
        if ascii_domain != domain:
            spellings.append(Spelling("email", f"{local}@{ascii_domain}", True))
        return spellings

    def _hash_maker(self, kind: str) -> Callable[[], list[Spelling]]:
        bits = {"md5": 128, "sha1": 160, "sha256": 256, "sha512": 512}[kind]

        def make() -> list[Spelling]:
            digest = f"{self.rng.getrandbits(bits):0{bits // 4}x}"
            return [Spelling(kind, digest, True), Spelling(kind, digest.upper(), True)]

        return make


def _ipv4_spellings(address: ipaddress.IPv4Address) -> list[Spelling]:
    """The forms inet_aton accepts; the one-, two- and three-part ones need a stated kind."""
    octets = address.packed
    number = int(address)
    return [
        Spelling("ipv4", str(address), True),
        Spelling("ipv4", str(number), False),
        Spelling("ipv4", ".".join(f"0x{o:x}" for o in octets), True),
        Spelling("ipv6", f"::ffff:{address}", True),
        Spelling("ipv4", ".".join(f"0{o:o}" for o in octets), True),
        Spelling("ipv4", f"0x{octets[0]:x}.{number & 0xFFFFFF}", False),
        Spelling("ipv4", f"{octets[0]}.{octets[1]}.{number & 0xFFFF}", False),
    ]


def _domain_spellings(name: str) -> list[Spelling]:
    ascii_name = canonicalize("domain", name).value
    spellings = [
        Spelling("domain", name, True),
        Spelling("domain", ascii_name.upper(), True),
        Spelling("domain", f"{name.title()}.", True),
    ]
    if ascii_name != name:
        spellings += [
            Spelling("domain", ascii_name, True),
            # Kind detection looks for an ASCII dot; only a file that says "domain" maps U+3002.
            Spelling("domain", name.replace(".", "\u3002", 1), False),
        ]
    else:
        spellings.append(Spelling("domain", f"{name.upper()}.", True))
    return spellings


def _weighted(rng: random.Random, weights: Mapping[str, int]) -> str:
    return rng.choices(list(weights), weights=list(weights.values()))[0]
