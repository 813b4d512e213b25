"""main.py's flow: flags -> frozen RunConfig -> input checks -> LoadGen settings -> backend -> run.

Everything that can be wrong with the inputs (missing paths, dataset, user.conf, output directory,
model directory) is checked before the model loads, each as one clear line. Exit codes: 0 for a
completed run, 1 when samples failed to generate, 2 for bad input (via `run_cli`).
"""

from __future__ import annotations

import logging
import os
import shlex
import sys
from typing import TYPE_CHECKING, Optional, Sequence

from mlperf_llama2.config import RunConfig, build_parser
from mlperf_llama2.data.dataset import Dataset, load_dataset
from mlperf_llama2.errors import UserError, configure_logging

if TYPE_CHECKING:
    from mlperf_llama2.loadgen.runner import RunResult
    from mlperf_llama2.loadgen.sut import RunObserver

log = logging.getLogger(__name__)

EXIT_RUN_FAILED = 1


def parse_config(argv: Optional[Sequence[str]]) -> RunConfig:
    """The one place argparse is used: flags -> frozen RunConfig."""
    return RunConfig.from_cli_args(build_parser().parse_args(argv))


def check_inputs(config: RunConfig) -> Dataset:
    """Validate every input of the run without loading the model; returns the loaded dataset."""
    remote = config.backend == "api" or bool(config.dist.sut_nodes)  # the model lives elsewhere
    if config.model_path is None and not remote:
        raise UserError("no model given: pass --model-path DIR (a local Hugging Face checkpoint directory)")
    if config.dataset_path is None:
        raise UserError("no dataset given: pass --dataset-path FILE (a processorca.py .pkl or .pkl.gz)")
    vocab_size = None
    if not remote:
        from mlperf_llama2.backends.hf_loading import check_model_dir, read_model_info

        check_model_dir(config.model_path)
        vocab_size = read_model_info(config.model_path).vocab_size
    if config.quant.enabled and config.backend == "engine":
        from mlperf_llama2.engine.int8 import engine_rules

        engine_rules(config.quant)  # int8 Linears only: no calibration, CPU runs the exact integer GEMM
        if config.quant.calibration_scales:
            from mlperf_llama2.quant.calibration_file import check_scales_file, config_id

            check_scales_file(config.quant.calibration_scales, config_id(config.quant.liteml_config),
                              config.model_path)
            log.warning("--calibration-scales: the engine reads only the K/V scales, for an 8-bit KV cache; "
                        "its int8 mode has none yet, so they are unused in this run")
    elif config.quant.enabled:
        from mlperf_llama2.quant.setup import plan_quantization

        # YAML, backend, calibration pickle, --calibration-scales against config and model
        plan_quantization(config.quant, config.dataset_path, config.device, config.model_path)
    elif config.quant.calibration_scales:
        raise UserError("--calibration-scales holds a quantization config's static scales: give its --liteml-config")
    if config.save_outputs is not None:
        parent = os.path.dirname(os.path.abspath(config.save_outputs))
        if os.path.exists(parent) and not os.path.isdir(parent):
            raise UserError(f"--save-outputs {config.save_outputs}: {parent} is a file, not a directory")
        try:
            os.makedirs(parent, exist_ok=True)
        except OSError as exc:
            raise UserError(f"--save-outputs {config.save_outputs}: cannot create {parent} ({exc.strerror})") from None
        if not os.access(parent, os.W_OK):
            raise UserError(f"--save-outputs {config.save_outputs}: directory {parent} is not writable")
    return load_dataset(config.dataset_path, config.total_sample_count, vocab_size)


def with_demo_defaults(config: RunConfig) -> RunConfig:
    """No --model-path / --dataset-path: the prepared demo model and data (or one line on preparing them)."""
    # An API server or SUT nodes hold the model: no local checkpoint is needed then.
    needs_model = config.model_path is None and config.backend != "api" and not config.dist.sut_nodes
    needs_dataset = config.dataset_path is None
    if not (needs_model or needs_dataset):
        return config
    from mlperf_llama2.demo.prepare import prepared_demo

    demo = prepared_demo(needs_model, needs_dataset)
    if needs_model:
        log.info("no --model-path: using the demo model %s", demo.model_dir)
    if needs_dataset:
        log.info("no --dataset-path: using the demo dataset %s", demo.dataset)
        if not needs_model and config.model_path is not None:
            log.warning("the demo dataset is tokenized for the demo model, not for %s", config.model_path)
    return config.replace(model_path=demo.model_dir if needs_model else config.model_path,
                          dataset_path=demo.dataset if needs_dataset else config.dataset_path)


def run(config: RunConfig, observers: Sequence["RunObserver"] = ()) -> "RunResult":
    """Check the inputs, build LoadGen settings and the backend, run LoadGen; observers see each sample.

    Beside LoadGen's logs it also writes run_info.json and sample_timings.csv (for the summary and plots),
    and it shows the live progress bar when stderr is a terminal.
    """
    dataset = check_inputs(config)

    # LoadGen and the backends are imported only once the inputs are known to be good.
    from mlperf_llama2.backends.registry import create_backend, resolve
    from mlperf_llama2.loadgen.runner import run_test
    from mlperf_llama2.loadgen.settings import build_settings
    from mlperf_llama2.report.observer import ReportObserver
    from mlperf_llama2.report.progress import progress_stream
    from mlperf_llama2.report.run_info import harness_commit, write_run_info

    resolve(config.backend)  # an unknown backend fails before LoadGen or the model start
    settings = build_settings(config)
    if config.output_cap_applied:
        log.warning("--max-new-tokens %d < 1024: outputs are capped; this is NOT a valid MLPerf run",
                    config.max_new_tokens)
    mode = "Interactive" if config.interactive and config.scenario == "Server" else config.scenario
    log.info("run: %s %s, %d samples, backend %s, %s on %s", mode, "accuracy" if config.accuracy else "performance",
             dataset.total_sample_count, "sut-nodes" if config.dist.sut_nodes else config.backend, config.dtype,
             config.device)
    network_name = None
    if config.dist.sut_nodes:
        from mlperf_llama2.backends.nodes import create_node_backend

        backend = create_node_backend(config)
        network_name = backend.sut_name
    else:
        backend = create_backend(config)
    write_run_info(settings.output_dir, scenario=config.scenario, accuracy=config.accuracy,
                   lg_model_name=config.lg_model_name, model_path=config.model_path,
                   dataset_path=config.dataset_path, max_new_tokens=config.max_new_tokens,
                   backend=config.backend, batch_size=config.batch_size, device=config.device, dtype=config.dtype,
                   user_conf=os.path.abspath(config.user_conf), liteml_config=config.quant.liteml_config,
                   quant_backend=config.quant.quant_backend, quant_mode=config.quant.quant_mode,
                   command=shlex.join(sys.argv), harness_commit=harness_commit())
    expected = dataset.total_sample_count if config.accuracy else max(settings.test.min_query_count, 1)
    report = ReportObserver(expected, f"{mode} {'accuracy' if config.accuracy else 'performance'}",
                            progress_stream(not config.progress))
    result = run_test(
        config.scenario,
        backend,
        dataset,
        settings,
        audit_conf=config.audit_conf,
        max_new_tokens=config.max_new_tokens,
        observers=(report, *observers),
        save_outputs=config.save_outputs,
        network_name=network_name,
    )
    report.finish(settings.output_dir)
    quant_report = getattr(backend, "quant_report", None)  # the reference backend's open-backend report
    if quant_report is not None:
        log.info("%s; int8 mode approximates: %s", quant_report.summary(),
                 "; ".join(quant_report.approximations) or "nothing")
    return result


def main(argv: Optional[Sequence[str]] = None) -> int:
    config = parse_config(argv)
    configure_logging(config.verbose)
    result = run(with_demo_defaults(config))
    log.info("done: %d samples, %d tokens in %.1f s; LoadGen logs in %s",
             result.samples, result.tokens, result.wall_s, result.log_dir)
    from mlperf_llama2.report.summary import build_summary, render_table, write_summary

    summary = build_summary(result.log_dir)
    write_summary(result.log_dir, summary)
    print(render_table(summary), flush=True)
    if not result.ok:
        log.error("%s", result.failure_message())
        return EXIT_RUN_FAILED
    return 0
