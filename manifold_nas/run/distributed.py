"""Data-parallel runs under ``torchrun``: the process group, sharded data, reductions.

A command started by ``torchrun --nproc_per_node=N manifold-nas ...`` finds
``WORLD_SIZE``/``RANK``/``LOCAL_RANK`` in its environment and joins the
process group (gloo on CPU, NCCL on GPU). Without those variables
:func:`current_world` returns a single-process world and
``torch.distributed`` is never initialised.

What data parallelism changes, and where:

* every rank shuffles each split with the same seed and takes every
  ``world_size``-th index of the permutation (:class:`ShardedSampler`), so the
  union of the ranks' batches at a step is exactly the batch a single process
  with a ``world_size`` times larger batch would see;
* weight gradients are averaged by ``DistributedDataParallel``; architecture
  gradients, which DDP does not see (they are formed with
  ``torch.autograd.grad``), are averaged by :meth:`World.average`, and so are
  the weight gradients inside the second-order virtual step, so every rank
  takes the same architecture step;
* batch norm is local to each rank unless ``strategy.sync_batch_norm`` converts
  it to ``SyncBatchNorm`` (GPU only, a PyTorch restriction); the SPD domain's
  Fréchet-mean batch norm is always local;
* only rank 0 writes the run directory; every rank reads the checkpoint on
  ``--resume``.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Sampler

from manifold_nas.errors import UserInputError

__all__ = [
    "ShardedSampler",
    "World",
    "check_device",
    "current_world",
    "device_for",
    "launched_by_torchrun",
]


def launched_by_torchrun() -> bool:
    """Whether the environment describes more than one process (``torchrun`` sets it)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


@dataclass
class World:
    """This process's place among the data-parallel processes."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def average(self, tensors: Sequence[Tensor]) -> list[Tensor]:
        """Element-wise mean of ``tensors`` over all ranks (one flattened all-reduce)."""
        if not self.distributed or not tensors:
            return list(tensors)
        import torch.distributed as dist

        flat = torch.cat([t.reshape(-1) for t in tensors])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat /= self.size
        out, offset = [], 0
        for t in tensors:
            out.append(flat[offset : offset + t.numel()].view_as(t))
            offset += t.numel()
        return out

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if not self.distributed:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.distributed:
            import torch.distributed as dist

            dist.barrier()


_WORLD: World | None = None


def _cuda_problem(index: int | None) -> str | None:
    if torch.version.cuda is None and getattr(torch.version, "hip", None) is None:
        return "this torch has no CUDA (torch.version.cuda is None); use device=cpu"
    if not torch.cuda.is_available():
        return "no GPU visible (torch.cuda.is_available() is False); use device=cpu"
    count = torch.cuda.device_count()
    if index is not None and index >= count:
        return f"{count} GPU(s) visible, cuda:0 to cuda:{count - 1}"
    return None


def _mps_problem() -> str | None:
    if not torch.backends.mps.is_built():
        return "this torch has no MPS support (torch.backends.mps.is_built() is False)"
    if not torch.backends.mps.is_available():
        return "no MPS device (torch.backends.mps.is_available() is False); use device=cpu"
    return None


def check_device(device: str) -> None:
    """Refuse a ``device`` this process cannot run on, naming it (``UserInputError``).

    The config parser has checked that torch reads the string; here the
    device must exist: ``cuda`` needs a CUDA build of torch and a visible
    GPU (``cuda:N`` the N-th), ``mps`` an MPS build on a Mac, and another
    device type its torch backend (``torch.xpu``, ...) to report itself available.
    """
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise UserInputError(
            f"device {device!r} is not a torch device; use cpu, cuda, cuda:1 or mps"
        ) from None
    kind = parsed.type
    if kind == "cpu":
        return
    if kind == "cuda":
        problem = _cuda_problem(parsed.index)
    elif kind == "mps":
        problem = _mps_problem()
    else:
        backend = getattr(torch, kind, None)
        is_available = getattr(backend, "is_available", None)
        if not callable(is_available):
            raise UserInputError(
                f"device {device!r} is not supported: use cpu, cuda, cuda:N or mps"
            )
        problem = None if is_available() else f"torch.{kind}.is_available() is False"
    if problem is not None:
        raise UserInputError(f"device {device!r} is not available: {problem}")


def current_world(device: str = "cpu") -> World:
    """The world of this process, joining the process group on first use under torchrun.

    ``device`` is checked first (:func:`check_device`): a missing GPU is the
    user's to fix, and NCCL would fail on it with a traceback.
    """
    global _WORLD
    check_device(device)
    if _WORLD is not None:
        return _WORLD
    if not launched_by_torchrun():
        _WORLD = World()
        return _WORLD
    import torch.distributed as dist

    rank = int(os.environ["RANK"])
    size = int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    if not dist.is_initialized():
        backend = "nccl" if device.startswith("cuda") else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=30))
    _WORLD = World(rank, size, local_rank)
    return _WORLD


def device_for(device: str, world: World) -> str:
    """``cuda`` means this rank's own GPU under torchrun; a device that is not there is refused."""
    if world.distributed and device == "cuda":
        device = f"cuda:{world.local_rank}"
    check_device(device)
    return device


def check_batch_norm_sync(sync: bool, device: str) -> None:
    if sync and not device.startswith("cuda"):
        raise UserInputError(
            "strategy.sync_batch_norm needs GPUs (PyTorch's SyncBatchNorm runs on CUDA only); "
            "on CPU batch norm stays local to each process"
        )


class ShardedSampler(Sampler[int]):
    """Rank ``rank``'s share of one seeded permutation of ``n`` indices.

    The permutation is the one a shuffling ``DataLoader`` draws from a
    generator seeded with ``seed`` (the loader first takes one number from
    the generator for its workers' base seed, then the sampler draws
    ``torch.randperm(n)``), so with one process this sampler yields exactly
    that loader's order. The permutation is padded by wrapping around to a
    multiple of ``world`` so that every rank takes the same number of steps.
    """

    def __init__(self, n: int, seed: int, rank: int, world: int) -> None:
        self.n, self.seed, self.rank, self.world = n, seed, rank, world

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed)
        torch.empty((), dtype=torch.int64).random_(generator=generator)  # the loader's base seed
        order = torch.randperm(self.n, generator=generator).tolist()
        total = -(-self.n // self.world) * self.world
        order += order[: total - self.n]
        return iter(order[self.rank : total : self.world])

    def __len__(self) -> int:
        return -(-self.n // self.world)
