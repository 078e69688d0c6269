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


def retract(param: Tensor, direction: Tensor, *, differentiable: bool = False) -> Tensor:
    r"""Move ``param`` along ``direction``: its manifold's retraction, else addition.

    The result is a plain tensor, whatever ``param`` is: detached, or with
    ``differentiable=True`` carrying a derivative in ``direction`` (for a
    meta-gradient through one step). Plain parameters move by addition (exact);
    for a manifold parameter the derivative is the retraction's differential
    at zero, the identity on tangent vectors (:math:`DR_w(0) = \mathrm{id}`):
    geoopt's retractions work in place and cannot be differentiated, and the
    difference is of second order in the (small) step.
    """
    manifold = getattr(param, "manifold", None)
    point = param.detach().as_subclass(Tensor)
    if manifold is None:
        moved = point + direction
    else:
        moved = manifold.retr(point, direction.detach()).as_subclass(Tensor)
        moved = moved + (direction - direction.detach())
    return moved if differentiable else moved.detach()
