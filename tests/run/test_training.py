"""Retraining recipes: held-out model selection, patience, label smoothing."""

import pytest
import torch
import torch.nn.functional as F

from manifold_nas.config import parse_config
from manifold_nas.errors import UserInputError
from manifold_nas.run.context import Run
from manifold_nas.run.retrain import train_derived
from manifold_nas.space.sampling import random_genotype
from manifold_nas.task import ClassificationTask, Task


def genotype_for(config_dict):
    import random

    run = Run(parse_config(config_dict))
    specs = run.build_searchable().arch_specs
    return random_genotype(specs, run.opset.name, run.opset.zero, random.Random(0))


def test_model_selection_keeps_the_best_validation_epoch(tiny_config_dict):
    tiny_config_dict["train"].update(epochs=6, valid_portion=0.3, max_steps_per_epoch=4)
    config = parse_config(tiny_config_dict)
    genotype = genotype_for(tiny_config_dict)
    summary = train_derived(genotype, config, quiet=True)
    assert summary["epochs_trained"] == 6
    best = summary["best_epoch"]
    assert 0 <= best < 6
    assert "accuracy" in summary["valid"]


def test_the_restored_weights_score_what_the_best_epoch_scored(tiny_config_dict):
    tiny_config_dict["train"].update(epochs=5, max_steps_per_epoch=4)
    config = parse_config(tiny_config_dict)
    run = Run(config)
    genotype = genotype_for(tiny_config_dict)
    network = run.build_derived(genotype)
    result = run.train(network, 5, valid_set=run.valid_set, select_best=True)
    scores = [r["valid"]["accuracy"] for r in result.history]
    assert result.best_epoch == scores.index(max(scores))
    assert run.evaluate(network, run.valid_set, batch_size=64)["accuracy"] == max(scores)


def test_patience_stops_after_that_many_epochs_without_improvement(tiny_config_dict, monkeypatch):
    tiny_config_dict["train"].update(epochs=30, max_steps_per_epoch=1)
    run = Run(parse_config(tiny_config_dict))
    network = run.build_derived(genotype_for(tiny_config_dict))
    scores = iter([0.5, 0.6, 0.55, 0.58, 0.9, 0.9])
    monkeypatch.setattr(run, "evaluate", lambda *a, **k: {"accuracy": next(scores)})
    result = run.train(network, 30, valid_set=run.valid_set, select_best=True, patience=2)
    assert result.best_epoch == 1 and result.stopped_at == 3 and len(result.history) == 4


def test_label_smoothing_is_the_smoothed_cross_entropy():
    torch.manual_seed(0)
    logits, target = torch.randn(5, 4), torch.tensor([0, 1, 2, 3, 0])
    smoothed = ClassificationTask().training_loss(logits, target, 0.1)
    soft = torch.full((5, 4), 0.1 / 4)
    soft[torch.arange(5), target] += 0.9
    expected = -(soft * F.log_softmax(logits, -1)).sum(-1).mean()
    assert torch.allclose(smoothed, expected)
    assert torch.equal(
        ClassificationTask().training_loss(logits, target), F.cross_entropy(logits, target)
    )


def test_label_smoothing_is_refused_for_a_task_without_it():
    class Regression(Task):
        def loss(self, output, target):
            return (output - target).square().mean()

    with pytest.raises(UserInputError, match="label_smoothing"):
        Regression().training_loss(torch.zeros(2), torch.zeros(2), 0.1)


def test_a_valid_portion_of_one_is_refused(tiny_config_dict):
    tiny_config_dict["train"]["valid_portion"] = 1.0
    with pytest.raises(UserInputError, match="train.valid_portion"):
        parse_config(tiny_config_dict)
