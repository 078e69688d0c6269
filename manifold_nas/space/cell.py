"""The generic DARTS cell: a DAG of mixed edges, searchable or derived.

A cell has ``n_inputs`` input nodes (the outputs of earlier cells, already
preprocessed by the domain's macro network) and ``n_nodes`` intermediate
nodes. Every earlier node feeds every later intermediate node through an
edge. In a :class:`SearchCell` each edge is a :class:`MixedEdge` that runs
all candidate ops with non-zero weight and combines them with the op set's
``mix`` rule; in a :class:`DerivedCell` each kept edge runs one chosen op.
Nodes combine their incoming edges with the op set's ``aggregate`` rule and
the cell combines its intermediate nodes with ``combine``.

:class:`ArchSpec` describes one architecture parameter: which ops are its
columns, which ``(source, target)`` edge each row is, and how many incoming
edges per node selection keeps.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from manifold_nas.space.opset import OpSet, OpSpec

__all__ = [
    "ArchSpec",
    "ChosenEdge",
    "DerivedCell",
    "MixedEdge",
    "SearchCell",
    "cell_arch_spec",
    "cell_edge_specs",
    "channel_shuffle",
]


@dataclass(frozen=True)
class ArchSpec:
    """One architecture parameter of shape ``(len(edges), len(ops))``.

    ``edges[e] = (source, target)`` names the nodes edge ``e`` joins; nodes
    ``0 .. n_inputs - 1`` are the cell inputs. ``keep`` is the number of
    incoming edges per target node that selection keeps (0 keeps all).
    ``concat`` lists the nodes combined into the cell output.
    """

    ops: tuple[str, ...]
    edges: tuple[tuple[int, int], ...]
    n_inputs: int = 2
    keep: int = 2
    concat: tuple[int, ...] = ()

    @property
    def shape(self) -> tuple[int, int]:
        return (len(self.edges), len(self.ops))

    @property
    def targets(self) -> tuple[int, ...]:
        return tuple(sorted({t for _, t in self.edges}))


@dataclass(frozen=True)
class ChosenEdge:
    """An edge of a derived cell: ``op`` applied to node ``source``, feeding ``target``."""

    op: str
    source: int
    target: int


def cell_arch_spec(
    ops: Sequence[str], n_inputs: int = 2, n_nodes: int = 4, keep: int = 2
) -> ArchSpec:
    """The DARTS cell DAG: node ``i`` is fed by every node before it."""
    edges = tuple(
        (source, n_inputs + node) for node in range(n_nodes) for source in range(n_inputs + node)
    )
    concat = tuple(range(n_inputs, n_inputs + n_nodes))
    return ArchSpec(tuple(ops), edges, n_inputs=n_inputs, keep=keep, concat=concat)


def cell_edge_specs(
    spec: ArchSpec, channels: int, reduction: bool, stride: int | tuple[int, ...] = 2, options=None
) -> list[OpSpec]:
    """One :class:`OpSpec` per edge: edges leaving a reduction cell's inputs stride."""
    options = dict(options or {})
    return [
        OpSpec(channels, channels, stride if reduction and source < spec.n_inputs else 1, options)
        for source, _ in spec.edges
    ]


def channel_shuffle(x: Tensor, groups: int) -> Tensor:
    """Interleave ``groups`` channel groups (PC-DARTS)."""
    b, c = x.shape[:2]
    return x.view(b, groups, c // groups, *x.shape[2:]).transpose(1, 2).reshape(x.shape)


class MixedEdge(nn.Module):
    """All candidate ops of one edge, combined by the op set's mixing rule.

    With ``partial_channels = K > 1`` (PC-DARTS) only the first ``1/K`` of the
    channels go through the ops; the rest bypass them (max-pooled when the
    edge strides) and the two parts are recombined by a channel shuffle.
    """

    def __init__(self, opset: OpSet, ops: Sequence[str], spec: OpSpec, partial_channels: int = 1):
        super().__init__()
        self.mix = opset.mix
        self.partial_channels = partial_channels
        self.stride = spec.stride
        if partial_channels > 1:
            if not opset.supports_partial_channels:
                raise ValueError(f"op set {opset.name!r} does not support partial channels")
            if spec.c_in != spec.c_out or spec.c_in % partial_channels:
                raise ValueError(
                    f"partial_channels={partial_channels} needs equal channels divisible by it, "
                    f"got {spec.c_in}->{spec.c_out}"
                )
            c = spec.c_in // partial_channels
            spec = replace(spec, c_in=c, c_out=c)
        self.ops = nn.ModuleList(opset.build(name, spec) for name in ops)

    def forward(self, x: Tensor, weights: Tensor) -> Tensor | None:
        """Mix the ops whose weight is non-zero; ``None`` when every weight is zero."""
        active = torch.nonzero(weights.detach() != 0).flatten().tolist()
        if not active:
            return None
        if self.partial_channels == 1:
            return self.mix([self.ops[k](x) for k in active], weights[active])
        c = x.shape[1] // self.partial_channels
        head, tail = x[:, :c], x[:, c:]
        mixed = self.mix([self.ops[k](head) for k in active], weights[active])
        if mixed.shape[2:] != tail.shape[2:]:
            tail = _max_pool(tail, mixed.shape[2:])
        return channel_shuffle(torch.cat([mixed, tail], dim=1), self.partial_channels)


_ADAPTIVE_MAX_POOL = {1: F.adaptive_max_pool1d, 2: F.adaptive_max_pool2d, 3: F.adaptive_max_pool3d}


def _max_pool(x: Tensor, size: torch.Size) -> Tensor:
    return _ADAPTIVE_MAX_POOL[x.dim() - 2](x, tuple(size))


class SearchCell(nn.Module):
    """A cell whose edges are :class:`MixedEdge` s weighted by one arch-parameter row each."""

    def __init__(
        self,
        opset: OpSet,
        spec: ArchSpec,
        edge_specs: Sequence[OpSpec],
        cell_type: str,
        preprocess: Sequence[nn.Module] | None = None,
        partial_channels: int = 1,
    ) -> None:
        super().__init__()
        if len(edge_specs) != len(spec.edges):
            raise ValueError(f"{len(edge_specs)} edge specs for {len(spec.edges)} edges")
        self.spec = spec
        self.cell_type = cell_type
        self.aggregate = opset.aggregate
        self.combine = opset.combine
        self.preprocess = nn.ModuleList(preprocess or [nn.Identity() for _ in range(spec.n_inputs)])
        self.edges = nn.ModuleList(
            MixedEdge(opset, spec.ops, s, partial_channels) for s in edge_specs
        )

    def forward(self, inputs: Sequence[Tensor], weights: Tensor) -> Tensor:
        states = [pre(x) for pre, x in zip(self.preprocess, inputs)]
        by_target: dict[int, list[int]] = {}
        for e, (_, target) in enumerate(self.spec.edges):
            by_target.setdefault(target, []).append(e)
        for target in sorted(by_target):
            outs = []
            for e in by_target[target]:
                out = self.edges[e](states[self.spec.edges[e][0]], weights[e])
                if out is not None:
                    outs.append(out)
            if not outs:
                raise RuntimeError(f"node {target} of the {self.cell_type} cell has no active edge")
            states.append(self.aggregate(outs))
        return self.combine([states[i] for i in self.spec.concat])


class DerivedCell(nn.Module):
    """A discrete cell: only the chosen op of each kept edge is instantiated."""

    def __init__(
        self,
        opset: OpSet,
        spec: ArchSpec,
        edge_specs: Sequence[OpSpec],
        chosen: Sequence[ChosenEdge],
        cell_type: str,
        preprocess: Sequence[nn.Module] | None = None,
    ) -> None:
        super().__init__()
        self.spec = spec
        self.cell_type = cell_type
        self.aggregate = opset.aggregate
        self.combine = opset.combine
        self.preprocess = nn.ModuleList(preprocess or [nn.Identity() for _ in range(spec.n_inputs)])
        spec_of: Mapping[tuple[int, int], OpSpec] = dict(zip(spec.edges, edge_specs))
        self.chosen = tuple(chosen)
        for edge in self.chosen:
            if (edge.source, edge.target) not in spec_of:
                raise ValueError(
                    f"{cell_type} cell has no edge {edge.source}->{edge.target} in its search space"
                )
        self.ops = nn.ModuleList(
            opset.build(edge.op, spec_of[(edge.source, edge.target)]) for edge in self.chosen
        )

    def forward(self, inputs: Sequence[Tensor], weights: Tensor | None = None) -> Tensor:
        states = [pre(x) for pre, x in zip(self.preprocess, inputs)]
        for target in self.spec.targets:
            outs = [
                op(states[edge.source])
                for op, edge in zip(self.ops, self.chosen)
                if edge.target == target
            ]
            if not outs:
                raise RuntimeError(
                    f"node {target} of the derived {self.cell_type} cell has no edge"
                )
            states.append(self.aggregate(outs))
        return self.combine([states[i] for i in self.spec.concat])
