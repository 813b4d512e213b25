"""evaluate-accuracy.py (SPEC §4): same numbers as a direct rouge-score computation, the reference's output
line, dedup by qsl_idx, the three dtypes, parallel == serial, and one-line errors."""

import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mlperf_llama2.data import scoring
from mlperf_llama2.data.accuracy_log import load_predictions, unique_predictions
from mlperf_llama2.data.sentences import split_sentences
from mlperf_llama2.errors import UserError
from mlperf_llama2.tokenization import load_tokenizer

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "evaluate-accuracy.py"

TARGETS = [
    "The capital of France is Paris. It is a large city.",
    "Dr. Smith went to Washington, D.C. in the U.S. to meet Mr. Jones.",
    "Pi is about 3.14, e.g. the ratio of a circle's circumference to its diameter.",
    "The team won the final match after a long season of games.",
    "Explain how you used the definition to come up with the answer.",
]
PREDICTIONS = [  # what the "model" generated for each sample
    "Paris is the capital of France. It is large.",
    "Mr. Jones met Dr. Smith in Washington, D.C. on a sunny day.",
    "Pi is about 3.14.",
    "The quick brown fox jumps over the lazy dog.",
    "I used the definition step by step to come up with the answer.",
]


def write_log(path, entries):
    path.write_text(json.dumps(entries))
    return str(path)


def entry(qsl_idx, tokens, dtype=np.int32, seq_id=0):
    data = np.asarray(tokens, dtype).tobytes().hex().upper()
    return {"seq_id": seq_id, "qsl_idx": qsl_idx, "data": data, "token_count": len(tokens)}


@pytest.fixture(scope="module")
def case(sp_tokenizer_dir, tmp_path_factory):
    """A dataset pickle, the generated token ids (each ending in EOS), and an int32 accuracy log."""
    tmp = tmp_path_factory.mktemp("scoring")
    tok = load_tokenizer(str(sp_tokenizer_dir))
    dataset = tmp / "dataset.pkl"
    pd.DataFrame({"tok_input": [[1, 5]] * len(TARGETS), "output": TARGETS}).to_pickle(dataset)
    outputs = [tok.encode(p, add_special_tokens=False) + [2] for p in PREDICTIONS]
    order = [3, 0, 4, 1, 2]  # LoadGen logs in completion order, not index order
    log = write_log(tmp / "log.json", [entry(i, outputs[i], seq_id=k) for k, i in enumerate(order)])
    return {"tmp": tmp, "tok": tok, "dataset": str(dataset), "outputs": outputs, "order": order, "log": log,
            "checkpoint": str(sp_tokenizer_dir)}


def direct_result(preds, targets, token_counts):
    """The reference's computation written out with rouge-score, numpy and nltk's splitter directly."""
    from rouge_score import rouge_scorer

    def post(t):
        return "\n".join(split_sentences(t.strip()))

    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL", "rougeLsum"], use_stemmer=True)
    pp, tt = [post(p) for p in preds], [post(t) for t in targets]
    per = [scorer.score(t, p) for p, t in zip(pp, tt)]
    out = {k: round(np.mean([s[k].fmeasure for s in per]) * 100, 4) for k in ["rouge1", "rouge2", "rougeL", "rougeLsum"]}
    n = sum(token_counts)
    return {**out, "gen_len": np.sum([len(p) for p in pp]), "gen_num": len(pp), "gen_tok_len": n,
            "tokens_per_sample": round(n / len(pp), 1)}


def run_script(*args):
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, cwd=ROOT,
                          env={"PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})


def test_end_to_end_numbers_equal_a_direct_computation(case):
    out_json = case["tmp"] / "result.json"
    proc = run_script("--checkpoint-path", case["checkpoint"], "--mlperf-accuracy-file", case["log"],
                      "--dataset-file", case["dataset"], "--output-json", str(out_json), "--workers", "2")
    assert proc.returncode == 0, proc.stderr
    # truncate_accuracy_log.py's hash line of the scored log, then the reference's output
    log_hash = hashlib.sha256(Path(case["log"]).read_bytes()).hexdigest()
    assert proc.stdout.startswith(f"hash={log_hash}\n\nResults\n\n")
    line = proc.stdout.strip().splitlines()[-1]
    expected = direct_result([PREDICTIONS[i] for i in case["order"]], [TARGETS[i] for i in case["order"]],
                             [len(case["outputs"][i]) for i in case["order"]])
    assert eval(line) == expected  # noqa: S307 - our own output
    assert "np." not in line
    assert float(re.search(r"'rouge1':\s+'?([\d.]+)'?", line).group(1)) == expected["rouge1"]
    assert list(eval(line)) == ["rouge1", "rouge2", "rougeL", "rougeLsum", "gen_len", "gen_num", "gen_tok_len",  # noqa: S307
                                "tokens_per_sample"]
    saved = json.loads(out_json.read_text())
    assert saved["results"] == eval(line) and saved["decode_backend"] == "sentencepiece"  # noqa: S307
    assert saved["targets"]["llama2-70b-99"]["thresholds"] == {"rouge1": 43.9869, "rouge2": 21.8148, "rougeL": 28.33}
    assert "llama2-70b-99:" in proc.stderr and "only 5 samples scored" in proc.stderr


def test_first_entry_per_qsl_idx_wins_in_file_order(case):
    outs = case["outputs"]
    entries = [entry(1, outs[1]), entry(0, outs[0]), entry(1, outs[3] + outs[3]), entry(0, [7, 8, 9, 2])]
    preds = unique_predictions(entries, "int32", len(TARGETS))
    assert [p.qsl_idx for p in preds] == [1, 0]
    assert [p.tokens.tolist() for p in preds] == [outs[1], outs[0]]
    assert sum(len(p.tokens) for p in preds) == len(outs[1]) + len(outs[0])  # gen_tok_len ignores duplicates


@pytest.mark.parametrize("dtype, np_dtype", [("int32", np.int32), ("int64", np.int64), ("float", np.float32)])
def test_each_dtype_reads_its_own_encoding(case, dtype, np_dtype):
    tokens = case["outputs"][0]
    (pred,) = unique_predictions([entry(0, tokens, np_dtype)], dtype, 5)
    assert pred.tokens.dtype == np_dtype and pred.tokens.tolist() == tokens
    assert case["tok"].decode(pred.tokens) == PREDICTIONS[0]


def test_int32_data_read_as_int64_is_refused(case):
    odd = [5, 6, 7]  # 12 bytes: not a multiple of 8
    with pytest.raises(UserError, match="not a multiple of 8"):
        unique_predictions([entry(0, odd, np.int32)], "int64", 5)


def test_parallel_scores_equal_serial_scores():
    preds = PREDICTIONS * 7 + ["", "   ", "Single"]
    targets = TARGETS * 7 + ["Something.", "Else here.", "Single"]
    serial = scoring.score_pairs(preds, targets, workers=1)
    assert scoring.score_pairs(preds, targets, workers=2) == serial
    assert scoring.aggregate(serial, 100) == direct_result(preds, targets, [100])


def test_result_numbers_are_plain_python():
    result = scoring.aggregate([(10, (0.5, 0.25, 0.125, 1 / 3)), (5, (1.0, 0.0, 0.5, 0.7))], 7)
    assert all(type(v) in (int, float) for v in result.values())
    assert result == {"rouge1": 75.0, "rouge2": 12.5, "rougeL": 31.25, "rougeLsum": 51.6667, "gen_len": 15,
                      "gen_num": 2, "gen_tok_len": 7, "tokens_per_sample": 3.5}


def test_target_check_of_the_reference_numbers():
    spec_example = {"rouge1": 44.4465, "rouge2": 22.0638, "rougeL": 28.625, "rougeLsum": 42.0251,
                    "gen_len": 29614748, "gen_num": 24576, "gen_tok_len": 7399575, "tokens_per_sample": 301.1}
    checks = scoring.check_targets(spec_example)
    assert checks["full_dataset"] and checks["llama2-70b-99"]["passed"] and checks["llama2-70b-99.9"]["passed"]
    low = dict(spec_example, rouge2=21.8147)
    assert not scoring.check_targets(low)["llama2-70b-99"]["passed"]
    long = dict(spec_example, tokens_per_sample=324.0)
    assert not scoring.check_targets(long)["tokens_per_sample_ok"]


def test_empty_log_is_an_error(tmp_path):
    with pytest.raises(UserError, match="has no entries"):
        load_predictions(write_log(tmp_path / "e.json", []), "int32", 5)


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "accuracy log not found"),
        ('[{"qsl_idx": 0, "data": "0100', "not valid JSON"),
        ('{"qsl_idx": 0}', "expected a list"),
        ('[{"qsl_idx": 9, "data": "01000000"}]', "qsl_idx 9 is outside the dataset"),
        ('[{"qsl_idx": 0, "data": "010000"}]', "3 bytes, not a multiple of 4"),
        ('[{"qsl_idx": 0, "data": "zz"}]', "not valid hex"),
        ('[{"qsl_idx": 0}]', "expected an object with 'qsl_idx' and 'data'"),
    ],
)
def test_bad_logs_fail_with_one_line_and_exit_2(case, tmp_path, content, message):
    path = tmp_path / "log.json"
    if content is not None:
        path.write_text(content)
    proc = run_script("--checkpoint-path", case["checkpoint"], "--mlperf-accuracy-file", str(path),
                      "--dataset-file", case["dataset"])
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in proc.stderr


def test_missing_dataset_fails_with_one_line(case, tmp_path):
    proc = run_script("--checkpoint-path", case["checkpoint"], "--mlperf-accuracy-file", case["log"],
                      "--dataset-file", str(tmp_path / "none.pkl"))
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert "dataset not found" in proc.stderr
