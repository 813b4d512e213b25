"""The engine generates exactly what transformers' greedy `generate` does, whatever the batching.

Reference: `generate(max_new_tokens, min_new_tokens=1, do_sample=False, pad_token_id=EOS)` one
prompt at a time (no padding), on the tiny fp32 fixtures with decisive logits. The engine runs the
same prompts together under batch compositions that exercise every path: one sequence, many mixed
lengths at once, a token budget so small that prompts are prefilled in chunks, and so few KV blocks
that sequences are preempted and recomputed.
"""

import pytest
import torch
from transformers import AutoModelForCausalLM

from mlperf_llama2.config import EngineConfig
from mlperf_llama2.engine.llm_engine import LLMEngine
from mlperf_llama2.engine.sequence import SamplingParams

NEW_TOKENS = 24
EOS = 2


def make_prompts(lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [[1] + torch.randint(3, 500, (n - 1,), generator=g).tolist() for n in lengths]


MIXED = make_prompts([5, 17, 40, 2, 64, 9, 1 + 1, 33])


def hf_greedy(model_dir, prompts, new_tokens=NEW_TOKENS):
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    outs = []
    for p in prompts:
        gen = model.generate(torch.tensor([p]), max_new_tokens=new_tokens, min_new_tokens=1, do_sample=False,
                             num_beams=1, pad_token_id=EOS)
        outs.append(gen[0, len(p):].tolist())
    return outs


def strip_padding(tokens):
    """generate pads a finished row with EOS; the engine stops at the first EOS."""
    return tokens[:tokens.index(EOS) + 1] if EOS in tokens else tokens


@pytest.fixture(scope="module")
def reference(tiny_model_dir):
    return [strip_padding(o) for o in hf_greedy(tiny_model_dir, MIXED)]


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]

# overlap_steps=True: the next step is queued before the last one's tokens are read (the CUDA default) on CPU too
COMPOSITIONS = {
    "roomy": EngineConfig(max_num_seqs=16, max_num_batched_tokens=4096, block_size=16, num_kv_blocks=64,
                          overlap_steps=True),
    "chunked_prefill": EngineConfig(max_num_seqs=16, max_num_batched_tokens=7, block_size=4, num_kv_blocks=256,
                                    overlap_steps=True),
    "preemption": EngineConfig(max_num_seqs=16, max_num_batched_tokens=64, block_size=4, num_kv_blocks=30,
                               overlap_steps=True),
    # every step is one token, so prompt chunks of 1 token take the decode path (CUDA: graphs)
    "token_at_a_time": EngineConfig(max_num_seqs=16, max_num_batched_tokens=1, block_size=4, num_kv_blocks=256,
                                    overlap_steps=True),
    "preemption_not_overlapped": EngineConfig(max_num_seqs=16, max_num_batched_tokens=64, block_size=4,
                                              num_kv_blocks=30, overlap_steps=False),
    # steps with prompt chunks, up to 64 tokens in all, run as rows of the decode path (CUDA: the decode graphs)
    "flat_rows": EngineConfig(max_num_seqs=16, max_num_batched_tokens=64, block_size=4, num_kv_blocks=256,
                              overlap_steps=True, graph_mixed_tokens=64, flat_row_groups=False),
    # the same, the rows' attention in groups of a sequence's consecutive rows (the default; CUDA: flat graphs
    # with paged_rows_attention)
    "flat_rows_grouped": EngineConfig(max_num_seqs=16, max_num_batched_tokens=64, block_size=4, num_kv_blocks=256,
                                      overlap_steps=True, graph_mixed_tokens=64, flat_row_groups=True),
    # steps of more than 16 tokens trimmed to a multiple of 16 (the last prompt chunk gives up the rest)
    "prefill_aligned": EngineConfig(max_num_seqs=16, max_num_batched_tokens=64, block_size=4, num_kv_blocks=256,
                                    overlap_steps=True, prefill_align=16),
    # some steps flat (<= 24 tokens), larger ones eager, with preemption and recompute
    "flat_rows_some_preempted": EngineConfig(max_num_seqs=16, max_num_batched_tokens=64, block_size=4,
                                             num_kv_blocks=30, overlap_steps=True, graph_mixed_tokens=24),
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", list(COMPOSITIONS))
def test_engine_matches_generate_for_every_sample(tiny_model_dir, reference, name, device):
    engine = LLMEngine.from_pretrained(str(tiny_model_dir), COMPOSITIONS[name], device=device)
    outs = engine.generate(MIXED, SamplingParams(NEW_TOKENS))
    assert outs == reference
    if "preempt" in name:
        assert engine.scheduler.num_preemptions > 0
    assert (engine.scheduler.num_aligned > 0) == (name == "prefill_aligned")
    if name.startswith("flat_rows"):
        assert engine.runner.flat_steps > 0  # the composition does its job
    else:
        assert engine.runner.flat_steps == 0
    assert engine.overlap == COMPOSITIONS[name].overlap_steps
    if name == "chunked_prefill":
        assert engine.num_steps > len(MIXED) + NEW_TOKENS  # prompts took several steps each


@pytest.mark.parametrize("device", DEVICES)
def test_single_sequence_matches_generate(tiny_model_dir, reference, device):
    engine = LLMEngine.from_pretrained(str(tiny_model_dir), COMPOSITIONS["roomy"], device=device)
    assert engine.generate([MIXED[4]], SamplingParams(NEW_TOKENS)) == [reference[4]]


@pytest.mark.parametrize("overlap", [True, False])
def test_stops_at_eos_like_generate(eos_model_dir, overlap):
    """Overlapped, a sequence that hits EOS was already queued for one more step: that token is dropped."""
    prompts = [[1, 40, 50, 60, 70]] + make_prompts([3, 12, 30, 7], seed=1)
    want = [strip_padding(o) for o in hf_greedy(eos_model_dir, prompts, new_tokens=16)]
    assert want[0][-1] == EOS and len(want[0]) < 16  # the fixture does end early
    conf = EngineConfig(max_num_seqs=16, max_num_batched_tokens=4096, block_size=16, num_kv_blocks=64,
                        overlap_steps=overlap)
    engine = LLMEngine.from_pretrained(str(eos_model_dir), conf)
    assert engine.generate(prompts, SamplingParams(16)) == want
    assert engine.scheduler.block_manager.num_free_blocks == 64  # every block came back


def test_first_token_is_never_eos_even_when_the_model_prefers_it(eos_model_dir):
    prompts = make_prompts([4, 9], seed=2)
    engine = LLMEngine.from_pretrained(str(eos_model_dir), COMPOSITIONS["roomy"])
    prefers_eos = engine.generate(prompts, SamplingParams(4, min_new_tokens=0))
    outs = engine.generate(prompts, SamplingParams(4))
    assert any(o[0] == EOS for o in prefers_eos)  # without the mask EOS would come first
    assert all(o[0] != EOS for o in outs)


def test_ignore_eos_produces_the_forced_length(eos_model_dir):
    engine = LLMEngine.from_pretrained(str(eos_model_dir), COMPOSITIONS["roomy"])
    outs = engine.generate(make_prompts([5, 6]), [SamplingParams(3, ignore_eos=True), SamplingParams(9, ignore_eos=True)])
    assert [len(o) for o in outs] == [3, 9]


@pytest.mark.parametrize("rope", [
    {"rope_type": "linear", "rope_theta": 1000.0, "factor": 4.0},
    {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
     "original_max_position_embeddings": 16},
])
def test_rope_theta_and_scaling_follow_the_checkpoint_config(tiny_model_dir, tmp_path, rope, reference):
    import json
    import shutil

    scaled = tmp_path / "scaled"
    shutil.copytree(tiny_model_dir, scaled)
    config = json.loads((scaled / "config.json").read_text())
    config["rope_parameters"] = rope
    (scaled / "config.json").write_text(json.dumps(config))
    prompts = MIXED[:3] + [MIXED[4]]
    want = [strip_padding(o) for o in hf_greedy(scaled, prompts)]
    assert want != [reference[i] for i in (0, 1, 2, 4)]  # the scaling does change the outputs
    engine = LLMEngine.from_pretrained(str(scaled), COMPOSITIONS["roomy"])
    assert engine.generate(prompts, SamplingParams(NEW_TOKENS)) == want
