#!/usr/bin/env python3
"""Build the llama2-70b dataset from the OpenOrca GPT-4 parquet (SPEC §5): same flags, steps and files as
the reference. The steps live in mlperf_llama2.data.processorca.

Example:
  python processorca.py --dataset_pq_path 1M-GPT4-Augmented.parquet --model_dir Llama-2-70b-chat-hf \\
      --seqlen_limit 1024 --export_dir processed-data --num_total_samples 24576
"""

import argparse
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from mlperf_llama2 import constants  # noqa: E402
from mlperf_llama2.data.processorca import ProcessConfig, generate  # noqa: E402
from mlperf_llama2.errors import configure_logging, run_cli  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Preprocess OpenOrca into the llama2-70b benchmark pickles.")
    parser.add_argument("--dataset_pq_path", required=True, help="OpenOrca 1M-GPT4-Augmented.parquet")
    parser.add_argument("--model_dir", required=True, help="local checkpoint or tokenizer directory")
    parser.add_argument("--seqlen_limit", type=int, default=constants.INPUT_TOKEN_LIMIT,
                        help="keep rows whose input and output token counts are below this")
    parser.add_argument("--export_dir", required=True, help="where the pickles are written (created if missing)")
    parser.add_argument("--num_total_samples", type=int, default=constants.TOTAL_SAMPLE_COUNT)
    parser.add_argument("--calibration_subset_size", type=int, default=1000)
    parser.add_argument("--use_chat_template", action="store_true",
                        help="prompt with the tokenizer's own chat template instead of the reference's "
                             "Llama-2 template (for non-Llama-2 models; never the benchmark default)")
    parser.add_argument("--verbose", action="store_true")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.verbose)
    config = ProcessConfig(
        dataset_pq_path=args.dataset_pq_path,
        model_dir=args.model_dir,
        export_dir=args.export_dir,
        seqlen_limit=args.seqlen_limit,
        num_total_samples=args.num_total_samples,
        calibration_subset_size=args.calibration_subset_size,
        use_chat_template=args.use_chat_template,
    )
    for name, path in generate(config).items():
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
