"""A run owns its output directory: one run at a time, and never beside an earlier run's results.

Contract: `claim_output_dir(path, overwrite)` creates the directory if missing, takes an exclusive
non-blocking `flock` on the directory itself (no lock file is left behind; the kernel drops the
lock when the process ends, however it ends) and returns an `OutputDirClaim` to `release()` (or use
as a context manager). A directory another process holds is refused with one line (a filesystem that
cannot lock a directory, such as some NFS mounts, gets a warning and an unlocked run). A directory
holding results of an earlier run (`RESULT_FILES`, the report's plots/ directory among them) is
refused with one line unless `overwrite`, which moves exactly those files into
`previous-<YYYYmmdd-HHMMSS>/` inside the directory first.
Files that are not a run's results are never moved, overwritten or deleted.

`check_save_outputs(path, overwrite)`: the `--save-outputs` file must be creatable and must not be a
directory, nor an existing file unless `overwrite` (the run then replaces it).
"""

from __future__ import annotations

import fcntl
import logging
import os
import time
from typing import Optional

from mlperf_llama2.errors import UserError

log = logging.getLogger(__name__)

PREVIOUS_PREFIX = "previous-"
# Everything a run (LoadGen, main.py, run_accuracy.sh, `python -m mlperf_llama2.report`) writes into its
# log directory. tests/test_output_dir.py checks the plot names against report/plots.py.
RESULT_FILES = (
    "mlperf_log_summary.txt", "mlperf_log_detail.txt", "mlperf_log_accuracy.json", "mlperf_log_trace.json",
    "RUN_STOPPED.txt", "summary.json", "run_info.json", "sample_timings.csv", "accuracy.txt",
    "ttft.png", "tpot.png", "throughput.png", "output_lengths.png",
    "plots",  # the directory `python -m mlperf_llama2.report` writes its plots into (report/plots.py PLOTS_DIR)
)


class OutputDirClaim:
    """The held lock on a run's output directory."""

    def __init__(self, path: str, fd: int, moved_to: Optional[str]):
        self.path = path
        self.moved_to = moved_to  # where --overwrite put the earlier results, if anywhere
        self._fd: Optional[int] = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None

    def __enter__(self) -> "OutputDirClaim":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def earlier_results(path: str) -> list[str]:
    """Names of an earlier run's result files present in `path`, in RESULT_FILES order."""
    return [name for name in RESULT_FILES if os.path.lexists(os.path.join(path, name))]


def _previous_dir(path: str) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    candidate, n = os.path.join(path, PREVIOUS_PREFIX + stamp), 1
    while os.path.lexists(candidate):
        n += 1
        candidate = os.path.join(path, f"{PREVIOUS_PREFIX}{stamp}-{n}")
    return candidate


def move_earlier_results(path: str, names: list[str]) -> str:
    """Move `names` (files in `path`) into a new previous-<time>/ inside `path`; returns that directory."""
    target = _previous_dir(path)
    os.mkdir(target)
    for name in names:
        os.replace(os.path.join(path, name), os.path.join(target, name))
    return target


def claim_output_dir(path: str, overwrite: bool = False, flag: str = "--output-log-dir") -> OutputDirClaim:
    """Create, lock and clear (by moving, with `overwrite`) a run's output directory; UserError otherwise."""
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        raise UserError(f"{flag} {path}: cannot create it ({exc.strerror})") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise UserError(f"{flag} {path}: not writable")
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise UserError(f"{flag} {path}: another run is writing into this directory now; wait for it to "
                        "finish or choose another directory") from None
    except OSError as exc:  # e.g. NFS turns flock into a POSIX lock, which a read-only descriptor cannot take
        log.warning("%s %s: cannot lock it (%s); a second run into it would not be detected", flag, path,
                    exc.strerror)
    try:
        found = earlier_results(path)
        moved_to = None
        if found and not overwrite:
            shown = ", ".join(found[:4]) + (f" and {len(found) - 4} more" if len(found) > 4 else "")
            raise UserError(f"{flag} {path}: holds an earlier run's results ({shown}); choose another directory "
                            f"or pass --overwrite to move them into {PREVIOUS_PREFIX}<time>/ there")
        if found:
            try:
                moved_to = move_earlier_results(path, found)
            except OSError as exc:
                raise UserError(f"{flag} {path}: cannot move the earlier results aside ({exc.strerror})") from None
            log.info("--overwrite: moved the earlier run's %d file(s) to %s", len(found), moved_to)
    except BaseException:
        os.close(fd)
        raise
    return OutputDirClaim(path, fd, moved_to)


def run_in_progress(path: str) -> bool:
    """Whether a run holds `path`'s claim now (claim_output_dir's flock); False where it cannot be told."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)  # drops the shared lock taken here, if any
    return False


def check_save_outputs(path: str, overwrite: bool = False) -> None:
    """--save-outputs: a file path whose directory exists or can be made, not a directory, not taken."""
    if os.path.isdir(path):
        raise UserError(f"--save-outputs {path}: is a directory; pass a file path such as {os.path.join(path, 'outputs.json')}")
    if os.path.lexists(path) and not os.path.isfile(path):
        raise UserError(f"--save-outputs {path}: exists and is not a regular file")
    if os.path.isfile(path):
        if not overwrite:
            raise UserError(f"--save-outputs {path}: the file exists (an earlier run's outputs?); choose another "
                            "path or pass --overwrite to replace it")
        if not os.access(path, os.W_OK):
            raise UserError(f"--save-outputs {path}: the file is not writable")
    parent = os.path.dirname(os.path.abspath(path))
    if os.path.exists(parent) and not os.path.isdir(parent):
        raise UserError(f"--save-outputs {path}: {parent} is a file, not a directory")
    try:
        os.makedirs(parent, exist_ok=True)
    except OSError as exc:
        raise UserError(f"--save-outputs {path}: cannot create {parent} ({exc.strerror})") from None
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"--save-outputs {path}: directory {parent} is not writable")
