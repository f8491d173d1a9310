"""Members' answers an owner keeps until its tags are verified, on disk rather than in memory.

An owner keeps every member's signed answer to each of its chunks, so that a failed subset check
can name the member whose own answers are wrong (``Owner.blame``): 65 bytes per element and
member, 130 MB for a set of 1M and a committee of three. They are written to an unnamed
temporary file (unlinked at creation, gone when closed or when the process dies) and read back
only after a failure. What they hold is blinded (k_i·r·H(x), r known only to the owner), the
same bytes the coordinator relayed.
"""

from __future__ import annotations

import tempfile
import threading

from blindmatch.core.evaluation import EvaluationAnswer


class SpilledAnswers:
    def __init__(self) -> None:
        # open for the round's whole evaluation; ``clear`` closes it
        self._file = tempfile.TemporaryFile(prefix="blindmatch-answers-")  # noqa: SIM115
        self._lock = threading.Lock()
        self._index: dict[str, dict[int, tuple[EvaluationAnswer, int, int]]] = {}

    def put(self, member: str, seq: int, answer: EvaluationAnswer, points: bytes) -> None:
        with self._lock:
            offset = self._file.seek(0, 2)
            self._file.write(points)
            self._index.setdefault(member, {})[seq] = (answer, offset, len(points))

    def all(self) -> dict[str, dict[int, tuple[EvaluationAnswer, bytes]]]:
        with self._lock:
            out: dict[str, dict[int, tuple[EvaluationAnswer, bytes]]] = {}
            for member, chunks in self._index.items():
                for seq, (answer, offset, length) in chunks.items():
                    self._file.seek(offset)
                    out.setdefault(member, {})[seq] = (answer, self._file.read(length))
            return out

    def clear(self) -> None:
        with self._lock:
            self._index.clear()
            self._file.close()
