"""User-facing failures: one clear line on stderr, exit code 2, no traceback unless asked for.

Code anywhere in the package raises `UserError` for bad input it can name; the entry points wrap
their `main` in `run_cli`, which turns it (and Ctrl-C or SIGTERM) into a single line and an exit code.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import traceback
from typing import Callable, Sequence

EXIT_USER_ERROR = 2


class UserError(Exception):
    """Bad input or environment the user can fix. The message is one line: what is wrong, what to do."""


class Interrupted(KeyboardInterrupt):
    """A signal (SIGINT or SIGTERM) stopped the run; the process exits 128 + the signal number."""

    def __init__(self, signum: int = signal.SIGINT, detail: str = "LoadGen logs so far are kept"):
        super().__init__(signum)
        self.signum = int(signum)
        self.detail = detail

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

    def message(self) -> str:
        return f"interrupted by {self.signal_name}: run stopped before completion ({self.detail})"


def one_line(message: str) -> str:
    """A message on one line: a library's multi-line text inside a UserError is joined with spaces."""
    return " ".join(part.strip() for part in message.splitlines() if part.strip())


_pending: list[int] = []  # signals received by _raise_interrupted, whether or not their exception arrived


def _raise_interrupted(signum, _frame) -> None:
    _pending.append(signum)
    raise Interrupted(signum)


def raise_if_interrupted() -> None:
    """Raise again the Interrupted of a signal that was received but never arrived: Python drops an exception a
    signal handler raises while it runs some of its own callbacks (an import's module-lock cleanup prints
    "Exception ignored ...") and the run would go on. Called at the run's checkpoints and when main returns."""
    if _pending:
        raise Interrupted(_pending[0])


def _verbose_requested(argv: Sequence[str]) -> bool:
    return "--verbose" in argv or os.environ.get("MLPERF_LLAMA2_VERBOSE") == "1"


def run_cli(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None) -> int:
    """Run an entry point's `main(argv)`; map UserError to one line + exit 2. Returns the exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    _pending.clear()
    previous = {}
    if threading.current_thread() is threading.main_thread():
        # SIGTERM ends a run like Ctrl-C: one line, no traceback; both go through _raise_interrupted, which
        # remembers them should Python swallow the exception (the handlers before are put back on return)
        previous = {sig: signal.signal(sig, _raise_interrupted) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        code = main(args)
        raise_if_interrupted()
        return 0 if code is None else int(code)
    except UserError as exc:
        if _verbose_requested(args):
            traceback.print_exc()
        prog = os.path.basename(sys.argv[0]) or "mlperf_llama2"
        print(f"{prog}: error: {one_line(str(exc))}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt as exc:
        interrupted = exc if isinstance(exc, Interrupted) else Interrupted(signal.SIGINT)
        prog = os.path.basename(sys.argv[0]) or "mlperf_llama2"
        print(f"{prog}: error: {interrupted.message()}", file=sys.stderr)
        return interrupted.exit_code
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def configure_logging(verbose: bool = False) -> None:
    """Entry points only: log to stderr, INFO by default, DEBUG with --verbose."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
