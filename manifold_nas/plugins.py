"""Loading the built-in domains, which register themselves on import.

Third-party packages do not need this: their entry points
(``manifold_nas.opsets``, ``manifold_nas.networks``, ...) are read by the
registries themselves.
"""

from __future__ import annotations

import importlib

__all__ = ["BUILTIN_DOMAINS", "load_builtin_domains"]

BUILTIN_DOMAINS = ("domains.vision", "domains.spd", "domains.volumetric")


def load_builtin_domains() -> None:
    """Import every built-in domain package (idempotent)."""
    for module in BUILTIN_DOMAINS:
        importlib.import_module(module)
