"""``bilevel``: DARTS-family differentiable search, plain PyTorch, top to bottom.

Every step takes one architecture step on a validation batch (first or
second order, by the :class:`~manifold_nas.strategies.bilevel.architect.Architect`), then one
weight step on a training batch; after ``search.warmup_epochs`` weight-only
epochs (DiNTS / V-NAS). After every epoch the supernet is validated, the
probabilities, edge entropies and collapse diagnostics are logged, and a
checkpoint is written. At the end the config's selector (DARTS top-k argmax
or DARTS-PT perturbation) turns the supernet into a genotype.

The settings live in the config's ``search:`` section (epochs, batch size,
optimizers, order, warm-up, cost penalty, Hessian diagnostics), so every
config written before strategies existed runs unchanged and gives the same
result for the same seed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping
from typing import Any

from torch import Tensor, nn
from tqdm.auto import tqdm

from manifold_nas.config import call_with_options, split_name
from manifold_nas.cost.measure import count_parameters
from manifold_nas.optim import build_optimizer
from manifold_nas.optim.state import load_optimizer_state
from manifold_nas.run.context import Run
from manifold_nas.space.contracts import has_cost_model
from manifold_nas.space.diagnostics import (
    UNDECIDED_ENTROPY_RATIO,
    decision,
    dominant_hessian_eigenvalue,
    edge_entropies,
    parameter_free_count,
)
from manifold_nas.space.genotype import Genotype
from manifold_nas.space.selection import SELECTORS, SelectionContext
from manifold_nas.space.supernet import Supernet
from manifold_nas.strategies.base import Strategy, register_strategy
from manifold_nas.strategies.bilevel.architect import Architect

LOGGER = logging.getLogger("manifold_nas")

__all__ = ["BilevelStrategy", "genotype_of"]


def genotype_of(supernet: Supernet, chosen: Mapping[str, Any], opset: str, config: Any) -> Genotype:
    """A genotype of ``chosen`` edges, with the supernet's ops and probabilities."""
    probs = supernet.arch.probabilities()
    return Genotype(
        opset=opset,
        cells=dict(chosen),
        ops={k: spec.ops for k, spec in supernet.specs.items()},
        probabilities={k: tuple(tuple(r) for r in v.tolist()) for k, v in probs.items()},
        config=config.to_dict(),
    )


@register_strategy("bilevel")
class BilevelStrategy(Strategy):
    """DARTS bilevel search configured by the ``search:`` section (no options of its own).

    Runs data-parallel under ``torchrun`` (see :mod:`manifold_nas.run.distributed`).
    """

    supports_distributed = True

    def __init__(self) -> None:
        self.epoch = 0
        self.history: list[dict[str, Any]] = []

    # -- construction ---------------------------------------------------------------
    def setup(self, run: Run) -> None:
        s = run.config.search
        self.supernet = run.build_supernet()
        if s.sync_batch_norm and run.world.distributed:
            self.supernet = nn.SyncBatchNorm.convert_sync_batchnorm(self.supernet)
        self.model = run.data_parallel(self.supernet)
        self.weight_optimizer, self.scheduler = run.search_optimizer(
            self.supernet.weight_parameters()
        )
        a_name, a_opts = split_name(s.arch_optimizer)
        self.arch_optimizer = build_optimizer(a_name, self.supernet.arch_parameters(), **a_opts)
        self.architect = Architect(
            self.supernet,
            run.task.loss,
            self.arch_optimizer,
            order=s.order,
            weight_optimizer=self.weight_optimizer,
            reduce=run.world.average,
        )

    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "supernet": self.supernet.state_dict(),
            "weight_optimizer": self.weight_optimizer.state_dict(),
            "arch_optimizer": self.arch_optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "history": self.history,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.supernet.load_state_dict(state["supernet"])
        load_optimizer_state(self.weight_optimizer, state["weight_optimizer"])
        load_optimizer_state(self.arch_optimizer, state["arch_optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.epoch = int(state["epoch"])
        self.history = list(state["history"])

    def progress(self) -> str:
        return f"after epoch {self.epoch}"

    # -- the loop -----------------------------------------------------------------------
    def run(self, run: Run) -> Genotype:
        while self.epoch < run.config.search.epochs:
            self.train_epoch(run)
            run.checkpoint(self)
        return self.select(run)

    def _batches(self, run: Run, epoch: int) -> Iterator[tuple[Any, Any]]:
        s, seed = run.config.search, run.config.seed
        weight_loader = run.loader(run.weight_set, s.batch_size, True, seed * 100003 + 2 * epoch)
        arch_batches = run.batches(run.valid_set, s.batch_size, seed * 100003 + 2 * epoch + 1)
        limit = s.max_steps_per_epoch
        for step, (wb, ab) in enumerate(zip(weight_loader, arch_batches)):
            if limit is not None and step >= limit:
                break
            yield wb, ab

    def train_epoch(self, run: Run, arch_steps: bool | None = None) -> dict[str, Any]:
        """One epoch of alternating architecture and weight steps."""
        s = run.config.search
        started = time.perf_counter()
        self.supernet.arch.relaxation.set_progress(self.epoch / max(1, s.epochs))
        self.supernet.entropy_weight = self._entropy_weight(s)
        if arch_steps is None:
            arch_steps = self.epoch >= s.warmup_epochs
        task = run.task
        self.supernet.train()
        sums: dict[str, float] = {}
        n = 0
        bar = tqdm(
            self._batches(run, self.epoch),
            total=self._steps_per_epoch(run),
            desc=f"search {self.epoch + 1}/{s.epochs}",
            disable=run.quiet,
            leave=False,
        )
        for step, (wb, ab) in enumerate(bar):
            step_started = time.perf_counter()
            x, y = run.inputs(wb)
            record: dict[str, Any] = {"type": "step", "epoch": self.epoch, "step": step}
            if arch_steps:
                record.update(self.architect.step((x, y), run.inputs(ab)))
            self.weight_optimizer.zero_grad(set_to_none=True)
            out = self.model(x)
            loss = task.loss(out, y)
            loss.backward()
            if s.grad_clip:
                nn.utils.clip_grad_norm_(list(self.supernet.weight_parameters()), s.grad_clip)
            self.weight_optimizer.step()
            record["loss"] = float(loss.detach())
            record.update(task.batch_metrics(out.detach(), y))
            record["step_seconds"] = time.perf_counter() - step_started
            run.log(record)
            for k, v in record.items():
                if k not in ("type", "epoch", "step"):
                    sums[k] = sums.get(k, 0.0) + float(v)
            n += 1
            bar.set_postfix(
                {k: f"{v / n:.3f}" for k, v in sums.items() if k in ("loss", task.primary_metric)}
            )
        self.scheduler.step()
        seconds = time.perf_counter() - started
        summary = self._epoch_summary(run, {k: v / max(n, 1) for k, v in sums.items()}, seconds)
        run.log(summary)
        self.history.append(summary)
        self.epoch += 1
        return summary

    def _entropy_weight(self, s) -> float:
        """``λ(t)``: 0 until the warm-up ends, then rising linearly to ``entropy_weight``."""
        if not s.entropy_weight:
            return 0.0
        searched = max(1, s.epochs - s.warmup_epochs)
        return s.entropy_weight * min(1.0, max(0.0, (self.epoch - s.warmup_epochs + 1) / searched))

    def _steps_per_epoch(self, run: Run) -> int:
        s = run.config.search
        steps = -(-len(run.weight_set) // s.batch_size)
        return steps if s.max_steps_per_epoch is None else min(steps, s.max_steps_per_epoch)

    def _epoch_summary(
        self, run: Run, train_means: Mapping[str, float], seconds: float
    ) -> dict[str, Any]:
        probs = self.supernet.arch.probabilities()
        entropies = edge_entropies(probs)
        previous = self.history[-1]["seconds"] if self.history else 0.0
        summary: dict[str, Any] = {
            "type": "epoch",
            "epoch": self.epoch,
            "lr": self.weight_optimizer.param_groups[0]["lr"],
            **{f"train_{k}": v for k, v in train_means.items()},
            "valid": self.evaluate_supernet(run),
            "probabilities": {k: v.tolist() for k, v in probs.items()},
            "entropy": entropies,
            "mean_entropy": sum(sum(v) for v in entropies.values())
            / max(1, sum(len(v) for v in entropies.values())),
            **decision(probs),
            "parameter_free": parameter_free_count(
                probs, self.supernet.specs, run.opset.zero, run.opset.parameter_free
            ),
            "seconds": previous + seconds,
        }
        if run.config.search.hessian_eigenvalue:
            summary["hessian_eigenvalue"] = self._hessian_eigenvalue(run)
        return summary

    def evaluate_supernet(
        self, run: Run, arch_weights: Mapping[str, Tensor] | None = None
    ) -> dict[str, Any]:
        """The supernet's metrics on the validation split."""
        return run.evaluate(self.supernet, run.valid_set, arch_weights)

    def _hessian_eigenvalue(self, run: Run) -> float | None:
        x, y = run.inputs(next(iter(run.eval_loader(run.valid_set))))
        params = list(self.supernet.arch_parameters())

        def loss() -> Tensor:
            return run.task.loss(self.supernet(x), y)

        try:
            return dominant_hessian_eigenvalue(loss, params, iterations=10)
        except RuntimeError as err:
            # Ops with a first-order-only backward (the SPD eigen-functions)
            # cannot give Hessian-vector products; the search goes on.
            LOGGER.warning(
                "no Hessian eigenvalue: the op set is not twice differentiable (%s)", err
            )
            return None

    # -- selection ---------------------------------------------------------------------
    def select(self, run: Run) -> Genotype:
        name, options = split_name(run.config.selection)
        selector = call_with_options(SELECTORS.get(name), options, "selection")
        primary = run.task.primary_metric

        def evaluate(weights: Mapping[str, Tensor]) -> float:
            return float(self.evaluate_supernet(run, weights)[primary])

        def finetune(epochs: int) -> None:
            for _ in range(epochs):
                self.train_epoch(run, arch_steps=True)

        chosen = selector(SelectionContext(self.supernet, run.opset.zero, evaluate, finetune))
        state = decision(self.supernet.arch.probabilities())
        if state["entropy_ratio"] > UNDECIDED_ENTROPY_RATIO:
            LOGGER.warning(
                "the architecture distribution is near-uniform (mean edge entropy %.0f%% of its "
                "maximum, top-2 margin %.3f), so the chosen cell is close to a random draw; search "
                "longer, raise the architecture step size or set search.entropy_weight",
                100 * state["entropy_ratio"],
                state["top2_margin"],
            )
        return genotype_of(self.supernet, chosen, run.opset.name, run.config)

    def summary(self, run: Run) -> dict[str, Any]:
        last = self.history[-1] if self.history else {}
        network = self.supernet.network
        summary: dict[str, Any] = {
            "final": last.get("valid", {}),
            "mean_entropy": last.get("mean_entropy"),
            **decision(self.supernet.arch.probabilities()),
            "parameter_free": last.get("parameter_free"),
            "epochs": self.epoch,
            "parameters": {
                "supernet_weights": count_parameters(network),
                "architecture": sum(p.numel() for p in self.supernet.arch_parameters()),
            },
        }
        if has_cost_model(network):
            summary["cost"] = network.expected_cost(self.supernet.arch.probabilities())
        return summary
