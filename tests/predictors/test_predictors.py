"""Explainable predictors: genotype coding, readable features, OLS / Lasso, report."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from manifold_nas.errors import UserInputError
from manifold_nas.predictors.linear import (
    NOT_KEPT,
    LinearPredictor,
    decode_genotype,
    encode_genotypes,
    encoding_column_names,
    genotype_encoding,
    genotype_feature_matrix,
    genotype_features,
    write_predictor_report,
)
from manifold_nas.space.cell import ChosenEdge, cell_arch_spec
from manifold_nas.space.genotype import Genotype
from manifold_nas.space.sampling import random_genotype

DARTS_OPS = (
    "none",
    "max_pool_3x3",
    "avg_pool_3x3",
    "skip_connect",
    "sep_conv_3x3",
    "sep_conv_5x5",
    "dil_conv_3x3",
    "dil_conv_5x5",
)
PARAMETER_FREE = {"none", "max_pool_3x3", "avg_pool_3x3", "skip_connect"}
SPECS = {
    "normal": cell_arch_spec(DARTS_OPS, n_inputs=2, n_nodes=4, keep=2),
    "reduce": cell_arch_spec(DARTS_OPS, n_inputs=2, n_nodes=4, keep=2),
}


def _random_genotypes(n: int, seed: int = 0) -> list[Genotype]:
    rng = np.random.default_rng(seed)
    return [random_genotype(SPECS, "darts", "none", rng) for _ in range(n)]


def _small_genotype() -> Genotype:
    spec = cell_arch_spec(("none", "skip", "conv"), n_inputs=2, n_nodes=2, keep=2)
    edges = (
        ChosenEdge("conv", 0, 2),
        ChosenEdge("skip", 1, 2),
        ChosenEdge("conv", 0, 3),
        ChosenEdge("conv", 2, 3),
    )
    return Genotype("toy", {"normal": edges}), {"normal": spec}


# --------------------------------------------------------------------------- coding


def test_encoding_round_trips_random_darts_genotypes():
    for genotype in _random_genotypes(50):
        row = genotype_encoding(genotype, SPECS, "none")
        assert decode_genotype(row, SPECS, "darts") == genotype


def test_encoding_has_one_column_per_edge_with_keep_edges_per_node():
    codes = encode_genotypes(_random_genotypes(20), SPECS, "none")
    assert codes.shape == (20, 28)
    assert len(encoding_column_names(SPECS)) == 28
    kept_per_cell = (codes[:, :14] != NOT_KEPT).sum(axis=1)
    assert (kept_per_cell == 8).all()
    assert (codes != DARTS_OPS.index("none")).all()


def test_encoding_marks_zero_op_edges_as_not_kept():
    genotype, specs = _small_genotype()
    cells = {"normal": (ChosenEdge("none", 0, 2), *genotype.cells["normal"][1:])}
    row = genotype_encoding(Genotype("toy", cells), specs, zero="none")
    assert row.tolist() == [NOT_KEPT, 1, 2, NOT_KEPT, 2]


def test_encoding_rejects_an_edge_outside_the_space():
    genotype, specs = _small_genotype()
    bad = Genotype("toy", {"normal": (ChosenEdge("conv", 3, 2),)})
    with pytest.raises(UserInputError, match="3->2"):
        genotype_encoding(bad, specs)


# --------------------------------------------------------------------------- features


def test_features_count_ops_depth_and_interactions_with_readable_names():
    genotype, specs = _small_genotype()
    values, names = genotype_features(genotype, specs, zero="none", parameter_free={"skip"})
    assert names == [
        "normal:depth",
        "normal:skip",
        "normal:conv",
        "normal:depth*skip",
        "normal:depth*conv",
    ]
    assert values.tolist() == [3.0, 1.0, 3.0, 3.0, 9.0]


def test_feature_matrix_matches_per_genotype_features():
    genotypes = _random_genotypes(10)
    matrix, names = genotype_feature_matrix(genotypes, SPECS, "none", PARAMETER_FREE)
    for row, genotype in zip(matrix, genotypes):
        values, same_names = genotype_features(genotype, SPECS, "none", PARAMETER_FREE)
        np.testing.assert_array_equal(row, values)
        assert same_names == names
    assert "reduce:depth*sep_conv_3x3" in names and "normal:sep_conv_3x3" in names


# --------------------------------------------------------------------------- OLS


def _regression_data(n: int = 60, p: int = 4, seed: int = 0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, p))
    y = 1.5 + X @ rng.normal(size=p) + 0.3 * rng.normal(size=n)
    return X, y


def test_ols_matches_lstsq_and_the_textbook_standard_errors():
    X, y = _regression_data()
    model = LinearPredictor("ols").fit(X, y)
    A = np.column_stack([np.ones(len(y)), X])
    beta, *_ = np.linalg.lstsq(A, y, rcond=None)
    residual = y - A @ beta
    sigma2 = residual @ residual / (len(y) - A.shape[1])
    se = np.sqrt(np.diag(sigma2 * np.linalg.inv(A.T @ A)))
    terms = model.coefficients(include_intercept=True)
    np.testing.assert_allclose([t.value for t in terms], beta, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose([t.std_error for t in terms], se, rtol=1e-8)
    assert model.intercept == pytest.approx(beta[0], rel=1e-8)


def test_ols_intervals_use_student_t_with_n_minus_p_degrees_of_freedom():
    from scipy import stats

    X, y = _regression_data(n=15, p=3)
    model = LinearPredictor("ols").fit(X, y)
    quantile = stats.t.ppf(0.975, 15 - 4)
    assert model.df_resid == 11
    for t in model.coefficients():
        assert t.ci_high - t.value == pytest.approx(quantile * t.std_error, rel=1e-10)
        assert t.value - t.ci_low == pytest.approx(quantile * t.std_error, rel=1e-10)


def test_ols_r2_and_predictions_agree_with_sklearn():
    from sklearn.metrics import r2_score

    X, y = _regression_data()
    model = LinearPredictor("ols").fit(X, y)
    assert model.r2 == pytest.approx(r2_score(y, model.predict(X)), rel=1e-12)


def test_ols_flags_a_constant_column_as_aliased_and_fits_the_rest_unchanged():
    X, y = _regression_data()
    with_constant = np.column_stack([X[:, :2], np.full(len(y), 3.0), X[:, 2:]])
    names = ["a", "b", "constant", "c", "d"]
    model = LinearPredictor("ols", feature_names=names).fit(with_constant, y)
    reference = LinearPredictor("ols").fit(X, y)
    terms = {t.name: t for t in model.coefficients()}
    assert terms["constant"].status == "aliased"
    assert terms["constant"].value == 0.0 and np.isnan(terms["constant"].ci_low)
    fitted = [terms[n].value for n in ("a", "b", "c", "d")]
    np.testing.assert_allclose(fitted, [t.value for t in reference.coefficients()], rtol=1e-8)
    assert model.df_resid == reference.df_resid


def test_ols_flags_a_later_linear_combination_as_aliased():
    X, y = _regression_data()
    combined = np.column_stack([X, X[:, 0] - 2 * X[:, 1]])
    model = LinearPredictor("ols").fit(combined, y)
    assert [t.status for t in model.coefficients()] == ["fitted"] * 4 + ["aliased"]


def test_ols_on_genotype_features_fits_noiseless_feature_linear_accuracy_exactly():
    genotypes = _random_genotypes(200, seed=1)
    X, names = genotype_feature_matrix(genotypes, SPECS, "none", PARAMETER_FREE)
    truth = np.random.default_rng(2).normal(size=X.shape[1])
    y = 70.0 + X @ truth
    model = LinearPredictor("ols", feature_names=names).fit(X, y)
    np.testing.assert_allclose(model.predict(X), y, atol=1e-8)
    aliased = {t.name for t in model.coefficients() if t.status == "aliased"}
    # Per cell: free counts sum to 8 - depth, parametric counts sum to depth,
    # and depth × every count sums to 8 × depth.
    assert aliased == {
        f"{c}:{name}"
        for c in SPECS
        for name in ("skip_connect", "dil_conv_5x5", "depth*dil_conv_5x5")
    }


# --------------------------------------------------------------------------- Lasso


def _sparse_data(seed: int = 0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(200, 12)) * rng.uniform(0.5, 5.0, size=12)
    truth = np.zeros(12)
    truth[[1, 4, 9]] = [2.0, -1.5, 0.8]
    return X, 10.0 + X @ truth + 0.2 * rng.normal(size=200), truth


def test_lasso_with_a_fixed_alpha_recovers_the_sparse_support():
    X, y, truth = _sparse_data()
    model = LinearPredictor("lasso", alpha=0.3).fit(X, y)
    selected = [t.status == "fitted" for t in model.coefficients()]
    assert selected == (truth != 0).tolist()


def test_lasso_with_cross_validated_alpha_keeps_the_true_support_within_its_intervals():
    X, y, truth = _sparse_data(seed=3)
    model = LinearPredictor("lasso").fit(X, y)
    terms = model.coefficients()
    for j in np.flatnonzero(truth):
        assert terms[j].status == "fitted"
        assert terms[j].ci_low <= truth[j] <= terms[j].ci_high


def test_post_lasso_values_equal_an_ols_refit_on_the_selected_columns():
    X, y, truth = _sparse_data()
    model = LinearPredictor("lasso", alpha=0.3).fit(X, y)
    refit = LinearPredictor("ols").fit(X[:, truth != 0], y)
    values = [t.value for t in model.coefficients() if t.status == "fitted"]
    np.testing.assert_allclose(values, [t.value for t in refit.coefficients()], rtol=1e-8)
    dropped = [t for t in model.coefficients() if t.status == "not selected"]
    assert all(t.value == 0.0 and np.isnan(t.ci_low) for t in dropped)


def test_lasso_without_refit_predicts_like_sklearn_lasso_on_standardised_columns():
    from sklearn.linear_model import Lasso

    X, y, _ = _sparse_data()
    model = LinearPredictor("lasso", alpha=0.3, refit=False).fit(X, y)
    Z = (X - X.mean(axis=0)) / X.std(axis=0)
    reference = Lasso(alpha=0.3, max_iter=50_000).fit(Z, y)
    np.testing.assert_allclose(model.predict(X), reference.predict(Z), rtol=1e-8)


def test_ols_rejects_an_alpha():
    with pytest.raises(ValueError, match="alpha"):
        LinearPredictor("ols", alpha=0.1)


# --------------------------------------------------------------------------- report


def test_report_lists_every_coefficient_sorted_by_magnitude_and_draws_the_plot(tmp_path):
    X, y = _regression_data()
    names = ["normal:sep_conv_3x3", "normal:depth", "reduce:skip_connect", "reduce:depth"]
    model = LinearPredictor("ols", feature_names=names).fit(X, y)
    md = write_predictor_report(
        model, tmp_path / "predictor.md", tmp_path / "predictor.png", unit="%"
    )
    text = md.read_text()
    rows = [line for line in text.splitlines() if line.startswith("| `")]
    assert rows[0].startswith("| `(intercept)`")
    listed = [row.split("`")[1] for row in rows[1:]]
    magnitudes = {t.name: abs(t.value) for t in model.coefficients()}
    assert listed == sorted(names, key=lambda n: -magnitudes[n])
    assert f"n = {len(y)}" in text and "R² =" in text
    assert (tmp_path / "predictor.png").stat().st_size > 0
    assert "![coefficients](predictor.png)" in text


def test_report_notes_a_skipped_plot_when_matplotlib_is_missing(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    model = LinearPredictor("ols").fit(*_regression_data())
    text = write_predictor_report(model, tmp_path / "p.md", tmp_path / "p.png").read_text()
    assert "Plot skipped: matplotlib is not installed" in text
    assert not (tmp_path / "p.png").exists()


def test_report_of_a_shrunk_lasso_states_its_post_lasso_intervals_and_plots_them(tmp_path):
    X, y, _ = _sparse_data()
    model = LinearPredictor("lasso", alpha=0.3, refit=False).fit(X, y)
    md = write_predictor_report(model, tmp_path / "lasso.md", tmp_path / "lasso.png")
    text = md.read_text()
    assert "3 of 12 features selected" in text and "post-lasso OLS" in text
    assert text.count("| not selected |") == 9
    assert (tmp_path / "lasso.png").stat().st_size > 0


def test_report_prints_na_for_an_aliased_coefficient(tmp_path):
    X, y = _regression_data()
    model = LinearPredictor("ols").fit(np.column_stack([X, np.ones(len(y))]), y)
    text = write_predictor_report(model, tmp_path / "p.md").read_text()
    assert "| `x4` | NA | n/a | [n/a, n/a] | n/a | aliased |" in text
