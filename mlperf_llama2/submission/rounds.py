"""MLPerf Inference rounds for llama2-70b, as MLCommons' submission checker defines them (its
`submission_checker/constants.py`, inference commit b66003e1): benchmark names, required and optional
scenarios, LoadGen RNG seeds, accuracy targets and the fixed limits. Data only; `rules.py` applies it.

v6.1 dropped `llama2-70b-99`. A closed result needs Offline plus one of Server or Interactive (the
checker's loader applies this to any round whose optional scenarios are those two). LoadGen 6.0.17
(the pinned wheel) writes v6.1's seeds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from mlperf_llama2 import constants

# ROUGE targets: a fraction of the FP16 reference (constants.ROUGE_REFERENCE); tokens per sample within
# 90-110% of 294.45 (the checker's accuracy-target and accuracy-upper-limit rows).
TARGET_FRACTION = {"llama2-70b-99": 0.99, "llama2-70b-99.9": 0.999}
# Both rounds: performance-sample-count and dataset-size 24576, Offline min samples per query 24576.
PERFORMANCE_SAMPLE_COUNT = 24576
DATASET_SIZE = 24576
OFFLINE_MIN_SAMPLES_PER_QUERY = 24576
MIN_DURATION_MS = 600_000
TARGET_LATENCY_PERCENTILE = 0.99  # as LoadGen logs it: a fraction
# p99 TTFT / TPOT limits in ns (the checker's LLM_LATENCY_LIMITS; LoadGen logs Interactive as Server).
LATENCY_LIMITS_NS = {
    "Server": (constants.SERVER_TTFT_MS * 1_000_000, constants.SERVER_TPOT_MS * 1_000_000),
    "Interactive": (constants.INTERACTIVE_TTFT_MS * 1_000_000, constants.INTERACTIVE_TPOT_MS * 1_000_000),
}
SYSTEM_TYPES = ("datacenter",)
STATUSES = ("available", "preview", "rdi")
LOADGEN_SEED_KEYS = ("qsl_rng_seed", "sample_index_rng_seed", "schedule_rng_seed")


@dataclass(frozen=True)
class Round:
    name: str
    benchmarks: tuple[str, ...]
    required_scenarios: tuple[str, ...]  # datacenter, closed division
    optional_scenarios: tuple[str, ...]  # closed needs at least one of them (the checker's loader, any round)
    seeds: dict[str, int]
    test06: tuple[str, ...]  # benchmarks whose results need the TEST06 audit
    loadgen: Optional[str]  # the LoadGen release known to write this round's seeds

    @property
    def default_benchmark(self) -> str:
        return self.benchmarks[-1]

    @property
    def scenarios(self) -> tuple[str, ...]:
        return self.required_scenarios + self.optional_scenarios


ROUNDS = {
    "v6.1": Round(
        name="v6.1",
        benchmarks=("llama2-70b-99.9",),
        required_scenarios=("Offline",),
        optional_scenarios=("Interactive", "Server"),
        seeds={"qsl_rng_seed": 2085463073848966840, "sample_index_rng_seed": 2747215439041700203,
               "schedule_rng_seed": 16159082839903944936},
        test06=("llama2-70b-99.9",),
        loadgen="6.0.17",
    ),
    "v6.0": Round(
        name="v6.0",
        benchmarks=("llama2-70b-99", "llama2-70b-99.9"),
        required_scenarios=("Offline",),
        optional_scenarios=("Interactive", "Server"),
        seeds={"qsl_rng_seed": 2465351861681999779, "sample_index_rng_seed": 14276810075590677512,
               "schedule_rng_seed": 3936089224930324775},
        test06=("llama2-70b-99", "llama2-70b-99.9"),
        loadgen=None,
    ),
}
DEFAULT_ROUND = "v6.1"


def round_of_seeds(seeds: dict) -> Optional[Round]:
    """The round whose seeds a run's LoadGen wrote, if any."""
    for r in ROUNDS.values():
        if all(seeds.get(k) == v for k, v in r.seeds.items()):
            return r
    return None
