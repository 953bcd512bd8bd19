"""Folders of image files (one subfolder per class), decoded with Pillow into uint8 arrays.

Pillow is imported lazily: only these loaders need it (``pip install asymcert[images]``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

import numpy as np

from asymcert.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm")
MAX_IMAGE_PIXELS = 2**24
"""Most pixels (width × height, as the file's header says) of an image asymcert decodes: 16,777,216, e.g.
4096 × 4096, at most 48 MiB as RGB. A larger image is refused before it is decoded, naming the file,
whatever crop size it would be cut to (a centre crop needs the full-resolution pixels: decoding a
reduced image would resample them). A few kilobytes of PNG can claim 17000 × 10000 pixels (1.5 GB)."""
_GRAY_MODES = ("1", "L", "LA", "I", "I;16", "F")


def _pil() -> ModuleType:
    try:
        from PIL import Image
    except ImportError as exc:  # pragma: no cover - pillow is a dev dependency
        raise DataError("reading image folders needs Pillow: pip install 'asymcert[images]' (or pillow)") from exc
    return Image


def list_image_folder(root: str | Path) -> dict[str, list[Path]]:
    """The class folders of ``root`` and their image files.

    Returns:
        ``{folder name: sorted image paths}`` for every subfolder holding at least one image
        (recognised by suffix, case-insensitive), sorted by folder name.
    Raises:
        DataError: ``root`` is not a folder, or no subfolder holds an image.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"image folder not found: {root}")
    classes = {}
    for sub in sorted(p for p in root.iterdir() if p.is_dir()):
        files = sorted(p for p in sub.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if files:
            classes[sub.name] = files
    if not classes:
        raise DataError(
            f"{root}: no class folders with images found. Expected one subfolder per class, e.g. "
            f"{root}/<class name>/<image>.png ({', '.join(IMAGE_SUFFIXES)})"
        )
    return classes


def center_crop_pad(image: np.ndarray, size: int) -> np.ndarray:
    """Crop the centre ``size`` × ``size`` of ``image`` (H, W[, C]), padding with zeros where it is smaller.

    The same placement as torchvision's ``CenterCrop`` up to the odd pixel: when the difference is odd the
    extra row/column is cropped from (or padded at) the bottom/right.
    """
    h, w = image.shape[:2]
    out = np.zeros((size, size) + image.shape[2:], dtype=image.dtype)
    src_top, dst_top = max(0, (h - size) // 2), max(0, (size - h) // 2)
    src_left, dst_left = max(0, (w - size) // 2), max(0, (size - w) // 2)
    rows, cols = min(h, size), min(w, size)
    out[dst_top : dst_top + rows, dst_left : dst_left + cols] = image[
        src_top : src_top + rows, src_left : src_left + cols
    ]
    return out


def image_mode(paths: Sequence[Path]) -> str:
    """``"L"`` (grayscale) when every image is stored as grayscale, else ``"RGB"``."""
    Image = _pil()
    for path in paths:
        try:
            with Image.open(path) as img:
                if img.mode not in _GRAY_MODES:
                    return "RGB"
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            raise DataError(f"{path}: not a readable image ({exc})") from exc
    return "L"


def read_image(path: Path, mode: str = "L", size: int | None = None) -> np.ndarray:
    """Decode one image file.

    Args:
        path: the image file.
        mode: Pillow mode to convert to, ``"L"`` (grayscale) or ``"RGB"``.
        size: centre crop/pad to ``size`` × ``size``; None keeps the stored size.
    Returns:
        (C, H, W) uint8, C = 1 for ``"L"``, 3 for ``"RGB"``.
    Raises:
        DataError: unreadable, truncated or not an image, more than :data:`MAX_IMAGE_PIXELS` pixels
            (from the header, before decoding), or pixels of more than 8 bits.
    """
    Image = _pil()
    try:
        with Image.open(path) as img:
            _check_pixels(path, img.width, img.height)
            _check_depth(path, img.mode)
            pixels = np.asarray(img.convert(mode), dtype=np.uint8)
    except DataError:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise DataError(f"{path}: not a readable image ({exc}); remove or replace this file") from exc
    if size is not None:
        pixels = center_crop_pad(pixels, size)
    return pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)


def _check_depth(path: Path, mode: str) -> None:
    """Refuse an image of 16-bit, 32-bit or floating-point pixels (Pillow modes "I", "I;16", "F", …): converting it
    to 8 bits clips every value above 255 to white, a different picture (walkthrough 28d: a 16-bit PNG certified
    with radius 10.0 against 1.62 for the same image in 8 bits)."""
    if mode.startswith(("I", "F")):
        raise DataError(
            f"{path}: pixels of more than 8 bits (Pillow mode {mode}); asymcert reads 8-bit images, each pixel "
            "divided by 255: save it as 8-bit (e.g. scaled to 0…255 with Pillow's point() or NumPy)"
        )


def _check_pixels(path: Path, width: int, height: int) -> None:
    """Refuse an image of more than :data:`MAX_IMAGE_PIXELS` pixels (``width`` × ``height`` from its header)."""
    if width * height > MAX_IMAGE_PIXELS:
        raise DataError(
            f"{path}: {width}×{height} = {width * height} pixels, more than the {MAX_IMAGE_PIXELS} asymcert "
            "decodes; shrink the image, or remove this file"
        )


def read_images(paths: Sequence[Path], mode: str = "L", size: int | None = None) -> np.ndarray:
    """Decode ``paths`` into one array; every image must have the same size unless ``size`` is given.

    Returns:
        (N, C, H, W) uint8.
    Raises:
        DataError: an unreadable image, or images of different sizes without ``size``.
    """
    if not paths:
        return np.zeros((0, 1 if mode == "L" else 3, size or 0, size or 0), dtype=np.uint8)
    first = read_image(paths[0], mode, size)
    out = np.empty((len(paths),) + first.shape, dtype=np.uint8)
    out[0] = first
    for i, path in enumerate(paths[1:], start=1):
        image = read_image(path, mode, size)
        if image.shape != first.shape:
            side = max(first.shape[1:])
            raise DataError(
                f"{path} is {image.shape[2]}×{image.shape[1]} but {paths[0]} is {first.shape[2]}×{first.shape[1]}: "
                "images of different sizes: crop or resize them to one size first (in Python, "
                f"task_from_image_folder(..., size={side}) cuts each to its centre {side}×{side})"
            )
        out[i] = image
    return out
