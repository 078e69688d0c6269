"""Reduced training settings for candidate networks (EcoNAS proxies).

Zhou et al. ("EcoNAS: Finding Proxies for Economical Neural Architecture
Search", CVPR 2020) rank candidate networks after training them in a reduced
setting: fewer channels, smaller inputs, a fraction of the training samples
and fewer epochs. The config's ``proxy:`` section names such a setting; it
applies to the trials of a multi-trial search only, and the network a search
returns is retrained at the full setting by ``manifold-nas train``.

This module turns the section into the three things a trial trains with:

* :func:`build_trial_network`: the derived network built with the
  ``network:`` options plus ``proxy.network`` overrides (e.g. ``channels: 4``)
  and, for ``proxy.downsample`` :math:`f > 1`, wrapped in
  :class:`DownsampledInput`, which average-pools every spatial axis of the
  input by :math:`f` before the network (which is built for the smaller
  sample shape) and, for a dense prediction, interpolates the output back to
  the input's size, so losses and metrics keep working at full resolution;
* :func:`proxy_subset`: a seeded subset of a data set holding
  ``proxy.data_fraction`` of its samples, stratified by class when the labels
  can be read without loading the samples;
* :func:`trial_epochs`: ``proxy.epochs`` or the strategy's own.

Nothing here branches on the domain: images and volumes are pooled over
their 2 or 3 spatial axes alike, and a symmetric positive definite input
:math:`X \\in \\mathcal S_{++}^n` stays SPD, since non-overlapping
:math:`f \\times f` average pooling is the congruence :math:`P^\\top X P / f^2`
with a full-column-rank block-summing :math:`P \\in \\{0,1\\}^{n \\times \\lfloor n/f \\rfloor}`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset, Subset, TensorDataset

from manifold_nas.config import Config, ProxySettings, check_options, split_name
from manifold_nas.data import DataBundle
from manifold_nas.errors import UserInputError
from manifold_nas.run.context import Run, build_network
from manifold_nas.space.genotype import Genotype
from manifold_nas.space.networks import NETWORKS

__all__ = [
    "DownsampledInput",
    "build_trial_network",
    "check_proxy",
    "downsampled_bundle",
    "proxy_subset",
    "trial_epochs",
]

_POOL = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}
_INTERPOLATION = {1: "linear", 2: "bilinear", 3: "trilinear"}


class DownsampledInput(nn.Module):
    """Run ``network`` on inputs average-pooled by ``factor`` along every spatial axis.

    For an input of shape :math:`(B, C, s_1, \\dots, s_d)`, :math:`d \\le 3`,
    the network sees :math:`(B, C, \\lfloor s_1/f \\rfloor, \\dots, \\lfloor s_d/f \\rfloor)`
    with each entry the mean of an :math:`f^d` block. An output with the
    pooled spatial shape (a dense prediction such as segmentation logits) is
    interpolated (linearly) back to :math:`(s_1, \\dots, s_d)`, so the loss
    is computed against full-resolution targets; any other output (class
    logits) is returned as is.
    """

    def __init__(self, network: nn.Module, factor: int) -> None:
        super().__init__()
        if int(factor) != factor or factor < 1:
            raise ValueError(f"factor must be a positive integer, got {factor}")
        self.network = network
        self.factor = int(factor)

    def forward(self, x: Tensor) -> Tensor:
        spatial = tuple(x.shape[2:])
        if len(spatial) not in _POOL:
            raise UserInputError(
                f"proxy.downsample pools 1 to 3 spatial axes; the input has shape {tuple(x.shape)}"
            )
        pooled = _POOL[len(spatial)](x, self.factor, self.factor)
        out = self.network(pooled)
        if out.dim() == x.dim() and tuple(out.shape[2:]) == tuple(pooled.shape[2:]):
            out = F.interpolate(
                out, size=spatial, mode=_INTERPOLATION[len(spatial)], align_corners=False
            )
        return out


def downsampled_bundle(bundle: DataBundle, factor: int) -> DataBundle:
    """``bundle`` with the spatial axes of ``sample_shape`` divided by ``factor`` (rounded down).

    Only the shape the network is built for changes; the data are pooled on
    the fly by :class:`DownsampledInput`.
    """
    if factor == 1:
        return bundle
    channels, *spatial = bundle.sample_shape
    reduced = tuple(s // factor for s in spatial)
    if not reduced or min(reduced) < 1:
        raise UserInputError(
            f"proxy.downsample {factor} leaves no input of sample shape {tuple(bundle.sample_shape)}"
        )
    return dataclasses.replace(bundle, sample_shape=(channels, *reduced))


def check_proxy(config: Config) -> None:
    """Refuse ``proxy.network`` options the config's network builder does not take."""
    name, options = split_name(config.network)
    options.pop("opset", None)
    builder = NETWORKS.get(name)
    check_options(builder, {**options, **config.proxy.network}, "proxy.network", n_positional=3)


def build_trial_network(run: Run, genotype: Genotype) -> nn.Module:
    """The network a trial trains: ``genotype`` at the proxy setting, on the run's device."""
    proxy: ProxySettings = run.config.proxy
    bundle = downsampled_bundle(run.bundle, proxy.downsample)
    network, _ = build_network(run.config, bundle, genotype, extra=proxy.network)
    if proxy.downsample > 1:
        network = DownsampledInput(network, proxy.downsample)
    return network.to(run.device)


def trial_epochs(config: Config, strategy_epochs: int) -> int:
    """``proxy.epochs`` when set, else the strategy's own epochs per trial."""
    return strategy_epochs if config.proxy.epochs is None else int(config.proxy.epochs)


def _class_labels(dataset: Dataset) -> np.ndarray | None:
    """Integer labels of ``dataset`` read without loading samples, or None when unknown.

    Looks through (nested) :class:`~torch.utils.data.Subset` views to a
    :class:`~torch.utils.data.TensorDataset` whose second tensor holds one
    integer label per sample; other data sets (volumes, files) give None.
    """
    indices: Sequence[int] | None = None
    while isinstance(dataset, Subset):
        inner = list(dataset.indices)
        indices = inner if indices is None else [inner[i] for i in indices]
        dataset = dataset.dataset
    if not isinstance(dataset, TensorDataset) or len(dataset.tensors) < 2:
        return None
    labels = dataset.tensors[1]
    if labels.dim() != 1 or labels.is_floating_point():
        return None
    labels = labels.numpy() if indices is None else labels[torch.as_tensor(indices)].numpy()
    return np.asarray(labels, dtype=np.int64)


def proxy_subset(dataset: Dataset, fraction: float, seed: int) -> Dataset:
    """A seeded subset holding ``fraction`` of ``dataset``'s samples (all of it for 1).

    With readable class labels (:func:`_class_labels`) every class keeps
    :math:`\\max(1, \\operatorname{round}(f \\, n_c))` of its :math:`n_c`
    samples, so the class proportions of the subset match the full set;
    otherwise :math:`\\max(1, \\operatorname{round}(f \\, n))` samples are
    drawn uniformly. The subset depends only on ``seed``; its indices are
    sorted so that shuffling is left to the loader.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must lie in (0, 1], got {fraction}")
    if fraction == 1.0:
        return dataset
    rng = np.random.default_rng(seed)
    labels = _class_labels(dataset)
    if labels is None:
        n = len(dataset)
        chosen = rng.choice(n, size=max(1, int(round(fraction * n))), replace=False)
    else:
        parts = []
        for label in np.unique(labels):
            members = np.flatnonzero(labels == label)
            size = max(1, int(round(fraction * members.size)))
            parts.append(rng.choice(members, size=size, replace=False))
        chosen = np.concatenate(parts)
    return Subset(dataset, sorted(int(i) for i in chosen))
