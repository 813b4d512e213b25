"""Load a LiteML-style quantization YAML into checked, frozen rules the open backend can apply.

Accepts real LiteML files: YAML 1.1 `On`/`Off` booleans, `!!python/tuple` sequences (read by a safe
loader that knows tuples and nothing else of Python), and `dim:` as a spelling of `dims:`. Every rule
is checked when the file is read: an unknown source module, destination, parameter, key, or a bit
format we cannot simulate (TrueQuant*, PWLA*, compFlow*, float formats such as fp8) is one
`UserError` that names the rule, and so is an empty `custom_quantization`. Unmatched slots stay in
float; nothing is ignored silently (`quant.setup.check_rules_for_model` refuses a rule that reaches
no module of the model, or whose dims lie outside a tensor's rank).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Optional

import yaml

from mlperf_llama2.errors import UserError

logger = logging.getLogger(__name__)

# source_module spellings -> canonical slot kind
SOURCE_MODULES = {
    "torch.nn.Linear": "Linear", "nn.Linear": "Linear", "Linear": "Linear",
    "LiteMLMatmul": "Matmul", "LiteMLMul": "Mul", "LiteMLAdd": "Add",
    "torch.nn.SiLU": "SiLU", "nn.SiLU": "SiLU", "SiLU": "SiLU",
    "LlamaRMSNorm": "RMSNorm",
}

# destination_module -> (source kinds it accepts, quantizer roles it accepts, roles it requires)
DESTINATIONS = {
    "LinearQuant": ({"Linear"}, {"act_quantizer", "weights_quantizer", "quantizer_out"}, set()),
    "QuantMatmul": ({"Matmul"}, {"quantizer_in1", "quantizer_in2"}, set()),
    "QuantMatmulOutputQuant": ({"Matmul"}, {"quantizer_in1", "quantizer_in2", "quantizer_out"}, {"quantizer_out"}),
    "QuantMul": ({"Mul"}, {"quantizer_in1", "quantizer_in2", "quantizer_out"}, set()),
    "QuantAdd": ({"Add"}, {"quantizer_in1", "quantizer_in2", "quantizer_out"}, set()),
    "QuantAddCommonScalePerToken": ({"Add"}, {"quantizer", "quantizer_out"}, {"quantizer"}),
    "QuantAddSoftmaxMask": ({"Add"}, {"quantizer_in1", "quantizer", "quantizer_out"}, set()),
    "SingleInputQuantActivation": ({"SiLU"}, {"quantizer", "act_quantizer", "quantizer_out"}, set()),
    "QuantRMSNorm": ({"RMSNorm"}, {"act_quantizer", "weights_quantizer", "quantizer_out"}, set()),
}

UNSUPPORTED_PREFIXES = ("TrueQuant", "PWLA", "compFlow", "fp8", "fp16", "bf16", "float", "e4m3", "e5m2")

QUANTIZER_KEYS = {
    "bits", "act_bits", "weight_bits", "symmetric", "act_symmetric", "weight_symmetric",
    "dynamic", "act_dynamic", "per_channel", "act_per_channel", "weight_per_channel",
    "observer", "dims", "dim", "status",
}
OBSERVERS = ("MinMax", "MovingAverage")
TOP_KEYS = {"QAT", "SmoothQuant"}
QAT_KEYS = {"fully_quantized", "device", "data_quantization", "weights_quantization", "custom_quantization"}
DATA_KEYS = {"status", "bits", "custom_bits", "symmetric", "per_channel", "quantization_mode", "observer"}
WEIGHT_KEYS = {"status", "bits", "custom_bits", "symmetric", "per_channel", "quant_and_freeze"}
RULE_KEYS = {"source_module", "source_name", "destination_module", "params"}
# roles a destination reads as one quantizer (destinations.py takes the first it finds)
ALIASED_ROLES = {"QuantAddSoftmaxMask": {"quantizer_in1", "quantizer"},
                 "SingleInputQuantActivation": {"quantizer", "act_quantizer"}}
# a quantizer's settings and their unprefixed synonyms; a weights_quantizer reads the weight_ spellings, every
# other role the act_ ones
SYNONYMS = ("bits", "symmetric", "per_channel", "dynamic")


@dataclass(frozen=True)
class QuantizerSpec:
    """One quantizer: `dims` are the axes a scale is reduced over; () = one scale for the whole tensor."""

    bits: int
    symmetric: bool
    dynamic: bool  # True: scale from each tensor (MinMax); False: static scale from calibration
    dims: tuple[int, ...]
    observer: str  # MinMax | MovingAverage

    def describe(self) -> str:
        kind = "dynamic" if self.dynamic else f"static/{self.observer}"
        return f"int{self.bits} {'sym' if self.symmetric else 'asym'} {kind} dims={list(self.dims) or 'all'}"


@dataclass(frozen=True)
class Rule:
    index: int  # position in custom_quantization (0-based), for messages
    source_kind: str  # Linear | Matmul | Mul | Add | SiLU | RMSNorm
    source_module: str  # as written
    source_name: Optional[str]
    destination: str
    quantizers: tuple[tuple[str, QuantizerSpec], ...]  # (role, spec) in file order

    @property
    def label(self) -> str:
        name = f", source_name={self.source_name}" if self.source_name else ""
        return f"custom_quantization rule {self.index} ({self.source_module}{name} -> {self.destination})"

    def quantizer(self, role: str) -> Optional[QuantizerSpec]:
        return dict(self.quantizers).get(role)

    def matches(self, kind: str, qualified_name: str) -> bool:
        if kind != self.source_kind:
            return False
        if self.source_name is None:
            return True
        return qualified_name == self.source_name or qualified_name.split(".")[-1] == self.source_name \
            or qualified_name.endswith("." + self.source_name)


@dataclass(frozen=True)
class QuantRules:
    path: str
    rules: tuple[Rule, ...]
    quantization_mode: str  # global data_quantization mode: static | dynamic
    fully_quantized: bool

    def match(self, kind: str, qualified_name: str) -> Optional[Rule]:
        """First rule that matches wins (specific source_name rules come before generic ones)."""
        for rule in self.rules:
            if rule.matches(kind, qualified_name):
                return rule
        return None

    @property
    def needs_calibration(self) -> bool:
        return any(not spec.dynamic for rule in self.rules for _, spec in rule.quantizers)


class _TupleSafeLoader(yaml.SafeLoader):
    """SafeLoader (YAML 1.1 booleans) that also builds `!!python/tuple` - and no other Python object."""


_TupleSafeLoader.add_constructor(
    "tag:yaml.org,2002:python/tuple", lambda loader, node: tuple(loader.construct_sequence(node))
)


def read_yaml(path: str) -> dict:
    """Parse a LiteML YAML file (no validation); UserError if unreadable."""
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.load(f, Loader=_TupleSafeLoader)  # noqa: S506 - safe loader + tuples only
    except OSError as exc:
        raise UserError(f"--liteml-config {path}: cannot read: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise UserError(f"--liteml-config {path}: not valid YAML: {str(exc).splitlines()[0]}") from exc
    if not isinstance(data, dict) or "QAT" not in data:
        raise UserError(f"--liteml-config {path}: expected a mapping with a top-level 'QAT' section")
    return data


def load_rules(path: str) -> QuantRules:
    """Read and fully validate a config for the open backend."""
    data = read_yaml(path)
    where = f"--liteml-config {path}"
    _check_keys(data, TOP_KEYS, where, "top level")
    if data.get("SmoothQuant"):
        raise UserError(f"{where}: SmoothQuant is not supported by the open backend; remove the section "
                        "or run with --quant-backend liteml")
    qat = data["QAT"]
    if not isinstance(qat, dict):
        raise UserError(f"{where}: QAT must be a mapping")
    _check_keys(qat, QAT_KEYS, where, "QAT")
    data_q = qat.get("data_quantization") or {}
    weight_q = qat.get("weights_quantization") or {}
    _check_keys(data_q, DATA_KEYS, where, "QAT.data_quantization")
    _check_keys(weight_q, WEIGHT_KEYS, where, "QAT.weights_quantization")
    for section, block in (("data_quantization", data_q), ("weights_quantization", weight_q)):
        if block.get("custom_bits"):
            raise UserError(f"{where}: QAT.{section}.custom_bits is not supported by the open backend; "
                            "set per-op bits in custom_quantization instead")
        # the open backend applies every rule's quantizers and freezes weights at load: a global switch that says
        # otherwise would be ignored, and the run would be quantized while the file says it is not
        for key in ("status", "quant_and_freeze"):
            if block.get(key, True) is not True:
                raise UserError(f"{where}: QAT.{section}.{key}: {block[key]!r} is not honoured by the open backend "
                                "(it applies every rule's quantizers, weights frozen at load); turn quantizers off "
                                "per rule (status: Off in a rule's params) or use --quant-backend liteml")
    if qat.get("fully_quantized", True) is not True:
        # the open backend quantizes exactly the modules a rule names whatever this says; a file saying Off would
        # get the same numerics as one saying On, labelled with a setting nobody applied
        raise UserError(f"{where}: QAT.fully_quantized: {qat['fully_quantized']!r} is not honoured by the open "
                        "backend (it quantizes exactly the modules custom_quantization names, whatever this "
                        "switch says); set it On and name the modules to quantize in the rules, or use "
                        "--quant-backend liteml")
    mode = data_q.get("quantization_mode", "static")
    if mode not in ("static", "dynamic"):
        raise UserError(f"{where}: QAT.data_quantization.quantization_mode must be static or dynamic, got {mode!r}")
    observer = data_q.get("observer", "MovingAverage" if mode == "static" else "MinMax")
    if observer not in OBSERVERS:
        raise UserError(f"{where}: QAT.data_quantization.observer {observer!r} unsupported; use one of {OBSERVERS}")
    for section, block in (("data_quantization", data_q), ("weights_quantization", weight_q)):
        for key in ("symmetric", "per_channel"):
            if not isinstance(block.get(key, False), bool):  # bool("Off") would be True
                raise UserError(f"{where}: QAT.{section}.{key} must be On or Off, got {block[key]!r}")
    defaults = {
        "act_bits": _bits(data_q.get("bits", 8), where, "QAT.data_quantization.bits"),
        "act_symmetric": bool(data_q.get("symmetric", True)),
        "act_per_channel": bool(data_q.get("per_channel", False)),
        "dynamic": mode == "dynamic",
        "observer": observer,
        "weight_bits": _bits(weight_q.get("bits", 8), where, "QAT.weights_quantization.bits"),
        "weight_symmetric": bool(weight_q.get("symmetric", True)),
        "weight_per_channel": bool(weight_q.get("per_channel", False)),
    }
    raw_rules = qat.get("custom_quantization")
    if raw_rules is not None and not isinstance(raw_rules, list):
        raise UserError(f"{where}: QAT.custom_quantization must be a list of rules")
    if not raw_rules:  # the open backend quantizes only what a rule names: no rules would be a float run
        raise UserError(f"{where}: QAT.custom_quantization is empty, so nothing would be quantized; add the "
                        "rules (see liteml_configs/) or drop --liteml-config for a float run")
    rules = tuple(_parse_rule(i, raw, defaults, where) for i, raw in enumerate(raw_rules))
    for rule in rules:
        _check_static_dims(rule, where)
    return QuantRules(path=path, rules=rules, quantization_mode=mode, fully_quantized=bool(qat.get("fully_quantized")))


def _check_static_dims(rule: Rule, where: str) -> None:
    """A static quantizer keeps one calibrated range: its dims must reduce every sequence axis of the tensors it
    sees (positions, queries, keys), or the range would have the calibration prompt's length (a run of another
    length fails; one-token prompts give every position the first one's range). Checked on the slots of one layer."""
    import re

    from mlperf_llama2.quant.llama_slots import input_rank, sequence_axes, slot_names

    static = [(role, spec) for role, spec in rule.quantizers if not spec.dynamic]
    if not static:
        return
    name = rule.source_name and re.sub(r"(^|\.)layers\.\d+\.", r"\1layers.0.", rule.source_name)
    probe = Rule(rule.index, rule.source_kind, rule.source_module, name, rule.destination, rule.quantizers)
    for kind, slot in slot_names(1):
        if not probe.matches(kind, slot):
            continue
        for role, spec in static:
            rank = input_rank(kind, slot, role)
            if not all(-rank <= d < rank for d in spec.dims):
                continue  # quant.setup.check_rules_for_model names the axis outside the tensor
            reduced = {d % rank for d in spec.dims} if spec.dims else set(range(rank))
            kept = [a for a in sequence_axes(kind, slot, role) if a not in reduced]
            if kept:
                raise UserError(f"{where}: {rule.label}: {role} is static with dims {list(spec.dims)}, which keep "
                                f"sequence axis {kept[0]} of the rank-{rank} tensor at {slot}: a calibrated scale "
                                "cannot follow the sequence length; reduce that axis too, or make it dynamic "
                                "(act_dynamic: On)")


def _check_keys(block: Any, allowed: set, where: str, what: str) -> None:
    if not isinstance(block, dict):
        raise UserError(f"{where}: {what} must be a mapping")
    unknown = sorted(set(block) - allowed)
    if unknown:
        raise UserError(f"{where}: {what}: unknown key(s) {unknown}; known: {sorted(allowed)}")


def _unsupported_format(value: Any) -> bool:
    return isinstance(value, str) and value.lower().startswith(tuple(p.lower() for p in UNSUPPORTED_PREFIXES))


def _bits(value: Any, where: str, what: str) -> int:
    if isinstance(value, str) and value.lower().startswith("int") and value[3:].isdigit():
        value = int(value[3:])
    if _unsupported_format(value):
        raise UserError(f"{where}: {what}: bit format {value!r} cannot be simulated by the open backend "
                        "(only integer formats); use --quant-backend liteml")
    if isinstance(value, bool) or not isinstance(value, int) or not 2 <= value <= 16:
        raise UserError(f"{where}: {what}: bits must be an integer 2..16 or 'intN', got {value!r}")
    return value


def _parse_rule(index: int, raw: Any, defaults: dict, where: str) -> Rule:
    head = f"{where}: custom_quantization rule {index}"
    if not isinstance(raw, dict):
        raise UserError(f"{head}: must be a mapping with source_module, destination_module, params")
    unknown = sorted(set(raw) - RULE_KEYS)
    if unknown:
        raise UserError(f"{head}: unknown key(s) {unknown}; known: {sorted(RULE_KEYS)}")
    source, dest = raw.get("source_module"), raw.get("destination_module")
    name = raw.get("source_name")
    head = f"{head} ({source}{f', source_name={name}' if name else ''} -> {dest})"
    if name is not None and (not isinstance(name, str) or not name):
        raise UserError(f"{head}: source_name must be one module name (a string such as q_proj or "
                        f"model.layers.0.mlp.mul), got {name!r}; write one rule per name")
    if source not in SOURCE_MODULES:
        raise UserError(f"{head}: unknown source_module {source!r}; supported: {sorted(set(SOURCE_MODULES))}")
    if _unsupported_format(dest):
        raise UserError(f"{head}: destination {dest!r} cannot be simulated by the open backend; "
                        "use --quant-backend liteml")
    if dest not in DESTINATIONS:
        raise UserError(f"{head}: unknown destination_module {dest!r}; supported: {sorted(DESTINATIONS)}")
    kinds, roles, required = DESTINATIONS[dest]
    kind = SOURCE_MODULES[source]
    if kind not in kinds:
        raise UserError(f"{head}: {dest} cannot replace {source}")
    params = raw.get("params") or {}
    if not isinstance(params, dict):
        raise UserError(f"{head}: params must be a mapping")
    bad = sorted(set(params) - roles)
    if bad:
        raise UserError(f"{head}: unknown parameter(s) {bad} for {dest}; accepted: {sorted(roles)}")
    missing = sorted(required - set(params))
    if missing:
        raise UserError(f"{head}: {dest} needs parameter(s) {missing}")
    aliases = sorted(set(params) & ALIASED_ROLES.get(dest, set()))
    if len(aliases) > 1:  # the destination reads one of them: the other would be dropped without a word
        raise UserError(f"{head}: {' and '.join(aliases)} name the same quantizer of {dest}; give one of them")
    quantizers = []
    for role, block in params.items():
        status = block.get("status", True) if isinstance(block, dict) else True
        if not isinstance(status, bool):
            raise UserError(f"{head}: {role}: status must be On or Off, got {status!r}")
        if block is None or not status:
            if role in required:
                raise UserError(f"{head}: {role} is {'empty' if block is None else 'status: Off'}, but {dest} "
                                "needs it; remove the rule to leave the module in float")
            continue
        spec = _parse_quantizer(block, role, defaults, f"{head}: {role}")
        quantizers.append((role, spec))
    return Rule(index, kind, source, name, dest, tuple(quantizers))


def _parse_quantizer(block: Any, role: str, defaults: dict, head: str) -> QuantizerSpec:
    if not isinstance(block, dict):
        raise UserError(f"{head}: must be a mapping of quantizer settings")
    unknown = sorted(set(block) - QUANTIZER_KEYS)
    if unknown:
        raise UserError(f"{head}: unknown key(s) {unknown}; known: {sorted(QUANTIZER_KEYS)}")
    if "dims" in block and "dim" in block:
        raise UserError(f"{head}: give either dims or dim, not both")
    for key, value in block.items():
        if _unsupported_format(value):
            raise UserError(f"{head}: {key}={value!r} cannot be simulated by the open backend; "
                            "use --quant-backend liteml")
    is_weight = role == "weights_quantizer"
    prefix = "weight" if is_weight else "act"
    other = "act" if is_weight else "weight"
    foreign = sorted(k for k in block if k.startswith(other + "_"))
    if foreign:  # read by the other kind of quantizer only: here it would change nothing
        mine = [prefix + k[len(other):] for k in foreign]
        fix = f"use {', '.join(mine)}" if all(k in QUANTIZER_KEYS for k in mine) else "drop it"
        raise UserError(f"{head}: {', '.join(foreign)} {'is' if len(foreign) == 1 else 'are'} not read by "
                        f"{'a weights quantizer' if is_weight else 'an activation quantizer'}; {fix}")
    for key in SYNONYMS:
        if key in block and f"{prefix}_{key}" in block and block[key] != block[f"{prefix}_{key}"]:
            raise UserError(f"{head}: {key}: {block[key]!r} and {prefix}_{key}: {block[f'{prefix}_{key}']!r} "
                            "disagree; give one of them")
    bits = block.get(f"{prefix}_bits", block.get("bits", defaults[f"{prefix}_bits"]))
    symmetric = block.get(f"{prefix}_symmetric", block.get("symmetric", defaults[f"{prefix}_symmetric"]))
    per_channel = block.get(f"{prefix}_per_channel", block.get("per_channel", defaults[f"{prefix}_per_channel"]))
    if is_weight and block.get("dynamic", True) is not True:
        raise UserError(f"{head}: dynamic: {block['dynamic']!r}; weights are quantized once at load from the weight "
                        "itself (quant_and_freeze), so a weights quantizer has no static scale; drop the key")
    dynamic = True if is_weight else block.get("act_dynamic", block.get("dynamic", defaults["dynamic"]))
    observer = block.get("observer", "MinMax" if dynamic else defaults["observer"])
    if observer not in OBSERVERS:
        raise UserError(f"{head}: observer {observer!r} unsupported; use one of {OBSERVERS}")
    if dynamic is True and observer != "MinMax":  # a dynamic scale is each tensor's own range: nothing averages
        raise UserError(f"{head}: observer {observer} on a {'weights' if is_weight else 'dynamic'} quantizer, whose "
                        "scale is each tensor's own min/max; use observer: MinMax, or act_dynamic: Off for a "
                        "static scale")
    if not isinstance(per_channel, bool):
        raise UserError(f"{head}: per_channel must be a boolean (On/Off/true/false), got {per_channel!r}")
    raw_dims = block.get("dims", block.get("dim"))
    if raw_dims is None:
        # per_channel: activations per token (reduce the feature axis); weights per output row.
        dims: tuple[int, ...] = (-1,) if per_channel else ()
    else:
        if isinstance(raw_dims, int) and not isinstance(raw_dims, bool):
            raw_dims = (raw_dims,)
        if not isinstance(raw_dims, (list, tuple)) or not all(
            isinstance(d, int) and not isinstance(d, bool) for d in raw_dims
        ):
            raise UserError(f"{head}: dims must be a list of axis integers, got {raw_dims!r}")
        dims = tuple(raw_dims)
        if per_channel and not dims:
            raise UserError(f"{head}: {prefix}_per_channel: On, but dims [] is one scale for the whole tensor; "
                            "give the axes a scale reduces (e.g. dims [-1]) or per_channel: Off")
    if not isinstance(symmetric, bool) or not isinstance(dynamic, bool):
        raise UserError(f"{head}: symmetric and dynamic must be booleans (On/Off/true/false)")
    return QuantizerSpec(bits=_bits(bits, head, "bits"), symmetric=symmetric, dynamic=dynamic, dims=dims,
                         observer=observer)
