"""FOX-NAS: explainable predictors and simulated annealing under a hardware budget.

===================  ========================================================
``strategy.py``      the ``fox`` strategy: its state, resume and summary,
                     running the steps below in order
``options.py``       its options, checked and normalised when it is built
``labelling.py``     drawing sub-networks, measuring their costs, labelling
                     their accuracy (supernet weights or stand-alone trials)
``fitting.py``       fitting and reporting the accuracy and cost models
``annealing.py``     simulated annealing over genotypes, its moves and
                     schedule, and FOX's search under the budget with it
``verification.py``  the chosen design's metrics, every design measured
                     against the budget, ``designs.json``
===================  ========================================================
"""
