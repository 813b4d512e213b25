"""Runs one scheduled step on the model: builds the step's tensors, runs the forward, argmaxes on device.

Owns every tensor of the engine: the model, the paged KV cache `[2, layers, slots, kv_heads,
head_dim]` and, on CUDA, one captured graph per bucketed batch size for decode-only steps. Greedy
sampling happens on the device; EOS is masked (logit -inf) for sequences still below
min_new_tokens, as transformers' MinNewTokensLengthLogitsProcessor does. The only host sync per
step is reading the step's new tokens back. The CPU path has the same structure without Triton or
graphs.
"""

from __future__ import annotations

import logging
import time
from typing import Optional

import numpy as np
import torch

from mlperf_llama2.config import EngineConfig
from mlperf_llama2.engine.attention import AttentionMetadata
from mlperf_llama2.engine.block_manager import blocks_needed
from mlperf_llama2.engine.llama import LlamaForCausalLM
from mlperf_llama2.engine.ops import ops_for
from mlperf_llama2.engine.scheduler import ScheduledBatch
from mlperf_llama2.engine.sequence import Sequence

log = logging.getLogger(__name__)

CPU_DEFAULT_KV_BLOCKS = 512


def graph_batch_sizes(max_num_seqs: int) -> list[int]:
    sizes = [b for b in (1, 2, 4, 8) if b < max_num_seqs] + list(range(16, max_num_seqs, 16)) + [max_num_seqs]
    return sorted(set(sizes))


class ModelRunner:
    def __init__(self, model: LlamaForCausalLM, config: EngineConfig, eos_token_id: int, max_model_len: int,
                 device: torch.device, dtype: torch.dtype) -> None:
        self.model = model
        model.ops = ops_for(device)
        self.config = config
        self.eos_token_id = eos_token_id
        self.device = device
        self.dtype = dtype
        self.block_size = config.block_size
        self.max_blocks_per_seq = blocks_needed(max_model_len, self.block_size)
        s = model.shape
        if device.type == "cuda":
            self._warm_up_int8()
        self.num_blocks = self._count_kv_blocks()
        # one extra block at the end: scratch slots that padded graph rows write to and read from
        self.kv_cache = torch.zeros(2, s.num_layers, (self.num_blocks + 1) * self.block_size, s.num_kv_heads,
                                    s.head_dim, device=device, dtype=dtype)
        self.scratch_block = self.num_blocks
        log.info("KV cache: %d blocks of %d tokens (%.2f GiB)", self.num_blocks, self.block_size,
                 self.kv_cache.numel() * self.kv_cache.element_size() / 2**30)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        if device.type == "cuda" and config.cuda_graphs:
            self._capture_graphs()

    def _warm_up_int8(self) -> None:
        """int8 mode: autotune every GEMM shape and M bucket now, not during graph capture or a run."""
        from mlperf_llama2.engine.int8 import warm_up_gemms

        t0 = time.perf_counter()
        calls = warm_up_gemms(self.model, self.config.max_num_batched_tokens, self.dtype)
        if calls:
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()
            log.info("int8 GEMMs warmed up (%d shape x M buckets) in %.1f s", calls, time.perf_counter() - t0)

    # ---- sizing -------------------------------------------------------------------------------
    def _count_kv_blocks(self) -> int:
        if self.config.num_kv_blocks is not None:
            return self.config.num_kv_blocks
        if self.device.type != "cuda":
            return CPU_DEFAULT_KV_BLOCKS
        s = self.model.shape
        block_bytes = 2 * s.num_layers * self.block_size * s.num_kv_heads * s.head_dim * self.dtype.itemsize
        free, _ = torch.cuda.mem_get_info(self.device)
        # keep room for activations of a full-budget step (logits and the MLP's widest tensor dominate)
        reserve = self.config.max_num_batched_tokens * (4 * s.intermediate_size + 8 * s.hidden_size) * 2 + 2**30
        blocks = int((free * self.config.kv_cache_memory_fraction - reserve) // block_bytes) - 1
        if blocks < self.max_blocks_per_seq:
            raise RuntimeError(f"only {blocks} KV blocks fit in GPU memory; one sequence needs "
                               f"{self.max_blocks_per_seq}: use a smaller model or more memory")
        return blocks

    # ---- one step -----------------------------------------------------------------------------
    @torch.inference_mode()
    def run(self, batch: ScheduledBatch) -> list[int]:
        """The greedy next token after each item's last scheduled position (meaningless for partial chunks)."""
        n = len(batch.items)
        if batch.is_decode_only and self.graphs and n <= max(self.graphs):
            return self._run_graph(batch)
        input_ids, positions, meta, last_rows, suppress = self._prepare(batch)
        hidden = self.model(input_ids, positions, self.kv_cache, meta)
        return self._sample(hidden[last_rows], suppress).tolist()

    def _sample(self, hidden: torch.Tensor, suppress_eos: torch.Tensor) -> torch.Tensor:
        logits = self.model.logits(hidden)  # [N, vocab]
        logits[:, self.eos_token_id].masked_fill_(suppress_eos, float("-inf"))
        return logits.argmax(dim=-1)  # [N]

    def _slots(self, seq: Sequence, start: int, stop: int) -> np.ndarray:
        pos = np.arange(start, stop)
        table = np.asarray(seq.block_table, dtype=np.int64)
        return table[pos // self.block_size] * self.block_size + pos % self.block_size

    def _prepare(self, batch: ScheduledBatch):
        dev, bs = self.device, self.block_size
        decodes = batch.items[:batch.num_decodes]  # one new token each, listed first
        prefills = batch.items[batch.num_decodes:]
        d_pos = [seq.num_computed_tokens for seq, _ in decodes]
        ids = [seq.token_at(p) for (seq, _), p in zip(decodes, d_pos)]
        pos = [np.asarray(d_pos, dtype=np.int64)]
        slots = [np.asarray([seq.block_table[p // bs] * bs + p % bs for (seq, _), p in zip(decodes, d_pos)],
                            dtype=np.int64)]
        for seq, n in prefills:
            start = seq.num_computed_tokens
            ids.extend(seq.tokens(start, start + n))
            pos.append(np.arange(start, start + n))
            slots.append(self._slots(seq, start, start + n))
        last_rows = np.cumsum([n for _, n in batch.items]) - 1
        meta = AttentionMetadata(
            slot_mapping=torch.from_numpy(np.concatenate(slots)).to(dev), num_decodes=len(decodes), block_size=bs,
        )
        if decodes:
            ctx = [p + 1 for p in d_pos]
            meta.context_lens = torch.tensor(ctx, dtype=torch.int32, device=dev)
            meta.block_tables = torch.from_numpy(self._block_table_array([s for s, _ in decodes])).to(dev)
            if dev.type != "cuda":
                meta.decode_context_lens = tuple(ctx)
                meta.decode_context_slots = torch.from_numpy(
                    np.concatenate([self._slots(s, 0, c) for (s, _), c in zip(decodes, ctx)]))
        if prefills:
            q_lens = [n for _, n in prefills]
            k_lens = [seq.num_computed_tokens + n for seq, n in prefills]
            meta.prefill_q_lens, meta.prefill_k_lens = tuple(q_lens), tuple(k_lens)
            meta.cu_seqlens_q = torch.tensor(np.concatenate([[0], np.cumsum(q_lens)]), dtype=torch.int32, device=dev)
            meta.cu_seqlens_k = torch.tensor(np.concatenate([[0], np.cumsum(k_lens)]), dtype=torch.int32, device=dev)
            meta.max_seqlen_q, meta.max_seqlen_k = max(q_lens), max(k_lens)
            if any(seq.num_computed_tokens for seq, _ in prefills):
                meta.context_slots = torch.from_numpy(
                    np.concatenate([self._slots(s, 0, k) for (s, _), k in zip(prefills, k_lens)])).to(dev)
        suppress = torch.tensor([seq.suppress_eos for seq, _ in batch.items], device=dev)
        return (torch.tensor(ids, dtype=torch.int64, device=dev), torch.from_numpy(np.concatenate(pos)).to(dev),
                meta, torch.from_numpy(last_rows).to(dev), suppress)

    def _block_table_array(self, seqs: list[Sequence], rows: Optional[int] = None) -> np.ndarray:
        table = np.full((rows or len(seqs), self.max_blocks_per_seq), self.scratch_block, dtype=np.int32)
        for i, seq in enumerate(seqs):
            table[i, :len(seq.block_table)] = seq.block_table
        return table

    # ---- CUDA graphs for decode-only steps ----------------------------------------------------
    def _capture_graphs(self) -> None:
        t0 = time.perf_counter()
        max_bs = self.config.max_num_seqs
        dev = self.device
        scratch_slot = self.scratch_block * self.block_size
        self.g_input_ids = torch.zeros(max_bs, dtype=torch.int64, device=dev)
        self.g_positions = torch.zeros(max_bs, dtype=torch.int64, device=dev)
        self.g_slots = torch.full((max_bs,), scratch_slot, dtype=torch.int64, device=dev)
        self.g_block_tables = torch.full((max_bs, self.max_blocks_per_seq), self.scratch_block, dtype=torch.int32,
                                         device=dev)
        self.g_context_lens = torch.ones(max_bs, dtype=torch.int32, device=dev)
        self.g_suppress = torch.zeros(max_bs, dtype=torch.bool, device=dev)
        self.g_tokens: dict[int, torch.Tensor] = {}
        pool = None
        with torch.inference_mode():
            for bs in reversed(graph_batch_sizes(max_bs)):
                meta = AttentionMetadata(slot_mapping=self.g_slots[:bs], num_decodes=bs, block_size=self.block_size,
                                         block_tables=self.g_block_tables[:bs], context_lens=self.g_context_lens[:bs])

                def step(bs=bs, meta=meta):
                    hidden = self.model(self.g_input_ids[:bs], self.g_positions[:bs], self.kv_cache, meta)
                    return self._sample(hidden, self.g_suppress[:bs])

                step()  # warm-up: compiles kernels, picks cuBLAS algorithms
                torch.cuda.synchronize(dev)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, pool=pool):
                    self.g_tokens[bs] = step()
                pool = graph.pool()
                self.graphs[bs] = graph
        torch.cuda.synchronize(dev)
        log.info("captured %d decode graphs (batch 1..%d) in %.1f s", len(self.graphs), max_bs,
                 time.perf_counter() - t0)

    def _run_graph(self, batch: ScheduledBatch) -> list[int]:
        n = len(batch.items)
        bs = min(b for b in self.graphs if b >= n)
        seqs = [seq for seq, _ in batch.items]
        positions = [seq.num_computed_tokens for seq in seqs]
        slots = np.full(bs, self.scratch_block * self.block_size, dtype=np.int64)
        slots[:n] = [seq.block_table[p // self.block_size] * self.block_size + p % self.block_size
                     for seq, p in zip(seqs, positions)]
        ctx = np.ones(bs, dtype=np.int32)
        ctx[:n] = np.asarray(positions) + 1
        ids = np.zeros(bs, dtype=np.int64)
        ids[:n] = [seq.token_at(p) for seq, p in zip(seqs, positions)]  # a 1-token prompt chunk is not the last token
        pos = np.zeros(bs, dtype=np.int64)
        pos[:n] = positions
        sup = np.zeros(bs, dtype=bool)
        sup[:n] = [seq.suppress_eos for seq in seqs]
        self.g_input_ids[:bs].copy_(torch.from_numpy(ids), non_blocking=True)
        self.g_positions[:bs].copy_(torch.from_numpy(pos), non_blocking=True)
        self.g_slots[:bs].copy_(torch.from_numpy(slots), non_blocking=True)
        self.g_context_lens[:bs].copy_(torch.from_numpy(ctx), non_blocking=True)
        self.g_suppress[:bs].copy_(torch.from_numpy(sup), non_blocking=True)
        self.g_block_tables[:bs].copy_(torch.from_numpy(self._block_table_array(seqs, rows=bs)), non_blocking=True)
        self.graphs[bs].replay()
        return self.g_tokens[bs][:n].tolist()
