"""The search space: what a search space is and what a domain implements.

==================  ==========================================================
``opset.py``        op sets: candidate ops, mixing rule, zero op, dtype
``cell.py``         search and derived cells, mixed edges, arch specs
``relaxations.py``  softmax, sparsemax, Gumbel and the other relaxations
``sparsemax.py``    the sparsemax projection
``supernet.py``     architecture parameters and the supernet around a network
``genotype.py``     the chosen architecture, its file and its description
``selection.py``    selectors: from architecture weights to a genotype
``diagnostics.py``  entropies, decision margins, Hessian eigenvalue
``networks.py``     the network registry and its builder signature
``contracts.py``    the protocols domains implement (searchable, cost model,
                    block-wise networks, stage finders)
``sampling.py``     discrete architectures: draw, one-hot weights
==================  ==========================================================
"""
