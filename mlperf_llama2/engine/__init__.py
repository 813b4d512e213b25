"""The fast generation engine: continuous batching over a paged KV cache (token ids in, token ids out).

`sequence`, `block_manager` and `scheduler` are plain Python bookkeeping (no torch); `model_runner`
and `llama` hold every tensor; `llm_engine` ties them together as schedule -> run -> postprocess.
"""
