"""Discrete architectures: one random draw for every kind of generator."""

from __future__ import annotations

import random

import numpy as np

from manifold_nas.space.cell import cell_arch_spec
from manifold_nas.space.sampling import genotype_key, random_genotype

OPS = ("none", "skip", "conv3", "conv5")
SPECS = {"normal": cell_arch_spec(OPS, n_inputs=2, n_nodes=2, keep=2)}


def test_a_numpy_generator_and_a_seeded_random_draw_the_same_genotype():
    rng = np.random.default_rng(3)
    seed = int(np.random.default_rng(3).integers(2**63))
    drawn = random_genotype(SPECS, "toy", "none", rng)
    same = random_genotype(SPECS, "toy", "none", random.Random(seed))
    assert drawn == same
    assert random_genotype(SPECS, "toy", "none", 3) == same


def test_a_drawn_genotype_never_holds_the_zero_op_and_keeps_two_inputs_per_node():
    for seed in range(20):
        genotype = random_genotype(SPECS, "toy", "none", seed)
        edges = genotype.cells["normal"]
        assert all(e.op != "none" for e in edges)
        assert sorted(e.target for e in edges) == [2, 2, 3, 3]


def test_equal_architectures_have_equal_keys_and_different_ones_different_keys():
    drawn = [random_genotype(SPECS, "toy", "none", seed) for seed in range(40)]
    for a in drawn:
        for b in drawn:
            assert (genotype_key(a) == genotype_key(b)) == (a.cells == b.cells)
