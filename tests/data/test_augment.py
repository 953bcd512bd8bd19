"""Named, seeded training augmentations."""

import pytest
import torch

from asymcert.data.augment import augmentation_from_name, crop_augment
from asymcert.errors import UnknownNameError


def test_named_augmentations_match_their_builders():
    x = torch.rand(16, 1, 8, 8)
    for name, built in [("crop1", crop_augment(1)), ("crop2_flip", crop_augment(2, flip=True))]:
        a = augmentation_from_name(name)(x, torch.Generator().manual_seed(3))
        b = built(x, torch.Generator().manual_seed(3))
        assert torch.equal(a, b) and a.shape == x.shape


def test_flip_only_mirrors_images():
    x = torch.rand(64, 1, 5, 5)
    out = augmentation_from_name("crop0_flip")(x, torch.Generator().manual_seed(0))
    same = (out == x).flatten(1).all(1)
    mirrored = (out == x.flip(-1)).flatten(1).all(1)
    assert bool((same | mirrored).all()) and 0 < int(mirrored.sum()) < 64
    assert torch.equal(augmentation_from_name("flip")(x, torch.Generator().manual_seed(0)), out)


@pytest.mark.parametrize("name", ["rotate", "crop", "crop-1", "crop2flip", "flips"])
def test_unknown_augmentation_is_named(name):
    with pytest.raises(UnknownNameError, match=name):
        augmentation_from_name(name)


def test_training_with_a_named_augmentation(fashion_dir):
    from asymcert.train import TrainConfig, fit
    from tests.conftest import small_fashion_task

    task, data, model = small_fashion_task(fashion_dir)
    config = TrainConfig.from_dict({**task.train, "epochs": 1, "batch_size": 32, "augment": "crop2_flip"})
    assert fit(model, data, config, None, augment=task.augment, progress=False).history
    with pytest.raises(UnknownNameError, match="nope"):
        fit(
            model,
            data,
            TrainConfig.from_dict({**task.train, "epochs": 1, "augment": "nope"}),
            None,
            augment=task.augment,
            progress=False,
        )
