"""The SHA-256 of a file, read in blocks: the one definition every file identity in the package uses (run inputs,
calibration files, the demo's source model, truncate_accuracy_log.py's hash line of an accuracy log)."""

from __future__ import annotations

import hashlib

BLOCK_BYTES = 1 << 22


def sha256_file(path: str) -> str:
    """Hex SHA-256 of the whole file at `path`."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(BLOCK_BYTES), b""):
            digest.update(block)
    return digest.hexdigest()
