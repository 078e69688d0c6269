"""Shared fixtures: tiny configs that make a whole search run in seconds."""

from __future__ import annotations

import copy

import pytest
import torch

torch.set_num_threads(1)

TINY_VISION = {
    "seed": 0,
    "data": {"name": "digits"},
    "network": {
        "name": "darts_cnn",
        "opset": "darts",
        "channels": 4,
        "layers": 2,
        "nodes": 2,
        "stem_multiplier": 1,
    },
    "relaxation": {"name": "softmax"},
    "selection": {"name": "darts"},
    "search": {"epochs": 2, "batch_size": 32, "max_steps_per_epoch": 3},
    "train": {"epochs": 1, "batch_size": 64, "max_steps_per_epoch": 3},
}


@pytest.fixture
def tiny_config_dict():
    return copy.deepcopy(TINY_VISION)
