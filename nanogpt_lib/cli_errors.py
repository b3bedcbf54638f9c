"""One error boundary for the command lines: an expected failure is one line, never a traceback.

Bad options and files (ValueError, OSError), a diverging run (FloatingPointError), a full disk,
memory running out, and Ctrl-C all end with `PROG: error: ...` on stderr and a non-zero exit
code; `--debug` shows the traceback instead. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import errno
import sys
from collections.abc import Callable
from typing import TypeVar

import torch

T = TypeVar("T")
BAD_INPUT, INTERRUPTED = 2, 130  # exit codes: argparse's for bad input, the shell's for Ctrl-C
_DISK_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC), errno.EFBIG}


def run_cli(prog: str, work: Callable[[], T], debug: bool = False) -> T:
    """`work()`, with each expected failure turned into one line on stderr and an exit code."""
    try:
        return work()
    except KeyboardInterrupt:
        if debug:
            raise
        _fail(prog, "interrupted (Ctrl-C); files already saved are complete, the one being written is not "
                    "replaced", INTERRUPTED)
    except Exception as err:
        message = explain(err)
        if message is None or debug:
            raise
        _fail(prog, message, BAD_INPUT)
    raise AssertionError("unreachable")


def explain(err: BaseException) -> str | None:
    """The one line an expected failure deserves, or None for an unexpected one (a bug)."""
    if isinstance(err, OSError) and err.errno in _DISK_FULL:
        where = f" writing {err.filename!r}" if err.filename else ""
        return f"the disk is full{where} ({err.strerror}); free some space or write to another disk"
    if isinstance(err, (MemoryError, torch.OutOfMemoryError)):
        return (f"out of memory ({first_line(err) or type(err).__name__}); use a smaller --batch-size (or more "
                f"--grad-accum), --block-size or model")
    if isinstance(err, (ValueError, OSError, FloatingPointError)):
        return first_line(err)
    return None


def first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _fail(prog: str, message: str, code: int) -> None:
    sys.stderr.write(f"{prog}: error: {message}\n")
    raise SystemExit(code)
