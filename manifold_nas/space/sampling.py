"""Discrete architectures of a search space: drawing them and feeding them to a supernet.

* :func:`random_genotype`: a uniformly random derived architecture, with
  ``keep`` incoming edges per node (all when ``keep`` is 0) and one non-zero
  op per kept edge, as DARTS' selection would produce;
* :func:`genotype_weights`: the one-hot mixing weights that make a supernet
  compute exactly a genotype's path (removed edges get all-zero rows), which
  one-shot strategies use to score a path with inherited weights.
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping

import numpy as np
import torch
from torch import Tensor

from manifold_nas.errors import UserInputError
from manifold_nas.space.cell import ArchSpec, ChosenEdge
from manifold_nas.space.genotype import Genotype

__all__ = ["genotype_key", "genotype_weights", "random_genotype"]


def random_genotype(
    specs: Mapping[str, ArchSpec],
    opset: str,
    zero: str | None = None,
    rng: random.Random | np.random.Generator | int | None = None,
) -> Genotype:
    """A uniformly random genotype of ``specs``.

    Each node keeps ``keep`` incoming edges drawn without replacement (all when
    ``keep`` is 0), each with an op drawn uniformly from ``spec.ops`` without
    the ``zero`` op; edges are listed by (target, source). ``rng`` is a
    :class:`random.Random` (drawn from directly), or a numpy generator or a
    seed, from which one integer seeds a :class:`random.Random` for the draw.
    """
    if not isinstance(rng, random.Random):
        generator = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        rng = random.Random(int(generator.integers(2**63)))
    cells = {}
    for name, spec in specs.items():
        ops = [op for op in spec.ops if op != zero]
        if not ops:
            raise ValueError(f"{name} cell has no op besides the zero op")
        edges: list[ChosenEdge] = []
        for target in spec.targets:
            sources = [s for s, t in spec.edges if t == target]
            kept = sources if spec.keep <= 0 else rng.sample(sources, min(spec.keep, len(sources)))
            edges += [ChosenEdge(rng.choice(ops), s, target) for s in sorted(kept)]
        cells[name] = tuple(edges)
    return Genotype(opset, cells, ops={name: spec.ops for name, spec in specs.items()})


def genotype_weights(
    genotype: Genotype,
    specs: Mapping[str, ArchSpec],
    dtype: torch.dtype | None = None,
    device: torch.device | str = "cpu",
) -> dict[str, Tensor]:
    """One-hot ``(edges, ops)`` weights per spec selecting exactly ``genotype``'s ops.

    Given to a supernet, they make it compute exactly the derived network of
    ``genotype`` (a single path of one-shot search); ``dtype`` defaults to float32.
    """
    weights = {}
    for name, spec in specs.items():
        if name not in genotype.cells:
            raise UserInputError(f"genotype has no cell type {name!r}")
        rows = torch.zeros(spec.shape, dtype=dtype or torch.float32, device=device)
        index = {edge: e for e, edge in enumerate(spec.edges)}
        for edge in genotype.cells[name]:
            row = index.get((edge.source, edge.target))
            if row is None or edge.op not in spec.ops:
                raise UserInputError(
                    f"genotype edge {edge.op}({edge.source}->{edge.target}) is not in the "
                    f"{name!r} search space"
                )
            rows[row, spec.ops.index(edge.op)] = 1.0
        weights[name] = rows
    return weights


def genotype_key(genotype: Genotype) -> str:
    """A canonical string of a genotype's edges: equal architectures, equal keys.

    Genotypes hold dicts and are not hashable; the key names one exactly (its
    ``ops``, probabilities and config aside), for de-duplication and caches.
    """
    cells = {
        name: sorted([e.target, e.source, e.op] for e in edges)
        for name, edges in genotype.cells.items()
    }
    return json.dumps(cells, sort_keys=True)
