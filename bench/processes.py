"""Measuring processes: CPU seconds and memory of a server and its workers, and of the machine."""

from __future__ import annotations

import contextlib
import re
import resource
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

TIMELINE_STEP = 0.25  # seconds between CPU samples during a round


def _status_kib(pid: int, key: str) -> int:
    """VmRSS / VmHWM of a process from /proc, in KiB (0 if it is gone)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    match = re.search(rf"^{key}:\s+(\d+) kB", text, re.M)
    return int(match.group(1)) if match else 0


@dataclass
class ProcSample:
    label: str
    pid: int
    cpu: float  # user + system seconds so far, reaped children included
    rss: int  # bytes now
    hwm: int  # peak bytes over the process's life


def _label(proc: psutil.Process, owner: str) -> str:
    try:
        cmd = " ".join(proc.cmdline())
    except psutil.Error:
        return f"{owner} child"
    if "resource_tracker" in cmd:
        return f"{owner} resource tracker"
    if "spawn_main" in cmd:
        return f"{owner} worker"
    return f"{owner} child"


def sample(servers: dict[str, int]) -> list[ProcSample]:
    """Every server process and all its descendants."""
    out = []
    for owner, pid in servers.items():
        try:
            main = psutil.Process(pid)
            procs = [(owner, main)] + [(_label(c, owner), c) for c in main.children(recursive=True)]
        except psutil.Error:
            continue
        for label, proc in procs:
            try:
                t = proc.cpu_times()
                cpu = t.user + t.system + t.children_user + t.children_system
            except psutil.Error:
                continue
            out.append(
                ProcSample(
                    label,
                    proc.pid,
                    cpu,
                    _status_kib(proc.pid, "VmRSS") * 1024,
                    _status_kib(proc.pid, "VmHWM") * 1024,
                )
            )
    return out


def busy_cpu_seconds() -> float:
    """Machine-wide non-idle CPU seconds (all processes, all cores)."""
    t = psutil.cpu_times()
    return float(sum(t) - t.idle - getattr(t, "iowait", 0.0))


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class Timeline:
    """Cores busy per role (node main processes, blinding workers, coordinator, everything else
    on the machine) every TIMELINE_STEP seconds while the ``with`` block runs.

    The process tree is read once (workers start with their server, before any round); each
    tick then reads only /proc/PID/stat of those processes, so sampling costs well under 1% of a
    core and stays out of the figures it draws.
    """

    def __init__(self, servers: dict[str, int]) -> None:
        self.procs: list[tuple[str, psutil.Process]] = []
        for label, pid in servers.items():
            with contextlib.suppress(psutil.Error):
                main = psutil.Process(pid)
                role = "coordinator" if label == "coordinator" else "nodes"
                self.procs.append((role, main))
                self.procs += [
                    ("workers" if role == "nodes" else role, c) for c in main.children(True)
                ]
        self.rows: list[dict[str, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Timeline:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _totals(self) -> dict[str, float]:
        out = dict.fromkeys(("nodes", "workers", "coordinator"), 0.0)
        for role, proc in self.procs:
            with contextlib.suppress(psutil.Error):
                t = proc.cpu_times()
                out[role] += t.user + t.system
        out["machine"] = busy_cpu_seconds()
        return out

    def _run(self) -> None:
        t0 = last_t = time.monotonic()
        last = self._totals()
        while not self._stop.wait(TIMELINE_STEP):
            now, totals = time.monotonic(), self._totals()
            dt = max(now - last_t, 1e-9)
            row = {k: max(0.0, totals[k] - last[k]) / dt for k in totals}
            row["other"] = max(
                0.0, row.pop("machine") - row["nodes"] - row["workers"] - row["coordinator"]
            )
            row["t"] = now - t0
            self.rows.append(row)
            last, last_t = totals, now


def mb(n: float) -> str:
    return f"{n / 2**20:,.0f} MB"
