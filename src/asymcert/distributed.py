"""Thin helpers over ``torch.distributed`` (process group set up by ``torchrun``); no parallelism of our own."""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator
from datetime import timedelta

import torch
import torch.distributed as dist

from asymcert.errors import PeerStoppedError


def is_distributed() -> bool:
    """True inside an initialised process group with more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main() -> bool:
    """True on rank 0 (or without a process group): the one process that writes files."""
    return rank() == 0


def init_from_env(device: str = "auto") -> bool:
    """Join the process group that ``torchrun`` describes in the environment (WORLD_SIZE > 1).

    Backend: NCCL when training on CUDA, gloo on CPU. Returns True when a group was set up.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or (dist.is_available() and dist.is_initialized()):
        return False
    use_cuda = (torch.cuda.is_available() and device in ("auto", "cuda")) or device.startswith("cuda")
    if use_cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if use_cuda else "gloo", timeout=timedelta(minutes=30))
    return True


def local_device(device: torch.device) -> torch.device:
    """On CUDA under torchrun, the GPU of this process (LOCAL_RANK); otherwise ``device`` unchanged."""
    if device.type == "cuda" and device.index is None and is_distributed():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def differentiable_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum of ``t`` over all processes; gradients flow back to every process's own ``t``."""
    if not is_distributed():
        return t
    from torch.distributed.nn.functional import all_reduce

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return all_reduce(t)


PEER_FAILURES = (
    "Connection reset by peer",
    "Connection closed by peer",
    "Broken pipe",
    "NCCL communicator was aborted",
)
"""What the process group's errors say when another process of the job stopped (gloo over TCP, NCCL)."""


def peer_stopped(exc: BaseException) -> PeerStoppedError | None:
    """The :class:`PeerStoppedError` for ``exc`` when it is the process group failing because another process
    stopped (inside a process group, one of :data:`PEER_FAILURES` in its message), else None (a bug keeps its
    traceback)."""
    text = str(exc)
    if not (isinstance(exc, RuntimeError) and is_distributed() and any(p in text for p in PEER_FAILURES)):
        return None
    return _stopped(exc)


def _stopped(exc: BaseException) -> PeerStoppedError:
    """The one-line :class:`PeerStoppedError` for the process group's error ``exc`` (its first line quoted)."""
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
    stopped = "another process of this torchrun job stopped (its own error line says why, unless it was killed)"
    return PeerStoppedError(f"{stopped}; nothing more was done here ({first})")


@contextlib.contextmanager
def _peers() -> Iterator[None]:
    """A collective call: a failure of the process group there (a peer that stopped: gloo's "Connection reset by
    peer") is one :class:`PeerStoppedError` line, not a traceback (audit 29e #7)."""
    try:
        yield
    except RuntimeError as exc:
        raise _stopped(exc) from None


def broadcast_float(value: float, src: int = 0) -> float:
    """Rank ``src``'s value of a Python float, on every process."""
    if not is_distributed():
        return value
    t = torch.tensor([value], dtype=torch.float64)
    with _peers():
        dist.broadcast(t, src)
    return float(t)


def gather_rows(t: torch.Tensor) -> torch.Tensor:
    """Concatenate every process's rows of ``t`` (N_r, ...) in rank order, without duplicates.

    Shards may differ in size (unlike ``DistributedSampler``, nothing is padded into the result).
    """
    if not is_distributed():
        return t
    n = torch.tensor([t.shape[0]], dtype=torch.long)
    sizes = [torch.zeros_like(n) for _ in range(world_size())]
    with _peers():
        dist.all_gather(sizes, n)
    top = int(max(s.item() for s in sizes))
    padded = torch.zeros((top,) + tuple(t.shape[1:]), dtype=t.dtype)
    padded[: t.shape[0]] = t.cpu()
    parts = [torch.zeros_like(padded) for _ in range(world_size())]
    with _peers():
        dist.all_gather(parts, padded)
    return torch.cat([p[: int(s.item())] for p, s in zip(parts, sizes)]).to(t.device)


def barrier() -> None:
    if is_distributed():
        with _peers():
            dist.barrier()
