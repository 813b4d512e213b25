"""A checkpoint becomes the same model in the engine as in transformers, or is refused with one line first.

Each case is a copy of the tiny fixture with one thing changed. Config fields the engine implements give the
same greedy tokens as transformers' `generate`; what it cannot follow (a RoPE that changes with the sequence
length, EOS ids or decoding settings only `generate` applies, a tokenizer from another model, .bin weights)
is one UserError before any tensor is allocated; and both backends read exactly the weight files
transformers reads (model.safetensors before an index; only the index's shards).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

from loadgen_fixtures import SMALL_USER_CONF, write_dataset
from mlperf_llama2.backends.hf_loading import read_model_info
from mlperf_llama2.checkpoint import check_checkpoint
from mlperf_llama2.config import EngineConfig
from mlperf_llama2.engine import loader
from mlperf_llama2.engine.llm_engine import LLMEngine
from mlperf_llama2.engine.sequence import SamplingParams
from mlperf_llama2.errors import UserError
from reliability_fixtures import error_lines, run
from test_checkpoint_check import WEIGHTS, shard, variant

ENGINE = EngineConfig(max_num_seqs=8, max_num_batched_tokens=4096, block_size=16, num_kv_blocks=64, cuda_graphs=False)
_g = torch.Generator().manual_seed(0)
PROMPTS = [[1] + torch.randint(3, 500, (n - 1,), generator=_g).tolist() for n in (5, 30, 70)]
NEW = 20
EOS = 2


def hf_tokens(model_dir: Path, eos: int = EOS) -> list[list[int]]:
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    outs = []
    for p in PROMPTS:
        gen = model.generate(torch.tensor([p]), max_new_tokens=NEW, min_new_tokens=1, do_sample=False, num_beams=1)
        row = gen[0, len(p):].tolist()
        outs.append(row[:row.index(eos) + 1] if eos in row else row)
    return outs


def engine_tokens(model_dir: Path) -> list[list[int]]:
    return LLMEngine.from_pretrained(str(model_dir), ENGINE).generate(PROMPTS, SamplingParams(NEW))


def one_line(exc_info) -> str:
    message = str(exc_info.value)
    assert "\n" not in message
    return message


def engine_refuses_before_allocating(model_dir: Path, monkeypatch) -> str:
    built = []
    monkeypatch.setattr(loader, "empty_model", lambda *a, **k: built.append(1))
    with pytest.raises(UserError) as info:
        LLMEngine.from_pretrained(str(model_dir), ENGINE)
    assert not built, "the engine allocated the model before refusing"
    return one_line(info)


# --- config.json fields the engine follows: the same tokens as transformers ---------------------------------

@pytest.mark.parametrize("edit", [
    {"rope_theta": 500000.0},
    {"rms_norm_eps": 0.5},
    {"rope_scaling": {"rope_type": "linear", "factor": 4.0}},
    {"rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                      "original_max_position_embeddings": 64}},
    {"rope_scaling": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32}},
    {"pretraining_tp": 2},
    {"max_position_embeddings": 16},
], ids=["rope_theta", "rms_norm_eps", "linear", "llama3", "yarn", "pretraining_tp", "short_max_positions"])
def test_config_fields_the_engine_follows_give_transformers_tokens(tmp_path, tiny_model_dir, edit):
    model = variant(Path(tiny_model_dir), tmp_path / "m", edit_config=lambda c: c.update(edit))
    check_checkpoint(str(model))
    assert engine_tokens(model) == hf_tokens(model)


@pytest.mark.parametrize("rope", [
    {"rope_type": "dynamic", "factor": 4.0},
    {"rope_type": "longrope", "short_factor": [1.0] * 8, "long_factor": [4.0] * 8,
     "original_max_position_embeddings": 32},
], ids=["dynamic", "longrope"])
def test_a_rope_that_changes_with_sequence_length_is_refused_by_the_engine(tmp_path, tiny_model_dir, rope,
                                                                           monkeypatch):
    # longrope ran with its short factor only: other tokens than transformers past 32 positions, silently
    model = variant(Path(tiny_model_dir), tmp_path / "m",
                    edit_config=lambda c: c.update(rope_scaling=rope, max_position_embeddings=128))
    message = engine_refuses_before_allocating(model, monkeypatch)
    assert f"rope_scaling type '{rope['rope_type']}'" in message and "--backend reference" in message, message


# --- which weight files: exactly transformers' ---------------------------------------------------------------

def test_a_stale_shard_beside_the_index_is_read_by_neither_backend(tmp_path, tiny_model_dir):
    model = shard(Path(tiny_model_dir), tmp_path / "m")
    state = load_file(Path(tiny_model_dir) / WEIGHTS)
    stale = model / "model-00003-of-00003.safetensors"  # another copy's leftover, not in the index
    save_file({"model.norm.weight": state["model.norm.weight"] * -3,
               "lm_head.weight": state["lm_head.weight"].flip(0).contiguous()}, stale, metadata={"format": "pt"})
    assert all(t.file != str(stale) for t in check_checkpoint(str(model)).tensors)
    assert all(name in state for name, _ in loader.checkpoint_tensors(str(model)))
    built = loader.build_model(loader.read_config(str(model)), {}, torch.device("cpu"), torch.float32, 64,
                               model_path=str(model))
    assert torch.equal(built.norm.weight, state["model.norm.weight"])  # not the stale shard's
    assert engine_tokens(model) == hf_tokens(model)
    # the run's recorded identity is the files that load: the stale shard does not change it
    from mlperf_llama2.quant.calibration_file import model_identity
    before = model_identity(str(model))
    stale.unlink()
    assert model_identity(str(model)) == before


def test_model_safetensors_wins_over_an_index_as_in_transformers(tmp_path, tiny_model_dir):
    model = shard(Path(tiny_model_dir), tmp_path / "m")
    state = load_file(Path(tiny_model_dir) / WEIGHTS)
    state["model.norm.weight"] = torch.ones(63)  # the file transformers would load is the broken one
    save_file(state, model / WEIGHTS, metadata={"format": "pt"})
    with pytest.raises(UserError) as info:
        check_checkpoint(str(model))
    assert "model.safetensors: model.norm.weight has shape [63], config.json implies [64]" in one_line(info)


def test_a_single_safetensors_file_transformers_would_not_load_is_refused(tmp_path, tiny_model_dir):
    model = variant(Path(tiny_model_dir), tmp_path / "m")
    (model / WEIGHTS).rename(model / "consolidated.safetensors")
    with pytest.raises(UserError) as info:
        check_checkpoint(str(model))
    assert "consolidated.safetensors: transformers loads a single safetensors file only as model.safetensors" \
        in one_line(info)


def test_pytorch_bin_weights_are_refused_by_the_engine_before_it_allocates(tmp_path, tiny_model_dir, monkeypatch):
    model = variant(Path(tiny_model_dir), tmp_path / "m")
    torch.save(load_file(model / WEIGHTS), model / "pytorch_model.bin")
    (model / WEIGHTS).unlink()
    check_checkpoint(str(model))  # the reference backend loads it
    message = engine_refuses_before_allocating(model, monkeypatch)
    assert "the engine loads safetensors checkpoints only" in message, message


# --- EOS, decoding settings and the tokenizer: what generate would apply and the engine would not --------------

def _gen_config(model: Path, **fields) -> None:
    gen = json.loads((model / "generation_config.json").read_text())
    gen.update(fields)
    (model / "generation_config.json").write_text(json.dumps(gen))


REFUSED = [  # (name, how the copy is made from (fixture, destination), words of the one line)
    ("config_eos_list", lambda m: variant(m[0], m[1], edit_config=lambda c: c.update(eos_token_id=[2, 400])),
     ("config.json: eos_token_id lists 2 ids [2, 400]", "the engine at 2 only")),
    ("generation_eos_list", lambda m: _gen_config(variant(*m), eos_token_id=[2, 400]),
     ("generation_config.json: eos_token_id [2, 400] is not config.json's 2",)),
    ("generation_eos_other", lambda m: _gen_config(variant(*m), eos_token_id=400),
     ("generation_config.json: eos_token_id 400 is not config.json's 2",)),
    ("repetition_penalty", lambda m: _gen_config(variant(*m), repetition_penalty=1.5),
     ("generation_config.json: repetition_penalty 1.5 changes greedy decoding",)),
    ("no_repeat_ngram", lambda m: _gen_config(variant(*m), no_repeat_ngram_size=2),
     ("no_repeat_ngram_size 2 changes greedy decoding",)),
    ("tokenizer_eos", lambda m: (variant(m[0], m[1], edit_config=lambda c: c.update(eos_token_id=5)),
                                 _gen_config(m[1], eos_token_id=5)),
     ("the tokenizer's EOS '</s>' is id 2, config.json's eos_token_id is 5",)),
    ("tokenizer_bos", lambda m: variant(m[0], m[1], edit_config=lambda c: c.update(bos_token_id=7)),
     ("the tokenizer's BOS '<s>' is id 1, config.json's bos_token_id is 7",)),
]


@pytest.mark.parametrize("name, edit, words", REFUSED, ids=[c[0] for c in REFUSED])
def test_what_only_generate_would_follow_is_refused_for_both_backends(tmp_path, tiny_model_dir, name, edit, words,
                                                                      monkeypatch):
    model = tmp_path / name
    edit((Path(tiny_model_dir), model))
    with pytest.raises(UserError) as info:
        read_model_info(str(model))  # both backends' pre-flight, and the reference backend's loader
    message = one_line(info)
    assert all(w in message for w in words), message
    if not name.startswith("tokenizer"):  # the engine's own first step refuses as well
        assert all(w in engine_refuses_before_allocating(model, monkeypatch) for w in words)


def test_generate_stops_at_a_generation_config_eos_the_engine_does_not_know(tmp_path, tiny_model_dir):
    """Why the EOS rule exists: with generation_config.json's extra EOS ids transformers' tokens differ."""
    model = variant(Path(tiny_model_dir), tmp_path / "m")
    plain = hf_tokens(model)
    stop = plain[1][3]  # a token the second prompt's greedy output reaches
    _gen_config(model, eos_token_id=[EOS, stop])
    assert hf_tokens(model, eos=stop)[1] == plain[1][:4] != plain[1]


def test_a_sampling_generation_config_is_fine(tmp_path, tiny_model_dir):
    model = variant(Path(tiny_model_dir), tmp_path / "m")
    # Llama-2-chat's: sampling settings, which greedy decoding overrides
    _gen_config(model, do_sample=True, temperature=0.6, top_p=0.9, pad_token_id=0, max_length=4096,
                repetition_penalty=1.0)
    assert read_model_info(str(model)).eos_token_id == EOS
    loader.read_config(str(model))


def test_main_refuses_a_generation_config_eos_before_loading(tmp_path, tiny_model_dir, tiny_tokenizer_dir):
    model = variant(Path(tiny_model_dir), tmp_path / "m")
    _gen_config(model, eos_token_id=[EOS, 400])
    write_dataset(tmp_path / "data.pkl", tiny_tokenizer_dir)
    (tmp_path / "user.conf").write_text(SMALL_USER_CONF)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    proc = run(["--model-path", model, "--dataset-path", tmp_path / "data.pkl", "--user-conf", tmp_path / "user.conf",
                "--output-log-dir", cwd / "logs", "--device", "cpu", "--max-new-tokens", 4, "--backend", "engine"],
               cwd, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = error_lines(proc.stderr)
    assert len(lines) == 1 and "eos_token_id [2, 400] is not config.json's 2" in lines[0], proc.stderr[-3000:]
    assert "engine.loader: built" not in proc.stderr and "starting LoadGen" not in proc.stderr
