"""Accuracy of the open W8A8 backend against the float model: greedy agreement, logit error, perplexity.

For each config (and mode) the float model and its quantized copy see the same tokens. With
--dataset (a processed OpenOrca pickle tokenized for the model): perplexity of the reference
answers (`tok_output`) given their prompts, the logit error and teacher-forced top-1 agreement on
them, and greedy continuations of the first --prompts prompts compared token by token; calibration
on --calibration-path (every row's tok_input, as the harness does). Without --dataset the same on
--text (or a built-in passage), calibrated on its sentences. Prints a table, writes JSON. CPU is
fine for small models; int8 mode on CPU runs the exact int64 GEMM.

    python tools/quant_accuracy.py --model-path DIR --out results/acc [--dataset P --calibration-path C]
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mlperf_llama2.quant.open_backend import quantize_model  # noqa: E402
from mlperf_llama2.quant.setup import calibration_samples  # noqa: E402
from mlperf_llama2.quant.yaml_config import load_rules  # noqa: E402

TEXT = (
    "The harbour town woke slowly under a grey sky. Fishing boats returned with their nets half full, "
    "and the market opened an hour late because the baker's van had broken down on the coast road. "
    "A teacher explained to her class why the tides follow the moon, drawing two circles on the board. "
    "In the library, an old man read the same page of a novel three times before he closed it. "
    "By noon the rain had stopped, and the children ran down to the beach to look for shells. "
    "The mayor announced that the new bridge would open in the spring, if the budget allowed it. "
    "Question: what is twelve times seven? Answer: twelve times seven is eighty-four. "
    "Summarize the story in one sentence: a quiet town goes about its day while the weather clears."
)
CONFIGS = ("liteml_configs/w8a8_npm_v1_3_4.yaml", "liteml_configs/w8a8_npm_v1_3_4_pv16.yaml",
           "liteml_configs/w8a8_npm_v1_3_4_lmhead16.yaml")


@torch.no_grad()
def scored_logits(model, pairs: list[tuple[torch.Tensor, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits predicting each scored token and the tokens: pairs of ([1, L] ids, first scored index)."""
    logits, targets = [], []
    for ids, start in pairs:
        out = model(ids).logits.float()[0]  # [L, V]
        logits.append(out[start - 1:-1])
        targets.append(ids[0, start:])
    return torch.cat(logits), torch.cat(targets)  # [T, V], [T]


def dataset_pairs(path: str, rows: int, vocab: int) -> tuple[list, list]:
    """(prompt + answer, index of the answer's first token) per row, and the prompts alone."""
    import pandas as pd

    frame = pd.read_pickle(path).iloc[:rows]
    pairs, prompts = [], []
    for tok_in, tok_out in zip(frame["tok_input"], frame["tok_output"]):
        prompt = [int(t) for t in tok_in if int(t) < vocab]
        answer = [int(t) for t in tok_out if int(t) < vocab][:256]
        pairs.append((torch.tensor([prompt + answer]), len(prompt)))
        prompts.append(torch.tensor([prompt]))
    return pairs, prompts


@torch.no_grad()
def greedy(model, prompts: list[torch.Tensor], new_tokens: int) -> list[list[int]]:
    outs = []
    for p in prompts:
        out = model.generate(p, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                             pad_token_id=0)
        outs.append(out[0, p.shape[1]:].tolist())
    return outs


def agreement(a: list[list[int]], b: list[list[int]]) -> tuple[float, float]:
    """(fraction of tokens before the first divergence, fraction of identical continuations)."""
    prefix, same = 0, 0
    total = sum(len(x) for x in a)
    for x, y in zip(a, b):
        n = next((i for i, (u, v) in enumerate(zip(x, y)) if u != v), len(x))
        prefix += n
        same += n == len(x)
    return prefix / total, same / len(a)


def ablate(base, config: str, calib, pairs, ref_logits, targets, result: dict, out: str) -> int:
    """Each rule of `config` alone, in simulate mode: which rule costs how much."""
    rules = load_rules(config)
    print(f"{'rule alone':<48} {'ppl':>9} {'d_ppl%':>7} {'rel_err':>8} {'top1':>6}")
    for rule in rules.rules:
        model = copy.deepcopy(base)
        quantize_model(model, dataclasses.replace(rules, rules=(rule,)), "simulate", calibration=calib)
        logits, _ = scored_logits(model, pairs)
        row = {"rule": rule.label, "ppl": float(torch.exp(torch.nn.functional.cross_entropy(logits, targets))),
               "logit_err_rel_mean": float((logits - ref_logits).abs().mean() / ref_logits.std()),
               "top1_agreement": float((logits.argmax(-1) == ref_logits.argmax(-1)).float().mean())}
        result["rows"].append(row)
        name = f"{rule.index}: {rule.source_name or rule.source_module} -> {rule.destination}"
        print(f"{name:<48} {row['ppl']:9.3f} {100 * (row['ppl'] / result['ppl_float'] - 1):7.2f} "
              f"{row['logit_err_rel_mean']:8.4f} {row['top1_agreement']:6.3f}", flush=True)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "quant_ablation.json"), "w") as f:
        json.dump(result, f, indent=1)
    return 0


def main() -> int:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-path", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--variants", default=None,
                        help="config:mode,... (default: every config in every mode of --modes)")
    parser.add_argument("--modes", default="simulate,int8")
    parser.add_argument("--text", default=None, help="a text file to score (default: a built-in passage)")
    parser.add_argument("--dataset", default=None, help="processed pickle with tok_input and tok_output")
    parser.add_argument("--rows", type=int, default=32, help="dataset rows scored")
    parser.add_argument("--prompts", type=int, default=8, help="prompts continued greedily")
    parser.add_argument("--calibration-path", default=None)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--ablate", action="store_true",
                        help="instead: each rule of the first config alone (simulate; no greedy)")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(args.model_path, dtype=torch.float32).eval()
    vocab = base.config.vocab_size
    if args.dataset:
        pairs, prompts = dataset_pairs(args.dataset, args.rows, vocab)
        source = args.dataset
    else:
        tok = AutoTokenizer.from_pretrained(args.model_path)
        text = open(args.text, encoding="utf-8").read() if args.text else TEXT
        pairs = [(tok(text, return_tensors="pt")["input_ids"][:, :1024], 1)]
        prompts = [tok(s.strip() + ".", return_tensors="pt")["input_ids"] for s in text.split(".") if s.strip()]
        source = args.text or "built-in passage"
    prompts = prompts[:args.prompts]
    calib = calibration_samples(args.calibration_path, vocab) if args.calibration_path else list(prompts)
    ref_logits, targets = scored_logits(base, pairs)
    ref_nll = torch.nn.functional.cross_entropy(ref_logits, targets)
    result = {"model": args.model_path, "source": source, "tokens_scored": int(targets.numel()),
              "prompts": len(prompts), "calibration_samples": len(calib), "new_tokens": args.new_tokens,
              "ppl_float": float(torch.exp(ref_nll)), "rows": []}
    if args.ablate:
        return ablate(base, args.configs.split(",")[0], calib, pairs, ref_logits, targets, result, args.out)
    ref_greedy = greedy(base, prompts, args.new_tokens)
    print(f"float32: perplexity {result['ppl_float']:.3f} on {targets.numel()} tokens of {source}; "
          f"{len(prompts)} greedy prompts; {len(calib)} calibration samples")
    print(f"{'config':<34} {'mode':<9} {'ppl':>9} {'d_ppl%':>7} {'rel_err':>8} {'top1':>6} "
          f"{'greedy_prefix':>13} {'identical':>9}")
    variants = ([v.rsplit(":", 1) for v in args.variants.split(",")] if args.variants else
                [(c, m) for c in args.configs.split(",") for m in args.modes.split(",")])
    for config, mode in variants:
        model = copy.deepcopy(base)
        quantize_model(model, load_rules(config), mode, calibration=calib)
        logits, _ = scored_logits(model, pairs)
        err = (logits - ref_logits).abs()
        prefix, same = agreement(ref_greedy, greedy(model, prompts, args.new_tokens))
        row = {"config": os.path.basename(config), "mode": mode,
               "ppl": float(torch.exp(torch.nn.functional.cross_entropy(logits, targets))),
               "logit_err_max": float(err.max()), "logit_err_rel_mean": float(err.mean() / ref_logits.std()),
               "top1_agreement": float((logits.argmax(-1) == ref_logits.argmax(-1)).float().mean()),
               "greedy_prefix_agreement": prefix, "greedy_identical": same}
        row["ppl_delta_pct"] = 100 * (row["ppl"] / result["ppl_float"] - 1)
        result["rows"].append(row)
        print(f"{row['config']:<34} {mode:<9} {row['ppl']:9.3f} {row['ppl_delta_pct']:7.2f} "
              f"{row['logit_err_rel_mean']:8.4f} {row['top1_agreement']:6.3f} {prefix:13.3f} {same:9.3f}", flush=True)
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "quant_accuracy.json"), "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
