r"""``cream``: Cream of the Crop (Peng et al., NeurIPS 2020), prioritized paths for one-shot NAS.

The supernet is trained one path per step exactly as ``spos`` does; on top:

**Prioritized path board.** From epoch ``warmup_epochs`` on, every sampled
path is measured before its weight step: its primary metric (accuracy, or
Dice for segmentation) on the step's held-out batch, drawn from the
validation split; its ``cost`` (:class:`~manifold_nas.strategies.one_shot.paths.PathCost`:
derived parameters by default, FLOPs, memory, or the network's own cost
model such as the volumetric memory cost); and its output probabilities on a
fixed *probe* batch (the first ``probe_size`` validation examples). It enters
the board of ``board_size`` entries when the board is not full, or it beats
the worst entry by more than ``margin``, or it beats it at a lower cost
(:func:`update_board`); a path already on the board has its entry refreshed.
The stored outputs are the **student's**, the sampled path's own; the public
code stored the teacher's (found by NNI's port, PR #3498). The board is part
of the checkpoint, so a resumed run has the same board, and its evolution is
drawn in ``board.png`` (accuracy and cost of every entry after every epoch).

**Distillation.** With a non-empty board, a board path teaches the sampled
one: the loss is

.. math::
    L = \tfrac12\big(m\, L_{KD} + (2 - m)\, L_{task}\big), \qquad
    L_{KD} = -\frac{1}{|V|}\sum_{v} \sum_c p^{T}_{v,c} \log \operatorname{softmax}(z)_{v,c},

where :math:`z` are the student's logits on the training batch, :math:`p^T`
the teacher path's softmax on the same batch (computed with the current
weights, without gradient) and :math:`v` runs over the samples, and for
segmentation over every voxel too (soft targets are probability maps).

**Meta-network.** :class:`MetaMatchingNetwork` scores each board path
:math:`k` by :math:`\rho_k = M_\theta(f_k)`, a linear map of
:math:`f_k = \operatorname{pool}(p^{S}_{probe} - p^{(k)}_{probe})`, the
difference of the student's and the stored probe probabilities (spatial axes
averaged for segmentation). The teacher is :math:`k^\star = \arg\max_k \rho_k`
and the matching weight :math:`m = \sigma(\rho_{k^\star})`.

*Sign convention.* We use :math:`m = \sigma(+\rho_{k^\star})` of the chosen
teacher and take descent steps on the meta-objective,
:math:`\theta \leftarrow \theta - \eta_\theta \nabla_\theta L_{val}(w'(\theta))`.
Then :math:`\rho` means "distilling from this path helps": the meta-gradient
raises :math:`\rho_k` exactly when a larger distillation weight from path
:math:`k` lowers the validation loss after one step, so the argmax that picks
the teacher and the weight it gets agree. The public code uses
:math:`\sigma(-\rho)` of the *last* board entry (Cream issue #25), under
which the path with the highest score, chosen as teacher, would be the one
the meta-network wants distilled least.

*Meta-gradient.* Every ``meta_interval`` distillation steps, one step is
unrolled: with :math:`g_{KD} = \nabla_w L_{KD}` and :math:`g_{task} =
\nabla_w L_{task}` on the training batch,

.. math::
    w'(\theta) = R_w\!\Big(-\xi\, \operatorname{grad}\,
        \tfrac12\big(m(\theta)\, g_{KD} + (2 - m(\theta))\, g_{task}\big)\Big),

a plain (Riemannian) SGD step at the current weight learning rate
:math:`\xi` through each parameter's retraction :math:`R_w`, and
:math:`\nabla_\theta L_{task}(w'(\theta))` on the step's held-out batch is
exact by back-propagation through :func:`torch.func.functional_call` (as
:mod:`manifold_nas.strategies.bilevel.architect` evaluates virtual weights). Because
:math:`\theta` enters the step only through the scalar :math:`m`, no second
derivative of the network is needed, so op sets with first-order-only
backward passes (the SPD eigen-functions) are supported. The same
:math:`g_{KD}`, :math:`g_{task}` then give the real weight step. The
meta-network starts at zero (every :math:`\rho = 0`, :math:`m = 1/2`, the
best board path teaches) and is stepped by Adam with ``meta_lr``.

**Final choice.** The architecture is taken from the board: the best entry
within the ``budget`` (paths over it are never drawn, as in ``spos``). The
board's accuracies were measured on single held-out batches at different
points of training, so by default (``rescore_board``) its paths are first
re-scored on the whole validation split with inherited weights after
batch-norm recalibration (``board_size`` evaluations, where ``spos`` spends
``final_paths``); with ``rescore_board: false`` the board's own accuracies
decide, as in the paper.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from manifold_nas.config import check_count, is_finite_number
from manifold_nas.cost.measure import preserved_buffers
from manifold_nas.errors import UserInputError
from manifold_nas.optim.geometry import retract, riemannian_gradient
from manifold_nas.optim.state import load_optimizer_state
from manifold_nas.run.context import Run
from manifold_nas.space.genotype import Genotype
from manifold_nas.space.sampling import genotype_key, genotype_weights
from manifold_nas.strategies.base import register_strategy
from manifold_nas.strategies.one_shot.paths import path_from_cells
from manifold_nas.strategies.one_shot.spos import SinglePathOneShot

LOGGER = logging.getLogger("manifold_nas")

__all__ = [
    "BoardEntry",
    "Cream",
    "MetaMatchingNetwork",
    "board_order",
    "distillation_loss",
    "plot_board",
    "soft_target_loss",
    "unrolled_meta_gradient",
    "update_board",
]


# -- the board ---------------------------------------------------------------------------
@dataclass(frozen=True)
class BoardEntry:
    """A prioritized path: its validation score, cost and probe-batch probabilities."""

    path: Genotype
    accuracy: float
    cost: float
    outputs: Tensor
    step: int

    @property
    def key(self) -> str:
        return genotype_key(self.path)


def board_order(entry: BoardEntry) -> tuple[float, float, int]:
    """Best first: higher accuracy, then lower cost, then earlier entry."""
    return (-entry.accuracy, entry.cost, entry.step)


def update_board(
    board: Sequence[BoardEntry], candidate: BoardEntry, size: int, margin: float
) -> tuple[list[BoardEntry], bool]:
    """The board after offering it ``candidate``, and whether it entered.

    ``candidate`` enters when the board has fewer than ``size`` entries, or
    its accuracy exceeds the worst entry's by more than ``margin``, or it
    exceeds it at a lower cost (Cream's rule). An entry of the same path is
    replaced by ``candidate`` (its newer measurement). The result is sorted
    by :func:`board_order` and holds at most ``size`` entries.
    """
    others = [e for e in board if e.key != candidate.key]
    if len(others) < len(board) or len(board) < size:
        admitted = True
    else:
        worst = max(board, key=board_order)
        admitted = candidate.accuracy > worst.accuracy + margin or (
            candidate.accuracy > worst.accuracy and candidate.cost < worst.cost
        )
    if not admitted:
        return list(board), False
    return sorted([*others, candidate], key=board_order)[:size], True


# -- distillation -------------------------------------------------------------------------
def soft_target_loss(logits: Tensor, target_probabilities: Tensor) -> Tensor:
    """Cross-entropy against soft targets on class axis 1, averaged over samples and voxels."""
    return -(target_probabilities * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


def distillation_loss(task_loss: Tensor, kd_loss: Tensor, weight: float | Tensor) -> Tensor:
    """Cream's mixture :math:`(m L_{KD} + (2 - m) L_{task}) / 2`."""
    return (weight * kd_loss + (2 - weight) * task_loss) / 2


class MetaMatchingNetwork(nn.Module):
    r"""Scores the match between the student's and each board path's probe outputs.

    :math:`\rho_k = w^\top f_k + b` with :math:`f_k` the flattened
    ``(probe, classes)`` difference of the probabilities, spatial axes
    averaged. Zero-initialised, so every path scores 0 at first.
    """

    def __init__(self, in_features: int, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, 1, dtype=dtype)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    @staticmethod
    def features(student: Tensor, board: Tensor) -> Tensor:
        """``(K, P * C)`` features of ``student (P, C, ...)`` against ``board (K, P, C, ...)``."""
        difference = student.unsqueeze(0) - board
        if difference.dim() > 3:
            difference = difference.flatten(3).mean(dim=-1)
        return difference.flatten(1)

    def forward(self, student: Tensor, board: Tensor) -> Tensor:
        """The scores :math:`\\rho_k`, shape ``(K,)``."""
        return self.linear(self.features(student, board)).squeeze(-1)


def unrolled_meta_gradient(
    supernet: nn.Module,
    arch_weights: Mapping[str, Tensor],
    params: Mapping[str, Tensor],
    kd_grads: Sequence[Tensor | None],
    task_grads: Sequence[Tensor | None],
    matching_weight: Callable[[], Tensor],
    meta_parameters: Sequence[Tensor],
    val_batch: tuple[Tensor, Any],
    loss_fn: Callable[[Tensor, Any], Tensor],
    lr: float,
) -> tuple[list[Tensor], float]:
    r""":math:`\nabla_\theta L_{val}(w'(\theta))` and :math:`L_{val}(w')` for one unrolled step.

    :math:`w'(\theta) = R_w(-\xi\, \operatorname{grad}\, \tfrac12(m(\theta) g_{KD} +
    (2 - m(\theta)) g_{task}))` for every named parameter in ``params`` that
    has a gradient (``kd_grads``, ``task_grads`` align with ``params``; a
    ``None`` is a zero gradient), ``m = matching_weight()`` carries the graph
    to ``meta_parameters`` and ``lr`` is :math:`\xi`. The validation loss is
    evaluated with :func:`torch.func.functional_call` on copies of the
    buffers, so the supernet itself is not changed.
    """
    m = matching_weight()
    stepped = {}
    for (name, param), kd, task in zip(params.items(), kd_grads, task_grads):
        if kd is None and task is None:
            continue
        kd = torch.zeros_like(param) if kd is None else kd
        task = torch.zeros_like(param) if task is None else task
        direction = (m * kd + (2 - m) * task) / 2
        stepped[name] = retract(
            param, -lr * riemannian_gradient(param, direction), differentiable=True
        )
    buffers = {n: b.clone() for n, b in supernet.named_buffers()}
    x_val, y_val = val_batch
    out = functional_call(
        supernet, {**stepped, **buffers}, (x_val, dict(arch_weights)), strict=False
    )
    loss = loss_fn(out, y_val)
    grads = torch.autograd.grad(loss, list(meta_parameters), allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for g, p in zip(grads, meta_parameters)], float(
        loss.detach()
    )


# -- the board plot ------------------------------------------------------------------------
def plot_board(history: Sequence[Mapping[str, Any]], path: str | Path) -> Path | None:
    """Accuracy and cost of every board entry after every epoch; ``None`` without matplotlib."""
    try:
        import matplotlib
    except ImportError:
        LOGGER.warning("no board.png: plotting needs matplotlib (pip install 'manifold-nas[viz]')")
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    for ax, key, title in ((axes[0], "accuracy", "held-out score"), (axes[1], "cost", "cost")):
        xs = [r["epoch"] + 1 for r in history for _ in r.get("board", ())]
        ys = [e[key] for r in history for e in r.get("board", ())]
        ax.scatter(xs, ys, s=12, alpha=0.6, label="entries")
        best = [(r["epoch"] + 1, r["board"][0][key]) for r in history if r.get("board")]
        if best:
            ax.plot(*zip(*best), color="C3", marker="o", label="best-scoring entry")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7)
    fig.suptitle("prioritized path board")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# -- the strategy ---------------------------------------------------------------------------
@register_strategy("cream")
class Cream(SinglePathOneShot):
    """Cream: single-path training distilled from a board of prioritized paths.

    Parameters
    ----------
    board_size:
        Entries on the board (K; 10 in the paper).
    margin:
        How much a path must beat the board's worst entry by, in units of
        the primary metric (Cream: 5 points of top-1, i.e. 0.05).
    warmup_epochs:
        Plain single-path epochs before the board is filled and used.
    meta_lr:
        Adam's learning rate for the meta-network.
    meta_interval:
        Distillation steps between meta-network updates.
    probe_size:
        Validation examples in the fixed probe batch.
    rescore_board:
        Re-score the board's paths on the validation split before the final
        choice (see the module docstring).
    prior, recalibration_batches, cost, budget:
        As for ``spos``.
    """

    def __init__(
        self,
        board_size: int = 10,
        margin: float = 0.05,
        warmup_epochs: int = 1,
        meta_lr: float = 1e-3,
        meta_interval: int = 10,
        probe_size: int = 8,
        rescore_board: bool = True,
        prior: dict[str, float] | None = None,
        recalibration_batches: int = 4,
        cost: str = "params",
        budget: float | None = None,
    ) -> None:
        super().__init__(
            prior=prior, recalibration_batches=recalibration_batches, cost=cost, budget=budget
        )
        check_count("board_size", board_size, 1)
        check_count("warmup_epochs", warmup_epochs, 0)
        check_count("meta_interval", meta_interval, 1)
        check_count("probe_size", probe_size, 1)
        if not (is_finite_number(margin) and margin >= 0):
            raise ValueError(f"margin must be a number >= 0, got {margin!r}")
        if not (is_finite_number(meta_lr) and meta_lr > 0):
            raise ValueError(f"meta_lr must be a positive number, got {meta_lr!r}")
        self.board_size = int(board_size)
        self.margin = float(margin)
        self.warmup_epochs = int(warmup_epochs)
        self.meta_lr = float(meta_lr)
        self.meta_interval = int(meta_interval)
        self.probe_size = int(probe_size)
        self.rescore_board = bool(rescore_board)
        self.board: list[BoardEntry] = []
        self.global_step = 0
        self.distilled_steps = 0
        self.meta_updates = 0

    # -- construction ---------------------------------------------------------------
    def setup(self, run: Run) -> None:
        super().setup(run)
        epochs = run.config.search.epochs
        if self.warmup_epochs >= epochs:
            raise UserInputError(
                f"strategy.warmup_epochs ({self.warmup_epochs}) leaves no epoch of the "
                f"{epochs} search epochs for the board; lower it or raise search.epochs"
            )
        self.device = run.device
        self.probe, _ = run.inputs(next(iter(run.loader(run.valid_set, self.probe_size, False))))
        features = self.probe.shape[0] * run.bundle.num_classes
        self.meta = MetaMatchingNetwork(features, run.dtype or torch.float32).to(run.device)
        self.meta_optimizer = torch.optim.Adam(self.meta.parameters(), lr=self.meta_lr)

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "probe": self.probe,
            "meta": self.meta.state_dict(),
            "meta_optimizer": self.meta_optimizer.state_dict(),
            "board": [
                {
                    "genotype": e.path.to_dict()["cells"],
                    "accuracy": e.accuracy,
                    "cost": e.cost,
                    "outputs": e.outputs,
                    "step": e.step,
                }
                for e in self.board
            ],
            "global_step": self.global_step,
            "distilled_steps": self.distilled_steps,
            "meta_updates": self.meta_updates,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.probe = state["probe"].to(self.device)
        self.meta.load_state_dict(state["meta"])
        load_optimizer_state(self.meta_optimizer, state["meta_optimizer"])
        self.board = [
            BoardEntry(
                path_from_cells(e["genotype"], self.specs, self.sampler.opset),
                float(e["accuracy"]),
                float(e["cost"]),
                e["outputs"].to(self.device),
                int(e["step"]),
            )
            for e in state["board"]
        ]
        self.global_step = int(state["global_step"])
        self.distilled_steps = int(state["distilled_steps"])
        self.meta_updates = int(state["meta_updates"])

    # -- the step ---------------------------------------------------------------------
    def start_epoch(self, run: Run) -> None:
        s = run.config.search
        seed = run.config.seed * 100003 + 2 * self.epoch + 1
        self.held_out = run.batches(run.valid_set, s.batch_size, seed)

    @torch.no_grad()
    def _batch_statistics_forward(self, x: Tensor, weights: Mapping[str, Tensor]) -> Tensor:
        # Training-mode forward (batch statistics, like the training step) that
        # leaves the running statistics alone: measuring is not training.
        with preserved_buffers(self.supernet):
            return self.supernet(x, weights)

    def train_step(self, run: Run, path: Genotype, batch: Any) -> dict[str, Any]:
        task = run.task
        x, y = run.inputs(batch)
        weights = genotype_weights(path, self.specs, run.dtype, run.device)
        board_record: dict[str, Any] = {}
        teacher, student_probe, held_out = None, None, None
        if self.epoch >= self.warmup_epochs:
            held_out = run.inputs(next(self.held_out))
            student_probe = self._batch_statistics_forward(self.probe, weights).softmax(dim=1)
            measured = task.batch_metrics(
                self._batch_statistics_forward(held_out[0], weights), held_out[1]
            )
            score = float(measured.get(task.primary_metric, float("nan")))
            board_record["held_out"] = score
            if self.board:
                stored = torch.stack([e.outputs for e in self.board])
                with torch.no_grad():
                    scores = self.meta(student_probe, stored)
                k = int(torch.argmax(scores))
                teacher = self.board[k]
                weight = float(torch.sigmoid(scores[k]))
                teacher_weights = genotype_weights(teacher.path, self.specs, run.dtype, run.device)
                targets = self._batch_statistics_forward(x, teacher_weights).softmax(dim=1)
                board_record.update(teacher=k, matching_weight=weight)

        self.weight_optimizer.zero_grad(set_to_none=True)
        out = self.supernet(x, weights)
        task_loss = task.loss(out, y)
        loss = task_loss
        if teacher is None:
            task_loss.backward()
        else:
            kd_loss = soft_target_loss(out, targets)
            loss = distillation_loss(task_loss, kd_loss, weight)
            board_record["kd_loss"] = float(kd_loss.detach())
            self.distilled_steps += 1
            if self.distilled_steps % self.meta_interval == 0:
                board_record["meta_loss"] = self._meta_step(
                    run, weights, kd_loss, task_loss, weight, student_probe, teacher, held_out
                )
            else:
                loss.backward()
        self.clip_and_step(run)

        if student_probe is not None and math.isfinite(board_record["held_out"]):
            candidate = BoardEntry(
                path, board_record["held_out"], self.cost(path), student_probe, self.global_step
            )
            self.board, board_record["entered"] = update_board(
                self.board, candidate, self.board_size, self.margin
            )
        self.global_step += 1
        record: dict[str, Any] = {
            "loss": float(loss.detach()),
            "task_loss": float(task_loss.detach()),
            **task.batch_metrics(out.detach(), y),
        }
        if board_record:
            record["board"] = board_record
        return record

    def _meta_step(
        self,
        run: Run,
        weights: Mapping[str, Tensor],
        kd_loss: Tensor,
        task_loss: Tensor,
        weight: float,
        student_probe: Tensor,
        teacher: BoardEntry,
        held_out: tuple[Tensor, Any],
    ) -> float:
        """Update the meta-network by the unrolled meta-gradient; set the weight gradients."""
        params = {n: p for n, p in self.supernet.named_weight_parameters() if p.requires_grad}
        kd_grads = torch.autograd.grad(
            kd_loss, list(params.values()), retain_graph=True, allow_unused=True
        )
        task_grads = torch.autograd.grad(task_loss, list(params.values()), allow_unused=True)
        stored = teacher.outputs.unsqueeze(0)

        def matching_weight() -> Tensor:
            return torch.sigmoid(self.meta(student_probe, stored)[0])

        meta_grads, meta_loss = unrolled_meta_gradient(
            self.supernet,
            weights,
            params,
            kd_grads,
            task_grads,
            matching_weight,
            list(self.meta.parameters()),
            held_out,
            run.task.loss,
            float(self.weight_optimizer.param_groups[0]["lr"]),
        )
        for p, g in zip(self.meta.parameters(), meta_grads):
            p.grad = g.detach()
        self.meta_optimizer.step()
        self.meta_optimizer.zero_grad(set_to_none=True)
        self.meta_updates += 1
        # The weight step uses the gradient loss.backward() would have given.
        for p, kd, task in zip(params.values(), kd_grads, task_grads):
            if kd is None and task is None:
                continue
            kd = torch.zeros_like(p) if kd is None else kd
            task = torch.zeros_like(p) if task is None else task
            p.grad = distillation_loss(task, kd, weight)
        return meta_loss

    def epoch_summary(self, run: Run, means: dict[str, float], steps: int) -> dict[str, Any]:
        summary = super().epoch_summary(run, means, steps)
        summary["board"] = [
            {
                "accuracy": e.accuracy,
                "cost": e.cost,
                "step": e.step,
                "genotype": e.path.to_dict()["cells"],
            }
            for e in self.board
        ]
        summary["distilled_steps"] = self.distilled_steps
        summary["meta_updates"] = self.meta_updates
        return summary

    # -- the final choice -------------------------------------------------------------
    def choose(self, run: Run) -> Genotype:
        """The best board path within the budget (re-scored by default); draws ``board.png``."""
        if run.out_dir is not None:
            plot_board(self.history, run.out_dir / "board.png")
        candidates = [e for e in self.board if self.budget is None or e.cost <= self.budget]
        if not candidates:
            raise UserInputError(
                "the prioritized path board is empty: no path was measured after the "
                f"{self.warmup_epochs} warm-up epoch(s); raise search.epochs"
            )
        self.evaluated = []
        score = self.path_scorer(run, "board_path")
        if self.rescore_board:
            scores = [score(e.path) for e in candidates]
            best = max(range(len(candidates)), key=lambda i: (scores[i], -candidates[i].cost, -i))
            self.chosen = self.evaluated[best]
        else:
            score(candidates[0].path)
            self.chosen = self.evaluated[0]
        return self.genotype(run, self.chosen["genotype"])

    def summary(self, run: Run) -> dict[str, Any]:
        summary = super().summary(run)
        summary.pop("final_search")
        summary["board"] = [
            {
                "genotype": e.path.to_dict()["cells"],
                "accuracy": e.accuracy,
                "cost": e.cost,
                "step": e.step,
            }
            for e in self.board
        ]
        summary["rescore_board"] = self.rescore_board
        summary["distilled_steps"] = self.distilled_steps
        summary["meta_updates"] = self.meta_updates
        return summary
