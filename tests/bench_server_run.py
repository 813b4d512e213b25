#!/usr/bin/env python3
"""tools/bench_server.py's `ServerRuns` against a timed fake backend: two real LoadGen Server points, one process.

Usage: python bench_server_run.py WORKDIR QPS1,QPS2 TPOT1_MS,TPOT2_MS [--seconds S] [--tokens N] [--min-queries Q]
The fake backend reports each request's first token 2 ms after it arrives and its N tokens
(no EOS) TPOT ms per token later. Writes the measured points to WORKDIR/points.json.
"""

import argparse
import heapq
import json
import os
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools"))

import bench_server  # noqa: E402
from mlperf_llama2.backends.base import Backend  # noqa: E402
from mlperf_llama2.data.dataset import Dataset  # noqa: E402

TTFT_S = 0.002


class TimedBackend(Backend):
    """Answers on one timer thread: first token at arrival + TTFT_S, completion (tokens - 1) TPOTs later."""

    name = "timed"
    streams_first_token = True

    def __init__(self, tokens: int) -> None:
        self.tokens = tokens
        self.tpot_s = 0.001
        self._events: list[tuple[float, int, str]] = []
        self._cv = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False

    @property
    def eos_token_id(self) -> int:
        return 2

    def start(self, sink) -> None:
        self._sink, self._stopping = sink, False
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def submit(self, requests) -> None:
        now = time.monotonic()
        with self._cv:
            for r in requests:
                heapq.heappush(self._events, (now + TTFT_S, r.request_id, "first"))
                heapq.heappush(self._events, (now + TTFT_S + self.tpot_s * (self.tokens - 1), r.request_id, "done"))
            self._cv.notify()

    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._stopping and (not self._events or self._events[0][0] > time.monotonic()):
                    self._cv.wait(timeout=max(0.0, self._events[0][0] - time.monotonic()) if self._events else None)
                if self._stopping:
                    return
                _, request_id, kind = heapq.heappop(self._events)
            if kind == "first":
                self._sink.first_token(request_id, 7)
            else:
                self._sink.complete(request_id, [7] * self.tokens)

    def flush(self) -> None:
        pass

    def stop(self) -> None:
        with self._cv:
            self._stopping = True
            self._cv.notify()
        if self._thread is not None:
            self._thread.join()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("workdir")
    p.add_argument("qps")
    p.add_argument("tpot_ms")
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--tokens", type=int, default=8)
    p.add_argument("--min-queries", type=int, default=1)
    a = p.parse_args()
    backend = TimedBackend(a.tokens)
    dataset = Dataset(path="synthetic", prompts=tuple((1, 5 + i) for i in range(2048)), targets=None)
    runs = bench_server.ServerRuns(backend, dataset, bench_server.SERVER, a.seconds, a.workdir, a.min_queries)
    points = []
    for qps, tpot_ms in zip(a.qps.split(","), a.tpot_ms.split(",")):
        backend.tpot_s = float(tpot_ms) / 1000
        points.append(runs.measure(float(qps)))
    with open(os.path.join(a.workdir, "points.json"), "w") as fh:
        json.dump(points, fh)


if __name__ == "__main__":
    main()
