"""Where an ℓ1 threat-model certificate loses: φ's slope bounds, or the saturation a linear bound cannot see.

    python benchmarks/l1_looseness.py RUN [RUN ...] [--out results/l1_looseness.json]

Per run (under its own threat model, on its test split), for the first 60 test inputs flagged with a
positive finite closed-form ℓ1 radius r (threat-model units) and float64 score s:

- ``rate_certified`` = s / r: the fastest fall of the score per unit of move the certificate allows for;
- ``rate_initial``: the fastest actual fall at the input, over every allowed single-coordinate direction
  (the score's difference quotient over a move of 1e-4 units);
- ``rate_at_radius``: the fastest average fall over a whole move of r along one allowed coordinate;
- ``axis_flip``: the smallest single-coordinate move that removes the flag (a grid of 240 sizes up to
  40 units, so an upper bound on the exact ℓ1 radius; ∞ when none does within 40).

A sound ℓ1 certificate has rate_certified ≥ rate_at_radius. rate_certified / rate_initial is what φ's
bounds give away at the input itself; rate_initial / rate_at_radius is what moving further gives away
(log1p flattens, a pair-min feature stops at its partner's value). Medians and quartiles over the
inputs. Model-agnostic: only the model's score and the threat model are used. A run that cannot be read:
one line and exit 1.
"""

from __future__ import annotations

import math

import torch
from common import per_run_main  # benchmarks/common.py

import asymcert
from asymcert.errors import AsymcertError
from asymcert.pipeline import run_data
from asymcert.runfolder import read_run_record, run_threat_model
from asymcert.threat import ResolvedThreatModel

N_INPUTS = 60
SIZES = torch.logspace(-2, math.log10(40.0), 240, dtype=torch.float64)


def _moved(model: torch.nn.Module, x: torch.Tensor, tm: ResolvedThreatModel, i: int, t: torch.Tensor) -> tuple:
    """Scores (N, T) after moving coordinate i of x (N, n) by +t and by −t units (T,), cut at the domain,
    and the actual move sizes (N, T) of each."""
    out = []
    for sign in (1.0, -1.0):
        xs = x.unsqueeze(1).repeat(1, t.numel(), 1)
        step = sign * t[None, :] * tm.scale[i]
        xs[:, :, i] = torch.clamp(xs[:, :, i] + step, float(tm.lower[i]), float(tm.upper[i]))
        size = (xs[:, :, i] - x[:, None, i]).abs() / tm.scale[i]
        with torch.no_grad():
            out.append((model(xs.reshape(-1, x.shape[1])).reshape(x.shape[0], -1), size))
    return out[0], out[1]


def _rates(model: torch.nn.Module, x: torch.Tensor, tm: ResolvedThreatModel, r: torch.Tensor) -> dict:
    """Per input (N,): the fastest initial fall, the fastest average fall over a move of r, the smallest
    single-coordinate flip, over every allowed direction of every coordinate."""
    up, down = tm.directions(x)
    with torch.no_grad():
        s = model(x)
    initial = torch.zeros_like(s)
    at_radius = torch.zeros_like(s)
    flip = torch.full_like(s, math.inf)
    for i in range(x.shape[1]):
        for (scores, size), allowed in zip(_moved(model, x, tm, i, torch.tensor([1e-4], dtype=x.dtype)), (up, down)):
            rate = torch.where(size[:, 0] > 0, (s - scores[:, 0]) / size[:, 0].clamp_min(1e-300), 0.0)
            initial = torch.where(allowed[:, i], torch.maximum(initial, rate), initial)
        for k in range(x.shape[0]):  # the move of r itself differs per input
            pair = _moved(model, x[k : k + 1], tm, i, r[k : k + 1])
            for (scores, size), allowed in zip(pair, (up[k], down[k])):
                if bool(allowed[i]) and float(size[0, 0]) > 0:
                    at_radius[k] = max(float(at_radius[k]), float((s[k] - scores[0, 0]) / size[0, 0]))
        for (scores, size), allowed in zip(_moved(model, x, tm, i, SIZES.to(x.dtype)), (up, down)):
            hit = (scores <= 0) & allowed[:, i : i + 1]
            flip = torch.minimum(flip, torch.where(hit, size, torch.full_like(size, math.inf)).amin(dim=1))
    return {"score": s, "initial": initial, "at_radius": at_radius, "flip": flip}


def _summary(v: torch.Tensor) -> dict[str, float]:
    finite = v[torch.isfinite(v)]
    if finite.numel() == 0:
        return {"n": 0}
    q = torch.quantile(finite, torch.tensor([0.25, 0.5, 0.75], dtype=finite.dtype)).tolist()
    return {"n": int(finite.numel()), "q25": q[0], "median": q[1], "q75": q[2]}


def run_figures(run: str) -> dict[str, object]:
    """The figures of one run folder (see the module docstring)."""
    torch.set_num_threads(1)
    model = asymcert.load(run, device="cpu").eval().double()
    tm = run_threat_model(read_run_record(run))
    if tm is None:
        raise AsymcertError(f"{run}: the run has no threat model")
    x = run_data(run).test.x.double()
    tm = tm if isinstance(tm, ResolvedThreatModel) else tm.resolve(None, x.shape[1])
    cert = asymcert.certify(model, x, norms=(1.0,), threat_model=tm, precision="float64")
    r = cert.radii[1.0]
    rows = (cert.sensitive & torch.isfinite(r) & (r > 0)).nonzero().flatten()[:N_INPUTS]
    found = _rates(model, x[rows], tm, r[rows].double())
    certified = found["score"] / r[rows]
    return {
        "run": run,
        "inputs": int(rows.numel()),
        "radius": _summary(r[rows]),
        "axis_flip": _summary(found["flip"]),
        "radius_over_axis_flip": _summary(r[rows] / found["flip"]),
        "rate_certified_over_initial": _summary(certified / found["initial"]),
        "rate_initial_over_at_radius": _summary(found["initial"] / found["at_radius"]),
        "unsound": int((found["at_radius"] > certified * (1 + 1e-9)).sum()),
    }


if __name__ == "__main__":
    per_run_main(__doc__ or "", "l1_looseness.json", run_figures)
