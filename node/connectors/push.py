"""Pushing the matches a sink has not received yet, each once.

Rules:
- What is pushed comes from the store's matches not marked for that sink (optionally one round),
  in batches; a batch is marked pushed only after the sink took it, so a failure loses nothing
  and the next push resends exactly what is missing.
- The sink builds what it sends (a TAXII sink: STIX sightings); this module only selects and marks.
- A sink that can sight only some matches says which with ``can_sight(match)`` (a MISP sink: those
  imported from a MISP attribute); the others are counted as skipped and not marked, so a match
  whose value later arrives from that source is pushed then.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from node.config import ConnectorConfig
from node.connectors.base import Sink, open_sink
from node.store import Store

BATCH: Final = 500  # matches per request


@dataclass
class PushResult:
    sink: str
    matches: int = 0  # matches delivered now
    objects: int = 0  # objects the sink took (sightings, indicators, identities)
    skipped: int = 0  # matches the sink has nothing to attach a sighting to

    def as_json(self) -> dict[str, object]:
        return {
            "sink": self.sink,
            "matches": self.matches,
            "objects": self.objects,
            "skipped": self.skipped,
        }


def push_sink(
    store: Store,
    config: ConnectorConfig,
    *,
    node: str,
    round_id: str | None = None,
    sink: Sink | None = None,
) -> PushResult:
    """Push the unpushed matches to ``config``. Raises ConnectorError when the sink fails
    (batches delivered before the failure stay marked)."""
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
    for start in range(0, len(pending), BATCH):
        batch = pending[start : start + BATCH]
        result.objects += remote.push(node, batch)
        store.mark_pushed(config.name, [(m.round_id, m.sighting_id) for m in batch])
        result.matches += len(batch)
    return result
