"""Compliance TEST06 verification (SPEC §7): checks every sample of an audit run's accuracy log.

Three checks, as the reference verifier: (1) first token (every scenario but Offline): the tokens
of `token_data` equal the start of `data`, and a missing `token_data` fails; (2) EOS: at most one
EOS at the end of `data`; (3) length: `len(data) == token_count`. Writes
OUTPUT_DIR/TEST06/verify_accuracy.txt and copies the run's logs to OUTPUT_DIR/TEST06/accuracy/.
Refused with one line before any check (exit 2): a run whose detail log lacks AUDIT_MARKER (not made with
audit.config), a run of another scenario than -s (the detail log's effective_scenario; Interactive is
LoadGen's Server under --lg-model-name llama2-70b-interactive, which run_info.json beside the logs
records), an -o that cannot take files, an unreadable or malformed log, and a -d that does not match the
log (every entry's data is token_count values of another size; -d float32 on a log of integer ids, which
turns every id into a tiny non-integer that never equals the EOS id, so the EOS check could not fail).
Otherwise as the reference verifier, whose last report line says "TEST06 verification complete" only when
every check passed ("failed" else). Where the reference's code is laxer than its checks' own statement
(SPEC §7), ours holds the statement, so it never passes a log the reference fails, and fails these that
the reference passes: an empty log; two EOS tokens as the whole data (the reference never looks at
data[0]); an empty token_data, or one longer than data or given for an empty data (the reference compares
only the shorter of the two); a token_count that is not an integer (the reference takes int("3") and
int(3.7)). A missing token_count fails the length check (the reference stops with a KeyError).
"""

from __future__ import annotations

import argparse
import glob
import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np

from mlperf_llama2 import constants
from mlperf_llama2.errors import UserError
from mlperf_llama2.report.run_info import read_run_info
from mlperf_llama2.report.summary import DETAIL_FILE, parse_detail
from mlperf_llama2.writable import check_writable_dir

log = logging.getLogger(__name__)

DTYPES = {"int32": np.int32, "int64": np.int64, "int16": np.int16, "float32": np.float32}
SCENARIOS = ("Offline", "Server", "Interactive", "SingleStream", "MultiStream")
ACCURACY_LOG = "mlperf_log_accuracy.json"
AUDIT_MARKER = "Found Audit Config file"


# The report's line of each check, as the reference verifier writes it (the packager reads them back).
FIRST_TOKEN_LINE, EOS_LINE, LENGTH_LINE = "First token check pass", "EOS check pass", "Sample length check pass"
CHECK_LINES = (FIRST_TOKEN_LINE, EOS_LINE, LENGTH_LINE)


@dataclass
class Test06Result:
    first_token_pass: Optional[bool]  # None: skipped (Offline)
    eos_pass: bool
    length_pass: bool
    samples: int
    problems: list[str] = field(default_factory=list)
    failures: dict[str, list[str]] = field(default_factory=dict)  # CHECK_LINES name -> its samples' problems

    @property
    def passed(self) -> bool:
        return self.first_token_pass is not False and self.eos_pass and self.length_pass

    def verdicts(self) -> dict[str, str]:
        """Each check's value as the report writes it: True, False or Skipped."""
        first = "Skipped" if self.first_token_pass is None else str(self.first_token_pass)
        return {FIRST_TOKEN_LINE: first, EOS_LINE: str(self.eos_pass), LENGTH_LINE: str(self.length_pass)}

    def report_lines(self) -> list[str]:
        return [f"{name}: {value}" for name, value in self.verdicts().items()] + [
            f"TEST06 verification {'complete' if self.passed else 'failed'}"]


def _tokens(entry: dict, key: str, dtype) -> np.ndarray:
    return np.frombuffer(bytes.fromhex(entry[key]), dtype)


def _first_token_problem(entry: dict, data: np.ndarray, dtype) -> Optional[str]:
    if "token_data" not in entry:
        return f"qsl_idx {entry.get('qsl_idx')}: no token_data (FirstTokenComplete never called)"
    first = _tokens(entry, "token_data", dtype)
    if len(first) == 0:
        return f"qsl_idx {entry.get('qsl_idx')}: token_data is empty (FirstTokenComplete sent no token)"
    if len(first) > len(data) or not np.array_equal(first, data[: len(first)]):
        return f"qsl_idx {entry.get('qsl_idx')}: token_data {first.tolist()} is not the start of data"
    return None


def _eos_problem(entry: dict, data: np.ndarray, eos_token_id: int) -> Optional[str]:
    trailing = 0
    for token in data[::-1]:
        if token != eos_token_id:
            break
        trailing += 1
    return f"qsl_idx {entry.get('qsl_idx')}: {trailing} EOS tokens at the end of data" if trailing > 1 else None


def _length_problem(entry: dict, data: np.ndarray) -> Optional[str]:
    count = entry.get("token_count")
    if "token_count" not in entry:
        return f"qsl_idx {entry.get('qsl_idx')}: no token_count (LoadGen logs the n_tokens of every response)"
    if isinstance(count, bool) or not isinstance(count, int):  # "3" or 3.7 would read as 3 tokens
        return f"qsl_idx {entry.get('qsl_idx')}: token_count {count!r} is not an integer (LoadGen logs n_tokens as one)"
    if len(data) != count:
        return f"qsl_idx {entry.get('qsl_idx')}: len(data) {len(data)} != token_count {count}"
    return None


def read_accuracy_log(log_dir: str) -> list[dict]:
    path = os.path.join(log_dir, ACCURACY_LOG)
    if not os.path.isfile(path):
        raise UserError(f"-c {log_dir}: no {ACCURACY_LOG} (point -c at the audit run's LoadGen log directory)")
    try:
        with open(path, encoding="utf-8") as f:
            entries = json.load(f)
    except OSError as exc:
        raise UserError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not valid JSON ({exc}); did the run finish?") from None
    check_entries(entries, path)
    return entries


def check_entries(entries: object, path: str) -> None:
    """Every entry is an object with hex `data` (and hex `token_data` if any): else one line naming it."""
    if not isinstance(entries, list):
        raise UserError(f"{path}: holds a JSON {type(entries).__name__}, expected a list of entries")
    for position, entry in enumerate(entries):
        where = f"{path}: entry {position}"
        if not isinstance(entry, dict) or not isinstance(entry.get("data"), str):
            raise UserError(f"{where}: expected an object with hex 'data'; the log is partial or corrupt")
        for key in ("data", "token_data"):
            if key in entry:
                try:
                    bytes.fromhex(entry[key])
                except (TypeError, ValueError):
                    raise UserError(f"{where}: '{key}' is not valid hex; the log is partial or corrupt") from None


def check_dtype(entries: Sequence[dict], dtype_name: str, path: str) -> None:
    """-d matches the log: not every entry holding token_count values of another size (the length check
    would then fail every sample for the wrong reason), whole values in every entry, and with -d float32 token
    ids (whole numbers >= 0): int32 ids read as float32 are tiny non-integers, so no EOS would ever be seen."""
    size = np.dtype(DTYPES[dtype_name]).itemsize
    # Byte lengths of the decoded hex: bytes.fromhex (the reference's reader) skips whitespace between bytes.
    nbytes = [{key: len(bytes.fromhex(e[key])) for key in ("data", "token_data") if key in e} for e in entries]
    per_token = {n["data"] / e["token_count"] if isinstance(e.get("token_count"), int) and e["token_count"] > 0
                 else None for e, n in zip(entries, nbytes)}
    if len(per_token) == 1 and None not in per_token and per_token != {size}:
        (actual,) = per_token
        names = [name for name, dt in DTYPES.items() if np.dtype(dt).itemsize == actual]
        if names:  # a size no -d has (corrupt data) is named by the per-entry check below instead
            raise UserError(f"{path}: every entry's data is {actual:g} bytes a token ({'/'.join(names)}), not "
                            f"{size} ({dtype_name}): pass -d {names[0]}")
    for position, (entry, sizes) in enumerate(zip(entries, nbytes)):
        for key, length in sizes.items():
            if length % size:
                raise UserError(f"{path}: entry {position}: {key} is {length} bytes, not whole "
                                f"{dtype_name} values; was the log written with another -d?")
            if dtype_name == "float32":
                values = _tokens(entry, key, np.float32)
                bad = ~np.isfinite(values) | (values < 0) | (values != np.round(values))
                if bad.any():
                    raise UserError(f"{path}: entry {position}: {key} read as float32 holds {float(values[bad][0])!r}, "
                                    "not a token id: the log holds integer ids (this harness writes int32), and "
                                    "the EOS check could never match; pass -d int32")


def verify(entries: Sequence[dict], scenario: str, eos_token_id: int, dtype_name: str = "int32") -> Test06Result:
    """Run the three checks on the accuracy-log entries, in one pass (each entry's data decoded once: an audit
    log can hold all 24,576 samples, and the packager re-runs this on every TEST06 it packages). Pure: no files."""
    dtype = DTYPES[dtype_name]
    check_first = scenario != "Offline"
    found: dict[str, list[str]] = {name: [] for name in CHECK_LINES}
    for entry in entries:
        data = _tokens(entry, "data", dtype)
        for name, problem in ((FIRST_TOKEN_LINE, _first_token_problem(entry, data, dtype) if check_first else None),
                              (EOS_LINE, _eos_problem(entry, data, eos_token_id)),
                              (LENGTH_LINE, _length_problem(entry, data))):
            if problem:
                found[name].append(problem)
    problems = [p for name in CHECK_LINES for p in found[name]]
    if not entries:
        problems.append("the accuracy log is empty: was the audit run made with audit.config in its working directory?")
    return Test06Result(
        first_token_pass=not found[FIRST_TOKEN_LINE] and bool(entries) if check_first else None,
        eos_pass=not found[EOS_LINE] and bool(entries),
        length_pass=not found[LENGTH_LINE] and bool(entries),
        samples=len(entries),
        problems=problems,
        failures={name: found[name] for name in CHECK_LINES if found[name]},
    )


def write_outputs(result: Test06Result, log_dir: str, output_dir: str) -> str:
    """OUTPUT_DIR/TEST06/verify_accuracy.txt plus a copy of the run's logs in OUTPUT_DIR/TEST06/accuracy/."""
    test_dir = os.path.join(output_dir, "TEST06")
    accuracy_dir = os.path.join(test_dir, "accuracy")
    os.makedirs(accuracy_dir, exist_ok=True)
    report = os.path.join(test_dir, "verify_accuracy.txt")
    with open(report, "w", encoding="utf-8") as f:
        f.write("\n".join(result.report_lines()) + "\n")
    # run_info.json too: the submission packager checks the audit ran the same model and precision.
    copied = run_files(log_dir)
    names = {os.path.basename(path) for path in copied}
    for stale in run_files(accuracy_dir):  # an earlier verification's run into the same -o: not this run's
        if os.path.basename(stale) not in names:
            os.remove(stale)
    for path in copied:
        target = os.path.join(accuracy_dir, os.path.basename(path))
        if not (os.path.exists(target) and os.path.samefile(path, target)):  # -c may be this copy itself
            shutil.copy(path, target)
    return report


def run_files(log_dir: str) -> list[str]:
    """The files of a run that TEST06/accuracy/ holds: LoadGen's logs and main.py's run_info.json."""
    return glob.glob(os.path.join(log_dir, "mlperf_log_*")) + glob.glob(os.path.join(log_dir, "run_info.json"))


def audit_config_was_applied(log_dir: str) -> bool:
    detail = os.path.join(log_dir, DETAIL_FILE)
    if not os.path.isfile(detail):
        return False
    try:
        with open(detail, encoding="utf-8", errors="replace") as f:
            return AUDIT_MARKER in f.read()
    except OSError as exc:
        raise UserError(f"{detail}: cannot read it ({exc.strerror or exc})") from None


def check_scenario(log_dir: str, scenario: str) -> None:
    """The audit run is of `scenario` (-s): its detail log's effective_scenario and, for LoadGen's Server,
    the --lg-model-name that run_info.json beside the logs records (Interactive or Server limits)."""
    detail_path = os.path.join(log_dir, DETAIL_FILE)
    try:
        logged = parse_detail(detail_path)[0].get("effective_scenario")
    except OSError as exc:
        raise UserError(f"{detail_path}: cannot read it ({exc.strerror or exc})") from None
    wanted = "Server" if scenario == "Interactive" else scenario
    if logged is None:
        raise UserError(f"{detail_path}: no effective_scenario: not a complete LoadGen detail log")
    if logged != wanted:
        other = f"-s {logged}" + (" (or -s Interactive for a --lg-model-name llama2-70b-interactive run)"
                                  if logged == "Server" else "")
        raise UserError(f"-s {scenario}, but {detail_path} logs the {logged} scenario: pass {other}, or point -c "
                        f"at the {scenario} audit run's logs")
    info = read_run_info(log_dir)
    if not info.recorded or info.lg_model_name is None:
        if logged == "Server":
            log.warning("no run_info.json beside the logs: cannot tell an Interactive run from a Server run")
        return
    if info.lg_model_name not in constants.LG_MODEL_NAMES:
        raise UserError(f"-c {log_dir}: run under --lg-model-name {info.lg_model_name}, not a llama2-70b run")
    interactive = info.lg_model_name == constants.LG_MODEL_NAME_INTERACTIVE
    if interactive != (scenario == "Interactive"):
        raise UserError(f"-s {scenario}, but the audit run ran under --lg-model-name {info.lg_model_name}: pass "
                        f"-s {'Interactive' if interactive else logged}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Verify a compliance TEST06 run of llama2-70b.")
    parser.add_argument("-c", "--compliance_dir", required=True, help="LoadGen log directory of the audit run")
    parser.add_argument("-o", "--output_dir", required=True, help="where TEST06/verify_accuracy.txt is written")
    parser.add_argument("-s", "--scenario", required=True, choices=SCENARIOS, help="scenario of the audit run")
    parser.add_argument("-e", "--eos_token_id", type=int, default=constants.LLAMA2_EOS_TOKEN,
                        help="EOS token id (default %(default)s)")
    parser.add_argument("-d", "--dtype", choices=tuple(DTYPES), default="int32",
                        help="dtype of the logged token data (default %(default)s)")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.eos_token_id < 0:
        raise UserError(f"-e {args.eos_token_id}: an EOS token id is >= 0 (Llama-2's is {constants.LLAMA2_EOS_TOKEN})")
    if not os.path.isdir(args.compliance_dir):
        raise UserError(f"-c {args.compliance_dir}: not a directory (point -c at the audit run's LoadGen log "
                        "directory)")
    if not audit_config_was_applied(args.compliance_dir):
        raise UserError(f"-c {args.compliance_dir}: mlperf_log_detail.txt has no {AUDIT_MARKER!r}: the run was not "
                        "made with compliance/TEST06/audit.config in its working directory; redo the audit run")
    check_scenario(args.compliance_dir, args.scenario)
    check_writable_dir(args.output_dir, "-o")
    entries = read_accuracy_log(args.compliance_dir)
    check_dtype(entries, args.dtype, os.path.join(args.compliance_dir, ACCURACY_LOG))
    result = verify(entries, args.scenario, args.eos_token_id, args.dtype)
    report = write_outputs(result, args.compliance_dir, args.output_dir)
    for problem in result.problems[:20]:
        print(f"FAIL {problem}")
    for line in result.report_lines():
        print(line)
    print(f"{result.samples} samples checked; report: {report}")
    return 0 if result.passed else 1
