"""tools/quant_gpu_compare.py on CPU at a tiny shape: its comparison sees identity and sees a perturbation.

Zero weight noise must give a float_noise row with no logit error and full agreement; a large
noise must lower teacher-forced top-1 and greedy agreement (otherwise the GPU table could not
show a difference); int8 mode vs simulate of the Linear rule alone must agree on every token
(CPU int8 is the exact integer GEMM, simulate the same arithmetic in float).
"""

from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools"))

import quant_gpu_compare  # noqa: E402

TINY = ["--device", "cpu", "--layers", "1", "--hidden", "128", "--vocab", "600", "--prompts", "3", "--positions", "12",
        "--prompt-len", "6", "--new-tokens", "6", "--calib", "1"]


def rows(result):
    return {r["pair"]: r for r in result["rows"]}


def test_identical_models_agree_fully(tmp_path):
    result = quant_gpu_compare.main(TINY + ["--noise", "0", "--variants", "float_noise,sim_linear,int8_linear",
                                            "--out", str(tmp_path)])
    noise = rows(result)["float_noise vs float"]
    assert noise["logit_err_max"] == 0.0 and noise["top1_agreement"] == 1.0 and noise["greedy_identical"] == 1.0
    gemm = rows(result)["int8_linear vs sim_linear"]
    assert gemm["top1_agreement"] == 1.0 and gemm["greedy_identical"] == 1.0 and gemm["logit_err_max_rel"] < 1e-4
    assert json.loads((tmp_path / "quant_gpu_compare.json").read_text())["rows"] == result["rows"]


def test_a_perturbed_model_is_seen_to_differ(tmp_path):
    result = quant_gpu_compare.main(TINY + ["--noise", "2.0", "--variants", "float_noise", "--out", str(tmp_path)])
    row = rows(result)["float_noise vs float"]
    assert row["top1_agreement"] < 1.0 and row["greedy_identical"] < 1.0 and row["first_divergence"]
    assert row["logit_err_mean_rel"] > 0.01
