"""V-NAS-style searchable residual encoder–decoder for volumetric segmentation.

Layout (``L = levels``, ``C_l = channels[l]``, ``s_l = strides[l]``)::

    stem: 1×1×1 conv in_channels→C_0 + norm + act
    encoder level l:  cells_per_level residual cells at C_l, then (l < L-1)
                      a strided conv with kernel = stride = s_l, C_l→C_{l+1}
    decoder level l (L-2 … 0): upsample ×s_l to C_l (transposed conv, or
                      trilinear + 1×1×1 conv), merge the encoder skip
                      (concat + 1×1×1 conv, or add), cells_per_level cells
    head: 1×1×1 conv C_0→num_classes

Every searchable cell is residual, ``y = x + mixed(x)``, where ``mixed`` is the
op set's mix (the DARTS weighted sum) of the candidate ops that have a non-zero
weight; ops with weight exactly 0 are not run. The fixed parts (stem, down/up
sampling, skip merge, head) have no receptive field beyond their stride, so
all in-plane/through-plane context comes from the searched cells and the
all-2D baseline really is 2D apart from strided through-plane sampling.

One architecture parameter row per cell, in order: encoder cells level 0 →
L-1, then decoder cells level L-2 → 0.

Block-wise view (:class:`~manifold_nas.space.contracts.BlockwiseNetwork`, used by
DNA): one block per encoder level (the downsampling into the level, then its
cells), then one per decoder level (upsample, skip merge, cells). The
boundary features are the stem's output, each encoder level's output (its
skip feature) and each decoder level's output; a decoder block reads the
previous block's output and its encoder level's skip feature.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from monai.networks.layers.factories import Conv
from monai.networks.layers.utils import get_act_layer, get_norm_layer
from torch import Tensor, nn

from manifold_nas.data import DataBundle
from manifold_nas.domains.volumetric.ops import (
    DEFAULT_ACT,
    DEFAULT_NORM,
    SPATIAL_DIMS,
    VOLUMETRIC_OPSET,
    op_cost,
    per_axis_stride,
)
from manifold_nas.errors import UserInputError
from manifold_nas.space.cell import ArchSpec, ChosenEdge
from manifold_nas.space.contracts import NetworkBlock
from manifold_nas.space.genotype import Genotype
from manifold_nas.space.networks import NETWORKS, network_example
from manifold_nas.space.opset import OpSet, OpSpec

__all__ = [
    "ARCH_KEY",
    "VNAS_OPS",
    "DecoderLevelBlock",
    "EncoderLevelBlock",
    "ResidualCell",
    "VolumetricNet",
    "baseline_choices",
    "build_vnas_network",
    "choices_from_genotype",
    "genotype_from_choices",
    "total_stride",
]

#: the single architecture parameter of :class:`VolumetricNet`
ARCH_KEY = "cells"
#: the V-NAS candidate set: per layer 2D, 3D or pseudo-3D
VNAS_OPS: tuple[str, ...] = ("conv2d", "conv3d", "p3d")


def total_stride(strides: Sequence[int | Sequence[int]]) -> tuple[int, int, int]:
    """Per-axis product of the downsampling strides."""
    return tuple(
        math.prod(per_axis_stride(s)[axis] for s in strides) for axis in range(SPATIAL_DIMS)
    )


class ResidualCell(nn.Module):
    """``x + mix(op_k(x))`` over the candidate ops; a derived cell holds one op.

    The ops live in a ``ModuleDict`` keyed by op name, so a derived network's
    parameter names match the supernet's (weights can be inherited).
    """

    def __init__(self, opset: OpSet, ops: Sequence[str], spec: OpSpec) -> None:
        super().__init__()
        self.op_names = tuple(ops)
        self.mix = opset.mix
        self.ops = nn.ModuleDict({name: opset.build(name, spec) for name in self.op_names})

    def forward(self, x: Tensor, weights: Tensor | None = None) -> Tensor:
        if weights is None:
            if len(self.op_names) != 1:
                raise ValueError("a searchable cell needs a row of architecture weights")
            return x + self.ops[self.op_names[0]](x)
        active = [i for i, w in enumerate(weights.detach().tolist()) if w != 0.0]
        if not active:
            return x
        outputs = [self.ops[self.op_names[i]](x) for i in active]
        return x + self.mix(outputs, weights[active])


def _run_cells(
    cells: nn.ModuleList, rows: Sequence[int], h: Tensor, arch_weights: Mapping[str, Tensor] | None
) -> Tensor:
    for cell, row in zip(cells, rows):
        h = cell(h, None if arch_weights is None else arch_weights[ARCH_KEY][row])
    return h


class EncoderLevelBlock(NetworkBlock):
    """Encoder level ``l`` as a block: the downsampling into it (``l > 0``), then its cells.

    Reads boundary feature ``l`` (the previous level's output, the stem's for
    ``l = 0``); its output is the level's skip feature.
    """

    def __init__(
        self, level: int, down: nn.Module | None, cells: Sequence[nn.Module], rows: Sequence[int]
    ) -> None:
        super().__init__(f"encoder level {level}", (level,), {ARCH_KEY: rows})
        self.down = down
        self.cells = nn.ModuleList(cells)

    def forward(
        self, inputs: Sequence[Tensor], arch_weights: Mapping[str, Tensor] | None = None
    ) -> Tensor:
        h = inputs[0] if self.down is None else self.down(inputs[0])
        return _run_cells(self.cells, self.rows[ARCH_KEY], h, arch_weights)


class DecoderLevelBlock(NetworkBlock):
    """Decoder level ``l`` as a block: upsample, merge the encoder skip, then its cells.

    Reads the previous block's output and the skip feature of encoder level
    ``l`` (boundary feature ``l + 1``).
    """

    def __init__(
        self,
        level: int,
        inputs: tuple[int, int],
        up: nn.Module,
        merge: nn.Module,
        skip_mode: str,
        cells: Sequence[nn.Module],
        rows: Sequence[int],
    ) -> None:
        super().__init__(f"decoder level {level}", inputs, {ARCH_KEY: rows})
        self.up = up
        self.merge = merge
        self.skip_mode = skip_mode
        self.cells = nn.ModuleList(cells)

    def forward(
        self, inputs: Sequence[Tensor], arch_weights: Mapping[str, Tensor] | None = None
    ) -> Tensor:
        h, skip = self.up(inputs[0]), inputs[1]
        if self.skip_mode == "concat":
            h = self.merge(torch.cat([h, skip], dim=1))
        else:
            h = h + skip
        return _run_cells(self.cells, self.rows[ARCH_KEY], h, arch_weights)


def _norm_act(channels: int, norm: Any, act: Any) -> list[nn.Module]:
    return [get_norm_layer(norm, spatial_dims=SPATIAL_DIMS, channels=channels), get_act_layer(act)]


def _pointwise(c_in: int, c_out: int, bias: bool = False) -> nn.Module:
    return Conv[Conv.CONV, SPATIAL_DIMS](c_in, c_out, kernel_size=1, bias=bias)


class VolumetricNet(nn.Module):
    """Searchable (``choices=None``) or derived residual encoder–decoder.

    Parameters
    ----------
    in_channels, num_classes:
        Image channels and segmentation classes (background included).
    channels:
        Width per resolution level; ``levels = len(channels)``.
    strides:
        ``levels - 1`` downsampling strides, each an int or a per-axis tuple
        (e.g. ``[(2, 2, 1), 2]`` keeps thick slices for the first level).
    ops:
        Candidate op names (columns of the architecture parameter).
    choices:
        One op name per cell: builds the discrete network holding only those
        ops; ``forward(x)`` then needs no architecture weights.
    patch_size:
        When given, checked to be divisible by the total stride and used by
        the memory cost (voxels per cell).
    cells_per_level, upsample ("deconv" | "trilinear"), skip ("concat" | "add"),
    through_plane_axis, norm, act:
        Macro-architecture and op settings.
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 2,
        channels: Sequence[int] = (8, 16, 32),
        strides: Sequence[int | Sequence[int]] | None = None,
        ops: Sequence[str] = VNAS_OPS,
        choices: Sequence[str] | None = None,
        patch_size: Sequence[int] | None = None,
        cells_per_level: int = 1,
        upsample: str = "deconv",
        skip: str = "concat",
        through_plane_axis: int = 2,
        norm: str | tuple = DEFAULT_NORM,
        act: str | tuple = DEFAULT_ACT,
        opset: OpSet = VOLUMETRIC_OPSET,
    ) -> None:
        super().__init__()
        channels = tuple(int(c) for c in channels)
        levels = len(channels)
        if levels < 2:
            raise UserInputError(f"channels must list at least 2 levels, got {channels}")
        if strides is None:
            strides = [2] * (levels - 1)
        strides = [per_axis_stride(s) for s in strides]
        if len(strides) != levels - 1:
            raise UserInputError(
                f"strides needs {levels - 1} entries for {levels} levels, got {len(strides)}"
            )
        if upsample not in ("deconv", "trilinear"):
            raise UserInputError(f"upsample must be 'deconv' or 'trilinear', got {upsample!r}")
        if skip not in ("concat", "add"):
            raise UserInputError(f"skip must be 'concat' or 'add', got {skip!r}")
        unknown = [name for name in ops if name not in opset.ops]
        if unknown:
            raise UserInputError(f"unknown {opset.name} ops {unknown}; known: {opset.op_names}")
        self.opset = opset
        self.op_names = tuple(ops)
        self.channels = channels
        self.strides = strides
        self.total_stride = total_stride(strides)
        self.skip_mode = skip
        self.patch_size = None if patch_size is None else tuple(int(p) for p in patch_size)
        if self.patch_size is not None:
            self.check_patch_size(self.patch_size)
        self.op_options = {"through_plane_axis": through_plane_axis, "norm": norm, "act": act}

        # (level, channels) of every cell in arch-row order
        self.cell_levels = [lvl for lvl in range(levels) for _ in range(cells_per_level)]
        self.cell_levels += [
            lvl for lvl in reversed(range(levels - 1)) for _ in range(cells_per_level)
        ]
        if choices is not None:
            choices = tuple(choices)
            if len(choices) != len(self.cell_levels):
                raise UserInputError(
                    f"choices needs one op per cell ({len(self.cell_levels)}), got {len(choices)}"
                )
            bad = [c for c in choices if c not in self.op_names]
            if bad:
                raise UserInputError(f"choices {bad} are not candidate ops {self.op_names}")
        self.choices = choices
        self.cells = nn.ModuleList(
            ResidualCell(
                opset, self.op_names if choices is None else (choices[i],), self.cell_spec(i)
            )
            for i in range(len(self.cell_levels))
        )

        self.stem = nn.Sequential(
            _pointwise(in_channels, channels[0]), *_norm_act(channels[0], norm, act)
        )
        self.down = nn.ModuleList(
            nn.Sequential(
                Conv[Conv.CONV, SPATIAL_DIMS](channels[lvl], channels[lvl + 1], kernel_size=s, stride=s, bias=False),
                *_norm_act(channels[lvl + 1], norm, act),
            )
            for lvl, s in enumerate(strides)
        )  # fmt: skip
        self.up = nn.ModuleList()
        self.merge = nn.ModuleList()
        for lvl, s in enumerate(strides):
            if upsample == "deconv":
                resize = Conv[Conv.CONVTRANS, SPATIAL_DIMS](
                    channels[lvl + 1], channels[lvl], kernel_size=s, stride=s, bias=False
                )
                self.up.append(nn.Sequential(resize, *_norm_act(channels[lvl], norm, act)))
            else:
                self.up.append(
                    nn.Sequential(
                        nn.Upsample(scale_factor=tuple(float(f) for f in s), mode="trilinear"),
                        _pointwise(channels[lvl + 1], channels[lvl]),
                        *_norm_act(channels[lvl], norm, act),
                    )
                )
            if skip == "concat":
                self.merge.append(
                    nn.Sequential(_pointwise(2 * channels[lvl], channels[lvl]), *_norm_act(channels[lvl], norm, act))
                )  # fmt: skip
            else:
                self.merge.append(nn.Identity())
        self.head = _pointwise(channels[0], num_classes, bias=True)
        self.cells_per_level = cells_per_level
        self.levels = levels

    # ------------------------------------------------------------------ search contract
    @property
    def n_cells(self) -> int:
        return len(self.cell_levels)

    @property
    def arch_specs(self) -> dict[str, ArchSpec]:
        """One row per cell; each row is its own single-edge node (``keep=1``).

        Empty for a derived network (``choices`` given): it has nothing to search.
        """
        if self.choices is not None:
            return {}
        edges = tuple((0, i + 1) for i in range(self.n_cells))
        return {ARCH_KEY: ArchSpec(ops=self.op_names, edges=edges, n_inputs=1, keep=1)}

    def candidate_ops(self) -> Iterator[tuple[str, int, int, str, nn.Module]]:
        """Every candidate op as ``(spec, row, column, op name, module)`` for the cost model."""
        for i, cell in enumerate(self.cells):
            for name in cell.op_names:
                yield ARCH_KEY, i, self.op_names.index(name), name, cell.ops[name]

    def cell_spec(self, index: int) -> OpSpec:
        c = self.channels[self.cell_levels[index]]
        return OpSpec(c, c, 1, dict(self.op_options))

    def check_patch_size(self, patch_size: Sequence[int]) -> None:
        """Raise :class:`UserInputError` unless every axis is divisible by the total stride."""
        if len(patch_size) != SPATIAL_DIMS or any(
            p % s for p, s in zip(patch_size, self.total_stride)
        ):
            raise UserInputError(
                f"patch size {tuple(patch_size)} is not divisible by the network's total stride "
                f"{self.total_stride}"
            )

    def forward(self, x: Tensor, arch_weights: Mapping[str, Tensor] | None = None) -> Tensor:
        if self.choices is None and arch_weights is None:
            raise ValueError("the searchable VolumetricNet needs arch_weights; derive() it first")
        rows = None if arch_weights is None else arch_weights[ARCH_KEY]
        if any(n % s for n, s in zip(x.shape[2:], self.total_stride)):
            raise ValueError(
                f"input size {tuple(x.shape[2:])} is not divisible by the total stride "
                f"{self.total_stride}"
            )
        cell_index = 0

        def run_cells(h: Tensor) -> Tensor:
            nonlocal cell_index
            for _ in range(self.cells_per_level):
                row = None if rows is None else rows[cell_index]
                h = self.cells[cell_index](h, row)
                cell_index += 1
            return h

        h = self.stem(x)
        skips = []
        for lvl in range(self.levels):
            h = run_cells(h)
            if lvl < self.levels - 1:
                skips.append(h)
                h = self.down[lvl](h)
        for lvl in reversed(range(self.levels - 1)):
            h = self.up[lvl](h)
            if self.skip_mode == "concat":
                h = self.merge[lvl](torch.cat([h, skips[lvl]], dim=1))
            else:
                h = h + skips[lvl]
            h = run_cells(h)
        return self.head(h)

    # ------------------------------------------------------------------ block-wise view
    def blocks(self) -> list[EncoderLevelBlock | DecoderLevelBlock]:
        """Encoder levels 0 … L-1, then decoder levels L-2 … 0, over this network's modules."""
        per_level = self.cells_per_level
        blocks: list[EncoderLevelBlock | DecoderLevelBlock] = []
        for lvl in range(self.levels):
            rows = range(lvl * per_level, (lvl + 1) * per_level)
            down = self.down[lvl - 1] if lvl > 0 else None
            blocks.append(EncoderLevelBlock(lvl, down, [self.cells[r] for r in rows], rows))
        for k, lvl in enumerate(reversed(range(self.levels - 1))):
            start = (self.levels + k) * per_level
            rows = range(start, start + per_level)
            cells = [self.cells[r] for r in rows]
            inputs = (self.levels + k, lvl + 1)
            blocks.append(
                DecoderLevelBlock(
                    lvl, inputs, self.up[lvl], self.merge[lvl], self.skip_mode, cells, rows
                )
            )
        return blocks

    def block_features(
        self, x: Tensor, arch_weights: Mapping[str, Tensor] | None = None
    ) -> list[Tensor]:
        """The stem's output, then every block's: ``forward == head(block_features[-1])``."""
        if self.choices is None and arch_weights is None:
            raise ValueError("the searchable VolumetricNet needs arch_weights; derive() it first")
        if any(n % s for n, s in zip(x.shape[2:], self.total_stride)):
            raise ValueError(
                f"input size {tuple(x.shape[2:])} is not divisible by the total stride "
                f"{self.total_stride}"
            )
        features = [self.stem(x)]
        for block in self.blocks():
            features.append(block([features[i] for i in block.inputs], arch_weights))
        return features

    # ------------------------------------------------------------------ derivation
    def derive(self, choices: Sequence[str]) -> VolumetricNet:
        """The discrete network with op ``choices[i]`` in cell ``i`` (fresh weights)."""
        return VolumetricNet(**{**self._config(), "choices": tuple(choices)})

    def _config(self) -> dict[str, Any]:
        return {
            "in_channels": self.stem[0].in_channels,
            "num_classes": self.head.out_channels,
            "channels": self.channels,
            "strides": self.strides,
            "ops": self.op_names,
            "patch_size": self.patch_size,
            "cells_per_level": self.cells_per_level,
            "upsample": "deconv" if isinstance(self.up[0][0], nn.ConvTranspose3d) else "trilinear",
            "skip": self.skip_mode,
            "through_plane_axis": self.op_options["through_plane_axis"],
            "norm": self.op_options["norm"],
            "act": self.op_options["act"],
            "opset": self.opset,
        }

    # ------------------------------------------------------------------ cost
    def cost_table(self, kind: str = "memory") -> Tensor:
        """``(n_cells, n_ops)`` cost of every candidate op in every cell.

        ``kind="params"``: parameter counts. ``kind="memory"``: activation
        values (per sample) = :func:`op_cost` memory per voxel × the cell's
        voxel count, which needs ``patch_size``.
        """
        if kind not in ("params", "memory"):
            raise ValueError(f"cost kind must be 'params' or 'memory', got {kind!r}")
        if kind == "memory" and self.patch_size is None:
            raise ValueError("the memory cost needs the network built with a patch_size")
        table = torch.zeros(self.n_cells, len(self.op_names), dtype=torch.float64)
        for i, lvl in enumerate(self.cell_levels):
            spec = self.cell_spec(i)
            for j, name in enumerate(self.op_names):
                cost = op_cost(name, spec)
                if kind == "params":
                    table[i, j] = cost.params
                else:
                    scale = total_stride(self.strides[:lvl])
                    voxels = math.prod(p // s for p, s in zip(self.patch_size, scale))
                    table[i, j] = cost.memory * voxels
        return table

    def expected_cost(self, arch_weights: Mapping[str, Tensor], kind: str = "memory") -> Tensor:
        """Differentiable Σ_cells Σ_ops w·cost for weights ``arch_weights[ARCH_KEY]``."""
        weights = arch_weights[ARCH_KEY]
        return (weights * self.cost_table(kind).to(weights)).sum()

    def derived_cost(self, choices: Sequence[str] | None = None, kind: str = "memory") -> float:
        """Cost of the discrete network with ``choices`` (default: this derived net's own)."""
        if choices is None:
            if self.choices is None:
                raise ValueError("a searchable VolumetricNet needs explicit choices to cost")
            choices = self.choices
        table = self.cost_table(kind)
        return float(sum(table[i, self.op_names.index(c)] for i, c in enumerate(choices)))

    def cost_penalty(
        self,
        arch_weights: Mapping[str, Tensor],
        budget: float,
        weight: float = 1.0,
        kind: str = "memory",
        relative: bool = False,
        two_sided: bool = False,
    ) -> Tensor:
        """``weight · relu(expected_cost / budget − 1)``: zero within budget, linear above.

        ``relative``: ``budget`` is a fraction of the largest network's cost
        (every cell at its most expensive op), so one setting fits every
        input size. ``two_sided``: ``weight · |expected_cost / budget − 1|``
        holds the cost *at* the budget, as DiNTS's RAM term
        ``|ram_cost_factor − usage / usage_full|`` does, so the search cannot
        drift to the cheapest ops just because they train fastest.
        """
        if relative:
            budget = budget * float(self.cost_table(kind).max(dim=1).values.sum())
        excess = self.expected_cost(arch_weights, kind) / budget - 1.0
        return weight * (excess.abs() if two_sided else F.relu(excess))


def baseline_choices(network: VolumetricNet, op: str) -> list[str]:
    """All cells fixed to ``op`` (the all-2D / all-3D / all-P3D baselines)."""
    return [op] * network.n_cells


def choices_from_genotype(genotype: Genotype) -> list[str]:
    """The op of every cell, in cell order, from a genotype's ``"cells"`` edges."""
    if ARCH_KEY not in genotype.cells:
        raise UserInputError(f"genotype has no {ARCH_KEY!r} cell type; it is not a V-NAS genotype")
    return [edge.op for edge in sorted(genotype.cells[ARCH_KEY], key=lambda e: e.target)]


def genotype_from_choices(choices: Sequence[str], ops: Sequence[str] = VNAS_OPS) -> Genotype:
    """A genotype with op ``choices[i]`` in cell ``i`` (edge ``(0, i + 1)``)."""
    edges = tuple(ChosenEdge(op, 0, i + 1) for i, op in enumerate(choices))
    return Genotype(
        opset=VOLUMETRIC_OPSET.name, cells={ARCH_KEY: edges}, ops={ARCH_KEY: tuple(ops)}
    )


@NETWORKS.register("vnas")
@network_example(
    {"name": "synthetic_shapes", "n_train": 2, "n_test": 1, "shape": [16, 16, 8],
     "patch_size": [16, 16, 8]},
    opset="volumetric",
    channels=[4, 8],
    strides=[[2, 2, 1]],
)  # fmt: skip
def build_vnas_network(
    opset: OpSet,
    data: DataBundle,
    genotype: Genotype | None = None,
    channels: Sequence[int] = (8, 16, 32),
    strides: Sequence[int | Sequence[int]] | None = None,
    ops: Sequence[str] = VNAS_OPS,
    cells_per_level: int = 1,
    upsample: str = "deconv",
    skip: str = "concat",
    through_plane_axis: int | None = None,
    fixed_op: str | None = None,
    act: str = DEFAULT_ACT,
) -> VolumetricNet:
    """V-NAS encoder-decoder sized from the data bundle.

    ``sample_shape = (in_channels, *patch_size)`` gives the input channels and
    the patch checked against the total stride; ``through_plane_axis``
    defaults to the data's thick-slice axis (``data.info``). With a genotype
    the derived network is built; ``fixed_op`` (e.g. ``"conv2d"``) builds the
    all-``fixed_op`` baseline instead of a searchable network. ``act`` names
    the activation of every op and fixed layer (a MONAI ``Act`` name such as
    ``"prelu"``, which MONAI's UNet uses and which cannot leave a channel dead).
    """
    if through_plane_axis is None:
        through_plane_axis = int(data.info.get("through_plane_axis", 2))
    network = VolumetricNet(
        in_channels=data.sample_shape[0],
        num_classes=data.num_classes,
        channels=channels,
        strides=strides,
        ops=ops,
        patch_size=data.sample_shape[1:],
        cells_per_level=cells_per_level,
        upsample=upsample,
        skip=skip,
        through_plane_axis=through_plane_axis,
        act=act,
        opset=opset,
    )
    if fixed_op is not None:
        # ``manifold-nas train`` passes an empty genotype for a fixed network
        if genotype is not None and genotype.cells:
            raise UserInputError("give either a genotype or network.fixed_op, not both")
        if fixed_op not in network.op_names:
            raise UserInputError(f"fixed_op {fixed_op!r} is not among the ops {network.op_names}")
        return network.derive(baseline_choices(network, fixed_op))
    if genotype is not None:
        return network.derive(choices_from_genotype(genotype))
    return network
