"""Run configs: YAML files, ``key=value`` overrides and strict key checking.

A config has fixed sections (``search``, ``train``) whose keys are the fields
of :class:`SearchSettings` and :class:`TrainSettings`, and *named* sections
(``data``, ``network``, ``relaxation``, ``selection`` and the optimizer
entries) whose ``name`` picks a registered builder and whose other keys are
that builder's keyword arguments. Every unknown key is refused with a
one-line message that lists the valid ones.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from manifold_nas.errors import UserInputError

__all__ = [
    "Config",
    "SearchSettings",
    "TrainSettings",
    "apply_overrides",
    "call_with_options",
    "check_options",
    "load_config",
    "parse_config",
]


@dataclass
class SearchSettings:
    """The bilevel search loop."""

    epochs: int = 10
    batch_size: int = 64
    train_portion: float = 0.5
    order: str = "first"
    warmup_epochs: int = 0
    grad_clip: float | None = 5.0
    lr_min: float = 0.001
    weight_optimizer: dict[str, Any] = field(
        default_factory=lambda: {"name": "sgd", "lr": 0.025, "momentum": 0.9, "weight_decay": 3e-4}
    )
    arch_optimizer: dict[str, Any] = field(
        default_factory=lambda: {
            "name": "adam",
            "lr": 3e-4,
            "betas": [0.5, 0.999],
            "weight_decay": 1e-3,
        }
    )
    arch_penalty: dict[str, Any] = field(default_factory=dict)
    hessian_eigenvalue: bool = False
    max_steps_per_epoch: int | None = None


@dataclass
class TrainSettings:
    """Retraining the derived network from scratch."""

    epochs: int = 20
    batch_size: int = 64
    lr_min: float = 0.0
    grad_clip: float | None = 5.0
    optimizer: dict[str, Any] = field(
        default_factory=lambda: {"name": "sgd", "lr": 0.025, "momentum": 0.9, "weight_decay": 3e-4}
    )
    network: dict[str, Any] = field(default_factory=dict)
    max_steps_per_epoch: int | None = None


@dataclass
class Config:
    """A resolved run config."""

    data: dict[str, Any]
    network: dict[str, Any]
    seed: int = 0
    device: str = "cpu"
    threads: int | None = None
    relaxation: dict[str, Any] = field(default_factory=lambda: {"name": "softmax"})
    selection: dict[str, Any] = field(default_factory=lambda: {"name": "darts"})
    search: SearchSettings = field(default_factory=SearchSettings)
    train: TrainSettings = field(default_factory=TrainSettings)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_SECTIONS = {"search": SearchSettings, "train": TrainSettings}
_NAMED = ("data", "network", "relaxation", "selection")


def _check_keys(given: Mapping[str, Any], valid: Sequence[str], where: str) -> None:
    unknown = [k for k in given if k not in valid]
    if unknown:
        raise UserInputError(
            f"unknown config key {where}{unknown[0]!r}; valid keys: {', '.join(valid)}"
        )


def parse_config(raw: Mapping[str, Any], source: str = "config") -> Config:
    """Check the structure of a config mapping and fill in defaults."""
    if not isinstance(raw, Mapping):
        raise UserInputError(f"{source} must be a mapping of sections, got {type(raw).__name__}")
    _check_keys(raw, [f.name for f in fields(Config)], "")
    for key in ("data", "network"):
        if key not in raw:
            raise UserInputError(f"{source} has no {key!r} section")
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key in _SECTIONS:
            if not isinstance(value, Mapping):
                raise UserInputError(f"config section {key!r} must be a mapping")
            settings = _SECTIONS[key]
            _check_keys(value, [f.name for f in fields(settings)], f"{key}.")
            values[key] = settings(**copy.deepcopy(dict(value)))
        elif key in _NAMED:
            if not isinstance(value, Mapping) or "name" not in value:
                raise UserInputError(f"config section {key!r} must be a mapping with a 'name'")
            values[key] = copy.deepcopy(dict(value))
        else:
            values[key] = value
    return Config(**values)


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> Config:
    """Read a YAML config and apply ``section.key=value`` overrides."""
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"config file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        first = str(err).splitlines()[0] if str(err) else "parse error"
        raise UserInputError(f"{path} is not valid YAML: {first}") from None
    return parse_config(apply_overrides(raw, overrides), source=str(path))


def apply_overrides(raw: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Set dotted keys, e.g. ``search.epochs=3`` or ``data.root=/data``; values are YAML."""
    result = copy.deepcopy(dict(raw))
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise UserInputError(f"override {item!r} is not of the form key=value")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            value = text
        node = result
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise UserInputError(f"override {item!r}: {part!r} is not a section")
            node = child
        node[parts[-1]] = value
    return result


def check_options(
    fn: Callable[..., Any], options: Mapping[str, Any], where: str, n_positional: int = 0
) -> None:
    """Refuse ``options`` that ``fn`` does not take, or required ones that are missing."""
    params = list(inspect.signature(fn).parameters.items())[n_positional:]
    keywords = [(n, p) for n, p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for _, p in params):
        _check_keys(options, [n for n, _ in keywords], f"{where}.")
    missing = [n for n, p in keywords if p.default is inspect.Parameter.empty and n not in options]
    if missing:
        raise UserInputError(f"config section {where!r} needs key {missing[0]!r}")


def call_with_options(
    fn: Callable[..., Any], options: Mapping[str, Any], where: str, *args: Any
) -> Any:
    """Call ``fn(*args, **options)`` after refusing options ``fn`` does not take."""
    check_options(fn, options, where, len(args))
    try:
        return fn(*args, **options)
    except UserInputError:
        raise
    except ValueError as err:
        # Builders validate their options with ValueError; coming from a
        # config, that is the user's input, so say which section it was.
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise UserInputError(f"config section {where!r}: {message}") from err


def split_name(section: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """``{"name": n, **options}`` -> ``(n, options)``."""
    options = dict(section)
    return str(options.pop("name")), options
