"""tools/bench_fidelity.py measures what it claims: in fp32 on CPU the engine's teacher-forced logits,
taken from its own steps (chunked prefill, then the decode path), equal transformers' at every
position, and the decisive checkpoint loads identically into transformers and the engine."""

import json
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools"))

import bench_fidelity  # noqa: E402


@pytest.fixture(scope="module")
def fp32_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("fid")
    bench_fidelity.main(["--shape", "tiny", "--layers", "2", "--device", "cpu", "--dtype", "float32",
                         "--tf-prompts", "3", "--tf-decode", "5", "--prompts", "3", "--tokens", "6",
                         "--prompt-len", "20,40", "--out", str(out)])
    return json.loads((out / "fidelity.json").read_text()), (out / "table.txt").read_text()


def test_engine_teacher_forced_logits_equal_transformers_in_fp32(fp32_run):
    result, _ = fp32_run
    tf = result["teacher_forced"]
    assert tf["engine"]["decode"]["positions"] == 3 * 5  # the tail really went through decode steps
    assert tf["engine"]["last"]["positions"] == 3
    for region in ("all", "decode", "last"):
        assert tf["engine"][region]["max_abs"] < 1e-4
        assert tf["engine"][region]["top1_agree"] == 1.0
        assert tf["transformers"][region]["max_abs"] == 0.0  # fp32 against itself: the same model


def test_greedy_outputs_identical_in_fp32(fp32_run):
    result, table = fp32_run
    for key in ("engine_vs_reference", "reference_batch16_vs_batch1", "reference_vs_fp32", "engine_vs_fp32"):
        assert result["greedy"][key]["identical"] == 3, key
    assert "engine_vs_reference" in table
