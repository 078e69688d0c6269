"""The supernet: a domain network plus its architecture parameters.

The domain's searchable network declares its architecture parameters through
``network.arch_specs`` (name -> :class:`~manifold_nas.space.cell.ArchSpec`) and is
called as ``network(x, arch_weights)``. :class:`ArchitectureParameters` holds
one parameter per spec, created by the relaxation (so it may be a geoopt
``ManifoldParameter`` carrying its own geometry), and turns them into mixing
weights. :class:`Supernet` ties the two together and keeps the two parameter
groups apart for the bilevel optimisation.

Selection procedures such as DARTS-PT *project* edges: a projected row is
fixed to given weights (one-hot on the chosen op, or all zeros for a removed
edge) whatever the architecture parameter says. Projections are buffers, so
they are checkpointed with the model.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

import torch
from torch import Tensor, nn

from manifold_nas.space.cell import ArchSpec
from manifold_nas.space.relaxations import Relaxation, entropy

__all__ = ["ArchitectureParameters", "Supernet"]


class ArchitectureParameters(nn.Module):
    """One relaxed architecture parameter per :class:`ArchSpec`."""

    def __init__(
        self,
        specs: Mapping[str, ArchSpec],
        relaxation: Relaxation,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        self.specs = dict(specs)
        self.relaxation = relaxation
        self.alphas = nn.ParameterDict(
            {name: relaxation.init_param(spec.shape, dtype) for name, spec in self.specs.items()}
        )
        for name, spec in self.specs.items():
            self.register_buffer(
                f"projected_{name}", torch.zeros(len(spec.edges), dtype=torch.bool)
            )
            self.register_buffer(f"projection_{name}", torch.zeros(spec.shape, dtype=dtype))

    def weights(self, *, training: bool) -> dict[str, Tensor]:
        """Mixing weights per spec, sampled when the relaxation samples in training."""
        return {
            name: self._apply_projection(name, self.relaxation.weights(alpha, training=training))
            for name, alpha in self.alphas.items()
        }

    @torch.no_grad()
    def probabilities(self) -> dict[str, Tensor]:
        """Deterministic per-edge distributions, projections applied, detached."""
        return {
            name: self._apply_projection(name, self.relaxation.probabilities(alpha)).detach()
            for name, alpha in self.alphas.items()
        }

    def regularizer(self) -> Tensor:
        total = None
        for alpha in self.alphas.values():
            term = self.relaxation.regularizer(alpha)
            total = term if total is None else total + term
        return total

    def _apply_projection(self, name: str, weights: Tensor) -> Tensor:
        mask = getattr(self, f"projected_{name}")
        if not mask.any():
            return weights
        fixed = getattr(self, f"projection_{name}").to(weights.dtype)
        return torch.where(mask[:, None], fixed, weights)

    @torch.no_grad()
    def project(self, name: str, edge: int, op: int | None) -> None:
        """Fix row ``edge`` of ``name`` to one-hot ``op``, or remove the edge (``None``)."""
        row = getattr(self, f"projection_{name}")[edge]
        row.zero_()
        if op is not None:
            row[op] = 1.0
        getattr(self, f"projected_{name}")[edge] = True


class Supernet(nn.Module):
    """``network(x, arch.weights())`` with the two parameter groups kept apart."""

    def __init__(
        self,
        network: nn.Module,
        arch: ArchitectureParameters,
        penalty: Callable[[Mapping[str, Tensor]], Tensor] | None = None,
    ) -> None:
        super().__init__()
        self.network = network
        self.arch = arch
        self.penalty = penalty
        #: weight of the mean edge entropy in the architecture loss (0: off)
        self.entropy_weight = 0.0

    def regularizer(self) -> Tensor:
        """The relaxation's term, the optional cost penalty and the optional entropy term."""
        total = self.arch.regularizer()
        if self.penalty is None and not self.entropy_weight:
            return total
        probabilities = {
            name: self.arch.relaxation.probabilities(alpha)
            for name, alpha in self.arch.alphas.items()
        }
        if self.penalty is not None:
            total = total + self.penalty(probabilities)
        if self.entropy_weight:
            entropies = torch.cat([entropy(p) for p in probabilities.values()])
            total = total + self.entropy_weight * entropies.mean()
        return total

    @property
    def specs(self) -> dict[str, ArchSpec]:
        return self.arch.specs

    def forward(self, x: Tensor, arch_weights: Mapping[str, Tensor] | None = None) -> Tensor:
        if arch_weights is None:
            arch_weights = self.arch.weights(training=self.training)
        return self.network(x, arch_weights)

    def arch_parameters(self) -> Iterator[nn.Parameter]:
        return iter(self.arch.alphas.values())

    def weight_parameters(self) -> Iterator[nn.Parameter]:
        return self.network.parameters()

    def named_weight_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        return ((f"network.{n}", p) for n, p in self.network.named_parameters())

    def named_arch_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        return ((f"arch.alphas.{n}", p) for n, p in self.arch.alphas.items())
