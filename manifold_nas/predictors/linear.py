"""Explainable performance predictors over derived cells (FOX-NAS style).

FOX-NAS (Liu et al., 2021) predicts the accuracy and latency of a subnet with
ordinary least squares on a few readable architecture features, so that every
coefficient is a marginal effect ("+0.3 % per extra separable convolution in
the normal cell") with a confidence interval. This module brings that to the
cell spaces of manifold-nas:

* :func:`genotype_encoding` / :func:`decode_genotype`: a lossless integer
  coding of a genotype, one column per (cell type, edge) of the search space;
* :func:`genotype_features`: readable features (op counts, parametric depth,
  depth × count interactions) with names such as ``normal:sep_conv_3x3``;
* :class:`LinearPredictor`: OLS with textbook standard errors, or the Lasso
  with post-lasso intervals, reporting :class:`Coefficient` s;
* :func:`write_predictor_report`: a markdown table and a coefficient plot.

OLS needs only numpy and scipy; the Lasso needs scikit-learn (the ``data``
extra) and the plot matplotlib (the ``viz`` extra).
"""

from __future__ import annotations

import math
import os
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from manifold_nas.errors import UserInputError
from manifold_nas.space.cell import ArchSpec, ChosenEdge
from manifold_nas.space.genotype import Genotype

__all__ = [
    "NOT_KEPT",
    "Coefficient",
    "LinearPredictor",
    "decode_genotype",
    "encode_genotypes",
    "encoding_column_names",
    "draw_coefficients",
    "feature_names",
    "genotype_encoding",
    "genotype_feature_matrix",
    "genotype_features",
    "write_predictor_report",
]

NOT_KEPT = -1
"""Encoding value of an edge the genotype does not keep (or keeps with the zero op)."""

INTERCEPT_NAME = "(intercept)"


# --------------------------------------------------------------------------- encoding


def encoding_column_names(specs: Mapping[str, ArchSpec]) -> list[str]:
    """Names of the encoding columns, ``"<cell type>:<source>-><target>"`` in spec order."""
    return [f"{name}:{s}->{t}" for name, spec in specs.items() for s, t in spec.edges]


def genotype_encoding(
    genotype: Genotype, specs: Mapping[str, ArchSpec], zero: str | None = None
) -> np.ndarray:
    """The integer coding of ``genotype``: one column per (cell type, edge).

    Columns follow ``specs`` order, then ``spec.edges`` order (see
    :func:`encoding_column_names`). A column holds the index in ``spec.ops``
    of the op chosen on that edge, or :data:`NOT_KEPT` (``-1``) when the edge
    is not kept. An edge chosen with the ``zero`` op contributes nothing to
    the cell, so it is coded as not kept too.

    Raises
    ------
    UserInputError
        When the genotype's cell types differ from ``specs``, or it names an
        edge or op outside the search space, or chooses an edge twice.
    """
    if set(genotype.cells) != set(specs):
        raise UserInputError(
            f"genotype has cell types {sorted(genotype.cells)}, the search space {sorted(specs)}"
        )
    columns: list[int] = []
    for name, spec in specs.items():
        op_index = {op: k for k, op in enumerate(spec.ops)}
        edge_index = {edge: e for e, edge in enumerate(spec.edges)}
        row = [NOT_KEPT] * len(spec.edges)
        seen: set[int] = set()
        for edge in genotype.cells[name]:
            e = edge_index.get((edge.source, edge.target))
            if e is None:
                raise UserInputError(
                    f"{name} cell: edge {edge.source}->{edge.target} is not in the search space"
                )
            if edge.op not in op_index:
                raise UserInputError(f"{name} cell: op {edge.op!r} is not one of {spec.ops}")
            if e in seen:
                raise UserInputError(
                    f"{name} cell: edge {edge.source}->{edge.target} is chosen twice"
                )
            seen.add(e)
            if edge.op != zero:
                row[e] = op_index[edge.op]
        columns += row
    return np.asarray(columns, dtype=np.int64)


def encode_genotypes(
    genotypes: Sequence[Genotype], specs: Mapping[str, ArchSpec], zero: str | None = None
) -> np.ndarray:
    """Stack :func:`genotype_encoding` rows into an ``(n_genotypes, n_edges)`` array."""
    width = sum(len(spec.edges) for spec in specs.values())
    rows = [genotype_encoding(g, specs, zero) for g in genotypes]
    return np.stack(rows) if rows else np.empty((0, width), dtype=np.int64)


def decode_genotype(
    row: Sequence[int] | np.ndarray, specs: Mapping[str, ArchSpec], opset_name: str
) -> Genotype:
    """The genotype coded by ``row`` (the inverse of :func:`genotype_encoding`).

    Chosen edges are listed per cell type sorted by (target, source), the
    order :func:`manifold_nas.space.sampling.random_genotype` produces.
    """
    row = np.asarray(row)
    width = sum(len(spec.edges) for spec in specs.values())
    if row.shape != (width,):
        raise UserInputError(f"encoding has shape {row.shape}, the search space needs ({width},)")
    cells: dict[str, tuple[ChosenEdge, ...]] = {}
    offset = 0
    for name, spec in specs.items():
        codes = row[offset : offset + len(spec.edges)]
        offset += len(spec.edges)
        chosen = []
        for (source, target), code in zip(spec.edges, codes.tolist()):
            if code == NOT_KEPT:
                continue
            if not 0 <= code < len(spec.ops):
                raise UserInputError(
                    f"{name} cell: op code {code} is outside 0..{len(spec.ops) - 1}"
                )
            chosen.append(ChosenEdge(spec.ops[code], source, target))
        cells[name] = tuple(sorted(chosen, key=lambda e: (e.target, e.source)))
    return Genotype(opset_name, cells, ops={name: spec.ops for name, spec in specs.items()})


# --------------------------------------------------------------------------- features


def _feature_ops(spec: ArchSpec, zero: str | None) -> list[str]:
    return [op for op in spec.ops if op != zero]


def feature_names(
    specs: Mapping[str, ArchSpec], zero: str | None = None, interactions: bool = True
) -> list[str]:
    """The names of the columns :func:`genotype_features` returns, in order."""
    names = []
    for name, spec in specs.items():
        ops = _feature_ops(spec, zero)
        names.append(f"{name}:depth")
        names += [f"{name}:{op}" for op in ops]
        if interactions:
            names += [f"{name}:depth*{op}" for op in ops]
    return names


def _features_from_codes(
    codes: np.ndarray,
    specs: Mapping[str, ArchSpec],
    zero: str | None,
    parameter_free: Collection[str],
    interactions: bool,
) -> np.ndarray:
    """Feature columns of an ``(n, n_edges)`` code matrix."""
    blocks = []
    offset = 0
    for spec in specs.values():
        cell = codes[:, offset : offset + len(spec.edges)]
        offset += len(spec.edges)
        ops = _feature_ops(spec, zero)
        counts = np.stack([(cell == spec.ops.index(op)).sum(axis=1) for op in ops], axis=1)
        parametric = np.array([op not in parameter_free for op in ops])
        depth = counts[:, parametric].sum(axis=1, keepdims=True)
        blocks += [depth, counts]
        if interactions:
            blocks.append(depth * counts)
    return np.concatenate(blocks, axis=1).astype(np.float64)


def genotype_features(
    genotype: Genotype,
    specs: Mapping[str, ArchSpec],
    zero: str | None = None,
    parameter_free: Collection[str] = (),
    interactions: bool = True,
) -> tuple[np.ndarray, list[str]]:
    """Readable features of one genotype and their names.

    Per cell type ``c`` and non-zero op ``o`` of ``specs[c].ops``, in this order:

    * ``c:depth``: the number of kept edges whose op is not in
      ``parameter_free`` (FOX-NAS counts layers per stage; in a cell the
      parametric edges play that role);
    * ``c:o``: the number of kept edges of the cell using op ``o``;
    * ``c:depth*o`` (with ``interactions``): depth × count of ``o``, the
      analogue of FOX-NAS's depth × average-expansion terms.

    With a fixed ``keep`` the op counts of a cell sum to a constant and the
    parametric counts sum to the depth, so an intercept plus these columns
    is rank-deficient by construction. :class:`LinearPredictor` (kind
    ``"ols"``) then flags the later collinear columns as aliased, as R's
    ``lm`` reports ``NA`` for them: with this column order that is the last
    parameter-free op, the last parametric op and the last interaction of
    each cell, so ``c:depth`` stays estimable and the op counts read as
    effects relative to those reference ops.
    """
    codes = genotype_encoding(genotype, specs, zero)[None, :]
    values = _features_from_codes(codes, specs, zero, parameter_free, interactions)[0]
    return values, feature_names(specs, zero, interactions)


def genotype_feature_matrix(
    genotypes: Sequence[Genotype],
    specs: Mapping[str, ArchSpec],
    zero: str | None = None,
    parameter_free: Collection[str] = (),
    interactions: bool = True,
) -> tuple[np.ndarray, list[str]]:
    """:func:`genotype_features` for many genotypes: an ``(n, n_features)`` matrix and names."""
    codes = encode_genotypes(genotypes, specs, zero)
    values = _features_from_codes(codes, specs, zero, parameter_free, interactions)
    return values, feature_names(specs, zero, interactions)


# --------------------------------------------------------------------------- regression


@dataclass(frozen=True)
class Coefficient:
    """One term of a fitted linear predictor.

    ``status`` is ``"fitted"``, ``"aliased"`` (the column is a linear
    combination of the intercept and earlier columns, or constant; its value
    is 0 and its interval NaN) or ``"not selected"`` (dropped by the Lasso;
    value 0, interval NaN). The interval is the two-sided 95 % t interval;
    ``p_value`` tests the coefficient being 0.
    """

    name: str
    value: float
    std_error: float
    ci_low: float
    ci_high: float
    p_value: float = math.nan
    status: str = "fitted"


def _independent_columns(design: np.ndarray, tol: float = 1e-7) -> np.ndarray:
    """Mask of columns kept by a left-to-right rank test.

    Column ``j`` is aliased when its residual after projection on the kept
    columns before it has norm at most ``tol`` times its own norm (or it is
    all zeros); R's ``lm`` uses the same tolerance. Gram-Schmidt is applied
    twice per column, which keeps the basis orthonormal to working precision.
    """
    n, p = design.shape
    basis = np.empty((n, 0))
    keep = np.zeros(p, dtype=bool)
    for j in range(p):
        column = design[:, j]
        norm = np.linalg.norm(column)
        if norm == 0.0:
            continue
        residual = column / norm
        for _ in range(2):
            residual = residual - basis @ (basis.T @ residual)
        size = np.linalg.norm(residual)
        if size > tol:
            keep[j] = True
            basis = np.column_stack([basis, residual / size])
    return keep


@dataclass(frozen=True)
class _OLSFit:
    beta: np.ndarray  # NaN where aliased
    std_error: np.ndarray
    kept: np.ndarray
    df_resid: int
    sigma: float


def _ols(design: np.ndarray, y: np.ndarray) -> _OLSFit:
    """OLS of ``y`` on ``design`` (which holds the intercept column) with aliasing removed.

    β̂ = A⁺y on the independent columns A, σ̂² = ‖y − Aβ̂‖² / (n − p) with p
    the number of independent columns, Cov(β̂) = σ̂² (AᵀA)⁻¹ = σ̂² A⁺A⁺ᵀ.
    With no residual degree of freedom the standard errors are NaN.
    """
    kept = _independent_columns(design)
    sub = design[:, kept]
    pinv = np.linalg.pinv(sub)
    beta_kept = pinv @ y
    residual = y - sub @ beta_kept
    df_resid = design.shape[0] - int(kept.sum())
    if df_resid > 0:
        sigma2 = float(residual @ residual) / df_resid
        se_kept = np.sqrt(sigma2 * np.einsum("ij,ij->i", pinv, pinv))
    else:
        sigma2 = math.nan
        se_kept = np.full(int(kept.sum()), math.nan)
    beta = np.full(design.shape[1], math.nan)
    std_error = np.full(design.shape[1], math.nan)
    beta[kept] = beta_kept
    std_error[kept] = se_kept
    return _OLSFit(beta, std_error, kept, df_resid, math.sqrt(sigma2))


class LinearPredictor:
    """A linear performance predictor y ≈ b₀ + Σⱼ bⱼ xⱼ with readable coefficients.

    ``kind="ols"``: ordinary least squares with an intercept (FOX-NAS fits its
    accuracy and latency models with R's ``lm``). Aliased columns (constant,
    or a linear combination of the intercept and earlier columns) are
    detected left to right and reported with status ``"aliased"`` and value
    0; the rest is solved with the pseudo-inverse. Standard errors are the
    square roots of the diagonal of σ̂²(XᵀX)⁻¹ with σ̂² = RSS / (n − p), p the
    number of estimated terms including the intercept; 95 % intervals use
    Student's t with n − p degrees of freedom.

    ``kind="lasso"``: scikit-learn's ``Lasso`` on z-scored columns (so that
    one ``alpha`` treats features on different scales alike; ``alpha`` is in
    those units), with ``alpha`` chosen by ``cv``-fold ``LassoCV`` when None.
    Intervals come from a *post-lasso* OLS refit on the selected support:
    they are conditional on the selection and ignore its uncertainty, so they
    are optimistic. With ``refit=True`` (the default) the values and
    predictions are that refit too, so every value sits at the centre of its
    interval; with ``refit=False`` they are the shrunk Lasso coefficients.
    Unselected features have status ``"not selected"``, value 0 and NaN
    intervals.
    """

    def __init__(
        self,
        kind: str = "ols",
        alpha: float | None = None,
        feature_names: Sequence[str] | None = None,
        *,
        refit: bool = True,
        cv: int = 5,
    ) -> None:
        if kind not in ("ols", "lasso"):
            raise ValueError(f"kind must be 'ols' or 'lasso', got {kind!r}")
        if kind == "ols" and alpha is not None:
            raise ValueError("alpha is the Lasso penalty; OLS takes none")
        if alpha is not None and alpha <= 0:
            raise ValueError(f"alpha must be positive, got {alpha}")
        self.kind = kind
        self.alpha = alpha
        self._given_names = list(feature_names) if feature_names is not None else None
        self.feature_names: list[str] = []
        self.refit = refit
        self.cv = cv
        self._coef: np.ndarray | None = None

    # ------------------------------------------------------------------ fitting

    def fit(self, X: np.ndarray, y: np.ndarray) -> LinearPredictor:
        """Fit on ``X`` (``n × p``) and ``y`` (``n``); returns ``self``."""
        X = np.asarray(X, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        if X.ndim != 2 or y.shape != (X.shape[0],):
            raise ValueError(f"X must be (n, p) and y (n,), got {X.shape} and {y.shape}")
        n, p = X.shape
        names = self._given_names or [f"x{j}" for j in range(p)]
        if len(names) != p:
            raise ValueError(f"{len(names)} feature names for {p} columns")
        self.feature_names = names
        self.n = n
        status = np.array(["fitted"] * p, dtype=object)
        if self.kind == "lasso":
            selected = self._lasso_support(X, y)
            status[~selected] = "not selected"
        else:
            selected = np.ones(p, dtype=bool)
        design = np.column_stack([np.ones(n), X[:, selected]])
        fit = _ols(design, y)
        columns = np.concatenate([[0], 1 + np.flatnonzero(selected)])
        center = np.zeros(p + 1)
        center[columns] = np.nan_to_num(fit.beta, nan=0.0)
        se = np.full(p + 1, math.nan)
        se[columns] = fit.std_error
        aliased = np.zeros(p + 1, dtype=bool)
        aliased[columns] = ~fit.kept
        status[aliased[1:]] = "aliased"
        self._center = center
        self._se = se
        self._status = np.concatenate([["fitted"], status])
        if self.kind == "lasso" and not self.refit:
            self._coef = np.concatenate([[self._lasso_intercept], self._lasso_coef])
        else:
            self._coef = center.copy()
        self.df_resid = fit.df_resid
        self.sigma = fit.sigma
        residual = y - self.predict(X)
        total = float(((y - y.mean()) ** 2).sum())
        self.r2 = 1.0 - float(residual @ residual) / total if total > 0 else math.nan
        return self

    def _lasso_support(self, X: np.ndarray, y: np.ndarray) -> np.ndarray:
        try:
            from sklearn.linear_model import Lasso, LassoCV
        except ImportError:
            raise UserInputError(
                "the Lasso predictor needs scikit-learn: pip install 'manifold-nas[data]'"
            ) from None
        scale = X.std(axis=0)
        varying = scale > 0
        Z = (X[:, varying] - X[:, varying].mean(axis=0)) / scale[varying]
        if self.alpha is None:
            model = LassoCV(cv=min(self.cv, X.shape[0]), max_iter=50_000).fit(Z, y)
            self.alpha_ = float(model.alpha_)
        else:
            model = Lasso(alpha=self.alpha, max_iter=50_000).fit(Z, y)
            self.alpha_ = float(self.alpha)
        coef = np.zeros(X.shape[1])
        coef[varying] = model.coef_ / scale[varying]
        self._lasso_coef = coef
        self._lasso_intercept = float(
            model.intercept_ - model.coef_ @ (X[:, varying].mean(axis=0) / scale[varying])
        )
        return coef != 0

    # ------------------------------------------------------------------ using

    def _require_fit(self) -> None:
        if self._coef is None:
            raise RuntimeError("this LinearPredictor is not fitted yet; call fit(X, y) first")

    def predict(self, X: np.ndarray) -> np.ndarray:
        """b₀ + X b for the rows of ``X``."""
        self._require_fit()
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != len(self._coef) - 1:
            raise ValueError(f"X must be (n, {len(self._coef) - 1}), got {X.shape}")
        return self._coef[0] + X @ self._coef[1:]

    @property
    def intercept(self) -> float:
        self._require_fit()
        return float(self._coef[0])

    def _coefficient(self, j: int, name: str) -> Coefficient:
        status = str(self._status[j])
        value = float(self._coef[j])
        se = float(self._se[j])
        if status != "fitted" or not math.isfinite(se):
            return Coefficient(name, value, se, math.nan, math.nan, math.nan, status)
        # Intervals and tests are the OLS (or post-lasso OLS) ones, centred on its estimate.
        center = float(self._center[j])
        half = float(stats.t.ppf(0.975, self.df_resid)) * se
        p_value = float(2 * stats.t.sf(abs(center) / se, self.df_resid)) if se > 0 else math.nan
        return Coefficient(name, value, se, center - half, center + half, p_value, status)

    def coefficients(self, include_intercept: bool = False) -> list[Coefficient]:
        """One :class:`Coefficient` per feature, in column order (intercept first if asked)."""
        self._require_fit()
        terms = [self._coefficient(j + 1, name) for j, name in enumerate(self.feature_names)]
        if include_intercept:
            terms.insert(0, self._coefficient(0, INTERCEPT_NAME))
        return terms


# --------------------------------------------------------------------------- report


def _fmt(x: float) -> str:
    return "n/a" if not math.isfinite(x) else f"{x:.4g}"


def _fmt_p(p: float) -> str:
    # t.sf underflows to 0 for huge t statistics; a bound reads better than "0".
    return "< 1e-16" if math.isfinite(p) and p < 1e-16 else _fmt(p)


def draw_coefficients(ax: Any, terms: Sequence[Coefficient], unit: str, title: str) -> None:
    """Coefficients as horizontal bars (blue positive, red negative) with their 95% intervals.

    ``terms`` are drawn bottom-up; infinite interval ends are left out.
    """
    values = np.array([t.value for t in terms])
    low = np.array([t.ci_low for t in terms])
    high = np.array([t.ci_high for t in terms])
    y = np.arange(len(terms))
    ax.barh(y, values, color=["tab:blue" if v >= 0 else "tab:red" for v in values])
    # Drawn around the interval's own centre: a shrunk Lasso value need not be at its middle.
    finite = np.isfinite(low) & np.isfinite(high)
    ax.errorbar(
        (low[finite] + high[finite]) / 2,
        y[finite],
        xerr=(high[finite] - low[finite]) / 2,
        fmt="none",
        ecolor="black",
        capsize=2,
    )
    ax.set_yticks(y, [t.name for t in terms])
    ax.axvline(0.0, color="black", linewidth=0.8)
    ax.set_xlabel(f"coefficient ({unit}) with 95% CI" if unit else "coefficient with 95% CI")
    ax.set_title(title)


def _plot_coefficients(terms: list[Coefficient], path: Path, title: str, unit: str) -> bool:
    """Draw the coefficient bar plot; False when matplotlib is not installed."""
    try:
        import matplotlib
    except ImportError:
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = list(reversed(terms))  # barh draws bottom-up; largest effect on top
    fig, ax = plt.subplots(figsize=(7, 1.2 + 0.28 * max(1, len(shown))))
    draw_coefficients(ax, shown, unit, title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def write_predictor_report(
    predictor: LinearPredictor,
    path_md: str | Path,
    path_png: str | Path | None = None,
    title: str = "Linear performance predictor",
    unit: str = "",
) -> Path:
    """Write ``predictor`` as a markdown table (and optionally a coefficient plot).

    The table lists the intercept, then every coefficient sorted by |value|
    (largest first) with its standard error, 95 % interval, p-value and
    status, under a line giving n, R², the residual degrees of freedom and
    σ̂. ``path_png`` gets a horizontal bar plot of the fitted coefficients
    with their intervals as error bars; when matplotlib is missing the plot
    is skipped and the markdown says so in one line. Returns ``path_md``.
    """
    terms = predictor.coefficients()
    intercept = predictor.coefficients(include_intercept=True)[0]
    ordered = sorted(terms, key=lambda t: -abs(t.value))
    path_md = Path(path_md)
    unit_suffix = f" ({unit})" if unit else ""
    method = "OLS" if predictor.kind == "ols" else f"Lasso (alpha = {predictor.alpha_:.4g})"
    lines = [
        f"# {title}",
        "",
        f"{method}: n = {predictor.n}, R² = {_fmt(predictor.r2)}, "
        f"residual df = {predictor.df_resid}, σ̂ = {_fmt(predictor.sigma)}{unit_suffix}.",
    ]
    if predictor.kind == "lasso":
        chosen = sum(t.status == "fitted" for t in terms)
        lines.append(
            f"{chosen} of {len(terms)} features selected; intervals are post-lasso OLS refits "
            "on the selected features and ignore the selection step."
        )
    lines += [
        "",
        f"| term | coefficient{unit_suffix} | std. error | 95% CI | p | status |",
        "|---|---|---|---|---|---|",
    ]
    for t in [intercept, *ordered]:
        interval = f"[{_fmt(t.ci_low)}, {_fmt(t.ci_high)}]"
        # As R's lm prints NA: an aliased term has no estimate (predict uses 0 for it).
        value = "NA" if t.status == "aliased" else _fmt(t.value)
        lines.append(
            f"| `{t.name}` | {value} | {_fmt(t.std_error)} | {interval} | "
            f"{_fmt_p(t.p_value)} | {t.status} |"
        )
    if path_png is not None:
        path_png = Path(path_png)
        fitted = [t for t in ordered if t.status == "fitted"]
        if _plot_coefficients(fitted, path_png, title, unit):
            relative = os.path.relpath(path_png.resolve(), path_md.resolve().parent)
            lines += ["", f"![coefficients]({Path(relative).as_posix()})"]
        else:
            lines += [
                "",
                "Plot skipped: matplotlib is not installed (`pip install 'manifold-nas[viz]'`).",
            ]
    path_md.parent.mkdir(parents=True, exist_ok=True)
    path_md.write_text("\n".join(lines) + "\n")
    return path_md
