"""Shared fixtures over the tiny configs of :mod:`support` (one home for every domain's)."""

from __future__ import annotations

import copy

import pytest
import torch
from support import TINY_VISION

torch.set_num_threads(1)


@pytest.fixture
def tiny_config_dict():
    return copy.deepcopy(TINY_VISION)
