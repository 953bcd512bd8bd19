"""Shared fixtures: small models and small data in the real on-disk formats."""

from __future__ import annotations

import copy
import math
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, settings

from asymcert.certify.feature_convex import float_guard, score_and_feature_gradient
from asymcert.data.idx import write_idx

# Hypothesis profiles. "ci" (the default): derandomized, no example database, so every run of the
# suite tries the same examples and passes or fails for a reason, not by luck. "explore"
# (``HYPOTHESIS_PROFILE=explore pytest ...``): random, 20× the examples (see :func:`examples`), with
# the local example database so that whatever it finds is replayed next time, until pinned with
# ``@example``.
EXPLORE_FACTOR = 20
settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
settings.register_profile(
    "explore",
    derandomize=False,
    max_examples=100 * EXPLORE_FACTOR,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def examples(n: int) -> int:
    """``max_examples`` for a property test: ``n`` under the "ci" profile, ``EXPLORE_FACTOR``·n under "explore"."""
    return n * EXPLORE_FACTOR if settings.default.max_examples >= 100 * EXPLORE_FACTOR else n


def make_fashion_idx(folder, n_train: int = 240, n_test: int = 80, seed: int = 0):
    """Write Fashion-MNIST-format IDX files (gzipped) with learnable classes 0 and 6 plus others."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = rng.choice([0, 6, 3], size=n).astype(np.uint8)
        images = rng.integers(0, 60, size=(n, 28, 28)).astype(np.uint8)
        images[labels == 0, 4:24, 4:24] += 150  # T-shirts: a bright square
        images[labels == 6, 10:18, :] += 120  # shirts: a bright band
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return folder


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """Tests use small tensors, for which one thread is faster than two fighting over two cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def fashion_dir(tmp_path_factory):
    """A folder of small Fashion-MNIST-format IDX files."""
    return make_fashion_idx(tmp_path_factory.mktemp("fashion"))


def small_fashion_task(fashion_dir, widths=(8,), seed: int = 0):
    """(task, data, model): the Fashion T-shirt-vs-shirt task on the small IDX files, with a tiny ICNN."""
    from asymcert.data import get_task
    from asymcert.models import build_model

    task = get_task("fashion-mnist-shirts")
    data = task.load(fashion_dir)
    torch.manual_seed(seed)
    model = build_model(
        {
            **task.model,
            "input_shape": list(data.input_shape),
            "input_range": [0, 1],
            "convex": {"kind": "icnn", "widths": list(widths)},
        }
    )
    return task, data, model


def small_feature_convex(kind: str = "icnn", input_shape=(1, 6, 6), feature_map=None, seed: int = 0):
    """A small randomly initialised feature-convex classifier with BN statistics and weights spread out."""
    from asymcert.models import build_model

    torch.manual_seed(seed)
    convex = (
        {"kind": "icnn", "widths": [16, 8]}
        if kind == "icnn"
        else {"kind": "convex-conv", "channels": 3, "stem_kernel": 3, "blocks": 2}
    )
    model = build_model(
        {
            "kind": "feature-convex",
            "input_shape": list(input_shape),
            "feature_map": feature_map or [{"kind": "shift"}],
            "convex": convex,
        }
    )
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "weight" in name and p.dim() > 1:
                p.mul_(40.0 if "hidden" in name or "block_convs" in name or "readout" in name else 1.0)
        model.train()
        x = torch.rand(64, *input_shape)
        model.feature_map.fit(x)
        for _ in range(3):
            model(x)  # batch-norm running statistics
    model.eval()
    with torch.no_grad():
        model.set_balance(-float(model(x).median()))
    return model


def one_unit_icnn(n_inputs: int, feature_map: str = "identity", batch_norm: bool = False):
    """A feature-convex model on ``n_inputs`` features, φ one step of kind ``feature_map``, g an ICNN with one
    hidden unit, its weights as built: for tests that set each weight by hand."""
    from asymcert.models import build_model

    return build_model(
        {
            "kind": "feature-convex",
            "input_shape": [n_inputs],
            "feature_map": [{"kind": feature_map}],
            "convex": {"kind": "icnn", "widths": [1], "batch_norm": batch_norm},
        }
    )


def affine_icnn(weights: list[float], bias: float):
    """s(x) = bias + Σ_i weights_i·x_i on len(weights) inputs (φ identity, g a one-unit ICNN whose hidden weight,
    first pass-through layer and batch norm are zero or absent): a score whose radii are known in closed form."""
    model = one_unit_icnn(len(weights))
    with torch.no_grad():
        model.convex.passthrough[0].weight.zero_()
        model.convex.passthrough[0].bias.zero_()
        model.convex.hidden[0].weight.zero_()
        model.convex.passthrough[1].weight.copy_(torch.tensor([weights]))
        model.convex.passthrough[1].bias.fill_(bias)
    return model.eval()


def balanced_feature_convex(feature_map: list, x: torch.Tensor, widths=(16, 16), seed: int = 0):
    """A small random ICNN feature-convex model for inputs like x (N, d): φ fitted on x, the balance at
    the median score, so about half of x is flagged."""
    from asymcert.models import build_model

    torch.manual_seed(seed)
    config = {"feature_map": feature_map, "convex": {"kind": "icnn", "widths": list(widths)}}
    m = build_model({"kind": "feature-convex", "input_shape": [x.shape[1]], **config}).eval()
    m.feature_map.fit(x)
    with torch.no_grad():
        m.balance -= m(x).median()
    return m


def score64(model, x: torch.Tensor) -> torch.Tensor:
    """s(x) (N,) of a float64 copy of ``model`` on float64 inputs."""
    with torch.no_grad():
        return copy.deepcopy(model).double()(x.double())


def torchrun_asymcert(args: list[str], timeout: int = 600) -> subprocess.CompletedProcess:
    """``torchrun --nproc_per_node 2 -m asymcert ARGS`` on loopback at a free port, one thread per process."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torchrun = Path(sys.executable).parent / "torchrun"
    command = [str(torchrun), "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", str(port)]
    return subprocess.run(
        [*command, "-m", "asymcert", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=timeout,
    )


def guard_and_gap(model, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(the float guard (N,) the certifier reserves for the model's own rounding, |s_model − s_float64| (N,)) for
    a feature-convex model at inputs x, under PyTorch's current precision settings."""
    with torch.no_grad():
        s_own = model(x).double()
    m64 = copy.deepcopy(model).double()
    s64, grad = score_and_feature_gradient(m64, x.double())
    return float_guard(model, m64.features(x.double()), grad, s64), (s_own - s64).abs()


def bisect_segments(score, a: torch.Tensor, b: torch.Tensor, target: torch.Tensor, steps: int = 60):
    """Fractions (lo, hi) (k,) float64 along the segments a → b (k, *shape) float64, a flagged and b not, with
    score(a + lo·(b − a)) > target ≥ score(a + hi·(b − a)) after ``steps`` bisections.

    ``score`` maps float64 points (k, *shape) to (k,) scores (e.g. a float64 copy of the model, or the model
    itself in float32); ``target`` (k,) the score each segment is bisected to.
    """
    view = (len(a),) + (1,) * (a.dim() - 1)
    lo, hi = torch.zeros(len(a), dtype=torch.float64), torch.ones(len(a), dtype=torch.float64)
    with torch.no_grad():
        for _ in range(steps):
            mid = (lo + hi) / 2
            up = score(a + mid.view(view) * (b - a)).reshape(-1) > target
            lo, hi = torch.where(up, mid, lo), torch.where(up, hi, mid)
    return lo, hi


def segment_ends(model, x: torch.Tensor, limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Pairs (a, b) (k, *shape) float64 of flagged and unflagged inputs of ``x`` by the model's own score
    (k = the smaller count, at most ``limit``)."""
    with torch.no_grad():
        s = model(x).reshape(-1)
    a, b = x[s > 0], x[s <= 0]
    k = min(len(a), len(b), limit if limit is not None else len(x))
    return a[:k].double(), b[:k].double()


def near_boundary(model, x: torch.Tensor, low: float = 1e-7, high: float = 1e-2) -> torch.Tensor:
    """Inputs (k, *shape) float32 just on the flagged side of the boundary, scores log-spaced over [low, high].

    Pairs a flagged and an unflagged input of ``x`` (k = the smaller count) and bisects each segment in
    float64 to where the score first exceeds its own target. The smallest targets lie within the
    certifiers' rounding allowances (radius 0: nothing promised); the others get small positive
    radii, the hard case for rounding — so a test on these inputs can check both. ``low = high = 0``:
    bisected to the boundary itself (|s| ≲ 1e-6 in float64 after 60 steps).
    """
    m64 = copy.deepcopy(model).double().eval()
    a, b = segment_ends(m64, x.double())
    if high > 0:
        target = torch.logspace(math.log10(low), math.log10(high), len(a), dtype=torch.float64)
    else:
        target = torch.zeros(len(a), dtype=torch.float64)
    lo, _ = bisect_segments(m64, a, b, target)
    return (a + lo.view((len(a),) + (1,) * (x.dim() - 1)) * (b - a)).float()


def near_boundary64(model, x: torch.Tensor, target: float) -> torch.Tensor:
    """Inputs (k, d) float64 whose float64 score lies in (0, ~target]: flagged/unflagged pairs of x bisected in
    float64 (the inputs stay float64, so no rounding moves them off that score)."""
    m64 = copy.deepcopy(model).double().eval()
    a, b = segment_ends(m64, x.double())
    lo, _ = bisect_segments(m64, a, b, torch.full((len(a),), target, dtype=torch.float64))
    out = a + lo[:, None] * (b - a)
    return out[score64(model, out) > 0]


def scaled_score(model, c: float):
    """A copy of a feature-convex ICNN model whose score is c·s (last pass-through, last hidden weight and the
    balance multiplied by c > 0): every decision, so every exact radius, is unchanged."""
    m = copy.deepcopy(model)
    with torch.no_grad():
        g = m.convex
        g.passthrough[-1].weight.mul_(c)
        g.passthrough[-1].bias.mul_(c)
        g.hidden[-1].weight.mul_(c)
        m.balance.mul_(c)
    return m


def grid_flip(model, x: torch.Tensor, reach: float, p: float, steps: int = 601) -> float:
    """The smallest ℓp size of a move in a (steps × steps) grid of the 2-d box of half-width ``reach`` around x (2,)
    whose float64 score is ≤ 0 (a verified flip: an upper bound on the exact radius), inf if none."""
    axis = torch.linspace(-reach, reach, steps, dtype=torch.float64)
    u, v = torch.meshgrid(axis, axis, indexing="ij")
    moves = torch.stack([u.flatten(), v.flatten()], dim=1)
    flips = score64(model, x.double()[None] + moves) <= 0
    return float(moves[flips].norm(p=p, dim=1).min()) if bool(flips.any()) else math.inf


@pytest.fixture(autouse=True)
def _no_dataset_downloads(monkeypatch):
    """No test may reach the network: dataset lookups that miss raise DataError instead of downloading.

    (tests/data/test_download.py lifts this for its own tests, which use file:// URLs and fake openers.)
    """
    monkeypatch.setenv("ASYMCERT_OFFLINE", "1")


@pytest.fixture
def data_cache(tmp_path, monkeypatch):
    """An empty, private data cache (``ASYMCERT_DATA``) for the duration of one test."""
    cache = tmp_path / "cache"
    cache.mkdir()
    monkeypatch.setenv("ASYMCERT_DATA", str(cache))
    return cache


_HOLD_FOLDER = """
import sys, time
from asymcert.runfolder import exclusive
with exclusive(sys.argv[1], create=True):
    print("locked", flush=True)
    time.sleep(120)
"""


@contextmanager
def folder_held(folder: Path) -> Iterator[None]:
    """Another process holds ``folder``'s lock (made when missing: :func:`asymcert.runfolder.exclusive`) while the
    block runs; it is killed afterwards."""
    holder = subprocess.Popen([sys.executable, "-c", _HOLD_FOLDER, str(folder)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        yield
    finally:
        holder.kill()
        holder.wait()


HOOK_KINDS = ("forward", "forward pre", "replaced forward")
"""The ways :func:`tamper_layer` changes what a layer computes without changing its class."""


def tamper_layer(layer: torch.nn.Module, kind: str) -> None:
    """Make ``layer`` compute 10× its output by a forward hook, a forward pre-hook (10× its input: the same for
    the linear layers these tests tamper) or a replaced ``forward`` (one of :data:`HOOK_KINDS`)."""
    if kind == "forward":
        layer.register_forward_hook(lambda mod, inp, out: out * 10)
    elif kind == "forward pre":
        layer.register_forward_pre_hook(lambda mod, inp: (inp[0] * 10,))
    else:
        original = layer.forward
        layer.forward = lambda t: original(t) * 10


def one_line(err: pytest.ExceptionInfo) -> str:
    """The text of the error ``pytest.raises`` caught, checked to be one line."""
    text = str(err.value)
    assert "\n" not in text
    return text
