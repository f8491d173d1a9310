"""canon-v1: every rule and example of the spec, rejections, detection, and properties."""

from __future__ import annotations

import ipaddress
import pickle
import re
import string
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from blindmatch.core.canon import (
    CANON_VERSION,
    KINDS,
    Indicator,
    InvalidIndicator,
    canonicalize,
    wire_value,
)


def ok(kind: str, value: str) -> Indicator:
    return Indicator(kind, value)


def form(kind: str, value: str) -> Indicator:
    """The canon-v1 form alone: the suffix rule only refuses, so form tests use any host name."""
    return canonicalize(kind, value, allow_private_suffix=True)


def rejection(kind: str, value: str) -> InvalidIndicator:
    with pytest.raises(InvalidIndicator) as caught:
        canonicalize(kind, value)
    return caught.value


def assert_canonical_fixpoint(requested: str, out: Indicator) -> None:
    """A canonical value canonicalises to itself, read as its own kind, the requested one or auto."""
    assert out.kind in KINDS
    assert form(out.kind, out.value) == out
    assert form(requested, out.value) == out
    assert form("auto", out.value) == out


# --- API --------------------------------------------------------------------------------------


def test_version_and_kinds() -> None:
    assert CANON_VERSION == "canon-v1"
    assert KINDS == (
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


def test_indicator_is_frozen_and_slotted() -> None:
    indicator = canonicalize("domain", "Example.COM")
    assert indicator == Indicator("domain", "example.com")
    with pytest.raises(AttributeError):
        indicator.value = "other.com"  # type: ignore[misc]
    assert not hasattr(indicator, "__dict__")
    assert len({indicator, Indicator("domain", "example.com")}) == 1


def test_invalid_indicator_names_kind_value_and_reason() -> None:
    exc = rejection("ipv4", "1.2.3.256")
    assert isinstance(exc, ValueError)
    assert (exc.kind, exc.value, exc.reason) == (
        "ipv4",
        "1.2.3.256",
        "part 256 out of range (max 255)",
    )
    assert str(exc) == "invalid ipv4 '1.2.3.256': part 256 out of range (max 255)"


def test_invalid_indicator_message_shortens_long_values() -> None:
    value = "x" * 500 + ".com/"
    exc = rejection("domain", value)
    assert exc.value == value  # the attribute keeps everything; only the message is shortened
    assert str(exc) == f"invalid domain {'x' * 79 + '…'!r}: {exc.reason}"


def test_invalid_indicator_pickles() -> None:
    exc = rejection("md5", "abc")
    copy = pickle.loads(pickle.dumps(exc))
    assert (copy.kind, copy.value, copy.reason, str(copy)) == (
        exc.kind,
        exc.value,
        exc.reason,
        str(exc),
    )


def test_unknown_kind_is_an_invalid_indicator() -> None:
    exc = rejection("ip", "1.2.3.4")
    assert exc.kind == "ip"
    assert exc.reason.startswith("unknown kind; expected auto or one of ipv4, ipv6, cidr")


def test_non_str_value_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="value must be str, not bytes"):
        canonicalize("domain", b"example.com")  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", [*KINDS, "auto"])
@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("", "empty value"),
        (" \t\n ", "empty value"),
        ("example.com\ud800", "contains a lone surrogate (not valid Unicode text)"),
        ("a" * 100_000, "longer than"),
    ],
)
def test_every_kind_rejects_empty_surrogates_and_huge_input(
    kind: str, value: str, reason: str
) -> None:
    exc = rejection(kind, value)
    assert exc.kind == kind
    assert exc.reason.startswith(reason)


@pytest.mark.parametrize(
    ("kind", "limit"),
    [
        ("ipv4", 100),
        ("domain", 1024),
        ("email", 1024),
        ("url", 8192),
        ("auto", 8192),
        ("md5", 1024),
    ],
)
def test_input_length_limits(kind: str, limit: int) -> None:
    assert rejection(kind, "1" * (limit + 1)).reason == f"longer than {limit} characters"
    # The cap applies after trimming, so padding alone does not push a value over it.
    assert rejection(kind, " " * limit + "1" * limit + " " * limit).reason != (
        f"longer than {limit} characters"
    )


# --- ipv4 -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("192.0.2.7", "192.0.2.7"),
        ("  192.0.2.7\n", "192.0.2.7"),
        ("3279880203", "195.127.0.11"),
        ("0x7f.1", "127.0.0.1"),
        ("0X7F.1", "127.0.0.1"),
        ("012.034.01.055", "10.28.1.45"),
        ("0xc0.0xa8.0x00.0x01", "192.168.0.1"),
        ("192.168.1", "192.168.0.1"),  # a.b.c: c fills 16 bits
        ("192.168.65535", "192.168.255.255"),
        ("10.1", "10.0.0.1"),  # a.b: b fills 24 bits
        ("10.16777215", "10.255.255.255"),
        ("0", "0.0.0.0"),
        ("4294967295", "255.255.255.255"),
        ("0xffffffff", "255.255.255.255"),
        ("037777777777", "255.255.255.255"),
        ("0x", "0.0.0.0"),  # WHATWG: 0x with no digits is zero
        ("0x00000000000000000001", "0.0.0.1"),  # leading zeros do not overflow
        ("00", "0.0.0.0"),
        ("1.2.3.04", "1.2.3.4"),  # octal 04 is 4
        ("1.2.3.010", "1.2.3.8"),  # octal, not decimal ten
    ],
)
def test_ipv4_forms(value: str, expected: str) -> None:
    assert canonicalize("ipv4", value) == ok("ipv4", expected)


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("1.2.3.256", "part 256 out of range (max 255)"),
        ("256.1.1.1", "part 256 out of range (max 255)"),
        ("0x100.1.1.1", "part 0x100 out of range (max 255)"),
        ("1.2.65536", "part 65536 out of range (max 65535)"),
        ("1.16777216", "part 16777216 out of range (max 16777215)"),
        ("4294967296", "part 4294967296 out of range (max 4294967295)"),
        ("99999999999999999999", "part 99999999999999999999 out of range"),
        ("1.2.3.4.5", "more than four parts"),
        ("1..2.3", "empty part"),
        ("1.2.3.4.", "more than four parts"),
        ("1.2.3.", "empty part"),
        (".1.2.3", "empty part"),
        ("08.1.1.1", "part 08 is not a valid octal number"),
        ("0xg.1.1.1", "part '0xg' is not a number"),
        ("1.2.3.a", "part 'a' is not a number"),
        ("1.2.3.-4", "part '-4' is not a number"),
        ("1.2.3.+4", "part '+4' is not a number"),
        ("1.2.3.4_0", "part '4_0' is not a number"),  # int() would accept the underscore
        ("1.2.3.٤", "part '٤' is not a number"),  # int() would accept an Arabic-Indic digit
        ("1.2. 3.4", "part ' 3' is not a number"),
        ("::1", "part '::1' is not a number"),
    ],
)
def test_ipv4_rejections(value: str, reason: str) -> None:
    exc = rejection("ipv4", value)
    assert (exc.kind, exc.value, exc.reason) == ("ipv4", value, reason)


# --- ipv6 -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2001:DB8::1", ok("ipv6", "2001:db8::1")),
        ("2001:0db8:0000:0000:0000:0000:0000:0001", ok("ipv6", "2001:db8::1")),
        ("[2001:db8::1]", ok("ipv6", "2001:db8::1")),
        (" [2001:db8::1] ", ok("ipv6", "2001:db8::1")),
        ("::", ok("ipv6", "::")),
        ("::1", ok("ipv6", "::1")),
        # RFC 5952: the longest zero run is compressed, the first one on a tie, never a single 0.
        ("2001:db8:0:0:1:0:0:1", ok("ipv6", "2001:db8::1:0:0:1")),
        ("2001:0:0:1:0:0:0:1", ok("ipv6", "2001:0:0:1::1")),
        ("2001:db8:0:1:1:1:1:1", ok("ipv6", "2001:db8:0:1:1:1:1:1")),
        ("::ffff:192.0.2.7", ok("ipv4", "192.0.2.7")),
        ("::FFFF:c000:0207", ok("ipv4", "192.0.2.7")),
        ("[::ffff:192.0.2.7]", ok("ipv4", "192.0.2.7")),
        ("::192.0.2.7", ok("ipv6", "::c000:207")),  # IPv4-compatible (not mapped) stays ipv6
        ("64:ff9b::192.0.2.7", ok("ipv6", "64:ff9b::c000:207")),
        ("192.0.2.7", ok("ipv4", "192.0.2.7")),  # read as its mapped form
    ],
)
def test_ipv6_forms(value: str, expected: Indicator) -> None:
    assert canonicalize("ipv6", value) == expected


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("fe80::1%eth0", "zone id '%eth0' not allowed"),
        ("fe80::1%25eth0", "zone id '%25eth0' not allowed"),
        ("1:2:3", "exactly 8 parts expected without '::'"),
        ("1::2::3", "at most one '::' permitted"),
        ("12345::", "at most 4 characters permitted in '12345'"),
        ("g::1", "only hex digits permitted in 'g'"),
        ("::ffff:01.2.3.4", "leading zeros are not permitted in '01'"),
        ("[::1", "only hex digits permitted in '['"),
        ("example.com", "no ':'; not an IPv6 address"),
        ("1.2.3.256", "octet 256 (> 255) not permitted"),
        ("::1/128", "has a '/prefix'; use kind cidr"),
    ],
)
def test_ipv6_rejections(value: str, reason: str) -> None:
    exc = rejection("ipv6", value)
    assert (exc.kind, exc.value) == ("ipv6", value)
    assert exc.reason.startswith(reason)


# --- cidr -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("10.1.2.3/8", ok("cidr", "10.0.0.0/8")),
        ("10.0.0.0/8", ok("cidr", "10.0.0.0/8")),
        (" 192.168.1.77/24 ", ok("cidr", "192.168.1.0/24")),
        ("223.166.0.0/15", ok("cidr", "223.166.0.0/15")),
        ("1.2.3.4/0", ok("cidr", "0.0.0.0/0")),
        ("1.2.3.4/032", ok("ipv4", "1.2.3.4")),
        ("1.2.3.4/32", ok("ipv4", "1.2.3.4")),
        ("1.2.3.4/31", ok("cidr", "1.2.3.4/31")),
        ("1.2.3.4", ok("ipv4", "1.2.3.4")),  # an address is its own /32
        ("2001:DB8::1/32", ok("cidr", "2001:db8::/32")),
        ("2001:db8::1/128", ok("ipv6", "2001:db8::1")),
        ("2001:db8::1", ok("ipv6", "2001:db8::1")),
        ("::/0", ok("cidr", "::/0")),
        ("::ffff:10.1.2.3/104", ok("cidr", "10.0.0.0/8")),
        ("::ffff:10.1.2.3/128", ok("ipv4", "10.1.2.3")),
        ("::ffff:0.0.0.0/96", ok("cidr", "0.0.0.0/0")),
        ("::ffff:10.1.2.3/95", ok("cidr", "::fffe:0:0/95")),  # wider than the mapped block
    ],
)
def test_cidr_forms(value: str, expected: Indicator) -> None:
    assert canonicalize("cidr", value) == expected


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("1.2.3.4/33", "prefix /33 out of range (max 32)"),
        ("::1/129", "prefix /129 out of range (max 128)"),
        ("1.2.3.4/", "prefix '' is not a number"),
        ("1.2.3.4/-1", "prefix '-1' is not a number"),
        ("1.2.3.4/8/9", "prefix '8/9' is not a number"),
        ("1.2.3.4/0008", "prefix '0008' is not a number"),
        ("1.2.3.4/255.0.0.0", "prefix '255.0.0.0' is not a number"),
        ("010.0.0.0/8", "leading zeros are not permitted in '010'"),
        ("10/8", "expected 4 octets"),  # strict dotted decimal only
        ("0x7f.1/8", "expected 4 octets"),
        ("256.0.0.0/8", "octet 256 (> 255) not permitted"),
        ("fe80::1%eth0/64", "zone id '%eth0' not allowed"),
        ("[::1]/64", "only hex digits permitted in '['"),
    ],
)
def test_cidr_rejections(value: str, reason: str) -> None:
    exc = rejection("cidr", value)
    assert (exc.kind, exc.value) == ("cidr", value)
    assert exc.reason.startswith(reason)


# --- domain -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("example.com", "example.com"),
        ("  WWW.Example.COM  ", "www.example.com"),  # www. is kept
        ("example.com.", "example.com"),
        ("example.com...", "example.com"),
        ("Straße.de", "xn--strae-oqa.de"),  # non-transitional: ß is kept, not folded to ss
        ("STRASSE.de", "strasse.de"),
        ("xn--strae-oqa.de", "xn--strae-oqa.de"),
        ("XN--STRAE-OQA.DE", "xn--strae-oqa.de"),
        ("München.example", "xn--mnchen-3ya.example"),
        ("ＥＸＡＭＰＬＥ。ｃｏｍ", "example.com"),  # UTS 46 maps fullwidth forms and U+3002
        ("example\u3002com\uff0e", "example.com"),
        ("ex\u00adample.com", "example.com"),  # a soft hyphen is ignored by UTS 46
        ("пример.рф", "xn--e1afmkfd.xn--p1ai"),
        ("_dmarc.example.com", "_dmarc.example.com"),
        ("_dmarc.Straße.de", "_dmarc.xn--strae-oqa.de"),
        ("r3---sn-abc.googlevideo.com", "r3---sn-abc.googlevideo.com"),
        ("-leading.example.com", "-leading.example.com"),
        ("a.b.c.d.e.example.com", "a.b.c.d.e.example.com"),
        ("1.2.3.example", "1.2.3.example"),
        ("example.0x7g", "example.0x7g"),  # not a number: hex digits only go to f
        ("3q.wubangtu.info", "3q.wubangtu.info"),
        ("a" * 63 + ".com", "a" * 63 + ".com"),
        (".".join(["a" * 63] * 3 + ["b" * 61]), ".".join(["a" * 63] * 3 + ["b" * 61])),
    ],
)
def test_domain_forms(value: str, expected: str) -> None:
    assert form("domain", value) == ok("domain", expected)


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("1.2.3.4", "is an IP address; use kind ipv4"),
        ("1.2.3.4.", "is an IP address; use kind ipv4"),
        ("0x7f.1", "is an IP address; use kind ipv4"),
        ("１．２．３．４", "is an IP address; use kind ipv4"),
        ("2001:db8::1", "is an IP address; use kind ipv6"),
        ("[2001:db8::1]", "is an IP address; use kind ipv6"),
        ("example.123", "last label 123 is numeric; top-level domains never are"),
        ("1.2.3.4.5", "last label 5 is numeric"),
        ("example.0x1f", "last label 0x1f is numeric"),
        ("localhost", "no dot; a domain needs at least two labels (example.com)"),
        ("...", "no name, only dots"),
        (".example.com", "empty label (a leading dot or two dots in a row)"),
        ("example..com", "empty label"),
        ("exa mple.com", "character ' ' not allowed in a domain name"),
        ("example.com/path", "character '/' not allowed in a domain name"),
        ("user@example.com", "character '@' not allowed in a domain name"),
        ("example.com:http", "character ':' not allowed in a domain name"),
        ("*.example.com", "character '*' not allowed in a domain name"),
        ("exa%41mple.com", "character '%' not allowed in a domain name"),
        ("example.com\x00", "character '\\x00' not allowed in a domain name"),
        ("a" * 64 + ".com", "label longer than 63 characters (64)"),
        (".".join(["a" * 63] * 3 + ["b" * 62]), "longer than 253 characters after IDNA (254)"),
        ("xn--zz.com", "label 'xn--zz': Invalid A-label"),
        ("xn--.com", "label 'xn--': "),
        ("xn--ls8h.la", "label 'xn--ls8h': Codepoint U+1F4A9"),
        ("💩.la", "IDNA rejects label '💩'"),
        ("a\u200db.com", "IDNA rejects label"),  # a joiner outside its allowed context
        ("stra_ße.de", "IDNA rejects label 'stra_ße'"),  # underscores only in ASCII labels
        ("-straße.de", "IDNA rejects label '-straße'"),
        ("\u0378x.com", "IDNA: Codepoint U+0378"),  # unassigned
        ("ä" * 60 + ".com", "IDNA rejects label"),
    ],
)
def test_domain_rejections(value: str, reason: str) -> None:
    exc = rejection("domain", value)
    assert (exc.kind, exc.value) == ("domain", value)
    assert exc.reason.startswith(reason)


# --- url --------------------------------------------------------------------------------------

# The Google Safe Browsing canonicalisation examples, and a few of ours after them.
GSB_URLS = [
    ("http://host/%25%32%35", "http://host/%25"),
    ("http://host/%25%32%35%25%32%35", "http://host/%25%25"),
    ("http://host/%2525252525252525", "http://host/%25"),
    ("http://host/asdf%25%32%35asd", "http://host/asdf%25asd"),
    ("http://host/%%%25%32%35asd%%", "http://host/%25%25%25asd%25%25"),
    ("http://host/%25%25%32%35", "http://host/%25%25"),
    ("http://www.google.com/", "http://www.google.com/"),
    (
        "http://%31%36%38%2e%31%38%38%2e%39%39%2e%32%36/%2E%73%65%63%75%72%65/%77"
        "%77%77%2E%65%62%61%79%2E%63%6F%6D/",
        "http://168.188.99.26/.secure/www.ebay.com/",
    ),
    (
        "http://195.127.0.11/uploads/%20%20%20%20/.verify/.eBaysecure=updateuserdataxplimnbqmn-"
        "xplmvalidateinfoswqpcmlx=hgplmcx/",
        "http://195.127.0.11/uploads/%20%20%20%20/.verify/.eBaysecure=updateuserdataxplimnbqmn-"
        "xplmvalidateinfoswqpcmlx=hgplmcx/",
    ),
    (
        "http://host%23.com/%257Ea%2521b%2540c%2523d%2524e%25f%255E00%252611%252A22%252833%252944_"
        "55%252B",
        "http://host%23.com/~a!b@c%23d$e%25f^00&11*22(33)44_55+",
    ),
    ("http://3279880203/blah", "http://195.127.0.11/blah"),
    ("http://www.google.com/blah/..", "http://www.google.com/"),
    ("www.google.com/", "http://www.google.com/"),
    ("www.google.com", "http://www.google.com/"),
    ("http://www.evil.com/blah#frag", "http://www.evil.com/blah"),
    ("http://www.GOOgle.com/", "http://www.google.com/"),
    ("http://www.google.com.../", "http://www.google.com/"),
    ("http://www.google.com/foo\tbar\rbaz\n2", "http://www.google.com/foobarbaz2"),
    ("http://www.google.com/q?", "http://www.google.com/q?"),
    ("http://www.google.com/q?r?", "http://www.google.com/q?r?"),
    ("http://www.google.com/q?r?s", "http://www.google.com/q?r?s"),
    ("http://evil.com/foo#bar#baz", "http://evil.com/foo"),
    ("http://evil.com/foo;", "http://evil.com/foo;"),
    ("http://evil.com/foo?bar;", "http://evil.com/foo?bar;"),
    # GSB's bytes "\x01\x80" in a str: a raw 0x80 byte can only arrive percent-escaped.
    ("http://\x01%80.com/", "http://%01%80.com/"),
    ("http://notrailingslash.com", "http://notrailingslash.com/"),
    ("http://www.gotaport.com:1234/", "http://www.gotaport.com/"),
    ("  http://www.google.com/  ", "http://www.google.com/"),
    ("http:// leadingspace.com/", "http://%20leadingspace.com/"),
    ("http://%20leadingspace.com/", "http://%20leadingspace.com/"),
    ("%20leadingspace.com/", "http://%20leadingspace.com/"),
    ("https://www.securesite.com/", "https://www.securesite.com/"),
    ("http://host.com/ab%23cd", "http://host.com/ab%23cd"),
    ("http://host.com//twoslashes?more//slashes", "http://host.com/twoslashes?more//slashes"),
]

OUR_URLS = [
    # U+0080 as text is UTF-8 encoded first: two bytes, two escapes.
    ("http://\x01\x80.com/", "http://%01%C2%80.com/"),
    ("HTTPS://Example.COM/Path/To?Q=A&B=C", "https://example.com/Path/To?Q=A&B=C"),
    ("http://user:secret@example.com:8080/a", "http://example.com/a"),
    ("http://a@b@example.com/", "http://example.com/"),  # userinfo runs to the last @
    ("http://example.com:/", "http://example.com/"),  # an empty port
    ("http://example.com?q", "http://example.com/?q"),
    ("http://example.com?q/r", "http://example.com/?q/r"),
    ("http://example.com/a/./b/../../c/", "http://example.com/c/"),
    ("http://example.com/../../a", "http://example.com/a"),  # never above the root
    ("http://example.com/a/.", "http://example.com/a/"),
    ("http://example.com/a/b/..", "http://example.com/a/"),
    ("http://example.com/a/%2e%2E/b", "http://example.com/b"),  # dot segments after unescaping
    ("http://example.com/a%2Fb", "http://example.com/a/b"),
    ("http://example.com/a%3Fb", "http://example.com/a?b"),
    ("http://example.com/a?b/../c//d", "http://example.com/a?b/../c//d"),  # query untouched
    ("http://example.com/?a%20b%2", "http://example.com/?a%20b%252"),
    ("http://example.com/%7e%7E", "http://example.com/~~"),
    ("http://example.com/%c3%9f", "http://example.com/%C3%9F"),
    ("http://example.com/ß", "http://example.com/%C3%9F"),
    ("http://Straße.de/", "http://stra%C3%9Fe.de/"),  # no IDNA for URL hosts, as GSB
    ("http://%C3%9F.DE/", "http://%C3%9F.de/"),  # escapes stay uppercase, letters go lower
    ("http://0x7f.1/", "http://127.0.0.1/"),
    ("http://012.034.01.055/", "http://10.28.1.45/"),
    ("http://..1.2.3.4../", "http://1.2.3.4/"),
    ("http://[2001:DB8::1]:8443/x", "http://[2001:db8::1]/x"),
    ("http://[::ffff:192.0.2.7]/", "http://192.0.2.7/"),
    ("ftp://files.example.com/pub/", "ftp://files.example.com/pub/"),
    ("hxxp://evil.example/", "hxxp://evil.example/"),  # any scheme; no refanging
    ("example.com:8080/path", "http://example.com/path"),  # a colon then a digit is a port
    ("example.com:/path", "http://example.com/path"),  # a scheme has no dots
    ("example.com:", "http://example.com/"),
    ("http://x4z9arb.cn/4712/", "http://x4z9arb.cn/4712/"),
    ("http://evil.com/%00x", "http://evil.com/%00x"),
    ("http://evil.com/\x00x", "http://evil.com/%00x"),
    ("http://evil.com/a b\x7f", "http://evil.com/a%20b%7F"),
]


@pytest.mark.parametrize(("value", "expected"), GSB_URLS + OUR_URLS)
def test_url_canonicalisation(value: str, expected: str) -> None:
    assert form("url", value) == ok("url", expected)


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("http:///path", "empty host"),
        ("http://.../", "empty host"),
        ("http://user@/", "empty host"),
        ("#fragment", "empty host"),
        ("http://:80/", "empty host"),
        ("http:////example.com/", "empty host"),
        ("mailto:a@example.com", "scheme 'mailto' without '//'"),
        ("javascript:alert(1)", "scheme 'javascript' without '//'"),
        ("http:/example.com", "scheme 'http' without '//'"),
        ("C:\\Windows\\evil.exe", "scheme 'C' without '//'"),
        ("http://example.com:http/", "port 'http' is not a number"),
        ("http://example.com:80:80/", "port '80:80' is not a number"),
        ("http://a.b.c.1/", "host a.b.c.1 ends in a number but is not an IPv4 address: part 'a'"),
        ("http://1.2.3.256/", "host 1.2.3.256 ends in a number but is not an IPv4 address: part"),
        ("http://1.2.3.4.5/", "host 1.2.3.4.5 ends in a number but is not an IPv4 address: more"),
        ("http://[::1/", "'[' without ']' in the host"),
        ("http://[::1]x/", "'x' after ']' is not a port"),
        ("http://[fe80::1%25eth0]/", "bracketed host is not an IPv6 address: zone id"),
        ("http://[example.com]/", "bracketed host is not an IPv6 address"),
        ("http://.[x]/", "'[' or ']' in a host that is not a bracketed IPv6 address"),
        ("http://a]b.com/", "'[' or ']' in a host that is not a bracketed IPv6 address"),
        ("localhost:/x", "scheme 'localhost' without '//'"),
        ("http://example.com/" + "a" * 8174, "longer than 8192 characters"),
        ("http://example.com/" + "\x00" * 3000, "longer than 8192 characters once canonical"),
    ],
)
def test_url_rejections(value: str, reason: str) -> None:
    exc = rejection("url", value)
    assert (exc.kind, exc.value) == ("url", value)
    assert exc.reason.startswith(reason)


def test_url_unescaping_to_a_fixpoint_is_fast_on_deep_nesting() -> None:
    # Each pass peels one level; 4000 levels must still be quick and give a single %.
    assert form("url", "http://h/%25" + "25" * 4000) == ok("url", "http://h/%25")


# --- email ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("john@example.com", "john@example.com"),
        ("  John.Doe+Tag@Example.COM  ", "john.doe+tag@example.com"),  # no folding of . or +
        ("j.o.h.n@gmail.com", "j.o.h.n@gmail.com"),
        ("info@Straße.de", "info@xn--strae-oqa.de"),
        ("admin@example.com.", "admin@example.com"),
        ("bounce@_spf.example.com", "bounce@_spf.example.com"),
        ("Δοκιμή@παράδειγμα.δοκιμή", "δοκιμή@xn--hxajbheg2az3al.xn--jxalpdlp"),
        ("A\u0301@example.com", "\u00e1@example.com"),  # lowercased, then NFC
        ("o'brien!#$%&*/=?^`{|}~@example.com", "o'brien!#$%&*/=?^`{|}~@example.com"),
    ],
)
def test_email_forms(value: str, expected: str) -> None:
    assert form("email", value) == ok("email", expected)


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("john.example.com", "no '@'"),
        ("a@b@example.com", "2 '@' signs; expected exactly one"),
        ("@example.com", "empty local part"),
        ("john@", "empty domain part"),
        ("john doe@example.com", "whitespace or control character ' ' not allowed"),
        ("john@exam ple.com", "whitespace or control character ' ' not allowed"),
        ("john\x00@example.com", "whitespace or control character '\\x00' not allowed"),
        ("john\u2003@example.com", "whitespace or control character '\\u2003' not allowed"),
        ("john\x85@example.com", "whitespace or control character '\\x85' not allowed"),
        ('"john doe"@example.com', "whitespace or control character ' ' not allowed"),
        ('"john"@example.com', "character '\"' not allowed in the local part"),
        ("<john@example.com>", "character '<' not allowed in the local part"),
        ("john@localhost", "domain part: no dot"),
        ("john@[192.0.2.7]", "domain part: character '[' not allowed"),
        ("john@192.0.2.7", "domain part: is an IP address; use kind ipv4"),
        ("john@example.com>", "domain part: character '>' not allowed"),
        ("j" * 300 + "@" + "e" * 20 + ".com", "longer than 320 characters"),
    ],
)
def test_email_rejections(value: str, reason: str) -> None:
    exc = rejection("email", value)
    assert (exc.kind, exc.value) == ("email", value)
    assert exc.reason.startswith(reason)


# --- hashes -----------------------------------------------------------------------------------

HASH_DIGITS = {"md5": 32, "sha1": 40, "sha256": 64, "sha512": 128}


@pytest.mark.parametrize(("kind", "digits"), HASH_DIGITS.items())
def test_hashes_are_lowercase_hex(kind: str, digits: int) -> None:
    mixed = ("0123456789ABCDEFabcdef" * 6)[:digits]
    assert canonicalize(kind, f"  {mixed}\n") == ok(kind, mixed.lower())


@pytest.mark.parametrize(("kind", "digits"), HASH_DIGITS.items())
def test_hashes_of_the_wrong_length(kind: str, digits: int) -> None:
    for length in (1, digits - 1, digits + 1, 2 * digits):
        exc = rejection(kind, "a" * length)
        assert exc.reason == f"expected {digits} hex digits, got {length}"


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("d41d8cd98f00b204e9800998ecf8427g", "character 'g' is not a hex digit"),
        ("0xd41d8cd98f00b204e9800998ecf842", "character 'x' is not a hex digit"),
        ("d41d8cd98f00b204 e9800998ecf8427e", "character ' ' is not a hex digit"),
        ("sha1:d41d8cd98f00b204e9800998ecf8427e", "prefix 'sha1' does not name md5"),
        ("d41d8cd98f00b204e9800998ecf8427\uff45", "character 'ｅ' is not a hex digit"),
    ],
)
def test_hash_rejections(value: str, reason: str) -> None:
    exc = rejection("md5", value)
    assert (exc.kind, exc.value, exc.reason) == ("md5", value, reason)
    assert str(exc) == f"invalid md5 {value!r}: {reason}"


def test_a_hash_of_another_length_is_not_silently_another_kind() -> None:
    sha1 = "da39a3ee5e6b4b0d3255bfef95601890afd80709"
    assert rejection("md5", sha1).reason == "expected 32 hex digits, got 40"
    assert canonicalize("sha1", sha1) == ok("sha1", sha1)


# --- auto -------------------------------------------------------------------------------------

MD5 = "d41d8cd98f00b204e9800998ecf8427e"
SHA1 = "da39a3ee5e6b4b0d3255bfef95601890afd80709"
SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
SHA512 = (
    "cf83e1357eefb8bdf1542850d66d8007d620e4050b5715dc83f4a921d36ce9ce"
    "47d0d13c5d85f2b0ff8318d2877eec2f63b931bd47417a81a538327af927da3e"
)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("http://www.GOOgle.com/", ok("url", "http://www.google.com/")),
        ("HTTPS://example.com", ok("url", "https://example.com/")),
        ("ftp://user@files.example.com/a@b", ok("url", "ftp://files.example.com/a@b")),
        ("John@Example.com", ok("email", "john@example.com")),
        ("a/b@example.com", ok("email", "a/b@example.com")),  # @ is checked before /
        ("10.1.2.3/8", ok("cidr", "10.0.0.0/8")),
        ("2001:db8::1/32", ok("cidr", "2001:db8::/32")),
        ("192.0.2.7/32", ok("ipv4", "192.0.2.7")),
        ("2001:DB8::1", ok("ipv6", "2001:db8::1")),
        ("[2001:db8::1]", ok("ipv6", "2001:db8::1")),
        ("::ffff:192.0.2.7", ok("ipv4", "192.0.2.7")),
        (MD5.upper(), ok("md5", MD5)),
        (SHA1, ok("sha1", SHA1)),
        (SHA256, ok("sha256", SHA256)),
        (SHA512, ok("sha512", SHA512)),
        ("1" * 32, ok("md5", "1" * 32)),  # all decimal, yet exactly a hash length
        ("192.0.2.7", ok("ipv4", "192.0.2.7")),
        ("012.034.01.055", ok("ipv4", "10.28.1.45")),
        ("0xc0.0xa8.0.1", ok("ipv4", "192.168.0.1")),
        ("Example.COM.", ok("domain", "example.com")),
        ("Straße.de", ok("domain", "xn--strae-oqa.de")),
        ("_dmarc.example.com", ok("domain", "_dmarc.example.com")),
        ("deadbeef.com", ok("domain", "deadbeef.com")),
        ("1.2.3.com", ok("domain", "1.2.3.com")),
    ],
)
def test_auto_detection(value: str, expected: Indicator) -> None:
    assert canonicalize("auto", value) == expected


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("3279880203", "a bare number is ambiguous (an IPv4 address as one integer?); pass kind"),
        ("0x7f000001", "a bare number is ambiguous"),
        ("12345", "a bare number is ambiguous"),
        ("1.2.3", "dotted numbers without exactly four parts are ambiguous (a version?)"),
        ("0x7f.1", "dotted numbers without exactly four parts are ambiguous"),
        ("1.2.3.4.5", "dotted numbers without exactly four parts are ambiguous"),
        ("deadbeef", "8 hex digits is no hash length (md5 32, sha1 40, sha256 64, sha512 128)"),
        (MD5[:-1], "31 hex digits is no hash length"),
        ("localhost", "no dot, '@', ':' or '/'; cannot tell the kind"),
        ("evil.com/malware.exe", "has '/' but is not address/prefix, nor a URL with a scheme"),
        ("10.0.0.0/x", "has '/' but is not address/prefix"),
        ("example.com:99999", "one ':' but not host:port (the port must be a number up to 65535)"),
        ("invoice.pdf", "the name 'invoice.pdf' does not end in a public suffix (.pdf is on no"),
        ("1.2.3.256", "looks like an IPv4 address, but part 256 out of range (max 255)"),
        ("a.b.c.1", "looks like an IPv4 address, but part 'a' is not a number"),
        ("10.0.0.0/33", "looks like a CIDR block, but prefix /33 out of range (max 32)"),
        ("a@b", "looks like an e-mail address, but domain part: no dot"),
        ("mailto:a@b.com", "looks like an e-mail address, but character ':' not allowed"),
        ("http://", "looks like a URL, but empty host"),
        ("exa mple.com", "looks like a domain, but character ' ' not allowed"),
        ("fe80::1%eth0", "looks like an IPv6 address, but zone id '%eth0' not allowed"),
    ],
)
def test_auto_rejections(value: str, reason: str) -> None:
    exc = rejection("auto", value)
    assert (exc.kind, exc.value) == ("auto", value)
    assert exc.reason.startswith(reason)


# --- properties -------------------------------------------------------------------------------

ASCII_LABEL = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,14}", fullmatch=True)
TLD = st.from_regex(r"[A-Za-z][A-Za-z0-9]{1,8}", fullmatch=True)
# Letters IDNA 2008 takes in any position, cased ones included (UTS 46 lowercases them).
UNICODE_LABEL = st.text(
    "abcxyzàéîõüßœçñøÀÉÖÜẞабвгдеёжэюяΑΒΓαβγδπω0123456789", min_size=1, max_size=12
)
DOMAINS = st.builds(
    lambda labels, tld, dots: ".".join([*labels, tld]) + dots,
    st.lists(ASCII_LABEL | UNICODE_LABEL, min_size=1, max_size=4),
    TLD | UNICODE_LABEL.filter(lambda label: not re.fullmatch(r"[0-9]+|0x[0-9a-f]*", label)),
    st.sampled_from(["", ".", ".."]),
)
SPACE = st.sampled_from(["", " ", "\t", "\n", "\u3000"])


def _ipv4_form(address: int, style: str) -> str:
    octets = address.to_bytes(4, "big")
    if style == "integer":
        return str(address)
    if style == "hex":
        return ".".join(f"0x{octet:x}" for octet in octets)
    if style == "octal":
        return ".".join(f"0{octet:o}" for octet in octets)
    if style == "three":
        return f"{octets[0]}.{octets[1]}.{address & 0xFFFF}"
    if style == "two":
        return f"{octets[0]}.{address & 0xFFFFFF}"
    return ".".join(str(octet) for octet in octets)


@given(
    st.integers(0, 2**32 - 1),
    st.sampled_from(["dotted", "integer", "hex", "octal", "three", "two"]),
)
def test_every_ipv4_form_of_an_address_gives_one_canonical_value(address: int, style: str) -> None:
    out = canonicalize("ipv4", _ipv4_form(address, style))
    assert out == ok("ipv4", str(ipaddress.IPv4Address(address)))
    assert_canonical_fixpoint("ipv4", out)


@given(st.ip_addresses(v=6), st.sampled_from(["compressed", "exploded", "upper", "brackets"]))
def test_ipv6_forms_give_one_canonical_value(address: ipaddress.IPv6Address, style: str) -> None:
    text = {
        "compressed": address.compressed,
        "exploded": address.exploded,
        "upper": address.exploded.upper(),
        "brackets": f"[{address}]",
    }[style]
    out = canonicalize("ipv6", text)
    mapped = address.ipv4_mapped
    assert out == (ok("ipv4", str(mapped)) if mapped else ok("ipv6", address.compressed))
    assert_canonical_fixpoint("ipv6", out)


@given(st.ip_addresses(), st.integers(0, 128))
def test_cidr_clears_host_bits_like_ipaddress(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address, prefix: int
) -> None:
    prefix = min(prefix, address.max_prefixlen)
    out = canonicalize("cidr", f"{address}/{prefix}")
    network = ipaddress.ip_network((address, prefix), strict=False)
    if isinstance(network, ipaddress.IPv6Network) and network.network_address.ipv4_mapped:
        assert prefix >= 96
        network = ipaddress.ip_network(
            (network.network_address.ipv4_mapped, prefix - 96), strict=False
        )
    if network.prefixlen == network.max_prefixlen:
        assert out == ok(f"ipv{network.version}", str(network.network_address))
    else:
        assert out == ok("cidr", str(network))
    assert_canonical_fixpoint("cidr", out)


@given(DOMAINS, SPACE, SPACE)
def test_domains_are_idempotent(name: str, before: str, after: str) -> None:
    try:
        out = form("domain", before + name + after)
    except InvalidIndicator as exc:
        # The generator avoids every rule but the length limits (and a mixed-script TLD that
        # happens to be numeric in another script is impossible with this alphabet).
        assert "longer than" in exc.reason, exc
        return
    assert out.value.isascii()
    assert out.value == out.value.lower()
    if name.isascii():
        assert out.value == name.lower().rstrip(".")
    assert_canonical_fixpoint("domain", out)


LOCAL_PART = st.from_regex(r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,20}", fullmatch=True) | st.text(
    st.characters(categories=["L", "M", "N"]), min_size=1, max_size=10
)


@given(LOCAL_PART, DOMAINS, SPACE)
def test_emails_are_idempotent(local: str, domain: str, space: str) -> None:
    try:
        out = form("email", f"{space}{local}@{domain}{space}")
    except InvalidIndicator as exc:
        assert "longer than" in exc.reason, exc
        return
    assert out.value == out.value.lower()
    assert_canonical_fixpoint("email", out)


URL_PATH_TEXT = st.lists(
    st.sampled_from([*"/.%#?@:;=&+~!$'()*,[]", *string.ascii_letters, *string.digits])
    | st.sampled_from(["%25", "%2e", "%2F", "%3f", "%23", "%00", "%7f", "%c3%9f", "..", "./"])
    | st.characters(exclude_categories=["Cs"]),
    max_size=40,
).map("".join)


@given(
    st.sampled_from(["", "http://", "HTTPS://", "ftp://", "hxxp://"]),
    st.sampled_from(["", "user@", "user:pass@"]),
    DOMAINS.map(lambda name: name.rstrip("."))
    | st.builds(
        _ipv4_form, st.integers(0, 2**32 - 1), st.sampled_from(["dotted", "integer", "hex"])
    ),
    st.sampled_from(["", ":80", ":8443", ":"]),
    URL_PATH_TEXT.map(lambda path: "/" + path) | st.just(""),
    SPACE,
)
def test_urls_are_idempotent(
    scheme: str, userinfo: str, host: str, port: str, path: str, space: str
) -> None:
    if not scheme:
        # Without a scheme, "user:" reads as a scheme without // (rejected), and "host:" followed
        # by a path that starts with // as the scheme "host".
        userinfo = userinfo.partition(":")[0] + "@" if userinfo else ""
        port = "" if port == ":" else port
    out = form("url", f"{space}{scheme}{userinfo}{host}{port}{path}{space}")
    assert out.value.isascii()
    assert not any(char <= " " or char in "#\x7f" for char in out.value)
    assert out.value.startswith(scheme.lower() or "http://")
    assert_canonical_fixpoint("url", out)


# --- raw bytes: what Python makes of argv and files that are not UTF-8 (surrogateescape) ------


@pytest.mark.parametrize("kind", ["url", "auto"])
@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("http://h/\udce9", "http://h/%E9"),
        # bytes that happen to be UTF-8 are that text: the same URL as "café"
        ("http://h/caf\udcc3\udca9", "http://h/caf%C3%A9"),
        ("HTTP://Ex\udcffample.com/a?\udc80=1#\udc81", "http://ex%FFample.com/a?%80=1"),
        ("http://h/%\udce9/%2\udce9", "http://h/%25%E9/%252%E9"),
        ("http://h/%E9", "http://h/%E9"),
    ],
)
def test_urls_with_raw_bytes_are_percent_escaped(kind: str, value: str, expected: str) -> None:
    assert form(kind, value) == ok("url", expected)


@pytest.mark.parametrize(
    ("kind", "value"),
    [
        ("url", "http://h/\ud800"),  # a lone surrogate that is no escaped byte
        ("url", "http://h/\udc7f"),
        ("domain", "ex\udce9.com"),
        ("email", "caf\udce9@example.com"),
        ("auto", "ex\udce9.com"),
        ("auto", "caf\udce9@example.com"),
    ],
)
def test_raw_bytes_outside_urls_are_still_rejected(kind: str, value: str) -> None:
    assert "contains a lone surrogate" in rejection(kind, value).reason


def test_wire_value_makes_raw_bytes_sendable() -> None:
    assert wire_value("auto", "example.com") == "example.com"
    assert wire_value("auto", "straße.de") == "straße.de"
    assert wire_value("auto", "http://h/\udce9") == "http://h/%E9"
    with pytest.raises(InvalidIndicator, match="lone surrogate"):
        wire_value("email", "caf\udce9@example.com")


RAW_BYTE = st.integers(0x80, 0xFF)


@given(st.lists(URL_PATH_TEXT | RAW_BYTE, max_size=12), SPACE)
def test_urls_with_raw_bytes_are_idempotent(pieces: list[str | int], space: str) -> None:
    """A raw byte is the byte it stands for, as its %XX escape is (url rules 2 and 7)."""
    raw = "".join(chr(0xDC00 + p) if isinstance(p, int) else p for p in pieces)
    escaped = "".join(f"%{p:02X}" if isinstance(p, int) else p for p in pieces)
    out = canonicalize("url", f"{space}http://example.com/{raw}{space}")
    assert out == canonicalize("url", f"http://example.com/{escaped}")
    assert out.value.isascii()
    assert_canonical_fixpoint("url", out)
    assert canonicalize("url", wire_value("url", f"http://example.com/{raw}")) == out


def test_the_cli_canonicalises_a_url_given_as_bytes_that_are_not_utf8() -> None:
    argv: list[str | bytes] = [sys.executable, "-m", "blindmatch.cli.main", "canonicalize", "url"]
    argv += [b"http://Example.com/caf\xe9/\xff?q=\xc3\xa9", b"http://h.example/%E9"]
    result = subprocess.run(argv, capture_output=True, check=False)
    assert (result.returncode, result.stderr) == (0, b"")
    assert result.stdout.decode().splitlines() == [
        "http://example.com/caf%E9/%FF?q=%C3%A9",
        "http://h.example/%E9",
    ]


@given(st.sampled_from(sorted(HASH_DIGITS)), st.data())
def test_hashes_are_idempotent(kind: str, data: st.DataObject) -> None:
    digest = data.draw(st.binary(min_size=HASH_DIGITS[kind] // 2, max_size=HASH_DIGITS[kind] // 2))
    text = data.draw(st.sampled_from([digest.hex(), digest.hex().upper()]))
    out = canonicalize(kind, text)
    assert out == ok(kind, digest.hex())
    assert_canonical_fixpoint(kind, out)


# Pieces that steer random text into the interesting corners of every rule.
FRAGMENTS = st.sampled_from(
    [
        ".",
        "..",
        ":",
        "::",
        "/",
        "//",
        "@",
        "%",
        "%25",
        "%2",
        "%3A",
        "%2e",
        "#",
        "?",
        "[",
        "]",
        "0x",
        "0",
        "08",
        "255",
        "256",
        "4294967296",
        "::ffff:",
        "1.2.3.4",
        "xn--",
        "xn--zca",
        "http://",
        "mailto:",
        "www.",
        "example.com",
        "ß",
        "。",
        "\u200d",
        "\u00ad",
        "\x00",
        "\t",
        " ",
        "\ud800",
        "\udfff",
        "%eth0",
        "/32",
        "/128",
        "_",
        "-",
        "A",
        "f",
        MD5,
    ]
)
FUZZ_TEXT = st.lists(FRAGMENTS | st.text(st.characters(exclude_categories=()), max_size=8)).map(
    "".join
)


@settings(max_examples=1500, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from([*KINDS, "auto"]), FUZZ_TEXT)
def test_fuzz_only_invalid_indicator_escapes(kind: str, value: str) -> None:
    try:
        out = canonicalize(kind, value)
    except InvalidIndicator as exc:
        assert (exc.kind, exc.value) == (kind, value)
        assert exc.reason
        assert str(exc).startswith(f"invalid {kind} ")
        return
    assert_canonical_fixpoint(kind, out)
    out.value.encode("utf-8")  # storable and hashable as UTF-8


@settings(max_examples=300)
@given(st.sampled_from([*KINDS, "auto"]), st.text(st.characters(exclude_categories=()), min_size=1))
def test_fuzz_with_plain_random_text(kind: str, value: str) -> None:
    try:
        out = canonicalize(kind, value)
    except InvalidIndicator:
        return
    assert_canonical_fixpoint(kind, out)


# --- the suffix rule and prefixes (issue 19) ----------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "value", "expected"),
    [
        ("auto", "evil.co.uk", ok("domain", "evil.co.uk")),
        ("auto", "a.github.io", ok("domain", "a.github.io")),
        ("auto", "github.io", ok("domain", "github.io")),  # a private-section entry is a name
        ("auto", "xn--e1afmkfd.xn--p1ai", ok("domain", "xn--e1afmkfd.xn--p1ai")),
        ("auto", "duskgytldkxiuqc6.onion", ok("domain", "duskgytldkxiuqc6.onion")),
        ("auto", "c2.alpha.example", ok("domain", "c2.alpha.example")),
        ("auto", "mail.test", ok("domain", "mail.test")),
        ("auto", "cdn-invoice9164.invalid", ok("domain", "cdn-invoice9164.invalid")),
        ("auto", "a@b.example", ok("email", "a@b.example")),
        ("url", "http://stra\u00dfe.de/", ok("url", "http://stra%C3%9Fe.de/")),
        ("url", "http://10.0.0.1/x", ok("url", "http://10.0.0.1/x")),
        ("url", "http://[2001:db8::1]/", ok("url", "http://[2001:db8::1]/")),
    ],
)
def test_names_under_a_public_or_special_use_suffix_are_accepted(
    kind: str, value: str, expected: Indicator
) -> None:
    assert canonicalize(kind, value) == expected


@pytest.mark.parametrize(
    ("kind", "value", "reason"),
    [
        ("auto", "9lb1dnwrh.ab6nu5e5", "the name '9lb1dnwrh.ab6nu5e5' does not end in a public"),
        ("domain", "co.uk", "the name 'co.uk' is a public suffix itself"),
        ("auto", "printer.local", "the name 'printer.local' is .local, link-local multicast DNS"),
        ("auto", "dc1.corp.internal", "is .internal, reserved for private networks"),
        ("auto", "router.home.arpa", "is home.arpa, for home networks"),
        ("auto", "app.localhost", "is .localhost, which always means this host"),
        ("auto", "7.2.0.192.in-addr.arpa", "is under .arpa, DNS infrastructure"),
        ("auto", "http://intranet/login", "the host 'intranet' does not end in a public suffix"),
        ("auto", "http://wiki/", "the host 'wiki' is a public suffix itself"),
        ("email", "ceo@acme.corp", "the domain part 'acme.corp' does not end in a public suffix"),
    ],
)
def test_names_without_a_public_suffix_are_refused_naming_why(
    kind: str, value: str, reason: str
) -> None:
    assert reason in rejection(kind, value).reason


@pytest.mark.parametrize(
    "value",
    [
        "printer.local",
        "dc1.corp.internal",
        "ceo@acme.corp",
        "http://intranet/login",
        "http://wiki/",
    ],
)
def test_private_suffixes_are_accepted_when_allowed(value: str) -> None:
    assert "--allow-private-suffix" in rejection("auto", value).reason
    assert canonicalize("auto", value, allow_private_suffix=True).value == form("auto", value).value


@pytest.mark.parametrize("value", ["app.localhost", "7.2.0.192.in-addr.arpa"])
def test_never_indicators_stay_refused_when_private_suffixes_are_allowed(value: str) -> None:
    with pytest.raises(InvalidIndicator):
        canonicalize("auto", value, allow_private_suffix=True)


@pytest.mark.parametrize(
    ("kind", "value", "expected"),
    [
        ("auto", "203.0.113.7:8080", ok("ipv4", "203.0.113.7")),
        ("auto", "evil.example:443", ok("domain", "evil.example")),
        ("auto", "[2001:db8::1]:443", ok("ipv6", "2001:db8::1")),
        ("domain", "Evil.Example:443", ok("domain", "evil.example")),
        ("ipv4", "203.0.113.7:8080", ok("ipv4", "203.0.113.7")),
        ("auto", f"sha256:{SHA256.upper()}", ok("sha256", SHA256)),
        ("auto", f"SHA-256:{SHA256}", ok("sha256", SHA256)),
        ("auto", f"md5:{MD5}", ok("md5", MD5)),
        ("sha256", f"sha256:{SHA256}", ok("sha256", SHA256)),
    ],
)
def test_host_port_is_read_as_the_host_and_hash_prefixes_name_the_kind(
    kind: str, value: str, expected: Indicator
) -> None:
    assert canonicalize(kind, value) == expected


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (f"sha256:{MD5}", "looks like a sha256 hash, but expected 64 hex digits, got 32"),
        (f"sha384:{SHA256}", "prefix 'sha384' names no hash kind this accepts"),
        ("203.0.113.7:99999", "one ':' but not host:port"),
        ("9lb1dnwrh.ab6nu5e5:80", "the name '9lb1dnwrh.ab6nu5e5' does not end in a public"),
    ],
)
def test_prefixes_and_ports_are_never_called_ipv6(value: str, reason: str) -> None:
    exc = rejection("auto", value)
    assert exc.reason.startswith(reason)
    assert "IPv6" not in exc.reason
