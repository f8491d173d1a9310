"""``node explain``: why a value did or did not match, from the store and node.toml alone.

For each value: its canonical form and kind, whether the store holds it (TLP, when seen, from
which sources), which ``[policy]`` keeps it out of rounds (kinds, tlp, max_age by the store's own
rule), the last rounds it entered with what each found, and the last rounds that found it. The
store keeps no round's set, so "entered" is inferred: the rounds done since the value was stored
that asked for its kind, while today's policy lets it in.
"""

from __future__ import annotations

from typing import Any

from node.config import NodeConfig
from node.store import MatchRow, Store

EXPLAINED_ROUNDS = 5  # rounds, newest first, in each list `node explain` shows


def explain(config: NodeConfig, store: Store, given: str, kind: str, value: str) -> dict[str, Any]:
    answer: dict[str, Any] = {"input": given, "kind": kind, "value": value, "stored": None}
    stored = store.lookup(kind, value)
    if stored is None:
        return answer
    answer["stored"] = {
        "tlp": stored.tlp,
        "first_seen": stored.first_seen,
        "last_seen": stored.last_seen,  # the latest import or pull that carried it
        "sightings": stored.count,
        "sources": stored.sources,
    }
    # what keeps it out of rounds: node.toml [policy], as node.rounds selects a round's set
    excluded = []
    if kind not in config.policy.kinds:
        excluded.append(f"[policy] kinds does not list {kind}")
    if stored.tlp not in config.tlps:
        excluded.append(f"[policy] tlp does not list {stored.tlp}")
    if store.is_expired(stored.seen_at):  # not seen again (import or pull) within max_age
        excluded.append(f"[policy] max_age: not seen since {stored.seen_at}")
    answer["excluded_by"] = excluded
    found = store.matches_of(stored.sighting_id, EXPLAINED_ROUNDS)
    answer["found_in"] = [_found(m) for m in found]
    asked = store.rounds_for_kind(kind, stored.first_seen)
    answer["rounds_for_kind_since_first_seen"] = len(asked)
    answer["last_round_for_kind"] = asked[0].round_id if asked else None
    # The store keeps no round's set, so the rounds it entered are those done since it was
    # stored that asked for its kind, while today's policy lets it in; each with what it found
    # (found_in above holds the rounds that found it, however long ago).
    found_by = {m.round_id: m for m in store.matches_of(stored.sighting_id, len(asked) or 1)}
    answer["entered"] = (
        []
        if excluded
        else [
            {
                "round": r.round_id,
                "mode": r.shown_mode,
                "finished": r.finished,
                "found": _found(found_by[r.round_id]) if r.round_id in found_by else None,
            }
            for r in asked[:EXPLAINED_ROUNDS]
        ]
    )
    return answer


def _found(m: MatchRow) -> dict[str, Any]:
    return {
        "round": m.round_id,
        "mode": m.mode,
        "partners": m.partners,  # pairwise and watch: who also holds it
        "nations": m.nations if m.threshold else None,  # threshold: how many hold it
        "finished": m.finished,
    }


def explanation_text(a: dict[str, Any]) -> str:
    if "error" in a:
        return f"{a['input']}: not an indicator: {a['error']}"
    lines = [f"{a['input']}: {a['kind']} {a['value']}"]
    stored = a["stored"]
    if stored is None:
        lines.append("  not stored: import it (`blindmatch node import`), or check its spelling")
        return "\n".join(lines)
    lines.append(
        f"  stored: TLP {stored['tlp']}, first seen {stored['first_seen']}, last seen "
        f"{stored['last_seen']}, {stored['sightings']:,} sighting(s) from "
        + ", ".join(stored["sources"])
    )
    if a["excluded_by"]:
        lines.append("  kept out of rounds by " + "; ".join(a["excluded_by"]))
    else:
        lines.append("  enters every round that asks for its kind")
    asked, last = a["rounds_for_kind_since_first_seen"], a["last_round_for_kind"]
    lines.append(
        f"  rounds done here since first seen that asked for {a['kind']}: {asked:,}"
        + (f", the last {last[:12]}" if last else "")
    )
    for r in a["entered"]:
        got = r["found"]
        what = "found nothing" if got is None else "found: " + _who(got)
        lines.append(f"  entered round {r['round'][:12]} ({r['mode']}, {r['finished']}): {what}")
    if not a["found_in"]:
        lines.append("  found by no round")
    for m in a["found_in"]:
        lines.append(
            f"  found in round {m['round'][:12]} ({m['mode']}, {m['finished']}): {_who(m)}"
        )
    return "\n".join(lines)


def _who(m: dict[str, Any]) -> str:
    return str(m["nations"] or "also held by " + ", ".join(m["partners"]))
