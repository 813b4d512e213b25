"""One LoadGen run end to end: start the SUT, construct SUT and QSL, run the test, tear down.

Returns a `RunResult` (log directory, samples, tokens, wall time, failures) that the entry point
turns into an exit code; observers get per-sample callbacks for progress display. StartTest runs
so that Ctrl-C / SIGTERM end the run within seconds (`interrupt.run_interruptibly`). LoadGen out of
memory while it generates its queries (`std::bad_alloc`, a MemoryError here) ends the process with
one line and exit 2: LoadGen's threads are left in a state that crashes Python's normal exit.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import mlperf_loadgen as lg

from mlperf_llama2.backends.base import Backend
from mlperf_llama2.data.dataset import Dataset
from mlperf_llama2.errors import EXIT_USER_ERROR
from mlperf_llama2.loadgen.effective import check_run_size
from mlperf_llama2.loadgen.interrupt import run_interruptibly, terminate_children, write_stop_note
from mlperf_llama2.loadgen.settings import LoadGenSettings
from mlperf_llama2.loadgen.sut import RunObserver, SampleFailure, sut_class
from mlperf_llama2.report.timings import write_atomically

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunResult:
    log_dir: str
    scenario: str
    samples: int
    tokens: int
    wall_s: float
    failures: tuple[SampleFailure, ...] = field(default=())
    skipped: int = 0  # answered empty without generating, once the run had stopped

    @property
    def ok(self) -> bool:
        return not self.failures

    def failure_message(self) -> str:
        first = self.failures[0]
        stopped = f", {self.skipped} more not generated as the run stopped" if self.skipped else ""
        return (f"{len(self.failures)} sample(s) failed to generate (first: QSL index {first.sample_index}: "
                f"{first.error}){stopped}; the run is invalid, see the log above and {self.log_dir}")


def _noop(_samples) -> None:
    """LoadSamplesToRam / UnloadSamplesFromRam: the dataset is already in memory."""


def run_test(
    scenario: str,
    backend: Backend,
    dataset: Dataset,
    settings: LoadGenSettings,
    *,
    audit_conf: str = "audit.config",
    max_new_tokens: int,
    observers: Sequence[RunObserver] = (),
    save_outputs: Optional[str] = None,
    network_name: Optional[Callable[[], str]] = None,
) -> RunResult:
    """Run LoadGen against `backend` and return what happened. LoadGen writes its logs to settings.output_dir.

    With `network_name` this is LoadGen's node of a multi-node run: the SUT is constructed as a
    query dispatch library (`ConstructQDL`, LoadGen over the network) whose name callback it is.
    """
    if settings.effective is not None:  # a Server accuracy run's length depends on the dataset's size
        check_run_size(settings.effective, samples=dataset.total_sample_count)
    sut = sut_class(scenario)(
        backend, dataset, max_new_tokens=max_new_tokens, observers=observers, keep_outputs=save_outputs is not None
    )
    sut.start()
    if network_name is None:
        lg_sut = lg.ConstructSUT(sut.issue_queries, sut.flush_queries)
    else:
        lg_sut = lg.ConstructQDL(sut.issue_queries, sut.flush_queries, network_name)
    lg_qsl = lg.ConstructQSL(dataset.total_sample_count, dataset.perf_sample_count, _noop, _noop)
    start = time.monotonic()
    out_of_memory = None
    interrupted: Optional[KeyboardInterrupt] = None
    try:
        log.info("starting LoadGen: %s, %s", scenario, "accuracy" if settings.test.mode == lg.TestMode.AccuracyOnly
                 else "performance")
        run_interruptibly(
            lambda: lg.StartTestWithLogSettings(lg_sut, lg_qsl, settings.test, settings.log, audit_conf),
            abort=sut.abort,
            stop=sut.stop,
            log_dir=settings.output_dir,
        )
    except MemoryError as exc:
        out_of_memory = exc
    except KeyboardInterrupt as exc:  # Interrupted: a signal stopped the run; re-raised after the teardown
        interrupted = exc
    finally:
        wall_s = time.monotonic() - start
        sut.stop()
        lg.DestroyQSL(lg_qsl)
        (lg.DestroySUT if network_name is None else lg.DestroyQDL)(lg_sut)
    if out_of_memory is not None:
        exit_out_of_memory(out_of_memory, settings.output_dir)
    responder = sut.responder
    if interrupted is not None:
        if save_outputs is not None:  # else an earlier run's file (--overwrite) would pass for this run's
            write_outputs(save_outputs, scenario, responder.outputs, stopped=responder.abort_reason or "interrupted")
        raise interrupted
    if responder.abort_reason is not None:
        write_stop_note(settings.output_dir, responder.abort_reason)
    if responder.in_flight:
        log.error("%d sample(s) were never answered", responder.in_flight)
    if responder.first_token_mismatches:
        log.warning("%d response(s) did not begin with the first token reported to LoadGen: their TTFT and TPOT "
                    "in LoadGen's logs do not time these outputs", responder.first_token_mismatches)
    if save_outputs is not None:
        write_outputs(save_outputs, scenario, responder.outputs, stopped=responder.abort_reason)
    return RunResult(
        log_dir=settings.output_dir,
        scenario=scenario,
        samples=responder.samples_done,
        tokens=responder.tokens_done,
        wall_s=wall_s,
        failures=tuple(responder.failures),
        skipped=responder.skipped,
    )


def exit_out_of_memory(exc: MemoryError, log_dir: str) -> None:
    """One line and exit 2, past Python's exit: after a std::bad_alloc in StartTest, LoadGen's threads make
    the interpreter's shutdown abort (SIGABRT, or SIGSEGV in main.py) instead of exiting."""
    write_stop_note(log_dir, f"LoadGen ran out of memory: {exc}")
    terminate_children()
    for handler in logging.getLogger().handlers:
        handler.flush()
    prog = os.path.basename(sys.argv[0]) or "mlperf_llama2"
    print(f"{prog}: error: LoadGen ran out of memory during the test ({exc or 'MemoryError'}); it generates every "
          "query up front: lower target_qps, min_duration or min_query_count in the user.conf (logs so far in "
          f"{log_dir})", file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(EXIT_USER_ERROR)


def write_outputs(path: str, scenario: str, outputs: dict[int, list[int]], stopped: Optional[str] = None) -> None:
    """All outputs in one JSON file: {"scenario", "outputs": {qsl_index: [token ids]}} (first response per index);
    a stopped run's file also has "run_stopped": why (its outputs are those generated before the stop)."""
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    payload = {"scenario": scenario, "outputs": {str(k): v for k, v in sorted(dict(outputs).items())}}
    if stopped is not None:
        payload["run_stopped"] = stopped
        log.warning("--save-outputs %s: the run was stopped (%s); only the %d outputs generated before are in it",
                    path, stopped, len(outputs))
    write_atomically(path, lambda f: json.dump(payload, f))  # a stopped write leaves no half file
    log.info("wrote %d outputs to %s", len(outputs), path)
