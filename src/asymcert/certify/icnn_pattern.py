"""The ReLU pattern of the fast ICNN reference from bfloat16 matrix products, with a rigorous bound.

:mod:`asymcert.certify.bounded_icnn` needs, for every input n and hidden unit j, the sign of the exact
pre-activation t = U₀ⱼ·f + c₀ⱼ, or the word that it is too close to 0 to tell (a *candidate*, recomputed in
float64 there). Its float32 product (step 2 of that module) is the cost of the pass; on CPUs with
bfloat16 matrix hardware (AMX or AVX512-BF16, through oneDNN) this module gets the same answer from two
bfloat16 products about twice as fast. Nothing here can make a certificate wrong: any pattern gives a valid
one (bounded_icnn's docstring); the bound below decides only which signs are known.

Splitting. Every float32 number x is hi + lo + r with hi = bf16(x), lo = bf16(x − hi) (x − hi, and then
x − hi − lo, are exact in float32) and |r| ≲ 2⁻¹⁶|x|. With f̂ = fl₃₂(f̂₆₄) = f_hi + f_lo + r_f, U₀ = U_hi + U_lo +
R and c₀ = c_hi + c_lo + r_c (the weights' bfloat16 values below 2⁻¹²⁶ set to 0; V = U_hi + U_lo and F = f_hi +
f_lo, exact in float64), two products

    T₁ = [f_hi | 1] · [U_hi | c_hi]ᵀ   (d + 1 terms),   T₂ = [f_lo | f_hi | 1] · [U_hi | U_lo | c_lo]ᵀ   (2d + 1)

target τ₁ + τ₂ = U_hi·F + U_lo·f_hi + c_hi + c_lo, and t − τ₁ − τ₂ = U₀ⱼ·(f − F) + (U₀ⱼ − Vⱼ)·F + U_lo,ⱼ·f_lo +
r_c. By Cauchy–Schwarz, with f the exact features (|f − f̂₆₄| ≤ e):

    |t − τ₁ − τ₂| ≤ ‖U₀ⱼ‖‖f − F‖ + ‖U₀ⱼ − Vⱼ‖‖F‖ + ‖U_lo,ⱼ‖‖f_lo‖ + |r_c|.

Each product of two bfloat16 numbers is exact in float32 (16 significant bits); oneDNN accumulates them in
float32 (its documented default for bfloat16) in some order, flushing subnormal results (2⁻¹²⁶ per operation
at most), so |T₁ − τ₁| ≤ γ_{d+1}(‖U_hi,ⱼ‖‖f_hi‖ + |c_hi|) and |T₂ − τ₂| ≤ γ_{2d+1}(‖U_hi,ⱼ‖‖f_lo‖ +
‖U_lo,ⱼ‖‖f_hi‖ + |c_lo|), each plus 2K·2⁻¹²⁶ (γ at u = 2⁻²⁴). Each result is rounded once to bfloat16:
|t̂ᵢ − Tᵢ| ≤ 2⁻⁸|Tᵢ| + 2⁻¹²⁶ ≤ c₈(|t̂ᵢ| + 2⁻¹²⁶) + 2⁻¹²⁶ with c₈ = 2⁻⁸/(1 − 2⁻⁸). With B the sum of these
bounds (four rank-one terms, a per-unit constant and c₈(|t̂₁| + |t̂₂|), :class:`Bf16Product`, all inflated by
BOUND_SAFETY and rounded up to float32), |t − (t̂₁ + t̂₂)| ≤ B, and every unit with |t̂₁ + t̂₂| > B has the sign
of t̂₁ + t̂₂; the others are candidates. The second product's terms are 2⁸ times smaller, so B is close to
the float32 pass's bound (on the demo model 1.5× as many candidates: 6,846 of 3,422 × 2,000 units), and the
two products together cost less than half of one float32 product. Rows whose sums could reach 2¹²⁰ (or whose
features are not finite) are all candidates, as in the float32 pass.

The float32 accumulation is an assumption about the library, not a proof; :func:`accumulates_in_float32`
checks it once per product length with sums that cancel (a product that rounded its partial sums to
bfloat16 fails it by a factor of about 5), and the float32 pass is used where it fails or where the
hardware is missing (:func:`bf16_product`). ``PATTERN_PRODUCTS = "float32"`` forces the float32 pass.
"""

from __future__ import annotations

import ctypes
import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from asymcert import _native
from asymcert.certify.bounded_convex import BOUND_SAFETY, up32
from asymcert.certify.modes import gamma

U32 = 2.0**-24
U_BF16 = 2.0**-8  # bfloat16's unit roundoff (8 significant bits)
C8 = U_BF16 / (1.0 - U_BF16)  # |t̂ − T| ≤ C8·|t̂| for a bfloat16 rounding t̂ of T (away from underflow)
TINY = 2.0**-126  # the smallest normal float32 / bfloat16 number
PATTERN_PRODUCTS = "auto"  # "auto": bfloat16 where fast and checked; "float32": always the float32 pass
# rows per bfloat16 product: a certificate chunk of the demo model (1337 rows) in one product took 8.3 ms against
# 10.5 ms as 1024 + 313 (32 MB of t̂ at 4096 units)
PATTERN_TILE = 2048
CANDIDATE_CAP = 64  # candidates the kernel lists per row (the demo model has about 9)
# oneDNN's bfloat16 products ran about 1.8× faster per unit at widths that are multiples of 1024 on the AMX machine
# of benchmarks/README.md ("The sound default at 30×", session 28: the demo model's 3422 units with w ≠ 0 took
# 9.8 ms per 1024 inputs, padded to 4096 6.4 ms)
WIDTH_STEP = 1024
_KERNEL_SRC = Path(__file__).resolve().parent.parent / "nn" / "_convex_kernels" / "icnn_pattern.cpp"


def pattern_products() -> str:
    """The current ``PATTERN_PRODUCTS`` setting (read when constants are built, and part of their cache key)."""
    return PATTERN_PRODUCTS


def split_bf16(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 ``x`` as (hi, lo), bfloat16 each, hi = bf16(x), lo = bf16(x − hi), values below 2⁻¹²⁶ set to 0."""
    hi = x.bfloat16()
    hi = hi.masked_fill(hi.abs() < TINY, 0.0)
    lo = (x - hi.float()).bfloat16()
    return hi, lo.masked_fill(lo.abs() < TINY, 0.0)


@dataclass
class Bf16Product:
    """Per-model data of the bfloat16 pattern products (module docstring), W hidden units, d features.

    Attributes:
        first: (W', d + 1) bfloat16 [U_hi | c_hi]; second: (W', 2d + 1) bfloat16 [U_hi | U_lo | c_lo]; W' ≥ W: zero
            rows after the W units where that makes the products faster (:func:`_padding`).
        cols: (4, W) float32 rounded up: ‖U₀ⱼ‖, ‖U₀ⱼ − Vⱼ‖, ‖U_lo,ⱼ‖, ‖U_hi,ⱼ‖ (× BOUND_SAFETY).
        beta: (W,) float32 rounded up: the per-unit constant of the bound (the c terms, every 2⁻¹²⁶ term).
        sigma_max, lo_max, c_max: max ‖U_hi,ⱼ‖, max ‖U_lo,ⱼ‖, max |c_hi| + |c_lo| (the overflow test).
    """

    first: torch.Tensor
    second: torch.Tensor
    cols: torch.Tensor
    beta: torch.Tensor
    sigma_max: float
    lo_max: float
    c_max: float


def fast_bfloat16() -> bool:
    """Whether bfloat16 matrix products run on hardware here (AMX or AVX512-BF16, through oneDNN)."""
    try:
        hardware = bool(torch.cpu._is_amx_tile_supported()) or bool(torch.cpu._is_avx512_bf16_supported())
    except AttributeError:  # (a PyTorch without these queries: the float32 pass)
        return False
    return hardware and torch.backends.mkldnn.is_available()


@functools.lru_cache(maxsize=64)
def accumulates_in_float32(k: int) -> bool:
    """Whether PyTorch's bfloat16 product of length ``k`` here keeps within the bound of the module docstring
    (:func:`product_within_bound` on ``a @ b.t()``); checked once per length and process."""
    return product_within_bound(k, lambda a, b: a @ b.t())


def product_within_bound(k: int, product: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> bool:
    """Whether ``product(a, b)`` (bfloat16 (64, k) and (256, k) → (64, 256) bfloat16) is within γ_k(2⁻²⁴)Σ|terms|
    (1 + 2⁻⁸) + 2⁻⁸|exact| + (2k + 1)·2⁻¹²⁶ of the exact aᵇᵀ on sums that grow to about k and cancel back (float64
    is exact here: every value is a multiple of 2⁻¹⁴ below 4k). Rounding the partial sums to bfloat16 misses it by a
    factor of about 5 (``tests/certify/test_icnn_pattern.py``)."""
    gen = torch.Generator().manual_seed(0)
    a = (1.0 + torch.rand(64, k, generator=gen)).bfloat16()
    sign = torch.ones(k)
    sign[k // 2 :] = -1.0
    b = ((1.0 + torch.rand(256, k, generator=gen)) * sign).bfloat16()
    t = product(a, b).double()
    exact = a.double() @ b.double().t()
    mag = a.double().abs() @ b.double().abs().t()
    bound = gamma(k, U32) * mag * (1.0 + U_BF16) + U_BF16 * exact.abs() + (2 * k + 1) * TINY
    return bool(((t - exact).abs() <= bound).all())


def bf16_product(u0: torch.Tensor, c0: torch.Tensor) -> Bf16Product | None:
    """:class:`Bf16Product` of U₀ (W, d) and c₀ (W,) float32, or None where the bfloat16 pass is not used: no
    bfloat16 hardware, ``PATTERN_PRODUCTS`` set to "float32", products that failed
    :func:`accumulates_in_float32`, or weights whose split is not finite."""
    d = u0.shape[1]
    if PATTERN_PRODUCTS != "auto" or not fast_bfloat16():
        return None
    if not (accumulates_in_float32(d + 1) and accumulates_in_float32(2 * d + 1)):
        return None
    u_hi, u_lo = split_bf16(u0)
    c_hi, c_lo = split_bf16(c0)
    pad = _padding(u0.shape[0])
    first = torch.nn.functional.pad(torch.cat([u_hi, c_hi[:, None]], 1), (0, 0, 0, pad)).contiguous()
    second = torch.nn.functional.pad(torch.cat([u_hi, u_lo, c_lo[:, None]], 1), (0, 0, 0, pad)).contiguous()
    u64, hi64, lo64 = u0.double(), u_hi.double(), u_lo.double()
    norms = torch.stack([u64.norm(dim=1), (u64 - hi64 - lo64).norm(dim=1), lo64.norm(dim=1), hi64.norm(dim=1)])
    c_hi64, c_lo64 = c_hi.double().abs(), c_lo.double().abs()
    g1, g2 = gamma(d + 1, U32), gamma(2 * d + 1, U32)
    tiny = (2 * (3 * d + 2) + 2 * (1 + 2 * C8)) * TINY  # flushed sums, and both outputs' underflow
    beta = ((c0.double() - c_hi.double() - c_lo.double()).abs() + g1 * c_hi64 + g2 * c_lo64 + tiny) * BOUND_SAFETY
    if not all(bool(torch.isfinite(v).all()) for v in (first.float(), second.float(), norms)):
        return None
    return Bf16Product(
        first=first,
        second=second,
        cols=up32(norms * BOUND_SAFETY),
        beta=up32(beta),
        sigma_max=float(norms[3].max()),
        lo_max=float(norms[2].max()),
        c_max=float((c_hi64 + c_lo64).max()),
    )


def _padding(width: int) -> int:
    """Zero units to add to a product of ``width`` units so that its width is a multiple of WIDTH_STEP, where that
    costs at most a quarter more work (their outputs are never read)."""
    padded = -(-width // WIDTH_STEP) * WIDTH_STEP
    return padded - width if padded <= 1.25 * width else 0


def _row_terms(
    prod: Bf16Product, f: torch.Tensor, e: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The products' left factors (N, d + 1) and (N, 2d + 1) bfloat16, the bound's row factors (N, 4) float32
    rounded up (× BOUND_SAFETY) and the rows (N,) bool whose sums could overflow.

    Only ‖f̂₆₄‖ and ‖e‖ are computed (in float64: float32 squares of features below about 10⁻¹⁹ underflow, and
    norms of 0 dropped every term of the bound, review 28a); the rest follows from rounding to nearest: f̂ =
    fl₃₂(f̂₆₄) has ‖f̂‖ ≤ (1 + u)‖f̂₆₄‖ + √d·2⁻¹⁴⁹ and ‖f̂₆₄ − f̂‖ ≤ u‖f̂₆₄‖ + √d·2⁻¹⁵⁰; a bfloat16 rounding moves x by
    at most 2⁻⁸|x| + 2⁻¹³⁴, so |r_f| ≤ 2⁻¹⁶|f̂| + 2⁻¹³³ and |f_lo| ≤ 2⁻⁸(1 + 2⁻⁸)|f̂| + 2⁻¹³³ elementwise, and
    ‖F‖ ≤ ‖f̂‖ + ‖r_f‖, ‖f_hi‖ ≤ ‖f̂‖ + ‖f_lo‖ + ‖r_f‖. (A feature that bfloat16 rounds to ±∞ makes its products
    non-finite, and non-finite outputs are always candidates.) Subnormal bfloat16 features are kept; hardware
    that reads them as 0 changes the 3d products by at most (2‖U_hi,ⱼ‖₁ + ‖U_lo,ⱼ‖₁)·2⁻¹²⁶ ≤ 4√d·2⁻¹²⁶‖U₀ⱼ‖, in
    the first row factor.

    Args:
        f: (N, d) float64 features f̂₆₄; e: (N, d) float64 bound on their error.
    """
    n, d = f.shape
    f32 = f.float()
    f_hi = f32.bfloat16()
    f_lo = (f32 - f_hi.float()).bfloat16()
    root_d = math.sqrt(d)
    norm64 = f.norm(dim=1)
    norm = (1.0 + U32) * norm64 + root_d * 2.0**-149  # ≥ ‖f̂‖
    resid = 2.0**-16 * norm + root_d * 2.0**-133  # ≥ ‖r_f‖
    lo_norm = 2.0**-8 * (1.0 + 2.0**-8) * norm + root_d * 2.0**-133  # ≥ ‖f_lo‖
    g1, g2 = gamma(d + 1, U32), gamma(2 * d + 1, U32)
    hi_norm = norm + lo_norm + resid
    off = e.norm(dim=1) + U32 * norm64 + resid + root_d * (2.0**-150 + 4 * TINY)
    rows = torch.stack([off, norm + resid, lo_norm + g2 * hi_norm, g1 * hi_norm + g2 * lo_norm], 1)
    risky = ~((hi_norm + lo_norm) * prod.sigma_max + hi_norm * prod.lo_max + prod.c_max < 2.0**120)
    ones = torch.ones(n, 1, dtype=torch.bfloat16)
    first, second = torch.cat([f_hi, ones], 1), torch.cat([f_lo, f_hi, ones], 1)
    return first, second, up32(rows * BOUND_SAFETY), risky | ~torch.isfinite(rows).all(1)


def bf16_candidates(
    prod: Bf16Product, f: torch.Tensor, e: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The pattern [t̂₁ + t̂₂ > 0] (N, W) bool and the candidate units, as row and column indices (K,) int64 sorted
    by row then column, from the bfloat16 products (module docstring), PATTERN_TILE rows per product.

    Args:
        f: (N, d) float64 features f̂₆₄; e: (N, d) float64 bound on |f̂₆₄ − f|.
    """
    first, second, rows, risky = _row_terms(prod, f, e)
    n, width = f.shape[0], prod.cols.shape[1]
    pattern = torch.empty(n, width, dtype=torch.bool)
    found_rows, found_cols = [], []
    for lo in range(0, n, PATTERN_TILE):
        hi = min(n, lo + PATTERN_TILE)
        t1, t2 = torch.mm(first[lo:hi], prod.first.t()), torch.mm(second[lo:hi], prod.second.t())
        r, c = _classify(t1, t2, rows[lo:hi], risky[lo:hi], prod, pattern[lo:hi])
        found_rows.append(r + lo)
        found_cols.append(c)
    return pattern, torch.cat(found_rows), torch.cat(found_cols)


def _declare(lib: ctypes.CDLL) -> None:
    fn = lib.asymcert_icnn_pattern_bf16
    p, i = ctypes.c_void_p, ctypes.c_int64
    fn.argtypes = [p, p, i, i, i, p, p, p, ctypes.c_float, p, p, p, i, ctypes.c_int]
    fn.restype = ctypes.c_int64


_KERNEL = _native.LazyKernel(
    "ICNN pattern C++ kernel",
    lambda: _native.build_and_load(_KERNEL_SRC, "asymcert_icnn_pattern_abi_version", 4, _declare),
)
_C8_UP = float(up32(torch.tensor(C8 * BOUND_SAFETY, dtype=torch.float64)))  # c₈ for the float32 kernel
_SHRINK = 1.0 - 2.0**-20  # |ŝ|·_SHRINK (rounded) stays below |t̂₁ + t̂₂|: covers the rounding of ŝ = fl(t̂₁ + t̂₂)


def _classify(
    t1: torch.Tensor,
    t2: torch.Tensor,
    rows: torch.Tensor,
    risky: torch.Tensor,
    prod: Bf16Product,
    pattern: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """pattern[:] = [ŝ > 0] for tiles t̂₁, t̂₂ (n, W) bfloat16 (ŝ = fl₃₂(t̂₁ + t̂₂)), and the candidates, units with not
    |ŝ|·(1 − 2⁻²⁰) > bound, and every unit of a ``risky`` row, as row and column indices (K,) int64 sorted by row
    then column: one pass of the compiled kernel, which lists up to CANDIDATE_CAP candidates per row (rows with
    more, and risky rows, are listed by :func:`_flagged`); PyTorch's operations where it is unavailable."""
    lib = _KERNEL.get()
    if lib is None:
        width = prod.cols.shape[1]
        t1, t2 = t1[:, :width], t2[:, :width]
        torch.gt(t1.float() + t2.float(), 0.0, out=pattern)
        return _flagged(t1, t2, rows, risky, prod, torch.ones_like(risky))
    n, width, stride = t1.shape[0], prod.cols.shape[1], t1.shape[1]
    bits1, bits2 = t1.contiguous().view(torch.int16), t2.contiguous().view(torch.int16)  # (alive through the call)
    row_factors = rows.contiguous()
    cand_cols = torch.empty(n, CANDIDATE_CAP, dtype=torch.int32)
    counts = torch.empty(n, dtype=torch.int64)
    lib.asymcert_icnn_pattern_bf16(
        bits1.data_ptr(),
        bits2.data_ptr(),
        n,
        width,
        stride,
        row_factors.data_ptr(),
        prod.cols.data_ptr(),
        prod.beta.data_ptr(),
        _C8_UP,
        pattern.data_ptr(),
        cand_cols.data_ptr(),
        counts.data_ptr(),
        CANDIDATE_CAP,
        1 if n < 64 else torch.get_num_threads(),
    )
    full = risky | (counts > CANDIDATE_CAP)
    r, c = ((torch.arange(CANDIDATE_CAP) < counts[:, None]) & ~full[:, None]).nonzero(as_tuple=True)
    c = cand_cols[r, c].long()
    if not bool(full.any()):
        return r, c
    r_full, c_full = _flagged(t1, t2, rows, risky, prod, full)
    key = (torch.cat([r, r_full]) * width + torch.cat([c, c_full])).sort().values
    return key // width, key % width


def _flagged(
    t1: torch.Tensor, t2: torch.Tensor, rows: torch.Tensor, risky: torch.Tensor, prod: Bf16Product, which: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The candidates of the rows ``which`` (n,) bool of tiles t̂₁, t̂₂ (n, W), by PyTorch with the kernel's test
    (:func:`_classify`), every unit of a ``risky`` row; row and column indices (K,) int64 sorted by row, column."""
    at, width = which.nonzero().flatten(), prod.cols.shape[1]
    a1, a2 = t1[at, :width].float(), t2[at, :width].float()
    bound = torch.addmm(prod.beta, rows[at], prod.cols).add_(a1.abs().add_(a2.abs()), alpha=_C8_UP)
    cand = torch.logical_not(torch.gt((a1 + a2).abs_().mul_(_SHRINK), bound))
    cand[risky[at]] = True
    idx = torch.from_numpy(np.flatnonzero(cand.numpy()))  # (NumPy's: 8× torch.nonzero's speed on a sparse mask)
    return at[idx // width], idx % width
