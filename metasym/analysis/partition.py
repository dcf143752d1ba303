"""Which weights a learned sharing matrix ties together, and how far two tyings are apart.

An MSR layer builds its weights as ``W = reshape(U v)`` (arXiv 2007.02933). Two weight positions
are tied when their rows of ``U`` are equal: then they hold the same value for every ``v``. A row
of zeros gives a weight that is always zero. ``U`` is only determined up to an invertible
``k x k`` map ``A`` (``U A`` with ``A^-1 v`` builds the same weights), and equal rows stay equal
under any such map, so the tie partition is a property of the layer, not of its coordinates.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import min_weight_full_bipartite_matching
from scipy.spatial import cKDTree
from sklearn.metrics import adjusted_rand_score

from metasym.errors import MetasymError

__all__ = [
    "DEFAULT_TIE_FRACTION",
    "DEFAULT_ZERO_FRACTION",
    "adjusted_rand_index",
    "partition_distance",
    "row_scale",
    "tie_partition",
]

DEFAULT_ZERO_FRACTION = 0.05
"""Rows shorter than this fraction of ``row_scale(U)`` count as zero."""

DEFAULT_TIE_FRACTION = 0.15
"""Rows closer than this fraction of ``row_scale(U)`` to a cluster centre join that cluster."""

GAP_RATIO = 4.0
"""A jump of at least this factor between consecutive sorted row lengths separates zero rows."""

# Contingency tables up to this many cells are matched densely; larger ones sparsely.
_DENSE_CELLS = 4_000_000

# Rounds of re-centring after the greedy pass in ``tie_partition``.
_REFINE_ROUNDS = 3


def _flat_rows(U: torch.Tensor) -> np.ndarray:
    if not isinstance(U, torch.Tensor):
        raise MetasymError(f"U must be a torch.Tensor; got {type(U).__name__}")
    if U.ndim not in (2, 3):
        raise MetasymError(f"U must have shape (o*i, k) or (o, i, k); got {tuple(U.shape)}")
    rows = U.detach().to(torch.float64).cpu().reshape(-1, U.shape[-1]).numpy()
    if not np.isfinite(rows).all():
        raise MetasymError(f"U holds {int((~np.isfinite(rows)).sum())} non-finite entries")
    return rows


def row_scale(U: torch.Tensor) -> float:
    """The typical length of a non-zero row of ``U``.

    The median length of the rows that are at least a tenth as long as the longest row. Rows that
    are only numerically non-zero (learned noise) fall below that cut, so they do not drag the
    scale down; ``0.0`` when ``U`` is zero.

    Shape:
        U: ``(o * i, k)`` or ``(o, i, k)``.
    """
    norms = np.linalg.norm(_flat_rows(U), axis=1)
    top = float(norms.max(initial=0.0))
    if top == 0.0:
        return 0.0
    return float(np.median(norms[norms >= 0.1 * top]))


def _gap_zero_tol(norms: np.ndarray, scale: float) -> float | None:
    """A zero threshold at the widest jump in the sorted row lengths, if there is a clear one.

    Learned sharing matrices keep a noise floor in rows that should be zero (an outer optimiser
    such as Adam keeps moving them), so a fixed fraction of the scale can miss a few of them.
    When the sorted lengths jump by at least ``GAP_RATIO`` somewhere below ``0.5 * scale``, the
    threshold is the geometric mean of the two lengths around the widest such jump.
    """
    sorted_norms = np.sort(norms)
    tiny = np.finfo(np.float64).tiny
    lower, upper = np.maximum(sorted_norms[:-1], tiny), sorted_norms[1:]
    with np.errstate(over="ignore", divide="ignore"):
        ratios = np.where(lower < 0.5 * scale, upper / lower, 0.0)
    if ratios.size == 0 or ratios.max() < GAP_RATIO:
        return None
    j = int(np.argmax(ratios))
    return float(np.sqrt(lower[j] * upper[j]))


def _relabel_first_appearance(labels: np.ndarray) -> np.ndarray:
    """Renumber the non-negative labels ``0, 1, ...`` in order of first appearance."""
    out = np.full_like(labels, -1)
    keep = labels >= 0
    if keep.any():
        _, first, inverse = np.unique(labels[keep], return_index=True, return_inverse=True)
        rank = np.empty_like(first)
        rank[np.argsort(first)] = np.arange(first.size)
        out[keep] = rank[inverse.reshape(-1)]
    return out


def _cluster(rows: np.ndarray, radius: float) -> np.ndarray:
    """Greedy leader clustering with a distance cut, then a few rounds of re-centring.

    Leaders are taken from the most repeated rows first (rows rounded to a fine grid), so an
    exactly tied class is found in one ball query however many rows it has. Every later row joins
    the first leader within ``radius``. Re-centring then moves each leader to the mean of its rows
    and reassigns each row to its nearest centre, which undoes unlucky (off-centre) leaders.
    """
    # Merge (near-)duplicate rows so that large exact classes cost one query.
    grid = radius / 8.0
    keys = np.round(rows / grid).astype(np.int64)
    uniq, inverse, counts = np.unique(keys, axis=0, return_inverse=True, return_counts=True)
    inverse = inverse.reshape(-1)
    sums = np.zeros((uniq.shape[0], rows.shape[1]))
    np.add.at(sums, inverse, rows)
    reps = sums / counts[:, None]  # (m, k): mean row of each grid cell

    # Greedy pass: most populated cells lead.
    tree = cKDTree(reps)
    assign = np.full(reps.shape[0], -1, dtype=np.int64)
    n_clusters = 0
    for r in np.argsort(-counts, kind="stable"):
        if assign[r] >= 0:
            continue
        members = np.asarray(tree.query_ball_point(reps[r], radius), dtype=np.int64)
        members = members[assign[members] < 0]
        assign[members] = n_clusters
        assign[r] = n_clusters
        n_clusters += 1

    # Re-centre: nearest weighted mean, dropping centres that lose all their cells.
    for _ in range(_REFINE_ROUNDS):
        weights = np.bincount(assign, weights=counts, minlength=n_clusters)
        centres = np.zeros((n_clusters, rows.shape[1]))
        np.add.at(centres, assign, reps * counts[:, None])
        centres = centres[weights > 0] / weights[weights > 0, None]
        _, new = cKDTree(centres).query(reps)
        new = np.asarray(new, dtype=np.int64)
        if np.array_equal(new, assign):
            break
        assign = new
        n_clusters = centres.shape[0]
    return assign[inverse]


def tie_partition(
    U: torch.Tensor,
    zero_tol: float | None = None,
    tie_tol: float | None = None,
    n_out: int | None = None,
    n_in: int | None = None,
) -> torch.Tensor:
    """Cluster the rows of a sharing matrix into tied weight positions.

    Rule: let ``s = row_scale(U)``. A row shorter than ``zero_tol`` is a zero weight and gets label
    ``-1``; by default ``zero_tol`` sits in the widest jump (at least ``GAP_RATIO``-fold) of the
    sorted row lengths below ``s / 2``, or is ``DEFAULT_ZERO_FRACTION * s`` when there is no such
    jump (learned zero rows keep a noise floor that a fixed fraction can miss). The other rows are
    clustered with distance cut ``tie_tol`` (default ``DEFAULT_TIE_FRACTION * s``): a row joins a
    cluster when it lies within ``tie_tol`` of the cluster's centre. Both defaults scale with
    ``U``, so ``c * U`` gives the same partition for any ``c != 0``. Classes are numbered
    ``0, 1, ...`` in order of their first row.

    Args:
        U: the sharing matrix, rows in row-major order of the weight positions ``(o, i)``.
        zero_tol: absolute length below which a row is zero; ``None`` for the scaled default.
        tie_tol: absolute distance cut between tied rows; ``None`` for the scaled default.
        n_out: number of outputs ``o``, to return the labels as an ``(o, i)`` matrix.
        n_in: number of inputs ``i``; give it together with ``n_out``.

    Returns:
        A ``long`` tensor of class labels, ``-1`` for zero weights.

    Shape:
        U: ``(o * i, k)`` or ``(o, i, k)``. Returns ``(o, i)`` when ``U`` is 3-D or ``n_out`` and
        ``n_in`` are given, else ``(o * i,)``.
    """
    rows = _flat_rows(U)
    n_rows = rows.shape[0]
    shape: tuple[int, ...] = (n_rows,)
    if U.ndim == 3:
        shape = (int(U.shape[0]), int(U.shape[1]))
    if (n_out is None) != (n_in is None):
        raise MetasymError(f"give both n_out and n_in or neither; got {n_out=}, {n_in=}")
    if n_out is not None and n_in is not None:
        if n_out * n_in != n_rows:
            raise MetasymError(
                f"n_out * n_in = {n_out} * {n_in} = {n_out * n_in} does not match the "
                f"{n_rows} rows of U"
            )
        shape = (n_out, n_in)
    for name, tol in (("zero_tol", zero_tol), ("tie_tol", tie_tol)):
        if tol is not None and not tol >= 0:
            raise MetasymError(f"{name} must be a non-negative number or None; got {tol!r}")

    # Thresholds relative to the typical row length.
    scale = row_scale(U)
    norms = np.linalg.norm(rows, axis=1)
    if zero_tol is None:
        gap = _gap_zero_tol(norms, scale) if scale > 0 else None
        z_tol = (
            DEFAULT_ZERO_FRACTION * scale
            if gap is None
            else max(gap, DEFAULT_ZERO_FRACTION * scale)
        )
    else:
        z_tol = float(zero_tol)
    t_tol = DEFAULT_TIE_FRACTION * scale if tie_tol is None else float(tie_tol)

    labels = np.full(n_rows, -1, dtype=np.int64)
    nonzero = norms >= max(z_tol, np.finfo(np.float64).tiny)
    if nonzero.any():
        if t_tol > 0:
            labels[nonzero] = _cluster(rows[nonzero], t_tol)
        else:  # only exact ties
            labels[nonzero] = np.unique(rows[nonzero], axis=0, return_inverse=True)[1].reshape(-1)
    labels = _relabel_first_appearance(labels)
    return torch.from_numpy(labels).reshape(shape)


def _as_labels(a: torch.Tensor | np.ndarray, name: str) -> np.ndarray:
    arr = a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise MetasymError(f"{name} must hold integer labels; got dtype {arr.dtype}")
    return arr.reshape(-1).astype(np.int64)


def _pair(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> tuple[np.ndarray, ...]:
    la, lb = _as_labels(a, "a"), _as_labels(b, "b")
    if la.shape != lb.shape:
        raise MetasymError(
            f"partitions must label the same number of positions; got {la.size} and {lb.size}"
        )
    return la, lb


def _max_matching_weight(ia: np.ndarray, ib: np.ndarray, ka: int, kb: int, dense_cells: int) -> int:
    """The heaviest matching of classes of ``a`` to classes of ``b``, weighted by overlap."""
    cells = csr_matrix((np.ones(ia.size), (ia, ib)), shape=(ka, kb))  # (ka, kb) contingency
    if ka * kb <= dense_cells:
        table = cells.toarray()
        r, c = linear_sum_assignment(table, maximize=True)
        return int(round(table[r, c].sum()))

    # Sparse: a full matching on (ka + kb) x (kb + ka), where row i may also take dummy column
    # kb + i, column j may take dummy row ka + j, and dummy row ka + j meets dummy column kb + i
    # when (i, j) is an edge, so every matching of real edges extends to a full one. All weights
    # get the same offset, which does not change the optimum of a full matching.
    coo = cells.tocoo()
    top = float(coo.data.max())
    ra, rb = np.arange(ka), np.arange(kb)
    rows = np.concatenate([coo.row, ra, ka + rb, ka + coo.col])
    cols = np.concatenate([coo.col, kb + ra, rb, kb + coo.row])
    data = np.concatenate(
        [top + 1 - coo.data, np.full(ka + kb, top + 1), np.full(coo.nnz, top + 1)]
    )
    graph = csr_matrix((data, (rows, cols)), shape=(ka + kb, kb + ka))
    match_r, match_c = min_weight_full_bipartite_matching(graph)
    real = (match_r < ka) & (match_c < kb)
    return int(round(cells[match_r[real], match_c[real]].sum()))


def partition_distance(
    a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray, *, _dense_cells: int = _DENSE_CELLS
) -> int:
    """The fewest positions that must change class to turn partition ``a`` into ``b``.

    Equal to ``n`` minus the heaviest matching between the classes of ``a`` and of ``b``, where
    matching class ``A`` with class ``B`` is worth ``|A & B|`` (the contingency table). Label
    values do not matter, only which positions share one; ``-1`` is a class like any other.

    Shape:
        a, b: any shape with the same number of entries ``n``.
    """
    la, lb = _pair(a, b)
    if la.size == 0:
        return 0
    _, ia = np.unique(la, return_inverse=True)
    _, ib = np.unique(lb, return_inverse=True)
    ia, ib = ia.reshape(-1), ib.reshape(-1)
    ka, kb = int(ia.max()) + 1, int(ib.max()) + 1
    return int(la.size - _max_matching_weight(ia, ib, ka, kb, _dense_cells))


def adjusted_rand_index(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> float:
    """Adjusted Rand index of two partitions: ``1`` when equal, about ``0`` for unrelated ones.

    ``-1`` is a class like any other.

    Shape:
        a, b: any shape with the same number of entries.
    """
    la, lb = _pair(a, b)
    return float(adjusted_rand_score(la, lb))
