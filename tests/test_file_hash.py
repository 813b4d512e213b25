"""file_hash.sha256_file: the block-wise hash equals hashlib's of the whole file, across block boundaries."""

from __future__ import annotations

import hashlib
import os

from mlperf_llama2.file_hash import BLOCK_BYTES, sha256_file


def test_block_wise_hash_equals_the_whole_files(tmp_path):
    for size in (0, 1, BLOCK_BYTES - 1, BLOCK_BYTES, 2 * BLOCK_BYTES + 7):
        data = os.urandom(size)
        path = tmp_path / f"f{size}"
        path.write_bytes(data)
        assert sha256_file(str(path)) == hashlib.sha256(data).hexdigest(), size
