"""Check a Llama checkpoint against its config.json before any backend loads it: the one place for this.

`check_checkpoint(model_dir)` reads config.json and the weight files' headers only (safetensors:
the 8-byte length + JSON header of each shard; `pytorch_model*.bin`: the zip directory and the
pickled state dict's names and shapes, never the tensor data), and raises one `UserError` naming the
file and the first problem, plus how many more there are. The rules: config.json describes a Llama
the backends can build; every tensor that config implies is present with its exact shape, in a
floating-point dtype; nothing else is there; each shard holds all the bytes its header promises. The
files read are those transformers loads (`safetensors_files`: model.safetensors before an index, only the
index's shards), and the engine loads the same ones.
Benign differences pass: `*.rotary_emb.inv_freq` buffers (old Llama-2 exports) and an absent
`lm_head.weight` when `tie_word_embeddings` is set. `expected_shapes(config)` is the name -> shape
map a loader can reuse. This module imports no torch.
"""

from __future__ import annotations

import collections
import glob
import io
import json
import logging
import os
import pickle
import struct
import zipfile
from dataclasses import dataclass
from math import prod
from typing import Mapping, Optional

from mlperf_llama2.errors import UserError

log = logging.getLogger(__name__)

SAFETENSORS_SINGLE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
PYTORCH_INDEX = "pytorch_model.bin.index.json"
BENIGN_SUFFIXES = ("rotary_emb.inv_freq",)  # buffers transformers recomputes; old Llama-2 exports carry them
MAX_HEADER_BYTES = 100 * 1024 * 1024  # safetensors' own limit on the JSON header
DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1,
               "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}
FLOAT_DTYPES = ("F64", "F32", "F16", "BF16")
REQUIRED_INTS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")


@dataclass(frozen=True)
class TensorEntry:
    name: str
    shape: Optional[tuple[int, ...]]  # None: not readable without loading (some .bin files)
    dtype: str  # safetensors spelling (F16, BF16, F32, ...); torch storage type for .bin files
    file: str


@dataclass(frozen=True)
class LlamaDims:
    """The sizes of a Llama that config.json describes (transformers' defaults filled in)."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    tie_word_embeddings: bool
    attention_bias: bool
    mlp_bias: bool


@dataclass(frozen=True)
class CheckpointInfo:
    path: str
    config: Mapping  # config.json as read
    dims: LlamaDims
    tensors: tuple[TensorEntry, ...]
    expected: Mapping[str, tuple[int, ...]]  # every tensor the loader must find: name -> shape
    shapes_checked: bool  # False for a pytorch_model*.bin whose shapes cannot be read without loading


def check_checkpoint(model_dir: str) -> CheckpointInfo:
    """config.json + weight headers of `model_dir`, checked; one-line UserError on the first problem."""
    config_path = os.path.join(model_dir, "config.json")
    config = _read_json(config_path)
    dims = llama_dims(config, config_path)
    expected = expected_shapes(dims)
    tensors, shapes_checked = read_weight_headers(model_dir)
    problems = [] if tensors is None else compare(tensors, expected, dims)
    if not problems and tensors is not None and dims.tie_word_embeddings:
        problems = _tied_lm_head_problems(tensors)
    if problems:
        file, message = problems[0]
        more = f" (and {len(problems) - 1} more problem{'s' if len(problems) > 2 else ''})" if len(problems) > 1 else ""
        raise UserError(f"{file}: {message}{more}; the weights do not match config.json (an incomplete copy, "
                        "or files from different models?)")
    tensors = tuple(tensors or ())
    log.info("checkpoint %s: %d tensors match config.json (%d layers, hidden %d)%s", model_dir, len(tensors),
             dims.num_layers, dims.hidden_size, "" if shapes_checked else "; shapes not checked (.bin)")
    return CheckpointInfo(model_dir, config, dims, tensors, expected, shapes_checked)


def _read_json(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise UserError(f"{path}: not found (is this a Hugging Face checkpoint directory?)") from None
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read {path}: {exc} (a truncated or corrupt file? copy the checkpoint again)") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def llama_dims(config: Mapping, where: str = "config.json") -> LlamaDims:
    """The Llama config.json describes, or a UserError naming the first field that makes it unbuildable."""
    model_type = config.get("model_type")
    if model_type != "llama":
        raise UserError(f"{where}: model_type {model_type!r}; the backends build Llama models (model_type 'llama') "
                        "only")
    architectures = config.get("architectures") or ["LlamaForCausalLM"]
    if "LlamaForCausalLM" not in architectures:
        raise UserError(f"{where}: architectures {architectures}; expected LlamaForCausalLM (a causal LM head)")
    for key in REQUIRED_INTS:
        _positive_int(config, key, where)
    heads = config["num_attention_heads"]
    kv_heads = config.get("num_key_value_heads")
    kv_heads = heads if kv_heads is None else _positive_int(config, "num_key_value_heads", where)
    if heads % kv_heads:
        raise UserError(f"{where}: num_key_value_heads {kv_heads} does not divide num_attention_heads {heads}")
    hidden = config["hidden_size"]
    head_dim = config.get("head_dim")
    if head_dim is None:
        if hidden % heads:
            raise UserError(f"{where}: hidden_size {hidden} is not divisible by num_attention_heads {heads} "
                            "(and no head_dim is given)")
        head_dim = hidden // heads
    else:
        head_dim = _positive_int(config, "head_dim", where)
    if head_dim % 2:
        raise UserError(f"{where}: head_dim {head_dim} is odd; rotary embeddings need an even head size")
    act = config.get("hidden_act", "silu")
    if act != "silu":
        raise UserError(f"{where}: hidden_act {act!r}; Llama's MLP is SiLU-gated ('silu')")
    return LlamaDims(
        vocab_size=config["vocab_size"], hidden_size=hidden, intermediate_size=config["intermediate_size"],
        num_layers=config["num_hidden_layers"], num_heads=heads, num_kv_heads=kv_heads, head_dim=head_dim,
        tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
        attention_bias=bool(config.get("attention_bias", False)), mlp_bias=bool(config.get("mlp_bias", False)),
    )


def _positive_int(config: Mapping, key: str, where: str) -> int:
    value = config.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UserError(f"{where}: {key} must be a positive integer, got {value!r}")
    return value


def expected_shapes(dims: LlamaDims) -> dict[str, tuple[int, ...]]:
    """Every tensor name of a transformers LlamaForCausalLM state dict -> its shape (lm_head included)."""
    h, i, v = dims.hidden_size, dims.intermediate_size, dims.vocab_size
    q, kv = dims.num_heads * dims.head_dim, dims.num_kv_heads * dims.head_dim
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (v, h)}
    for layer in range(dims.num_layers):
        attn, mlp = f"model.layers.{layer}.self_attn.", f"model.layers.{layer}.mlp."
        for name, out_in in (("q_proj", (q, h)), ("k_proj", (kv, h)), ("v_proj", (kv, h)), ("o_proj", (h, q))):
            shapes[f"{attn}{name}.weight"] = out_in
            if dims.attention_bias:
                shapes[f"{attn}{name}.bias"] = out_in[:1]
        for name, out_in in (("gate_proj", (i, h)), ("up_proj", (i, h)), ("down_proj", (h, i))):
            shapes[f"{mlp}{name}.weight"] = out_in
            if dims.mlp_bias:
                shapes[f"{mlp}{name}.bias"] = out_in[:1]
        shapes[f"model.layers.{layer}.input_layernorm.weight"] = (h,)
        shapes[f"model.layers.{layer}.post_attention_layernorm.weight"] = (h,)
    shapes["model.norm.weight"] = (h,)
    shapes["lm_head.weight"] = (v, h)
    return shapes


def compare(tensors: list[TensorEntry], expected: Mapping[str, tuple[int, ...]],
            dims: LlamaDims) -> list[tuple[str, str]]:
    """(file, problem) for every difference between the tensors found and those expected, in a stable order."""
    problems: list[tuple[str, str]] = []
    seen: dict[str, TensorEntry] = {}
    for t in tensors:
        if t.name.endswith(BENIGN_SUFFIXES):
            continue
        if t.name in seen:
            problems.append((t.file, f"{t.name} is stored twice (also in {os.path.basename(seen[t.name].file)})"))
            continue
        seen[t.name] = t
        if t.name not in expected:
            problems.append((t.file, f"unexpected tensor {t.name}"))
        elif t.shape is not None and t.shape != expected[t.name]:
            problems.append((t.file, f"{t.name} has shape {list(t.shape)}, config.json implies "
                                     f"{list(expected[t.name])}"))
        elif t.dtype in DTYPE_BYTES and t.dtype not in FLOAT_DTYPES:
            problems.append((t.file, f"{t.name} has dtype {t.dtype}; the backends load F16, BF16 or F32 weights "
                                     "(a quantized export?)"))
    files = sorted({t.file for t in tensors})
    where = files[0] if len(files) == 1 else os.path.dirname(files[0]) if files else "checkpoint"
    for name in expected:
        if name not in seen and not (name == "lm_head.weight" and dims.tie_word_embeddings):
            problems.append((where, f"tensor {name} is missing"))
    return problems


def _tied_lm_head_problems(tensors: list[TensorEntry]) -> list[tuple[str, str]]:
    """config.json ties lm_head to the embedding, yet the weights carry an lm_head.weight: transformers then keeps
    the stored lm_head when its values differ, while the engine ties (uses the embedding), so the two backends
    would run different models. A stored copy equal to the embedding, byte for byte, is benign (safetensors;
    a .bin copy cannot be compared without loading it and is only logged)."""
    found = {t.name: t for t in tensors}
    head, embed = found.get("lm_head.weight"), found.get("model.embed_tokens.weight")
    if head is None or embed is None:
        return []
    if not (head.file.endswith(".safetensors") and embed.file.endswith(".safetensors")):
        log.warning("%s: tie_word_embeddings is set and lm_head.weight is stored too; not compared with the "
                    "embedding (.bin): the engine uses the embedding", head.file)
        return []
    if head.dtype == embed.dtype and _same_safetensors_data(head, embed):
        return []
    return [(head.file, "config.json sets tie_word_embeddings, but lm_head.weight is stored and differs from "
                        "model.embed_tokens.weight (transformers would keep it, the engine would use the embedding)")]


def _data_span(t: TensorEntry) -> tuple[int, int]:
    """(file offset, byte count) of one tensor's data in its safetensors file."""
    with open(t.file, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        start, end = json.loads(f.read(length))[t.name]["data_offsets"]
    return 8 + length + start, end - start


def _same_safetensors_data(a: TensorEntry, b: TensorEntry, chunk: int = 64 * 2**20) -> bool:
    """Whether two safetensors tensors hold the same bytes (read in chunks: a 70B embedding is 0.5 GB)."""
    (start_a, size_a), (start_b, size_b) = _data_span(a), _data_span(b)
    if size_a != size_b:
        return False
    with open(a.file, "rb") as fa, open(b.file, "rb") as fb:
        fa.seek(start_a)
        fb.seek(start_b)
        for done in range(0, size_a, chunk):
            n = min(chunk, size_a - done)
            if fa.read(n) != fb.read(n):
                return False
    return True


def read_weight_headers(model_dir: str) -> tuple[Optional[list[TensorEntry]], bool]:
    """Tensor names, shapes and dtypes of the weights transformers would load from `model_dir`.

    Returns (tensors, shapes_checked); the files are those transformers picks (the first of model.safetensors,
    its index, pytorch_model.bin, its index). A .bin whose pickle holds more than plain tensors gives its
    names from the index only (shape None), or no tensors at all without an index (then only config.json
    and the zip are checked)."""
    files = safetensors_files(model_dir)
    if files:
        if len(files) == 1 and os.path.basename(files[0]) == SAFETENSORS_SINGLE:
            return read_safetensors_header(files[0]), True
        return _indexed(model_dir, os.path.join(model_dir, SAFETENSORS_INDEX), read_safetensors_header), True
    index = os.path.join(model_dir, PYTORCH_INDEX)
    single = os.path.join(model_dir, "pytorch_model.bin")
    if os.path.isfile(single):  # transformers' order: pytorch_model.bin, then its index
        tensors = read_bin_header(single)
        if tensors is None:
            log.info("%s: its pickle holds more than plain tensors; config.json and the zip checked, tensor "
                     "names and shapes not (convert to safetensors for the full check)", single)
            return None, False
    elif os.path.isfile(index):
        tensors = _indexed(model_dir, index, read_bin_header)
    else:
        raise UserError(f"{model_dir}: no model.safetensors, {SAFETENSORS_INDEX}, pytorch_model.bin or "
                        f"{PYTORCH_INDEX}")
    shapes_checked = all(t.shape is not None for t in tensors)
    if not shapes_checked:
        log.info("%s: pytorch_model*.bin shapes cannot be read without loading; names and file integrity "
                 "checked (convert to safetensors for the full check)", model_dir)
    return tensors, shapes_checked


def safetensors_files(model_dir: str) -> list[str]:
    """The safetensors files transformers' `from_pretrained` loads, in its order of preference: model.safetensors,
    else the shards model.safetensors.index.json names (each checked to exist); [] when there is neither. The
    engine loads exactly these files, so a stale shard left beside them (another copy's) is read by nobody."""
    single = os.path.join(model_dir, SAFETENSORS_SINGLE)
    index = os.path.join(model_dir, SAFETENSORS_INDEX)
    if os.path.isfile(single):
        if os.path.isfile(index):
            log.warning("%s: both %s and %s; loading %s (as transformers does), the index and its shards are "
                        "ignored", model_dir, SAFETENSORS_SINGLE, SAFETENSORS_INDEX, SAFETENSORS_SINGLE)
        return [single]
    if os.path.isfile(index):
        weight_map = _read_json(index).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise UserError(f"{index}: no weight_map (a truncated or corrupt index? copy it again)")
        shards = [os.path.join(model_dir, shard) for shard in sorted(set(map(str, weight_map.values())))]
        for path in shards:
            if not os.path.isfile(path):
                raise UserError(f"{path}: shard listed in {SAFETENSORS_INDEX} is missing")
        return shards
    found = sorted(glob.glob(os.path.join(model_dir, "*.safetensors")))
    if len(found) > 1:
        raise UserError(f"{model_dir}: {len(found)} *.safetensors files but no {SAFETENSORS_INDEX}; "
                        "copy the index that came with the shards")
    if found:
        raise UserError(f"{found[0]}: transformers loads a single safetensors file only as {SAFETENSORS_SINGLE} "
                        f"(or shards through {SAFETENSORS_INDEX}); rename it {SAFETENSORS_SINGLE}")
    return []


def _indexed(model_dir: str, index_path: str, read_header) -> list[TensorEntry]:
    weight_map = _read_json(index_path).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise UserError(f"{index_path}: no weight_map (a truncated or corrupt index? copy it again)")
    tensors: list[TensorEntry] = []
    for shard in sorted(set(map(str, weight_map.values()))):
        path = os.path.join(model_dir, shard)
        if not os.path.isfile(path):
            raise UserError(f"{path}: shard listed in {os.path.basename(index_path)} is missing")
        listed = [name for name, owner in weight_map.items() if owner == shard]
        found = read_header(path)
        if found is None:  # a .bin whose shapes we cannot read: the index's names stand for it
            tensors.extend(TensorEntry(name, None, "?", path) for name in listed)
            continue
        names = {t.name for t in found}
        for name in listed:
            if name not in names:
                raise UserError(f"{path}: {os.path.basename(index_path)} places {name} here but the shard "
                                "does not hold it (index and shards come from different copies)")
        tensors.extend(found)
    return tensors


def read_safetensors_header(path: str) -> list[TensorEntry]:
    """The tensors a .safetensors file declares, after checking that the file holds all their bytes."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise UserError(f"{path}: {size} bytes, too short for a safetensors file (truncated?)")
            (length,) = struct.unpack("<Q", head)
            if length > MAX_HEADER_BYTES or 8 + length > size:
                raise UserError(f"{path}: header of {length} bytes does not fit the file's {size} bytes "
                                "(truncated or not a safetensors file)")
            header = json.loads(f.read(length))
    except OSError as exc:
        raise UserError(f"{path}: cannot read ({exc.strerror}); copy the checkpoint again") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: unreadable safetensors header ({exc}); copy the checkpoint again") from None
    if not isinstance(header, dict):
        raise UserError(f"{path}: unreadable safetensors header (not a JSON object); copy the checkpoint again")
    tensors, data_end = [], 0
    for name, spec in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (start, end) = spec["dtype"], tuple(int(d) for d in spec["shape"]), spec["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise UserError(f"{path}: tensor {name} has a malformed header entry; copy the checkpoint again") from None
        if dtype in DTYPE_BYTES and end - start != prod(shape) * DTYPE_BYTES[dtype]:
            raise UserError(f"{path}: tensor {name} claims {end - start} bytes for shape {list(shape)} {dtype}")
        data_end = max(data_end, end)
        tensors.append(TensorEntry(name, shape, dtype, path))
    if 8 + length + data_end > size:
        raise UserError(f"{path}: truncated: the header promises {8 + length + data_end} bytes, the file has "
                        f"{size}; copy the checkpoint again")
    return tensors


class _ShapeOnlyUnpickler(pickle.Unpickler):
    """Reads a torch zip checkpoint's data.pkl without torch: each tensor becomes (shape, storage type)."""

    def find_class(self, module: str, name: str):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
            return lambda storage, offset, size, *rest: (tuple(size), storage)
        if module == "torch._utils" and name == "_rebuild_parameter":
            return lambda data, *rest: data
        if module == "torch" and name.endswith("Storage"):
            return name
        raise pickle.UnpicklingError(f"{module}.{name} is not part of a plain state dict")

    def persistent_load(self, pid):
        return pid[1] if isinstance(pid, tuple) and len(pid) > 1 else "?"  # ('storage', type, key, device, numel)


def read_bin_header(path: str) -> Optional[list[TensorEntry]]:
    """Names, shapes and storage types of a pytorch_model*.bin without loading its tensors.

    The zip's directory (at the end of the file) must be readable, which catches truncation; None
    when the pickle holds objects other than plain tensors (then only the index can name them)."""
    try:
        with zipfile.ZipFile(path) as archive:
            pickles = [n for n in archive.namelist() if n == "data.pkl" or n.endswith("/data.pkl")]
            if not pickles:
                raise UserError(f"{path}: no data.pkl inside; not a torch checkpoint")
            raw = archive.read(pickles[0])
    except zipfile.BadZipFile as exc:
        raise UserError(f"{path}: not a readable torch zip checkpoint ({exc}; truncated?); copy the checkpoint "
                        "again") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read ({exc.strerror}); copy the checkpoint again") from None
    try:
        state = _ShapeOnlyUnpickler(io.BytesIO(raw)).load()
    except Exception:  # noqa: BLE001 - any object we do not rebuild: names from the index only
        return None
    if not isinstance(state, dict):
        raise UserError(f"{path}: holds a {type(state).__name__}, not a state dict")
    return [TensorEntry(str(name), *(value if isinstance(value, tuple) else (None, "?")), path)
            for name, value in state.items()]


def check_load_report(model_dir: str, report: Mapping, tied_lm_head: bool = False) -> None:
    """transformers' `output_loading_info` report as an error: any MISSING, UNEXPECTED or mismatched tensor.

    The benign differences pass here too (inv_freq buffers; a tied lm_head)."""
    missing = sorted(k for k in report.get("missing_keys") or ()
                     if not (tied_lm_head and k == "lm_head.weight"))
    unexpected = sorted(k for k in report.get("unexpected_keys") or () if not k.endswith(BENIGN_SUFFIXES))
    mismatched = sorted(str(m[0] if isinstance(m, (tuple, list)) else m) for m in report.get("mismatched_keys") or ())
    errors = [str(e).splitlines()[0] for e in report.get("error_msgs") or () if str(e).strip()]
    problems = ([f"MISSING {k}" for k in missing] + [f"UNEXPECTED {k}" for k in unexpected]
                + [f"mismatched {k}" for k in mismatched] + errors)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise UserError(f"{model_dir}: transformers' load report: {problems[0]}{more}; the weights do not match "
                        "config.json, so the model would run on partly random weights")
