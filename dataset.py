#!/usr/bin/env python3
"""Load a processed OpenOrca pickle and report what the SUT will see (or the one problem with it).

Usage: python dataset.py PATH [--total-sample-count N] [--vocab-size V]
The logic lives in mlperf_llama2.data.dataset; main.py uses it directly.
"""

import argparse
import sys

from mlperf_llama2 import constants
from mlperf_llama2.data.dataset import Dataset, load_dataset  # noqa: F401 - re-exported for users
from mlperf_llama2.errors import run_cli


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Validate a processed llama2-70b dataset pickle.")
    parser.add_argument("path", help="processed pickle (.pkl or .pkl.gz)")
    parser.add_argument("--total-sample-count", type=int, default=constants.TOTAL_SAMPLE_COUNT)
    parser.add_argument("--vocab-size", type=int, default=None, help="reject token ids >= this")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    ds = load_dataset(args.path, args.total_sample_count, args.vocab_size)
    lengths = [len(p) for p in ds.prompts]
    print(f"{ds.path}: {ds.total_sample_count} samples, prompt tokens min {min(lengths)} "
          f"mean {sum(lengths) / len(lengths):.1f} max {max(lengths)}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
