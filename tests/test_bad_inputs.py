"""Bad input, as a new user would give it: each case runs an entry point in a subprocess and must end
with exit code 2, exactly one line `PROG: error: ...` naming the problem (and what to do), no
traceback, and, for main.py, before the model loads (no "Loading weights" / "loading" line, no
LoadGen start). --verbose adds the traceback back for debugging.

Cases of evaluate-accuracy.py and processorca.py run once those scripts are in the tree.
"""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest

from loadgen_fixtures import SMALL_USER_CONF, write_dataset
from reliability_fixtures import REPO, child_env, error_lines, run

PARALLEL = 3
CASE_TIMEOUT_S = 120


@dataclass(frozen=True)
class Case:
    name: str
    script: str
    args: Callable[[Path], list]  # workdir -> argv
    expect: tuple[str, ...]  # substrings of the error line
    env: dict = field(default_factory=dict)
    model_must_not_load: bool = True
    requires: str = ""  # a repo file the case needs (a branch not yet on main): skipped without it


def _main_args(w: Path, **over) -> list:
    base = {"--model-path": w / "model", "--dataset-path": w / "data.pkl", "--user-conf": w / "user.conf",
            "--output-log-dir": w / "logs", "--device": "cpu", "--max-new-tokens": 4}
    base.update({k: v for k, v in over.items()})
    return [x for k, v in base.items() if v is not None for x in (k, v)]


def M(**over) -> Callable[[Path], list]:
    """main.py argv with some flags replaced (a value of None drops the flag)."""
    return lambda w: _main_args(w, **{f"--{k.replace('_', '-')}": v(w) if callable(v) else v for k, v in over.items()})


def E(**over) -> Callable[[Path], list]:
    """evaluate-accuracy.py argv."""
    def build(w: Path) -> list:
        base = {"--checkpoint-path": w / "model", "--mlperf-accuracy-file": w / "acc" / "good.json",
                "--dataset-file": w / "data.pkl", "--dtype": "int32"}
        base.update({f"--{k.replace('_', '-')}": v(w) for k, v in over.items()})
        return [x for k, v in base.items() for x in (k, v)]
    return build


def P(**over) -> Callable[[Path], list]:
    """processorca.py argv."""
    def build(w: Path) -> list:
        base = {"--dataset_pq_path": w / "orca.parquet", "--model_dir": w / "model", "--export_dir": w / "export",
                "--num_total_samples": 4, "--calibration_subset_size": 2}
        base.update({f"--{k}": v(w) for k, v in over.items()})
        return [x for k, v in base.items() for x in (k, v)]
    return build


CASES = [
    # main.py: the checkpoint
    Case("model_dir_missing", "main.py", M(model_path=lambda w: w / "no_such_model"), ("not a directory",)),
    Case("model_without_weights", "main.py", M(model_path=lambda w: w / "m_no_weights"), ("no weights",)),
    Case("model_without_tokenizer", "main.py", M(model_path=lambda w: w / "m_no_tokenizer"), ("no tokenizer",)),
    Case("model_config_corrupt", "main.py", M(model_path=lambda w: w / "m_bad_config"),
         ("config.json", "corrupt file? copy the checkpoint again")),
    Case("tokenizer_larger_than_model", "main.py", M(model_path=lambda w: w / "m_small_vocab"),
         ("tokenizer has 512 tokens", "embedding only 300", "different models")),
    Case("tokenizer_json_corrupt", "main.py", M(model_path=lambda w: w / "m_bad_tokenizer"), ("tokenizer.json",)),
    # main.py: the dataset
    Case("dataset_missing", "main.py", M(dataset_path=lambda w: w / "nope.pkl"), ("dataset not found", "processorca")),
    Case("dataset_empty_file", "main.py", M(dataset_path=lambda w: w / "empty.pkl"), ("dataset file is empty",)),
    Case("dataset_corrupt", "main.py", M(dataset_path=lambda w: w / "corrupt.pkl"), ("not a readable pandas pickle",)),
    Case("dataset_is_csv", "main.py", M(dataset_path=lambda w: w / "csv.pkl"), ("not a readable pandas pickle",)),
    Case("dataset_gzip_corrupt", "main.py", M(dataset_path=lambda w: w / "bad.pkl.gz"),
         ("not a readable pandas pickle",)),
    Case("dataset_not_a_dataframe", "main.py", M(dataset_path=lambda w: w / "list.pkl"),
         ("holds a list", "expected a pandas DataFrame")),
    Case("dataset_without_tok_input", "main.py", M(dataset_path=lambda w: w / "no_tok_input.pkl"),
         ("no 'tok_input' column",)),
    Case("dataset_tok_input_strings", "main.py", M(dataset_path=lambda w: w / "str_tokens.pkl"),
         ("row 1", "tok_input must be a list of token ids")),
    Case("dataset_tok_input_floats", "main.py", M(dataset_path=lambda w: w / "float_tokens.pkl"),
         ("row 0", "non-integer token ids")),
    Case("dataset_token_outside_vocab", "main.py", M(dataset_path=lambda w: w / "oov.pkl"),
         ("row 2", "token id 99999 is outside the model's vocabulary [0, 512)")),
    Case("dataset_negative_token", "main.py", M(dataset_path=lambda w: w / "negative.pkl"), ("token id -5",)),
    Case("dataset_empty_prompt", "main.py", M(dataset_path=lambda w: w / "empty_prompt.pkl"),
         ("row 3", "empty prompt")),
    Case("dataset_prompt_too_long", "main.py", M(dataset_path=lambda w: w / "long_prompt.pkl"),
         ("prompt has 1024 tokens", "shorter than 1024")),
    Case("dataset_no_rows", "main.py", M(dataset_path=lambda w: w / "no_rows.pkl"), ("no rows",)),
    # main.py: LoadGen configuration, devices, outputs, flags
    Case("user_conf_missing", "main.py", M(user_conf=lambda w: w / "nope.conf"), ("--user-conf", "file not found")),
    Case("user_conf_is_a_directory", "main.py", M(user_conf=lambda w: w), ("--user-conf", "is a directory")),
    Case("user_conf_malformed", "main.py", M(user_conf=lambda w: w / "malformed.conf"),
         ("--user-conf", "line 1", "a whole number >= 0 is expected")),
    Case("liteml_config_missing", "main.py", M(liteml_config=lambda w: w / "nope.yaml"),
         ("--liteml-config", "not found")),
    Case("quant_yaml_not_yaml", "main.py", M(liteml_config=lambda w: w / "broken.yaml", quant_backend="open"),
         ("--liteml-config", "not valid YAML"), requires="mlperf_llama2/quant/yaml_config.py"),
    Case("quant_yaml_without_qat", "main.py", M(liteml_config=lambda w: w / "no_qat.yaml", quant_backend="open"),
         ("--liteml-config", "top-level 'QAT' section"), requires="mlperf_llama2/quant/yaml_config.py"),
    Case("quant_yaml_unsupported_smoothquant", "main.py",
         M(liteml_config=lambda w: w / "smoothquant.yaml", quant_backend="open"),
         ("SmoothQuant is not supported",), requires="mlperf_llama2/quant/yaml_config.py"),
    Case("device_cuda_without_cuda", "main.py", M(device="cuda"), ("CUDA is not available", "--device cpu")),
    Case("device_unknown", "main.py", M(device="tpu"), ("--device must be cpu, cuda or cuda:N",)),
    Case("output_log_dir_unwritable", "main.py", M(output_log_dir=lambda w: w / "data.pkl" / "logs"),
         ("--output-log-dir", "cannot create it")),
    Case("save_outputs_unwritable", "main.py", M(save_outputs=lambda w: w / "data.pkl" / "out.json"),
         ("--save-outputs", "is a file, not a directory")),
    Case("total_sample_count_zero", "main.py", M(total_sample_count=0), ("--total-sample-count must be >= 1",)),
    Case("max_new_tokens_too_large", "main.py", M(max_new_tokens=5000), ("--max-new-tokens must be in 2..1024",)),
    Case("max_new_tokens_one", "main.py", M(max_new_tokens=1), ("--max-new-tokens must be in 2..1024",
                                                                 "no response of one token")),
    Case("audit_conf_given_but_missing", "main.py", M(audit_conf=lambda w: w / "audit.conf"),
         ("--audit-conf", "audit.conf: no such file")),
    Case("accuracy_dataset_without_answers", "main.py", lambda w: _main_args(w, **{
        "--dataset-path": w / "no_output.pkl"}) + ["--accuracy"], ("--accuracy", "no 'output' column")),
    Case("dataset_is_parquet", "main.py", M(dataset_path=lambda w: w / "orca.parquet"),
         ("dataset is a parquet file", "processorca.py")),
    Case("engine_kv_blocks_below_one_sequence", "main.py", lambda w: _main_args(w) + [
        "--backend", "engine", "--num-kv-blocks", "1", "--block-size", "16"],
         ("--num-kv-blocks 1", "16 KV slots", "+ --max-new-tokens 4")),
    Case("fault_spec_bad", "main.py", M(), ("MLPERF_LLAMA2_FAULTS", "bad rule"), env={"MLPERF_LLAMA2_FAULTS": "boom"}),
    # run scripts
    Case("script_without_checkpoint_path", "run_server.sh", lambda w: [], ("CHECKPOINT_PATH is not set",),
         env={"CHECKPOINT_PATH": "", "DATASET_PATH": ""}),
    Case("script_with_missing_checkpoint", "run_offline.sh", lambda w: ["--device", "cpu"],
         ("--model-path", "not a directory"), env={"CHECKPOINT_PATH": "/no/such/dir", "DATASET_PATH": "/x.pkl"}),
    # compliance
    Case("test06_log_dir_missing", "compliance/TEST06/run_verification.py",
         lambda w: ["-c", w / "no_logs", "-o", w / "verified", "-s", "Offline"], ("no_logs",)),
    # evaluate-accuracy.py (from the data branch)
    Case("accuracy_log_missing", "evaluate-accuracy.py", E(mlperf_accuracy_file=lambda w: w / "acc" / "nope.json"),
         ("accuracy log not found",)),
    Case("accuracy_log_truncated", "evaluate-accuracy.py", E(mlperf_accuracy_file=lambda w: w / "acc" / "cut.json"),
         ("not valid JSON", "truncated")),
    Case("accuracy_log_odd_bytes", "evaluate-accuracy.py", E(mlperf_accuracy_file=lambda w: w / "acc" / "odd.json"),
         ("not a multiple of 4",)),
    Case("accuracy_log_qsl_idx_beyond_dataset", "evaluate-accuracy.py",
         E(mlperf_accuracy_file=lambda w: w / "acc" / "beyond.json"), ("qsl_idx 99 is outside the dataset",)),
    Case("accuracy_dataset_without_output", "evaluate-accuracy.py", E(dataset_file=lambda w: w / "no_output.pkl"),
         ("no 'output' column",)),
    Case("accuracy_checkpoint_without_tokenizer", "evaluate-accuracy.py",
         E(checkpoint_path=lambda w: w / "no_such_model"), ("no_such_model",)),
    # processorca.py (from the data branch)
    Case("orca_parquet_missing", "processorca.py", P(dataset_pq_path=lambda w: w / "nope.parquet"),
         ("parquet not found",)),
    Case("orca_parquet_corrupt", "processorca.py", P(dataset_pq_path=lambda w: w / "corrupt.pkl"),
         ("parquet",)),
    Case("orca_parquet_missing_columns", "processorca.py", P(dataset_pq_path=lambda w: w / "few_columns.parquet"),
         ("missing column",)),
    Case("orca_model_dir_missing", "processorca.py", P(model_dir=lambda w: w / "no_such_model"),
         ("--model_dir",)),
    Case("orca_model_dir_without_tokenizer", "processorca.py", P(model_dir=lambda w: w / "m_no_tokenizer"),
         ("no tokenizer.json or tokenizer.model there",)),
    Case("orca_export_dir_unwritable", "processorca.py", P(export_dir=lambda w: w / "data.pkl" / "export"),
         ("--export_dir",)),
]


def _copy_model(src: Path, dst: Path, drop=(), edit_config=None) -> None:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(*drop))
    if edit_config is not None:
        config = json.loads((dst / "config.json").read_text())
        edit_config(config)
        (dst / "config.json").write_text(json.dumps(config))


def build_workdir(w: Path, model_dir: Path, tokenizer_dir: Path) -> None:
    import pandas as pd

    shutil.copytree(model_dir, w / "model")
    _copy_model(model_dir, w / "m_no_weights", drop=("*.safetensors",))
    _copy_model(model_dir, w / "m_no_tokenizer", drop=("tokenizer.json", "tokenizer.model"))
    _copy_model(model_dir, w / "m_bad_config")
    (w / "m_bad_config" / "config.json").write_text('{"vocab_size": 512, ')
    _copy_model(model_dir, w / "m_small_vocab", edit_config=lambda c: c.update(vocab_size=300))
    _copy_model(model_dir, w / "m_bad_tokenizer")
    (w / "m_bad_tokenizer" / "tokenizer.json").write_text("<html>rate limited</html>")

    write_dataset(w / "data.pkl", tokenizer_dir)
    good = pd.read_pickle(w / "data.pkl")
    prompts = good["tok_input"].tolist()
    (w / "empty.pkl").write_bytes(b"")
    (w / "corrupt.pkl").write_bytes(b"\x80\x04\x95garbage" * 10)
    (w / "csv.pkl").write_text("tok_input,output\n\"[1, 2]\",x\n")
    (w / "bad.pkl.gz").write_bytes(gzip.compress(b"not a pickle"))
    pd.to_pickle(prompts, w / "list.pkl")
    good.rename(columns={"tok_input": "input_ids"}).to_pickle(w / "no_tok_input.pkl")

    def variant(name: str, row: int, value) -> None:
        frame = good.copy()
        frame["tok_input"] = [value if i == row else p for i, p in enumerate(prompts)]
        frame.to_pickle(w / name)

    variant("str_tokens.pkl", 1, "1 2 3")
    variant("float_tokens.pkl", 0, [1.0, 2.5, 3.0])
    variant("oov.pkl", 2, [1, 5, 99999])
    variant("negative.pkl", 0, [1, -5, 7])
    variant("empty_prompt.pkl", 3, [])
    variant("long_prompt.pkl", 0, [1] + [7] * 1023)
    good.iloc[:0].to_pickle(w / "no_rows.pkl")
    good.drop(columns=["output"]).to_pickle(w / "no_output.pkl")

    (w / "user.conf").write_text(SMALL_USER_CONF)
    (w / "malformed.conf").write_text("*.Offline.min_query_count = many\n")
    (w / "broken.yaml").write_text("QAT:\n  data_quantization: [unclosed\n")
    (w / "no_qat.yaml").write_text("quantization:\n  bits: 8\n")
    (w / "smoothquant.yaml").write_text("QAT:\n  fully_quantized: true\nSmoothQuant:\n  alpha: 0.5\n")

    acc = w / "acc"
    acc.mkdir()
    entry = {"seq_id": 0, "qsl_idx": 0, "data": "0500000002000000", "token_count": 2}
    good_log = json.dumps([entry, dict(entry, seq_id=1, qsl_idx=1)])
    (acc / "good.json").write_text(good_log)
    (acc / "cut.json").write_text(good_log[: len(good_log) // 2])
    (acc / "odd.json").write_text(json.dumps([dict(entry, data="050000000200")]))
    (acc / "beyond.json").write_text(json.dumps([dict(entry, qsl_idx=99)]))
    pd.DataFrame({"id": ["cot.1"], "question": ["q"]}).to_parquet(w / "few_columns.parquet")
    pd.DataFrame({"id": [f"cot.{i}" for i in range(4)], "system_prompt": [""] * 4,
                  "question": [f"What is {i} + {i}?" for i in range(4)],
                  "response": [f"The answer is {2 * i}." for i in range(4)]}).to_parquet(w / "orca.parquet")


@pytest.fixture(scope="module")
def results(tmp_path_factory, tiny_model_dir, tiny_tokenizer_dir):
    """Every case run once, a few at a time; name -> (CompletedProcess, seconds)."""
    w = tmp_path_factory.mktemp("bad_inputs")
    build_workdir(w, Path(tiny_model_dir), Path(tiny_tokenizer_dir))

    def one(case: Case):
        t = time.monotonic()
        if not (REPO / case.script).exists() or (case.requires and not (REPO / case.requires).exists()):
            return case.name, (None, 0.0)
        cwd = w / f"cwd_{case.name}"
        cwd.mkdir()
        if case.script.endswith(".sh"):
            proc = subprocess.run(["bash", str(REPO / case.script), *map(str, case.args(w))], cwd=cwd,
                                  env=child_env(case.env), capture_output=True, text=True, timeout=CASE_TIMEOUT_S)
            proc.stderr = proc.stderr + proc.stdout  # the scripts tee main.py's output to stdout
        else:
            proc = run(case.args(w), cwd, script=case.script, env=case.env, timeout=CASE_TIMEOUT_S)
        return case.name, (proc, time.monotonic() - t)

    with ThreadPoolExecutor(PARALLEL) as pool:
        return dict(pool.map(one, CASES))


def test_at_least_20_cases():
    assert len(CASES) >= 20 and len({c.name for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_is_rejected_with_one_clear_line_and_exit_2(results, case):
    proc, seconds = results[case.name]
    if proc is None:
        pytest.skip(f"{case.requires or case.script} is not in this tree yet")
    stderr = proc.stderr
    assert proc.returncode == 2, f"rc={proc.returncode}\n{stderr[-3000:]}"
    assert "Traceback" not in stderr, stderr[-3000:]
    lines = error_lines(stderr)
    assert len(lines) == 1, stderr[-3000:]
    for expected in case.expect:
        assert expected in lines[0], lines[0]
    if case.model_must_not_load:
        assert "Loading weights" not in stderr and "mlperf_llama2.backends.hf_loading: loading" not in stderr
        assert "starting LoadGen" not in stderr
    print(f"{case.name}: {seconds:.1f} s: {lines[0]}")


def test_verbose_shows_the_traceback(tmp_path, tiny_model_dir):
    proc = run(["--model-path", tmp_path / "nope", "--dataset-path", tmp_path / "x.pkl", "--device", "cpu",
                "--verbose"], tmp_path)
    assert proc.returncode == 2
    assert "Traceback" in proc.stderr and "UserError" in proc.stderr
    assert len(error_lines(proc.stderr)) == 1
