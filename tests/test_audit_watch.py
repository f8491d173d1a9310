"""A watch round as the node's own commands show it (issue 19: it was listed as "pairwise").

Two nodes made with `node init` and `node import`, served by the production servers over mTLS,
and a real coordinator running a watch round between them.
"""

from __future__ import annotations

import json
from pathlib import Path

from node.config import load_config
from tests.clirun import run
from tests.federation import Federation, Setup, watching
from tests.pkifixtures import FederationPki

NAMES = ("aw-alpha", "aw-bravo")
SHARED = "watched.example"


def node_toml(root: Path, pki: FederationPki, name: str) -> Path:
    home = root / name
    args = ["node", "init", str(home), "--name", name, "--listen", "127.0.0.1:0"]
    assert run(*args, "--pki", str(pki.dir))[0] == 0
    feed = root / f"{name}.txt"
    feed.write_text(f"{SHARED}\nonly-{name}.example\n")
    assert run("node", "import", "--config", str(home / "node.toml"), str(feed))[0] == 0
    return home / "node.toml"


def test_a_watch_round_is_shown_as_watch(tmp_path: Path, pki: FederationPki) -> None:
    configs = {name: node_toml(tmp_path, pki, name) for name in NAMES}
    setup = Setup(
        list(NAMES),
        {},
        configs={name: load_config(path) for name, path in configs.items()},
        configure=watching,
    )
    with Federation(tmp_path, pki, setup) as fed:
        info = fed.start_watch(list(NAMES), epoch=60)
        assert (info.state, info.mode) == ("done", "watch")
        status, out, _ = run("node", "audit", "--config", str(configs[NAMES[0]]), "--json")
        assert status == 0
        (entry,) = [e for e in json.loads(out) if e.get("round_id") == info.id]
        assert entry["mode"] == "watch"
        status, out, _ = run("node", "audit", "--config", str(configs[NAMES[0]]))
        assert f"round {info.id[:12]} watch with {NAMES[1]}: done" in out
        status, out, _ = run("node", "explain", "--config", str(configs[NAMES[0]]), SHARED)
        assert f"found in round {info.id[:12]} (watch, " in out
        assert f"also held by {NAMES[1]}" in out
        # one that never opened an epoch (refused at Prepare: longer than max_epoch) too
        refused = fed.start_watch(list(NAMES), epoch=30 * 86400)
        assert refused.state == "failed"
        status, out, _ = run("node", "audit", "--config", str(configs[NAMES[0]]), "--json")
        (entry,) = [e for e in json.loads(out) if e.get("round_id") == refused.id]
        assert (entry["mode"], entry["outcome"]) == ("watch", "refused")
