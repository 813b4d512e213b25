"""Data parallelism: M independent backends (engine replicas, each on its own device) behind one SUT.

`DataParallelBackend` is itself a `Backend`: each request goes to the replica with the fewest
outstanding tokens (`routing.LeastLoadedRouter`); an Offline query's requests are grouped per
replica and submitted together, so every replica batches its share. Results pass straight through
to the SUT's sink; a replica's failure fails only the requests it owns.
"""

from __future__ import annotations

import logging
from typing import Optional, Sequence

from mlperf_llama2.backends.base import Backend, GenerationRequest, ResultSink
from mlperf_llama2.parallel.routing import LeastLoadedRouter, request_cost

log = logging.getLogger(__name__)


class _ReplicaSink:
    """Forwards one replica's results and releases their cost in the router."""

    def __init__(self, owner: "DataParallelBackend") -> None:
        self.owner = owner

    def first_token(self, request_id: int, token: int) -> None:
        self.owner.sink.first_token(request_id, token)

    def complete(self, request_id: int, tokens: Sequence[int]) -> None:
        self.owner.router.release(request_id)
        self.owner.sink.complete(request_id, tokens)

    def fail(self, request_id: int, error: BaseException) -> None:
        self.owner.router.release(request_id)
        self.owner.sink.fail(request_id, error)


class DataParallelBackend(Backend):
    name = "data-parallel"

    def __init__(self, replicas: Sequence[Backend]) -> None:
        if not replicas:
            raise ValueError("data parallelism needs at least one replica")
        eos = {r.eos_token_id for r in replicas}
        if len(eos) != 1:
            raise ValueError(f"replicas disagree on the EOS id: {sorted(eos)}")
        self.replicas = list(replicas)
        self.router = LeastLoadedRouter(len(self.replicas))
        self.streams_first_token = all(r.streams_first_token for r in self.replicas)
        self.sink: Optional[ResultSink] = None
        self.submitted = [0] * len(self.replicas)  # requests sent to each replica (tests, logs)

    @property
    def eos_token_id(self) -> int:
        return self.replicas[0].eos_token_id

    @property
    def vocab_size(self) -> int | None:
        return self.replicas[0].vocab_size

    def start(self, sink: ResultSink) -> None:
        self.sink = sink
        for replica in self.replicas:
            replica.start(_ReplicaSink(self))

    def submit(self, requests: Sequence[GenerationRequest]) -> None:
        shares: list[list[GenerationRequest]] = [[] for _ in self.replicas]
        for req in requests:
            target = self.router.assign(req.request_id, request_cost(len(req.prompt), req.max_new_tokens))
            shares[target].append(req)
        for i, share in enumerate(shares):
            if share:
                self.submitted[i] += len(share)
                self.replicas[i].submit(share)

    def flush(self) -> None:
        for replica in self.replicas:
            replica.flush()

    def stop(self) -> None:
        errors = []
        for replica in self.replicas:
            try:
                replica.stop()
            except Exception as exc:  # noqa: BLE001 - stop every replica, then report the first failure
                errors.append(exc)
        log.info("data parallel: requests per replica %s", self.submitted)
        if errors:
            raise errors[0]
