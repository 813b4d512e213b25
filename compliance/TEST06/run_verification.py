#!/usr/bin/env python3
"""Compliance TEST06 verifier for llama2-70b (same command line as the reference's).

Usage: python compliance/TEST06/run_verification.py -c LOG_DIR -o OUTPUT_DIR -s SCENARIO [-e EOS_ID] [-d DTYPE]
The checks live in mlperf_llama2.compliance.test06; docs/compliance.md says how to run the audit.
"""

import os
import sys

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))

from mlperf_llama2.compliance.test06 import main  # noqa: E402
from mlperf_llama2.errors import configure_logging, run_cli  # noqa: E402

if __name__ == "__main__":
    configure_logging()
    sys.exit(run_cli(main))
