"""SPD data: covariance features, SPD data-set validation, registered builders."""

from __future__ import annotations

import inspect
import logging
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from sklearn.covariance import OAS, LedoitWolf

import manifold_nas.domains.spd  # noqa: F401  (registers the builders)
from manifold_nas.data import DATASETS
from manifold_nas.domains.spd.covariance import (
    covariance_features,
    default_embedding_lag,
    delay_embedding,
    shrinkage_coefficients,
)
from manifold_nas.domains.spd.data import aeon_univariate_problems, stratified_split
from manifold_nas.domains.spd.validation import encode_labels, validate_spd_dataset
from manifold_nas.errors import UserInputError

SPD_DATASETS = ("japanese_vowels", "basic_motions", "ucr_lag", "timeseries_files", "spd_files")


def random_series(n=5, c=4, t=30, seed=0):
    return np.random.default_rng(seed).standard_normal((n, c, t))


def random_spd(n=10, size=4, seed=0):
    a = np.random.default_rng(seed).standard_normal((n, size, size))
    return a @ np.swapaxes(a, -1, -2) + 0.5 * np.eye(size)


def assert_spd(x):
    x = torch.as_tensor(x)
    assert torch.allclose(x, x.mT, atol=0, rtol=0)
    assert torch.linalg.eigvalsh(x).min() > 0


# ----------------------------------------------------------------- covariance


def test_covariance_features_have_shape_n_c_c_and_float64():
    covs = covariance_features(random_series(n=5, c=4))
    assert covs.shape == (5, 4, 4)
    assert covs.dtype == np.float64


@pytest.mark.parametrize("shrinkage", ["ledoit_wolf", "oas", 0.3, 1.0, None])
def test_covariance_features_are_spd_even_with_fewer_steps_than_channels(shrinkage):
    covs = covariance_features(random_series(n=6, c=8, t=3), shrinkage=shrinkage)
    assert_spd(covs)


def test_covariance_features_are_spd_with_a_constant_channel():
    series = random_series(n=3, c=4, t=20)
    series[1, 2] = 7.0
    for shrinkage in ("ledoit_wolf", None):
        assert_spd(covariance_features(series, shrinkage=shrinkage))


def test_trace_normalize_gives_unit_trace():
    covs = covariance_features(random_series() * 50.0, trace_normalize=True)
    np.testing.assert_allclose(np.trace(covs, axis1=-2, axis2=-1), 1.0)


def test_no_shrinkage_is_the_maximum_likelihood_covariance():
    series = random_series(n=1, c=3, t=40)
    expected = np.cov(series[0], bias=True)
    np.testing.assert_allclose(covariance_features(series, shrinkage=None)[0], expected)


def test_fixed_shrinkage_blends_towards_scaled_identity():
    series = random_series(n=1, c=3, t=40)
    s = np.cov(series[0], bias=True)
    expected = 0.7 * s + 0.3 * np.trace(s) / 3 * np.eye(3)
    np.testing.assert_allclose(covariance_features(series, shrinkage=0.3)[0], expected)


def test_ledoit_wolf_matches_sklearn():
    sample = random_series(n=1, c=6, t=15, seed=3)
    fitted = LedoitWolf().fit(sample[0].T)
    assert shrinkage_coefficients(sample, "ledoit_wolf")[0] == pytest.approx(fitted.shrinkage_)
    ours = covariance_features(sample, shrinkage="ledoit_wolf")[0]
    np.testing.assert_allclose(ours, fitted.covariance_, rtol=1e-10)


def test_oas_matches_sklearn():
    sample = random_series(n=1, c=6, t=15, seed=4)
    fitted = OAS().fit(sample[0].T)
    assert shrinkage_coefficients(sample, "oas")[0] == pytest.approx(fitted.shrinkage_)
    np.testing.assert_allclose(covariance_features(sample, shrinkage="oas")[0], fitted.covariance_)


def test_ridge_adds_trace_scaled_identity():
    series = random_series(n=2, c=3, t=40)
    base = covariance_features(series, shrinkage=None)
    ridged = covariance_features(series, shrinkage=None, ridge=0.1)
    mean_eig = np.trace(base, axis1=-2, axis2=-1) / 3
    np.testing.assert_allclose(ridged - base, 0.1 * mean_eig[:, None, None] * np.eye(3))


def test_unequal_lengths_give_one_covariance_per_series():
    series = [np.random.default_rng(i).standard_normal((3, 10 + 7 * i)) for i in range(4)]
    covs = covariance_features(series)
    assert covs.shape == (4, 3, 3)
    for i, s in enumerate(series):
        np.testing.assert_allclose(covs[i], covariance_features(s[None])[0])


def test_windowing_gives_one_matrix_per_window_as_channels():
    series = random_series(n=3, c=4, t=50)
    covs = covariance_features(series, window=10, hop=5, shrinkage=None)
    assert covs.shape == (3, 1 + (50 - 10) // 5, 4, 4)
    np.testing.assert_allclose(covs[1, 2], np.cov(series[1][:, 10:20], bias=True))
    assert_spd(covs)


def test_windowing_without_hop_uses_non_overlapping_windows():
    covs = covariance_features(random_series(n=2, c=3, t=35), window=10)
    assert covs.shape == (2, 3, 3, 3)


def test_windowing_unequal_lengths_uses_the_smallest_window_count():
    rng = np.random.default_rng(0)
    series = [rng.standard_normal((3, 20)), rng.standard_normal((3, 40))]
    covs = covariance_features(series, window=10, hop=5, shrinkage=None)
    assert covs.shape == (2, 3, 3, 3)
    # the longer series' windows span it from start to end
    np.testing.assert_allclose(covs[1, -1], np.cov(series[1][:, 30:40], bias=True))


def test_series_with_one_time_step_is_refused_naming_the_sample():
    series = [np.ones((3, 5)), np.ones((3, 5)), np.ones((3, 1))]
    with pytest.raises(UserInputError, match="sample 2"):
        covariance_features(series)


def test_series_with_nan_is_refused_naming_the_sample():
    series = random_series(n=5)
    series[3, 1, 7] = np.nan
    with pytest.raises(UserInputError, match="sample 3.*NaN"):
        covariance_features(series)


def test_unknown_shrinkage_is_refused():
    with pytest.raises(UserInputError, match="shrinkage"):
        covariance_features(random_series(), shrinkage="ledoit")


def test_window_longer_than_a_series_is_refused():
    with pytest.raises(UserInputError, match="sample 0.*window"):
        covariance_features(random_series(t=8), window=10)


# ----------------------------------------------------------------- validation


def test_validation_returns_float64_with_a_channel_axis_and_int64_labels():
    x, y = validate_spd_dataset(random_spd(6), np.arange(6) % 2, source="mem")
    assert x.shape == (6, 1, 4, 4) and x.dtype == torch.float64
    assert y.dtype == torch.int64
    assert_spd(x)


def test_validation_keeps_multichannel_samples():
    x, _ = validate_spd_dataset(random_spd(12).reshape(6, 2, 4, 4), np.zeros(6), source="mem")
    assert x.shape == (6, 2, 4, 4)


def test_validation_maps_string_labels_to_sorted_codes():
    labels = np.array(["walk", "run", "walk", "sit"])
    _, y, classes = validate_spd_dataset(random_spd(4), labels, source="mem", return_classes=True)
    assert classes == ("run", "sit", "walk")
    assert y.tolist() == [2, 0, 2, 1]


def test_encode_labels_sorts_numeric_strings_numerically_and_jointly():
    (train, test), classes = encode_labels(["10", "2", "2"], ["1"], source="mem")
    assert classes == ("1", "2", "10")
    assert train.tolist() == [2, 1, 1] and test.tolist() == [0]


def test_validation_refuses_nan_naming_source_and_sample():
    x = random_spd(6)
    x[3, 0, 1] = np.nan
    with pytest.raises(UserInputError) as err:
        validate_spd_dataset(x, np.zeros(6), source="covs.npz")
    message = str(err.value)
    assert "covs.npz" in message and "sample 3" in message and "NaN" in message
    assert "\n" not in message


def test_validation_refuses_nan_even_when_regularizing():
    x = random_spd(6)
    x[4, 2, 2] = np.inf
    with pytest.raises(UserInputError, match="sample 4.*inf"):
        validate_spd_dataset(x, np.zeros(6), source="mem", regularize=True)


def test_validation_refuses_non_symmetric_sample():
    x = random_spd(6)
    x[2, 0, 1] += 1e-3
    with pytest.raises(UserInputError, match="sample 2 is not symmetric"):
        validate_spd_dataset(x, np.zeros(6), source="mem")


def test_validation_tolerates_relative_rounding_asymmetry():
    # Scale 1e4 (largest eigenvalue ~1e5, inside the accepted range): an absolute
    # asymmetry ~1e-5 far above sym_tol, a relative one of 1e-9 below it.
    x = random_spd(6) * 1e4
    x[2, 0, 1] *= 1 + 1e-9
    validate_spd_dataset(x, np.zeros(6), source="mem")


def test_validation_refuses_non_positive_definite_sample():
    x = random_spd(6)
    x[1] = np.diag([1.0, 2.0, -0.5, 1.0])
    with pytest.raises(UserInputError, match="sample 1 is not positive definite"):
        validate_spd_dataset(x, np.zeros(6), source="mem")


def test_validation_reports_the_first_bad_sample():
    x = random_spd(6)
    x[4, 0, 0] = np.nan
    x[2] = -x[2]
    with pytest.raises(UserInputError, match="sample 2 "):
        validate_spd_dataset(x, np.zeros(6), source="mem")


def test_validation_names_the_channel_of_a_multichannel_sample():
    x = random_spd(12).reshape(6, 2, 4, 4)
    x[5, 1] = -x[5, 1]
    with pytest.raises(UserInputError, match=r"sample 5 \(channel 1\)"):
        validate_spd_dataset(x, np.zeros(6), source="mem")


@pytest.mark.parametrize("shape", [(6, 4, 3), (6, 16), (6, 1, 1, 4, 4)])
def test_validation_refuses_wrong_shapes(shape):
    with pytest.raises(UserInputError, match="shape"):
        validate_spd_dataset(np.ones(shape), np.zeros(6), source="mem")


def test_validation_refuses_label_count_mismatch():
    with pytest.raises(UserInputError, match="6 samples but 5 labels"):
        validate_spd_dataset(random_spd(6), np.zeros(5), source="mem")


def test_regularize_fixes_a_singular_sample_and_logs_a_warning(caplog):
    x = random_spd(6)
    v = np.random.default_rng(1).standard_normal((4, 2))
    x[2] = v @ v.T  # rank 2: PSD but singular
    x[4, 0, 1] += 1e-3  # asymmetric
    with pytest.raises(UserInputError, match="sample 2"):
        validate_spd_dataset(x, np.zeros(6), source="mem")
    with caplog.at_level(logging.WARNING, logger="manifold_nas"):
        fixed, _ = validate_spd_dataset(x, np.zeros(6), source="mem", regularize=True)
    assert_spd(fixed)
    assert "regularized 2 of 6 samples" in caplog.text
    np.testing.assert_array_equal(fixed[0, 0].numpy(), x[0])


def test_regularize_refuses_a_sample_too_far_from_spd():
    x = random_spd(3)
    x[1] = np.diag([5.0, 5.0, 5.0, -5.0])
    with pytest.raises(UserInputError, match="sample 1"):
        validate_spd_dataset(x, np.zeros(3), source="mem", regularize=True)


# ------------------------------------------------------------------- builders


def test_spd_builders_are_registered_with_keyword_defaults():
    for name in SPD_DATASETS:
        params = inspect.signature(DATASETS.get(name)).parameters.values()
        assert all(p.default is not inspect.Parameter.empty for p in params)


def test_japanese_vowels_uses_the_official_split():
    bundle = DATASETS.get("japanese_vowels")()
    x_train, y_train = bundle.train.tensors
    x_test, y_test = bundle.test.tensors
    assert (len(bundle.train), len(bundle.test)) == (270, 370)
    assert bundle.num_classes == 9 and bundle.sample_shape == (1, 12, 12)
    assert x_train.dtype == torch.float64
    assert set(y_train.tolist()) == set(range(9)) == set(y_test.tolist())
    assert bundle.info["class_names"] == [str(k) for k in range(1, 10)]
    assert_spd(x_train)
    assert_spd(x_test)


def test_japanese_vowels_windowed_uses_windows_as_channels():
    bundle = DATASETS.get("japanese_vowels")(window=4, hop=2)
    assert bundle.sample_shape == (2, 12, 12)
    assert bundle.test.tensors[0].shape[1:] == (2, 12, 12)


def test_basic_motions_uses_the_official_split():
    bundle = DATASETS.get("basic_motions")()
    assert (len(bundle.train), len(bundle.test)) == (40, 40)
    assert bundle.num_classes == 4 and bundle.sample_shape == (1, 6, 6)
    assert bundle.info["class_names"] == ["badminton", "running", "standing", "walking"]
    assert_spd(bundle.train.tensors[0])


def test_timeseries_files_reads_ts_files():
    import aeon.datasets

    root = Path(aeon.datasets.__file__).parent / "data" / "BasicMotions"
    bundle = DATASETS.get("timeseries_files")(
        path=str(root / "BasicMotions_TRAIN.ts"), test_path=str(root / "BasicMotions_TEST.ts")
    )
    assert (len(bundle.train), len(bundle.test), bundle.num_classes) == (40, 40, 4)


def test_timeseries_files_reads_npz_and_holds_out_a_stratified_split(tmp_path):
    file = tmp_path / "series.npz"
    np.savez(file, X=random_series(n=20, c=3, t=25), y=np.repeat(["a", "b"], 10))
    bundle = DATASETS.get("timeseries_files")(path=str(file), test_fraction=0.3)
    assert (len(bundle.train), len(bundle.test)) == (14, 6)
    assert bundle.test.tensors[1].tolist().count(0) == 3
    assert bundle.sample_shape == (1, 3, 3)


def test_stratified_split_holds_out_each_class_and_is_seeded():
    labels = np.repeat([0, 1, 2], [10, 5, 1])
    train, test = stratified_split(labels, 0.3, seed=1)
    assert np.bincount(labels[test], minlength=3).tolist() == [3, 2, 0]
    assert sorted([*train, *test]) == list(range(16))
    assert np.array_equal(test, stratified_split(labels, 0.3, seed=1)[1])


@pytest.fixture
def spd_xy():
    return random_spd(12, size=3), np.repeat(["left", "right", "up"], 4)


def spd_files(**options):
    return DATASETS.get("spd_files")(**options)


def test_spd_files_reads_npz_with_string_labels(tmp_path, spd_xy):
    x, y = spd_xy
    np.savez(tmp_path / "train.npz", X=x, y=y)
    np.savez(tmp_path / "test.npz", X=x[:6], y=y[:6])
    bundle = spd_files(path=str(tmp_path / "train.npz"), test_path=str(tmp_path / "test.npz"))
    assert (len(bundle.train), len(bundle.test)) == (12, 6)
    assert bundle.info["class_names"] == ["left", "right", "up"]
    assert bundle.sample_shape == (1, 3, 3)
    np.testing.assert_allclose(bundle.train.tensors[0][:, 0].numpy(), x)


def test_spd_files_npz_falls_back_to_common_key_names(tmp_path, spd_xy):
    x, y = spd_xy
    np.savez(tmp_path / "d.npz", data=x, labels=y)
    bundle = spd_files(path=str(tmp_path / "d.npz"))
    assert len(bundle.train) + len(bundle.test) == 12


def test_spd_files_missing_key_lists_available_keys(tmp_path, spd_xy):
    x, y = spd_xy
    np.savez(tmp_path / "d.npz", covs=x, cls=y)
    with pytest.raises(UserInputError, match="available keys: covs, cls"):
        spd_files(path=str(tmp_path / "d.npz"))
    with pytest.raises(UserInputError, match="'mats' not found.*covs, cls"):
        spd_files(path=str(tmp_path / "d.npz"), x_key="mats", y_key="cls")


@pytest.mark.parametrize("as_dict", [True, False])
def test_spd_files_reads_pt_dict_or_tuple(tmp_path, spd_xy, as_dict):
    x, _ = spd_xy
    xt, yt = torch.from_numpy(x), torch.arange(12) % 3
    torch.save({"X": xt, "y": yt} if as_dict else (xt, yt), tmp_path / "d.pt")
    bundle = spd_files(path=str(tmp_path / "d.pt"))
    assert bundle.num_classes == 3 and len(bundle.train) + len(bundle.test) == 12


def test_spd_files_reads_mat(tmp_path, spd_xy):
    x, _ = spd_xy
    scipy.io.savemat(tmp_path / "d.mat", {"X": x, "y": np.arange(12) % 3 + 1})
    bundle = spd_files(path=str(tmp_path / "d.mat"))
    assert bundle.info["class_names"] == ["1", "2", "3"]
    assert bundle.sample_shape == (1, 3, 3)


def test_spd_files_reads_matlab_layout_n_n_N(tmp_path, spd_xy, caplog):
    x, y = spd_xy
    scipy.io.savemat(tmp_path / "d.mat", {"X": np.moveaxis(x, 0, -1), "labels": y})
    with caplog.at_level(logging.INFO, logger="manifold_nas"):
        bundle = spd_files(path=str(tmp_path / "d.mat"), test_path=str(tmp_path / "d.mat"))
    assert "MATLAB layout" in caplog.text
    np.testing.assert_allclose(bundle.test.tensors[0][:, 0].numpy(), x)
    assert bundle.info["class_names"] == ["left", "right", "up"]


@pytest.mark.parametrize("labels_file", ["labels.npy", "labels.txt"])
def test_spd_files_reads_npy_with_a_labels_file(tmp_path, spd_xy, labels_file):
    x, y = spd_xy
    np.save(tmp_path / "x.npy", x)
    if labels_file.endswith(".npy"):
        np.save(tmp_path / labels_file, y)
    else:
        (tmp_path / labels_file).write_text("\n".join(y) + "\n")
    bundle = spd_files(path=str(tmp_path / "x.npy"), labels_path=str(tmp_path / labels_file))
    assert bundle.info["class_names"] == ["left", "right", "up"]


def test_spd_files_npy_without_labels_file_is_refused(tmp_path, spd_xy):
    np.save(tmp_path / "x.npy", spd_xy[0])
    with pytest.raises(UserInputError, match="labels_path"):
        spd_files(path=str(tmp_path / "x.npy"))


def test_spd_files_missing_path_names_it(tmp_path):
    missing = tmp_path / "nowhere.npz"
    with pytest.raises(UserInputError, match=f"data.path.*{missing.name}"):
        spd_files(path=str(missing))
    with pytest.raises(UserInputError, match="data.path is required"):
        spd_files()


def test_spd_files_unknown_extension_lists_supported(tmp_path):
    (tmp_path / "d.csv").write_text("1,2\n")
    with pytest.raises(UserInputError, match=r"'\.csv'.*supported: \.npz, \.npy, \.pt, \.mat"):
        spd_files(path=str(tmp_path / "d.csv"))


def test_spd_files_refuses_bad_samples_naming_the_file(tmp_path, spd_xy):
    x, y = spd_xy
    x[7, 0, 0] = np.nan
    np.savez(tmp_path / "d.npz", X=x, y=y)
    with pytest.raises(UserInputError, match="d.npz: sample 7 contains NaN"):
        spd_files(path=str(tmp_path / "d.npz"), test_path=str(tmp_path / "d.npz"))


def test_spd_files_regularize_repairs_singular_samples(tmp_path, spd_xy):
    x, y = spd_xy
    x[0] = np.ones((3, 3))
    np.savez(tmp_path / "d.npz", X=x, y=y)
    path = str(tmp_path / "d.npz")
    with pytest.raises(UserInputError, match="positive definite"):
        spd_files(path=path, test_path=path)
    bundle = spd_files(path=path, test_path=path, regularize=True)
    assert_spd(bundle.train.tensors[0])


def test_augment_mean_embeds_the_gaussian_as_an_spd_matrix_one_larger():
    rng = np.random.default_rng(0)
    series = rng.normal(loc=3.0, size=(5, 4, 30))
    plain = covariance_features(series, shrinkage=0.1)
    augmented = covariance_features(series, shrinkage=0.1, augment_mean=True)
    assert augmented.shape == (5, 5, 5)
    mu = series.mean(axis=2)
    np.testing.assert_allclose(augmented[:, :4, 4], mu)
    np.testing.assert_allclose(augmented[:, 4, 4], 1.0)
    np.testing.assert_allclose(
        augmented[:, :4, :4] - mu[:, :, None] * mu[:, None, :], plain, atol=1e-12
    )
    assert (np.linalg.eigvalsh(augmented)[:, 0] > 0).all()


# ------------------------------------------------ audit: refusals name the file


def _save_single_class_npz(tmp_path, kind):
    if kind == "spd_files":
        x = random_spd(12, size=3)
    else:
        x = random_series(n=12, c=3, t=20)
    np.savez(tmp_path / "one.npz", X=x, y=np.full(12, "only"))
    return str(tmp_path / "one.npz")


@pytest.mark.parametrize("kind", ["spd_files", "timeseries_files"])
@pytest.mark.parametrize("with_test_file", [False, True])
def test_training_labels_with_one_class_are_refused_naming_the_file(tmp_path, kind, with_test_file):
    path = _save_single_class_npz(tmp_path, kind)
    options = {"path": path, "test_path": path} if with_test_file else {"path": path}
    with pytest.raises(UserInputError) as err:
        DATASETS.get(kind)(**options)
    message = str(err.value)
    assert "one.npz" in message and "1 class" in message and "\n" not in message


def test_training_file_of_one_class_is_refused_even_when_the_test_file_has_another(tmp_path):
    x = random_spd(6, size=3)
    np.savez(tmp_path / "train.npz", X=x, y=np.zeros(6, dtype=int))
    np.savez(tmp_path / "test.npz", X=x, y=np.arange(6) % 2)
    with pytest.raises(UserInputError, match="train.npz.*1 class"):
        spd_files(path=str(tmp_path / "train.npz"), test_path=str(tmp_path / "test.npz"))


@pytest.mark.parametrize("defect", ["nan", "asymmetric", "indefinite"])
def test_spd_files_bad_sample_is_named_by_its_index_in_the_file_before_the_split(
    tmp_path, spd_xy, defect
):
    # With seed 0 the stratified split holds out file samples 2, 7 and 9, so
    # file sample 3 is the third training sample: an index counted after the
    # split would read "sample 2".
    x, y = spd_xy
    if defect == "nan":
        x[3, 0, 0] = np.nan
    elif defect == "asymmetric":
        x[3, 0, 1] += 1.0
    else:
        x[3] = np.diag([1.0, -1.0, 1.0])
    np.savez(tmp_path / "d.npz", X=x, y=y)
    with pytest.raises(UserInputError, match=r"d\.npz: sample 3 "):
        spd_files(path=str(tmp_path / "d.npz"), test_fraction=0.3, seed=0)


def test_timeseries_files_bad_series_is_named_by_file_and_index_in_the_file(tmp_path):
    series = random_series(n=12, c=3, t=20)
    series[3, 1, 5] = np.nan
    np.savez(tmp_path / "s.npz", X=series, y=np.repeat(["a", "b", "c"], 4))
    with pytest.raises(UserInputError, match=r"s\.npz: sample 3: contains NaN"):
        DATASETS.get("timeseries_files")(path=str(tmp_path / "s.npz"), seed=0)


def test_timeseries_files_bad_test_series_is_named_by_the_test_file(tmp_path):
    series = random_series(n=12, c=3, t=20)
    np.savez(tmp_path / "train.npz", X=series, y=np.repeat(["a", "b", "c"], 4))
    series[1, 0, 0] = np.inf
    np.savez(tmp_path / "test.npz", X=series, y=np.repeat(["a", "b", "c"], 4))
    with pytest.raises(UserInputError, match=r"test\.npz: sample 1: contains inf"):
        DATASETS.get("timeseries_files")(
            path=str(tmp_path / "train.npz"), test_path=str(tmp_path / "test.npz")
        )


def test_spd_files_wrong_shape_reports_the_shape_of_the_file(tmp_path):
    np.savez(tmp_path / "d.npz", X=np.ones((10, 6, 8)), y=np.arange(10) % 2)
    with pytest.raises(UserInputError, match=r"d\.npz.*\(10, 6, 8\)"):
        spd_files(path=str(tmp_path / "d.npz"))


def test_matlab_layout_is_logged_once_at_warning_level_with_both_shapes(tmp_path, spd_xy, caplog):
    x, y = spd_xy
    scipy.io.savemat(tmp_path / "d.mat", {"X": np.moveaxis(x, 0, -1), "y": y})
    with caplog.at_level(logging.WARNING, logger="manifold_nas"):
        spd_files(path=str(tmp_path / "d.mat"))
    records = [r for r in caplog.records if "MATLAB" in r.getMessage()]
    assert len(records) == 1 and records[0].levelno == logging.WARNING
    message = records[0].getMessage()
    assert "d.mat" in message and "(3, 3, 12)" in message and "(12, 3, 3)" in message
    assert "\n" not in message


# ------------------------------------------------------------ delay embedding


def brute_force_embedding(series, dim, lag):
    """(c, t) -> (dim·c, steps), one delay vector per column, built entry by entry."""
    c, t = series.shape
    steps = t - (dim - 1) * lag
    out = np.empty((dim * c, steps))
    for s in range(steps):
        for k in range(dim):
            for j in range(c):
                out[k * c + j, s] = series[j, s + k * lag]
    return out


@pytest.mark.parametrize(("channels", "dim", "lag"), [(1, 4, 3), (3, 2, 5), (2, 5, 1)])
def test_delay_embedding_stacks_every_channel_delayed_by_multiples_of_the_lag(channels, dim, lag):
    series = random_series(n=3, c=channels, t=40)
    embedded = delay_embedding(series, dim, lag)
    assert embedded.shape == (3, dim * channels, 40 - (dim - 1) * lag)
    for i in range(3):
        np.testing.assert_array_equal(embedded[i], brute_force_embedding(series[i], dim, lag))


def test_lag_covariance_without_shrinkage_is_the_covariance_of_the_delay_vectors():
    series = random_series(n=2, c=1, t=60)
    covs = covariance_features(series[:, 0], shrinkage=None, embed_dim=4, embed_lag=3)
    assert covs.shape == (2, 4, 4)
    for i in range(2):
        expected = np.cov(brute_force_embedding(series[i], 4, 3), bias=True)
        np.testing.assert_allclose(covs[i], expected, rtol=1e-12)


def test_lag_covariance_with_ledoit_wolf_matches_sklearn_on_the_delay_vectors():
    series = random_series(n=1, c=2, t=30, seed=5)
    ours = covariance_features(series, embed_dim=3, embed_lag=2)[0]
    fitted = LedoitWolf().fit(brute_force_embedding(series[0], 3, 2).T)
    np.testing.assert_allclose(ours, fitted.covariance_, rtol=1e-10)


def test_lag_covariance_of_a_sinusoid_is_the_toeplitz_autocovariance():
    # x_t = sin(ω t): the covariance of x_{s+iτ} and x_{s+jτ} is cos(ω (i - j) τ) / 2.
    omega, lag, dim = 0.3, 2, 5
    x = np.sin(omega * np.arange(20000))
    cov = covariance_features(x[None], shrinkage=None, embed_dim=dim, embed_lag=lag)[0]
    i, j = np.indices((dim, dim))
    np.testing.assert_allclose(cov, 0.5 * np.cos(omega * (i - j) * lag), atol=1e-3)


@pytest.mark.parametrize(("length", "dim", "lag"), [(150, 10, 3), (427, 10, 10), (24, 10, 1)])
def test_default_lag_is_a_quarter_of_the_shortest_series_over_the_dimension(length, dim, lag):
    series = [np.zeros((1, length + 50)), np.zeros((1, length))]
    assert default_embedding_lag(series, dim) == lag


@pytest.mark.parametrize("length", [40, 41, 79, 150, 251, 427, 1460])
def test_default_lag_keeps_the_embedding_window_under_a_quarter_of_a_long_enough_series(length):
    lag = default_embedding_lag(np.zeros((1, 1, length)), 10)
    assert 9 * lag < length / 4


def test_series_too_short_for_the_embedding_is_refused_naming_sample_and_length():
    series = [np.arange(30.0), np.arange(30.0), np.arange(8.0)]
    with pytest.raises(UserInputError, match=r"sample 2: has 8 time steps.*at least .* = 11"):
        covariance_features(series, embed_dim=4, embed_lag=3)


def test_embed_lag_without_embed_dim_is_refused():
    with pytest.raises(UserInputError, match="embed_lag.*embed_dim"):
        covariance_features(random_series(), embed_lag=2)


def test_univariate_series_given_as_n_by_t_or_one_dimensional_samples_agree():
    x = random_series(n=4, c=1, t=30)[:, 0]
    from_matrix = covariance_features(x, embed_dim=3)
    from_list = covariance_features(list(x), embed_dim=3)
    np.testing.assert_array_equal(from_matrix, from_list)


def test_timeseries_files_embeds_univariate_series_with_the_lag_of_the_training_file(tmp_path):
    labels = np.repeat(["a", "b"], 5)
    np.savez(tmp_path / "train.npz", X=random_series(n=10, c=1, t=40)[:, 0], y=labels)
    np.savez(tmp_path / "test.npz", X=random_series(n=10, c=1, t=80)[:, 0], y=labels)
    bundle = DATASETS.get("timeseries_files")(
        path=str(tmp_path / "train.npz"), test_path=str(tmp_path / "test.npz"), embed_dim=2
    )
    assert bundle.sample_shape == (1, 2, 2)
    assert bundle.info["covariance"]["embed_lag"] == 40 // (4 * 2)
    assert_spd(bundle.test.tensors[0])


def test_timeseries_files_embeds_multivariate_series_as_stacked_delayed_channels(tmp_path):
    series = random_series(n=12, c=3, t=30)
    np.savez(tmp_path / "s.npz", X=series, y=np.repeat(["a", "b"], 6))
    bundle = DATASETS.get("timeseries_files")(
        path=str(tmp_path / "s.npz"), embed_dim=2, embed_lag=4, shrinkage=None
    )
    assert bundle.sample_shape == (1, 6, 6)
    expected = np.cov(brute_force_embedding(series[0], 2, 4), bias=True)
    np.testing.assert_allclose(bundle.train.tensors[0][0, 0].numpy(), expected, rtol=1e-12)


def test_train_and_test_files_allowing_different_window_counts_get_the_smaller(tmp_path):
    labels = np.repeat(["a", "b"], 3)
    long, short = random_series(n=6, c=2, t=50), random_series(n=6, c=2, t=30, seed=1)
    np.savez(tmp_path / "train.npz", X=long, y=labels)
    np.savez(tmp_path / "test.npz", X=short, y=labels)
    bundle = DATASETS.get("timeseries_files")(
        path=str(tmp_path / "train.npz"),
        test_path=str(tmp_path / "test.npz"),
        window=10,
        shrinkage=None,
    )
    assert bundle.sample_shape == (3, 2, 2) == tuple(bundle.test.tensors[0].shape[1:])
    # the longer training series' three windows span it from start to end
    last = bundle.train.tensors[0][0, -1].numpy()
    np.testing.assert_allclose(last, np.cov(long[0][:, 40:50], bias=True), rtol=1e-12)


def test_n_windows_beyond_what_a_series_allows_is_refused_naming_it():
    series = [np.random.default_rng(0).standard_normal((2, t)) for t in (50, 25)]
    with pytest.raises(UserInputError, match="sample 1.*n_windows=3"):
        covariance_features(series, window=10, n_windows=3)


def test_aeon_univariate_problems_lists_bundled_ucr_problems_only():
    problems = aeon_univariate_problems()
    assert {"ArrowHead", "GunPoint", "OSULeaf"} <= set(problems)
    assert not {"BasicMotions", "JapaneseVowels", "Covid3Month"} & set(problems)


def test_ucr_lag_gives_ten_by_ten_lag_covariances_on_the_official_split():
    bundle = DATASETS.get("ucr_lag")(problem="GunPoint")
    assert (len(bundle.train), len(bundle.test), bundle.num_classes) == (50, 150, 2)
    assert bundle.sample_shape == (1, 10, 10)
    assert bundle.info["covariance"]["embed_lag"] == 150 // 40
    assert bundle.info["problem"] == "GunPoint"
    assert_spd(bundle.train.tensors[0])
    assert_spd(bundle.test.tensors[0])


@pytest.mark.parametrize("problem", [None, "Gunpoint", "BasicMotions"])
def test_ucr_lag_refuses_a_problem_that_is_not_bundled_listing_those_that_are(problem):
    with pytest.raises(UserInputError, match="data.problem.*ArrowHead, .*GunPoint"):
        DATASETS.get("ucr_lag")(problem=problem)


def test_japanese_vowels_without_mean_embedding_gives_plain_covariances():
    bundle = DATASETS.get("japanese_vowels")(augment_mean=False, shrinkage=None)
    import aeon.datasets
    from aeon.datasets import load_from_ts_file

    root = Path(aeon.datasets.__file__).parent / "data" / "JapaneseVowels"
    series, _ = load_from_ts_file(str(root / "JapaneseVowels_TRAIN.ts"))
    np.testing.assert_allclose(
        bundle.train.tensors[0][5, 0].numpy(), np.cov(series[5], bias=True), rtol=1e-10
    )


# ------------------------------------------------- scale: eigenvalue range


def test_eigenvalue_range_is_tied_to_the_reeig_floor_and_float64_eigh():
    from manifold_nas.domains.spd.validation import EIGENVALUE_RANGE, REEIG_FLOOR
    from spd_ops import ReEig

    assert REEIG_FLOOR == ReEig().eps
    low, high = EIGENVALUE_RANGE
    assert low == REEIG_FLOOR
    # float64 eigh errs by about n·eps·λ_max: at condition high/low the floor keeps ~1e-6.
    assert np.finfo(np.float64).eps * high / low < 1e-5


def _one_line_refusal(build):
    with pytest.raises(UserInputError) as err:
        build()
    message = str(err.value)
    assert "\n" not in message
    return message


def test_spd_files_refuses_matrices_scaled_far_beyond_unit_naming_file_and_scale(tmp_path, spd_xy):
    # Valid SPD matrices at scale 1e10 used to pass and kill the search in eigh.
    x, y = spd_xy
    np.savez(tmp_path / "big.npz", X=x * 1e10, y=y)
    message = _one_line_refusal(lambda: spd_files(path=str(tmp_path / "big.npz")))
    assert message.startswith(f"{tmp_path / 'big.npz'}: matrices have eigenvalues up to ")
    assert "scale 1e10" in message and "within 1e-4..1e6" in message
    assert "divide them all by" in message and "their mean eigenvalue" in message


def test_spd_files_refuses_matrices_below_the_reeig_floor(tmp_path, spd_xy):
    x, y = spd_xy
    np.savez(tmp_path / "tiny.npz", X=x * 1e-10, y=y)
    message = _one_line_refusal(lambda: spd_files(path=str(tmp_path / "tiny.npz")))
    assert "tiny.npz: matrices have largest eigenvalues down to" in message
    assert "scale 1e-10" in message and "ReEig's floor 1e-4" in message


def test_spd_files_scale_refusal_names_the_test_file_and_ignores_regularize(tmp_path, spd_xy):
    x, y = spd_xy
    np.savez(tmp_path / "train.npz", X=x, y=y)
    np.savez(tmp_path / "test.npz", X=x * 1e9, y=y)
    message = _one_line_refusal(
        lambda: spd_files(
            path=str(tmp_path / "train.npz"), test_path=str(tmp_path / "test.npz"), regularize=True
        )
    )
    assert "test.npz: matrices have eigenvalues up to" in message and "scale 1e9" in message


def test_the_suggested_divisor_brings_the_data_within_range(tmp_path, spd_xy):
    import re

    x, y = spd_xy
    x[0] *= 1e-5  # one sample far below the others: the mean would not do
    message = _one_line_refusal(lambda: validate_spd_dataset(x, y, source="m"))
    divisor = float(re.search(r"divide them all by ([0-9.e+-]+)", message).group(1))
    validate_spd_dataset(x / divisor, y, source="m")


def test_in_memory_arrays_get_the_same_scale_check():
    x = torch.from_numpy(random_spd(6, size=3) * 1e8)
    message = _one_line_refusal(lambda: validate_spd_dataset(x, np.arange(6) % 2, source="X"))
    assert message.startswith("X: matrices have eigenvalues up to") and "scale 1e8" in message


def test_scales_wider_than_the_range_ask_for_per_matrix_normalisation():
    x = random_spd(6, size=3)
    x[0] *= 1e-8
    x[1] *= 1e5
    message = _one_line_refusal(lambda: validate_spd_dataset(x, np.arange(6) % 2, source="X"))
    assert "wider than one rescaling" in message and "tr(X)/n" in message


def test_timeseries_files_scale_refusal_suggests_trace_normalize(tmp_path):
    series = random_series(n=12, c=3, t=20) * 1e5  # covariances at scale 1e10
    np.savez(tmp_path / "s.npz", X=series, y=np.repeat(["a", "b", "c"], 4))
    build = DATASETS.get("timeseries_files")
    message = _one_line_refusal(lambda: build(path=str(tmp_path / "s.npz")))
    assert "s.npz: matrices have eigenvalues up to" in message
    assert "divide the series by" in message and "data.trace_normalize: true" in message
    bundle = build(path=str(tmp_path / "s.npz"), trace_normalize=True)
    assert len(bundle.train) + len(bundle.test) == 12
