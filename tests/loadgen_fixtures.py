"""Helpers for the LoadGen tests: tiny dataset pickles, small user.confs, main.py in a subprocess,
and readers for LoadGen's accuracy log and summary."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]

PROMPT_TEXTS = [
    "What is the capital of France?",
    "Translate the sentence into French: I like apples.",
    "Q: What is 2 + 2? A:",
    "Summarize the article in one sentence. The team won the final match.",
    "Classify the review as positive or negative: The film was wonderful!",
    "Explain how you used the definition to come up with the answer.",
]

# Small runs: no minimum duration, a handful of queries, the QSL's own size as performance set.
SMALL_USER_CONF = """\
*.Offline.min_duration = 0
*.Offline.min_query_count = 6
*.Server.target_qps = 50
*.Server.min_duration = 0
*.Server.min_query_count = 6
*.*.performance_sample_count_override = 6
"""

# A performance run sized to be VALID on a tiny CPU model: early stopping at the 50th percentile
# needs few queries, and the latency limits are generous.
VALID_SERVER_USER_CONF = """\
*.Server.target_qps = 5
*.Server.min_duration = 0
*.Server.min_query_count = 12
*.Server.target_latency_percentile = 50
*.Server.ttft_latency = 60000
*.Server.tpot_latency = 10000
*.*.performance_sample_count_override = 6
"""


def write_dataset(path: Path, tokenizer_dir) -> Path:
    """A processed-format pickle (tok_input, output) of PROMPT_TEXTS, tokenized by the tiny tokenizer."""
    import pandas as pd
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    rows = [{"tok_input": tok(t)["input_ids"], "output": f"The answer: {t}"} for t in PROMPT_TEXTS]
    pd.DataFrame(rows).to_pickle(path)
    return path


def start_main(args, cwd: Path, script: str = "main.py", env: dict | None = None) -> subprocess.Popen:
    """main.py (or another root script; a .sh runs under bash with this python3 first on PATH) in a
    fresh process, so each LoadGen run loads mlperf.conf once."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""), **(env or {})}
    path = str(REPO / script) if not os.path.isabs(script) else script
    if path.endswith(".sh"):
        shim = Path(cwd) / ".python3-shim"
        shim.mkdir(exist_ok=True)
        launcher = shim / "python3"
        if not launcher.exists():  # a wrapper, not a symlink: a venv's python finds its venv by its own path
            launcher.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
            launcher.chmod(0o755)
        env["PATH"] = str(shim) + os.pathsep + env.get("PATH", "")
        cmd = ["bash", path, *map(str, args)]
    else:
        cmd = [sys.executable, path, *map(str, args)]
    return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen, timeout: int = 300) -> subprocess.CompletedProcess:
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        stdout, stderr = proc.communicate()
        stderr += f"\n[killed after {timeout} s]"
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def run_main(args, cwd: Path, timeout: int = 300, script: str = "main.py") -> subprocess.CompletedProcess:
    return finish(start_main(args, cwd, script), timeout)


def read_accuracy_log(log_dir: Path) -> list[dict]:
    with open(log_dir / "mlperf_log_accuracy.json") as f:
        return json.load(f)


def tokens(hex_data: str) -> np.ndarray:
    return np.frombuffer(bytes.fromhex(hex_data), np.int32)


def summary(log_dir: Path) -> str:
    return (log_dir / "mlperf_log_summary.txt").read_text()


def direct_generate(model_dir, prompts, max_new_tokens: int) -> list[list[int]]:
    """Per-sample greedy model.generate (no padding, no harness), cut after the first EOS."""
    import torch
    from transformers import AutoModelForCausalLM

    from mlperf_llama2.postprocess import cut_after_first_eos

    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    eos = model.config.eos_token_id
    out = []
    for prompt in prompts:
        ids = torch.tensor([list(prompt)])  # [1, L]
        with torch.inference_mode():
            gen = model.generate(ids, max_new_tokens=max_new_tokens, min_new_tokens=1, do_sample=False,
                                 num_beams=1, pad_token_id=eos)
        out.append(cut_after_first_eos(gen[0, ids.shape[1]:].tolist(), eos))
    return out
