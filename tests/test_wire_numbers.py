"""Numbers from the wire, served (issue 18): a real node refuses a Prepare whose timeout is no
duration with INVALID_ARGUMENT and keeps nothing of it, and a real coordinator takes any ListRounds
limit (0: its default; more than it serves: capped, not refused).

Every converter's ranges, field by field, are tested in tests/test_serde.py; the deliveries a node
refuses for numbers no set can have, in tests/test_hostile.py.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Iterator

import grpc
import pytest

from blindmatch.core.member import Member
from blindmatch.core.states import CoordinatorPhase
from blindmatch.runtime import serde
from blindmatch.runtime.serde import MAX_PREPARE_TIMEOUT
from blindmatch.v1 import coordinator_pb2, node_pb2
from blindmatch.v2 import node_pb2_grpc
from coordinator.records import RoundRecord
from coordinator.service import DEFAULT_LIST_LIMIT, MAX_LIST_LIMIT
from tests.federation import Federation, round_spec, signed_spec
from tests.pkifixtures import FederationPki

T = 10.0  # seconds: deadline of every call


@pytest.fixture(scope="module")
def alpha(fed: Federation) -> Iterator[node_pb2_grpc.NodeServiceStub]:
    """Node alpha, called with the coordinator's own certificate: past its access policy."""
    channel = fed.as_coordinator("alpha")
    try:
        yield node_pb2_grpc.NodeServiceStub(channel)
    finally:
        channel.close()


def prepare(pki: FederationPki, round_id: str, timeout: float) -> node_pb2.PrepareRequest:
    spec = round_spec(["alpha", "bravo"], kinds=["domain"], round_id=round_id)
    return node_pb2.PrepareRequest(signed_spec=signed_spec(spec, pki=pki), timeout_seconds=timeout)


@pytest.mark.parametrize(
    "timeout", [math.nan, math.inf, -math.inf, -1.0, MAX_PREPARE_TIMEOUT + 1, 1e308]
)
def test_a_prepare_whose_timeout_is_no_duration_is_refused_and_keeps_nothing(
    fed: Federation,
    pki: FederationPki,
    alpha: node_pb2_grpc.NodeServiceStub,
    members: list[Member],
    timeout: float,
) -> None:
    round_id = uuid.uuid4().hex
    with pytest.raises(grpc.RpcError) as info:
        alpha.Prepare(prepare(pki, round_id, timeout), timeout=T)
    err: grpc.Call = info.value  # type: ignore[assignment]
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err.details()
    assert f"timeout_seconds {timeout} is not a number of seconds in (0, 86400]" in (
        err.details() or ""
    )
    # Refused as it arrived: no round live, no share drawn, nothing in the audit, and so the
    # round id is still unused.
    node = fed.nodes["alpha"]
    assert node.rounds.active() == []
    assert members == []
    with fed.store("alpha") as store:
        assert round_id not in {r.round_id for r in store.rounds()}

    # The same round with a timeout that is one is prepared, and lives as long as asked.
    assert alpha.Prepare(prepare(pki, round_id, 30.0), timeout=T).size > 0
    live = node.rounds.live.find(round_id)
    assert live is not None and live.timeout == 30.0
    abort = node_pb2.AbortRequest(round_id=round_id, reason="tested")
    assert alpha.Abort(abort, timeout=T).known
    assert [m for m in members if m._share is not None] == []  # ``destroy`` clears it

    # And a round through the coordinator, which asks for its own timeout, runs as before.
    done = fed.run_round(["alpha", "bravo"], kinds=["domain"], timeout=60)
    assert done.state == CoordinatorPhase.DONE, done.error


def test_list_rounds_takes_any_limit_and_caps_it(fed: Federation) -> None:
    assert fed.coordinator is not None
    board = fed.coordinator.coordinator.board
    newest = time.time() + 10 * 86400.0  # after any round the module runs
    for i in range(MAX_LIST_LIMIT + 1):
        board.publish(
            RoundRecord(
                f"listed-{i}",
                ("alpha", "bravo"),
                "pairwise",
                None,
                ("domain",),
                "ops",
                newest - i,
                state=CoordinatorPhase.DONE,
                finished=newest - i + 1,
                sizes={"alpha": 7, "bravo": 7},
                match_counts={"alpha": 1, "bravo": 1},
            )
        )

    def listed(limit: int) -> list[coordinator_pb2.RoundInfo]:
        request = coordinator_pb2.ListRoundsRequest(limit=limit)
        return list(fed.stub.ListRounds(request, timeout=T).rounds)

    assert [r.id for r in listed(0)] == [f"listed-{i}" for i in range(DEFAULT_LIST_LIMIT)]
    assert [r.id for r in listed(1)] == ["listed-0"]
    # More than the coordinator serves in one reply (up to uint32's largest) gets as many as it
    # serves: "all of them" is a fair thing to ask, not a malformed request.
    for limit in (MAX_LIST_LIMIT, MAX_LIST_LIMIT + 1, 2**32 - 1):
        rounds = listed(limit)
        assert [r.id for r in rounds] == [f"listed-{i}" for i in range(MAX_LIST_LIMIT)]
    # Every number in them is one the operator's client accepts to show.
    assert all(serde.round_from_proto(r)["finished"] for r in rounds)
