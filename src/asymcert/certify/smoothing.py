"""Randomized smoothing certificates, read asymmetrically (radii only for inputs predicted sensitive).

Smoothed classifier: g(x) = the base decision most likely under x + noise. Cohen et al.'s
protocol (ICML 2019, CERTIFY): n0 noisy copies select the class c (majority vote), n fresh ones
count how often the base model says c, a one-sided Clopper–Pearson bound at level α gives
p_lower ≤ P(base(x + noise) = c) with probability ≥ 1 − α; abstain when p_lower ≤ ½. The radius
then follows from p_lower (binary form of each bound, valid for any number of classes):

==========  ==============================  =====================================================
noise       σ = noise standard deviation    radius
==========  ==============================  =====================================================
gaussian    N(0, σ²I)                       ℓ2: σ Φ⁻¹(p_lower)                    (Cohen et al.)
laplace     Laplace(λ), λ = σ/√2            ℓ1: −λ log(2(1 − p_lower))            (Teng et al.)
uniform     U[−λ, λ]^d, λ = σ√3             ℓ1: 2λ(p_lower − ½)                   (Lee; Yang et al.)
splitting   see below, λ = σ√3              ℓ1: 2λ(p − ½), p exact: deterministic (Levine & Feizi)
==========  ==============================  =====================================================

Other norms follow from norm inequalities on R^d (d = input size): from an ℓ2 radius r,
r_p = r for p ≤ 2 and r/d^{1/2−1/p} for p > 2 (ℓ∞: r/√d); from an ℓ1 radius r, r_p = r/d^{1−1/p}
(ℓ2: r/√d, ℓ∞: r/d). Every radius is rounded down.

Asymmetric reading (binary base models returning (N,) scores, class 1 = sensitive when the score
is > 0): ``predicted`` is the selected class; only inputs predicted sensitive and not abstained
get radii; ``abstained`` marks p_lower ≤ ½ whatever the class. Base models returning (N, K)
logits are smoothed over their argmax (``binary=False``; radii for the predicted class).

Deterministic splitting noise (after Levine & Feizi, ICML 2021, "Improved, deterministic smoothing
for L1 certified robustness"). One random offset s ~ U[0, 2λ) shared by every coordinate splits
the line into the cells s + [2λk, 2λ(k + 1)); the base model sees a representation of the cell
that holds each coordinate which depends on the cell index k_i = ⌊(x_i − s)/2λ⌋ ONLY:
    q(x, s)_i = 2λ(k_i + 1),
i.e. x_i rounded to the grid 2λℤ, up with probability (x_i mod 2λ)/2λ (unbiased; the coordinates
share the threshold s). Changing x_i by δ_i changes its cell index with probability ≤ |δ_i|/2λ
over s, so by a union bound (no independence needed) P_s(q(x, s) ≠ q(x', s)) ≤ ‖x − x'‖₁/2λ,
and p(x) = P_s(base(q(x, s)) = c) is 1/(2λ)-Lipschitz in ℓ1. Because q depends on s only through
the indices, q(x, ·) is constant between the breakpoints x_i mod 2λ: p(x) is a finite average over
those cells weighted by their lengths, which this module evaluates exactly (one base-model call
per distinct value of x_i mod 2λ, ≤ 257 for 8-bit images with 2λ > 1). (The cell CENTRE
s + 2λ(k_i + ½), as in the paper's randomized version, moves with s inside a cell, so the base
decision can change anywhere along s and one call per cell does not give p: a previous version
did that and over-reported p, hence radii, for some inputs.) No sampling, no α:
``deterministic=True``. Assumption made explicit: the base model is evaluated in floating point
at the cell midpoints; p is lowered by 1e-9 to absorb the rounding of breakpoints closer than
float64 resolution.

Noise is drawn in batches (``batch`` noisy inputs per forward pass, across inputs and samples)
from a seeded ``torch.Generator``: the same seed gives the same certificate.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from scipy.stats import beta as _beta
from scipy.stats import norm as _norm
from torch import nn

from asymcert.certify import options as option_checks
from asymcert.certify.inputs import check_model
from asymcert.certify.modes import eval_mode
from asymcert.certify.result import Certificate, Guarantee

NOISES = ("gaussian", "laplace", "uniform", "splitting")
DEFAULTS = {"sigma": 0.75, "n0": 100, "n": 10000, "alpha": 0.001, "seed": 0, "batch": 4096}
# Relative amount taken off every radius for float64 rounding in Φ⁻¹, log and the conversions.
_SLACK = 1e-12


def clopper_pearson_lower(successes: torch.Tensor, trials: int, alpha: float) -> torch.Tensor:
    """One-sided (1 − α) Clopper–Pearson lower bound on a binomial proportion.

    Args:
        successes: (N,) counts k in [0, trials].
        trials: n.
        alpha: failure probability.
    Returns:
        (N,) float64: Beta(α; k, n − k + 1) quantile, 0 where k = 0.
    """
    k = successes.detach().cpu().double().numpy()
    out = _beta.ppf(alpha, k, trials - k + 1)
    out = torch.from_numpy(out).nan_to_num(0.0)
    return torch.where(successes.cpu() > 0, out, torch.zeros_like(out))


def _down(r: torch.Tensor) -> torch.Tensor:
    """Round radii down a little (relative 1e-12 and one ulp); negative → 0."""
    r = r * (1.0 - _SLACK)
    r = torch.where(torch.isfinite(r), torch.nextafter(r, torch.zeros_like(r)), r)
    return r.clamp_min(0.0)


def radius_from_probability(p_lower: torch.Tensor, noise: str, sigma: float) -> tuple[float, torch.Tensor]:
    """The base norm (2 or 1) and the radius (N,) float64 of a smoothed decision with p ≥ p_lower > ½.

    Args:
        p_lower: (N,) lower bound on the probability of the predicted class.
        noise: ``"gaussian"`` (ℓ2), ``"laplace"``, ``"uniform"`` or ``"splitting"`` (ℓ1).
        sigma: noise standard deviation in raw input units.
    Returns:
        (base norm, radii) with radius 0 where p_lower ≤ ½.
    """
    p = p_lower.double().cpu()
    ok = p > 0.5
    pc = p.clamp(0.5, 1.0)
    if noise == "gaussian":
        r = sigma * torch.from_numpy(_norm.ppf(pc.numpy()))
        base = 2.0
    elif noise == "laplace":
        lam = sigma / math.sqrt(2.0)
        r = -lam * torch.log(2.0 * (1.0 - pc))
        base = 1.0
    elif noise in ("uniform", "splitting"):
        lam = sigma * math.sqrt(3.0)
        r = 2.0 * lam * (pc - 0.5)
        base = 1.0
    else:
        raise ValueError(f"unknown noise {noise!r}; known: {NOISES}")
    return base, torch.where(ok, _down(r), torch.zeros_like(r))


def convert_radius(r: torch.Tensor, base: float, p: float, d: int) -> torch.Tensor:
    """An ℓ``base`` radius (base 1 or 2) as a sound ℓp radius on R^d (rounded down)."""
    if base == 2.0:
        factor = 1.0 if p <= 2 else (math.sqrt(d) if math.isinf(p) else d ** (0.5 - 1.0 / p))
    elif base == 1.0:
        factor = float(d) if math.isinf(p) else d ** (1.0 - 1.0 / p)
    else:  # pragma: no cover
        raise ValueError(base)
    return r.clone() if factor == 1.0 else _down(r / factor)


def sample_noise(
    noise: str, shape: tuple[int, ...], sigma: float, generator: torch.Generator, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Noise of standard deviation ``sigma`` per coordinate, drawn from ``generator`` (on its device)."""
    dev = generator.device
    if noise == "gaussian":
        return torch.randn(shape, generator=generator, device=dev, dtype=dtype) * sigma
    if noise == "laplace":
        u = torch.rand(shape, generator=generator, device=dev, dtype=torch.float64) - 0.5
        lam = sigma / math.sqrt(2.0)
        return (-lam * torch.sign(u) * torch.log1p(-2.0 * u.abs())).to(dtype)
    if noise == "uniform":
        lam = sigma * math.sqrt(3.0)
        return (torch.rand(shape, generator=generator, device=dev, dtype=dtype) * 2.0 - 1.0) * lam
    raise ValueError(f"unknown noise {noise!r}; use gaussian, laplace or uniform")


def split_quantize(x: torch.Tensor, offset: torch.Tensor, lam: float) -> torch.Tensor:
    """q(x, s) = 2λ(⌊(x − s)/2λ⌋ + 1): each coordinate's cell of the split s + 2λℤ, as a point of 2λℤ.

    A function of the cell indices only (constant in s between breakpoints; see the module doc).

    Args:
        x: (B, *shape) inputs; offset: (B,) offsets s in [0, 2λ); lam: λ.
    Returns:
        (B, *shape) in x's dtype: x rounded down or up to the grid 2λℤ.
    """
    s = offset.reshape(-1, *([1] * (x.dim() - 1))).to(x.dtype)
    width = 2.0 * lam
    return width * (torch.floor((x - s) / width) + 1.0)


def _decisions(model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    """Base decisions (B,) int64: score > 0 for (B,) outputs, argmax for (B, K)."""
    out = model(batch)
    if out.dim() == 1 or (out.dim() == 2 and out.shape[1] == 1):
        return (out.reshape(-1) > 0).long()
    return out.argmax(dim=1)


def _num_classes(model: nn.Module, x: torch.Tensor) -> tuple[int, bool]:
    out = model(x[:1])
    if out.dim() == 1 or (out.dim() == 2 and out.shape[1] == 1):
        return 2, True
    return int(out.shape[1]), False


def sample_counts(
    model: nn.Module,
    x: torch.Tensor,
    num: int,
    noise: str,
    sigma: float,
    generator: torch.Generator,
    num_classes: int,
    batch: int = 4096,
) -> torch.Tensor:
    """How often the base decision is each class under ``num`` noisy copies of every input.

    Noisy copies of several inputs share a forward pass: the N·num copies are processed in
    consecutive chunks of ``batch`` rows (row r belongs to input r // num).

    Returns:
        (N, num_classes) int64 counts.
    """
    n_inputs = x.shape[0]
    counts = torch.zeros(n_inputs, num_classes, dtype=torch.int64, device=x.device)
    total = n_inputs * num
    lam = sigma * math.sqrt(3.0)
    for start in range(0, total, batch):
        stop = min(total, start + batch)
        owner = torch.arange(start, stop, device=x.device) // num
        base = x[owner]
        if noise == "splitting":  # random offsets: the Monte-Carlo version, used for training checks
            s = torch.rand(stop - start, generator=generator, device=generator.device, dtype=torch.float64) * 2 * lam
            noisy = split_quantize(base, s.to(x.device), lam)
        else:
            noisy = base + sample_noise(noise, tuple(base.shape), sigma, generator, x.dtype).to(x.device)
        dec = _decisions(model, noisy)
        counts.view(-1).index_add_(0, owner * num_classes + dec, torch.ones_like(dec))
    return counts


def _make_generator(generator: torch.Generator | None, seed: int | None) -> torch.Generator:
    if generator is not None:
        return generator
    return torch.Generator().manual_seed(int(DEFAULTS["seed"] if seed is None else seed))


def _options(model: nn.Module, noise: str, options: dict) -> dict:
    """Certifier options: explicit ones, then the model's ``smoothing`` defaults, then :data:`DEFAULTS`."""
    known = {"sigma", "n0", "n", "alpha", "seed", "generator", "batch"}
    unknown = set(options) - known
    if unknown:
        raise TypeError(f"unknown smoothing option(s) {sorted(unknown)}; known: {sorted(known)}")
    model_defaults = dict(getattr(model, "smoothing", {}) or {})
    if model_defaults.get("noise", noise) != noise:
        # a base model trained for another noise: keep only the sampling settings
        model_defaults.pop("sigma", None)
    given = {k: v for k, v in options.items() if v is not None}  # None: the model's setting, else DEFAULTS
    merged = {**DEFAULTS, **{k: v for k, v in model_defaults.items() if k in known}, **given}
    option_checks.refuse("smoothing", sampling_problems(merged))  # (the model's own smoothing settings too)
    return merged


def _certify_sampled(
    model: nn.Module, x: torch.Tensor, norms: tuple[float, ...], noise: str, **options: Any
) -> Certificate:
    check_model(model)
    opt = _options(model, noise, options)
    sigma, n0, n, alpha = float(opt["sigma"]), int(opt["n0"]), int(opt["n"]), float(opt["alpha"])
    gen = _make_generator(opt.get("generator"), opt.get("seed"))
    with eval_mode(model), torch.no_grad():
        k, binary = _num_classes(model, x)
        c0 = sample_counts(model, x, n0, noise, sigma, gen, k, int(opt["batch"]))
        chosen = c0.argmax(dim=1)
        c = sample_counts(model, x, n, noise, sigma, gen, k, int(opt["batch"]))
    n_a = c.gather(1, chosen[:, None])[:, 0]
    p_lower = clopper_pearson_lower(n_a, n, alpha)
    abstained = p_lower <= 0.5
    base, r = radius_from_probability(p_lower, noise, sigma)
    gets = ~abstained & ((chosen.cpu() == 1) if binary else torch.ones_like(abstained))
    r = torch.where(gets, r, torch.zeros_like(r))
    d = math.prod(x.shape[1:])
    radii = {p: convert_radius(r, base, p, d).to(x.device) for p in norms}
    return Certificate(
        predicted=chosen.long(),
        radii=radii,
        method=f"smoothing-{noise}",
        guarantee=Guarantee.PROBABILISTIC,
        alpha=alpha,
        abstained=abstained.to(x.device),
        binary=binary,
        extra={
            "p_lower": p_lower.to(x.device),
            "count": n_a.float(),
            "selection_count": c0.gather(1, chosen[:, None])[:, 0].float(),
        },
    )


@dataclass(frozen=True)
class SmoothingOptions:
    """Options of the sampled smoothing certifiers (``smoothing-gaussian|laplace|uniform``); None: the
    model's own ``smoothing`` setting, else the module's :data:`DEFAULTS`."""

    sigma: float | None = None
    n0: int | None = None
    n: int | None = None
    alpha: float | None = None
    seed: int | None = None
    generator: torch.Generator | None = None
    batch: int | None = None

    def problems(self) -> list[str]:
        """Every option value sampling cannot take (σ = NaN gave NaN radii, ``batch=-1`` drew no sample,
        ``n=50.7`` was truncated to 50)."""
        return sampling_problems(vars(self))


def sampling_problems(settings: Mapping[str, object]) -> list[str]:
    """The problems of smoothing's settings by name (sigma, n0, n, alpha, seed, generator, batch; None or
    missing: the model's or the module's default)."""
    get = settings.get
    return option_checks.found(
        option_checks.positive("sigma", get("sigma")),
        option_checks.count("n0", get("n0")),
        option_checks.count("n", get("n")),
        option_checks.fraction("alpha", get("alpha")),
        option_checks.seed("seed", get("seed")),
        option_checks.of_type("generator", get("generator"), torch.Generator),
        option_checks.count("batch", get("batch")),
    )


def certify_gaussian(model: nn.Module, x: torch.Tensor, norms: tuple[float, ...], **options: Any) -> Certificate:
    """Gaussian smoothing (ℓ2 = σΦ⁻¹(p_lower)). Options: sigma, n0, n, alpha, generator | seed, batch."""
    return _certify_sampled(model, x, norms, "gaussian", **options)


def certify_laplace(model: nn.Module, x: torch.Tensor, norms: tuple[float, ...], **options: Any) -> Certificate:
    """Laplace smoothing (ℓ1 = −λ log(2(1 − p_lower)), λ = σ/√2). Options as Gaussian."""
    return _certify_sampled(model, x, norms, "laplace", **options)


def certify_uniform(model: nn.Module, x: torch.Tensor, norms: tuple[float, ...], **options: Any) -> Certificate:
    """Uniform smoothing (ℓ1 = 2λ(p_lower − ½), λ = σ√3). Options as Gaussian."""
    return _certify_sampled(model, x, norms, "uniform", **options)


# ---------------------------------------------------------------- deterministic splitting noise


def split_offsets(x: torch.Tensor, lam: float) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """For every input, the cells of s ∈ [0, 2λ) on which q(x, s) is constant.

    Returns:
        Per input, (midpoints (k,), weights (k,)) float64: the weights (cell length / 2λ) sum to 1.
    """
    width = 2.0 * lam
    out = []
    flat = x.detach().reshape(x.shape[0], -1).double().cpu()
    for row in flat:
        brk = torch.remainder(row, width)
        brk = torch.unique(torch.cat([brk, torch.zeros(1, dtype=torch.float64)]))  # sorted
        edges = torch.cat([brk, torch.tensor([width], dtype=torch.float64)])
        lengths = edges[1:] - edges[:-1]
        keep = lengths > 0
        out.append(((edges[:-1] + lengths / 2)[keep], (lengths / width)[keep]))
    return out


def splitting_probabilities(
    model: nn.Module, x: torch.Tensor, lam: float, num_classes: int, batch: int = 4096
) -> torch.Tensor:
    """Exact class probabilities (N, K) float64 of the splitting-noise smoothed classifier."""
    cells = split_offsets(x, lam)
    owner = torch.cat([torch.full((len(m),), i, dtype=torch.int64) for i, (m, _) in enumerate(cells)])
    mids = torch.cat([m for m, _ in cells])
    weights = torch.cat([w for _, w in cells])
    probs = torch.zeros(x.shape[0] * num_classes, dtype=torch.float64)
    for start in range(0, len(owner), batch):
        o = owner[start : start + batch]
        q = split_quantize(x[o.to(x.device)].double(), mids[start : start + batch].to(x.device), lam).to(x.dtype)
        dec = _decisions(model, q).cpu()
        probs.index_add_(0, o * num_classes + dec, weights[start : start + batch])
    return probs.reshape(x.shape[0], num_classes)


@dataclass(frozen=True)
class SplittingOptions:
    """Options of :func:`certify_splitting` (see its arguments); the sampling options of
    :class:`SmoothingOptions` are accepted and ignored, so one call can switch between noises."""

    sigma: float | None = None
    batch: int = 4096
    n0: int | None = None
    n: int | None = None
    alpha: float | None = None
    seed: int | None = None
    generator: torch.Generator | None = None

    def problems(self) -> list[str]:
        """Every option value refused: σ and the batch as sampling's, and the ignored sampling options too, so
        that a bad value is never passed over in silence."""
        return sampling_problems(vars(self))


def certify_splitting(
    model: nn.Module,
    x: torch.Tensor,
    norms: tuple[float, ...],
    sigma: float | None = None,
    batch: int = 4096,
    **sampling: object,
) -> Certificate:
    """Deterministic ℓ1 certificate of splitting-noise smoothing (Levine & Feizi 2021), exact p.

    Args:
        sigma: standard deviation of the marginal uniform noise (λ = σ√3); default the model's
            ``smoothing["sigma"]`` or 0.75.
        batch: base-model inputs per forward pass.
        sampling: sampling options (n0, n, alpha, seed, generator) accepted and ignored, so one call
            can be switched between noises.
    Returns:
        Certificate (deterministic, alpha None), extra["probability"] = exact p of the decision.
    """
    check_model(model)
    unknown = set(sampling) - {"n0", "n", "alpha", "seed", "generator"}
    if unknown:
        raise TypeError(f"unknown option(s) {sorted(unknown)} for smoothing-splitting")
    if sigma is None:
        sm = getattr(model, "smoothing", {}) or {}
        sigma = (
            float(sm.get("sigma", DEFAULTS["sigma"]))
            if sm.get("noise", "splitting") == "splitting"
            else float(DEFAULTS["sigma"])
        )
    option_checks.refuse("smoothing-splitting", sampling_problems({**sampling, "sigma": sigma, "batch": batch}))
    lam = float(sigma) * math.sqrt(3.0)
    with eval_mode(model), torch.no_grad():
        k, binary = _num_classes(model, x)
        probs = splitting_probabilities(model, x, lam, k, batch)
    top = probs.argmax(dim=1)
    p = probs.gather(1, top[:, None])[:, 0] - 1e-9
    base, r = radius_from_probability(p, "splitting", float(sigma))
    gets = (p > 0.5) & ((top == 1) if binary else torch.ones_like(top, dtype=torch.bool))
    r = torch.where(gets, r, torch.zeros_like(r))
    d = math.prod(x.shape[1:])
    radii = {q: convert_radius(r, base, q, d).to(x.device) for q in norms}
    return Certificate(
        predicted=top.to(x.device),
        radii=radii,
        method="smoothing-splitting",
        guarantee=Guarantee.FLAG if binary else Guarantee.DECISION,
        alpha=None,
        abstained=(p <= 0.5).to(x.device),
        binary=binary,
        extra={"probability": p.float().to(x.device)},
    )
