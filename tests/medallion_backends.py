"""medallion backends for tests that need a TAXII server to refuse an object, or hold it pending.

medallion's memory backend takes every new object; a real server may not (OpenCTI refuses what it
cannot ingest, a large server answers "pending" and works on). ``PolicyBackend`` is that memory
backend, run by the real medallion server, with a policy read from a JSON file on every add:
``{"refuse": [text, ...], "pending": [text, ...]}``; an object whose JSON contains one of the
texts is refused (a failure in the status resource), or left pending (not stored, and the status
stays "pending" however often it is asked). No file: it behaves as the memory backend.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from medallion.backends.memory_backend import MemoryBackend
from medallion.common import generate_status_details


class PolicyBackend(MemoryBackend):  # type: ignore[misc]
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.policy = Path(kwargs["policy"])

    def add_objects(
        self, api_root: str, collection_id: str, objs: dict[str, Any], request_time: Any
    ) -> Any:
        policy = json.loads(self.policy.read_text()) if self.policy.exists() else {}
        taken, refused, pending = [], [], []
        for obj in objs["objects"]:
            text = json.dumps(obj)
            if any(t in text for t in policy.get("refuse", [])):
                refused.append(obj)
            elif any(t in text for t in policy.get("pending", [])):
                pending.append(obj)
            else:
                taken.append(obj)
        status = super().add_objects(api_root, collection_id, {"objects": taken}, request_time)
        # The status medallion stored is this dict: what is added here is what GET status shows.
        for obj, kind in [(o, "failures") for o in refused] + [(o, "pendings") for o in pending]:
            detail = generate_status_details(obj["id"], obj.get("modified", obj.get("created")))
            if kind == "failures":
                detail["message"] = "refused by this server's policy"
            status.setdefault(kind, []).append(detail)
        status["failure_count"] += len(refused)
        status["pending_count"] += len(pending)
        status["total_count"] += len(refused) + len(pending)
        if pending:
            status["status"] = "pending"
        return status
