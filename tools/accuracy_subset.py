"""Every k-th row of a processed dataset, and the matching entries of an accuracy log, for subset scoring.

A full accuracy run that costs too much (e.g. a simulate-mode variant on CPU) runs on the subset
dataset instead; the full runs it is compared with are scored on the same rows by filtering their
`mlperf_log_accuracy.json` (row i*k of the full set becomes row i of the subset) and scoring with
evaluate-accuracy.py against the subset dataset. Rows are taken with a stride, not a prefix, because
processorca's sampled sets are grouped by origin.

    python tools/accuracy_subset.py dataset FULL.pkl SUBSET.pkl --every 2
    python tools/accuracy_subset.py log FULL_LOG.json SUBSET_LOG.json --every 2
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mlperf_llama2.data.accuracy_log import read_log_entries  # noqa: E402
from mlperf_llama2.data.dataset import read_frame  # noqa: E402
from mlperf_llama2.errors import UserError, run_cli  # noqa: E402


def check_every(every: int) -> None:
    if every < 1:  # 0 has no rows to stride over; a negative stride reverses the rows and negates qsl_idx
        raise UserError(f"--every must be >= 1, got {every}")


def subset_dataset(src: str, dst: str, every: int) -> int:
    check_every(every)
    frame = read_frame(src).iloc[::every].reset_index(drop=True)
    frame.to_pickle(dst)
    return len(frame)


def subset_log(src: str, dst: str, every: int) -> int:
    check_every(every)
    entries = read_log_entries(src)
    for position, e in enumerate(entries):
        if not isinstance(e, dict) or isinstance(e.get("qsl_idx"), bool) or not isinstance(e.get("qsl_idx"), int):
            raise UserError(f"{src}: entry {position}: expected an object with an integer 'qsl_idx'")
    kept = [dict(e, qsl_idx=e["qsl_idx"] // every) for e in entries if e["qsl_idx"] % every == 0]
    with open(dst, "w") as f:
        json.dump(kept, f, indent=0)
    return len(kept)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=("dataset", "log"))
    ap.add_argument("src")
    ap.add_argument("dst")
    ap.add_argument("--every", type=int, default=2)
    args = ap.parse_args(argv)
    count = (subset_dataset if args.what == "dataset" else subset_log)(args.src, args.dst, args.every)
    print(f"{args.dst}: {count} rows")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
