"""Where the demo model and data live, and preparing both once: the defaults of `make accuracy` and main.py.

Layout under the demo directory (git-ignored `.cache/demo` of the repository, else
`$XDG_CACHE_HOME/mlperf-llama2/demo`; `MLPERF_LLAMA2_DEMO_DIR` overrides):
  model/                      SmolLM2-135M-Instruct as a float32 Hugging Face checkpoint (demo/model.py)
  openorca-demo.parquet       the synthetic OpenOrca-schema rows (demo/data.py)
  processed/                  processorca's output for the demo model's tokenizer: full, per-origin,
                              sampled_{DEMO_SAMPLES} and calibration_{DEMO_CALIBRATION_SAMPLES} pickles
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from mlperf_llama2 import constants
from mlperf_llama2.demo import data, model
from mlperf_llama2.errors import UserError

log = logging.getLogger(__name__)

DEMO_DIR_ENV = "MLPERF_LLAMA2_DEMO_DIR"
DEMO_ROWS_PER_ORIGIN = 72
DEMO_SAMPLES = 256  # 64 per origin, sampled from 72 like the real set's sampling step
DEMO_CALIBRATION_SAMPLES = 32
PARQUET_NAME = "openorca-demo.parquet"
PREPARE_HINT = "run `make accuracy`, or `python -m mlperf_llama2.demo prepare`, to prepare the demo model and data"


@dataclass(frozen=True)
class DemoPaths:
    root: str

    @property
    def model_dir(self) -> str:
        return os.path.join(self.root, "model")

    @property
    def parquet(self) -> str:
        return os.path.join(self.root, PARQUET_NAME)

    @property
    def processed_dir(self) -> str:
        return os.path.join(self.root, "processed")

    @property
    def dataset(self) -> str:
        return os.path.join(self.processed_dir, f"{constants.PROCESSED_PREFIX}.sampled_{DEMO_SAMPLES}.pkl")

    @property
    def calibration(self) -> str:
        return os.path.join(self.processed_dir, f"{constants.PROCESSED_PREFIX}.calibration_{DEMO_CALIBRATION_SAMPLES}.pkl")

    @property
    def ready(self) -> bool:
        return model.read_marker(self.model_dir) is not None and os.path.isfile(self.dataset)


def demo_root() -> str:
    """The demo directory: $MLPERF_LLAMA2_DEMO_DIR, else the repository's .cache/demo, else the user cache."""
    if os.environ.get(DEMO_DIR_ENV):
        return os.path.abspath(os.environ[DEMO_DIR_ENV])
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if os.path.isfile(os.path.join(repo, "pyproject.toml")):
        return os.path.join(repo, ".cache", "demo")
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache, "mlperf-llama2", "demo")


def demo_paths() -> DemoPaths:
    return DemoPaths(demo_root())


def prepared_demo(needs_model: bool, needs_dataset: bool) -> DemoPaths:
    """main.py's defaults: the prepared demo paths, or one line naming the missing flag and how to prepare."""
    paths = demo_paths()
    if not paths.ready:
        missing = " / ".join(flag for flag, needed in (("--model-path", needs_model), ("--dataset-path", needs_dataset))
                             if needed)
        raise UserError(f"no {missing} given and the demo model and data are not prepared in {paths.root}: "
                        f"{PREPARE_HINT}")
    return paths


def prepare(paths: DemoPaths) -> DemoPaths:
    """Convert the model, write the parquet and run processorca, each only when its output is missing."""
    from mlperf_llama2.data.processorca import ProcessConfig, generate

    os.makedirs(paths.root, exist_ok=True)
    info = model.prepare_demo_model(paths.model_dir)
    log.info("demo model: %s (%s licence) in %s", info.name, info.license, paths.model_dir)
    if not os.path.isfile(paths.parquet):
        data.write_parquet(paths.parquet, DEMO_ROWS_PER_ORIGIN)
    if not (os.path.isfile(paths.dataset) and os.path.isfile(paths.calibration)):
        generate(ProcessConfig(
            dataset_pq_path=paths.parquet,
            model_dir=paths.model_dir,
            export_dir=paths.processed_dir,
            seqlen_limit=constants.INPUT_TOKEN_LIMIT,
            num_total_samples=DEMO_SAMPLES,
            calibration_subset_size=DEMO_CALIBRATION_SAMPLES,
            # SmolLM2 is trained on its own ChatML template; the Llama-2 [INST] template is foreign to it.
            use_chat_template=True,
        ))
    for path in (paths.dataset, paths.calibration):
        if not os.path.isfile(path):
            raise UserError(f"processorca did not write {path}; delete {paths.processed_dir} and prepare again")
    return paths
