"""Budgets across rounds (issue 10, req 3): the decisions, node.toml, and a real node refusing.

A coordinator that runs many small rounds must not add them up to a dictionary blinded under a
node's keys: every partner's elements are charged in the store per rolling window, and a round
or check beyond it is refused (RESOURCE_EXHAUSTED) naming the budget, charging nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import grpc
import pytest

from blindmatch.cli.tomlconfig import ConfigError
from blindmatch.core.oprf import LAMBDA
from blindmatch.v2 import node_pb2, node_pb2_grpc
from node.budgets import BudgetExceeded, BudgetPolicy, Budgets, window_text
from node.config import NodeConfig, load_config, render_config
from node.store import Store
from tests.federation import Federation, Setup, make_datasets
from tests.pkifixtures import FederationPki

T0 = 1_800_000_000.0


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store.open(tmp_path / "node.sqlite") as s:
        yield s


def budgets(store: Store, clock: Clock, **limits: float) -> Budgets:
    return Budgets(store, BudgetPolicy(**limits), "fr", clock)  # type: ignore[arg-type]


# --- decisions --------------------------------------------------------------------------------


def test_a_round_is_charged_for_every_partner_but_not_for_the_node_itself(store: Store) -> None:
    b = budgets(store, Clock(), round_elements=100)
    b.charge_round("r1", {"fr": 1000, "de": 60, "it": 40})
    assert [(u.partner, u.round_used, u.round_limit) for u in b.use()] == [
        ("de", 60, 100),
        ("it", 40, 100),
    ]


def test_a_round_beyond_one_partners_budget_is_refused_naming_it_and_charges_nothing(
    store: Store,
) -> None:
    b = budgets(store, Clock(), round_elements=100)
    b.charge_round("r1", {"fr": 5, "de": 60, "it": 40})
    with pytest.raises(BudgetExceeded) as err:
        b.charge_round("r2", {"fr": 5, "de": 10, "it": 61})
    assert err.value.code == "RESOURCE_EXHAUSTED"
    message = str(err.value)
    for part in ("budgets.round_elements", "partner it", "used 40", "of 100", "asks 61", "24h"):
        assert part in message
    # de would have fitted, but a refused round costs nothing
    assert [(u.partner, u.round_used) for u in b.use()] == [("de", 60), ("it", 40)]


def test_the_window_rolls(store: Store) -> None:
    clock = Clock()
    b = budgets(store, clock, round_elements=100, window=3600.0)
    b.charge_round("r1", {"de": 100})
    clock.now += 1800
    with pytest.raises(BudgetExceeded, match="last 1h"):
        b.charge_round("r2", {"de": 1})
    clock.now += 1800  # the first charge is now exactly one window old: out of it
    b.charge_round("r3", {"de": 100})
    assert [(u.partner, u.round_used) for u in b.use()] == [("de", 100)]


def test_checks_have_their_own_budget_charged_with_the_watch_round(store: Store) -> None:
    b = budgets(store, Clock(), round_elements=10, check_elements=5)
    b.charge_round("r1", {"de": 10})
    b.charge_round("w1", {"it": 3}, checks={"de": 5, "it": 5})
    with pytest.raises(BudgetExceeded) as err:
        b.charge_round("w2", {"it": 1}, checks={"de": 1})
    message = str(err.value)
    assert "budgets.check_elements" in message and "watch round w2's checks ask 1" in message
    got = [(u.partner, u.round_used, u.check_used, u.check_limit) for u in b.use()]
    assert got == [("de", 10, 5, 5), ("it", 3, 5, 5)]  # the refused round charged nothing


def test_budgets_are_kept_in_the_store_across_restarts(tmp_path: Path) -> None:
    clock = Clock()
    with Store.open(tmp_path / "node.sqlite") as s:
        budgets(s, clock, round_elements=10).charge_round("r1", {"de": 10})
    with Store.open(tmp_path / "node.sqlite") as s, pytest.raises(BudgetExceeded):
        budgets(s, clock, round_elements=10).charge_round("r2", {"de": 1})


@pytest.mark.parametrize(
    ("seconds", "text"), [(86400.0, "24h"), (7 * 86400.0, "7d"), (5400.0, "90m"), (45.0, "45s")]
)
def test_window_text(seconds: float, text: str) -> None:
    assert window_text(seconds) == text


# --- node.toml --------------------------------------------------------------------------------


def _config(tmp_path: Path, budgets_table: str) -> Path:
    text = render_config(name="fr", listen="127.0.0.1:7000", ca="ca.pem", cert="c.pem", key="k.pem")
    if budgets_table:
        head, _, tail = text.partition("[budgets]")
        text = head + budgets_table + "\n[import]" + tail.partition("[import]")[2]
    path = tmp_path / "node.toml"
    path.write_text(text)
    return path


def test_node_init_writes_the_default_budgets(tmp_path: Path) -> None:
    text = _config(tmp_path, "").read_text()
    assert 'window = "24h"' in text
    assert "round_elements = 4000000" in text and "check_elements = 100000" in text
    assert load_config(tmp_path / "node.toml").budgets == BudgetPolicy()


def test_budgets_are_read_from_node_toml(tmp_path: Path) -> None:
    path = _config(tmp_path, '[budgets]\nwindow = "2d"\nround_elements = 10\ncheck_elements = 0\n')
    assert load_config(path).budgets == BudgetPolicy(2 * 86400.0, 10, 0)
    without = _config(tmp_path, "")
    without.write_text(without.read_text().replace("[budgets]", "[unused]").split("[unused]")[0])
    assert load_config(without).budgets == BudgetPolicy()


@pytest.mark.parametrize(
    ("table", "error"),
    [
        ('window = "soon"', "budgets.window is wrong"),
        ('window = "0h"', "budgets.window is wrong"),
        ("window = 24", "budgets.window must be a string"),
        ("round_elements = -1", "budgets.round_elements must be at least 0"),
        ('check_elements = "many"', "budgets.check_elements must be an integer"),
        ("per_day = 5", "unknown key [budgets] per_day"),
    ],
)
def test_bad_budgets_are_refused_naming_the_key(tmp_path: Path, table: str, error: str) -> None:
    with pytest.raises(ConfigError, match=error.replace("[", r"\[").replace("]", r"\]")):
        load_config(_config(tmp_path, f"[budgets]\n{table}\n"))


# --- a real node ------------------------------------------------------------------------------

SIZE = 60
# What a round charges each partner at Begin: the evaluations it may ask of the node's share,
# its set and the LAMBDA subset checks.
CHARGE = SIZE + LAMBDA
LIMIT = CHARGE * 3 // 2


def one_round_per_window(config: NodeConfig) -> NodeConfig:
    """A node whose round budget fits one round of this test's sets per window, not two."""
    return replace(config, budgets=BudgetPolicy(window=3600.0, round_elements=LIMIT))


def test_a_second_round_within_the_window_is_refused_naming_the_budget(
    tmp_path: Path, pki: FederationPki
) -> None:
    names = ("alpha", "bravo")
    data = make_datasets(names, SIZE, seed=3, red_share=0.0)
    fed = Federation(tmp_path, pki, Setup(names, data, configure=one_round_per_window))
    try:
        clock = Clock()
        for name in names:
            budgets = fed.nodes[name].rounds.budgets
            assert budgets is not None
            budgets.clock = clock
        first = fed.run_round(names)
        assert first.state == "done", first.error

        clock.now += 1800
        second = fed.run_round(names)
        assert second.state == "failed"

        def refusal(name: str) -> str:
            partner = "bravo" if name == "alpha" else "alpha"
            return (
                f"budget budgets.round_elements of {name} exhausted for partner {partner}: used "
                f"{CHARGE} of {LIMIT} elements in the last 1h (window), this round {second.id} "
                f"asks {CHARGE}; nothing was charged (raise [budgets] in {name}'s node.toml, or "
                "wait)"
            )

        # both nodes hold the same budgets: each refuses Begin, before anything is evaluated
        assert second.error == "; ".join(
            f"{name} refused Begin: RESOURCE_EXHAUSTED: {refusal(name)}" for name in names
        )
        for name in names:
            with fed.store(name) as s:
                audit = next(r for r in s.rounds() if r.round_id == second.id)
                use = {(u.partner, u.what): u.elements for u in s.budget_use(0.0)}
            partner = "bravo" if name == "alpha" else "alpha"
            # what the first round charged, and nothing more: the refusal cost nothing
            assert use == {(partner, "round"): CHARGE}
            assert (audit.outcome, audit.reason) == ("refused", refusal(name))
        assert all(not fed.nodes[n].rounds.active() for n in names)
        # Asked about the refused round afterwards, a node answers with its refusal, not with
        # "aborted" or "no round": the operator learns the cause whichever call came last.
        start = node_pb2.OwnIn(start=node_pb2.OwnStart(round_id=second.id))
        for name in names:
            with fed.as_coordinator(name) as channel:
                stub = node_pb2_grpc.NodeServiceStub(channel)
                with pytest.raises(grpc.RpcError) as refused:
                    list(stub.Own(iter([start]), timeout=30))
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert refused.value.details() == refusal(name)

        clock.now += 1800  # the first round's charge has left the window
        third = fed.run_round(names)
        assert third.state == "done", third.error
    finally:
        fed.close()


def test_a_budget_refusal_is_resource_exhausted_on_the_wire() -> None:
    from blindmatch.runtime import status

    assert status.status_for(BudgetExceeded("x")) == grpc.StatusCode.RESOURCE_EXHAUSTED
