"""The reference backend generates exactly what a per-sample greedy `generate` does, in any batching."""

from __future__ import annotations

import threading

import pytest
import torch

from loadgen_fixtures import PROMPT_TEXTS, direct_generate
from mlperf_llama2.backends.base import GenerationRequest
from mlperf_llama2.backends.hf_loading import load_causal_lm, read_model_info
from mlperf_llama2.backends.reference import ReferenceBackend, left_pad
from mlperf_llama2.postprocess import cut_after_first_eos

pytestmark = pytest.mark.tf_compat  # the LiteML wheel's transformers 4.46 too (make test-compat)

MAX_NEW = 8


class RecordingSink:
    def __init__(self):
        self.events: list[tuple] = []
        self.done = threading.Event()
        self.expected = 0

    def first_token(self, request_id, token):
        self.events.append(("first", request_id, token))

    def complete(self, request_id, tokens):
        self.events.append(("complete", request_id, list(tokens)))
        self._maybe_done()

    def fail(self, request_id, error):
        self.events.append(("fail", request_id, str(error)))
        self._maybe_done()

    def _maybe_done(self):
        if sum(e[0] != "first" for e in self.events) == self.expected:
            self.done.set()

    def results(self, kind):
        return {e[1]: e[2] for e in self.events if e[0] == kind}


@pytest.fixture(scope="module")
def prompts(tiny_tokenizer_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    return [tuple(tok(t)["input_ids"]) for t in PROMPT_TEXTS]


def _run(model_dir, prompts, *, batch_size, num_workers=1, stream=False):
    model = load_causal_lm(str(model_dir), "float32", "cpu")
    backend = ReferenceBackend(model, eos_token_id=2, batch_size=batch_size, num_workers=num_workers,
                               stream_first_token=stream)
    sink = RecordingSink()
    sink.expected = len(prompts)
    backend.start(sink)
    backend.submit([GenerationRequest(100 + i, i, p, MAX_NEW) for i, p in enumerate(prompts)])
    assert sink.done.wait(120)
    backend.stop()
    return sink


def test_left_pad_pads_on_the_left_with_mask_zero():
    ids, mask = left_pad([(1, 5, 6), (1, 7)], pad_id=2)
    assert ids.tolist() == [[1, 5, 6], [2, 1, 7]]
    assert mask.tolist() == [[1, 1, 1], [0, 1, 1]]


@pytest.mark.parametrize("model_fixture", ["tiny_model_dir", "eos_model_dir"])
def test_batches_of_1_and_4_and_streaming_equal_direct_generate(request, model_fixture, prompts):
    model_dir = request.getfixturevalue(model_fixture)
    direct = direct_generate(model_dir, prompts, MAX_NEW)
    for batch_size, workers, stream in ((1, 1, False), (4, 2, False), (1, 1, True)):
        sink = _run(model_dir, prompts, batch_size=batch_size, num_workers=workers, stream=stream)
        got = {rid - 100: cut_after_first_eos(t, 2) for rid, t in sink.results("complete").items()}
        assert got == dict(enumerate(direct)), (batch_size, workers, stream)
        if stream:
            firsts = sink.results("first")
            assert {rid - 100: tok for rid, tok in firsts.items()} == {i: d[0] for i, d in enumerate(direct)}
            for rid in firsts:  # the first token is reported before the completion
                kinds = [e[0] for e in sink.events if e[1] == rid]
                assert kinds == ["first", "complete"]
        else:
            assert not sink.results("first")


def test_eos_model_stops_at_eos_but_never_on_the_first_token(eos_model_dir, prompts):
    sink = _run(eos_model_dir, prompts, batch_size=4)
    raw = sink.results("complete")
    assert all(2 in t for t in raw.values())  # generation stopped at EOS (the EOS is returned)
    assert all(t[0] != 2 for t in raw.values())  # min_new_tokens=1: the first token is never EOS


def test_a_failing_batch_fails_each_of_its_requests(tiny_model_dir, prompts):
    model = load_causal_lm(str(tiny_model_dir), "float32", "cpu")
    backend = ReferenceBackend(model, eos_token_id=2, batch_size=4)

    def broken(batch):
        raise RuntimeError("out of memory")

    backend.generate = broken
    sink = RecordingSink()
    sink.expected = len(prompts)
    backend.start(sink)
    backend.submit([GenerationRequest(i, i, p, MAX_NEW) for i, p in enumerate(prompts)])
    assert sink.done.wait(30)
    backend.stop()
    assert sorted(sink.results("fail")) == list(range(len(prompts)))


def test_model_info_reads_vocab_and_eos(tiny_model_dir):
    info = read_model_info(str(tiny_model_dir))
    assert (info.vocab_size, info.eos_token_id) == (512, 2)


@pytest.mark.gpu
def test_fp16_on_cuda_matches_fp32_greedy_on_cpu(tiny_model_dir, prompts):
    expected = direct_generate(tiny_model_dir, prompts, MAX_NEW)
    model = load_causal_lm(str(tiny_model_dir), "float16", "cuda:0")
    assert next(model.parameters()).dtype == torch.float16 and next(model.parameters()).is_cuda
    backend = ReferenceBackend(model, eos_token_id=2, batch_size=4)
    got = [cut_after_first_eos(t, 2) for t in backend.generate(
        [GenerationRequest(i, i, p, MAX_NEW) for i, p in enumerate(prompts)])]
    assert got == expected


@pytest.mark.gpu
def test_cuda_device_names_resolve():
    from mlperf_llama2.config import resolve_device
    from mlperf_llama2.errors import UserError

    assert resolve_device("cuda") == "cuda"  # all visible GPUs (device_map="auto")
    assert resolve_device("cuda:0") == "cuda:0"
    assert resolve_device(None) == "cuda:0"
    with pytest.raises(UserError, match="GPU"):
        resolve_device(f"cuda:{torch.cuda.device_count()}")
    with pytest.raises(UserError, match="cuda:N"):
        resolve_device("cuda:x")


def test_checkpoint_sampling_defaults_do_not_leak_into_greedy(tmp_path, tiny_model_dir, prompts):
    import json
    import shutil

    chat = tmp_path / "chat"
    shutil.copytree(tiny_model_dir, chat)
    # Llama-2-chat's generation_config.json samples by default.
    (chat / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0, "do_sample": True, "temperature": 0.6,
         "top_p": 0.9, "max_length": 4096}))
    model = load_causal_lm(str(chat), "float32", "cpu")
    backend = ReferenceBackend(model, eos_token_id=2, batch_size=4)
    got = [cut_after_first_eos(t, 2) for t in backend.generate(
        [GenerationRequest(i, i, p, MAX_NEW) for i, p in enumerate(prompts)])]
    assert got == direct_generate(tiny_model_dir, prompts, MAX_NEW)
