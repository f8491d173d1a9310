"""The exit statuses of every ``blindmatch`` command, and the one path an error takes to them.

0 the command did what was asked; 1 the operation failed (a round failed, a server unreachable,
an RPC refused, a port in use); 2 usage or bad input (bad flags, a bad or existing config, a file
that cannot be read or written, invalid values); 130 interrupted; 141 (no message) stdout's
reader went away. docs/OPERATIONS.md states the
same for operators. Every handler is wrapped by :func:`command`, so that the same mistake exits
with the same status in node, coordinator, operator and pki commands, as one line on stderr and
never a traceback.
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:  # imported when an error is judged: `blindmatch --help` needs no grpc
    import grpc

OK: Final = 0
FAILED: Final = 1
BAD_INPUT: Final = 2
INTERRUPTED: Final = 130
# The reader of stdout went away (`blindmatch node audit | head`): 128 + SIGPIPE, what a shell
# reports for a C tool killed by the signal, so that a script can tell cut-off output from a
# complete run (0 would hide, say, an import's failure whose report was never read).
BROKEN_PIPE: Final = 141

Handler = Callable[[argparse.Namespace], int]


class CliError(Exception):
    """Leave the command with ``status`` after printing the message as one error line."""

    status: int = FAILED


class Failed(CliError):
    """The operation was attempted and failed."""

    status = FAILED


class BadInput(CliError):
    """What the operator gave (flags, files, values) is wrong; nothing was attempted."""

    status = BAD_INPUT


class Interrupted(CliError):
    status = INTERRUPTED


def rpc_failure(err: grpc.RpcError, message: str) -> CliError:
    """A refused RPC failed the operation, unless the server judged the request itself invalid."""
    import grpc

    kind = BadInput if err.code() == grpc.StatusCode.INVALID_ARGUMENT else Failed
    return kind(message)


def status_of(exc: BaseException, bad_input: tuple[type[BaseException], ...] = ()) -> int | None:
    """The exit status for a known error, or None for one that is a bug (and keeps its traceback)."""
    import grpc

    from blindmatch.cli.tomlconfig import ConfigError
    from blindmatch.core.identity import PkiError
    from blindmatch.runtime.net import InsecureBindRefused, NetError, TlsConfigError

    if isinstance(exc, CliError):
        return exc.status
    # What the operator gave was wrong. OSError: a path named on the command line or in a config
    # that cannot be read or written. ValueError: the library's refusal of a value.
    input_errors = (ConfigError, PkiError, TlsConfigError, InsecureBindRefused, ValueError, OSError)
    if isinstance(exc, (*input_errors, *bad_input)):
        return BAD_INPUT
    if isinstance(exc, NetError):  # BindError: the address is fine, something else holds it
        return FAILED
    if isinstance(exc, grpc.RpcError):
        return rpc_failure(exc, "").status
    return None


def command(*bad_input: type[Exception]) -> Callable[[Handler], Handler]:
    """Wrap a handler in the one error path; ``bad_input`` adds a package's own input errors."""

    def wrap(run: Handler) -> Handler:
        @functools.wraps(run)
        def guarded(args: argparse.Namespace) -> int:
            try:
                return run(args)
            except BrokenPipeError:  # not bad input: the CLI entry ends the output quietly
                raise
            except Exception as exc:
                status = status_of(exc, bad_input)
                if status is None:
                    raise
                print(f"error: {_message(exc)}", file=sys.stderr)
                return status

        return guarded

    return wrap


def _message(exc: Exception) -> str:
    import grpc

    if isinstance(exc, grpc.RpcError):
        return f"{exc.code().name}: {exc.details()}"
    if isinstance(exc, OSError) and exc.strerror and exc.filename is not None:
        return f"{exc.filename}: {exc.strerror}"
    return str(exc)


def quiet_broken_pipe() -> int:
    """End the command after its reader closed stdout: no message, and nothing more written.

    Python would otherwise try to flush what is left in stdout's buffer at exit and print
    "Exception ignored ... BrokenPipeError"; pointing stdout at /dev/null makes that flush a no-op.
    """
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # stdout is no real file (a test's StringIO): nothing to flush
        pass
    return BROKEN_PIPE


def flag_value(check: Callable[[str], str], value: str, flag: str) -> str:
    """``check(value)`` (a validator raising ValueError), or BadInput naming the flag."""
    try:
        return check(value)
    except ValueError as exc:
        raise BadInput(f"{flag}: {exc}") from None


def flag_address(value: str, flag: str) -> str:
    """``value`` if it is a host:port, or BadInput naming the flag."""
    from blindmatch.runtime.net import split_host_port

    try:
        split_host_port(value)
    except ValueError as exc:
        raise BadInput(f"{flag}: {exc}") from None
    return value
