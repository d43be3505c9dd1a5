"""The companion's figures, in one house style. Plots take results and draw; they never train."""
from __future__ import annotations

from typing import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns
import torch

METRIC_COLORS = {"BA": "#0072B2", "ASR": "#D55E00", "RA": "#009E73"}


def style() -> None:
    """The house style: seaborn whitegrid, colour-blind palette, readable sizes."""
    sns.set_theme(context="notebook", style="whitegrid", palette="colorblind", font_scale=0.95)
    plt.rcParams.update({"figure.dpi": 110, "axes.titleweight": "bold", "axes.titlesize": 11,
                         "legend.frameon": False, "savefig.facecolor": "white"})


style()


def _img(x: torch.Tensor) -> np.ndarray:
    x = x.detach().cpu().float()
    if x.max() > 1.0:
        x = x / 255.0
    return x.permute(1, 2, 0).squeeze(-1).clamp(0, 1).numpy()


def trigger_gallery(rows: Sequence[Mapping]) -> plt.Figure:
    """One row per attack: clean image, poisoned image, and |difference| amplified to full range.

    Each row is ``{"attack": name, "clean": uint8 C×H×W, "poisoned": uint8 C×H×W}``.
    """
    fig, axes = plt.subplots(len(rows), 3, figsize=(6.0, 2.0 * len(rows)), squeeze=False)
    for r, row in enumerate(rows):
        clean, poisoned = row["clean"].float(), row["poisoned"].float()
        diff = (poisoned - clean).abs()
        scale = diff.max().item() or 1.0
        gray = clean.shape[0] == 1
        panels = [(clean, "clean"), (poisoned, "poisoned"),
                  (diff / scale * 255.0, f"|difference| ×{255.0 / scale:.0f}")]
        for c, (img, title) in enumerate(panels):
            ax = axes[r, c]
            ax.imshow(_img(img), cmap="gray" if gray else None, vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([]), ax.set_yticks([])
            ax.grid(False)
            if r == 0:
                ax.set_title(title)
        axes[r, 0].set_ylabel(row["attack"], fontsize=11, fontweight="bold")
    fig.tight_layout()
    return fig


def metric_bars(records: Sequence[Mapping], by: str = "model", metrics: Sequence[str] = ("BA", "ASR", "RA"),
                title: str = "") -> plt.Figure:
    """Grouped bars of BA / ASR / RA (mean over records, error bars = std over seeds)."""
    import pandas as pd

    long = pd.DataFrame([{by: r[by], "metric": m, "value": r[m], "seed": r.get("seed", 0)}
                         for r in records for m in metrics if m in r])
    order = list(dict.fromkeys(r[by] for r in records))
    fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(order) + 2), 3.4))
    sns.barplot(long, x=by, y="value", hue="metric", order=order, hue_order=[m for m in metrics],
                palette=METRIC_COLORS, errorbar="sd", capsize=0.15, err_kws={"linewidth": 1}, ax=ax)
    ax.set_ylim(0, 105)
    ax.set_ylabel("percent of test images")
    ax.set_xlabel("")
    if title:
        ax.set_title(title)
    ax.legend(ncols=len(metrics), loc="upper center", bbox_to_anchor=(0.5, -0.12))
    fig.tight_layout()
    return fig


def embedding(points: np.ndarray, labels: np.ndarray, poisoned: np.ndarray, classes: Sequence[str],
              title: str = "", ax: plt.Axes | None = None) -> plt.Figure:
    """A 2-D embedding of penultimate features: classes in colour, poisoned samples as black crosses."""
    fig = ax.figure if ax is not None else plt.subplots(figsize=(5.0, 4.4))[0]
    ax = ax or fig.axes[0]
    palette = sns.color_palette("tab10", len(classes))
    clean = ~poisoned
    for k, name in enumerate(classes):
        sel = clean & (labels == k)
        ax.scatter(points[sel, 0], points[sel, 1], s=4, color=palette[k], alpha=0.5, label=name, linewidths=0)
    ax.scatter(points[poisoned, 0], points[poisoned, 1], s=14, marker="x", color="black",
               linewidths=0.8, label="poisoned")
    ax.set_xticks([]), ax.set_yticks([])
    ax.set_title(title)
    ax.legend(markerscale=2.5, fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    return fig


def embeddings(panels: Sequence[Mapping], classes: Sequence[str]) -> plt.Figure:
    """Several embeddings side by side (``{"title", "points", "labels", "poisoned"}`` each)."""
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels) + 1.4, 4.2), squeeze=False)
    for ax, p in zip(axes[0], panels):
        embedding(p["points"], p["labels"], p["poisoned"], classes, p["title"], ax=ax)
        if ax is not axes[0, -1]:
            ax.get_legend().remove()
    fig.tight_layout()
    return fig
