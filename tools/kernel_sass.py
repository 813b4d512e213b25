"""Compile a project Triton kernel for a GPU architecture on any machine (no GPU needed) and report what the GPU would
run: registers per thread, stack (spills), shared memory, the instruction count and mix, and the per-element slow
paths (`FCHK` + `CALL`: an IEEE division's check and its slow-path call). Triton's wheel carries ptxas, cuobjdump
and nvdisasm, so this works wherever `import triton` does.

Kernel work has few GPU minutes: this finds spills, divisions in inner loops and register pressure before a GPU call
(session 16 found the whole-config kernels' serial div_rn branches and the prefill's 255-register spill this way).

  python3 tools/kernel_sass.py mlperf_llama2.engine.whole_config_decode_triton:_pv_kernel \\
      --const GROUP=8 BLOCK_G=16 BLOCK_H=64 HEAD_DIM=128 BLOCK_SIZE=16 BLOCK_N=128 HAS_MASK_Q=1 HAS_OUT_Q=1 \\
              DT=float16 INTERPRET=0 VEC_TABLE=1 SCORES=1 \\
      --ptr q_ptr=i8 qs_ptr=fp32 k_cache_ptr=i8 v_cache_ptr=i8 block_tables_ptr=i32 context_lens_ptr=i32 \\
            scales_ptr=fp32 m_ptr=fp32 l_ptr=fp32 \\
      --num-warps 4 --num-stages 3

Arguments: every `*_ptr` parameter is a pointer (fp16 unless --ptr says otherwise), `stride*` / `num_*` / `n_*`
integers are i32, other runtime parameters fp32. Pointers and the integer parameters are marked divisible by 16, as
Triton's JIT specializes them at launch for the shapes the engine passes (without it, loads are not vectorized and
the report is pessimistic); `--no-divisibility` turns that off. DT=float16 / bfloat16 / float32 becomes the Triton
dtype; other --const values are Python literals (1/0 for booleans are fine).
"""

from __future__ import annotations

import argparse
import ast
import collections
import importlib
import inspect
import json
import os
import re
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mlperf_llama2.errors import UserError, run_cli  # noqa: E402

INT_PREFIXES = ("stride", "num_", "n_")


def parse_pairs(items, what: str) -> dict:
    out = {}
    for item in items or ():
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise UserError(f"kernel_sass: {what} must be NAME=VALUE, got {item!r}")
        out[name] = value
    return out


def const_value(text: str):
    import triton.language as tl

    if text in ("float16", "bfloat16", "float32"):
        return getattr(tl, text)
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        raise UserError(f"kernel_sass: constexpr value {text!r} is not a Python literal or a float dtype")


def load_kernel(spec: str):
    module_name, sep, name = spec.partition(":")
    if not sep:
        raise UserError(f"kernel_sass: give the kernel as module:name, got {spec!r}")
    try:
        kernel = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError) as exc:
        raise UserError(f"kernel_sass: cannot load {spec}: {exc}")
    if not hasattr(kernel, "arg_names"):
        raise UserError(f"kernel_sass: {spec} is not a @triton.jit kernel")
    return kernel


def signature(kernel, consts: dict, ptrs: dict, divisibility: bool):
    unknown = (set(consts) | set(ptrs)) - set(kernel.arg_names)
    if unknown:
        raise UserError(f"kernel_sass: {kernel.__name__} has no parameter {sorted(unknown)}; it takes "
                        f"{', '.join(kernel.arg_names)}")
    sig, attrs = {}, {}
    for i, name in enumerate(kernel.arg_names):
        if name in consts:
            sig[name] = "constexpr"
        elif name.endswith("_ptr"):
            sig[name] = "*" + ptrs.get(name, "fp16")
        elif name.startswith(INT_PREFIXES):
            sig[name] = "i32"
        else:
            sig[name] = "fp32"
        if divisibility and sig[name] != "constexpr" and (sig[name].startswith("*") or sig[name] == "i32"):
            attrs[(i,)] = [["tt.divisibility", 16]]
    missing = [n for n in kernel.arg_names if sig[n] == "constexpr" and n not in consts]
    if missing:
        raise UserError(f"kernel_sass: give every constexpr: {missing}")
    return sig, attrs


def constexpr_names(kernel) -> list:
    """The kernel's tl.constexpr parameters (from its annotations)."""
    return [p.name for p in kernel.params if p.is_constexpr]


def report(kernel, consts: dict, ptrs: dict, arch: int, num_warps: int, num_stages: int,
           divisibility: bool = True, fp_fusion: bool = True) -> dict:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    defaults = {p.name: p.default for p in kernel.params
                if p.is_constexpr and p.name not in consts and p.default is not inspect.Parameter.empty}
    consts = {**defaults, **consts}  # a constexpr with a default (e.g. PDL=False) takes it
    missing = [n for n in constexpr_names(kernel) if n not in consts]
    if missing:
        raise UserError(f"kernel_sass: give every constexpr of {kernel.__name__} with --const: {missing}")
    sig, attrs = signature(kernel, consts, ptrs, divisibility)
    src = ASTSource(fn=kernel, signature=sig, constexprs=consts, attrs=attrs)
    compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32),
                              options=dict(num_warps=num_warps, num_stages=num_stages,
                                           enable_fp_fusion=fp_fusion))
    tools = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
    with tempfile.TemporaryDirectory() as tmp:
        cubin = os.path.join(tmp, "kernel.cubin")
        with open(cubin, "wb") as fh:
            fh.write(compiled.asm["cubin"])
        sass = subprocess.run([os.path.join(tools, "nvdisasm"), "-c", cubin], capture_output=True, text=True,
                              check=True).stdout
        usage = subprocess.run([os.path.join(tools, "cuobjdump"), "-res-usage", cubin], capture_output=True,
                               text=True, check=True).stdout
    res = re.search(r"REG:(\d+).*?STACK:(\d+).*?SHARED:(\d+).*?LOCAL:(\d+)", usage)
    ops = re.findall(r"^\s+/\*[0-9a-f]+\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]+)", sass, re.M)
    mix = collections.Counter(op.split(".")[0] for op in ops)
    return {"kernel": kernel.__name__, "arch": f"sm_{arch}", "num_warps": num_warps, "num_stages": num_stages,
            "registers": int(res[1]) if res else None, "stack_bytes": int(res[2]) if res else None,
            "shared_bytes": int(res[3]) if res else None, "local_bytes": int(res[4]) if res else None,
            "instructions": len(ops), "division_slow_paths": mix.get("FCHK", 0), "calls": mix.get("CALL", 0),
            "tensor_core_ops": sum(v for k, v in mix.items() if k.endswith("MMA") or k.startswith("HGMMA")),
            "mix": dict(mix.most_common()), "sass": sass}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("kernel", help="module:name of a @triton.jit kernel")
    ap.add_argument("--const", nargs="*", default=[], metavar="NAME=VALUE", help="constexpr values")
    ap.add_argument("--ptr", nargs="*", default=[], metavar="NAME=TYPE", help="pointer element types (fp16 default)")
    ap.add_argument("--arch", type=int, default=90, help="compute capability (90: H100/H200)")
    ap.add_argument("--num-warps", type=int, default=4)
    ap.add_argument("--num-stages", type=int, default=2)
    ap.add_argument("--no-divisibility", action="store_true")
    ap.add_argument("--no-fp-fusion", action="store_true",
                    help="compile as launched with enable_fp_fusion=False (no mul+add contracted into an fma: the "
                         "elementwise and 8-bit GEMM kernels that round as eager torch does)")
    ap.add_argument("--sass", default=None, help="also write the disassembly here")
    ap.add_argument("--json", default=None, help="also write the report here")
    args = ap.parse_args(argv)
    try:
        import triton  # noqa: F401
    except ImportError:
        raise UserError("kernel_sass: needs triton importable (pip install triton: it carries ptxas and nvdisasm)")
    if os.environ.get("TRITON_INTERPRET") == "1":
        raise UserError("kernel_sass: unset TRITON_INTERPRET (the interpreter compiles nothing)")
    kernel = load_kernel(args.kernel)
    consts = {k: const_value(v) for k, v in parse_pairs(args.const, "--const").items()}
    result = report(kernel, consts, parse_pairs(args.ptr, "--ptr"), args.arch, args.num_warps, args.num_stages,
                    not args.no_divisibility, not args.no_fp_fusion)
    sass = result.pop("sass")
    print(f"{result['kernel']} {result['arch']} warps {result['num_warps']} stages {result['num_stages']}: "
          f"{result['registers']} registers, stack {result['stack_bytes']} B, shared {result['shared_bytes']} B, "
          f"{result['instructions']} instructions, {result['division_slow_paths']} division slow-path checks, "
          f"{result['tensor_core_ops']} tensor-core ops")
    print("mix (top 20): " + ", ".join(f"{k} {v}" for k, v in list(result["mix"].items())[:20]))
    if args.sass:
        with open(args.sass, "w") as fh:
            fh.write(sass)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
