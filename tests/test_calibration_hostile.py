"""A hostile or careless --calibration-scales file: one line, exit 2, before the model loads; never a run that looks
valid while its static scales are not what the file (and the run's flags) claim.

Specification (team brief; docs/quantization.md "Calibration"):
- a range that is not finite, is zero, or has min > max (a slot of a config, or a KV head) is refused, naming the slot;
- tensors changed after the file was written (metadata kept), or metadata copied from another file, are refused:
  the writer records a digest of the tensors (`tensors_sha256`) and the reader recomputes it;
- a range whose dtype is not float32, or whose shape is not what the config's quantizer keeps (per-head ranges
  under a per-tensor slot), is refused before loading;
- the run's --quant-momentum / --quant-rounding / --quant-full-range and --calibration-path must be those the file
  was calibrated with (else the flag would change nothing while the command line recorded it);
- a malformed safetensors header is one line, not a traceback; writing a non-finite range is refused.
"""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from loadgen_fixtures import REPO, SMALL_USER_CONF, run_main, write_dataset
from mlperf_llama2.backends import registry
from mlperf_llama2.errors import UserError
from mlperf_llama2.harness import parse_config
from mlperf_llama2.quant import calibration_file as cf
from reliability_fixtures import error_lines

NPM = str(REPO / "liteml_configs" / "w8a8_npm_v1_3_4.yaml")
K0 = "model.layers.0.self_attn.matmul_qkt.quantizer_in2"
SILU1 = "model.layers.1.mlp.act_fn.quantizer"


@pytest.fixture(scope="module")
def work(tmp_path_factory, tiny_model_dir, tiny_tokenizer_dir):
    """data.pkl, two calibration pickles, and three engine calibrations: NPM on cal.pkl, NPM on cal2.pkl, KV-only."""
    from mlperf_llama2.engine.kv_calibration import calibrate_engine

    root = tmp_path_factory.mktemp("hostile_scales")
    write_dataset(root / "data.pkl", tiny_tokenizer_dir)
    pd.read_pickle(root / "data.pkl").iloc[:3].to_pickle(root / "cal.pkl")
    pd.read_pickle(root / "data.pkl").iloc[3:5].to_pickle(root / "cal2.pkl")
    (root / "user.conf").write_text(SMALL_USER_CONF)
    calibrate_engine(str(tiny_model_dir), str(root / "cal.pkl"), str(root / "npm.safetensors"), NPM)
    calibrate_engine(str(tiny_model_dir), str(root / "cal2.pkl"), str(root / "npm2.safetensors"), NPM)
    calibrate_engine(str(tiny_model_dir), str(root / "cal.pkl"), str(root / "kv.safetensors"), "fp8-kv")
    return root


def _read(path):
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata())


def _edit(root: Path, src: str, name: str, fn, keep_digest: bool = True, metadata_from: str = None) -> Path:
    """`src`'s tensors changed by fn, saved with its metadata (or another file's) as it was: what a user editing the
    file with safetensors does. keep_digest=False drops the digest (a file of a harness that wrote none)."""
    tensors, meta = _read(root / src)
    if metadata_from is not None:
        meta = _read(root / metadata_from)[1]
    if not keep_digest:
        meta.pop("tensors_sha256", None)
    save_file(fn(tensors), str(root / name), metadata=meta)
    return root / name


def _argv(root: Path, model_dir, *extra) -> list[str]:
    return [str(a) for a in ("--backend", "engine", "--model-path", model_dir, "--dataset-path", root / "data.pkl",
                             "--device", "cpu", "--user-conf", root / "user.conf", "--output-log-dir",
                             root / "logs", "--max-new-tokens", 4, *extra)]


NPM_INT8 = ("--liteml-config", NPM, "--quant-mode", "int8")


def _refused(root, model_dir, *extra) -> str:
    with pytest.raises(UserError) as info:
        registry.check(parse_config(_argv(root, model_dir, *extra)))
    message = str(info.value)
    assert "\n" not in message
    return message


def _accepted(root, model_dir, *extra) -> None:
    registry.check(parse_config(_argv(root, model_dir, *extra)))


def _set(slot: str, lo: float, hi: float):
    def fn(t):
        t[f"{slot}.min"] = torch.full_like(t[f"{slot}.min"], lo)
        t[f"{slot}.max"] = torch.full_like(t[f"{slot}.max"], hi)
        return t
    return fn


BAD_VALUES = {"nan": (float("nan"), float("nan")), "inf": (-float("inf"), float("inf")), "zero": (0.0, 0.0),
              "min above max": (3.0, -3.0)}


@pytest.mark.parametrize("what", list(BAD_VALUES))
def test_a_bad_range_in_a_configs_slot_is_one_line(work, tiny_model_dir, what):
    lo, hi = BAD_VALUES[what]
    path = _edit(work, "npm.safetensors", f"npm_{what}.safetensors", _set(SILU1, lo, hi), keep_digest=False)
    message = _refused(work, tiny_model_dir, *NPM_INT8, "--calibration-scales", path)
    assert SILU1 in message and "range" in message, message
    with pytest.raises(UserError, match=SILU1):
        cf.read_scales(str(path))


@pytest.mark.parametrize("what", list(BAD_VALUES))
def test_a_bad_kv_head_range_is_one_line(work, tiny_model_dir, what):
    lo, hi = BAD_VALUES[what]

    def fn(t):
        t["kv_heads.min"][1, 0, 1], t["kv_heads.max"][1, 0, 1] = lo, hi
        return t

    path = _edit(work, "kv.safetensors", f"kv_{what}.safetensors", fn, keep_digest=False)
    message = _refused(work, tiny_model_dir, "--kv-cache-dtype", "int8", "--calibration-scales", path)
    assert "kv_heads" in message, message


def test_tensors_edited_after_writing_or_metadata_copied_are_refused(work, tiny_model_dir):
    assert "tensors_sha256" in cf.read_metadata(str(work / "npm.safetensors"))
    scaled = _edit(work, "npm.safetensors", "npm_x100.safetensors", lambda t: {k: v * 100 for k, v in t.items()})
    message = _refused(work, tiny_model_dir, *NPM_INT8, "--calibration-scales", scaled)
    assert "changed after it was written" in message, message
    swapped = _edit(work, "npm.safetensors", "npm_meta2.safetensors", lambda t: t, metadata_from="npm2.safetensors")
    assert "changed after it was written" in _refused(work, tiny_model_dir, *NPM_INT8, "--calibration-scales", swapped)
    kv = _edit(work, "kv.safetensors", "kv_x2.safetensors", lambda t: {k: v * 2 for k, v in t.items()})
    assert "changed after it was written" in _refused(work, tiny_model_dir, "--kv-cache-dtype", "int8",
                                                      "--calibration-scales", kv)
    _accepted(work, tiny_model_dir, *NPM_INT8, "--calibration-scales", work / "npm.safetensors")
    _accepted(work, tiny_model_dir, "--kv-cache-dtype", "int8", "--calibration-scales", work / "kv.safetensors")


def test_wrong_dtype_or_shape_of_a_slot_is_refused_before_loading(work, tiny_model_dir):
    half = _edit(work, "npm.safetensors", "npm_f16.safetensors",
                 lambda t: {**t, f"{K0}.min": t[f"{K0}.min"].half(), f"{K0}.max": t[f"{K0}.max"].half()},
                 keep_digest=False)
    message = _refused(work, tiny_model_dir, *NPM_INT8, "--calibration-scales", half)
    assert K0 in message and "float32" in message, message
    per_head = _edit(work, "npm.safetensors", "npm_heads.safetensors",
                     lambda t: {**t, f"{K0}.min": t[f"{K0}.min"].expand(1, 2, 1, 1).contiguous(),
                                f"{K0}.max": t[f"{K0}.max"].expand(1, 2, 1, 1).contiguous()}, keep_digest=False)
    message = _refused(work, tiny_model_dir, *NPM_INT8, "--calibration-scales", per_head)
    assert K0 in message and "(1, 2, 1, 1)" in message, message
    unpaired = _edit(work, "npm.safetensors", "npm_unpaired.safetensors",
                     lambda t: {**t, f"{K0}.min": t[f"{K0}.min"].reshape(1, 1, 1)}, keep_digest=False)
    assert K0 in _refused(work, tiny_model_dir, *NPM_INT8, "--calibration-scales", unpaired)


def test_numerics_and_calibration_set_must_be_the_files(work, tiny_model_dir):
    npm = work / "npm.safetensors"
    meta = cf.read_metadata(str(npm))
    assert (meta["momentum"], meta["rounding"], meta["narrow_range"]) == ("0.01", "half_even", "True")
    for flags, named in ((("--quant-momentum", "0.5"), "--quant-momentum"),
                         (("--quant-full-range",), "--quant-full-range")):
        message = _refused(work, tiny_model_dir, *NPM_INT8, *flags, "--calibration-scales", npm)
        assert named in message and "calibrated with" in message, message
    # int8 mode refuses half_away outright (its Linears round half to even); simulate checks it against the file
    message = _refused(work, tiny_model_dir, *NPM_INT8, "--quant-rounding", "half_away", "--calibration-scales", npm)
    assert "--quant-rounding half_away with --quant-mode int8" in message, message
    message = _refused(work, tiny_model_dir, "--backend", "reference", "--liteml-config", NPM, "--quant-backend",
                       "open", "--quant-rounding", "half_away", "--calibration-scales", npm)
    assert "--quant-rounding" in message and "calibrated with" in message, message
    message = _refused(work, tiny_model_dir, *NPM_INT8, "--calibration-path", work / "cal2.pkl",
                       "--calibration-scales", npm)
    assert "--calibration-path" in message and "cal.pkl" in message, message
    _accepted(work, tiny_model_dir, *NPM_INT8, "--calibration-path", work / "cal.pkl", "--calibration-scales", npm)
    # the reference backend (simulate) checks the same file the same way
    message = _refused(work, tiny_model_dir, "--backend", "reference", "--liteml-config", NPM, "--quant-backend",
                       "open", "--quant-momentum", "0.5", "--calibration-scales", npm)
    assert "--quant-momentum" in message, message


def _raw(path: Path, header) -> Path:
    data = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(data)) + data)
    return path


@pytest.mark.parametrize("header", [{"a": {"data_offsets": 5}}, {"__metadata__": [1]},
                                    {"a": {"dtype": "F32", "shape": [1], "data_offsets": ["x", None]}},
                                    {"__metadata__": {"format": 7}}],
                         ids=["offsets-int", "metadata-list", "offsets-junk", "metadata-values"])
def test_a_malformed_header_is_one_line(work, tiny_model_dir, header):
    path = _raw(work / "junk.safetensors", header)
    message = _refused(work, tiny_model_dir, "--kv-cache-dtype", "int8", "--calibration-scales", path)
    assert "not a safetensors file" in message or "not a calibration scales file" in message, message


def test_writing_a_non_finite_range_is_refused(tmp_path):
    meta = {"config_id": "x", "model_config_sha256": "", "model_weights_sha256": ""}
    with pytest.raises(UserError, match="model.layers.0.mlp.act_fn.quantizer"):
        cf.write_scales(str(tmp_path / "s.safetensors"),
                        {"model.layers.0.mlp.act_fn.quantizer": (torch.zeros(1), torch.tensor([float("inf")]))}, meta)
    assert not (tmp_path / "s.safetensors").exists()


def test_main_refuses_a_nan_slot_before_the_model_loads(work, tiny_model_dir):
    """Without the check this run exits 0 and writes all-zero tokens (a NaN SiLU range)."""
    path = _edit(work, "npm.safetensors", "npm_main_nan.safetensors", _set(SILU1, float("nan"), float("nan")),
                 keep_digest=False)
    argv = _argv(work, tiny_model_dir, *NPM_INT8, "--calibration-scales", path, "--accuracy", "--no-progress",
                 "--max-num-seqs", 4, "--num-kv-blocks", 64, "--block-size", 4)
    argv[argv.index("--output-log-dir") + 1] = str(work / "logs_nan")
    result = run_main(argv, work, 180)
    lines = error_lines(result.stderr)
    assert result.returncode == 2 and len(lines) == 1 and SILU1 in lines[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr and "backend: engine" not in result.stderr
    shutil.rmtree(work / "logs_nan", ignore_errors=True)
