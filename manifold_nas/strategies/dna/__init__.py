"""DNA: block-wise distillation from a teacher (Li et al., CVPR 2020).

====================  =======================================================
``strategy.py``       the ``dna`` strategy: teacher, block training, ranking,
                      combination, the Pareto front
``teacher.py``        where a teacher comes from and how it is cut into stages
``distillation.py``   student blocks, feature adapters, feature losses
``units.py``          choice units of a block and their candidates
``combiner.py``       the exact budgeted combination of per-block candidates
====================  =======================================================
"""
