"""fused_triton._div_elem (SiLU's per-element division, div_rn without the slow-path branch) emulated on the CPU.

`emulate` repeats the helper's operations in numpy, each as the GPU rounds it: products and fmas round once to
float32 with gradual underflow (SASS FMUL / FFMA, no .FTZ), IEEE negation, min as PTX min. An fma is exact here:
the float64 product of two float32 is exact (48 bits), the sum with z is rounded to odd in float64 (TwoSum gives
the exact error; odd last bit when inexact), and rounding that to float32 is correct because 53 >= 24 + 2
(Boldo and Melquiond); `test_fma_emulation_is_correctly_rounded` checks it against fractions. The reference a / b
is the float64 quotient rounded to float32, correct because 53 >= 2 * 24 + 2. The hardware reciprocal
rcp.approx.ftz is unknown bit for bit: it is modelled as each of the five float32 values within 2 steps of
RN(1 / b) (flushed to 0 below 2^-126, 0 for b = inf).

The proof, for every y0 of the model (the helper's docstring has the scaling cases):
- |eps| < 2^-22 (checked below), so q0 = RN(a y) is within 2^-21 Q of Q, the first remainder is rounded once
  and the first correction lands within 2^-42 Q of Q: q is faithful, so the second's remainder a - b q is exact
  (the scaled |a| is >= 2^-78, so remainders, multiples of 2^-125 at least, do not underflow), and the result is
  RN(Q + (Q - q) eps), eps = b y - 1, Q = a / b. It can differ from RN(Q) only if Q lies within |Q - q| |eps|
  (< ulp |eps|) of a rounding midpoint m; |Q - m| = |N| 2^(e-47) / m_b with a nonzero integer N (a and b's
  significands A, B: N = A 2^(24-e) - B (2M + 1)), so only when |N| <= B |eps| / (1 - |eps|);
- `test_reciprocal_meets_markstein_bound`: for all 2^23 significands B and every offset, |eps| (B + 1) < 1, so
  |N| < 1: never, except for the (B, offset) pairs in HARD;
- `test_hard_reciprocals_fail_only_at_known_dividends`: for those, every dividend significand with |N| small
  enough is tried and exactly the one listed in HARD rounds wrong (with y0 = RN(1 / b) none does); div_rn's
  own fast path, one correction from the same y, rounds it wrong too. `test_every_dividend_next_to_a_midpoint`
  runs all |N| = 1 dividends of all odd significands as a cross-check of this derivation.
Subnormal quotients (|a| < 2^-60: the last correction in the output format) have the same bound on the 2^-149
grid, plus ties, possible only for b an even integer. The remaining tests run the emulation on SiLU's operands
(every finite fp16 and bf16 x, random fp32 x) and on hard divisors, and show that the check can fail.
"""

from __future__ import annotations

import math
import warnings
from fractions import Fraction

import numpy as np
import pytest

F32, F64 = np.float32, np.float64
TWO64, TWOM64, TWO71, TWOM71, TWOM60 = F32(2.0 ** 64), F32(2.0 ** -64), F32(2.0 ** 71), F32(2.0 ** -71), F32(2.0 ** -60)
OFFSETS = (-2, -1, 0, 1, 2)
# (significand of b as a 24-bit integer, y0 offset) -> the one dividend significand (24-bit integer) that rounds
# wrong there; b = 2 - j 2^-23 for j = 1, 3, 5 (1 / (2 - 2^-23) is the first, A = 2^23).
HARD = {(2 ** 24 - 1, -2): 2 ** 23, (2 ** 24 - 1, -1): 2 ** 23, (2 ** 24 - 1, 1): 2 ** 23, (2 ** 24 - 1, 2): 2 ** 23,
        (2 ** 24 - 3, 1): 13981011, (2 ** 24 - 3, 2): 13981011, (2 ** 24 - 5, 2): 15099490}


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


# --------------------------------------------------------------------------------------- fp32 operations


def f32(x) -> np.ndarray:
    return np.asarray(x, dtype=F32)


def fma(x, y, z) -> np.ndarray:
    """RN32(x y + z), one rounding (see the module docstring)."""
    x, y, z = (f32(v).astype(F64) for v in (x, y, z))
    p = x * y
    s = p + z
    bp = s - z
    err = (p - bp) + (z - (s - bp))  # TwoSum: p + z = s + err exactly
    inexact = np.isfinite(s) & np.isfinite(p) & np.isfinite(z) & (err != 0) & ((s.view(np.int64) & 1) == 0)
    s = np.where(inexact, np.nextafter(s, np.where(err > 0, np.inf, -np.inf)), s)  # round to odd
    return s.astype(F32)


def mul(x, y) -> np.ndarray:
    return (f32(x).astype(F64) * f32(y).astype(F64)).astype(F32)


def div_rn(a, b) -> np.ndarray:
    return (f32(a).astype(F64) / f32(b).astype(F64)).astype(F32)


def steps(v, k) -> np.ndarray:
    """v moved k float32 steps (v finite and > 0: its bits plus k; otherwise at most 2 steps)."""
    v = f32(v)
    k = np.broadcast_to(np.asarray(k, dtype=np.int64), v.shape)
    out = v.copy()
    for i in range(2):
        out = np.where(k > i, np.nextafter(out, F32(np.inf)), out)
        out = np.where(k < -i, np.nextafter(out, F32(-np.inf)), out)
    positive = np.isfinite(v) & (v > 0)
    moved = (v.view(np.int32).astype(np.int64) + k).clip(0, 0x7F800000).astype(np.int32).view(F32)
    return np.where(positive, moved, out).astype(F32)


def rcp_model(b, k) -> np.ndarray:
    """rcp.approx.ftz.f32 modelled: RN(1 / b) moved k steps, flushed to +0 below 2^-126; +0 for b = inf."""
    y0 = steps(div_rn(F32(1.0), b), k)
    return np.where(np.abs(y0) < F32(2.0 ** -126), F32(0.0), y0).astype(F32)


def emulate(a, b, k, second_correction=True, neg=lambda x: -x) -> np.ndarray:
    """_div_elem's compiled branch, line for line (neg: the negation x * -1.0)."""
    a, b = f32(a), f32(b)
    big = b >= TWO64
    tiny = np.abs(a) < TWOM60
    sb = np.where(big, TWOM64, F32(1.0)).astype(F32)
    t = np.where(tiny, TWOM71, F32(1.0)).astype(F32)
    t_inv = np.where(tiny, TWO71, F32(1.0)).astype(F32)
    a_s = mul(a, np.where(tiny, TWO71, sb))
    b_s = mul(b, sb)
    y0 = rcp_model(b_s, k)
    b_c = np.fmin(b_s, TWO64).astype(F32)  # PTX min: the non-NaN operand
    y = fma(neg(fma(b_c, y0, F32(-1.0))), y0, y0)
    na, ny = neg(a_s), neg(y)
    q0 = mul(a_s, y)
    q1 = fma(fma(b_c, q0, na), ny, q0)
    q1_out = mul(q1, t)
    if second_correction:
        q = fma(fma(b_c, mul(q1_out, t_inv), na), mul(ny, t), q1_out)
    else:
        q = q1_out
    return np.where(np.abs(a) == np.inf, q0, q).astype(F32)


def same(x, y) -> np.ndarray:
    """Bit for bit, any NaN equal to any NaN."""
    x, y = f32(x), f32(y)
    return (x.view(np.int32) == y.view(np.int32)) | (np.isnan(x) & np.isnan(y))


def significand(x) -> np.ndarray:
    """The 24-bit integer significand of normal float32 values."""
    return ((f32(x).view(np.int32) & 0x7FFFFF) | 0x800000).astype(np.int64)


def hard_for(b, k) -> np.ndarray:
    """Where (b's significand, offset k) is one of HARD's reciprocals."""
    sig = significand(b)
    return np.isin(sig, [bb for bb, kk in HARD if kk == k]) & np.isfinite(b)


def excluded(a, b) -> np.ndarray:
    """The docstring's exceptions: (i) 2^64 <= b < inf, 0 < |a| < 16; (ii) 2^24 <= b < inf, 0 < |a| < 2^-60;
    (iii) a subnormal quotient with b an even integer (a tie can only occur there; powers of two are exact)."""
    a, b = f32(a).astype(F64), f32(b).astype(F64)
    with np.errstate(all="ignore"):
        finite_b = np.isfinite(b)
        nonzero = a != 0
        even_int = finite_b & (b == np.round(b)) & (np.fmod(b, 2.0) == 0)
        even_int &= (significand(b) & (significand(b) - 1)) != 0  # not a power of two
        return ((finite_b & (b >= 2.0 ** 64) & nonzero & (np.abs(a) < 16))
                | (finite_b & (b >= 2.0 ** 24) & nonzero & (np.abs(a) < 2.0 ** -60))
                | (even_int & (np.abs(a / b) < 2.0 ** -126)))


def assert_exact(a, b, k, allowed) -> None:
    got, want = emulate(a, b, k), div_rn(a, b)
    bad = ~same(got, want) & ~allowed
    assert not bad.any(), (k, f32(a)[bad][:4], f32(b)[bad][:4], got[bad][:4], want[bad][:4])


# --------------------------------------------------------------------------------------- the emulation itself


def _rn32_fraction(x: Fraction) -> F32:
    """float32 nearest to x (ties to even) by comparing neighbours exactly; x finite, nonzero."""
    c = F32(float(x))
    best = None
    for v in (np.nextafter(c, F32(-np.inf)), c, np.nextafter(c, F32(np.inf))):
        if not np.isfinite(v):
            continue
        d = abs(Fraction(float(v)) - x)
        if best is None or d < best[0] or (d == best[0] and int(f32(v).view(np.int32)) % 2 == 0):
            best = (d, v)
    return best[1]


def test_fma_emulation_is_correctly_rounded():
    rng = np.random.default_rng(0)
    checked = 0
    for i in range(3000):
        e = rng.integers(-149, 126, 3)
        if i % 3 == 0:
            e[2] = e[0] + e[1] + rng.integers(-30, 30)  # sums that cancel and carry
        x, y, z = (F32(rng.uniform(1, 2) * 2.0 ** int(k) * rng.choice([-1, 1])) for k in e)
        if i % 5 == 0:
            z = F32(-(F64(x) * F64(y)))  # near-total cancellation
        if not all(np.isfinite(v) and v != 0 for v in (x, y, z)):
            continue
        exact = Fraction(float(x)) * Fraction(float(y)) + Fraction(float(z))
        if exact == 0 or abs(exact) >= 2 ** 128 - 2 ** 103:
            continue
        assert fma(x, y, z) == _rn32_fraction(exact), (x, y, z)
        checked += 1
    assert checked > 2000
    assert fma(F32(2.0 ** -75), F32(2.0 ** -75), F32(0.0)) == F32(2.0 ** -149) / 2 * 2  # a subnormal, exactly
    assert math.copysign(1, fma(F32(-1.0), F32(0.0), F32(-0.0))) == -1  # -0 + -0 = -0
    assert math.copysign(1, fma(F32(1.0), F32(0.0), F32(-0.0))) == 1  # +0 + -0 = +0 in RN


# --------------------------------------------------------------------------------------- the proof


@pytest.mark.slow
def test_reciprocal_meets_markstein_bound():
    """All 2^23 significands (b in [1, 2); y, eps and the bound scale exactly with b's exponent)."""
    big_b = np.arange(2 ** 23, 2 ** 24, dtype=np.int64)
    b = (big_b / 2.0 ** 23).astype(F32)
    failing = set()
    for k in OFFSETS:
        y0 = rcp_model(b, k)
        y = fma(-fma(b, y0, F32(-1.0)), y0, y0)
        big_y = (y.astype(F64) * 2.0 ** 24).astype(np.int64)  # y in (1/2, 1]: a multiple of 2^-24
        assert np.array_equal(big_y.astype(F64), y.astype(F64) * 2.0 ** 24)
        d = big_b * big_y - 2 ** 47  # eps = d / 2^47, exactly
        assert (np.abs(d) < 2 ** 25).all()  # |eps| < 2^-22
        over = np.abs(d) * (big_b + 1) >= 2 ** 47  # |eps| (B + 1) >= 1
        failing |= {(int(bb), k) for bb in big_b[over]}
        if k == 0:
            assert not over.any()
    assert failing == set(HARD)


def midpoint_dividends(big_b: np.ndarray, ns=(1, -1), grid_exp: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(A, B): the dividends whose quotient by b lies N steps of 2^(e-47) / m_b from a rounding midpoint, N in ns
    (the only ones that can round wrong when |N| <= B |eps| / (1 - |eps|)), for odd 24-bit significands B:
    A 2^(24-e) - B (2M + 1) = N with A, M 24-bit significands, e = -1, 0 (the quotient below or above 1).
    grid_exp = 1, 2: subnormal quotients instead, b = B 2^(grid_exp-24) in [1, 4) and the dividend A 2^-149:
    A 2^(25-grid_exp) - B (2C + 1) = N with 2C + 1 < 2^24 (representable A only)."""
    big_b = np.asarray(big_b, dtype=np.int64)
    assert (big_b % 2 == 1).all()
    mask = (1 << 25) - 1
    inv = big_b.copy()  # B^-1 modulo 2^25 by Newton-Hensel: 3 correct bits, doubling
    for _ in range(5):
        inv = (inv * ((2 - ((big_b * inv) & mask)) & mask)) & mask
    a_out, b_out = [], []
    for shift in ((25, 24) if grid_exp == 0 else (25 - grid_exp,)):
        mod = 1 << shift
        for n in ns:
            if n % 2 == 0:
                continue  # B (2M + 1) is odd
            c = (-n * inv) % mod  # 2M + 1 (or 2C + 1) modulo 2^shift
            if grid_exp == 0:
                odd, bb = (c if shift == 25 else c + mod), big_b  # 2M + 1 in (2^24, 2^25)
                ok = odd > (1 << 24)
            else:
                odd = np.concatenate([c, c + mod]) if shift < 24 else c
                bb = big_b if odd.size == big_b.size else np.concatenate([big_b, big_b])
                ok = odd < (1 << 24)  # a subnormal quotient
            num = bb * odd + n
            assert (num % mod == 0).all()
            a = num // mod
            if grid_exp == 0:
                ok &= (a >= (1 << 23)) & (a < (1 << 24))
            else:
                ok &= (a < (1 << 24)) | (a % 2 == 0)  # 2^24 <= A < 2^25: representable when even
            a_out.append(a[ok])
            b_out.append(bb[ok])
    return np.concatenate(a_out), np.concatenate(b_out)


def test_hard_reciprocals_fail_only_at_known_dividends():
    for (big_b, k), wrong in HARD.items():
        b = F32(big_b / 2.0 ** 23)
        y0 = rcp_model(b, k)
        eps = abs(F64(b) * F64(fma(-fma(b, y0, F32(-1.0)), y0, y0)) - 1)
        n_max = math.floor(big_b * eps / (1 - eps))
        assert n_max == 1
        sig, _ = midpoint_dividends(np.array([big_b]), ns=(1, -1))
        a = (sig / 2.0 ** 23).astype(F32)
        for scale_a, scale_b in ((1.0, 1.0), (-(2.0 ** 40), 2.0 ** 3), (2.0 ** -50, 2.0 ** 20), (16.0, 2.0 ** 100)):
            aa, bb = (a * F32(scale_a)).astype(F32), np.full(a.shape, b * F32(scale_b), dtype=F32)
            bad = ~same(emulate(aa, bb, k), div_rn(aa, bb))
            assert sig[bad].tolist() == [wrong], (big_b, k, sig[bad])
            assert same(emulate(aa, bb, 0), div_rn(aa, bb)).all()  # y0 = RN(1 / b): none
            # div_rn's own fast path (one correction) rounds the same dividend wrong with that y0
            assert not same(emulate(aa, bb, k, second_correction=False), div_rn(aa, bb))[bad].any()
    assert emulate(F32(1.0), F32(2 - 2.0 ** -23), -1) == F32(0.5)  # RN is 0.5 + 2^-24


@pytest.mark.slow
def test_every_dividend_next_to_a_midpoint():
    """The derivation's cross-check: for every odd significand, the dividends with |N| = 1 (normal quotients,
    then subnormal ones with b in [1, 2)) are right with y0 = RN(1 / b), and with y0 a step off wrong only
    for HARD's significands (all of them for normal quotients)."""
    odd_b = np.arange((1 << 23) + 1, 1 << 24, 2, dtype=np.int64)
    for grid_exp in (0, 1):
        sig_a, sig_b = midpoint_dividends(odd_b, grid_exp=grid_exp)
        if grid_exp == 0:
            a, b = (sig_a / 2.0 ** 23).astype(F32), (sig_b / 2.0 ** 23).astype(F32)
        else:
            a, b = (sig_a * 2.0 ** -149).astype(F32), (sig_b * 2.0 ** -23).astype(F32)
        assert a.size > 5 * 10 ** 6
        for k in (0, 1):
            bad = set(sig_b[~same(emulate(a, b, k), div_rn(a, b))].tolist())
            hard = {bb for bb, kk in HARD if kk == k}
            assert bad == hard if grid_exp == 0 else bad <= hard, (grid_exp, k, bad)


# --------------------------------------------------------------------------------------- SiLU's operands


def _silu_divisor(g: np.ndarray) -> np.ndarray:
    """1 + exp(-x) in fp32 as the kernels compute it: expf (here the float64 exp rounded; libdevice's is within
    2 ulps, so the tests also take b's neighbours), then one rounded add."""
    return (F32(1.0) + np.exp(-f32(g).astype(F64)).astype(F32)).astype(F32)


def _with_neighbours(g: np.ndarray, b: np.ndarray):
    gs, bs = [], []
    for j in (-2, -1, 0, 1, 2):
        bj = np.maximum(steps(b, j), F32(1.0))
        gs.append(g)
        bs.append(np.where(np.isinf(b), b, bj).astype(F32))
    return np.concatenate(gs), np.concatenate(bs)


def _all_finite(dtype_bits: str) -> np.ndarray:
    """Every finite fp16 or bf16 value (zeros, subnormals and +-max included), as float32."""
    raw = np.arange(2 ** 16, dtype=np.uint32)
    if dtype_bits == "fp16":
        g = raw.astype(np.uint16).view(np.float16).astype(F32)
    else:
        g = (raw << 16).view(F32)
    return g[np.isfinite(g)]


@pytest.mark.parametrize("dtype_bits", ["fp16", "bf16"])
def test_silu_operands_every_16_bit_value(dtype_bits):
    g = _all_finite(dtype_bits)
    assert g.size in (63488, 65280)
    a, b = _with_neighbours(g, _silu_divisor(g))
    for k in OFFSETS:
        assert_exact(a, b, k, allowed=hard_for(b, k))
    assert not excluded(a, b).any()  # SiLU never reaches the exceptions
    # the hard reciprocals are reached: x = 2^-23 gives b = 2 - 2^-23 (a y0 other than RN(1 / b) would miss)
    assert _silu_divisor(F32(2.0 ** -23)) == F32(2 - 2.0 ** -23)


def test_silu_operands_random_fp32():
    rng = np.random.default_rng(1)
    bits = rng.integers(0, 2 ** 32, 2 ** 19, dtype=np.uint64).astype(np.uint32)
    g = bits.view(F32)
    g = np.concatenate([g[np.isfinite(g)], f32([0.0, -0.0, 1e-45, -1e-45, 2.0 ** -126, -(2.0 ** -60), 87.5, -87.5,
                                                 -88.72, -88.73, -104.0, 3.4028235e38, -3.4028235e38])])
    a, b = _with_neighbours(g, _silu_divisor(g))
    for k in OFFSETS:
        assert_exact(a, b, k, allowed=hard_for(b, k))
    assert not excluded(a, b).any()
    assert (b >= 2.0 ** 126).any() and np.isinf(b).any() and (np.abs(a / b) < 2.0 ** -126).any()


def test_silu_infinities_and_nan():
    g = f32([np.inf, -np.inf, np.nan])
    b = _silu_divisor(g)  # 1, inf, nan: inf, nan, nan
    for k in OFFSETS:
        assert same(emulate(g, b, k), div_rn(g, b)).all()
    assert emulate(g, b, 0)[0] == np.inf


# --------------------------------------------------------------------------------------- beyond SiLU


def _hard_divisors(rng, n: int, max_exp: int) -> np.ndarray:
    """Significands all ones with the k lowest bits cleared, 1 + 2^-k, or random; exponents 0 .. max_exp."""
    k = rng.integers(0, 23, n)
    kind = rng.integers(0, 3, n)
    sig = np.where(kind == 0, 2 ** 24 - 2 ** k,
                   np.where(kind == 1, 2 ** 23 + 2 ** k, rng.integers(2 ** 23, 2 ** 24, n)))
    return (sig / 2.0 ** 23 * 2.0 ** rng.integers(0, max_exp + 1, n)).astype(F32)


def test_general_operands_and_hard_divisors():
    """Any a, b in [1, inf]: right except the documented exceptions (and HARD's reciprocals off RN)."""
    rng = np.random.default_rng(2)
    n = 2 ** 18
    a_bits = rng.integers(0, 2 ** 32, n, dtype=np.uint64).astype(np.uint32)
    tiny_bits = rng.integers(0, 0x1B000000, n, dtype=np.uint64).astype(np.uint32)  # |a| < 2^-73, subnormals
    a = np.concatenate([a_bits.view(F32), tiny_bits.view(F32) * rng.choice(f32([-1, 1]), n)]).astype(F32)
    b = np.concatenate([_hard_divisors(rng, n, 127), _hard_divisors(rng, n, 30)])
    b = np.where(rng.integers(0, 16, 2 * n) == 0, (rng.uniform(1, 2, 2 * n) * 2.0 ** 127).astype(F32), b)
    b = np.where(rng.integers(0, 64, 2 * n) == 0, F32(np.inf), b).astype(F32)
    keep = np.isfinite(a)
    a, b = a[keep], b[keep]
    for k in OFFSETS:
        assert_exact(a, b, k, allowed=excluded(a, b) | hard_for(b, k))
    assert (np.abs(div_rn(a, b)) < 2.0 ** -126).mean() > 0.2  # many subnormal quotients


def test_zeros_infinities_nan_and_the_extremes():
    a = f32([0.0, -0.0, np.inf, -np.inf, np.nan, 1.0, -1.0, 1e-45, -1e-45, 3.4028235e38, -3.4028235e38,
             2.0 ** -60, -(2.0 ** -61), 16.0, -88.5])
    b = f32([1.0, 1.5, 2.0, 2.0 ** 24, 2.0 ** 64, 2.0 ** 126, 3.4028235e38, np.inf, np.nan, 1 + 2.0 ** -23])
    aa, bb = (v.ravel() for v in np.meshgrid(a, b))
    for k in OFFSETS:
        assert_exact(aa, bb, k, allowed=excluded(aa, bb) | hard_for(bb, k))  # 1 / FLT_MAX is one of HARD's
    zero = emulate(f32([-0.0, 0.0, -0.0, -1.0]), f32([2.0, 3.0, 2.0 ** 100, np.inf]), 0)
    assert (np.signbit(zero) == [True, False, True, True]).all() and (zero == 0).all()


# --------------------------------------------------------------------------------------- the check can fail


def _mismatches(k, **kw) -> int:
    rng = np.random.default_rng(3)
    a = (rng.uniform(1, 2, 2 ** 18) * rng.choice([-1, 1], 2 ** 18)).astype(F32)
    b = _hard_divisors(rng, a.size, 20)
    return int((~same(emulate(a, b, k, **kw), div_rn(a, b))).sum())


def test_the_check_finds_wrong_divisions():
    assert _mismatches(0) == 0
    # a reciprocal 3 steps off adds the next significand below 2 to HARD (and 4 steps the next), each wrong at
    # the one dividend the enumeration gives
    for big_b, sig, k in ((2 ** 24 - 7, 15578837, 3), (2 ** 24 - 9, 15845140, 4)):
        a, b = F32(sig / 2.0 ** 23), F32(big_b / 2.0 ** 23)
        assert sig in midpoint_dividends(np.array([big_b]))[0].tolist()
        assert same(emulate(a, b, k - 1), div_rn(a, b)) and not same(emulate(a, b, k), div_rn(a, b))
    # far-off reciprocals, or one correction instead of two, show on random operands (the Newton step and the
    # second correction are what make 2 steps harmless)
    assert _mismatches(2 ** 17) > 0 and _mismatches(2 ** 14, second_correction=False) > 0
    # the negation must be IEEE's (x * -1.0, not Triton's 0 - x) where y = 0: -1 / inf is -0
    assert math.copysign(1, emulate(F32(-1.0), F32(np.inf), 0)) == -1
    assert math.copysign(1, emulate(F32(-1.0), F32(np.inf), 0, neg=lambda x: F32(0.0) - x)) == 1
