r"""The SPDNetNAS op set ``"spd"`` (Sukthanker et al., IJCAI 2021, Table 1).

Every op maps a batch of multi-channel SPD matrices ``(B, c_in, n_in, n_in)``
to ``(B, c_out, n_out, n_out)``, float64. Matrix sizes come from the
:class:`~manifold_nas.space.opset.OpSpec` options ``n_in`` and ``n_out`` (equal at
stride 1); batch-norm settings from ``bn_channels`` (per-channel means, default
pooled over batch and channels as in the paper) and ``bn_iters`` (Karcher steps
for the batch mean).

========================  ==========================================================
op                        definition
========================  ==========================================================
``none``                  the identity matrix :math:`I_{n_\mathrm{out}}` (SPD "zero")
``Skip``                  identity; a BiMap when channels or size change
``WeightedPooling``       per output channel :math:`o`, the AIRM Fréchet mean of the
                          input channels with weights ``sparsemax(A[o])``, then BN
``BiMap_0``               BiMap → BN
``BiMap_1``               BiMap → BN → ReEig
``BiMap_2``               ReEig → BiMap → BN
``AvgPooling``            LogEig → average pooling of the entries → ExpEig → BN
``MaxPooling``            LogEig → max pooling of the entries → ExpEig → BN
``Skip_reduced``          two trained BiMaps :math:`n_\mathrm{in}\to h` and
                          :math:`n_\mathrm{in}\to n_\mathrm{out}-h`,
                          :math:`h = \lfloor n_\mathrm{out}/2\rfloor`, placed
                          block-diagonally
========================  ==========================================================

The normal cell searches over ``NORMAL_OPS`` and the reduction cell over
``REDUCE_OPS``; both are subsets of the one registered op set. BiMap_1 and
BiMap_2 follow the paper in both cell types (the reference code swaps them in
the reduction cell).

Choices where the paper is silent:

* **Channel changes.** BiMap-based ops map channels themselves and
  WeightedPooling has a ``c_out x c_in`` weight matrix. ``none`` emits
  ``c_out`` identities. ``Skip`` becomes a BiMap when ``c_in != c_out`` or
  ``n_in != n_out`` (the SPD analogue of DARTS' factorized reduce), and the
  pooling ops follow their pooling with a BiMap ``c_in -> c_out`` at
  ``n_out``. Inside a cell every edge keeps its channel count, so these
  adapters only appear when an op is used outside a cell.
* **Size changes in WeightedPooling** (only needed at stride 2, where the
  paper never places it): the channel mean is followed by the same
  log-domain adaptive average pooling as ``AvgPooling``.
* **Pooling windows.** At stride 2 adaptive pooling takes ``n_in`` to
  ``n_out`` (kernel 2, stride 2 for 20 -> 10); at stride 1 a 3x3 window with
  stride 1 and padding 1. Row and column windows coincide, so pooling a
  symmetric log-matrix gives a symmetric matrix and ExpEig returns an SPD one.
* **Parameter-free ops** (``OpSet.parameter_free``, used by the
  skip-collapse diagnostic): ``none``, ``Skip``, ``AvgPooling`` and
  ``MaxPooling``. The pooling ops' only parameter is the BN bias, which
  re-centres the batch but learns no feature map, as DARTS counts its pooling
  ops with batch norm as parameter-free.

Mixing and aggregation are Fréchet means under the affine-invariant metric
(:func:`frechet_mix`, :func:`frechet_aggregate`), computed by Karcher flow from
the log-Euclidean mean.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch
import torch.nn.functional as F
from einops import repeat
from torch import Tensor, nn

from manifold_nas.space.opset import OpExample, OpSet, OpSpec, register_opset
from manifold_nas.space.sparsemax import sparsemax
from spd_ops import (
    BiMap,
    ExpEig,
    LogEig,
    ReEig,
    SPDBatchNorm,
    airm_geodesic,
    frechet_mean,
)

__all__ = [
    "MIX_MAX_ITER",
    "MIX_TOL",
    "NORMAL_OPS",
    "REDUCE_OPS",
    "SPD_OPSET",
    "BiMapBlock",
    "IdentityMatrix",
    "LogPooling",
    "Skip",
    "SkipReduced",
    "WeightedPooling",
    "frechet_aggregate",
    "frechet_mix",
    "matrix_sizes",
]

NORMAL_OPS = ("none", "WeightedPooling", "BiMap_0", "BiMap_1", "BiMap_2", "Skip")
REDUCE_OPS = ("none", "AvgPooling", "MaxPooling", "BiMap_1", "BiMap_2", "Skip_reduced")

MIX_MAX_ITER = 3
"""Karcher-flow budget of the mixing and aggregation means."""
MIX_TOL = 1e-6
"""Stop the Karcher flow once the whitened tangent norm falls below this."""


def matrix_sizes(spec: OpSpec) -> tuple[int, int]:
    """``(n_in, n_out)`` from the spec's options; ``n_out`` defaults to ``n_in`` at stride 1."""
    n_in = spec.get("n_in")
    if n_in is None:
        raise ValueError("SPD ops need the matrix size: OpSpec options must set 'n_in'")
    n_out = spec.get("n_out")
    if n_out is None:
        if spec.reduces:
            raise ValueError("a strided SPD op needs OpSpec option 'n_out'")
        n_out = n_in
    if not spec.reduces and n_out != n_in:
        raise ValueError(f"a stride-1 SPD op keeps the size, got n_in={n_in}, n_out={n_out}")
    return int(n_in), int(n_out)


def _batch_norm(spec: OpSpec, n: int, channels: int) -> SPDBatchNorm:
    return SPDBatchNorm(
        n,
        channels=channels if spec.get("bn_channels", False) else None,
        max_iter=int(spec.get("bn_iters", 1)),
        tol=0.0,
    )


class IdentityMatrix(nn.Module):
    """The ``none`` op: ``c_out`` identity matrices of size ``n_out``, whatever the input."""

    def __init__(self, c_out: int, n_out: int) -> None:
        super().__init__()
        self.c_out, self.n_out = c_out, n_out

    def forward(self, X: Tensor) -> Tensor:
        eye = torch.eye(self.n_out, dtype=X.dtype, device=X.device)
        return eye.expand(X.shape[0], self.c_out, self.n_out, self.n_out)

    def extra_repr(self) -> str:
        return f"c_out={self.c_out}, n_out={self.n_out}"


class Skip(nn.Module):
    """Identity; a BiMap adapter when the channel count or the matrix size changes."""

    def __init__(self, c_in: int, c_out: int, n_in: int, n_out: int) -> None:
        super().__init__()
        same = c_in == c_out and n_in == n_out
        self.adapter = nn.Identity() if same else BiMap(c_in, c_out, n_in, n_out)

    def forward(self, X: Tensor) -> Tensor:
        return self.adapter(X)


class BiMapBlock(nn.Sequential):
    """A BiMap with batch norm and an optional ReEig before or after it.

    ``rectify="none"`` is BiMap_0 (BiMap → BN), ``"post"`` BiMap_1
    (BiMap → BN → ReEig), ``"pre"`` BiMap_2 (ReEig → BiMap → BN).
    """

    def __init__(self, spec: OpSpec, rectify: str) -> None:
        if rectify not in ("none", "pre", "post"):
            raise ValueError(f"rectify must be 'none', 'pre' or 'post', got {rectify!r}")
        n_in, n_out = matrix_sizes(spec)
        layers: list[nn.Module] = [
            BiMap(spec.c_in, spec.c_out, n_in, n_out),
            _batch_norm(spec, n_out, spec.c_out),
        ]
        if rectify == "pre":
            layers.insert(0, ReEig())
        elif rectify == "post":
            layers.append(ReEig())
        super().__init__(*layers)


class LogPooling(nn.Module):
    r"""Pooling of log-matrix entries: LogEig → avg/max pool → ExpEig → BN.

    Stride 2 pools adaptively from ``n_in`` to ``n_out``; stride 1 uses a 3x3
    window with padding 1 (averages exclude the padding). A BiMap at ``n_out``
    follows when ``c_in != c_out``.
    """

    def __init__(self, spec: OpSpec, mode: str) -> None:
        super().__init__()
        if mode not in ("avg", "max"):
            raise ValueError(f"pooling mode must be 'avg' or 'max', got {mode!r}")
        self.mode = mode
        self.n_in, self.n_out = matrix_sizes(spec)
        self.log, self.exp = LogEig(), ExpEig()
        self.channels = (
            nn.Identity()
            if spec.c_in == spec.c_out
            else BiMap(spec.c_in, spec.c_out, self.n_out, self.n_out)
        )
        self.bn = _batch_norm(spec, self.n_out, spec.c_out)

    def pool(self, L: Tensor) -> Tensor:
        if self.n_in != self.n_out:
            size = (self.n_out, self.n_out)
            return (
                F.adaptive_avg_pool2d(L, size)
                if self.mode == "avg"
                else F.adaptive_max_pool2d(L, size)
            )
        if self.mode == "avg":
            return F.avg_pool2d(L, 3, stride=1, padding=1, count_include_pad=False)
        return F.max_pool2d(L, 3, stride=1, padding=1)

    def forward(self, X: Tensor) -> Tensor:
        return self.bn(self.channels(self.exp(self.pool(self.log(X)))))

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, n_in={self.n_in}, n_out={self.n_out}"


class WeightedPooling(nn.Module):
    r"""Channel pooling by weighted Fréchet means, then BN.

    Output channel :math:`o` is :math:`\operatorname{FM}(X_1..X_{c_\mathrm{in}};
    \operatorname{sparsemax}(A_o))` with a learnable :math:`A \in
    \mathbb{R}^{c_\mathrm{out}\times c_\mathrm{in}}` (initialised to zero, i.e.
    uniform weights). A size change is made by log-domain average pooling.
    """

    def __init__(self, spec: OpSpec) -> None:
        super().__init__()
        n_in, n_out = matrix_sizes(spec)
        self.logits = nn.Parameter(torch.zeros(spec.c_out, spec.c_in, dtype=torch.float64))
        self.resize = (
            nn.Identity()
            if n_in == n_out
            else nn.Sequential(LogEig(), nn.AdaptiveAvgPool2d((n_out, n_out)), ExpEig())
        )
        self.bn = _batch_norm(spec, n_out, spec.c_out)

    def forward(self, X: Tensor) -> Tensor:
        weights = sparsemax(self.logits, dim=-1)  # (c_out, c_in)
        c_out, c_in = weights.shape
        # Average over input channels (axis 0) for every (batch, output channel) pair;
        # repeat broadcasts (a stride-0 expand), it copies nothing.
        stacked = repeat(X, "b i n m -> i b o n m", i=c_in, o=c_out)
        w = repeat(weights, "o i -> i b o", b=X.shape[0])
        mean = frechet_mean(stacked, w, max_iter=MIX_MAX_ITER, tol=MIX_TOL)
        return self.bn(self.resize(mean))


class SkipReduced(nn.Module):
    r"""Block-diagonal reduction :math:`\operatorname{diag}(\mathrm{BiMap}_a(X), \mathrm{BiMap}_b(X))`.

    Two trained BiMaps, :math:`n_\mathrm{in}\to h` and :math:`n_\mathrm{in}\to
    n_\mathrm{out}-h` with :math:`h=\lfloor n_\mathrm{out}/2 \rfloor`; the
    block-diagonal of two SPD matrices is SPD. Needs ``n_out >= 2``.
    """

    def __init__(self, spec: OpSpec) -> None:
        super().__init__()
        n_in, n_out = matrix_sizes(spec)
        if n_out < 2:
            raise ValueError(f"Skip_reduced needs n_out >= 2, got {n_out}")
        self.head = n_out // 2
        self.upper = BiMap(spec.c_in, spec.c_out, n_in, self.head)
        self.lower = BiMap(spec.c_in, spec.c_out, n_in, n_out - self.head)

    def forward(self, X: Tensor) -> Tensor:
        upper, lower = self.upper(X), self.lower(X)
        top = F.pad(upper, (0, lower.shape[-1]))
        bottom = F.pad(lower, (self.head, 0))
        return torch.cat([top, bottom], dim=-2)


def frechet_mix(outputs: Sequence[Tensor], weights: Tensor) -> Tensor:
    r"""Weighted AIRM Fréchet mean of an edge's op outputs.

    Weights are normalised to sum to one. Two outputs have the closed-form
    mean :math:`A \#_t B` (the geodesic point at :math:`t = w_B / (w_A + w_B)`);
    more run the Karcher flow (at most :data:`MIX_MAX_ITER` steps, tolerance
    :data:`MIX_TOL`) from the log-Euclidean mean.
    """
    if len(outputs) == 1:
        return outputs[0]
    if len(outputs) == 2:
        return airm_geodesic(outputs[0], outputs[1], weights[1] / weights.sum())
    return frechet_mean(torch.stack(list(outputs)), weights, max_iter=MIX_MAX_ITER, tol=MIX_TOL)


def frechet_aggregate(inputs: Sequence[Tensor]) -> Tensor:
    """Unweighted AIRM Fréchet mean of a node's incoming edges (closed form for two)."""
    if len(inputs) == 1:
        return inputs[0]
    if len(inputs) == 2:
        return airm_geodesic(inputs[0], inputs[1], 0.5)
    return frechet_mean(torch.stack(list(inputs)), max_iter=MIX_MAX_ITER, tol=MIX_TOL)


def _none(spec: OpSpec) -> nn.Module:
    return IdentityMatrix(spec.c_out, matrix_sizes(spec)[1])


def _skip(spec: OpSpec) -> nn.Module:
    return Skip(spec.c_in, spec.c_out, *matrix_sizes(spec))


def _assert_spd(x: Tensor) -> None:
    assert torch.allclose(x, x.mT, atol=1e-10), "output is not symmetric"
    assert bool((torch.linalg.eigvalsh(x) > 0).all()), "output is not positive definite"


def spd_examples() -> list[OpExample]:
    """Contract-test probes: 2 -> 2 and 2 -> 3 channels of 6x6 SPD matrices, strides 1 (6 -> 6) and 2 (6 -> 3)."""
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(3, 2, 6, 9, dtype=torch.float64, generator=generator)
    x = a @ a.mT / 9 + 0.1 * torch.eye(6, dtype=torch.float64)
    examples = []
    for c_out in (2, 3):
        for stride, n_out in ((1, 6), (2, 3)):
            spec = OpSpec(2, c_out, stride, {"n_in": 6, "n_out": n_out})
            examples.append(OpExample(spec, x, (3, c_out, n_out, n_out), _assert_spd))
    return examples


SPD_OPSET = register_opset(
    OpSet(
        name="spd",
        ops={
            "none": _none,
            "WeightedPooling": WeightedPooling,
            "BiMap_0": partial(BiMapBlock, rectify="none"),
            "BiMap_1": partial(BiMapBlock, rectify="post"),
            "BiMap_2": partial(BiMapBlock, rectify="pre"),
            "Skip": _skip,
            "AvgPooling": partial(LogPooling, mode="avg"),
            "MaxPooling": partial(LogPooling, mode="max"),
            "Skip_reduced": SkipReduced,
        },
        zero="none",
        mix=frechet_mix,
        aggregate=frechet_aggregate,
        dtype=torch.float64,
        parameter_free=frozenset({"none", "Skip", "AvgPooling", "MaxPooling"}),
        description="SPDNetNAS (IJCAI'21) ops on multi-channel SPD matrices; "
        "Fréchet-mean mixing and aggregation",
        examples=spd_examples,
    )
)
