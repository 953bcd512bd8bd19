"""Malimg: family folders of PNG/JPEG files, centre crop/pad, seeded class balancing, per-class splits."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from asymcert.data.images import center_crop_pad, read_images
from asymcert.data.malimg import find_malimg_root, load_malimg, make_malimg_task, malimg_augment
from asymcert.data.tasks import get_task
from asymcert.errors import DataError

Image = pytest.importorskip("PIL.Image")

FAMILIES = {"Allaple.A": 15, "Adialer.C": 6, "Yuner.A": 14}  # 20 sensitive vs 15 other


def _write_families(root, families=FAMILIES):
    """Each image is filled with a unique gray level (its id) so tests can tell which were kept."""
    ident = 1
    for family, count in families.items():
        (root / family).mkdir(parents=True)
        for k in range(count):
            h, w = (20, 12) if k % 2 else (9, 30)  # both smaller and larger than the crops used
            pixels = np.full((h, w), ident, dtype=np.uint8)
            suffix = ".png" if k % 3 else ".PNG"
            Image.fromarray(pixels, mode="L").save(root / family / f"{k:03d}{suffix}")
            ident += 1
    return root


@pytest.fixture
def malimg_dir(tmp_path):
    return _write_families(tmp_path / "malimg")


def _ids(dataset) -> set[int]:
    centre = dataset.x[:, 0, dataset.x.shape[-1] // 2, dataset.x.shape[-1] // 2]
    return set(torch.round(centre * 255).int().tolist())


def test_balanced_per_class_splits(malimg_dir, data_cache):
    data = load_malimg(malimg_dir, size=16, seed=42)
    assert data.class_names == ("Allaple.A", "other families")
    assert data.input_shape == (1, 16, 16)
    for split, per_class in ((data.train, 10), (data.val, 2), (data.test, 3)):
        # 15 per class: test round(3.0) = 3, val round(12 * 0.2) = 2, train 10
        assert np.bincount(split.y.numpy()).tolist() == [per_class, per_class]
    all_ids = _ids(data.train) | _ids(data.val) | _ids(data.test)
    assert len(all_ids) == 30
    assert set(range(1, 16)) <= all_ids  # the smaller class (Allaple.A, ids 1..15) is kept whole
    assert not (_ids(data.train) & _ids(data.test)) and not (_ids(data.train) & _ids(data.val))
    assert data.meta["families"] == sorted(FAMILIES)


def test_downsampling_is_seeded(malimg_dir, data_cache):
    first = load_malimg(malimg_dir, size=16, seed=7)
    again = load_malimg(malimg_dir, size=16, seed=7)
    for a, b in zip((first.train, first.val, first.test), (again.train, again.val, again.test)):
        assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    kept = [_ids(load_malimg(malimg_dir, size=16, seed=s).train) for s in range(4)]
    assert any(k != kept[0] for k in kept[1:])  # other seeds pick other images


def test_nested_archive_folder_and_cache_are_found(tmp_path, data_cache):
    _write_families(data_cache / "malimg" / "malimg_paper_dataset_imgs")
    assert find_malimg_root(None) == data_cache / "malimg" / "malimg_paper_dataset_imgs"
    assert len(load_malimg(None, size=8).test) == 6


def test_missing_dataset_says_where_to_put_it(tmp_path, data_cache):
    with pytest.raises(DataError) as info:
        find_malimg_root(tmp_path / "nowhere")
    message = str(info.value)
    assert "no stable official download" in message and "Allaple.A" in message
    assert str(tmp_path / "nowhere") in message and str(data_cache / "malimg") in message


def test_only_allaple_is_an_error(tmp_path, data_cache):
    _write_families(tmp_path / "m", {"Allaple.A": 4})
    with pytest.raises(DataError, match="at least one other family"):
        load_malimg(tmp_path / "m", size=8)


def test_corrupted_image_names_the_file(malimg_dir, data_cache):
    bad = malimg_dir / "Allaple.A" / "001.png"
    bad.write_bytes(bad.read_bytes()[:30])
    with pytest.raises(DataError, match=r"001.png"):
        load_malimg(malimg_dir, size=16)


def test_registered_task_and_size_setting(malimg_dir, data_cache, monkeypatch):
    task = get_task("malimg")
    assert task.train["batch_size"] == 32 and task.train["epochs"] == 150 and task.train["jacobian_reg"] == 0.075
    assert task.model["convex"] == {"kind": "icnn", "widths": [200, 50]}
    monkeypatch.setenv("ASYMCERT_MALIMG_SIZE", "24")
    assert task.load(malimg_dir).input_shape == (1, 24, 24)
    monkeypatch.setenv("ASYMCERT_MALIMG_SIZE", "big")
    with pytest.raises(DataError, match="ASYMCERT_MALIMG_SIZE"):
        task.load(malimg_dir)
    assert make_malimg_task(12).load(malimg_dir).input_shape == (1, 12, 12)


def test_center_crop_pad():
    image = np.arange(1, 5 * 7 + 1, dtype=np.uint8).reshape(5, 7)
    padded = center_crop_pad(image, 9)
    assert padded.shape == (9, 9)
    np.testing.assert_array_equal(padded[2:7, 1:8], image)
    assert padded.sum() == image.sum()
    cropped = center_crop_pad(image, 3)
    np.testing.assert_array_equal(cropped, image[1:4, 2:5])
    mixed = center_crop_pad(image, 6)  # taller than the image, narrower: odd pixels go bottom/right
    np.testing.assert_array_equal(mixed[:5], image[:, 0:6])
    np.testing.assert_array_equal(mixed[5], 0)


def test_read_images_rgb_and_jpeg(tmp_path):
    rgb = np.zeros((10, 10, 3), np.uint8)
    rgb[..., 0] = 200
    Image.fromarray(rgb, mode="RGB").save(tmp_path / "a.jpg", quality=95)
    gray = read_images([tmp_path / "a.jpg"], "L")
    color = read_images([tmp_path / "a.jpg"], "RGB")
    assert gray.shape == (1, 1, 10, 10) and color.shape == (1, 3, 10, 10)
    assert abs(int(color[0, 0, 5, 5]) - 200) <= 3 and color[0, 2, 5, 5] <= 3


def test_malimg_augment_zero_pads_and_keeps_shape():
    x = torch.ones(64, 1, 32, 32)
    out = malimg_augment(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    assert float(out.min()) == 0.0  # some crops reach into the zero padding
    assert set(out.unique().tolist()) <= {0.0, 1.0}
