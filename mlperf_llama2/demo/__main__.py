"""`python -m mlperf_llama2.demo prepare | check | path WHAT`: prepare the demo once, check it, print a path.

`prepare` converts the embedded model, writes the synthetic parquet and runs processorca on it (each
step skipped when its output exists) and prints where everything is. `path` prints one prepared path
(for scripts: CHECKPOINT_PATH, DATASET_PATH) or fails with one line saying how to prepare it. `check` loads
the prepared model and checks its BOS/EOS agree and a few greedy tokens decode (`make test-demo-versions`).
"""

import argparse
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from mlperf_llama2.demo.model import smoke_check  # noqa: E402
from mlperf_llama2.demo.prepare import demo_paths, prepare, prepared_demo  # noqa: E402
from mlperf_llama2.errors import configure_logging, run_cli  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mlperf_llama2.demo", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("prepare", help="convert the model and build the demo dataset (once)")
    sub.add_parser("check", help="check the prepared model: BOS/EOS agree, a few greedy tokens decode")
    path = sub.add_parser("path", help="print a prepared path")
    path.add_argument("what", choices=("model", "dataset", "root"))
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
    if args.what == "root":
        print(demo_paths().root)
        return 0
    paths = prepared_demo(args.what == "model", args.what == "dataset")
    print(paths.model_dir if args.what == "model" else paths.dataset)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
