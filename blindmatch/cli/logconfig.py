"""The ``[log]`` table of node.toml and coordinator.toml: read and written the same way for both.

What the settings do is ``blindmatch.runtime.logs``'s; here is only the TOML side of them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from blindmatch.cli.tomlconfig import TomlReader, relative_path, toml_string
from blindmatch.runtime.logs import FORMATS, LEVELS, LogSettings

LOG_KEYS: Final = {"file", "level", "format"}


def read_log(r: TomlReader) -> LogSettings:
    """``[log]``: ``file`` (relative to the config file; absent = stderr), ``level``, ``format``."""
    table = r.table("log", required=False)
    r.no_unknown(table, "log", LOG_KEYS)
    d = LogSettings()
    level = r.value("log.level", table, d.level, str)
    r.check(level in LEVELS, "log.level", f"must be one of {', '.join(LEVELS)}, not {level!r}")
    fmt = r.value("log.format", table, d.format, str)
    r.check(fmt in FORMATS, "log.format", f"must be one of {', '.join(FORMATS)}, not {fmt!r}")
    file = r.file_path("log.file", table, None) if "file" in table else None
    return LogSettings(file=file, level=level, format=fmt)


def log_lines(settings: LogSettings, base: Path | None, comment_width: int = 33) -> list[str]:
    """The ``[log]`` table holding ``settings``, commented, for a config file being written;
    a file below ``base`` (the config file's directory) is written relative to it."""
    file = (
        '# file = "server.log"'
        if settings.file is None
        else f"file = {toml_string(relative_path(settings.file, base))}"
    )
    rows = [
        ("[log]", "where the server logs (docs/OPERATIONS.md, Logs)"),
        (file, "a file (created 0600; logrotate may move it away); absent: stderr"),
        (f'level = "{settings.level}"', f"{', '.join(LEVELS)}; info: every round's start and end"),
        (f'format = "{settings.format}"', '"text", or "json": one object per line'),
    ]
    return [f"{line:<{comment_width}} # {comment}" for line, comment in rows]
