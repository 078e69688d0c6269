"""Run configs: YAML files, ``key=value`` overrides and strict key checking.

A config has fixed sections (``search``, ``train``) whose keys are the fields
of :class:`SearchSettings` and :class:`TrainSettings`, and *named* sections
(``data``, ``network``, ``relaxation``, ``selection``, ``strategy`` and the
optimizer entries) whose ``name`` picks a registered builder and whose other
keys are that builder's keyword arguments. Every unknown key is refused with
a one-line message that lists the valid ones, and every fixed setting is
type- and range-checked when the config is parsed.

A dotted override (``search.weight_optimizer.lr=0.1``) of a section the file
does not spell out merges into that section's default instead of replacing
it; an override of such a section's ``name`` starts it afresh, since the
default's other keys belong to the default builder.
"""

from __future__ import annotations

import copy
import inspect
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from manifold_nas.errors import UserInputError

__all__ = [
    "MAX_CONFIG_DEPTH",
    "MAX_THREADS",
    "MOVED_SEARCH_KEYS",
    "check_count",
    "is_finite_number",
    "positive_int",
    "Config",
    "ProxySettings",
    "SearchSettings",
    "TrainSettings",
    "apply_overrides",
    "call_with_options",
    "check_options",
    "config_defaults",
    "load_config",
    "parse_config",
    "section_error",
    "split_name",
]


# -- checks of single values ----------------------------------------------------
def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)


def is_finite_number(value: Any) -> bool:
    """An int or float (not a bool) that is finite."""
    return _is_number(value)


def check_count(name: str, value: Any, low: int) -> None:
    """Refuse an option ``name`` that is not an integer ``>= low`` (``ValueError``)."""
    if not _is_int(value) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")


def positive_int(option: str, value: Any) -> int:
    """``value`` as an int (``3.0`` is 3), or a ValueError naming ``option`` unless it is a positive integer."""
    if not _is_number(value) or value != int(value) or value < 1:
        raise ValueError(f"{option} must be a positive integer, got {value!r}")
    return int(value)


def _int_at_least(
    low: int, optional: bool = False, high: int | None = None
) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        if optional and value is None:
            return None
        if not _is_int(value) or value < low or (high is not None and value > high):
            bound = f">= {low}" + ("" if high is None else f" and <= {high}")
            return f"must be an integer {bound}" + (" or null" if optional else "")
        return None

    return check


def _torch_device(value: Any) -> str | None:
    """A device string torch parses (``cpu``, ``cuda``, ``cuda:1``, ``mps``); availability
    is checked where the run resolves it (:func:`manifold_nas.run.distributed.check_device`)."""
    if not isinstance(value, str):
        return "must be a string"
    if value == "cpu":
        return None  # the default needs no torch import
    import torch

    try:
        torch.device(value)
    except (RuntimeError, ValueError, TypeError):
        return "must be a torch device such as cpu, cuda, cuda:1 or mps"
    return None


def _number(low: float = -math.inf, *, open_low: bool = False, high: float = math.inf,
            open_high: bool = False, optional: bool = False) -> Callable[[Any], str | None]:  # fmt: skip
    def check(value: Any) -> str | None:
        if optional and value is None:
            return None
        ok = _is_number(value)
        ok = ok and (value > low if open_low else value >= low)
        ok = ok and (value < high if open_high else value <= high)
        if not ok:
            lo = "(" if open_low else "["
            hi = ")" if open_high else "]"
            return f"must be a finite number in {lo}{low}, {high}{hi}" + (
                " or null" if optional else ""
            )
        return None

    return check


def _one_of(*choices: str) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        return None if value in choices else f"must be one of {', '.join(choices)}"

    return check


def _named_mapping(value: Any) -> str | None:
    if not isinstance(value, Mapping) or "name" not in value:
        return "must be a mapping with a 'name'"
    return None


def _mapping(value: Any) -> str | None:
    return None if isinstance(value, Mapping) else "must be a mapping"


def _check(rule: Callable[[Any], str | None]) -> dict[str, Any]:
    return {"check": rule}


#: the most ``threads:`` a config may ask for (above the CPU count they are capped)
MAX_THREADS = 4096

#: the deepest nesting of mappings and lists a config may have (the sections count as 1);
#: deeper ones would exhaust Python's recursion in copying, checking or saving them
MAX_CONFIG_DEPTH = 100


def _deeper_than(value: Any, limit: int) -> bool:
    """Whether ``value`` nests mappings or lists more than ``limit`` levels deep.

    Iterative, so it cannot hit the recursion limit itself; a node is walked
    again only when reached deeper than before, so YAML aliases stay cheap
    and a self-referencing one counts as too deep.
    """
    stack = [(value, 1)]
    seen: dict[int, int] = {}
    while stack:
        node, depth = stack.pop()
        if isinstance(node, Mapping):
            children = list(node.values())
        elif isinstance(node, (list, tuple)):
            children = list(node)
        else:
            continue
        if depth > limit:
            return True
        if seen.get(id(node), 0) >= depth:
            continue
        seen[id(node)] = depth
        stack.extend((child, depth + 1) for child in children)
    return False


def _refuse_deep(raw: Mapping[str, Any], source: str) -> None:
    for key, value in raw.items():
        if _deeper_than(value, MAX_CONFIG_DEPTH - 1):
            raise UserInputError(
                f"{source}: section {key!r} nests mappings or lists more than "
                f"{MAX_CONFIG_DEPTH} levels deep"
            )


@dataclass
class SearchSettings:
    """The search settings every strategy shares: epochs, batches, the split, weight steps, trials.

    What only one strategy reads is that strategy's option (``strategy:``
    section), checked against its signature: the bilevel strategy's
    ``order``, ``warmup_epochs``, ``arch_optimizer``, ``arch_penalty``,
    ``entropy_weight``, ``hessian_eigenvalue`` and ``sync_batch_norm``
    (:data:`MOVED_SEARCH_KEYS`).
    """

    epochs: int = field(default=10, metadata=_check(_int_at_least(1)))
    batch_size: int = field(default=64, metadata=_check(_int_at_least(1)))
    train_portion: float = field(
        default=0.5, metadata=_check(_number(0.0, open_low=True, high=1.0, open_high=True))
    )
    grad_clip: float | None = field(
        default=5.0, metadata=_check(_number(0.0, open_low=True, optional=True))
    )
    lr_min: float = field(default=0.001, metadata=_check(_number(0.0)))
    weight_optimizer: dict[str, Any] = field(
        default_factory=lambda: {"name": "sgd", "lr": 0.025, "momentum": 0.9, "weight_decay": 3e-4},
        metadata=_check(_named_mapping),
    )
    max_steps_per_epoch: int | None = field(
        default=None, metadata=_check(_int_at_least(1, optional=True))
    )
    backend: str = field(default="local", metadata=_check(_one_of("local", "ray")))
    ray_address: str | None = None


@dataclass
class TrainSettings:
    """Retraining the derived network from scratch.

    ``valid_portion > 0`` holds out that fraction of the training set: the
    network is validated after every epoch, the best epoch's weights are kept
    (model selection) and ``patience`` epochs without improvement stop the
    training. ``label_smoothing`` applies to classification losses.
    """

    epochs: int = field(default=20, metadata=_check(_int_at_least(1)))
    batch_size: int = field(default=64, metadata=_check(_int_at_least(1)))
    lr_min: float = field(default=0.0, metadata=_check(_number(0.0)))
    grad_clip: float | None = field(
        default=5.0, metadata=_check(_number(0.0, open_low=True, optional=True))
    )
    optimizer: dict[str, Any] = field(
        default_factory=lambda: {"name": "sgd", "lr": 0.025, "momentum": 0.9, "weight_decay": 3e-4},
        metadata=_check(_named_mapping),
    )
    network: dict[str, Any] = field(default_factory=dict, metadata=_check(_mapping))
    max_steps_per_epoch: int | None = field(
        default=None, metadata=_check(_int_at_least(1, optional=True))
    )
    valid_portion: float = field(
        default=0.0, metadata=_check(_number(0.0, high=1.0, open_high=True))
    )
    patience: int | None = field(default=None, metadata=_check(_int_at_least(1, optional=True)))
    label_smoothing: float = field(
        default=0.0, metadata=_check(_number(0.0, high=1.0, open_high=True))
    )


@dataclass
class ProxySettings:
    """Reduced settings for training candidate networks in multi-trial search (EcoNAS).

    The final network is always retrained at the full setting by ``train``.
    """

    network: dict[str, Any] = field(default_factory=dict, metadata=_check(_mapping))
    downsample: int = field(default=1, metadata=_check(_int_at_least(1)))
    data_fraction: float = field(
        default=1.0, metadata=_check(_number(0.0, open_low=True, high=1.0))
    )
    epochs: int | None = field(default=None, metadata=_check(_int_at_least(1, optional=True)))


@dataclass
class Config:
    """A resolved run config."""

    data: dict[str, Any]
    network: dict[str, Any]
    seed: int = field(default=0, metadata=_check(_int_at_least(0)))
    device: str = field(default="cpu", metadata=_check(_torch_device))
    #: more threads than CPUs are capped to the CPU count when applied (``apply_threads``)
    threads: int | None = field(
        default=None, metadata=_check(_int_at_least(1, optional=True, high=MAX_THREADS))
    )
    relaxation: dict[str, Any] = field(default_factory=lambda: {"name": "softmax"})
    selection: dict[str, Any] = field(default_factory=lambda: {"name": "darts"})
    strategy: dict[str, Any] = field(default_factory=lambda: {"name": "bilevel"})
    search: SearchSettings = field(default_factory=SearchSettings)
    train: TrainSettings = field(default_factory=TrainSettings)
    proxy: ProxySettings = field(default_factory=ProxySettings)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


#: ``search:`` keys that became options of one strategy: old key -> (strategy, new key)
MOVED_SEARCH_KEYS = {
    key: ("bilevel", f"strategy.{key}")
    for key in (
        "order",
        "warmup_epochs",
        "arch_optimizer",
        "arch_penalty",
        "entropy_weight",
        "hessian_eigenvalue",
        "sync_batch_norm",
    )
}

_SECTIONS = {"search": SearchSettings, "train": TrainSettings, "proxy": ProxySettings}
_NAMED = ("data", "network", "relaxation", "selection", "strategy")


def _field_default(f: Any) -> Any:
    if f.default_factory is not MISSING:
        value = f.default_factory()
    else:
        value = f.default
    return asdict(value) if hasattr(value, "__dataclass_fields__") else value


def config_defaults() -> dict[str, Any]:
    """Every section's default as plain data (``data`` and ``network`` have none)."""
    return {f.name: _field_default(f) for f in fields(Config) if f.default is not MISSING
            or f.default_factory is not MISSING}  # fmt: skip


def _check_values(settings: type, values: Mapping[str, Any], where: str) -> None:
    for f in fields(settings):
        rule = f.metadata.get("check")
        if rule is None or f.name not in values:
            continue
        problem = rule(values[f.name])
        if problem:
            raise UserInputError(f"config key {where}{f.name} {problem}, got {values[f.name]!r}")


def _check_keys(given: Mapping[str, Any], valid: Sequence[str], where: str) -> None:
    unknown = [k for k in given if k not in valid]
    if unknown:
        raise UserInputError(
            f"unknown config key {where}{unknown[0]!r}; valid keys: {', '.join(valid)}"
        )


def _refuse_moved_keys(search: Mapping[str, Any]) -> None:
    moved = next((k for k in search if k in MOVED_SEARCH_KEYS), None)
    if moved is not None:
        strategy, new = MOVED_SEARCH_KEYS[moved]
        raise UserInputError(
            f"config key search.{moved} is now {new}, an option of the {strategy} strategy: "
            f"move it to the strategy: section (strategy: {{name: {strategy}, {moved}: ...}})"
        )


def parse_config(raw: Mapping[str, Any], source: str = "config") -> Config:
    """Check the structure of a config mapping and fill in defaults."""
    if not isinstance(raw, Mapping):
        raise UserInputError(f"{source} must be a mapping of sections, got {type(raw).__name__}")
    _check_keys(raw, [f.name for f in fields(Config)], "")
    _refuse_deep(raw, source)
    for key in ("data", "network"):
        if key not in raw:
            raise UserInputError(f"{source} has no {key!r} section")
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key in _SECTIONS:
            if not isinstance(value, Mapping):
                raise UserInputError(f"config section {key!r} must be a mapping")
            settings = _SECTIONS[key]
            if key == "search":
                _refuse_moved_keys(value)
            _check_keys(value, [f.name for f in fields(settings)], f"{key}.")
            _check_values(settings, value, f"{key}.")
            values[key] = settings(**copy.deepcopy(dict(value)))
        elif key in _NAMED:
            if not isinstance(value, Mapping) or "name" not in value:
                raise UserInputError(f"config section {key!r} must be a mapping with a 'name'")
            if not isinstance(value["name"], str):
                raise UserInputError(
                    f"config key {key}.name must be a string, got {value['name']!r}"
                )
            values[key] = copy.deepcopy(dict(value))
        else:
            values[key] = value
    _check_values(Config, values, "")
    return Config(**values)


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> Config:
    """Read a YAML config and apply ``section.key=value`` overrides."""
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"config file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else "parse error"
        raise UserInputError(f"{path} is not valid YAML: {first}") from None
    except UnicodeDecodeError as err:
        raise UserInputError(f"{path} is not a text (YAML) file: {err.reason}") from None
    except RecursionError:
        raise UserInputError(
            f"{path} is nested too deeply to read (a config may nest {MAX_CONFIG_DEPTH} levels)"
        ) from None
    if not isinstance(raw, Mapping):
        raise UserInputError(
            f"{path} must be a mapping of config sections, got a YAML {type(raw).__name__}"
        )
    return parse_config(apply_overrides(raw, overrides, str(path)), source=str(path))


def _parse_override(item: str) -> tuple[list[str], Any]:
    key, sep, text = item.partition("=")
    parts = key.split(".")
    if not sep or not key or not all(parts):
        raise UserInputError(f"override {item!r} is not of the form section.key=value")
    too_deep = UserInputError(
        f"override {item if len(item) <= 60 else item[:57] + '...'!r} nests mappings or lists "
        f"more than {MAX_CONFIG_DEPTH} levels deep"
    )
    if len(parts) > MAX_CONFIG_DEPTH:
        raise too_deep
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        value = text
    except RecursionError:
        raise too_deep from None
    if _deeper_than(value, MAX_CONFIG_DEPTH - len(parts)):
        raise too_deep
    return parts, value


#: named sections whose other keys belong to the named builder alone
_RENAMES_RESET = {(section, "name") for section in ("strategy", "relaxation", "selection")}


def apply_overrides(
    raw: Mapping[str, Any], overrides: Sequence[str], source: str = "config"
) -> dict[str, Any]:
    """Set dotted keys, e.g. ``search.epochs=3`` or ``data.root=/data``; values are YAML.

    A key inside a section that ``raw`` leaves to its default is set on a copy
    of the default (``search.weight_optimizer.lr=0.1`` keeps SGD's momentum); an
    override of such a section's ``name`` starts the section afresh. So does
    an override that renames the ``strategy``, ``relaxation`` or ``selection``
    the file spells out (``strategy.name=random`` on a bilevel config): their
    other keys are the old builder's options. ``data`` and ``network`` keep
    theirs, which describe the user's data and space. Name overrides are
    applied first, so their order on the command line does not matter.
    """
    if not isinstance(raw, Mapping):
        raise UserInputError(f"a config must be a mapping of sections, got {type(raw).__name__}")
    _refuse_deep(raw, source)
    result = copy.deepcopy(dict(raw))
    parsed = [(item, *_parse_override(item)) for item in overrides]
    parsed.sort(key=lambda entry: entry[1][-1] != "name")
    defaults = config_defaults()
    for item, parts, value in parsed:
        node, default = result, defaults
        from_default = False
        for part in parts[:-1]:
            default = default.get(part) if isinstance(default, Mapping) else None
            child = node.get(part)
            if child is None:
                from_default = isinstance(default, Mapping)
                child = node[part] = copy.deepcopy(dict(default)) if from_default else {}
            if not isinstance(child, dict):
                raise UserInputError(f"override {item!r}: {part!r} is not a section")
            node = child
        renamed = parts[-1] == "name" and node.get("name") != value
        if renamed and (from_default or tuple(parts) in _RENAMES_RESET):
            node.clear()
        node[parts[-1]] = value
    return result


def _value_problem(default: Any, value: Any) -> str | None:
    """Compare a given option with the type of its default (numbers and flags only).

    A numeric default admits any finite number: many optimizers default a
    real-valued option to the integer 0 (``weight_decay=0``).
    """
    if isinstance(default, bool):
        return None if isinstance(value, bool) else "must be true or false"
    if _is_int(default) or isinstance(default, float):
        return None if _is_number(value) else "must be a finite number"
    return None


def check_options(
    fn: Callable[..., Any], options: Mapping[str, Any], where: str, n_positional: int = 0
) -> None:
    """Refuse ``options`` that ``fn`` does not take, required ones that are missing,
    and numbers or flags whose type differs from the option's default (``nan`` included)."""
    params = list(inspect.signature(fn).parameters.items())[n_positional:]
    keywords = [(n, p) for n, p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for _, p in params):
        _check_keys(options, [n for n, _ in keywords], f"{where}.")
    missing = [n for n, p in keywords if p.default is inspect.Parameter.empty and n not in options]
    if missing:
        raise UserInputError(f"config section {where!r} needs key {missing[0]!r}")
    for name, parameter in keywords:
        if name in options and parameter.default is not inspect.Parameter.empty:
            problem = _value_problem(parameter.default, options[name])
            if problem:
                raise UserInputError(f"config key {where}.{name} {problem}, got {options[name]!r}")


def call_with_options(
    fn: Callable[..., Any], options: Mapping[str, Any], where: str, *args: Any
) -> Any:
    """Call ``fn(*args, **options)`` after refusing options ``fn`` does not take.

    ``fn`` builds something from the user's config section ``where`` (a data
    set reading the user's files, a network of the user's sizes), so any
    failure is reported as that section's, in one line, with the original
    exception chained for ``--debug``.
    """
    check_options(fn, options, where, len(args))
    try:
        return fn(*args, **options)
    except UserInputError:
        raise
    except Exception as err:
        raise section_error(err, where) from err


def section_error(err: Exception, where: str) -> UserInputError:
    """``err``, raised while building config section ``where``, as a one-line user error."""
    if isinstance(err, (ValueError, TypeError)):
        return UserInputError(f"config section {where!r}: {_first_line(err)}")
    culprit = getattr(err, "filename", None)
    prefix = f"config section {where!r}" + (f" ({culprit})" if culprit else "")
    return UserInputError(f"{prefix}: {type(err).__name__}: {_first_line(err)}")


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0].strip() if text else type(err).__name__


def split_name(section: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """``{"name": n, **options}`` -> ``(n, options)``."""
    options = dict(section)
    return str(options.pop("name")), options
