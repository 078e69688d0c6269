"""One-shot machinery, the Cream board and its meta-gradient: brute force and hand-made cases."""

import copy
import re
from collections import Counter

import pytest
import torch
import torch.nn.functional as F
from support import TINY_SPD
from torch.nn.utils import parameters_to_vector, vector_to_parameters

from manifold_nas.config import parse_config
from manifold_nas.cost.measure import count_parameters, preserved_buffers
from manifold_nas.run.context import Run
from manifold_nas.space.cell import ChosenEdge, MixedEdge, SearchCell, cell_arch_spec
from manifold_nas.space.genotype import Genotype
from manifold_nas.space.opset import OPSETS
from manifold_nas.space.sampling import genotype_key, genotype_weights
from manifold_nas.strategies.one_shot.cream import (
    BoardEntry,
    Cream,
    MetaMatchingNetwork,
    soft_target_loss,
    unrolled_meta_gradient,
    update_board,
)
from manifold_nas.strategies.one_shot.paths import (
    PathCost,
    PathSampler,
    evaluate_path,
    recalibrate_batch_norm,
    search_paths,
)
from manifold_nas.strategies.one_shot.spos import SinglePathOneShot

TOY = cell_arch_spec(("none", "a", "b", "c"), n_inputs=2, n_nodes=3, keep=2)

TINY_VOLUMETRIC = {
    "seed": 0,
    "data": {
        "name": "synthetic_shapes",
        "n_train": 4,
        "n_test": 2,
        "shape": [32, 32, 8],
        "patch_size": [16, 16, 8],
        "samples_per_volume": 1,
    },
    "network": {"name": "vnas", "opset": "volumetric", "channels": [4, 8], "strides": [[2, 2, 1]]},
    "search": {"epochs": 2, "batch_size": 2, "max_steps_per_epoch": 2},
    "train": {"epochs": 1, "batch_size": 2},
}


def tiny_run(config_dict):
    return Run(parse_config(copy.deepcopy(config_dict)), quiet=True)


def first_batch(run, dataset, size):
    return run.inputs(next(iter(run.loader(dataset, size, False))))


# -- paths ---------------------------------------------------------------------------
def test_sampled_paths_keep_the_spaces_edges_per_node_and_never_the_zero_op():
    sampler = PathSampler({"normal": TOY}, "toy", "none", seed=0)
    for _ in range(50):
        edges = sampler.draw().cells["normal"]
        per_node = Counter(e.target for e in edges)
        assert per_node == {2: 2, 3: 2, 4: 2}
        assert all(e.op != "none" and (e.source, e.target) in TOY.edges for e in edges)


def test_a_prior_draws_ops_in_proportion_to_their_weights_and_never_a_weightless_op():
    sampler = PathSampler({"normal": TOY}, "toy", "none", prior={"a": 3.0, "b": 1.0}, seed=1)
    ops = Counter(e.op for _ in range(1000) for e in sampler.draw().cells["normal"])
    assert ops["c"] == 0
    assert abs(ops["a"] / (ops["a"] + ops["b"]) - 0.75) < 0.03  # 6000 draws: sd 0.006


def test_a_prior_naming_an_op_outside_the_space_is_refused():
    with pytest.raises(ValueError, match="'conv9'"):
        PathSampler({"normal": TOY}, "toy", "none", prior={"conv9": 1.0})


def test_a_restored_sampler_draws_the_same_paths():
    sampler = PathSampler({"normal": TOY}, "toy", "none", seed=2)
    sampler.draw()
    state = copy.deepcopy(sampler.state_dict())
    expected = [genotype_key(sampler.draw()) for _ in range(5)]
    again = PathSampler({"normal": TOY}, "toy", "none", seed=99)
    again.load_state_dict(state)
    assert [genotype_key(again.draw()) for _ in range(5)] == expected


def test_search_over_paths_scores_distinct_paths_and_stops_when_the_space_is_exhausted():
    spec = cell_arch_spec(("a", "b"), n_inputs=1, n_nodes=2, keep=1)  # 2 * (2 * 2) = 8 paths
    sampler = PathSampler({"c": spec}, "toy", None, seed=0)
    scored = search_paths(lambda p: 0.0, sampler, 20, "evolution", population=3)
    assert len(scored) == 8
    assert len({genotype_key(p) for p, _ in scored}) == 8


def test_evolution_finds_the_best_path_of_a_small_space_within_its_budget():
    sampler = PathSampler({"normal": TOY}, "toy", "none", seed=3)

    def score(path):
        return sum(e.op == "c" for e in path.cells["normal"])

    scored = search_paths(score, sampler, 150, "evolution", population=8, mutation=0.3)
    assert max(s for _, s in scored) == 6  # every kept edge running "c"


# -- single-path forward -----------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(n for n in OPSETS.list() if OPSETS.get(n).examples))
def test_a_one_hot_mixed_edge_returns_the_chosen_ops_output_unchanged(name):
    # For SPD this checks that the Fréchet mix of one output is that output.
    opset = OPSETS.get(name)
    example = opset.examples()[0]
    torch.manual_seed(0)
    edge = MixedEdge(opset, opset.op_names, example.spec).eval()
    x = example.inputs.to(opset.dtype) if opset.dtype else example.inputs
    for k in range(len(opset.op_names)):
        weights = torch.zeros(len(opset.op_names), dtype=x.dtype)
        weights[k] = 1.0
        assert torch.equal(edge(x, weights), edge.ops[k](x)), opset.op_names[k]


def _inherit_darts(derived, supernet_state, genotype):
    """Load the supernet's weights of ``genotype``'s ops into the derived DARTS network."""
    state = derived.state_dict()
    for key in state:
        match = re.fullmatch(r"cells\.(\d+)\.ops\.(\d+)\.(.*)", key)
        source = key
        if match:
            cell, index, rest = int(match[1]), int(match[2]), match[3]
            edge = derived.cells[cell].chosen[index]
            row = derived.cells[cell].spec.edges.index((edge.source, edge.target))
            column = derived.cells[cell].spec.ops.index(edge.op)
            source = f"cells.{cell}.edges.{row}.ops.{column}.{rest}"
        if source in supernet_state:
            state[key] = supernet_state[source]
        else:  # only the derived network's affine batch-norm parameters (1 and 0: the identity)
            assert key.endswith((".weight", ".bias")) and "cells" in key, key
    derived.load_state_dict(state)


def _train_a_few_paths(run, supernet, steps=3):
    sampler = PathSampler(supernet.specs, run.opset.name, run.opset.zero, seed=5)
    optimizer = torch.optim.SGD(supernet.weight_parameters(), lr=0.05)
    for _, batch in zip(range(steps), run.loader(run.weight_set, 16, True, 0)):
        x, y = run.inputs(batch)
        weights = genotype_weights(sampler.draw(), supernet.specs, run.dtype)
        optimizer.zero_grad()
        run.task.loss(supernet(x, weights), y).backward()
        optimizer.step()


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_single_path_forward_equals_the_derived_network_with_the_inherited_weights(
    tiny_config_dict, mode
):
    run = tiny_run(tiny_config_dict)
    supernet = run.build_supernet()
    _train_a_few_paths(run, supernet)  # non-trivial weights and running statistics
    path = PathSampler(supernet.specs, "darts", "none", seed=11).draw()
    derived = run.build_derived(path)
    _inherit_darts(derived, supernet.network.state_dict(), path)
    x, _ = first_batch(run, run.valid_set, 16)
    supernet.train(mode == "train")
    derived.train(mode == "train")
    with torch.no_grad():
        assert torch.allclose(
            supernet(x, genotype_weights(path, supernet.specs)), derived(x), atol=1e-6
        )


def test_single_path_forward_equals_the_derived_volumetric_network():
    run = tiny_run(TINY_VOLUMETRIC)
    supernet = run.build_supernet().eval()
    path = PathSampler(supernet.specs, "volumetric", None, seed=0).draw()
    derived = run.build_derived(path).eval()
    # The volumetric cells key their ops by name, so the derived names are the supernet's.
    supernet_state = supernet.network.state_dict()
    derived.load_state_dict({k: supernet_state[k] for k in derived.state_dict()})
    x, _ = first_batch(run, run.valid_set, 1)
    with torch.no_grad():
        assert torch.allclose(supernet(x, genotype_weights(path, supernet.specs)), derived(x))


@pytest.mark.parametrize("domain", ["vision", "spd"])
def test_a_spos_step_gives_gradients_to_the_sampled_ops_only(tiny_config_dict, domain):
    config = tiny_config_dict if domain == "vision" else TINY_SPD
    run = tiny_run(config)
    spos = SinglePathOneShot()
    spos.setup(run)
    path = spos.sampler.draw()
    spos.train_step(run, path, next(spos.weight_batches(run, 0)))
    chosen = {(name, e.source, e.target, e.op) for name, edges in path.cells.items() for e in edges}
    cells = [m for m in spos.supernet.modules() if isinstance(m, SearchCell)]
    assert cells
    trained = untouched = 0
    for cell in cells:
        for (source, target), edge in zip(cell.spec.edges, cell.edges):
            for op_name, op in zip(cell.spec.ops, edge.ops):
                grads = [p.grad for p in op.parameters()]
                if (cell.cell_type, source, target, op_name) in chosen:
                    assert all(g is not None for g in grads)
                    trained += len(grads)
                else:
                    assert all(g is None for g in grads), (source, target, op_name)
                    untouched += len(grads)
    assert trained > 0 and untouched > 0


# -- batch-norm recalibration -----------------------------------------------------------------
def test_recalibration_makes_running_statistics_the_average_of_the_batch_statistics():
    torch.manual_seed(0)
    norm = torch.nn.BatchNorm1d(3, momentum=0.3).double().eval()
    batches = [torch.randn(8, 3, dtype=torch.float64) * (k + 1) + k for k in range(3)]
    assert recalibrate_batch_norm(norm, batches) == 3
    expected_mean = torch.stack([b.mean(0) for b in batches]).mean(0)
    expected_var = torch.stack([b.var(0, unbiased=True) for b in batches]).mean(0)
    assert torch.allclose(norm.running_mean, expected_mean)
    assert torch.allclose(norm.running_var, expected_var)
    assert norm.momentum == 0.3 and not norm.training


def test_scoring_a_path_leaves_the_supernets_buffers_as_they_were(tiny_config_dict):
    run = tiny_run(tiny_config_dict)
    supernet = run.build_supernet()
    _train_a_few_paths(run, supernet)
    before = {k: v.clone() for k, v in supernet.state_dict().items()}
    path = PathSampler(supernet.specs, "darts", "none", seed=2).draw()
    x, _ = first_batch(run, run.weight_set, 32)
    metrics = evaluate_path(run, supernet, path, supernet.specs, [x])
    assert 0.0 <= metrics["accuracy"] <= 1.0
    after = supernet.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_a_paths_parameter_cost_is_its_derived_networks_and_draws_no_random_numbers(
    tiny_config_dict,
):
    run = tiny_run(tiny_config_dict)
    supernet = run.build_supernet()
    path = PathSampler(supernet.specs, "darts", "none", seed=4).draw()
    cost = PathCost(run, supernet.network, "params")
    state = torch.get_rng_state()
    value = cost(path)
    assert torch.equal(torch.get_rng_state(), state)
    assert value == count_parameters(run.build_derived(path))


# -- the board ---------------------------------------------------------------------------------
def entry(name, accuracy, cost, step=0):
    path = Genotype("toy", {"normal": (ChosenEdge(name, 0, 1),)})
    return BoardEntry(path, accuracy, cost, torch.zeros(1), step)


def keys(board):
    return [e.path.cells["normal"][0].op for e in board]


FULL = [entry("p", 0.9, 100), entry("q", 0.8, 100), entry("r", 0.6, 100)]


def test_a_path_enters_a_board_that_is_not_full_whatever_its_score():
    board, entered = update_board(FULL[:2], entry("new", 0.1, 500), size=3, margin=0.05)
    assert entered and keys(board) == ["p", "q", "new"]


def test_a_path_beating_the_worst_by_more_than_the_margin_replaces_it():
    board, entered = update_board(FULL, entry("new", 0.7, 500), size=3, margin=0.05)
    assert entered and keys(board) == ["p", "q", "new"]


def test_a_path_beating_the_worst_by_less_than_the_margin_at_a_higher_cost_stays_out():
    board, entered = update_board(FULL, entry("new", 0.63, 101), size=3, margin=0.05)
    assert not entered and keys(board) == ["p", "q", "r"]


def test_a_path_beating_the_worst_within_the_margin_at_a_lower_cost_replaces_it():
    board, entered = update_board(FULL, entry("new", 0.63, 99), size=3, margin=0.05)
    assert entered and keys(board) == ["p", "q", "new"]


def test_a_path_only_cheaper_than_the_worst_but_not_better_stays_out():
    board, entered = update_board(FULL, entry("new", 0.6, 1), size=3, margin=0.05)
    assert not entered and keys(board) == ["p", "q", "r"]


def test_a_path_already_on_the_board_has_its_entry_refreshed_not_duplicated():
    board, entered = update_board(FULL, entry("p", 0.7, 100, step=9), size=3, margin=0.05)
    assert entered and keys(board) == ["q", "p", "r"]
    assert board[1].step == 9


def test_the_board_stores_the_students_probe_outputs_not_the_teachers(tiny_config_dict):
    run = tiny_run(tiny_config_dict)
    cream = Cream(warmup_epochs=0, board_size=10, meta_interval=1)
    cream.setup(run)
    cream.start_epoch(run)
    batches = cream.weight_batches(run, 0)
    teacher_path = cream.sampler.draw()
    cream.train_step(run, teacher_path, next(batches))
    student_path = cream.sampler.draw()
    before = {k: v.clone() for k, v in cream.supernet.state_dict().items()}
    record = cream.train_step(run, student_path, next(batches))
    assert record["board"]["teacher"] == 0 and record["board"]["entered"]
    stored = next(e for e in cream.board if e.key == genotype_key(student_path)).outputs

    cream.supernet.load_state_dict(before)  # the weights the student was measured with
    cream.supernet.train()

    def probe_probabilities(path):
        with torch.no_grad(), preserved_buffers(cream.supernet):
            return cream.supernet(cream.probe, genotype_weights(path, cream.specs)).softmax(dim=1)

    assert torch.allclose(stored, probe_probabilities(student_path))
    assert not torch.allclose(stored, probe_probabilities(teacher_path), atol=1e-3)


# -- the meta-gradient --------------------------------------------------------------------------
def test_the_meta_gradient_matches_finite_differences_of_the_unrolled_objective(
    tiny_config_dict,
):
    run = tiny_run(tiny_config_dict)
    supernet = run.build_supernet().double().train()
    specs = supernet.specs
    sampler = PathSampler(specs, "darts", "none", seed=7)
    student = genotype_weights(sampler.draw(), specs, torch.float64)
    teacher = genotype_weights(sampler.draw(), specs, torch.float64)
    (x, y), (x_val, y_val) = (
        first_batch(run, run.weight_set, 16),
        first_batch(run, run.valid_set, 16),
    )
    x, x_val = x.double(), x_val.double()
    probe = x_val[:4]
    with torch.no_grad(), preserved_buffers(supernet):
        targets = supernet(x, teacher).softmax(dim=1)
        student_probe = supernet(probe, student).softmax(dim=1)
        stored = supernet(probe, teacher).softmax(dim=1).unsqueeze(0)
    meta = MetaMatchingNetwork(4 * 10, torch.float64)
    torch.manual_seed(0)
    with torch.no_grad():
        meta.linear.weight.normal_(0.0, 3.0)  # away from m = 1/2, where sigma'' vanishes
    params = dict(supernet.named_weight_parameters())
    with preserved_buffers(supernet):
        out = supernet(x, student)
        task_loss, kd_loss = F.cross_entropy(out, y), soft_target_loss(out, targets)
        kd = torch.autograd.grad(
            kd_loss, list(params.values()), retain_graph=True, allow_unused=True
        )
        task = torch.autograd.grad(task_loss, list(params.values()), allow_unused=True)
    lr = 0.5

    def weight():
        return torch.sigmoid(meta(student_probe, stored)[0])

    grads, _ = unrolled_meta_gradient(
        supernet,
        student,
        params,
        kd,
        task,
        weight,
        list(meta.parameters()),
        (x_val, y_val),
        F.cross_entropy,
        lr,
    )

    def objective(theta):
        """L_val after a real SGD step on the mixed loss, m from meta-parameters ``theta``."""
        vector_to_parameters(theta, meta.parameters())
        m = float(weight().detach())
        saved = {k: v.clone() for k, v in supernet.state_dict().items()}
        for p, g_kd, g_task in zip(params.values(), kd, task):
            if g_kd is not None or g_task is not None:
                g_kd = torch.zeros_like(p) if g_kd is None else g_kd
                g_task = torch.zeros_like(p) if g_task is None else g_task
                p.grad = (m * g_kd + (2 - m) * g_task) / 2
        torch.optim.SGD(params.values(), lr=lr).step()
        with torch.no_grad(), preserved_buffers(supernet):
            loss = float(F.cross_entropy(supernet(x_val, student), y_val))
        supernet.load_state_dict(saved)
        for p in params.values():
            p.grad = None
        return loss

    theta = parameters_to_vector(meta.parameters()).detach().clone()
    analytic = parameters_to_vector(grads)
    generator = torch.Generator().manual_seed(1)
    for _ in range(3):
        v = torch.randn(theta.shape, generator=generator, dtype=torch.float64)
        eps = 1e-4
        numeric = (objective(theta + eps * v) - objective(theta - eps * v)) / (2 * eps)
        assert abs(float(analytic @ v) - numeric) <= 1e-6 * max(1.0, abs(numeric)) + 1e-9
    assert float(analytic.abs().max()) > 1e-6  # a non-trivial check
