"""The end-of-run summary: one table and `summary.json` beside LoadGen's logs, built from what LoadGen wrote.

Sources, all in the run directory: `mlperf_log_detail.txt` (lines ":::MLLOG {json}", one key each; the
last value of a key wins), `mlperf_log_summary.txt` (the verdict's reasons; a verdict that
disagrees with the detail log's makes the run INVALID), `mlperf_log_accuracy.json`
(accuracy runs: samples and tokens), `sample_timings.csv` and `run_info.json` (ours), and the ROUGE line
evaluate-accuracy.py printed (`accuracy.txt`, or given). For the Llama-2-70B reference model the ROUGE
is checked against the 99% and 99.9% targets of SPEC §8; any other model is a stand-in and is not judged.
Never better than the run: a check LoadGen logged as failed is named (and never VALID), a run stopped early
(`RUN_STOPPED.txt`) is INVALID whatever LoadGen's logs say, an audit.config run is named a compliance run,
a ROUGE whose gen_num is not this run's accuracy log's is not judged, and a latency is never rounded onto or
across a TTFT/TPOT limit.
"""

from __future__ import annotations

import ast
import json
import logging
import os
import re
from dataclasses import asdict, dataclass
from typing import Any, Optional

from mlperf_llama2 import constants
from mlperf_llama2.data import scoring
from mlperf_llama2.loadgen.interrupt import STOP_NOTE
from mlperf_llama2.report.numbers import fmt as _fmt
from mlperf_llama2.report.numbers import fmt_vs_limits as _fmt_vs_limits
from mlperf_llama2.report.run_info import read_run_info
from mlperf_llama2.report.timings import TIMINGS_FILE, read_timings, write_atomically
from mlperf_llama2.submission.rules import submittable

log = logging.getLogger(__name__)

DETAIL_FILE = "mlperf_log_detail.txt"
SUMMARY_FILE = "mlperf_log_summary.txt"
ACCURACY_LOG = "mlperf_log_accuracy.json"
ACCURACY_RESULT_FILE = "accuracy.txt"
SUMMARY_JSON = "summary.json"
MLLOG_PREFIX = ":::MLLOG "
TARGET_FRACTIONS = scoring.TARGET_FRACTIONS
# Llama-2-70B's shape (config.json); only this model is judged against the accuracy targets.
LLAMA2_70B_SHAPE = {"model_type": "llama", "num_hidden_layers": 80, "hidden_size": 8192,
                    "vocab_size": constants.LLAMA2_VOCAB_SIZE}
ROUGE_LINE = re.compile(r"\{'rouge1':.*\}")
# The checks mlperf_log_summary.txt answers Yes / NO for a performance run.
SUMMARY_CHECKS = ("Performance constraints satisfied", "Min duration satisfied", "Min queries satisfied",
                  "Early stopping satisfied")
# The same checks in the detail log (true / false).
DETAIL_CHECKS = {"result_perf_constraints_met": "Performance constraints satisfied",
                 "result_min_duration_met": "Min duration satisfied", "result_min_queries_met": "Min queries satisfied",
                 "early_stopping_met": "Early stopping satisfied"}
# LoadGen's message when it applied an audit.config (a compliance test's settings) to the run.
AUDIT_MESSAGE = "Found Audit Config file"
# p99 TTFT / TPOT limits (ms) a printed latency must never be rounded across: Server's and Interactive's.
OFFICIAL_LATENCY_LIMITS_MS = ((2000.0, 200.0), (450.0, 40.0))


@dataclass(frozen=True)
class RunSummary:
    scenario: str
    mode: str
    samples: Optional[int]
    tokens_per_s: Optional[float]
    ttft_p50_ms: Optional[float]
    ttft_p99_ms: Optional[float]
    tpot_p50_ms: Optional[float]
    tpot_p99_ms: Optional[float]
    verdict: str
    reason: str
    loadgen_errors: int
    max_new_tokens: Optional[int]
    rouge: Optional[dict]
    targets: Optional[dict]
    model: Optional[str]
    quantization: Optional[str] = None  # the --liteml-config YAML (or "fp8") the run used; None: not quantized
    quant_mode: Optional[str] = None  # simulate | int8 (with a quantization config only)
    quant_backend: Optional[str] = None  # auto | liteml | open, as requested
    kv_cache_dtype: Optional[str] = None  # the engine's --kv-cache-dtype; None: not recorded (not the engine)
    fp8_accumulation: Optional[str] = None  # promoted | fast (engine, --quantization fp8); None: not recorded
    submittable: str = ""  # "submittable for v6.1 closed: yes" or ": no (why)" (submission/rules.py)
    stopped: Optional[str] = None  # RUN_STOPPED.txt's first line: the run was stopped, LoadGen's logs are no result
    audit_config: bool = False  # LoadGen applied an audit.config: a compliance run, not a performance result
    interactive: bool = False  # a Server run under --lg-model-name llama2-70b-interactive (the Interactive scenario)
    rouge_mismatch: Optional[str] = None  # why the ROUGE read is not this run's (another log's score), else None
    ttft_limit_ms: Optional[float] = None  # the p99 limits LoadGen judged this Server run by (its settings)
    tpot_limit_ms: Optional[float] = None
    samples_counted_by_us: bool = False  # LoadGen logged no result count: `samples` is sample_timings.csv's rows

    @property
    def output_capped(self) -> bool:
        return self.max_new_tokens is not None and self.max_new_tokens < constants.MAX_NEW_TOKENS


def parse_detail(path: str) -> tuple[dict[str, Any], list[str]]:
    """Key -> value of every MLLOG line (last wins), and the messages LoadGen flagged as errors."""
    values: dict[str, Any] = {}
    errors: list[str] = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            start = line.find(MLLOG_PREFIX)
            if start < 0:
                continue
            try:
                record = json.loads(line[start + len(MLLOG_PREFIX):])
            except ValueError:
                continue
            values[record.get("key")] = record.get("value")
            if (record.get("metadata") or {}).get("is_error"):
                errors.append(str(record.get("value")))
    return values, errors


def parse_summary_text(path: str) -> dict[str, str]:
    """'name : value' lines of mlperf_log_summary.txt (first occurrence of a name wins)."""
    out: dict[str, str] = {}
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            name, sep, value = line.partition(":")
            if sep and name.strip() and name.strip() not in out:
                out[name.strip()] = value.strip()
    return out


def parse_accuracy_result(text: str) -> Optional[dict]:
    """The last `{'rouge1': ...}` dict evaluate-accuracy.py printed, or None."""
    matches = ROUGE_LINE.findall(text)
    if not matches:
        return None
    try:
        return dict(ast.literal_eval(matches[-1]))
    except (ValueError, SyntaxError):
        return None


def is_llama2_70b(model_path: Optional[str]) -> bool:
    if not model_path:
        return False
    try:
        with open(os.path.join(model_path, "config.json"), encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, ValueError):
        return False
    return all(config.get(k) == v for k, v in LLAMA2_70B_SHAPE.items())


def accuracy_targets(rouge: dict) -> dict:
    """Whether ROUGE meets each target fraction (SPEC §8), and tokens per sample lies in 90-110%: the
    thresholds of `scoring.check_targets`, which evaluate-accuracy.py's PASS/FAIL lines use too."""
    if any(not isinstance(rouge.get(k), (int, float)) for k in constants.ROUGE_REFERENCE):
        return {**{name: False for name in TARGET_FRACTIONS}, "tokens_per_sample": False}
    tps = rouge.get("tokens_per_sample")
    checks = scoring.check_targets({**rouge, "gen_num": rouge.get("gen_num", 0),
                                    "tokens_per_sample": float(tps) if isinstance(tps, (int, float)) else -1.0})
    out = {name: checks[f"llama2-70b-{name}"]["rouge_ok"] for name in TARGET_FRACTIONS}
    out["tokens_per_sample"] = checks["tokens_per_sample_ok"]
    return out


def target_verdict(targets: dict, name: str) -> str:
    """PASS / FAIL of one target as evaluate-accuracy.py logs it: ROUGE met and tokens per sample in range."""
    if targets[name] and targets["tokens_per_sample"]:
        return "PASS"
    why = [w for w, bad in (("ROUGE below", not targets[name]),
                            ("tokens/sample outside 90-110%", not targets["tokens_per_sample"])) if bad]
    return f"FAIL ({'; '.join(why)})"


def _ms(value: Any) -> Optional[float]:
    return None if value is None else float(value) / 1e6


def accuracy_log_lengths(run_dir: str) -> dict[int, int]:
    """qsl_idx -> generated tokens, first entry per sample (as scored); {} when the log is absent, and a
    warning (not a traceback) when it is partial or corrupt, e.g. a stopped run's."""
    path = os.path.join(run_dir, ACCURACY_LOG)
    if not os.path.isfile(path):
        return {}
    lengths: dict[int, int] = {}
    try:
        with open(path, encoding="utf-8") as f:
            entries = json.load(f)
        for entry in entries:
            lengths.setdefault(int(entry["qsl_idx"]), int(entry.get("token_count") or len(entry["data"]) // 8))
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
        log.warning("%s: unreadable, partial or corrupt (%s): its samples are not counted", path,
                    getattr(exc, "strerror", None) or exc)
        return {}
    return lengths


def _accuracy_log_counts(run_dir: str) -> tuple[Optional[int], int]:
    """Unique samples and their tokens in mlperf_log_accuracy.json (first entry per qsl_idx, as scored)."""
    lengths = accuracy_log_lengths(run_dir)
    return (len(lengths) if lengths else None), sum(lengths.values())


def loadgen_verdict(detail: dict[str, Any], summary_text: dict[str, str]) -> tuple[str, str]:
    """LoadGen's verdict of a performance run and why. Both logs state it (the detail log's result_validity,
    the summary's "Result is"); where they disagree (LoadGen 6.0.17 does, e.g. for a target latency
    percentile above 100) the run is INVALID and the reason names the disagreement."""
    in_detail, in_summary = detail.get("result_validity"), summary_text.get("Result is")
    disagree = bool(in_detail and in_summary and str(in_detail) != in_summary)
    verdict = "INVALID" if disagree else str(in_detail or in_summary or "?")
    reasons = [f"LoadGen's logs disagree: {SUMMARY_FILE} says {in_summary}, {DETAIL_FILE} says result_validity "
               f"{in_detail}"] if disagree else []
    # The checks that failed, by either log: LoadGen's result_invalid_reason is often only a recommendation
    # ("Increase expected QPS ..." for a run too short), so the failed check is named first.
    failed = [name for name in SUMMARY_CHECKS if summary_text.get(name, "Yes").lower().startswith("no")]
    failed += [name for key, name in DETAIL_CHECKS.items() if detail.get(key) is False and name not in failed]
    if failed and verdict == "VALID":
        verdict = "INVALID"
        reasons.append("LoadGen says VALID, but a check it logged failed")
    reasons += [f"{name}: NO" for name in failed]
    reasons.append(str(detail.get("result_invalid_reason") or "").strip())
    return verdict, "; ".join(r for r in reasons if r)


def stop_note(run_dir: str) -> Optional[str]:
    """The first line of RUN_STOPPED.txt (the run was stopped: samples answered empty), else None."""
    path = os.path.join(run_dir, STOP_NOTE)
    if not os.path.lexists(path):
        return None
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            line = f.readline().strip()
    except OSError:
        line = ""
    return line or f"{STOP_NOTE} is present"


def ran_with_audit_config(detail_path: str) -> bool:
    """Whether LoadGen applied an audit.config to the run (its detail log says so)."""
    with open(detail_path, encoding="utf-8", errors="replace") as f:
        return any(AUDIT_MESSAGE in line for line in f)


def _not_submittable(line: str, reasons: list[str]) -> str:
    """`submittable`'s line with `reasons` first: "... closed: no (reasons; earlier reasons)"."""
    if not reasons:
        return line
    head, _, rest = line.partition(": ")
    earlier = rest[len("no ("):-1] if rest.startswith("no (") and rest.endswith(")") else ""
    return f"{head}: no ({'; '.join(reasons + ([earlier] if earlier else []))})"


def build_summary(run_dir: str, accuracy_text: Optional[str] = None) -> RunSummary:
    """Summarize the run in `run_dir`; `accuracy_text` (evaluate-accuracy's output) overrides accuracy.txt."""
    detail, errors = parse_detail(os.path.join(run_dir, DETAIL_FILE))
    audited = ran_with_audit_config(os.path.join(run_dir, DETAIL_FILE))
    stopped = stop_note(run_dir)
    summary_path = os.path.join(run_dir, SUMMARY_FILE)
    summary_text = parse_summary_text(summary_path) if os.path.isfile(summary_path) else {}
    info = read_run_info(run_dir)
    timings = read_timings(run_dir)
    scenario = str(detail.get("effective_scenario") or info.scenario or "?")
    mode = str(detail.get("effective_test_mode") or "?")
    accuracy_mode = mode == "AccuracyOnly"

    samples_counted_by_us = False
    if accuracy_mode:
        samples, tokens = _accuracy_log_counts(run_dir)
        span = max((t.completed_s for t in timings), default=0.0) - min((t.issued_s for t in timings), default=0.0)
        tokens_per_s = tokens / span if timings and span > 0 else None
        verdict, reason = "n/a", "AccuracyOnly run: LoadGen judges only performance runs; see ROUGE"
    else:
        # LoadGen's count when it logged a result (queries x samples per query); else the samples we saw answered
        samples = _loadgen_sample_count(detail)
        samples_counted_by_us = samples is None and bool(timings)
        if samples_counted_by_us:
            samples = len(timings)
        key = "result_completed_tokens_per_second" if scenario == "Server" else "result_tokens_per_second"
        tokens_per_s = _float(detail.get(key))
        verdict, reason = loadgen_verdict(detail, summary_text)
        if verdict == "?":
            verdict, reason = "INVALID", "no verdict: LoadGen wrote no result (the run did not finish)"
        if stopped:
            # LoadGen counted the empty answers of the stopped run: its verdict and numbers are not a result
            reason = "; ".join(r for r in (f"run stopped: {stopped}", f"LoadGen's logs say {verdict}"
                                           + (f" ({reason})" if reason else "")) if r)
            verdict = "INVALID"

    if accuracy_text is None and os.path.isfile(os.path.join(run_dir, ACCURACY_RESULT_FILE)):
        with open(os.path.join(run_dir, ACCURACY_RESULT_FILE), encoding="utf-8") as f:
            accuracy_text = f.read()
    rouge = parse_accuracy_result(accuracy_text) if accuracy_text else None
    rouge_mismatch = _rouge_mismatch(rouge, samples if accuracy_mode else _accuracy_log_counts(run_dir)[0])
    model = info.model_path
    targets = accuracy_targets(rouge) if rouge is not None and is_llama2_70b(model) and not rouge_mismatch else None
    server = scenario == "Server"
    extra = ([f"run stopped ({STOP_NOTE}): not a result"] if stopped and accuracy_mode else []) + \
        (["ran with an audit.config (a compliance run, not a result)"] if audited else []) + \
        ([f"ROUGE {rouge_mismatch}"] if rouge_mismatch else [])
    return RunSummary(
        scenario=scenario,
        mode=mode,
        samples=samples,
        tokens_per_s=tokens_per_s,
        ttft_p50_ms=_ms(detail.get("result_first_token_50.00_percentile_latency_ns")) if server else None,
        ttft_p99_ms=_ms(detail.get("result_first_token_99.00_percentile_latency_ns")) if server else None,
        tpot_p50_ms=_ms(detail.get("result_time_per_output_token_50.00_percentile_ns")) if server else None,
        tpot_p99_ms=_ms(detail.get("result_time_per_output_token_99.00_percentile_ns")) if server else None,
        verdict=verdict,
        reason=reason,
        loadgen_errors=len(errors),
        max_new_tokens=info.max_new_tokens,
        rouge=rouge,
        targets=targets,
        model=model,
        quantization=info.liteml_config or info.quantization,
        quant_mode=info.quant_mode if info.liteml_config else None,
        quant_backend=info.quant_backend if info.liteml_config else None,
        kv_cache_dtype=info.kv_cache_dtype,
        fp8_accumulation=info.fp8_accumulation,
        # judged on the verdict above: where LoadGen's two logs disagree, not on the detail log's word alone
        submittable=_not_submittable(submittable(detail if accuracy_mode else
                                                 dict(detail, result_validity=verdict, result_invalid_reason=reason),
                                                 errors, info, rouge), extra),
        stopped=stopped,
        audit_config=audited,
        samples_counted_by_us=samples_counted_by_us,
        rouge_mismatch=rouge_mismatch,
        interactive=server and info.lg_model_name == constants.LG_MODEL_NAME_INTERACTIVE,
        ttft_limit_ms=_ms(detail.get("requested_server_ttft_latency")) if server else None,
        tpot_limit_ms=_ms(detail.get("requested_server_tpot_latency")) if server else None,
    )


def _rouge_mismatch(rouge: Optional[dict], log_samples: Optional[int]) -> Optional[str]:
    """Why the ROUGE read (accuracy.txt, --accuracy-file) cannot be this run's: evaluate-accuracy.py's gen_num
    counts the samples of the log it scored, which must be this run's accuracy log."""
    if rouge is None:
        return None
    gen_num = rouge.get("gen_num")
    if isinstance(gen_num, (int, float)) and gen_num == (log_samples or 0):
        return None
    return (f"is not this run's: it scored {gen_num if gen_num is not None else 'an unknown number of'} samples, "
            f"this run's {ACCURACY_LOG} holds {log_samples or 0}")


def _loadgen_sample_count(detail: dict[str, Any]) -> Optional[int]:
    """The samples LoadGen's result counts: result_query_count x the samples of each query (Offline: one query of
    generated_samples_per_query; Server: one sample a query); None when LoadGen logged no result."""
    queries = detail.get("result_query_count")
    if not isinstance(queries, (int, float)) or isinstance(queries, bool):
        return None
    per_query = detail.get("generated_samples_per_query")
    return int(queries) * (int(per_query) if isinstance(per_query, (int, float)) and per_query > 0 else 1)


def _int(value: Any) -> Optional[int]:
    return None if value is None else int(value)


def _float(value: Any) -> Optional[float]:
    return None if value is None else float(value)


def render_table(s: RunSummary) -> str:
    """The summary as a small aligned table (plain text, fits 100 columns)."""
    rows = [
        ("scenario", f"Interactive (LoadGen's {s.scenario} scenario, {constants.LG_MODEL_NAME_INTERACTIVE} limits)"
                     if s.interactive else s.scenario),
        ("mode", s.mode),
        ("samples", "-" if s.samples is None else str(s.samples)
         + (f" (counted by us from {TIMINGS_FILE}: LoadGen logged no result count)" if s.samples_counted_by_us
            else "")),
        ("tokens/s", _fmt(s.tokens_per_s) + (" (measured by us in an accuracy run: not a performance result)"
                                              if s.mode == "AccuracyOnly" and s.tokens_per_s is not None else "")),
    ]
    if s.scenario == "Server":
        ttft_limits = [lim[0] for lim in OFFICIAL_LATENCY_LIMITS_MS] + [x for x in [s.ttft_limit_ms] if x]
        tpot_limits = [lim[1] for lim in OFFICIAL_LATENCY_LIMITS_MS] + [x for x in [s.tpot_limit_ms] if x]
        rows += [
            ("TTFT p50 / p99 (ms)", f"{_fmt_vs_limits(s.ttft_p50_ms, ttft_limits)} / "
                                    f"{_fmt_vs_limits(s.ttft_p99_ms, ttft_limits)}"),
            ("TPOT p50 / p99 (ms)", f"{_fmt_vs_limits(s.tpot_p50_ms, tpot_limits)} / "
                                    f"{_fmt_vs_limits(s.tpot_p99_ms, tpot_limits)}"),
        ]
    if s.quantization == "fp8":
        accumulation = {"promoted": "float32 accumulation", "fast": "Hopper's fast accumulation, not promoted"}
        rows.append(("quantization", "fp8 (E4M3 weights per channel, activations per token"
                                     + (f"; {accumulation.get(s.fp8_accumulation, s.fp8_accumulation)}"
                                        if s.fp8_accumulation else "") + ")"))
    elif s.quantization:
        rows.append(("quantization", f"{os.path.basename(s.quantization)}, {s.quant_mode} mode "
                                     f"({s.quant_backend} backend)"))
    elif s.model is not None:
        rows.append(("quantization", "none"))
    if s.kv_cache_dtype:
        rows.append(("KV cache", "model dtype" if s.kv_cache_dtype == "auto" else s.kv_cache_dtype))
    rows.append(("LoadGen verdict", s.verdict + (f" ({s.reason})" if s.reason else "")))
    if s.stopped:
        rows.append(("run stopped", f"{s.stopped} ({STOP_NOTE}): not a result"))
    if s.audit_config:
        rows.append(("audit.config", "applied by LoadGen: a compliance (audit) run, not a performance result"))
    if s.loadgen_errors:
        rows.append(("LoadGen errors", f"{s.loadgen_errors} (see {DETAIL_FILE})"))
    if s.output_capped:
        rows.append(("output cap", f"{s.max_new_tokens} new tokens (below {constants.MAX_NEW_TOKENS}: "
                                   "not a valid MLPerf run)"))
    if s.rouge is not None:
        rows.append(("ROUGE", str(s.rouge)))
        if s.targets is not None:
            rows.append(("llama2-70b-99", target_verdict(s.targets, "99")))
            rows.append(("llama2-70b-99.9", target_verdict(s.targets, "99.9")))
            rows.append(("tokens/sample 90-110%", "yes" if s.targets["tokens_per_sample"] else "NO"))
        elif s.rouge_mismatch:
            rows.append(("targets", f"not judged: this ROUGE {s.rouge_mismatch}"))
        else:
            rows.append(("targets", "not judged: the model is not Llama-2-70B (stand-in)"))
    rows.append(("MLPerf", s.submittable))
    width = max(len(name) for name, _ in rows)
    rule = "-" * min(100, width + 3 + max(len(v) for _, v in rows))
    return "\n".join([rule] + [f"{name.ljust(width)} : {value}" for name, value in rows] + [rule])


def write_summary(run_dir: str, s: RunSummary) -> str:
    path = os.path.join(run_dir, SUMMARY_JSON)
    payload = asdict(s)
    payload["output_capped"] = s.output_capped
    write_atomically(path, lambda f: json.dump(payload, f, indent=2))  # never half a summary.json
    return path
