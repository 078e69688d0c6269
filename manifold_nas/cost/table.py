"""Per-op cost tables: measured candidates, the on-disk LUT, expected and derived cost.

A :class:`CostTable` holds one :class:`CandidateCost` per candidate op of every
searchable edge, measured by :mod:`manifold_nas.cost.measure` and cached in a
:class:`CostLUT`; a genotype's cost is the sum of its choices plus the fixed part.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from manifold_nas.cost.measure import (
    COST_KINDS,
    LatencyStats,
    OpMeasurement,
    _flop_counts,
    _searchable,
    measure_latency,
    measure_op,
    probe_inputs,
    uniform_weights,
)

__all__ = [
    "CandidateCost",
    "CostLUT",
    "CostTable",
    "LUT_FILENAME",
    "NetworkCost",
    "build_cost_table",
    "cost_penalty",
    "derived_cost",
    "expected_cost",
    "format_cost_table",
    "genotype_choices",
    "measure_network",
    "table_from_state",
    "table_state",
]


LUT_FILENAME = "cost_lut.json"


_LUT_FORMAT = "manifold-nas-cost-lut"


_LUT_VERSION = 1


# --------------------------------------------------------------------------- look-up table
def _lut_key(op_name: str, module: nn.Module, x: Tensor) -> dict[str, Any]:
    return {
        "op": op_name,
        "module": f"{type(module).__module__}.{type(module).__qualname__}",
        "repr": repr(module),
        "parameters": [[n, list(p.shape)] for n, p in module.named_parameters()],
        "input_shape": list(x.shape),
        "dtype": str(x.dtype).removeprefix("torch."),
        "device": str(x.device),
        "threads": torch.get_num_threads(),
    }


def _key_id(key: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]


class CostLUT:
    """Per-op measurements cached in ``<directory>/cost_lut.json`` (in memory only without one).

    Entries are keyed by op name, module class, ``repr`` and parameter shapes,
    input shape, dtype, device and thread count, and record when and where
    they were measured. Loading a file that is not a cost LUT raises; saving
    writes a temporary file and ``os.replace`` s it, so a reader never sees a
    half-written table.
    """

    def __init__(self, directory: str | Path | None = None) -> None:
        self.path = None if directory is None else Path(directory) / LUT_FILENAME
        self.entries: dict[str, dict[str, Any]] = {}
        self.hits = self.misses = 0
        if self.path is not None and self.path.is_file():
            try:
                data = json.loads(self.path.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError) as err:
                raise ValueError(f"{self.path} is not valid JSON: {err}") from None
            if data.get("format") != _LUT_FORMAT or data.get("version") != _LUT_VERSION:
                raise ValueError(f"{self.path} is not a version-{_LUT_VERSION} cost LUT")
            self.entries = dict(data["entries"])

    def __len__(self) -> int:
        return len(self.entries)

    def measure(
        self,
        op_name: str,
        module: nn.Module,
        x: Tensor,
        *,
        latency: bool = True,
        warmup: int = 3,
        repeats: int = 20,
    ) -> tuple[str, OpMeasurement]:
        """The cached measurement of ``module`` on ``x``, measuring only what is missing."""
        key = _lut_key(op_name, module, x)
        key_id = _key_id(key)
        entry = self.entries.get(key_id)
        if entry is None:
            self.misses += 1
            found = measure_op(module, x, latency=latency, warmup=warmup, repeats=repeats)
            entry = {"key": key, **_stamp(), **asdict(found)}
            self.entries[key_id] = entry
        elif latency and entry.get("latency") is None:
            self.misses += 1
            stats = measure_latency(module, x, warmup=warmup, repeats=repeats)
            entry.update(latency=asdict(stats), latency_measured_at=_stamp()["measured_at"])
        else:
            self.hits += 1
        return key_id, _measurement(entry)

    def save(self) -> None:
        """Write the table atomically (no-op without a directory)."""
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        payload = {"format": _LUT_FORMAT, "version": _LUT_VERSION, "entries": self.entries}
        fd, tmp = tempfile.mkstemp(prefix=".cost_lut.", suffix=".tmp", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w") as handle:
                json.dump(payload, handle, indent=1, sort_keys=True)
                handle.write("\n")
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def _stamp() -> dict[str, Any]:
    return {
        "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(),
        "machine": platform.machine(),
        "torch": torch.__version__,
    }


def _measurement(entry: Mapping[str, Any]) -> OpMeasurement:
    latency = entry.get("latency")
    return OpMeasurement(
        params=int(entry["params"]),
        flops=int(entry["flops"]),
        linalg_flops=int(entry["linalg_flops"]),
        memory=int(entry["memory"]),
        memory_inference=int(entry["memory_inference"]),
        latency=None if latency is None else LatencyStats(**latency),
    )


# --------------------------------------------------------------------------- cost tables
@dataclass(frozen=True)
class CandidateCost:
    """The measurement of one candidate op in one cell."""

    spec: str
    row: int
    column: int
    op_name: str
    input_shape: tuple[int, ...]
    measurement: OpMeasurement
    lut_key: str


@dataclass(frozen=True, eq=False)
class CostTable:
    """Per architecture parameter, one ``(rows, ops)`` float64 cost tensor per kind.

    ``costs[kind][spec][e, o]`` sums op ``o`` of row ``e`` over the cells
    sharing that row. ``fixed[kind]`` is the cost of the non-searchable part
    (stem, preprocessing, reductions, head, and for FLOPs the supernet's
    mixing) where it is well defined:

    * ``params``: parameters of the network minus the candidates' (exact);
    * ``flops`` / ``flops_with_linalg``: the supernet's forward with uniform
      weights minus the sum over candidates, so it includes the mixing of the
      candidates' outputs (zero for a weighted sum, whose element-wise work is
      not counted; the Fréchet-mean products for SPD), which a derived
      network does not run;
    * ``memory``, ``latency_ms``: ``None``. Neither is additive over a
      network's parts (shared inputs, overlapping storages, parallel work);
      measure a derived network end to end with :func:`measure_network`.
    """

    ops: Mapping[str, tuple[str, ...]]
    edges: Mapping[str, tuple[tuple[int, int], ...]]
    costs: Mapping[str, Mapping[str, Tensor]]
    fixed: Mapping[str, float | None]
    entries: tuple[CandidateCost, ...]
    context: Mapping[str, Any] = field(default_factory=dict)

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(self.costs)

    def cost(self, kind: str, spec: str) -> Tensor:
        """The ``(rows, ops)`` tensor of ``kind`` for architecture parameter ``spec``."""
        if kind not in self.costs:
            raise ValueError(f"cost table has no {kind!r}; it has {self.kinds}")
        return self.costs[kind][spec]


def build_cost_table(
    network: nn.Module,
    example_input: Tensor,
    *,
    lut: CostLUT | None = None,
    latency: bool = True,
    warmup: int = 3,
    repeats: int = 20,
) -> CostTable:
    """Measure every candidate op of ``network`` and arrange the costs per arch parameter.

    Inputs come from one probing forward (:func:`probe_inputs`) on
    ``example_input``; each distinct (op, module, input) is measured once,
    through ``lut`` when given (then saved). ``latency=False`` skips timing
    and leaves out the ``latency_ms`` kind.
    """
    network = _searchable(network)
    lut = CostLUT() if lut is None else lut
    probes = probe_inputs(network, example_input)
    entries = []
    for candidate, x in probes:
        key, found = lut.measure(
            candidate.op_name,
            candidate.module,
            x,
            latency=latency,
            warmup=warmup,
            repeats=repeats,
        )
        entries.append(CandidateCost(*candidate[:4], tuple(x.shape), found, key))
    lut.save()
    specs = network.arch_specs
    kinds = tuple(k for k in COST_KINDS if latency or k != "latency_ms")
    costs = {
        kind: {name: torch.zeros(spec.shape, dtype=torch.float64) for name, spec in specs.items()}
        for kind in kinds
    }
    for entry in entries:
        for kind in kinds:
            costs[kind][entry.spec][entry.row, entry.column] += entry.measurement.value(kind)
    candidate_params = {id(p) for c, _ in probes for p in c.module.parameters()}
    fixed_params = sum(p.numel() for p in network.parameters() if id(p) not in candidate_params)
    dtype = example_input.dtype if example_input.is_floating_point() else torch.float32
    whole = _Bound(network, uniform_weights(network, dtype))
    flops, linalg = _flop_counts(whole, example_input)
    op_flops = sum(e.measurement.flops for e in entries)
    op_linalg = sum(e.measurement.linalg_flops for e in entries)
    fixed: dict[str, float | None] = {
        "params": float(fixed_params),
        "flops": float(flops - op_flops),
        "flops_with_linalg": float(flops + linalg - op_flops - op_linalg),
        "memory": None,
    }
    if latency:
        fixed["latency_ms"] = None
    context = {
        "network": type(network).__name__,
        "input_shape": list(example_input.shape),
        "dtype": str(example_input.dtype).removeprefix("torch."),
        "device": str(example_input.device),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "latency_warmup": warmup if latency else None,
        "latency_repeats": repeats if latency else None,
    }
    return CostTable(
        ops={name: tuple(spec.ops) for name, spec in specs.items()},
        edges={name: tuple(spec.edges) for name, spec in specs.items()},
        costs=costs,
        fixed=fixed,
        entries=tuple(entries),
        context=context,
    )


def table_state(table: CostTable) -> dict[str, Any]:
    """``table`` as plain Python (lists, floats, strings), exactly, for a checkpoint.

    :func:`table_from_state` rebuilds an equal table without measuring
    anything, so a resumed search prices architectures with the numbers its
    first process measured, whatever this machine would measure now.
    """
    return {
        "ops": {spec: list(ops) for spec, ops in table.ops.items()},
        "edges": {spec: [list(edge) for edge in edges] for spec, edges in table.edges.items()},
        "costs": {
            kind: {spec: value.tolist() for spec, value in by_spec.items()}
            for kind, by_spec in table.costs.items()
        },
        "fixed": _plain(dict(table.fixed)),
        "entries": [
            {
                "spec": entry.spec,
                "row": entry.row,
                "column": entry.column,
                "op_name": entry.op_name,
                "input_shape": list(entry.input_shape),
                "measurement": _plain(asdict(entry.measurement)),
                "lut_key": entry.lut_key,
            }
            for entry in table.entries
        ],
        "context": _plain(dict(table.context)),
    }


def _plain(value: Any) -> Any:
    """``value`` with every string, number and container as its built-in type.

    A checkpoint loads with ``weights_only``, which refuses subclasses such as
    ``torch.__version__`` 's ``TorchVersion``.
    """
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, str):
        return str(value)
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    return value


def table_from_state(state: Mapping[str, Any]) -> CostTable:
    """The :class:`CostTable` that :func:`table_state` recorded (float64 costs, bit for bit)."""
    entries = []
    for entry in state["entries"]:
        found = dict(entry["measurement"])
        latency = found.pop("latency")
        entries.append(
            CandidateCost(
                spec=entry["spec"],
                row=entry["row"],
                column=entry["column"],
                op_name=entry["op_name"],
                input_shape=tuple(entry["input_shape"]),
                measurement=OpMeasurement(
                    **found, latency=None if latency is None else LatencyStats(**latency)
                ),
                lut_key=entry["lut_key"],
            )
        )
    return CostTable(
        ops={spec: tuple(ops) for spec, ops in state["ops"].items()},
        edges={
            spec: tuple(tuple(edge) for edge in edges) for spec, edges in state["edges"].items()
        },
        costs={
            kind: {
                spec: torch.tensor(value, dtype=torch.float64) for spec, value in by_spec.items()
            }
            for kind, by_spec in state["costs"].items()
        },
        fixed=dict(state["fixed"]),
        entries=tuple(entries),
        context=dict(state["context"]),
    )


def expected_cost(
    probabilities: Mapping[str, Tensor], table: CostTable, kind: str, include_fixed: bool = False
) -> Tensor:
    r""":math:`\sum_s \sum_{e,o} p_s[e,o]\, C_s[e,o]` (+ the fixed part), differentiable in ``p``.

    ``probabilities`` maps every spec of the table to its ``(rows, ops)``
    tensor; :math:`\partial\,\mathbb E[C] / \partial p_s[e,o] = C_s[e,o]`.
    """
    missing = set(table.ops) - set(probabilities)
    if missing:
        raise ValueError(f"probabilities lack the architecture parameters {sorted(missing)}")
    total = None
    for spec in table.ops:
        p = probabilities[spec]
        term = (p * table.cost(kind, spec).to(p)).sum()
        total = term if total is None else total + term
    if include_fixed:
        total = total + _fixed(table, kind)
    return total


def derived_cost(
    choices: Mapping[str, Sequence[int]], table: CostTable, kind: str, include_fixed: bool = False
) -> float:
    """Cost of a discrete architecture: ``choices[spec][row]`` is an op index, ``-1`` for no edge."""
    total = _fixed(table, kind) if include_fixed else 0.0
    for spec, ops in table.ops.items():
        rows = list(choices.get(spec, ()))
        cost = table.cost(kind, spec)
        if len(rows) != cost.shape[0]:
            raise ValueError(f"{spec!r} needs {cost.shape[0]} choices, got {len(rows)}")
        for row, column in enumerate(rows):
            if column != -1:
                if not 0 <= column < len(ops):
                    raise ValueError(f"{spec!r} row {row}: op index {column} out of range")
                total += float(cost[row, column])
    return total


def cost_penalty(
    probabilities: Mapping[str, Tensor],
    table: CostTable,
    kind: str,
    budget: float,
    weight: float = 1.0,
) -> Tensor:
    """``weight · relu(E[cost] / budget − 1)``: zero within budget, linear above."""
    if budget <= 0:
        raise ValueError(f"budget must be positive, got {budget}")
    return weight * F.relu(expected_cost(probabilities, table, kind) / budget - 1.0)


def _fixed(table: CostTable, kind: str) -> float:
    value = table.fixed.get(kind)
    if value is None:
        raise ValueError(
            f"the fixed part's {kind!r} is not additive; measure a derived network instead"
        )
    return value


def genotype_choices(genotype: Any, table: CostTable) -> dict[str, list[int]]:
    """Per spec, the op index of each row kept by ``genotype`` (``-1`` for dropped rows).

    ``genotype.cells[spec]`` lists :class:`~manifold_nas.space.cell.ChosenEdge` s;
    a chosen edge ``source -> target`` is the row with that edge.
    """
    choices = {}
    for spec, edges in table.edges.items():
        rows = [-1] * len(edges)
        for chosen in genotype.cells.get(spec, ()):
            rows[edges.index((chosen.source, chosen.target))] = table.ops[spec].index(chosen.op)
        choices[spec] = rows
    return choices


# --------------------------------------------------------------------------- whole networks
class _Bound(nn.Module):
    """``network(x, arch_weights)`` as a one-argument module (or ``network(x)``)."""

    def __init__(self, network: nn.Module, arch_weights: Mapping[str, Tensor] | None) -> None:
        super().__init__()
        self.network = network
        self.arch_weights = None if arch_weights is None else dict(arch_weights)

    def forward(self, x: Tensor) -> Tensor:
        if self.arch_weights is None:
            return self.network(x)
        return self.network(x, self.arch_weights)


@dataclass(frozen=True)
class NetworkCost:
    """Whole-network costs for one example batch (see :class:`OpMeasurement`)."""

    params: int
    flops: int
    linalg_flops: int
    memory: int
    memory_inference: int
    latency: LatencyStats | None


def measure_network(
    network: nn.Module,
    example_input: Tensor,
    arch_weights: Mapping[str, Tensor] | None = None,
    *,
    latency: bool = True,
    warmup: int = 3,
    repeats: int = 20,
) -> NetworkCost:
    """Params, FLOPs, training and inference memory and latency of a whole network.

    For a derived network or a baseline, ``network(x)`` is measured; a
    searchable network (non-empty ``arch_specs``) is run with ``arch_weights``,
    by default :func:`uniform_weights`.
    """
    network = _searchable(network)
    if arch_weights is None and getattr(network, "arch_specs", None):
        dtype = example_input.dtype if example_input.is_floating_point() else torch.float32
        arch_weights = uniform_weights(network, dtype)
    found = measure_op(
        _Bound(network, arch_weights),
        example_input,
        latency=latency,
        warmup=warmup,
        repeats=repeats,
    )
    return NetworkCost(**{k: getattr(found, k) for k in NetworkCost.__dataclass_fields__})


# --------------------------------------------------------------------------- display
def _human(value: float) -> str:
    for scale, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{suffix}"
    return f"{value:.4g}"


def format_cost_table(table: CostTable) -> str:
    """A markdown table: one line per (spec, row, op), summed over the cells sharing it.

    Memory is in bytes (k/M/G = 10^3/10^6/10^9), latency in ms; ``cells`` is how
    many cells share the row. A last block gives the fixed part and the context.
    """
    has_latency = "latency_ms" in table.costs
    header = ["spec", "edge", "op", "cells", "params", "FLOPs", "FLOPs+eig/svd", "memory"]
    header += ["latency ms"] if has_latency else []
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    sharing: dict[tuple[str, int, int], int] = {}
    for entry in table.entries:
        place = (entry.spec, entry.row, entry.column)
        sharing[place] = sharing.get(place, 0) + 1
    for spec, ops in table.ops.items():
        for row, (source, target) in enumerate(table.edges[spec]):
            for column, op in enumerate(ops):
                values = [table.costs[kind][spec][row, column].item() for kind in table.kinds]
                by_kind = dict(zip(table.kinds, values))
                cells = [
                    spec,
                    f"{row} ({source}->{target})",
                    op,
                    str(sharing.get((spec, row, column), 0)),
                    f"{int(by_kind['params']):,}",
                    _human(by_kind["flops"]),
                    _human(by_kind["flops_with_linalg"]),
                    _human(by_kind["memory"]),
                ]
                if has_latency:
                    cells.append(f"{by_kind['latency_ms']:.4f}")
                lines.append("| " + " | ".join(cells) + " |")
    fixed = ", ".join(
        f"{kind} {'n/a' if value is None else _human(value)}" for kind, value in table.fixed.items()
    )
    context = ", ".join(f"{k} {v}" for k, v in table.context.items() if v is not None)
    lines += ["", f"fixed part: {fixed}", f"measured: {context}"]
    return "\n".join(lines)
