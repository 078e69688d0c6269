r"""Measured cost model: per-candidate-op look-up tables and whole-network costs.

In the spirit of HW-NAS-Bench's per-op look-up tables, every candidate op of a
searchable network is measured once, on the input it actually receives inside
the network, and the measurements are arranged as one ``(rows, ops)`` tensor
per architecture parameter, aligned with its probabilities:

.. math::

    C^{(k)}_{s}[e, o] = \sum_{\text{cells } c \text{ of type } s}
        \mathrm{cost}_k\bigl(\mathrm{op}_{c,e,o},\ x_{c,e}\bigr),

summing over the cells that share row ``e`` of spec ``s`` (DARTS has several
``"normal"`` cells). The expected cost of a relaxed architecture is then the
differentiable :math:`\mathbb E[C] = \sum_s \sum_{e,o} p_s[e,o] C_s[e,o]`
and the cost of a derived one sums the chosen entries.

Cost kinds (per example batch, i.e. for the batch the network was probed with;
probe with a batch of one for per-sample figures):

``params``
    parameter count (:func:`count_parameters`).
``flops``
    forward FLOPs as :class:`torch.utils.flop_counter.FlopCounterMode` counts
    them (:func:`count_flops`): matrix products and convolutions only.
``flops_with_linalg``
    ``flops`` plus textbook estimates of the symmetric eigendecompositions and
    SVDs FlopCounterMode leaves out (:func:`linalg_flop_estimate`); these
    dominate SPD ops.
``memory``
    bytes a training forward keeps for backward (:func:`training_memory`).
``latency_ms``
    median eval-mode forward time on this machine (:func:`measure_latency`).

The per-op measurements are plain functions of ``(module, input)`` usable on
any ``nn.Module``. :class:`CostLUT` caches them on disk as JSON, keyed by what
determines a measurement (op, module structure, input shape, dtype, device,
threads), so that nothing is measured twice across runs.

A searchable network exposes its candidate ops either through the generic
:class:`~manifold_nas.cell.SearchCell` modules it contains or through its own
``candidate_ops()`` method yielding :class:`CandidateOp` s (or equivalent
5-tuples); see :func:`candidate_ops`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from manifold_nas.cell import SearchCell
from manifold_nas.supernet import Supernet

__all__ = [
    "COST_KINDS",
    "LUT_FILENAME",
    "CandidateCost",
    "CandidateOp",
    "CostLUT",
    "CostTable",
    "LatencyStats",
    "NetworkCost",
    "OpMeasurement",
    "build_cost_table",
    "candidate_ops",
    "cost_penalty",
    "count_flops",
    "count_parameters",
    "derived_cost",
    "expected_cost",
    "format_cost_table",
    "genotype_choices",
    "inference_memory",
    "linalg_flop_estimate",
    "measure_latency",
    "measure_network",
    "measure_op",
    "preserved_buffers",
    "probe_inputs",
    "training_memory",
    "uniform_weights",
]

COST_KINDS: tuple[str, ...] = ("params", "flops", "flops_with_linalg", "memory", "latency_ms")
LUT_FILENAME = "cost_lut.json"
_LUT_FORMAT = "manifold-nas-cost-lut"
_LUT_VERSION = 1


# --------------------------------------------------------------------------- candidate ops
class CandidateOp(NamedTuple):
    """One candidate op: entry ``[row, column]`` of architecture parameter ``spec``."""

    spec: str
    row: int
    column: int
    op_name: str
    module: nn.Module


def _searchable(network: nn.Module) -> nn.Module:
    """The domain network inside a :class:`~manifold_nas.supernet.Supernet`, else itself."""
    return network.network if isinstance(network, Supernet) else network


def candidate_ops(network: nn.Module) -> Iterator[CandidateOp]:
    """Every candidate op of a searchable network with its place in the arch parameters.

    A network's own ``candidate_ops()`` method is used when it has one;
    otherwise every :class:`~manifold_nas.cell.SearchCell` inside it yields
    its edges' ops (spec = ``cell.cell_type``, row = edge index, column = op
    index). Each candidate is checked against ``network.arch_specs``.

    Raises
    ------
    ValueError
        When the network offers neither, or a candidate does not match its spec.
    """
    network = _searchable(network)
    specs = getattr(network, "arch_specs", None)
    if specs is None:
        raise ValueError(
            f"{type(network).__name__} has no arch_specs; it is not a searchable network"
        )
    own = getattr(network, "candidate_ops", None)
    if callable(own):
        found = (CandidateOp(*candidate) for candidate in own())
    else:
        cells = [m for m in network.modules() if isinstance(m, SearchCell)]
        if not cells:
            raise ValueError(
                f"{type(network).__name__} has no SearchCell modules and no candidate_ops() "
                "method; define candidate_ops() yielding (spec, row, column, op_name, module)"
            )
        found = (
            CandidateOp(cell.cell_type, row, column, cell.spec.ops[column], op)
            for cell in cells
            for row, edge in enumerate(cell.edges)
            for column, op in enumerate(edge.ops)
        )
    for candidate in found:
        _check_candidate(network, specs, candidate)
        yield candidate


def _check_candidate(network: nn.Module, specs: Mapping, candidate: CandidateOp) -> None:
    where = f"{type(network).__name__} candidate {candidate[:4]}"
    if candidate.spec not in specs:
        raise ValueError(f"{where}: no architecture parameter {candidate.spec!r}")
    rows, columns = specs[candidate.spec].shape
    if not (0 <= candidate.row < rows and 0 <= candidate.column < columns):
        raise ValueError(f"{where}: outside the ({rows}, {columns}) parameter")
    if specs[candidate.spec].ops[candidate.column] != candidate.op_name:
        raise ValueError(
            f"{where}: column {candidate.column} is {specs[candidate.spec].ops[candidate.column]!r}"
        )


def uniform_weights(network: nn.Module, dtype: torch.dtype = torch.float32) -> dict[str, Tensor]:
    """``1 / n_ops`` for every entry of every architecture parameter (all ops run)."""
    network = _searchable(network)
    return {
        name: torch.full(spec.shape, 1.0 / len(spec.ops), dtype=dtype)
        for name, spec in network.arch_specs.items()
    }


def probe_inputs(
    network: nn.Module, example_input: Tensor, arch_weights: Mapping[str, Tensor] | None = None
) -> list[tuple[CandidateOp, Tensor]]:
    """Run the searchable network once and capture each candidate op's input.

    The forward runs in eval mode under ``no_grad`` (no batch-norm statistics
    change) with ``arch_weights`` (default :func:`uniform_weights`, so every
    op runs). A forward pre-hook on every candidate module records a detached
    copy of its first positional argument, so later measurements see realistic
    values (SPD ops need SPD inputs) and shapes, dtypes and the views of
    partial-channel edges become contiguous tensors of their own.
    """
    network = _searchable(network)
    candidates = list(candidate_ops(network))
    if arch_weights is None:
        dtype = example_input.dtype if example_input.is_floating_point() else torch.float32
        arch_weights = uniform_weights(network, dtype)
    captured: dict[int, Tensor] = {}
    # id(original) -> (original, copy); holding the original keeps its id unique, and
    # copying at call time keeps the values an op saw even if a later op works in place
    copies: dict[int, tuple[Tensor, Tensor]] = {}

    def make_hook(index: int) -> Callable:
        def hook(module: nn.Module, args: tuple) -> None:
            if index in captured:
                return
            if not args or not isinstance(args[0], Tensor):
                name = candidates[index].op_name
                raise TypeError(f"candidate op {name!r} was not called with a tensor")
            x = args[0]
            if id(x) not in copies:
                copies[id(x)] = (x, x.detach().clone(memory_format=torch.contiguous_format))
            captured[index] = copies[id(x)][1]

        return hook

    handles = [
        candidate.module.register_forward_pre_hook(make_hook(i))
        for i, candidate in enumerate(candidates)
    ]
    try:
        with torch.no_grad(), _mode(network, training=False):
            network(example_input, arch_weights)
    finally:
        for handle in handles:
            handle.remove()
    missing = [c[:4] for i, c in enumerate(candidates) if i not in captured]
    if missing:
        raise RuntimeError(f"candidate ops never ran in the probing forward: {missing}")
    return [(candidate, captured[i]) for i, candidate in enumerate(candidates)]


# --------------------------------------------------------------------------- measurements
@contextlib.contextmanager
def _mode(module: nn.Module, training: bool) -> Iterator[nn.Module]:
    """Set every submodule's ``training`` flag, restoring each one afterwards."""
    flags = [(m, m.training) for m in module.modules()]
    module.train(training)
    try:
        yield module
    finally:
        for m, flag in flags:
            m.training = flag


@contextlib.contextmanager
def preserved_buffers(module: nn.Module) -> Iterator[nn.Module]:
    """Undo whatever the block does to ``module``'s buffers (batch-norm running statistics).

    Deep-copying the module instead would fail on modules that hold
    unpicklable attributes (an :class:`~manifold_nas.opset.OpSet`'s mapping
    proxy); parameters are not touched by a forward.
    """
    saved = [
        (owner, name, buffer, buffer.detach().clone())
        for owner in module.modules()
        for name, buffer in owner.named_buffers(recurse=False)
    ]
    try:
        yield module
    finally:
        with torch.no_grad():
            for owner, name, buffer, values in saved:
                setattr(owner, name, buffer)
                buffer.copy_(values)


def _tensors(value: Any) -> Iterator[Tensor]:
    if isinstance(value, Tensor):
        yield value
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _tensors(item)
    elif isinstance(value, Mapping):
        for item in value.values():
            yield from _tensors(item)


def _storages(tensors: Iterator[Tensor] | Sequence[Tensor]) -> dict[int, int]:
    """``data_ptr -> nbytes`` of the distinct storages behind ``tensors``."""
    found = {}
    for t in tensors:
        if t.layout != torch.strided or t.device.type == "meta":
            continue
        storage = t.untyped_storage()
        if storage.nbytes():
            found[storage.data_ptr()] = storage.nbytes()
    return found


def _state_storages(module: nn.Module) -> set[int]:
    return set(_storages([*module.parameters(), *module.buffers()]))


def count_parameters(module: nn.Module) -> int:
    r""":math:`\sum_p |p|` over the module's distinct parameters."""
    return sum(p.numel() for p in module.parameters())


def _eigh_flops(a_shape, uplo="L", compute_v=True, *, out_shape=None, **_) -> int:
    n = a_shape[-1]
    per_matrix = 9 * n**3 if compute_v else 4 * n**3 / 3
    return round(math.prod(a_shape[:-2]) * per_matrix)


def _svd_flops(
    a_shape, full_matrices=False, compute_uv=True, *, out_shape=None, driver=None, **_
) -> int:
    m, n = max(a_shape[-2:]), min(a_shape[-2:])
    if not compute_uv:
        per_matrix = 4 * m * n**2 - 4 * n**3 / 3
    elif full_matrices:
        per_matrix = 4 * m**2 * n + 8 * m * n**2 + 9 * n**3
    else:
        per_matrix = 14 * m * n**2 + 8 * n**3
    return round(math.prod(a_shape[:-2]) * per_matrix)


_LINALG_FORMULAS = {
    torch.ops.aten._linalg_eigh: _eigh_flops,
    torch.ops.aten._linalg_svd: _svd_flops,
}


def linalg_flop_estimate(module: nn.Module, x: Tensor) -> int:
    r"""Estimated FLOPs of the eigendecompositions and SVDs in one eval forward.

    :class:`~torch.utils.flop_counter.FlopCounterMode` counts none of them.
    Golub & Van Loan (*Matrix Computations*, 4th ed., §8.3 and §8.6) give, per
    ``n x n`` symmetric matrix, :math:`9n^3` for ``eigh`` with eigenvectors
    (:math:`\tfrac43 n^3` for eigenvalues only) and, per ``m x n`` matrix
    (:math:`m \ge n`, Golub-Kahan-Reinsch), :math:`4mn^2 - \tfrac43 n^3` for
    singular values only, :math:`14mn^2 + 8n^3` for the thin and
    :math:`4m^2n + 8mn^2 + 9n^3` for the full SVD. Real LAPACK drivers
    (divide and conquer, MRRR) differ by constant factors.
    """
    return _flop_counts(module, x)[1]


def count_flops(module: nn.Module, x: Tensor) -> int:
    r"""Forward FLOPs of ``module(x)`` (eval mode, ``no_grad``) as FlopCounterMode counts them.

    Counted (torch 2.13, ``torch.utils.flop_counter.flop_registry``): matrix
    products (``mm``, ``addmm``, ``bmm``, ``baddbmm``, ``_scaled_mm``; a
    multiply-add is 2 FLOPs, so ``Linear`` is :math:`2 B\,d_\text{in} d_\text{out}`
    and the bias add is not counted), convolutions (:math:`2 B C_\text{in}
    C_\text{out} \prod k \prod \text{out}` / groups, bias excluded) and the
    attention kernels.

    Not counted (0 FLOPs): ``torch.linalg.eigh``/``eigvalsh`` (``aten._linalg_eigh``)
    and ``torch.linalg.svd`` (``aten._linalg_svd``), checked empirically on
    torch 2.13, as are ``cholesky``, ``qr``, ``inv``, ``solve`` and
    ``matrix_exp`` (whose internal products do not pass the dispatcher);
    element-wise ops (activations, additions, ``exp``/``log``), reductions,
    pooling, normalisation and softmax. SPD ops therefore show only their
    BiMap / reconstruction products; see :func:`linalg_flop_estimate`.
    """
    return _flop_counts(module, x)[0]


def _flop_counts(module: nn.Module, x: Tensor) -> tuple[int, int]:
    """(FlopCounterMode's own count, the eigh/SVD estimate) of one eval forward."""
    counter = FlopCounterMode(display=False, custom_mapping=dict(_LINALG_FORMULAS))
    with torch.no_grad(), _mode(module, training=False), counter:
        module(x)
    counts = counter.get_flop_counts().get("Global", {})
    linalg = sum(v for op, v in counts.items() if op in _LINALG_FORMULAS)
    return int(counter.get_total_flops() - linalg), int(linalg)


def training_memory(module: nn.Module, x: Tensor) -> int:
    """Bytes a training forward of ``module(x)`` keeps alive for backward, plus its output.

    The forward runs in train mode with ``x`` requiring grad, as inside a
    network; the module's buffers (batch-norm statistics) are restored after.
    Every tensor autograd saves passes through a
    :func:`torch.autograd.graph.saved_tensors_hooks` pack hook; the result is
    the total size of the distinct storages among the saved tensors and the
    outputs, excluding the module's parameters and buffers (counted by
    ``params``). The input counts when the op saves it, so summing over the
    ops of one edge counts their shared input once per op.
    """
    excluded = _state_storages(module)
    saved: list[Tensor] = []

    def pack(t: Tensor) -> Tensor:
        saved.append(t)
        return t

    x = x.detach().clone().requires_grad_(x.is_floating_point() or x.is_complex())
    with (
        torch.enable_grad(),
        _mode(module, training=True),
        preserved_buffers(module),
        torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t),
    ):
        out = module(x)
    storages = _storages([*saved, *_tensors(out)])
    return sum(n for ptr, n in storages.items() if ptr not in excluded)


class _WorkingSetMode(TorchDispatchMode):
    """Largest (module input ∪ one op's tensor arguments and results), in bytes."""

    def __init__(self, held: dict[int, int], excluded: set[int]) -> None:
        super().__init__()
        self.held, self.excluded = held, excluded
        self.peak = sum(held.values())

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        live = {**self.held, **_storages(_tensors((args, kwargs or {}, out)))}
        self.peak = max(self.peak, sum(n for p, n in live.items() if p not in self.excluded))
        return out


def inference_memory(module: nn.Module, x: Tensor) -> int:
    r"""Bytes of the largest working set of an eval forward of ``module(x)`` (``no_grad``).

    Defined as :math:`\max_k |\,x \cup \mathrm{args}_k \cup \mathrm{out}_k|`
    over the aten ops ``k`` the forward dispatches, counting distinct storages
    and excluding parameters and buffers: the caller holds the input for the
    whole call, and op ``k`` needs its arguments and results alive at once.
    This is a lower bound on the true peak of live activation bytes and equals
    it for a chain whose intermediates die as soon as they are consumed; it
    misses tensors kept alive across ops (e.g. a residual branch), which a
    caching allocator's statistics would show on CUDA but CPU does not track.
    """
    excluded = _state_storages(module)
    mode = _WorkingSetMode(_storages([x]), excluded)
    with torch.no_grad(), _mode(module, training=False), mode:
        module(x)
    return int(mode.peak)


@dataclass(frozen=True)
class LatencyStats:
    """Eval-mode forward time: median and interquartile range over ``repeats`` runs."""

    median_ms: float
    iqr_ms: float
    repeats: int
    warmup: int
    device: str
    dtype: str
    threads: int
    torch_version: str


def measure_latency(
    module: nn.Module, x: Tensor, *, warmup: int = 3, repeats: int = 20
) -> LatencyStats:
    """Time ``module(x)`` in eval mode under ``no_grad`` on the current device.

    ``warmup`` untimed runs (allocator, kernel selection, caches), then
    ``repeats`` timed ones with :func:`time.perf_counter`, synchronising CUDA
    around each; reports the median and the interquartile range
    :math:`Q_3 - Q_1` in milliseconds with the device, dtype, thread count
    (``torch.get_num_threads()``) and torch version they depend on.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0, got {repeats}, {warmup}")
    sync = torch.cuda.synchronize if x.device.type == "cuda" else (lambda: None)
    times = []
    with torch.no_grad(), _mode(module, training=False):
        for _ in range(warmup):
            module(x)
        for _ in range(repeats):
            sync()
            start = time.perf_counter()
            module(x)
            sync()
            times.append((time.perf_counter() - start) * 1e3)
    if repeats > 1:
        q1, _, q3 = statistics.quantiles(times, n=4, method="inclusive")
    else:
        q1 = q3 = times[0]
    return LatencyStats(
        median_ms=statistics.median(times),
        iqr_ms=q3 - q1,
        repeats=repeats,
        warmup=warmup,
        device=str(x.device),
        dtype=str(x.dtype).removeprefix("torch."),
        threads=torch.get_num_threads(),
        torch_version=torch.__version__,
    )


@dataclass(frozen=True)
class OpMeasurement:
    """Everything measured about one module on one input."""

    params: int
    flops: int
    linalg_flops: int
    memory: int
    memory_inference: int
    latency: LatencyStats | None = None

    def value(self, kind: str) -> float:
        """The scalar of cost ``kind`` (one of :data:`COST_KINDS`)."""
        if kind == "params":
            return float(self.params)
        if kind == "flops":
            return float(self.flops)
        if kind == "flops_with_linalg":
            return float(self.flops + self.linalg_flops)
        if kind == "memory":
            return float(self.memory)
        if kind == "latency_ms":
            if self.latency is None:
                raise ValueError("latency was not measured")
            return self.latency.median_ms
        raise ValueError(f"unknown cost kind {kind!r}; known: {COST_KINDS}")


def measure_op(
    module: nn.Module, x: Tensor, *, latency: bool = True, warmup: int = 3, repeats: int = 20
) -> OpMeasurement:
    """All measurements of ``module`` on input ``x`` (latency optional)."""
    flops, linalg = _flop_counts(module, x)
    return OpMeasurement(
        params=count_parameters(module),
        flops=flops,
        linalg_flops=linalg,
        memory=training_memory(module, x),
        memory_inference=inference_memory(module, x),
        latency=measure_latency(module, x, warmup=warmup, repeats=repeats) if latency else None,
    )


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

    ``genotype.cells[spec]`` lists :class:`~manifold_nas.cell.ChosenEdge` s;
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
