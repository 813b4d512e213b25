"""tools/bench_gemm.py's CPU side: flags and their errors, the TOPS and L2-rotation arithmetic, the table, and
(under TRITON_INTERPRET=1) that each gemm8 kernel's operands and float64 reference agree, so the relative
error the GPU run prints means what it says. The timing itself needs a GPU (run by hand, docs)."""

import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools"))

import bench_gemm  # noqa: E402
from mlperf_llama2.errors import UserError, run_cli  # noqa: E402


def test_defaults_cover_the_70b_shapes_and_m_16_to_16384():
    args = bench_gemm.parse_args(["--out", "x"])
    assert args.m_values[0] == 16 and args.m_values[-1] == 16384 and len(args.m_values) == 11
    assert all(b == 2 * a for a, b in zip(args.m_values, args.m_values[1:]))
    assert {(k, n) for _, k, n in bench_gemm.SHAPES[args.shapes]} == {
        (8192, 10240), (8192, 8192), (8192, 57344), (28672, 8192), (8192, 32000)}
    assert "gemm8_fp8" in args.kernel_names and "gemm8_fp8_fast" in args.kernel_names
    assert "gemm8_fp8_mma" not in args.kernel_names  # opt-in: it costs a third set of compiles
    assert "scaled_mm_row_fast" in args.kernel_names and "int8_triton" in args.kernel_names


def test_flags_select_shapes_m_and_kernels():
    args = bench_gemm.parse_args(["--shapes", "7b", "--m-list", "32, 4096", "--kernels", "fp16,gemm8_int8",
                                  "--out", "x"])
    assert args.shapes == "7b" and args.m_values == [32, 4096] and args.kernel_names == ["fp16", "gemm8_int8"]


@pytest.mark.parametrize("argv,message", [
    (["--kernels", "fp16,cutlass"], "--kernels: unknown cutlass; choose from fp16, int_mm"),
    (["--m-list", "16,x"], "--m-list must be comma-separated integers"),
    (["--m-list", "0"], "--m-list needs at least one M >= 1"),
    (["--rounds", "0"], "--rounds must be 1-20"),
])
def test_bad_flags_are_one_line_errors(argv, message, capsys):
    assert run_cli(bench_gemm.main, argv + ["--out", "x"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_without_a_gpu_it_says_so(tmp_path, capsys):
    assert run_cli(bench_gemm.main, ["--out", str(tmp_path / "o")]) == 2
    assert "bench_gemm needs a CUDA GPU" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()  # failed before writing anything


def test_tops_and_peak_fraction():
    m, n, k = 4096, 8192, 28672
    ms_at_peak = 2 * m * n * k / (bench_gemm.PEAK_8BIT_TOPS * 1e12) * 1e3
    assert bench_gemm.tops(m, n, k, ms_at_peak) == pytest.approx(bench_gemm.PEAK_8BIT_TOPS)
    assert bench_gemm.tops(m, n, k, 2 * ms_at_peak) == pytest.approx(bench_gemm.PEAK_8BIT_TOPS / 2)


def test_rounds_rotate_so_each_kernel_takes_each_position():
    names = ["a", "b", "c", "d"]
    orders = [bench_gemm.round_order(names, r) for r in range(len(names))]
    assert all(sorted(o) == names for o in orders)
    for pos in range(len(names)):
        assert sorted(o[pos] for o in orders) == names
    assert bench_gemm.round_order(names, 5) == orders[1]


def test_rounds_merge_to_the_median_and_report_the_spread():
    base = {"shape": "o", "M": 1024, "N": 8192, "K": 8192, "kernel": "ws_fp8", "rel_err": 2e-4}
    rows = [dict(base, ms=t) for t in (1.0, 1.2, 0.9)]
    merged = bench_gemm.merge_rounds(rows)
    assert merged["ms"] == 1.0 and merged["ms_rounds"] == [1.0, 1.2, 0.9]
    assert merged["spread"] == pytest.approx(0.3)
    assert merged["tops"] == pytest.approx(bench_gemm.tops(1024, 8192, 8192, 1.0))
    assert merged["frac_peak"] == pytest.approx(merged["tops"] / bench_gemm.PEAK_8BIT_TOPS)
    assert "spread" not in bench_gemm.merge_rounds(rows[:1])
    failed = bench_gemm.merge_rounds([rows[0], dict(base, error="RuntimeError: boom")])
    assert failed["error"] == "RuntimeError: boom" and "ms" not in failed and "tops" not in failed
    other = bench_gemm.merge_rounds([dict(base, kernel="x", shape="qkv", ms=t) for t in (1.0, 1.02)])
    line = bench_gemm.widest_spread([merged, other])
    assert "widest 30.0% (ws_fp8 o M=1024)" in line and "rounds: 3" in line
    assert bench_gemm.widest_spread([bench_gemm.merge_rounds(rows[:1])]) == ""


def test_rotation_keeps_operands_out_of_l2():
    l2 = 50 * 2 ** 20
    assert bench_gemm.rotation_sets(470 * 2 ** 20, l2) == 1  # gate_up's int8 weight alone is 9 x L2
    sets = bench_gemm.rotation_sets(64 * 2 ** 20 + 300, l2)  # o_proj int8 weight + a small x
    assert sets * (64 * 2 ** 20) > 2 * l2 and (sets - 1) * (64 * 2 ** 20 + 300) <= 2 * l2
    assert bench_gemm.rotation_sets(1000, l2) == 64  # capped


def _row(shape, m, kernel, value=None, rel=1e-3, error=None):
    row = {"shape": shape, "M": m, "kernel": kernel}
    if error:
        row["error"] = error
    else:
        row.update(tops=value, frac_peak=value / bench_gemm.PEAK_8BIT_TOPS, rel_err=rel)
    return row


def test_table_marks_best_8bit_kernel_errors_and_worst_error():
    names = ["fp16", "int8_triton", "gemm8_fp8", "scaled_mm_row"]
    rows = [_row("o", 256, "fp16", 1500.0), _row("o", 256, "int8_triton", 900.0, rel=0.0),
            _row("o", 256, "gemm8_fp8", 1400.0, rel=2e-4), _row("o", 256, "scaled_mm_row", error="RuntimeError: no"),
            _row("o", 4096, "gemm8_fp8", 1600.0, rel=5e-4), _row("qkv", 4096, "gemm8_fp8", 1300.0, rel=1e-4)]
    lines = bench_gemm.format_table(rows, names).splitlines()
    o256 = next(line for line in lines if line.split()[:2] == ["o", "256"])
    assert o256.endswith("gemm8_fp8")  # fp16's 1500 is not an 8-bit kernel
    assert "err" in o256 and "(71%)" in o256  # 1400 / 1979
    o4096 = next(line for line in lines if line.split()[:2] == ["o", "4096"])
    assert o4096.split()[2] == "-"  # fp16 not run there
    qkv_row = [line for line in lines if line.split()[:2] == ["qkv", "4096"]]
    assert lines.index(qkv_row[0]) < lines.index(o256)  # the engine's order: qkv before o
    o_err = next(line for line in lines if line.split()[:2] == ["o", "all"])
    assert "5.00e-04" in o_err and "0.00e+00" in o_err  # worst over M; the exact int8 kernel shows 0
    assert lines[-1] == "error: scaled_mm_row o M=256: RuntimeError: no"


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1" or torch.cuda.is_available(),
                    reason="runs gemm8 under the Triton interpreter")
@pytest.mark.parametrize("name", ["gemm8_int8", "gemm8_fp8", "gemm8_fp8_fast"])
def test_operands_and_reference_agree_for_gemm8(name):
    pytest.importorskip("triton")
    g = torch.Generator().manual_seed(0)
    x16 = torch.randn(20, 64, generator=g).half()
    w16 = (torch.randn(48, 64, generator=g) * 0.02).half()
    ops = bench_gemm.make_operands(bench_gemm.BY_NAME[name].operands, x16, w16)
    out = bench_gemm.kernel_call(name, ops)()
    err = bench_gemm.rel_error(out, bench_gemm.reference(name, ops, 8))
    assert err < 2 ** -10  # only the fp16 rounding of the output
    exact = (x16.double() @ w16.double().t())
    assert bench_gemm.rel_error(out, exact[:8]) > err  # quantization shows against the unquantized product


def test_gemm8_ws_kernels_take_a_tile_suffix():
    args = bench_gemm.parse_args(["--kernels", "ws_fp8,ws_fp8@128x128s5p2,ws_int8@64x256s4p1", "--out", "x"])
    assert args.kernel_names == ["ws_fp8", "ws_fp8@128x128s5p2", "ws_int8@64x256s4p1"]
    assert bench_gemm.ws_config("128x128s5p2") == dict(bm=128, bn=128, stages=5, split=2, wgs=1, group_m=8,
                                                       depth=1)
    assert bench_gemm.ws_config("128x128s6p1w2") == dict(bm=128, bn=128, stages=6, split=1, wgs=2, group_m=8,
                                                         depth=1)
    assert bench_gemm.ws_config("128x128s6p1w2g16")["group_m"] == 16
    assert bench_gemm.ws_config("128x128s6p1w2d2")["depth"] == 2
    assert bench_gemm.ws_config("128x128s6p1w2g4d2") == dict(bm=128, bn=128, stages=6, split=1, wgs=2, group_m=4,
                                                             depth=2)
    for bad in ("128x128s6p1g0", "128x128s6p1w2g", "128x128", "128x128s6p1d3", "128x128s6p1d2w2",
                "128x128s6p1w2d2x"):
        with pytest.raises(UserError, match="a gemm8_ws tile is BMxBNsSTAGESpSPLIT"):
            bench_gemm.ws_config(bad)
    info = bench_gemm.kernel_info("ws_fp8@128x128s5p2")
    assert info.operands == "fp8_row" and info.label == "ws_fp8@128x128s5p2"
    assert bench_gemm.kernel_info("ws_int8").operands == "int8"
    rows = [_row("o", 4096, "ws_fp8@128x128s5p2", 1500.0), _row("o", 4096, "gemm8_fp8", 1000.0)]
    table = bench_gemm.format_table(rows, ["gemm8_fp8", "ws_fp8@128x128s5p2"])
    assert "ws_fp8@128x128s5p2" in table.splitlines()[1] and table.splitlines()[3].endswith("ws_fp8@128x128s5p2")


@pytest.mark.parametrize("kernels,message", [
    ("ws_fp8@128x128", "a gemm8_ws tile is BMxBNsSTAGESpSPLIT"),
    ("gemm8_fp8@128x128s5p1", "only the ws_* kernels take a @tile suffix"),
    ("ws_fp9@128x128s5p1", "--kernels: unknown ws_fp9@128x128s5p1"),
])
def test_bad_tile_suffixes_are_one_line_errors(kernels, message, capsys):
    assert run_cli(bench_gemm.main, ["--kernels", kernels, "--out", "x"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_bench_and_profile_step_take_a_depth_two_tile_and_refuse_bad_ones(tmp_path, monkeypatch):
    """tools/bench.py --ws-tile (the end-to-end A/B of a gemm8_ws tile): parsed by profile_step's parser and set
    for every M of its family; a bad family or tile is one line before anything is built."""
    pytest.importorskip("triton.experimental.gluon")
    import bench
    import profile_step
    from mlperf_llama2.quant import gemm8_ws

    tiles = profile_step.parse_ws_tiles(["fp8_promote=128x128s6p1w2d2"], "bench")
    assert tiles == {"fp8_promote": gemm8_ws.WsConfig(128, 128, 6, 1, wgs=2, depth=2)}
    monkeypatch.setattr(gemm8_ws, "TILES", dict(gemm8_ws.TILES))
    profile_step.apply_ws_tiles(tiles)
    assert gemm8_ws.default_config(16, "fp8", True) == gemm8_ws.default_config(8192, "fp8", True) == \
        tiles["fp8_promote"]
    for bad, message in (("fp8=128x128s6p1", "bench: --ws-tile takes FAMILY=TILE"),
                         ("fp8_promote=128x128s6p1d3", "bench: --ws-tile: a gemm8_ws tile is")):
        with pytest.raises(SystemExit, match=message):
            bench.main(["--ws-tile", bad, "--out", str(tmp_path / "b")])
    assert not (tmp_path / "b").exists()


def test_every_candidate_tile_round_trips_through_its_suffix():
    """WsConfig.tag (the test ids, docs) and bench_gemm's suffix parser name the same tiles."""
    pytest.importorskip("triton.experimental.gluon")
    from mlperf_llama2.quant import gemm8_ws

    tiles = [c for family in gemm8_ws.CONFIGS.values() for c in family]
    tiles += [cfg for family in gemm8_ws.TILES.values() for _, cfg in family]
    for cfg in tiles:
        assert gemm8_ws.WsConfig(**bench_gemm.ws_config(cfg.tag)) == cfg, cfg.tag
    assert len({c.tag for c in tiles}) == len(set(tiles))


def test_every_tile_the_gpu_scripts_name_still_parses():
    """tools/gpu/*.sh name gemm8_ws tiles (bench_gemm --kernels ws_*@TILE, --ws-tile FAMILY=TILE) for calls that
    cost device time: each must parse with today's suffix grammar, not fail on the GPU machine."""
    import glob
    import re

    gpu_dir = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools", "gpu")
    found = []
    for path in sorted(glob.glob(os.path.join(gpu_dir, "*.sh"))):
        with open(path) as fh:
            text = fh.read()
        found += [(path, m) for m in re.findall(r"ws_(?:fp8_fast|fp8|int8)@([0-9a-z]+)(?![\w$])", text)]
        found += [(path, m) for m in re.findall(r"(?:fp8_promote|fp8_fast|int8)=([0-9]+x[0-9a-z]+)(?![\w$])", text)]
    assert len(found) > 10
    for path, tile in found:
        bench_gemm.ws_config(tile)  # raises UserError naming the tile


def test_operand_sets_exceed_twice_l2_with_independent_copies():
    base = {"x": torch.ones(4, 8, dtype=torch.int8), "w": torch.ones(16, 8, dtype=torch.int8)}
    per_set = 4 * 8 + 16 * 8 + 4 * 16 * 2  # operands + the 16-bit output
    sets = bench_gemm.operand_sets(base, 4, 16, l2_bytes=1000)
    assert len(sets) == bench_gemm.rotation_sets(per_set, 1000) == 7 and sets[0] is base
    assert len(sets) * per_set > 2 * 1000 and (len(sets) - 1) * per_set <= 2 * 1000
    assert all(s["w"].data_ptr() != base["w"].data_ptr() and torch.equal(s["w"], base["w"]) for s in sets[1:])
