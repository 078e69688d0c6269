"""Restoring an optimizer's state exactly, value types included.

``torch.optim.Optimizer.load_state_dict`` turns a per-parameter ``step``
stored as a Python number into a float32 tensor. geoopt's
``RiemannianAdam`` keeps ``step`` as a Python ``int`` and computes its bias
corrections from it, so after a plain ``load_state_dict`` a resumed search
takes slightly different steps than an uninterrupted one (found in the audit
of resumed SPD searches: probabilities off by 1e-7). :func:`load_optimizer_state`
loads the state and then puts every Python scalar back as it was saved.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

__all__ = ["load_optimizer_state"]


def load_optimizer_state(optimizer: torch.optim.Optimizer, state_dict: Mapping[str, Any]) -> None:
    """``optimizer.load_state_dict(state_dict)`` keeping Python scalars (``step``) as saved."""
    optimizer.load_state_dict(dict(state_dict))
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for index, saved in state_dict["state"].items():
        state = optimizer.state[params[int(index)]]
        for key, value in saved.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                state[key] = value
