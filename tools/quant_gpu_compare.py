"""Simulate vs int8 on one model: teacher-forced logit error, top-1 and greedy agreement (7B shape, GPU).

From one set of float32 weights (a Llama-2-7B-shape transformers LlamaForCausalLM built on the
device with the "decisive" random construction below) the script makes these variants and runs
the same random prompts through each:

- float: the model as built; float_noise: every weight times (1 + --noise * N(0, 1)), the noise floor
- sim_full: simulate mode of the whole config (what main.py --quant-mode simulate does)
- int8_full: int8 mode of the whole config (main.py --quant-mode int8, reference backend)
- sim_linear / int8_linear: the config's Linear rule alone in each mode (GEMM rounding alone)
- engine_int8: the engine's int8 path (LLMEngine with the config's rules; Linears only), greedy only
- engine_int8_full: the engine's int8 mode with every rule (engine/whole_config.py; on CUDA its Triton kernels
  and an int8 KV cache), sim_full's static scales, greedy only

Static quantizers are calibrated on --calib random sequences. Greedy decoding runs batched without
padding, so the quantizers' per-token scales must not span the batch (--quant-per-sample-scale,
`batch_shared_scale=False`): each prompt then gets exactly what it gets at batch 1 with the default
numerics. Prints a table of pairs (teacher-forced logit error max/mean relative to the reference's
logit std, top-1 agreement; greedy: identical outputs, first divergences) and writes JSON.

Decisive weights: plain random init (std 0.02) is chaotic at this depth (docs/engine.md: a 1e-3
weight perturbation flips half the greedy outputs), so a comparison would measure noise. Here the
embedding has std --embed-std (token identity dominates the residual stream), the branch outputs
(o_proj, down_proj) std --branch-std (each layer adds a small, context-dependent update), and
lm_head = the random init + the embedding's rows, permuted and scaled so the "next token =
perm(current)" logit is --lm-margin times the random logits' std: the next token is mostly a fixed
function of the current one with a clear margin, shifted by context. The float_noise row
shows whether that margin survives a tiny perturbation.

    PYTHONPATH=$PWD python tools/quant_gpu_compare.py --out OUT/quant            # 7B shape, cuda
    python tools/quant_gpu_compare.py --device cpu --layers 2 --hidden 256 --out /tmp/q   # CPU check
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench_paths import build_hf, first_divergence  # noqa: E402  (tools/ is this script's directory)
from mlperf_llama2.quant.fake_quant import Numerics  # noqa: E402
from mlperf_llama2.quant.open_backend import quantize_model  # noqa: E402
from mlperf_llama2.quant.yaml_config import load_rules  # noqa: E402

CONFIG = "liteml_configs/w8a8_npm_v1_3_4.yaml"
NUMERICS = Numerics(batch_shared_scale=False)  # batched = batch 1 with the defaults (see the docstring)
PAIRS = (("float_noise", "float", "noise floor: float vs float with tiny weight noise"),
         ("sim_full", "float", "simulate (whole config) vs float"),
         ("int8_full", "float", "int8 mode (whole config) vs float"),
         ("int8_full", "sim_full", "int8 mode vs simulate (whole config)"),
         ("int8_linear", "sim_linear", "int8 vs simulate, Linear rule only (GEMM rounding)"),
         ("sim_linear", "float", "simulate Linear rule only vs float"),
         ("engine_int8", "sim_linear", "engine int8 vs simulate Linear rule only"),
         ("engine_int8_full", "sim_full", "engine int8 (whole config) vs simulate (whole config)"))


def llama_config(layers: int, hidden: int, ffn: int | None, vocab: int):
    from transformers import LlamaConfig

    heads = max(hidden // 128, 1)
    ffn = ffn or 16 * round(hidden * 11008 / 4096 / 16)  # Llama-2-7B's ratio
    return LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=ffn, num_hidden_layers=layers,
                       num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=4096,
                       rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)


@torch.no_grad()
def decisive_llama(cfg, device, seed: int, embed_std: float, branch_std: float, lm_signal: float):
    """build_hf's random float32 model, reshaped to decide its greedy tokens clearly (module docstring)."""
    model = build_hf(cfg, device, torch.float32, 0.02, seed)
    gen = torch.Generator(device=device).manual_seed(seed + 1)
    emb = model.model.embed_tokens.weight  # [V, D]
    emb.normal_(0.0, embed_std, generator=gen)
    for layer in model.model.layers:
        layer.self_attn.o_proj.weight.normal_(0.0, branch_std, generator=gen)
        layer.mlp.down_proj.weight.normal_(0.0, branch_std, generator=gen)
    perm = torch.randperm(cfg.vocab_size, generator=gen, device=device)
    model.lm_head.weight.add_(lm_signal / embed_std * emb[perm])  # token perm[v]'s row predicts v
    return model


@torch.no_grad()
def perturbed(model, noise: float, seed: int):
    out = copy.deepcopy(model)
    gen = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    for p in out.parameters():
        p.mul_(1 + noise * torch.randn(p.shape, generator=gen, device=p.device, dtype=p.dtype))
    return out


def linear_rules(rules):
    return dataclasses.replace(rules, rules=tuple(r for r in rules.rules if r.source_kind == "Linear"))


@torch.no_grad()
def teacher_forced(model, ids: torch.Tensor) -> torch.Tensor:
    """ids [B, L] -> float32 logits [B, L, V] on the CPU."""
    return model(ids).logits.float().cpu()


@torch.no_grad()
def greedy(model, prompts: torch.Tensor, new_tokens: int) -> list[list[int]]:
    """prompts [B, P] (no padding) -> B continuations of exactly new_tokens (EOS suppressed until then)."""
    out = model.generate(prompts, attention_mask=torch.ones_like(prompts), max_new_tokens=new_tokens,
                         min_new_tokens=new_tokens, do_sample=False, num_beams=1, pad_token_id=2)
    return out[:, prompts.shape[1]:].tolist()


def engine_greedy(hf, rules, prompts: torch.Tensor, new_tokens: int, device, ranges=None) -> list[list[int]]:
    """The engine's int8 mode built from the transformers model's weights, greedy on the same prompts. `ranges`
    (a simulate model's static ranges): every rule of `rules`, those scales, an int8 KV cache with its K/V."""
    from mlperf_llama2.config import EngineConfig
    from mlperf_llama2.engine.llama import LlamaShape
    from mlperf_llama2.engine.loader import empty_model, load_weights
    from mlperf_llama2.engine.quant_plan import int8_plan
    from mlperf_llama2.engine.llm_engine import LLMEngine
    from mlperf_llama2.engine.model_runner import ModelRunner
    from mlperf_llama2.engine.sequence import SamplingParams

    max_len = prompts.shape[1] + new_tokens + 16
    shape = LlamaShape.from_hf_config(hf.config)
    plan = int8_plan(shape, rules)
    model = empty_model(hf.config, plan, device, torch.float32, max_len)
    load_weights(model, hf.state_dict().items(), plan, shape, source="transformers model")
    kv_scales = None
    if ranges is not None:
        from mlperf_llama2.engine.whole_config import attach
        from mlperf_llama2.quant.calibration_file import K_SLOT, V_SLOT, static_quantizers
        from mlperf_llama2.quant.fake_quant import symmetric_scale

        for name, q in static_quantizers(attach(model, rules, NUMERICS)).items():
            q.running_min, q.running_max = ranges[name]
        amax = [[torch.maximum(*(r.abs() for r in ranges[t.format(layer=i)])).reshape(()) for i in
                 range(shape.num_layers)] for t in (K_SLOT, V_SLOT)]
        kv_scales = symmetric_scale(torch.tensor(amax), 8)[:, :, None].expand(2, shape.num_layers,
                                                                             shape.num_kv_heads).contiguous().cpu()
    econf = EngineConfig(max_num_seqs=prompts.shape[0], max_num_batched_tokens=prompts.numel(), block_size=16,
                         num_kv_blocks=prompts.shape[0] * (max_len // 16 + 2) + 8,
                         kv_cache_dtype="auto" if ranges is None else "int8")
    engine = LLMEngine(ModelRunner(model, econf, 2, max_len, device, torch.float32, kv_scales), econf, 2, max_len)
    return engine.generate(prompts.tolist(), SamplingParams(new_tokens, min_new_tokens=new_tokens))


def logit_metrics(a: torch.Tensor, ref: torch.Tensor) -> dict:
    err = (a - ref).abs()  # [B, L, V]
    std = float(ref.std())
    return {"logit_err_max": float(err.max()), "logit_err_mean": float(err.mean()), "ref_logit_std": std,
            "logit_err_max_rel": float(err.max()) / std, "logit_err_mean_rel": float(err.mean()) / std,
            "top1_agreement": float((a.argmax(-1) == ref.argmax(-1)).float().mean())}


def greedy_metrics(a: list[list[int]], ref: list[list[int]]) -> dict:
    div = [first_divergence(x, y) for x, y in zip(a, ref)]
    same = sum(d is None for d in div)
    prefix = sum(len(x) if d is None else d for x, d in zip(a, div)) / sum(len(x) for x in a)
    return {"greedy_identical": same / len(div), "greedy_prefix_agreement": prefix,
            "first_divergence": [d for d in div if d is not None]}


def compare(logits: dict, tokens: dict) -> list[dict]:
    rows = []
    for a, b, what in PAIRS:
        if a not in tokens or b not in tokens:
            continue
        row = {"pair": f"{a} vs {b}", "what": what}
        if a in logits and b in logits:
            row.update(logit_metrics(logits[a], logits[b]))
        row.update(greedy_metrics(tokens[a], tokens[b]))
        rows.append(row)
    return rows


def print_table(rows: list[dict]) -> None:
    print(f"{'pair':<28} {'max_err/std':>11} {'mean_err/std':>12} {'top1':>7} {'identical':>9} {'prefix':>7}  "
          "first divergences")
    for r in rows:
        tf = (f"{r['logit_err_max_rel']:11.4f} {r['logit_err_mean_rel']:12.5f} {r['top1_agreement']:7.4f}"
              if "top1_agreement" in r else f"{'-':>11} {'-':>12} {'-':>7}")
        print(f"{r['pair']:<28} {tf} {r['greedy_identical']:9.3f} {r['greedy_prefix_agreement']:7.3f}  "
              f"{r['first_divergence']}")


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--config", default=CONFIG)
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--hidden", type=int, default=4096, help="heads = hidden / 128; ffn at 7B's ratio")
    ap.add_argument("--ffn", type=int, default=None)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--positions", type=int, default=128, help="teacher-forced positions per prompt")
    ap.add_argument("--prompt-len", type=int, default=32, help="greedy prompt length")
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--calib", type=int, default=8, help="calibration sequences (of --positions tokens)")
    ap.add_argument("--noise", type=float, default=1e-3, help="relative weight noise of the float_noise variant")
    ap.add_argument("--embed-std", type=float, default=1.0)
    ap.add_argument("--branch-std", type=float, default=None, help="default 0.1 / sqrt(hidden)")
    ap.add_argument("--lm-margin", type=float, default=7.0,
                    help="the permuted-embedding logit in units of the random lm_head logits' std (0.02 sqrt(hidden))")
    ap.add_argument("--variants",
                    default="float_noise,sim_full,int8_full,sim_linear,int8_linear,engine_int8,engine_int8_full")
    ap.add_argument("--seed", type=int, default=0)
    return ap.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    device = torch.device(args.device)
    t0 = time.perf_counter()
    cfg = llama_config(args.layers, args.hidden, args.ffn, args.vocab)
    branch_std = args.branch_std if args.branch_std is not None else 0.1 / args.hidden ** 0.5
    lm_signal = args.lm_margin * 0.02 / args.hidden ** 0.5  # its logit, lm_signal * hidden = margin * 0.02 sqrt(hidden)
    base = decisive_llama(cfg, device, args.seed, args.embed_std, branch_std, lm_signal).eval()
    gen = torch.Generator().manual_seed(args.seed + 2)
    ids = torch.randint(3, args.vocab, (args.prompts, args.positions), generator=gen).to(device)  # [B, L]
    calib = list(torch.randint(3, args.vocab, (args.calib, 1, args.positions), generator=gen).to(device))  # [1, L] each
    prompts = ids[:, :args.prompt_len]  # [B, P]
    rules = load_rules(args.config)
    result = {"args": vars(args), "branch_std": branch_std, "lm_signal": lm_signal, "device": str(device),
              "config": args.config, "build_s": time.perf_counter() - t0, "variants": {}, "rows": []}
    if device.type == "cuda":
        result["gpu"] = torch.cuda.get_device_name(device)
    logits, tokens = {}, {}
    sim_ranges = None  # sim_full's calibrated static ranges, for engine_int8_full
    os.makedirs(args.out, exist_ok=True)

    def save() -> None:  # after every variant, so a run cut short keeps what it measured
        result["rows"], result["tokens"] = compare(logits, tokens), tokens
        result["total_s"] = time.perf_counter() - t0
        with open(os.path.join(args.out, "quant_gpu_compare.json"), "w") as f:
            json.dump(result, f, indent=1)

    for name in ["float"] + args.variants.split(","):
        t = time.perf_counter()
        info = result["variants"].setdefault(name, {})
        if name.startswith("engine_int8"):
            try:  # last: its failure must not cost the other rows
                full = name.endswith("_full")
                tokens[name] = engine_greedy(base, rules if full else linear_rules(rules), prompts, args.new_tokens,
                                             device, sim_ranges if full else None)
            except Exception as exc:  # recorded in the JSON and printed
                info["error"] = repr(exc)
                print(f"engine_int8 failed: {exc!r}", flush=True)
        else:
            if name == "float":
                model = base
            elif name == "float_noise":
                model = perturbed(base, args.noise, args.seed + 3)
            else:
                model = copy.deepcopy(base)
                chosen = rules if name.endswith("_full") else linear_rules(rules)
                mode = "int8" if name.startswith("int8") else "simulate"
                info["approximations"] = quantize_model(model, chosen, mode, NUMERICS, calibration=calib).approximations
                if name == "sim_full":
                    from mlperf_llama2.quant.calibration_file import static_ranges

                    sim_ranges = {k: (lo.clone(), hi.clone()) for k, (lo, hi) in static_ranges(model).items()}
            logits[name] = teacher_forced(model, ids)
            tokens[name] = greedy(model, prompts, args.new_tokens)
            del model
        info["seconds"] = time.perf_counter() - t
        if device.type == "cuda":
            info["peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
            torch.cuda.empty_cache()
        print(f"{name}: {info['seconds']:.1f} s", flush=True)
        save()
    print(f"{cfg.num_hidden_layers} layers, hidden {cfg.hidden_size}, vocab {cfg.vocab_size}, {device}: "
          f"{args.prompts} prompts x {args.positions} teacher-forced positions; greedy {args.new_tokens} tokens "
          f"after {args.prompt_len}; total {result['total_s']:.0f} s")
    print_table(result["rows"])
    return result


if __name__ == "__main__":
    main()
