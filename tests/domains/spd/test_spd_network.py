"""SPD networks: the SPDNetNAS supernet and derived network, SPDNet baselines, a tiny search."""

from __future__ import annotations

import geoopt
import pytest
import torch
from torch.utils.data import TensorDataset

from manifold_nas.config import parse_config
from manifold_nas.data import DataBundle
from manifold_nas.domains.spd.ops import NORMAL_OPS, REDUCE_OPS
from manifold_nas.optim import build_optimizer
from manifold_nas.search import search
from manifold_nas.space.cell import ChosenEdge, DerivedCell
from manifold_nas.space.genotype import Genotype
from manifold_nas.space.networks import NETWORKS
from manifold_nas.space.opset import OPSETS, OpSpec
from manifold_nas.space.relaxations import RELAXATIONS
from manifold_nas.space.supernet import ArchitectureParameters, Supernet

OPSET = OPSETS.get("spd")
N, CLASSES = 8, 3


def random_spd(*shape: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    n = shape[-1]
    a = torch.randn(*shape, dtype=torch.float64, generator=generator)
    return a @ a.mT / n + 0.1 * torch.eye(n, dtype=torch.float64)


@pytest.fixture(scope="module")
def bundle() -> DataBundle:
    x = random_spd(12, 1, N, N)
    y = torch.arange(12) % CLASSES
    data = TensorDataset(x, y)
    return DataBundle("toy", data, data, CLASSES, (1, N, N))


def build(name: str, bundle: DataBundle, genotype: Genotype | None = None, **options):
    torch.manual_seed(0)
    return NETWORKS.get(name)(OPSET, bundle, genotype, **options)


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


GENOTYPE = Genotype(
    opset="spd",
    cells={
        "reduce": (
            ChosenEdge("Skip_reduced", 0, 2),
            ChosenEdge("BiMap_1", 1, 2),
            ChosenEdge("AvgPooling", 0, 3),
            ChosenEdge("BiMap_2", 2, 3),
        ),
        "normal": (
            ChosenEdge("Skip", 0, 2),
            ChosenEdge("WeightedPooling", 1, 2),
            ChosenEdge("BiMap_0", 1, 3),
            ChosenEdge("BiMap_1", 2, 3),
        ),
    },
)


def test_supernet_declares_one_arch_spec_per_cell_type(bundle):
    net = build("spdnetnas", bundle)
    assert net.arch_specs["normal"].ops == NORMAL_OPS
    assert net.arch_specs["reduce"].ops == REDUCE_OPS
    assert net.arch_specs["normal"].shape == (5, 6)


def test_reduction_edge_specs_stride_only_from_cell_inputs(bundle):
    net = build("spdnetnas", bundle, n_out=4)
    reduce = net.cells[0]
    sizes = [(edge.stride, edge.ops[0].n_out) for edge in reduce.edges]
    assert sizes == [(2, 4), (2, 4), (2, 4), (2, 4), (1, 4)]
    strided = reduce.edges[0].ops[REDUCE_OPS.index("AvgPooling")]
    assert (strided.n_in, strided.n_out) == (N, 4)


def test_supernet_forward_and_backward_reach_arch_and_bimap_weights(bundle):
    net = build("spdnetnas", bundle)
    relaxation = RELAXATIONS.get("sparsemax")()
    supernet = Supernet(net, ArchitectureParameters(net.arch_specs, relaxation, torch.float64))
    x, y = bundle.train.tensors
    out = supernet(x[:6])
    assert out.shape == (6, CLASSES) and out.dtype == torch.float64
    torch.nn.functional.cross_entropy(out, y[:6]).backward()
    for alpha in supernet.arch_parameters():
        assert torch.isfinite(alpha.grad).all() and alpha.grad.abs().sum() > 0
    bimaps = [
        p for p in net.parameters() if isinstance(getattr(p, "manifold", None), geoopt.Stiefel)
    ]
    assert bimaps and all(p.grad is not None and torch.isfinite(p.grad).all() for p in bimaps)


def test_derived_network_holds_only_the_chosen_ops(bundle):
    net = build("spdnetnas", bundle, GENOTYPE, cells=3)
    assert all(isinstance(cell, DerivedCell) for cell in net.cells)
    assert [cell.cell_type for cell in net.cells] == ["reduce", "normal", "normal"]
    x = bundle.train.tensors[0][:5]
    assert net(x).shape == (5, CLASSES)


def test_derived_parameter_count_is_ops_plus_stem_preprocessing_and_head(bundle):
    net = build("spdnetnas", bundle, GENOTYPE, channels=2, n_out=4)
    # Each chosen op built on its own: reduce cell at 2 channels (8 -> 4 on edges
    # leaving the cell inputs), normal cell at 4 channels and size 4.
    ops = 0
    for cell_type, channels in (("reduce", 2), ("normal", 4)):
        for edge in GENOTYPE.cells[cell_type]:
            strided = cell_type == "reduce" and edge.source < 2
            sizes = {"n_in": N if strided else 4, "n_out": 4}
            spec = OpSpec(channels, channels, 2 if strided else 1, sizes)
            ops += n_params(OPSET.build(edge.op, spec))
    preprocess = sum(n_params(cell.preprocess) for cell in net.cells)
    assert n_params(net) == ops + preprocess + n_params(net.stem) + n_params(net.head)


def test_head_vectorises_the_whole_matrix_or_its_upper_triangle(bundle):
    full = build("spdnetnas", bundle, GENOTYPE)
    triu = build("spdnetnas", bundle, GENOTYPE, flatten="triu")
    channels, n = 8, N // 2
    assert full.head[-1].in_features == channels * n * n
    assert triu.head[-1].in_features == channels * n * (n + 1) // 2


@pytest.mark.parametrize("name", ["spdnet", "spdnetbn"])
def test_baselines_classify_without_a_search_space(name, bundle):
    net = build(name, bundle, dims=[N, 6, 4])
    assert net.arch_specs == {}
    assert net(bundle.train.tensors[0][:4]).shape == (4, CLASSES)
    has_bn = any(type(m).__name__ == "SPDBatchNorm" for m in net.modules())
    assert has_bn == (name == "spdnetbn")


def test_baseline_dims_must_start_at_the_input_size(bundle):
    with pytest.raises(ValueError, match="input size"):
        build("spdnet", bundle, dims=[N + 1, 4])


def test_riemannian_sgd_step_keeps_every_bimap_weight_orthonormal(bundle):
    net = build("spdnetnas", bundle, GENOTYPE)
    optimizer = build_optimizer("riemannian_sgd", net.parameters(), lr=0.5)
    x, y = bundle.train.tensors
    torch.nn.functional.cross_entropy(net(x), y).backward()
    optimizer.step()
    frames = [
        p for p in net.parameters() if isinstance(getattr(p, "manifold", None), geoopt.Stiefel)
    ]
    assert frames
    for w in frames:
        eye = torch.eye(w.shape[-1], dtype=w.dtype)
        assert torch.allclose(w.mT @ w, eye.expand_as(w.mT @ w), atol=1e-10)


@pytest.mark.parametrize("order", ["first", "second"])
def test_tiny_search_on_basic_motions_yields_a_genotype_of_the_right_ops(tmp_path, order):
    config = parse_config(
        {
            "seed": 0,
            "data": {"name": "basic_motions"},
            "network": {"name": "spdnetnas", "opset": "spd", "cells": 2, "nodes": 2, "channels": 1},
            "relaxation": {"name": "sparsemax"},
            "search": {
                "epochs": 1,
                "batch_size": 8,
                "max_steps_per_epoch": 2,
                "weight_optimizer": {"name": "riemannian_sgd", "lr": 0.025},
            },
            "strategy": {"name": "bilevel", "order": order},
        }
    )
    genotype = search(config, tmp_path, quiet=True).genotype
    assert genotype.opset == "spd"
    for cell_type, ops in (("normal", NORMAL_OPS), ("reduce", REDUCE_OPS)):
        edges = genotype.cells[cell_type]
        assert len(edges) == 4
        assert all(edge.op in ops and edge.op != "none" for edge in edges)
    assert (tmp_path / "genotype.json").is_file()
