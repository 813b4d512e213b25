"""Accuracy of the open W8A8 backend against the float model: greedy agreement, logit error, perplexity.

For each config (and mode) the float model and its quantized copy see the same text: perplexity of
both on --text (or a built-in passage), the logit error relative to the float logits, and greedy
continuations of every sentence of the text compared token by token. Calibration uses the text's
sentences too unless --calibration-path names a processorca calibration pickle. Prints a table,
writes JSON. CPU is fine for small models; int8 mode on CPU runs the exact int64 GEMM.

    python tools/quant_accuracy.py --model-path DIR --out results/acc [--configs a.yaml,b.yaml]
"""

from __future__ import annotations

import argparse
import copy
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
def perplexity(model, ids: torch.Tensor) -> float:
    logits = model(ids).logits.float()  # [1, L, V]
    loss = torch.nn.functional.cross_entropy(logits[0, :-1], ids[0, 1:])
    return float(torch.exp(loss))


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


def main() -> int:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-path", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--modes", default="simulate,int8")
    parser.add_argument("--text", default=None, help="a text file to score (default: a built-in passage)")
    parser.add_argument("--calibration-path", default=None)
    parser.add_argument("--new-tokens", type=int, default=16)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.manual_seed(0)
    text = open(args.text, encoding="utf-8").read() if args.text else TEXT
    tok = AutoTokenizer.from_pretrained(args.model_path)
    base = AutoModelForCausalLM.from_pretrained(args.model_path, dtype=torch.float32).eval()
    ids = tok(text, return_tensors="pt")["input_ids"][:, :1024]  # [1, L]
    sentences = [s.strip() + "." for s in text.split(".") if s.strip()]
    prompts = [tok(s, return_tensors="pt")["input_ids"] for s in sentences]  # each [1, l]
    calib = (calibration_samples(args.calibration_path, base.config.vocab_size) if args.calibration_path
             else [p for p in prompts])
    with torch.no_grad():
        ref_logits = base(ids).logits.float()
    result = {"model": args.model_path, "tokens_scored": int(ids.shape[1]), "prompts": len(prompts),
              "new_tokens": args.new_tokens, "ppl_float": perplexity(base, ids), "rows": []}
    ref_greedy = greedy(base, prompts, args.new_tokens)
    print(f"float32: perplexity {result['ppl_float']:.3f} on {ids.shape[1]} tokens")
    print(f"{'config':<34} {'mode':<9} {'ppl':>9} {'d_ppl%':>7} {'logit_err_max':>13} {'rel_mean':>8} "
          f"{'greedy_prefix':>13} {'identical':>9}")
    for config in args.configs.split(","):
        for mode in args.modes.split(","):
            model = copy.deepcopy(base)
            quantize_model(model, load_rules(config), mode, calibration=calib)
            with torch.no_grad():
                logits = model(ids).logits.float()
            err = (logits - ref_logits).abs()
            prefix, same = agreement(ref_greedy, greedy(model, prompts, args.new_tokens))
            row = {"config": os.path.basename(config), "mode": mode, "ppl": perplexity(model, ids),
                   "logit_err_max": float(err.max()), "logit_err_rel_mean": float(err.mean() / ref_logits.std()),
                   "greedy_prefix_agreement": prefix, "greedy_identical": same}
            row["ppl_delta_pct"] = 100 * (row["ppl"] / result["ppl_float"] - 1)
            result["rows"].append(row)
            print(f"{row['config']:<34} {mode:<9} {row['ppl']:9.3f} {row['ppl_delta_pct']:7.2f} "
                  f"{row['logit_err_max']:13.4f} {row['logit_err_rel_mean']:8.4f} {prefix:13.3f} {same:9.3f}",
                  flush=True)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "quant_accuracy.json"), "w") as f:
        json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
