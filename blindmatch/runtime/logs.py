"""Where a server's log goes, at what level and in what form: one setup for node and coordinator.

``[log]`` in node.toml and coordinator.toml (read by ``blindmatch.cli.logconfig``) becomes a
``LogSettings``; ``setup_logging`` installs it on the root logger when ``serve`` starts, so every
``blindmatch.*`` logger (rounds, epochs, checks, connectors, metrics) follows it.

- ``file``: a path, or None for stderr (systemd's journal takes stderr as it is). A file is
  opened with a ``WatchedFileHandler``: logrotate may move it away (``create`` or not) and the
  next line goes to a new file at the old path, with no signal to send. SIGHUP stays free for
  whatever else ``serve`` wants it for.
- A new log file is created 0600: alert lines name the indicator a partner has now sighted
  (node/watch.py), and those values are as private as the store they come from, which is 0600
  too (node/store/db.py). An existing file keeps its mode, so an administrator who gives
  logrotate ``create 0640 blindmatch adm`` on purpose keeps that choice.
- ``format``: "text", one line per record, or "json", one object per line with ``time``,
  ``level``, ``logger``, ``message`` and, for a line about a round, ``round_id`` (a log call
  passes ``extra=about_round(round_id)``), plus ``exception`` when there is a traceback.
  Times are UTC, ISO 8601 with milliseconds, in both forms: logs of several servers compare.
"""

from __future__ import annotations

import io
import json
import logging
import logging.handlers
import os
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

LEVELS: Final = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}
FORMATS: Final = ("text", "json")
FILE_MODE: Final = 0o600
ROUND_ID: Final = "round_id"  # the record attribute, and the JSON key, naming a round


@dataclass(frozen=True, slots=True)
class LogSettings:
    file: Path | None = None  # None: stderr
    level: str = "info"  # a key of LEVELS
    format: str = "text"  # one of FORMATS

    def __post_init__(self) -> None:
        if self.level not in LEVELS:
            raise ValueError(f"log level {self.level!r} is not one of {', '.join(LEVELS)}")
        if self.format not in FORMATS:
            raise ValueError(f"log format {self.format!r} is not one of {', '.join(FORMATS)}")


def about_round(round_id: str) -> dict[str, str]:
    """``extra=`` for a log call about one round: the JSON form carries its id as a field."""
    return {ROUND_ID: round_id}


def _utc(record: logging.LogRecord) -> str:
    whole = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
    return f"{whole}.{int(record.msecs):03d}Z"


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return _utc(record)


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line: a message's own newlines are escaped."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": _utc(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        round_id = getattr(record, ROUND_ID, None)
        if round_id is not None:
            entry[ROUND_ID] = round_id
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


class PrivateWatchedFileHandler(logging.handlers.WatchedFileHandler):
    """A WatchedFileHandler whose file, when it creates one (first open or after a rotation), is
    created with FILE_MODE whatever the umask, rather than 0666 minus the umask."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, encoding="utf-8")

    def _open(self) -> io.TextIOWrapper:
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
        try:
            fd = os.open(self.baseFilename, flags | os.O_EXCL, FILE_MODE)
        except FileExistsError:
            fd = os.open(self.baseFilename, flags)
        else:
            os.fchmod(fd, FILE_MODE)  # a umask such as 0o277 would otherwise take the owner's w
        return os.fdopen(fd, "a", encoding=self.encoding, errors=self.errors)


def handler_for(settings: LogSettings) -> logging.Handler:
    """The handler ``settings`` asks for; OSError (naming the path) if the file cannot be opened."""
    handler: logging.Handler
    if settings.file is None:
        handler = logging.StreamHandler(sys.stderr)
    else:
        handler = PrivateWatchedFileHandler(settings.file)
    handler.setFormatter(JsonFormatter() if settings.format == "json" else TextFormatter())
    return handler


def log_native_stderr() -> None:
    """Route what is written to this process's stderr (file descriptor 2) into the log: a server
    logging to a file must not lose the lines gRPC's C core writes there, above all "Handshake
    failed ... CERTIFICATE_VERIFY_FAILED" when a peer's certificate is not from the federation's
    CA. gRPC refuses such a handshake before any Python code runs and gives a server no hook for
    it, so its own line is the only record of why.

    The pipe's write end is non-blocking: were the reader ever behind, gRPC's threads lose a line
    rather than wait on the log."""
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    sys.stderr.flush()
    os.dup2(write_end, 2)
    os.close(write_end)
    log = logging.getLogger("blindmatch.stderr")

    def pump() -> None:
        with open(read_end, "rb") as pipe:
            for raw in pipe:
                line = raw.decode("utf-8", "replace").rstrip()
                if HANDSHAKE in line:
                    log.warning("TLS handshake refused (a peer of another CA, or none): %s", line)
                elif line:
                    log.warning("%s", line)

    threading.Thread(target=pump, name="stderr-to-log", daemon=True).start()


HANDSHAKE: Final = "Handshake failed"


def setup_logging(settings: LogSettings) -> logging.Handler:
    """Send every log record at ``settings.level`` or above where ``settings`` says, in place of
    whatever the command line set up (``blindmatch -v``'s stderr handler); the handler installed."""
    handler = handler_for(settings)  # first: a log file that cannot be opened changes nothing
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(LEVELS[settings.level])
    return handler
