"""``blindmatch demo``: a whole federation on loopback, with built-in sample data, in one command.

It does what operators would do by hand, in order: a federation CA, one node per nation, imports
of each nation's sample files, a coordinator and an operator; then every node and the coordinator
run as separate processes over mTLS, an operator runs a pairwise round, and the demo shows what
each nation learned, what the coordinator saw, and checks the result against plain set
intersection of the sample data (``blindmatch.demo.samples.expected_matches``).

Every step runs as a ``blindmatch`` subprocess (``blindmatch.demo.harness``), exactly the commands an
operator types, and the demo reads results from their ``--json`` output: the core package imports
neither ``node`` nor ``coordinator``. Every process the demo starts is stopped on the way out
(SIGTERM, then SIGKILL), also after an error or Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import Any, Final

from blindmatch.core.canon import KINDS
from blindmatch.demo import harness, sample_files, samples
from blindmatch.demo.harness import Federation, HarnessError, Server
from blindmatch.runtime import net, pki

ROUND_TIMEOUT: Final = 600.0
SHOWN_MATCHES: Final = 6
VALUE_WIDTH: Final = 52
COORDINATOR: Final = "coordinator"
# The line a successful check prints; tests look for it.
VERIFIED: Final = "exactly the plain intersection of the canonical sample data, TLP:RED excluded"
OPERATOR: Final = "demo-operator"


class DemoError(Exception):
    """A step of the demo failed; the message says which and what to look at."""


def cmd_demo(args: argparse.Namespace) -> int:
    nations_count: int = args.nations
    size: int = args.size
    if not samples.MIN_NATIONS <= nations_count <= len(samples.NATION_NAMES):
        return _usage(
            f"--nations {nations_count}: choose {samples.MIN_NATIONS} to "
            f"{len(samples.NATION_NAMES)} nations"
        )
    if size < samples.MIN_SIZE:
        return _usage(f"--size {size}: the sample data needs at least {samples.MIN_SIZE}")
    keep = Path(args.keep) if args.keep else None
    if keep is not None and keep.exists() and (not keep.is_dir() or any(keep.iterdir())):
        return _usage(f"--keep {keep}: exists and is not an empty directory; choose a new one")
    try:
        root = keep or Path(tempfile.mkdtemp(prefix="blindmatch-demo-"))
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        print(f"error: cannot create a directory for the demo: {exc}", file=sys.stderr)
        return 1
    demo = Demo(root, samples.nation_names(nations_count), size, bool(getattr(args, "verbose", 0)))
    previous = signal.signal(signal.SIGTERM, _terminate)
    status = 1
    try:
        status = demo.run()
    except (DemoError, HarnessError) as exc:
        print(f"error: {exc}; everything is kept in {root}", file=sys.stderr)
    except (OSError, ValueError, subprocess.SubprocessError, net.NetError) as exc:
        print(f"error: {exc}; the demo stopped, everything is kept in {root}", file=sys.stderr)
    except KeyboardInterrupt:
        status = 130
        raise
    finally:
        # Cleanup must finish: another Ctrl-C now would leave servers running.
        interrupt = signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            demo.stop_all()
            if keep is None and status in (0, 130):
                shutil.rmtree(root, ignore_errors=True)
            elif keep is not None and status == 0:
                print(f"\nThe federation is kept in {keep}; see {keep / 'README.txt'}")
        finally:
            signal.signal(signal.SIGINT, interrupt)
            signal.signal(signal.SIGTERM, previous)
    return status


def _usage(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def _terminate(signum: int, frame: FrameType | None) -> None:
    # Turn SIGTERM into an exception so the servers are stopped on the way out.
    raise KeyboardInterrupt


class Demo:
    def __init__(self, root: Path, nations: list[str], size: int, verbose: bool) -> None:
        self.root = root.resolve()
        self.nations = nations
        self.size = size
        self.verbose = verbose
        self.fed = Federation(self.root, nations, coordinator=COORDINATOR, operator=OPERATOR)
        self.spelled: dict[str, dict[tuple[str, str], str]] = {}  # nation -> key -> as written

    def run(self) -> int:
        started = time.monotonic()
        names = ", ".join(self.nations)
        print(
            f"blindmatch demo: {len(self.nations)} nations ({names}), "
            f"{self.size:,} indicators each, in {self.root}"
        )

        _heading("1. Federation: CA, nodes, coordinator, operator")
        self.setup()

        _heading(f"2. Sample data (seed {samples.DEFAULT_SEED})")
        data = samples.generate(self.nations, self.size)
        files = sample_files.write_samples(data, self.root / "data")
        show_files = ", ".join(samples.FILE_NAMES[f] for f in samples.FORMATS)
        print(f"   each nation has {show_files} in {self.root / 'data'}/<nation>/")
        self.show_spellings(data)
        self.spelled = _first_spellings(data)

        _heading("3. Import: parse, canonicalise, store (each nation in its own store)")
        self.import_all(files)

        _heading("4. Servers: separate processes, mTLS on loopback")
        self.fed.start(verbose=self.verbose, on_ready=_show_ready)

        _heading("5. A pairwise round, launched by the operator")
        info = self.run_round()

        _heading("6. What each nation learned (from its own store)")
        got = {nation: self.read_matches(nation, info["id"]) for nation in self.nations}
        for nation in self.nations:
            self.show_matches(nation, got[nation])

        _heading("7. What the coordinator saw: set sizes and counts, never a value")
        print(_indent(self.fed.operator("round", "status", info["id"])))

        _heading("8. Check")
        self.verify(got, data.expected_matches())
        self.write_readme()
        print(f"\ndone in {time.monotonic() - started:.1f} s")
        return 0

    def stop_all(self) -> None:
        self.fed.stop()

    # --- setup ------------------------------------------------------------------------------

    def setup(self) -> None:
        fed = self.fed
        fed.init()
        print(f"   CA              {fed.pki_dir / pki.CA_CERT_FILE}")
        for nation in self.nations:
            print(f"   node {nation:<10} {fed.addresses[nation]:<16} {fed.node_dir(nation)}")
        print(f"   {COORDINATOR:<15} {fed.coordinator_address:<16} {fed.coordinator_toml.parent}")
        print(f"   operator        {OPERATOR:<16} {fed.operator_toml.parent}")

    def show_spellings(self, data: samples.Samples) -> None:
        """A few indicators every nation holds, each nation's spelling, and the canonical form."""
        by_nation: dict[str, dict[tuple[str, str], list[str]]] = {}
        for nation in self.nations:
            spellings = by_nation[nation] = {}
            for s in data.sightings[nation]:
                spelled = spellings.setdefault(s.key, [])
                if s.raw not in spelled:
                    spelled.append(s.raw)  # some indicators are in two of a nation's files
        shared = set.intersection(*(set(raws) for raws in by_nation.values()))
        keys = [k for k in samples.SHOWCASES if k in shared]
        for kind in ("url", "email", "ipv6", "cidr"):
            # The most varied spellings make the point best.
            candidates = sorted(
                (-len({by_nation[n][k][0] for n in self.nations}), k)
                for k in shared
                if k[0] == kind
            )
            keys += [k for _, k in candidates[:1]]
        print("   The same indicator, as each nation wrote it (canonicalisation makes them match):")
        width = max(len(n) for n in self.nations)
        for kind, value in keys:
            print(f"   {kind} {value}")
            for nation in self.nations:
                print(f"     {nation:<{width}}  {'   '.join(by_nation[nation][(kind, value)])}")

    def import_all(self, files: dict[str, list[Path]]) -> None:
        header = ("nation", "entries", "indicators", "known", "skipped", "invalid", "TLP:RED")
        print("   " + "  ".join(f"{h:>10}" if i else f"{h:<10}" for i, h in enumerate(header)))
        for nation in self.nations:
            config = str(self.fed.node_toml(nation))
            said = harness.run("node", "import", "--config", config, *map(str, files[nation]))
            # A fresh store: every import its audit holds is one of these files.
            audit = harness.run_json("node", "audit", "--config", config, "--json")
            summaries = [e["summary"] for e in audit if e["type"] == "ImportAudit"]
            stats = harness.run_json("node", "stats", "--config", config, "--json")
            row = (
                sum(s["entries"] for s in summaries),
                sum(s["new"] for s in summaries),
                sum(s["known"] for s in summaries),
                sum(sum(s["skipped"].values()) for s in summaries),
                sum(s["invalid"] for s in summaries),
                stats["per_tlp"].get("red", 0),
            )
            if row[4]:
                raise DemoError(
                    f"{nation}'s sample files did not import cleanly ({row[4]} invalid "
                    f"records); `blindmatch node import` said:\n{said}"
                )
            print(f"   {nation:<10}  " + "  ".join(f"{n:>10,}" for n in row))
            if self.verbose:
                print(_indent(said, 6))
        print(
            "   known: sightings of an indicator already imported (feeds overlap); "
            "skipped: MISP file names;\n   TLP:RED indicators stay out of every round."
        )

    # --- the round --------------------------------------------------------------------------

    def run_round(self) -> dict[str, Any]:
        nodes = ",".join(self.nations)
        op_config = self.fed.operator_toml
        print(f"   $ blindmatch round start --config {op_config} --nodes {nodes} --wait")
        sys.stdout.flush()
        # The child reports progress on stderr, a line per phase, and the result as JSON on stdout.
        with subprocess.Popen(
            self.fed.round_command(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        ) as child:
            assert child.stdout is not None and child.stderr is not None
            try:
                for line in child.stderr:
                    print(f"   {line.rstrip()}", flush=True)
                output = child.stdout.read()
                status = child.wait(timeout=ROUND_TIMEOUT)
            except BaseException:
                child.kill()
                raise
        logs = self.fed.logs
        try:
            info: dict[str, Any] = json.loads(output)
        except json.JSONDecodeError:
            raise DemoError(
                f"`blindmatch round start` failed (exit {status}); server logs are in {logs}"
            ) from None
        if info.get("state") != "done":
            raise DemoError(
                f"round {info.get('id')} {info.get('state')}: {info.get('error')}; "
                f"server logs are in {logs}"
            )
        took = (info.get("finished") or 0) - info.get("created", 0)
        print(f"   round {info['id']} done in {took:.1f} s")
        return info

    def read_matches(self, nation: str, round_id: str) -> dict[tuple[str, str], set[str]]:
        """The round's matches as the nation's store recorded them (``node matches``)."""
        rows = harness.run_json(
            *("node", "matches", "--config", str(self.fed.node_toml(nation))),
            *("--round", round_id, "--format", "json"),
        )
        # Rows without a kind are per-partner counts, which a pairwise round does not deliver.
        return {(r["kind"], r["value"]): set(r["partners"]) for r in rows if "kind" in r}

    def show_matches(self, nation: str, matches: dict[tuple[str, str], set[str]]) -> None:
        print(f"   {nation}: {len(matches):,} of its indicators are also held by partners")
        partners = [n for n in self.nations if n != nation]
        kinds = [k for k in KINDS if any(key[0] == k for key in matches)]
        table = [["partner", *kinds, "total"]]
        for partner in partners:
            mine = [key for key, who in matches.items() if partner in who]
            table.append(
                [
                    partner,
                    *(str(sum(1 for key in mine if key[0] == k)) for k in kinds),
                    str(len(mine)),
                ]
            )
        _print_table(table, numeric=True)
        examples = [["kind", "indicator (canonical)", "also held by", f"as {nation} wrote it"]]
        for (kind, value), who in _varied(matches, SHOWN_MATCHES):
            raw = self.spelled.get(nation, {}).get((kind, value), value)
            examples.append([kind, value, ", ".join(sorted(who)), "" if raw == value else raw])
        if len(examples) > 1:
            _print_table(examples, numeric=False)

    def verify(
        self,
        got: dict[str, dict[tuple[str, str], set[str]]],
        expected: samples.Matches,
    ) -> None:
        """Print the check's outcome; raise DemoError when the round got anything wrong."""
        problems = []
        for nation in self.nations:
            want, have = expected[nation], got[nation]
            missing = [k for k in want if k not in have]
            extra = [k for k in have if k not in want]
            wrong = [k for k in want if k in have and have[k] != want[k]]
            if missing or extra or wrong:
                problems.append(
                    f"{nation}: {len(missing)} missing, {len(extra)} unexpected, "
                    f"{len(wrong)} with the wrong partners, e.g. {[*missing, *extra, *wrong][0]}"
                )
        if problems:
            print("FAILED: the round's matches differ from the plain intersection:")
            for problem in problems:
                print(f"   {problem}")
            raise DemoError(
                "the round's matches differ from the plain intersection of the sample data "
                "(details above)"
            )
        total = sum(len(m) for m in expected.values())
        print(f"OK: {total:,} matches delivered, {VERIFIED}")

    def write_readme(self) -> None:
        fed, first = self.fed, self.fed.node_toml(self.nations[0])
        lines = [
            "A blindmatch federation built by `blindmatch demo`.",
            "",
            "Start the servers again (one terminal each):",
            *(f"  blindmatch node serve --config {fed.node_toml(n)}" for n in self.nations),
            f"  blindmatch coordinator serve --config {fed.coordinator_toml}",
            "",
            "Then run rounds and look at the results:",
            f"  blindmatch round start --config {fed.operator_toml} --nodes {','.join(self.nations)} --wait",
            f"  blindmatch round status --config {fed.operator_toml}",
            f"  blindmatch node matches --config {first}",
            f"  blindmatch node audit --config {first}",
            "",
            f"Sample files: {self.root / 'data'}; server logs: {fed.logs}",
        ]
        (self.root / "README.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")


# --- helpers ----------------------------------------------------------------------------------


def _heading(title: str) -> None:
    print(f"\n{title}", flush=True)


def _indent(text: str, by: int = 3) -> str:
    return "\n".join(" " * by + line for line in text.splitlines())


def _print_table(rows: list[list[str]], *, numeric: bool) -> None:
    """Aligned columns, indented; with `numeric`, every column but the first is right-aligned."""
    widths = [min(VALUE_WIDTH, max(len(row[i]) for row in rows)) for i in range(len(rows[0]))]
    for row in rows:
        cells = [
            _clip(cell, w).rjust(w) if numeric and i else _clip(cell, w).ljust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ]
        print(("     " + "  ".join(cells)).rstrip())


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _show_ready(server: Server, waited: float) -> None:
    print(f"   {server.name:<18} {server.address:<16} pid {server.pid:<7} ready ({waited:.1f} s)")


def _first_spellings(data: samples.Samples) -> dict[str, dict[tuple[str, str], str]]:
    """Per nation, each indicator as first written in its files (in the order they import)."""
    out: dict[str, dict[tuple[str, str], str]] = {}
    for nation in data.nations:
        records = sorted(data.sightings[nation], key=lambda s: samples.FORMATS.index(s.fmt))
        spelled = out[nation] = {}
        for s in records:
            spelled.setdefault(s.key, s.raw)
    return out


def _varied(
    matches: dict[tuple[str, str], set[str]], count: int
) -> Iterator[tuple[tuple[str, str], set[str]]]:
    """Up to `count` matches, taking kinds in turn so the sample shows several."""
    by_kind: dict[str, list[tuple[str, str]]] = {}
    for key in sorted(matches):
        by_kind.setdefault(key[0], []).append(key)
    shown = 0
    queues: Sequence[list[tuple[str, str]]] = [by_kind[k] for k in KINDS if k in by_kind]
    while shown < count and any(queues):
        for queue in queues:
            if queue and shown < count:
                key = queue.pop(0)
                shown += 1
                yield key, matches[key]
