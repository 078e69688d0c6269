"""Contract tests driven by the registries: every registered component, future ones included.

Like timm's model-zoo tests and geoopt's all-manifold tests, each test is
parametrized over a registry's ``list()``, so a new op set, relaxation,
selector, network or strategy is checked the moment it is registered. Op sets
and networks carry their own probes (``OpSet.examples``,
``network_example``); a built-in one without them fails here.
"""

from __future__ import annotations

import random

import pytest
import torch

from manifold_nas.config import parse_config
from manifold_nas.cost.measure import count_parameters
from manifold_nas.errors import UserInputError
from manifold_nas.run.context import Run, build_network
from manifold_nas.search import search
from manifold_nas.space.cell import ArchSpec, cell_arch_spec
from manifold_nas.space.contracts import SearchableNetwork, check_searchable
from manifold_nas.space.genotype import Genotype
from manifold_nas.space.networks import NETWORKS
from manifold_nas.space.opset import OPSETS
from manifold_nas.space.relaxations import RELAXATIONS
from manifold_nas.space.sampling import genotype_weights, random_genotype
from manifold_nas.space.selection import SELECTORS
from manifold_nas.strategies import STRATEGIES, Strategy

BUILTIN_OPSETS = {"darts", "nb201", "spd", "volumetric"}
BUILTIN_NETWORKS = {
    "darts_cnn",
    "nb201",
    "simple_cnn",
    "spdnetnas",
    "spdnet",
    "spdnetbn",
    "vnas",
    "monai_unet",
}


def _op_cases():
    cases = []
    for name in OPSETS.list():
        opset = OPSETS.get(name)
        if opset.examples is None:
            cases.append(pytest.param(name, None, None, id=f"{name}-no-examples"))
            continue
        for k in range(len(opset.examples())):
            for op in opset.op_names:
                cases.append(pytest.param(name, op, k, id=f"{name}-{op}-{k}"))
    return cases


@pytest.mark.parametrize("opset_name, op, k", _op_cases())
def test_every_op_of_every_opset_keeps_shape_dtype_invariant_and_finite_gradients(
    opset_name, op, k
):
    opset = OPSETS.get(opset_name)
    if opset.examples is None:
        if opset_name in BUILTIN_OPSETS:
            pytest.fail(f"built-in op set {opset_name!r} declares no examples")
        pytest.skip(f"op set {opset_name!r} declares no examples")
    torch.manual_seed(0)
    example = opset.examples()[k]
    module = opset.build(op, example.spec)
    x = example.inputs.clone().requires_grad_(True)
    out = module(x)
    assert tuple(out.shape) == example.output_shape, (op, example.spec)
    if opset.dtype is not None:
        assert out.dtype == opset.dtype
        assert all(p.dtype == opset.dtype for p in module.parameters())
    assert torch.isfinite(out).all()
    if example.check is not None:
        example.check(out.detach())
    if not out.requires_grad:  # a constant op (DARTS' zero, the SPD identity)
        assert op == opset.zero, f"{op} does not depend on its input"
        return
    (out * torch.randn_like(out)).sum().backward()
    grads = [x.grad] + [p.grad for p in module.parameters() if p.grad is not None]
    assert all(torch.isfinite(g).all() for g in grads if g is not None)


@pytest.mark.parametrize("name", RELAXATIONS.list())
def test_every_relaxation_gives_distributions_weights_and_a_differentiable_regularizer(name):
    torch.manual_seed(0)
    relaxation = RELAXATIONS.get(name)()
    param = relaxation.init_param((5, 4), torch.float64)
    probabilities = relaxation.probabilities(param)
    assert probabilities.shape == (5, 4)
    assert torch.allclose(probabilities.sum(-1), torch.ones(5, dtype=torch.float64), atol=1e-8)
    assert (probabilities >= 0).all()
    for progress in (0.0, 0.5, 1.0):
        relaxation.set_progress(progress)
        for training in (True, False):
            weights = relaxation.weights(param, training=training)
            assert weights.shape == (5, 4) and torch.isfinite(weights).all()
    loss = (relaxation.weights(param, training=True) * torch.arange(4.0)).sum()
    loss = loss + relaxation.regularizer(param)
    (grad,) = torch.autograd.grad(loss, param)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


@pytest.mark.parametrize("name", SELECTORS.list())
def test_every_selector_returns_keep_edges_per_node_and_no_zero_op(
    name, tiny_config_dict, tmp_path
):
    tiny_config_dict["search"]["epochs"] = 1
    options = {"finetune_epochs": 0} if name == "perturbation" else {}
    tiny_config_dict["selection"] = {"name": name, **options}
    genotype = search(parse_config(tiny_config_dict), tmp_path, quiet=True).genotype
    for cell, edges in genotype.cells.items():
        targets = [e.target for e in edges]
        assert all(targets.count(t) == 2 for t in set(targets)), cell
        assert all(e.op != "none" for e in edges)


def _network_config(name):
    example = getattr(NETWORKS.get(name), "example_config", None)
    if example is None:
        if name in BUILTIN_NETWORKS:
            pytest.fail(f"built-in network {name!r} declares no example config")
        pytest.skip(f"network {name!r} declares no example config")
    network = {"name": name, **example["network"]}
    return parse_config({"data": example["data"], "network": network, "threads": 1})


@pytest.mark.parametrize("name", NETWORKS.list())
def test_every_network_builds_runs_and_round_trips_its_genotypes(name, tmp_path):
    config = _network_config(name)
    run = Run(config)
    torch.manual_seed(0)
    network, opset = build_network(config, run.bundle)
    x, y = run.inputs(next(iter(run.loader(run.bundle.train, 2, False))))
    specs = getattr(network, "arch_specs", {})
    if not specs:
        out = network(x)
        assert out.shape[:2] == (x.shape[0], run.bundle.num_classes)
        return
    assert isinstance(network, SearchableNetwork)
    check_searchable(network, name)
    uniform = {k: torch.full(s.shape, 1.0 / len(s.ops), dtype=opset.dtype or torch.float32)
               for k, s in specs.items()}  # fmt: skip
    out = network(x, uniform)
    assert out.shape[:2] == (x.shape[0], run.bundle.num_classes)
    run.task.loss(out, y).backward()
    assert all(torch.isfinite(p.grad).all() for p in network.parameters() if p.grad is not None)

    genotype = random_genotype(specs, opset.name, opset.zero, random.Random(0))
    derived = build_network(config, run.bundle, genotype)[0]
    assert derived(x).shape == out.shape
    assert count_parameters(derived) < count_parameters(network)
    # the derived network computes the supernet path of the same genotype
    genotype.save(tmp_path / "g.json")
    again = Genotype.load(tmp_path / "g.json")
    assert again.cells == genotype.cells
    assert count_parameters(build_network(config, run.bundle, again)[0]) == count_parameters(
        derived
    )
    weights = genotype_weights(genotype, specs, opset.dtype or torch.float32)
    assert network(x, weights).shape == out.shape


@pytest.mark.parametrize("name", STRATEGIES.list())
def test_every_strategy_takes_only_keyword_options_with_defaults(name):
    import inspect

    strategy_class = STRATEGIES.get(name)
    for parameter in list(inspect.signature(strategy_class).parameters.values()):
        assert parameter.default is not inspect.Parameter.empty, (name, parameter.name)
    assert issubclass(strategy_class, Strategy)
    assert isinstance(strategy_class(), Strategy)


def test_a_network_without_a_search_space_is_refused_as_searchable():
    with pytest.raises(UserInputError, match="no search space"):
        check_searchable(torch.nn.Linear(2, 2).__class__.__new__(_NoSpace), "plain")
    with pytest.raises(UserInputError, match="has no 'arch_specs'"):
        check_searchable(torch.nn.Linear(2, 2), "linear")


class _NoSpace(torch.nn.Module):
    arch_specs: dict[str, ArchSpec] = {}


def test_genotype_weights_select_exactly_the_genotype_path():
    spec = cell_arch_spec(("none", "a", "b"), n_inputs=2, n_nodes=2, keep=2)
    genotype = random_genotype({"normal": spec}, "toy", "none", random.Random(3))
    weights = genotype_weights(genotype, {"normal": spec})["normal"]
    assert weights.sum() == len(genotype.cells["normal"])
    for edge in genotype.cells["normal"]:
        row = spec.edges.index((edge.source, edge.target))
        assert weights[row, spec.ops.index(edge.op)] == 1.0
