"""Geometry of architecture weights on the probability simplex.

The Riemannian gradient and the retraction that every architecture step uses,
whatever the strategy (bilevel DARTS, Cream's meta-step).
"""

from __future__ import annotations

from torch import Tensor

__all__ = [
    "retract",
    "riemannian_gradient",
]


def riemannian_gradient(param: Tensor, egrad: Tensor) -> Tensor:
    """The gradient in the parameter's own geometry (Euclidean if it has none)."""
    manifold = getattr(param, "manifold", None)
    point = param.detach()
    return egrad if manifold is None else manifold.egrad2rgrad(point, egrad)


def retract(param: Tensor, direction: Tensor) -> Tensor:
    """Move ``param`` along ``direction``: its manifold's retraction, else addition.

    The result is a plain detached tensor, whatever ``param`` is.
    """
    manifold = getattr(param, "manifold", None)
    point = param.detach().as_subclass(Tensor)
    moved = point + direction if manifold is None else manifold.retr(point, direction)
    return moved.detach().as_subclass(Tensor)
