"""Segmentation task: Dice + cross-entropy loss, sliding-window Dice evaluation."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from einops import rearrange
from monai.inferers import sliding_window_inference
from monai.losses import DiceCELoss
from monai.metrics import DiceMetric, compute_dice
from torch import Tensor, nn
from torch.nn import functional as F

from manifold_nas.task import Task

__all__ = ["SegmentationTask"]


def _one_hot(labels: Tensor, num_classes: int) -> Tensor:
    """``(B, 1, *S)`` integer labels → ``(B, num_classes, *S)`` float one-hot."""
    one_hot = F.one_hot(labels[:, 0].long(), num_classes)  # (B, *S, K)
    return rearrange(one_hot, "b ... k -> b k ...").float()


class SegmentationTask(Task):
    """Voxel-wise segmentation into ``num_classes`` classes (index 0 = background).

    * ``loss``: ``DiceCELoss(to_onehot_y=True, softmax=True)`` on logits
      ``(B, K, *S)`` and labels ``(B, 1, *S)``.
    * ``batch_metrics``: mean foreground Dice of the argmax on a training patch.
    * ``evaluate``: each whole volume is segmented by Gaussian-weighted
      sliding-window inference with windows of ``roi_size``; Dice per
      foreground class (``DiceMetric(include_background=False,
      reduction="mean_batch")``) is reported as ``dice_<class name>`` and
      their mean as ``dice``.
    """

    primary_metric = "dice"

    def __init__(
        self,
        num_classes: int,
        roi_size: Sequence[int],
        sw_batch_size: int = 1,
        overlap: float = 0.25,
        class_names: Sequence[str] | None = None,
    ) -> None:
        self.num_classes = int(num_classes)
        self.roi_size = tuple(int(r) for r in roi_size)
        self.sw_batch_size = int(sw_batch_size)
        self.overlap = float(overlap)
        if class_names is None:
            class_names = [f"class{k}" for k in range(self.num_classes)]
        self.class_names = tuple(class_names)
        self._loss = DiceCELoss(to_onehot_y=True, softmax=True)

    def unpack(self, batch: Any) -> tuple[Tensor, Tensor]:
        """MONAI dictionary batches (``image``, ``label``) or ``(x, y)`` tuples."""
        if isinstance(batch, dict):
            return batch["image"], batch["label"]
        x, y = batch
        return x, y

    def loss(self, output: Tensor, target: Tensor) -> Tensor:
        return self._loss(output, target)

    def batch_metrics(self, output: Tensor, target: Tensor) -> dict[str, float]:
        prediction = _one_hot(output.detach().argmax(dim=1, keepdim=True), self.num_classes)
        dice = compute_dice(
            prediction,
            _one_hot(target, self.num_classes),
            include_background=False,
            ignore_empty=True,
        )
        return {"dice": float(torch.nanmean(dice).item())}

    def segment(self, model: Callable[[Tensor], Tensor] | nn.Module, image: Tensor) -> Tensor:
        """Sliding-window logits of one batch of whole volumes."""
        return sliding_window_inference(
            image, self.roi_size, self.sw_batch_size, model, overlap=self.overlap, mode="gaussian"
        )

    @torch.no_grad()
    def evaluate(
        self,
        model: Callable[[Tensor], Tensor] | nn.Module,
        batches: Iterable[Any],
        device: torch.device | str = "cpu",
    ) -> dict[str, Any]:
        metric = DiceMetric(include_background=False, reduction="mean_batch", ignore_empty=True)
        seen = 0
        for batch in batches:
            image, label = self.unpack(batch)
            logits = self.segment(model, image.to(device))
            prediction = _one_hot(logits.argmax(dim=1, keepdim=True), self.num_classes)
            metric(prediction.cpu(), _one_hot(label, self.num_classes).cpu())
            seen += 1
        if seen == 0:
            return {"dice": float("nan")}
        per_class = metric.aggregate().tolist()
        results: dict[str, Any] = {
            f"dice_{name}": float(value) for name, value in zip(self.class_names[1:], per_class)
        }
        finite = [v for v in per_class if v == v]
        results["dice"] = sum(finite) / len(finite) if finite else float("nan")
        return results
