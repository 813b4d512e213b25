"""`python -m mlperf_llama2.report RUN_DIR`: print the run's summary table, write summary.json and the plots.

RUN_DIR is a LoadGen output directory (e.g. offline_accuracy_loadgen_logs). The ROUGE line is read from
RUN_DIR/accuracy.txt (evaluate-accuracy.py's output) unless --accuracy-file names another file.
A directory without a readable detail log, or where summary.json and plots/ cannot be written, is one line
(exit 2) before anything is read; a partial accuracy log or timings file is a warning, not a traceback.
"""

import argparse
import os
import sys

from mlperf_llama2.errors import UserError, configure_logging, run_cli
from mlperf_llama2.report.plots import PLOTS_DIR, write_plots
from mlperf_llama2.report.summary import DETAIL_FILE, SUMMARY_JSON, build_summary, render_table, write_summary
from mlperf_llama2.run_dir import run_in_progress
from mlperf_llama2.writable import check_writable_dir, check_writable_file


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mlperf_llama2.report",
                                     description="Summarize a LoadGen run directory and plot it.")
    parser.add_argument("run_dir", help="LoadGen output directory")
    parser.add_argument("--accuracy-file", default=None, help="file holding evaluate-accuracy.py's output")
    parser.add_argument("--dataset", default=None, help="processed dataset (default: the one in run_info.json)")
    parser.add_argument("--no-plots", action="store_true", help="summary only")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    configure_logging(args.verbose)
    if run_in_progress(args.run_dir):  # its logs are partial, and the run writes summary.json and plots/ itself
        raise UserError(f"{args.run_dir}: a run is writing into this directory now; summarize it once the run ends "
                        "(the run prints its own summary table)")
    detail = os.path.join(args.run_dir, DETAIL_FILE)
    if not os.path.isfile(detail):
        raise UserError(f"{args.run_dir}: no {DETAIL_FILE}; pass a LoadGen output directory (--output-log-dir)")
    try:
        with open(detail, "rb"):
            pass
    except OSError as exc:
        raise UserError(f"{detail}: cannot read it ({exc.strerror or exc})") from None
    check_writable_file(os.path.join(args.run_dir, SUMMARY_JSON), "summary")
    if not args.no_plots:
        check_writable_dir(os.path.join(args.run_dir, PLOTS_DIR), "plots")
    accuracy_text = None
    if args.accuracy_file:
        if not os.path.isfile(args.accuracy_file):
            raise UserError(f"--accuracy-file not found: {args.accuracy_file}")
        with open(args.accuracy_file, encoding="utf-8") as f:
            accuracy_text = f.read()
    summary = build_summary(args.run_dir, accuracy_text)
    print(render_table(summary))
    print(f"summary: {write_summary(args.run_dir, summary)}")
    if not args.no_plots:
        for path in write_plots(args.run_dir, args.dataset):
            print(f"plot: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
