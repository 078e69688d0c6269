"""DNA: block-wise distillation from a teacher (Li et al., CVPR 2020).

=====================  ======================================================
``strategy.py``        the ``dna`` strategy: its options, built objects and
                       checkpointed progress, over the steps below
``teacher.py``         where a teacher comes from, how it is cut into stages,
                       built, trained inside the search and saved
``units.py``           choice units of a block, their candidates, a student
``distillation.py``    feature losses, adapters, student blocks wired to a
                       teacher and their targets
``block_training.py``  single-path training of one block on teacher features
``ranking.py``         scoring every candidate of a block, ``blocks/<i>.csv``
``combination.py``     candidate costs, the budgeted choice, ``pareto.json``,
                       the stitched final metrics
``combiner.py``        the exact budgeted combination of per-block candidates
``data_passes.py``     reseeding the data transforms before every pass, the
                       probe input
=====================  ======================================================
"""
