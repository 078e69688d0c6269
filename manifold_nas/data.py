"""Datasets: registered builders that return a :class:`DataBundle`.

A dataset builder is a function of keyword options (the ``data:`` section of a
config, less ``name``) that returns train and test sets plus what the network
needs to know about them. The search splits ``train`` into a weight half and
an architecture half; retraining uses all of ``train`` and reports on
``test``. Builders never download: they read what is on disk or bundled in an
installed package, and raise :class:`~manifold_nas.errors.UserInputError`
naming the missing path otherwise.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from torch import nn
from torch.utils.data import Dataset

from manifold_nas.registry import Registry
from manifold_nas.task import ClassificationTask, Task

__all__ = ["DATASETS", "DataBundle", "Predictor"]


class Predictor(Protocol):
    """Apply a trained network to input files and write the outputs; returns the written paths."""

    def __call__(self, network: nn.Module, inputs: list[Path], output: Path) -> list[Path]: ...


@dataclass
class DataBundle:
    """Train and test data plus the facts a network is built from.

    ``sample_shape`` is the shape of one input without the batch dimension,
    e.g. ``(1, 8, 8)`` for digits, ``(1, 12, 12)`` for one-channel SPD data.
    ``collate_fn`` is handed to every ``DataLoader`` (MONAI's
    ``list_data_collate`` for patch-sampling transforms); ``eval_batch_size``
    overrides the batch size of evaluation loaders (1 for whole volumes).
    ``predictor`` applies a trained network to the user's own files
    (``manifold-nas predict``); data sets without one do not support it.
    ``baseline`` fits the classical method a practitioner of the field uses
    before any network (tangent space + logistic regression for SPD data) on
    ``train`` and returns its ``test`` metrics (the task's metric names) plus
    ``"name"``; ``manifold-nas demo`` prints it next to the searched network.
    """

    name: str
    train: Dataset
    test: Dataset
    num_classes: int
    sample_shape: tuple[int, ...]
    task: Task = field(default_factory=ClassificationTask)
    info: dict[str, Any] = field(default_factory=dict)
    collate_fn: Callable[[list[Any]], Any] | None = None
    eval_batch_size: int | None = None
    predictor: Predictor | None = None
    baseline: Callable[[DataBundle], Mapping[str, Any]] | None = None


DatasetBuilder = Callable[..., DataBundle]

DATASETS: Registry[DatasetBuilder] = Registry("datasets", entry_point_group="manifold_nas.datasets")
