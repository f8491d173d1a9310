"""Running ``blindmatch`` commands in the test process, as an operator types them."""

from __future__ import annotations

import contextlib
import io

from blindmatch.cli.main import main


def run(*argv: str) -> tuple[int, str, str]:
    """``blindmatch ARGV`` in this process: exit status, stdout, stderr."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            status = main(list(argv))
        except SystemExit as exc:  # argparse refusing the command line
            status = int(exc.code or 0)
    return status, out.getvalue(), err.getvalue()
