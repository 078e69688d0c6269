"""The measured cost model: per-op measurements, cost tables, the look-up-table cache."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from manifold_nas.cost import measure, table
from manifold_nas.domains.spd.networks import SPDNetNAS
from manifold_nas.domains.spd.ops import NORMAL_OPS, REDUCE_OPS
from manifold_nas.domains.vision.networks import DartsNetwork
from manifold_nas.domains.volumetric.network import ARCH_KEY, VolumetricNet
from manifold_nas.space.cell import ChosenEdge, SearchCell
from manifold_nas.space.genotype import Genotype
from manifold_nas.space.opset import OPSETS

FAST = {"warmup": 0, "repeats": 2}


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def darts_network(genotype: Genotype | None = None) -> DartsNetwork:
    # three layers: cell 0 is normal, cells 1 and 2 are reduction cells sharing "reduce"
    torch.manual_seed(0)
    return DartsNetwork(
        OPSETS.get("darts"), 1, 3, genotype, channels=4, layers=3, nodes=2, stem_multiplier=1
    )


DARTS_GENOTYPE = Genotype(
    opset="darts",
    cells={
        "normal": (
            ChosenEdge("sep_conv_3x3", 0, 2),
            ChosenEdge("skip_connect", 1, 2),
            ChosenEdge("dil_conv_5x5", 1, 3),
            ChosenEdge("max_pool_3x3", 2, 3),
        ),
        "reduce": (
            ChosenEdge("avg_pool_3x3", 0, 2),
            ChosenEdge("sep_conv_5x5", 1, 2),
            ChosenEdge("dil_conv_3x3", 0, 3),
            ChosenEdge("skip_connect", 2, 3),
        ),
    },
)

SPD_GENOTYPE = Genotype(
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


@pytest.fixture(scope="module")
def darts_input() -> torch.Tensor:
    return torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def darts_table(darts_input) -> table.CostTable:
    return table.build_cost_table(darts_network(), darts_input, **FAST)


def random_spd(*shape: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    a = torch.randn(*shape, dtype=torch.float64, generator=generator)
    return a @ a.mT / shape[-1] + 0.1 * torch.eye(shape[-1], dtype=torch.float64)


def spd_network(genotype: Genotype | None = None) -> SPDNetNAS:
    torch.manual_seed(0)
    return SPDNetNAS(OPSETS.get("spd"), 1, 8, 3, genotype, cells=2, nodes=2, channels=2, n_out=4)


@pytest.fixture(scope="module")
def spd_table() -> table.CostTable:
    return table.build_cost_table(spd_network(), random_spd(3, 1, 8, 8), latency=False)


def volumetric_network() -> VolumetricNet:
    torch.manual_seed(0)
    return VolumetricNet(1, 2, (4, 8), [2], patch_size=(8, 8, 4))


VOLUME = torch.randn(1, 1, 8, 8, 4, generator=torch.Generator().manual_seed(2))


@pytest.fixture(scope="module")
def volumetric_table() -> table.CostTable:
    return table.build_cost_table(volumetric_network(), VOLUME, latency=False)


def one_hot(choices: dict[str, list[int]], table: table.CostTable) -> dict[str, torch.Tensor]:
    probabilities = {}
    for spec, rows in choices.items():
        p = torch.zeros(len(rows), len(table.ops[spec]), dtype=torch.float64)
        for row, column in enumerate(rows):
            if column >= 0:
                p[row, column] = 1.0
        probabilities[spec] = p
    return probabilities


# --------------------------------------------------------------------------- per-op measurements
def test_conv2d_flops_are_two_cin_cout_k_squared_hw_over_stride_squared_without_bias():
    conv = nn.Conv2d(3, 5, kernel_size=3, stride=2, padding=1, bias=True)
    c_in, c_out, k, h, w, stride = 3, 5, 3, 8, 8, 2
    flops = measure.count_flops(conv, torch.randn(1, c_in, h, w))
    assert flops == 2 * c_in * c_out * k**2 * h * w // stride**2


def test_flop_counter_counts_nothing_for_eigh_and_the_estimate_is_nine_n_cubed():
    class Eigh(nn.Module):
        def forward(self, x):
            return torch.linalg.eigh(x).eigenvectors

    x = random_spd(3, 5, 5)
    assert measure.count_flops(Eigh(), x) == 0
    assert measure.linalg_flop_estimate(Eigh(), x) == 3 * 9 * 5**3


def test_svd_estimate_is_the_thin_golub_reinsch_count():
    class Svd(nn.Module):
        def forward(self, x):
            return torch.linalg.svd(x, full_matrices=False).U

    m, n = 6, 4
    assert measure.count_flops(Svd(), torch.randn(m, n)) == 0
    assert measure.linalg_flop_estimate(Svd(), torch.randn(m, n)) == 14 * m * n**2 + 8 * n**3


def test_parameter_count_is_the_sum_of_parameter_sizes():
    module = nn.Sequential(nn.Linear(4, 3), nn.Conv2d(2, 5, 3))
    assert measure.count_parameters(module) == 4 * 3 + 3 + 2 * 5 * 9 + 5


def test_training_memory_of_linear_is_its_saved_input_plus_its_output():
    linear = nn.Linear(6, 5)
    # addmm keeps the input for the weight gradient; the weight itself is a parameter
    assert measure.training_memory(linear, torch.randn(4, 6)) == 4 * 6 * 4 + 4 * 5 * 4


def test_training_memory_counts_a_saved_output_once():
    # ReLU saves its own result, which is also the output
    assert measure.training_memory(nn.ReLU(), torch.randn(10)) == 10 * 4


def test_training_memory_leaves_batch_norm_statistics_untouched():
    norm = nn.BatchNorm1d(3)
    before = norm.running_mean.clone(), norm.num_batches_tracked.clone()
    measure.training_memory(norm, torch.randn(8, 3) + 5.0)
    assert torch.equal(norm.running_mean, before[0])
    assert torch.equal(norm.num_batches_tracked, before[1])


def test_inference_memory_of_two_relus_holds_input_intermediate_and_output():
    assert measure.inference_memory(nn.Sequential(nn.ReLU(), nn.ReLU()), torch.randn(10)) == 3 * 40


def test_latency_is_positive_and_records_where_it_was_measured():
    stats = measure.measure_latency(nn.Linear(8, 8), torch.randn(2, 8), warmup=1, repeats=5)
    assert stats.median_ms > 0 and stats.iqr_ms >= 0 and stats.repeats == 5
    assert stats.threads == torch.get_num_threads() and stats.device == "cpu"
    assert stats.dtype == "float32" and stats.torch_version == torch.__version__


def test_latency_restores_training_mode():
    module = nn.Sequential(nn.Linear(3, 3), nn.Dropout()).train()
    measure.measure_latency(module, torch.randn(1, 3), warmup=0, repeats=1)
    assert all(m.training for m in module.modules())


# --------------------------------------------------------------------------- candidates
def test_candidates_of_a_search_cell_network_cover_every_arch_entry_of_every_cell():
    net = darts_network()
    found = list(measure.candidate_ops(net))
    cells = [m for m in net.modules() if isinstance(m, SearchCell)]
    assert len(found) == sum(len(c.edges) * len(c.spec.ops) for c in cells)
    assert {(c.spec, c.row, c.column) for c in found} == {
        (name, row, column)
        for name, spec in net.arch_specs.items()
        for row in range(spec.shape[0])
        for column in range(spec.shape[1])
    }


def test_network_without_cells_or_candidate_ops_raises_naming_the_class():
    class Plain(nn.Module):
        arch_specs: dict = {}

    with pytest.raises(ValueError, match=r"Plain .*candidate_ops\(\)"):
        list(measure.candidate_ops(Plain()))


def test_probing_records_each_op_input_shape_and_dtype(darts_input):
    net = darts_network()
    probes = measure.probe_inputs(net, darts_input)
    shapes: dict[int, set] = {}
    for candidate, x in probes:
        if candidate.spec == "reduce":
            shapes.setdefault(candidate.row, set()).add(tuple(x.shape))
    # reduction cell 1 runs at 8 channels on 8x8 inputs, cell 2 at 16 channels on 4x4;
    # row 4 (node 2 -> node 3) reads the halved node 2
    assert shapes == {
        **{row: {(2, 8, 8, 8), (2, 16, 4, 4)} for row in range(4)},
        4: {(2, 8, 4, 4), (2, 16, 2, 2)},
    }
    assert all(x.dtype == torch.float32 for _, x in probes)


# --------------------------------------------------------------------------- tables
def test_table_params_are_each_rows_candidate_modules_summed_over_shared_cells(darts_table):
    net = darts_network()
    for name, spec in net.arch_specs.items():
        cells = [m for m in net.modules() if isinstance(m, SearchCell) and m.cell_type == name]
        expected = torch.tensor(
            [
                [sum(n_params(cell.edges[row].ops[col]) for cell in cells) for col in range(6 + 2)]
                for row in range(spec.shape[0])
            ],
            dtype=torch.float64,
        )
        assert torch.equal(darts_table.cost("params", name), expected)


def test_fixed_params_plus_all_candidates_equal_the_supernet_params(darts_table):
    candidates = sum(float(t.sum()) for t in darts_table.costs["params"].values())
    assert darts_table.fixed["params"] + candidates == n_params(darts_network())


def test_table_flops_of_a_dilated_conv_follow_the_depthwise_and_pointwise_formula(darts_table):
    # normal cell 0 at 4 channels on 8x8, batch 2: depthwise 3x3 then pointwise 1x1
    column = darts_table.ops["normal"].index("dil_conv_3x3")
    c, hw, batch = 4, 8 * 8, 2
    expected = batch * (2 * c * 9 * hw + 2 * c * c * hw)
    assert darts_table.cost("flops", "normal")[0, column] == expected


def test_derived_darts_network_flops_are_the_fixed_part_plus_the_chosen_ops(
    darts_table, darts_input
):
    derived = darts_network(DARTS_GENOTYPE)
    measured = table.measure_network(derived, darts_input, latency=False)
    choices = table.genotype_choices(DARTS_GENOTYPE, darts_table)
    assert measured.flops == table.derived_cost(choices, darts_table, "flops", include_fixed=True)


def test_expected_cost_with_one_hot_probabilities_equals_the_derived_cost(darts_table):
    choices = {"normal": [4, 3, -1, 7, 1], "reduce": [-1, 5, 2, 0, 6]}
    for kind in darts_table.kinds:
        expected = table.expected_cost(one_hot(choices, darts_table), darts_table, kind)
        assert expected.item() == pytest.approx(table.derived_cost(choices, darts_table, kind))


def test_expected_cost_gradient_is_the_cost_table(darts_table):
    probabilities = {
        name: torch.rand(len(edges), len(darts_table.ops[name]), requires_grad=True)
        for name, edges in darts_table.edges.items()
    }
    table.expected_cost(probabilities, darts_table, "flops").backward()
    for name, p in probabilities.items():
        assert torch.allclose(p.grad.double(), darts_table.cost("flops", name))


def test_cost_penalty_is_zero_within_budget_and_linear_above(darts_table):
    uniform = {
        name: torch.full((len(edges), len(darts_table.ops[name])), 1 / 8, dtype=torch.float64)
        for name, edges in darts_table.edges.items()
    }
    spent = table.expected_cost(uniform, darts_table, "params").item()
    assert table.cost_penalty(uniform, darts_table, "params", budget=spent * 2).item() == 0.0
    over = table.cost_penalty(uniform, darts_table, "params", budget=spent / 3, weight=0.5)
    assert over.item() == pytest.approx(0.5 * (3 - 1))


def test_fixed_memory_and_latency_are_not_offered_as_additive(darts_table):
    assert darts_table.fixed["memory"] is None and darts_table.fixed["latency_ms"] is None
    with pytest.raises(ValueError, match="derived network"):
        table.derived_cost({"normal": [-1] * 5, "reduce": [-1] * 5}, darts_table, "memory", True)


def test_latency_entries_are_positive_and_record_threads_and_device(darts_table):
    for entry in darts_table.entries:
        assert entry.measurement.latency.median_ms > 0
        assert entry.measurement.latency.threads == torch.get_num_threads()
        assert entry.measurement.latency.device == "cpu"


def test_format_cost_table_has_one_line_per_spec_row_and_op(darts_table):
    text = table.format_cost_table(darts_table)
    lines = [line for line in text.splitlines() if line.startswith("| normal")]
    assert len(lines) == 5 * 8
    assert "| normal | 0 (0->2) | sep_conv_3x3 | 1 |" in text
    assert "| reduce | 1 (1->2) | none | 2 |" in text
    assert "fixed part: params" in text


# --------------------------------------------------------------------------- the look-up table
def test_lut_second_build_measures_nothing(tmp_path, darts_input, monkeypatch):
    calls = {"op": 0, "latency": 0}
    measure_op, measure_latency = measure.measure_op, measure.measure_latency

    def counting_op(*args, **kwargs):
        calls["op"] += 1
        return measure_op(*args, **kwargs)

    def counting_latency(*args, **kwargs):
        calls["latency"] += 1
        return measure_latency(*args, **kwargs)

    monkeypatch.setattr(table, "measure_op", counting_op)
    monkeypatch.setattr(table, "measure_latency", counting_latency)
    monkeypatch.setattr(measure, "measure_latency", counting_latency)
    net = darts_network()
    table.build_cost_table(net, darts_input, lut=table.CostLUT(tmp_path), **FAST)
    first = dict(calls)
    assert first["op"] > 0 and first["latency"] == first["op"]
    table.build_cost_table(net, darts_input, lut=table.CostLUT(tmp_path), **FAST)
    assert calls == first


def test_lut_round_trip_through_disk_gives_the_same_table(tmp_path, darts_input):
    net = darts_network()
    first = table.build_cost_table(net, darts_input, lut=table.CostLUT(tmp_path), **FAST)
    reloaded = table.CostLUT(tmp_path)
    second = table.build_cost_table(net, darts_input, lut=reloaded, **FAST)
    assert reloaded.misses == 0 and reloaded.hits == len(first.entries)
    for kind in first.kinds:
        for name in first.ops:
            assert torch.equal(first.cost(kind, name), second.cost(kind, name))


def test_lut_entries_record_key_and_when_and_where_they_were_measured(tmp_path):
    lut = table.CostLUT(tmp_path)
    lut.measure("linear", nn.Linear(3, 2), torch.randn(1, 3), warmup=0, repeats=1)
    lut.save()
    data = json.loads((tmp_path / table.LUT_FILENAME).read_text())
    (entry,) = data["entries"].values()
    assert entry["key"]["input_shape"] == [1, 3] and entry["key"]["threads"] >= 1
    assert entry["key"]["parameters"] == [["weight", [2, 3]], ["bias", [2]]]
    assert {"measured_at", "host", "torch"} <= set(entry)
    assert entry["latency"]["median_ms"] > 0
    assert [p.name for p in tmp_path.iterdir()] == [table.LUT_FILENAME]


def test_lut_adds_latency_to_an_entry_first_measured_without_it(monkeypatch):
    lut = table.CostLUT()
    module, x = nn.Linear(3, 2), torch.randn(1, 3)
    _, without = lut.measure("linear", module, x, latency=False)
    assert without.latency is None
    calls = []
    monkeypatch.setattr(table, "measure_op", lambda *a, **k: calls.append("op"))
    _, with_latency = lut.measure("linear", module, x, warmup=0, repeats=1)
    assert calls == [] and with_latency.latency.median_ms > 0
    assert with_latency.flops == without.flops


def test_lut_refuses_a_file_that_is_not_a_cost_lut(tmp_path):
    (tmp_path / table.LUT_FILENAME).write_text(json.dumps({"entries": {}}))
    with pytest.raises(ValueError, match="not a version-1 cost LUT"):
        table.CostLUT(tmp_path)


# --------------------------------------------------------------------------- SPD and volumetric
def test_spd_table_has_the_spdnetnas_columns_and_float64_inputs(spd_table):
    assert spd_table.ops == {"normal": NORMAL_OPS, "reduce": REDUCE_OPS}
    assert spd_table.context["dtype"] == "float64"
    assert "latency_ms" not in spd_table.kinds


def test_spd_eig_based_ops_gain_flops_only_from_the_estimate(spd_table):
    flops = spd_table.cost("flops", "normal")
    with_linalg = spd_table.cost("flops_with_linalg", "normal")
    bimap_1, bimap_0 = NORMAL_OPS.index("BiMap_1"), NORMAL_OPS.index("BiMap_0")
    # BiMap_1 ends in ReEig (one eigh per matrix); FlopCounterMode misses it
    estimate = with_linalg - flops
    assert (estimate[:, bimap_1] > 0).all()
    assert (estimate[:, bimap_1] > estimate[:, bimap_0]).all()


def test_derived_spd_network_params_are_the_fixed_part_plus_the_chosen_ops(spd_table):
    derived = spd_network(SPD_GENOTYPE)
    choices = table.genotype_choices(SPD_GENOTYPE, spd_table)
    expected = table.derived_cost(choices, spd_table, "params", include_fixed=True)
    assert n_params(derived) == expected


def test_volumetric_params_match_the_networks_analytic_cost_table(volumetric_table):
    analytic = volumetric_network().cost_table("params")
    assert torch.equal(volumetric_table.cost("params", ARCH_KEY), analytic)


def test_derived_volumetric_network_params_and_flops_are_fixed_plus_chosen(volumetric_table):
    choices = ["conv3d", "p3d", "conv2d"]
    derived = volumetric_network().derive(choices)
    measured = table.measure_network(derived, VOLUME, latency=False)
    rows = {ARCH_KEY: [volumetric_table.ops[ARCH_KEY].index(c) for c in choices]}
    for kind, value in (("params", measured.params), ("flops", measured.flops)):
        assert value == table.derived_cost(rows, volumetric_table, kind, include_fixed=True)
