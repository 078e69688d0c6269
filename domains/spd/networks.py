r"""SPD macro networks: the SPDNetNAS supernet and the SPDNet / SPDNetBN baselines.

``"spdnetnas"`` (Sukthanker et al., IJCAI 2021) is built on the core's generic
cells: with ``genotype=None`` every cell is a
:class:`~manifold_nas.space.cell.SearchCell` whose edges mix the op set's
candidates by weighted Fréchet means, otherwise a
:class:`~manifold_nas.space.cell.DerivedCell` holding only the chosen ops.

``"spdnet"`` (Huang & Van Gool, AAAI 2017) and ``"spdnetbn"`` (Brooks et al.,
NeurIPS 2019) are fixed networks with no search space (``arch_specs = {}``).

All networks end in LogEig followed by a vectorisation (:class:`Vectorize`)
and a linear classifier.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from einops import rearrange
from torch import Tensor, nn
from torch.utils.data import DataLoader

from manifold_nas.data import DataBundle
from manifold_nas.domains.spd.ops import NORMAL_OPS, REDUCE_OPS
from manifold_nas.space.cell import ArchSpec, DerivedCell, SearchCell, cell_arch_spec
from manifold_nas.space.genotype import Genotype
from manifold_nas.space.networks import NETWORKS, network_example
from manifold_nas.space.opset import OpSet, OpSpec
from spd_ops import BiMap, LogEig, ReEig, SPDBatchNorm, TangentSpace

__all__ = [
    "SPDNet",
    "SPDNetNAS",
    "TangentSpaceHead",
    "Vectorize",
    "preprocess_block",
    "spd_edge_specs",
]


class Vectorize(nn.Module):
    r"""Flatten symmetric matrices ``(B, C, n, n)`` to vectors.

    ``"full"`` keeps all :math:`C n^2` entries (as SPDNetNAS does);
    ``"triu"`` keeps the :math:`C n(n+1)/2` upper-triangle entries with the
    off-diagonal ones scaled by :math:`\sqrt 2`, so the Euclidean norm of the
    vector equals the Frobenius norm of the matrix.
    """

    def __init__(self, n: int, mode: str = "full") -> None:
        super().__init__()
        if mode not in ("full", "triu"):
            raise ValueError(f"flatten must be 'full' or 'triu', got {mode!r}")
        self.n, self.mode = n, mode
        rows, cols = torch.triu_indices(n, n)
        scale = torch.where(rows == cols, 1.0, math.sqrt(2.0)).to(torch.float64)
        self.register_buffer("rows", rows, persistent=False)
        self.register_buffer("cols", cols, persistent=False)
        self.register_buffer("scale", scale, persistent=False)

    def features(self, channels: int) -> int:
        """Length of the vector of a ``channels``-channel input."""
        per_matrix = self.n * self.n if self.mode == "full" else self.n * (self.n + 1) // 2
        return channels * per_matrix

    def forward(self, X: Tensor) -> Tensor:
        if self.mode == "full":
            return rearrange(X, "b c n m -> b (c n m)")
        upper = X[..., self.rows, self.cols] * self.scale.to(X.dtype)  # (B, C, n(n+1)/2)
        return rearrange(upper, "b c t -> b (c t)")

    def extra_repr(self) -> str:
        return f"n={self.n}, mode={self.mode!r}"


def _head(channels: int, n: int, num_classes: int, flatten: str) -> nn.Sequential:
    vectorize = Vectorize(n, flatten)
    return nn.Sequential(
        LogEig(),
        vectorize,
        nn.Linear(vectorize.features(channels), num_classes, dtype=torch.float64),
    )


class TangentSpaceHead(nn.Module):
    r"""Linear classifier on the cell features *and* the input's tangent vectors.

    .. math::

        \text{logits} = A\, \frac{t(X) - \mu}{\sigma}
            + B\, \mathrm{std}\bigl(\operatorname{vec}(\log Y)\bigr) + b,
        \qquad t(X) = \operatorname{upper}\bigl(\log(R^{-1/2} X R^{-1/2})\bigr),

    with ``X`` the network input, ``Y`` the last cell's output, ``R`` the
    reference point of :class:`spd_ops.TangentSpace` and ``std`` a
    per-coordinate standardisation by batch statistics (``BatchNorm1d``
    without affine parameters; running statistics at evaluation). With
    ``B = 0`` the network *is* tangent space + logistic regression, so cells
    only have to add to it.

    :meth:`fit` (called by the builders with the training set) fixes ``R`` to
    the Karcher mean of the training inputs and ``μ, σ`` to the mean and
    standard deviation of their tangent vectors, as pyRiemann's
    ``TangentSpace`` and a standard scaler would; without it ``R`` is a
    running mean and ``μ = 0, σ = 1``.

    ``init="zero"`` starts ``A``, ``B`` and ``b`` at zero. ``init="logistic"``
    also gets the labels in :meth:`fit` and starts ``A`` and ``b`` at
    multinomial logistic regression on ``t`` with ``C`` by 5-fold
    cross-validation on the training set (:func:`~manifold_nas.domains.spd.baselines.
    logistic_regression_cv`), i.e. the network starts as the practitioner's
    baseline (linear probing before fine-tuning, Kumar et al., ICLR 2022).
    ``freeze_tangent`` keeps ``A`` fixed in training, so the trained part is
    a correction ``B`` of the cell features to that classifier.
    ``standardize=False`` leaves both feature groups unscaled; ``dropout``
    drops coordinates of both in training.
    """

    def __init__(
        self,
        channels: int,
        n: int,
        in_channels: int,
        n_in: int,
        num_classes: int,
        flatten: str = "full",
        standardize: bool = True,
        dropout: float = 0.0,
        init: str = "zero",
        freeze_tangent: bool = False,
    ) -> None:
        super().__init__()
        if init not in ("zero", "logistic"):
            raise ValueError(f"head init must be 'zero' or 'logistic', got {init!r}")
        self.init, self.standardize = init, bool(standardize)
        self.num_classes = num_classes
        self.log = LogEig()
        self.vectorize = Vectorize(n, flatten)
        self.tangent = TangentSpace(in_channels, n_in)
        cell_features, tangent_features = self.vectorize.features(channels), self.tangent.features
        self.cell_norm = (
            nn.BatchNorm1d(cell_features, affine=False, dtype=torch.float64)
            if standardize
            else nn.Identity()
        )
        self.register_buffer("tangent_mean", torch.zeros(tangent_features, dtype=torch.float64))
        self.register_buffer("tangent_scale", torch.ones(tangent_features, dtype=torch.float64))
        self.dropout = nn.Dropout(dropout)
        self.tangent_linear = nn.Linear(tangent_features, num_classes, dtype=torch.float64)
        self.cell_linear = nn.Linear(cell_features, num_classes, bias=False, dtype=torch.float64)
        for parameter in self.parameters():
            nn.init.zeros_(parameter)
        self.tangent_linear.weight.requires_grad_(not freeze_tangent)

    @torch.no_grad()
    def fit(self, x: Tensor, y: Tensor | None = None) -> TangentSpaceHead:
        """Fix ``R``, ``μ``, ``σ`` from training inputs ``x``; with ``init="logistic"`` fit ``A, b`` on ``(x, y)``."""
        self.tangent.fit(x)
        t = self.tangent(x)
        if self.standardize:
            self.tangent_mean.copy_(t.mean(0))
            # Constant coordinates (a zero-variance channel) stay unscaled.
            std = t.std(0, unbiased=False)
            self.tangent_scale.copy_(torch.where(std > 1e-12, std, torch.ones_like(std)))
        if self.init == "logistic":
            if y is None:
                raise ValueError("head init 'logistic' needs the training labels")
            from manifold_nas.domains.spd.baselines import logistic_regression_cv

            z = ((t - self.tangent_mean) / self.tangent_scale).cpu().numpy()
            fitted = logistic_regression_cv(z, y.cpu().numpy(), self.num_classes)
            self.tangent_linear.weight.copy_(torch.from_numpy(fitted["weight"]))
            self.tangent_linear.bias.copy_(torch.from_numpy(fitted["bias"]))
        return self

    def forward(self, cell_output: Tensor, x: Tensor) -> Tensor:
        cells = self.cell_norm(self.vectorize(self.log(cell_output)))
        tangent = (self.tangent(x) - self.tangent_mean) / self.tangent_scale
        return self.cell_linear(self.dropout(cells)) + self.tangent_linear(self.dropout(tangent))


def _classifier(
    channels: int,
    n: int,
    in_channels: int,
    n_in: int,
    num_classes: int,
    flatten: str,
    tangent_head: bool,
    head_options: Mapping | None,
) -> nn.Module:
    if not tangent_head:
        if head_options:
            raise ValueError("network option 'head' needs tangent_head: true")
        return _head(channels, n, num_classes, flatten)
    options = dict(head_options or {})
    valid = ("standardize", "dropout", "init", "freeze_tangent")
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(f"unknown head option(s) {unknown}; valid: {', '.join(valid)}")
    return TangentSpaceHead(channels, n, in_channels, n_in, num_classes, flatten, **options)


def preprocess_block(
    c_in: int, c_out: int, n_in: int, n_out: int, bn_options: Mapping | None = None
) -> nn.Sequential:
    """The cell-input preprocessing ReEig → BiMap → BN (SPDNetNAS' fixed BiMap_2)."""
    bn_options = dict(bn_options or {})
    channels = c_out if bn_options.get("bn_channels", False) else None
    return nn.Sequential(
        ReEig(),
        BiMap(c_in, c_out, n_in, n_out),
        SPDBatchNorm(
            n_out, channels=channels, max_iter=int(bn_options.get("bn_iters", 1)), tol=0.0
        ),
    )


def spd_edge_specs(
    spec: ArchSpec,
    channels: int,
    n_in: int,
    n_out: int,
    reduction: bool,
    options: Mapping | None = None,
) -> list[OpSpec]:
    """One :class:`OpSpec` per edge with the right matrix sizes.

    In a reduction cell the edges leaving the cell inputs have stride 2 and
    map ``n_in -> n_out``; every other edge has stride 1 at the node size
    ``n_out`` (equal to ``n_in`` in a normal cell).
    """
    extra = dict(options or {})
    specs = []
    for source, _ in spec.edges:
        strided = reduction and source < spec.n_inputs
        sizes = {"n_in": n_in if strided else n_out, "n_out": n_out}
        specs.append(OpSpec(channels, channels, 2 if strided else 1, {**extra, **sizes}))
    return specs


class SPDNetNAS(nn.Module):
    """Stem, one reduction cell, ``cells - 1`` normal cells, LogEig head.

    * stem: BiMap (``in_channels -> stem_channels``, ``n -> n``) → BN;
    * cell 0 is a reduction cell (``n -> n_out``) with ``channels`` channels
      per node; the normal cells after it have ``2 * channels`` per node;
    * cell ``k`` reads the outputs of cells ``k-2`` and ``k-1`` (the stem
      stands in for missing ones), each preprocessed by ReEig → BiMap → BN to
      the cell's channel count and to the size of the ``k-1`` output;
    * nodes are unweighted Fréchet means of their incoming edges and a cell's
      output is the channel concatenation of its intermediate nodes;
    * head: LogEig → :class:`Vectorize` → Linear.

    ``arch_specs`` holds one :class:`ArchSpec` per cell type, over
    :data:`~manifold_nas.domains.spd.ops.NORMAL_OPS` and :data:`~manifold_nas.domains.spd.ops.REDUCE_OPS`.
    """

    def __init__(
        self,
        opset: OpSet,
        in_channels: int,
        n: int,
        num_classes: int,
        genotype: Genotype | None = None,
        cells: int = 2,
        nodes: int = 2,
        channels: int = 2,
        n_out: int | None = None,
        stem_channels: int = 1,
        flatten: str = "full",
        bn_channels: bool = False,
        bn_iters: int = 1,
        tangent_head: bool = False,
        head: Mapping | None = None,
    ) -> None:
        super().__init__()
        missing = [op for op in (*NORMAL_OPS, *REDUCE_OPS) if op not in opset.ops]
        if missing:
            raise ValueError(f"op set {opset.name!r} lacks the SPDNetNAS ops {missing}")
        if cells < 1 or nodes < 1 or channels < 1 or stem_channels < 1:
            raise ValueError("cells, nodes, channels and stem_channels must be positive")
        n_out = n // 2 if n_out is None else int(n_out)
        if not 2 <= n_out <= n:
            raise ValueError(f"n_out must lie in [2, {n}], got {n_out}")
        self.arch_specs = {
            "normal": cell_arch_spec(NORMAL_OPS, n_inputs=2, n_nodes=nodes, keep=2),
            "reduce": cell_arch_spec(REDUCE_OPS, n_inputs=2, n_nodes=nodes, keep=2),
        }
        bn = {"bn_channels": bn_channels, "bn_iters": bn_iters}
        self.stem = nn.Sequential(
            BiMap(in_channels, stem_channels, n, n),
            SPDBatchNorm(
                n, channels=stem_channels if bn_channels else None, max_iter=bn_iters, tol=0.0
            ),
        )
        (c_pp, n_pp), (c_p, n_p) = (stem_channels, n), (stem_channels, n)
        self.cells = nn.ModuleList()
        for k in range(cells):
            reduction = k == 0
            cell_type = "reduce" if reduction else "normal"
            spec = self.arch_specs[cell_type]
            c = channels if reduction else 2 * channels
            size = n_out if reduction else n_p
            preprocess = [
                preprocess_block(c_pp, c, n_pp, n_p, bn),
                preprocess_block(c_p, c, n_p, n_p, bn),
            ]
            edge_specs = spd_edge_specs(spec, c, n_p, size, reduction, bn)
            if genotype is None:
                cell: nn.Module = SearchCell(opset, spec, edge_specs, cell_type, preprocess)
            else:
                cell = DerivedCell(
                    opset, spec, edge_specs, genotype.cells[cell_type], cell_type, preprocess
                )
            self.cells.append(cell)
            (c_pp, n_pp), (c_p, n_p) = (c_p, n_p), (len(spec.concat) * c, size)
        self.tangent_head = tangent_head
        self.head = _classifier(c_p, n_p, in_channels, n, num_classes, flatten, tangent_head, head)

    def forward(self, x: Tensor, arch_weights: Mapping[str, Tensor] | None = None) -> Tensor:
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            weights = None if arch_weights is None else arch_weights[cell.cell_type]
            s0, s1 = s1, cell((s0, s1), weights)
        return self.head(s1, x) if self.tangent_head else self.head(s1)


class SPDNet(nn.Module):
    """BiMap → [BN] → ReEig → … → BiMap → [BN] → LogEig → Linear, one channel.

    ``dims = [n, d_1, ..., d_L]`` gives the matrix size after each of the
    ``L`` BiMaps (the first BiMap sums the input channels). ``batch_norm``
    inserts :class:`~spd_ops.SPDBatchNorm` after every BiMap (SPDNetBN).
    There is no search space: ``arch_specs`` is empty.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        dims: Sequence[int],
        batch_norm: bool = False,
        flatten: str = "full",
        bn_iters: int = 1,
        tangent_head: bool = False,
        head: Mapping | None = None,
    ) -> None:
        super().__init__()
        dims = [int(d) for d in dims]
        if len(dims) < 2:
            raise ValueError(f"dims needs the input size and at least one output size, got {dims}")
        self.arch_specs: dict[str, ArchSpec] = {}
        layers: list[nn.Module] = []
        for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:])):
            layers.append(BiMap(in_channels if i == 0 else 1, 1, d_in, d_out))
            if batch_norm:
                layers.append(SPDBatchNorm(d_out, max_iter=bn_iters, tol=0.0))
            if i < len(dims) - 2:
                layers.append(ReEig())
        self.features = nn.Sequential(*layers)
        self.tangent_head = tangent_head
        self.head = _classifier(
            1, dims[-1], in_channels, dims[0], num_classes, flatten, tangent_head, head
        )

    def forward(self, x: Tensor, arch_weights: Mapping[str, Tensor] | None = None) -> Tensor:
        features = self.features(x)
        return self.head(features, x) if self.tangent_head else self.head(features)


def _input_shape(data: DataBundle) -> tuple[int, int]:
    if len(data.sample_shape) != 3 or data.sample_shape[1] != data.sample_shape[2]:
        raise ValueError(f"SPD networks need (C, n, n) samples, got {data.sample_shape}")
    return int(data.sample_shape[0]), int(data.sample_shape[1])


def _fit_head(network: SPDNetNAS | SPDNet, data: DataBundle) -> SPDNetNAS | SPDNet:
    """Fit a tangent-space head's reference (and initial classifier) on the training set."""
    if network.tangent_head:
        everything = DataLoader(data.train, batch_size=len(data.train), collate_fn=data.collate_fn)
        x, y = next(iter(everything))
        network.head.fit(x.to(torch.float64), y)
    return network


def _dims(dims: Sequence[int] | None, n: int) -> list[int]:
    dims = [n, n // 2] if dims is None else [int(d) for d in dims]
    if dims[0] != n:
        raise ValueError(f"dims must start at the input size {n}, got {dims}")
    return dims


@NETWORKS.register("spdnetnas")
@network_example({"name": "basic_motions"}, opset="spd", cells=2, nodes=2, channels=1)
def build_spdnetnas(
    opset: OpSet,
    data: DataBundle,
    genotype: Genotype | None = None,
    cells: int = 2,
    nodes: int = 2,
    channels: int = 2,
    n_out: int | None = None,
    stem_channels: int = 1,
    flatten: str = "full",
    bn_channels: bool = False,
    bn_iters: int = 1,
    tangent_head: bool = False,
    head: Mapping | None = None,
) -> SPDNetNAS:
    """The SPDNetNAS network; ``n_out=None`` halves the input size in the reduction cell.

    ``bn_channels`` gives every batch norm one mean per channel (default: pooled
    over batch and channels, as in the paper); ``bn_iters`` is the number of
    Karcher steps of the batch mean (1 in the paper). ``tangent_head`` feeds
    the input's tangent vectors at the running Fréchet mean to the classifier
    next to the cell features (:class:`TangentSpaceHead`, options ``head:
    {standardize, dropout}``); off, the head is the paper's LogEig → Linear.
    """
    c_in, n = _input_shape(data)
    network = SPDNetNAS(
        opset,
        c_in,
        n,
        data.num_classes,
        genotype,
        cells,
        nodes,
        channels,
        n_out,
        stem_channels,
        flatten,
        bn_channels,
        bn_iters,
        tangent_head,
        head,
    )
    return _fit_head(network, data)


@NETWORKS.register("spdnet")
@network_example({"name": "basic_motions"}, opset="spd")
def build_spdnet(
    opset: OpSet,
    data: DataBundle,
    genotype: Genotype | None = None,
    dims: Sequence[int] | None = None,
    flatten: str = "full",
    tangent_head: bool = False,
    head: Mapping | None = None,
) -> SPDNet:
    """SPDNet; ``dims=None`` is ``[n, n // 2]`` (one BiMap). The genotype is ignored."""
    c_in, n = _input_shape(data)
    network = SPDNet(
        c_in,
        data.num_classes,
        _dims(dims, n),
        batch_norm=False,
        flatten=flatten,
        tangent_head=tangent_head,
        head=head,
    )
    return _fit_head(network, data)


@NETWORKS.register("spdnetbn")
@network_example({"name": "basic_motions"}, opset="spd")
def build_spdnetbn(
    opset: OpSet,
    data: DataBundle,
    genotype: Genotype | None = None,
    dims: Sequence[int] | None = None,
    flatten: str = "full",
    bn_iters: int = 1,
    tangent_head: bool = False,
    head: Mapping | None = None,
) -> SPDNet:
    """SPDNetBN: SPDNet with Riemannian batch norm after every BiMap."""
    c_in, n = _input_shape(data)
    network = SPDNet(
        c_in,
        data.num_classes,
        _dims(dims, n),
        batch_norm=True,
        flatten=flatten,
        bn_iters=bn_iters,
        tangent_head=tangent_head,
        head=head,
    )
    return _fit_head(network, data)
