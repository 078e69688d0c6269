"""Checking a whole config against the registries before any data is loaded.

:func:`~manifold_nas.config.parse_config` checks the structure and the fixed
settings; :func:`check_config` then resolves every named component (data set,
op set, network, relaxation, selector, strategy, the three optimizers) in its
registry and checks the section's options against the builder's signature,
so that a typo in ``network.chanels`` fails in milliseconds instead of after
loading a folder of volumes.
"""

from __future__ import annotations

from manifold_nas.config import Config, check_options, split_name
from manifold_nas.data import DATASETS
from manifold_nas.errors import UserInputError
from manifold_nas.networks import NETWORKS
from manifold_nas.opset import OPSETS
from manifold_nas.optim import ARCH_OPTIMIZERS
from manifold_nas.relaxations import RELAXATIONS
from manifold_nas.selection import SELECTORS
from manifold_nas.strategies import STRATEGIES

__all__ = ["check_config"]


def _check_section(registry, section: dict, where: str, n_positional: int = 0) -> None:
    name, options = split_name(section)
    check_options(registry.get(name), options, where, n_positional)


def check_optimizer(section: dict, where: str) -> None:
    """The optimizer exists and takes these options (``self`` and ``params`` aside)."""
    name, options = split_name(section)
    check_options(ARCH_OPTIMIZERS.get(name).__init__, options, where, n_positional=2)


def check_config(config: Config) -> None:
    """Refuse any unknown component or option of ``config`` with a one-line error."""
    _check_section(DATASETS, config.data, "data")
    name, options = split_name(config.network)
    if "opset" not in options:
        raise UserInputError("config section 'network' needs key 'opset'")
    OPSETS.get(str(options.pop("opset")))
    builder = NETWORKS.get(name)
    check_options(builder, options, "network", n_positional=3)
    check_options(builder, {**options, **config.train.network}, "train.network", n_positional=3)
    _check_section(RELAXATIONS, config.relaxation, "relaxation")
    _check_section(SELECTORS, config.selection, "selection")
    _check_section(STRATEGIES, config.strategy, "strategy")
    check_optimizer(config.search.weight_optimizer, "search.weight_optimizer")
    check_optimizer(config.search.arch_optimizer, "search.arch_optimizer")
    check_optimizer(config.train.optimizer, "train.optimizer")
