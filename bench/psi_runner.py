"""openmined-psi's complete two-party protocol on the benchmark's sets, in a fresh process."""

from __future__ import annotations

import multiprocessing
import resource
import time
from dataclasses import asdict, dataclass
from multiprocessing.connection import Connection

from bench.datasets import nation_items
from bench.processes import busy_cpu_seconds


@dataclass
class PsiRun:
    items: int
    wall: float
    cpu: float
    peak_rss: int
    intersection: int
    other_cores: float  # CPU used by everything else on the machine meanwhile, in cores


def _psi_child(size: int, conn: Connection) -> None:
    """Runs in a fresh process so CPU and peak RSS are openmined-psi's alone."""
    import private_set_intersection.python as psi  # type: ignore[import-untyped]

    client_items = [f"{k}\0{v}" for k, v in nation_items(0, size)]
    server_items = [f"{k}\0{v}" for k, v in nation_items(1, size)]
    c0, t0, busy0 = time.process_time(), time.perf_counter(), busy_cpu_seconds()
    server = psi.server.CreateWithNewKey(True)
    client = psi.client.CreateWithNewKey(True)
    setup = server.CreateSetupMessage(1e-9, len(client_items), server_items, psi.DataStructure.GCS)
    request = client.CreateRequest(client_items)
    # Every message crosses the wire: serialise and parse it, as two separate parties would.
    request_in = psi.Request()
    request_in.ParseFromString(request.SerializeToString())
    response = server.ProcessRequest(request_in)
    setup_in, response_in = psi.ServerSetup(), psi.Response()
    setup_in.ParseFromString(setup.SerializeToString())
    response_in.ParseFromString(response.SerializeToString())
    intersection = client.GetIntersection(setup_in, response_in)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    other = max(0.0, busy_cpu_seconds() - busy0 - cpu) / wall
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    conn.send(asdict(PsiRun(size, wall, cpu, peak, len(intersection), other)))
    conn.close()


def run_psi(size: int) -> PsiRun:
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_psi_child, args=(size, child))
    proc.start()
    child.close()
    try:
        result = PsiRun(**parent.recv())
    except EOFError:
        raise SystemExit(f"openmined-psi at {size} items died (exit {proc.exitcode})") from None
    finally:
        proc.join()
    return result
