"""Packaging results for an MLPerf Inference submission: `layout` (where files go), `checks` (what must
hold), `package` (writing them); the command line is `python3 -m mlperf_llama2.submission`."""
