"""Vision macro networks: the DARTS CNN and the NAS-Bench-201 network.

Both are built on the core's generic cells: with ``genotype=None`` every cell
is a :class:`~manifold_nas.space.cell.SearchCell` (the supernet), otherwise a
:class:`~manifold_nas.space.cell.DerivedCell` holding only the chosen ops.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import Tensor, nn

from manifold_nas.data import DataBundle
from manifold_nas.domains.vision.ops import FactorizedReduce, ReLUConvBN
from manifold_nas.space.cell import (
    ArchSpec,
    DerivedCell,
    SearchCell,
    cell_arch_spec,
    cell_edge_specs,
)
from manifold_nas.space.contracts import NetworkBlock
from manifold_nas.space.genotype import Genotype
from manifold_nas.space.networks import NETWORKS, network_example
from manifold_nas.space.opset import OpSet

__all__ = ["DartsCellBlock", "DartsNetwork", "NB201Network", "SimpleCNN", "reduction_positions"]


def reduction_positions(layers: int) -> tuple[int, ...]:
    """DARTS places reduction cells at 1/3 and 2/3 of the depth."""
    if layers < 3:
        return tuple(range(layers))[-1:]
    return (layers // 3, 2 * layers // 3)


def _cell(
    opset: OpSet,
    spec: ArchSpec,
    cell_type: str,
    channels: int,
    reduction: bool,
    preprocess: list[nn.Module],
    genotype: Genotype | None,
    partial_channels: int = 1,
) -> nn.Module:
    edge_specs = cell_edge_specs(
        spec, channels, reduction, stride=2, options={"affine": genotype is not None}
    )
    if genotype is None:
        return SearchCell(opset, spec, edge_specs, cell_type, preprocess, partial_channels)
    return DerivedCell(opset, spec, edge_specs, genotype.cells[cell_type], cell_type, preprocess)


class DartsCellBlock(NetworkBlock):
    """Cell ``k`` of a :class:`DartsNetwork` as a block (block-wise search, DNA).

    It reads boundary features ``k - 1`` and ``k`` (the outputs of cells
    ``k - 2`` and ``k - 1``; the stem's output twice for the first cell) and
    owns every row of its cell type, which all cells of that type share.
    """

    def __init__(self, index: int, cell: nn.Module) -> None:
        super().__init__(
            f"cell {index} ({cell.cell_type})",
            (max(index - 1, 0), index),
            {cell.cell_type: range(len(cell.spec.edges))},
        )
        self.cell = cell

    def forward(
        self, inputs: Sequence[Tensor], arch_weights: Mapping[str, Tensor] | None = None
    ) -> Tensor:
        w = None if arch_weights is None else arch_weights[self.cell.cell_type]
        return self.cell(tuple(inputs), w)


class DartsNetwork(nn.Module):
    """Stem, ``layers`` cells (reductions at 1/3 and 2/3 of depth), pooling head.

    Cell ``k`` reads the outputs of cells ``k-2`` and ``k-1``, preprocessed to
    ``C`` channels (a factorized reduction when cell ``k-1`` reduced).

    Block-wise (:class:`~manifold_nas.space.contracts.BlockwiseNetwork`): one block
    per cell; the boundary features are the stem's output and every cell's.
    """

    def __init__(
        self,
        opset: OpSet,
        in_channels: int,
        num_classes: int,
        genotype: Genotype | None = None,
        channels: int = 16,
        layers: int = 8,
        nodes: int = 4,
        stem_multiplier: int = 3,
        partial_channels: int = 1,
    ) -> None:
        super().__init__()
        spec = cell_arch_spec(opset.op_names, n_inputs=2, n_nodes=nodes, keep=2)
        self.arch_specs = {"normal": spec, "reduce": spec}
        c_stem = stem_multiplier * channels
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, c_stem, 3, padding=1, bias=False), nn.BatchNorm2d(c_stem)
        )
        c_pp, c_p, c = c_stem, c_stem, channels
        reductions = reduction_positions(layers)
        self.cells = nn.ModuleList()
        reduction_prev = False
        for i in range(layers):
            reduction = i in reductions
            if reduction:
                c *= 2
            affine = genotype is not None
            pre0 = (
                FactorizedReduce(c_pp, c, affine)
                if reduction_prev
                else ReLUConvBN(c_pp, c, 1, 1, affine)
            )
            pre1 = ReLUConvBN(c_p, c, 1, 1, affine)
            cell_type = "reduce" if reduction else "normal"
            self.cells.append(
                _cell(
                    opset, spec, cell_type, c, reduction, [pre0, pre1], genotype, partial_channels
                )
            )
            reduction_prev = reduction
            c_pp, c_p = c_p, len(spec.concat) * c
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_p, num_classes)
        )

    def forward(self, x: Tensor, arch_weights: Mapping[str, Tensor] | None = None) -> Tensor:
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            w = None if arch_weights is None else arch_weights[cell.cell_type]
            s0, s1 = s1, cell((s0, s1), w)
        return self.head(s1)

    def blocks(self) -> list[DartsCellBlock]:
        """One block per cell, over this network's cells (no copies)."""
        return [DartsCellBlock(k, cell) for k, cell in enumerate(self.cells)]

    def block_features(
        self, x: Tensor, arch_weights: Mapping[str, Tensor] | None = None
    ) -> list[Tensor]:
        """The stem's output, then every cell's: ``forward == head(block_features[-1])``."""
        features = [self.stem(x)]
        for block in self.blocks():
            features.append(block([features[i] for i in block.inputs], arch_weights))
        return features


class ResidualReduction(nn.Module):
    """The NAS-Bench-201 residual block between stages: stride 2, channels x2."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv_a = ReLUConvBN(c_in, c_out, 3, 2)
        self.conv_b = ReLUConvBN(c_out, c_out, 3, 1)
        self.shortcut = nn.Sequential(
            nn.AvgPool2d(2, 2, ceil_mode=True), nn.Conv2d(c_in, c_out, 1, bias=False)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.shortcut(x) + self.conv_b(self.conv_a(x))


class NB201Network(nn.Module):
    """The NAS-Bench-201 skeleton: 3 stages of ``cells_per_stage`` identical cells.

    The cell has one input node and three intermediate nodes, each fed by all
    earlier nodes (6 edges); its output is the last node. All cells share one
    architecture parameter, ``"cell"``, and selection keeps every edge.
    """

    def __init__(
        self,
        opset: OpSet,
        in_channels: int,
        num_classes: int,
        genotype: Genotype | None = None,
        channels: int = 16,
        cells_per_stage: int = 5,
    ) -> None:
        super().__init__()
        base = cell_arch_spec(opset.op_names, n_inputs=1, n_nodes=3, keep=0)
        spec = ArchSpec(base.ops, base.edges, n_inputs=1, keep=0, concat=(base.concat[-1],))
        self.arch_specs = {"cell": spec}
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels)
        )
        blocks: list[nn.Module] = []
        c = channels
        for stage in range(3):
            if stage > 0:
                blocks.append(ResidualReduction(c, 2 * c))
                c *= 2
            for _ in range(cells_per_stage):
                blocks.append(_cell(opset, spec, "cell", c, False, [], genotype))
        self.blocks = nn.ModuleList(blocks)
        self.head = nn.Sequential(
            nn.BatchNorm2d(c),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(c, num_classes),
        )

    def forward(self, x: Tensor, arch_weights: Mapping[str, Tensor] | None = None) -> Tensor:
        x = self.stem(x)
        for block in self.blocks:
            if isinstance(block, (SearchCell, DerivedCell)):
                x = block((x,), None if arch_weights is None else arch_weights["cell"])
            else:
                x = block(x)
        return self.head(x)


@NETWORKS.register("darts_cnn")
@network_example(
    {"name": "digits"}, opset="darts", channels=4, layers=3, nodes=2, stem_multiplier=1
)
def build_darts_network(
    opset: OpSet,
    data: DataBundle,
    genotype: Genotype | None = None,
    channels: int = 16,
    layers: int = 8,
    nodes: int = 4,
    stem_multiplier: int = 3,
    partial_channels: int = 1,
) -> DartsNetwork:
    """The DARTS CIFAR network, sized by ``channels`` and ``layers``."""
    return DartsNetwork(
        opset,
        data.sample_shape[0],
        data.num_classes,
        genotype,
        channels,
        layers,
        nodes,
        stem_multiplier,
        partial_channels,
    )


@NETWORKS.register("nb201")
@network_example({"name": "digits"}, opset="nb201", channels=4, cells_per_stage=1)
def build_nb201_network(
    opset: OpSet,
    data: DataBundle,
    genotype: Genotype | None = None,
    channels: int = 16,
    cells_per_stage: int = 5,
) -> NB201Network:
    """The NAS-Bench-201 network (16 channels, 5 cells per stage in the benchmark)."""
    return NB201Network(
        opset, data.sample_shape[0], data.num_classes, genotype, channels, cells_per_stage
    )


class SimpleCNN(nn.Module):
    """A hand-designed baseline: conv-BN-ReLU blocks, two stride-2 stages, pooling head."""

    def __init__(
        self, in_channels: int, num_classes: int, channels: int = 16, depth: int = 2
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in, c = in_channels, channels
        for stage in range(3):
            for block in range(depth):
                stride = 2 if stage > 0 and block == 0 else 1
                layers += [
                    nn.Conv2d(c_in, c, 3, stride, 1, bias=False),
                    nn.BatchNorm2d(c),
                    nn.ReLU(),
                ]
                c_in = c
            c *= 2
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, num_classes)
        )
        self.arch_specs: dict[str, ArchSpec] = {}

    def forward(self, x: Tensor, arch_weights: Mapping[str, Tensor] | None = None) -> Tensor:
        return self.head(self.features(x))


@NETWORKS.register("simple_cnn")
@network_example({"name": "digits"}, opset="darts", channels=4, depth=1)
def build_simple_cnn(
    opset: OpSet,
    data: DataBundle,
    genotype: Genotype | None = None,
    channels: int = 16,
    depth: int = 2,
) -> SimpleCNN:
    """A hand-designed CNN baseline (no search space; the op set is ignored)."""
    return SimpleCNN(data.sample_shape[0], data.num_classes, channels, depth)
