"""The measured paths of tools/bench.py: transformers generate, LoadGen Offline, the forced-length
backends, and a decode-kernel microbenchmark (the LoadGen Server sweep is tools/bench_server.py).
Bench-only code: forced output lengths live here and in the backends' bench knob, never in main.py's flags.
"""

from __future__ import annotations

import logging
import os
import shutil
import time

import torch

from mlperf_llama2 import constants
from mlperf_llama2.backends.base import ResultSink
from mlperf_llama2.backends.engine import EngineBackend
from mlperf_llama2.backends.reference import ReferenceBackend, left_pad

log = logging.getLogger("bench")


def build_hf(cfg, device, dtype, std: float, seed: int):
    from transformers import LlamaForCausalLM

    with torch.device(device):
        model = LlamaForCausalLM(cfg).to(dtype)
    gen = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, std, generator=gen)
    model.generation_config.pad_token_id = cfg.eos_token_id
    return model.eval()


@torch.inference_mode()
def hf_generate(model, prompts: list[list[int]], new_tokens: list[int], batch_size: int,
                min_new: list[int] | None = None) -> tuple[list[list[int]], float]:
    """The reference's way: left-padded static batches; a batch runs to its longest member."""
    device = next(model.parameters()).device
    outs: list[list[int]] = []
    t0 = time.perf_counter()
    for b in range(0, len(prompts), batch_size):
        chunk = prompts[b:b + batch_size]
        width = max(map(len, chunk))
        ids = torch.full((len(chunk), width), constants.LLAMA2_EOS_TOKEN, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, p in enumerate(chunk):
            ids[i, width - len(p):] = torch.tensor(p)
            mask[i, width - len(p):] = 1
        longest = max(new_tokens[b:b + batch_size])
        least = max(min_new[b:b + batch_size]) if min_new else 1
        gen = model.generate(ids.to(device), attention_mask=mask.to(device), max_new_tokens=longest,
                             min_new_tokens=least, do_sample=False, num_beams=1,
                             pad_token_id=constants.LLAMA2_EOS_TOKEN)
        for i, row in enumerate(gen[:, width:].tolist()):
            outs.append(row[:new_tokens[b + i]])
    if device.type == "cuda":
        torch.cuda.synchronize()
    return outs, time.perf_counter() - t0


def first_divergence(a: list[int], b: list[int]) -> int | None:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def step_profile(step_log) -> dict:
    """Where Offline time went: decode-only (graph) steps vs mixed prefill+decode (eager) steps (step-log rows,
    ms in column 3)."""
    prof = {}
    for kind, decode_only in (("decode_only", True), ("mixed", False)):
        rows = [r for r in step_log if r[0] == decode_only]
        if rows:
            prof[kind] = {"steps": len(rows), "seconds": sum(r[3] for r in rows) / 1e3,
                          "mean_ms": sum(r[3] for r in rows) / len(rows),
                          "mean_seqs": sum(r[1] for r in rows) / len(rows),
                          "mean_tokens": sum(r[2] for r in rows) / len(rows)}
    return prof


class ForcedLengthReference(ReferenceBackend):
    """The reference backend with the bench knob: each sample generates exactly its drawn length, EOS
    ignored, and a batch runs to its longest member as the real reference does."""

    def __init__(self, model, lengths, **kwargs) -> None:
        super().__init__(model, **kwargs)
        self._lengths = lengths

    def generate(self, batch):
        want = [int(self._lengths[r.sample_index]) for r in batch]
        input_ids, attention_mask = left_pad([r.prompt for r in batch], self.eos_token_id)  # [B, L]
        with torch.inference_mode():
            out = self._model.generate(input_ids=input_ids.to(self._device), attention_mask=attention_mask.to(self._device),
                                       max_new_tokens=max(want), min_new_tokens=max(want), do_sample=False, num_beams=1,
                                       pad_token_id=self.eos_token_id)  # [B, L + max(want)]
        rows = out[:, input_ids.shape[1]:].tolist()
        return [row[:n] for row, n in zip(rows, want)]


class KeepForcedLength(ResultSink):
    """The SUT's sink behind a forced-length engine: outputs reach it whole, EOS ids replaced by EOS + 1.

    With random weights and EOS ignored, the EOS id can come up mid-output; the SUT would cut the
    response there (cut after the first EOS) and LoadGen would count fewer tokens than were generated.
    """

    def __init__(self, sink: ResultSink, eos_token_id: int) -> None:
        self._sink = sink
        self._eos = eos_token_id
        self.replaced = 0

    def first_token(self, request_id: int, token: int) -> None:
        self._sink.first_token(request_id, token)

    def complete(self, request_id: int, tokens) -> None:
        out = [self._eos + 1 if t == self._eos else int(t) for t in tokens]
        self.replaced += sum(t == self._eos for t in tokens)
        self._sink.complete(request_id, out)

    def fail(self, request_id: int, error: BaseException) -> None:
        self._sink.fail(request_id, error)


class ForcedLengthEngine(EngineBackend):
    """The engine backend with forced output lengths whose every generated token reaches LoadGen."""

    def __init__(self, engine, lengths) -> None:
        super().__init__(engine, forced_output_lengths={i: int(n) for i, n in enumerate(lengths)})
        self._keep: KeepForcedLength | None = None

    def start(self, sink: ResultSink) -> None:
        self._keep = KeepForcedLength(sink, self.eos_token_id)
        super().start(self._keep)

    def eos_replaced(self) -> int:
        """EOS ids replaced since the last start (one LoadGen run)."""
        return self._keep.replaced if self._keep else 0


def loadgen_offline(backend, prompts, out_dir: str) -> dict:
    """One Offline PerformanceOnly run through the real LoadGen -> SUT -> backend path, all prompts in one query."""
    import mlperf_loadgen as lg

    from mlperf_llama2.data.dataset import Dataset
    from mlperf_llama2.loadgen.runner import run_test
    from mlperf_llama2.loadgen.settings import LoadGenSettings

    n = len(prompts)
    dataset = Dataset(path="synthetic", prompts=tuple(tuple(p) for p in prompts), targets=None)
    test = lg.TestSettings()
    test.scenario = lg.TestScenario.Offline
    test.mode = lg.TestMode.PerformanceOnly
    test.offline_expected_qps = 1.0
    test.min_query_count = n
    test.max_query_count = n
    test.min_duration_ms = 0
    test.performance_sample_count_override = n
    test.use_token_latencies = True
    os.makedirs(out_dir, exist_ok=True)
    output = lg.LogOutputSettings()
    output.outdir = out_dir
    output.copy_summary_to_stdout = False
    log_settings = lg.LogSettings()
    log_settings.log_output = output
    result = run_test("Offline", backend, dataset, LoadGenSettings(test, log_settings, out_dir),
                      audit_conf="no-audit.config", max_new_tokens=constants.MAX_NEW_TOKENS)
    summary = open(os.path.join(out_dir, "mlperf_log_summary.txt")).read()
    lg_tps = [line.split(":")[-1].strip() for line in summary.splitlines() if "Tokens per second" in line]
    shutil.rmtree(out_dir, ignore_errors=True)
    return {"samples": result.samples, "wall_s": result.wall_s, "failures": len(result.failures),
            "loadgen_tokens_per_s": float(lg_tps[0]) if lg_tps else None}


def engine_offline(args, engine, prompts, o_len, roof, result, lg_dir) -> None:
    """The engine's LoadGen Offline run with a step log (tools/step_timer.py: a step's time is the gap between two
    launches, with the host's launch time and the wait for its tokens); appends its row to result["rows"]."""
    from step_timer import StepTimer

    steps0 = engine.num_steps
    backend = ForcedLengthEngine(engine, o_len)
    with StepTimer(engine) as timer:
        run = loadgen_offline(backend, prompts, os.path.join(lg_dir, "engine"))
    if run["failures"]:  # the rate below counts every forced length as generated: not with failed samples
        raise SystemExit(f"bench: engine Offline: {run['failures']} of {len(prompts)} samples failed (see the log "
                         "above); no tokens/s recorded")
    step_log = [[r[0], r[1], r[2], round(r[3], 3), r[4], round(r[5], 3), round(r[6], 3)] for r in timer.rows]
    tps = float(o_len.sum() / run["wall_s"])
    result["rows"].append({"backend": "engine", "batch": args.max_num_seqs, "samples": args.samples, "path": "loadgen",
                           "tokens_per_s": tps, **run, "eos_ids_replaced": backend.eos_replaced(),
                           "steps": engine.num_steps - steps0,
                           "preemptions": engine.scheduler.num_preemptions, "kv_blocks": engine.runner.num_blocks,
                           "roofline_tokens_per_s": roof, "step_profile": step_profile(step_log),
                           "host": timer.summary(),
                           # per step: decode only, sequences, tokens, ms, decodes, launch ms, wait-for-tokens ms
                           "step_log": step_log})
    if step_log:
        from steady_state import analyse

        result["rows"][-1]["steady"] = analyse(result["rows"][-1])  # steady rate, drain share, 24,576 extrapolation
    log.info("engine: %.0f tok/s (%d steps)", tps, engine.num_steps - steps0)


@torch.inference_mode()
def kernel_bench(device, batch=256, contexts=(700, 1200), shapes=((32, 32), (64, 8)), block_size=16) -> list[dict]:
    """Paged decode kernel vs SDPA on contiguous KV: time and KV bytes read per second."""
    import torch.nn.functional as F

    from mlperf_llama2.engine.paged_decode_triton import paged_decode_attention

    rows = []
    for heads, kv in shapes:
        for ctx in contexts:
            d = 128
            blocks = -(-ctx // block_size)
            k_cache = torch.randn(batch * blocks * block_size, kv, d, device=device, dtype=torch.float16)
            v_cache = torch.randn_like(k_cache)
            table = torch.randperm(batch * blocks, device=device, dtype=torch.int32).view(batch, blocks)
            lens = torch.full((batch,), ctx, dtype=torch.int32, device=device)
            q = torch.randn(batch, heads, d, device=device, dtype=torch.float16)
            k_dense = torch.randn(batch, kv, ctx, d, device=device, dtype=torch.float16)
            v_dense = torch.randn_like(k_dense)
            runs = {"sdpa_dense": lambda: F.scaled_dot_product_attention(q[:, :, None], k_dense, v_dense, enable_gqa=True)}
            for block_n, warps in ((64, 4), (32, 4), (128, 4), (128, 8), (64, 8)):
                runs[f"paged_n{block_n}_w{warps}"] = (
                    lambda bn=block_n, w=warps: paged_decode_attention(q, k_cache, v_cache, table, lens, d ** -0.5,
                                                                        block_size, block_n=bn, num_warps=w))
            for name, fn in runs.items():
                for _ in range(3):
                    fn()
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                for _ in range(20):
                    fn()
                end.record()
                torch.cuda.synchronize()
                ms = start.elapsed_time(end) / 20
                gbytes = 2 * batch * ctx * kv * d * 2 / 1e9
                rows.append({"kernel": name, "heads": heads, "kv_heads": kv, "context": ctx, "batch": batch,
                             "ms": ms, "tb_per_s": gbytes / ms})
            del k_cache, v_cache, k_dense, v_dense
    return rows


def bench_model(cfg, weights: str, liteml_config: str, device, dtype, max_positions: int, init_std: float,
                seed: int, int8_rules: str = "linear"):
    """A random-weight engine model through the engine's one loader: fp16, int8 (the config's Linear rules, or with
    `int8_rules` "all" every rule: whole_config.py, static ranges made up for timing) or fp8."""
    from mlperf_llama2.config import QuantConfig
    from mlperf_llama2.engine.llama import LlamaShape
    from mlperf_llama2.engine.loader import build_model
    from mlperf_llama2.engine.quant_plan import weight_plan

    quant = {"int8": lambda: QuantConfig(liteml_config=liteml_config, quant_backend="open", quant_mode="int8"),
             "fp8": lambda: QuantConfig(quantization="fp8")}.get(weights, lambda: None)()
    plan = weight_plan(quant, LlamaShape.from_hf_config(cfg)) if quant is not None else {}
    model = build_model(cfg, plan, device, dtype, max_positions, init_std=init_std, seed=seed)
    if weights == "int8" and int8_rules == "all":
        timing_only_whole_config(model, liteml_config)
    return model


def timing_only_whole_config(model, liteml_config: str) -> None:
    """Attach every rule of the config with made-up static ranges: +-127 for K and V (scale 1.0: the bench's unit
    int8 KV scales), +-1 elsewhere. Right for timing; the tokens mean nothing (random weights, no calibration)."""
    from mlperf_llama2.engine.whole_config import attach
    from mlperf_llama2.quant.calibration_file import static_quantizers
    from mlperf_llama2.quant.fake_quant import Numerics
    from mlperf_llama2.quant.yaml_config import load_rules

    wc = attach(model, load_rules(liteml_config), Numerics(batch_shared_scale=False))
    device = model.embed_tokens.weight.device
    for name, q in static_quantizers(wc).items():
        r = 127.0 if name.endswith("quantizer_in2") and ".matmul_" in name else 1.0
        shape = (1,) * (4 if ".self_attn." in name else 3)
        q.running_min = torch.full(shape, -r, device=device)
        q.running_max = torch.full(shape, r, device=device)


def engine_model_from_hf(hf, cfg, device, dtype, max_positions: int):
    """The engine's float model holding the weights of a transformers model (same loader as a checkpoint)."""
    from mlperf_llama2.engine.llama import LlamaShape
    from mlperf_llama2.engine.loader import empty_model, load_weights

    model = empty_model(cfg, {}, device, dtype, max_positions)
    load_weights(model, hf.state_dict().items(), {}, LlamaShape.from_hf_config(cfg), source="transformers model")
    return model
