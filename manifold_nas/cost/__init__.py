"""Measured cost of networks and ops: FLOPs, parameters, memory, latency.

==============  ==============================================================
``measure.py``  measuring one module: probes, parameters, FLOPs, memory, latency
``table.py``    per-op cost tables, the on-disk LUT, expected and derived cost
``budget.py``   budgets over a table: parsing, genotype cost, the measured
                penalty of bilevel search
==============  ==============================================================
"""
