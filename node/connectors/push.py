"""Pushing the matches a sink has not received yet, each once.

Rules:
- What is pushed comes from the store's matches not marked for that sink (optionally one round),
  in batches; a match is marked pushed only once the sink confirmed every object that tells it
  (TAXII: its status resource, object by object; MISP: its reply to each sighting), so a refused
  or still pending object loses nothing: the next push resends exactly what is missing, and
  ids are deterministic, so a resend never duplicates.
- The sink builds what it sends (a TAXII sink: STIX sightings); this module only selects and marks.
- A sink that can sight only some matches says which with ``can_sight(match)`` (a MISP sink: those
  imported from a MISP attribute); the others are counted as skipped and not marked, so a match
  whose value later arrives from that source is pushed then.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from node.config import ConnectorConfig
from node.connectors.base import ConnectorError, Sink, open_sink
from node.store import Store

BATCH: Final = 500  # matches per request


@dataclass
class PushResult:
    sink: str
    matches: int = 0  # matches the sink confirmed now, and marked pushed
    objects: int = 0  # objects the sink confirmed (sightings, indicators, identities, markings)
    skipped: int = 0  # matches the sink has nothing to attach a sighting to
    unconfirmed: int = 0  # matches sent but not confirmed: left unmarked, sent again next push

    def as_json(self) -> dict[str, object]:
        return {
            "sink": self.sink,
            "matches": self.matches,
            "objects": self.objects,
            "skipped": self.skipped,
            "unconfirmed": self.unconfirmed,
        }


def push_sink(
    store: Store,
    config: ConnectorConfig,
    *,
    node: str,
    round_id: str | None = None,
    sink: Sink | None = None,
) -> PushResult:
    """Push the unpushed matches to ``config``. Raises ConnectorError, its ``done`` this
    PushResult, when the sink failed or did not confirm every match (what it confirmed before
    stays marked)."""
    result = PushResult(config.name)
    pending = store.unpushed(config.name, round_id)
    if not pending:
        return result  # nothing to say: no connection is made
    remote = sink or open_sink(config)
    can_sight = getattr(remote, "can_sight", None)
    if can_sight is not None:
        ready = [m for m in pending if can_sight(m)]
        result.skipped = len(pending) - len(ready)
        pending = ready
    problems: list[str] = []
    for start in range(0, len(pending), BATCH):
        batch = pending[start : start + BATCH]
        try:
            delivery = remote.push(node, batch)
        except ConnectorError as exc:
            result.unconfirmed += len(pending) - start
            raise ConnectorError(str(exc), done=result) from None
        store.mark_pushed(config.name, [(m.round_id, m.sighting_id) for m in delivery.confirmed])
        result.matches += len(delivery.confirmed)
        result.objects += delivery.objects
        result.unconfirmed += len(batch) - len(delivery.confirmed)
        problems += delivery.problems
    if result.unconfirmed:
        shown = "; ".join(problems[:3]) + (
            f"; and {len(problems) - 3} more" if len(problems) > 3 else ""
        )
        raise ConnectorError(
            f"{config.name}: {result.unconfirmed} match(es) not confirmed by the sink, left"
            f" to send again on the next push: {shown or 'no reason given'}",
            done=result,
        )
    return result
