"""tools/accuracy_subset.py: the subset log's row i is the full log's row i*k, matching the subset dataset."""

from __future__ import annotations

import json
import os
import sys

import pandas as pd

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools"))

import accuracy_subset  # noqa: E402


def test_log_and_dataset_subsets_pair_the_same_rows(tmp_path):
    frame = pd.DataFrame({"output": [f"answer {i}" for i in range(7)], "origin": ["a", "b"] * 3 + ["a"]})
    frame.to_pickle(tmp_path / "full.pkl")
    entries = [{"seq_id": i, "qsl_idx": q, "data": f"{q:02X}"} for i, q in enumerate([5, 0, 3, 6, 2, 1, 4])]
    (tmp_path / "full.json").write_text(json.dumps(entries))
    assert accuracy_subset.subset_dataset(str(tmp_path / "full.pkl"), str(tmp_path / "sub.pkl"), 3) == 3
    assert accuracy_subset.subset_log(str(tmp_path / "full.json"), str(tmp_path / "sub.json"), 3) == 3
    sub = pd.read_pickle(tmp_path / "sub.pkl")
    log = json.loads((tmp_path / "sub.json").read_text())
    for e in log:
        assert sub["output"][e["qsl_idx"]] == f"answer {int(e['data'], 16)}"  # each answer meets its own row
    assert sorted(e["qsl_idx"] for e in log) == [0, 1, 2]
