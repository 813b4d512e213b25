"""gemm8_ws (the warp-specialised Gluon GEMM) compiled for sm_90 on any machine with triton importable: every
candidate tile fits shared memory and registers without spills, ptxas keeps its warpgroup MMAs asynchronous
(no "C7514" serialisation, fewer MMA waits than MMAs), the promoted fp8 variants do their float32 adds while
the next MMA is in flight, and the unpromoted ones keep one MMA group in flight (wait_group 1), which the plain
Triton kernel cannot do for int8. Bad configurations and CPU tensors fail in one line.

Numbers and speed need the GPU: tests/test_gemm8_ws_gpu.py, tools/bench_gemm.py. No triton here (make test's
CPU venv): skipped; PYTHONPATH=/path/to/triton runs it (the compile needs no GPU and no TRITON_INTERPRET).
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import tempfile

import pytest
import torch

pytest.importorskip("triton.experimental.gluon")
if os.environ.get("TRITON_INTERPRET") == "1":
    pytest.skip("compiles real kernels: run without TRITON_INTERPRET", allow_module_level=True)

import triton  # noqa: E402

from mlperf_llama2.errors import UserError  # noqa: E402
from mlperf_llama2.quant import gemm8_ws as ws  # noqa: E402

TOOLS = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
SMEM_LIMIT = 227 * 1024
VARIANTS = ([("fp8", True, c) for c in ws.CONFIGS["fp8_promote"]]
            + [(kind, False, c) for kind in ("fp8", "int8") for c in ws.CONFIGS["fast"]])


def _ids(v):
    kind, promote, c = v
    return f"{kind}{'-promote' if promote else ''}-{c.bm}x{c.bn}s{c.stages}p{c.split}w{c.wgs}" + \
        (f"d{c.depth}" if c.depth != 1 else "")


@pytest.fixture(scope="module")
def built():
    """Each variant compiled once: (SASS, ptxas -v log, shared bytes)."""
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for v in VARIANTS:
            kind, promote, cfg = v
            k = ws.compile_offline(cfg, kind, promote)
            cubin, ptx = os.path.join(tmp, "k.cubin"), os.path.join(tmp, "k.ptx")
            with open(cubin, "wb") as fh:
                fh.write(k.asm["cubin"])
            with open(ptx, "w") as fh:
                fh.write(k.asm["ptx"])
            sass = subprocess.run([os.path.join(TOOLS, "nvdisasm"), "-c", cubin], capture_output=True, text=True,
                                  check=True).stdout
            log = subprocess.run([os.path.join(TOOLS, "ptxas"), "-arch=sm_90a", "-v", ptx, "-o",
                                  os.path.join(tmp, "x.cubin")], capture_output=True, text=True, check=True).stderr
            out[_ids(v)] = (sass, log, k.metadata.shared)
    return out


def _ops(sass):
    return re.findall(r"^\s+/\*[0-9a-f]+\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]+)([^;]*);", sass, re.M)


@pytest.mark.parametrize("variant", VARIANTS, ids=_ids)
def test_fits_and_mma_stays_asynchronous(built, variant):
    sass, log, shared = built[_ids(variant)]
    assert shared <= SMEM_LIMIT
    assert "0 bytes spill stores, 0 bytes spill loads" in log and "stack frame" in log
    assert "C7514" not in log, log  # ptxas serialised the wgmmas
    ops = [name for name, _ in _ops(sass)]
    mmas = sum(1 for name in ops if re.match(r"[QI]GMMA\.", name))
    waits = sum(1 for name in ops if name.startswith("WARPGROUP.DEPBAR"))
    assert mmas >= 4 and waits < mmas  # a serialised kernel waits after every MMA


def _sequential(cfg) -> bool:
    """A partition whose half-tile piece takes more than 48 registers a thread (the 256 x 128 tile's 128-row
    partitions, the 128 x 256 tile's 64 x 128 pieces) takes its pieces one at a time (_mma_partition)."""
    return cfg.wgs == 2 and cfg.split == 2 and (cfg.bm // 2) * (cfg.bn // 2) > 48 * 32 * 4


def _adds_in_flight(ops) -> int:
    """FADDs met (in program order) while at least one MMA group is pending: each WARPGROUP.ARRIVE opens a group,
    `WARPGROUP.DEPBAR.LE gsb0, N` leaves at most N pending."""
    pending, overlapped = 0, 0
    for name, args in ops:
        if name == "WARPGROUP.ARRIVE":
            pending += 1
        elif name.startswith("WARPGROUP.DEPBAR"):
            pending = min(pending, int(args.split(",")[-1], 16))
        elif pending and name == "FADD":
            overlapped += 1
    return overlapped


@pytest.mark.parametrize("variant", [v for v in VARIANTS if v[1] and not _sequential(v[2])], ids=_ids)
def test_promotion_adds_overlap_the_next_mma(built, variant):
    """While an MMA group is in flight, float32 adds (the previous partial sum) run."""
    overlapped = _adds_in_flight(_ops(built[_ids(variant)][0]))
    cfg = variant[2]
    tile = cfg.bn // 2  # float32 values of its rows' tile a thread holds (m64 rows per warpgroup)
    # the main loop adds a whole tile per chunk, in flight: SPLIT 1 unrolls two chunks, SPLIT 2 one
    assert overlapped >= (2 if cfg.split == 1 else 1) * tile


@pytest.mark.parametrize("variant", [v for v in VARIANTS if v[2].depth == 2], ids=_ids)
def test_depth_two_waits_for_the_older_of_two_groups(built, variant):
    """Depth 2: the next chunk's MMA is issued before the previous chunk's is waited for, so the main loop's
    waits leave one group pending (wait_group 1) and the adds run with a group in flight; depth 1 waits for
    every group (wait_group 0), its adds running under the MMA issued just before them."""
    ops = _ops(built[_ids(variant)][0])
    waits = [int(args.split(",")[-1], 16) for name, args in ops if name.startswith("WARPGROUP.DEPBAR")]
    assert waits.count(1) >= 2, waits
    depth1 = dataclasses.replace(variant[2], depth=1)
    if (variant[0], True, depth1) in VARIANTS:
        assert 1 not in [int(args.split(",")[-1], 16) for name, args in _ops(built[_ids((variant[0], True, depth1))][0])
                         if name.startswith("WARPGROUP.DEPBAR")]
    assert _adds_in_flight(ops) >= 2 * variant[2].bn // 2


@pytest.mark.parametrize("variant", [v for v in VARIANTS if v[1] and _sequential(v[2])], ids=_ids)
def test_sequential_pieces_are_each_added_after_their_mma(built, variant):
    """Two partitions of R rows: per K chunk and partition, two half-tile pieces of (R / 64) x 4 m64nHk32 MMAs
    (128 rows repeat the m64 layout), each waited for, then added: R x H / 128 float32 adds a thread a piece."""
    cfg = variant[2]
    rows, half = cfg.bm // 2, cfg.bn // 2
    ops = _ops(built[_ids(variant)][0])
    mmas = [name + args for name, args in ops if re.match(r"QGMMA\.", name)]
    assert len(mmas) == 2 * 2 * (rows // 64) * 4, mmas
    assert all(m.startswith(f"QGMMA.64x{half}x32.F32.E4M3.E4M3") for m in mmas), mmas
    names = [name for name, _ in ops]
    assert sum(1 for n in names if n.startswith("WARPGROUP.DEPBAR")) == 2 * 2
    assert names.count("FADD") >= 2 * 2 * rows * half // 128


@pytest.mark.parametrize("variant", [v for v in VARIANTS if not v[1]], ids=_ids)
def test_unpromoted_chain_keeps_one_group_in_flight(built, variant):
    waits = [args for name, args in _ops(built[_ids(variant)][0]) if name.startswith("WARPGROUP.DEPBAR")]
    assert any(a.strip().endswith("0x1") for a in waits), waits


@pytest.mark.parametrize("cfg,kind,promote,message", [
    (ws.WsConfig(96, 128, 4, 1), "fp8", True, "BM must be 64, 128 or 256"),
    (ws.WsConfig(128, 128, 6, 1, depth=2), "int8", False, "depth 2 .two MMA groups in flight. is for promoted fp8"),
    (ws.WsConfig(128, 128, 5, 2, depth=2), "fp8", True, "depth 2 .two MMA groups in flight. is for promoted fp8"),
    (ws.WsConfig(128, 128, 6, 1, depth=3), "fp8", True, "depth 2 .two MMA groups in flight. is for promoted fp8"),
    (ws.WsConfig(256, 128, 3, 2, wgs=2), "int8", False, "a 256-row tile is for promoted fp8"),
    (ws.WsConfig(256, 128, 3, 1, wgs=2), "fp8", True, "a 256-row tile is for promoted fp8"),
    (ws.WsConfig(256, 128, 4, 2, wgs=2), "fp8", True, "shared memory"),
    (ws.WsConfig(128, 256, 3, 2), "int8", False, "SPLIT 2 is for promoted fp8"),
    (ws.WsConfig(128, 256, 5, 1), "fp8", False, "shared memory"),
    (ws.WsConfig(64, 128, 6, 1, wgs=2), "fp8", True, "two MMA partitions .wgs 2. split a 128- or 256-row tile"),
])
def test_bad_configs_say_what_is_wrong(cfg, kind, promote, message):
    with pytest.raises(UserError, match=message):
        ws.check_config(cfg, kind, promote)


def test_default_config_takes_small_tiles_for_small_batches():
    # promoted fp8 and int8: one 64-row partition up to M 192 (the measured crossover, TILES), then 128-row tiles;
    # unpromoted fp8: 64 rows up to M 128, then 128 x 128 with two partitions
    def shape(m, kind, promote):
        cfg = ws.default_config(m, kind, promote)
        return cfg.bm, cfg.wgs

    assert [shape(m, "fp8", True) for m in (1, 192, 193, 4096)] == [(64, 1), (64, 1), (128, 2), (128, 2)]
    assert [shape(m, "int8", False) for m in (1, 192, 193, 4096)] == [(64, 1), (64, 1), (128, 1), (128, 1)]
    assert [shape(m, "fp8", False) for m in (1, 128, 129, 4096)] == [(64, 1), (64, 1), (128, 2), (128, 2)]
    # promoted fp8 above M 192: two MMA groups in flight per partition, GROUP_M 8 at every M (measured, TILES)
    assert [(ws.default_config(m, "fp8", True).depth, ws.default_config(m, "fp8", True).group_m)
            for m in (192, 193, 2048, 2049, 8192)] == [(1, 8), (2, 8), (2, 8), (2, 8), (2, 8)]
    assert ws.default_config(8192, "fp8", True) == ws.BEST["fp8_promote"]
    assert {ws.default_config(m, k, p).depth for m in (1, 4096) for k, p in (("int8", False), ("fp8", False))} == {1}
    assert {ws.default_config(m, k, p).group_m for m in (193, 4096) for k, p in (("int8", False), ("fp8", False))} \
        == {8}
    assert ws.default_config(4096, "int8", False) == ws.BEST["int8"]
    assert ws.default_config(4096, "fp8", False) == ws.BEST["fp8_fast"]
    wide = ws.default_config(4096, "int8", False, out_bytes=4)  # a float32 model's output tile
    assert (wide.bm, wide.bn) == (ws.BEST["int8"].bm, ws.BEST["int8"].bn) and wide.stages < ws.BEST["int8"].stages
    ws.check_config(wide, "int8", False, out_bytes=4)


def test_shared_memory_counts_the_output_width():
    cfg = ws.WsConfig(128, 256, 3, 1)
    ws.check_config(cfg, "int8", False, out_bytes=2)
    with pytest.raises(UserError, match="with a 4-byte output"):
        ws.check_config(cfg, "int8", False, out_bytes=4)


def test_cpu_tensors_are_refused():
    qx = torch.zeros(4, 32, dtype=torch.int8)
    qw = torch.zeros(8, 32, dtype=torch.int8)
    with pytest.raises(UserError, match="sm_90"):
        ws.gemm8_ws(qx, qw, torch.ones(4), torch.ones(8), None, torch.float16, kind="int8")


@pytest.mark.parametrize("k,n", [(0, 8), (40, 8), (32, 12)])
def test_shapes_tma_cannot_serve_are_refused(k, n):
    qx = torch.zeros(4, k, dtype=torch.int8)
    qw = torch.zeros(n, k, dtype=torch.int8)
    with pytest.raises(UserError, match="K must be a positive multiple of 16 and N of 8"):
        ws.gemm8_ws(qx, qw, torch.ones(4), torch.ones(n), None, torch.float16, kind="int8")


@pytest.mark.parametrize("kind,out_dtype,m", [("fp8", torch.float16, 200), ("int8", torch.float32, 16),
                                             ("fp8", torch.bfloat16, 1)])
def test_host_descriptors_equal_the_checked_constructor(kind, out_dtype, m):
    """host_descriptor skips TensorDescriptor's checks (they hold by construction): its fields must be exactly
    from_tensor's, for each operand of a launch."""
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

    dt = torch.float8_e4m3fn if kind == "fp8" else torch.int8
    cfg = ws.default_config(m, kind, kind == "fp8", torch.empty(0, dtype=out_dtype).element_size())
    blocks = ws.operand_layouts(cfg, kind, out_dtype)
    for t, (block, layout) in zip((torch.zeros(m, 1024, dtype=dt), torch.zeros(768, 1024, dtype=dt),
                                   torch.zeros(m, 768, dtype=out_dtype)), blocks):
        got, want = ws.host_descriptor(t, block, layout), TensorDescriptor.from_tensor(t, block, layout)
        assert type(got) is TensorDescriptor and got.base is want.base
        assert [got.shape, got.strides, got.block_shape, got.layout, got.padding] == \
            [want.shape, want.strides, want.block_shape, want.layout, want.padding]


def test_a_misaligned_operand_is_one_line():
    x = torch.zeros(4 * 1024 + 16, dtype=torch.int8)[1:1 + 4 * 1024].view(4, 1024)  # one byte off
    _, (block, layout), _ = ws.operand_layouts(ws.default_config(4, "int8", False, 2), "int8", torch.float16)
    with pytest.raises(UserError, match="16-byte aligned"):
        ws.host_descriptor(x, block, layout)


def test_epilogue_rounds_each_operation_like_the_torch_statement():
    """acc * s_x * s_w + bias as three float32 roundings: no fma contraction (the GPU test compares bit for bit
    with gemm8_reference, whose bias add is a separate torch op)."""
    k = ws.compile_offline(ws.WsConfig(128, 128, 4, 1), "int8", False, torch.float32, has_bias=True)
    ptx = k.asm["ptx"]
    assert "fma.rn.f32" not in ptx and re.search(r"add\.(rn\.)?f32", ptx)


DEFAULTS = sorted({(kind, promote, out_dtype, ws.default_config(m, kind, promote, out_dtype.itemsize))
                   for m in (16, 128, 256, 4096) for kind, promote in (("fp8", True), ("fp8", False), ("int8", False))
                   for out_dtype in (torch.float16, torch.float32)}, key=str)


@pytest.mark.parametrize("kind,promote,out_dtype,cfg", DEFAULTS, ids=[f"{v[0]}-{v[1]}-{v[2]}-{v[3]}" for v in DEFAULTS])
def test_every_default_tile_compiles_within_shared_memory(kind, promote, out_dtype, cfg):
    """What default_config picks for each family, M and output width (stages cut for a float32 output) builds."""
    k = ws.compile_offline(cfg, kind, promote, out_dtype)
    assert k.metadata.shared <= SMEM_LIMIT
