"""Multi-trial search: ``random`` and ``evolution``, and the trial machinery they share.

=====================  ======================================================
``loop.py``            :class:`MultiTrialSearch`: trials, their records, resume
``backends.py``        where trials run: in process or on Ray
``proxy.py``           cheaper trials: data subsets, fewer epochs, downsampling
``early_stopping.py``  stopping rules: ASHA, learning-curve prediction
``filters.py``         rejecting a genotype before training (parameters, predictor)
``random_search.py``   the ``random`` strategy
``evolution.py``       the ``evolution`` strategy (regularized evolution)
=====================  ======================================================

What another family may use (the hybrids FOX and DNA) is exported here; their
inner modules stay private to this family.
"""

from manifold_nas.strategies.multi_trial.backends import TrialBackend, open_backend
from manifold_nas.strategies.multi_trial.loop import MultiTrialSearch, TrialJob, train_trial
from manifold_nas.strategies.multi_trial.proxy import check_proxy, trial_epochs

__all__ = [
    "MultiTrialSearch",
    "TrialBackend",
    "TrialJob",
    "open_backend",
    "check_proxy",
    "train_trial",
    "trial_epochs",
]
