"""Hand-designed comparators for the V-NAS search: a MONAI UNet and a DiNTS smoke run.

* ``"monai_unet"`` (in :data:`manifold_nas.space.networks.NETWORKS`): a
  :class:`monai.networks.nets.UNet` sized like the V-NAS network, with
  per-axis strides (e.g. ``[(2, 2, 1), 2]`` keeps thick slices at the first
  level). It has no architecture parameters (``arch_specs == {}``), so it
  trains through ``manifold-nas train`` like any derived network.
* :func:`dints_smoke`: one step of MONAI's DiNTS search space on CPU, then
  ``decode()`` and the derived ``TopologyInstance`` — a cost reference, since
  a real DiNTS search does not fit in minutes on a CPU.

The fixed all-conv2d / all-conv3d / all-p3d backbones are ``"vnas"`` with
``fixed_op`` (see :func:`manifold_nas.domains.volumetric.network.build_vnas_network`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from monai.networks.layers.simplelayers import SkipConnection
from monai.networks.nets import DiNTS, TopologyInstance, TopologySearch, UNet
from torch import Tensor, nn

from manifold_nas.data import DataBundle
from manifold_nas.domains.volumetric.network import total_stride
from manifold_nas.domains.volumetric.ops import SPATIAL_DIMS, per_axis_stride
from manifold_nas.errors import UserInputError
from manifold_nas.space.contracts import INPUT
from manifold_nas.space.genotype import Genotype
from manifold_nas.space.networks import NETWORKS, network_example
from manifold_nas.space.opset import OpSet

__all__ = ["MonaiUNetBaseline", "build_monai_unet", "dints_smoke", "monai_unet_stage_names"]


class MonaiUNetBaseline(nn.Module):
    """A fixed :class:`monai.networks.nets.UNet` behind the search-network contract.

    ``forward(x, arch_weights=None)`` ignores ``arch_weights``; the input's
    spatial size must be divisible by the per-axis product of ``strides``.
    """

    arch_specs: dict = {}

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        channels: Sequence[int] = (8, 16, 32),
        strides: Sequence[int | Sequence[int]] | None = None,
        num_res_units: int = 1,
        kernel_size: int | Sequence[int] = 3,
        norm: str | tuple = "instance",
        act: str | tuple = "prelu",
    ) -> None:
        super().__init__()
        channels = tuple(int(c) for c in channels)
        if len(channels) < 2:
            raise UserInputError(f"channels must list at least 2 levels, got {channels}")
        if strides is None:
            strides = [2] * (len(channels) - 1)
        strides = [per_axis_stride(s) for s in strides]
        if len(strides) != len(channels) - 1:
            raise UserInputError(
                f"strides needs {len(channels) - 1} entries for {len(channels)} levels, "
                f"got {len(strides)}"
            )
        self.total_stride = total_stride(strides)
        self.unet = UNet(
            spatial_dims=SPATIAL_DIMS,
            in_channels=in_channels,
            out_channels=num_classes,
            channels=channels,
            strides=strides,
            kernel_size=kernel_size,
            up_kernel_size=kernel_size,
            num_res_units=num_res_units,
            norm=norm,
            act=act,
        )

    def forward(self, x: Tensor, arch_weights: Mapping[str, Tensor] | None = None) -> Tensor:
        if any(n % s for n, s in zip(x.shape[2:], self.total_stride)):
            raise ValueError(
                f"input size {tuple(x.shape[2:])} is not divisible by the total stride "
                f"{self.total_stride}"
            )
        return self.unet(x)


@NETWORKS.register("monai_unet")
@network_example(
    {"name": "synthetic_shapes", "n_train": 2, "n_test": 1, "shape": [16, 16, 8],
     "patch_size": [16, 16, 8]},
    opset="volumetric",
    channels=[4, 8],
    strides=[[2, 2, 1]],
)  # fmt: skip
def build_monai_unet(
    opset: OpSet,
    data: DataBundle,
    genotype: Genotype | None = None,
    channels: Sequence[int] = (8, 16, 32),
    strides: Sequence[int | Sequence[int]] | None = None,
    num_res_units: int = 1,
    kernel_size: int | Sequence[int] = 3,
) -> MonaiUNetBaseline:
    """MONAI UNet sized from the data bundle (``sample_shape = (C, *patch)``).

    ``opset`` is unused (the UNet has no searchable ops); a ``genotype`` may
    only be the empty one that ``manifold-nas train`` passes for a fixed
    network.
    """
    if genotype is not None and genotype.cells:
        raise UserInputError("monai_unet is a fixed network; it takes no genotype cells")
    network = MonaiUNetBaseline(
        in_channels=data.sample_shape[0],
        num_classes=data.num_classes,
        channels=channels,
        strides=strides,
        num_res_units=num_res_units,
        kernel_size=kernel_size,
    )
    patch = data.sample_shape[1:]
    if any(p % s for p, s in zip(patch, network.total_stride)):
        raise UserInputError(
            f"patch size {tuple(patch)} is not divisible by the UNet's total stride "
            f"{network.total_stride}"
        )
    return network


def dints_smoke(
    patch_size: Sequence[int],
    in_channels: int = 1,
    num_classes: int = 2,
    batch_size: int = 1,
    channel_mul: float = 0.25,
    num_blocks: int = 4,
    num_depths: int = 3,
    lr: float = 0.01,
    seed: int = 0,
) -> dict[str, Any]:
    """One DiNTS search step on a random patch on CPU, then decode and instantiate.

    The search network (``TopologySearch`` + ``DiNTS``) takes one
    forward + backward + SGD step on a random ``(batch_size, in_channels,
    *patch_size)`` input; the architecture is decoded with ``decode()`` and
    the derived ``TopologyInstance`` network takes one step too.

    MONAI's DiNTS downsamples ``num_depths - 1`` times inside the space plus
    twice in its stem (``use_downsample=True``), so every patch axis must be
    divisible by ``2 ** (num_depths + 1)``.

    Returns
    -------
    dict
        ``search_parameters``, ``search_seconds_per_step``,
        ``derived_parameters``, ``derived_seconds_per_step``, ``loss``
        (the search step's cross-entropy) and the settings used.
    """
    patch_size = tuple(int(p) for p in patch_size)
    divisor = 2 ** (num_depths + 1)
    if len(patch_size) != SPATIAL_DIMS or any(p % divisor for p in patch_size):
        raise UserInputError(
            f"DiNTS with num_depths={num_depths} needs every patch axis divisible by "
            f"{divisor}, got {patch_size}"
        )
    torch.manual_seed(seed)
    x = torch.randn(batch_size, in_channels, *patch_size)
    y = torch.randint(0, num_classes, (batch_size, *patch_size))

    space = TopologySearch(
        channel_mul=channel_mul, num_blocks=num_blocks, num_depths=num_depths, device="cpu"
    )
    search = DiNTS(dints_space=space, in_channels=in_channels, num_classes=num_classes)
    arch_parameters = int(space.log_alpha_a.numel() + space.log_alpha_c.numel())
    search_seconds, loss = _one_step(search, x, y, lr)
    node_a, arch_code_a, arch_code_c, _ = space.decode()

    instance = TopologyInstance(
        arch_code=[arch_code_a, arch_code_c],
        channel_mul=channel_mul,
        num_blocks=num_blocks,
        num_depths=num_depths,
        device="cpu",
    )
    derived = DiNTS(
        dints_space=instance, in_channels=in_channels, num_classes=num_classes, node_a=node_a
    )
    derived_seconds, _ = _one_step(derived, x, y, lr)
    return {
        "patch_size": list(patch_size),
        "batch_size": batch_size,
        "channel_mul": channel_mul,
        "num_blocks": num_blocks,
        "num_depths": num_depths,
        # DiNTS holds the space as a submodule; its architecture logits are counted apart
        "search_parameters": _count(search.parameters()) - arch_parameters,
        "arch_parameters": arch_parameters,
        "search_seconds_per_step": search_seconds,
        "derived_parameters": _count(derived.parameters()),
        "derived_seconds_per_step": derived_seconds,
        "loss": loss,
    }


def _count(parameters: Any) -> int:
    return int(sum(p.numel() for p in parameters))


def _one_step(network: nn.Module, x: Tensor, y: Tensor, lr: float) -> tuple[float, float]:
    optimizer = torch.optim.SGD([p for p in network.parameters() if p.requires_grad], lr=lr)
    started = time.perf_counter()
    optimizer.zero_grad(set_to_none=True)
    loss = nn.functional.cross_entropy(network(x), y)
    loss.backward()
    optimizer.step()
    seconds = time.perf_counter() - started
    value = float(loss.detach())
    if not math.isfinite(value):
        raise RuntimeError(f"DiNTS smoke step gave a non-finite loss {value}")
    return seconds, value


def monai_unet_stage_names(network: nn.Module) -> list[str] | None:
    """The ``2L`` boundaries of the first MONAI ``UNet`` inside ``network`` (``None``: no UNet).

    Registered as the ``monai_unet`` stage finder, so a DNA teacher that is or
    contains a MONAI ``UNet`` is cut at its levels without naming them.

    MONAI builds an ``L``-level UNet recursively as
    ``Sequential(down, SkipConnection(sub), up)`` with the bottom layer as the
    innermost ``sub``; the boundaries are the input, each ``down`` (encoder,
    top to bottom), the bottom, and each ``up`` (decoder, bottom to top).
    """
    found = next(((n, m) for n, m in network.named_modules() if isinstance(m, UNet)), None)
    if found is None:
        return None
    name, unet = found
    node_name = f"{name}.model" if name else "model"
    node = unet.model
    downs, ups = [], []
    while (
        isinstance(node, nn.Sequential) and len(node) == 3 and isinstance(node[1], SkipConnection)
    ):
        downs.append(f"{node_name}.0")
        ups.append(f"{node_name}.2")
        node_name, node = f"{node_name}.1.submodule", node[1].submodule
    return [INPUT, *downs, node_name, *reversed(ups)]
