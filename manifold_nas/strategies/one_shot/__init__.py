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
    check_count,
    evaluate_path,
    is_finite_number,
    path_from_cells,
    path_key,
    path_weights,
    preserved_buffers,
    recalibrate_batch_norm,
    recalibration_inputs,
    stream_seed,
)
from manifold_nas.strategies.one_shot.spos import SinglePathOneShot

__all__ = [
    "PathSampler",
    "SinglePathOneShot",
    "check_count",
    "evaluate_path",
    "is_finite_number",
    "path_from_cells",
    "path_key",
    "path_weights",
    "preserved_buffers",
    "recalibrate_batch_norm",
    "recalibration_inputs",
    "stream_seed",
]
