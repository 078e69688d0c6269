"""SPD data sets: registered builders that return a :class:`DataBundle`.

Five builders, all registered in :data:`manifold_nas.data.DATASETS`:

``japanese_vowels``, ``basic_motions``
    UEA multivariate time series bundled inside the installed ``aeon`` package
    (nothing is downloaded), official train/test split, turned into covariance
    matrices by :func:`~manifold_nas.domains.spd.covariance.covariance_features`.
``ucr_lag``
    A UCR univariate problem bundled inside ``aeon`` (``problem: GunPoint``,
    see :func:`aeon_univariate_problems`), official split, each series turned
    into the covariance of its delay embedding (10 delays by default).
``timeseries_files``
    The user's time series, univariate or multivariate: ``.ts`` (sktime/aeon
    format), ``.npz``, ``.npy`` (+ ``labels_path``) or ``.pt``, same
    covariance options, delay embedding included (``embed_dim``, ``embed_lag``).
``spd_files``
    The user's SPD matrices: ``.npz``, ``.npy`` (+ ``labels_path``), ``.pt``
    or ``.mat``, checked by :func:`~manifold_nas.domains.spd.validation.validate_spd_dataset`.

Every bundle holds float64 tensors ``(N, C, n, n)`` with int64 labels in
``0..K-1``; ``info["class_names"][k]`` is the original name of class ``k``.
Covariance options are documented once, in :func:`covariance_features`; the
defaults (Ledoit–Wolf shrinkage, no trace normalisation, no windows, no delay
embedding except in ``ucr_lag``) are generic choices, not tuned to any data set.

Every file is checked whole, before any train/test split: a bad sample is
named by its index in the file, a wrong shape is the file's shape, and
training labels of fewer than two classes are refused (a one-class
classifier would report accuracy 1.0).
"""

from __future__ import annotations

import functools
import logging
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import TensorDataset

from manifold_nas.data import DATASETS, DataBundle
from manifold_nas.domains.spd.baselines import tangent_space_baseline
from manifold_nas.domains.spd.covariance import covariance_features, default_embedding_lag
from manifold_nas.domains.spd.validation import encode_labels, validate_spd_dataset
from manifold_nas.errors import UserInputError

__all__ = [
    "aeon_univariate_problems",
    "basic_motions",
    "japanese_vowels",
    "load_array_file",
    "spd_files",
    "stratified_split",
    "timeseries_files",
    "ucr_lag",
]

logger = logging.getLogger("manifold_nas")

# Keys tried, in order, when the configured default key is absent from a file.
X_KEYS = ("X", "x", "data", "features", "covariances", "covs", "spd")
Y_KEYS = ("y", "Y", "labels", "label", "targets", "target", "classes")
_ARRAY_EXTS = (".npz", ".npy", ".pt")
_LABEL_EXTS = (".npy", ".txt", ".csv")
_COVARIANCE_OPTIONS = (
    "shrinkage",
    "trace_normalize",
    "window",
    "hop",
    "ridge",
    "center",
    "augment_mean",
    "embed_dim",
    "embed_lag",
)


@DATASETS.register("japanese_vowels")
def japanese_vowels(
    shrinkage: str | float | None = "ledoit_wolf",
    trace_normalize: bool = False,
    window: int | None = None,
    hop: int | None = None,
    ridge: float = 0.0,
    center: bool = True,
    augment_mean: bool = False,
    embed_dim: int | None = None,
    embed_lag: int | None = None,
) -> DataBundle:
    """UEA JapaneseVowels: 12 LPC channels, 7–29 steps, 9 speakers, 270/370.

    Each utterance becomes a 12×12 covariance, ``sample_shape (1, 12, 12)``
    (``(W, 12, 12)`` with ``window``; 13×13 with ``augment_mean``). Lengths
    differ, so windowed samples get as many windows as the shortest
    utterance allows.
    """
    return _aeon_bundle("japanese_vowels", "JapaneseVowels", _covariance_options(locals()))


@DATASETS.register("basic_motions")
def basic_motions(
    shrinkage: str | float | None = "ledoit_wolf",
    trace_normalize: bool = False,
    window: int | None = None,
    hop: int | None = None,
    ridge: float = 0.0,
    center: bool = True,
    augment_mean: bool = False,
    embed_dim: int | None = None,
    embed_lag: int | None = None,
) -> DataBundle:
    """UEA BasicMotions: 6 accelerometer/gyroscope channels, 100 steps, 4 classes, 40/40."""
    return _aeon_bundle("basic_motions", "BasicMotions", _covariance_options(locals()))


@DATASETS.register("ucr_lag")
def ucr_lag(
    problem: str | None = None,
    embed_dim: int = 10,
    embed_lag: int | None = None,
    shrinkage: str | float | None = "ledoit_wolf",
    trace_normalize: bool = False,
    window: int | None = None,
    hop: int | None = None,
    ridge: float = 0.0,
    center: bool = True,
    augment_mean: bool = False,
) -> DataBundle:
    """A UCR univariate problem bundled with aeon, as delay-embedding covariances.

    ``problem`` is one of :func:`aeon_univariate_problems` (ArrowHead,
    GunPoint, OSULeaf, ... as this aeon installation bundles them); the
    official train/test split is used. A series :math:`x_t` becomes the
    ``d × d`` (Ledoit–Wolf shrunk) covariance of the vectors
    :math:`(x_s, x_{s+τ}, …, x_{s+(d-1)τ})`, ``sample_shape (1, d, d)``.

    Defaults: ``d = embed_dim = 10``, a fixed size (55 tangent coordinates)
    small against every bundled training set yet enough to resolve the
    autocovariance's shape; ``τ = embed_lag`` from
    :func:`~manifold_nas.domains.spd.covariance.default_embedding_lag` of the shortest
    training series, ``max(1, ⌊t / 40⌋)``, so the embedding window spans
    under a quarter of the series. Neither looks at labels or values.
    """
    problems = aeon_univariate_problems()
    if problem not in problems:
        given = "is required" if problem is None else f"{problem!r} is not bundled with aeon"
        raise UserInputError(
            f"ucr_lag: data.problem {given}; univariate classification problems bundled "
            f"with this aeon: {', '.join(problems)}"
        )
    cov = _covariance_options(locals())
    return _aeon_bundle("ucr_lag", problem, cov, {"problem": problem})


@DATASETS.register("timeseries_files")
def timeseries_files(
    path: str | None = None,
    test_path: str | None = None,
    labels_path: str | None = None,
    test_labels_path: str | None = None,
    x_key: str = "X",
    y_key: str = "y",
    test_fraction: float = 0.3,
    seed: int = 0,
    shrinkage: str | float | None = "ledoit_wolf",
    trace_normalize: bool = False,
    window: int | None = None,
    hop: int | None = None,
    ridge: float = 0.0,
    center: bool = True,
    augment_mean: bool = False,
    embed_dim: int | None = None,
    embed_lag: int | None = None,
) -> DataBundle:
    """Time series from disk, univariate or multivariate, turned into covariance matrices.

    ``path`` (train) and ``test_path`` are ``.ts`` files (labels inside), or
    arrays ``(N, channels, time)`` or ``(N, time)``: ``.npz`` with keys
    ``x_key``/``y_key``, ``.pt`` holding ``{x_key: X, y_key: y}`` or
    ``(X, y)``, or ``.npy`` holding X with labels in ``labels_path`` /
    ``test_labels_path`` (``.npy`` or a text file with one label per line).
    Without ``test_path``, a stratified ``test_fraction`` of ``path`` (seeded
    by ``seed``) is held out, after the covariances of the whole file are
    computed and checked.

    ``embed_dim`` (``d``) replaces each series of ``c`` channels by its delay
    embedding, ``d · c`` channels holding the copies delayed by ``0, τ, …,
    (d - 1)τ``, before the covariance; ``embed_lag`` (``τ``) defaults to
    ``max(1, ⌊t_min / (4d)⌋)`` for the shortest series ``t_min`` of ``path``
    (see :func:`~manifold_nas.domains.spd.covariance.default_embedding_lag`). A univariate
    series needs it: without, its covariance is ``1 × 1``.
    """
    cov = _covariance_options(locals())
    exts = (".ts", *_ARRAY_EXTS)
    source = str(_required(path, "path"))
    x_train, y_train = load_array_file(
        source, "path", exts, x_key, y_key, labels_path, "labels_path"
    )
    if test_path is None:
        _check_test_fraction(test_fraction)
        (codes,), classes = _encode_training_labels(y_train, source=source)
        cov = _with_default_lag(cov, x_train)
        covs = covariance_features(x_train, source=source, **cov)
        x, y = validate_spd_dataset(covs, codes, source=source, from_series=True)
        return _split_bundle(
            "timeseries_files", x, y, classes, source, test_fraction, seed, {"covariance": cov}
        )
    x_test, y_test = load_array_file(
        test_path, "test_path", exts, x_key, y_key, test_labels_path, "test_labels_path"
    )
    return _covariance_bundle(
        "timeseries_files", (x_train, y_train, source), (x_test, y_test, str(test_path)), cov
    )


@DATASETS.register("spd_files")
def spd_files(
    path: str | None = None,
    test_path: str | None = None,
    labels_path: str | None = None,
    test_labels_path: str | None = None,
    x_key: str = "X",
    y_key: str = "y",
    test_fraction: float = 0.3,
    seed: int = 0,
    regularize: bool = False,
) -> DataBundle:
    """SPD matrices the user already has, ``(N, n, n)`` or ``(N, C, n, n)``.

    Formats (``path`` and ``test_path`` alike):

    - ``.npz``: arrays under ``x_key`` and ``y_key``; when the default keys
      are absent, common alternatives (``x``, ``data``, ``labels``, ``Y``,
      ...) are tried, and the error lists the keys the file has.
    - ``.npy``: X only (no pickles); labels come from ``labels_path``
      (``test_labels_path`` for the test file): ``.npy`` or a text file with
      one label per line.
    - ``.pt``: ``{x_key: X, y_key: y}`` or a tuple ``(X, y)``, read with
      ``torch.load(weights_only=True)``.
    - ``.mat``: MATLAB v5/v7 (``scipy.io.loadmat``), keys as for ``.npz``.
      X stored MATLAB-style as ``(n, n, N)`` (last axis of length ``len(y)``)
      is moved to ``(N, n, n)``, with one warning naming the file.

    Labels may be integers or strings; they are mapped jointly (train and
    test) to ``0..K-1``. Without ``test_path``, a stratified ``test_fraction``
    of ``path`` is held out (seeded by ``seed``) after the whole file is
    checked. ``regularize`` repairs asymmetric or singular samples instead of
    refusing them (see :func:`validate_spd_dataset`).
    """
    exts = (*_ARRAY_EXTS, ".mat")
    source = str(_required(path, "path"))
    x_train, y_train = load_array_file(
        source, "path", exts, x_key, y_key, labels_path, "labels_path"
    )
    if test_path is None:
        _check_test_fraction(test_fraction)
        (codes,), classes = _encode_training_labels(y_train, source=source)
        x, y = validate_spd_dataset(x_train, codes, source=source, regularize=regularize)
        return _split_bundle("spd_files", x, y, classes, source, test_fraction, seed, {})
    x_test, y_test = load_array_file(
        test_path, "test_path", exts, x_key, y_key, test_labels_path, "test_labels_path"
    )
    test_source = str(test_path)
    (code_train, code_test), classes = _encode_training_labels(y_train, y_test, source=source)
    xt, yt = validate_spd_dataset(x_train, code_train, source=source, regularize=regularize)
    xs, ys = validate_spd_dataset(x_test, code_test, source=test_source, regularize=regularize)
    if xt.shape[1:] != xs.shape[1:]:
        raise UserInputError(
            f"{test_source}: test samples have shape {tuple(xs.shape[1:])}, "
            f"train samples {tuple(xt.shape[1:])}"
        )
    return _bundle(
        "spd_files", xt, yt, xs, ys, classes, {"source": source, "test_source": test_source}
    )


@functools.lru_cache(maxsize=1)
def aeon_univariate_problems() -> tuple[str, ...]:
    """Names of the univariate classification problems bundled inside ``aeon``.

    A problem counts when ``aeon/datasets/data/<name>/`` holds
    ``<name>_TRAIN.ts`` and ``<name>_TEST.ts`` whose header declares
    ``@univariate true`` and ``@classLabel true``; nothing is downloaded.
    """
    root = _aeon_data_root()
    problems = []
    for folder in sorted(root.iterdir() if root.is_dir() else []):
        train, test = (folder / f"{folder.name}_{split}.ts" for split in ("TRAIN", "TEST"))
        if train.is_file() and test.is_file():
            header = _ts_header(train)
            if header.get("univariate") == "true" and header.get("classlabel", "").startswith(
                "true"
            ):
                problems.append(folder.name)
    return tuple(problems)


def load_array_file(
    path: str | Path,
    option: str,
    extensions: tuple[str, ...],
    x_key: str = "X",
    y_key: str = "y",
    labels_path: str | Path | None = None,
    labels_option: str = "labels_path",
) -> tuple[Any, np.ndarray]:
    """Read ``(X, y)`` from one file; ``option`` names the config key in messages.

    ``labels_path``, when given, overrides labels stored in the file. X is
    returned as loaded (an array, or a list of arrays for unequal-length
    ``.ts`` series); y as a 1-D array.
    """
    file = _existing(path, option)
    ext = file.suffix.lower()
    if ext not in extensions:
        raise UserInputError(
            f"data.{option}: unsupported file type {ext or '(none)'!r} for {file}; "
            f"supported: {', '.join(extensions)}"
        )
    x, y = _READERS[ext](file, option, x_key, y_key, labels_path is None)
    if labels_path is not None:
        y = _read_labels(labels_path, labels_option)
    if y is None:
        raise UserInputError(
            f"data.{option}: {file} holds X only; give its labels in data.{labels_option}"
        )
    if ext == ".mat":
        x = _from_matlab_layout(x, y, file)
    return x, y


def stratified_split(
    labels: np.ndarray, test_fraction: float, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(train, test)`` holding out ``round(test_fraction · n_k)`` of each class.

    Every class keeps at least one training sample; a class with one sample
    goes entirely to training.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    train, test = [], []
    for cls in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == cls))
        n_test = min(round(test_fraction * len(members)), len(members) - 1)
        test.append(members[:n_test])
        train.append(members[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def _aeon_data_root() -> Path:
    import aeon.datasets

    return Path(aeon.datasets.__file__).parent / "data"


def _ts_header(file: Path) -> dict[str, str]:
    header = {}
    with file.open(encoding="utf-8", errors="replace") as lines:
        for line in lines:
            line = line.strip()
            if line.lower().startswith("@data"):
                break
            if line.startswith("@"):
                key, _, value = line[1:].partition(" ")
                header[key.lower()] = value.strip().lower()
    return header


def _aeon_bundle(
    name: str, problem: str, cov: dict[str, Any], info: dict[str, Any] | None = None
) -> DataBundle:
    from aeon.datasets import load_from_ts_file

    loaded = []
    for split in ("TRAIN", "TEST"):
        file = _aeon_data_root() / problem / f"{problem}_{split}.ts"
        if not file.is_file():
            raise UserInputError(
                f"{name}: {file} is missing; this aeon installation does not bundle {problem}"
            )
        loaded.append((*load_from_ts_file(str(file)), str(file)))
    return _covariance_bundle(name, loaded[0], loaded[1], cov, info)


def _covariance_bundle(
    name: str,
    train: tuple[Any, Any, str],
    test: tuple[Any, Any, str],
    cov: dict[str, Any],
    info: dict[str, Any] | None = None,
) -> DataBundle:
    """Covariances of a train file and a test file, each checked under its own name."""
    (x_train, y_train, source), (x_test, y_test, test_source) = train, test
    (code_train, code_test), classes = _encode_training_labels(y_train, y_test, source=source)
    cov = _with_default_lag(cov, x_train)
    covs_train = covariance_features(x_train, source=source, **cov)
    covs_test = covariance_features(x_test, source=test_source, **cov)
    if covs_train.ndim == 4 and covs_train.shape[1] != covs_test.shape[1]:
        # Each file allows its own window count; the one with more windows is
        # recut to the other's count so that train and test samples match.
        n_windows = min(covs_train.shape[1], covs_test.shape[1])
        if covs_train.shape[1] > n_windows:
            covs_train = covariance_features(x_train, source=source, n_windows=n_windows, **cov)
        else:
            covs_test = covariance_features(x_test, source=test_source, n_windows=n_windows, **cov)
    xt, yt = validate_spd_dataset(covs_train, code_train, source=source, from_series=True)
    xs, ys = validate_spd_dataset(covs_test, code_test, source=test_source, from_series=True)
    info = {"source": source, "test_source": test_source, "covariance": cov, **(info or {})}
    return _bundle(name, xt, yt, xs, ys, classes, info)


def _split_bundle(
    name: str,
    x: torch.Tensor,
    y: torch.Tensor,
    classes: tuple[str, ...],
    source: str,
    test_fraction: float,
    seed: int,
    info: dict[str, Any],
) -> DataBundle:
    """Hold out a stratified ``test_fraction`` of one checked file."""
    train, test = (torch.from_numpy(i) for i in stratified_split(y.numpy(), test_fraction, seed))
    if test.numel() == 0:
        raise UserInputError(
            f"{source}: too few samples per class to hold out a test split; give data.test_path"
        )
    test_source = f"stratified {test_fraction:g} of {source} (seed {seed})"
    info = {"source": source, "test_source": test_source, **info}
    return _bundle(name, x[train], y[train], x[test], y[test], classes, info)


def _encode_training_labels(
    y_train: Any, *others: Any, source: str
) -> tuple[list[np.ndarray], tuple[str, ...]]:
    """:func:`encode_labels`, refusing training labels of fewer than two classes."""
    codes, classes = encode_labels(y_train, *others, source=source)
    present = np.unique(codes[0])
    if present.size < 2:
        names = ", ".join(repr(classes[k]) for k in present) or "none"
        raise UserInputError(
            f"{source}: the training labels hold {present.size} "
            f"class{'' if present.size == 1 else 'es'} ({names}); a classifier needs at least 2"
        )
    return codes, classes


def _bundle(
    name: str,
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    x_test: torch.Tensor,
    y_test: torch.Tensor,
    classes: tuple[str, ...],
    info: dict[str, Any],
) -> DataBundle:
    return DataBundle(
        name=name,
        train=TensorDataset(x_train, y_train),
        test=TensorDataset(x_test, y_test),
        num_classes=len(classes),
        sample_shape=tuple(x_train.shape[1:]),
        info={"class_names": list(classes), **info},
        baseline=tangent_space_baseline,
    )


def _covariance_options(values: dict[str, Any]) -> dict[str, Any]:
    return {k: values[k] for k in _COVARIANCE_OPTIONS}


def _with_default_lag(cov: dict[str, Any], x_train: Any) -> dict[str, Any]:
    """Fix the default embedding lag from the training series, so test data never set it."""
    if cov["embed_dim"] is None or cov["embed_lag"] is not None:
        return cov
    return {**cov, "embed_lag": default_embedding_lag(x_train, cov["embed_dim"])}


def _check_test_fraction(test_fraction: float) -> None:
    try:
        inside = 0.0 < float(test_fraction) < 1.0
    except (TypeError, ValueError):
        inside = False
    if not inside:
        raise UserInputError(f"data.test_fraction must be in (0, 1), got {test_fraction!r}")


def _required(value: str | None, option: str) -> str:
    if value is None:
        raise UserInputError(f"data.{option} is required")
    return value


def _existing(path: str | Path, option: str) -> Path:
    file = Path(path).expanduser()
    if not file.is_file():
        raise UserInputError(f"data.{option}: file not found: {file}")
    return file


def _pick(container: Any, keys: list[str], key: str, default: str, alternatives, file, option):
    if key in keys:
        return container[key]
    if key == default:
        for alt in alternatives:
            if alt in keys:
                return container[alt]
    setting = "x_key" if alternatives is X_KEYS else "y_key"
    raise UserInputError(
        f"data.{option}: key {key!r} not found in {file}; available keys: "
        f"{', '.join(map(str, keys)) or 'none'} (set data.{setting})"
    )


def _read_mapping(container, keys, file, option, x_key, y_key, need_y):
    x = _pick(container, keys, x_key, "X", X_KEYS, file, option)
    y = _pick(container, keys, y_key, "y", Y_KEYS, file, option) if need_y else None
    return x, y


def _read_npz(file: Path, option: str, x_key: str, y_key: str, need_y: bool):
    try:
        with np.load(file, allow_pickle=False) as archive:
            keys = list(archive.files)
            x, y = _read_mapping(archive, keys, file, option, x_key, y_key, need_y)
            return np.asarray(x), None if y is None else np.asarray(y)
    except (ValueError, OSError) as exc:
        raise UserInputError(f"data.{option}: cannot read {file} as .npz ({exc})") from None


def _read_npy(file: Path, option: str, x_key: str, y_key: str, need_y: bool):
    try:
        return np.load(file, allow_pickle=False), None
    except ValueError:
        raise UserInputError(
            f"data.{option}: {file} holds a pickled object; store X alone in the .npy "
            "with labels in data.labels_path, or use .npz/.pt"
        ) from None
    except OSError as exc:
        raise UserInputError(f"data.{option}: cannot read {file} as .npy ({exc})") from None


def _read_pt(file: Path, option: str, x_key: str, y_key: str, need_y: bool):
    try:
        obj = torch.load(file, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as exc:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserInputError(f"data.{option}: cannot read {file} as .pt ({message})") from None
    if isinstance(obj, dict):
        x, y = _read_mapping(obj, list(obj), file, option, x_key, y_key, need_y)
    elif isinstance(obj, (tuple, list)) and len(obj) == 2:
        x, y = obj
    elif isinstance(obj, torch.Tensor):
        x, y = obj, None
    else:
        raise UserInputError(
            f"data.{option}: {file} holds a {type(obj).__name__}; expected a dict "
            f"{{{x_key!r}: X, {y_key!r}: y}}, a tuple (X, y) or a tensor X"
        )
    return _to_numpy(x), None if y is None else _to_numpy(y)


def _read_mat(file: Path, option: str, x_key: str, y_key: str, need_y: bool):
    import scipy.io

    try:
        contents = scipy.io.loadmat(file)
    except NotImplementedError:
        raise UserInputError(
            f"data.{option}: {file} is a MATLAB v7.3 (HDF5) file; save it with "
            "save(..., '-v7') or convert it to .npz"
        ) from None
    except (ValueError, OSError) as exc:
        raise UserInputError(f"data.{option}: cannot read {file} as .mat ({exc})") from None
    keys = [k for k in contents if not k.startswith("__")]
    return _read_mapping(contents, keys, file, option, x_key, y_key, need_y)


def _read_ts(file: Path, option: str, x_key: str, y_key: str, need_y: bool):
    from aeon.datasets import load_from_ts_file

    try:
        return load_from_ts_file(str(file))
    except (OSError, ValueError) as exc:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserInputError(f"data.{option}: cannot read {file} as .ts ({message})") from None


_READERS = {
    ".npz": _read_npz,
    ".npy": _read_npy,
    ".pt": _read_pt,
    ".mat": _read_mat,
    ".ts": _read_ts,
}


def _read_labels(path: str | Path, option: str) -> np.ndarray:
    file = _existing(path, option)
    ext = file.suffix.lower()
    if ext == ".npy":
        try:
            return np.load(file, allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise UserInputError(f"data.{option}: cannot read {file} ({exc})") from None
    if ext in (".txt", ".csv"):
        lines = file.read_text().splitlines()
        return np.array([line.strip() for line in lines if line.strip()])
    raise UserInputError(
        f"data.{option}: unsupported labels file type {ext or '(none)'!r} for {file}; "
        f"supported: {', '.join(_LABEL_EXTS)}"
    )


def _from_matlab_layout(x: Any, y: Any, file: Path) -> Any:
    x = np.asarray(x)
    n_labels = np.asarray(y).size
    standard = x.ndim == 3 and x.shape[0] == n_labels and x.shape[1] == x.shape[2]
    matlab = x.ndim == 3 and x.shape[2] == n_labels and x.shape[0] == x.shape[1]
    if matlab and not standard:
        moved = np.moveaxis(x, -1, 0)
        logger.warning(
            "%s: X has MATLAB layout (n, n, N) %s; using it as (N, n, n) %s",
            file,
            x.shape,
            moved.shape,
        )
        return moved
    return x


def _to_numpy(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return value
