"""Figures of a run: the learned sharing and the learning curve."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

__all__ = ["plot_curve", "plot_sharing"]


def plot_sharing(
    U: torch.Tensor,
    n_out: int,
    n_in: int,
    path: str | Path,
    probe: torch.Tensor | None = None,
    title: str = "learned sharing",
    max_columns: int = 9,
) -> Path:
    """Draw ``reshape(U v)`` for a probe filter ``v`` and each column of ``U`` as an (o, i) image.

    Tied weight positions share a colour in every panel; unconnected positions are zero in all.

    Shape:
        U: ``(o*i, k)``; probe: ``(k,)``.
    """
    U = U.detach().float().cpu()
    k = U.shape[1]
    if probe is None:
        probe = torch.randn(k, generator=torch.Generator().manual_seed(0))
    columns = min(k, max_columns)
    panels = 1 + columns
    ncols = min(panels, 5)
    nrows = math.ceil(panels / ncols)
    aspect = n_out / max(n_in, 1)
    fig, axes = plt.subplots(
        nrows,
        ncols,
        figsize=(3.2 * ncols, 3.2 * nrows * min(max(aspect, 0.5), 2.0) + 0.6),
        squeeze=False,
    )
    images = [("W = reshape(U v), probe v", (U @ probe).view(n_out, n_in))]
    images += [(f"column {j} of U", U[:, j].view(n_out, n_in)) for j in range(columns)]
    for ax, (name, img) in zip(axes.flat, images, strict=False):
        lim = float(img.abs().max()) or 1.0
        im = ax.imshow(
            img.numpy(), cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto", interpolation="nearest"
        )
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("input unit i")
        ax.set_ylabel("output unit o")
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    for ax in list(axes.flat)[len(images) :]:
        ax.axis("off")
    fig.suptitle(f"{title}: U is {n_out * n_in} x {k}", fontsize=11)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_curve(
    histories: dict[str, list[dict[str, float]]], path: str | Path, title: str = "meta-training"
) -> Path:
    """Train query loss (smoothed) and test query MSE against the outer step, one colour a method.

    Args:
        histories: per method, the records of ``MetaLearner.fit`` (``step``, ``train_loss`` and,
            where evaluated, ``test_mse``).
        path: where to write the PNG.
        title: the figure's title.
    """
    fig, ax = plt.subplots(figsize=(7.0, 4.4))
    for index, (name, history) in enumerate(histories.items()):
        if not history:
            continue
        colour = f"C{index}"
        steps = [h["step"] for h in history]
        train = torch.tensor([h["train_loss"] for h in history])
        window = max(1, len(train) // 50)
        smooth = train.unfold(0, window, 1).mean(1) if window > 1 else train
        ax.plot(
            steps[window - 1 :],
            smooth.numpy(),
            color=colour,
            lw=1.4,
            label=f"{name}: train (mean of {window} steps)",
        )
        test = [(h["step"], h["test_mse"]) for h in history if "test_mse" in h]
        if test:
            ax.plot(
                *zip(*test, strict=True),
                "o--",
                color=colour,
                ms=3,
                lw=0.8,
                label=f"{name}: held-out tasks",
            )
    ax.set_yscale("log")
    ax.set_xlabel("outer step")
    ax.set_ylabel("query loss after adaptation")
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _label_image(labels: torch.Tensor) -> np.ndarray:
    """Class labels as a float image with unconnected positions (``-1``) as NaN (drawn white)."""
    img = labels.double().numpy().copy()
    img[img < 0] = np.nan
    return img


def _match_labels(labels: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
    """Renumber recovered classes after the true classes they overlap most (same colours)."""
    from scipy.optimize import linear_sum_assignment

    a, b = labels.reshape(-1).numpy(), true.reshape(-1).numpy()
    ka, kb = int(a.max()) + 1, int(b.max()) + 1
    if ka <= 0 or kb <= 0 or ka * kb > 4_000_000:
        return labels
    both = (a >= 0) & (b >= 0)
    table = np.zeros((ka, kb))
    np.add.at(table, (a[both], b[both]), 1)
    rows, cols = linear_sum_assignment(-table)
    mapping = np.arange(kb, kb + ka)  # unmatched classes get fresh numbers
    mapping[rows] = cols
    out = np.where(a >= 0, mapping[np.clip(a, 0, None)], -1)
    return torch.from_numpy(out).reshape(labels.shape)


def plot_partition(
    labels: torch.Tensor, true: torch.Tensor | None, path: str | Path, title: str = "tie partition"
) -> Path:
    """The recovered tie partition beside the true one: one colour per class, white = unconnected.

    Shape:
        labels, true: ``(o, i)``.
    """
    if true is not None:
        labels = _match_labels(labels, true)
    panels = [("recovered from U", labels)] + ([("true", true)] if true is not None else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(5.0 * len(panels), 4.6), squeeze=False)
    cmap = plt.get_cmap("tab20").with_extremes(bad="white")
    for ax, (name, lab) in zip(axes[0], panels, strict=True):
        n_classes = int(lab.max()) + 1
        ax.imshow(_label_image(lab), cmap=cmap, aspect="auto", interpolation="nearest")
        ax.set_title(f"{name}: {n_classes} classes, {int((lab < 0).sum())} unconnected", fontsize=9)
        ax.set_xlabel("input unit i")
        ax.set_ylabel("output unit o")
    fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_group(group_json: dict, family: object, path: str | Path, max_cayley: int = 512) -> Path:
    """The recovered group: its Cayley table when small, else its orbits on the input units.

    Args:
        group_json: the ``group`` entry of ``symmetry.json`` (generators on ``o + i`` points).
        family: the task family (its ``in_shape`` shapes the orbit picture of image inputs).
        path: where to write the PNG.
        max_cayley: largest order drawn as a Cayley table.
    """
    from metasym import groups
    from metasym.analysis.report import group_from_json

    n_out, n_in = group_json["n_out"], group_json["n_in"]
    group = group_from_json(group_json["generators"], n_out + n_in)
    order = group_json["order"]
    fig, ax = plt.subplots(figsize=(5.6, 5.0))
    if 1 < order <= max_cayley:
        elements = np.array([e.array_form for e in group.generate()])  # (g, o + i)
        index = {e.tobytes(): j for j, e in enumerate(elements)}
        # sympy's a * b applies a first, then b: (a * b)(p) = b(a(p))
        table = np.array([[index[b[a].tobytes()] for b in elements] for a in elements])
        ax.imshow(table, cmap="tab20" if order <= 20 else "viridis", interpolation="nearest")
        name = group_json["name"]
        named = name if name.startswith("group of order") else f"{name} (order {order})"
        ax.set_title(f"Cayley table of {named}")
        ax.set_xlabel("element b")
        ax.set_ylabel("element a (cell: a*b)")
    else:
        _, on_inputs = groups.split_action(group, n_out)
        orbit = np.full(n_in, -1.0)
        for k, orb in enumerate(on_inputs.orbits()):
            orbit[list(orb)] = k
        shape = tuple(getattr(family, "in_shape", (n_in,)))
        side = int(round(n_in**0.5))
        img = (
            orbit.reshape(shape[-2:])
            if len(shape) >= 2
            else (orbit.reshape(side, side) if side * side == n_in else orbit[None, :])
        )
        ax.imshow(img, cmap="tab20", interpolation="nearest", aspect="auto")
        label = group_json["name"] if order > 1 else "trivial group"
        ax.set_title(f"orbits of {label} on the inputs (order {order})", fontsize=10)
        ax.set_xlabel("input column" if img.shape[0] > 1 else "input unit i")
        ax.set_ylabel("input row" if img.shape[0] > 1 else "")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
