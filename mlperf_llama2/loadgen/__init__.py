"""The LoadGen glue: the only package code that imports `mlperf_loadgen` (settings, SUTs, the run)."""
