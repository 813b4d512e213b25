"""Per-step timing of an engine from outside, for tools/bench.py's Offline step log and Server points.

For each step: the gap between its launch and the next one (the step's share of the wall clock; in Server it
also holds any time the loop sat idle waiting for requests), the host time inside the runner's launch (queueing
the step's kernels or replaying its graph), and, with overlapped steps, the time the loop then waited for the
step's tokens (`StepOutput.tokens()`). Where the wait is near zero the GPU finished before the host asked: that
step was bound by the host (launches, scheduling, bookkeeping), and a faster GPU would not have shortened it.
The engine's `step()` calls are timed too: their sum is the loop's busy time (wall time less idle), which the
wait's share is taken of. Without overlapped steps `run` includes the GPU's time and the wait is 0.

`StepTimer(engine)` is a context manager that wraps the engine's `step` and the runner's launch while it is open.
`rows`: one list per step, [decode only (0/1), sequences, tokens, gap ms, decodes, launch ms, wait ms] (the first
five are bench.json's step-log columns); `summary()` the totals a run or a Server point reports.
"""

from __future__ import annotations

import time


class _TimedOutput:
    """A launched step's output whose `tokens()` wait is added to its row."""

    def __init__(self, output, row: list) -> None:
        self._output, self._row = output, row

    def tokens(self):
        t0 = time.perf_counter()
        tokens = self._output.tokens()
        self._row[6] += (time.perf_counter() - t0) * 1e3
        return tokens


class StepTimer:
    def __init__(self, engine) -> None:
        self.engine = engine
        self.rows: list[list] = []
        self._last = None  # (launch time, row) of the step launched last; its gap ends at the next launch
        self._name = "launch" if engine.overlap else "run"
        self._inner = self._step = None
        self.busy_ms = 0.0  # the engine's step() calls, summed

    def __enter__(self) -> "StepTimer":
        self._patches = [(self.engine.runner, self._name, self._timed), (self.engine, "step", self._timed_step)]
        self._saved = []
        for obj, name, wrapper in self._patches:
            self._saved.append((obj, name, vars(obj).get(name)))  # an instance attribute set before, else None
            inner = getattr(obj, name)
            if name == "step":
                self._step = inner
            else:
                self._inner = inner
            setattr(obj, name, wrapper)
        return self

    def __exit__(self, *exc) -> None:
        for obj, name, own in self._saved:
            if own is None:
                del obj.__dict__[name]  # the class's method again
            else:
                setattr(obj, name, own)

    def _timed_step(self, *args, **kwargs):
        t0 = time.perf_counter()
        try:
            return self._step(*args, **kwargs)
        finally:
            self.busy_ms += (time.perf_counter() - t0) * 1e3

    def _timed(self, batch):
        now = time.perf_counter()
        if self._last is not None:
            t0, row = self._last
            row[3] = (now - t0) * 1e3
            self.rows.append(row)
        row = [int(batch.is_decode_only), len(batch.items), batch.num_tokens, 0.0, batch.num_decodes, 0.0, 0.0]
        output = self._inner(batch)
        row[5] = (time.perf_counter() - now) * 1e3
        self._last = (now, row)
        return _TimedOutput(output, row) if self._name == "launch" else output

    def summary(self) -> dict:
        """Steps timed (the last launched one has no gap yet and is left out): mean gap and busy ms a step (busy:
        inside step(), so without idle time), mean launch ms, the share of the busy time the loop spent waiting
        for tokens, and the share of steps that did not wait (< 1 ms: bound by the host; None without overlapped
        steps)."""
        rows = self.rows
        if not rows:
            return {"steps": 0}
        overlapped = self._name == "launch"
        return {"steps": len(rows), "step_ms_mean": round(sum(r[3] for r in rows) / len(rows), 3),
                "busy_ms_mean": round(self.busy_ms / len(rows), 3),
                "launch_ms_mean": round(sum(r[5] for r in rows) / len(rows), 3),
                "wait_share": round(min(1.0, sum(r[6] for r in rows) / self.busy_ms), 3) if self.busy_ms else 0.0,
                "host_bound_steps": round(sum(r[6] < 1.0 for r in rows) / len(rows), 3) if overlapped else None}
