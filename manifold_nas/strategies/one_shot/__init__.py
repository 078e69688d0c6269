"""One-shot search: ``spos`` and ``cream`` on a weight-sharing supernet.

=============  ==============================================================
``paths.py``   single paths: sampling, one-hot weights, batch-norm
               recalibration, scoring with inherited weights, path search
``spos.py``    the ``spos`` strategy (single-path one-shot)
``cream.py``   the ``cream`` strategy (prioritized paths, meta-matching)
=============  ==============================================================

What another family may use (FOX labels sub-networks with a SPOS supernet,
DNA samples paths per block) is exported here.
"""

from manifold_nas.strategies.one_shot.paths import (
    PathSampler,
    evaluate_path,
    path_from_cells,
    recalibrate_batch_norm,
    recalibration_inputs,
)
from manifold_nas.strategies.one_shot.spos import SinglePathOneShot

__all__ = [
    "PathSampler",
    "SinglePathOneShot",
    "evaluate_path",
    "path_from_cells",
    "recalibrate_batch_norm",
    "recalibration_inputs",
]
