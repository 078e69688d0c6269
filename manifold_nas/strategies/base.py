"""The search-strategy interface: one run context in, one genotype out.

Modelled on the strategy base of NNI's NAS (``nni/nas/strategy/base.py``):
a strategy is a small object with a ``run`` method and a state for resume.
Everything a strategy shares with the others (config, data, run directory,
metrics, checkpoints, builders, training and evaluation) lives in the
:class:`~manifold_nas.run.context.Run` it is handed, so a new strategy is one
class and its own machinery.

The life cycle, driven by :meth:`manifold_nas.run.context.Run.search`:

1. ``setup(run)`` builds what the strategy's state refers to (a supernet and
   its optimizers, say), consuming the seeded random streams in a fixed order;
2. on ``--resume``, ``load_state_dict(state)`` restores that state from the
   last checkpoint (the run restores the random streams after it);
3. ``run(run)`` searches, calling ``run.checkpoint(self)`` at every point it
   can resume from, and returns the genotype;
4. ``summary(run)`` adds the strategy's own entries to ``summary.json``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

from manifold_nas.registry import Registry
from manifold_nas.run.context import Run
from manifold_nas.space.genotype import Genotype

__all__ = ["STRATEGIES", "Strategy", "register_strategy"]


class Strategy(ABC):
    """A search strategy; subclasses take their options as keyword arguments.

    The options are the config's ``strategy:`` keys besides ``name`` and are
    checked against ``__init__``'s signature before any data is loaded, so
    every option needs a default.
    """

    #: the name the strategy is registered under (set by the registry decorator)
    name: ClassVar[str] = ""
    #: whether the strategy runs data-parallel under ``torchrun`` (others refuse to)
    supports_distributed: ClassVar[bool] = False
    #: whether the strategy runs its trials through ``search.backend`` (local or Ray)
    uses_backend: ClassVar[bool] = False

    def setup(self, run: Run) -> None:  # noqa: B027 (optional hook)
        """Build state-bearing objects before a checkpoint is loaded."""

    @abstractmethod
    def run(self, run: Run) -> Genotype:
        """Search and return the chosen genotype."""

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue after the last ``run.checkpoint(self)``."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:  # noqa: B027 (optional hook)
        """Restore what :meth:`state_dict` returned."""

    def progress(self) -> str:
        """Where the search stands, for the resume message (e.g. ``"after epoch 3"``)."""
        return ""

    def summary(self, run: Run) -> dict[str, Any]:
        """Strategy-specific entries of ``summary.json`` (``final`` metrics at least)."""
        return {}


#: every strategy by name; the built-in ones are entry points of ``pyproject.toml``
#: like a third party's, so a strategy's module is imported only when it runs
STRATEGIES: Registry[type[Strategy]] = Registry(
    "strategies", entry_point_group="manifold_nas.strategies", singular="strategy"
)


def register_strategy(name: str):
    """Class decorator: register a :class:`Strategy` subclass as ``name``."""

    def add(cls: type[Strategy]) -> type[Strategy]:
        cls.name = name
        STRATEGIES.register(name, cls)
        return cls

    return add
