"""A real TAXII 2.1 server for tests: medallion, the OASIS reference implementation, on loopback.

medallion serves its memory backend (or ``backend``, a subclass of it in
tests/medallion_backends.py, for a server that refuses or holds objects as a real one may), with
a page size of 2 so pulls take several pages, from a data file written here. ``Gate`` is a small
real HTTP server put in front of it where a test needs what medallion does not do: bearer tokens
(medallion knows basic auth only) and a transfer cut off midway.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import requests
from taxii2client.v21 import Collection

from tests.waiting import until

USER, PASSWORD = "alpha", "correct horse"
SOURCE_ID = "91a7b528-80eb-42ed-a74d-c6fbd5a26116"
SINK_ID = "52892447-4d7e-4f70-b94d-d7f22742ff63"
MEDIALLION = Path(sys.executable).with_name("medallion")


@dataclass
class Taxii:
    """medallion serving on a socket this test bound on 127.0.0.1 port 0 and hands it.

    medallion takes a port number only, and its discovery document must name that port before it
    starts; so the test binds port 0 itself, and werkzeug (which serves medallion) takes the
    listening socket over as it does from its reloader: ``WERKZEUG_RUN_MAIN`` and
    ``WERKZEUG_SERVER_FD``. The port is never released between binding it and serving on it."""

    directory: Path
    # "module:Class" of the backend: medallion's memory backend, or one in medallion_backends.py
    backend: str = "medallion.backends.memory_backend:MemoryBackend"
    listener: socket.socket | None = None
    port: int = 0
    process: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]

    @property
    def discovery(self) -> str:
        return f"http://127.0.0.1:{self.port}/taxii2/"

    def collection(self, cid: str) -> Collection:
        url = f"http://127.0.0.1:{self.port}/api1/collections/{cid}/"
        return Collection(url, user=USER, password=PASSWORD)

    def objects(self, cid: str) -> list[dict[str, Any]]:
        """Every object the collection holds, read back through TAXII page by page."""
        got = self.collection(cid).get_objects(limit=2)
        objects = list(got.get("objects", []))
        while got.get("more"):  # medallion pages of two
            got = self.collection(cid).get_objects(limit=2, next=got["next"])
            objects += got["objects"]
        return objects

    @property
    def policy(self) -> Path:
        """Where medallion_backends.PolicyBackend reads what to refuse or hold pending."""
        return self.directory / "policy.json"

    def start(self) -> None:
        root = f"http://127.0.0.1:{self.port}/api1/"
        collection = {
            "description": "",
            "can_read": True,
            "can_write": True,
            "media_types": ["application/stix+json;version=2.1"],
            "objects": [],
            "manifest": [],
        }
        data = {
            "/discovery": {"title": "test", "default": root, "api_roots": [root]},
            "api1": {
                "information": {
                    "title": "api1",
                    "versions": ["application/taxii+json;version=2.1"],
                    "max_content_length": 10_000_000,
                },
                "status": [],
                "collections": [
                    {**collection, "id": SOURCE_ID, "title": "indicators"},
                    {**collection, "id": SINK_ID, "title": "sightings"},
                ],
            },
        }
        (self.directory / "data.json").write_text(json.dumps(data))
        config = {
            "backend": {
                "module": self.backend.partition(":")[0],
                "module_class": self.backend.partition(":")[2],
                "filename": str(self.directory / "data.json"),
                "policy": str(self.policy),
            },
            "users": {USER: PASSWORD},
            "taxii": {"max_page_size": 2},
        }
        (self.directory / "medallion.json").write_text(json.dumps(config))
        if self.listener is None:  # started again after stop(): at the address it had
            self.listener = socket.create_server(("127.0.0.1", self.port))
        fd = self.listener.fileno()
        self.process = subprocess.Popen(
            [str(MEDIALLION), "--port", str(self.port), str(self.directory / "medallion.json")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            pass_fds=(fd,),
            env={
                **os.environ,
                "WERKZEUG_RUN_MAIN": "true",
                "WERKZEUG_SERVER_FD": str(fd),
                # the backends in tests/ import as tests.medallion_backends
                "PYTHONPATH": str(Path(__file__).resolve().parent.parent),
            },
        )
        until("medallion answers", self._answers, 60)

    def _answers(self) -> bool:
        assert self.process is not None and self.process.poll() is None, "medallion exited"
        try:
            requests.get(self.discovery, timeout=5)
        except requests.ConnectionError:
            return False
        return True

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(30)
            self.process = None
        if self.listener is not None:  # nothing holds the port now: connections are refused
            self.listener.close()
            self.listener = None


def indicator(pattern: str, **extra: Any) -> dict[str, Any]:
    return {
        "type": "indicator",
        "spec_version": "2.1",
        "id": f"indicator--{uuid.uuid4()}",
        "created": "2026-01-05T10:00:00.000Z",
        "modified": "2026-01-05T10:00:00.000Z",
        "pattern": pattern,
        "pattern_type": "stix",
        "valid_from": "2026-01-05T10:00:00Z",
        **extra,
    }


def add(server: Taxii, *objects: dict[str, Any]) -> None:
    status = server.collection(SOURCE_ID).add_objects({"objects": list(objects)})
    assert status.success_count == len(objects)


@dataclass
class Gate:
    """A real HTTP server on 127.0.0.1 port 0 in front of medallion's API root ``/api1/``.

    With ``token`` it answers 401 unless the request carries ``Authorization: Bearer <token>``,
    as OpenCTI's TAXII feeds do, and passes what it lets through on with medallion's basic auth.
    It keeps every Authorization header it received (``seen``). With ``cut_after`` it serves
    that many object pages, then sends the next one's headers and half its body and closes the
    connection: a transfer the server cut off."""

    upstream: Taxii
    token: str | None = None
    cut_after: int | None = None
    seen: list[str] = field(default_factory=list)
    pages: int = 0

    def __post_init__(self) -> None:
        gate = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                self._forward()

            def do_POST(self) -> None:
                self._forward()

            def _forward(self) -> None:
                given = self.headers.get("Authorization", "")
                gate.seen.append(given)
                if gate.token is not None and given != f"Bearer {gate.token}":
                    self.send_response(401)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                length = int(self.headers.get("Content-Length") or 0)
                answer = requests.request(
                    self.command,
                    f"http://127.0.0.1:{gate.upstream.port}{self.path}",
                    data=self.rfile.read(length) if length else None,
                    headers={
                        k: v for k, v in self.headers.items() if k in ("Accept", "Content-Type")
                    },
                    auth=(USER, PASSWORD),
                    timeout=30,
                )
                body = answer.content
                cut = False
                if self.command == "GET" and "/objects/" in self.path:
                    gate.pages += 1
                    cut = gate.cut_after is not None and gate.pages > gate.cut_after
                self.send_response(answer.status_code)
                for key, value in answer.headers.items():
                    if key.lower() in ("content-type",) or key.startswith("X-TAXII"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if cut:
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def api_root(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/api1/"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)
