"""Exact budgeted block combiner: the last step of block-wise NAS (DNA, Li et al., 2020).

Block-wise distillation scores every candidate of every block on its own, so
the network is assembled by choosing one candidate per block. With losses
:math:`\\ell_{b,j}` and costs :math:`c_{b,j} \\ge 0` (parameters, FLOPs or a
memory cost, all additive over blocks) this is the multiple-choice knapsack

.. math:: \\min_{j_1, \\dots, j_N} \\sum_{b=1}^N \\ell_{b, j_b}
          \\quad \\text{s.t.} \\quad \\sum_{b=1}^N c_{b, j_b} \\le B .

DNA's own combiner walks the candidates in a pruned heuristic order. This
module solves the problem exactly, for real-valued costs and without
discretising them, by merging Pareto fronts with branch-and-bound pruning.

**Algorithm.** A partial combination of blocks ``0..k`` (a *prefix*)
*dominates* another one when it is no more costly and has no larger loss.
Replacing a dominated prefix by its dominator in any completion keeps the
combination feasible and does not raise its loss, so the optimum (and every
point of the Pareto front) extends a non-dominated prefix. Hence

1. each block is reduced to its own Pareto front (sort by cost, keep the
   candidates whose loss beats every cheaper one);
2. the front of blocks ``0..k`` is merged with the front of block ``k + 1``:
   the pairwise sums are formed, sorted by (cost, loss, choice) and swept
   once, keeping each sum whose loss is strictly below every cheaper one;
3. for given budgets, prefixes that cannot lead to an optimum are dropped
   (see :class:`_BudgetPruner`): those whose cheapest completion exceeds
   the budget, and those whose completions all have a larger loss than a
   known feasible combination, by two lower bounds: the smallest loss of
   each remaining block, and the Lagrangian (LP relaxation) bound of the
   remaining knapsack. The Lagrangian bound also rules pairs out before they
   are formed (reduced-cost fixing). On instances where every candidate is
   on its block's front, these bounds turn hours of merging into
   milliseconds.

:func:`pareto_front` uses the budget test alone (the whole front is the
answer); :func:`combine_blocks` and :func:`combine_at_budgets` use all of
them, keeping a prefix that any of the requested budgets still needs.

**Exactness in floating point.** Totals are the left-to-right sums in block
order (``total = x_0; total += x_1; ...``), as a plain loop computes them.
Rounding is monotone, ``a <= b`` implies ``fl(a + c) <= fl(b + c)``, so
dominance, the budget test and the smallest-loss bound hold for the rounded
sums exactly as for real numbers; the Lagrangian bound is lowered by a
proven bound on its own rounding error. The returned loss and cost are
therefore exactly the optimum over all combinations, with no tolerance.
Ties in loss go to the lower cost, then to the lexicographically smaller
choice. The choice tie-break is exact whenever the sums are (integer costs
below :math:`2^{53}`, values on a common binary grid); otherwise it can only
differ where rounding makes two different prefix totals equal once more
blocks are added.

**Complexity.** Reducing the blocks costs :math:`O(\\sum_b n_b \\log n_b)`
for :math:`n_b` candidates, and the Lagrangian tables
:math:`O(M \\sum_b n_b)` for :math:`M \\le 1024` multipliers. Merging the
front :math:`F_k` of the first blocks with the block front :math:`G_{k+1}`
costs :math:`O(P \\log P)` time and :math:`O(P)` memory for the
:math:`P \\le |F_k| |G_{k+1}|` pairs formed. Fronts are usually small (for
independent random losses and costs a block of ``n`` candidates keeps about
:math:`\\ln n`), and the bounds keep the merged fronts of one budget to a few
thousand entries on DNA-sized problems (6 blocks of 1,296 candidates solve in
milliseconds; ``python -m benchmarks.block_combiner``). The problem is
NP-hard, though: the whole Pareto front can grow exponentially with the
number of blocks (on instances with every candidate on a line, every
combination is on it), and so can the worst case of the pruned search.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import numpy as np

from manifold_nas.errors import UserInputError

__all__ = [
    "Candidate",
    "Combination",
    "combine_at_budgets",
    "combine_blocks",
    "pareto_front",
]


@dataclass(frozen=True)
class Candidate:
    """One candidate of one block: its distillation loss, its cost and what it is."""

    loss: float
    cost: float
    key: Hashable = None


@dataclass(frozen=True)
class Combination:
    """One candidate per block.

    ``choice[b]`` is the index of the chosen candidate in block ``b``;
    ``loss`` and ``cost`` are the totals, summed left to right in block order.
    """

    choice: tuple[int, ...]
    loss: float
    cost: float


CandidatesPerBlock = Sequence[Sequence[Candidate | tuple[float, float]]]


@dataclass(frozen=True)
class _Block:
    """A block reduced to its Pareto front, sorted by cost ascending (loss descending)."""

    cost: np.ndarray
    loss: np.ndarray
    index: np.ndarray  # position of each front candidate in the user's block


@dataclass
class _Front:
    """The non-dominated prefixes over the blocks merged so far.

    ``rank`` is each prefix's position in lexicographic order of its choice,
    so that ties between sums can be broken by choice without storing it.
    ``parents[k]`` and ``picks[k]`` hold, for the prefixes of level ``k``, the
    row of the level ``k - 1`` prefix they extend and the candidate they add.
    """

    cost: np.ndarray
    loss: np.ndarray
    rank: np.ndarray
    parents: list[np.ndarray]
    picks: list[np.ndarray]


def _pair(item: object, block: int, position: int) -> tuple[float, float]:
    if isinstance(item, Candidate):
        loss, cost = item.loss, item.cost
    else:
        try:
            loss, cost = item  # type: ignore[misc]
        except (TypeError, ValueError):
            raise UserInputError(
                f"block {block}, candidate {position}: expected a Candidate or a "
                f"(loss, cost) pair, got {item!r}"
            ) from None
    try:
        loss, cost = float(loss), float(cost)
    except (TypeError, ValueError):
        raise UserInputError(
            f"block {block}, candidate {position}: loss and cost must be numbers, "
            f"got loss={loss!r}, cost={cost!r}"
        ) from None
    if not math.isfinite(loss):
        raise UserInputError(f"block {block}, candidate {position}: loss is {loss} (not finite)")
    if not math.isfinite(cost):
        raise UserInputError(f"block {block}, candidate {position}: cost is {cost} (not finite)")
    if cost < 0:
        raise UserInputError(f"block {block}, candidate {position}: cost {cost:g} is negative")
    return loss, cost


def _reduce_block(cost: np.ndarray, loss: np.ndarray) -> _Block:
    """Keep the candidates that no other candidate of the block dominates.

    Sorting by (cost, loss, index) puts, among candidates of equal cost, the
    lowest loss first and, among exact duplicates, the lowest index first; a
    candidate survives when its loss is strictly below every earlier one.
    """
    order = np.lexsort((np.arange(len(cost)), loss, cost))
    keep = _strict_running_minimum(loss[order])
    index = order[keep]
    return _Block(cost[index], loss[index], index)


def _strict_running_minimum(loss: np.ndarray) -> np.ndarray:
    """Mask of the entries strictly below every earlier entry (the first always is)."""
    keep = np.ones(len(loss), dtype=bool)
    keep[1:] = loss[1:] < np.minimum.accumulate(loss)[:-1]
    return keep


def _read_blocks(candidates_per_block: CandidatesPerBlock) -> list[_Block]:
    if isinstance(candidates_per_block, (str, bytes)) or len(candidates_per_block) == 0:
        raise UserInputError("candidates_per_block has no blocks")
    blocks = []
    for b, candidates in enumerate(candidates_per_block):
        if len(candidates) == 0:
            raise UserInputError(f"block {b} has no candidates")
        pairs = [_pair(item, b, j) for j, item in enumerate(candidates)]
        loss, cost = np.array(pairs, dtype=np.float64).T
        blocks.append(_reduce_block(cost.copy(), loss.copy()))
    worst_cost = _fold(0.0, [float(block.cost[-1]) for block in blocks])
    worst_loss = _fold(0.0, [float(np.abs(block.loss).max()) for block in blocks])
    if not (math.isfinite(worst_cost) and math.isfinite(worst_loss)):
        raise UserInputError("losses or costs are so large that their totals overflow float64")
    return blocks


def _fold(start, values: Sequence[float]):
    """``start + values[0] + values[1] + ...`` summed left to right (elementwise for arrays)."""
    for value in values:
        start = start + value
    return start


def _checked_budget(budget: float) -> float:
    try:
        budget = float(budget)
    except (TypeError, ValueError):
        raise UserInputError(f"budget must be a number, got {budget!r}") from None
    if math.isnan(budget):
        raise UserInputError("budget is nan")
    return budget


def _cheapest_total(blocks: list[_Block]) -> float:
    return float(_fold(blocks[0].cost[0], [block.cost[0] for block in blocks[1:]]))


_UNIT_ROUNDOFF = 2.0**-53
_SMALLEST_SUBNORMAL = 2.0**-1074
_MAX_MULTIPLIERS = 1024


def _lower_hull_slopes(block: _Block) -> np.ndarray:
    """Slopes of the lower convex hull of a block front (negative, increasing).

    They only suggest Lagrange multipliers, so rounding in the orientation
    test can make the bounds less tight but never wrong.
    """
    cost, loss = block.cost.tolist(), block.loss.tolist()
    hull: list[int] = []
    for j in range(len(cost)):
        while len(hull) >= 2:
            a, b = hull[-2], hull[-1]
            cross = (cost[b] - cost[a]) * (loss[j] - loss[a]) - (loss[b] - loss[a]) * (
                cost[j] - cost[a]
            )
            if cross > 0:
                break
            hull.pop()
        hull.append(j)
    vertices = np.array(hull)
    with np.errstate(divide="ignore", over="ignore"):
        return np.diff(block.loss[vertices]) / np.diff(block.cost[vertices])


class _DualTables:
    """Lagrangian dual values of every suffix of blocks, shared by all budgets.

    For a multiplier :math:`\\lambda \\ge 0` and the blocks after level
    :math:`k`, ``dual[k]`` holds :math:`H_k(\\lambda) = \\sum_{b > k} \\min_j
    (\\ell_{b,j} + \\lambda c_{b,j})` and ``cost_at[k]`` the total cost of those
    minimisers. The multipliers are the slopes of the blocks' lower convex
    hulls (where the LP relaxation's optimal multipliers lie), at most
    ``_MAX_MULTIPLIERS`` of them, evenly subsampled, and only those small
    enough for :math:`\\lambda c` not to overflow.

    The minima are taken over every front candidate, so no hull or ordering
    decision enters :math:`H_k`, and its floating-point error obeys the
    textbook bound :math:`\\gamma_n = n u / (1 - n u)`.
    """

    def __init__(self, blocks: list[_Block]) -> None:
        self.blocks = blocks
        self.loss_scale = _fold(0.0, [float(np.abs(block.loss).max()) for block in blocks])
        self.cost_scale = _fold(0.0, [float(block.cost[-1]) for block in blocks])
        slopes = np.concatenate([_lower_hull_slopes(block) for block in blocks] + [[0.0]])
        multipliers = np.unique(np.abs(slopes))
        multipliers = multipliers[np.isfinite(multipliers)]
        multipliers = multipliers[multipliers * self.cost_scale < 2.0**1000]
        if len(multipliers) > _MAX_MULTIPLIERS:
            picks = np.linspace(0, len(multipliers) - 1, _MAX_MULTIPLIERS).round().astype(int)
            multipliers = multipliers[np.unique(picks)]
        self.multipliers = multipliers
        self.minimisers, minimum, minimiser_cost = [], [], []
        for block in blocks:
            scores = self.scores(block, multipliers)
            best = scores.argmin(axis=1)
            self.minimisers.append(best)
            minimum.append(scores[np.arange(len(multipliers)), best])
            minimiser_cost.append(block.cost[best])
        zero = np.zeros(len(multipliers))
        self.dual = [_fold(zero, minimum[k + 1 :]) for k in range(len(blocks))]
        self.cost_at = [_fold(zero, minimiser_cost[k + 1 :]) for k in range(len(blocks))]
        self._ranked: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}

    @staticmethod
    def scores(block: _Block, multipliers: np.ndarray) -> np.ndarray:
        """:math:`\\ell_j + \\lambda c_j` for every multiplier (rows) and candidate (columns)."""
        return block.loss[None, :] + multipliers[:, None] * block.cost[None, :]

    def ranked(self, level: int, m: int) -> tuple[np.ndarray, np.ndarray]:
        """Block ``level``'s candidates by reduced cost at multiplier ``m``, and those costs."""
        if (level, m) not in self._ranked:
            reduced = self.scores(self.blocks[level], self.multipliers[m : m + 1])[0]
            reduced -= reduced.min()
            order = np.argsort(reduced, kind="stable")
            self._ranked[(level, m)] = (order, reduced[order])
        return self._ranked[(level, m)]


class _BudgetPruner:
    """Drops prefixes that cannot lead to the optimum under one budget.

    Three tests, each keeping every prefix of an optimal combination:

    * **budget**: the prefix's cost plus the cheapest cost of each remaining
      block (summed as the totals are) exceeds the budget;
    * **loss floor**: the prefix's loss plus the smallest loss of each
      remaining block exceeds the incumbent, the loss of a known feasible
      combination (a Lagrangian heuristic improved by single-block swaps,
      then any prefix completed by the cheapest candidates);
    * **Lagrangian bound**: by weak duality every completion
      :math:`S` with cost at most :math:`r` has loss at least
      :math:`H(\\lambda) - \\lambda r` for any :math:`\\lambda \\ge 0`, the LP
      relaxation bound at the best :math:`\\lambda`. Each prefix tries the
      two tabulated multipliers whose minimisers' cost brackets its remaining
      budget; any choice is valid, this one makes the bound tight.

    Rounding: with :math:`\\gamma_n = n u / (1 - n u)`,
    :math:`L = \\sum_b \\max_j |\\ell_{b,j}|` and
    :math:`C = \\sum_b \\max_j c_{b,j}`, the computed prefix and total sums
    are within :math:`\\gamma_N L` (losses) and :math:`\\gamma_N C` (costs) of
    the real ones, :math:`H` within :math:`\\gamma_{N+2} (L + \\lambda C)`,
    and the few operations that assemble the bound (or the reduced-cost
    test below) add at most :math:`3 \\gamma_3 (L + \\lambda (|B| + C))`.
    All together the computed bound exceeds a true lower bound on every
    completion's computed loss by less than
    :math:`8 \\gamma_{N+3} (L + \\lambda (|B| + C))`, plus :math:`N + 2`
    half-units of the smallest subnormal from underflowing products. The
    bound is lowered by twice that, so a prefix is dropped only when every
    completion's computed loss is strictly above the incumbent: ties, and so
    the tie-break, are never pruned away.

    The bound also rules out pairs before they are formed (reduced-cost
    fixing): appending candidate :math:`j` to a prefix raises its bound by
    :math:`\\ell_j + \\lambda c_j - \\min_{j'} (\\ell_{j'} + \\lambda c_{j'})`,
    so only the candidates whose reduced cost fits the gap to the incumbent
    are paired with it.
    """

    def __init__(self, blocks: list[_Block], budget: float, tables: _DualTables | None) -> None:
        # No front combination costs more than this, so a larger budget (even an
        # infinite one) is equivalent to it and keeps the bound's arithmetic finite.
        budget = min(budget, _fold(0.0, [float(block.cost[-1]) for block in blocks]))
        self.budget = budget
        self.cheapest_cost = [float(block.cost[0]) for block in blocks]
        self.loss_of_cheapest = [float(block.loss[0]) for block in blocks]
        self.smallest_loss = [float(block.loss[-1]) for block in blocks]
        self.tables = tables
        self.incumbent = _heuristic_loss(blocks, budget, tables)
        if self.tables is not None:
            steps = len(blocks) + 16
            gamma = steps * _UNIT_ROUNDOFF / (1 - steps * _UNIT_ROUNDOFF)
            self.margin_base = 16 * gamma * tables.loss_scale + steps * _SMALLEST_SUBNORMAL
            self.margin_slope = 16 * gamma * (abs(budget) + tables.cost_scale)

    def survivors(self, level: int, cost: np.ndarray, loss: np.ndarray) -> np.ndarray:
        """Mask of the prefixes over blocks ``0..level`` that pass every test."""
        rest = slice(level + 1, None)
        keep = _fold(cost, self.cheapest_cost[rest]) <= self.budget
        if not keep.any():
            return keep
        completed = _fold(loss[keep], self.loss_of_cheapest[rest])
        self.incumbent = min(self.incumbent, float(completed.min()))
        keep &= _fold(loss, self.smallest_loss[rest]) <= self.incumbent
        if self.tables is not None and level + 1 < len(self.cheapest_cost):
            rows = np.flatnonzero(keep)
            bound, _ = self.lower_bound(level, cost[rows], loss[rows])
            keep[rows[bound > self.incumbent]] = False
        return keep

    def lower_bound(
        self, level: int, cost: np.ndarray, loss: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Per prefix over blocks ``0..level``: a bound on its completions' loss, and its multiplier."""
        tables = self.tables
        remaining = self.budget - cost
        # cost_at decreases along the multipliers; find where it crosses each remaining budget.
        crossing = np.searchsorted(-tables.cost_at[level], -remaining, side="left")
        last = len(tables.multipliers) - 1
        best = np.full(len(cost), -np.inf)
        best_index = np.zeros(len(cost), dtype=np.int64)
        for i in (np.maximum(crossing - 1, 0), np.minimum(crossing, last)):
            multiplier = tables.multipliers[i]
            bound = loss + tables.dual[level][i] - multiplier * remaining
            bound -= self.margin_base + multiplier * self.margin_slope
            better = bound > best
            best[better], best_index[better] = bound[better], i[better]
        return best, best_index

    def promising_pairs(self, level: int, cost: np.ndarray, loss: np.ndarray) -> np.ndarray | None:
        """Flat indices ``prefix * n + candidate`` worth forming for block ``level``.

        ``None`` means every pair (a single block has no Lagrangian bound).
        """
        if self.tables is None:
            return None
        bound, index = self.lower_bound(level - 1, cost, loss)
        gap = self.incumbent - bound
        width = len(self.tables.blocks[level].cost)
        pairs = [np.zeros(0, dtype=np.int64)]
        for m in np.unique(index[gap >= 0]):
            order, reduced = self.tables.ranked(level, int(m))
            members = np.flatnonzero((index == m) & (gap >= 0))
            counts = np.searchsorted(reduced, gap[members], side="right")
            starts = np.repeat(np.cumsum(counts) - counts, counts)
            slots = order[np.arange(counts.sum()) - starts]
            pairs.append(np.repeat(members, counts) * width + slots)
        return np.concatenate(pairs)


def _heuristic_loss(blocks: list[_Block], budget: float, tables: _DualTables | None) -> float:
    """Total loss of a feasible combination found by a Lagrangian heuristic and local search.

    It only seeds the incumbent used for pruning, so it needs to be good, not
    optimal: the Lagrangian minimiser of the smallest multiplier that fits the
    budget (else the cheapest combination), then the best single-block swap
    while one lowers the loss within the budget.
    """
    choice = [0] * len(blocks)
    if tables is not None:
        totals = _fold(0.0, [b.cost[best] for b, best in zip(blocks, tables.minimisers)])
        feasible = np.flatnonzero(totals <= budget)
        if len(feasible):
            choice = [int(best[feasible[0]]) for best in tables.minimisers]
    for _ in range(4 * len(blocks)):
        current = float(_fold(0.0, [b.loss[j] for b, j in zip(blocks, choice)]))
        best_gain, best_swap = 0.0, None
        for k, block in enumerate(blocks):
            costs = [b.cost[j] for b, j in zip(blocks, choice)]
            losses = [b.loss[j] for b, j in zip(blocks, choice)]
            costs[k], losses[k] = block.cost, block.loss
            gain = current - _fold(0.0, losses)
            gain[_fold(0.0, costs) > budget] = -np.inf
            j = int(gain.argmax())
            if gain[j] > best_gain:
                best_gain, best_swap = float(gain[j]), (k, j)
        if best_swap is None:
            break
        choice[best_swap[0]] = best_swap[1]
    return float(_fold(0.0, [b.loss[j] for b, j in zip(blocks, choice)]))


def _merge_fronts(blocks: list[_Block], budgets: list[float], bound_by_loss: bool) -> _Front:
    """Non-dominated combinations that may be optimal under at least one budget.

    Without ``bound_by_loss`` only the budget test runs, with the largest
    budget, and the result is the whole Pareto front up to that cost. With it
    a prefix is kept when it passes every test of at least one budget; the
    optimum of each budget survives (a prefix dropped by the Pareto sweep has
    a dominator whose completion is at least as good), so each optimum can be
    read off the result, but the result is no longer the whole front.
    """
    if bound_by_loss:
        tables = _DualTables(blocks) if len(blocks) > 1 else None
        pruners = [_BudgetPruner(blocks, budget, tables) for budget in budgets]
    else:
        pruners = [_BudgetOnly(blocks, max(budgets))]

    def survivors(level: int, cost: np.ndarray, loss: np.ndarray) -> np.ndarray:
        keep = np.zeros(len(cost), dtype=bool)
        for pruner in pruners:
            keep |= pruner.survivors(level, cost, loss)
        return keep

    first = blocks[0]
    keep = survivors(0, first.cost, first.loss)
    picks = first.index[keep]
    front = _Front(
        cost=first.cost[keep],
        loss=first.loss[keep],
        rank=np.argsort(np.argsort(picks, kind="stable"), kind="stable"),
        parents=[np.zeros(len(picks), dtype=np.int64)],
        picks=[picks],
    )
    for level, block in enumerate(blocks[1:], start=1):
        width = len(block.cost)
        wanted = [pruner.promising_pairs(level, front.cost, front.loss) for pruner in pruners]
        if any(pairs is None for pairs in wanted):
            pairs = np.arange(len(front.cost) * width)
        else:
            pairs = np.unique(np.concatenate(wanted))
        parent, slot = np.divmod(pairs, width)
        cost = front.cost[parent] + block.cost[slot]
        loss = front.loss[parent] + block.loss[slot]
        keep = survivors(level, cost, loss)
        parent, slot, cost, loss = parent[keep], slot[keep], cost[keep], loss[keep]
        pick = block.index[slot]
        # The choice (prefix, pick) is ordered lexicographically by (prefix rank, pick).
        order = np.lexsort((pick, front.rank[parent], loss, cost))
        order = order[_strict_running_minimum(loss[order])]
        parent, pick = parent[order], pick[order]
        lexicographic = np.lexsort((pick, front.rank[parent]))
        rank = np.empty(len(order), dtype=np.int64)
        rank[lexicographic] = np.arange(len(order))
        front = _Front(
            cost[order], loss[order], rank, front.parents + [parent], front.picks + [pick]
        )
    return front


class _BudgetOnly:
    """The budget test alone, for the whole Pareto front up to a cost."""

    def __init__(self, blocks: list[_Block], budget: float) -> None:
        self.budget = budget
        self.cheapest_cost = [float(block.cost[0]) for block in blocks]

    def survivors(self, level: int, cost: np.ndarray, loss: np.ndarray) -> np.ndarray:
        return _fold(cost, self.cheapest_cost[level + 1 :]) <= self.budget

    def promising_pairs(self, level: int, cost: np.ndarray, loss: np.ndarray) -> None:
        return None


def _choices(front: _Front, rows: np.ndarray) -> np.ndarray:
    """The full choice of the front rows ``rows``, one row per combination."""
    levels = len(front.picks)
    choice = np.empty((len(rows), levels), dtype=np.int64)
    for level in range(levels - 1, -1, -1):
        choice[:, level] = front.picks[level][rows]
        rows = front.parents[level][rows]
    return choice


def _combination(front: _Front, row: int, choice: np.ndarray) -> Combination:
    return Combination(
        tuple(int(j) for j in choice), float(front.loss[row]), float(front.cost[row])
    )


def combine_blocks(candidates_per_block: CandidatesPerBlock, budget: float) -> Combination:
    """The combination of least total loss whose total cost is within ``budget``.

    Solves :math:`\\min \\sum_b \\ell_{b,j_b}` s.t. :math:`\\sum_b c_{b,j_b} \\le B`
    exactly by Pareto-front merging with budget and loss-bound pruning (see
    the module docstring for why no optimum is lost, and for the
    complexity). Ties in loss go to the lower cost, then to the
    lexicographically smaller choice.

    Parameters
    ----------
    candidates_per_block
        For every block, its candidates as :class:`Candidate` or
        ``(loss, cost)`` pairs. Losses must be finite, costs finite and
        non-negative.
    budget
        Upper bound on the total cost (``math.inf`` for none).

    Returns
    -------
    Combination
        ``choice[b]`` indexes ``candidates_per_block[b]``.

    Raises
    ------
    UserInputError
        (a ``ValueError``) on an empty block, a non-finite loss or cost, a
        negative cost, or a budget below the cheapest combination's cost.
    """
    blocks = _read_blocks(candidates_per_block)
    budget = _checked_budget(budget)
    cheapest = _cheapest_total(blocks)
    if cheapest > budget:
        raise UserInputError(
            f"no combination fits the budget {budget:g}: the cheapest one costs {cheapest:g}"
        )
    front = _merge_fronts(blocks, [budget], bound_by_loss=True)
    # Every survivor fits the budget and losses decrease along the front.
    last = len(front.cost) - 1
    return _combination(front, last, _choices(front, np.array([last]))[0])


def pareto_front(
    candidates_per_block: CandidatesPerBlock, max_cost: float = math.inf
) -> list[Combination]:
    """Every combination not dominated in (total cost, total loss), cheapest first.

    A combination is on the front when no other one has a cost and a loss
    that are both no larger and not both equal; of combinations with equal
    totals only the lexicographically smallest choice is listed. Along the
    front cost increases and loss strictly decreases, so the front is the
    menu of size/accuracy trade-offs (DNA-a ... DNA-d) of one search, and the
    optimum under a budget ``B`` is its last entry with cost ``<= B``.

    Parameters
    ----------
    candidates_per_block
        As for :func:`combine_blocks`.
    max_cost
        Only combinations with total cost ``<= max_cost`` are returned (and
        the others are pruned early, which can save much of the work).

    Returns
    -------
    list of Combination
        Sorted by cost ascending; empty when even the cheapest combination
        costs more than ``max_cost``.
    """
    blocks = _read_blocks(candidates_per_block)
    max_cost = _checked_budget(max_cost)
    if _cheapest_total(blocks) > max_cost:
        return []
    front = _merge_fronts(blocks, [max_cost], bound_by_loss=False)
    rows = np.arange(len(front.cost))
    return [_combination(front, r, c) for r, c in zip(rows, _choices(front, rows))]


def combine_at_budgets(
    candidates_per_block: CandidatesPerBlock, budgets: Sequence[float]
) -> list[Combination | None]:
    """:func:`combine_blocks` at each budget, all read off one merged front.

    The fronts are merged once, keeping a prefix when it passes the pruning
    tests of at least one budget (a union of what each budget needs, much
    smaller than the whole Pareto front); the answer for budget ``B`` is the
    merged front's last entry with cost ``<= B`` (binary search), the same
    combination :func:`combine_blocks` returns.

    Returns
    -------
    list of Combination or None
        One entry per budget, in the given order; ``None`` where no
        combination fits that budget (unlike :func:`combine_blocks`, which
        raises).
    """
    blocks = _read_blocks(candidates_per_block)
    budgets = [_checked_budget(budget) for budget in budgets]
    feasible = [budget for budget in budgets if budget >= _cheapest_total(blocks)]
    if not feasible:
        return [None] * len(budgets)
    front = _merge_fronts(blocks, sorted(set(feasible)), bound_by_loss=True)
    rows = np.searchsorted(front.cost, budgets, side="right") - 1
    found = rows >= 0
    choices = iter(_choices(front, rows[found]))
    return [
        _combination(front, int(row), next(choices)) if ok else None for row, ok in zip(rows, found)
    ]
