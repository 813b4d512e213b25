"""A/B: SiLU-up with div_rn (before) vs fused_triton._div_elem (after), 70B decode shapes, CUDA-graph-free do_bench."""
import json, os, sys
import torch, triton, triton.language as tl
sys.path.insert(0, os.getcwd())
from mlperf_llama2.engine import fused_triton as F
from mlperf_llama2.engine import whole_config_triton as W

@triton.jit
def _silu_mul_divrn(gu_ptr, out_ptr, n_cols, stride_gu, stride_out, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < n_cols
    g = tl.load(gu_ptr + row * stride_gu + cols, mask=mask, other=0.0)
    u = tl.load(gu_ptr + row * stride_gu + n_cols + cols, mask=mask, other=0.0)
    g32 = g.to(tl.float32)
    act = tl.math.div_rn(g32, 1.0 + F._exp(-g32, False)).to(g.dtype)
    tl.store(out_ptr + row * stride_out + cols, (act.to(tl.float32) * u.to(tl.float32)).to(g.dtype), mask=mask)

res = {"device": torch.cuda.get_device_name()}
for t in (256, 512):
    gu = torch.randn(t, 2 * 28672, device="cuda", dtype=torch.float16) * 3
    out = torch.empty(t, 28672, device="cuda", dtype=torch.float16)
    new = lambda: F.silu_mul(gu)
    old = lambda: _silu_mul_divrn[(t, triton.cdiv(28672, 1024))](gu, out, 28672, gu.stride(0), out.stride(0), BLOCK=1024, num_warps=4)
    old(); a = F.silu_mul(gu); same = torch.equal(a, out)
    ms_new = triton.testing.do_bench(new, rep=200); ms_old = triton.testing.do_bench(old, rep=200)
    ms_q8 = triton.testing.do_bench(lambda: W.silu_mul_q8(gu, torch.tensor(0.05, device="cuda"), torch.tensor([0.05, 0.05], device="cuda")), rep=200)
    res[f"T{t}"] = {"silu_mul_div_elem_ms": ms_new, "silu_mul_div_rn_ms": ms_old, "bit_equal": same, "silu_mul_q8_div_elem_ms": ms_q8}
    print(t, res[f"T{t}"], flush=True)
json.dump(res, open(os.path.join(os.environ.get("OUT", "."), "silu_ab.json"), "w"), indent=1)
