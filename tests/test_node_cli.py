"""The node's CLI as an operator runs it: init, import, stats, audit, matches.

The federation behind the audit and matches tests is built with the CLI itself (``node init``,
``node import``), served by the production servers over mTLS on 127.0.0.1 port 0, and driven by a
real coordinator through rounds in every mode, one of them refused by a node's policy.
"""

from __future__ import annotations

import csv
import io
import json
import os
import sqlite3
import stat
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from blindmatch.core.identity import Identity, identity_of
from blindmatch.core.oprf import LAMBDA
from blindmatch.runtime import net
from blindmatch.v1 import coordinator_pb2
from node.config import load_config
from node.store import Store
from tests.clirun import run
from tests.federation import Federation, Setup
from tests.pkifixtures import FederationPki

T = 30.0
ALPHA, BRAVO, CHARLIE = "cli-alpha", "cli-bravo", "cli-charlie"
SHARED = [f"all{i}.example" for i in range(5)]  # held by all three
AB = ["ab0.example", "198.51.100.7"]  # alpha and bravo
FEEDS = {  # what each node imports with `node import`
    ALPHA: SHARED + AB + ["only-a.example"],
    BRAVO: SHARED + AB + ["only-b.example", "only-b2.example"],
    CHARLIE: [*SHARED, "only-c.example"],
}


@dataclass
class Rounds:
    pairwise: coordinator_pb2.RoundInfo
    refused: coordinator_pb2.RoundInfo  # charlie's policy does not allow bravo
    threshold: coordinator_pb2.RoundInfo
    count: coordinator_pb2.RoundInfo


@dataclass
class Env:
    configs: dict[str, Path]
    rounds: Rounds


def node_dir(root: Path, pki: FederationPki, name: str) -> Path:
    home = root / name
    status, _, err = run(
        "node", "init", str(home), "--name", name, "--listen", "127.0.0.1:0", "--pki", str(pki.dir)
    )
    assert status == 0, err
    config = home / "node.toml"
    text = config.read_text().replace("workers = 0", "workers = 1")
    if name == CHARLIE:
        text = text.replace('partners = ["*"]', f'partners = ["{ALPHA}"]')
    config.write_text(text)
    feed = root / f"{name}.txt"
    feed.write_text("\n".join(FEEDS[name]) + "\n")
    status, _, err = run("node", "import", "--config", str(config), str(feed))
    assert status == 0, err
    return config


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, pki: FederationPki) -> Iterator[Env]:
    root = tmp_path_factory.mktemp("node-cli")
    configs = {name: node_dir(root, pki, name) for name in FEEDS}
    # the stores are filled by `node import` above: the federation adds nothing to them
    setup = Setup(
        list(FEEDS), {}, configs={name: load_config(path) for name, path in configs.items()}
    )
    with Federation(root, pki, setup) as fed:
        rounds = Rounds(
            pairwise=fed.run_round([ALPHA, BRAVO], timeout=T),
            refused=fed.run_round([ALPHA, BRAVO, CHARLIE], "threshold", 2, timeout=T),
            threshold=fed.run_round([ALPHA, CHARLIE], "threshold", 2, timeout=T),
            count=fed.run_round([ALPHA, BRAVO], "count", timeout=T),
        )
    assert rounds.pairwise.state == rounds.threshold.state == rounds.count.state == "done"
    assert rounds.refused.state == "failed"
    yield Env(configs, rounds)


# --- node init --------------------------------------------------------------------------------


def test_node_init_writes_a_complete_node_directory(tmp_path: Path, pki: FederationPki) -> None:
    home = tmp_path / "fr"
    old = os.umask(0)  # modes must not depend on the operator's umask
    try:
        status, out, _ = run(
            "node", "init", str(home), "--name", "cli-fr", "--listen", "127.0.0.1:7001",
            "--pki", str(pki.dir), "--coordinator-name", "hub",
        )  # fmt: skip
    finally:
        os.umask(old)
    assert status == 0
    assert str(home / "node.toml") in out and "blindmatch node import" in out
    config = load_config(home / "node.toml")
    assert (config.name, config.listen, config.coordinator) == ("cli-fr", "127.0.0.1:7001", "hub")
    assert identity_of(config.tls.cert.read_bytes()) == Identity("node", "cli-fr")
    assert config.tls.ca.read_bytes() == pki.ca.cert_pem
    assert stat.S_IMODE(config.tls.key.stat().st_mode) == 0o600
    with Store.open(config.store) as store:
        assert store.stats().sightings == 0
    # the files make a usable mTLS identity
    net.load_tls(config.tls.ca, config.tls.cert, config.tls.key)


def test_node_init_refuses_to_overwrite_and_reports_bad_input(
    tmp_path: Path, pki: FederationPki
) -> None:
    home = tmp_path / "de"
    args = ["node", "init", str(home), "--name", "cli-de", "--listen", "127.0.0.1:7002"]
    assert run(*args, "--pki", str(pki.dir))[0] == 0
    config = (home / "node.toml").read_bytes()
    status, _, err = run(*args, "--pki", str(pki.dir))
    assert status == 2
    assert "node.toml exists; refusing to overwrite it" in err
    assert (home / "node.toml").read_bytes() == config
    status, _, err = run(
        *args[:2],
        str(tmp_path / "y"),
        "--name",
        "cli-x",
        "--listen",
        "nowhere",
        "--pki",
        str(pki.dir),
    )
    assert status == 2 and "use host:port" in err
    status, _, err = run(
        "node", "init", str(tmp_path / "x"), "--name", "cli-x", "--listen", "127.0.0.1:1",
        "--pki", str(tmp_path / "no-pki"),
    )  # fmt: skip
    assert status == 2 and "run `blindmatch pki init" in err
    assert "Traceback" not in err


def test_node_serve_refuses_a_private_key_others_may_read(
    tmp_path: Path, pki: FederationPki
) -> None:
    home = tmp_path / "lax"
    args = ["node", "init", str(home), "--name", "cli-lax", "--listen", "127.0.0.1:0"]
    assert run(*args, "--pki", str(pki.dir))[0] == 0
    path = home / "node.toml"
    path.write_text(path.read_text().replace("workers = 0", "workers = 1"))
    key = load_config(path).tls.key
    key.chmod(0o644)  # as a careless copy leaves it
    # a process of its own: serve takes over SIGINT and SIGTERM, which pytest needs
    argv = [sys.executable, "-m", "blindmatch.cli.main", "node", "serve", "--config", str(path)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2, done.stderr
    assert f"private key {key} is open to its group or others (mode 0644)" in done.stderr
    assert done.stderr.rstrip().endswith(f"run `chmod 600 {key}`")
    assert "listening" not in done.stdout and "Traceback" not in done.stderr


# --- node import ------------------------------------------------------------------------------


@pytest.fixture
def fresh(tmp_path: Path, pki: FederationPki) -> Path:
    """A new node directory; its node.toml."""
    home = tmp_path / "node"
    args = ["node", "init", str(home), "--name", "cli-fresh", "--listen", "127.0.0.1:0"]
    # its own CA: the session's registry takes node/cli-fresh once (one live certificate a name)
    assert run(*args, "--pki", str(FederationPki(tmp_path / "pki").dir))[0] == 0
    return home / "node.toml"


def test_node_import_prints_a_summary(fresh: Path, tmp_path: Path) -> None:
    feed = tmp_path / "feed.txt"
    feed.write_text("Evil.Example.\n10.0.0.1\nnot a valid thing!!\nhttp://x.example/a\n")
    status, out, _ = run("node", "import", "--config", str(fresh), str(feed))
    assert status == 0  # an invalid record is reported, not fatal
    assert "Read 4 entries from 1 file." in out
    assert "Imported 3 new indicators: domain 1, ipv4 1, url 1" in out
    assert "Invalid 1 record (not imported):" in out
    assert "feed.txt line 3:" in out
    status, out, _ = run("node", "import", "--config", str(fresh), "--tlp", "green", str(feed))
    assert status == 0
    assert "Imported 0 new indicators" in out and "Already known or repeated: 3" in out


def test_node_import_exit_codes(fresh: Path, tmp_path: Path) -> None:
    truncated = tmp_path / "bundle.json"
    truncated.write_text('{"type": "bundle", "objects": [{"type": "indicator", ')
    status, out, _ = run(
        "node", "import", "--config", str(fresh), "--format", "stix", str(truncated)
    )
    assert status == 1  # a file that could not be imported
    assert "Could not import 1 file (nothing stored):" in out
    assert "truncated JSON" in out
    status, _, err = run("node", "import", "--config", str(fresh), str(tmp_path / "nope.txt"))
    assert status == 2
    assert "no such file or directory" in err
    status, _, err = run("node", "import", "--config", str(tmp_path / "x.toml"), str(truncated))
    assert status == 2
    assert "does not exist (create one with `blindmatch node init`)" in err
    status, _, err = run(
        "node", "import", "--config", str(fresh), "--tlp", "purple", str(truncated)
    )
    assert status == 2 and "unknown TLP level 'purple'" in err
    with Store.open(load_config(fresh).store) as store:
        assert store.stats().sightings == 0  # nothing of the failed file, nothing half-stored


# --- node stats -------------------------------------------------------------------------------


def test_node_stats_table_and_json(env: Env) -> None:
    config = str(env.configs[ALPHA])
    status, out, _ = run("node", "stats", "--config", config)
    assert status == 0
    assert f"node {ALPHA}: 8 indicators" in out
    assert "by kind: domain 7, ipv4 1" in out
    assert "by TLP: amber 8" in out
    assert "rounds: 3 completed of 4 recorded" in out
    status, out, _ = run("node", "stats", "--config", config, "--json")
    assert status == 0
    stats = json.loads(out)
    assert stats["node"] == ALPHA
    assert (stats["sightings"], stats["per_kind"]) == (8, {"domain": 7, "ipv4": 1})
    assert (stats["rounds_recorded"], stats["rounds_joined"], stats["imports"]) == (4, 3, 1)


# --- node audit -------------------------------------------------------------------------------


def audit_json(env: Env, name: str) -> list[dict[str, Any]]:
    status, out, _ = run("node", "audit", "--config", str(env.configs[name]), "--json")
    assert status == 0
    entries: list[dict[str, Any]] = json.loads(out)
    return entries


def test_node_audit_json_lists_every_round_joined(env: Env) -> None:
    entries = audit_json(env, ALPHA)
    rounds = {e["round_id"]: e for e in entries if e["type"] == "RoundAudit"}
    r = env.rounds
    assert set(rounds) == {r.pairwise.id, r.refused.id, r.threshold.id, r.count.id}
    sizes = {name: len(values) for name, values in FEEDS.items()}
    # alpha, in every round's committee, answered each partner's set and its LAMBDA checks
    evaluated = {name: size + LAMBDA for name, size in sizes.items()}
    expected = {
        r.pairwise.id: ("pairwise", [ALPHA, BRAVO], "done", {BRAVO: evaluated[BRAVO]}),
        r.threshold.id: ("threshold", [ALPHA, CHARLIE], "done", {CHARLIE: evaluated[CHARLIE]}),
        r.count.id: ("count", [ALPHA, BRAVO], "done", {BRAVO: evaluated[BRAVO]}),
        r.refused.id: ("threshold", [ALPHA, BRAVO, CHARLIE], "aborted", {}),
    }
    for round_id, (mode, participants, outcome, blinded) in expected.items():
        entry = rounds[round_id]
        assert (entry["mode"], entry["participants"], entry["outcome"]) == (
            mode,
            participants,
            outcome,
        )
        assert entry["blinded_for"] == blinded  # evaluations answered for each partner
        assert entry["own_size"] == sizes[ALPHA]
        assert entry["coordinator"] == "coordinator"
        assert entry["started"] <= entry["finished"]
    assert rounds[r.threshold.id]["threshold"] == 2
    assert "cli-charlie refused" in rounds[r.refused.id]["reason"]
    imports = [e for e in entries if e["type"] == "ImportAudit"]
    assert [i["summary"]["new"] for i in imports] == [sizes[ALPHA]]


def test_node_audit_shows_the_refusal_on_the_refusing_node(env: Env) -> None:
    entries = audit_json(env, CHARLIE)
    refused = next(e for e in entries if e.get("round_id") == env.rounds.refused.id)
    assert refused["outcome"] == "refused"
    assert refused["reason"] == f"policy of {CHARLIE} does not allow matching with {BRAVO}"
    assert (refused["own_size"], refused["blinded_for"]) == (0, {})


def test_node_audit_table(env: Env) -> None:
    status, out, _ = run("node", "audit", "--config", str(env.configs[ALPHA]))
    assert status == 0
    lines = out.splitlines()
    r = env.rounds

    def line(round_id: str) -> str:
        (found,) = [x for x in lines if f"round {round_id[:12]} " in x]
        return found

    own, evaluated = len(FEEDS[ALPHA]), len(FEEDS[BRAVO]) + LAMBDA
    assert f"pairwise with {BRAVO}: done; own set {own}; blinded for {BRAVO} {evaluated}" in line(
        r.pairwise.id
    )
    assert line(r.pairwise.id).endswith("; asked by operator ops")  # who signed the spec
    assert f"threshold 2 with {CHARLIE}: done" in line(r.threshold.id)
    assert f"count with {BRAVO}: done" in line(r.count.id)
    refused = line(r.refused.id)
    assert f"threshold 2 with {BRAVO}, {CHARLIE}: aborted (" in refused
    assert "blinded for none" in refused
    assert any(f"import {env.configs[ALPHA].parent.parent}" in x and "8 new" in x for x in lines)


# --- node matches -----------------------------------------------------------------------------


def matches(env: Env, fmt: str, *extra: str) -> str:
    status, out, _ = run(
        "node", "matches", "--config", str(env.configs[ALPHA]), "--format", fmt, *extra
    )
    assert status == 0
    return out


def test_node_matches_json_follows_the_contract(env: Env) -> None:
    got = json.loads(matches(env, "json"))
    assert isinstance(got, list)
    r = env.rounds
    pairwise = {(m["kind"], m["value"]): m for m in got if m["round"] == r.pairwise.id}
    assert set(pairwise) == {("domain", v) for v in [*SHARED, "ab0.example"]} | {
        ("ipv4", "198.51.100.7")
    }
    assert all(m["partners"] == [BRAVO] and m["count"] == 2 for m in pairwise.values())
    threshold = [m for m in got if m["round"] == r.threshold.id]
    assert {m["value"] for m in threshold} == set(SHARED)
    # no names, and no count: the round did not ask for counts, only "held by >= 2"
    assert all(m["partners"] == [] and m["count"] is None for m in threshold)
    (count,) = [m for m in got if m["round"] == r.count.id]
    assert {k: count[k] for k in ("round", "partner", "count")} == {
        "round": r.count.id,
        "partner": BRAVO,
        "count": len(SHARED) + len(AB),
    }
    assert "kind" not in count and "value" not in count
    assert not [m for m in got if m["round"] == r.refused.id]  # a failed round delivers nothing
    only = json.loads(matches(env, "json", "--round", r.threshold.id))
    assert only == threshold


def test_node_matches_csv(env: Env) -> None:
    rows = list(csv.reader(io.StringIO(matches(env, "csv"))))
    assert rows[0] == ["round", "kind", "value", "partners", "count"]
    assert [env.rounds.pairwise.id, "ipv4", "198.51.100.7", BRAVO, "2"] in rows
    assert [env.rounds.threshold.id, "domain", "all0.example", "", ""] in rows
    assert [env.rounds.count.id, "", "", BRAVO, "7"] in rows


def test_node_matches_table(env: Env) -> None:
    out = matches(env, "table")
    assert any("198.51.100.7" in line and BRAVO in line for line in out.splitlines())
    assert any(
        "all0.example" in line and "held by at least 2 nations" in line for line in out.splitlines()
    )
    assert f"indicators shared with {BRAVO}" in out


def test_node_matches_stix_is_a_bundle_of_sightings_with_partner_identities(env: Env) -> None:
    bundle = json.loads(matches(env, "stix", "--round", env.rounds.pairwise.id))
    assert bundle["type"] == "bundle" and bundle["id"].startswith("bundle--")
    objects = {o["id"]: o for o in bundle["objects"]}
    sightings = [o for o in objects.values() if o["type"] == "sighting"]
    assert len(sightings) == len(SHARED) + len(AB)
    for s in sightings:
        assert s["spec_version"] == "2.1"
        assert objects[s["sighting_of_ref"]]["type"] == "indicator"
        (ref,) = s["where_sighted_refs"]
        assert objects[ref]["type"] == "identity" and objects[ref]["name"] == BRAVO
    patterns = {o["pattern"] for o in objects.values() if o["type"] == "indicator"}
    assert "[ipv4-addr:value = '198.51.100.7']" in patterns
    assert "[domain-name:value = 'ab0.example']" in patterns


def test_node_matches_of_an_unknown_round(env: Env) -> None:
    # issue 19: an unknown id is an error, not "no matches yet" (it was exit 0 and [])
    status, out, err = run(
        "node", "matches", "--config", str(env.configs[ALPHA]), "--round", "f00", "--format", "json"
    )
    assert (status, out) == (2, "")
    assert "no round 'f00' in this node's audit" in err


def test_node_matches_takes_a_round_id_as_the_tables_print_it(env: Env) -> None:
    # issue 19: `--round 722e15a76972` (the 12 characters a table shows) said "no matches yet"
    r = env.rounds
    whole = matches(env, "json", "--round", r.pairwise.id)
    assert json.loads(whole) and matches(env, "json", "--round", r.pairwise.id[:12]) == whole
    # charlie refused the round it was asked into: it is recorded, and found nothing here
    status, out, err = run(
        "node", "matches", "--config", str(env.configs[CHARLIE]), "--round", r.refused.id[:12]
    )
    assert (status, out) == (0, "no matches yet\n")
    assert f"no results for round {r.refused.id}: it found nothing here" in err
    # push reads --round the same way, and names a round this node never joined
    status, _, err = run("node", "push", "--config", str(env.configs[ALPHA]), "--round", "nosuch")
    assert status == 2 and "no round 'nosuch' in this node's audit" in err


def test_node_audit_shows_budget_use_per_partner(env: Env) -> None:
    # Begin charged alpha's budgets with what each partner may ask of its share: bravo's set and
    # LAMBDA checks in the pairwise and count rounds, charlie's in the threshold round; the
    # refused round was refused at Prepare, before Begin, so it charged nothing
    charged = {name: len(values) + LAMBDA for name, values in FEEDS.items()}
    lines = [e for e in audit_json(env, ALPHA) if e["type"] == "BudgetLine"]
    assert [(b["partner"], b["round_used"], b["check_used"]) for b in lines] == [
        (BRAVO, 2 * charged[BRAVO], 0),
        (CHARLIE, charged[CHARLIE], 0),
    ]
    assert {(b["round_limit"], b["check_limit"], b["window"]) for b in lines} == {
        (4_000_000, 100_000, "24h")
    }
    status, out, _ = run("node", "audit", "--config", str(env.configs[ALPHA]))
    assert status == 0
    assert (
        f"budget {BRAVO} (last 24h): rounds {2 * charged[BRAVO]} of 4,000,000 elements, "
        "checks 0 of 100,000"
    ) in out.splitlines()


# --- node explain (issue 19) ------------------------------------------------------------------


def test_node_explain_says_what_is_stored_and_what_the_rounds_found(env: Env) -> None:
    r = env.rounds
    values = ["198.51.100.7", "ALL0.example.", "only-a.example", "nope.example", "not a value!!"]
    status, out, _ = run("node", "explain", "--config", str(env.configs[ALPHA]), "--json", *values)
    assert status == 2  # one value is no indicator, as `canonicalize` says
    ab, shared, own, absent, bad = json.loads(out)
    assert (ab["kind"], ab["value"], ab["stored"]["tlp"], ab["excluded_by"]) == (
        "ipv4",
        "198.51.100.7",
        "amber",
        [],
    )
    assert ab["stored"]["last_seen"] >= ab["stored"]["first_seen"]
    assert [(m["round"], m["mode"], m["partners"]) for m in ab["found_in"]] == [
        (r.pairwise.id, "pairwise", [BRAVO])
    ]
    # ipv4: the rounds asked for every kind; the count round finds no value, only a number
    assert ab["rounds_for_kind_since_first_seen"] == 3
    # the rounds it entered, each with what it found: only the pairwise round named a partner
    entered = {e["round"]: e["found"] for e in ab["entered"]}
    assert entered.keys() == {r.pairwise.id, r.threshold.id, r.count.id}
    assert entered[r.pairwise.id]["partners"] == [BRAVO]
    assert entered[r.threshold.id] is None and entered[r.count.id] is None
    assert shared["value"] == "all0.example"  # its canonical form
    found = {m["round"]: m for m in shared["found_in"]}
    assert set(found) == {r.pairwise.id, r.threshold.id}
    # threshold: no names, only "held by at least 2" as `node matches` words it
    assert found[r.threshold.id]["mode"] == "threshold"
    assert "2 nations" in found[r.threshold.id]["nations"]
    assert own["stored"] is not None and own["found_in"] == []
    assert absent == {
        "input": "nope.example",
        "kind": "domain",
        "value": "nope.example",
        "stored": None,
    }
    assert bad["input"] == "not a value!!" and "cannot tell the kind" in bad["error"]

    status, out, _ = run("node", "explain", "--config", str(env.configs[ALPHA]), *values[:4])
    assert status == 0
    assert "ALL0.example.: domain all0.example" in out
    assert f"found in round {r.threshold.id[:12]} (threshold, " in out and "2 nations" in out
    assert f"also held by {BRAVO}" in out
    assert "nope.example: domain nope.example\n  not stored" in out
    assert "found by no round" in out
    assert f"entered round {r.count.id[:12]} (count, " in out and "found nothing" in out


def test_node_explain_names_the_policy_that_keeps_a_value_out(
    tmp_path: Path, pki: FederationPki
) -> None:
    home = tmp_path / "explain"
    args = ["node", "init", str(home), "--name", "cli-explain", "--listen", "127.0.0.1:0"]
    assert run(*args, "--pki", str(pki.dir))[0] == 0
    fresh = home / "node.toml"
    feed = tmp_path / "red.txt"
    feed.write_text("red.example\n")
    assert run("node", "import", "--config", str(fresh), "--tlp", "red", str(feed))[0] == 0
    feed.write_text("10.1.2.3\n")
    assert run("node", "import", "--config", str(fresh), str(feed))[0] == 0
    text = fresh.read_text()
    kinds = next(line for line in text.splitlines() if line.startswith("kinds = "))
    fresh.write_text(text.replace(kinds, 'kinds = ["domain"]'))
    status, out, _ = run(
        "node", "explain", "--config", str(fresh), "--json", "red.example", "10.1.2.3"
    )
    assert status == 0
    red, ip = json.loads(out)
    assert red["excluded_by"] == ["[policy] tlp does not list red"]
    assert ip["excluded_by"] == ["[policy] kinds does not list ipv4"]
    status, out, _ = run("node", "explain", "--config", str(fresh), "red.example")
    assert "kept out of rounds by [policy] tlp does not list red" in out
    # expiry, by the rule the rounds apply: 10.1.2.3 was last seen long ago
    fresh.write_text(fresh.read_text().replace('max_age = ""', 'max_age = "180d"'))
    with sqlite3.connect(home / "store.sqlite") as db:
        db.execute("UPDATE sightings SET seen_at = '2019-01-01T00:00:00Z'")
    status, out, _ = run("node", "explain", "--config", str(fresh), "--json", "10.1.2.3")
    assert status == 0
    assert json.loads(out)[0]["excluded_by"] == [
        "[policy] kinds does not list ipv4",
        "[policy] max_age: not seen since 2019-01-01T00:00:00Z",
    ]


# --- the small lies of issue 19 ----------------------------------------------------------------


def test_a_closed_pipe_ends_the_output_quietly(env: Env) -> None:
    # `node audit | head`: the reader is gone before anything is written. 141 (128 + SIGPIPE)
    # is what a shell reports for a C tool killed by it; no "error: [Errno 32]", no exit 2
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        audit = ["node", "audit", "--config", str(env.configs[ALPHA])]
        done = subprocess.run(
            [sys.executable, "-m", "blindmatch.cli.main", *audit],
            stdout=write_end,
            stderr=subprocess.PIPE,
            timeout=60,
            check=False,
        )
    finally:
        os.close(write_end)
    assert (done.returncode, done.stderr) == (141, b"")


def test_a_count_round_says_what_its_numbers_are(env: Env) -> None:
    from coordinator import operator_cli

    # each node's number is the sum over its partners of what it holds in common with each:
    # it may exceed its set size, so the label must say it is a sum, not "shared with partners"
    count = env.rounds.count
    shown = operator_cli.summary(count)
    assert "in common, summed over its partners" in shown
    assert "shared with partners" not in shown
    assert "in common (each node's partners, summed)" in operator_cli.table([count])
