"""ℓ∞-distance layers (Zhang et al. 2021/2022): y[b, o] = ‖x[b, :] − w[o, :]‖_p (+ bias).

Every output is 1-Lipschitz in ℓ∞ at p = ∞, so a stack of these layers (with :class:`MeanShift`
between them) is 1-Lipschitz in ℓ∞ and certifies radius margin / 2.

Two implementations of the same maths:

* the FAST path, :func:`linf_dist`, with custom autograd functions that never materialise
  batch × out × in. ``backend="auto"`` picks, per call:

  - ``"cpp"``: register-tiled C++ kernels (``_linf_kernels/linf_kernels.cpp``), compiled with the
    system C++ compiler on first use (a few seconds), cached under ``$ASYMCERT_KERNEL_DIR`` or
    ``~/.cache/asymcert/kernels``, loaded with ctypes. CPU, float32/float64, finite inputs.
    Finite p: integer p ∈ {1, 2, 4, 8, 16} by multiplications; any other p (float32, AVX-512)
    by a table-driven vectorised log2/exp2 (about 4× the per-term cost of p = 8; it was ~10×).
  - ``"compile"``: ``torch.compile`` of the fused broadcast expressions (Inductor: C++/OpenMP on
    CPU, Triton on GPU). Used by ``"auto"`` for non-CPU tensors when Triton is importable.
  - ``"torch"``: chunked eager PyTorch (any device, any dtype); the fallback of the two above.

* the REFERENCE path, :func:`linf_dist_reference`: plain chunked broadcasting with ordinary
  autograd, used by the tests to check the fast path.

Set ``ASYMCERT_NO_KERNELS=1`` to never compile anything.
"""

from __future__ import annotations

import ctypes
import math
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from asymcert import _native

INF = float("inf")
_Forward = tuple[torch.Tensor, "torch.Tensor | None", "torch.Tensor | None"]
"""(y, first argmax index, its sign) of the ℓ∞ forward pass, each (N, out); the last two only when asked."""
BACKENDS = ("auto", "cpp", "compile", "torch")
_CHUNK_ELEMS = 1 << 22  # elements of one materialised batch × out × in chunk (16 MB in float32)

# --------------------------------------------------------------------------------------------
# compiled kernels (ctypes)

_KERNEL_SRC = Path(__file__).with_name("_linf_kernels") / "linf_kernels.cpp"
_COMMON = [
    "-O3",
    "-shared",
    "-fPIC",
    "-std=c++17",
    "-fno-math-errno",
    "-ffinite-math-only",
    "-fno-signed-zeros",
    "-fno-trapping-math",
]


def _declare(lib: ctypes.CDLL) -> None:
    P, I, N, D = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_double
    for t in ("f32", "f64"):
        getattr(lib, f"asymcert_pack_{t}").argtypes = [P, I, I, P, N]
        getattr(lib, f"asymcert_linf_fwd_{t}").argtypes = [P, P, P, I, I, I, P, P, P, N]
        getattr(lib, f"asymcert_linf_bwd_{t}").argtypes = [P, P, P, I, I, I, P, P, N]
        getattr(lib, f"asymcert_lp_fwd_{t}").argtypes = [P, P, I, I, I, D, P, N]
        getattr(lib, f"asymcert_lp_bwd_{t}").argtypes = [P, P, P, P, I, I, I, D, P, P, N]
    for name in ("asymcert_panel", "asymcert_bwd_kchunk"):
        getattr(lib, name).argtypes = [N]


def _build_and_load(defines: tuple[str, ...] = ()) -> ctypes.CDLL:
    """Compile (or reuse from the cache) and load the kernels; ``defines`` are extra ``-D`` flags.

    Raises RuntimeError when no flag set of :data:`asymcert._native.FLAG_SETS` builds.
    """
    return _native.build_and_load(
        _KERNEL_SRC, "asymcert_abi_version", 1, _declare, common_flags=_COMMON, defines=defines
    )


def _self_test(lib: ctypes.CDLL) -> None:
    """Compare the kernels with plain PyTorch on a small odd-shaped problem (guards miscompiles)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(7, 37, generator=g, dtype=torch.float64)
    w = torch.randn(70, 37, generator=g, dtype=torch.float64)
    for dt in (torch.float32, torch.float64):
        xs, ws = x.to(dt), w.to(dt)
        y, idx, _ = _cpp_linf_fwd(lib, xs, ws, True)
        ref = (xs[:, None] - ws[None]).abs().max(-1)
        if idx is None or not (torch.equal(y, ref.values) and torch.equal(idx, ref.indices)):
            raise RuntimeError("kernel self-test failed at p = inf")
        y8 = _cpp_lp_fwd(lib, xs, ws, 8.0)
        tol = 1e-4 if dt == torch.float32 else 1e-10
        if not torch.allclose(y8, _ref_lp(xs, ws, 8.0), rtol=tol, atol=tol):
            raise RuntimeError("kernel self-test failed at p = 8")


def _build_checked() -> ctypes.CDLL:
    lib = _build_and_load()
    _self_test(lib)
    return lib


_KERNEL = _native.LazyKernel("ℓ∞-dist C++ kernels", _build_checked)
_state = _KERNEL.state  # ``lib``, ``tried``, ``error``


def kernels() -> ctypes.CDLL | None:
    """The compiled CPU kernels, building them on first call; None when unavailable.

    Returns:
        The loaded library, or None (no compiler, build failure, ``ASYMCERT_NO_KERNELS=1``);
        the reason is in :func:`kernel_error`.
    """
    return _KERNEL.get()


def kernel_error() -> str | None:
    """Why :func:`kernels` returned None (after it was called), else None."""
    return _KERNEL.error


def _threads(work: int) -> int:
    """OpenMP threads for ``work`` = batch·out·in: one for small problems (no fork/join cost)."""
    return 1 if work < (1 << 18) else torch.get_num_threads()


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _sfx(dtype: torch.dtype) -> str:
    return "f32" if dtype == torch.float32 else "f64"


def _pack(lib: ctypes.CDLL, w: torch.Tensor) -> torch.Tensor:
    O, K = w.shape
    pw = lib.asymcert_panel(0 if w.dtype == torch.float32 else 1)
    wp = torch.empty((O + pw - 1) // pw, K, pw, dtype=w.dtype)
    getattr(lib, f"asymcert_pack_{_sfx(w.dtype)}")(w.data_ptr(), O, K, wp.data_ptr(), _threads(O * K * 64))
    return wp


def _cpp_linf_fwd(lib: ctypes.CDLL, x: torch.Tensor, w: torch.Tensor, need_idx: bool) -> _Forward:
    B, K = x.shape
    O = w.shape[0]
    y = torch.empty(B, O, dtype=x.dtype)
    idx = torch.empty(B, O, dtype=torch.int64) if need_idx else None
    sgn = torch.empty(B, O, dtype=x.dtype) if need_idx else None
    if B == 0 or O == 0:
        return y, idx, sgn
    wp = _pack(lib, w)
    getattr(lib, f"asymcert_linf_fwd_{_sfx(x.dtype)}")(
        x.data_ptr(), w.data_ptr(), wp.data_ptr(), B, K, O, y.data_ptr(), _ptr(idx), _ptr(sgn), _threads(B * K * O)
    )
    return y, idx, sgn


def _cpp_linf_bwd(
    lib: ctypes.CDLL, idx: torch.Tensor, sgn: torch.Tensor, g: torch.Tensor, K: int, need_x: bool, need_w: bool
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    B, O = idx.shape
    g = g.to(sgn.dtype).contiguous()
    gx = torch.empty(B, K, dtype=sgn.dtype) if need_x else None
    gw = torch.empty(O, K, dtype=sgn.dtype) if need_w else None
    getattr(lib, f"asymcert_linf_bwd_{_sfx(sgn.dtype)}")(
        idx.data_ptr(), sgn.data_ptr(), g.data_ptr(), B, K, O, _ptr(gx), _ptr(gw), _threads(B * O * 64)
    )
    return gx, gw


def _cpp_lp_fwd(lib: ctypes.CDLL, x: torch.Tensor, w: torch.Tensor, p: float) -> torch.Tensor:
    B, K = x.shape
    O = w.shape[0]
    y = torch.empty(B, O, dtype=x.dtype)
    if B == 0 or O == 0:
        return y
    wp = _pack(lib, w)
    nt = _threads(B * K * O)
    sfx = _sfx(x.dtype)
    getattr(lib, f"asymcert_linf_fwd_{sfx}")(
        x.data_ptr(), w.data_ptr(), wp.data_ptr(), B, K, O, y.data_ptr(), None, None, nt
    )
    getattr(lib, f"asymcert_lp_fwd_{sfx}")(x.data_ptr(), wp.data_ptr(), B, K, O, float(p), y.data_ptr(), nt)
    return y


def _pad2(t: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    r, c = t.shape
    if r == rows and c == cols:
        return t.contiguous()
    out = t.new_zeros(rows, cols)
    out[:r, :c] = t
    return out


def _cpp_lp_bwd(
    lib: ctypes.CDLL, x: torch.Tensor, w: torch.Tensor, y: torch.Tensor, g: torch.Tensor, p: float
) -> tuple[torch.Tensor, torch.Tensor]:
    B, K = x.shape
    O = w.shape[0]
    if B == 0 or O == 0 or K == 0:
        return torch.zeros_like(x), torch.zeros_like(w)
    dt = 0 if x.dtype == torch.float32 else 1
    kc, rb, ro = lib.asymcert_bwd_kchunk(dt), lib.asymcert_bwd_rb(), lib.asymcert_bwd_ro()
    Bp, Op, Kp = -(-B // rb) * rb, -(-O // ro) * ro, -(-K // kc) * kc
    inv = torch.where(y > 0, 1.0 / y, torch.zeros_like(y))
    xp, wp = _pad2(x, Bp, Kp), _pad2(w, Op, Kp)
    invp, gp = _pad2(inv, Bp, Op), _pad2(g.to(x.dtype), Bp, Op)
    gx = torch.empty(Bp, Kp, dtype=x.dtype)
    gw = torch.empty(Op, Kp, dtype=x.dtype)
    getattr(lib, f"asymcert_lp_bwd_{_sfx(x.dtype)}")(
        xp.data_ptr(),
        wp.data_ptr(),
        invp.data_ptr(),
        gp.data_ptr(),
        Bp,
        Kp,
        Op,
        float(p),
        gx.data_ptr(),
        gw.data_ptr(),
        _threads(B * K * O),
    )
    return gx[:B, :K], gw[:O, :K]


# --------------------------------------------------------------------------------------------
# chunked PyTorch (fast-path fallback on any device) and the reference path


def _chunks(B: int, O: int, K: int, budget: int = _CHUNK_ELEMS) -> Iterator[tuple[slice, slice]]:
    """(batch slice, out slice) pairs with at most ``budget`` elements of batch × out × in each."""
    K = max(K, 1)
    if budget >= B * K:
        oc = max(1, budget // (B * K))
        bc = B
    else:
        oc = 1 if budget < O * K else O
        bc = max(1, budget // (oc * K))
    for b0 in range(0, B, bc):
        for o0 in range(0, O, oc):
            yield slice(b0, min(B, b0 + bc)), slice(o0, min(O, o0 + oc))


def _torch_linf_fwd(x: torch.Tensor, w: torch.Tensor, need_idx: bool) -> _Forward:
    B, K = x.shape
    O = w.shape[0]
    y = x.new_empty(B, O)
    idx = torch.empty(B, O, dtype=torch.int64, device=x.device) if need_idx else None
    for bs, os_ in _chunks(B, O, K):
        d = (x[bs, None, :] - w[None, os_, :]).abs_()
        if idx is not None:  # need_idx
            v, i = d.max(-1)
            y[bs, os_], idx[bs, os_] = v, i
        else:
            y[bs, os_] = d.amax(-1)
    sgn = None
    if idx is not None:  # need_idx
        sgn = torch.sign(torch.gather(x, 1, idx) - torch.gather(w.t(), 0, idx))
    return y, idx, sgn


def _torch_lp_fwd(x: torch.Tensor, w: torch.Tensor, p: float) -> torch.Tensor:
    B, K = x.shape
    O = w.shape[0]
    y = x.new_empty(B, O)
    for bs, os_ in _chunks(B, O, K):
        d = (x[bs, None, :] - w[None, os_, :]).abs_()
        m = d.amax(-1, keepdim=True)
        ms = torch.where(m > 0, m, torch.ones_like(m))
        y[bs, os_] = (m * d.div_(ms).pow_(p).sum(-1, keepdim=True).pow_(1.0 / p)).squeeze(-1)
    return y


def _torch_lp_bwd(
    x: torch.Tensor, w: torch.Tensor, y: torch.Tensor, g: torch.Tensor, p: float
) -> tuple[torch.Tensor, torch.Tensor]:
    B, K = x.shape
    O = w.shape[0]
    inv = torch.where(y > 0, 1.0 / y, torch.zeros_like(y))
    gx, gw = torch.zeros_like(x), torch.zeros_like(w)
    for bs, os_ in _chunks(B, O, K):
        t = x[bs, None, :] - w[None, os_, :]
        c = (t.abs() * inv[bs, os_, None]).pow_(p - 1.0)
        if p == 1.0:
            c = (t != 0).to(t.dtype)
        c.mul_(torch.sign(t)).mul_(g[bs, os_, None])
        gx[bs] += c.sum(1)
        gw[os_] -= c.sum(0)
    return gx, gw


def _ref_lp(x: torch.Tensor, w: torch.Tensor, p: float) -> torch.Tensor:
    return _torch_lp_fwd(x, w, p)


def linf_dist_reference(x: torch.Tensor, weight: torch.Tensor, p: float = INF) -> torch.Tensor:
    """Reference ℓp distances by plain (chunked) broadcasting with ordinary autograd.

    Args:
        x: inputs (N, in).
        weight: (out, in).
        p: norm order, 1 ≤ p ≤ ∞.

    Returns:
        (N, out) distances. Memory is bounded by chunking, time is not: use for tests only.
        At p < ∞ the scale m = max|t| is detached (the value does not depend on it).
    """
    _check_p(p)
    B, K = x.shape
    O = weight.shape[0]
    rows = []
    for bs, os_ in _chunks(B, O, K):
        d = (x[bs, None, :] - weight[None, os_, :]).abs()
        if p == INF:
            rows.append((bs, os_, d.amax(-1)))
        else:
            m = d.detach().amax(-1, keepdim=True)
            ms = torch.where(m > 0, m, torch.ones_like(m))
            rows.append((bs, os_, (m * (d / ms).pow(p).sum(-1, keepdim=True).pow(1.0 / p)).squeeze(-1)))
    # assemble without in-place writes so autograd stays plain
    by_b: dict = {}
    for bs, _, v in rows:
        by_b.setdefault((bs.start, bs.stop), []).append(v)
    if not by_b:
        return x.new_zeros(B, O) + weight.sum() * 0
    return torch.cat([torch.cat(vs, 1) for _, vs in sorted(by_b.items())], 0)


# --------------------------------------------------------------------------------------------
# torch.compile backend (fused broadcast; Inductor never materialises batch × out × in)

_compiled: dict = {}


def _c_linf_fwd(x: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return (x[:, None, :] - w[None, :, :]).abs().max(-1)


def _c_lp_fwd(x: torch.Tensor, w: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    d = (x[:, None, :] - w[None, :, :]).abs()
    m = d.amax(-1)
    ms = torch.where(m > 0, m, torch.ones_like(m))
    return m * (d / ms[:, :, None]).pow(p).sum(-1).pow(1.0 / p)


def _c_lp_term(x: torch.Tensor, w: torch.Tensor, inv: torch.Tensor, g: torch.Tensor, pm1: torch.Tensor) -> torch.Tensor:
    t = x[:, None, :] - w[None, :, :]
    return torch.sign(t) * (t.abs() * inv[:, :, None]).pow(pm1) * g[:, :, None]


def _c_lp_gx(x: torch.Tensor, w: torch.Tensor, inv: torch.Tensor, g: torch.Tensor, pm1: torch.Tensor) -> torch.Tensor:
    return _c_lp_term(x, w, inv, g, pm1).sum(1)


def _c_lp_gw(x: torch.Tensor, w: torch.Tensor, inv: torch.Tensor, g: torch.Tensor, pm1: torch.Tensor) -> torch.Tensor:
    return -_c_lp_term(x, w, inv, g, pm1).sum(0)


def _get_compiled(name: str, fn: Callable) -> Callable:
    if name not in _compiled:
        _compiled[name] = torch.compile(fn, dynamic=True, fullgraph=True)
    return _compiled[name]


_compile_broken: dict = {"error": None}


def _compile_call(name: str, fn: Callable, *args: torch.Tensor) -> Any:
    """Run the compiled ``fn``; on a compilation failure remember it and return None."""
    if _compile_broken["error"] is not None:
        return None
    try:
        return _get_compiled(name, fn)(*args)
    except Exception as e:  # Inductor/Triton/compiler missing or failing: fall back for good
        _compile_broken["error"] = str(e)
        warnings.warn(
            f"asymcert: torch.compile of ℓ∞-dist failed, using eager PyTorch ({e})", RuntimeWarning, stacklevel=3
        )
        return None


def _compile_available(device: torch.device) -> bool:
    if _compile_broken["error"] is not None:
        return False
    if device.type == "cuda":
        try:
            import triton  # noqa: F401
        except ImportError:
            return False
        return True
    return False


# --------------------------------------------------------------------------------------------
# dispatch


def _check_p(p: float) -> None:
    if not (p == INF or (isinstance(p, (int, float)) and 1.0 <= float(p) < INF)):
        raise ValueError(f"p must be in [1, inf], got {p!r}")


def _resolve(backend: str, x: torch.Tensor, w: torch.Tensor) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; known: {', '.join(BACKENDS)}")
    cpp_ok = (
        x.device.type == "cpu"
        and w.device.type == "cpu"
        and x.dtype == w.dtype
        and x.dtype in (torch.float32, torch.float64)
    )
    if backend == "cpp":
        if not cpp_ok or kernels() is None:
            return "torch"
        return "cpp"
    if backend == "auto":
        if cpp_ok and kernels() is not None:
            return "cpp"
        if _compile_available(x.device):
            return "compile"
        return "torch"
    return backend


def _loaded_kernels() -> ctypes.CDLL:
    """:func:`kernels` where :func:`_resolve` chose "cpp" (which it does only when they are loaded)."""
    lib = kernels()
    if lib is None:
        raise RuntimeError(f"the linf-dist kernels are unavailable: {kernel_error()}")
    return lib


def _finite(x: torch.Tensor, w: torch.Tensor) -> bool:
    # a sum is finite iff every term is (or it overflowed: then the PyTorch path, still correct)
    return math.isfinite(float(x.sum()) + float(w.sum()))


def _linf_forward(x: torch.Tensor, w: torch.Tensor, backend: str, need_idx: bool) -> _Forward:
    be = _resolve(backend, x, w)
    if be == "cpp" and _finite(x, w):
        return _cpp_linf_fwd(_loaded_kernels(), x.contiguous(), w.contiguous(), need_idx)
    if be == "compile":
        r = _compile_call("linf_fwd", _c_linf_fwd, x, w)
        if r is not None:
            y, idx = r
            sgn = torch.sign(torch.gather(x, 1, idx) - torch.gather(w.t(), 0, idx)) if need_idx else None
            return y, (idx if need_idx else None), sgn
    return _torch_linf_fwd(x, w, need_idx)


def _lp_forward(x: torch.Tensor, w: torch.Tensor, p: float, backend: str) -> torch.Tensor:
    be = _resolve(backend, x, w)
    if be == "cpp" and _finite(x, w):
        return _cpp_lp_fwd(_loaded_kernels(), x.contiguous(), w.contiguous(), p)
    if be == "compile":
        r = _compile_call("lp_fwd", _c_lp_fwd, x, w, torch.tensor(float(p), dtype=x.dtype, device=x.device))
        if r is not None:
            return r
    return _torch_lp_fwd(x, w, p)


def _lp_backward(
    x: torch.Tensor, w: torch.Tensor, y: torch.Tensor, g: torch.Tensor, p: float, backend: str
) -> tuple[torch.Tensor, torch.Tensor]:
    be = _resolve(backend, x, w)
    if be == "cpp" and _finite(x, w):
        return _cpp_lp_bwd(_loaded_kernels(), x.contiguous(), w.contiguous(), y.contiguous(), g.contiguous(), p)
    if be == "compile" and p != 1.0:
        inv = torch.where(y > 0, 1.0 / y, torch.zeros_like(y))
        pm1 = torch.tensor(float(p) - 1.0, dtype=x.dtype, device=x.device)
        gx = _compile_call("lp_gx", _c_lp_gx, x, w, inv, g, pm1)
        gw = _compile_call("lp_gw", _c_lp_gw, x, w, inv, g, pm1)
        if gx is not None and gw is not None:
            return gx, gw
    return _torch_lp_bwd(x, w, y, g, p)


class _LinfDistFn(torch.autograd.Function):
    """p = ∞: forward keeps only the first argmax index and sign per (b, o); backward scatters."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, w: torch.Tensor, backend: str) -> torch.Tensor:
        y, idx, sgn = _linf_forward(x, w, backend, True)
        ctx.save_for_backward(idx, sgn)
        ctx.cpp = _resolve(backend, x, w) == "cpp"
        ctx.shapes = (x.shape, w.shape)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        idx, sgn = ctx.saved_tensors
        xs, ws = ctx.shapes
        if ctx.cpp and idx.is_contiguous() and sgn.is_contiguous() and idx.numel():
            return (
                *_cpp_linf_bwd(_loaded_kernels(), idx, sgn, g, xs[1], ctx.needs_input_grad[0], ctx.needs_input_grad[1]),
                None,
            )
        gs = g * sgn
        gx = gw = None
        if ctx.needs_input_grad[0]:
            gx = gs.new_zeros(xs).scatter_add_(1, idx, gs)
        if ctx.needs_input_grad[1]:
            gw = gs.new_zeros(ws).scatter_add_(1, idx.t(), gs.t().neg())
        return gx, gw, None


class _LpDistFn(torch.autograd.Function):
    """1 ≤ p < ∞: saves x, w, y (no batch × out × in buffer); backward recomputes in tiles."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, w: torch.Tensor, p: float, backend: str) -> torch.Tensor:
        y = _lp_forward(x, w, p, backend)
        ctx.save_for_backward(x, w, y)
        ctx.p, ctx.backend = p, backend
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, w, y = ctx.saved_tensors
        gx, gw = _lp_backward(x, w, y, g, ctx.p, ctx.backend)
        return (gx if ctx.needs_input_grad[0] else None), (gw if ctx.needs_input_grad[1] else None), None, None


def linf_dist(x: torch.Tensor, weight: torch.Tensor, p: float = INF, backend: str = "auto") -> torch.Tensor:
    """ℓp distances from each input row to each weight row, fast path.

    Args:
        x: inputs (N, in).
        weight: (out, in), same dtype and device as ``x``.
        p: norm order, 1 ≤ p ≤ ∞ (p = 1000 does not overflow: computed as m·(Σ(|t|/m)^p)^{1/p}).
        backend: ``"auto"``, ``"cpp"``, ``"compile"`` or ``"torch"`` (see the module docstring).

    Returns:
        (N, out) tensor y[b, o] = ‖x[b] − weight[o]‖_p, in the units of ``x``.
        Gradients: at p = ∞ through the first argmax only (O(N·out) memory);
        at p < ∞ sign(t)·(|t|/y)^{p−1} recomputed in tiles.
    """
    _check_p(p)
    if x.dim() != 2 or weight.dim() != 2 or x.shape[1] != weight.shape[1]:
        raise ValueError(f"expected x (N, in) and weight (out, in), got {tuple(x.shape)} and {tuple(weight.shape)}")
    if x.shape[1] == 0:
        raise ValueError("in_features must be at least 1")
    p = float(p)
    needs_grad = torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)
    if p == INF:
        if needs_grad:
            return _LinfDistFn.apply(x, weight, backend)
        return _linf_forward(x, weight, backend, False)[0]
    if needs_grad:
        return _LpDistFn.apply(x, weight, p, backend)
    return _lp_forward(x, weight, p, backend)


def _interval_dist(lower: torch.Tensor, upper: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact bounds of max_i |x_i − w_oi| over the box lower ≤ x ≤ upper; (N, in) → (N, out) twice."""
    B, K = lower.shape
    O = w.shape[0]
    lo, up = lower.new_empty(B, O), lower.new_empty(B, O)
    for bs, os_ in _chunks(B, O, K):
        ww = w[None, os_, :]
        u, l = upper[bs, None, :], lower[bs, None, :]
        up[bs, os_] = torch.maximum(u - ww, ww - l).amax(-1)
        lo[bs, os_] = torch.maximum(l - ww, ww - u).amax(-1).clamp_min(0)
    return lo, up


def _check_box(lower: torch.Tensor, upper: torch.Tensor) -> None:
    if lower.shape != upper.shape:
        raise ValueError(f"lower {tuple(lower.shape)} and upper {tuple(upper.shape)} differ in shape")
    if bool((lower > upper).any()):
        raise ValueError("interval with lower > upper")


# --------------------------------------------------------------------------------------------
# modules


def _lip_bound(q: float, p_layer: float, fan_in: int, outputs_per_input: float) -> float:
    """Upper bound of the ℓq→ℓq Lipschitz constant of an ℓp-distance map.

    Each output is 1-Lipschitz w.r.t. the ℓp norm of its fan_in inputs, and
    ‖·‖_p ≤ fan_in^{max(0, 1/p − 1/q)}‖·‖_q; summing q-th powers over outputs gives the factor
    ``outputs_per_input``^{1/q} (number of outputs any single input coordinate can move, weighted).
    """
    q = float(q)
    if not q >= 1.0:
        raise ValueError(f"norm order must be ≥ 1, got {q}")
    ip = 0.0 if p_layer == INF else 1.0 / p_layer
    iq = 0.0 if q == INF else 1.0 / q
    c = fan_in ** max(0.0, ip - iq) * outputs_per_input**iq
    return 1.0 if c == 1.0 else math.nextafter(c, INF)


class LinfDist(nn.Module):
    """ℓp-distance layer y[b, o] = ‖x[b] − w[o]‖_p (+ bias), ℓ∞ distance by default.

    Args:
        in_features: input width.
        out_features: output width.
        p: norm order (1 ≤ p ≤ ∞), a plain attribute that may be changed during training.
        bias: add a learned bias (off by default: a :class:`MeanShift` usually follows).
        identity_init: when in ≤ out, set w[i, i mod in] = −10 after the N(0, 1) init, so that
            output i starts as x[i mod in] + 10 for inputs of moderate size (ignored when in > out).
        backend: see :func:`linf_dist`.

    Shapes: input (N, in_features), output (N, out_features).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        p: float = INF,
        bias: bool = False,
        identity_init: bool = False,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        _check_p(p)
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.p = float(p)
        self.backend = backend
        self.identity_init = identity_init
        self.weight = nn.Parameter(torch.empty(self.out_features, self.in_features))
        self.bias = nn.Parameter(torch.zeros(self.out_features)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Weights N(0, 1) (+ identity init), bias 0."""
        with torch.no_grad():
            self.weight.normal_(0.0, 1.0)
            if self.identity_init and self.in_features <= self.out_features:
                rows = torch.arange(self.out_features)
                self.weight[rows, rows % self.in_features] = -10.0
            if self.bias is not None:
                self.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, in) → (N, out)."""
        y = linf_dist(x, self.weight, self.p, self.backend)
        return y if self.bias is None else y + self.bias

    def interval_bounds(self, lower: torch.Tensor, upper: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact per-neuron output bounds over the box lower ≤ x ≤ upper (p = ∞ only).

        Args:
            lower, upper: (N, in) box corners.

        Returns:
            (lower, upper) of the outputs, each (N, out): upper = max_i(|c_i − w_i| + r_i),
            lower = max(0, max_i(|c_i − w_i| − r_i)), plus the bias; both attained.
        """
        if self.p != INF:
            raise ValueError("interval bounds are implemented for p = inf only")
        _check_box(lower, upper)
        lo, up = _interval_dist(lower, upper, self.weight.detach())
        if self.bias is not None:
            lo, up = lo + self.bias.detach(), up + self.bias.detach()
        return lo, up

    def bounds(self, center: torch.Tensor, radius: torch.Tensor | float) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`interval_bounds` of the box center ± radius (radius ≥ 0, scalar or (N, in))."""
        r = torch.as_tensor(radius, dtype=center.dtype, device=center.device).expand_as(center)
        return self.interval_bounds(center - r, center + r)

    def lipschitz(self, p: float) -> float:
        """Upper bound of the ℓp→ℓp Lipschitz constant; exactly 1.0 for p = ∞ at layer p = ∞."""
        return _lip_bound(p, self.p, self.in_features, self.out_features)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, p={self.p}, "
            f"bias={self.bias is not None}"
        )


def _pair(v: int | tuple[int, int]) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


class LinfDistConv2d(nn.Module):
    """Convolutional ℓp-distance layer: the same distance over every (zero-padded) patch.

    y[n, o, i, j] = ‖patch_{n,i,j} − w[o]‖_p over the C/groups × kh × kw patch of o's group.

    Args:
        in_channels, out_channels: channel counts (both divisible by ``groups``).
        kernel_size, stride, padding: as in ``nn.Conv2d`` (padding with zeros).
        groups: channel groups.
        p: norm order (settable attribute).
        bias: add a learned bias per output channel.
        backend: see :func:`linf_dist`.

    Shapes: input (N, C, H, W), output (N, out_channels, H', W') with the ``nn.Conv2d`` sizes.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] = 0,
        groups: int = 1,
        p: float = INF,
        bias: bool = False,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        _check_p(p)
        if in_channels % groups or out_channels % groups:
            raise ValueError(
                f"in_channels {in_channels} and out_channels {out_channels} must be divisible by groups {groups}"
            )
        self.in_channels, self.out_channels, self.groups = int(in_channels), int(out_channels), int(groups)
        self.kernel_size, self.stride, self.padding = _pair(kernel_size), _pair(stride), _pair(padding)
        self.p = float(p)
        self.backend = backend
        kh, kw = self.kernel_size
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels // groups, kh, kw))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None

    def _patches(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int, int]]:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected (N, {self.in_channels}, H, W), got {tuple(x.shape)}")
        n, _, h, w = x.shape
        kh, kw = self.kernel_size
        ho = (h + 2 * self.padding[0] - kh) // self.stride[0] + 1
        wo = (w + 2 * self.padding[1] - kw) // self.stride[1] + 1
        cols = F.unfold(x, self.kernel_size, padding=self.padding, stride=self.stride)  # (N, C·kh·kw, L)
        return cols.transpose(1, 2).reshape(n * ho * wo, cols.shape[1]), (n, ho, wo)

    def _per_group(self, fn: Callable, *cols: torch.Tensor) -> list:
        g = self.groups
        fg = cols[0].shape[1] // g
        og = self.out_channels // g
        wflat = self.weight.reshape(self.out_channels, -1)
        if g == 1:
            return [fn(*cols, wflat)]
        return [
            fn(*[c[:, i * fg : (i + 1) * fg].contiguous() for c in cols], wflat[i * og : (i + 1) * og])
            for i in range(g)
        ]

    def _fold(self, y: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor:
        n, ho, wo = shape
        return y.reshape(n, ho * wo, self.out_channels).transpose(1, 2).reshape(n, self.out_channels, ho, wo)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) → (N, out_channels, H', W')."""
        cols, shape = self._patches(x)
        ys = self._per_group(lambda c, w: linf_dist(c, w, self.p, self.backend), cols)
        y = self._fold(torch.cat(ys, 1) if len(ys) > 1 else ys[0], shape)
        return y if self.bias is None else y + self.bias.view(1, -1, 1, 1)

    def interval_bounds(self, lower: torch.Tensor, upper: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact per-neuron output bounds over the box lower ≤ x ≤ upper, each (N, out, H', W')."""
        if self.p != INF:
            raise ValueError("interval bounds are implemented for p = inf only")
        _check_box(lower, upper)
        cl, shape = self._patches(lower)
        cu, _ = self._patches(upper)
        res = self._per_group(lambda a, b, w: _interval_dist(a, b, w.detach()), cl, cu)
        lo = self._fold(torch.cat([r[0] for r in res], 1), shape)
        up = self._fold(torch.cat([r[1] for r in res], 1), shape)
        if self.bias is not None:
            b = self.bias.detach().view(1, -1, 1, 1)
            lo, up = lo + b, up + b
        return lo, up

    def bounds(self, center: torch.Tensor, radius: torch.Tensor | float) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`interval_bounds` of the box center ± radius."""
        r = torch.as_tensor(radius, dtype=center.dtype, device=center.device).expand_as(center)
        return self.interval_bounds(center - r, center + r)

    def lipschitz(self, p: float) -> float:
        """Upper bound of the ℓp→ℓp Lipschitz constant; exactly 1.0 for p = ∞ at layer p = ∞.

        An input pixel lies in at most ⌈kh/sh⌉·⌈kw/sw⌉ patches, each read by out/groups channels.
        """
        kh, kw = self.kernel_size
        fan_in = self.in_channels // self.groups * kh * kw
        overlap = math.ceil(kh / self.stride[0]) * math.ceil(kw / self.stride[1])
        return _lip_bound(p, self.p, fan_in, overlap * self.out_channels // self.groups)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding}, groups={self.groups}, p={self.p}, bias={self.bias is not None}"
        )


def interval_bounds(layer: nn.Module, lower: torch.Tensor, upper: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact interval propagation through one ℓ∞-dist layer (or :class:`MeanShift`) from a box.

    Args:
        layer: a :class:`LinfDist`, :class:`LinfDistConv2d` (p = ∞) or ``MeanShift``.
        lower, upper: box corners with the layer's input shape.

    Returns:
        (lower, upper) bounds of the layer's outputs, in the units of its outputs.
    """
    bounds = getattr(layer, "interval_bounds", None)
    if bounds is None:
        raise TypeError(f"no interval bounds for {type(layer).__name__}")
    return bounds(lower, upper)


__all__ = [
    "BACKENDS",
    "LinfDist",
    "LinfDistConv2d",
    "interval_bounds",
    "kernel_error",
    "kernels",
    "linf_dist",
    "linf_dist_reference",
]
