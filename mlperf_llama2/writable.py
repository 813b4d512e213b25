"""Output paths checked before work starts: a file or directory a tool will write is writable now, or one line.

The check writes and removes a probe file instead of asking `os.access` (which says yes to root on a
read-only directory and knows nothing of read-only mounts), and never creates or truncates the target.
"""

from __future__ import annotations

import os
import tempfile

from mlperf_llama2.errors import UserError


def _probe(directory: str, what: str) -> None:
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-probe-", dir=directory)
    except OSError as exc:
        raise UserError(f"{what}: cannot write in {directory} ({exc.strerror or exc})") from None
    os.close(fd)
    os.remove(probe)


def check_writable_file(path: str, what: str) -> None:
    """`path` can be written as a file: not a directory, its directory exists and takes a new file."""
    if os.path.isdir(path):
        raise UserError(f"{what} {path} is a directory; give a file name")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise UserError(f"{what} {path}: directory {parent} does not exist")
    if os.path.exists(path) and not os.access(path, os.W_OK):
        raise UserError(f"{what} {path} exists and is read-only")
    _probe(parent, f"{what} {path}")


def check_writable_dir(path: str, what: str) -> None:
    """`path` is (or can be made) a directory that takes new files; created when missing."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise UserError(f"{what} {path} is a file, not a directory")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        raise UserError(f"{what} {path}: cannot create it ({exc.strerror or exc})") from None
    _probe(path, f"{what} {path}")
