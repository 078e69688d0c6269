r"""Block-wise feature distillation: feature losses, adapters, and a student block wired to a teacher.

**Losses** (:data:`FEATURE_LOSSES`) between a student block's prediction
:math:`\hat Y` and the teacher's stage output :math:`Y`, both of shape
``(B, C, *spatial)``:

* ``relative_l1``, DNA's search metric,
  :math:`\frac{\operatorname{mean}|\hat Y - Y|}{\operatorname{std}(Y)}`
  (the mean over every element; the unbiased standard deviation of every
  element of the batch's target), which puts stages of different scales on
  one footing, so block losses can be summed across stages;
* ``mse``, DNA's training loss, :math:`\operatorname{mean}(\hat Y - Y)^2`.

**Adapters** (:class:`FeatureAdapter`). A teacher stage and a student block
need not agree on channels or resolution. An adapter resizes with area
interpolation (adaptive average pooling: exact averaging when shrinking by
an integer factor, replication when growing) and then maps channels with a
1×1 convolution (a linear layer for features without spatial axes); either
part is left out when the shapes already agree, so matching shapes give the
identity. Both parts are linear and commute, so the order does not matter.
Input adapters map teacher features into the shapes the student block
expects; the output adapter maps the student's output into the teacher's
space, where the loss is taken (mapping the target into the student's space
instead would let a learned adapter shrink the target).

:class:`DistillationBlock` is one student block between its adapters:
``teacher inputs -> input adapters -> block(·, arch_weights) -> output
adapter``. The adapters are trained with the block and are not part of the
derived network. :func:`build_distillation_blocks` wires every block of a
student to a teacher's stages, with the adapters their shapes need, and
:func:`block_targets` is what block ``i`` learns from: the teacher features
at its input boundaries and the teacher feature ``t_{i+1}`` it reproduces.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from manifold_nas.cost.measure import preserved_buffers
from manifold_nas.errors import UserInputError
from manifold_nas.space.contracts import NetworkBlock
from manifold_nas.strategies.dna.teacher import TeacherStages
from manifold_nas.strategies.dna.units import StudentBlocks, candidate_weights

__all__ = [
    "FEATURE_LOSSES",
    "DistillationBlock",
    "FeatureAdapter",
    "adapter_parameters",
    "block_targets",
    "build_distillation_blocks",
    "mean_squared_error",
    "relative_l1",
]

#: keeps a constant target from dividing by zero in :func:`relative_l1`
_STD_FLOOR = 1e-12


def relative_l1(prediction: Tensor, target: Tensor) -> Tensor:
    r""":math:`\operatorname{mean}|\hat Y - Y| / \max(\operatorname{std}(Y), 10^{-12})`."""
    return (prediction - target).abs().mean() / target.std().clamp_min(_STD_FLOOR)


def mean_squared_error(prediction: Tensor, target: Tensor) -> Tensor:
    r""":math:`\operatorname{mean}(\hat Y - Y)^2`."""
    return F.mse_loss(prediction, target)


#: name -> ``loss(prediction, target)`` of block-wise distillation
FEATURE_LOSSES: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "relative_l1": relative_l1,
    "mse": mean_squared_error,
}


class FeatureAdapter(nn.Module):
    """Features of shape ``source`` ``(C, *spatial)`` into shape ``target``.

    Raises
    ------
    UserInputError
        When the two shapes have different numbers of spatial axes, or more
        than three.
    """

    def __init__(self, source: Sequence[int], target: Sequence[int]) -> None:
        super().__init__()
        self.source = tuple(int(s) for s in source)
        self.target = tuple(int(s) for s in target)
        dims = len(self.source) - 1
        if len(self.target) != len(self.source) or not 0 <= dims <= 3:
            raise UserInputError(
                f"cannot adapt features of shape {self.source} to {self.target}: "
                "they need the same number (at most 3) of spatial axes"
            )
        self.size = self.target[1:] if self.source[1:] != self.target[1:] else None
        c_in, c_out = self.source[0], self.target[0]
        if c_in == c_out:
            self.project = None
        elif dims == 0:
            self.project = nn.Linear(c_in, c_out)
        else:
            self.project = getattr(nn, f"Conv{dims}d")(c_in, c_out, kernel_size=1)

    @property
    def is_identity(self) -> bool:
        return self.size is None and self.project is None

    def forward(self, x: Tensor) -> Tensor:
        if self.size is not None:
            x = F.interpolate(x, size=self.size, mode="area")
        if self.project is not None:
            x = self.project(x)
        return x

    def describe(self) -> dict[str, Any]:
        """Shapes, what the adapter does, and its parameter count."""
        return {
            "from": list(self.source),
            "to": list(self.target),
            "resize": self.size is not None,
            "project": self.project is not None,
            "parameters": sum(p.numel() for p in self.parameters()),
        }


class DistillationBlock(nn.Module):
    """A student block between input adapters and an output adapter.

    ``forward(teacher_inputs, arch_weights)`` adapts the teacher features the
    block reads (``teacher_inputs[k]`` for ``block.inputs[k]``), runs the
    block with ``arch_weights`` and returns its output in the teacher's space.
    """

    def __init__(
        self, block: NetworkBlock, inputs: Sequence[FeatureAdapter], output: FeatureAdapter
    ) -> None:
        super().__init__()
        if len(inputs) != len(block.inputs):
            raise ValueError(f"block {block.name!r} reads {len(block.inputs)} inputs, got "
                             f"{len(inputs)} adapters")  # fmt: skip
        self.block = block
        self.adapters = nn.ModuleDict({"inputs": nn.ModuleList(inputs), "output": output})

    def forward(
        self, teacher_inputs: Sequence[Tensor], arch_weights: Mapping[str, Tensor] | None = None
    ) -> Tensor:
        adapted = [a(x) for a, x in zip(self.adapters["inputs"], teacher_inputs)]
        return self.adapters["output"](self.block(adapted, arch_weights))

    def describe(self) -> dict[str, Any]:
        """The adapters of the block, for the summary."""
        return {
            "block": self.block.name,
            "inputs": [a.describe() for a in self.adapters["inputs"]],
            "output": self.adapters["output"].describe(),
        }


def adapter_parameters(blocks: Sequence[DistillationBlock]) -> int:
    """Parameters of every adapter (search scaffolding, not part of the derived network)."""
    return sum(p.numel() for b in blocks for p in b.adapters.parameters())


# -- a student wired to a teacher ---------------------------------------------------------
def block_targets(
    stages: TeacherStages, blocks: Sequence[NetworkBlock], i: int, x: Tensor
) -> tuple[tuple[Tensor, ...], Tensor]:
    """The teacher features block ``i`` reads on input ``x``, and its target ``t_{i+1}``."""
    features = stages.features(x)
    return tuple(features[j] for j in blocks[i].inputs), features[i + 1]


@torch.no_grad()
def build_distillation_blocks(
    stages: TeacherStages,
    student: StudentBlocks,
    probe: Tensor,
    dtype: torch.dtype,
    device: torch.device,
) -> list[DistillationBlock]:
    """Every student block between the adapters its teacher features need (shapes on ``probe``).

    The student's feature shapes are those of its first candidates, in eval
    mode with its batch-norm statistics left as they were.

    Raises
    ------
    UserInputError
        When the teacher has not one stage per student block.
    """
    blocks = student.blocks
    teacher = [tuple(t.shape[1:]) for t in stages.features(probe)]
    if len(teacher) != len(blocks) + 1:
        raise UserInputError(
            f"the teacher has {len(teacher) - 1} stages ({', '.join(stages.describe())}) "
            f"but the student has {len(blocks)} blocks "
            f"({', '.join(b.name for b in blocks)}); set strategy.teacher.stages to "
            f"{len(blocks) + 1} boundary names"
        )
    weights = candidate_weights(student.first_candidates, student.specs, dtype, device)
    network = student.network
    with preserved_buffers(network):
        network.eval()
        shapes = [tuple(t.shape[1:]) for t in network.block_features(probe, weights)]
        network.train()
    distill = []
    for i, block in enumerate(blocks):
        inputs = [FeatureAdapter(teacher[j], shapes[j]) for j in block.inputs]
        output = FeatureAdapter(shapes[i + 1], teacher[i + 1])
        wired = DistillationBlock(block, inputs, output)
        wired.adapters.to(device=device, dtype=dtype)
        distill.append(wired)
    return distill
