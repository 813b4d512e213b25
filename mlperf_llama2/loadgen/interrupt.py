"""Ctrl-C and SIGTERM during a LoadGen test: the process ends within seconds, LoadGen's logs kept.

LoadGen's StartTest blocks its calling thread inside C++ and offers no abort, and Python runs
signal handlers only on the main thread between bytecodes. So the test runs in a worker thread
while the main thread waits on an event. On SIGINT or SIGTERM the main thread:

1. answers every outstanding query, and every later one on arrival, with an empty response
   (`abort`), and stops the backend's generation. An Offline test (one query) then returns at once;
   a Server test returns once LoadGen's schedule has issued its last query;
2. waits up to `grace_s` for StartTest to return. If it does, it stops the backend (bounded wait),
   terminates child processes and raises `Interrupted`; the caller's teardown (SUT and QSL
   destroyed, LoadGen's logs closed) runs and the entry point prints one line and exits
   128 + signal number (130 for SIGINT, 143 for SIGTERM);
3. otherwise (a Server schedule with queries still to issue) stops the backend with a bounded wait,
   terminates child processes, prints the same one line and leaves with `os._exit`. LoadGen's log
   files keep everything its logging thread had written (its periodic flushes); the summary of an
   unfinished test is never written in either case.

Both ways leave `RUN_STOPPED.txt` in the log directory (`write_stop_note`): LoadGen's summary of
a stopped Offline run may still read VALID (every sample was answered, if empty), and the note
says it is not a result. A second signal during the grace period changes nothing. Called from a thread other than the
main one (where handlers cannot be installed), the test simply runs in the calling thread.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from typing import Callable

from mlperf_llama2.errors import Interrupted

log = logging.getLogger(__name__)

SIGNALS = (signal.SIGINT, signal.SIGTERM)
GRACE_S = 4.0  # wait for StartTest to return after the abort
STOP_TIMEOUT_S = 2.0  # wait for the backend to stop before a hard exit
POLL_S = 0.2


def run_interruptibly(
    start_test: Callable[[], None],
    *,
    abort: Callable[[str], object],
    stop: Callable[[], None],
    log_dir: str,
    grace_s: float = GRACE_S,
) -> None:
    """Run `start_test()` (LoadGen's StartTest) so that SIGINT/SIGTERM end the run as described above."""
    if threading.current_thread() is not threading.main_thread():
        start_test()
        return
    done = threading.Event()
    errors: list[BaseException] = []

    def target() -> None:
        try:
            start_test()
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread
            errors.append(exc)
        finally:
            done.set()

    received: list[int] = []

    def on_signal(signum, _frame) -> None:
        received.append(signum)

    previous = {sig: signal.signal(sig, on_signal) for sig in SIGNALS}
    try:
        worker = threading.Thread(target=target, name="loadgen-start-test", daemon=True)
        worker.start()
        while not done.wait(POLL_S):
            if received:
                break
        if not done.is_set():
            signum = received[0]
            interrupted = Interrupted(signum, f"LoadGen logs so far are in {log_dir}")
            log.debug("%s received: answering outstanding queries and stopping the backend", interrupted.signal_name)
            abort(f"interrupted by {interrupted.signal_name}")
            write_stop_note(log_dir, f"interrupted by {interrupted.signal_name}")
            if not done.wait(grace_s):
                hard_exit(interrupted, stop)
            _stop_bounded(stop)  # idempotent: the caller's teardown stops it again, at no cost
            terminate_children()
            raise interrupted
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if errors:
        raise errors[0]


STOP_NOTE = "RUN_STOPPED.txt"


def write_stop_note(log_dir: str, reason: str) -> None:
    """Mark a LoadGen log directory as a stopped run, whatever its summary says."""
    try:
        with open(os.path.join(log_dir, STOP_NOTE), "w", encoding="utf-8") as f:
            f.write(f"This run was stopped before completion ({reason}) at {time.strftime('%Y-%m-%d %H:%M:%S')}.\n"
                    "Samples were answered empty; the LoadGen logs beside this file are not a result.\n")
    except OSError:
        log.warning("could not write %s in %s", STOP_NOTE, log_dir)


def hard_exit(interrupted: Interrupted, stop: Callable[[], None]) -> None:
    """LoadGen cannot be unblocked: stop the backend (bounded), end children, print the line, os._exit."""
    _stop_bounded(stop)
    terminate_children()
    for handler in logging.getLogger().handlers:
        handler.flush()
    prog = os.path.basename(sys.argv[0]) or "mlperf_llama2"
    print(f"{prog}: error: {interrupted.message()}", file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(interrupted.exit_code)


def _stop_bounded(stop: Callable[[], None]) -> None:
    """Stop the backend, waiting at most STOP_TIMEOUT_S (a stuck device must not keep the process alive)."""
    stopper = threading.Thread(target=_quietly, args=(stop,), name="stop-backend", daemon=True)
    stopper.start()
    stopper.join(STOP_TIMEOUT_S)


def _quietly(fn: Callable[[], None]) -> None:
    try:
        fn()
    except Exception:  # noqa: BLE001 - the process is exiting anyway
        log.debug("stopping the backend failed", exc_info=True)


def child_pids() -> list[int]:
    """Direct children of this process (Linux /proc; empty elsewhere)."""
    me = os.getpid()
    children = []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read().decode(errors="replace")
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[-1].split()  # after "pid (comm)": state, ppid, ...
        if len(fields) > 1 and fields[1] == str(me):
            children.append(int(entry))
    return children


def terminate_children(timeout_s: float = 1.0) -> None:
    """SIGTERM every child process, then SIGKILL those still alive after `timeout_s`."""
    pids = child_pids()
    for pid in pids:
        _kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while pids and time.monotonic() < deadline:
        pids = [pid for pid in pids if _reap(pid)]
        time.sleep(0.05)
    for pid in pids:
        _kill(pid, signal.SIGKILL)


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except OSError:
        pass


def _reap(pid: int) -> bool:
    """True while `pid` is still running."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        return os.path.exists(f"/proc/{pid}")
