"""The built-in tasks of the papers. Importing this module registers them.

Binary tasks (feature-convex paper) label the sensitive class 1 and the other 0, with
``class_names = (other, sensitive)``: ``mnist-38``, ``fashion-mnist-shirts``, ``cifar10-catsdogs``,
``malimg``, ``breast-cancer``. Ten-class tasks (ℓ∞-distance nets) keep the dataset's labels:
``mnist``, ``fashion-mnist``, ``cifar10``. Image inputs are float32 pixels in [0, 1]; radii are in
those units.

Where the data comes from: ``--data-dir``, then the cache (``$ASYMCERT_DATA/<dataset>``), then Debian's
``/usr/share/datasets/fashion-mnist`` (Fashion-MNIST only), then a checksummed download into the cache
(MNIST, Fashion-MNIST, CIFAR-10). Malimg must be placed by hand; breast-cancer ships with scikit-learn.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from asymcert.data.augment import crop_augment
from asymcert.data.cifar import CIFAR10_CLASSES, load_cifar10_arrays
from asymcert.data.download import FASHION_REMOTE, MNIST_REMOTE, RemoteFile, find_or_download
from asymcert.data.idx import read_idx
from asymcert.data.malimg import make_malimg_task
from asymcert.data.spambase import (
    MEDIAN_FEATURE_STD,
    N_FEATURES,
    SPAMBASE_THREAT_MODEL,
    SPAMBASE_THREAT_RADII,
    load_spambase,
)
from asymcert.data.tasks import (
    Dataset,
    Task,
    TaskData,
    fast_preset,
    pixels_to_dataset,
    register_task,
    split_train_val,
    task_data_from_arrays,
)
from asymcert.data.user import IMAGE_TRAIN, tabular_radii
from asymcert.errors import DataError

INF = math.inf

FASHION_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
MNIST_CLASSES = tuple(str(d) for d in range(10))
FASHION_FILES = [f.name for f in FASHION_REMOTE]
MNIST_FILES = [f.name for f in MNIST_REMOTE]
DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")

ImageArrays = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]
"""(x_train (N, C, H, W) uint8, y_train (N,) int64, x_test (M, C, H, W) uint8, y_test (M,) int64)."""

IMAGE_RADII: dict[float, tuple[float, ...]] = {
    1: (1.0, 2.0, 4.0, 8.0),
    2: (0.25, 0.5, 1.0, 2.0),
    INF: (0.01, 0.02, 0.04, 0.08),
}
CIFAR_BINARY_RADII: dict[float, tuple[float, ...]] = {
    1: (0.5, 1.0, 2.0, 4.0),
    2: (0.1, 0.25, 0.5, 1.0),
    INF: (1 / 255, 2 / 255, 4 / 255, 8 / 255),
}
# Feature units of breast-cancer: ℓ∞ ≈ 1, 2, 5, 10% of the median feature std (0.0727), ℓ2 = ℓ∞·√30,
# ℓ1 = ℓ∞·30 (asymcert.data.user.tabular_radii(0.0727, 30)).
BREAST_CANCER_RADII: dict[float, tuple[float, ...]] = {
    1: (0.022, 0.044, 0.11, 0.22),
    2: (0.004, 0.008, 0.02, 0.04),
    INF: (0.00073, 0.0015, 0.0036, 0.0073),
}

FEATURE_CONVEX_TRAIN = IMAGE_TRAIN  # the authors' recipe, also the default for a user's image folder
LINF_DIST_MODEL = {"kind": "linf-dist", "widths": [1024] * 4}  # 4 hidden + the output layer: 5 layers
LINF_DIST_TRAIN = {
    "epochs": 100,
    "batch_size": 512,
    "optimizer": "adam",
    "lr": 0.03,
    "schedule": "cosine",
    "extra": {"betas": [0.9, 0.99], "adam_eps": 1e-10},
}


# Fashion-MNIST T-shirt vs shirt: asymcert's default (measured in benchmarks/README.md, session 4) and
# the authors' recipe as the "paper" preset.
FASHION_SHIRTS_MODEL = {
    "kind": "feature-convex",
    "feature_map": [{"kind": "shift"}],
    "convex": {"kind": "icnn", "widths": [4096], "batch_norm": False},
}
FASHION_SHIRTS_TRAIN = {
    "epochs": 30,
    "batch_size": 64,
    "lr": 1e-3,
    "optimizer": "adam",
    "schedule": "cosine",
    "jacobian_reg": 0.0,
    "margin_radius": [8.0, 0.9],
    "margin_norm": [1.0, 2.0],
    "margin_warmup": 0.3,
    "augment": "flip",
    "train_at_balance": True,
}
PAPER_FASHION_CONV = {"kind": "convex-conv", "channels": 4, "stem_kernel": 5, "blocks": 2}


def _paper_fashion_shirts() -> dict:
    """The ``paper`` preset: the authors' convex conv net and recipe (SGD, 60 epochs, λ = 0.01)."""
    return {
        "paper": {
            "model": {"convex": dict(PAPER_FASHION_CONV)},
            "train": {
                **FEATURE_CONVEX_TRAIN,
                "schedule": "exponential",
                "margin_radius": 0.0,
                "margin_norm": 2.0,
                "margin_warmup": 0.0,
                "augment": True,
                "train_at_balance": False,
            },
        }
    }


def _spambase_presets() -> dict:
    """SpamBase's presets: ``pairs`` (φ = log1p, standardize, pair-min, hinges with 2 knots: the pick of the
    session-15 inner CV, more accurate across folds but certifying less, at about 10× the certification
    time; benchmarks/results/spambase_pairs.md) and ``log1p-64-32`` (the default before session 12: φ = log1p,
    standardize; g an ICNN 64-32), which the figures of sessions 7–11 in benchmarks/README.md were measured with."""
    return {
        "pairs": {
            "model": {
                "feature_map": [
                    {"kind": "log1p"},
                    {"kind": "standardize"},
                    {"kind": "pair-min"},
                    {"kind": "hinges", "knots": 2},
                ],
                "convex": {"kind": "icnn", "widths": [1], "batch_norm": False},
            }
        },
        "log1p-64-32": {
            "model": {
                "feature_map": [{"kind": "log1p"}, {"kind": "standardize"}],
                "convex": {"kind": "icnn", "widths": [64, 32], "batch_norm": False},
            }
        },
    }


# ---------------------------------------------------------------- IDX datasets (MNIST, Fashion-MNIST)


def load_idx_pair(images: Path, labels: Path) -> Dataset:
    """Images (N, 28, 28) uint8 and labels (N,) from IDX files → Dataset with x (N, 1, 28, 28) in [0, 1]."""
    x, y = _idx_arrays(images, labels)
    return pixels_to_dataset(x, y)


def _idx_arrays(images: Path, labels: Path) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images (N, 1, H, W) and int64 labels (N,) from a pair of IDX files, checked against each other."""
    x, y = read_idx(images), read_idx(labels)
    if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
        raise DataError(
            f"{images} {x.shape} and {labels} {y.shape} are not an image/label pair "
            f"(expected (N, H, W) images and (N,) labels)"
        )
    return x[:, None], y.astype(np.int64)


def load_idx_dataset(
    dataset: str, remote: Sequence[RemoteFile], data_dir: Path | None, system_dirs: Sequence[Path] = ()
) -> ImageArrays:
    """An MNIST-style dataset (train/t10k images and labels, IDX) as uint8 arrays; downloaded if missing."""
    files = find_or_download(dataset, remote, data_dir, system_dirs)
    names = [f.name for f in remote]
    return (*_idx_arrays(files[names[0]], files[names[1]]), *_idx_arrays(files[names[2]], files[names[3]]))


def load_fashion_mnist_arrays(data_dir: Path | None) -> ImageArrays:
    """Fashion-MNIST (60000 train, 10000 test) as uint8 arrays (N, 1, 28, 28) and int64 labels."""
    return load_idx_dataset("fashion-mnist", FASHION_REMOTE, data_dir, [DEBIAN_FASHION])


def load_mnist_arrays(data_dir: Path | None) -> ImageArrays:
    """MNIST (60000 train, 10000 test) as uint8 arrays (N, 1, 28, 28) and int64 labels."""
    return load_idx_dataset("mnist", MNIST_REMOTE, data_dir)


def load_fashion_mnist(data_dir: Path | None) -> tuple[Dataset, Dataset]:
    """Full Fashion-MNIST (train 60000, test 10000), x (N, 1, 28, 28) float32 in [0, 1]."""
    x_train, y_train, x_test, y_test = load_fashion_mnist_arrays(data_dir)
    return pixels_to_dataset(x_train, y_train), pixels_to_dataset(x_test, y_test)


# ---------------------------------------------------------------- task builders


def binary_image_task(
    arrays: ImageArrays,
    sensitive: int,
    other: int,
    class_names: tuple[str, str],
    val_fraction: float = 0.2,
    seed: int = 42,
) -> TaskData:
    """Keep two classes, relabel sensitive 1 / other 0, hold out ``val_fraction`` of train (seeded).

    Only the kept images are converted to float32 (N, C, H, W) in [0, 1].
    """
    x_train, y_train, x_test, y_test = arrays

    def subset(x: np.ndarray, y: np.ndarray) -> Dataset:
        keep = (y == sensitive) | (y == other)
        return pixels_to_dataset(x[keep], (y[keep] == sensitive).astype(np.int64))

    train, val = split_train_val(subset(x_train, y_train), val_fraction, seed)
    return TaskData(train, val, subset(x_test, y_test), class_names=class_names)


def multiclass_image_task(
    arrays: ImageArrays, class_names: tuple[str, ...], val_size: int = 5000, seed: int = 42
) -> TaskData:
    """All classes with their own labels; ``val_size`` training images held out for validation (seeded).

    Training sets smaller than ``2 * val_size`` hold out 10% instead.
    """
    x_train, y_train, x_test, y_test = arrays
    fraction = val_size / len(y_train) if len(y_train) >= 2 * val_size else 0.1
    train, val = split_train_val(pixels_to_dataset(x_train, y_train), fraction, seed)
    return TaskData(train, val, pixels_to_dataset(x_test, y_test), class_names=class_names)


def _fashion_shirts(data_dir: Path | None) -> TaskData:
    return binary_image_task(load_fashion_mnist_arrays(data_dir), 0, 6, ("Shirt", "T-shirt/top"))


def _mnist_38(data_dir: Path | None) -> TaskData:
    return binary_image_task(load_mnist_arrays(data_dir), 3, 8, ("8", "3"))


def _cifar_catsdogs(data_dir: Path | None) -> TaskData:
    return binary_image_task(load_cifar10_arrays(data_dir), 3, 5, ("dog", "cat"))


def _breast_cancer(data_dir: Path | None) -> TaskData:
    """Wisconsin diagnostic breast cancer (569 × 30, raw feature units), malignant = 1; split 60/20/20."""
    try:
        from sklearn.datasets import load_breast_cancer
    except ImportError as exc:
        raise DataError("the breast-cancer task needs scikit-learn: pip install 'asymcert[tabular]'") from exc
    bunch = load_breast_cancer()
    malignant = (bunch.target == 0).astype(np.int64)  # sklearn: 0 = malignant, 1 = benign
    data = task_data_from_arrays(
        bunch.data, malignant, ("benign", "malignant"), test_fraction=0.2, val_fraction=0.25, seed=42
    )
    data.meta["feature_names"] = [str(n) for n in bunch.feature_names]
    return data


# ---------------------------------------------------------------- registration

register_task(
    Task(
        name="fashion-mnist-shirts",
        description="Fashion-MNIST, T-shirt/top (sensitive) vs Shirt",
        load=_fashion_shirts,
        augment=crop_augment(1),
        model=copy.deepcopy(FASHION_SHIRTS_MODEL),
        train=copy.deepcopy(FASHION_SHIRTS_TRAIN),
        presets={**fast_preset(), **_paper_fashion_shirts()},
        report_radii=IMAGE_RADII,
        pixels=True,
    )
)

register_task(
    Task(
        name="mnist-38",
        description="MNIST, digit 3 (sensitive) vs digit 8",
        load=_mnist_38,
        augment=crop_augment(1),
        model={
            "kind": "feature-convex",
            "feature_map": [{"kind": "shift"}],
            "convex": {"kind": "icnn", "widths": [200, 50]},
        },
        train=dict(FEATURE_CONVEX_TRAIN),
        presets=fast_preset(),
        report_radii=IMAGE_RADII,
        pixels=True,
    )
)

register_task(
    Task(
        name="cifar10-catsdogs",
        description="CIFAR-10, cat (sensitive) vs dog",
        load=_cifar_catsdogs,
        augment=crop_augment(3, flip=True),
        model={
            "kind": "feature-convex",
            "feature_map": [{"kind": "shift"}, {"kind": "concat-abs"}],
            "convex": {"kind": "convex-conv", "channels": 16, "stem_kernel": 11, "blocks": 4},
        },
        train={**FEATURE_CONVEX_TRAIN, "epochs": 150, "jacobian_reg": 0.0075},
        presets=fast_preset(),
        report_radii=CIFAR_BINARY_RADII,
        pixels=True,
    )
)

register_task(make_malimg_task(None, name="malimg"))

register_task(
    Task(
        name="breast-cancer",
        description="Wisconsin breast cancer (scikit-learn), malignant (sensitive) vs benign; raw feature units",
        load=_breast_cancer,
        model={
            "kind": "feature-convex",
            "feature_map": [{"kind": "standardize"}],
            "convex": {"kind": "icnn", "widths": [64, 32], "batch_norm": False},
        },
        train={"epochs": 100, "batch_size": 32, "optimizer": "adam", "lr": 1e-3, "jacobian_reg": 0.0},
        presets=fast_preset(),
        report_radii=BREAST_CANCER_RADII,
    )
)

register_task(
    Task(
        name="spambase",
        description="UCI SpamBase (kernlab's spam.rda), spam (sensitive) vs ham, spammer threat model",
        load=load_spambase,
        # log1p tames the heavy-tailed counts; hinges (4 knots per feature) let a one-unit ICNN bend each
        # feature at thresholds: more accurate and more certified than the ICNN 64-32 on log1p features on
        # the validation split (benchmarks/README.md, "SpamBase with hinges"; that model: preset log1p-64-32)
        model={
            "kind": "feature-convex",
            "feature_map": [{"kind": "log1p"}, {"kind": "standardize"}, {"kind": "hinges", "knots": 4}],
            "convex": {"kind": "icnn", "widths": [1], "batch_norm": False},
        },
        # the certified-margin loss under the threat model: ℓ1 ball of 0.5 units (benchmarks/README.md)
        train={
            "epochs": 100,
            "batch_size": 32,
            "optimizer": "adam",
            "lr": 1e-3,
            "jacobian_reg": 0.0,
            "margin_radius": 0.5,
            "margin_norm": 1,
        },
        presets={**fast_preset(), **_spambase_presets()},
        report_radii=tabular_radii(MEDIAN_FEATURE_STD, N_FEATURES),
        threat_model=SPAMBASE_THREAT_MODEL,
        threat_report_radii=SPAMBASE_THREAT_RADII,
    )
)


def _multiclass_loader(
    load: Callable[[Path | None], ImageArrays], classes: tuple[str, ...]
) -> Callable[[Path | None], TaskData]:
    """A task loader: ``load``'s arrays as a :func:`multiclass_image_task` with ``classes`` as names."""
    return lambda data_dir: multiclass_image_task(load(data_dir), classes)


for _name, _title, _load, _classes, _augment, _radii in (
    ("mnist", "MNIST", load_mnist_arrays, MNIST_CLASSES, crop_augment(1), {INF: (0.1, 0.2, 0.3)}),
    (
        "fashion-mnist",
        "Fashion-MNIST",
        load_fashion_mnist_arrays,
        FASHION_CLASSES,
        crop_augment(1),
        {INF: (0.1, 0.2, 0.3)},
    ),
    (
        "cifar10",
        "CIFAR-10",
        load_cifar10_arrays,
        CIFAR10_CLASSES,
        crop_augment(4, flip=True),
        {INF: (2 / 255, 8 / 255, 16 / 255)},
    ),
):
    register_task(
        Task(
            name=_name,
            description=f"{_title}, all 10 classes (5000 training images held out for validation)",
            load=_multiclass_loader(_load, _classes),
            binary=False,
            augment=_augment,
            model=dict(LINF_DIST_MODEL, widths=list(LINF_DIST_MODEL["widths"])),
            train=dict(LINF_DIST_TRAIN),
            presets=fast_preset(),
            report_radii={p: tuple(r) for p, r in _radii.items()},
            pixels=True,
        )
    )
