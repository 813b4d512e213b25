"""Demo dataset (mlperf_llama2/demo/data.py): OpenOrca parquet schema, balance, determinism, and that
processorca keeps every row and writes the sampled and calibration files the demo run uses."""

import pandas as pd
import pytest

from mlperf_llama2.data import processorca as P
from mlperf_llama2.demo import data
from mlperf_llama2.demo.prepare import DEMO_CALIBRATION_SAMPLES, DEMO_ROWS_PER_ORIGIN, DEMO_SAMPLES


@pytest.fixture(scope="module")
def frame():
    return data.generate_frame(DEMO_ROWS_PER_ORIGIN)


def test_schema_is_the_raw_openorca_parquet(frame, tmp_path):
    path = data.write_parquet(str(tmp_path / "demo.parquet"), DEMO_ROWS_PER_ORIGIN)
    back = pd.read_parquet(path)
    assert list(back.columns) == ["id", "system_prompt", "question", "response"]
    assert back.equals(frame)
    assert all(isinstance(v, str) for col in back.columns for v in back[col])


def test_at_least_256_rows_balanced_over_the_four_origins(frame):
    assert len(frame) >= DEMO_SAMPLES >= 256
    origins = frame["id"].str.split(".").str[0]
    assert origins.value_counts().to_dict() == {o: DEMO_ROWS_PER_ORIGIN for o in ("cot", "flan", "niv", "t0")}
    assert frame["id"].is_unique


def test_same_seed_same_rows_other_seed_other_rows():
    assert data.generate_rows(8, seed=3) == data.generate_rows(8, seed=3)
    assert data.generate_rows(8, seed=3) != data.generate_rows(8, seed=4)


def test_text_is_ascii_and_answers_are_sentences(frame):
    for col in ("system_prompt", "question", "response"):
        assert all(v.isascii() for v in frame[col]), col
    assert all(len(r.split()) >= 3 for r in frame["response"])


def test_mix_of_short_answers_and_longer_explanations(frame):
    words = frame["response"].str.split().str.len()
    assert (words <= 8).sum() >= len(frame) // 4  # short facts, labels, rewrites
    assert (words >= 30).sum() >= len(frame) // 8  # step-by-step explanations, descriptions


def test_answers_are_checkable_facts(frame):
    row = frame[frame["question"] == "What is the capital of France?"]
    assert (row["response"] == "The capital of France is Paris.").all()
    products = frame["question"].str.extract(r"^What is (\d+) times (\d+)\?$").dropna()
    assert len(products) > 0
    for (a, b), r in zip(products.astype(int).values, frame.loc[products.index, "response"]):
        assert r == f"{a} times {b} is {a * b}."


def test_processorca_keeps_every_row_and_writes_demo_sized_files(tmp_path, tiny_tokenizer_dir):
    parquet = data.write_parquet(str(tmp_path / "demo.parquet"), DEMO_ROWS_PER_ORIGIN)
    niv_t0 = data.generate_frame(DEMO_ROWS_PER_ORIGIN)
    niv_t0 = niv_t0[niv_t0["id"].str.match(r"(niv|t0)\.")]
    assert not set(niv_t0["system_prompt"]) & set(P.DROPPED_SYSTEM_PROMPTS)
    config = P.ProcessConfig(dataset_pq_path=parquet, model_dir=str(tiny_tokenizer_dir), export_dir=str(tmp_path / "out"),
                             num_total_samples=DEMO_SAMPLES, calibration_subset_size=DEMO_CALIBRATION_SAMPLES)
    files = P.generate(config)
    full = pd.read_pickle(P.output_path(config.export_dir, "full"))
    assert len(full) == 4 * DEMO_ROWS_PER_ORIGIN  # no filter drops a demo row
    assert (full["tok_output_length"] >= 3).all()
    sampled = pd.read_pickle(P.output_path(config.export_dir, f"sampled_{DEMO_SAMPLES}"))
    assert len(sampled) == DEMO_SAMPLES
    assert sampled["origin"].value_counts().to_dict() == {o: DEMO_SAMPLES // 4 for o in ("cot", "flan", "niv", "t0")}
    calibration = pd.read_pickle(P.output_path(config.export_dir, f"calibration_{DEMO_CALIBRATION_SAMPLES}"))
    assert len(calibration) == DEMO_CALIBRATION_SAMPLES
    assert len(files) >= 3
