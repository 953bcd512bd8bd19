"""Folders of image files (one subfolder per class), decoded with Pillow into uint8 arrays.

Pillow is imported lazily: only these loaders need it (``pip install asymcert[images]``).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

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


def image_files(folder: Path) -> list[Path]:
    """The image files directly in ``folder`` (recognised by suffix, case-insensitive; no deeper), sorted."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def class_folders(root: Path) -> dict[str, list[Path]]:
    """``{folder name: image_files(folder)}`` for every subfolder of ``root`` holding at least one image, sorted by
    folder name; images directly in ``root``, or below the subfolders, are not read. Empty when there is none."""
    classes = {}
    for sub in sorted(p for p in root.iterdir() if p.is_dir()):
        files = image_files(sub)
        if files:
            classes[sub.name] = files
    return classes


def list_image_folder(root: str | Path) -> dict[str, list[Path]]:
    """The class folders of ``root`` and their image files (:func:`class_folders`: one level, no deeper).

    Returns:
        ``{folder name: sorted image paths}`` for every subfolder holding at least one image
        (recognised by suffix, case-insensitive), sorted by folder name.
    Raises:
        DataError: ``root`` is not a folder, or no subfolder holds an image.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"image folder not found: {root}")
    classes = class_folders(root)
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
    """``"L"`` (grayscale) when every image is stored as grayscale (Pillow modes :data:`_GRAY_MODES`, grey+alpha
    ``"LA"`` too: its alpha is dropped), else ``"RGB"``; each file is opened and held to :func:`_check_header`."""
    for path in paths:
        with _open_image(path) as img:
            if img.mode not in _GRAY_MODES:
                return "RGB"
    return "L"


@contextlib.contextmanager
def _open_image(path: Path) -> Iterator[Any]:
    """``path`` opened by Pillow (its header read, no pixel decoded yet) and held to :func:`_check_header`;
    Pillow's errors, opening it or decoding it inside the ``with``, become one :class:`DataError` naming it."""
    Image = _pil()
    try:
        with Image.open(path) as img:
            _check_header(path, img)
            yield img
    except DataError:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise DataError(f"{path}: not a readable image ({exc}); remove or replace this file") from exc


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) in pixels of the image ``path`` from its header, nothing decoded (:func:`_check_header`)."""
    with _open_image(path) as img:
        return img.width, img.height


def read_image(path: Path, mode: str = "L", size: int | None = None, *, colour_to_gray: bool = True) -> np.ndarray:
    """Decode one image file.

    Args:
        path: the image file.
        mode: Pillow mode to convert to, ``"L"`` (grayscale) or ``"RGB"``; an alpha channel is dropped, and a
            grayscale image given ``"RGB"`` gets its grey in all three channels.
        size: centre crop/pad to ``size`` × ``size``; None keeps the stored size.
        colour_to_gray: False refuses an image stored in colour when ``mode`` is ``"L"`` (its luma is another
            picture); True converts it.
    Returns:
        (C, H, W) uint8, C = 1 for ``"L"``, 3 for ``"RGB"``.
    Raises:
        DataError: unreadable, truncated or not an image, or refused by :func:`_check_header` (too many pixels,
            more than 8 bits a channel, more than one frame: all from the header, before decoding), or a colour
            image for ``"L"`` without ``colour_to_gray``.
    """
    with _open_image(path) as img:
        if mode == "L" and not colour_to_gray and img.mode not in _GRAY_MODES:
            raise DataError(
                f"{path}: a colour image (Pillow mode {img.mode}), but the run takes grayscale images; convert it "
                "to grayscale first (asymcert certifies the pixels as they are)"
            )
        pixels = np.asarray(img.convert(mode), dtype=np.uint8)
    if size is not None:
        pixels = center_crop_pad(pixels, size)
    return pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)


def _check_header(path: Path, img: Any) -> None:
    """Refuse an opened image (a Pillow image whose header is read, nothing decoded) of more than
    :data:`MAX_IMAGE_PIXELS` pixels, of more than 8 bits a channel (:func:`_deep_pixels`), or of more than one
    frame (an animated GIF, PNG or WebP, a multi-page TIFF: which frame is the picture is not asymcert's to pick)."""
    _check_pixels(path, img.width, img.height)
    deep = _deep_pixels(img)
    if deep is not None:
        raise DataError(
            f"{path}: pixels of more than 8 bits ({deep}); asymcert reads 8-bit images, each pixel "
            "divided by 255: save it as 8-bit (e.g. scaled to 0…255 with Pillow's point() or NumPy)"
        )
    if getattr(img, "is_animated", False):  # (n_frames would read every frame; is_animated stops at the second)
        raise DataError(
            f"{path}: an image of more than one frame (animated, or pages); asymcert reads one picture a file: "
            "save the frame to use as an image of its own"
        )


_DEEP_RAWMODE = re.compile(r";(12|16|32)[BLNRS]+$")
"""Pillow raw modes (how a file stores its pixels) of 12 to 32 bits a channel, e.g. ``RGB;16B``, ``LA;16B``,
``RGBA;16L``. Pillow opens such a 16-bit RGB or grey+alpha PNG, or 16-bit RGB TIFF, in the 8-bit mode ``RGB`` or
``RGBA`` and keeps each value's high byte (BMP's 5-6-5 ``BGR;16``, 16 bits a pixel, has no letter after the 16)."""


def _deep_pixels(img: Any) -> str | None:
    """Why an opened Pillow image holds more than 8 bits a channel, as a phrase for the refusal, or None: its mode
    (``"I"``, ``"I;16"``, ``"F"``, …: converting it to 8 bits clips every value above 255 to white, walkthrough 28d:
    a 16-bit PNG certified with radius 10.0 against 1.62 for the same image in 8 bits), or, opened in an 8-bit mode,
    the file's own pixels: a raw mode of :data:`_DEEP_RAWMODE`, or a PNM maximum value above 255 (Pillow rounds
    those to 8 bits)."""
    if img.mode.startswith(("I", "F")):
        return f"Pillow mode {img.mode}"
    for tile in img.tile:
        codec, args = tile[0], tile[3]
        head = args[0] if isinstance(args, tuple) and args else args
        if isinstance(head, str) and _DEEP_RAWMODE.search(head):
            return f"stored as {head}, which Pillow opens as mode {img.mode}"
        maxval = args[1] if str(codec).startswith("ppm") and isinstance(args, tuple) and len(args) > 1 else 255
        if isinstance(maxval, int) and maxval > 255:
            return f"maximum value {maxval}"
    return None


def _check_pixels(path: Path, width: int, height: int) -> None:
    """Refuse an image of more than :data:`MAX_IMAGE_PIXELS` pixels (``width`` × ``height`` from its header)."""
    if width * height > MAX_IMAGE_PIXELS:
        raise DataError(
            f"{path}: {width}×{height} = {width * height} pixels, more than the {MAX_IMAGE_PIXELS} asymcert "
            "decodes; shrink the image, or remove this file"
        )


def read_images(paths: Sequence[Path], mode: str = "L", size: int | None = None) -> np.ndarray:
    """Decode ``paths`` into one array; every image must have the same size unless ``size`` is given.

    Without ``size`` every image's size is read from its header (:func:`image_size`) before the array is made,
    so images of different sizes are refused whichever comes first, never after room for N images of the
    first one's size was taken (review s34 F2: a 4096 × 4096 image first among 1000 asked for 47 GiB).

    Returns:
        (N, C, H, W) uint8, C = 1 for ``"L"``, 3 for ``"RGB"``.
    Raises:
        DataError: an unreadable image, or images of different sizes without ``size``.
    """
    channels = 1 if mode == "L" else 3
    if not paths:
        return np.zeros((0, channels, size or 0, size or 0), dtype=np.uint8)
    if size is None:
        width, height = image_size(paths[0])
        for path in paths[1:]:
            _same_size(path, image_size(path), paths[0], (width, height))
    else:
        width = height = size
    out = np.empty((len(paths), channels, height, width), dtype=np.uint8)
    for i, path in enumerate(paths):
        image = read_image(path, mode, size)
        _same_size(path, (image.shape[2], image.shape[1]), paths[0], (width, height))  # (as decoded)
        out[i] = image
    return out


def _same_size(path: Path, wh: tuple[int, int], first: Path, first_wh: tuple[int, int]) -> None:
    """Refuse the image ``path`` of (width, height) ``wh`` when it is not ``first``'s ``first_wh``."""
    if wh != first_wh:
        side = max(first_wh)
        raise DataError(
            f"{path} is {wh[0]}×{wh[1]} but {first} is {first_wh[0]}×{first_wh[1]}: "
            "images of different sizes: crop or resize them to one size first (in Python, "
            f"task_from_image_folder(..., size={side}) cuts each to its centre {side}×{side})"
        )
