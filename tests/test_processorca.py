"""processorca (SPEC §5): every step on a synthetic OpenOrca parquet, the files it writes, and its errors."""

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from mlperf_llama2.data import processorca as P
from mlperf_llama2.errors import UserError
from openorca_fixture import SEQLEN_LIMIT, write_openorca_parquet

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def parquet(tmp_path_factory):
    path = tmp_path_factory.mktemp("orca") / "orca.parquet"
    rows = write_openorca_parquet(path)
    return str(path), rows


@pytest.fixture(scope="module")
def tokenizer(tiny_tokenizer_dir):
    return P.load_tokenizer_for_preprocessing(str(tiny_tokenizer_dir))


@pytest.fixture(scope="module")
def exported(parquet, tiny_tokenizer_dir, tmp_path_factory):
    export = tmp_path_factory.mktemp("export")
    config = P.ProcessConfig(dataset_pq_path=parquet[0], model_dir=str(tiny_tokenizer_dir), export_dir=str(export),
                             seqlen_limit=SEQLEN_LIMIT, num_total_samples=8, calibration_subset_size=3)
    return config, P.generate(config)


def test_prompt_templates():
    assert P.llama2_prompt("Be brief.", "Why?") == "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nWhy? [/INST]"
    assert P.llama2_prompt("", "Why?") == P.llama2_prompt(None, "Why?") == "<s>[INST] Why? [/INST]"


def test_load_renames_response_to_output(parquet):
    frame = P.load_parquet(parquet[0])
    assert list(frame.columns) == ["id", "system_prompt", "question", "output"]
    assert len(frame) == len(parquet[1])


def test_tokens_start_with_two_bos_and_end_with_the_tokenizers_word_start_piece(parquet, tokenizer):
    frame = P.add_tokens(P.add_prompts(P.load_parquet(parquet[0])), tokenizer, 77)
    text = frame["input"].iloc[0]
    assert frame["tok_input"].iloc[0] == tokenizer(text)["input_ids"] + [77]
    assert frame["tok_input"].iloc[0][:2] == [1, 1]
    none_row = frame.index[frame["id"] == "t0.none"][0]
    assert frame.at[none_row, "tok_output"] == []
    assert frame["tok_output"].iloc[0] == tokenizer(frame["output"].iloc[0])["input_ids"]


def test_origin_is_the_id_prefix():
    frame = P.add_origin(pd.DataFrame({"id": ["cot.1", "niv.x.y", "t0.3"]}))
    assert frame["origin"].tolist() == ["cot", "niv", "t0"]


def test_is_english_allows_only_the_listed_non_ascii_characters():
    assert P.is_english("plain ascii ~!@#") and P.is_english("\u2019\u2013\u201c\u201d\u2014")
    assert not P.is_english("caf\u00e9") and not P.is_english("\u2018single\u2019")
    assert P.is_english(None)


def test_each_filter_keeps_exactly_the_expected_rows(parquet, tokenizer):
    rows = parquet[1]
    frame = P.add_origin(P.add_tokens(P.add_prompts(P.load_parquet(parquet[0])), tokenizer, None))
    after_english = P.filter_english(frame)
    assert set(frame["id"]) - set(after_english["id"]) == {"flan.na1", "cot.na2", "niv.na3"}
    assert after_english.index.tolist() == list(range(len(after_english)))  # reset here, as in the reference
    after_len = P.filter_seqlen(after_english, SEQLEN_LIMIT)
    assert set(after_english["id"]) - set(after_len["id"]) == {"cot.long_in", "flan.long_out"}
    after_short = P.filter_short_outputs(after_len)
    assert set(after_len["id"]) - set(after_short["id"]) == {"niv.short", "t0.none"}
    final = P.filter_bad_system_prompts(after_short)
    assert set(final["id"]) == {r["id"] for r in rows if r["keep"]}
    dropped_prompts = set(after_short["system_prompt"]) - set(final["system_prompt"])
    assert dropped_prompts == set()  # the listed prompts survive in cot/flan rows ...
    gone = after_short[~after_short["id"].isin(final["id"])]
    assert set(gone["origin"]) == {"niv", "t0"} and set(gone["system_prompt"]) == set(P.DROPPED_SYSTEM_PROMPTS)


def test_dropped_system_prompts_are_the_specs_exact_strings():
    spec = [
        "",
        "You are an AI assistant that follows instruction extremely well. Help as much as you can.",
        "You are an AI assistant. Provide a detailed answer so user don’t need to search outside to understand the answer.",
        "You are an AI assistant. Provide a detailed answer so user don't need to search outside to understand the answer.",
        "User will you give you a task with some instruction. Your job is follow the instructions as faithfully as you can. While answering think step-by-step and justify your answer.",  # noqa: E501
        "Explain how you used the definition to come up with the answer.",
    ]
    assert list(P.DROPPED_SYSTEM_PROMPTS) == spec


def test_both_apostrophe_variants_are_listed():
    curly = [p for p in P.DROPPED_SYSTEM_PROMPTS if "don\u2019t" in p]
    straight = [p for p in P.DROPPED_SYSTEM_PROMPTS if "don't" in p]
    assert len(curly) == len(straight) == 1 and curly[0].replace("\u2019", "'") == straight[0]


def test_apply_filters_logs_counts_and_keeps_row_order(parquet, tokenizer, caplog):
    frame = P.add_origin(P.add_tokens(P.add_prompts(P.load_parquet(parquet[0])), tokenizer, None))
    with caplog.at_level("INFO"):
        out = P.apply_filters(frame, SEQLEN_LIMIT)
    assert out["id"].tolist() == [r["id"] for r in parquet[1] if r["keep"]]
    assert list(out.columns) == list(P.OUTPUT_COLUMNS)
    assert out["tok_input_length"].tolist() == [len(x) for x in out["tok_input"]]
    assert len([m for m in caplog.messages if m.startswith("after filter")]) == 4


def test_files_columns_and_rows(exported, parquet):
    config, paths = exported
    assert set(paths) == {"full", "cot", "flan", "niv", "t0", "sampled", "calibration"}
    names = {Path(p).name for p in paths.values()}
    assert "open_orca_gpt4_tokenized_llama.sampled_8.pkl" in names
    assert "open_orca_gpt4_tokenized_llama.calibration_3.pkl" in names
    full = pd.read_pickle(paths["full"])
    assert list(full.columns) == list(P.OUTPUT_COLUMNS)
    assert full["id"].tolist() == [r["id"] for r in parquet[1] if r["keep"]]
    for origin in ("cot", "flan", "niv", "t0"):
        part = pd.read_pickle(paths[origin])
        assert part["id"].tolist() == full.loc[full["origin"] == origin, "id"].tolist()
    assert all(ids[-1] == P.response_init_token(P.load_tokenizer_for_preprocessing(config.model_dir))[0]
               for ids in full["tok_input"])


def test_sampling_is_df_sample_per_sorted_origin(exported):
    config, paths = exported
    full = pd.read_pickle(paths["full"])
    expected = pd.concat(
        [full[full["origin"] == o].sample(2, random_state=1337) for o in sorted(full["origin"].unique())]
    ).reset_index(drop=True)
    sampled = pd.read_pickle(paths["sampled"])
    pd.testing.assert_frame_equal(sampled, expected)
    assert sampled["origin"].tolist() == ["cot", "cot", "flan", "flan", "niv", "niv", "t0", "t0"]
    calibration = pd.read_pickle(paths["calibration"])
    pd.testing.assert_frame_equal(calibration, expected.sample(n=3, random_state=12345).reset_index(drop=True))


def test_second_run_is_identical_and_reuses_the_full_file(exported, tmp_path):
    config, paths = exported
    again = P.generate(config)  # full and per-origin files now exist and are reused
    for name in ("sampled", "calibration"):
        assert again[name] == paths[name]
    fresh = P.generate(P.ProcessConfig(**{**config.__dict__, "export_dir": str(tmp_path)}))
    for name in ("full", "sampled", "calibration"):
        pd.testing.assert_frame_equal(pd.read_pickle(fresh[name]), pd.read_pickle(paths[name]))


def test_sampling_errors(exported):
    full = pd.read_pickle(exported[1]["full"])
    by_origin = P.split_by_origin(full)
    with pytest.raises(UserError, match="does not divide evenly by the 4 origins"):
        P.sample_per_origin(by_origin, 10)
    with pytest.raises(UserError, match="origin 'niv' has 2 rows"):
        P.sample_per_origin(by_origin, 12)
    with pytest.raises(UserError, match="larger than the 8 sampled rows"):
        P.calibration_subset(P.sample_per_origin(by_origin, 8), 9)


class FakeVocab:
    """Just the two lookups response_init_token makes."""

    def __init__(self, vocab):
        self.vocab = vocab
        self.by_id = {v: k for k, v in vocab.items()}

    def __len__(self):
        return max(self.by_id) + 1

    def convert_ids_to_tokens(self, i):
        return self.by_id.get(i, "<unk>")

    def get_vocab(self):
        return dict(self.vocab)


def test_response_init_token_rules(tokenizer):
    assert P.response_init_token(FakeVocab({"<unk>": 0, "\u2581": 29871, "\u2581the": 31999}))[0] == 29871
    own_id, why = P.response_init_token(tokenizer)
    assert own_id == tokenizer.convert_tokens_to_ids("\u2581") != 29871 and "not Llama-2" in why
    assert P.response_init_token(FakeVocab({"a": 0, "\u0120": 1, "\u0120the": 2}))[0] is None
    assert P.response_init_token(FakeVocab({"a": 0, "b": 1}))[0] is None


def test_byte_level_bpe_gets_no_response_init_token(tmp_path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(["hello world, the quick brown fox"] * 5, trainers.BpeTrainer(
        vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok)
    assert "\u0120" in fast.get_vocab()
    assert P.response_init_token(fast) == (None, P.response_init_token(fast)[1])
    assert "byte-level" in P.response_init_token(fast)[1]


def run_cli(*args):
    return subprocess.run([sys.executable, str(ROOT / "processorca.py"), *args], capture_output=True, text=True,
                          cwd=ROOT, env={"PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})


def test_cli_end_to_end_and_bad_inputs(parquet, tiny_tokenizer_dir, tmp_path):
    base = ["--model_dir", str(tiny_tokenizer_dir), "--seqlen_limit", str(SEQLEN_LIMIT), "--export_dir",
            str(tmp_path / "out"), "--num_total_samples", "8", "--calibration_subset_size", "2"]
    ok = run_cli("--dataset_pq_path", parquet[0], *base)
    assert ok.returncode == 0, ok.stderr
    assert "after filter niv/t0 system prompts:" in ok.stderr and "appended response-init token" in ok.stderr
    assert (tmp_path / "out" / "open_orca_gpt4_tokenized_llama.calibration_2.pkl").exists()

    pd.DataFrame({"id": ["cot.1"], "question": ["q"]}).to_parquet(tmp_path / "bad.parquet")
    (tmp_path / "junk.parquet").write_text("not a parquet")
    cases = [
        (["--dataset_pq_path", str(tmp_path / "missing.parquet"), *base], "OpenOrca parquet not found"),
        (["--dataset_pq_path", str(tmp_path / "bad.parquet"), *base], "missing column(s) system_prompt, response"),
        (["--dataset_pq_path", str(tmp_path / "junk.parquet"), *base], "cannot read parquet"),
        (["--dataset_pq_path", parquet[0], *base, "--model_dir", str(tmp_path)], "cannot load a tokenizer"),
        (["--dataset_pq_path", parquet[0], *base, "--model_dir", str(tmp_path / "nodir")], "is not a directory"),
    ]
    for k, (args, message) in enumerate(cases):
        proc = run_cli(*args, "--export_dir", str(tmp_path / f"err{k}"))  # the last --export_dir wins
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2, proc.stderr
        assert message in lines[-1] and "Traceback" not in proc.stderr, proc.stderr


def test_chat_template_option(parquet, tiny_tokenizer_dir, tmp_path):
    with pytest.raises(UserError, match="has no chat template"):
        P.generate(P.ProcessConfig(parquet[0], str(tiny_tokenizer_dir), str(tmp_path), SEQLEN_LIMIT, 8, 2, True))


def test_chat_template_prompts_carry_their_own_special_tokens(tiny_tokenizer_dir):
    tok = P.load_tokenizer_for_preprocessing(str(tiny_tokenizer_dir))
    tok.chat_template = (
        "{{ bos_token }}{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    prompt = P.chat_template_prompt(tok)
    assert prompt("Be brief.", "Why?") == "<s><system>Be brief.<user>Why?<assistant>"
    assert prompt("", "Why?") == "<s><user>Why?<assistant>"
    frame = P.add_tokens(P.add_prompts(pd.DataFrame({"system_prompt": [""], "question": ["Why?"], "output": ["x"]}),
                                       prompt), tok, None, add_special_tokens=False)
    assert frame["tok_input"].iloc[0][:2] != [1, 1] and frame["tok_input"].iloc[0][0] == 1


def test_llama2_style_checkpoint_prompts_tokenize_like_its_tokenizer_json(parquet, llama2_tokenizer_dir):
    from tokenizers import Tokenizer

    raw = Tokenizer.from_file(str(llama2_tokenizer_dir / "tokenizer.json"))
    tok = P.load_tokenizer_for_preprocessing(str(llama2_tokenizer_dir))
    init, _ = P.response_init_token(tok)
    assert tok.convert_ids_to_tokens(init) == "\u2581"
    frame = P.add_tokens(P.add_prompts(P.load_parquet(parquet[0])), tok, init)
    for text, ids in zip(frame["input"], frame["tok_input"]):
        assert ids == raw.encode(text).ids + [init]
        assert ids[:3] == [1, 1, init]  # "<s>" text, then "▁" before "[INST]" as in the reference's 1, 1, 518


def test_cached_pickles_are_rebuilt_when_the_recorded_arguments_differ(parquet, tiny_tokenizer_dir, tmp_path, caplog):
    config = P.ProcessConfig(dataset_pq_path=parquet[0], model_dir=str(tiny_tokenizer_dir), export_dir=str(tmp_path),
                             seqlen_limit=SEQLEN_LIMIT, num_total_samples=4, calibration_subset_size=2)
    paths = P.generate(config)
    record = tmp_path / "open_orca_gpt4_tokenized_llama.args.json"
    assert json.loads(record.read_text())["seqlen_limit"] == SEQLEN_LIMIT
    longest = int(pd.read_pickle(paths["full"])["tok_input_length"].max())
    shorter = P.ProcessConfig(**{**config.__dict__, "seqlen_limit": longest})  # drops the longest prompts
    caplog.clear()
    with caplog.at_level("INFO"):
        rebuilt = pd.read_pickle(P.generate(shorter)["full"])
    assert f"--seqlen_limit {SEQLEN_LIMIT} -> {longest}" in caplog.text and "rebuilding them" in caplog.text
    assert rebuilt["tok_input_length"].max() < longest
    assert json.loads(record.read_text())["seqlen_limit"] == longest
    fresh = P.generate(P.ProcessConfig(**{**shorter.__dict__, "export_dir": str(tmp_path / "fresh")}))
    pd.testing.assert_frame_equal(rebuilt, pd.read_pickle(fresh["full"]))
    caplog.clear()
    with caplog.at_level("INFO"):
        P.generate(shorter)  # same arguments again: reused
    assert "reusing existing" in caplog.text and "rebuilding" not in caplog.text
    record.unlink()  # pickles from a build that recorded nothing (an older version, or interrupted): rebuilt
    caplog.clear()
    with caplog.at_level("INFO"):
        P.generate(shorter)
    assert "no readable record of the arguments" in caplog.text and record.exists()
