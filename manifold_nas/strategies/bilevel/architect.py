"""The architect: one architecture step of the bilevel search.

First order (DARTS-1st) takes the gradient of the validation loss with
respect to the architecture parameters at the current weights. Second order
(DARTS-2nd) differentiates through one virtual weight step

.. math::
    w' = R_w\\big(-\\xi\\, \\operatorname{grad}_w \\mathcal L_{train}(w, \\alpha)\\big),

approximating the mixed second derivative by central differences:

.. math::
    \\nabla_\\alpha \\mathcal L_{val}(w', \\alpha) - \\xi\\,
    \\frac{\\nabla_\\alpha \\mathcal L_{train}(w^+, \\alpha) -
          \\nabla_\\alpha \\mathcal L_{train}(w^-, \\alpha)}{2\\epsilon},
    \\quad w^\\pm = R_w(\\pm\\epsilon\\, \\operatorname{grad}_{w} \\mathcal L_{val}(w', \\alpha)),

with :math:`\\epsilon = 0.01 / \\lVert \\nabla_{w'} \\mathcal L_{val} \\rVert`.
:math:`R_w` is each parameter's retraction (geoopt manifold parameters) and
plain addition otherwise; ``grad`` is the matching Riemannian gradient. All
virtual weights are evaluated with :func:`torch.func.functional_call`, so the
model is never cloned and its buffers are never touched.

The architecture optimizer is injected: any ``torch.optim.Optimizer`` over
the architecture parameters (Adam on logits, exponentiated gradient,
geoopt's Riemannian optimizers).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.func import functional_call

from manifold_nas.optim.geometry import retract, riemannian_gradient
from manifold_nas.space.supernet import Supernet

__all__ = [
    "Architect",
]

LossFn = Callable[[Tensor, Any], Tensor]


class Architect:
    """Architecture steps for a :class:`Supernet`.

    Parameters
    ----------
    supernet:
        The supernet; its ``arch`` parameters are what ``optimizer`` steps.
    loss_fn:
        ``loss_fn(output, target) -> scalar``.
    optimizer:
        A torch optimizer over ``supernet.arch_parameters()``.
    order:
        ``"first"`` or ``"second"``.
    weight_optimizer:
        The weight optimizer, read (never stepped) for the virtual step's
        learning rate, momentum buffers and weight decay.
    reduce:
        Averages a list of gradients over data-parallel processes (identity
        in one process). Architecture gradients, and the weight gradients of
        the second-order virtual step, are formed with ``torch.autograd.grad``
        where ``DistributedDataParallel`` does not see them, so they are
        averaged here and every process takes the same architecture step.
    """

    def __init__(
        self,
        supernet: Supernet,
        loss_fn: LossFn,
        optimizer: torch.optim.Optimizer,
        order: str = "first",
        weight_optimizer: torch.optim.Optimizer | None = None,
        reduce: Callable[[list[Tensor]], list[Tensor]] | None = None,
    ) -> None:
        if order not in ("first", "second"):
            raise ValueError(f"order must be 'first' or 'second', got {order!r}")
        if order == "second" and weight_optimizer is None:
            raise ValueError("second-order search needs the weight optimizer")
        self.supernet = supernet
        self.loss_fn = loss_fn
        self.optimizer = optimizer
        self.order = order
        self.weight_optimizer = weight_optimizer
        self.reduce = reduce or (lambda tensors: tensors)

    # -- losses -----------------------------------------------------------
    def _loss(self, params: dict[str, Tensor], x: Tensor, y: Any) -> Tensor:
        buffers = {n: b.clone() for n, b in self.supernet.named_buffers()}
        out = functional_call(self.supernet, {**params, **buffers}, (x,), strict=False)
        return self.loss_fn(out, y)

    def _arch_loss(self, params: dict[str, Tensor], x: Tensor, y: Any) -> Tensor:
        return self._loss(params, x, y) + self.supernet.regularizer()

    # -- gradients ----------------------------------------------------------
    def arch_gradient(self, train_batch: tuple[Tensor, Any], val_batch: tuple[Tensor, Any]):
        """The architecture gradient (list matching ``arch_parameters()``) and the val loss."""
        arch = dict(self.supernet.named_arch_parameters())
        weights = dict(self.supernet.named_weight_parameters())
        x_val, y_val = val_batch
        if self.order == "first":
            loss = self._arch_loss({**weights, **arch}, x_val, y_val)
            grads = torch.autograd.grad(loss, list(arch.values()), allow_unused=True)
            return self.reduce(_fill(grads, arch.values())), loss.detach()
        return self._second_order_gradient(arch, weights, train_batch, val_batch)

    def _virtual_step(self, weights: dict[str, Tensor], train_batch, arch) -> dict[str, Tensor]:
        x_tr, y_tr = train_batch
        leaves = {
            n: w.detach().as_subclass(Tensor).requires_grad_(True) for n, w in weights.items()
        }
        loss = self._loss({**leaves, **{n: a.detach() for n, a in arch.items()}}, x_tr, y_tr)
        grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
        grads = self.reduce(_fill(grads, leaves.values()))
        lr, momentum, decay = self._weight_hyperparameters()
        state = self.weight_optimizer.state
        stepped = {}
        for (name, w), g in zip(weights.items(), grads):
            is_manifold = getattr(w, "manifold", None) is not None
            if decay and not is_manifold:
                g = g + decay * w.detach()
            buf = state.get(w, {}).get("momentum_buffer") if momentum else None
            if buf is not None and not is_manifold:
                g = g + momentum * buf
            stepped[name] = retract(w, -lr * riemannian_gradient(w, g))
        return stepped

    def _second_order_gradient(self, arch, weights, train_batch, val_batch):
        x_val, y_val = val_batch
        x_tr, y_tr = train_batch
        lr = self._weight_hyperparameters()[0]
        virtual = {
            n: w.requires_grad_(True)
            for n, w in self._virtual_step(weights, train_batch, arch).items()
        }
        val_loss = self._arch_loss({**virtual, **arch}, x_val, y_val)
        grads = torch.autograd.grad(
            val_loss, list(arch.values()) + list(virtual.values()), allow_unused=True
        )
        grads = self.reduce(_fill(grads, [*arch.values(), *virtual.values()]))
        d_arch, d_weights = grads[: len(arch)], grads[len(arch) :]
        norm = torch.sqrt(sum((g.double() ** 2).sum() for g in d_weights))
        if float(norm) == 0.0:
            return d_arch, val_loss.detach()
        eps = 0.01 / norm.item()
        mixed = []
        for sign in (1.0, -1.0):
            perturbed = {
                n: retract(w, sign * eps * riemannian_gradient(w, d))
                for (n, w), d in zip(weights.items(), d_weights)
            }
            loss = self._loss({**perturbed, **arch}, x_tr, y_tr)
            mixed.append(
                self.reduce(
                    _fill(
                        torch.autograd.grad(loss, list(arch.values()), allow_unused=True),
                        arch.values(),
                    )
                )
            )
        hessian_term = [(gp - gm) / (2 * eps) for gp, gm in zip(*mixed)]
        return [da - lr * h for da, h in zip(d_arch, hessian_term)], val_loss.detach()

    def _weight_hyperparameters(self) -> tuple[float, float, float]:
        group = self.weight_optimizer.param_groups[0]
        momentum = group.get("momentum", 0.0) or 0.0
        return float(group["lr"]), float(momentum), float(group.get("weight_decay", 0.0) or 0.0)

    # -- the step -----------------------------------------------------------
    def step(self, train_batch, val_batch) -> dict[str, float]:
        """Set the architecture gradients and step the injected optimizer."""
        grads, loss = self.arch_gradient(train_batch, val_batch)
        for p, g in zip(self.supernet.arch_parameters(), grads):
            p.grad = g.detach()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return {"arch_loss": float(loss)}


def _fill(grads, params) -> list[Tensor]:
    return [torch.zeros_like(p) if g is None else g for g, p in zip(grads, params)]
