"""Malimg (Nataraj et al., 2011): malware binaries drawn as grayscale images, one folder per family.

Sensitive class (label 1): every family but ``Allaple.A``; other class (label 0): ``Allaple.A`` (the
largest family). Protocol of the feature-convex paper: the larger class is downsampled to the size of
the smaller with a seeded RNG, then each class is split 80/20 into train/test and the train part 80/20
into train/validation. Images are centre-cropped/zero-padded to 512 × 512.

Memory: at 512 × 512 the ~5,900 kept images take about 6 GB as float32. Smaller sizes (centre crops)
cost a quarter per halving: pass ``size`` to :func:`make_malimg_task`, or set ``ASYMCERT_MALIMG_SIZE``
(e.g. 128) for the registered ``malimg`` task.

Malimg has no stable official download URL; place the family folders yourself (see :func:`find_malimg_root`).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from asymcert.data.augment import random_crop
from asymcert.data.images import list_image_folder, read_images
from asymcert.data.sources import candidate_dirs
from asymcert.data.tasks import Dataset, Task, TaskData, balance_classes, pixels_to_dataset, stratified_split
from asymcert.errors import DataError

OTHER_FAMILY = "Allaple.A"
DEFAULT_SIZE = 512
SIZE_ENV = "ASYMCERT_MALIMG_SIZE"
ARCHIVE_FOLDER = "malimg_paper_dataset_imgs"
CLASS_NAMES = ("Allaple.A", "other families")
MALIMG_RADII: dict[float, tuple[float, ...]] = {
    1: (1.0, 2.0, 4.0, 8.0),
    2: (0.25, 0.5, 1.0, 2.0),
    float("inf"): (0.01, 0.02, 0.04, 0.08),
}


def find_malimg_root(data_dir: Path | None) -> Path:
    """The folder holding Malimg's family folders: ``data_dir`` or the cache ``<cache>/malimg``.

    Each searched folder may hold the family folders directly or inside ``malimg_paper_dataset_imgs/``
    (the name the archive unpacks to).

    Raises:
        DataError: no searched folder holds an ``Allaple.A`` family folder; says where to put it.
    """
    searched = candidate_dirs("malimg", data_dir)
    for folder in searched:
        for root in (folder, folder / ARCHIVE_FOLDER):
            if (root / OTHER_FAMILY).is_dir():
                return root
    where = "\n  ".join(str(f) for f in searched)
    raise DataError(
        f"malimg: dataset not found (Malimg has no stable official download URL).\nLooked in:\n  {where}\n"
        f"Get the Malimg dataset (Nataraj et al. 2011: 9,339 grayscale images in 25 family folders such as "
        f"Adialer.C/, Allaple.A/, Yuner.A/) and put the family folders, or the {ARCHIVE_FOLDER}/ folder "
        f"holding them, in one of these folders (or pass --data-dir, or set ASYMCERT_DATA)."
    )


def malimg_size_from_env() -> int:
    """The image side from ``ASYMCERT_MALIMG_SIZE``, else 512."""
    raw = os.environ.get(SIZE_ENV, "").strip()
    if not raw:
        return DEFAULT_SIZE
    if not raw.isdigit() or int(raw) < 8:
        raise DataError(f"{SIZE_ENV}={raw!r}: expected an image side in pixels, at least 8 (e.g. 128 or 512)")
    return int(raw)


def load_malimg(data_dir: Path | None, size: int = DEFAULT_SIZE, seed: int = 42) -> TaskData:
    """Malimg as a balanced binary task (1 = not Allaple.A).

    Args:
        data_dir: folder with the family folders (or None: the cache).
        size: side of the centre crop/pad, in pixels.
        seed: seed of the class downsampling and of the per-class splits.
    Returns:
        TaskData with x (N, 1, size, size) float32 in [0, 1]; ``meta["families"]`` lists the families.
    Raises:
        DataError: dataset missing, no Allaple.A or no other family, or an unreadable image.
    """
    families = list_image_folder(find_malimg_root(data_dir))
    if len(families) < 2:
        raise DataError(f"malimg: need {OTHER_FAMILY} and at least one other family folder, found {sorted(families)}")
    paths = [p for files in families.values() for p in files]
    y = np.concatenate([np.full(len(files), int(name != OTHER_FAMILY)) for name, files in families.items()])
    keep = balance_classes(y, seed)
    splits = stratified_split(y[keep], 0.2, 0.2, seed)
    train, val, test = (_decode(paths, keep[index], y, size) for index in splits)
    return TaskData(train, val, test, class_names=CLASS_NAMES, meta={"families": sorted(families), "size": size})


def _decode(paths: list[Path], index: np.ndarray, y: np.ndarray, size: int) -> Dataset:
    return pixels_to_dataset(read_images([paths[i] for i in index], "L", size), y[index])


def malimg_augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random crop with zero padding of 20 px at 512 × 512 (scaled with the image side, at least 1 px)."""
    padding = max(1, round(20 * x.shape[-1] / DEFAULT_SIZE))
    return random_crop(x, padding, generator, mode="constant")


def make_malimg_task(size: int | None = None, name: str = "malimg", seed: int = 42) -> Task:
    """The Malimg task at a chosen image side.

    Args:
        size: side in pixels (the authors: 512); None reads ``ASYMCERT_MALIMG_SIZE`` when loading (default 512).
        name: the task's name.
        seed: seed of the downsampling and splits.
    Returns:
        A Task (not registered; pass it to :func:`register_task` to use it by name).
    """
    if size is not None and size < 8:
        raise DataError(f"malimg: image side {size} is too small (at least 8 pixels)")

    def load(data_dir: Path | None) -> TaskData:
        return load_malimg(data_dir, size or malimg_size_from_env(), seed)

    shown = f"{size}×{size}" if size else f"{DEFAULT_SIZE}×{DEFAULT_SIZE} or ${SIZE_ENV}"
    return Task(
        name=name,
        description=f"Malimg malware images ({shown}), every family but Allaple.A (sensitive) vs Allaple.A",
        load=load,
        augment=malimg_augment,
        pixels=True,
        model={
            "kind": "feature-convex",
            "feature_map": [{"kind": "shift"}],
            "convex": {"kind": "icnn", "widths": [200, 50]},
        },
        train={
            "epochs": 150,
            "batch_size": 32,
            "lr": 1e-3,
            "optimizer": "sgd",
            "momentum": 0.9,
            "lr_decay": 0.99,
            "jacobian_reg": 0.075,
        },
        presets={"fast": {"train": {"epochs": 2}}},
        report_radii=MALIMG_RADII,
    )
