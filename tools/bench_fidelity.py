"""How close the engine's fp16 and 8-bit numbers are to an fp32 truth, next to transformers' own fp16 (#6, #19).

One random checkpoint (tools/fidelity_weights.py; `decisive` by default) is written to a temporary
directory and loaded three times, each through its own loader: transformers fp32 (the truth),
transformers fp16 (what `--backend reference` runs) and the engine in fp16 (`LLMEngine.from_pretrained`),
plus the engine with FP8 Linears when an fp8 variant is asked for.

1. Teacher-forced logits over --tf-prompts prompts: transformers runs each prompt in one forward; the
   engine runs its own steps (chunked prefill with the cached prefix, then --tf-decode positions on
   the paged decode path), its sampled tokens replaced by the prompt's next tokens, and the final
   hidden state of every computed position kept. Per variant against fp32: max / mean |logit error|,
   both also relative to each position's logit std, and top-1 agreement; over all positions, the
   decode positions and the last one.
2. Greedy generation of --tokens tokens for --prompts prompts: transformers fp16 batch 1 (the
   reference), batch 16 and fp32 batch 1 as controls, the engine (CUDA graphs on): fraction identical
   and first divergences. Context check: the same prompts with a new random prefix before the same
   last token.
3. 8-bit variants (--variants, tools/fidelity_variants.py): the engine with FP8 Linears, an FP8 KV cache
   with scales it calibrates itself (per KV head or per layer) on --calib-prompts other prompts, both,
   and on CUDA FP8 through the Triton gemm8 kernel and with fast accumulation. Each goes through steps
   1 and 2 like the fp16 engine, against the fp32 truth and against the fp16 engine.

  PYTHONPATH=$PWD python3 tools/bench_fidelity.py --shape 7b --out OUT/fid                 # H200
  PYTHONPATH=$PWD python3 tools/bench_fidelity.py --shape 70b --layers 4 --out OUT/fid70   # H200, 70B width
  python tools/bench_fidelity.py --shape tiny --device cpu --prompts 4 --tokens 8 --out /tmp/fid

It prints a table and writes fidelity.json and table.txt into --out.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mlperf_llama2 import constants  # noqa: E402
from mlperf_llama2.backends.hf_loading import load_causal_lm  # noqa: E402
from mlperf_llama2.config import EngineConfig  # noqa: E402
from mlperf_llama2.engine.llm_engine import MAX_MODEL_LEN, LLMEngine  # noqa: E402
from mlperf_llama2.engine.model_runner import ModelRunner  # noqa: E402
from mlperf_llama2.engine.sequence import SamplingParams  # noqa: E402
from mlperf_llama2.errors import UserError, run_cli  # noqa: E402
from mlperf_llama2.quant.config import QuantConfig  # noqa: E402

from bench import hf_config_for  # noqa: E402
from bench_paths import first_divergence, hf_generate  # noqa: E402
from fidelity_variants import (  # noqa: E402
    kv_scales_by_granularity, parse_variants, scale_summary, variant_lines,
)
from fidelity_weights import DECISIVE_DEFAULTS, write_checkpoint  # noqa: E402

log = logging.getLogger("bench_fidelity")

# the compared pairs: (--dtype transformers, fp32), (--dtype engine, fp32), (engine, transformers)
VARIANTS = ("transformers", "engine", "engine_vs_transformers")


def random_prompts(n: int, lo: int, hi: int, vocab: int, seed: int) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [[constants.LLAMA2_BOS_TOKEN] + rng.integers(3, vocab, int(k) - 1).tolist()
            for k in rng.integers(lo, hi + 1, n)]


def engine_for(model, device, dtype, prompts, extra_tokens: int, cuda_graphs: bool, kv_cache_dtype: str = "auto",
               kv_scales: torch.Tensor | None = None, gemm: str = "auto",
               fp8_accumulation: str = "promoted") -> LLMEngine:
    """An engine around an already loaded model, its KV cache just large enough for `prompts`. Without CUDA
    graphs (teacher forcing, which hooks the forward and replaces tokens) its steps are not overlapped either:
    `runner.run` is then the method every step calls. `kv_scales` [2, L, KV]: for an 8-bit `kv_cache_dtype`.
    `gemm` / `fp8_accumulation`: --engine-gemm / --fp8-accumulation, which the engine applies to every 8-bit
    Linear when it is built (so a path set on the Linears beforehand would be overwritten)."""
    econf = EngineConfig(max_num_seqs=max(len(prompts), 1), cuda_graphs=cuda_graphs,
                         overlap_steps=None if cuda_graphs else False, kv_cache_dtype=kv_cache_dtype,
                         num_kv_blocks=sum(-(-(len(p) + extra_tokens) // 16) for p in prompts) + 8,
                         gemm=gemm, fp8_accumulation=fp8_accumulation)
    eos = constants.LLAMA2_EOS_TOKEN
    return LLMEngine(ModelRunner(model, econf, eos, MAX_MODEL_LEN, device, dtype, kv_scales), econf, eos)


@torch.inference_mode()
def engine_teacher_forced(engine: LLMEngine, prompts: list[list[int]], decode_tail: int) -> list[torch.Tensor]:
    """Logits [len(p), vocab] (model dtype) of every position of each prompt, computed by engine steps.

    Each sequence starts as the prompt without its last `decode_tail` tokens; every token the engine
    samples is replaced by the prompt's next token, so the tail goes through decode steps. A forward
    hook keeps the model's final hidden states (rows = the step's items in order, `n` rows each)."""
    runner, model = engine.runner, engine.runner.model
    vocab = model.shape.vocab_size
    logits = [torch.empty(len(p), vocab, dtype=runner.dtype, device=runner.device) for p in prompts]
    captured: list[torch.Tensor] = []
    hook = model.register_forward_hook(lambda _m, _inputs, hidden: captured.append(hidden))
    run = runner.run

    def forced_run(batch):
        spans = [(seq, seq.num_computed_tokens, n) for seq, n in batch.items]
        captured.clear()
        sampled = run(batch)
        hidden = captured[0]  # [T, hidden]
        row, forced = 0, []
        for (seq, start, n), token in zip(spans, sampled):
            logits[seq.request_id][start:start + n] = model.logits(hidden[row:row + n])
            row += n
            full = prompts[seq.request_id]
            nxt = start + n  # the position whose token this step produces
            forced.append(full[nxt] if nxt < len(full) and nxt == seq.num_tokens else token)
        return forced

    assert not engine.overlap, "teacher forcing replaces tokens: the engine's steps must call runner.run"
    runner.run = forced_run
    try:
        params = SamplingParams(decode_tail + 1, min_new_tokens=0, ignore_eos=True)
        engine.generate([p[:len(p) - decode_tail] for p in prompts], params)
    finally:
        runner.run = run
        hook.remove()
    return logits


class ErrorStats:
    """Accumulates |x - truth| over positions of many prompts; truth, x: [N, vocab] float32."""

    def __init__(self) -> None:
        self.n = self.top1 = 0
        self.max_abs = self.max_rel = self.sum_abs = self.sum_rel = 0.0

    def add(self, x: torch.Tensor, truth: torch.Tensor) -> None:
        if x.shape[0] == 0:
            return
        diff = (x - truth).abs()  # [N, vocab]
        std = truth.std(-1)  # [N]
        self.n += x.shape[0]
        self.top1 += int((x.argmax(-1) == truth.argmax(-1)).sum())
        self.max_abs = max(self.max_abs, float(diff.max()))
        self.max_rel = max(self.max_rel, float((diff.amax(-1) / std).max()))
        self.sum_abs += float(diff.mean(-1).sum())
        self.sum_rel += float((diff.mean(-1) / std).sum())

    def result(self) -> dict:
        n = max(self.n, 1)
        return {"positions": self.n, "max_abs": self.max_abs, "mean_abs": self.sum_abs / n,
                "max_rel_std": self.max_rel, "mean_rel_std": self.sum_rel / n, "top1_agree": self.top1 / n}


@torch.inference_mode()
def teacher_forced_errors(hf32, hflow, engine_logits, prompts, decode_tail: int,
                          variant_logits: dict[str, list[torch.Tensor]] | None = None) -> dict:
    """Step 1: transformers and the engine in --dtype against fp32 transformers, per region of positions;
    each 8-bit variant (name -> logits per prompt) against fp32 and against the engine in --dtype."""
    regions = ("all", "decode", "last")
    variant_logits = variant_logits or {}
    stats = {v: {r: ErrorStats() for r in regions} for v in VARIANTS}
    q_stats = {v: {ref: {r: ErrorStats() for r in regions} for ref in ("vs_fp32", "vs_engine")}
               for v in variant_logits}
    margins, logit_std = [], []
    for i, (p, eng) in enumerate(zip(prompts, engine_logits)):
        ids = torch.tensor([p], device=hf32.device)  # [1, L]
        truth = hf32(ids).logits[0].float()  # [L, vocab]
        low = hflow(ids).logits[0].float()
        eng = eng.float()
        top2 = truth.topk(2, -1).values  # [L, 2]
        margins.append(((top2[:, 0] - top2[:, 1]) / truth.std(-1)).cpu())
        logit_std.append(truth.std(-1).mean().item())
        tail = len(p) - decode_tail
        for name, x, ref in zip(VARIANTS, (low, eng, eng), (truth, truth, low)):
            stats[name]["all"].add(x, ref)
            stats[name]["decode"].add(x[tail:], ref[tail:])
            stats[name]["last"].add(x[-1:], ref[-1:])
        for name, logits in variant_logits.items():
            x = logits[i].float()
            for ref_name, ref in (("vs_fp32", truth), ("vs_engine", eng)):
                per = q_stats[name][ref_name]
                per["all"].add(x, ref)
                per["decode"].add(x[tail:], ref[tail:])
                per["last"].add(x[-1:], ref[-1:])
    margin = torch.cat(margins)
    out = {name: {r: s.result() for r, s in per.items()} for name, per in stats.items()}
    out["variants"] = {name: {ref: {r: s.result() for r, s in per.items()} for ref, per in refs.items()}
                       for name, refs in q_stats.items()}
    out["fp32_top2_gap_over_std"] = {"median": float(margin.median()), "p1": float(margin.quantile(0.01)),
                                    "p5": float(margin.quantile(0.05))}
    out["fp32_logit_std_mean"] = float(np.mean(logit_std))
    return out


@torch.inference_mode()
def context_changes_argmax(hf32, prompts, chunk: int = 1024) -> float:
    """Fraction of positions whose fp32 argmax differs from that of the same token right after BOS."""
    flat = [t for p in prompts for t in p[1:]]
    ids = torch.tensor(flat, device=hf32.device)
    alone = []
    for i in range(0, len(flat), chunk):
        pair = torch.stack([torch.full_like(ids[i:i + chunk], constants.LLAMA2_BOS_TOKEN), ids[i:i + chunk]], 1)
        alone.append(hf32(pair).logits[:, -1].argmax(-1))  # [chunk]
    in_context = torch.cat([hf32(torch.tensor([p], device=hf32.device)).logits[0, 1:].argmax(-1) for p in prompts])
    return float((torch.cat(alone) != in_context).float().mean())


def compare(outs: list[list[int]], ref: list[list[int]]) -> dict:
    div = [first_divergence(a, b) for a, b in zip(outs, ref)]
    same = sum(d is None for d in div)
    return {"identical": same, "prompts": len(div), "fraction": same / max(len(div), 1),
            "first_divergence": [d for d in div if d is not None]}


def greedy_identity(hf32, hflow, engine: LLMEngine, prompts, tokens: int, seed: int) -> tuple[dict, dict]:
    """Step 2: greedy outputs of the engine and the controls against transformers in --dtype, batch 1; and
    the outputs the variants are compared with (reference, fp32, engine)."""
    n, t0 = len(prompts), time.perf_counter()
    ref, _ = hf_generate(hflow, prompts, [tokens] * n, batch_size=1)
    ref_b16, _ = hf_generate(hflow, prompts, [tokens] * n, batch_size=16)
    ref32, _ = hf_generate(hf32, prompts, [tokens] * n, batch_size=1)
    log.info("generate: 3 runs in %.0f s", time.perf_counter() - t0)
    eng = engine.generate(prompts, SamplingParams(tokens))
    # same lengths, same last token, new random prefix: does the output depend on more than the last token?
    rng = np.random.default_rng(seed + 7)
    other = [[p[0]] + rng.integers(3, hf32.config.vocab_size, len(p) - 2).tolist() + [p[-1]] for p in prompts]
    eng_other = engine.generate(other, SamplingParams(tokens))
    outputs = {"reference": ref, "fp32": ref32, "engine": eng}
    return {"engine_vs_reference": compare(eng, ref), "reference_batch16_vs_batch1": compare(ref_b16, ref),
            "reference_vs_fp32": compare(ref, ref32), "engine_vs_fp32": compare(eng, ref32),
            "other_prefix_same_last_token": {
                "outputs_differing": sum(a != b for a, b in zip(eng, eng_other)) / max(n, 1),
                "first_token_differing": sum(a[:1] != b[:1] for a, b in zip(eng, eng_other)) / max(n, 1)},
            "distinct_output_tokens": len({t for o in ref for t in o})}, outputs


def table_lines(result: dict) -> list[str]:
    a = result["args"]
    lines = [f"shape {a['shape']} layers {result['layers']} weights {a['construction']} "
             f"{result.get('knobs', '')}; compared dtype {a['dtype']}, truth float32 (TF32 off)"]
    tf = result.get("teacher_forced")
    if tf:
        lines.append(f"teacher-forced logits vs fp32 ({tf['transformers']['all']['positions']} positions, "
                     f"last {a['tf_decode']} of each prompt on the decode path; logit std "
                     f"{tf['fp32_logit_std_mean']:.2f}; fp32 top-2 gap / std median "
                     f"{tf['fp32_top2_gap_over_std']['median']:.3f}, p1 {tf['fp32_top2_gap_over_std']['p1']:.3f})")
        lines.append(f"{'variant':<24}{'region':<8}{'max|d|':>10}{'mean|d|':>10}{'max/std':>10}{'mean/std':>10}"
                     f"{'top1':>9}")
        for name in VARIANTS:
            for region, s in tf[name].items():
                lines.append(f"{name:<24}{region:<8}{s['max_abs']:>10.3g}{s['mean_abs']:>10.3g}{s['max_rel_std']:>10.3g}"
                             f"{s['mean_rel_std']:>10.3g}{s['top1_agree']:>9.2%}")
        lines.append(f"fp32 argmax differs from the same token after BOS alone at "
                     f"{result['context_changes_argmax']:.1%} of positions")
    g = result.get("greedy")
    if g:
        lines.append(f"greedy {a['tokens']} tokens, {a['prompts']} prompts (identical / first divergences):")
        for key in ("engine_vs_reference", "reference_batch16_vs_batch1", "reference_vs_fp32", "engine_vs_fp32"):
            c = g[key]
            lines.append(f"  {key:<30}{c['identical']:>3}/{c['prompts']}  {c['first_divergence']}")
        o = g["other_prefix_same_last_token"]
        lines.append(f"  other prefix, same last token: {o['outputs_differing']:.0%} of engine outputs differ "
                     f"({o['first_token_differing']:.0%} at the first token); {g['distinct_output_tokens']} "
                     f"distinct tokens in the reference outputs")
    lines.extend(variant_lines(result))
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shape", choices=("tiny", "7b", "70b"), default="7b")
    ap.add_argument("--layers", type=int, default=None, help="override the layer count")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", choices=("float16", "bfloat16", "float32"), default="float16",
                    help="of the reference (transformers) and the engine; the truth is always float32")
    ap.add_argument("--construction", choices=("decisive", "plain"), default="decisive",
                    help="random weights (tools/fidelity_weights.py)")
    ap.add_argument("--init-std", type=float, default=0.02)
    for knob, value in DECISIVE_DEFAULTS.items():
        ap.add_argument(f"--{knob.replace('_', '-')}", type=type(value), default=value, help="decisive construction")
    ap.add_argument("--tf-prompts", type=int, default=16, help="teacher-forced prompts (0: skip step 1)")
    ap.add_argument("--tf-decode", type=int, default=16, help="last positions of each prompt on the decode path")
    ap.add_argument("--prompts", type=int, default=32, help="greedy prompts (0: skip step 2)")
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--prompt-len", default="200,800", help="min,max prompt length (uniform)")
    ap.add_argument("--variants", default="all",
                    help="8-bit engine variants: all, none, or comma-separated of fp8, kv-head, kv-tensor, "
                         "fp8+kv-head, fp8+kv-tensor; CUDA: fp8-cublas, fp8-fast, fp8-gemm8, fp8-ws, fp8-ws-fast")
    ap.add_argument("--calib-prompts", type=int, default=16,
                    help="prompts (other than the measured ones) the engine calibrates its FP8 K/V scales on")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--checkpoint-dir", default=None, help="where to write the checkpoint (default: a temp dir)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    lo, hi = (int(x) for x in args.prompt_len.split(","))
    if not 2 <= lo <= hi or hi + args.tokens + 1 > MAX_MODEL_LEN or args.tf_decode >= lo:
        raise UserError(f"--prompt-len {args.prompt_len} must satisfy 2 <= min <= max, "
                         f"max + --tokens <= {MAX_MODEL_LEN} and --tf-decode < min")
    variants = parse_variants(args.variants, torch.device(args.device))
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {args.device} but torch sees no CUDA GPU (torch {torch.__version__}); "
                        "pass --device cpu")
    if args.calib_prompts < 1 and any(v.kv_cache_dtype != "auto" for v in variants):
        raise UserError("FP8 KV variants need --calib-prompts >= 1")
    torch.backends.cuda.matmul.allow_tf32 = False  # the fp32 truth really in fp32
    torch.backends.cudnn.allow_tf32 = False
    os.makedirs(args.out, exist_ok=True)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    t_start = time.perf_counter()
    cfg = hf_config_for(args.shape, args.layers)
    knobs = {k: getattr(args, k) for k in DECISIVE_DEFAULTS} if args.construction == "decisive" else {}
    result: dict = {"args": vars(args), "layers": cfg.num_hidden_layers, "knobs": knobs, "timings_s": {}}

    def save() -> None:
        with open(os.path.join(args.out, "fidelity.json"), "w") as fh:
            json.dump(result, fh, indent=1)

    def mark(name: str, since: float) -> float:
        result["timings_s"][name] = round(time.perf_counter() - since, 1)
        log.info("%s: %.1f s", name, result["timings_s"][name])
        return time.perf_counter()

    ckpt = args.checkpoint_dir or tempfile.mkdtemp(prefix="fid-ckpt-")
    try:
        t = time.perf_counter()
        write_checkpoint(cfg, ckpt, args.construction, device, args.seed, args.init_std, **knobs)
        t = mark("write_checkpoint", t)
        hf_device = "cuda:0" if args.device == "cuda" else args.device
        hf32 = load_causal_lm(ckpt, "float32", hf_device)
        hflow = load_causal_lm(ckpt, args.dtype, hf_device)
        for m in (hf32, hflow):
            m.generation_config.pad_token_id = constants.LLAMA2_EOS_TOKEN
        engine = LLMEngine.from_pretrained(ckpt, EngineConfig(num_kv_blocks=16, cuda_graphs=False), args.device, dtype)
        model = engine.runner.model
        models = {"float": model}
        if any(v.weights == "fp8" for v in variants):
            fp8 = LLMEngine.from_pretrained(ckpt, EngineConfig(num_kv_blocks=16, cuda_graphs=False), args.device,
                                            dtype, quant=QuantConfig(quantization="fp8"))
            models["fp8"] = fp8.runner.model
            del fp8
        del engine  # only its loaded model is kept; each step below sizes its own KV cache
        t = mark("load_three_models", t)
    finally:
        if args.checkpoint_dir is None:
            shutil.rmtree(ckpt, ignore_errors=True)

    kv_scales: dict[str, dict[str, torch.Tensor]] = {}  # weights -> granularity -> [2, L, KV]
    if variants:
        calib = random_prompts(args.calib_prompts, lo, hi, cfg.vocab_size, args.seed + 300)
        for weights, m in models.items():
            wanted = {v.granularity for v in variants if v.weights == weights and v.granularity}
            kv_scales[weights] = kv_scales_by_granularity(m, calib, wanted)
        result["kv_scales"] = {w: scale_summary(per) for w, per in kv_scales.items() if per}
        t = mark("calibrate_kv", t)

    def variant_engine(v, prompts, extra_tokens: int, cuda_graphs: bool) -> LLMEngine:
        scales = kv_scales[v.weights].get(v.granularity) if v.granularity else None
        return engine_for(models[v.weights], device, dtype, prompts, extra_tokens, cuda_graphs, v.kv_cache_dtype,
                          scales, v.engine_gemm, v.fp8_accumulation)

    if args.tf_prompts:
        prompts = random_prompts(args.tf_prompts, lo, hi, cfg.vocab_size, args.seed + 100)
        eager = engine_for(model, device, dtype, prompts, 2, cuda_graphs=False)
        engine_logits = engine_teacher_forced(eager, prompts, args.tf_decode)
        del eager
        variant_logits = {}
        for v in variants:
            eager = variant_engine(v, prompts, 2, cuda_graphs=False)
            variant_logits[v.key] = engine_teacher_forced(eager, prompts, args.tf_decode)
            del eager
        result["teacher_forced"] = teacher_forced_errors(hf32, hflow, engine_logits, prompts, args.tf_decode,
                                                         variant_logits)
        del engine_logits, variant_logits
        result["context_changes_argmax"] = context_changes_argmax(hf32, prompts)
        t = mark("teacher_forced", t)
        save()
    if args.prompts:
        prompts = random_prompts(args.prompts, lo, hi, cfg.vocab_size, args.seed + 200)
        engine = engine_for(model, device, dtype, prompts, args.tokens + 1, cuda_graphs=True)
        result["greedy"], outputs = greedy_identity(hf32, hflow, engine, prompts, args.tokens, args.seed)
        del engine
        result["greedy"]["variants"] = {}
        for v in variants:
            outs = variant_engine(v, prompts, args.tokens + 1, cuda_graphs=True).generate(
                prompts, SamplingParams(args.tokens))
            result["greedy"]["variants"][v.key] = {f"vs_{ref}": compare(outs, outputs[ref])
                                                   for ref in ("reference", "engine", "fp32")}
        t = mark("greedy", t)
    result["timings_s"]["total"] = round(time.perf_counter() - t_start, 1)
    if device.type == "cuda":
        result["peak_gpu_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    save()
    table = "\n".join(table_lines(result))
    print("\n" + table)
    with open(os.path.join(args.out, "table.txt"), "w") as fh:
        fh.write(table + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
