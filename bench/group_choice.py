"""The group of protocol v2, measured: secp256k1 (libsecp256k1 via coincurve) against ristretto255
(libsodium), and the per-element costs of v2's evaluation path beside v1's blinding (an X25519
multiplication, measured through ``cryptography`` as v1 called it).

    .venv/bin/python -m bench.group_choice [--repeat 2000] [--psi 100000]

pynacl 1.6 binds no ristretto255 function, so ristretto255 is measured through the system's
libsodium with ctypes (Debian's libsodium23); without it, that column is left out. Medians of
``--repeat`` calls, repeated 5 times, all in this one process.

With ``--psi N``, openmined-psi's two-party protocol on N x N runs in the same session, and v2's
compute floor for the same sets is projected from the per-element costs measured here: two
nodes, both in the committee, so each node does 3 multiplications per own element and 1 per
partner element, plus the subset sums and tags, on the machine's cores.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import hashlib
import os
import platform
import statistics
import time
from collections.abc import Callable

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from bench.psi_runner import run_psi
from blindmatch.core import oprf
from blindmatch.core import secp256k1 as g


def median_us(f: Callable[[], object], repeat: int) -> float:
    runs = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(repeat):
            f()
        runs.append((time.perf_counter() - start) / repeat * 1e6)
    return statistics.median(runs)


def secp256k1_costs(repeat: int) -> dict[str, float]:
    p = g.base_mul(g.random_scalar())
    q = g.base_mul(g.random_scalar())
    k = g.random_scalar()
    raw = g.point_to_bytes(p)
    compressed = p.format(compressed=True)
    return {
        "multiply": median_us(lambda: g.mul(p, k), repeat),
        "base multiply": median_us(lambda: g.base_mul(k), repeat),
        "hash to group (RFC 9380)": median_us(lambda: g.hash_to_curve(raw, b"bench"), repeat),
        "parse, uncompressed": median_us(lambda: g.point_from_bytes(raw), repeat * 10),
        "parse, compressed": median_us(lambda: type(p)(compressed), repeat * 10),
        "add two": median_us(lambda: g.add([p, q]), repeat * 10),
        "encode": median_us(lambda: g.point_to_bytes(p), repeat * 10),
    }


def ristretto255_costs(repeat: int) -> dict[str, float] | None:
    path = ctypes.util.find_library("sodium")
    if path is None:
        return None
    lib = ctypes.CDLL(path)
    if lib.sodium_init() < 0 or not hasattr(lib, "crypto_scalarmult_ristretto255"):
        return None
    point, other, out = (ctypes.create_string_buffer(32) for _ in range(3))
    scalar = ctypes.create_string_buffer(32)
    lib.crypto_core_ristretto255_scalar_random(scalar)
    lib.crypto_scalarmult_ristretto255_base(point, scalar)
    lib.crypto_scalarmult_ristretto255_base(other, scalar)
    uniform = hashlib.sha512(b"bench").digest()
    return {
        "multiply": median_us(
            lambda: lib.crypto_scalarmult_ristretto255(out, scalar, point), repeat
        ),
        "base multiply": median_us(
            lambda: lib.crypto_scalarmult_ristretto255_base(out, scalar), repeat
        ),
        "hash to group (from 64 uniform bytes)": median_us(
            lambda: lib.crypto_core_ristretto255_from_hash(out, uniform), repeat
        ),
        "parse (is_valid_point)": median_us(
            lambda: lib.crypto_core_ristretto255_is_valid_point(point), repeat * 10
        ),
        "add two": median_us(
            lambda: lib.crypto_core_ristretto255_add(out, point, other), repeat * 10
        ),
    }


def x25519_blind_us(repeat: int) -> float:
    """v1's blinding of one received element: parse its u-coordinate, multiply by the key."""
    key = X25519PrivateKey.generate()
    element = X25519PrivateKey.generate().public_key().public_bytes_raw()
    return median_us(lambda: key.exchange(X25519PublicKey.from_public_bytes(element)), repeat)


def v2_per_element(n: int, committee: int) -> dict[str, float]:
    """One owner's set of n through a committee of ``committee`` (the owner not a member), in
    microseconds per element, each step on one core."""
    hashes = [g.hash_to_curve(os.urandom(16), b"bench") for _ in range(n)]
    shares = [g.random_scalar() for _ in range(committee)]
    out: dict[str, float] = {}

    start = time.perf_counter()
    check = oprf.SubsetCheck(n)
    check.add_hashes(hashes)
    out["subset sums of H (40 subsets)"] = (time.perf_counter() - start) / n * 1e6

    start = time.perf_counter()
    blinded, unblinders = oprf.blind(hashes)
    out["blind (fresh r, batch inverse)"] = (time.perf_counter() - start) / n * 1e6

    start = time.perf_counter()
    answers = [oprf.evaluate(k, blinded) for k in shares]
    out[f"evaluate, {committee} members"] = (time.perf_counter() - start) / n * 1e6

    challenge = check.challenge()
    start = time.perf_counter()
    tags = oprf.unblind(answers, unblinders)
    out["unblind (sum, then one multiply)"] = (time.perf_counter() - start) / n * 1e6

    start = time.perf_counter()
    check.add_tags(tags)
    proved = [oprf.evaluate(k, challenge) for k in shares]
    failed = check.failing(check.expected(proved))
    out["subset sums of T, and the check"] = (time.perf_counter() - start) / n * 1e6
    assert not failed

    start = time.perf_counter()
    for t in tags:
        oprf.tag(b"round", t)
    out["tags (SHA-256)"] = (time.perf_counter() - start) / n * 1e6
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=2000)
    parser.add_argument("--elements", type=int, default=4096)
    parser.add_argument("--committee", type=int, default=2)
    parser.add_argument("--psi", type=int, default=0, help="openmined-psi on N x N too")
    args = parser.parse_args()
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores")
    print("\nper operation, us (median)")
    secp = secp256k1_costs(args.repeat)
    rist = ristretto255_costs(args.repeat)
    for name, us in secp.items():
        print(f"  secp256k1     {name:40s} {us:8.2f}")
    for name, us in (rist or {}).items():
        print(f"  ristretto255  {name:40s} {us:8.2f}")
    if rist is None:
        print("  ristretto255  (no libsodium with ristretto255 on this machine)")
    print(f"  v1 X25519     {'blind (one multiply)':40s} {x25519_blind_us(args.repeat):8.2f}")
    print(
        f"\nv2, one owner's {args.elements} elements, committee of {args.committee}: us per element"
    )
    steps = v2_per_element(args.elements, args.committee)
    for name, us in steps.items():
        print(f"  {name:40s} {us:8.2f}")
    print(f"  {'total':40s} {sum(steps.values()):8.2f}")
    if args.psi:
        project(args.psi, steps, secp["multiply"])


def project(n: int, steps: dict[str, float], multiply: float) -> None:
    """v2's CPU floor for two nodes of n, both members, against openmined-psi in this run."""
    evaluate = next(us for name, us in steps.items() if name.startswith("evaluate"))
    per_member = evaluate / 2  # the bench's committee of 2: one member's multiply per element
    own = sum(us for name, us in steps.items() if not name.startswith("evaluate"))
    own += multiply  # a member owner adds its own share: k_own·H
    per_node = n * (own + per_member) / 1e6
    cores = os.cpu_count() or 1
    floor = 2 * per_node / cores
    psi = run_psi(n)
    print(f"\n2 x {n}: openmined-psi {psi.wall:.2f} s wall, {psi.cpu:.2f} s CPU")
    print(f"  v2 CPU per node {per_node:.2f} s, floor on {cores} cores {floor:.2f} s")
    print(f"  floor / openmined-psi wall: {floor / psi.wall:.3f} (the issue's target: 0.5)")


if __name__ == "__main__":
    main()
