"""Fuzzed inputs: no file the CLI reads can end in a traceback.

For every kind of file the command line reads (configs, checkpoints,
genotypes, retrained weights, SPD arrays in every accepted format, time
series, MSD datalists and NIfTI volumes), hypothesis truncates a valid file
at some offset, flips bytes in it, or swaps in a valid file of another kind.
The promise is always the same: exit status 0 (the damage happened to leave
a valid file) or 2 with exactly one line on stderr and no traceback, and a
failed command leaves an existing run directory byte for byte as it was.

``make test`` runs a bounded number of examples per kind (deterministic,
``derandomize=True``); ``benchmarks/fuzz_inputs.py`` runs many more.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import scipy.io
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from manifold_nas.cli import main

EXAMPLES = int(os.environ.get("MANIFOLD_NAS_FUZZ_EXAMPLES", "6"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.err


def snapshot(directory: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(directory)): p.read_bytes()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def assert_clean_outcome(code: int, err: str) -> None:
    assert "Traceback" not in err, err
    assert code in (0, 2), (code, err)
    if code == 2:
        lines = [line for line in err.splitlines() if line.strip()]
        assert len(lines) == 1, err
        assert lines[0].startswith("manifold-nas: error: "), err


# -- valid files of every kind ----------------------------------------------------------
def _spd(n_samples: int, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(n_samples, n, 2 * n))
    return a @ a.transpose(0, 2, 1) / (2 * n) + 0.1 * np.eye(n)


def _write_ts(path: Path, series: np.ndarray, labels: np.ndarray) -> None:
    lines = [
        "@problemName fuzz",
        "@timeStamps false",
        "@missing false",
        "@univariate false",
        f"@dimensions {series.shape[1]}",
        "@equalLength true",
        f"@seriesLength {series.shape[2]}",
        "@classLabel true a b",
        "@data",
    ]
    for x, y in zip(series, labels):
        channels = ":".join(",".join(f"{v:.5f}" for v in channel) for channel in x)
        lines.append(f"{channels}:{y}")
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A finished tiny run plus one valid file of every kind the CLI reads."""
    root = tmp_path_factory.mktemp("corpus")
    cwd = os.getcwd()
    os.chdir(root)
    try:
        from tests.conftest import TINY_VISION
    except ImportError:  # pytest's rootdir conftest is imported as "conftest"
        from support import TINY_VISION
    try:
        vision = dict(TINY_VISION, search={"epochs": 1, "batch_size": 32, "max_steps_per_epoch": 1})
        vision["train"] = {"epochs": 1, "batch_size": 64, "max_steps_per_epoch": 1}
        (root / "vision.yaml").write_text(yaml.safe_dump(vision))
        assert main(["search", "vision.yaml", "--out", "run", "--quiet"]) == 0
        assert main(["train", "run", "--quiet"]) == 0

        labels = np.array([0, 1] * 8)
        x = _spd(16, 4, 0)
        np.savez(root / "spd.npz", X=x, y=labels)
        np.save(root / "spd.npy", x)
        np.save(root / "labels.npy", labels)
        torch.save({"X": torch.from_numpy(x), "y": torch.from_numpy(labels)}, root / "spd.pt")
        scipy.io.savemat(root / "spd.mat", {"X": x, "y": labels})
        spd = {
            "data": {"name": "spd_files", "path": "spd.npz", "test_fraction": 0.25},
            "network": {"name": "spdnet", "opset": "spd"},
        }
        (root / "spd.yaml").write_text(yaml.safe_dump(spd))

        rng = np.random.default_rng(1)
        _write_ts(root / "series.ts", rng.normal(size=(12, 3, 20)), np.array(["a", "b"] * 6))
        series = {
            "data": {"name": "timeseries_files", "path": "series.ts", "test_fraction": 0.25},
            "network": {"name": "spdnet", "opset": "spd"},
        }
        (root / "series.yaml").write_text(yaml.safe_dump(series))

        entries = []
        for i in range(3):
            label = np.zeros((16, 16, 8), dtype=np.uint8)
            label[3:9, 3:9, 2:6] = 1
            image = (label + rng.normal(0, 0.1, label.shape)).astype(np.float32)
            for folder, data in (("imagesTr", image), ("labelsTr", label)):
                (root / folder).mkdir(exist_ok=True)
                nib.save(nib.Nifti1Image(data, np.eye(4)), str(root / folder / f"c{i}.nii.gz"))
            entries.append({"image": f"./imagesTr/c{i}.nii.gz", "label": f"./labelsTr/c{i}.nii.gz"})
        (root / "dataset.json").write_text(
            json.dumps({"labels": {"0": "background", "1": "organ"}, "training": entries})
        )
        volumetric = {
            "data": {
                "name": "datalist",
                "datalist": "dataset.json",
                "patch_size": [16, 16, 8],
                "test_fraction": 0.34,
            },  # fmt: skip
            "network": {
                "name": "vnas",
                "opset": "volumetric",
                "channels": [4, 8],
                "strides": [2],
            },  # fmt: skip
        }
        (root / "volumetric.yaml").write_text(yaml.safe_dump(volumetric))
    finally:
        os.chdir(cwd)
    return root


#: kind -> the file that is damaged, relative to the corpus
FILES = {
    "config": "vision.yaml",
    "checkpoint": "run/checkpoint.pt",
    "genotype": "run/genotype.json",
    "weights": "run/retrain/model.pt",
    "spd_npz": "spd.npz",
    "spd_npy": "spd.npy",
    "spd_pt": "spd.pt",
    "spd_mat": "spd.mat",
    "timeseries": "series.ts",
    "datalist": "dataset.json",
    "nifti": "imagesTr/c0.nii.gz",
}


def damage(original: bytes, how: str, where: float, value: int, other: bytes) -> bytes:
    offset = int(where * len(original))
    if how == "truncate":
        return original[:offset]
    if how == "flip":
        span = bytearray(original)
        for k in range(offset, min(len(span), offset + 8)):
            span[k] ^= value or 0xFF
        return bytes(span)
    return other  # a valid file of another kind


DAMAGE = st.tuples(
    st.sampled_from(["truncate", "flip", "swap"]),
    st.floats(0.0, 1.0),
    st.integers(0, 255),
    st.sampled_from(sorted(FILES)),
)


def command_for(kind: str, work: Path) -> tuple[list[str], Path | None]:
    """The CLI call that reads the damaged file, and the run directory it must not change."""
    if kind == "config":
        return ["check", work / "vision.yaml"], None
    if kind == "checkpoint":
        for name in ("genotype.json", "summary.json"):
            (work / "run" / name).unlink()
        return ["search", work / "vision.yaml", "--out", work / "run", "--resume", "--quiet"], (
            work / "run"
        )
    if kind in ("genotype", "weights"):
        return ["evaluate", work / "run"], work / "run"
    if kind.startswith("spd_"):
        suffix = kind.split("_")[1]
        extra = ["data.labels_path=labels.npy"] if suffix == "npy" else []
        return ["check", work / "spd.yaml", f"data.path=spd.{suffix}", *extra], None
    if kind == "timeseries":
        return ["check", work / "series.yaml"], None
    return ["check", work / "volumetric.yaml"], None


@pytest.mark.parametrize("kind", sorted(FILES))
def test_a_damaged_input_file_ends_in_one_line_or_works(kind, corpus, tmp_path, capsys):
    @FUZZ
    @given(DAMAGE)
    def check(case):
        how, where, value, other_kind = case
        work = tmp_path / "work"
        shutil.rmtree(work, ignore_errors=True)
        shutil.copytree(corpus, work)
        target = work / FILES[kind]
        target.write_bytes(
            damage(
                target.read_bytes(), how, where, value, (corpus / FILES[other_kind]).read_bytes()
            )
        )
        argv, guarded = command_for(kind, work)
        before = snapshot(guarded) if guarded else None
        cwd = os.getcwd()
        os.chdir(work)
        try:
            code, err = run_cli(capsys, *argv)
        finally:
            os.chdir(cwd)
        assert_clean_outcome(code, err)
        if code == 2 and guarded is not None:
            assert snapshot(guarded) == before, "a failed command changed the run directory"

    check()


def _numeric_options(fn, skip=()):
    import inspect

    return [
        name
        for name, p in inspect.signature(fn).parameters.items()
        if name not in skip
        and isinstance(p.default, (int, float))
        and not isinstance(p.default, bool)
    ]


def _config_cases():
    from manifold_nas.optim import ARCH_OPTIMIZERS
    from manifold_nas.space.networks import NETWORKS
    from manifold_nas.space.relaxations import RELAXATIONS
    from manifold_nas.space.selection import SELECTORS
    from manifold_nas.strategies import STRATEGIES

    cases = []
    for name in RELAXATIONS.list():
        cases += [("relaxation", name, o) for o in _numeric_options(RELAXATIONS.get(name))]
    for name in SELECTORS.list():
        cases += [("selection", name, o) for o in _numeric_options(SELECTORS.get(name))]
    for name in STRATEGIES.list():
        cases += [("strategy", name, o) for o in _numeric_options(STRATEGIES.get(name))]
    for name in ("sgd", "adam", "eg", "riemannian_sgd"):
        cases += [
            ("strategy.arch_optimizer", name, o)
            for o in _numeric_options(ARCH_OPTIMIZERS.get(name).__init__)
        ]
    for name in ("darts_cnn", "nb201", "simple_cnn"):
        cases += [("network", name, o) for o in _numeric_options(NETWORKS.get(name))]
    cases += [("data", "digits", o) for o in ("test_fraction", "seed")]
    return cases


@pytest.mark.parametrize("section, name, option", _config_cases())
def test_a_nan_negative_or_wrongly_typed_option_ends_in_one_line_or_works(
    section, name, option, tmp_path, capsys, tiny_config_dict
):
    raw = dict(tiny_config_dict)
    if section == "strategy.arch_optimizer":
        raw["strategy"] = {"name": "bilevel", "arch_optimizer": {"name": name}}
    elif section == "network":
        raw["network"] = {"name": name, "opset": "nb201" if name == "nb201" else "darts",
                          "channels": 4}  # fmt: skip
    else:
        raw[section] = {"name": name}
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(raw))
    for value in (".nan", "-1", "-0.5", "abc", "[1, 2]", "{a: 1}", "1e300"):
        code, err = run_cli(capsys, "check", path, f"{section}.{option}={value}")
        assert_clean_outcome(code, err)


SECTION_VALUES = st.one_of(
    st.none(),
    st.integers(-3, 3),
    st.floats(allow_nan=True),
    st.text(max_size=4),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.sampled_from(["epochs", "lr", "name", "x"]), st.integers(-2, 2), max_size=2),
)


def test_random_sections_with_random_values_end_in_one_line_or_work(
    tmp_path, capsys, tiny_config_dict
):
    @FUZZ
    @given(
        st.dictionaries(
            st.sampled_from(
                [
                    "search",
                    "train",
                    "proxy",
                    "seed",
                    "threads",
                    "device",
                    "strategy",
                    "relaxation",
                    "nonsense",
                ]
            ),  # fmt: skip
            SECTION_VALUES,
            max_size=3,
        )
    )
    def check(sections):
        raw = {**tiny_config_dict, **sections}
        path = tmp_path / "cfg.yaml"
        path.write_text(yaml.safe_dump(raw))
        code, err = run_cli(capsys, "check", path)
        assert_clean_outcome(code, err)

    check()
