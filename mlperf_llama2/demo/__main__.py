"""`python -m mlperf_llama2.demo prepare | check | path WHAT | note [RUN_DIR]`: prepare the demo once, check it, print
a path, say whose scores a run's are.

`prepare` converts the embedded model, writes the synthetic parquet and runs processorca on it (each
step skipped when its output exists) and prints where everything is. `path` prints one prepared path
(for scripts: CHECKPOINT_PATH, DATASET_PATH) or fails with one line saying how to prepare it. `check` loads
the prepared model and checks its BOS/EOS agree and a few greedy tokens decode (`make test-demo-versions`). `note`
reads a run's run_info.json and, when the run used the demo model, prints one line saying its scores are the
SmolLM2 demo's, not Llama-2-70B's (`make accuracy` prints it after the ROUGE line).
"""

import argparse
import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from mlperf_llama2.demo.model import MODEL_NAME, read_marker, smoke_check  # noqa: E402
from mlperf_llama2.demo.prepare import demo_paths, prepare, prepared_demo  # noqa: E402
from mlperf_llama2.errors import UserError, configure_logging, run_cli  # noqa: E402

DEFAULT_RUN_DIR = "offline_accuracy_loadgen_logs"  # run_accuracy.sh's LoadGen log directory


def run_note(run_dir: str) -> str:
    """One line on whose scores the run in `run_dir` produced: the demo model's (a stand-in) or not the demo."""
    path = os.path.join(run_dir, "run_info.json")
    try:
        with open(path, encoding="utf-8") as f:
            model_path = json.load(f).get("model_path")
    except (OSError, ValueError, AttributeError) as exc:
        raise UserError(f"{path}: cannot read the run's model from it ({exc}); give the run's --output-log-dir")
    if not model_path or read_marker(model_path) is None:
        return f"{run_dir}: not the embedded demo model ({model_path or 'no local model'})"
    return (f"{run_dir}: these are the scores of the {MODEL_NAME} demo (the embedded stand-in model on synthetic "
            "demo data), NOT of Llama-2-70B on OpenOrca: they say nothing about the benchmark's accuracy targets "
            "(docs/demo.md)")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mlperf_llama2.demo", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("prepare", help="convert the model and build the demo dataset (once)")
    sub.add_parser("check", help="check the prepared model: BOS/EOS agree, a few greedy tokens decode")
    path = sub.add_parser("path", help="print a prepared path")
    path.add_argument("what", choices=("model", "dataset", "root"))
    note = sub.add_parser("note", help="say whether a run used the demo model (its scores are not Llama-2-70B's)")
    note.add_argument("run_dir", nargs="?", default=DEFAULT_RUN_DIR)
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    configure_logging(args.verbose)
    if args.command == "prepare":
        paths = prepare(demo_paths())
        print(f"demo model:   {paths.model_dir}\ndemo dataset: {paths.dataset}\ncalibration:  {paths.calibration}")
        return 0
    if args.command == "check":
        print(smoke_check(prepared_demo(True, False).model_dir))
        return 0
    if args.command == "note":
        print(run_note(args.run_dir))
        return 0
    if args.what == "root":
        print(demo_paths().root)
        return 0
    paths = prepared_demo(args.what == "model", args.what == "dataset")
    print(paths.model_dir if args.what == "model" else paths.dataset)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
