"""Where each file of one result goes in an MLPerf Inference submission tree (the v6.0 and v6.1 layout).

One result is a (system, benchmark, scenario) directory under `{division}/{submitter}/results/`, holding
its performance run, accuracy run, TEST06 audit and metadata; the system description lives beside it
in `systems/`, the source in `src/`. Paths only: nothing here touches the disk.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

DIVISIONS = ("closed", "open")
SCENARIOS = ("Offline", "Server", "Interactive")

PERFORMANCE_FILES = ("mlperf_log_summary.txt", "mlperf_log_detail.txt")
ACCURACY_FILES = ("mlperf_log_summary.txt", "mlperf_log_detail.txt")  # + the accuracy log, truncated
ACCURACY_LOG = "mlperf_log_accuracy.json"
ACCURACY_RESULT = "accuracy.txt"
TEST06_RESULT = "verify_accuracy.txt"
MEASUREMENTS = "measurements.json"
USER_CONF = "user.conf"
README = "README.md"
# The performance run's run_info.json, beside (not in) performance/run_1/, whose files the checker lists: the tree
# check compares the scenarios of one system and benchmark by it (same model, precision and dataset).
PERFORMANCE_RUN_INFO = os.path.join("performance", "run_info.json")

# measurements.json: the submission checker wants each of these present and non-empty.
MEASUREMENT_FIELDS = ("input_data_types", "retraining", "starting_weights_filename", "weight_data_types",
                      "weight_transformations")

# systems/<system>.json: the checker's required keys, in its order of appearance.
SYSTEM_FIELDS = (
    "division", "submitter", "status", "system_name", "number_of_nodes", "host_processor_model_name",
    "host_processors_per_node", "host_processor_core_count", "host_memory_capacity", "host_storage_capacity",
    "host_storage_type", "accelerators_per_node", "accelerator_model_name", "accelerator_memory_capacity",
    "framework", "operating_system", "system_type", "other_software_stack", "host_processor_frequency",
    "host_processor_caches", "host_memory_configuration", "host_processor_interconnect", "host_networking",
    "host_networking_topology", "accelerator_frequency", "accelerator_host_interconnect",
    "accelerator_interconnect", "accelerator_interconnect_topology", "accelerator_memory_configuration",
    "accelerator_on-chip_memories", "cooling", "hw_notes", "sw_notes", "host_network_card_count",
    "system_type_detail",
)
# Of those, the ones the checker rejects when empty.
SYSTEM_FIELDS_MEANINGFUL = (
    "division", "submitter", "system_type", "status", "system_name", "number_of_nodes",
    "host_processor_model_name", "host_processors_per_node", "host_processor_core_count", "host_memory_capacity",
    "host_memory_configuration", "host_storage_capacity", "host_storage_type", "host_networking",
    "host_network_card_count", "host_networking_topology", "accelerators_per_node", "accelerator_model_name",
    "accelerator_memory_capacity", "accelerator_host_interconnect", "accelerator_memory_configuration",
    "accelerator_interconnect", "cooling", "framework", "operating_system", "other_software_stack",
)


@dataclass(frozen=True)
class ResultPaths:
    """The directories of one result inside the submission root `root`."""

    root: str
    division: str
    submitter: str
    system: str
    benchmark: str
    scenario: str

    @property
    def submitter_dir(self) -> str:
        return os.path.join(self.root, self.division, self.submitter)

    @property
    def scenario_dir(self) -> str:
        return os.path.join(self.submitter_dir, "results", self.system, self.benchmark, self.scenario)

    @property
    def performance_dir(self) -> str:
        return os.path.join(self.scenario_dir, "performance", "run_1")

    @property
    def performance_run_info(self) -> str:
        return os.path.join(self.scenario_dir, PERFORMANCE_RUN_INFO)

    @property
    def accuracy_dir(self) -> str:
        return os.path.join(self.scenario_dir, "accuracy")

    @property
    def test06_dir(self) -> str:
        return os.path.join(self.scenario_dir, "TEST06")

    @property
    def system_json(self) -> str:
        return os.path.join(self.submitter_dir, "systems", f"{self.system}.json")

    @property
    def src_dir(self) -> str:
        return os.path.join(self.submitter_dir, "src")
