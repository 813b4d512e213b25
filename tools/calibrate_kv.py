"""Calibrate static scales with the engine alone: a config's every static quantizer, or K/V only (no 16-bit 70B).

With --liteml-config the model runs in int8 mode with every rule of the config (engine/whole_config.py) and
every static quantizer observes (the file the engine's and simulate's int8/simulate runs reuse); with --name
(e.g. fp8-kv) float weights and K/V ranges per layer and KV head. Prefills every prompt of the calibration
pickle one at a time and writes calibration_scales.safetensors
(docs/quantization.md, "Calibration"), which `main.py --calibration-scales FILE` and the engine's 8-bit
KV cache read.

    python tools/calibrate_kv.py --model-path DIR --calibration-path CAL.pkl --out FILE \
        (--liteml-config liteml_configs/w8a8_npm_v1_3_4.yaml | --name fp8-kv) [--device cuda:0]
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mlperf_llama2.errors import configure_logging, run_cli  # noqa: E402

DTYPES = ("float16", "bfloat16", "float32")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model-path", required=True)
    p.add_argument("--calibration-path", required=True, help="processorca calibration_*.pkl")
    p.add_argument("--out", required=True, help="the calibration_scales.safetensors to write")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--liteml-config", help="the config whose static scales these are (int8 mode, every rule as it says)")
    which.add_argument("--name", help="identity of a KV-only calibration, e.g. fp8-kv (float weights)")
    p.add_argument("--observer", choices=("MinMax", "MovingAverage"), default=None,
                   help="default: the config's K/V observer, else MinMax")
    p.add_argument("--quant-momentum", type=float, default=0.01, help="MovingAverage weight (default %(default)s)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=DTYPES, default=None, help="default float16 on CUDA, float32 on CPU")
    args = p.parse_args(argv)
    configure_logging(False)
    import torch

    from mlperf_llama2.engine.kv_calibration import calibrate_engine

    dtype = args.dtype or ("float16" if args.device.startswith("cuda") else "float32")
    calibrate_engine(args.model_path, args.calibration_path, args.out, args.liteml_config or args.name,
                     args.device, getattr(torch, dtype), args.observer, args.quant_momentum)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
