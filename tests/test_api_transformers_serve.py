"""--api-text-mode against a real OpenAI-compatible server: `transformers serve` of the tiny model.

That server takes text prompts only, so this is the text path: prompt decoded, output text
re-tokenized without BOS, EOS appended once when the server stopped on it. The expected outputs
are computed here with direct greedy `generate` on what the server receives.
"""

from __future__ import annotations

import pytest
import torch

from mlperf_llama2.backends.api import ApiBackend, prompt_text
from mlperf_llama2.backends.base import GenerationRequest
from mlperf_llama2.config import ApiConfig
from serve_process import TransformersServe, serve_available
from test_api_backend import Sink

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not serve_available(), reason="transformers serve needs fastapi, uvicorn, openai")]

EOS = 2
MAX_NEW = 10
BYTE_IDS = slice(3, 259)  # <0x00>..<0xFF> of the tiny tokenizer
TEXTS = ["The quick brown fox jumps", "What is the capital of France?", "Step 1: read the task.",
         "Translate the sentence into French"]


@pytest.fixture(scope="module")
def text_model_dir(tiny_model_dir, tmp_path_factory):
    """The tiny model with its byte-fallback rows of lm_head zeroed: greedy output is valid UTF-8.

    A random model emits lone byte pieces; `transformers serve`'s streaming decoder then aborts the
    stream ("Invalid prefix encountered while decoding stream"), which a real Llama never triggers.
    """
    import shutil

    from transformers import AutoModelForCausalLM

    out = tmp_path_factory.mktemp("text_model")
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    with torch.no_grad():
        model.lm_head.weight[BYTE_IDS] = 0.0  # logit 0, below the best of ~250 random learned pieces
    model.save_pretrained(out)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_model_dir / name, out / name)
    return out


@pytest.fixture(scope="module")
def served(text_model_dir, tmp_path_factory):
    with TransformersServe(text_model_dir, tmp_path_factory.mktemp("serve") / "serve.log") as server:
        yield server


@pytest.fixture(scope="module")
def tokenizer(text_model_dir):
    from mlperf_llama2.tokenization import load_tokenizer

    return load_tokenizer(str(text_model_dir))


@pytest.fixture(scope="module")
def text_model(text_model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(text_model_dir, dtype=torch.float32).eval()


def text_mode_outputs(model, tokenizer, prompts, max_new: int) -> list[list[int]]:
    """What text mode must return: greedy text of what the server receives, re-tokenized without BOS,
    EOS once if it stopped."""
    out = []
    for prompt in prompts:
        server_input = tokenizer.hf(prompt_text(tokenizer, prompt), return_tensors="pt")  # as the server does
        n_in = server_input["input_ids"].shape[1]
        with torch.no_grad():
            ids = model.generate(**server_input, max_new_tokens=max_new, do_sample=False)[0, n_in:].tolist()
        text = tokenizer.decode(ids, skip_special_tokens=True)
        out.append(tokenizer.encode(text, add_special_tokens=False) + ([EOS] if EOS in ids else []))
    return out


@pytest.fixture(scope="module")
def expected(text_model, tokenizer):
    return text_mode_outputs(text_model, tokenizer, [tokenizer.encode(t) for t in TEXTS], MAX_NEW)


def backend_for(served, tokenizer, streaming: bool) -> ApiBackend:
    config = ApiConfig(api_servers=(served.url,), api_model_name=served.model, api_text_mode=True,
                       api_concurrency=2, api_timeout_s=60.0)
    backend = ApiBackend(config, eos_token_id=EOS, streaming=streaming, tokenizer=tokenizer)
    backend.check_servers()
    return backend


def run_texts(backend, tokenizer) -> Sink:
    reqs = [GenerationRequest(request_id=i, sample_index=i, prompt=tokenizer.encode(t), max_new_tokens=MAX_NEW)
            for i, t in enumerate(TEXTS)]
    sink = Sink()
    backend.start(sink)
    try:
        backend.submit(reqs)
        sink.wait(len(reqs), timeout=120)
    finally:
        backend.stop()
    return sink


def test_text_mode_offline_matches_greedy_generate(served, tokenizer, expected):
    sink = run_texts(backend_for(served, tokenizer, streaming=False), tokenizer)
    assert [sink.done[i] for i in range(len(TEXTS))] == [("complete", e) for e in expected]


def test_text_mode_server_streams_first_token_of_the_final_response(served, tokenizer, expected):
    sink = run_texts(backend_for(served, tokenizer, streaming=True), tokenizer)
    assert [sink.done[i] for i in range(len(TEXTS))] == [("complete", e) for e in expected]
    for i in range(len(TEXTS)):
        mine = [e for e in sink.events if e[1] == i]
        assert [e[0] for e in mine] == ["first", "complete"] and mine[0][2] == mine[1][2][0]


def test_wrong_model_name_against_transformers_serve(served, tokenizer):
    config = ApiConfig(api_servers=(served.url,), api_model_name="meta-llama/Llama-2-70b-chat-hf")
    from mlperf_llama2.errors import UserError

    with pytest.raises(UserError, match="is not served by"):
        ApiBackend(config, eos_token_id=EOS, tokenizer=tokenizer).check_servers()


@pytest.mark.parametrize("scenario", ["Offline", "Server"])
def test_main_text_mode_accuracy_run(served, text_model_dir, text_model, tokenizer, tmp_path, scenario):
    import pandas as pd

    import loadgen_fixtures as fixtures

    data = fixtures.write_dataset(tmp_path / "data.pkl", text_model_dir)
    (tmp_path / "user.conf").write_text(fixtures.SMALL_USER_CONF)
    result = fixtures.run_main(["--vllm", "--api-text-mode", "--api-server", served.url, "--api-model-name",
                                served.model, "--model-path", text_model_dir, "--dataset-path", data, "--user-conf",
                                tmp_path / "user.conf", "--max-new-tokens", MAX_NEW, "--scenario", scenario,
                                "--accuracy", "--output-log-dir", tmp_path / "logs"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr.count("--api-text-mode: prompts are sent as decoded text") == 1  # the fidelity warning
    logged = {e["qsl_idx"]: fixtures.tokens(e["data"]).tolist() for e in fixtures.read_accuracy_log(tmp_path / "logs")}
    prompts = pd.read_pickle(data)["tok_input"].tolist()
    assert logged == dict(enumerate(text_mode_outputs(text_model, tokenizer, prompts, MAX_NEW)))


def test_token_id_mode_against_a_text_only_server_is_one_user_error(served, tokenizer):
    from mlperf_llama2.errors import UserError

    config = ApiConfig(api_servers=(served.url,), api_model_name=served.model)
    with pytest.raises(UserError, match="cannot serve token-id mode: .*HTTP 4.*--api-text-mode"):
        ApiBackend(config, eos_token_id=EOS).check_servers()
