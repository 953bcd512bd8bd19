"""The training batches of one epoch: shuffled, augmented with a generator of their own, and loaded
in worker processes when asked (so augmentation keeps a GPU busy), the same batches either way."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator

import torch
from torch.utils.data import DataLoader, Dataset

from asymcert.data.tasks import Augment


def epoch_generator(seed: int, epoch: int, stream: int) -> torch.Generator:
    """A CPU generator determined by (seed, epoch, stream): resuming at an epoch replays it exactly."""
    return torch.Generator().manual_seed((seed * 1_000_003 + epoch) * 7 + stream)


def batch_generator(seed: int, epoch: int, step: int) -> torch.Generator:
    """The augmentation generator of batch ``step`` of ``epoch``: independent of which process or
    worker draws the batch, and of the order in which batches are drawn."""
    return torch.Generator().manual_seed(((seed * 1_000_003 + epoch) * 1_000_033 + step) * 2 + 1)


def resolve_workers(workers: int | None, device: torch.device) -> int:
    """Worker processes for data loading: ``None`` → 0 on CPU (training needs every core), 2 on CUDA."""
    if workers is None:
        return 2 if device.type == "cuda" and (os.cpu_count() or 1) > 2 else 0
    if workers < 0:
        raise ValueError(f"workers must be ≥ 0, got {workers}")
    return int(workers)


class EpochBatches(Dataset):
    """Global batch ``k`` of an epoch, as an item: (x (B, *shape), y (B,)).

    Args:
        x, y: the whole training split (N, *shape) and (N,), in memory.
        batch_size: global batch size; the last batch may be smaller.
        seed, epoch: select the shuffle and the augmentation draws.
        augment: the task's training augmentation, or None.
    """

    def __init__(
        self, x: torch.Tensor, y: torch.Tensor, batch_size: int, seed: int, epoch: int, augment: Augment | None
    ) -> None:
        self.x, self.y, self.batch_size = x, y, int(batch_size)
        self.seed, self.epoch, self.augment = int(seed), int(epoch), augment
        self.perm = torch.randperm(x.shape[0], generator=epoch_generator(seed, epoch, 0))

    def __len__(self) -> int:
        return -(-self.x.shape[0] // self.batch_size)

    def __getitem__(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= step < len(self):
            raise IndexError(step)
        idx = self.perm[step * self.batch_size : (step + 1) * self.batch_size]
        x, y = self.x[idx], self.y[idx]
        if self.augment is not None:
            x = self.augment(x, batch_generator(self.seed, self.epoch, step))
        return x, y


def epoch_batches(batches: EpochBatches, workers: int, pin_memory: bool) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
    """Iterate over an epoch's batches in order, in this process (``workers=0``) or in workers."""
    if workers == 0:
        return _in_process(batches, pin_memory)
    return DataLoader(
        batches, batch_size=None, shuffle=False, num_workers=workers, pin_memory=pin_memory, prefetch_factor=4
    )


def _in_process(batches: EpochBatches, pin_memory: bool) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for step in range(len(batches)):
        x, y = batches[step]
        yield (x.pin_memory(), y.pin_memory()) if pin_memory else (x, y)
