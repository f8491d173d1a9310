"""Canonical forms of threat indicators: the rules called "canon-v1".

Two nations' sightings of the same thing must become the same string: matching hashes
(kind, canonical value) into the group, and the hash's domain separation tag names CANON_VERSION.
These rules are therefore part of the protocol. Changing any of them, even to fix a bug, means a
new CANON_VERSION, or nations running different code silently stop matching.

General
- Input is a str. Surrounding whitespace (``str.strip``: Unicode White_Space) is trimmed first.
- Rejected: empty input, input containing a lone surrogate, and trimmed input longer than the kind
  allows (url and auto 8192 characters, domain, email and hashes 1024, ipv4/ipv6/cidr 100).
  A URL is the exception: U+DC80..U+DCFF in it stand for the raw bytes 0x80..0xFF, the way Python
  decodes bytes that are not UTF-8 (surrogateescape: argv, file names, files read that way), and
  are canonicalised as those bytes (url rule 7).
- Every rejection is an InvalidIndicator (a ValueError) that names the kind, the value and a short
  reason. Nothing else is ever raised for str input.
- The result's kind can differ from the requested one: an IPv4-mapped IPv6 address is an ipv4, a
  /32 or /128 cidr is a plain address.

Names must exist (issue 19): the suffix rule
- A domain, an e-mail's domain part and a URL's host (unless it is an IP address) must end in a
  suffix of the Public Suffix List's ICANN section (the ``publicsuffixlist`` package, which bundles
  the list and is released monthly), and must not be such a suffix itself (``co.uk``). Random
  junk (``9lb1dnwrh.ab6nu5e5``) and file names (``invoice.pdf``) are refused here.
- Only the ICANN section counts. Every entry of the private section (``github.io``,
  ``blogspot.com``) sits under an ICANN suffix, so it would let no further name in; and it would
  make ``github.io`` itself a bare suffix, when it is a registered name a CERT may well list.
- Special-use names (RFC 6761, 6762, 7686, 8375, 9476):
  ``.onion`` is accepted: Tor services are real indicators.
  ``.example``, ``.test`` and ``.invalid`` are accepted: documentation, exercises and this
  project's own demo and tests use them (RFC 2606), and they never collide with a real name, so
  accepting them can never make a real indicator match wrongly.
  ``.localhost`` (always this host) and ``.arpa`` (reverse-lookup infrastructure: the address is
  the indicator) are refused always.
  ``.local`` (mDNS), ``.internal``, ``.alt``, ``home.arpa``, every name whose suffix is on no
  list, and a bare suffix (an internal ``http://wiki/`` names the gTLD .wiki) are internal names:
  refused unless the caller allows private suffixes (``node import --allow-private-suffix``).
- The rule only refuses: every value it accepts has the same canonical form as before, so it
  needs no new CANON_VERSION (nodes with and without it still agree on every value both accept).

Prefixes (issue 19)
- ``host:port`` (``203.0.113.7:8080``, ``evil.example:443``, ``[2001:db8::1]:443``) is read as the
  host, for kind auto, domain and ipv4: the port is not part of the indicator.
- ``md5:``, ``sha1:``, ``sha256:``, ``sha512:`` (any case, ``sha-256:`` too) before hex digits name
  the hash kind, for kind auto and for the hash kind they name; another prefix before hex digits
  is refused, naming it.

ipv4
- The forms inet_aton and browsers accept: 1 to 4 dot-separated parts, each decimal, octal (a
  leading 0: ``012``) or hex (``0x7f``; a bare ``0x`` is 0). With fewer than four parts the last one
  fills the remaining bytes: a.b.c (c < 2^16), a.b (b < 2^24), a (a < 2^32).
- Output: dotted decimal. ``3279880203`` -> ``195.127.0.11``, ``0x7f.1`` -> ``127.0.0.1``,
  ``012.034.01.055`` -> ``10.28.1.45``.
- Rejected: empty parts (so a trailing dot too), more than four parts, out-of-range parts, digits
  that do not fit the base (``08``), anything but ASCII digits, ``x`` and dots.

ipv6
- One pair of surrounding brackets is accepted (``[2001:db8::1]``), as written in URLs and logs.
- Output: RFC 5952 text (lowercase, leading zeros dropped, the longest run of two or more zero
  groups compressed, the first on a tie); an embedded IPv4 tail is written in hex.
- An IPv4-mapped address (``::ffff:192.0.2.7``) becomes kind ipv4 (``192.0.2.7``), and so does a
  strict dotted-decimal IPv4 given as ipv6, which is read as its mapped form.
- Rejected: zone ids (``fe80::1%eth0``; a zone only means something on one host), a ``/prefix``
  (that is kind cidr), anything the stdlib ``ipaddress`` parser refuses.

cidr
- ``address/prefix``; the address is strict: dotted decimal IPv4 without leading zeros, or IPv6
  (no brackets, no zone). The prefix is decimal, at most 32 or 128.
- Output: network address with host bits cleared, then ``/prefix``: ``10.1.2.3/8`` -> ``10.0.0.0/8``.
- A full-length prefix (/32, /128) gives the plain address, kind ipv4 or ipv6; so does an address
  given without a prefix.
- An IPv4-mapped IPv6 network with prefix >= 96 becomes the IPv4 network with prefix - 96
  (``::ffff:10.0.0.0/104`` -> ``10.0.0.0/8``); a shorter prefix stays an ipv6 network.

domain
- Non-ASCII input is first mapped by IDNA UTS #46, non-transitional, with STD3 rules off (this
  lowercases, applies NFC, and turns full stops such as U+3002 into dots); ASCII input is lowercased.
  Then trailing dots are removed.
- Each label becomes an A-label: non-ASCII labels through IDNA 2008 (the ``idna`` package), so
  ``Straße.de`` -> ``xn--strae-oqa.de``; ``xn--`` labels must be valid A-labels (``xn--Strae-oqa`` ->
  ``xn--strae-oqa``). Other ASCII labels may hold letters, digits, hyphen and underscore, with
  hyphens anywhere: threat data holds real names such as ``_dmarc.example.com`` and
  ``r3---sn-abc.googlevideo.com`` that IDNA 2008 would refuse. Underscore is not allowed inside
  non-ASCII labels.
- Labels are 1 to 63 octets, the name at most 253 octets, with at least one dot (single-label names
  are too rare in threat data to be worth the ambiguity). ``www.`` is kept.
- Rejected: spaces, slashes, ``@``, ``:``, ``*`` and every other character; an IP address (reason
  "is an IP address; use kind ipv4", or ipv6); a numeric last label (no top-level domain is numeric,
  and browsers parse such names as IPv4).

url (Google Safe Browsing canonicalisation, so URLs match what GSB-style feeds publish)
1. Remove every tab, CR and LF; trim surrounding whitespace; drop the fragment (everything from the
   first ``#``).
2. Encode as UTF-8 and percent-unescape repeatedly until nothing changes. From here on the URL is
   bytes; it is parsed only now, so ``%2F`` acts as ``/`` and ``%3F`` as ``?``, as in GSB.
3. Scheme: ``[A-Za-z][A-Za-z0-9+.-]*://`` at the start, lowercased; without one, ``http://`` is
   assumed. A scheme without ``//`` (``mailto:``, ``javascript:``, ``http:/x``: a dotless
   ``[A-Za-z][A-Za-z0-9+-]*:`` at the start not followed by a digit) is rejected; so
   ``example.com:8080/`` and ``example.com:/`` are a host and a port.
4. The query is everything after the first ``?``, kept as is (case included; an empty ``?`` is kept).
   The authority runs from the scheme to the first ``/``; the path is the rest.
5. Host: userinfo (up to the last ``@``) and the port are dropped; a port must be decimal digits.
   A bracketed host must be an IPv6 address and is written like kind ipv6 (a mapped one without
   brackets, as IPv4); ``[`` and ``]`` anywhere else in the host are rejected. Otherwise: runs of
   dots become one dot, leading and trailing dots go, ASCII letters are lowercased; a host whose
   last label is a number (decimal or 0x hex) must be an IPv4 address in one of the ipv4 forms and
   is written in dotted decimal (GSB keeps such a host when it does not parse; canon-v1 rejects it,
   as browsers do). An empty host is rejected.
   The host is not IDNA-encoded (GSB does not): ``http://straße.de/`` -> ``http://stra%C3%9Fe.de/``,
   which differs from ``http://xn--strae-oqa.de/``.
6. Path: empty becomes ``/``; runs of ``/`` collapse; ``.`` segments go and ``..`` removes the
   segment before it (never above the root); a trailing ``.`` or ``..`` leaves a trailing ``/``.
7. Every byte <= 0x20, >= 0x7f, ``#`` and ``%`` is percent-escaped with uppercase hex, in host, path
   and query: ``http://host/%25%32%35`` -> ``http://host/%25``. Text is UTF-8 first, so the str
   ``"\\x80"`` (U+0080) becomes ``%C2%80``; a raw 0x80 byte arrives escaped, as ``%80``, or as
   U+DC80 (surrogateescape), which is that byte: ``"http://h/\\udce9"`` -> ``http://h/%E9``. Any
   other lone surrogate is rejected.
8. Output: ``scheme://host/path[?query]``, at most 8192 characters.

email
- Exactly one ``@``, a non-empty local part, no whitespace or control characters, none of
  ``()<>[]\\,;:"`` in the local part (quoted local parts are not supported).
- The whole address is lowercased (the local part also NFC-normalised); the domain part follows the
  domain rules above (IDNA, trailing dots, at least one dot). No provider-specific folding: dots and
  ``+tags`` stay. At most 320 characters.

md5, sha1, sha256, sha512
- Exactly 32, 40, 64 or 128 hex digits, written in lowercase.

auto (detection for a bare value of unknown kind; the first matching rule decides)
1. ``scheme://`` at the start (case-insensitive)           -> url
2. contains ``@``                                         -> email
3. contains ``/``: ``<address>/<digits>``, where the address has a ``:`` or three dots -> cidr;
   anything else is rejected (a URL needs its scheme to be detected).
4. ``<hash name>:<hex>``                                  -> that hash kind (see Prefixes)
   exactly one ``:`` after a host, or ``[ipv6]:<port>``    -> the host, read by these rules
   contains ``:``                                         -> ipv6 (brackets allowed)
5. only hex digits: 32, 40, 64 or 128 of them             -> md5, sha1, sha256, sha512 (also when
   they are all decimal); other lengths are rejected.
6. a number without dots (``12345``, ``0x7f000001``)      -> rejected as ambiguous: pass kind ipv4
7. no dot                                                 -> rejected: cannot tell
8. the last label is a number (decimal or 0x hex): exactly four parts -> ipv4 (legacy forms too);
   any other count (``1.2.3``, version-like) is rejected as ambiguous.
9. otherwise                                              -> domain
Once a rule picks a kind, that kind's rules apply, and a failure is reported as kind auto with
"looks like <kind>, but <reason>". The suffix rule then refuses a file name such as
``invoice.pdf`` (no such public suffix); importers that know a field's kind should still pass it.
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from urllib.parse import unquote_to_bytes

import idna
from publicsuffixlist import PublicSuffixList

CANON_VERSION: str = "canon-v1"
KINDS: tuple[str, ...] = (
    "ipv4",
    "ipv6",
    "cidr",
    "domain",
    "url",
    "email",
    "md5",
    "sha1",
    "sha256",
    "sha512",
)

_HASH_DIGITS = {"md5": 32, "sha1": 40, "sha256": 64, "sha512": 128}
_HASH_KIND_BY_DIGITS = {digits: kind for kind, digits in _HASH_DIGITS.items()}

_MAX_URL_CHARS = 8192
_MAX_EMAIL_CHARS = 320
_MAX_DOMAIN_OCTETS = 253
_MAX_LABEL_OCTETS = 63
_MESSAGE_VALUE_CHARS = 80

# Caps on the trimmed input, checked before any parsing so a huge value costs nothing. Domains and
# e-mail addresses get room beyond their final limits because UTS #46 may delete characters.
_MAX_INPUT_CHARS = {
    "ipv4": 100,
    "ipv6": 100,
    "cidr": 100,
    "domain": 1024,
    "email": 1024,
    "url": _MAX_URL_CHARS,
    "auto": _MAX_URL_CHARS,
    **dict.fromkeys(_HASH_DIGITS, 1024),
}


class InvalidIndicator(ValueError):
    """A value that is not a valid indicator of `kind` under canon-v1, and why (`reason`)."""

    kind: str
    value: str
    reason: str

    def __init__(self, kind: str, value: str, reason: str) -> None:
        # All three in args, so the exception pickles (importers may run in worker processes).
        super().__init__(kind, value, reason)
        self.kind = kind
        self.value = value
        self.reason = reason

    def __str__(self) -> str:
        return f"invalid {self.kind} {_shorten(self.value, _MESSAGE_VALUE_CHARS)!r}: {self.reason}"


@dataclass(frozen=True, slots=True)
class Indicator:
    """A canonical indicator: `kind` is one of KINDS, `value` its canon-v1 form."""

    kind: str
    value: str


class _Rejected(Exception):
    """Raised by the rules below; canonicalize() adds kind and value to make an InvalidIndicator."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def canonicalize(kind: str, value: str, *, allow_private_suffix: bool = False) -> Indicator:
    """The canon-v1 form of `value` read as `kind` (one of KINDS, or "auto" to detect it).

    Raises InvalidIndicator, and nothing else, for any str that is not a valid indicator.
    ``allow_private_suffix`` lets internal names in (the suffix rule, module docstring).
    """
    if not isinstance(value, str):
        raise TypeError(f"value must be str, not {type(value).__name__}")
    rule = _RULES.get(kind)
    if rule is None:
        raise InvalidIndicator(
            kind, value, f"unknown kind; expected auto or one of {', '.join(KINDS)}"
        )
    text = value.strip()
    try:
        if not text:
            raise _Rejected("empty value")
        limit = _MAX_INPUT_CHARS[kind]
        if len(text) > limit:
            raise _Rejected(f"longer than {limit} characters")
        if not text.isascii() and kind not in ("url", "auto"):
            _refuse_surrogates(text)
        indicator = rule(text)
        _check_suffix(indicator, allow_private_suffix)
        return indicator
    except _Rejected as exc:
        raise InvalidIndicator(kind, value, exc.reason) from None


def wire_value(kind: str, value: str) -> str:
    """``value`` as text a UTF-8 channel can carry (protobuf refuses lone surrogates).

    Valid Unicode is returned unchanged; a URL holding raw bytes (U+DC80..U+DCFF, from argv, say)
    becomes its canonical form, which canonicalises to the same indicator wherever it is sent.
    Anything else with a lone surrogate raises InvalidIndicator, as ``canonicalize`` would.
    """
    if value.isascii() or not _SURROGATE_RE.search(value):
        return value
    # Only the encoding is at stake here: whether the name may be used was decided before.
    return canonicalize(kind, value, allow_private_suffix=True).value


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


_SURROGATE_RE = re.compile("[\ud800-\udfff]")


def _refuse_surrogates(text: str) -> None:
    if _SURROGATE_RE.search(text):
        raise _Rejected("contains a lone surrogate (not valid Unicode text)")


# --- IP addresses -----------------------------------------------------------------------------

_DECIMAL_RE = re.compile(r"[0-9]+")
_BYTE_DECIMAL = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_DOTTED_DECIMAL_RE = re.compile(rf"{_BYTE_DECIMAL}(?:\.{_BYTE_DECIMAL}){{3}}")
_OCTAL_RE = re.compile(r"[0-7]+")
_HEX_RE = re.compile(r"[0-9a-fA-F]+")
_NUMBER_RE = re.compile(r"[0-9]+|0[xX][0-9a-fA-F]*")
# Leading zeros aside, no part of an in-range address needs more digits than this (octal 2^32).
_MAX_SIGNIFICANT_DIGITS = 11


def _ipv4_legacy(text: str) -> str:
    """Dotted decimal of an IPv4 address in any form inet_aton accepts."""
    if _DOTTED_DECIMAL_RE.fullmatch(text):
        return text  # already canonical: the common case, worth skipping the general parser
    parts = text.split(".")
    if len(parts) > 4:
        raise _Rejected("more than four parts")
    numbers = [_ipv4_number(part) for part in parts]
    for part, number in zip(parts[:-1], numbers[:-1], strict=True):
        if number > 0xFF:
            raise _Rejected(f"part {part} out of range (max 255)")
    last_max = (1 << (8 * (5 - len(parts)))) - 1
    if numbers[-1] > last_max:
        raise _Rejected(f"part {parts[-1]} out of range (max {last_max})")
    address = numbers[-1]
    for index, number in enumerate(numbers[:-1]):
        address |= number << (8 * (3 - index))
    return f"{address >> 24}.{(address >> 16) & 0xFF}.{(address >> 8) & 0xFF}.{address & 0xFF}"


def _ipv4_number(part: str) -> int:
    if not part:
        raise _Rejected("empty part")
    if part[:2] in ("0x", "0X"):
        digits, base, pattern, name = part[2:], 16, _HEX_RE, "hex"
    elif len(part) > 1 and part[0] == "0":
        digits, base, pattern, name = part[1:], 8, _OCTAL_RE, "octal"
    else:
        digits, base, pattern, name = part, 10, _DECIMAL_RE, "decimal"
    if digits and not pattern.fullmatch(digits):
        if _NUMBER_RE.fullmatch(part):
            raise _Rejected(f"part {part} is not a valid {name} number")
        raise _Rejected(f"part {_shorten(part, 20)!r} is not a number")
    digits = digits.lstrip("0")
    if len(digits) > _MAX_SIGNIFICANT_DIGITS:
        raise _Rejected(f"part {_shorten(part, 20)} out of range")
    return int(digits or "0", base)


def _ipv4(text: str) -> Indicator:
    return Indicator("ipv4", _ipv4_legacy(_without_port(text)))


def _ipaddress_reason(exc: ValueError, text: str) -> str:
    # The stdlib repeats the whole input at the end of its messages; the caller already shows it.
    reason = str(exc).removesuffix(f" in {text!r}")
    return reason[:1].lower() + reason[1:]


def _strict_ipv4(text: str) -> ipaddress.IPv4Address:
    try:
        return ipaddress.IPv4Address(text)
    except ValueError as exc:
        raise _Rejected(_ipaddress_reason(exc, text)) from None


def _ipv6_address(text: str) -> ipaddress.IPv6Address:
    zone = text.find("%")
    if zone >= 0:
        raise _Rejected(
            f"zone id {_shorten(text[zone:], 20)!r} not allowed; remove it (it only means "
            "something on one host)"
        )
    try:
        return ipaddress.IPv6Address(text)
    except ValueError as exc:
        raise _Rejected(_ipaddress_reason(exc, text)) from None


def _ipv6_indicator(address: ipaddress.IPv6Address) -> Indicator:
    mapped = address.ipv4_mapped
    if mapped is not None:
        return Indicator("ipv4", str(mapped))
    return Indicator("ipv6", address.compressed)


def _ipv6(text: str) -> Indicator:
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    if "/" in text:
        raise _Rejected("has a '/prefix'; use kind cidr")
    if ":" not in text:
        if text.count(".") == 3:
            return Indicator("ipv4", str(_strict_ipv4(text)))
        raise _Rejected("no ':'; not an IPv6 address")
    return _ipv6_indicator(_ipv6_address(text))


def _cidr(text: str) -> Indicator:
    address_text, slash, prefix_text = text.partition("/")
    if not slash:
        # A single address is its own /32 or /128, which canon-v1 writes as the plain address.
        if ":" in address_text:
            return _ipv6_indicator(_ipv6_address(address_text))
        return Indicator("ipv4", str(_strict_ipv4(address_text)))
    if not (prefix_text.isascii() and prefix_text.isdigit() and len(prefix_text) <= 3):
        raise _Rejected(f"prefix {_shorten(prefix_text, 20)!r} is not a number")
    prefix = int(prefix_text)
    if ":" in address_text:
        address6 = _ipv6_address(address_text)
        if prefix > 128:
            raise _Rejected(f"prefix /{prefix} out of range (max 128)")
        network6 = ipaddress.IPv6Network((address6, prefix), strict=False).network_address
        mapped = network6.ipv4_mapped
        if mapped is not None and prefix >= 96:
            return _ipv4_network(mapped, prefix - 96)
        if prefix == 128:
            return Indicator("ipv6", network6.compressed)
        return Indicator("cidr", f"{network6.compressed}/{prefix}")
    address4 = _strict_ipv4(address_text)
    if prefix > 32:
        raise _Rejected(f"prefix /{prefix} out of range (max 32)")
    return _ipv4_network(address4, prefix)


def _ipv4_network(address: ipaddress.IPv4Address, prefix: int) -> Indicator:
    if prefix == 32:
        return Indicator("ipv4", str(address))
    network = ipaddress.IPv4Network((address, prefix), strict=False).network_address
    return Indicator("cidr", f"{network}/{prefix}")


# --- domain names -----------------------------------------------------------------------------

_BAD_LABEL_CHAR_RE = re.compile(r"[^a-z0-9_-]")


def _domain(text: str) -> Indicator:
    return Indicator("domain", _domain_name(_without_port(text)))


def _domain_name(text: str) -> str:
    """The canonical A-label form of a host name (shared by kind domain and e-mail domains)."""
    if text.isascii():
        name = text.lower()
    else:
        try:
            name = idna.uts46_remap(text, std3_rules=False, transitional=False)
        except ValueError as exc:  # idna's errors are UnicodeErrors, which are ValueErrors
            raise _Rejected(f"IDNA: {exc}") from None
    name = name.rstrip(".")
    if not name:
        raise _Rejected("no name, only dots")
    if ":" in name:
        try:
            ipaddress.IPv6Address(name.removeprefix("[").removesuffix("]"))
        except ValueError:
            pass
        else:
            raise _Rejected("is an IP address; use kind ipv6")
    labels = name.split(".")
    if len(labels) == 1:
        raise _Rejected("no dot; a domain needs at least two labels (example.com)")
    if _NUMBER_RE.fullmatch(labels[-1]):
        try:
            _ipv4_legacy(name)
        except _Rejected:
            raise _Rejected(
                f"last label {_shorten(labels[-1], 20)} is numeric; top-level domains never are"
            ) from None
        raise _Rejected("is an IP address; use kind ipv4")
    name = ".".join([_domain_label(label) for label in labels])
    if len(name) > _MAX_DOMAIN_OCTETS:
        raise _Rejected(f"longer than {_MAX_DOMAIN_OCTETS} characters after IDNA ({len(name)})")
    return name


def _domain_label(label: str) -> str:
    if not label:
        raise _Rejected("empty label (a leading dot or two dots in a row)")
    if label.isascii():
        bad = _BAD_LABEL_CHAR_RE.search(label)
        if bad:
            raise _Rejected(f"character {bad.group()!r} not allowed in a domain name")
        if label.startswith("xn--"):
            try:
                # Round trip, so that only the one canonical A-label of a name is ever produced.
                label = idna.alabel(idna.ulabel(label)).decode("ascii")
            except ValueError as exc:
                raise _Rejected(f"label {_shorten(label, 30)!r}: {exc}") from None
    else:
        try:
            label = idna.alabel(label).decode("ascii")
        except ValueError as exc:
            raise _Rejected(f"IDNA rejects label {_shorten(label, 30)!r}: {exc}") from None
    if len(label) > _MAX_LABEL_OCTETS:
        raise _Rejected(f"label longer than {_MAX_LABEL_OCTETS} characters ({len(label)})")
    return label


# --- e-mail addresses -------------------------------------------------------------------------

_EMAIL_BAD_CHAR_RE = re.compile(r"[\s\x00-\x1f\x7f-\x9f]")
_LOCAL_PART_SPECIAL_RE = re.compile(r'[()<>\[\]\\,;:"]')


def _email(text: str) -> Indicator:
    bad = _EMAIL_BAD_CHAR_RE.search(text)
    if bad:
        raise _Rejected(f"whitespace or control character {bad.group()!r} not allowed")
    ats = text.count("@")
    if ats != 1:
        raise _Rejected("no '@'" if ats == 0 else f"{ats} '@' signs; expected exactly one")
    local, _, domain = text.partition("@")
    if not local:
        raise _Rejected("empty local part")
    special = _LOCAL_PART_SPECIAL_RE.search(local)
    if special:
        raise _Rejected(
            f"character {special.group()!r} not allowed in the local part "
            "(quoted local parts are not supported)"
        )
    if not domain:
        raise _Rejected("empty domain part")
    try:
        domain = _domain_name(domain)
    except _Rejected as exc:
        raise _Rejected(f"domain part: {exc.reason}") from None
    local = local.lower()
    if not local.isascii():
        local = unicodedata.normalize("NFC", local)
    address = f"{local}@{domain}"
    if len(address) > _MAX_EMAIL_CHARS:
        raise _Rejected(f"longer than {_MAX_EMAIL_CHARS} characters")
    return Indicator("email", address)


# --- URLs -------------------------------------------------------------------------------------

_TAB_CR_LF = str.maketrans("", "", "\t\r\n")
_SCHEME_RE = re.compile(rb"([A-Za-z][A-Za-z0-9+.-]*)://")
# Dots are left out: "example.com:" starts a host and port, never a scheme.
_SCHEME_WITHOUT_SLASHES_RE = re.compile(rb"([A-Za-z][A-Za-z0-9+-]*):(?![0-9])")
_DOT_RUN_RE = re.compile(rb"\.{2,}")
_PORT_RE = re.compile(rb"[0-9]*")
_NUMBER_BYTES_RE = re.compile(rb"[0-9]+|0x[0-9a-f]*")
# str.translate table over latin-1 text, where each character stands for one byte.
_URL_ESCAPES = {
    byte: f"%{byte:02X}" for byte in range(256) if byte <= 0x20 or byte >= 0x7F or byte in b"#%"
}


def _url(text: str) -> Indicator:
    text = text.translate(_TAB_CR_LF).strip()
    text = text.partition("#")[0]
    try:
        data = _unescape_fully(text.encode("utf-8", "surrogateescape"))
    except UnicodeEncodeError:  # a surrogate outside U+DC80..U+DCFF: no byte it could stand for
        raise _Rejected("contains a lone surrogate (not valid Unicode text)") from None
    scheme_match = _SCHEME_RE.match(data)
    if scheme_match:
        scheme = scheme_match[1].lower().decode("ascii")
        rest = data[scheme_match.end() :]
    else:
        opaque = _SCHEME_WITHOUT_SLASHES_RE.match(data)
        if opaque:
            raise _Rejected(
                f"scheme {_shorten(opaque[1].decode('ascii'), 20)!r} without '//'; "
                "only scheme://host URLs are accepted"
            )
        scheme, rest = "http", data
    rest, question, query = rest.partition(b"?")
    authority, slash, path = rest.partition(b"/")
    url = f"{scheme}://{_url_host(authority)}{_escape(_url_path(slash + path))}"
    if question:
        url += "?" + _escape(query)
    if len(url) > _MAX_URL_CHARS:
        raise _Rejected(f"longer than {_MAX_URL_CHARS} characters once canonical")
    return Indicator("url", url)


def _unescape_fully(data: bytes) -> bytes:
    while b"%" in data:
        unescaped = unquote_to_bytes(data)
        if len(unescaped) == len(data):
            break
        data = unescaped
    return data


def _escape(data: bytes) -> str:
    return data.decode("latin-1").translate(_URL_ESCAPES)


def _show(data: bytes) -> str:
    return _shorten(data.decode("utf-8", "backslashreplace"), 30)


def _url_host(authority: bytes) -> str:
    hostport = authority.rpartition(b"@")[2]
    if hostport.startswith(b"["):
        inside, bracket, after = hostport[1:].partition(b"]")
        if not bracket:
            raise _Rejected("'[' without ']' in the host")
        if after and not (after[:1] == b":" and _PORT_RE.fullmatch(after[1:])):
            raise _Rejected(f"{_show(after)!r} after ']' is not a port")
        try:
            address = _ipv6_address(inside.decode("latin-1"))
        except _Rejected as exc:
            raise _Rejected(f"bracketed host is not an IPv6 address: {exc.reason}") from None
        indicator = _ipv6_indicator(address)
        return indicator.value if indicator.kind == "ipv4" else f"[{indicator.value}]"
    host, _, port = hostport.partition(b":")
    if not _PORT_RE.fullmatch(port):
        raise _Rejected(f"port {_show(port)!r} is not a number")
    if b"[" in host or b"]" in host:
        raise _Rejected("'[' or ']' in a host that is not a bracketed IPv6 address")
    host = _DOT_RUN_RE.sub(b".", host).strip(b".").lower()
    if not host:
        raise _Rejected("empty host")
    if _NUMBER_BYTES_RE.fullmatch(host.rpartition(b".")[2]):
        try:
            return _ipv4_legacy(host.decode("latin-1"))
        except _Rejected as exc:
            raise _Rejected(
                f"host {_show(host)} ends in a number but is not an IPv4 address: {exc.reason}"
            ) from None
    return _escape(host)


def _url_path(path: bytes) -> bytes:
    segments: list[bytes] = []
    pieces = path.split(b"/")
    for piece in pieces[1:]:
        if piece == b"..":
            if segments:
                segments.pop()
        elif piece not in (b"", b"."):
            segments.append(piece)
    if not segments:
        return b"/"
    trailing = b"/" if pieces[-1] in (b"", b".", b"..") else b""
    return b"/" + b"/".join(segments) + trailing


# --- file hashes ------------------------------------------------------------------------------

_NON_HEX_RE = re.compile(r"[^0-9a-fA-F]")


_HASH_PREFIX_RE = re.compile(r"([A-Za-z][A-Za-z0-9-]*):([0-9A-Fa-f]+)")


def _hash_name(prefix: str) -> str:
    """``SHA-256`` -> ``sha256``: the kind a hash prefix names, if it names one."""
    return prefix.lower().replace("-", "")


def _file_hash(kind: str, text: str) -> Indicator:
    prefixed = _HASH_PREFIX_RE.fullmatch(text)
    if prefixed:
        if _hash_name(prefixed[1]) != kind:
            raise _Rejected(f"prefix {_shorten(prefixed[1], 20)!r} does not name {kind}")
        text = prefixed[2]
    bad = _NON_HEX_RE.search(text)
    if bad:
        raise _Rejected(f"character {bad.group()!r} is not a hex digit")
    digits = _HASH_DIGITS[kind]
    if len(text) != digits:
        raise _Rejected(f"expected {digits} hex digits, got {len(text)}")
    return Indicator(kind, text.lower())


# --- detection --------------------------------------------------------------------------------

_URL_SCHEME_TEXT_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
_KIND_NAMES = {
    "url": "a URL",
    "email": "an e-mail address",
    "cidr": "a CIDR block",
    "ipv6": "an IPv6 address",
    "ipv4": "an IPv4 address",
    "domain": "a domain",
}


def _auto(text: str) -> Indicator:
    if _URL_SCHEME_TEXT_RE.match(text):
        return _as("url", text)
    if not text.isascii():
        _refuse_surrogates(text)
    if "@" in text:
        return _as("email", text)
    if "/" in text:
        address, _, prefix = text.partition("/")
        if prefix.isascii() and prefix.isdigit() and (":" in address or address.count(".") == 3):
            return _as("cidr", text)
        raise _Rejected("has '/' but is not address/prefix, nor a URL with a scheme")
    if ":" in text:
        return _auto_with_colon(text)
    if _HEX_RE.fullmatch(text):
        kind = _HASH_KIND_BY_DIGITS.get(len(text))
        if kind is not None:
            return Indicator(kind, text.lower())
        if not _DECIMAL_RE.fullmatch(text):
            raise _Rejected(
                f"{len(text)} hex digits is no hash length (md5 32, sha1 40, sha256 64, sha512 128)"
            )
    if _NUMBER_RE.fullmatch(text):
        raise _Rejected(
            "a bare number is ambiguous (an IPv4 address as one integer?); pass kind ipv4"
        )
    if "." not in text:
        raise _Rejected("no dot, '@', ':' or '/'; cannot tell the kind")
    if _NUMBER_RE.fullmatch(text.rpartition(".")[2]):
        if text.count(".") != 3:
            raise _Rejected(
                "dotted numbers without exactly four parts are ambiguous (a version?); "
                "pass kind ipv4"
            )
        return _as("ipv4", text)
    return _as("domain", text)


def _auto_with_colon(text: str) -> Indicator:
    """A hash with its name before it, ``host:port``, or an IPv6 address."""
    prefixed = _HASH_PREFIX_RE.fullmatch(text)
    if prefixed and _hash_name(prefixed[1]) in _HASH_DIGITS:
        kind = _hash_name(prefixed[1])
        try:
            return _file_hash(kind, text)
        except _Rejected as exc:
            raise _Rejected(f"looks like a {kind} hash, but {exc.reason}") from None
    host = _host_of(text)
    if host is not None:
        if host.startswith("["):
            return _as("ipv6", host)
        try:
            return _auto(host)
        except _Rejected as exc:
            raise _Rejected(f"looks like host:port, but its host: {exc.reason}") from None
    if prefixed and not prefixed[2].isdigit():
        raise _Rejected(
            f"prefix {_shorten(prefixed[1], 20)!r} names no hash kind this accepts "
            "(md5, sha1, sha256, sha512)"
        )
    if text.count(":") == 1 and not text.startswith("["):
        # An IPv6 address has at least two colons; saying "IPv6" here would mislead.
        raise _Rejected("one ':' but not host:port (the port must be a number up to 65535)")
    return _as("ipv6", text)


_HOST_PORT_RE = re.compile(r"(\[[^\[\]]*\]|[^:\[\]]+):([0-9]{1,5})")


def _host_of(text: str) -> str | None:
    """The host of ``host:port`` or ``[ipv6]:port``, or None if ``text`` is not that."""
    found = _HOST_PORT_RE.fullmatch(text)
    if found is None or int(found[2]) > 65535:
        return None
    return found[1]


def _without_port(text: str) -> str:
    """``text`` without a ``:port`` after a host name or IPv4 address (the port is no part of
    the indicator); anything else unchanged, for the kind's own rules to judge."""
    host = _host_of(text)
    return text if host is None or host.startswith("[") else host


# --- the suffix rule (module docstring) -------------------------------------------------------

# Accepted whatever the list says: Tor services (RFC 7686) are real indicators; .example,
# .test and .invalid are documentation names (RFC 2606) used by exercises, this project's demo
# and its tests; no real name is under them, so they can never match one wrongly.
_ACCEPTED_TLDS = frozenset({"onion", "example", "test", "invalid"})
# Never an indicator, internal or not.
_REFUSED_TLDS = {
    "localhost": "is .localhost, which always means this host (RFC 6761)",
    "arpa": "is under .arpa, DNS infrastructure (RFC 3172); the address itself is the indicator",
}
# Internal by definition: accepted only when private suffixes are allowed.
_PRIVATE_USE = {
    "local": "is .local, link-local multicast DNS (RFC 6762)",
    "internal": "is .internal, reserved for private networks",
    "alt": "is .alt, outside the DNS (RFC 9476)",
    "home.arpa": "is home.arpa, for home networks (RFC 8375)",
}
_PRIVATE_HINT = "; for internal names pass --allow-private-suffix"


@functools.cache
def _public_suffixes() -> PublicSuffixList:
    # Loaded once, when a name is first checked: parsing the list takes a noticeable moment.
    return PublicSuffixList(only_icann=True)


def suffix_problem(name: str, *, allow_private_suffix: bool = False) -> str | None:
    """Why the host name ``name`` (A-labels, lowercase) is refused by the suffix rule, or None."""
    labels = name.split(".")
    tld = labels[-1]
    if tld in _ACCEPTED_TLDS:
        return None
    private_use = _PRIVATE_USE.get(".".join(labels[-2:])) or _PRIVATE_USE.get(tld)
    if private_use is not None:
        return None if allow_private_suffix else private_use + _PRIVATE_HINT
    if tld in _REFUSED_TLDS:
        return _REFUSED_TLDS[tld]
    suffix = _public_suffixes().publicsuffix(name, accept_unknown=False)
    if allow_private_suffix:
        # Also a bare suffix: internal single-label hosts (http://wiki/) collide with new gTLDs.
        return None
    if suffix is None:
        return (
            f"does not end in a public suffix (.{_shorten(tld, 20)} is on no list){_PRIVATE_HINT}"
        )
    if suffix == name:
        return "is a public suffix itself, not a name under one" + _PRIVATE_HINT
    return None


def _check_suffix(indicator: Indicator, allow_private_suffix: bool) -> None:
    if indicator.kind == "domain":
        what, name = "the name", indicator.value
    elif indicator.kind == "email":
        what, name = "the domain part", indicator.value.rpartition("@")[2]
    elif indicator.kind == "url":
        host = _url_host_name(indicator.value)
        if host is None:
            return
        what, name = "the host", host
    else:
        return
    problem = suffix_problem(name, allow_private_suffix=allow_private_suffix)
    if problem is not None:
        raise _Rejected(f"{what} {_shorten(name, 60)!r} {problem}")


def _url_host_name(url: str) -> str | None:
    """The host of a canonical URL as A-labels, for the suffix rule; None for an IP address."""
    host = url.partition("://")[2].partition("/")[0]
    if host.startswith("[") or _DOTTED_DECIMAL_RE.fullmatch(host):
        return None
    # The URL keeps its host as GSB does (not IDNA-encoded); the list is looked up in A-labels.
    text = unquote_to_bytes(host).decode("utf-8", "replace")
    labels = []
    for label in text.split("."):
        if not label.isascii():
            # One IDNA refuses is left as it is: no suffix on the list has such a label.
            with contextlib.suppress(ValueError):
                label = idna.alabel(idna.uts46_remap(label, std3_rules=False)).decode("ascii")
        labels.append(label)
    return ".".join(labels)


def _as(kind: str, text: str) -> Indicator:
    try:
        return _RULES[kind](text)
    except _Rejected as exc:
        raise _Rejected(f"looks like {_KIND_NAMES[kind]}, but {exc.reason}") from None


_RULES: dict[str, Callable[[str], Indicator]] = {
    "ipv4": _ipv4,
    "ipv6": _ipv6,
    "cidr": _cidr,
    "domain": _domain,
    "url": _url,
    "email": _email,
    **{kind: partial(_file_hash, kind) for kind in _HASH_DIGITS},
    "auto": _auto,
}


def indicator_message(kind: str, value: str) -> bytes:
    """The bytes an indicator is hashed from (``oprf.hash_indicator``)."""
    # Kind names never contain NUL, so the split point is unambiguous.
    return kind.encode() + b"\x00" + value.encode()
