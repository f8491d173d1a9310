"""A TCP relay on loopback that records every byte it forwards and can cut connections.

Put between a client and a server (the client dials ``relay.address``), it shows exactly what
crossed the wire; ``cut_after(n)`` drops every connection once n bytes have gone through in total,
the way a failing network would. ``hold_after(n)`` stops forwarding (connections stay open, silent)
once n more bytes have gone through, until ``release()``: a test can then strike while a round is
known to be mid-stream, without racing it.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from types import TracebackType


class Relay:
    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._recorded = bytearray()
        self._forwarded = 0
        self._cut_at: int | None = None
        self._hold_at: int | None = None
        self._flowing = threading.Event()
        self._flowing.set()
        self._sockets: list[socket.socket] = []
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def recorded(self) -> bytes:
        with self._lock:
            return bytes(self._recorded)

    @property
    def forwarded(self) -> int:
        with self._lock:
            return self._forwarded

    def cut_after(self, n: int) -> None:
        with self._lock:
            self._cut_at = self._forwarded + n

    def hold_after(self, n: int) -> None:
        with self._lock:
            self._hold_at = self._forwarded + n

    @property
    def holding(self) -> bool:
        return not self._flowing.is_set()

    def release(self) -> None:
        with self._lock:
            self._hold_at = None
        self._flowing.set()

    def cut_now(self) -> None:
        self._flowing.set()  # held pumps must run on to notice their sockets are gone
        with self._lock:
            sockets = list(self._sockets)
        for s in sockets:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets += [client, server]
            threading.Thread(target=self._pump, args=(client, server), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        while True:
            try:
                data = src.recv(65536)
            except OSError:
                data = b""
            if not data:
                break
            with self._lock:
                self._recorded += data
                self._forwarded += len(data)
                cut = self._cut_at is not None and self._forwarded >= self._cut_at
                if self._hold_at is not None and self._forwarded >= self._hold_at:
                    self._flowing.clear()
            if cut:
                self.cut_now()
                return
            self._flowing.wait()
            try:
                dst.sendall(data)
            except OSError:
                break
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._listener.close()
        self.cut_now()

    def __enter__(self) -> Relay:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
