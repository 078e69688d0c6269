"""Genotypes: the versioned JSON record of a derived architecture.

A genotype names the op set, the chosen edges of every cell type (op, source
node, target node), the candidate op names per cell type, the probabilities
that led to the choice, and the resolved search config, so that
``manifold-nas train genotype.json`` can rebuild and retrain the network on
its own.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from manifold_nas.errors import UserInputError
from manifold_nas.space.cell import ChosenEdge

__all__ = ["GENOTYPE_FORMAT", "GENOTYPE_VERSION", "Genotype", "parse_cells"]

GENOTYPE_FORMAT = "manifold-nas-genotype"
GENOTYPE_VERSION = 1


def parse_cells(data: Mapping[str, Any]) -> dict[str, tuple[ChosenEdge, ...]]:
    """``{cell_type: [[op, source, target], ...]}`` (the JSON form) as chosen edges."""
    return {
        str(name): tuple(ChosenEdge(str(op), int(s), int(t)) for op, s, t in edges)
        for name, edges in data.items()
    }


@dataclass(frozen=True)
class Genotype:
    """A derived architecture.

    ``cells[type]`` lists the chosen edges of that cell type, ``ops[type]``
    the candidate op names (the columns of ``probabilities[type]``).
    """

    opset: str
    cells: Mapping[str, tuple[ChosenEdge, ...]]
    ops: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    probabilities: Mapping[str, tuple[tuple[float, ...], ...]] = field(default_factory=dict)
    config: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": GENOTYPE_FORMAT,
            "version": GENOTYPE_VERSION,
            "opset": self.opset,
            "cells": {
                name: [[e.op, e.source, e.target] for e in edges]
                for name, edges in self.cells.items()
            },
            "ops": {name: list(ops) for name, ops in self.ops.items()},
            "probabilities": {
                name: [list(row) for row in rows] for name, rows in self.probabilities.items()
            },
            "config": dict(self.config),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "genotype") -> Genotype:
        if not isinstance(data, Mapping) or data.get("format") != GENOTYPE_FORMAT:
            raise UserInputError(f"{source} is not a manifold-nas genotype (no 'format' field)")
        if data.get("version") != GENOTYPE_VERSION:
            raise UserInputError(
                f"{source} has genotype version {data.get('version')!r}; "
                f"this manifold-nas reads version {GENOTYPE_VERSION}"
            )
        try:
            cells = parse_cells(data["cells"])
            return cls(
                opset=str(data["opset"]),
                cells=cells,
                ops={k: tuple(v) for k, v in data.get("ops", {}).items()},
                probabilities={
                    k: tuple(tuple(float(x) for x in row) for row in v)
                    for k, v in data.get("probabilities", {}).items()
                },
                config=dict(data.get("config", {})),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise UserInputError(f"{source} is a malformed genotype: {reason}") from None

    def save(self, path: str | Path) -> None:
        path = Path(path)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        tmp.replace(path)

    @classmethod
    def load(cls, path: str | Path) -> Genotype:
        path = Path(path)
        if not path.is_file():
            raise UserInputError(f"genotype file not found: {path}")
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise UserInputError(f"{path} is not valid JSON: {err}") from None
        return cls.from_dict(data, source=str(path))

    def describe(self) -> str:
        """A short human-readable rendering, one line per cell type."""
        lines = [f"opset {self.opset}"]
        for name, edges in self.cells.items():
            parts = ", ".join(f"{e.op}({e.source}->{e.target})" for e in edges)
            lines.append(f"  {name}: {parts}")
        return "\n".join(lines)
