"""Passes over the data in block-wise distillation, each one reproducible on its own.

The ``dna`` strategy goes over the data many times: once per teacher epoch,
once per block epoch, once per block to rank it, and once for the final
metrics. A resumed run must see in each pass exactly what the uninterrupted
run saw, whatever ran before it in the process. Loader order is seeded per
pass by the caller; the randomised transforms of volumetric data (MONAI's
patch crops) draw from a stream of their own, which no checkpoint holds, and
:func:`reseed_data_transforms` resets that stream before a pass.

:func:`probe_input` is the one training example every feature shape and
every per-example cost of the search is measured on.
"""

from __future__ import annotations

from torch import Tensor
from torch.utils.data import Subset

from manifold_nas.run.context import Run

__all__ = ["probe_input", "reseed_data_transforms"]


def reseed_data_transforms(run: Run, seed: int) -> None:
    """Reset the random stream of the training data's transforms, if it has one, to ``seed``."""
    dataset = run.bundle.train
    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    set_random_state = getattr(getattr(dataset, "transform", None), "set_random_state", None)
    if callable(set_random_state):
        set_random_state(seed=seed % (2**32))


def probe_input(run: Run) -> Tensor:
    """One training example (a batch of one): every shape and per-example cost is measured on it."""
    x, _ = run.inputs(next(iter(run.loader(run.weight_set, 1, False))))
    return x[:1]
