"""What a node and a coordinator log about rounds, and where (``[log]``; issue 19, requirement 4).

Real processes (``blindmatch.demo.harness``): two nodes and a coordinator, each a ``blindmatch
... serve``. alpha logs JSON to a file, the coordinator text to a file, bravo text to stderr (its
default). At the default level, every server logs each round's start, each refusal with its
reason, its end and, for a failed round, its cause; a log file is created 0600 and, once
logrotate has moved it away, the next line goes to a new file at the same path.
"""

from __future__ import annotations

import json
import re
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from blindmatch.demo import harness
from blindmatch.runtime import net
from blindmatch.runtime.pki import init_pki_dir, issue_to_dir
from tests.waiting import until

pytestmark = pytest.mark.slow  # three server processes

WAIT = 60.0  # seconds: bounds a hang only


def use_log(config: Path, **settings: str) -> None:
    """Set ``[log]`` keys in a config ``init`` wrote (its ``file`` line is commented out)."""
    text = config.read_text()
    if "file" in settings:
        text, n = re.subn(r"^# file = .*$", "file = x", text, count=1, flags=re.M)
        assert n == 1, f"{config} has no [log] file line"
    config.write_text(text)
    for key, value in settings.items():
        harness.set_setting(config, key, value)


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[harness.Federation]:
    fed = harness.Federation(tmp_path_factory.mktemp("logs"), ["alpha", "bravo"])
    fed.init()
    for name, shared in (("alpha", range(0, 300)), ("bravo", range(200, 500))):
        harness.set_setting(fed.node_toml(name), "workers", 1)
        feed = fed.node_dir(name) / "feed.txt"
        feed.write_text("".join(f"host{i}.blindmatch-logs.com\n" for i in shared))
        harness.run("node", "import", "--config", str(fed.node_toml(name)), str(feed))
    use_log(fed.node_toml("alpha"), file="alpha.log", format="json")
    use_log(fed.coordinator_toml, file="logs/coordinator.log")
    (fed.coordinator_toml.parent / "logs").mkdir()
    fed.start()
    try:
        yield fed
    finally:
        fed.stop()


def alpha_log(fed: harness.Federation) -> Path:
    return fed.node_dir("alpha") / "alpha.log"


def coordinator_log(fed: harness.Federation) -> Path:
    return fed.coordinator_toml.parent / "logs" / "coordinator.log"


def records(path: Path) -> list[dict[str, Any]]:
    """The JSON log's records: every line one object."""
    return [json.loads(line) for line in path.read_text().splitlines()]


def about(path: Path, round_id: str) -> list[dict[str, Any]]:
    return [r for r in records(path) if r.get("round_id") == round_id]


def start_round(fed: harness.Federation, *extra: str) -> dict[str, Any]:
    """``round start --wait --json``; its record whether the round succeeded or failed."""
    done = subprocess.run(fed.round_command(*extra), capture_output=True, text=True, timeout=WAIT)
    found: dict[str, Any] = json.loads(done.stdout)
    return found


def lines_of(path: Path, round_id: str) -> list[str]:
    return [line for line in path.read_text().splitlines() if round_id in line]


def test_a_round_is_logged_at_the_default_level_on_every_server(
    fed: harness.Federation,
) -> None:
    got = start_round(fed)
    assert got["state"] == "done", got
    rid = got["id"]
    # the nodes log before they answer Deliver, so before the round is done
    alpha = about(alpha_log(fed), rid)
    assert [r["message"].split(":")[0] for r in alpha] == [
        f"round {rid} prepared",
        f"round {rid} done",
    ]
    assert all(r["level"] == "INFO" and r["logger"] == "blindmatch.node" for r in alpha)
    assert "pairwise round of alpha, bravo signed by operator" in alpha[0]["message"]
    assert alpha[1]["message"].endswith("done: 100 results recorded")
    for r in alpha:
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", r["time"])
    bravo = lines_of(fed.nodes["bravo"].log, rid)  # stderr, in text: the default
    assert [re.sub(r"^\S+ ", "", line).split(":")[0:2] for line in bravo] == [
        ["INFO blindmatch.node", f" round {rid} prepared"],
        ["INFO blindmatch.node", f" round {rid} done"],
    ]
    # the coordinator publishes the round done a moment before it logs it
    coordinator = until(
        "the coordinator logs the round done",
        lambda: (lines := lines_of(coordinator_log(fed), rid)) and len(lines) == 2 and lines,
        WAIT,
    )
    assert f"INFO coordinator.driver: round {rid} started: pairwise round" in coordinator[0]
    assert f"round {rid} done: matches" in coordinator[1]
    for log in (alpha_log(fed), coordinator_log(fed)):
        assert stat.S_IMODE(log.stat().st_mode) == 0o600


def test_refusals_and_a_failure_are_logged_with_their_reasons(fed: harness.Federation) -> None:
    got = start_round(fed, "--kinds", "ipv4")  # neither node holds one: both refuse
    assert got["state"] == "failed", got
    rid = got["id"]
    alpha = about(alpha_log(fed), rid)
    assert len(alpha) == 1
    assert alpha[0]["message"].startswith(f"round {rid} refused at Prepare: alpha has no indicator")
    assert alpha[0]["level"] == "INFO"
    bravo = lines_of(fed.nodes["bravo"].log, rid)
    assert len(bravo) == 1 and "refused at Prepare: bravo has no indicator" in bravo[0]
    failed = until(
        "the coordinator logs the round failed",
        lambda: [line for line in lines_of(coordinator_log(fed), rid) if " failed: " in line],
        WAIT,
    )
    # the cause names each node that refused, and why
    assert f"WARNING coordinator.driver: round {rid} failed: " in failed[0]
    assert "alpha refused" in failed[0] and "bravo refused" in failed[0]
    assert "has no indicator of the round's kinds" in failed[0]


def test_a_log_file_moved_away_by_logrotate_is_created_again(fed: harness.Federation) -> None:
    log = alpha_log(fed)
    rotated = log.with_name("alpha.log.1")
    log.rename(rotated)  # what logrotate does without copytruncate; no signal is sent
    before = rotated.read_text()
    got = start_round(fed)
    assert got["state"] == "done", got
    rid = got["id"]
    assert [r["message"].split(":")[0] for r in about(log, rid)] == [
        f"round {rid} prepared",
        f"round {rid} done",
    ]
    assert stat.S_IMODE(log.stat().st_mode) == 0o600
    assert rotated.read_text() == before  # nothing more went to the old file


def test_a_handshake_refused_to_another_cas_certificate_is_in_the_log(
    fed: harness.Federation, tmp_path: Path
) -> None:
    """A client holding a certificate of another CA dials alpha: gRPC refuses the handshake before
    blindmatch sees a call, and its own line about it reaches alpha's log file, as a warning."""
    init_pki_dir(tmp_path / "other")
    stranger = issue_to_dir(tmp_path / "other", "coordinator", "coordinator")
    # it trusts the federation's CA, so it is alpha that refuses, not the client
    tls = net.TlsConfig(
        ca=(fed.pki_dir / "ca.pem").read_bytes(),
        cert=stranger.cert.read_bytes(),
        key=stranger.key.read_bytes(),
    )
    channel = net.open_channel(
        fed.addresses["alpha"], tls, insecure=False, expect=net.Allow("node", "alpha")
    )
    try:
        with pytest.raises(grpc.RpcError):
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    finally:
        channel.close()

    def refused() -> list[dict[str, Any]]:
        return [
            r
            for r in records(alpha_log(fed))
            if "TLS handshake refused" in r["message"]
            and "CERTIFICATE_VERIFY_FAILED" in r["message"]
        ]

    (line, *_) = until("alpha logs the refused handshake", refused, WAIT)
    assert line["level"] == "WARNING" and line["logger"] == "blindmatch.stderr"
