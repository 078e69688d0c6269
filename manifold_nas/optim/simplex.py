r"""The open probability simplex with the Fisher-Rao metric, as a geoopt manifold.

The manifold is :math:`\Delta^\circ = \{p \in \mathbb{R}^K : p_i > 0, \sum_i p_i = 1\}`,
one simplex per row (the last dimension), batched over every leading dimension.
Its tangent space is the same hyperplane :math:`T_p\Delta = \{u : \sum_i u_i = 0\}`
at every point, and the Fisher-Rao metric is

.. math::

    g_p(u, v) = \sum_i \frac{u_i v_i}{p_i}.

The map :math:`p \mapsto 2\sqrt{p}` is an isometry onto the positive orthant of
the sphere of radius 2, which gives the exponential map, the logarithm and the
distance in closed form. An architecture parameter of shape ``(E, K)`` stored as
``geoopt.ManifoldParameter(p, manifold=Simplex())`` is optimised by
``geoopt.optim.RiemannianSGD``; one plain step of it *is* GAEA's exponentiated
gradient update (see :meth:`Simplex.retr`).
"""

from __future__ import annotations

import torch
from geoopt import ManifoldTensor
from geoopt.manifolds.base import Manifold
from torch import Tensor

__all__ = ["Simplex", "default_min_prob", "floor_and_normalize", "normalize_log_weights"]

_DEFAULT_MIN_PROB = {torch.float64: 1e-12, torch.float32: 1e-7}


def default_min_prob(dtype: torch.dtype) -> float:
    """The smallest probability kept on the open simplex for ``dtype``.

    ``1e-12`` in float64 and ``1e-7`` in float32; for other floating dtypes the
    machine epsilon, so that ``1 - (K - 1) * floor`` stays distinguishable from 1.
    """
    if dtype in _DEFAULT_MIN_PROB:
        return _DEFAULT_MIN_PROB[dtype]
    return float(torch.finfo(dtype).eps)


def floor_and_normalize(p: Tensor, min_prob: float) -> Tensor:
    r"""Clamp every entry to at least ``min_prob`` and rescale rows to sum to 1.

    .. math::

        p \mapsto \frac{\max(p, \varepsilon)}{\sum_j \max(p_j, \varepsilon)}

    After rescaling every entry is at least :math:`\varepsilon / (1 + K\varepsilon)`,
    so it stays strictly positive.
    """
    p = p.clamp_min(min_prob)
    return p / p.sum(dim=-1, keepdim=True)


def normalize_log_weights(log_weights: Tensor, min_prob: float) -> Tensor:
    r"""Rows of :math:`\operatorname{softmax}(z)`, floored at ``min_prob``.

    The softmax subtracts the row maximum before exponentiating, so no entry
    overflows. Infinite exponents (a gradient step divided by an underflowed
    probability) are first clamped to a finite range, because ``inf - inf``
    in the max subtraction would turn a whole row into NaN.
    """
    bound = torch.finfo(log_weights.dtype).max / 4
    log_weights = log_weights.clamp(-bound, bound)
    return floor_and_normalize(torch.softmax(log_weights, dim=-1), min_prob)


class Simplex(Manifold):
    r"""Open probability simplex with the Fisher-Rao metric, batched over rows.

    Points are tensors of shape ``(..., K)`` whose last dimension is positive
    and sums to one; tangent vectors have rows summing to zero.

    * metric: :math:`g_p(u, v) = \sum_i u_i v_i / p_i`;
    * Riemannian gradient, for the Euclidean gradient :math:`g = \partial L / \partial p`:
      :math:`\operatorname{grad} L = p \odot (g - \langle p, g\rangle \mathbf{1})`;
    * retraction: :math:`R_p(u) = \operatorname{normalize}(p \odot \exp(u / p))`;
    * exponential map: through the sphere map :math:`p \mapsto 2\sqrt{p}`;
    * distance: :math:`d(p, q) = 2 \arccos \sum_i \sqrt{p_i q_i}`.

    Parameters
    ----------
    min_prob : float, optional
        Floor kept by :meth:`projx` and the retraction so that points stay in
        the *open* simplex (a probability that underflows to zero could never
        grow again under a multiplicative update). ``None`` picks a floor by
        dtype: ``1e-12`` for float64 and ``1e-7`` for float32.

    Notes
    -----
    Weight decay in ``geoopt.optim.RiemannianSGD``/``RiemannianAdam`` adds the
    Euclidean :math:`\lambda p` to the gradient before :meth:`egrad2rgrad`;
    use ``weight_decay=0`` with this manifold and regularise with a KL to the
    uniform distribution instead.
    """

    name = "Simplex"
    ndim = 1
    reversible = False

    def __init__(self, min_prob: float | None = None) -> None:
        super().__init__()
        if min_prob is not None and not 0.0 < min_prob < 1.0:
            raise ValueError(f"min_prob must lie in (0, 1), got {min_prob}")
        self.min_prob = min_prob

    def floor(self, dtype: torch.dtype) -> float:
        """The probability floor used for tensors of ``dtype``."""
        return self.min_prob if self.min_prob is not None else default_min_prob(dtype)

    def _safe(self, x: Tensor) -> Tensor:
        # Divisions by p must not produce inf for points that are slightly off
        # the manifold (an entry at exactly 0); the smallest normal number
        # leaves every on-manifold value untouched.
        return x.clamp_min(torch.finfo(x.dtype).tiny)

    def _check_point_on_manifold(
        self, x: Tensor, *, atol: float = 1e-5, rtol: float = 1e-5
    ) -> tuple[bool, str | None]:
        if not bool((x > 0).all()):
            return False, "`x` has entries <= 0; points of the open simplex are positive"
        row_sums = x.sum(dim=-1)
        if not torch.allclose(row_sums, torch.ones_like(row_sums), atol=atol, rtol=rtol):
            return False, f"rows of `x` do not sum to 1 with atol={atol}, rtol={rtol}"
        return True, None

    def _check_vector_on_tangent(
        self, x: Tensor, u: Tensor, *, atol: float = 1e-5, rtol: float = 1e-5
    ) -> tuple[bool, str | None]:
        row_sums = u.sum(dim=-1)
        if not torch.allclose(row_sums, torch.zeros_like(row_sums), atol=atol, rtol=rtol):
            return False, f"rows of `u` do not sum to 0 with atol={atol}, rtol={rtol}"
        return True, None

    def inner(
        self, x: Tensor, u: Tensor, v: Tensor | None = None, *, keepdim: bool = False
    ) -> Tensor:
        r"""Fisher-Rao inner product :math:`g_p(u, v) = \sum_i u_i v_i / p_i`."""
        if v is None:
            v = u
        inner = (u * v / self._safe(x)).sum(dim=-1, keepdim=keepdim)
        target_shape = torch.broadcast_shapes(x.shape[:-1] + (1,) * keepdim, inner.shape)
        return inner.expand(target_shape)

    def proju(self, x: Tensor, u: Tensor) -> Tensor:
        r"""Fisher-Rao orthogonal projection onto :math:`T_p\Delta`: :math:`u - (\sum_i u_i)\, p`.

        The :math:`g_p`-normal of the hyperplane :math:`\sum_i u_i = 0` is
        :math:`p` itself (:math:`g_p(p, w) = \sum_i w_i = 0`), so this is the
        projection that is orthogonal in the manifold's own metric. It is
        preferred to subtracting the row mean (the Euclidean projection)
        because the correction is proportional to :math:`p`: it moves an
        almost-vanished coordinate by almost nothing, and it leaves the
        retraction unchanged, :math:`R_p(\operatorname{proju}(u)) = R_p(u)`.
        """
        return u - u.sum(dim=-1, keepdim=True) * x

    def egrad2rgrad(self, x: Tensor, u: Tensor) -> Tensor:
        r"""Riemannian gradient :math:`p \odot (g - \langle p, g \rangle \mathbf{1})`.

        It is the tangent vector :math:`r` with :math:`g_p(r, v) = \langle g, v \rangle`
        for every tangent :math:`v`; its rows sum to zero because
        :math:`\sum_i p_i = 1`.
        """
        return x * (u - (x * u).sum(dim=-1, keepdim=True))

    def projx(self, x: Tensor) -> Tensor:
        r"""Clamp to the floor :math:`\varepsilon` and renormalise each row.

        :math:`x \mapsto \max(x, \varepsilon) / \sum_j \max(x_j, \varepsilon)`;
        negative entries are floored too. Idempotent up to rounding.
        """
        return floor_and_normalize(x, self.floor(x.dtype))

    def retr(self, x: Tensor, u: Tensor) -> Tensor:
        r"""Multiplicative retraction :math:`R_p(u) = \operatorname{normalize}(p \odot e^{u/p})`.

        Computed as :math:`\operatorname{softmax}(\log p + u / p)` per row, so
        that the exponent :math:`u/p`, which explodes as :math:`p` underflows,
        never overflows; the result is floored like :meth:`projx`. With
        :math:`u = -\eta \operatorname{grad} L` this is exactly
        :math:`p \odot e^{-\eta g} / Z`, the exponentiated gradient step.
        """
        safe_x = self._safe(x)
        return normalize_log_weights(safe_x.log() + u / safe_x, self.floor(x.dtype))

    def expmap(self, x: Tensor, u: Tensor) -> Tensor:
        r"""Fisher-Rao exponential map through the sphere map.

        With :math:`s = \sqrt{p}`, :math:`\xi = u / (2s)` and
        :math:`\theta = \lVert \xi \rVert` (so that :math:`\lVert u \rVert_p = 2\theta`),

        .. math::

            \operatorname{Exp}_p(u)
            = \Bigl(\cos\theta\, s + \frac{\sin\theta}{\theta}\, \xi\Bigr)^2,

        the square of the great circle through :math:`s` on the unit sphere.
        :math:`\sin\theta/\theta` is evaluated as a ``sinc`` so
        :math:`\theta \to 0` is exact. When :math:`\theta` is large enough for
        the great circle to leave the positive orthant, squaring reflects it
        back: the curve bounces off the face where a coordinate reaches zero
        instead of leaving the simplex, so it is a geodesic only up to that
        point. The result is passed through :meth:`projx`.
        """
        s = self._safe(x).sqrt()
        xi = u / (2 * s)
        theta = xi.norm(dim=-1, keepdim=True)
        on_sphere = torch.cos(theta) * s + torch.sinc(theta / torch.pi) * xi
        return self.projx(on_sphere.square())

    def logmap(self, x: Tensor, y: Tensor) -> Tensor:
        r"""Inverse of :meth:`expmap` on the open simplex.

        With :math:`s = \sqrt{p}`, :math:`t = \sqrt{q}` and
        :math:`w = t - \langle s, t \rangle s` (the part of :math:`t` tangent to
        the sphere at :math:`s`), :math:`\theta = \operatorname{atan2}(\lVert w
        \rVert, \langle s, t \rangle)` and
        :math:`\operatorname{Log}_p(q) = 2 s \odot \theta\, w / \lVert w \rVert`.
        ``atan2`` keeps :math:`\theta` accurate for nearby points, where
        ``arccos`` loses half the digits.
        """
        s = self._safe(x).sqrt()
        t = y.clamp_min(0).sqrt()
        cos_theta = (s * t).sum(dim=-1, keepdim=True)
        w = t - cos_theta * s
        w_norm = w.norm(dim=-1, keepdim=True)
        theta = torch.atan2(w_norm, cos_theta)
        # theta / sin(theta) -> 1 as the points coincide.
        tiny = torch.finfo(x.dtype).tiny
        scale = torch.where(w_norm > tiny, theta / w_norm.clamp_min(tiny), torch.ones_like(theta))
        return 2 * s * scale * w

    def dist(self, x: Tensor, y: Tensor, *, keepdim: bool = False) -> Tensor:
        r"""Fisher-Rao distance :math:`d(p, q) = 2 \arccos \sum_i \sqrt{p_i q_i}`.

        Evaluated in the equivalent chord form
        :math:`d(p, q) = 4 \arcsin(\lVert \sqrt{p} - \sqrt{q} \rVert / 2)`
        (the chord between unit vectors at angle :math:`\theta` is
        :math:`2 \sin(\theta/2)`), which stays accurate for nearby points; the
        ``arcsin`` argument is clamped to :math:`[0, 1]`.
        """
        chord = (x.clamp_min(0).sqrt() - y.clamp_min(0).sqrt()).norm(dim=-1, keepdim=keepdim)
        return 4 * torch.asin((chord / 2).clamp(0.0, 1.0))

    def transp(self, x: Tensor, y: Tensor, v: Tensor) -> Tensor:
        r"""Vector transport by projection.

        :math:`\mathcal{T}_{p \to q}(v) = \operatorname{proju}(q, v)`.

        Every tangent space is the same hyperplane :math:`\sum_i v_i = 0`, so a
        tangent vector at :math:`p` is already tangent at :math:`q` and is
        carried over unchanged. This is a valid vector transport (what
        ``RiemannianSGD`` momentum and ``RiemannianAdam`` need) but not the
        Levi-Civita parallel transport: it does not preserve the Fisher norm.
        """
        return self.proju(y, v)

    def retr_transp(self, x: Tensor, u: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Retraction :meth:`retr` followed by :meth:`transp` of ``v``."""
        y = self.retr(x, u)
        return y, self.transp(x, y, v)

    def random(
        self,
        *size: int,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
        **kwargs,
    ) -> ManifoldTensor:
        """Uniform sample on the simplex, ``Dirichlet(1, ..., 1)``, as normalised exponentials."""
        shape = size[0] if len(size) == 1 and isinstance(size[0], (tuple, list)) else size
        self._assert_check_shape(tuple(shape), "x")
        exponentials = torch.empty(*shape, dtype=dtype, device=device).exponential_()
        point = self.projx(exponentials / exponentials.sum(dim=-1, keepdim=True))
        return ManifoldTensor(point, manifold=self)

    random_uniform = random

    def origin(
        self,
        *size: int,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
        seed: int | None = 42,
    ) -> ManifoldTensor:
        """The barycentre :math:`p_i = 1/K` of every row; ``seed`` is unused."""
        shape = size[0] if len(size) == 1 and isinstance(size[0], (tuple, list)) else size
        self._assert_check_shape(tuple(shape), "x")
        point = torch.full(tuple(shape), 1.0 / shape[-1], dtype=dtype, device=device)
        return ManifoldTensor(point, manifold=self)

    def extra_repr(self) -> str:
        return f"min_prob={self.min_prob}"
