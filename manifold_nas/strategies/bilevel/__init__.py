"""Bilevel differentiable search (DARTS family), the default strategy.

==================  ==========================================================
``strategy.py``     the ``bilevel`` strategy: alternating weight and
                    architecture steps, warm-up, diagnostics, the selector
``architect.py``    the architecture step, first or second order
==================  ==========================================================
"""
