#!/bin/bash
# The int8 benchmark at the commit before the one-loader change (78cae62), for a same-machine comparison.
# Needs that commit checked out in .base (git worktree add .base 78cae62) and run with carry [".whl", ".base"].
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
cd .base && export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name --format=csv,noheader
timeout 330 python3 tools/bench.py --shape 70b --samples 1024 --ref-samples 0 --fidelity-prompts 0 --weights int8 --out "$OUT"/int8_base 2>&1 | tail -14
