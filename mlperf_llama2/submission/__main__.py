"""Check one scenario's result (performance run, accuracy run, TEST06) against an MLPerf round's rules and
add it to a submission tree, then check the whole tree; or, with --check, only check the tree.

  python3 -m mlperf_llama2.submission --root SUBMISSION --division closed --submitter ACME \\
      --system H200x1_mlperf_llama2 --status available --scenario Offline \\
      --performance-dir offline_perf_logs --accuracy-dir offline_accuracy_loadgen_logs \\
      --test06-dir audit_offline/compliance_results
  python3 -m mlperf_llama2.submission --root SUBMISSION --check

Every problem is one line; with any error nothing is written and the exit status is 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Optional, Sequence

from mlperf_llama2.input_identity import InputIdentity, mismatch
from mlperf_llama2.submission import source, sysinfo
from mlperf_llama2.submission.checks import (check_accuracy, check_performance, check_same_system, check_test06)
from mlperf_llama2.submission.layout import DIVISIONS, MEASUREMENT_FIELDS, SCENARIOS, SYSTEM_FIELDS, ResultPaths
from mlperf_llama2.submission.package import Inputs, empty_measurements, write_result, write_system
from mlperf_llama2.submission.rounds import DEFAULT_ROUND, ROUNDS, STATUSES, SYSTEM_TYPES
from mlperf_llama2.submission.rules import Findings
from mlperf_llama2.submission.tree import check_same_model, check_tree, recorded_run

PROG = "python3 -m mlperf_llama2.submission"
ALL_BENCHMARKS = sorted({b for r in ROUNDS.values() for b in r.benchmarks})


def key_value(fields: Sequence[str], what: str):
    """An argparse type for KEY=VALUE with KEY one of `fields`."""
    def parse(item: str) -> tuple[str, str]:
        key, sep, value = item.partition("=")
        if not sep or key not in fields:
            raise argparse.ArgumentTypeError(f"{item!r}: expected KEY=VALUE with KEY one of {', '.join(fields)}")
        return key, value
    parse.__name__ = what
    return parse


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("--root", required=True, help="the submission tree's root (created if absent)")
    p.add_argument("--round", choices=sorted(ROUNDS), default=DEFAULT_ROUND,
                   help="MLPerf Inference round whose rules apply (default %(default)s)")
    p.add_argument("--check", action="store_true", help="check the tree under --root only; add nothing")
    p.add_argument("--division", choices=DIVISIONS, default="closed")
    p.add_argument("--submitter")
    p.add_argument("--system", help="system description id: systems/<system>.json")
    p.add_argument("--benchmark", choices=ALL_BENCHMARKS, default=None,
                   help="default: the round's (v6.1: llama2-70b-99.9)")
    p.add_argument("--scenario", choices=SCENARIOS)
    p.add_argument("--performance-dir", help="main.py's --output-log-dir of the performance run")
    p.add_argument("--accuracy-dir", help="main.py's --output-log-dir of the --accuracy run")
    p.add_argument("--accuracy-txt", default=None,
                   help="evaluate-accuracy.py's output (default: accuracy.txt in --accuracy-dir)")
    p.add_argument("--test06-dir", default=None, help="run_verification.py's -o directory (or its TEST06/)")
    p.add_argument("--user-conf", default=None,
                   help="the user.conf of the performance run (default: the one its run_info.json names)")
    p.add_argument("--measurement", action="append", default=[], metavar="KEY=VALUE",
                   type=key_value(MEASUREMENT_FIELDS, "measurement"),
                   help=f"override a measurements.json field ({', '.join(MEASUREMENT_FIELDS)})")
    p.add_argument("--status", choices=STATUSES, default=None,
                   help="system availability, for a new systems/<system>.json")
    p.add_argument("--system-type", choices=SYSTEM_TYPES, default=SYSTEM_TYPES[0])
    p.add_argument("--system-field", action="append", default=[], metavar="KEY=VALUE",
                   type=key_value(SYSTEM_FIELDS, "system field"),
                   help="set a systems/<system>.json field the machine cannot tell (cooling, networking, ...)")
    p.add_argument("--allow-modified-source", action="store_true",
                   help="package runs made from a checkout with modified harness files (src/ holds the commit)")
    p.add_argument("--check-only", action="store_true", help="check the result and report; write nothing")
    p.add_argument("--force", action="store_true",
                   help="write the result despite rule errors (to try MLCommons' tools on a short run; the "
                        "checker rejects what the errors say)")
    return p


def report(found: Findings, prefix: str = "") -> None:
    for line in found.warnings:
        print(f"submission: warning: {prefix}{line}", file=sys.stderr)
    for line in found.errors:
        print(f"submission: error: {prefix}{line}", file=sys.stderr)


def tree_check(root: str, round_name: str, strict: bool) -> int:
    """Check the whole tree; an incomplete closed result is an error only when `strict`."""
    found, incomplete = check_tree(root, ROUNDS[round_name])
    (found.errors if strict else found.warnings).extend(incomplete)
    report(found, "tree: ")
    if found.errors:
        print(f"submission: tree {root}: {len(found.errors)} error(s) for {round_name}", file=sys.stderr)
        return 2
    print(f"submission: tree {root}: passes the {round_name} checks ({len(found.warnings)} warning(s))")
    return 0


def check_sources(infos, allow_modified: bool, found: Findings) -> list[Optional[str]]:
    """The harness commits behind the runs (None: no git metadata); refuses modified harness files."""
    commits = []
    for label, info in infos:
        state = info.git
        changed = source.modified_harness_files(state)
        found.rule(not changed or allow_modified,
                   f"{label}: harness files were modified during the run ({', '.join(changed[:3])}"
                   f"{', ...' if len(changed) > 3 else ''}); commit them and rerun, or pass --allow-modified-source")
        if state.commit is None:
            found.warnings.append(f"{label}: no git commit recorded: src/ gets the installed tree")
        elif not source.commit_known(state.commit):
            found.errors.append(f"{label}: commit {state.commit[:12]} is not in this harness checkout, so src/ "
                                f"cannot hold it; package from a checkout that has it")
        commits.append(state.commit)
    return sorted(set(commits), key=str)


def check_user_conf(path: str, recorded: Optional[InputIdentity], run_dir: str, found: Findings) -> bool:
    """The user.conf to copy is the one the performance run read (its sha256 in run_info.json); False if not."""
    if recorded is None or recorded.user_conf is None:
        found.warnings.append(f"performance run {run_dir} recorded no user.conf hash (an older harness): cannot "
                              f"confirm {path} is the file it ran with")
        return True
    differs = mismatch(recorded.user_conf, path)
    found.rule(differs is None, f"user.conf {path} is not the one performance run {run_dir} read ({differs} now; "
                                f"it ran with {recorded.user_conf.describe()}): restore it or pass --user-conf")
    return differs is None


def system_findings(paths: ResultPaths, args) -> tuple[Findings, Optional[dict]]:
    """(problems, the description to write or None to keep the tree's)."""
    found = Findings()
    overrides = dict(args.system_field)
    if os.path.isfile(paths.system_json) and not overrides:
        with open(paths.system_json, encoding="utf-8") as f:
            system = json.load(f)
        new = None
    else:
        if os.path.isfile(paths.system_json):
            with open(paths.system_json, encoding="utf-8") as f:
                system = {**json.load(f), **overrides}
        else:
            system = sysinfo.system_description(args.division, args.submitter, args.system, args.status,
                                                args.system_type, overrides)
            found.rule(args.status is not None, f"{paths.system_json} is new: pass --status "
                                                f"({' | '.join(STATUSES)})")
        new = system
    empty = [k for k in sysinfo.empty_required(system) if k != "status"]
    found.rule(not empty, f"{paths.system_json}: the machine cannot tell {', '.join(empty)}; pass "
                          f"--system-field KEY=VALUE for each")
    return found, new


def add_result(args) -> int:
    rnd = ROUNDS[args.round]
    benchmark = args.benchmark or rnd.default_benchmark
    if benchmark not in rnd.benchmarks:
        print(f"submission: error: {benchmark} is not a {rnd.name} benchmark (use {', '.join(rnd.benchmarks)})",
              file=sys.stderr)
        return 2
    overrides = dict(args.measurement)
    closed = args.division == "closed"
    paths = ResultPaths(args.root, args.division, args.submitter, args.system, benchmark, args.scenario)

    found = Findings()
    found.extend(check_performance(args.performance_dir, args.scenario, closed, rnd))
    found.extend(check_accuracy(args.accuracy_dir, args.accuracy_txt, args.scenario, benchmark, closed))
    found.extend(check_test06(args.test06_dir, args.scenario, closed, rnd))
    perf_info, acc_info = found.facts.get("performance_info"), found.facts.get("accuracy_info")
    runs = [("performance run", perf_info), ("accuracy run", acc_info), ("TEST06 audit run",
                                                                           found.facts.get("test06_info"))]
    runs = [(label, info) for label, info in runs if info is not None]
    inputs = {"performance run": found.facts.get("performance_inputs"),
              "accuracy run": found.facts.get("accuracy_inputs"), "TEST06 audit run": found.facts.get("test06_inputs")}
    for label, info in runs[1:]:
        found.extend(check_same_system(runs[0][1], info, label, inputs[runs[0][0]], inputs[label]))
    commits = check_sources(runs, args.allow_modified_source, found)
    user_conf = args.user_conf or (perf_info.user_conf if perf_info else None)
    user_conf_ok = True
    if perf_info is not None:  # else the performance run's own error says what is wrong
        if not user_conf or not os.path.isfile(user_conf):
            found.errors.append(f"user.conf of the performance run not found ({user_conf}); pass --user-conf")
        else:
            user_conf_ok = check_user_conf(user_conf, inputs["performance run"], args.performance_dir, found)
        missing = empty_measurements(perf_info, overrides)
        found.rule(not missing, f"measurements.json would leave {', '.join(missing)} empty; "
                                f"pass --measurement KEY=VALUE")
        # The tree's other scenarios of this system and benchmark: the same model, precision and dataset.
        bench_dir = os.path.dirname(paths.scenario_dir)
        others = [recorded_run(bench_dir, s) for s in SCENARIOS
                  if s != args.scenario and os.path.isdir(os.path.join(bench_dir, s))]
        found.extend(check_same_model(bench_dir, [(args.scenario, perf_info, inputs["performance run"]), *others]))
    system_found, system = system_findings(paths, args)
    found.extend(system_found)

    report(found)
    writable = all(found.facts.get(k) is not None for k in ("performance_info", "accuracy_info", "accuracy_txt_text"))
    if found.errors and not (args.force and writable and not args.check_only and user_conf
                             and os.path.isfile(user_conf) and user_conf_ok):
        print(f"submission: {len(found.errors)} error(s); nothing written", file=sys.stderr)
        return 2
    if found.errors:
        print(f"submission: --force: writing despite {len(found.errors)} error(s)", file=sys.stderr)
    if args.check_only:
        print(f"submission: {paths.scenario_dir}: checks pass ({len(found.warnings)} warning(s)); --check-only")
        return 0
    inputs = Inputs(args.performance_dir, args.accuracy_dir, user_conf)
    written = write_result(paths, inputs, found.facts, overrides)
    if system is not None:
        written.append(write_system(paths.system_json, system))
    for commit in commits:
        written.append(source.write_source(paths.src_dir, commit))
    print(f"submission: wrote {len(written)} files under {paths.scenario_dir} (the full accuracy log stays in "
          f"{args.accuracy_dir})")
    code = tree_check(args.root, args.round, strict=False)
    return 0 if args.force else code


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if os.path.exists(args.root) and not os.path.isdir(args.root):
        print(f"submission: error: --root {args.root} is a file, not a directory", file=sys.stderr)
        return 2
    if args.check:
        return tree_check(args.root, args.round, strict=True)
    missing = [f"--{name.replace('_', '-')}" for name in ("submitter", "system", "scenario", "performance_dir",
                                                          "accuracy_dir") if getattr(args, name) is None]
    if missing:
        parser.error(f"adding a result needs {', '.join(missing)} (or pass --check)")
    return add_result(args)


if __name__ == "__main__":
    sys.exit(main())
