"""The opt-in metrics endpoint of a node or the coordinator: its ``[metrics]`` table and its server.

Rules:
- No ``[metrics]`` table: no endpoint, no port opened. ``[metrics]`` without ``listen`` serves on
  loopback (DEFAULT_LISTEN); any other address is served only when written, with a warning at
  start: the metrics name partners and carry volumes.
- This module knows nothing of Prometheus (blindmatch/ stays free of it): node/metrics.py and
  coordinator/metrics.py define the metrics and hand over the WSGI app that renders them.
- The socket is bound here, so port 0 works (tests) and the bound port is known.
"""

from __future__ import annotations

import logging
import socket
import threading
from dataclasses import dataclass
from socketserver import ThreadingMixIn
from typing import TYPE_CHECKING, Any, Final
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from blindmatch.runtime.net import BindError, is_loopback, split_host_port

if TYPE_CHECKING:
    from wsgiref.types import WSGIApplication

log = logging.getLogger("blindmatch.metrics")

DEFAULT_LISTEN: Final = "127.0.0.1:9464"


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass  # a scrape every few seconds must not fill the server's output


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a stuck scraper must not hold the process at exit


class _ThreadingServer6(_ThreadingServer):
    address_family = socket.AF_INET6


@dataclass
class MetricsEndpoint:
    server: WSGIServer
    thread: threading.Thread

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    @property
    def address(self) -> str:
        """Where to scrape: host:port as bound (port 0 resolved), IPv6 in brackets."""
        host = str(self.server.server_address[0])
        return f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


def serve_metrics(listen: str, app: WSGIApplication, owner: str) -> MetricsEndpoint:
    """Serve ``app`` on ``listen`` ("host:port", port 0: any free port) in a daemon thread."""
    host, port = split_host_port(listen)
    if not is_loopback(host):
        log.warning(
            "%s serves metrics on %s, beyond loopback: they name partners and carry volumes; "
            "let only the Prometheus server reach that port",
            owner,
            listen,
        )
    server_class = _ThreadingServer6 if ":" in host else _ThreadingServer
    try:
        server = make_server(host, port, app, server_class, _QuietHandler)
    except OSError as exc:
        raise BindError(f"{owner} cannot serve metrics on {listen}: {exc.strerror}") from None
    thread = threading.Thread(
        target=server.serve_forever, name=f"metrics-{owner}", kwargs={"poll_interval": 0.5}
    )
    thread.daemon = True
    thread.start()
    return MetricsEndpoint(server, thread)
