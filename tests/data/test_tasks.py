"""The task registry, the IDX-based tasks, split helpers, breast-cancer, and the real Fashion-MNIST."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from asymcert.data.idx import write_idx
from asymcert.data.tasks import (
    Dataset,
    balance_classes,
    binary_subset,
    get_task,
    split_train_val,
    stratified_split,
    task_names,
)
from asymcert.errors import DataError, UnknownNameError

INF = math.inf
BINARY = ["mnist-38", "fashion-mnist-shirts", "cifar10-catsdogs", "malimg", "breast-cancer"]
TEN_CLASS = ["mnist", "fashion-mnist", "cifar10"]
DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")


def _mnist_like(folder: Path, n_train: int = 250, n_test: int = 100, seed: int = 0) -> tuple[np.ndarray, ...]:
    """IDX files in MNIST's names, labels cycling 0..9; each image's top-left pixel is its index mod 256."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = []
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        images[:, 0, 0] = np.arange(n) % 256
        labels = (np.arange(n) % 10).astype(np.uint8)
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", labels)
        arrays += [images, labels]
    return tuple(arrays)


def test_every_paper_task_is_registered():
    assert set(BINARY + TEN_CLASS) <= set(task_names())
    for name in BINARY + TEN_CLASS:
        task = get_task(name)
        assert task.binary == (name in BINARY)
        assert task.model["kind"] and task.train["epochs"] > 0 and task.train["batch_size"] > 0
        assert task.presets["fast"] == {"train": {"epochs": 2}}
        assert task.report_radii and all(all(r > 0 for r in radii) for radii in task.report_radii.values())


def test_unknown_task_lists_known_names():
    with pytest.raises(UnknownNameError) as info:
        get_task("mnist-39")
    message = str(info.value)
    assert "mnist-39" in message and all(name in message for name in BINARY + TEN_CLASS)


def test_fashion_shirts_default_and_paper_preset():
    from asymcert.pipeline import _merge

    task = get_task("fashion-mnist-shirts")
    assert task.model["convex"] == {"kind": "icnn", "widths": [4096], "batch_norm": False}
    assert task.train["optimizer"] == "adam" and task.train["margin_radius"] == [8.0, 0.9]
    assert task.train["train_at_balance"] is True
    paper = _merge({"model": task.model, "train": task.train}, task.presets["paper"])
    assert paper["model"]["convex"] == {"kind": "convex-conv", "channels": 4, "stem_kernel": 5, "blocks": 2}
    keys = ("epochs", "optimizer", "lr", "jacobian_reg", "margin_radius", "augment", "train_at_balance")
    assert {k: paper["train"][k] for k in keys} == {
        "epochs": 60,
        "optimizer": "sgd",
        "lr": 1e-3,
        "jacobian_reg": 0.01,
        "margin_radius": 0.0,
        "augment": True,
        "train_at_balance": False,
    }


def test_paper_defaults():
    mnist = get_task("mnist-38")
    assert mnist.model == {
        "kind": "feature-convex",
        "feature_map": [{"kind": "shift"}],
        "convex": {"kind": "icnn", "widths": [200, 50]},
    }
    assert mnist.train == {
        "epochs": 60,
        "batch_size": 64,
        "lr": 1e-3,
        "optimizer": "sgd",
        "momentum": 0.9,
        "lr_decay": 0.99,
        "jacobian_reg": 0.01,
    }
    cifar = get_task("cifar10-catsdogs")
    assert cifar.model["convex"] == {"kind": "convex-conv", "channels": 16, "stem_kernel": 11, "blocks": 4}
    assert cifar.report_radii[INF] == pytest.approx((1 / 255, 2 / 255, 4 / 255, 8 / 255))
    for name, radii in (
        ("mnist", (0.1, 0.2, 0.3)),
        ("fashion-mnist", (0.1, 0.2, 0.3)),
        ("cifar10", (2 / 255, 8 / 255, 16 / 255)),
    ):
        task = get_task(name)
        assert task.model == {"kind": "linf-dist", "widths": [1024] * 4}  # 4 hidden + output = the paper's 5 layers
        assert task.train == {
            "epochs": 100,
            "batch_size": 512,
            "optimizer": "adam",
            "lr": 0.03,
            "schedule": "cosine",
            "extra": {"betas": [0.9, 0.99], "adam_eps": 1e-10},
        }
        assert task.report_radii == {INF: pytest.approx(radii)}
    bc = get_task("breast-cancer")
    assert bc.model["feature_map"] == [{"kind": "standardize"}] and bc.train["optimizer"] == "adam"


def test_mnist_38_relabels_and_splits(tmp_path, data_cache):
    x_train, y_train, x_test, y_test = _mnist_like(tmp_path / "mnist")
    data = get_task("mnist-38").load(tmp_path / "mnist")
    n_train = int(np.isin(y_train, [3, 8]).sum())  # 50
    assert len(data.val) == round(0.2 * n_train) and len(data.train) == n_train - len(data.val)
    assert data.class_names == ("8", "3") and data.input_shape == (1, 28, 28) and data.num_classes == 2
    for split in (data.train, data.val, data.test):
        assert split.x.dtype == torch.float32 and split.y.dtype == torch.int64
        # which original image each is (top-left pixel = index) → its label must be 3 ↔ 1, 8 ↔ 0
        index = torch.round(split.x[:, 0, 0, 0] * 255).long().numpy()
        images, labels = (x_train, y_train) if split is not data.test else (x_test, y_test)
        np.testing.assert_array_equal(split.y.numpy(), (labels[index] == 3).astype(int))
        np.testing.assert_allclose(split.x[:, 0].numpy(), images[index] / 255.0, atol=1e-7)
    again = get_task("mnist-38").load(tmp_path / "mnist")
    assert torch.equal(again.train.x, data.train.x) and torch.equal(again.val.y, data.val.y)


def test_ten_class_mnist(tmp_path, data_cache):
    _mnist_like(tmp_path / "mnist")
    task = get_task("mnist")
    data = task.load(tmp_path / "mnist")
    assert data.class_names == tuple("0123456789") and data.num_classes == 10
    assert len(data.val) == 25 and len(data.train) == 225 and len(data.test) == 100  # small sets: 10% val
    assert set(data.train.y.tolist()) == set(range(10))


def test_fashion_task_uses_user_folder_first(tmp_path, data_cache):
    _mnist_like(tmp_path / "fashion")
    data = get_task("fashion-mnist-shirts").load(tmp_path / "fashion")
    assert len(data.train) + len(data.val) == 50 and len(data.test) == 20
    assert data.class_names == ("Shirt", "T-shirt/top")


def test_missing_idx_files_say_where_to_put_them(tmp_path, data_cache):
    with pytest.raises(DataError) as info:
        get_task("mnist-38").load(tmp_path / "nothing")
    message = str(info.value)
    for expected in (
        "train-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz",
        str(tmp_path / "nothing"),
        str(data_cache / "mnist"),
        "ASYMCERT_OFFLINE",
    ):
        assert expected in message


def test_mismatched_image_and_label_files(tmp_path, data_cache):
    _mnist_like(tmp_path / "m")
    write_idx(tmp_path / "m" / "train-labels-idx1-ubyte.gz", np.zeros(7, np.uint8))
    with pytest.raises(DataError, match="not an image/label pair"):
        get_task("mnist").load(tmp_path / "m")


def test_stratified_split_properties():
    y = np.array([0] * 50 + [1] * 13 + [2] * 3)
    train, val, test = stratified_split(y, 0.2, 0.2, seed=3)
    joined = np.concatenate([train, val, test])
    assert sorted(joined.tolist()) == list(range(len(y)))  # disjoint and complete
    assert np.bincount(y[test]).tolist() == [10, 3, 1] and np.bincount(y[val]).tolist() == [8, 2, 1]
    again = stratified_split(y, 0.2, 0.2, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip((train, val, test), again))
    assert not np.array_equal(stratified_split(y, 0.2, 0.2, seed=4)[0], train)
    assert not np.all(np.diff(y[test]) >= 0)  # shuffled, not grouped by class
    with pytest.raises(DataError, match="only 2 example"):
        stratified_split(np.array([0] * 10 + [1] * 2))


def test_balance_classes_is_seeded_and_keeps_smaller_class():
    y = np.array([1] * 40 + [0] * 15)
    keep = balance_classes(y, seed=5)
    assert np.bincount(y[keep]).tolist() == [15, 15]
    assert set(np.flatnonzero(y == 0)) <= set(keep)
    assert np.array_equal(keep, balance_classes(y, seed=5))
    assert not np.array_equal(keep, balance_classes(y, seed=6))


def test_binary_subset_and_split_helpers():
    from asymcert.data.tasks import Dataset

    data = Dataset(torch.arange(10.0)[:, None], torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 0]))
    both = binary_subset(data, sensitive=2, other=0)
    assert both.y.tolist() == [0, 1, 0, 1, 0, 1, 0] and both.x[:, 0].tolist() == [0, 2, 3, 5, 6, 8, 9]
    train, val = split_train_val(both, 0.2, seed=42)
    assert len(val) == 1 and len(train) == 6


@pytest.mark.parametrize("name, padding", [("mnist-38", 1), ("cifar10-catsdogs", 3), ("cifar10", 4)])
def test_augmentations_keep_shape(name, padding):
    task = get_task(name)
    shape = (8, 1, 28, 28) if "mnist" in name else (8, 3, 32, 32)
    x = torch.rand(shape)
    out = task.augment(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    assert f"crop{padding}" in task.augment.__name__


def test_breast_cancer_task(data_cache):
    pytest.importorskip("sklearn")
    from sklearn.datasets import load_breast_cancer

    data = get_task("breast-cancer").load(None)
    assert (len(data.train), len(data.val), len(data.test)) == (341, 115, 113)  # 60/20/20 per class
    assert data.class_names == ("benign", "malignant") and data.input_shape == (30,)
    assert sum(int(s.y.sum()) for s in (data.train, data.val, data.test)) == 212  # malignant = 1
    raw = load_breast_cancer()
    # raw feature units: every test row is a row of the original table with its label flipped to malignant = 1
    table = {tuple(np.float32(r)): int(t == 0) for r, t in zip(raw.data, raw.target)}
    assert all(table[tuple(r)] == int(label) for r, label in zip(data.test.x.numpy(), data.test.y))
    assert float(data.train.x.max()) > 1000  # worst area is in the thousands: not standardised
    assert data.meta["feature_scale"].shape == (30,) and len(data.meta["feature_names"]) == 30


@pytest.mark.skipif(not DEBIAN_FASHION.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")
def test_debian_fashion_mnist_shirts(data_cache):
    from asymcert.data.builtin import load_fashion_mnist

    data = get_task("fashion-mnist-shirts").load(None)
    assert (len(data.train), len(data.val), len(data.test)) == (9600, 2400, 2000)
    assert data.input_shape == (1, 28, 28)
    assert int(data.test.y.sum()) == 1000 and int(data.train.y.sum() + data.val.y.sum()) == 6000
    # identical to filtering the full dataset, then splitting (the original implementation)
    train, test = load_fashion_mnist(None)
    ref_train, ref_val = split_train_val(binary_subset(train, sensitive=0, other=6), 0.2, seed=42)
    assert torch.equal(ref_train.x, data.train.x) and torch.equal(ref_val.y, data.val.y)
    assert torch.equal(binary_subset(test, 0, 6).x, data.test.x)


def test_dataset_join_keeps_the_order_of_its_parts():
    a = Dataset(torch.arange(6.0).reshape(3, 2), torch.tensor([0, 1, 0]))
    b = Dataset(torch.arange(6.0, 10.0).reshape(2, 2), torch.tensor([1, 1]))
    joined = Dataset.join(a, b, a)
    assert len(joined) == 8
    assert torch.equal(joined.x[:5].flatten(), torch.arange(10.0)) and torch.equal(joined.x[5:], a.x)
    assert joined.y.tolist() == [0, 1, 0, 1, 1, 0, 1, 0]
