"""Entry point of a tensor-parallel worker (rank >= 1): `python -m mlperf_llama2.parallel.tp_worker SPEC_JSON`.

Started by rank 0 (`tp_group.spawn_workers`); joins the group, loads its shard, then runs rank 0's
steps in lockstep until told to stop. Exits non-zero (with the error logged) when anything fails.
"""

from __future__ import annotations

import json
import logging
import sys

import torch.distributed as dist

from mlperf_llama2.parallel.lockstep import worker_loop
from mlperf_llama2.parallel.tp_group import ShardSpec, build_runner, init_group
from mlperf_llama2.errors import configure_logging

log = logging.getLogger(__name__)


def main(argv: list[str]) -> int:
    configure_logging(False)
    spec = ShardSpec(**json.loads(argv[0]))
    try:
        ctrl = init_group(spec)
        runner, _, _ = build_runner(spec, ctrl)
        worker_loop(runner, ctrl)
    except Exception:  # noqa: BLE001 - a worker has no one to raise to: log and exit non-zero
        log.exception("tensor-parallel rank %d failed", spec.rank)
        return 1
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
