"""The volumetric benchmark's fairness helpers and the V-NAS network's activation option."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from torch import nn

from benchmarks.volumetric import (
    SEARCHED,
    matched_unet_channels,
    paired_differences,
    step_counts,
    verdict,
)
from manifold_nas.config import parse_config
from manifold_nas.domains.volumetric.baselines import MonaiUNetBaseline
from manifold_nas.domains.volumetric.network import build_vnas_network
from manifold_nas.domains.volumetric.ops import VOLUMETRIC_OPSET

STRIDES = [[2, 2, 1], [2, 2, 2]]


def _count(network: nn.Module) -> int:
    return sum(p.numel() for p in network.parameters())


def _run(seed: int, dice: float, parameters: int = 100, **extra) -> dict:
    return {"seed": seed, "test": {"dice": dice}, "parameters": parameters,
            "wall_seconds": 1.0, "peak_rss_mb": 1.0, **extra}  # fmt: skip


def test_matched_unet_widths_recover_a_unet_from_its_parameter_count():
    target = _count(MonaiUNetBaseline(1, 4, (10, 20, 40), STRIDES))
    widths, count = matched_unet_channels((8, 16, 32), STRIDES, 1, 4, target)
    assert widths == [10, 20, 40] and count == target


def test_matched_unet_widths_are_the_closest_of_the_scaled_widths():
    target = 50_000
    widths, count = matched_unet_channels((8, 16, 32), STRIDES, 1, 4, target)
    below = _count(MonaiUNetBaseline(1, 4, (9, 18, 36), STRIDES))
    above = _count(MonaiUNetBaseline(1, 4, (10, 20, 40), STRIDES))
    assert below < target < above
    assert abs(count - target) <= min(abs(below - target), abs(above - target))


def test_paired_differences_subtract_the_same_seed_and_skip_unmatched_seeds():
    searched = [_run(0, 0.8), _run(1, 0.7), _run(5, 0.9)]
    baseline = [_run(1, 0.75), _run(0, 0.6)]
    assert paired_differences(searched, baseline) == pytest.approx([0.2, -0.05])


def test_verdict_compares_with_the_best_comparator_less_its_std():
    rows = {
        SEARCHED: [_run(s, d, 90, entropy_ratio=0.1) for s, d in enumerate([0.70, 0.72, 0.74])],
        "all-conv3d": [_run(s, d, 100) for s, d in enumerate([0.70, 0.75, 0.80])],
        "all-conv2d": [_run(s, d, 50) for s, d in enumerate([0.50, 0.50, 0.50])],
    }
    result = verdict(rows)
    assert result["best_baseline"] == "all-conv3d"
    assert result["searched_within_one_std"]  # 0.72 >= 0.75 - 0.05
    assert result["searched_parameters_at_most_best"]
    assert result["paired_difference_to_best"][0] == pytest.approx(-0.03)


def test_verdict_refuses_a_searched_mean_below_one_std_of_the_best():
    rows = {
        SEARCHED: [_run(s, 0.60, 90) for s in range(3)],
        "all-conv3d": [_run(s, d, 100) for s, d in enumerate([0.70, 0.75, 0.80])],
    }
    assert not verdict(rows)["searched_within_one_std"]


def test_step_counts_use_only_the_fitted_part_when_a_validation_split_is_held_out():
    raw = {
        "data": {"name": "synthetic_shapes"},
        "network": {"name": "vnas"},
        "search": {"epochs": 10, "batch_size": 2, "train_portion": 0.5},
        "train": {"epochs": 4, "batch_size": 2, "valid_portion": 0.25},
    }
    # search: 6 of 12 volumes -> 3 steps x 10; retrain: 9 of 12 volumes -> 5 steps x 4
    assert step_counts(parse_config(raw), 12) == (30, 20)


def _bundle():
    return SimpleNamespace(sample_shape=(1, 16, 16, 8), num_classes=3, info={})


def test_the_vnas_network_uses_relu_unless_told_otherwise():
    network = build_vnas_network(VOLUMETRIC_OPSET, _bundle(), channels=[4, 8], strides=[[2, 2, 1]])
    kinds = {type(m) for m in network.modules() if isinstance(m, (nn.ReLU, nn.PReLU))}
    assert kinds == {nn.ReLU}


def test_the_vnas_activation_option_reaches_every_op_and_its_derived_networks():
    network = build_vnas_network(
        VOLUMETRIC_OPSET, _bundle(), channels=[4, 8], strides=[[2, 2, 1]], act="prelu"
    )
    derived = network.derive(["conv3d"] * network.n_cells)
    for net in (network, derived):
        kinds = {type(m) for m in net.modules() if isinstance(m, (nn.ReLU, nn.PReLU))}
        assert kinds == {nn.PReLU}
