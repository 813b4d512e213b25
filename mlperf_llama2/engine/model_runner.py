"""Runs one scheduled step on the model: builds the step's tensors, runs the forward, argmaxes on device.

Owns every tensor of the engine: the model, the paged KV cache `[2, layers, slots, kv_heads,
head_dim]` (model dtype, or 8 bits with static per-layer, per-KV-head scales: `kv_cache.py`) and,
on CUDA, one captured graph per bucketed batch size for decode-only steps (and, with
`graph_mixed_tokens`, for steps that prefill prompt chunks too: every token a row, `_flat_rows`; with
`flat_row_groups` a second set for those, consecutive rows of a sequence attending together,
`flat_rows.row_groups`).
Greedy sampling happens on the device; EOS is masked (logit -inf) for sequences still below min_new_tokens, as
transformers' MinNewTokensLengthLogitsProcessor does. `launch` queues a step
and returns (inputs up in one copy, tokens back through `step_io`); the only host sync is reading a
step's tokens, which the engine does after queuing the next. The CPU path has the same structure
without Triton, graphs or fused kernels.
"""

from __future__ import annotations

import logging
import time
from typing import Optional

import numpy as np
import torch

from mlperf_llama2.engine.config import CPU_DEFAULT_KV_BLOCKS, EngineConfig
from mlperf_llama2.engine.attention import AttentionMetadata
from mlperf_llama2.engine.flat_rows import row_groups
from mlperf_llama2.engine import kv_cache
from mlperf_llama2.engine.block_manager import blocks_needed
from mlperf_llama2.engine.llama import LlamaForCausalLM
from mlperf_llama2.engine.ops import FusedOps, ops_for
from mlperf_llama2.engine.scheduler import ScheduledBatch
from mlperf_llama2.engine.sequence import Sequence
from mlperf_llama2.engine.step_io import Staging, StepOutput

log = logging.getLogger(__name__)


def graph_batch_sizes(max_num_seqs: int) -> list[int]:
    sizes = [b for b in (1, 2, 4, 8) if b < max_num_seqs] + list(range(16, max_num_seqs, 16)) + [max_num_seqs]
    return sorted(set(sizes))


class ModelRunner:
    overlap_capable = True  # launch() queues a step; the engine may read it back after queuing the next

    def __init__(self, model: LlamaForCausalLM, config: EngineConfig, eos_token_id: int, max_model_len: int,
                 device: torch.device, dtype: torch.dtype, kv_scales: Optional[torch.Tensor] = None) -> None:
        """kv_scales: [2, layers, kv_heads] float32 static K/V scales, required by `kv_cache_dtype` fp8/int8."""
        self.kv_spec = kv_cache.KVCacheSpec(config.kv_cache_dtype, kv_scales)
        self.kv_spec.check_shape(model.shape.num_layers, model.shape.num_kv_heads)
        self.model = model
        model.ops = ops_for(device, config.ops)
        self.config = config
        self.eos_token_id = eos_token_id
        self.device = device
        self.dtype = dtype
        self.block_size = config.block_size
        self.max_blocks_per_seq = blocks_needed(max_model_len, self.block_size)
        s = model.shape
        if device.type == "cuda":
            from mlperf_llama2.engine import pdl
            from mlperf_llama2.engine.quant_plan import apply_gemm

            # one switch for the process: the last runner built sets it
            pdl.set_enabled(config.pdl and torch.cuda.get_device_capability(device)[0] >= 9)
            if config.pdl:
                log.info("programmatic dependent launch: %s", "on (experimental)" if pdl.enabled() else
                         "off: it needs an sm_90+ GPU")

            paths = apply_gemm(model, config.gemm, device, config.fp8_accumulation)
            if paths:
                log.info("8-bit GEMMs (--engine-gemm %s): %s", config.gemm,
                         ", ".join(f"{n} Linears {path}" for path, n in sorted(paths.items())))
            self._warm_up_gemms()
        self.num_blocks = self._count_kv_blocks()
        # one extra block at the end: scratch slots that padded graph rows write to and read from
        self.kv_cache = kv_cache.allocate(self.kv_spec, s.num_layers, (self.num_blocks + 1) * self.block_size,
                                          s.num_kv_heads, s.head_dim, device, dtype)
        self.kv_scales = self.kv_spec.layer_scales(device)  # [L, 2, KV] float32, or None (auto)
        self.scratch_block = self.num_blocks
        log.info("KV cache: %d blocks of %d tokens (%.2f GiB, %s)", self.num_blocks, self.block_size,
                 self.kv_cache.numel() * self.kv_cache.element_size() / 2**30,
                 str(self.kv_cache.dtype).removeprefix("torch."))
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}  # decode-only steps, by rows
        self.flat_graphs: dict[int, torch.cuda.CUDAGraph] = {}  # steps with prompt chunks (--graph-mixed-tokens)
        self._staging = Staging(device)
        self._last_tokens: Optional[torch.Tensor] = None  # the last launched step's tokens, on the device
        # the whole config (whole_config.py): its Triton kernels with the fused ops, else its eager path, which
        # loops over sequences with host-side lengths (no graphs)
        wc = model.whole_config
        if wc is not None and model.ops is FusedOps:
            from mlperf_llama2.engine.whole_config import use_kernels

            use_kernels(model, self.kv_scales)
        eager_wc = wc is not None and not wc.fused
        self._host_contexts = device.type != "cuda" or eager_wc
        # mixed steps as rows of the decode kernel: not for the whole config (its prompt attention has its own
        # quantizers and kernels; preflight refuses the flag with it)
        self.graph_mixed_tokens = config.graph_mixed_tokens if wc is None else 0
        self.flat_steps = 0  # steps with prompt chunks run as decode rows (_launch_flat)
        self.flat_row_groups = config.flat_row_groups  # their attention by groups of rows (CUDA; read at capture)
        if device.type == "cuda" and config.cuda_graphs and not eager_wc:
            self._capture_graphs()

    def _warm_up_gemms(self) -> None:
        """8-bit Linears: autotune or compile every GEMM shape and M bucket now, not during graph capture or a run."""
        from mlperf_llama2.engine.quant_plan import warm_up_gemms

        t0 = time.perf_counter()
        calls = warm_up_gemms(self.model, self.config.max_num_batched_tokens, self.dtype)
        if calls:
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()
            log.info("8-bit GEMMs warmed up (%d shape x M buckets) in %.1f s", calls, time.perf_counter() - t0)

    # ---- sizing -------------------------------------------------------------------------------
    def _count_kv_blocks(self) -> int:
        if self.config.num_kv_blocks is not None:
            return self.config.num_kv_blocks
        if self.device.type != "cuda":
            return CPU_DEFAULT_KV_BLOCKS
        s = self.model.shape
        block_bytes = (2 * s.num_layers * self.block_size * s.num_kv_heads * s.head_dim
                       * kv_cache.element_size(self.kv_spec, self.dtype))
        # memory the caching allocator still holds (the weight build's temporaries: ~4.5 GiB for a 70B in FP8)
        # is free for the cache; without this the 2026-12-05 H100 FP8 run sized 1,762 blocks where 3,485 fit
        torch.cuda.synchronize(self.device)
        torch.cuda.empty_cache()
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
        return self.launch(batch).tokens()

    @torch.inference_mode()
    def launch(self, batch: ScheduledBatch) -> StepOutput:
        """Queue the step on the device and return at once; `StepOutput.tokens()` waits for its tokens.

        A decode item whose input token is still in flight (`seq.num_inflight`) takes it from the
        previous launch's device output (row `seq.inflight_row`), so the next step can be queued
        before the last one's tokens reach the host.
        """
        n = len(batch.items)
        if batch.is_decode_only and self.graphs and n <= max(self.graphs):
            tokens = self._launch_graph(batch)
        elif not batch.is_decode_only and batch.num_tokens <= self.graph_mixed_tokens:
            tokens = self._launch_flat(batch)
        else:
            input_ids, positions, meta, last_rows, suppress = self._prepare(batch)
            hidden = self.model(input_ids, positions, self.kv_cache, meta, self.kv_scales)
            tokens = self._sample(hidden[last_rows], suppress)
        self._last_tokens = tokens
        return self._readback(tokens)

    def _readback(self, tokens: torch.Tensor) -> StepOutput:
        if self.device.type != "cuda":
            return StepOutput(tokens.clone(), None)
        buf = self._staging.next_tokens(tokens.shape[0])
        buf.copy_(tokens, non_blocking=True)
        done = torch.cuda.Event()
        done.record()
        return StepOutput(buf, done)

    def _sample(self, hidden: torch.Tensor, suppress_eos: torch.Tensor) -> torch.Tensor:
        logits = self.model.logits(hidden)  # [N, vocab]
        logits[:, self.eos_token_id].masked_fill_(suppress_eos, float("-inf"))
        return logits.argmax(dim=-1)  # [N]

    def _slots(self, seq: Sequence, start: int, stop: int) -> np.ndarray:
        pos = np.arange(start, stop)
        table = np.asarray(seq.block_table, dtype=np.int64)
        return table[pos // self.block_size] * self.block_size + pos % self.block_size

    def _input_ids(self, seqs: list[Sequence], positions: list[int]) -> tuple[list[int], list[int], list[int]]:
        """Host ids of one-token items (0 where the token is in flight) and the in-flight (rows, source rows)."""
        ids, rows, src = [], [], []
        for i, (seq, p) in enumerate(zip(seqs, positions)):
            if p < seq.num_known_tokens:
                ids.append(seq.token_at(p))  # a 1-token prompt chunk is not the last token
            else:
                ids.append(0)
                rows.append(i)
                src.append(seq.inflight_row)
        return ids, rows, src

    def _fill_inflight(self, ids: torch.Tensor, rows: Optional[torch.Tensor], src: Optional[torch.Tensor]) -> None:
        """ids[rows] = the previous launch's tokens[src], on the device (queued before this step runs)."""
        if rows is not None and rows.numel():
            ids[rows] = self._last_tokens[src]

    def _prepare(self, batch: ScheduledBatch):
        bs = self.block_size
        decodes = batch.items[:batch.num_decodes]  # one new token each, listed first
        prefills = batch.items[batch.num_decodes:]
        d_seqs = [seq for seq, _ in decodes]
        d_pos = [seq.num_computed_tokens for seq in d_seqs]
        ids, fix_rows, fix_src = self._input_ids(d_seqs, d_pos)
        pos = [np.asarray(d_pos, dtype=np.int64)]
        slots = [np.asarray([seq.block_table[p // bs] * bs + p % bs for seq, p in zip(d_seqs, d_pos)],
                            dtype=np.int64)]
        for seq, n in prefills:
            start = seq.num_computed_tokens
            ids.extend(seq.tokens(start, start + n))
            pos.append(np.arange(start, start + n))
            slots.append(self._slots(seq, start, start + n))
        last_rows = np.cumsum([n for _, n in batch.items]) - 1
        host = {"ids": np.asarray(ids, dtype=np.int64), "pos": np.concatenate(pos), "slots": np.concatenate(slots),
                "last_rows": last_rows,
                "suppress": np.asarray([seq.suppress_eos for seq, _ in batch.items], dtype=np.int64),
                "fix_rows": np.asarray(fix_rows, dtype=np.int64), "fix_src": np.asarray(fix_src, dtype=np.int64)}
        if decodes:
            ctx = [p + 1 for p in d_pos]
            host["ctx"] = np.asarray(ctx, dtype=np.int64)
            host["tables"] = self._block_table_array(d_seqs).astype(np.int64).ravel()
            if self._host_contexts:
                host["decode_slots"] = np.concatenate([self._slots(s, 0, c) for s, c in zip(d_seqs, ctx)])
        if prefills:
            q_lens = [n for _, n in prefills]
            k_lens = [seq.num_computed_tokens + n for seq, n in prefills]
            host["cu_q"] = np.concatenate([[0], np.cumsum(q_lens)])
            host["cu_k"] = np.concatenate([[0], np.cumsum(k_lens)])
            if any(seq.num_computed_tokens for seq, _ in prefills):
                host["context_slots"] = np.concatenate([self._slots(s, 0, k) for (s, _), k in zip(prefills, k_lens)])
        dev = dict(zip(host, self._staging.put(list(host.values()))))  # one host-to-device copy
        self._fill_inflight(dev["ids"], dev["fix_rows"], dev["fix_src"])
        meta = AttentionMetadata(slot_mapping=dev["slots"], num_decodes=len(decodes), block_size=bs)
        if decodes:
            meta.context_lens = dev["ctx"].to(torch.int32)
            meta.block_tables = dev["tables"].view(len(decodes), self.max_blocks_per_seq).to(torch.int32)
            if self._host_contexts:
                meta.decode_context_lens = tuple(ctx)
                meta.decode_context_slots = dev["decode_slots"]
        if prefills:
            meta.prefill_q_lens, meta.prefill_k_lens = tuple(q_lens), tuple(k_lens)
            meta.cu_seqlens_q = dev["cu_q"].to(torch.int32)
            meta.cu_seqlens_k = dev["cu_k"].to(torch.int32)
            meta.max_seqlen_q, meta.max_seqlen_k = max(q_lens), max(k_lens)
            meta.context_slots = dev.get("context_slots")
        return dev["ids"], dev["pos"], meta, dev["last_rows"], dev["suppress"].bool()

    def _flat_rows(self, batch: ScheduledBatch, rows: int) -> dict:
        """The step laid out one row per token, decodes and prompt tokens alike, padded to `rows`.

        A prompt token at position p is a decode row whose context is the cache up to p: rope_store writes
        every row's K and V before attention reads them, so it attends to its prefix, the chunk's earlier
        tokens and itself, as causal prefill does. Padded rows write to and read from the scratch block.
        Returns host arrays: ids, pos, slots, ctx, suppress [rows]; tables [rows, max_blocks]; with
        `flat_row_groups` on CUDA also groups [rows, 3] (consecutive rows of one sequence, which paged_rows_attention
        reads together: flat_rows.row_groups);
        last_rows [items] (the row whose token each item samples); fix_rows / fix_src (in-flight ids)."""
        bs = self.block_size
        out = {"ids": np.zeros(rows, np.int64), "pos": np.zeros(rows, np.int64),
               "slots": np.full(rows, self.scratch_block * bs, np.int64), "ctx": np.ones(rows, np.int64),
               "suppress": np.zeros(rows, np.int64),
               "tables": np.full((rows, self.max_blocks_per_seq), self.scratch_block, np.int32)}
        same = np.zeros(rows, bool)  # row i is the token after row i - 1 of the same sequence
        last_rows, fix_rows, fix_src, r = [], [], [], 0
        for seq, n in batch.items:
            start = seq.num_computed_tokens
            known = min(n, seq.num_known_tokens - start)  # only a decode's input token can be in flight
            out["ids"][r:r + known] = seq.tokens(start, start + known)
            if known < n:
                fix_rows.append(r + known)
                fix_src.append(seq.inflight_row)
            out["pos"][r:r + n] = np.arange(start, start + n)
            out["slots"][r:r + n] = self._slots(seq, start, start + n)
            out["ctx"][r:r + n] = out["pos"][r:r + n] + 1
            out["tables"][r:r + n, :len(seq.block_table)] = seq.block_table
            out["suppress"][r:r + n] = seq.suppress_eos
            same[r + 1:r + n] = True
            r += n
            last_rows.append(r - 1)
        if self.flat_row_groups and self.device.type == "cuda":  # only the grouped-row kernel reads them
            out["groups"] = row_groups(out["ctx"], same)
        out.update(last_rows=np.asarray(last_rows, np.int64), fix_rows=np.asarray(fix_rows, np.int64),
                   fix_src=np.asarray(fix_src, np.int64))
        return out

    def _launch_flat(self, batch: ScheduledBatch) -> torch.Tensor:
        """A step with prompt chunks through the decode graph of its token count (eagerly without graphs: the
        same rows and kernels, which the CPU tests compare with the ordinary mixed step)."""
        t = batch.num_tokens
        self.flat_steps += 1
        graphs = self.flat_graphs or self.graphs  # flat graphs of their own with row groups, else the decode ones
        if graphs and t <= max(graphs):
            bs = min(b for b in graphs if b >= t)
            host = self._flat_rows(batch, bs)
            dev = dict(zip(host, self._staging.put([a.ravel() for a in host.values()])))  # one copy up
            self._replay(bs, *(dev[k] for k in ("ids", "pos", "slots", "ctx", "suppress", "tables", "fix_rows",
                                                "fix_src")), groups=dev.get("groups") if self.flat_graphs else None)
            return (self.g_flat_tokens if self.flat_graphs else self.g_tokens)[bs][dev["last_rows"]]
        host = self._flat_rows(batch, t)
        arrays = [host["ids"], host["pos"], host["slots"], host["ctx"], host["tables"].astype(np.int64).ravel(),
                  host["fix_rows"], host["fix_src"], host["last_rows"], host["suppress"]]
        if "groups" in host:
            arrays.append(host["groups"].ravel())
        ids, pos, slots, ctx, tables, fix_rows, fix_src, last_rows, suppress, *groups = self._staging.put(arrays)
        self._fill_inflight(ids, fix_rows, fix_src)
        meta = AttentionMetadata(slot_mapping=slots, num_decodes=t, block_size=self.block_size,
                                 context_lens=ctx.to(torch.int32),
                                 block_tables=tables.view(t, self.max_blocks_per_seq).to(torch.int32),
                                 row_groups=groups[0].view(t, 3).to(torch.int32) if groups else None)
        if self._host_contexts:
            meta.decode_context_lens = tuple(int(c) for c in host["ctx"])
            meta.decode_context_slots = torch.as_tensor(np.concatenate(
                [host["tables"][i][np.arange(c) // self.block_size] * self.block_size + np.arange(c) % self.block_size
                 for i, c in enumerate(host["ctx"])]), device=self.device)
        hidden = self.model(ids, pos, self.kv_cache, meta, self.kv_scales)
        return self._sample(hidden, suppress.bool())[last_rows]

    def _block_table_array(self, seqs: list[Sequence], rows: Optional[int] = None) -> np.ndarray:
        table = np.full((rows or len(seqs), self.max_blocks_per_seq), self.scratch_block, dtype=np.int32)
        for i, seq in enumerate(seqs):
            table[i, :len(seq.block_table)] = seq.block_table
        return table

    # ---- CUDA graphs for decode-only steps ----------------------------------------------------
    def _capture_graphs(self) -> None:
        """Decode graphs for 1 .. max(max_num_seqs, --graph-mixed-tokens N) rows, which flat steps replay too; with
        `flat_row_groups`, decode graphs up to max_num_seqs and flat graphs of their own for 1 .. N rows (attention
        through `paged_rows_attention` over the rows' groups), in one memory pool."""
        t0 = time.perf_counter()
        self.graphs.clear()
        self.flat_graphs.clear()
        max_bs = max(self.config.max_num_seqs, self.graph_mixed_tokens)
        dev = self.device
        scratch_slot = self.scratch_block * self.block_size
        self.g_input_ids = torch.zeros(max_bs, dtype=torch.int64, device=dev)
        self.g_positions = torch.zeros(max_bs, dtype=torch.int64, device=dev)
        self.g_slots = torch.full((max_bs,), scratch_slot, dtype=torch.int64, device=dev)
        self.g_block_tables = torch.full((max_bs, self.max_blocks_per_seq), self.scratch_block, dtype=torch.int32,
                                         device=dev)
        self.g_context_lens = torch.ones(max_bs, dtype=torch.int32, device=dev)
        self.g_suppress = torch.zeros(max_bs, dtype=torch.bool, device=dev)
        self.g_row_groups = torch.zeros(max_bs, 3, dtype=torch.int32, device=dev)  # flat graphs: all empty at capture
        self.g_tokens: dict[int, torch.Tensor] = {}
        self.g_flat_tokens: dict[int, torch.Tensor] = {}
        pool = None
        grouped = bool(self.graph_mixed_tokens and self.flat_row_groups)
        sizes = [(bs, False) for bs in graph_batch_sizes(self.config.max_num_seqs if grouped else max_bs)]
        if grouped:
            sizes += [(bs, True) for bs in graph_batch_sizes(self.graph_mixed_tokens)]
        with torch.inference_mode():
            for bs, flat in sorted(sizes, reverse=True):  # the largest first: the pool fits every later one
                meta = AttentionMetadata(slot_mapping=self.g_slots[:bs], num_decodes=bs, block_size=self.block_size,
                                         block_tables=self.g_block_tables[:bs], context_lens=self.g_context_lens[:bs],
                                         row_groups=self.g_row_groups[:bs] if flat else None)

                def step(bs=bs, meta=meta):
                    hidden = self.model(self.g_input_ids[:bs], self.g_positions[:bs], self.kv_cache, meta,
                                        self.kv_scales)
                    return self._sample(hidden, self.g_suppress[:bs])

                step()  # warm-up: compiles kernels, picks cuBLAS algorithms
                torch.cuda.synchronize(dev)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, pool=pool):
                    tokens = step()
                pool = graph.pool()
                (self.g_flat_tokens if flat else self.g_tokens)[bs] = tokens
                (self.flat_graphs if flat else self.graphs)[bs] = graph
        torch.cuda.synchronize(dev)
        log.info("captured %d decode graphs (batch 1..%d)%s in %.1f s", len(self.graphs), max(self.graphs),
                 f" and {len(self.flat_graphs)} for steps with prompt chunks (1..{self.graph_mixed_tokens} rows)"
                 if self.flat_graphs else "", time.perf_counter() - t0)

    def _launch_graph(self, batch: ScheduledBatch) -> torch.Tensor:
        n = len(batch.items)
        bs = min(b for b in self.graphs if b >= n)
        seqs = [seq for seq, _ in batch.items]
        positions = [seq.num_computed_tokens for seq in seqs]
        ids, fix_rows, fix_src = self._input_ids(seqs, positions)
        host = np.zeros((5, bs), dtype=np.int64)  # ids, positions, slots, context lengths, suppress-EOS
        host[2] = self.scratch_block * self.block_size
        host[3] = 1
        host[0, :n] = ids
        host[1, :n] = positions
        host[2, :n] = [seq.block_table[p // self.block_size] * self.block_size + p % self.block_size
                       for seq, p in zip(seqs, positions)]
        host[3, :n] = host[1, :n] + 1
        host[4, :n] = [seq.suppress_eos for seq in seqs]
        rows, table, fix_rows, fix_src = self._staging.put([
            host.ravel(), self._block_table_array(seqs, rows=bs).ravel(), np.asarray(fix_rows, dtype=np.int64),
            np.asarray(fix_src, dtype=np.int64)])  # one host-to-device copy
        rows = rows.view(5, bs)
        self._replay(bs, *rows, table, fix_rows, fix_src)
        return self.g_tokens[bs][:n]

    def _replay(self, bs: int, ids, pos, slots, ctx, suppress, tables, fix_rows, fix_src, groups=None) -> None:
        """The decode graph of `bs` rows on these device rows (int64; tables flat [bs * max_blocks]); with `groups`
        (flat [bs * 3]) the flat graph of `bs` rows (flat_row_groups)."""
        self.g_input_ids[:bs].copy_(ids)
        self._fill_inflight(self.g_input_ids, fix_rows, fix_src)
        self.g_positions[:bs].copy_(pos)
        self.g_slots[:bs].copy_(slots)
        self.g_context_lens[:bs].copy_(ctx)
        self.g_suppress[:bs].copy_(suppress)
        self.g_block_tables[:bs].copy_(tables.view(bs, self.max_blocks_per_seq))
        if groups is None:
            self.graphs[bs].replay()
        else:
            self.g_row_groups[:bs].copy_(groups.view(bs, 3))
            self.flat_graphs[bs].replay()
