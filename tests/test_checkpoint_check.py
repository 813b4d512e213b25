"""Checkpoints are checked against config.json before anything loads (`mlperf_llama2.checkpoint`).

Each bad checkpoint is a copy of the tiny fixture with one thing broken. In-process: the check names
the file and the first problem; benign differences (inv_freq buffers, a tied lm_head left out) pass;
the expected names and shapes are exactly a transformers LlamaForCausalLM's. End to end: main.py on
a bad checkpoint exits 2 with one error line, no traceback, and never reaches the model loader or
LoadGen, with either backend. The loaders' own reports (transformers' load report, the engine's
ValueErrors) are one-line errors too when something gets past the check.
"""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from loadgen_fixtures import SMALL_USER_CONF, write_dataset
from mlperf_llama2.checkpoint import check_checkpoint, check_load_report, expected_shapes, llama_dims
from mlperf_llama2.errors import UserError
from reliability_fixtures import child_env, error_lines, run

WEIGHTS = "model.safetensors"


def variant(src: Path, dst: Path, *, edit_config=None, edit_weights=None) -> Path:
    """A copy of checkpoint `src` with config.json and/or the state dict edited in place."""
    shutil.copytree(src, dst)
    if edit_config is not None:
        config = json.loads((dst / "config.json").read_text())
        edit_config(config)
        (dst / "config.json").write_text(json.dumps(config))
    if edit_weights is not None:
        state = load_file(dst / WEIGHTS)
        edit_weights(state)
        save_file(state, dst / WEIGHTS, metadata={"format": "pt"})
    return dst


def drop(name):
    return lambda state: state.pop(name)


def put(name, tensor):
    return lambda state: state.__setitem__(name, tensor)


def truncate(path: Path, keep_bytes: int) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:keep_bytes])


def shard(src: Path, dst: Path) -> Path:
    """`src` re-saved as two safetensors shards with a model.safetensors.index.json."""
    shutil.copytree(src, dst)
    state = load_file(dst / WEIGHTS)
    (dst / WEIGHTS).unlink()
    names = sorted(state)
    parts = {"model-00001-of-00002.safetensors": names[: len(names) // 2],
             "model-00002-of-00002.safetensors": names[len(names) // 2:]}
    for file, part in parts.items():
        save_file({n: state[n] for n in part}, dst / file, metadata={"format": "pt"})
    index = {"metadata": {}, "weight_map": {n: f for f, part in parts.items() for n in part}}
    (dst / "model.safetensors.index.json").write_text(json.dumps(index))
    return dst


def rejected(model_dir: Path) -> str:
    with pytest.raises(UserError) as info:
        check_checkpoint(str(model_dir))
    message = str(info.value)
    assert "\n" not in message
    return message


# --- config.json -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("edit, words", [
    (lambda c: c.update(model_type="gpt2"), ("config.json", "model_type 'gpt2'", "Llama")),
    (lambda c: c.update(num_key_value_heads=3), ("num_key_value_heads 3 does not divide num_attention_heads 4",)),
    (lambda c: (c.update(hidden_size=66), c.pop("head_dim", None)),
     ("hidden_size 66 is not divisible by num_attention_heads 4",)),
    (lambda c: c.pop("num_hidden_layers"), ("num_hidden_layers must be a positive integer, got None",)),
    (lambda c: c.update(intermediate_size="128"), ("intermediate_size must be a positive integer, got '128'",)),
    (lambda c: c.update(hidden_act="gelu"), ("hidden_act 'gelu'",)),
    (lambda c: c.update(architectures=["LlamaForSequenceClassification"]), ("expected LlamaForCausalLM",)),
])
def test_config_that_no_backend_can_build_is_refused(tmp_path, tiny_model_dir, edit, words):
    message = rejected(variant(Path(tiny_model_dir), tmp_path / "m", edit_config=edit))
    for word in words:
        assert word in message, message


# --- weights against config.json ---------------------------------------------------------------------------

def test_good_checkpoint_returns_the_map_a_loader_needs(tiny_model_dir):
    info = check_checkpoint(str(tiny_model_dir))
    state = load_file(Path(tiny_model_dir) / WEIGHTS)
    assert dict(info.expected) == {name: tuple(t.shape) for name, t in state.items()}
    assert {t.name: t.shape for t in info.tensors} == dict(info.expected)
    assert info.shapes_checked and info.dims.num_kv_heads == 2 and info.dims.head_dim == 16


@pytest.mark.parametrize("options", [{}, {"attention_bias": True, "mlp_bias": True}, {"head_dim": 32},
                                     {"tie_word_embeddings": True}])
def test_expected_shapes_are_exactly_transformers_llama_state_dict(options):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=40, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, **options)
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    state = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    assert expected_shapes(llama_dims(config.to_dict())) == state


@pytest.mark.parametrize("name, edit, words", [
    ("missing", drop("model.layers.1.mlp.up_proj.weight"),
     ("model.safetensors:", "tensor model.layers.1.mlp.up_proj.weight is missing", "do not match config.json")),
    ("wrong_shape", put("model.layers.0.self_attn.k_proj.weight", torch.zeros(16, 64)),
     ("model.layers.0.self_attn.k_proj.weight has shape [16, 64], config.json implies [32, 64]",)),
    ("extra", put("model.layers.0.self_attn.extra_scale", torch.zeros(4)),
     ("unexpected tensor model.layers.0.self_attn.extra_scale",)),
    ("int8_weight", put("model.norm.weight", torch.zeros(64, dtype=torch.int8)),
     ("model.norm.weight has dtype I8; the backends load F16, BF16 or F32 weights",)),
    ("two_problems", lambda s: (s.pop("model.norm.weight"), s.pop("lm_head.weight")),
     ("tensor model.norm.weight is missing (and 1 more problem)",)),
])
def test_weights_that_do_not_match_config_are_refused(tmp_path, tiny_model_dir, name, edit, words):
    message = rejected(variant(Path(tiny_model_dir), tmp_path / name, edit_weights=edit))
    for word in words:
        assert word in message, message


def test_missing_tensor_of_a_biased_config_is_named(tmp_path, tiny_model_dir):
    message = rejected(variant(Path(tiny_model_dir), tmp_path / "m", edit_config=lambda c: c.update(mlp_bias=True)))
    assert "tensor model.layers.0.mlp.gate_proj.bias is missing (and 5 more problems)" in message


def test_benign_differences_pass_the_check_and_transformers_load_report(tmp_path, tiny_model_dir):
    from mlperf_llama2.backends.hf_loading import load_causal_lm

    inv_freq = variant(Path(tiny_model_dir), tmp_path / "inv_freq",
                       edit_weights=put("model.layers.0.self_attn.rotary_emb.inv_freq", torch.ones(8)))
    tied = variant(Path(tiny_model_dir), tmp_path / "tied", edit_config=lambda c: c.update(tie_word_embeddings=True),
                   edit_weights=drop("lm_head.weight"))
    for model_dir in (inv_freq, tied):
        info = check_checkpoint(str(model_dir))
        assert "lm_head.weight" in info.expected  # the loader still builds it (tied to the embedding)
        load_causal_lm(str(model_dir), "float32", "cpu")  # no load-report error either
    assert check_checkpoint(str(tied)).dims.tie_word_embeddings


# --- files: truncated, unreadable, sharded, .bin ------------------------------------------------------------

def test_truncated_shard_is_refused(tmp_path, tiny_model_dir):
    model = variant(Path(tiny_model_dir), tmp_path / "m")
    size = (model / WEIGHTS).stat().st_size
    truncate(model / WEIGHTS, size - 100)
    message = rejected(model)
    assert f"model.safetensors: truncated: the header promises {size} bytes, the file has {size - 100}" in message


@pytest.mark.parametrize("damage, words", [
    (lambda p: truncate(p, 5), ("5 bytes, too short for a safetensors file",)),
    (lambda p: p.write_bytes(struct.pack("<Q", 10**12) + b"{}"), ("does not fit the file's 10 bytes",)),
    (lambda p: p.write_bytes(struct.pack("<Q", 6) + b"<html>"), ("unreadable safetensors header",)),
])
def test_unreadable_shard_is_refused(tmp_path, tiny_model_dir, damage, words):
    model = variant(Path(tiny_model_dir), tmp_path / "m")
    damage(model / WEIGHTS)
    message = rejected(model)
    assert all(w in message for w in words), message


def test_sharded_checkpoint_is_read_through_its_index(tmp_path, tiny_model_dir):
    good = shard(Path(tiny_model_dir), tmp_path / "good")
    assert len(check_checkpoint(str(good)).tensors) == len(load_file(Path(tiny_model_dir) / WEIGHTS))

    missing = shard(Path(tiny_model_dir), tmp_path / "missing")
    (missing / "model-00002-of-00002.safetensors").unlink()
    assert "model-00002-of-00002.safetensors: shard listed in model.safetensors.index.json is missing" \
        in rejected(missing)

    stale = shard(Path(tiny_model_dir), tmp_path / "stale")
    index = json.loads((stale / "model.safetensors.index.json").read_text())
    moved = sorted(index["weight_map"])[0]
    index["weight_map"][moved] = "model-00002-of-00002.safetensors"
    (stale / "model.safetensors.index.json").write_text(json.dumps(index))
    assert f"places {moved} here but the shard does not hold it" in rejected(stale)

    no_index = shard(Path(tiny_model_dir), tmp_path / "no_index")
    (no_index / "model.safetensors.index.json").unlink()
    assert "2 *.safetensors files but no model.safetensors.index.json" in rejected(no_index)


def test_pytorch_bin_names_and_shapes_are_read_without_loading(tmp_path, tiny_model_dir):
    model = variant(Path(tiny_model_dir), tmp_path / "bin")
    state = load_file(model / WEIGHTS)
    (model / WEIGHTS).unlink()
    torch.save(state, model / "pytorch_model.bin")
    assert check_checkpoint(str(model)).shapes_checked

    state["model.norm.weight"] = torch.ones(63)
    torch.save(state, model / "pytorch_model.bin")
    assert "pytorch_model.bin: model.norm.weight has shape [63], config.json implies [64]" in rejected(model)

    truncate(model / "pytorch_model.bin", 4000)
    assert "pytorch_model.bin: not a readable torch zip checkpoint" in rejected(model)


def test_the_check_imports_no_torch(tiny_model_dir):
    code = ("import sys; from mlperf_llama2.checkpoint import check_checkpoint; "
            f"check_checkpoint({str(tiny_model_dir)!r}); print(sorted(m for m in sys.modules if m == 'torch'))")
    out = subprocess.run([sys.executable, "-c", code], env=child_env(), capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# --- the loaders' own reports --------------------------------------------------------------------------------

def test_load_report_is_an_error_not_a_warning():
    check_load_report("m", {"missing_keys": ["lm_head.weight"], "unexpected_keys": ["a.rotary_emb.inv_freq"]},
                      tied_lm_head=True)
    with pytest.raises(UserError, match=r"m: transformers' load report: MISSING x.weight \(and 2 more\)"):
        check_load_report("m", {"missing_keys": {"x.weight"}, "unexpected_keys": {"y"},
                                "mismatched_keys": [("z", (1,), (2,))], "error_msgs": []})


@pytest.mark.parametrize("name, edit, words", [
    ("missing", drop("model.layers.1.mlp.up_proj.weight"), ("MISSING model.layers.1.mlp.up_proj.weight",)),
    ("extra", put("model.extra", torch.zeros(2)), ("UNEXPECTED model.extra",)),
    ("mismatch", put("model.norm.weight", torch.ones(63)), ("mismatched tensor shapes",)),
])
def test_reference_loader_turns_transformers_load_report_into_an_error(tmp_path, tiny_model_dir, name, edit, words):
    from mlperf_llama2.backends.hf_loading import load_causal_lm

    model = variant(Path(tiny_model_dir), tmp_path / name, edit_weights=edit)
    with pytest.raises(UserError) as info:
        load_causal_lm(str(model), "float32", "cpu")  # what a caller that skipped check_checkpoint would get
    assert all(w in str(info.value) for w in words) and "\n" not in str(info.value), str(info.value)


def test_engine_loader_errors_are_one_line(tmp_path, tiny_model_dir):
    from mlperf_llama2.backends.engine import create_single_device_backend
    from mlperf_llama2.harness import parse_config

    model = variant(Path(tiny_model_dir), tmp_path / "m", edit_weights=put("model.extra.weight", torch.zeros(2)))
    config = parse_config(["--model-path", str(model), "--dataset-path", str(tmp_path / "d.pkl"),
                           "--backend", "engine", "--device", "cpu", "--dtype", "float32"])
    with pytest.raises(UserError, match="unexpected tensor model.extra.weight"):  # the loader checks first
        create_single_device_backend(config)


# --- main.py end to end: refused before the loader or LoadGen start -----------------------------------------

E2E = [  # (name, backend, how the checkpoint is broken, words of the one error line)
    ("missing_tensor", "reference", dict(edit_weights=drop("model.layers.1.mlp.up_proj.weight")),
     ("tensor model.layers.1.mlp.up_proj.weight is missing",)),
    ("wrong_shape", "engine", dict(edit_weights=put("model.norm.weight", torch.ones(63))),
     ("model.norm.weight has shape [63], config.json implies [64]",)),
    ("extra_tensor", "engine", dict(edit_weights=put("model.extra.weight", torch.zeros(2))),
     ("unexpected tensor model.extra.weight",)),
    ("gpt2_config", "reference", dict(edit_config=lambda c: c.update(model_type="gpt2")), ("model_type 'gpt2'",)),
    ("truncated_shard", "reference", dict(), ("truncated: the header promises",)),
]


@pytest.fixture(scope="module")
def e2e_results(tmp_path_factory, tiny_model_dir, tiny_tokenizer_dir):
    w = tmp_path_factory.mktemp("ckpt_e2e")
    write_dataset(w / "data.pkl", tiny_tokenizer_dir)
    (w / "user.conf").write_text(SMALL_USER_CONF)
    for name, _, edits, _ in E2E:
        variant(Path(tiny_model_dir), w / name, **edits)
    weights = w / "truncated_shard" / WEIGHTS
    truncate(weights, weights.stat().st_size - 1)

    def one(case):
        name, backend = case[0], case[1]
        cwd = w / f"cwd_{name}"
        cwd.mkdir()
        args = ["--model-path", w / name, "--dataset-path", w / "data.pkl", "--user-conf", w / "user.conf",
                "--output-log-dir", cwd / "logs", "--device", "cpu", "--max-new-tokens", 4, "--backend", backend]
        return name, run(args, cwd, timeout=120)

    with ThreadPoolExecutor(3) as pool:
        return dict(pool.map(one, E2E))


@pytest.mark.parametrize("case", E2E, ids=[c[0] for c in E2E])
def test_main_refuses_a_bad_checkpoint_before_loading(e2e_results, case):
    name, _, _, words = case
    proc = e2e_results[name]
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    lines = error_lines(proc.stderr)
    assert len(lines) == 1 and lines[0].startswith("main.py: error: "), proc.stderr[-3000:]
    assert all(w in lines[0] for w in words), lines[0]
    for loader_line in ("Loading weights", "hf_loading: loading", "engine.loader: built", "backend: ",
                        "starting LoadGen"):
        assert loader_line not in proc.stderr, proc.stderr[-3000:]
    print(f"{name}: {lines[0]}")

