"""Teachers for block-wise distillation: a trained network cut into stages.

A *teacher* gives, for an input batch, ``N + 1`` boundary features
``t_0 .. t_N``: stage ``i`` of the teacher maps ``t_i`` to ``t_{i+1}``, and
block ``i`` of a student is trained to produce ``t_{i+1}`` from the
teacher's features (DNA's ``guide_input``; Li et al., 2020). Features are
computed in eval mode under ``no_grad``: the teacher is frozen, and its
batch-norm layers use their trained running statistics (the DNA code runs
its teacher in train mode; a frozen teacher's batch statistics would make a
target depend on the rest of its batch).

Three ways to cut a network (:func:`teacher_stages` picks one):

* :class:`ModuleStages`, any ``nn.Module`` and a list of boundary module
  names: ``t_k`` is the output of module ``names[k]``, read by a forward
  hook; the name ``"<input>"`` (first only) stands for the network input,
  and ``""`` for the network itself (its output);
* :class:`BlockStages`, a network of this project that meets
  :class:`~manifold_nas.space.contracts.BlockwiseNetwork` (a derived DARTS or
  V-NAS network, e.g. a retrained run directory): its own block boundaries;
* a *stage finder* a domain registers for its library's networks
  (:data:`~manifold_nas.space.contracts.STAGE_FINDERS`), e.g. the volumetric
  domain's :func:`~manifold_nas.domains.volumetric.baselines.monai_unet_stage_names`
  for MONAI's ``UNet``: the input, every encoder level's downsampling, the
  bottom, and every decoder level's upsampling, i.e. ``2L`` features for
  ``L`` levels, matching a V-NAS student of ``L`` levels.

Each teacher also *stitches*: :meth:`TeacherStages.stitched` runs the
teacher with its last boundary feature replaced by a function of its first,
so that student blocks placed between the teacher's stem and head can be
scored on the task itself.

Where the teacher comes from is a :class:`TeacherSpec` (the ``dna``
strategy's ``teacher:`` option): a retrained run directory (``run``), a
registered network trained inside the search (``network``), or any module
factory (``module``).

**Building and training** (the first step of the ``dna`` strategy).
:func:`build_teacher` makes the spec's network for a run (a ``network``
teacher under :func:`teacher_config`, the run's config with the teacher as
its network); :func:`train_teacher` trains it on the whole training set,
recording its :class:`TeacherProgress` and checkpointing after every epoch,
so a resumed run continues the same training and ends with the same weights,
and then saves it as a run directory of its own (:func:`save_teacher`,
``RUN/teacher``). :func:`describe_teacher` is its summary entry: size,
stages and validation metrics.
"""

from __future__ import annotations

import importlib
import random
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from manifold_nas.config import Config, TrainSettings, parse_config
from manifold_nas.cost.measure import count_flops, count_parameters, training_mode
from manifold_nas.errors import UserInputError
from manifold_nas.run.checkpoint import load_torch_file, save_torch_atomically
from manifold_nas.run.context import Run, build_network, stream_seed
from manifold_nas.run.evaluation import load_trained_network
from manifold_nas.space.contracts import INPUT, STAGE_FINDERS, BlockwiseNetwork
from manifold_nas.space.genotype import Genotype
from manifold_nas.strategies.dna.data_passes import reseed_data_transforms

__all__ = [
    "INPUT",
    "TEACHER_SOURCES",
    "BlockStages",
    "BuiltTeacher",
    "ModuleStages",
    "TeacherProgress",
    "TeacherSpec",
    "TeacherStages",
    "build_teacher",
    "describe_teacher",
    "import_factory",
    "load_teacher_run",
    "parse_teacher_spec",
    "save_teacher",
    "teacher_config",
    "teacher_settings",
    "teacher_stages",
    "train_teacher",
]

#: the boundary name that stands for the network input
#: the keys of ``teacher:`` that say where the teacher comes from
TEACHER_SOURCES = ("run", "network", "module")


class TeacherStages(ABC):
    """A frozen teacher cut into stages."""

    #: the teacher network
    module: nn.Module

    @abstractmethod
    def features(self, x: Tensor) -> list[Tensor]:
        """The boundary features ``t_0 .. t_N`` of a batch (eval mode, no gradient)."""

    @abstractmethod
    def stitched(self, x: Tensor, last: Callable[[Tensor], Tensor]) -> Tensor:
        """The teacher's output with ``t_N`` replaced by ``last(t_0)``."""

    @abstractmethod
    def describe(self) -> list[str]:
        """A name per boundary, for the summary."""


class ModuleStages(TeacherStages):
    """Boundaries at named submodules of any network, read by forward hooks.

    Parameters
    ----------
    module:
        The teacher.
    names:
        ``N + 1`` boundary names, in execution order: submodule names of
        ``module`` (as ``named_modules()`` gives them), ``""`` for its output,
        and ``"<input>"`` (first only) for its input.

    Raises
    ------
    UserInputError
        For fewer than two names, an unknown name, ``"<input>"`` anywhere but
        first, or a repeated name.
    """

    def __init__(self, module: nn.Module, names: Sequence[str]) -> None:
        names = [str(n) for n in names]
        if len(names) < 2:
            raise UserInputError(
                f"teacher stages need at least 2 boundary names (input and one output), got {names}"
            )
        known = dict(module.named_modules())
        for k, name in enumerate(names):
            if name == INPUT and k > 0:
                raise UserInputError(f"teacher stage {INPUT!r} can only be the first boundary")
            if name != INPUT and name not in known:
                raise UserInputError(
                    f"teacher has no module {name!r}; some of its modules: "
                    f"{', '.join(n for n in list(known)[1:12])}"
                )
        if len(set(names)) != len(names):
            raise UserInputError(f"teacher stage names repeat: {names}")
        self.module = module
        self.names = names
        self._modules = known

    def describe(self) -> list[str]:
        return list(self.names)

    def _capture(self, x: Tensor, replace: Callable[[Tensor], Tensor] | None) -> tuple[Any, list]:
        captured: dict[str, Tensor] = {}
        order: list[str] = []
        handles = []

        def hook(name: str, last: bool):
            def record(_module: nn.Module, _inputs: Any, output: Any) -> Any:
                if name in captured:
                    raise UserInputError(
                        f"teacher module {name!r} runs more than once per forward; "
                        "choose a module that runs once as a stage boundary"
                    )
                if not isinstance(output, Tensor):
                    raise UserInputError(
                        f"teacher module {name!r} returns a {type(output).__name__}, "
                        "not a tensor; choose another stage boundary"
                    )
                captured[name] = output
                order.append(name)
                if last and replace is not None:
                    return replace(captured[self.names[0]])
                return None

            return record

        if self.names[0] == INPUT:
            captured[INPUT] = x
            order.append(INPUT)
        try:
            for k, name in enumerate(self.names):
                if name != INPUT:
                    last = k == len(self.names) - 1
                    handles.append(self._modules[name].register_forward_hook(hook(name, last)))
            output = self.module(x)
        finally:
            for handle in handles:
                handle.remove()
        missing = [n for n in self.names if n not in captured]
        if missing:
            raise UserInputError(f"teacher module {missing[0]!r} did not run in a forward")
        if order != self.names:
            raise UserInputError(
                f"teacher stage boundaries must be listed in execution order; they ran as {order}"
            )
        return output, [captured[n] for n in self.names]

    @torch.no_grad()
    def features(self, x: Tensor) -> list[Tensor]:
        with training_mode(self.module, False):
            return self._capture(x, None)[1]

    @torch.no_grad()
    def stitched(self, x: Tensor, last: Callable[[Tensor], Tensor]) -> Tensor:
        with training_mode(self.module, False):
            return self._capture(x, last)[0]


class BlockStages(TeacherStages):
    """The block boundaries of a :class:`~manifold_nas.space.contracts.BlockwiseNetwork`."""

    def __init__(self, network: nn.Module) -> None:
        if not isinstance(network, BlockwiseNetwork):
            raise UserInputError(f"{type(network).__name__} is not a block-wise network")
        self.module = network

    def describe(self) -> list[str]:
        return ["stem", *(block.name for block in self.module.blocks())]

    @torch.no_grad()
    def features(self, x: Tensor) -> list[Tensor]:
        with training_mode(self.module, False):
            return list(self.module.block_features(x))

    @torch.no_grad()
    def stitched(self, x: Tensor, last: Callable[[Tensor], Tensor]) -> Tensor:
        with training_mode(self.module, False):
            return self.module.head(last(self.module.block_features(x)[0]))


def teacher_stages(network: nn.Module, names: Sequence[str] | None = None) -> TeacherStages:
    """The teacher's stages: at ``names`` if given, else its own blocks, else a stage finder's.

    The stage finders (:data:`~manifold_nas.space.contracts.STAGE_FINDERS`) know
    the networks of a domain's library, such as MONAI's ``UNet`` levels.

    Raises
    ------
    UserInputError
        When no names are given and the network is neither block-wise nor
        contains a MONAI UNet.
    """
    if names:
        return ModuleStages(network, names)
    if isinstance(network, BlockwiseNetwork):
        return BlockStages(network)
    for _, finder in STAGE_FINDERS.items():
        found = finder(network)
        if found is not None:
            return ModuleStages(network, found)
    raise UserInputError(
        f"cannot cut teacher {type(network).__name__} into stages by itself; give "
        "strategy.teacher.stages (boundary module names, '<input>' for the input)"
    )


# -- where the teacher comes from ---------------------------------------------------------
@dataclass(frozen=True)
class TeacherSpec:
    """The ``teacher:`` option of the ``dna`` strategy.

    Exactly one source:

    ``run: PATH``
        a retrained run directory (``genotype.json`` and ``retrain/model.pt``,
        as ``manifold-nas train`` writes them), loaded with
        :func:`manifold_nas.run.evaluation.load_trained_network`;
    ``network: NAME``
        a registered network (``options``: its options), built for the run's
        data and trained inside the search for ``epochs`` epochs with the
        run's ``train:`` settings updated by ``train``;
    ``module: "package.module:factory"``
        ``factory(**options)``, with ``weights`` (a state-dict file) and/or
        ``epochs`` of training inside the search.

    ``stages`` names the boundaries (see :class:`ModuleStages`); without it
    the teacher's own blocks or its MONAI UNet levels are used.
    """

    source: str
    target: str
    options: Mapping[str, Any] = field(default_factory=dict)
    epochs: int = 0
    train: Mapping[str, Any] = field(default_factory=dict)
    stages: tuple[str, ...] = ()
    weights: str | None = None

    @property
    def trains(self) -> bool:
        """Whether the teacher is trained inside the search."""
        return self.epochs > 0


_SPEC_KEYS = (*TEACHER_SOURCES, "options", "epochs", "train", "stages", "weights")


def parse_teacher_spec(raw: Mapping[str, Any]) -> TeacherSpec:
    """Check a ``teacher:`` mapping (``ValueError`` naming the problem) and return its spec."""
    if not isinstance(raw, Mapping):
        raise ValueError(f"teacher must be a mapping with one of {', '.join(TEACHER_SOURCES)}")
    unknown = [k for k in raw if k not in _SPEC_KEYS]
    if unknown:
        raise ValueError(f"unknown teacher key {unknown[0]!r}; valid keys: {', '.join(_SPEC_KEYS)}")
    sources = [k for k in TEACHER_SOURCES if k in raw]
    if len(sources) != 1:
        raise ValueError(
            f"teacher needs exactly one of {', '.join(TEACHER_SOURCES)}, got {sources or 'none'}"
        )
    source = sources[0]
    target = raw[source]
    if not isinstance(target, str) or not target:
        raise ValueError(f"teacher.{source} must be a non-empty string, got {target!r}")
    if source == "module" and ":" not in target:
        raise ValueError(f"teacher.module must read 'package.module:factory', got {target!r}")
    options = raw.get("options", {})
    if not isinstance(options, Mapping):
        raise ValueError(f"teacher.options must be a mapping, got {options!r}")
    if source == "run" and options:
        raise ValueError("teacher.options apply to a network or module teacher, not to a run")
    epochs = raw.get("epochs", 0)
    if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 0:
        raise ValueError(f"teacher.epochs must be an integer >= 0, got {epochs!r}")
    if source == "run" and epochs:
        raise ValueError("a teacher run is already trained; teacher.epochs applies to the others")
    if source == "network" and epochs < 1:
        raise ValueError("a teacher network is trained inside the search: give teacher.epochs >= 1")
    weights = raw.get("weights")
    if weights is not None and (source != "module" or not isinstance(weights, str)):
        raise ValueError("teacher.weights (a state-dict file) applies to a module teacher")
    if source == "module" and weights is None and epochs < 1:
        raise ValueError("a module teacher needs teacher.weights or teacher.epochs >= 1")
    train = raw.get("train", {})
    valid_train = [f.name for f in fields(TrainSettings) if f.name not in ("epochs", "network")]
    if not isinstance(train, Mapping) or any(k not in valid_train for k in train):
        raise ValueError(f"teacher.train must be a mapping of keys among {', '.join(valid_train)}")
    stages = raw.get("stages", ())
    if stages is None:
        stages = ()
    if isinstance(stages, str) or not all(isinstance(s, str) for s in stages):
        raise ValueError(f"teacher.stages must be a list of module names, got {stages!r}")
    return TeacherSpec(
        source, target, dict(options), int(epochs), dict(train), tuple(stages), weights
    )


def import_factory(path: str) -> Callable[..., nn.Module]:
    """``"package.module:factory"`` -> the factory (``UserInputError`` when it cannot be found)."""
    module_name, _, attribute = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise UserInputError(f"teacher.module: cannot import {module_name!r}: {err}") from None
    factory = getattr(module, attribute, None)
    if not callable(factory):
        raise UserInputError(f"teacher.module: {module_name!r} has no callable {attribute!r}")
    return factory


def load_teacher_run(path: str | Path) -> tuple[nn.Module, Mapping[str, Any]]:
    """A retrained run directory's network and its config, without disturbing the random streams.

    Loading builds a run of its own (which seeds the global streams), so the
    caller's torch and Python random states are restored afterwards.
    """
    state = random.getstate()
    with torch.random.fork_rng(devices=[]):
        network, run = load_trained_network(path)
    random.setstate(state)
    return network, run.config.to_dict()


# -- building and training the teacher ----------------------------------------------------
@dataclass(frozen=True)
class BuiltTeacher:
    """The teacher network a :class:`TeacherSpec` gives for one run, and how it came about."""

    #: the network, on the run's device
    network: nn.Module
    #: where it came from, as the summary reports it (the spec's target and options)
    source: dict[str, Any]
    #: the config a ``network`` teacher is built and trained under (``None`` for the others)
    config: Config | None
    #: whether it needs no training inside the search (a run directory, or no epochs)
    ready: bool


@dataclass
class TeacherProgress:
    """How far the teacher's training inside the search has come (checkpointed)."""

    #: the teacher is trained (or needs no training)
    ready: bool = False
    #: :meth:`~manifold_nas.run.context.Run.train`'s resume state during training
    training: dict[str, Any] | None = None
    #: one ``teacher_epoch`` record per finished epoch
    history: list[dict[str, Any]] = field(default_factory=list)


def build_teacher(spec: TeacherSpec, run: Run) -> BuiltTeacher:
    """The teacher network of ``spec`` for ``run``, untrained where the spec trains it.

    Raises
    ------
    UserInputError
        When a teacher run was trained on other data, a teacher network is a
        search space, or a module factory returns no ``nn.Module``.
    """
    if spec.source == "run":
        network, config = load_teacher_run(spec.target)
        if config["data"].get("name") != run.config.data.get("name"):
            raise UserInputError(
                f"teacher run {spec.target} was trained on data {config['data'].get('name')!r}, "
                f"not {run.config.data.get('name')!r}"
            )
        return BuiltTeacher(network.to(run.device), {"run": spec.target}, None, ready=True)
    if spec.source == "network":
        config = teacher_config(spec, run)
        network, _ = build_network(config, run.bundle)
        if getattr(network, "arch_specs", None):
            raise UserInputError(
                f"teacher network {spec.target!r} is a search space; give a fixed network "
                "or a retrained run directory"
            )
        source = {"network": spec.target, **spec.options}
        return BuiltTeacher(network.to(run.device), source, config, ready=not spec.trains)
    network = import_factory(spec.target)(**spec.options)
    if not isinstance(network, nn.Module):
        raise UserInputError(f"teacher.module {spec.target!r} did not return an nn.Module")
    if spec.weights is not None:
        network.load_state_dict(load_torch_file(spec.weights, "teacher weights"))
    if run.dtype is not None:
        network = network.to(run.dtype)
    source = {"module": spec.target, **spec.options}
    return BuiltTeacher(network.to(run.device), source, None, ready=not spec.trains)


def _teacher_train_section(spec: TeacherSpec, run: Run) -> dict[str, Any]:
    """The run's ``train:`` settings with the teacher's epochs and its ``train`` overrides."""
    return {**asdict(run.config.train), "network": {}, "epochs": spec.epochs, **spec.train}


def teacher_config(spec: TeacherSpec, run: Run) -> Config:
    """The run's config with a ``network`` teacher as its network and its training settings."""
    network = {"name": spec.target, "opset": run.config.network["opset"], **spec.options}
    raw = {**run.config.to_dict(), "network": network, "train": _teacher_train_section(spec, run)}
    return parse_config(raw, "strategy.teacher")


def teacher_settings(spec: TeacherSpec, teacher: BuiltTeacher, run: Run) -> TrainSettings:
    """The training settings the teacher trains under inside the search."""
    if teacher.config is not None:
        return teacher.config.train
    raw = {
        "data": run.config.data,
        "network": run.config.network,
        "train": _teacher_train_section(spec, run),
    }
    return parse_config(raw, "strategy.teacher").train


def train_teacher(
    run: Run,
    spec: TeacherSpec,
    teacher: BuiltTeacher,
    progress: TeacherProgress,
    checkpoint: Callable[[], None],
) -> None:
    """Train the teacher on the whole training set, continuing from ``progress``.

    ``progress`` is updated and ``checkpoint()`` called after every epoch and
    once more at the end, when the teacher is saved as ``RUN/teacher``.
    """
    settings = teacher_settings(spec, teacher, run)

    def reseed(epoch: int) -> None:
        reseed_data_transforms(run, stream_seed(run.config.seed, f"dna teacher {epoch}"))

    def after_epoch(state: dict[str, Any]) -> None:
        record = {"type": "teacher_epoch", **state["history"][-1]}
        run.log(record)
        progress.history.append(record)
        progress.training = state
        # reseed for the next epoch here, as a run resumed from this checkpoint does
        reseed(len(progress.history))
        checkpoint()

    reseed(len(progress.history))
    run.train(
        teacher.network,
        settings.epochs,
        settings=settings,
        train_set=run.bundle.train,
        loader_seed=stream_seed(run.config.seed, "dna teacher"),
        desc="teacher",
        resume=progress.training,
        checkpoint=after_epoch,
    )
    teacher.network.eval()
    progress.ready = True
    progress.training = None
    save_teacher(run, spec, teacher, settings, progress.history)
    checkpoint()


def save_teacher(
    run: Run,
    spec: TeacherSpec,
    teacher: BuiltTeacher,
    settings: TrainSettings,
    history: Sequence[Mapping[str, Any]],
) -> None:
    """The trained teacher as a run directory of its own (``RUN/teacher``), where the run writes."""
    if not run.writes:
        return
    folder = run.directory.subdirectory("teacher")
    state = teacher.network.state_dict()
    if spec.source == "network":
        genotype = Genotype(run.opset.name, {}, config=teacher.config.to_dict())
        genotype.save(folder / "genotype.json")
        (folder / "retrain").mkdir(exist_ok=True)
        save_torch_atomically(state, folder / "retrain" / "model.pt")
    else:
        save_torch_atomically(state, folder / "model.pt")
    run.directory.write_json(
        "teacher/summary.json",
        {"source": teacher.source, "epochs": settings.epochs, "history": history},
    )


@torch.no_grad()
def describe_teacher(
    run: Run, teacher: BuiltTeacher, stages: TeacherStages, probe: Tensor
) -> dict[str, Any]:
    """The summary's ``teacher`` entry: source, size, stages and validation metrics.

    Its parameters and FLOPs (on ``probe``) are also what ``teacher_fraction``
    budgets are a fraction of.
    """
    reseed_data_transforms(run, stream_seed(run.config.seed, "dna validation"))
    return {
        "source": teacher.source,
        "parameters": count_parameters(teacher.network),
        "flops": count_flops(teacher.network, probe),
        "stages": stages.describe(),
        "valid": run.evaluate(teacher.network),
        "valid_note": "the teacher trains on the whole training set, validation split included",
    }
