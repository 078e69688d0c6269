"""One run: its context, directory, checkpoints, training loop and retraining.

==================  ==========================================================
``context.py``      :class:`~manifold_nas.run.context.Run`: config, data,
                    builders, training, evaluation, checkpoints, cost
``directory.py``    the run directory: files, locks, metrics
``checkpoint.py``   atomic checkpoint files
``interrupts.py``   signals deferred while a checkpoint is written
``distributed.py``  ``torchrun`` worlds, sharded sampling
``evaluation.py``   evaluating and predicting with a finished run
``plotting.py``     the run's figures
``retrain.py``      retraining a derived network from scratch
==================  ==========================================================
"""
