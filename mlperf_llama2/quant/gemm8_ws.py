"""Warp-specialised, persistent Hopper GEMM for 8-bit operands (FP8 E4M3 or int8), written in Gluon.

    out[m, n] = acc[m, n] * s_x[m] * s_w[n]  (+ bias[n]),   acc = sum_k qx[m, k] * qw[n, k]

The same contract and the same numbers as `gemm8_triton.gemm8` (int8: exact int32 sums; fp8 with promotion:
each 128-element chunk of K summed inside the tensor core from zero, the chunks joined by float32 adds in
K order; then the float32 rescale in the order acc * s_x * s_w (+ bias), each operation rounded on its own:
compiled with enable_fp_fusion=False, as gemm8 is). What differs is the schedule, which plain
Triton cannot express on sm_90 (tools/kernel_sass.py shows why: Triton's pipeliner makes a warpgroup MMA
asynchronous only when its fp32 result feeds the next MMA, so both the promoted fp8 loop and every int8 loop
wait for each MMA to finish before issuing the next: `warp_group_dot_wait {pendings = 0}`):

* one loader warp feeds a ring of STAGES shared-memory slots by TMA (mbarriers `ready` / `empty`), and runs
  ahead into the next output tile while the MMA warps finish the epilogue of this one;
* the MMA warps (two warpgroups, 128 rows; or one, 64 rows; or two of 128 rows each, a 256-row tile) keep one
  MMA group in flight while the CUDA cores work: for fp8 with promotion the tile's columns are cut into SPLIT
  groups and the float32 add of one group's chunk overlaps the MMA of the next group (SPLIT=1: two whole-tile
  partial sums alive, SPLIT=2: half-tile ones; SPLIT=1 at depth 2, the default above M 192, issues the next
  chunk's MMA before waiting for the previous one, two groups in flight); a 128-row partition (the 256-row
  tile) has registers for one half-tile piece only, so it adds each piece after its MMA and the other
  partition's MMAs fill the gap; int8
  and unpromoted fp8 chain their MMAs on one accumulator with `wgmma.wait_group 1`, as Triton does for fp32
  accumulators only;
* persistent grid (one program per SM), tiles in the grouped order of `gemm8_triton._tile_coords`; the output
  goes through shared memory and a TMA store that completes during the next tile's main loop.

Status: compiled for sm_90 on a CPU (tests/test_gemm8_ws.py checks registers, no spills and the in-loop
waits in the SASS); bit for bit equal to `gemm8_triton.gemm8` on an H100 (tests/test_gemm8_ws_gpu.py, both
partition modes) and measured there (tools/bench_gemm.py kernels ws_*, docs/engine.md "The 8-bit GEMM"): the
engine's int8 and FP8 GEMM on sm_90 (`--engine-gemm auto`). No TRITON_INTERPRET path: Gluon has no interpreter.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Optional

import torch
import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor  # host descriptors (host_descriptor)
from triton.experimental.gluon.language.nvidia.hopper import fence_async_shared, mbarrier, tma, warpgroup_mma, \
    warpgroup_mma_wait

from mlperf_llama2.engine import pdl
from mlperf_llama2.engine.launch_cache import launch
from mlperf_llama2.errors import UserError
from mlperf_llama2.quant.gemm8_triton import MAX_PROMOTE, _num_sms, check_args

MMA_WORKER_REGS = gl.constexpr(232)  # the second MMA partition (two-partition mode), as the first gets
LOADER_REGS = gl.constexpr(40)  # the TMA warp needs scalars only; the MMA warps get the registers it gives back


@dataclasses.dataclass(frozen=True)
class WsConfig:
    """One launch: BM x BN output tile (BM = 16 x warps of the MMA partition), BK = 128 = the promotion chunk,
    STAGES shared-memory slots, SPLIT column groups for the promoted fp8 pipeline (1 or 2)."""

    bm: int = 128
    bn: int = 128
    stages: int = 5
    split: int = 1
    group_m: int = 8
    bk: int = 128
    wgs: int = 1  # MMA partitions: 1 (all BM rows, BM / 16 warps) or 2 (two 4-warp partitions of BM / 2 rows)
    depth: int = 1  # promoted fp8, SPLIT 1: MMA groups a partition keeps in flight (1 or 2, _mma_promote1_deep)

    @property
    def tag(self) -> str:
        """tools/bench_gemm.py's tile suffix: BMxBNsSTAGESpSPLIT[wWGS][gGROUP_M][dDEPTH] (defaults left out)."""
        return (f"{self.bm}x{self.bn}s{self.stages}p{self.split}" + (f"w{self.wgs}" if self.wgs != 1 else "")
                + (f"g{self.group_m}" if self.group_m != 8 else "") + (f"d{self.depth}" if self.depth != 1 else ""))

    @property
    def warps(self) -> int:
        """The kernel's num_warps = its default (first MMA) partition's warps."""
        return 4 if self.wgs == 2 else self.bm // 16

    @property
    def rows(self) -> int:
        """Rows of the tile one MMA partition computes."""
        return self.bm // self.wgs

    def smem_bytes(self, out_bytes: int = 2) -> int:
        """The operand ring plus the output tile(s) (`out_bytes` a value) plus barriers, rounded up."""
        return self.stages * (self.bm + self.bn) * self.bk + self.bm * self.bn * out_bytes + 1024

    def maxnreg(self) -> int:
        """Registers per thread asked at launch: the loader's warpgroup keeps LOADER_REGS and the MMA warps
        receive the rest of the 64 K register file (setmaxnreg), 232 for two warpgroups, 256 for one."""
        total_warps = self.warps * self.wgs + 4  # MMA warps + the loader's warpgroup
        return min(256, 65536 // (32 * total_warps) // 8 * 8)


# Candidates for tools/bench_gemm.py's sweep: shared memory <= 227 KB with a 16-bit output, no spills
# (tests/test_gemm8_ws.py compiles every one). TMA boxes must be powers of two; a 128 x 256 tile cannot hold the
# promoted pipeline's partial sums in registers (256 a thread), hence 128 x 128 there.
# 256 x 128 (two partitions of 128 rows, half-tile pieces one at a time: 192 registers of sums and a piece) reads
# 25% fewer operand bytes from L2 per output than 128 x 128, but its 64-wide MMAs read 36% more from shared
# memory per flop and it has 3 stages: measured slower than the default up to M 2,048 and faster from 4,096, but
# there behind cuBLASLt (H100, a decoder layer's four Linears: 0.51 vs 0.39 ms at M 256, 1.42 vs 1.31 at 1,024,
# 5.84 vs 6.09 at 4,096 (cuBLASLt 5.45), 11.88 vs 12.80 at 8,192 (11.19); bench_gemm_t256_70b_h100.json).
# 128 x 256 (two 64-row partitions, 64 x 128 pieces one at a time, 3 stages) reads 25% fewer L2 bytes per flop than
# 128 x 128 at the same shared-memory reads per flop: bit-for-bit on an H100 but not faster (five 70B shapes, two
# rounds, mean TOPS 1,223 / 1,285 / 1,285 / 1,291 at M 512 / 1,024 / 2,048 / 4,096 against the default's 1,274 /
# 1,365 / 1,299 / 1,336; bench_gemm_t128x256_70b_h100.json): with the 256 x 128 result, L2 is not the limiter.
# 64 x 64 (8 stages): at M <= 64 the 64 x 128 tile gives o_proj and down_proj (N 8,192) 64 programs and qkv 80,
# fewer than the 132 SMs; o_proj and qkv then read their weights at 2.3-2.4 TB/s against 2.6-2.7 for down_proj
# (long K) and gate_up (448 programs) (H100, M 64, bench_gemm_tiles_70b_h100.json). Half-width tiles double the
# programs streaming weights. Measured (H100, bench_gemm_smalln_70b_h100.json): at M 64 it gains 2-6% on o_proj,
# gate_up and down_proj but loses 18% on qkv, and at M 96-128 it loses 10-30% on every shape: not a default.
CONFIGS = {
    "fp8_promote": [WsConfig(128, 128, 5, 1), WsConfig(128, 128, 6, 1), WsConfig(128, 128, 5, 2),
                    WsConfig(64, 128, 6, 1), WsConfig(128, 128, 6, 1, wgs=2), WsConfig(128, 128, 6, 2, wgs=2),
                    WsConfig(256, 128, 3, 2, wgs=2), WsConfig(128, 256, 3, 2, wgs=2), WsConfig(64, 64, 8, 1),
                    WsConfig(128, 128, 6, 1, wgs=2, depth=2), WsConfig(64, 128, 6, 1, depth=2),
                    WsConfig(128, 128, 6, 1, depth=2)],
    "fast": [WsConfig(128, 256, 3, 1), WsConfig(128, 128, 6, 1), WsConfig(64, 256, 4, 1), WsConfig(64, 128, 6, 1),
             WsConfig(128, 256, 3, 1, wgs=2), WsConfig(128, 128, 6, 1, wgs=2), WsConfig(64, 64, 8, 1)],
}
# The tile per family and batch size: (largest M, tile), the first that holds M wins. From the H100 sweeps
# (docs/results/bench_gemm_ws_70b_h100.json, bench_gemm_w2_70b_h100.json, bench_gemm_smallm_70b_h100.json,
# bench_gemm_tiles_70b_h100.json; the 70B shapes, a decoder layer's four Linears): 64-row tiles up to M 192 for
# promoted fp8 and int8 (M 16-64: 0.32-0.33 ms against 0.38-0.42 for cuBLASLt and 0.38 for int8's former
# 64 x 256 tile; M 192: 0.41-0.44 against 0.50-0.52 for 128-row tiles); above, promoted fp8 with two MMA
# partitions (M 256: 0.380 against cuBLASLt's 0.420, M 4,096: 5.59 against 5.67; in the FP8 decode step of 256
# sequences, 20 layers, GEMM 8.05 against cuBLASLt's 8.51 ms, the mixed step 21.5 against 26.5) and int8
# 128 x 128 with 6 stages, one partition (two are faster alone at M 256-1,024 but the whole-config decode step's
# GEMMs took 7.67 ms with them against 7.49: not the default until a same-call A/B says so); unpromoted fp8
# (--fp8-accumulation fast) like promoted: 64 x 128 up to M 128, then 128 x 128 with two partitions (H100, a
# layer's four Linears, docs/results/bench_gemm_fasttiles_70b_h100.json: 0.374 ms at M 256 against 0.462 for the
# former 128 x 256 default, 1.24 against 1.25 at 1,024, 4.99 against 5.12 at 4,096; the FP8 decode step's GEMMs
# of 256 sequences, 20 layers, 7.76 ms against 9.42 with 128 x 256 and 8.0-8.2 promoted).
# GROUP_M (tile rows sweeping the N tiles together), promoted fp8 above M 2,048: 4 instead of 8. Three rounds in
# rotated order (H100, bench_gemm_groupm3_70b_h100.json; one sweep's same-tile repeats differ by up to 10%):
# at M 4,096 / 8,192 gate_up 1,356 / 1,341 TOPS against 1,173 / 1,000, down_proj 1,322 / 1,264 against
# 1,137 / 1,135, lm_head +13% / +27%; at 2,048 +4% over a layer (qkv -6%, gate_up +6%), at 1,024 level; in the
# 20-layer step profile's mixed step of 1,476 tokens level (45.5-48.3 ms GEMM both, gprof_* files). GROUP_M 1-2
# lose 10-45% everywhere; 16-32 lose from 2,048. Unpromoted fp8 loses 3-13% with 4, int8 is level: both keep 8.
# Steps above 2,048 tokens are an Offline run's fill and its largest chunks (~18% of the H200 FP8 run's time).
# Depth 2 (two MMA groups in flight per partition) for the promoted tile above M 192, one decoder layer's four
# Linears against depth 1 (H100, three rounds each, bench_gemm_depth2_70b_h100.json, bench_gemm_depth2ab_70b_h100.json):
# 3.3 / 2.2 / 2.1 / 6.6% faster at M 256 / 512 / 1,024 / 2,048; and at depth 2 GROUP_M 8 beats the former 4 above
# M 2,048 (M 4,096: 5.12 / 5.15 ms against 5.28 / 5.38 in two calls, 5.32 / 5.40 at depth 1; M 8,192: 10.79 against
# 10.76, depth 1 11.21), so one tile serves every M above 192. End to end (bench.py, 70B FP8 at 20 of 80 layers,
# 512 samples, same H100 call): 5,673 -> 5,902 tok/s, steady 8,757 -> 9,026. At M 64-192 the 64 x 128 tile at
# depth 2 is level with depth 1 (kept at 1).
TILES = {
    "fp8_promote": [(192, WsConfig(64, 128, 6, 1)), (None, WsConfig(128, 128, 6, 1, wgs=2, depth=2))],
    "int8": [(192, WsConfig(64, 128, 6, 1)), (None, WsConfig(128, 128, 6, 1))],
    "fp8_fast": [(128, WsConfig(64, 128, 6, 1)), (None, WsConfig(128, 128, 6, 1, wgs=2))],
}
BEST = {family: tiles[-1][1] for family, tiles in TILES.items()}  # the large-batch tile of each family


def default_config(m: int, kind: str, promote: bool, out_bytes: int = 2) -> WsConfig:
    """The measured tile for this kind and M (TILES); fewer stages where a wider output tile (float32: a float32
    model in int8 mode) needs the shared memory."""
    family = "fp8_promote" if promote else "int8" if kind == "int8" else "fp8_fast"
    cfg = next(tile for largest, tile in TILES[family] if largest is None or m <= largest)
    while cfg.smem_bytes(out_bytes) > 227 * 1024 and cfg.stages > 2:
        cfg = dataclasses.replace(cfg, stages=cfg.stages - 1)
    return cfg


@gluon.constexpr_function
def _instr_n(bn, is_fp8):
    """Widest wgmma N that divides the tile's (or column group's) width: fp8 any multiple of 8 up to 256,
    int8 only the listed widths (PTX ISA, wgmma.mma_async shapes for .s8)."""
    allowed = range(256, 7, -8) if is_fp8 else (224, 208, 192, 176, 160, 144, 128, 112, 96, 80, 64, 48, 32, 24, 16, 8)
    for n in allowed:
        if n <= bn and bn % n == 0:
            return n
    raise ValueError(f"no wgmma width divides {bn}")


@gluon.constexpr_function
def _mma_layout(warps, bn, is_fp8):
    """The accumulator of a partition of `warps` warps (16 rows each per m64 MMA; a 128-row piece on 4 warps
    repeats the layout twice along M: two MMAs per chunk)."""
    return gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[warps, 1],
                                     instr_shape=[16, _instr_n(bn, is_fp8), 32])


@gluon.jit
def _tile_mn(tile, num_m, num_n, GROUP_M):
    """Grouped order (GROUP_M tile rows sweep the N tiles together), as gemm8_triton._tile_coords."""
    per_group = GROUP_M * num_n
    first_m = (tile // per_group) * GROUP_M
    size_m = gl.minimum(num_m - first_m, GROUP_M)
    pid_m = first_m + (tile % per_group) % size_m
    pid_n = (tile % per_group) // size_m
    return pid_m, pid_n


@gluon.jit
def _gdc(asm: gl.constexpr):
    """A griddepcontrol instruction (programmatic dependent launch, engine/pdl.py)."""
    gl.inline_asm_elementwise(asm + " // dummy $0", "=r", [], dtype=gl.int32, is_pure=False, pack=1)


@gluon.jit
def _loader(a_desc, b_desc, a_bufs, b_bufs, ready, empty, M, N, K, NUM_PROGRAMS,
            BM: gl.constexpr, BN: gl.constexpr, BK: gl.constexpr, GROUP_M: gl.constexpr, STAGES: gl.constexpr,
            PDL: gl.constexpr = False):
    """The TMA warp: fills slot s once the MMA warps have released it (empty[s]), signals ready[s].

    PDL (launched with programmatic dependent launch): the first tile's first STAGES weight chunks are loaded
    before `griddepcontrol.wait` (no kernel writes the weights), its activation chunks after it; everything the
    MMA warps read or write (activations, scales, the output) comes after the wait through ready[s]. The next
    kernel may launch once every program's loader has issued its last load (`launch_dependents` at the end)."""
    num_m = gl.cdiv(M, BM)
    num_n = gl.cdiv(N, BN)
    k_steps = gl.cdiv(K, BK)
    it = 0
    if PDL:
        first_m, first_n = _tile_mn(gl.program_id(0), num_m, num_n, GROUP_M)
        pre = gl.where(gl.program_id(0) < num_m * num_n, gl.minimum(k_steps, STAGES), 0)  # chunks requested here
        for ks in range(pre):  # fresh slots: nothing to wait for
            mbarrier.expect(ready.index(ks), a_desc.block_type.nbytes + b_desc.block_type.nbytes)
            tma.async_copy_global_to_shared(b_desc, [first_n * BN, ks * BK], ready.index(ks), b_bufs.index(ks))
        _gdc("griddepcontrol.wait;")
        for ks in range(pre):
            tma.async_copy_global_to_shared(a_desc, [first_m * BM, ks * BK], ready.index(ks), a_bufs.index(ks))
    for tile in range(gl.program_id(0), num_m * num_n, NUM_PROGRAMS):
        pid_m, pid_n = _tile_mn(tile, num_m, num_n, GROUP_M)
        ks0 = 0
        if PDL:
            ks0 = gl.where(tile == gl.program_id(0), pre, 0)
            it += ks0
        for ks in range(ks0, k_steps):
            s = it % STAGES
            mbarrier.wait(empty.index(s), ((it // STAGES) & 1) ^ 1)  # a fresh barrier counts as released
            mbarrier.expect(ready.index(s), a_desc.block_type.nbytes + b_desc.block_type.nbytes)
            tma.async_copy_global_to_shared(a_desc, [pid_m * BM, ks * BK], ready.index(s), a_bufs.index(s))
            tma.async_copy_global_to_shared(b_desc, [pid_n * BN, ks * BK], ready.index(s), b_bufs.index(s))
            it += 1
    if PDL:  # every load issued: the next kernel may launch while the MMA warps finish (one kernel ahead at most)
        _gdc("griddepcontrol.launch_dependents;")


@gluon.jit
def _rescale(acc, sx_ptr, sw_ptr, bias_ptr, m0, n0, M, N, HAS_BIAS: gl.constexpr, layout: gl.constexpr):
    """acc * s_x[m] * s_w[n] (+ bias[n]) in float32, the order of gemm8_reference."""
    rm = m0 + gl.arange(0, acc.shape[0], layout=gl.SliceLayout(1, layout))
    rn = n0 + gl.arange(0, acc.shape[1], layout=gl.SliceLayout(0, layout))
    sx = gl.load(sx_ptr + rm, mask=rm < M, other=0.0)
    sw = gl.load(sw_ptr + rn, mask=rn < N, other=0.0)
    y = acc.to(gl.float32) * gl.expand_dims(sx, 1) * gl.expand_dims(sw, 0)
    if HAS_BIAS:
        y = y + gl.expand_dims(gl.load(bias_ptr + rn, mask=rn < N, other=0.0).to(gl.float32), 0)
    return y


@gluon.jit
def _store(y, c_desc, c_buf, m0, n0):
    tma.store_wait(0)  # the previous tile's store has left this buffer
    c_buf.store(y.to(c_desc.dtype))
    fence_async_shared()
    tma.async_copy_shared_to_global(c_desc, [m0, n0], c_buf)


@gluon.jit
def _mma_chain(a_bufs, b_bufs, ready, empty, it, k_steps, acc, ROW0: gl.constexpr, STAGES: gl.constexpr):
    """Unpromoted: every chunk's MMA accumulates on `acc`; one MMA group stays in flight (wait_group 1) and
    the slot of the finished one is released."""
    prev_s = 0
    for ks in range(k_steps):
        s = it % STAGES
        mbarrier.wait(ready.index(s), (it // STAGES) & 1)
        tok = warpgroup_mma(_rows(a_bufs.index(s), ROW0, acc.shape[0]), b_bufs.index(s).permute((1, 0)), acc,
                            is_async=True)
        acc = warpgroup_mma_wait(1, deps=(tok,))
        mbarrier.arrive(empty.index(prev_s), count=1, pred=ks > 0)
        prev_s = s
        it += 1
    acc = warpgroup_mma_wait(0, deps=(acc,))
    mbarrier.arrive(empty.index(prev_s), count=1)
    return acc, it


@gluon.jit
def _issue(a_bufs, b_bufs, ready, it, zero, col0: gl.constexpr, cols: gl.constexpr, ROW0: gl.constexpr,
           STAGES: gl.constexpr):
    """Wait for chunk `it`'s slot and start its MMA from zero on columns [col0, col0 + cols) of the tile, for
    the partition's rows [ROW0, ROW0 + zero.shape[0])."""
    s = it % STAGES
    mbarrier.wait(ready.index(s), (it // STAGES) & 1)
    a = _rows(a_bufs.index(s), ROW0, zero.shape[0])
    b = b_bufs.index(s)
    if cols != b.shape[0]:
        b = b.slice(col0, cols, dim=0)
    return warpgroup_mma(a, b.permute((1, 0)), zero, use_acc=False, is_async=True)


@gluon.jit
def _rows(a, ROW0: gl.constexpr, ROWS: gl.constexpr):
    """The partition's rows of an A tile in shared memory (all of them with one MMA partition)."""
    if ROWS != a.shape[0]:
        a = a.slice(ROW0, ROWS, dim=0)
    return a


# Promoted fp8. ptxas serialises every wgmma of a kernel ("C7514") when it cannot prove that no other instruction
# touches an in-flight group's accumulator. The depth-1 loops (_mma_promote1 / 2 / 2_seq) wait for each partial sum
# (wait_group 0) before the loop turns, the float32 add of the previous piece running while the next piece's MMA is
# in flight; _mma_promote1_deep keeps the next chunk's group in flight across the loop edge (wait_group 1), which
# ptxas accepts there (checked on every compile by tests/test_gemm8_ws.py). Order of the adds = the order of the
# chunks, as in gemm8_triton's "adds".

@gluon.jit
def _mma_promote1(a_bufs, b_bufs, ready, empty, it, k_steps, zero, ROW0: gl.constexpr, STAGES: gl.constexpr):
    """Whole-tile pieces, two partial-sum buffers X and Y taking turns (the loop does two chunks a turn so
    that the buffers keep their registers)."""
    BN: gl.constexpr = zero.shape[1]
    sx = it % STAGES
    x = warpgroup_mma_wait(0, deps=(_issue(a_bufs, b_bufs, ready, it, zero, 0, BN, ROW0, STAGES),))
    it += 1
    acc = zero
    for _ in range((k_steps - 1) // 2):
        sy = it % STAGES
        yt = _issue(a_bufs, b_bufs, ready, it, zero, 0, BN, ROW0, STAGES)
        acc = acc + x
        mbarrier.arrive(empty.index(sx), count=1)
        y = warpgroup_mma_wait(0, deps=(yt,))
        it += 1
        sx = it % STAGES
        xt = _issue(a_bufs, b_bufs, ready, it, zero, 0, BN, ROW0, STAGES)
        acc = acc + y
        mbarrier.arrive(empty.index(sy), count=1)
        x = warpgroup_mma_wait(0, deps=(xt,))
        it += 1
    if (k_steps - 1) % 2 == 1:
        sy = it % STAGES
        yt = _issue(a_bufs, b_bufs, ready, it, zero, 0, BN, ROW0, STAGES)
        acc = acc + x
        mbarrier.arrive(empty.index(sx), count=1)
        y = warpgroup_mma_wait(0, deps=(yt,))
        it += 1
        acc = acc + y
        mbarrier.arrive(empty.index(sy), count=1)
    else:
        acc = acc + x
        mbarrier.arrive(empty.index(sx), count=1)
    return acc, it


@gluon.jit
def _mma_promote1_deep(a_bufs, b_bufs, ready, empty, it, k_steps, zero, ROW0: gl.constexpr,
                       STAGES: gl.constexpr):
    """Whole-tile pieces with two MMA groups in flight: chunk c+1's MMA is issued before chunk c's is waited for
    (wait_group 1), so this partition's tensor-core queue holds the next chunk while it adds; the same two
    partial-sum buffers X and Y (the same registers as _mma_promote1) and the same adds in K order. ptxas keeps
    the MMAs asynchronous with a group in flight across the loop edge here (no other instruction reads that
    group's registers; tests/test_gemm8_ws.py). Tried and not kept: the tile's scales loaded early into registers
    (34 a thread more than the 192 of the sums: spills) or prefetched into L1 under the first chunk's MMA
    (compiles clean; 0-6% slower per layer at M 512-4,096 on an H100, bench_gemm_depth2_70b_h100.json)."""
    sx = it % STAGES
    xt = _issue(a_bufs, b_bufs, ready, it, zero, 0, zero.shape[1], ROW0, STAGES)
    it += 1
    acc = zero
    for _ in range((k_steps - 1) // 2):  # two chunks a turn: X and Y keep their registers
        acc, yt, sy, it = _deep_step(a_bufs, b_bufs, ready, empty, it, acc, xt, sx, zero, ROW0, STAGES)
        acc, xt, sx, it = _deep_step(a_bufs, b_bufs, ready, empty, it, acc, yt, sy, zero, ROW0, STAGES)
    if (k_steps - 1) % 2 == 1:
        acc, yt, sy, it = _deep_step(a_bufs, b_bufs, ready, empty, it, acc, xt, sx, zero, ROW0, STAGES)
        y = warpgroup_mma_wait(0, deps=(yt,))
        acc = acc + y
        mbarrier.arrive(empty.index(sy), count=1)
    else:
        x = warpgroup_mma_wait(0, deps=(xt,))
        acc = acc + x
        mbarrier.arrive(empty.index(sx), count=1)
    return acc, it


@gluon.jit
def _deep_step(a_bufs, b_bufs, ready, empty, it, acc, prev_t, prev_s, zero, ROW0: gl.constexpr,
               STAGES: gl.constexpr):
    """Issue chunk `it`'s MMA, then wait for the previous chunk's (the older of the two groups in flight), add it
    to `acc` and release its slot: (acc, the new chunk's pending result, its slot, it + 1)."""
    s = it % STAGES
    t = _issue(a_bufs, b_bufs, ready, it, zero, 0, zero.shape[1], ROW0, STAGES)
    prev = warpgroup_mma_wait(1, deps=(prev_t,))
    acc = acc + prev
    mbarrier.arrive(empty.index(prev_s), count=1)
    return acc, t, s, it + 1


@gluon.jit
def _mma_promote2(a_bufs, b_bufs, ready, empty, it, k_steps, zero, ROW0: gl.constexpr, STAGES: gl.constexpr):
    """Half-tile pieces: the MMA of chunk c's left half runs while chunk c-1's right half is added, the right
    half's while the left half is added."""
    HALF: gl.constexpr = zero.shape[1]
    s = it % STAGES
    lo = warpgroup_mma_wait(0, deps=(_issue(a_bufs, b_bufs, ready, it, zero, 0, HALF, ROW0, STAGES),))
    ht = _issue(a_bufs, b_bufs, ready, it, zero, HALF, HALF, ROW0, STAGES)
    acc_lo = zero + lo
    hi = warpgroup_mma_wait(0, deps=(ht,))
    acc_hi = zero
    prev_s = s
    it += 1
    for _ in range(1, k_steps):
        s = it % STAGES
        lt = _issue(a_bufs, b_bufs, ready, it, zero, 0, HALF, ROW0, STAGES)
        acc_hi = acc_hi + hi
        mbarrier.arrive(empty.index(prev_s), count=1)  # chunk c-1 complete: its slot is free
        lo = warpgroup_mma_wait(0, deps=(lt,))
        ht = _issue(a_bufs, b_bufs, ready, it, zero, HALF, HALF, ROW0, STAGES)
        acc_lo = acc_lo + lo
        hi = warpgroup_mma_wait(0, deps=(ht,))
        prev_s = s
        it += 1
    acc_hi = acc_hi + hi
    mbarrier.arrive(empty.index(prev_s), count=1)
    return acc_lo, acc_hi, it


@gluon.jit
def _mma_promote2_seq(a_bufs, b_bufs, ready, empty, it, k_steps, zero, ROW0: gl.constexpr, STAGES: gl.constexpr):
    """Half-tile pieces one at a time (128 rows on 4 warps: the two running sums take 128 registers a thread,
    a piece in flight 64 more, so no second piece can be): MMA the left half, add it, MMA the right half, add
    it. The other partition's MMAs fill the tensor core during this one's adds."""
    HALF: gl.constexpr = zero.shape[1]
    acc_lo = zero
    acc_hi = zero
    for _ in range(k_steps):
        s = it % STAGES
        lo = warpgroup_mma_wait(0, deps=(_issue(a_bufs, b_bufs, ready, it, zero, 0, HALF, ROW0, STAGES),))
        acc_lo = acc_lo + lo
        hi = warpgroup_mma_wait(0, deps=(_issue(a_bufs, b_bufs, ready, it, zero, HALF, HALF, ROW0, STAGES),))
        mbarrier.arrive(empty.index(s), count=1)
        acc_hi = acc_hi + hi
        it += 1
    return acc_lo, acc_hi, it


@gluon.jit
def _mma_partition(a_bufs, b_bufs, ready, empty, c_desc, c_bufs, sx_ptr, sw_ptr, bias_ptr, M, N, K,
                   NUM_PROGRAMS, IS_FP8: gl.constexpr, PROMOTE: gl.constexpr, HAS_BIAS: gl.constexpr,
                   BM: gl.constexpr, BN: gl.constexpr, BK: gl.constexpr, GROUP_M,
                   STAGES: gl.constexpr, SPLIT: gl.constexpr, ROW0: gl.constexpr, ROWS: gl.constexpr):
    """One MMA partition: rows [ROW0, ROW0 + ROWS) of every BM x BN tile, its main loop and its epilogue (output
    buffers SPLIT * ROW0 / ROWS onwards: one set per partition)."""
    C0: gl.constexpr = SPLIT * ROW0 // ROWS
    DEPTH2: gl.constexpr = ready.shape[0] > STAGES  # WsConfig.depth 2: one unused `ready` barrier more
    WARPS: gl.constexpr = BM // 16 if ROWS == BM else 4  # one partition: all BM rows; two: 4 warps each
    num_m = gl.cdiv(M, BM)
    num_n = gl.cdiv(N, BN)
    k_steps = gl.cdiv(K, BK)
    it = 0
    if PROMOTE:
        HALF: gl.constexpr = BN // SPLIT
        layout: gl.constexpr = _mma_layout(WARPS, HALF, True)
        zero = gl.zeros([ROWS, HALF], gl.float32, layout)
        for tile in range(gl.program_id(0), num_m * num_n, NUM_PROGRAMS):
            pid_m, pid_n = _tile_mn(tile, num_m, num_n, GROUP_M)
            m0 = pid_m * BM + ROW0
            n0 = pid_n * BN
            if SPLIT == 1 and DEPTH2:
                acc, it = _mma_promote1_deep(a_bufs, b_bufs, ready, empty, it, k_steps, zero, ROW0, STAGES)
                _store(_rescale(acc, sx_ptr, sw_ptr, bias_ptr, m0, n0, M, N, HAS_BIAS, layout), c_desc,
                       c_bufs.index(C0), m0, n0)
            elif SPLIT == 1:
                acc, it = _mma_promote1(a_bufs, b_bufs, ready, empty, it, k_steps, zero, ROW0, STAGES)
                _store(_rescale(acc, sx_ptr, sw_ptr, bias_ptr, m0, n0, M, N, HAS_BIAS, layout), c_desc,
                       c_bufs.index(C0), m0, n0)
            else:
                if ROWS * HALF > 48 * 32 * WARPS:  # a piece above 48 registers a thread: four do not fit, one at a time
                    acc_lo, acc_hi, it = _mma_promote2_seq(a_bufs, b_bufs, ready, empty, it, k_steps, zero, ROW0,
                                                           STAGES)
                else:
                    acc_lo, acc_hi, it = _mma_promote2(a_bufs, b_bufs, ready, empty, it, k_steps, zero, ROW0,
                                                       STAGES)
                y_lo = _rescale(acc_lo, sx_ptr, sw_ptr, bias_ptr, m0, n0, M, N, HAS_BIAS, layout)
                y_hi = _rescale(acc_hi, sx_ptr, sw_ptr, bias_ptr, m0, n0 + HALF, M, N, HAS_BIAS, layout)
                tma.store_wait(0)
                c_bufs.index(C0).store(y_lo.to(c_desc.dtype))
                c_bufs.index(C0 + 1).store(y_hi.to(c_desc.dtype))
                fence_async_shared()
                tma.async_copy_shared_to_global(c_desc, [m0, n0], c_bufs.index(C0))
                tma.async_copy_shared_to_global(c_desc, [m0, n0 + HALF], c_bufs.index(C0 + 1))
    else:
        layout: gl.constexpr = _mma_layout(WARPS, BN, IS_FP8)
        if IS_FP8:
            zero = gl.zeros([ROWS, BN], gl.float32, layout)
        else:
            zero = gl.zeros([ROWS, BN], gl.int32, layout)
        for tile in range(gl.program_id(0), num_m * num_n, NUM_PROGRAMS):
            pid_m, pid_n = _tile_mn(tile, num_m, num_n, GROUP_M)
            acc, it = _mma_chain(a_bufs, b_bufs, ready, empty, it, k_steps, zero, ROW0, STAGES)
            m0 = pid_m * BM + ROW0
            _store(_rescale(acc, sx_ptr, sw_ptr, bias_ptr, m0, pid_n * BN, M, N, HAS_BIAS, layout), c_desc,
                   c_bufs.index(C0), m0, pid_n * BN)
    tma.store_wait(0)


@gluon.jit
def _gemm8_ws_kernel(a_desc, b_desc, c_desc, sx_ptr, sw_ptr, bias_ptr, M, N, K,
                     NUM_PROGRAMS, IS_FP8: gl.constexpr, PROMOTE: gl.constexpr,
                     HAS_BIAS: gl.constexpr, GROUP_M: gl.constexpr, STAGES: gl.constexpr, SPLIT: gl.constexpr,
                     WGS: gl.constexpr, PDL: gl.constexpr = False, DEPTH: gl.constexpr = 1):
    BM: gl.constexpr = a_desc.block_type.shape[0]
    BK: gl.constexpr = a_desc.block_type.shape[1]
    BN: gl.constexpr = b_desc.block_type.shape[0]
    a_bufs = gl.allocate_shared_memory(a_desc.dtype, [STAGES] + a_desc.block_type.shape, a_desc.layout)
    b_bufs = gl.allocate_shared_memory(b_desc.dtype, [STAGES] + b_desc.block_type.shape, b_desc.layout)
    c_bufs = gl.allocate_shared_memory(c_desc.dtype, [SPLIT * WGS] + c_desc.block_type.shape, c_desc.layout)
    # with DEPTH 2 one unused barrier more: the MMA partitions (workers get runtime values) read DEPTH from the size
    ready = gl.allocate_shared_memory(gl.int64, [STAGES + DEPTH - 1, 1], mbarrier.MBarrierLayout())
    # with PDL one unused slot more: the two-partition loader (a worker, handed no constexpr) reads PDL from it
    empty = gl.allocate_shared_memory(gl.int64, [STAGES + (1 if PDL else 0), 1], mbarrier.MBarrierLayout())
    for i in gl.static_range(STAGES):
        mbarrier.init(ready.index(i), count=1)
        mbarrier.init(empty.index(i), count=WGS)  # every MMA partition releases the slot
    if WGS == 1:
        gl.warp_specialize([
            (_mma_partition, (a_bufs, b_bufs, ready, empty, c_desc, c_bufs, sx_ptr, sw_ptr, bias_ptr, M, N, K,
                              NUM_PROGRAMS, IS_FP8, PROMOTE, HAS_BIAS, BM, BN, BK, GROUP_M, STAGES, SPLIT, 0, BM)),
            (_loader, (a_desc, b_desc, a_bufs, b_bufs, ready, empty, M, N, K, NUM_PROGRAMS, BM, BN, BK, GROUP_M,
                       STAGES, PDL)),
        ], [1], [LOADER_REGS])
    else:
        # two 4-warp MMA partitions, rows 0-63 and 64-127: each waits for its own MMA groups while the other's
        # run (no barrier joins them but the slots' mbarriers). Triton 3.6 hands worker partitions their
        # arguments as runtime values, so a worker reads its constants from the types (descriptor blocks, buffer
        # shapes) and takes PROMOTE / HAS_BIAS from which function it is; the workers share one signature.
        # (one call per worker function: Triton 3.6 cannot hold a JIT function in a variable, nor hand
        # warp_specialize one passed as a constexpr argument; tried)
        if PROMOTE and HAS_BIAS:
            gl.warp_specialize([
                (_mma_partition, (a_bufs, b_bufs, ready, empty, c_desc, c_bufs, sx_ptr, sw_ptr, bias_ptr, M, N, K,
                                  NUM_PROGRAMS, IS_FP8, PROMOTE, HAS_BIAS, BM, BN, BK, GROUP_M, STAGES, SPLIT, 0,
                                  BM // 2)),
                (_loader_worker, (a_desc, b_desc, a_bufs, b_bufs, ready, empty, c_desc, c_bufs, sx_ptr, sw_ptr,
                                  bias_ptr, M, N, K, NUM_PROGRAMS, GROUP_M)),
                (_mma_worker_pb, (a_desc, b_desc, a_bufs, b_bufs, ready, empty, c_desc, c_bufs, sx_ptr, sw_ptr,
                                  bias_ptr, M, N, K, NUM_PROGRAMS, GROUP_M)),
            ], [1, 4], [LOADER_REGS, MMA_WORKER_REGS])
        elif PROMOTE:
            gl.warp_specialize([
                (_mma_partition, (a_bufs, b_bufs, ready, empty, c_desc, c_bufs, sx_ptr, sw_ptr, bias_ptr, M, N, K,
                                  NUM_PROGRAMS, IS_FP8, PROMOTE, HAS_BIAS, BM, BN, BK, GROUP_M, STAGES, SPLIT, 0,
                                  BM // 2)),
                (_loader_worker, (a_desc, b_desc, a_bufs, b_bufs, ready, empty, c_desc, c_bufs, sx_ptr, sw_ptr,
                                  bias_ptr, M, N, K, NUM_PROGRAMS, GROUP_M)),
                (_mma_worker_p, (a_desc, b_desc, a_bufs, b_bufs, ready, empty, c_desc, c_bufs, sx_ptr, sw_ptr,
                                  bias_ptr, M, N, K, NUM_PROGRAMS, GROUP_M)),
            ], [1, 4], [LOADER_REGS, MMA_WORKER_REGS])
        elif HAS_BIAS:
            gl.warp_specialize([
                (_mma_partition, (a_bufs, b_bufs, ready, empty, c_desc, c_bufs, sx_ptr, sw_ptr, bias_ptr, M, N, K,
                                  NUM_PROGRAMS, IS_FP8, PROMOTE, HAS_BIAS, BM, BN, BK, GROUP_M, STAGES, SPLIT, 0,
                                  BM // 2)),
                (_loader_worker, (a_desc, b_desc, a_bufs, b_bufs, ready, empty, c_desc, c_bufs, sx_ptr, sw_ptr,
                                  bias_ptr, M, N, K, NUM_PROGRAMS, GROUP_M)),
                (_mma_worker_cb, (a_desc, b_desc, a_bufs, b_bufs, ready, empty, c_desc, c_bufs, sx_ptr, sw_ptr,
                                  bias_ptr, M, N, K, NUM_PROGRAMS, GROUP_M)),
            ], [1, 4], [LOADER_REGS, MMA_WORKER_REGS])
        else:
            gl.warp_specialize([
                (_mma_partition, (a_bufs, b_bufs, ready, empty, c_desc, c_bufs, sx_ptr, sw_ptr, bias_ptr, M, N, K,
                                  NUM_PROGRAMS, IS_FP8, PROMOTE, HAS_BIAS, BM, BN, BK, GROUP_M, STAGES, SPLIT, 0,
                                  BM // 2)),
                (_loader_worker, (a_desc, b_desc, a_bufs, b_bufs, ready, empty, c_desc, c_bufs, sx_ptr, sw_ptr,
                                  bias_ptr, M, N, K, NUM_PROGRAMS, GROUP_M)),
                (_mma_worker_c, (a_desc, b_desc, a_bufs, b_bufs, ready, empty, c_desc, c_bufs, sx_ptr, sw_ptr,
                                  bias_ptr, M, N, K, NUM_PROGRAMS, GROUP_M)),
            ], [1, 4], [LOADER_REGS, MMA_WORKER_REGS])


@gluon.jit
def _loader_worker(a_desc, b_desc, a_bufs, b_bufs, ready, empty, c_desc, c_bufs, sx_ptr, sw_ptr, bias_ptr, M, N, K,
                   NUM_PROGRAMS, GROUP_M):
    _loader(a_desc, b_desc, a_bufs, b_bufs, ready, empty, M, N, K, NUM_PROGRAMS, a_desc.block_type.shape[0],
            b_desc.block_type.shape[0], a_desc.block_type.shape[1], GROUP_M, a_bufs.shape[0],
            empty.shape[0] > a_bufs.shape[0])


@gluon.jit
def _second_mma(a_desc, b_desc, a_bufs, b_bufs, ready, empty, c_desc, c_bufs, sx_ptr, sw_ptr, bias_ptr, M, N, K,
                NUM_PROGRAMS, GROUP_M, PROMOTE: gl.constexpr, HAS_BIAS: gl.constexpr):
    """The second MMA partition (rows 64-127), its constants read from the types."""
    BM: gl.constexpr = a_desc.block_type.shape[0]
    BN: gl.constexpr = b_desc.block_type.shape[0]
    ROWS: gl.constexpr = c_desc.block_type.shape[0]
    _mma_partition(a_bufs, b_bufs, ready, empty, c_desc, c_bufs, sx_ptr, sw_ptr, bias_ptr, M, N, K, NUM_PROGRAMS,
                   a_desc.dtype.is_fp8(), PROMOTE, HAS_BIAS, BM, BN, a_desc.block_type.shape[1], GROUP_M,
                   a_bufs.shape[0], BN // c_desc.block_type.shape[1], ROWS, ROWS)


@gluon.jit
def _mma_worker_p(a_desc, b_desc, a_bufs, b_bufs, ready, empty, c_desc, c_bufs, sx_ptr, sw_ptr, bias_ptr, M, N, K,
                  NUM_PROGRAMS, GROUP_M):
    _second_mma(a_desc, b_desc, a_bufs, b_bufs, ready, empty, c_desc, c_bufs, sx_ptr, sw_ptr, bias_ptr, M, N, K,
                NUM_PROGRAMS, GROUP_M, True, False)


@gluon.jit
def _mma_worker_pb(a_desc, b_desc, a_bufs, b_bufs, ready, empty, c_desc, c_bufs, sx_ptr, sw_ptr, bias_ptr, M, N, K,
                   NUM_PROGRAMS, GROUP_M):
    _second_mma(a_desc, b_desc, a_bufs, b_bufs, ready, empty, c_desc, c_bufs, sx_ptr, sw_ptr, bias_ptr, M, N, K,
                NUM_PROGRAMS, GROUP_M, True, True)


@gluon.jit
def _mma_worker_c(a_desc, b_desc, a_bufs, b_bufs, ready, empty, c_desc, c_bufs, sx_ptr, sw_ptr, bias_ptr, M, N, K,
                  NUM_PROGRAMS, GROUP_M):
    _second_mma(a_desc, b_desc, a_bufs, b_bufs, ready, empty, c_desc, c_bufs, sx_ptr, sw_ptr, bias_ptr, M, N, K,
                NUM_PROGRAMS, GROUP_M, False, False)


@gluon.jit
def _mma_worker_cb(a_desc, b_desc, a_bufs, b_bufs, ready, empty, c_desc, c_bufs, sx_ptr, sw_ptr, bias_ptr, M, N, K,
                   NUM_PROGRAMS, GROUP_M):
    _second_mma(a_desc, b_desc, a_bufs, b_bufs, ready, empty, c_desc, c_bufs, sx_ptr, sw_ptr, bias_ptr, M, N, K,
                NUM_PROGRAMS, GROUP_M, False, True)


_GL_DTYPE = {torch.float8_e4m3fn: gl.float8e4nv, torch.int8: gl.int8, torch.float16: gl.float16,
             torch.bfloat16: gl.bfloat16, torch.float32: gl.float32}


@functools.lru_cache(maxsize=None)
def _capability_major(index: int) -> int:
    """The GPU's compute capability major, asked once per device (gemm8_ws checks it on every call)."""
    return torch.cuda.get_device_capability(index)[0]


@functools.lru_cache(maxsize=64)
def operand_layouts(cfg: WsConfig, kind: str, out_dtype: torch.dtype):
    """The NVMMA shared layouts of the A [BM, BK], B [BN, BK] and C [BM, BN / SPLIT] tiles (TMA and wgmma).
    Cached: building them took ~17 of the ~25 us of host work per GEMM call (measured on the CPU), and an eager
    80-layer step makes 320 calls (callers must not change the returned lists)."""
    op = gl.float8e4nv if kind == "fp8" else gl.int8
    c_block = [cfg.rows, cfg.bn // cfg.split]
    return ([cfg.bm, cfg.bk], gl.NVMMASharedLayout.get_default_for([cfg.bm, cfg.bk], op)), \
        ([cfg.bn, cfg.bk], gl.NVMMASharedLayout.get_default_for([cfg.bn, cfg.bk], op)), \
        (c_block, gl.NVMMASharedLayout.get_default_for(c_block, _GL_DTYPE[out_dtype]))


def check_config(cfg: WsConfig, kind: str, promote: bool, out_bytes: int = 2) -> None:
    if cfg.bm not in (64, 128, 256) or cfg.bk != MAX_PROMOTE:
        raise UserError(f"gemm8_ws: BM must be 64, 128 or 256 and BK {MAX_PROMOTE}, got {cfg}")
    if cfg.bm == 256 and not (promote and cfg.wgs == 2 and cfg.split == 2):
        raise UserError(f"gemm8_ws: a 256-row tile is for promoted fp8 with two MMA partitions of 128 rows and "
                        f"half-tile pieces (wgs 2, SPLIT 2), got {cfg}")
    if cfg.split not in (1, 2) or (cfg.split == 2 and not promote) or cfg.bn % (8 * cfg.split):
        raise UserError(f"gemm8_ws: SPLIT 2 is for promoted fp8 and BN / SPLIT must be a multiple of 8, got {cfg}")
    if cfg.wgs not in (1, 2) or (cfg.wgs == 2 and cfg.bm == 64):
        raise UserError(f"gemm8_ws: two MMA partitions (wgs 2) split a 128- or 256-row tile, got {cfg}")
    if cfg.depth not in (1, 2) or (cfg.depth == 2 and not (promote and cfg.split == 1)):
        raise UserError(f"gemm8_ws: depth 2 (two MMA groups in flight) is for promoted fp8 with SPLIT 1, got {cfg}")
    if cfg.smem_bytes(out_bytes) > 227 * 1024:
        raise UserError(f"gemm8_ws: {cfg} needs {cfg.smem_bytes(out_bytes)} B of shared memory with a "
                        f"{out_bytes}-byte output (227 KB on sm_90): fewer stages")


def host_descriptor(t: torch.Tensor, block: list, layout):
    """Gluon's host TensorDescriptor of a contiguous 2-D tensor, without its constructor's checks: ~35 us of the
    eager step's ~107 ms of profiled host time per 3 descriptors (they call Triton's constexpr functions, H100
    machine, docs/results/profile_step_70b_fp8_hostprof_fastlaunch_h100.json). What they check holds here by
    construction: contiguous rows whose byte strides are multiples of 16 (K % 16 == 0 for the 8-bit operands,
    N % 8 == 0 for a 2- or 4-byte output), a positive shape, a power-of-2 block and an NVMMA layout from
    operand_layouts; the 16-byte base alignment is checked here (a view at an odd offset would fault in TMA).
    tests/test_gemm8_ws.py compares it field by field with TensorDescriptor.from_tensor."""
    if t.data_ptr() % 16:
        raise UserError(f"gemm8_ws: operands must start 16-byte aligned (TMA), got a {list(t.shape)} view at "
                        f"address {t.data_ptr():#x}")
    d = object.__new__(TensorDescriptor)
    d.base, d.shape, d.strides, d.block_shape, d.layout, d.padding = t, t.shape, t.stride(), block, layout, "zero"
    return d


def gemm8_ws(qx: torch.Tensor, qw: torch.Tensor, s_x: torch.Tensor, s_w: torch.Tensor, bias: Optional[torch.Tensor],
             out_dtype: torch.dtype, *, kind: str = "fp8", promote_every: int = MAX_PROMOTE,
             config: Optional[WsConfig] = None, num_programs: Optional[int] = None) -> torch.Tensor:
    """qx [M, K] x qw [N, K] (8-bit, row-major as stored) -> out_dtype [M, N], as gemm8_triton.gemm8.

    fp8: promote_every 128 (float32 promotion every 128 elements of K) or 0 (none); int8 exact. sm_90 only,
    K a multiple of 16 and N of 8 (TMA's 16-byte strides)."""
    check_args(qx, qw, s_x, s_w, kind, promote_every, "adds")
    if promote_every not in (0, MAX_PROMOTE):  # (kind, dtypes and shapes: check_args)
        raise UserError(f"gemm8_ws: promote_every must be 0 or {MAX_PROMOTE}, got {promote_every}")
    m, k = qx.shape
    n = qw.shape[0]
    if k < 16 or k % 16 or n % 8:  # K = 0 would leave the MMA warps waiting for a chunk no one loads
        raise UserError(f"gemm8_ws: K must be a positive multiple of 16 and N of 8 (TMA strides), got K={k}, N={n}")
    if not qx.is_cuda or _capability_major(qx.device.index or 0) != 9:
        raise UserError("gemm8_ws: needs an sm_90 GPU (Hopper warpgroup MMA)")
    out = torch.empty((m, n), dtype=out_dtype, device=qx.device)
    if m == 0:
        return out
    promote = kind == "fp8" and promote_every > 0
    cfg = config or default_config(m, kind, promote, out.element_size())
    check_config(cfg, kind, promote, out.element_size())
    qx, qw = qx.contiguous(), qw.contiguous()
    (a_block, a_layout), (b_block, b_layout), (c_block, c_layout) = operand_layouts(cfg, kind, out_dtype)
    a = host_descriptor(qx, a_block, a_layout)
    b = host_descriptor(qw, b_block, b_layout)
    c = host_descriptor(out, c_block, c_layout)
    tiles = triton.cdiv(m, cfg.bm) * triton.cdiv(n, cfg.bn)
    programs = min(num_programs or _num_sms(qx.device.index or 0), tiles)
    launch(_gemm8_ws_kernel, (programs,),
        a, b, c, s_x, s_w, bias if bias is not None else s_w, m, n, k, programs,
        IS_FP8=kind == "fp8", PROMOTE=promote, HAS_BIAS=bias is not None,
        GROUP_M=cfg.group_m, STAGES=cfg.stages, SPLIT=cfg.split, WGS=cfg.wgs, DEPTH=cfg.depth,
        num_warps=cfg.warps, maxnreg=cfg.maxnreg(),
        enable_fp_fusion=False, **_pdl_launch(cfg))
    return out


def _pdl_launch(cfg: WsConfig) -> dict:
    """Programmatic dependent launch (engine/pdl.py): the kernel's constexpr and the launch attribute."""
    if not pdl.enabled():
        return {}
    return {"PDL": True, **pdl.launch_options()}


def compile_offline(cfg: WsConfig, kind: str = "fp8", promote: bool = True, out_dtype: torch.dtype = torch.float16,
                    has_bias: bool = False, arch: int = 90, pdl: bool = False):
    """Compile the kernel for `cfg` without a GPU (Triton's bundled ptxas): the CompiledKernel, whose
    asm["cubin"] / asm["ptx"] tests/test_gemm8_ws.py inspects. Same specialisation as a launch (16-byte
    aligned scale pointers, runtime M, N, K, program count)."""
    from triton.backends.compiler import GPUTarget
    from triton.experimental.gluon._runtime import GluonASTSource

    check_config(cfg, kind, promote, torch.empty(0, dtype=out_dtype).element_size())
    (a_block, a_layout), (b_block, b_layout), (c_block, c_layout) = operand_layouts(cfg, kind, out_dtype)
    op = "fp8e4nv" if kind == "fp8" else "i8"
    out = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}[out_dtype]
    kernel = _gemm8_ws_kernel
    consts = dict(IS_FP8=kind == "fp8", PROMOTE=promote, HAS_BIAS=has_bias, GROUP_M=cfg.group_m, STAGES=cfg.stages,
                  SPLIT=cfg.split, WGS=cfg.wgs, PDL=pdl, DEPTH=cfg.depth)
    sig = {"a_desc": f"tensordesc<{op}{a_block},{a_layout!r}>", "b_desc": f"tensordesc<{op}{b_block},{b_layout!r}>",
           "c_desc": f"tensordesc<{out}{c_block},{c_layout!r}>", "sx_ptr": "*fp32", "sw_ptr": "*fp32",
           "bias_ptr": "*fp32", "M": "i32", "N": "i32", "K": "i32", "NUM_PROGRAMS": "i32"}
    sig.update({name: "constexpr" for name in consts})
    sig = {name: sig[name] for name in kernel.arg_names}
    attrs = {(i,): [["tt.divisibility", 16]] for i, name in enumerate(kernel.arg_names) if name.endswith("_ptr")}
    src = GluonASTSource(fn=kernel, signature=sig, constexprs=consts, attrs=attrs)
    return triton.compile(src, target=GPUTarget("cuda", arch, 32),
                          options=dict(num_warps=cfg.warps, maxnreg=cfg.maxnreg(), enable_fp_fusion=False,
                                       launch_pdl=pdl))
