"""Training one student block on its teacher's features (DNA's ``guide_input``).

Block ``i`` learns to map the teacher's features at its input boundaries to
the teacher's feature ``t_{i+1}`` (:func:`~manifold_nas.strategies.dna.distillation.block_targets`),
so the blocks are independent of each other and are trained one after the
other. :func:`train_block` trains one block with its adapters by single-path
sampling: each step draws one candidate uniformly (one op per kept edge,
``keep`` edges per node) and takes a step of the ``search:`` weight
optimizer on the feature loss, under a cosine schedule, the search's
gradient clipping and step limit.

Where training stands is a :class:`BlockProgress`, which the caller
checkpoints after every epoch: it holds the optimizer, schedule and path
sampler of the block in training, and every epoch seeds its loader order and
its data transforms on its own, so a resumed run trains the block exactly as
the uninterrupted one did.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from manifold_nas.config import split_name
from manifold_nas.optim import build_optimizer
from manifold_nas.optim.state import load_optimizer_state
from manifold_nas.run.context import Run, stream_seed
from manifold_nas.space.sampling import genotype_weights
from manifold_nas.strategies.dna.data_passes import reseed_data_transforms
from manifold_nas.strategies.dna.distillation import (
    FEATURE_LOSSES,
    DistillationBlock,
    block_targets,
)
from manifold_nas.strategies.dna.teacher import TeacherStages
from manifold_nas.strategies.dna.units import StudentBlocks
from manifold_nas.strategies.one_shot import PathSampler

__all__ = ["BlockProgress", "train_block"]


@dataclass
class BlockProgress:
    """How far block training has come (checkpointed)."""

    #: blocks trained and ranked so far: the next block to train is ``stage``
    stage: int = 0
    #: epochs of block ``stage`` finished
    epoch: int = 0
    #: optimizer, scheduler and path-sampler states of block ``stage`` mid-training
    block_state: dict[str, Any] | None = None
    #: one ``block_epoch`` record per finished epoch of every block
    history: list[dict[str, Any]] = field(default_factory=list)


def train_block(
    run: Run,
    i: int,
    distill: DistillationBlock,
    student: StudentBlocks,
    stages: TeacherStages,
    *,
    loss: str,
    epochs: int | None,
    progress: BlockProgress,
    checkpoint: Callable[[], None],
) -> None:
    """Single-path training of block ``i`` (``distill``) for ``epochs`` epochs, from ``progress``.

    ``epochs=None`` trains for ``search.epochs``. ``progress`` is updated and
    ``checkpoint()`` called after every epoch; at the end its epoch count and
    block state are reset for the next block.
    """
    s = run.config.search
    epochs = epochs if epochs is not None else s.epochs
    name, options = split_name(s.weight_optimizer)
    optimizer = build_optimizer(name, distill.parameters(), **options)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=max(1, epochs), eta_min=s.lr_min
    )
    sampler = PathSampler(
        student.specs, run.opset.name, run.opset.zero, None,
        stream_seed(run.config.seed, f"dna block {i} paths"),
    )  # fmt: skip
    if progress.block_state is not None:
        load_optimizer_state(optimizer, progress.block_state["optimizer"])
        scheduler.load_state_dict(progress.block_state["scheduler"])
        sampler.load_state_dict(progress.block_state["sampler"])
    loss_fn = FEATURE_LOSSES[loss]
    while progress.epoch < epochs:
        started = time.perf_counter()
        distill.train()
        seed = stream_seed(run.config.seed, f"dna block {i} epoch {progress.epoch}")
        reseed_data_transforms(run, seed)
        batches = run.loader(run.weight_set, s.batch_size, True, seed)
        total, steps = 0.0, 0
        bar = tqdm(batches, desc=f"block {i + 1}/{len(student.blocks)} epoch "
                   f"{progress.epoch + 1}/{epochs}", disable=run.quiet, leave=False)  # fmt: skip
        for step, batch in enumerate(bar):
            if s.max_steps_per_epoch is not None and step >= s.max_steps_per_epoch:
                break
            inputs, target = block_targets(stages, student.blocks, i, run.inputs(batch)[0])
            weights = genotype_weights(sampler.draw(), student.specs, run.dtype, run.device)
            optimizer.zero_grad(set_to_none=True)
            step_loss = loss_fn(distill(inputs, weights), target)
            step_loss.backward()
            if s.grad_clip:
                nn.utils.clip_grad_norm_(list(distill.parameters()), s.grad_clip)
            optimizer.step()
            total += float(step_loss.detach())
            steps += 1
            bar.set_postfix(loss=f"{total / steps:.4f}")
        record = {
            "type": "block_epoch",
            "block": i,
            "epoch": progress.epoch,
            "lr": optimizer.param_groups[0]["lr"],
            f"train_{loss}": total / max(steps, 1),
            "seconds": time.perf_counter() - started,
        }
        scheduler.step()
        run.log(record)
        progress.history.append(record)
        progress.epoch += 1
        progress.block_state = {
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "sampler": sampler.state_dict(),
        }
        checkpoint()
    progress.epoch = 0
    progress.block_state = None
