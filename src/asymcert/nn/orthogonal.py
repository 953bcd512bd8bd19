"""1-Lipschitz (ℓ2) layers: Cayley-orthogonal linear and convolution layers, MaxMin/GroupSort.

A Cayley transform maps a skew-symmetric (skew-Hermitian) matrix A to the orthogonal (unitary)
matrix Q = (I + A)⁻¹(I − A). For a rectangular weight W = [U; V] (out ≥ in) the block form of
Trockman & Kolter (ICLR 2021, "Orthogonalizing convolutional layers with the Cayley transform")

    A = U − Uᴴ + Vᴴ V,   Q = [(I + A)⁻¹(I − A); −2 V (I + A)⁻¹]

has orthonormal columns (out < in: the transpose, orthonormal rows). So every layer here has
spectral norm exactly 1 (up to rounding), and composing them with the 1-Lipschitz MaxMin
activation gives networks that are 1-Lipschitz in ℓ2 by construction.

The Cayley transform is always computed in float64 (then cast to the parameter dtype), so the
float32 weights are orthogonal to about 1e-7. ``lipschitz(2)`` of every layer returns the
spectral norm of the weights actually used, computed in float64 (≈ 1; never assumed).

Convolutions are *circular* (periodic padding), stride 1, evaluated in the Fourier domain: at
every spatial frequency the channel-mixing matrix is the Cayley transform of the kernel's FFT,
so the layer is an isometry (out ≥ in channels) of the whole feature map. Downsampling uses
:class:`PixelUnshuffle` (space-to-depth), a permutation and therefore an isometry.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from asymcert.errors import ModelError
from asymcert.nn.feature_maps import Shift


def cayley(w: torch.Tensor) -> torch.Tensor:
    """Cayley transform of a batch of (possibly rectangular, possibly complex) matrices.

    Args:
        w: (..., out, in) real or complex.
    Returns:
        (..., out, in) with orthonormal columns when out ≥ in, orthonormal rows otherwise, in the
        dtype of ``w``.
    """
    *batch, cout, cin = w.shape
    if cin > cout:
        return cayley(w.transpose(-1, -2)).transpose(-1, -2)
    u, v = w[..., :cin, :], w[..., cin:, :]
    eye = torch.eye(cin, dtype=w.dtype, device=w.device).expand(*batch, cin, cin)
    a = u - u.transpose(-1, -2).conj() + v.transpose(-1, -2).conj() @ v
    inv = torch.linalg.solve(eye + a, torch.eye(cin, dtype=w.dtype, device=w.device).expand(*batch, cin, cin))
    return torch.cat([inv @ (eye - a), -2.0 * v @ inv], dim=-2)


def _wide(dtype: torch.dtype) -> torch.dtype:
    return torch.complex128 if dtype.is_complex else torch.float64


class CayleyLinear(nn.Module):
    """y = Q x + b with Q = cayley(W) semi-orthogonal (spectral norm 1): 1-Lipschitz in ℓ2.

    Args:
        in_features, out_features: sizes; x (N, in) → y (N, out).
        bias: learn a bias b (out,).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__()
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.weight_param = nn.Parameter(torch.empty(self.out_features, self.in_features))
        nn.init.normal_(self.weight_param, std=1.0 / math.sqrt(max(self.in_features, self.out_features)))
        self.bias = nn.Parameter(torch.zeros(self.out_features)) if bias else None

    @property
    def weight(self) -> torch.Tensor:
        """The semi-orthogonal (out, in) matrix Q (computed in float64, returned in the parameter dtype)."""
        w = self.weight_param
        return cayley(w.to(_wide(w.dtype))).to(w.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)

    @torch.no_grad()
    def lipschitz(self, p: float = 2) -> float:
        """Spectral norm of the weight in use (ℓ2 only), computed in float64 and rounded up."""
        _check_l2(p)
        s = float(torch.linalg.matrix_norm(self.weight.double(), 2))
        return math.nextafter(s, math.inf)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class CayleyConv2d(nn.Module):
    """Circular, stride-1 convolution made orthogonal by a Cayley transform per frequency.

    (N, in_channels, n, n) → (N, out_channels, n, n); an isometry in ℓ2 when out ≥ in channels
    (spectral norm 1 otherwise). The kernel is a k × k window, centred.

    Args:
        in_channels, out_channels: channel counts.
        kernel_size: k (odd recommended).
        size: spatial size n of the (square) feature maps the layer acts on.
        bias: learn a bias per output channel.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, size: int, bias: bool = True) -> None:
        super().__init__()
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.kernel_size, self.size = int(kernel_size), int(size)
        if self.kernel_size > self.size:
            raise ValueError(f"kernel {kernel_size} larger than the {size}×{size} feature map")
        self.weight_param = nn.Parameter(
            torch.empty(self.out_channels, self.in_channels, self.kernel_size, self.kernel_size)
        )
        fan = max(self.in_channels, self.out_channels) * self.kernel_size**2
        nn.init.normal_(self.weight_param, std=1.0 / math.sqrt(fan))
        self.bias = nn.Parameter(torch.zeros(self.out_channels)) if bias else None

    def frequency_weights(self) -> torch.Tensor:
        """(n·(n//2+1), out, in) complex channel-mixing matrices, one per rfft2 frequency."""
        w = self.weight_param.to(_wide(self.weight_param.dtype))
        n, k = self.size, self.kernel_size
        w = F.pad(w, (0, n - k, 0, n - k)).roll((-(k // 2), -(k // 2)), dims=(2, 3))
        wf = torch.fft.rfft2(w)  # (out, in, n, n//2+1)
        wf = wf.permute(2, 3, 0, 1).reshape(-1, self.out_channels, self.in_channels)
        return cayley(wf)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = self.size
        if x.shape[-2:] != (n, n):
            raise ValueError(f"CayleyConv2d built for {n}×{n} inputs, got {tuple(x.shape[-2:])}")
        q = self.frequency_weights()
        cdtype = torch.complex128 if x.dtype == torch.float64 else torch.complex64
        xf = torch.fft.rfft2(x.to(q.real.dtype)).to(cdtype)  # (N, in, n, m)
        batch, m = x.shape[0], xf.shape[-1]
        xf = xf.permute(2, 3, 1, 0).reshape(n * m, self.in_channels, batch)
        yf = q.to(cdtype) @ xf  # (n·m, out, N)
        yf = yf.reshape(n, m, self.out_channels, batch).permute(3, 2, 0, 1)
        y = torch.fft.irfft2(yf, s=(n, n)).to(x.dtype)
        if self.bias is not None:
            y = y + self.bias.view(1, -1, 1, 1)
        return y

    @torch.no_grad()
    def lipschitz(self, p: float = 2) -> float:
        """max over frequencies of the spectral norm of the mixing matrix (float64), rounded up."""
        _check_l2(p)
        s = float(torch.linalg.matrix_norm(self.frequency_weights(), 2).max())
        return math.nextafter(s, math.inf)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, size={self.size}, "
            f"bias={self.bias is not None}"
        )


class GroupSort(nn.Module):
    """Sort the channels (dim 1) within groups of ``group_size``; group size 2 is MaxMin.

    A permutation of its input at every point, hence 1-Lipschitz in every ℓp norm (and gradient
    norm preserving). The channel count must be divisible by the group size.
    """

    def __init__(self, group_size: int = 2) -> None:
        super().__init__()
        self.group_size = int(group_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c, g = x.shape[1], self.group_size
        if c % g:
            raise ValueError(f"GroupSort({g}) needs a channel count divisible by {g}, got {c}")
        if g == 2:
            a, b = x.chunk(2, dim=1)
            return torch.cat([torch.maximum(a, b), torch.minimum(a, b)], dim=1)
        shape = x.shape
        y = x.reshape(shape[0], c // g, g, *shape[2:]).sort(dim=2, descending=True).values
        return y.reshape(shape)

    def lipschitz(self, p: float = 2) -> float:
        return 1.0

    def extra_repr(self) -> str:
        return f"group_size={self.group_size}"


class MaxMin(GroupSort):
    """GroupSort with groups of 2: (a, b) ↦ (max(a, b), min(a, b)) over the two channel halves."""

    def __init__(self) -> None:
        super().__init__(2)


class PixelUnshuffle(nn.PixelUnshuffle):
    """Space-to-depth by ``factor``: (N, C, H, W) → (N, C·f², H/f, W/f). A permutation: an ℓp isometry."""

    def lipschitz(self, p: float = 2) -> float:
        return 1.0


def _check_l2(p: float) -> None:
    if float(p) != 2.0:
        raise ValueError(f"orthogonal layers carry an ℓ2 Lipschitz constant only, asked for ℓ{p}")


def lipschitz_l2(module: nn.Module, path: str = "") -> float:
    """Product of the ``lipschitz(2)`` constants of the children of a sequential-like module, rounded up.

    Nested ``nn.Sequential`` children (exact type) contribute the product of their own children. Children
    without a ``lipschitz`` method must be exactly ``nn.Flatten``, ``nn.Identity`` or
    :class:`~asymcert.nn.feature_maps.Shift` (1-Lipschitz by kind; a subclass may compute more).

    Raises:
        ModelError: naming the first child with no known ℓ2 Lipschitz constant by its path (under ``path``).
    """
    total = 1.0
    for name, child in module.named_children():
        where = f"{path}.{name}" if path else name
        lipschitz = getattr(child, "lipschitz", None)
        if type(child) is nn.Sequential:
            total = math.nextafter(total * lipschitz_l2(child, where), math.inf)
        elif lipschitz is not None:
            total = math.nextafter(total * float(lipschitz(2)), math.inf)
        elif type(child) not in (nn.Flatten, nn.Identity, Shift):
            raise ModelError(f"{where}: no ℓ2 Lipschitz constant known for {type(child).__name__}")
    return total
