"""FOX-NAS: explainable predictors and simulated annealing under a hardware budget.

=================  ==========================================================
``strategy.py``    the ``fox`` strategy: labelling sub-networks, fitting the
                   accuracy and cost models, annealing, verification
``annealing.py``   simulated annealing over genotypes, its moves and schedule
=================  ==========================================================
"""
