"""The paged KV cache's bookkeeping: which fixed-size blocks of cache slots each sequence owns.

Pure Python, no torch. Block `b` holds cache slots `b * block_size ... (b + 1) * block_size - 1`;
a sequence's token at position `p` lives in slot `block_table[p // block_size] * block_size +
p % block_size`. Blocks are taken from a free list as sequences grow and returned when they finish
or are preempted.
"""

from __future__ import annotations

import logging
from collections import deque

from mlperf_llama2.engine.sequence import Sequence

log = logging.getLogger(__name__)


def blocks_needed(num_tokens: int, block_size: int) -> int:
    return -(-num_tokens // block_size)


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int) -> None:
        if num_blocks < 1 or block_size < 1:
            raise ValueError(f"need num_blocks >= 1 and block_size >= 1, got {num_blocks}, {block_size}")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self._free: deque[int] = deque(range(num_blocks))

    @property
    def num_free_blocks(self) -> int:
        return len(self._free)

    def extra_blocks_for(self, seq: Sequence, num_new_tokens: int) -> int:
        """Blocks `seq` must gain so that its first num_computed + num_new tokens have slots."""
        target = seq.num_computed_tokens + num_new_tokens
        return max(0, blocks_needed(target, self.block_size) - len(seq.block_table))

    def can_allocate(self, seq: Sequence, num_new_tokens: int) -> bool:
        return self.extra_blocks_for(seq, num_new_tokens) <= len(self._free)

    def allocate(self, seq: Sequence, num_new_tokens: int) -> None:
        extra = self.extra_blocks_for(seq, num_new_tokens)
        if extra > len(self._free):
            raise RuntimeError(f"request {seq.request_id}: needs {extra} blocks, {len(self._free)} free")
        for _ in range(extra):
            seq.block_table.append(self._free.popleft())

    def free(self, seq: Sequence) -> None:
        self._free.extend(seq.block_table)
        seq.block_table = []
