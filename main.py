#!/usr/bin/env python3
"""MLPerf Inference llama2-70b: run LoadGen (Offline or Server) against a greedy system under test.

Usage: python main.py --scenario Offline --model-path DIR --dataset-path FILE [--accuracy] ...
Every flag is documented by `python main.py --help`; the flow lives in mlperf_llama2.harness.
"""

import sys

from mlperf_llama2.errors import run_cli
from mlperf_llama2.harness import main

if __name__ == "__main__":
    sys.exit(run_cli(main))
