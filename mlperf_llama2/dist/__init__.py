"""Beyond one GPU: tensor-parallel shards in lockstep, data-parallel replicas, and SUT nodes over HTTP."""
