"""Tasks: the loss and the metrics a search and a retraining optimise.

The search loop only calls :meth:`Task.loss` and :meth:`Task.evaluate`, so
classification (vision, SPD) and segmentation (volumetric) share one loop.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from manifold_nas.errors import UserInputError

__all__ = ["ClassificationTask", "Task"]


class Task:
    """Interface: a differentiable loss and a dictionary of evaluation metrics."""

    #: the metric that model selection and summaries report first
    primary_metric = "accuracy"

    def unpack(self, batch: Any) -> tuple[Tensor, Tensor]:
        """Split a loader batch into (input, target); tuples by default."""
        x, y = batch
        return x, y

    def loss(self, output: Tensor, target: Tensor) -> Tensor:
        raise NotImplementedError

    def training_loss(self, output: Tensor, target: Tensor, label_smoothing: float = 0.0) -> Tensor:
        """The loss weights are trained on; only classification supports label smoothing."""
        if label_smoothing:
            raise UserInputError(
                f"train.label_smoothing applies to classification, not to {type(self).__name__}"
            )
        return self.loss(output, target)

    def batch_metrics(self, output: Tensor, target: Tensor) -> dict[str, float]:
        """Metrics of one training batch, for progress bars and metrics.jsonl."""
        raise NotImplementedError

    @torch.no_grad()
    def evaluate(
        self,
        model: Callable[[Tensor], Tensor] | nn.Module,
        batches: Iterable[Any],
        device: torch.device | str = "cpu",
    ) -> dict[str, Any]:
        raise NotImplementedError


class ClassificationTask(Task):
    """Cross-entropy loss, accuracy and mean loss."""

    primary_metric = "accuracy"

    def loss(self, output: Tensor, target: Tensor) -> Tensor:
        return F.cross_entropy(output, target)

    def training_loss(self, output: Tensor, target: Tensor, label_smoothing: float = 0.0) -> Tensor:
        return F.cross_entropy(output, target, label_smoothing=label_smoothing)

    def batch_metrics(self, output: Tensor, target: Tensor) -> dict[str, float]:
        return {"accuracy": (output.argmax(dim=-1) == target).float().mean().item()}

    @torch.no_grad()
    def evaluate(self, model, batches, device="cpu") -> dict[str, Any]:
        correct, total, loss_sum = 0, 0, 0.0
        for batch in batches:
            x, y = self.unpack(batch)
            x, y = x.to(device), y.to(device)
            out = model(x)
            loss_sum += F.cross_entropy(out, y, reduction="sum").item()
            correct += (out.argmax(dim=-1) == y).sum().item()
            total += y.numel()
        if total == 0:
            return {"accuracy": float("nan"), "loss": float("nan")}
        return {"accuracy": correct / total, "loss": loss_sum / total}
