"""Batched, seeded training augmentations on tensors (B, C, H, W). No per-image Python loops."""

from __future__ import annotations

import re
from collections.abc import Callable

import torch
import torch.nn.functional as F

from asymcert.errors import UnknownNameError

Augmentation = Callable[[torch.Tensor, torch.Generator], torch.Tensor]
"""``(x, generator) -> x``: (B, C, H, W) images in, the augmented (B, C, H, W) images out."""


def random_crop(x: torch.Tensor, padding: int, generator: torch.Generator, mode: str = "replicate") -> torch.Tensor:
    """Pad each image by ``padding`` pixels (edge values by default) and crop back at a random offset.

    Args:
        x: (B, C, H, W) images.
        padding: pixels added on every side before cropping.
        generator: CPU generator that draws the offsets (reproducible runs).
        mode: ``F.pad`` mode; ``"replicate"`` is the authors' edge padding.
    Returns:
        (B, C, H, W) crops, on ``x``'s device.
    """
    if padding <= 0:
        return x
    b, _, h, w = x.shape
    padded = F.pad(x, (padding,) * 4, mode=mode)
    offsets = torch.randint(0, 2 * padding + 1, (b, 2), generator=generator).to(x.device)
    rows = offsets[:, :1] + torch.arange(h, device=x.device)  # (B, H)
    cols = offsets[:, 1:] + torch.arange(w, device=x.device)  # (B, W)
    batch = torch.arange(b, device=x.device)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]  # (B, H, W, C)
    return out.permute(0, 3, 1, 2).contiguous()


def random_hflip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Flip each image left-right with probability 1/2."""
    flip = (torch.rand(x.shape[0], generator=generator) < 0.5).to(x.device)
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def crop_augment(padding: int, flip: bool = False) -> Augmentation:
    """An augmentation ``(x, generator) -> x`` doing a random edge-padded crop (and optionally a flip)."""

    def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        x = random_crop(x, padding, generator)
        return random_hflip(x, generator) if flip else x

    augment.__name__ = f"crop{padding}{'_flip' if flip else ''}"
    return augment


def augmentation_from_name(name: str) -> Augmentation:
    """The augmentation named ``"crop<padding>"``, ``"crop<padding>_flip"`` (e.g. ``"crop2_flip"``) or
    ``"flip"`` (left-right flips only, the same as ``"crop0_flip"``).

    Raises:
        UnknownNameError: any other name.
    """
    match = re.fullmatch(r"crop(\d+)(_flip)?", "crop0_flip" if name == "flip" else name)
    if not match:
        raise UnknownNameError(
            f"unknown augmentation {name!r}; use 'crop<padding>', 'crop<padding>_flip' or "
            f"'flip', e.g. 'crop1' or 'crop2_flip'"
        )
    return crop_augment(int(match.group(1)), flip=bool(match.group(2)))
