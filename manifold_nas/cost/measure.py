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
:class:`~manifold_nas.space.cell.SearchCell` modules it contains or through its own
``candidate_ops()`` method yielding :class:`CandidateOp` s (or equivalent
5-tuples); see :func:`candidate_ops`.
"""

from __future__ import annotations

import contextlib
import math
import statistics
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from manifold_nas.space.cell import SearchCell
from manifold_nas.space.supernet import Supernet

__all__ = [
    "training_mode",
    "COST_KINDS",
    "CandidateOp",
    "LatencyStats",
    "OpMeasurement",
    "candidate_ops",
    "count_flops",
    "count_parameters",
    "inference_memory",
    "linalg_flop_estimate",
    "measure_latency",
    "measure_op",
    "preserved_buffers",
    "probe_inputs",
    "training_memory",
    "uniform_weights",
]

COST_KINDS: tuple[str, ...] = ("params", "flops", "flops_with_linalg", "memory", "latency_ms")


# --------------------------------------------------------------------------- candidate ops
class CandidateOp(NamedTuple):
    """One candidate op: entry ``[row, column]`` of architecture parameter ``spec``."""

    spec: str
    row: int
    column: int
    op_name: str
    module: nn.Module


def _searchable(network: nn.Module) -> nn.Module:
    """The domain network inside a :class:`~manifold_nas.space.supernet.Supernet`, else itself."""
    return network.network if isinstance(network, Supernet) else network


def candidate_ops(network: nn.Module) -> Iterator[CandidateOp]:
    """Every candidate op of a searchable network with its place in the arch parameters.

    A network's own ``candidate_ops()`` method is used when it has one;
    otherwise every :class:`~manifold_nas.space.cell.SearchCell` inside it yields
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
        with torch.no_grad(), training_mode(network, training=False):
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
def training_mode(module: nn.Module, training: bool) -> Iterator[nn.Module]:
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
    unpicklable attributes (an :class:`~manifold_nas.space.opset.OpSet`'s mapping
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
    with torch.no_grad(), training_mode(module, training=False), counter:
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
        training_mode(module, training=True),
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
    with torch.no_grad(), training_mode(module, training=False), mode:
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
    with torch.no_grad(), training_mode(module, training=False):
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
