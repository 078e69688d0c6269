"""Collapse diagnostics of a search (logged per epoch).

* the entropy of each edge's probabilities: DARTS collapse shows as edges
  saturating (entropy -> 0) on parameter-free ops;
* the number of parameter-free ops (skip, pooling, none) in the current
  argmax cell;
* the dominant eigenvalue of the Hessian of the validation loss with respect
  to the architecture (R-DARTS' early-stop signal), by power iteration with
  Hessian-vector products.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor

from manifold_nas.space.cell import ArchSpec
from manifold_nas.space.relaxations import entropy
from manifold_nas.space.selection import topk_argmax

__all__ = [
    "decision",
    "dominant_hessian_eigenvalue",
    "edge_entropies",
    "parameter_free_count",
]

#: above this mean entropy (as a fraction of its maximum) the argmax reads a near-uniform
#: distribution and a search is reported as undecided
UNDECIDED_ENTROPY_RATIO = 0.9


def edge_entropies(probabilities: Mapping[str, Tensor]) -> dict[str, list[float]]:
    """Per cell type, the entropy (nats) of every edge's distribution."""
    return {name: entropy(p).tolist() for name, p in probabilities.items()}


def decision(probabilities: Mapping[str, Tensor]) -> dict[str, float]:
    """How decided the architecture distribution is.

    ``entropy_ratio``: mean over edges of the entropy divided by its maximum
    ``ln K`` (1 = uniform, 0 = one-hot); ``top2_margin``: mean over edges of
    the gap between the two most probable ops (0 = a tie).
    """
    ratios, margins = [], []
    for p in probabilities.values():
        k = p.shape[-1]
        if k < 2:
            continue
        ratios.append(entropy(p) / math.log(k))
        top = p.topk(2, dim=-1).values
        margins.append(top[..., 0] - top[..., 1])
    if not ratios:
        return {"entropy_ratio": 0.0, "top2_margin": 1.0}
    return {
        "entropy_ratio": float(torch.cat(ratios).mean()),
        "top2_margin": float(torch.cat(margins).mean()),
    }


def parameter_free_count(
    probabilities: Mapping[str, Tensor],
    specs: Mapping[str, ArchSpec],
    zero: str | None,
    parameter_free: frozenset[str],
) -> int:
    """How many edges of the current argmax cells use a parameter-free op."""
    chosen = topk_argmax(probabilities, specs, zero)
    return sum(edge.op in parameter_free for edges in chosen.values() for edge in edges)


def dominant_hessian_eigenvalue(
    loss_fn: Callable[[], Tensor], params: Sequence[Tensor], iterations: int = 20, tol: float = 1e-4
) -> float:
    """Largest-magnitude eigenvalue of the Hessian of ``loss_fn()`` in ``params``.

    Power iteration :math:`v \\leftarrow Hv / \\lVert Hv \\rVert` with
    Hessian-vector products by double backward; returns the Rayleigh
    quotient :math:`v^\\top H v`.
    """
    params = list(params)
    loss = loss_fn()
    grads = torch.autograd.grad(loss, params, create_graph=True)
    generator = torch.Generator().manual_seed(0)
    v = [torch.randn(p.shape, generator=generator, dtype=p.dtype) for p in params]
    norm = torch.sqrt(sum((x**2).sum() for x in v))
    v = [x / norm for x in v]
    eigenvalue = 0.0
    for _ in range(iterations):
        hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)
        new = float(sum((a * b).sum() for a, b in zip(hv, v)))
        norm = torch.sqrt(sum((x**2).sum() for x in hv))
        if float(norm) == 0.0:
            return 0.0
        v = [x / norm for x in hv]
        if abs(new - eigenvalue) <= tol * max(abs(new), 1e-12):
            return new
        eigenvalue = new
    return eigenvalue
