"""main.py's flow: flags -> frozen RunConfig -> input checks -> LoadGen settings -> backend -> run.

Everything that can be wrong with the inputs (missing paths, dataset, user.conf, output directory,
model directory, weights that do not match config.json, quantization rules that reach no module) is
checked before the model loads, each as one clear line. Exit codes: 0 for a completed run, 1 when
samples failed to generate, 2 for bad input (via `run_cli`).
"""

from __future__ import annotations

import logging
import os
import shlex
import sys
from typing import TYPE_CHECKING, Optional, Sequence

from mlperf_llama2.backends import registry
from mlperf_llama2.config import RunConfig, build_parser
from mlperf_llama2.data.dataset import Dataset, load_dataset
from mlperf_llama2.errors import UserError, configure_logging, raise_if_interrupted

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
    if config.dataset_path is None:
        raise UserError("no dataset given: pass --dataset-path FILE (a processorca.py .pkl or .pkl.gz)")
    vocab_size = registry.check(config)  # the backend's own checks: checkpoint, quantization, servers
    if config.save_outputs is not None:
        from mlperf_llama2.run_dir import check_save_outputs

        check_save_outputs(config.save_outputs, config.overwrite)
    dataset = load_dataset(config.dataset_path, config.total_sample_count, vocab_size)
    if config.accuracy and dataset.targets is None:
        raise UserError(f"--accuracy: {config.dataset_path} has no reference answers (no 'output' column), so "
                        "evaluate-accuracy.py could not score the run; use the processorca.py pickle")
    if registry.selected_name(config) == "engine":
        from mlperf_llama2.backends.preflight import check_engine_capacity

        check_engine_capacity(config, dataset)
    from mlperf_llama2.loadgen.conf_file import check_conf_files

    check_conf_files(config.user_conf, config.audit_conf)  # LoadGen ignores lines it does not know; we refuse them
    return dataset


def with_demo_defaults(config: RunConfig) -> RunConfig:
    """No --model-path / --dataset-path: the prepared demo model and data (or one line on preparing them)."""
    # An API server or SUT nodes hold the model: no local checkpoint is needed then.
    needs_model = config.model_path is None and registry.entry(registry.selected_name(config)).holds_model
    needs_dataset = config.dataset_path is None
    if not (needs_model or needs_dataset):
        return config
    # Half a setting: the demo's other half is tokenized for (or by) another model, so the run would score a
    # model on prompts its tokenizer never made and print a ROUGE line that looks like a result.
    if needs_dataset and config.model_path is not None:
        raise UserError(f"--model-path {config.model_path} without --dataset-path: the demo dataset is tokenized for "
                        "the demo model; pass your model's processed dataset (processorca.py), or neither for the demo")
    if needs_model and not needs_dataset:
        raise UserError(f"--dataset-path {config.dataset_path} without --model-path: the demo model would run prompts "
                        "tokenized for another model; pass the checkpoint the dataset was made with, or neither "
                        "for the demo")
    from mlperf_llama2.demo.prepare import prepared_demo

    demo = prepared_demo(needs_model, needs_dataset)
    if needs_model:
        log.info("no --model-path: using the demo model %s", demo.model_dir)
    if needs_dataset:
        log.info("no --dataset-path: using the demo dataset %s", demo.dataset)
    return config.replace(model_path=demo.model_dir if needs_model else config.model_path,
                          dataset_path=demo.dataset if needs_dataset else config.dataset_path)


def _absolute(path: Optional[str]) -> Optional[str]:
    return None if path is None else os.path.abspath(path)


def _applied_quant_backend(config: RunConfig, backend) -> str:
    """The quantization backend that ran (--quant-backend auto resolved): the engine and a reference run with an
    open-backend report used ours; a reference run of a config without one used LiteML."""
    if not config.quant.enabled or config.quant.quant_backend != "auto":
        return config.quant.quant_backend
    if config.backend == "engine" or getattr(backend, "quant_report", None) is not None:
        return "open"
    return "liteml"


def _applied_quant_mode(config: RunConfig) -> str:
    """--quant-mode as applied: the engine's int8 mode with --int8-rules linear computes only the config's Linear
    rules, which the record must not pass off as the whole config's int8 mode."""
    quant = config.quant
    if not (quant.enabled and config.backend == "engine" and quant.quant_mode == "int8"):
        return quant.quant_mode
    mode = "int8-linear-rules-only" if quant.int8_rules == "linear" else "int8"
    dropped = _linear_rules_in_float(config)
    return f"{mode} (Linear rule(s) {', '.join(map(str, dropped))} not W8A8, kept in float)" if dropped else mode


def _linear_rules_in_float(config: RunConfig) -> list[int]:
    """Indices of the config's Linear rules that the engine's int8 mode does not compute (not W8A8 int8 as
    open_backend.int8_capable defines it, e.g. 4- or 16-bit): the Linears they name run in float."""
    from mlperf_llama2.checkpoint import check_checkpoint
    from mlperf_llama2.quant.llama_slots import slot_names
    from mlperf_llama2.quant.open_backend import int8_capable
    from mlperf_llama2.quant.yaml_config import load_rules

    rules = load_rules(config.quant.liteml_config)
    num_layers = check_checkpoint(config.model_path).dims.num_layers
    found = {rule.index for kind, name in slot_names(num_layers) if kind == "Linear"
             for rule in [rules.match(kind, name)] if rule is not None and rule.quantizers and not int8_capable(rule)}
    return sorted(found)


def _layout(config: RunConfig) -> dict:
    """run_info's tensor_parallel / data_parallel / devices: where this process's model runs (none recorded when
    --sut-nodes or an API server generates). Only the engine splits; other backends refuse the flags."""
    if config.dist.sut_nodes or config.backend == "api":
        return {}
    from mlperf_llama2.parallel.env import device_for_rank

    tp, dp = config.tensor_parallel, config.data_parallel
    return {"tensor_parallel": tp, "data_parallel": dp,
            "devices": tuple(device_for_rank(config.device, i) for i in range(tp * dp))}


def _loadgen_settings(effective) -> Optional[dict]:
    """The effective LoadGen values this run's checks were made on, and which line of which file set each."""
    if effective is None:
        return None
    return {"min_duration_ms": effective.min_duration_ms, "min_query_count": effective.min_query_count,
            "target_qps": effective.target_qps, "performance_issue_unique": effective.issue_unique,
            "accuracy_sample_count_override": effective.accuracy_count, "sources": dict(effective.sources)}


def run(config: RunConfig, observers: Sequence["RunObserver"] = ()) -> "RunResult":
    """Check the inputs, build LoadGen settings and the backend, run LoadGen; observers see each sample.

    The run owns `--output-log-dir` (mlperf_llama2.run_dir): locked while it runs, never beside an earlier
    run's results. Beside LoadGen's logs it also writes run_info.json, sample_timings.csv and summary.json
    (for the summary and plots), and it shows the live progress bar when stderr is a terminal.
    """
    dataset = check_inputs(config)
    from mlperf_llama2.loadgen.settings import build_test_settings_checked
    from mlperf_llama2.run_dir import claim_output_dir

    # LoadGen's settings as the run will use them, refused here when LoadGen could not run them (no query, a
    # query past memory, weeks), before --output-log-dir is claimed. Built once: a second FromConfig in a process
    # would not load LoadGen's built-in mlperf.conf (tests/test_main_cli.py).
    tested = build_test_settings_checked(config)
    # Locked for the whole run (a second run into it is refused); an earlier run's results are refused or,
    # with --overwrite, moved into previous-<time>/ before anything is written.
    with claim_output_dir(config.output_log_dir, config.overwrite):
        return _run_claimed(config, dataset, observers, tested)


def _run_claimed(config: RunConfig, dataset: Dataset, observers: Sequence["RunObserver"], tested) -> "RunResult":
    # LoadGen and the backends are imported only once the inputs are known to be good.
    from mlperf_llama2 import input_identity
    from mlperf_llama2.loadgen.runner import run_test
    from mlperf_llama2.loadgen.settings import build_settings
    from mlperf_llama2.report.observer import ReportObserver
    from mlperf_llama2.report.progress import progress_stream
    from mlperf_llama2.report.run_info import RunInfo, git_state, with_git_state, write_run_info

    settings = build_settings(config, tested)
    if config.output_cap_applied:
        log.warning("--max-new-tokens %d < 1024: outputs are capped; this is NOT a valid MLPerf run",
                    config.max_new_tokens)
    mode = "Interactive" if config.interactive and config.scenario == "Server" else config.scenario
    log.info("run: %s %s, %d samples, backend %s, %s on %s", mode, "accuracy" if config.accuracy else "performance",
             dataset.total_sample_count, registry.selected_name(config), config.dtype, config.device)
    raise_if_interrupted()  # a signal whose exception Python swallowed (one raised inside an import's callback)
    backend = registry.create_backend(config)
    raise_if_interrupted()
    # Absolute paths, so runs made in different directories compare; input_identity says what the files held.
    info = RunInfo(scenario=config.scenario, accuracy=config.accuracy, lg_model_name=config.lg_model_name,
                   model_path=_absolute(config.model_path), dataset_path=_absolute(config.dataset_path),
                   max_new_tokens=config.max_new_tokens, backend=config.backend, batch_size=config.batch_size,
                   device=config.device, dtype=config.dtype, user_conf=os.path.abspath(config.user_conf),
                   liteml_config=_absolute(config.quant.liteml_config), quantization=config.quant.quantization,
                   quant_backend=_applied_quant_backend(config, backend), quant_mode=_applied_quant_mode(config),
                   kv_cache_dtype=(getattr(backend, "kv_cache_dtype", None) or config.engine.kv_cache_dtype)
                   if config.backend == "engine" else None,
                   fp8_accumulation=config.engine.fp8_accumulation
                   if config.backend == "engine" and config.quant.fp8 else None,
                   **_layout(config), loadgen_settings=_loadgen_settings(settings.effective),
                   command=shlex.join(sys.argv))
    write_run_info(settings.output_dir, with_git_state(info, git_state()))
    input_identity.record(settings.output_dir, input_identity.collect(
        config.dataset_path, config.model_path, config.user_conf, config.audit_conf,
        config.quant.liteml_config, config.quant.calibration_scales))
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
        network_name=backend.network_name,
    )
    report.finish(settings.output_dir)
    quant_report = getattr(backend, "quant_report", None)  # the reference backend's open-backend report
    if quant_report is not None:
        log.info("%s; int8 mode approximates: %s", quant_report.summary(),
                 "; ".join(quant_report.approximations) or "nothing")
    from mlperf_llama2.report.summary import build_summary, write_summary

    write_summary(result.log_dir, build_summary(result.log_dir))  # inside the claim, like every file of the run
    return result


def main(argv: Optional[Sequence[str]] = None) -> int:
    config = parse_config(argv)
    configure_logging(config.verbose)
    result = run(with_demo_defaults(config))
    log.info("done: %d samples, %d tokens in %.1f s; LoadGen logs in %s",
             result.samples, result.tokens, result.wall_s, result.log_dir)
    from mlperf_llama2.report.summary import build_summary, render_table

    print(render_table(build_summary(result.log_dir)), flush=True)
    if not result.ok:
        log.error("%s", result.failure_message())
        return EXIT_RUN_FAILED
    return 0
