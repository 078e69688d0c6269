"""Batched layers and matrix functions for symmetric positive definite (SPD) matrices.

Standalone (no dependency on the search core): spectral functions with a
Daleckii–Krein backward (:mod:`spd_ops.functional`), SPDNet layers
(:mod:`spd_ops.layers`), Riemannian batch norm (:mod:`spd_ops.batchnorm`),
tangent-space features at the Fréchet mean (:mod:`spd_ops.tangent`),
Fréchet means and distances (:mod:`spd_ops.mean`) and input checks
(:mod:`spd_ops.validation`). Everything defaults to float64.
"""

from .batchnorm import SPDBatchNorm
from .functional import (
    EXP,
    INV_SQRT,
    LOG,
    SQRT,
    EigFunction,
    eigh_function,
    eigh_functions,
    expm,
    invsqrtm,
    logm,
    power_spec,
    powm,
    reeig,
    reeig_spec,
    sqrtm,
    sqrtm_invsqrtm,
    sym,
)
from .layers import BiMap, ExpEig, LogEig, ReEig, random_stiefel
from .mean import (
    airm_distance,
    airm_geodesic,
    frechet_mean,
    karcher_tangent,
    log_euclidean_distance,
)
from .tangent import TangentSpace, upper_triangle
from .validation import InvalidSPDError, check_spd, regularize_spd

__all__ = [
    "EXP",
    "INV_SQRT",
    "LOG",
    "SQRT",
    "BiMap",
    "EigFunction",
    "ExpEig",
    "InvalidSPDError",
    "LogEig",
    "ReEig",
    "SPDBatchNorm",
    "TangentSpace",
    "airm_distance",
    "airm_geodesic",
    "check_spd",
    "eigh_function",
    "eigh_functions",
    "expm",
    "frechet_mean",
    "invsqrtm",
    "karcher_tangent",
    "log_euclidean_distance",
    "logm",
    "power_spec",
    "powm",
    "random_stiefel",
    "reeig",
    "reeig_spec",
    "regularize_spd",
    "sqrtm",
    "sqrtm_invsqrtm",
    "sym",
    "upper_triangle",
]
