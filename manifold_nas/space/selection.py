"""Selectors: from a trained supernet to the chosen edges of each cell.

* :func:`topk_argmax` is the DARTS rule: per node keep the ``keep`` incoming
  edges whose strongest non-zero op is strongest, then take that op.
* :class:`PerturbationSelector` is DARTS-PT (Wang et al., 2021): operations
  are chosen by how much the supernet's validation metric drops when they
  are removed, then edges are pruned by how little removing them hurts, with
  fine-tuning of the supernet between projections.

A selector is called with a :class:`SelectionContext`, which offers the
probabilities, the supernet, and the runner's ``evaluate`` and ``finetune``
callbacks, so selection never needs to know the domain.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from torch import Tensor

from manifold_nas.registry import Registry
from manifold_nas.space.cell import ArchSpec, ChosenEdge
from manifold_nas.space.supernet import Supernet

__all__ = [
    "SELECTORS",
    "PerturbationSelector",
    "SelectionContext",
    "TopKArgmaxSelector",
    "topk_argmax",
]

SELECTORS: Registry[type] = Registry("selectors", entry_point_group="manifold_nas.selectors")

Choice = dict[str, tuple[ChosenEdge, ...]]


@dataclass
class SelectionContext:
    """What a selector may use.

    ``evaluate(arch_weights)`` returns the validation score of the supernet
    run with the given weights (higher is better); ``finetune(epochs)``
    continues the search for that many epochs with the current projections.
    """

    supernet: Supernet
    zero: str | None
    evaluate: Callable[[Mapping[str, Tensor]], float]
    finetune: Callable[[int], None]


def _strongest_op(row: Tensor, ops: tuple[str, ...], zero: str | None) -> tuple[int, float]:
    best, best_value = -1, float("-inf")
    for k, name in enumerate(ops):
        if name != zero and float(row[k]) > best_value:
            best, best_value = k, float(row[k])
    return best, best_value


def topk_argmax(
    probabilities: Mapping[str, Tensor], specs: Mapping[str, ArchSpec], zero: str | None
) -> Choice:
    """The DARTS rule: top-``keep`` edges per node by strongest non-zero op, then argmax."""
    chosen: Choice = {}
    for name, spec in specs.items():
        probs = probabilities[name]
        edges: list[ChosenEdge] = []
        for target in spec.targets:
            incoming = [e for e, (_, t) in enumerate(spec.edges) if t == target]
            ranked = sorted(
                incoming, key=lambda e: _strongest_op(probs[e], spec.ops, zero)[1], reverse=True
            )
            kept = ranked if spec.keep <= 0 else ranked[: spec.keep]
            for e in sorted(kept):
                k, _ = _strongest_op(probs[e], spec.ops, zero)
                edges.append(ChosenEdge(spec.ops[k], spec.edges[e][0], target))
        chosen[name] = tuple(edges)
    return chosen


@SELECTORS.register("darts")
class TopKArgmaxSelector:
    """DARTS selection from the architecture probabilities."""

    def __call__(self, context: SelectionContext) -> Choice:
        return topk_argmax(
            context.supernet.arch.probabilities(), context.supernet.specs, context.zero
        )


@SELECTORS.register("perturbation")
class PerturbationSelector:
    """DARTS-PT: operation projection, then topology projection.

    Parameters
    ----------
    finetune_epochs:
        Epochs of supernet fine-tuning after each projection (``proj_intv``).
    seed:
        Seed of the random order in which edges and nodes are projected.
    """

    def __init__(self, finetune_epochs: int = 1, seed: int = 0) -> None:
        if finetune_epochs < 0:
            raise ValueError(f"finetune_epochs must be >= 0, got {finetune_epochs}")
        self.finetune_epochs = finetune_epochs
        self.seed = seed

    def __call__(self, context: SelectionContext) -> Choice:
        arch = context.supernet.arch
        rng = random.Random(self.seed)
        order = [(name, e) for name, spec in arch.specs.items() for e in range(len(spec.edges))]
        rng.shuffle(order)
        for name, edge in order:
            arch.project(name, edge, self._op_projection(context, name, edge))
            if self.finetune_epochs:
                context.finetune(self.finetune_epochs)
        nodes = [(name, t) for name, spec in arch.specs.items() for t in spec.targets]
        rng.shuffle(nodes)
        for name, target in nodes:
            if self._topology_projection(context, name, target) and self.finetune_epochs:
                context.finetune(self.finetune_epochs)
        return self._chosen(context)

    @staticmethod
    def _op_projection(context: SelectionContext, name: str, edge: int) -> int:
        arch = context.supernet.arch
        spec = arch.specs[name]
        base = arch.weights(training=False)
        scores = {}
        for k, op in enumerate(spec.ops):
            if op == context.zero:
                continue
            weights = {n: w.detach().clone() for n, w in base.items()}
            weights[name][edge, k] = 0.0
            if not weights[name][edge].any():
                # Removing the only remaining op disconnects the edge: the
                # largest possible drop, so this op is the one to keep.
                return k
            scores[k] = context.evaluate(weights)
        return min(scores, key=scores.get)

    @staticmethod
    def _topology_projection(context: SelectionContext, name: str, target: int) -> bool:
        arch = context.supernet.arch
        spec = arch.specs[name]
        if spec.keep <= 0:
            return False
        alive = [
            e
            for e, (_, t) in enumerate(spec.edges)
            if t == target and bool(arch.probabilities()[name][e].any())
        ]
        removed_any = False
        while len(alive) > spec.keep:
            base = arch.weights(training=False)
            scores = {}
            for e in alive:
                weights = {n: w.detach().clone() for n, w in base.items()}
                weights[name][e] = 0.0
                scores[e] = context.evaluate(weights)
            worst = max(scores, key=scores.get)
            arch.project(name, worst, None)
            alive.remove(worst)
            removed_any = True
        return removed_any

    @staticmethod
    def _chosen(context: SelectionContext) -> Choice:
        arch = context.supernet.arch
        probs = arch.probabilities()
        chosen: Choice = {}
        for name, spec in arch.specs.items():
            edges = []
            for e, (source, target) in enumerate(spec.edges):
                row = probs[name][e]
                if row.any():
                    edges.append(ChosenEdge(spec.ops[int(row.argmax())], source, target))
            chosen[name] = tuple(edges)
        return chosen
