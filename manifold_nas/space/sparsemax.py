"""Closed-form sparsemax: the Euclidean projection onto the probability simplex.

.. math:: \\operatorname{sparsemax}(z) = \\arg\\min_{p \\in \\Delta} \\lVert p - z \\rVert^2
          = \\max(z - \\tau(z), 0)

with the threshold :math:`\\tau` found by sorting (Martins & Astudillo, 2016).
The backward is the closed-form Jacobian :math:`\\operatorname{diag}(s) -
s s^\\top / |S|` on the support :math:`S`.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["sparsemax"]


class _Sparsemax(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z: Tensor, dim: int) -> Tensor:
        z = z.transpose(dim, -1)
        z_sorted, _ = torch.sort(z, dim=-1, descending=True)
        k = torch.arange(1, z.shape[-1] + 1, device=z.device, dtype=z.dtype)
        cumsum = z_sorted.cumsum(dim=-1)
        support = 1 + k * z_sorted > cumsum
        k_z = support.sum(dim=-1, keepdim=True)
        tau = (cumsum.gather(-1, k_z - 1) - 1) / k_z.to(z.dtype)
        p = torch.clamp(z - tau, min=0).transpose(dim, -1)
        ctx.dim = dim
        ctx.save_for_backward(p)
        return p

    @staticmethod
    def backward(ctx, grad: Tensor):
        (p,) = ctx.saved_tensors
        dim = ctx.dim
        active = (p > 0).to(grad.dtype)
        mean = (grad * active).sum(dim=dim, keepdim=True) / active.sum(dim=dim, keepdim=True)
        return active * (grad - mean), None


def sparsemax(z: Tensor, dim: int = -1) -> Tensor:
    """Project each slice of ``z`` along ``dim`` onto the probability simplex."""
    return _Sparsemax.apply(z, dim)
