"""Check one result (performance run, accuracy run, TEST06) against MLPerf's rules and write it into a
submission tree in the v6.0 layout.

  python3 -m mlperf_llama2.submission --root SUBMISSION --division closed --submitter ACME \\
      --system H200x1_mlperf_llama2 --benchmark llama2-70b-99 --scenario Offline \\
      --performance-dir offline_perf_logs --accuracy-dir offline_accuracy_loadgen_logs \\
      --test06-dir audit_offline/compliance_results

Every problem is one line; with any error nothing is written and the exit status is 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence

from mlperf_llama2.submission.checks import (Findings, check_accuracy, check_performance, check_same_system,
                                             check_test06)
from mlperf_llama2.submission.layout import BENCHMARKS, DIVISIONS, MEASUREMENT_FIELDS, SCENARIOS, ResultPaths
from mlperf_llama2.submission.package import Inputs, empty_measurements, empty_system_fields, write_result


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python3 -m mlperf_llama2.submission", description=__doc__.split("\n\n")[0])
    p.add_argument("--root", required=True, help="the submission tree's root (created if absent)")
    p.add_argument("--division", choices=DIVISIONS, default="closed")
    p.add_argument("--submitter", required=True)
    p.add_argument("--system", required=True, help="system description id: systems/<system>.json")
    p.add_argument("--benchmark", choices=sorted(BENCHMARKS), default="llama2-70b-99")
    p.add_argument("--scenario", choices=SCENARIOS, required=True)
    p.add_argument("--performance-dir", required=True, help="main.py's --output-log-dir of the performance run")
    p.add_argument("--accuracy-dir", required=True, help="main.py's --output-log-dir of the --accuracy run")
    p.add_argument("--accuracy-txt", default=None,
                   help="evaluate-accuracy.py's output (default: accuracy.txt in --accuracy-dir)")
    p.add_argument("--test06-dir", default=None, help="run_verification.py's -o directory (or its TEST06/)")
    p.add_argument("--user-conf", default=None,
                   help="the user.conf of the performance run (default: the one its run_info.json names)")
    p.add_argument("--measurement", action="append", default=[], metavar="KEY=VALUE", type=measurement,
                   help=f"override a measurements.json field ({', '.join(MEASUREMENT_FIELDS)})")
    p.add_argument("--check-only", action="store_true", help="check and report; write nothing")
    return p


def measurement(item: str) -> tuple[str, str]:
    """One --measurement KEY=VALUE (argparse type)."""
    key, sep, value = item.partition("=")
    if not sep or key not in MEASUREMENT_FIELDS:
        raise argparse.ArgumentTypeError(f"{item!r}: expected KEY=VALUE with KEY one of "
                                         f"{', '.join(MEASUREMENT_FIELDS)}")
    return key, value


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    overrides = dict(args.measurement)
    closed = args.division == "closed"
    paths = ResultPaths(args.root, args.division, args.submitter, args.system, args.benchmark, args.scenario)

    found = Findings()
    found.extend(check_performance(args.performance_dir, args.scenario, closed))
    found.extend(check_accuracy(args.accuracy_dir, args.accuracy_txt, args.scenario, args.benchmark, closed))
    found.extend(check_test06(args.test06_dir, args.scenario, closed))
    perf_info, acc_info = found.facts.get("performance_info"), found.facts.get("accuracy_info")
    if perf_info is not None and acc_info is not None:
        found.extend(check_same_system(perf_info, acc_info))
    user_conf = args.user_conf or (perf_info or {}).get("user_conf")
    if perf_info is not None:  # else the performance run's own error says what is wrong
        if not user_conf or not os.path.isfile(user_conf):
            found.errors.append(f"user.conf of the performance run not found ({user_conf}); pass --user-conf")
        missing = empty_measurements(perf_info, overrides)
        found.rule(not missing, f"measurements.json would leave {', '.join(missing)} empty; "
                                f"pass --measurement KEY=VALUE")
    if os.path.isfile(paths.system_json):
        empty = empty_system_fields(paths.system_json)
        found.rule(not empty, f"{paths.system_json}: fill in {', '.join(empty)}", strict=False)
    else:
        found.warnings.append(f"{paths.system_json} is new: a skeleton is written; fill in its fields")
    if not os.path.isdir(paths.src_dir):
        found.warnings.append(f"{paths.src_dir} is missing: put the harness source there (this repository at the "
                              f"commit in the README)")

    for line in found.warnings:
        print(f"submission: warning: {line}", file=sys.stderr)
    for line in found.errors:
        print(f"submission: error: {line}", file=sys.stderr)
    if found.errors:
        print(f"submission: {len(found.errors)} error(s); nothing written", file=sys.stderr)
        return 2
    if args.check_only:
        print(f"submission: {paths.scenario_dir}: checks pass ({len(found.warnings)} warning(s)); --check-only")
        return 0
    inputs = Inputs(args.performance_dir, args.accuracy_dir, found.facts["accuracy_txt"], user_conf)
    written = write_result(paths, inputs, found.facts, overrides)
    print(f"submission: wrote {len(written)} files under {paths.scenario_dir}")
    print("submission: before submitting, truncate the accuracy logs and run the MLCommons submission checker "
          "(tools/submission/truncate_accuracy_log.py, submission_checker.py)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
