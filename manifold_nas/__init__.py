"""manifold-nas: differentiable cell search with domain op sets and Riemannian architecture optimizers."""

from manifold_nas.cell import ArchSpec, ChosenEdge, DerivedCell, MixedEdge, SearchCell
from manifold_nas.data import DATASETS, DataBundle
from manifold_nas.errors import UserInputError
from manifold_nas.genotype import Genotype
from manifold_nas.networks import NETWORKS
from manifold_nas.opset import OPSETS, OpSet, OpSpec, register_opset
from manifold_nas.optim import ARCH_OPTIMIZERS, build_optimizer
from manifold_nas.relaxations import RELAXATIONS, Relaxation
from manifold_nas.selection import SELECTORS
from manifold_nas.supernet import ArchitectureParameters, Supernet

__version__ = "0.1.0"

__all__ = [
    "ARCH_OPTIMIZERS",
    "build_optimizer",
    "DATASETS",
    "NETWORKS",
    "OPSETS",
    "RELAXATIONS",
    "SELECTORS",
    "ArchSpec",
    "ArchitectureParameters",
    "ChosenEdge",
    "DataBundle",
    "DerivedCell",
    "Genotype",
    "MixedEdge",
    "OpSet",
    "OpSpec",
    "Relaxation",
    "SearchCell",
    "Supernet",
    "UserInputError",
    "register_opset",
]
