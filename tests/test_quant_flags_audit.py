"""Quantization flags that would only label a run, and inputs that used to be checked after the model loaded.

Specification (team brief: "never a wrong setting that yields a result that looks valid"; "a quantized mode
states exactly which rules it applies"):
- --quantization / --liteml-config / --calibration-scales with a backend whose model lives elsewhere (an API
  server, SUT nodes) are refused in the pre-flight check: this process cannot apply them, and run_info.json
  and the summary would name a quantization nobody applied;
- --quant-mode int8 or --quant-backend without --liteml-config is refused (nothing would be quantized), and so
  are the flags that tune how a config is applied (--calibration-path, --quant-momentum, --quant-rounding,
  --quant-full-range, --quant-per-sample-scale): without a config they change nothing but run_info.json;
- a config's global switches the open backend does not honour (status Off, quant_and_freeze Off,
  fully_quantized Off) are refused when the file is read;
- the calibration pickle is checked against the model's vocabulary before the model loads (both backends);
- the engine's int8 mode with --int8-rules linear is recorded as such in run_info.json and the summary, and the
  quantization backend that ran (auto resolved) is recorded;
- a config.json that ties lm_head to the embedding while the weights store a different lm_head.weight is one
  line (transformers keeps the stored head, the engine ties: the backends would run different models); a
  stored copy equal to the embedding passes.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from safetensors.torch import load_file, save_file

from loadgen_fixtures import REPO, SMALL_USER_CONF, run_main, write_dataset
from mlperf_llama2.backends import registry
from mlperf_llama2.checkpoint import check_checkpoint
from mlperf_llama2.errors import UserError
from mlperf_llama2.harness import parse_config
from reliability_fixtures import error_lines

NPM = str(REPO / "liteml_configs" / "w8a8_npm_v1_3_4.yaml")


@pytest.fixture()
def work(tmp_path, tiny_model_dir, tiny_tokenizer_dir):
    write_dataset(tmp_path / "data.pkl", tiny_tokenizer_dir)
    shutil.copy(tmp_path / "data.pkl", tmp_path / "calibration_6.pkl")
    (tmp_path / "user.conf").write_text(SMALL_USER_CONF)
    return tmp_path


def _argv(work: Path, model_dir, *extra) -> list[str]:
    return ["--model-path", str(model_dir), "--dataset-path", str(work / "data.pkl"), "--device", "cpu",
            "--user-conf", str(work / "user.conf"), "--output-log-dir", str(work / "logs"), "--max-new-tokens", "4",
            *map(str, extra)]


def _refused(argv: list[str]) -> str:
    with pytest.raises(UserError) as info:
        registry.check(parse_config(argv))
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("remote", [["--backend", "api", "--api-server", "http://127.0.0.1:9"],
                                    ["--sut-nodes", "http://127.0.0.1:9"]], ids=["api", "sut-nodes"])
@pytest.mark.parametrize("quant", [["--quantization", "fp8"], ["--liteml-config", NPM]], ids=["fp8", "liteml"])
def test_quantization_flags_are_refused_where_another_process_holds_the_model(work, tiny_model_dir, remote, quant):
    calibration = ["--calibration-path", work / "calibration_6.pkl"] if quant[0] == "--liteml-config" else []
    message = _refused(_argv(work, tiny_model_dir, *remote, *quant, *calibration))
    assert message.startswith(quant[0]) and "would only be labelled quantized" in message, message


@pytest.mark.parametrize("flags", [["--quant-mode", "int8"], ["--quant-backend", "open"],
                                   ["--quantization", "fp8", "--quant-mode", "int8"]])
def test_liteml_mode_flags_without_a_config_are_refused(work, tiny_model_dir, flags):
    with pytest.raises(UserError, match="add --liteml-config") as info:
        parse_config(_argv(work, tiny_model_dir, "--backend", "engine", *flags))
    assert flags[-2] in str(info.value)


@pytest.mark.parametrize("flags", [["--calibration-path", "CAL"], ["--quant-momentum", "0.5"],
                                   ["--quant-rounding", "half_away"], ["--quant-full-range"],
                                   ["--quant-per-sample-scale"]], ids=lambda f: f[0])
@pytest.mark.parametrize("numerics", [[], ["--quantization", "fp8"]], ids=["float", "fp8"])
def test_liteml_tuning_flags_without_a_config_are_refused(work, tiny_model_dir, flags, numerics):
    flags = [str(work / "calibration_6.pkl") if f == "CAL" else f for f in flags]
    with pytest.raises(UserError, match="add --liteml-config") as info:
        parse_config(_argv(work, tiny_model_dir, "--backend", "engine", *numerics, *flags))
    assert str(info.value).startswith(flags[0] + " tunes how a --liteml-config is applied"), str(info.value)
    # with the config they are taken
    config = parse_config(_argv(work, tiny_model_dir, "--backend", "engine", "--liteml-config", NPM, *flags))
    assert config.quant.liteml_config == NPM


@pytest.mark.parametrize("flag", ["--liteml-config", "--calibration-path", "--calibration-scales"])
def test_a_directory_given_as_a_quantization_file_is_named_as_such(work, tiny_model_dir, flag):
    config = [] if flag == "--liteml-config" else ["--liteml-config", NPM]
    with pytest.raises(UserError, match=f"^{flag}: is a directory, not a file: "):
        parse_config(_argv(work, tiny_model_dir, *config, flag, work))
    with pytest.raises(UserError, match=f"^{flag}: file not found: "):
        parse_config(_argv(work, tiny_model_dir, *config, flag, work / "nope"))


@pytest.mark.parametrize("backend", [["--backend", "reference"],
                                     ["--backend", "engine", "--quant-mode", "int8"]], ids=["reference", "engine"])
def test_calibration_pickle_outside_the_vocabulary_is_refused_before_the_model_loads(work, tiny_model_dir, backend):
    bad = work / "calibration_oov.pkl"
    pd.DataFrame({"tok_input": [[1, 5, 99999]], "output": ["x"]}).to_pickle(bad)
    message = _refused(_argv(work, tiny_model_dir, *backend, "--liteml-config", NPM, "--calibration-path", bad))
    assert "calibration data" in message and "99999" in message and "vocabulary" in message, message
    # the same run with the good pickle passes the pre-flight check
    registry.check(parse_config(_argv(work, tiny_model_dir, *backend, "--liteml-config", NPM,
                                      "--calibration-path", work / "calibration_6.pkl")))


@pytest.mark.slow
def test_int8_linear_rules_only_is_recorded_as_such(work, tiny_model_dir):
    proc = run_main(_argv(work, tiny_model_dir, "--backend", "engine", "--liteml-config", NPM, "--quant-mode", "int8",
                          "--int8-rules", "linear", "--total-sample-count", 2, "--num-kv-blocks", 64,
                          "--no-progress"), work)
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads((work / "logs" / "run_info.json").read_text())
    assert (info["quant_mode"], info["quant_backend"]) == ("int8-linear-rules-only", "open")
    assert "int8-linear-rules-only mode (open backend)" in proc.stdout, proc.stdout[-2000:]


def _tied_copy(src, dst: Path, head_equals_embedding: bool) -> Path:
    shutil.copytree(src, dst)
    config = json.loads((dst / "config.json").read_text())
    config["tie_word_embeddings"] = True
    (dst / "config.json").write_text(json.dumps(config))
    state = load_file(dst / "model.safetensors")
    if head_equals_embedding:
        state["lm_head.weight"] = state["model.embed_tokens.weight"].clone()
    save_file(state, dst / "model.safetensors", metadata={"format": "pt"})
    return dst


def test_tied_config_with_a_different_stored_lm_head_is_refused(tmp_path, tiny_model_dir):
    with pytest.raises(UserError) as info:
        check_checkpoint(str(_tied_copy(tiny_model_dir, tmp_path / "differs", False)))
    assert "tie_word_embeddings" in str(info.value) and "lm_head.weight" in str(info.value)
    assert check_checkpoint(str(_tied_copy(tiny_model_dir, tmp_path / "equal", True))).dims.tie_word_embeddings


def test_tied_config_with_a_different_lm_head_stops_main_with_one_line(work, tiny_model_dir):
    model = _tied_copy(tiny_model_dir, work / "tied", False)
    proc = run_main(_argv(work, model, "--backend", "engine"), work)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    lines = error_lines(proc.stderr)
    assert len(lines) == 1 and "tie_word_embeddings" in lines[0], proc.stderr[-2000:]


@pytest.mark.parametrize("backend", [["--backend", "engine"], ["--backend", "reference"],
                                     ["--backend", "engine", "--liteml-config", NPM, "--quant-mode", "int8"]],
                         ids=["engine", "reference", "engine-int8"])
def test_kv_scale_granularity_without_an_8bit_kv_cache_is_refused(work, tiny_model_dir, backend):
    calibration = ["--calibration-path", work / "calibration_6.pkl"] if "--liteml-config" in backend else []
    message = _refused(_argv(work, tiny_model_dir, *backend, "--kv-scale-granularity", "head", *calibration))
    assert "--kv-scale-granularity head" in message and "--kv-cache-dtype fp8|int8" in message, message


@pytest.mark.slow
def test_int8_mode_records_a_linear_rule_it_leaves_in_float(work, tiny_model_dir):
    """A W4A8 Linear rule is not computed by the engine's int8 mode (its Linears run in float): the record says so
    instead of passing the run off as the config's int8 mode."""
    text = Path(NPM).read_text()
    w4 = "act_bits: 4, act_symmetric: On, act_dynamic: On, act_per_channel: On, observer: MinMax,"
    config = work / "w4a8.yaml"
    config.write_text(text.replace(w4.replace("act_bits: 4", "act_bits: 8"), w4, 1))
    assert config.read_text() != text
    proc = run_main(_argv(work, tiny_model_dir, "--backend", "engine", "--liteml-config", config, "--quant-mode",
                          "int8", "--calibration-path", work / "calibration_6.pkl", "--total-sample-count", 2,
                          "--num-kv-blocks", 64, "--no-progress"), work)
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads((work / "logs" / "run_info.json").read_text())
    assert info["quant_mode"] == "int8 (Linear rule(s) 0 not W8A8, kept in float)"
    assert "w4a8.yaml, int8 (Linear rule(s) 0 not W8A8, kept in float) mode (open backend)" in proc.stdout


@pytest.mark.parametrize("section, key", [("data_quantization", "status"), ("weights_quantization", "status"),
                                          ("weights_quantization", "quant_and_freeze"), ("", "fully_quantized")])
def test_global_switches_the_open_backend_would_ignore_are_refused(tmp_path, section, key):
    from mlperf_llama2.quant.yaml_config import load_rules

    lines = Path(NPM).read_text().splitlines()
    start = lines.index(f"  {section}:" if section else "QAT:")
    at = next(i for i in range(start + 1, len(lines)) if lines[i].strip().startswith(f"{key}:"))
    assert lines[at].strip() == f"{key}: On"
    lines[at] = lines[at].replace("On", "Off")
    path = tmp_path / "off.yaml"
    path.write_text("\n".join(lines) + "\n")
    where = f"QAT.{section}.{key}" if section else f"QAT.{key}"
    with pytest.raises(UserError, match=f"{where}: False is not honoured") as info:
        load_rules(str(path))
    assert "\n" not in str(info.value)
    load_rules(NPM)  # the shipped file (every switch On) loads


@pytest.mark.parametrize("flag", [["--kv-cache-dtype", "fp8"], ["--fp8-accumulation", "fast"],
                                  ["--engine-gemm", "triton"]])
def test_engine_flags_given_to_the_loadgen_node_are_refused(work, tiny_model_dir, flag):
    message = _refused(_argv(work, tiny_model_dir, "--backend", "engine", "--sut-nodes", "http://127.0.0.1:9", *flag))
    assert message.startswith(" ".join(flag)) and "give it to the nodes" in message, message
