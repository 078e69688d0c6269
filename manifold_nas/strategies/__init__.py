"""Search strategies: the :data:`STRATEGIES` registry, one folder per family.

=============  ==================  =============================================
family         strategies          machinery beside them
=============  ==================  =============================================
``bilevel/``   ``bilevel``         DARTS-family differentiable search (the
                                   default): the architect (first or second
                                   order), the measured-cost penalty
``multi_trial/`` ``random``,       trial loop, local or Ray backends, proxies,
               ``evolution``       early stopping, trial filters
``one_shot/``  ``spos``, ``cream`` single-path supernet training, path sampling,
                                   batch-norm recalibration, path search
``dna/``       ``dna``             teacher stages, block-wise distillation,
                                   choice units, the exact budgeted combiner
``fox/``       ``fox``             predictor-guided simulated annealing under a
                                   hardware budget
=============  ==================  =============================================

Every strategy is registered by name through the entry-point group
``manifold_nas.strategies`` (the built-in ones in ``pyproject.toml``, exactly
as a third party's package declares its own), and its module is imported only
when a run asks for it: ``manifold-nas search`` with ``strategy: spos`` never
imports Ray, scikit-learn or the DNA teacher code.
"""

from __future__ import annotations

from manifold_nas.strategies.base import STRATEGIES, Strategy, register_strategy

__all__ = ["STRATEGIES", "Strategy", "register_strategy"]
