"""DNA's parts: teacher stages, adapters, feature losses, student blocks and their candidates."""

import copy
import itertools
import math
import random

import pytest
import torch
from torch import nn

from manifold_nas.domains.vision.networks import DartsNetwork, SimpleCNN
from manifold_nas.domains.volumetric.baselines import MonaiUNetBaseline, monai_unet_stage_names
from manifold_nas.domains.volumetric.network import VolumetricNet
from manifold_nas.errors import UserInputError
from manifold_nas.space.cell import ChosenEdge, cell_arch_spec
from manifold_nas.space.contracts import INPUT
from manifold_nas.space.opset import OPSETS
from manifold_nas.space.sampling import genotype_weights, random_genotype
from manifold_nas.strategies.dna.combination import combination_budget
from manifold_nas.strategies.dna.distillation import (
    DistillationBlock,
    FeatureAdapter,
    block_targets,
    mean_squared_error,
    relative_l1,
)
from manifold_nas.strategies.dna.strategy import BlockwiseDistillation
from manifold_nas.strategies.dna.teacher import (
    BlockStages,
    ModuleStages,
    parse_teacher_spec,
    teacher_stages,
)
from manifold_nas.strategies.dna.units import (
    candidate_weights,
    choice_units,
    combined_genotype,
    student_blocks,
    unit_candidate_of,
    unit_candidates,
    unit_space_size,
)

DARTS = OPSETS.get("darts")
VOLUMETRIC = OPSETS.get("volumetric")


def tiny_darts(genotype=None, layers=3):
    torch.manual_seed(0)
    return DartsNetwork(DARTS, 1, 10, genotype, channels=4, layers=layers, nodes=2,
                        stem_multiplier=1).eval()  # fmt: skip


def tiny_vnas(choices=None):
    torch.manual_seed(0)
    return VolumetricNet(1, 3, channels=(4, 8, 8), strides=[(2, 2, 1), 2], choices=choices,
                         cells_per_level=2).eval()  # fmt: skip


# -- teacher stages ------------------------------------------------------------------------
def test_teacher_stages_by_module_names_equal_the_manual_forwards():
    torch.manual_seed(0)
    teacher = SimpleCNN(1, 10, channels=4, depth=1).eval()
    x = torch.randn(3, 1, 8, 8)
    stages = ModuleStages(teacher, [INPUT, "features.2", "features.5", "features.8", ""])
    features = stages.features(x)
    layers = list(teacher.features)
    expected = [x, nn.Sequential(*layers[:3])(x), nn.Sequential(*layers[:6])(x), teacher.features(x),
                teacher(x)]  # fmt: skip
    assert len(features) == len(expected)
    for got, want in zip(features, expected):
        assert torch.equal(got, want)


def test_teacher_features_are_taken_in_eval_mode_and_leave_the_mode_as_it_was():
    torch.manual_seed(0)
    teacher = SimpleCNN(1, 10, channels=4, depth=1).train()
    x = torch.randn(3, 1, 8, 8)
    features = ModuleStages(teacher, ["features.2", "features.5"]).features(x)
    assert teacher.training and all(m.training for m in teacher.modules())
    assert torch.equal(features[1], teacher.eval().features[:6](x))


def test_teacher_stage_names_out_of_execution_order_are_refused():
    teacher = SimpleCNN(1, 10, channels=4, depth=1)
    with pytest.raises(UserInputError, match="execution order"):
        ModuleStages(teacher, ["features.5", "features.2"]).features(torch.randn(2, 1, 8, 8))


def test_unknown_teacher_stage_name_is_refused_with_the_modules():
    with pytest.raises(UserInputError, match="no module 'features.99'.*features"):
        ModuleStages(SimpleCNN(1, 10, channels=4, depth=1), [INPUT, "features.99"])


def test_stitched_teacher_runs_its_head_on_the_replacement_of_its_last_stage():
    torch.manual_seed(0)
    teacher = SimpleCNN(1, 10, channels=4, depth=1).eval()
    x = torch.randn(3, 1, 8, 8)
    stages = ModuleStages(teacher, ["features.2", "features.8"])
    middle = copy.deepcopy(teacher.features[3:])  # the hooked modules run once
    assert torch.equal(stages.stitched(x, middle), teacher(x))
    zeros = torch.zeros(3, 16, 2, 2)
    assert torch.equal(stages.stitched(x, lambda t0: zeros), teacher.head(zeros))


def test_monai_unet_is_cut_at_its_downs_bottom_and_ups():
    torch.manual_seed(0)
    unet = MonaiUNetBaseline(1, 3, channels=(4, 8, 16), strides=[(2, 2, 1), 2]).eval()
    names = monai_unet_stage_names(unet)
    assert names == [
        INPUT,
        "unet.model.0",
        "unet.model.1.submodule.0",
        "unet.model.1.submodule.1.submodule",
        "unet.model.1.submodule.2",
        "unet.model.2",
    ]
    x = torch.randn(2, 1, 16, 16, 8)
    features = teacher_stages(unet).features(x)
    shapes = [tuple(f.shape[1:]) for f in features]
    assert shapes == [(1, 16, 16, 8), (4, 8, 8, 8), (8, 4, 4, 4), (16, 4, 4, 4), (4, 8, 8, 8),
                      (3, 16, 16, 8)]  # fmt: skip
    assert torch.equal(features[-1], unet(x))


def test_a_derived_network_teaches_at_its_own_block_boundaries():
    genotype = random_genotype(tiny_darts().arch_specs, "darts", "none", random.Random(1))
    derived = tiny_darts(genotype)
    stages = teacher_stages(derived)
    assert isinstance(stages, BlockStages)
    x = torch.randn(2, 1, 8, 8)
    features = stages.features(x)
    assert len(features) == 4 and torch.equal(derived.head(features[-1]), derived(x))
    assert torch.equal(stages.stitched(x, lambda t0: features[-1]), derived(x))


def test_a_teacher_without_blocks_or_names_is_refused():
    with pytest.raises(UserInputError, match="teacher.stages"):
        teacher_stages(SimpleCNN(1, 10))


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"network": "monai_unet"}, "epochs >= 1"),
        ({"run": "a", "network": "b"}, "exactly one"),
        ({"module": "no_colon"}, "package.module:factory"),
        ({"run": "a", "epochs": 3}, "already trained"),
        ({"network": "x", "epochs": 1, "train": {"epochs": 2}}, "teacher.train"),
        ({"network": "x", "epochs": 1, "stage": []}, "unknown teacher key 'stage'"),
    ],
)
def test_malformed_teacher_specs_are_refused_with_the_reason(raw, message):
    with pytest.raises(ValueError, match=message):
        parse_teacher_spec(raw)


def test_dna_options_are_checked_when_the_strategy_is_built():
    with pytest.raises(ValueError, match="rank_by"):
        BlockwiseDistillation(rank_by="l2")
    with pytest.raises(ValueError, match="either budget or teacher_fraction"):
        BlockwiseDistillation(budget=10.0, teacher_fraction=0.5)
    with pytest.raises(ValueError, match="memory model"):
        BlockwiseDistillation(cost="memory", teacher_fraction=0.5)


# -- adapters and losses ------------------------------------------------------------------
def test_adapter_bridges_a_channel_and_resolution_mismatch_by_pooling_then_a_1x1_conv():
    torch.manual_seed(0)
    adapter = FeatureAdapter((3, 8, 8), (5, 4, 4))
    x = torch.randn(2, 3, 8, 8)
    pooled = x.reshape(2, 3, 4, 2, 4, 2).mean(dim=(3, 5))
    expected = torch.einsum("oc,bchw->bohw", adapter.project.weight[:, :, 0, 0], pooled)
    expected = expected + adapter.project.bias[None, :, None, None]
    assert torch.allclose(adapter(x), expected, atol=1e-6)
    assert adapter.describe() == {"from": [3, 8, 8], "to": [5, 4, 4], "resize": True,
                                  "project": True, "parameters": 5 * 3 + 5}  # fmt: skip


def test_adapter_between_equal_shapes_is_the_identity_without_parameters():
    adapter = FeatureAdapter((4, 6, 6, 2), (4, 6, 6, 2))
    x = torch.randn(2, 4, 6, 6, 2)
    assert adapter.is_identity and not list(adapter.parameters())
    assert torch.equal(adapter(x), x)


def test_adapter_refuses_features_with_different_spatial_axes():
    with pytest.raises(UserInputError, match="spatial axes"):
        FeatureAdapter((4, 8, 8), (4, 8, 8, 2))


def test_distillation_block_adapts_teacher_inputs_and_its_output_into_the_teacher_space():
    net = tiny_darts()
    block = net.blocks()[1]
    inputs = [FeatureAdapter((2, 8, 8), (4, 8, 8)), FeatureAdapter((3, 8, 8), (8, 8, 8))]
    distill = DistillationBlock(block, inputs, FeatureAdapter((16, 4, 4), (6, 2, 2))).eval()
    genotype = random_genotype(net.arch_specs, "darts", "none", random.Random(0))
    weights = genotype_weights(genotype, net.arch_specs)
    teacher = (torch.randn(2, 2, 8, 8), torch.randn(2, 3, 8, 8))
    out = distill(teacher, weights)
    adapted = [a(t) for a, t in zip(inputs, teacher)]
    assert out.shape == (2, 6, 2, 2)
    assert torch.equal(out, distill.adapters["output"](block(adapted, weights)))


def test_relative_l1_is_the_mean_absolute_error_over_the_targets_standard_deviation():
    target = torch.tensor([[1.0, 3.0], [5.0, 7.0]])
    prediction = torch.tensor([[2.0, 3.0], [5.0, 4.0]])
    std = math.sqrt(sum((v - 4.0) ** 2 for v in (1, 3, 5, 7)) / 3)
    assert relative_l1(prediction, target).item() == pytest.approx((1 + 0 + 0 + 3) / 4 / std)
    assert mean_squared_error(prediction, target).item() == pytest.approx((1 + 9) / 4)


def test_relative_l1_is_invariant_to_a_common_rescaling():
    torch.manual_seed(0)
    prediction, target = torch.randn(4, 3, 5), torch.randn(4, 3, 5)
    assert relative_l1(7 * prediction, 7 * target).item() == pytest.approx(
        relative_l1(prediction, target).item(), rel=1e-5
    )


# -- student blocks --------------------------------------------------------------------------
@pytest.mark.parametrize("network", ["darts", "vnas"])
def test_chaining_the_blocks_reproduces_the_forward_bit_for_bit(network):
    net = tiny_darts() if network == "darts" else tiny_vnas()
    x = torch.randn(2, 1, 8, 8) if network == "darts" else torch.randn(2, 1, 16, 16, 8)
    genotype = random_genotype(net.arch_specs, net_opset(network), "none", random.Random(2))
    weights = genotype_weights(genotype, net.arch_specs)
    features = net.block_features(x, weights)
    assert len(features) == len(net.blocks()) + 1
    assert torch.equal(net.head(features[-1]), net(x, weights))


def net_opset(network):
    return "darts" if network == "darts" else "volumetric"


def test_a_darts_block_on_one_path_computes_the_derived_cell():
    net = tiny_darts()
    genotype = random_genotype(net.arch_specs, "darts", "none", random.Random(3))
    derived = tiny_darts(genotype)
    for cell, derived_cell in zip(net.cells, derived.cells):
        # the derived cell's affine batch norms start at the identity, as the search cell's
        derived_cell.preprocess.load_state_dict(cell.preprocess.state_dict(), strict=False)
        for op, edge in zip(derived_cell.ops, derived_cell.chosen):
            row = cell.spec.edges.index((edge.source, edge.target))
            source = cell.edges[row].ops[cell.spec.ops.index(edge.op)]
            op.load_state_dict(source.state_dict(), strict=False)
    weights = genotype_weights(genotype, net.arch_specs)
    features = [torch.randn(2, 4, 8, 8), torch.randn(2, 8, 8, 8), torch.randn(2, 16, 4, 4)]
    for block, derived_block in zip(net.blocks(), derived.blocks()):
        inputs = [features[j] for j in block.inputs]
        assert torch.allclose(block(inputs, weights), derived_block(inputs), atol=1e-6)


def test_a_vnas_block_on_one_path_computes_the_derived_block():
    net = tiny_vnas()
    genotype = random_genotype(net.arch_specs, "volumetric", None, random.Random(4))
    choices = [e.op for e in sorted(genotype.cells["cells"], key=lambda e: e.target)]
    derived = tiny_vnas(choices)
    derived.load_state_dict(net.state_dict(), strict=False)
    weights = genotype_weights(genotype, net.arch_specs)
    x = torch.randn(2, 1, 16, 16, 8)
    features = derived.block_features(x)
    for block, derived_block in zip(net.blocks(), derived.blocks()):
        inputs = [features[j] for j in block.inputs]
        assert torch.equal(block(inputs, weights), derived_block(inputs))


def test_vnas_decoder_blocks_read_the_skip_feature_of_their_encoder_level():
    blocks = tiny_vnas().blocks()
    assert [b.name for b in blocks] == ["encoder level 0", "encoder level 1", "encoder level 2",
                                        "decoder level 1", "decoder level 0"]  # fmt: skip
    assert [b.inputs for b in blocks] == [(0,), (1,), (2,), (3, 2), (4, 1)]
    assert [b.rows["cells"] for b in blocks] == [(0, 1), (2, 3), (4, 5), (6, 7), (8, 9)]


def test_darts_cells_of_one_type_share_a_choice_unit():
    net = tiny_darts(layers=4)
    units = choice_units(net.blocks(), net.arch_specs)
    types = [cell.cell_type for cell in net.cells]
    assert types == ["normal", "reduce", "reduce", "normal"]
    assert [u.blocks for u in units] == [(0, 3), (1, 2)]


# -- a unit's candidates ---------------------------------------------------------------------
def test_a_small_unit_is_enumerated_completely_and_each_candidate_is_a_valid_cell():
    spec = cell_arch_spec(("none", "a", "b"), n_inputs=2, n_nodes=2, keep=2)
    specs = {"normal": spec}

    class Block(nn.Module):
        rows = {"normal": tuple(range(len(spec.edges)))}
        name = "cell"

    (unit,) = choice_units([Block()], specs)
    candidates, size = unit_candidates(unit, specs, "none", 10_000, random.Random(0))
    # node 2: both inputs, 2 ops each; node 3: 2 of 3 sources, 2 ops each
    brute = {
        (ChosenEdge(o1, 0, 2), ChosenEdge(o2, 1, 2), ChosenEdge(o3, s, 3), ChosenEdge(o4, t, 3))
        for o1, o2, o3, o4 in itertools.product("ab", repeat=4)
        for s, t in itertools.combinations(range(3), 2)
    }
    assert size == unit_space_size(unit, specs, "none") == len(brute) == 48
    assert {dict(c.cells)["normal"] for c in candidates} == brute
    assert len(candidates) == 48


def test_a_large_unit_is_sampled_without_replacement():
    net = tiny_darts()
    units = choice_units(net.blocks(), net.arch_specs)
    candidates, size = unit_candidates(units[0], net.arch_specs, "none", 50, random.Random(0))
    assert size == 7**4 * 3 and len(candidates) == 50
    assert len({c.label for c in candidates}) == 50
    again, _ = unit_candidates(units[0], net.arch_specs, "none", 50, random.Random(0))
    assert again == candidates


def test_one_candidate_per_unit_is_one_genotype_and_its_weights_select_exactly_it():
    net = tiny_darts()
    specs = net.arch_specs
    units = choice_units(net.blocks(), specs)
    genotype = random_genotype(specs, "darts", "none", random.Random(5))
    parts = [unit_candidate_of(genotype, unit, specs) for unit in units]
    assert combined_genotype(parts, specs, "darts").cells == genotype.cells
    weights = candidate_weights(parts, specs)
    for name, w in genotype_weights(genotype, specs).items():
        assert torch.equal(weights[name], w)


def test_a_student_samples_each_unit_from_its_own_stream():
    net = tiny_darts(layers=4)
    student = student_blocks(net, "none", 5, lambda u: random.Random(100 + u))
    assert [u.blocks for u in student.units] == [(0, 3), (1, 2)]
    assert student.unit_of == {0: 0, 3: 0, 1: 1, 2: 1}
    for u, unit in enumerate(student.units):
        expected, size = unit_candidates(unit, net.arch_specs, "none", 5, random.Random(100 + u))
        assert student.candidates[u] == expected and student.space_sizes[u] == size
    assert student.first_candidates == [found[0] for found in student.candidates]


def test_a_block_learns_from_the_teacher_features_at_its_inputs_and_the_next_boundary():
    torch.manual_seed(0)
    teacher = SimpleCNN(1, 10, channels=4, depth=1).eval()
    stages = ModuleStages(teacher, [INPUT, "features.2", "features.5", "features.8"])
    blocks = tiny_darts().blocks()
    x = torch.randn(2, 1, 8, 8)
    features = stages.features(x)
    inputs, target = block_targets(stages, blocks, 1, x)
    assert blocks[1].inputs == (0, 1)
    assert all(torch.equal(a, b) for a, b in zip(inputs, features[:2]))
    assert torch.equal(target, features[2])


def test_the_budget_is_absolute_or_a_fraction_of_the_teachers_cost():
    teacher = {"parameters": 1000, "flops": 4000}
    assert combination_budget(None, None, teacher, "params") is None
    assert combination_budget(50.0, None, teacher, "params") == 50.0
    assert combination_budget(None, 0.5, teacher, "params") == 500.0
    assert combination_budget(None, 0.25, teacher, "flops") == 1000.0
