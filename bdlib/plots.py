"""The companion's figures, in one house style. Plots take results and draw; they never train."""

from __future__ import annotations

from typing import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns
import torch
from matplotlib.ticker import MaxNLocator

METRIC_COLORS = {"BA": "#0072B2", "ASR": "#D55E00", "RA": "#009E73"}
# The widest a figure grows (inches) before its panels wrap into rows: a landscape page.
PAGE_WIDTH = 14.0


def diverged(row: Mapping) -> bool:
    """Whether a row is a defense cell whose training diverged (``bdlib.experiment.divergence``)."""
    return bool(row.get("diverged"))


def distinct_labels(labels: Sequence[str]) -> list[str]:
    """Settings labels (``"a=1, b=2"``) without the parts most of them share, so each row names
    what sets it apart (``"b=2"``); the row of the shared settings alone (a one-factor sweep's
    defaults) is ``"the shared settings"``. Other labels are returned as they are."""
    parts = [str(x).split(", ") for x in labels]
    if len(labels) < 3 or not all(all("=" in p for p in ps) for ps in parts):
        return [str(x) for x in labels]
    count: dict[str, int] = {}
    for ps in parts:
        for p in ps:
            count[p] = count.get(p, 0) + 1
    shared = {p for p, n in count.items() if n > len(labels) / 2}
    return [", ".join(p for p in ps if p not in shared) or "the shared settings" for ps in parts]


def style() -> None:
    """The house style: seaborn whitegrid, colour-blind palette, readable sizes."""
    sns.set_theme(context="notebook", style="whitegrid", palette="colorblind", font_scale=0.95)
    plt.rcParams.update(
        {
            "figure.dpi": 110,
            "axes.titleweight": "bold",
            "axes.titlesize": 11,
            "legend.frameon": False,
            "savefig.facecolor": "white",
        }
    )


style()


def _grid(n: int, max_cols: int = 4) -> tuple[int, int]:
    """(rows, columns) for ``n`` panels, at most ``max_cols`` to a row: one row while they fit."""
    cols = max(1, min(n, max_cols))
    return -(-n // cols), cols


def _panels(n: int, max_cols: int, panel_w: float, panel_h: float, **kwargs) -> tuple[plt.Figure, list, int]:
    """A figure of ``n`` panels wrapped into rows (:func:`_grid`); unused cells are hidden.

    Returns the figure, the ``n`` axes in reading order and the number of rows. ``max_cols`` is
    lowered so that a row stays within :data:`PAGE_WIDTH`.
    """
    fit = max(1, int(PAGE_WIDTH // panel_w))
    rows, cols = _grid(n, min(max_cols, fit))
    fig, axes = plt.subplots(rows, cols, figsize=(panel_w * cols, panel_h * rows), squeeze=False, **kwargs)
    flat = list(axes.flat)
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n], rows


def _below(rows: int, offset: float) -> float:
    """A figure legend's y anchor ``offset`` below a one-row figure, scaled for ``rows`` rows."""
    return offset / rows


def _img(x: torch.Tensor) -> np.ndarray:
    x = x.detach().cpu().float()
    if x.max() > 1.0:
        x = x / 255.0
    return x.permute(1, 2, 0).squeeze(-1).clamp(0, 1).numpy()


def _show(ax: plt.Axes, img: torch.Tensor) -> None:
    """One C×H×W image on ``ax`` (grey if single-channel), pixel-exact, no ticks or grid."""
    ax.imshow(_img(img), cmap="gray" if img.shape[0] == 1 else None, vmin=0, vmax=1, interpolation="nearest")
    ax.set_xticks([]), ax.set_yticks([])
    ax.grid(False)


def trigger_gallery(rows: Sequence[Mapping]) -> plt.Figure:
    """One row per attack: clean image, poisoned image, and |difference| amplified to full range.

    Each row is ``{"attack": name, "clean": uint8 C×H×W, "poisoned": uint8 C×H×W}``.
    """
    fig, axes = plt.subplots(len(rows), 3, figsize=(6.0, 2.0 * len(rows)), squeeze=False)
    for r, row in enumerate(rows):
        clean, poisoned = row["clean"].float(), row["poisoned"].float()
        diff = (poisoned - clean).abs()
        scale = diff.max().item() or 1.0
        panels = [
            (clean, "clean"),
            (poisoned, "poisoned"),
            (diff / scale * 255.0, f"|difference| ×{255.0 / scale:.0f}"),
        ]
        for c, (img, title) in enumerate(panels):
            ax = axes[r, c]
            _show(ax, img)
            if r == 0 or c == 2:
                ax.set_title(title, fontsize=9 if c == 2 and r else None)
        axes[r, 0].set_ylabel(row["attack"], fontsize=11, fontweight="bold")
    fig.tight_layout()
    return fig


def image_rows(
    rows: Mapping[str, torch.Tensor], captions: Mapping[str, Sequence[str]] | None = None, title: str = ""
) -> plt.Figure:
    """One row of images per label: ``rows`` maps a row label to a uint8 N×C×H×W batch.

    ``captions`` optionally gives one short caption per image of a row.
    """
    ncol = max(1, *(len(x) for x in rows.values()))
    fig, axes = plt.subplots(len(rows), ncol, figsize=(1.3 * ncol, 1.8 * len(rows)), squeeze=False)
    for r, (label, imgs) in enumerate(rows.items()):
        for c in range(ncol):
            ax = axes[r, c]
            if c >= len(imgs):
                ax.axis("off")
                continue
            _show(ax, imgs[c])
            if captions and label in captions:
                ax.set_title(captions[label][c], fontsize=8)
        axes[r, 0].set_ylabel(label, fontsize=10, fontweight="bold")
    if title:
        fig.suptitle(title, fontweight="bold")
    fig.tight_layout()
    return fig


def metric_bars(
    records: Sequence[Mapping],
    by: str = "model",
    metrics: Sequence[str] = ("BA", "ASR", "RA"),
    title: str = "",
    ylabel: str = "percent of test images",
) -> plt.Figure:
    """Grouped bars of BA / ASR / RA (mean over records, error bars = std over seeds)."""
    import pandas as pd

    long = pd.DataFrame(
        [{by: r[by], "metric": m, "value": r[m], "seed": r.get("seed", 0)} for r in records for m in metrics if m in r]
    )
    order = list(dict.fromkeys(r[by] for r in records))
    fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(order) + 2), 3.4))
    palette = METRIC_COLORS if set(metrics) <= set(METRIC_COLORS) else "colorblind"
    sns.barplot(
        long,
        x=by,
        y="value",
        hue="metric",
        order=order,
        hue_order=list(metrics),
        palette=palette,
        errorbar="sd",
        capsize=0.15,
        err_kws={"linewidth": 1},
        ax=ax,
    )
    ax.set_ylim(0, 105)
    ax.set_ylabel(ylabel)
    ax.set_xlabel("")
    if title:
        ax.set_title(title)
    ax.legend(ncols=len(metrics), loc="upper center", bbox_to_anchor=(0.5, -0.12))
    fig.tight_layout()
    return fig


def embedding(
    points: np.ndarray,
    labels: np.ndarray,
    poisoned: np.ndarray,
    classes: Sequence[str],
    title: str = "",
    ax: plt.Axes | None = None,
) -> plt.Figure:
    """A 2-D embedding of penultimate features: classes in colour, poisoned samples as black crosses."""
    fig = ax.figure if ax is not None else plt.subplots(figsize=(5.0, 4.4))[0]
    ax = ax or fig.axes[0]
    palette = sns.color_palette("tab10", len(classes))
    clean = ~poisoned
    for k, name in enumerate(classes):
        sel = clean & (labels == k)
        ax.scatter(points[sel, 0], points[sel, 1], s=4, color=palette[k], alpha=0.5, label=name, linewidths=0)
    ax.scatter(
        points[poisoned, 0], points[poisoned, 1], s=14, marker="x", color="black", linewidths=0.8, label="poisoned"
    )
    ax.set_xticks([]), ax.set_yticks([])
    ax.set_title(title)
    # The legend's own markers, opaque and of one size, at the house font size: the scatter's
    # (4-point dots at half alpha) would be too faint to match a colour to a class.
    from matplotlib.lines import Line2D

    keys = [Line2D([], [], ls="", marker="o", ms=7, color=palette[k], label=name) for k, name in enumerate(classes)]
    keys.append(Line2D([], [], ls="", marker="x", ms=7, mew=1.6, color="black", label="poisoned"))
    ax.legend(handles=keys, loc="center left", bbox_to_anchor=(1.0, 0.5), handletextpad=0.3, borderaxespad=0.3)
    fig.tight_layout()
    return fig


def embeddings(panels: Sequence[Mapping], classes: Sequence[str]) -> plt.Figure:
    """Several embeddings side by side (``{"title", "points", "labels", "poisoned"}`` each),
    three to a row; the class legend hangs beside the last panel of the first row."""
    rows, cols = _grid(len(panels), 3)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols + 1.8, 4.2 * rows), squeeze=False)
    flat = list(axes.flat)
    for ax in flat[len(panels) :]:
        ax.set_visible(False)
    for i, (ax, p) in enumerate(zip(flat, panels)):
        embedding(p["points"], p["labels"], p["poisoned"], classes, p["title"], ax=ax)
        if i != cols - 1:
            ax.get_legend().remove()
    fig.tight_layout()
    return fig


def metric_panels(
    records: Sequence[Mapping], by: str, facet: str, metrics: Sequence[str] = ("BA", "ASR", "RA"), title: str = ""
) -> plt.Figure:
    """One :func:`metric_bars`-style panel per value of ``facet`` (e.g. per attack), wrapped into
    rows of at most four that fit :data:`PAGE_WIDTH`."""
    import pandas as pd

    facets = list(dict.fromkeys(r[facet] for r in records))
    order = list(dict.fromkeys(r[by] for r in records))
    # A group with a diverged seed gets no bar (never the mean of its other seeds) but a label.
    failed = {(r[facet], r[by]) for r in records if diverged(r)}
    long = pd.DataFrame(
        [
            {facet: r[facet], by: r[by], "metric": m, "value": r[m]}
            for r in records
            for m in metrics
            if m in r and (r[facet], r[by]) not in failed
        ]
    )
    per_bar = 0.9 if len(facets) <= 4 else 0.6  # narrower groups once the panels wrap into rows
    fig, axes, rows = _panels(len(facets), 4, max(3.2, per_bar * len(order) + 1.2), 3.4, sharey=True)
    for ax, f in zip(axes, facets):
        sns.barplot(
            long[long[facet] == f],
            x=by,
            y="value",
            hue="metric",
            order=order,
            hue_order=list(metrics),
            palette=METRIC_COLORS,
            errorbar="sd",
            capsize=0.15,
            err_kws={"linewidth": 1},
            ax=ax,
        )
        for i, name in enumerate(order):
            if (f, name) in failed:
                ax.text(i, 50, "diverged", rotation=90, ha="center", va="center", color="#b2182b", fontsize=8)
        ax.set_title(str(f)), ax.set_xlabel(""), ax.set_ylim(0, 105)
        ax.tick_params(axis="x", rotation=20 if rows == 1 else 35)
        ax.get_legend().remove()
        if ax.get_subplotspec().colspan.start == 0:
            ax.set_ylabel("percent of test images")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, ncols=len(metrics), loc="lower center", bbox_to_anchor=(0.5, _below(rows, -0.06)))
    if title:
        fig.suptitle(title, fontweight="bold")
    fig.tight_layout()
    return fig


def curves(
    records: Sequence[Mapping],
    x: str,
    series: str = "series",
    metrics: Sequence[str] = ("BA", "ASR", "RA"),
    reference: Mapping[str, Mapping] | None = None,
    title: str = "",
    xlabel: str | None = None,
    logx: bool = False,
) -> plt.Figure:
    """BA / ASR / RA against ``x``, one panel per metric, one line per series.

    ``records`` are long rows: each holds its x value, its line's legend label in the ``series``
    column (lines in order of first appearance) and its metrics, e.g. ``{"epoch": 3, "series":
    "student", "BA": 80.1, "ASR": 4.2}``. Several records at one x (seeds) give mean ± std bands.
    ``reference`` draws a dashed horizontal line per label (e.g. fine-tuning, undefended).
    """
    import pandas as pd

    fig, axes = plt.subplots(1, len(metrics), figsize=(3.6 * len(metrics), 3.2), squeeze=False)
    lines = list(dict.fromkeys(r[series] for r in records))
    palette = sns.color_palette("colorblind", len(lines) + len(reference or {}))
    for ax, m in zip(axes[0], metrics):
        for i, label in enumerate(lines):
            df = pd.DataFrame([{"x": r[x], "v": r[m]} for r in records if r[series] == label and m in r])
            if df.empty:
                continue
            g = df.groupby("x")["v"].agg(["mean", "std"]).reset_index().fillna(0.0)
            ax.plot(g["x"], g["mean"], marker="o", ms=3.5, color=palette[i], label=label)
            ax.fill_between(g["x"], g["mean"] - g["std"], g["mean"] + g["std"], color=palette[i], alpha=0.18)
        for j, (label, values) in enumerate((reference or {}).items()):
            if m in values:
                ax.axhline(values[m], ls="--", lw=1.2, color=palette[len(lines) + j], label=label)
        ax.set_title(m), ax.set_ylim(-3, 103), ax.set_xlabel(xlabel or x)
        if logx:
            # Ticks at the measured x values, plainly labelled: log-axis minor labels collide.
            xs = sorted({r[x] for r in records})
            ax.set_xscale("log")
            ax.set_xticks(xs, [f"{v:g}" for v in xs])
            ax.minorticks_off()
        elif all(isinstance(r[x], int) for r in records):  # epochs, rounds: no 0.2-steps
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0, 0].set_ylabel("percent of test images")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    # Hung from just below the x labels, so a second legend row grows downwards, not over them.
    fig.legend(handles, labels, ncols=min(6, len(labels)), loc="upper center", bbox_to_anchor=(0.5, 0.02))
    if title:
        fig.suptitle(title, fontweight="bold")
    fig.tight_layout()
    return fig


def confidence_histograms(conf: Mapping[str, Mapping[str, Mapping[str, np.ndarray]]]) -> plt.Figure:
    """Rows: sample groups (clean / poisoned training samples); columns: models.

    ``conf[model][group]`` holds arrays ``"true class"`` and ``"target class"`` of probabilities.
    """
    models_ = list(conf)
    groups = list(next(iter(conf.values())))
    fig, axes = plt.subplots(
        len(groups), len(models_), figsize=(3.3 * len(models_), 2.5 * len(groups)), squeeze=False, sharex=True
    )
    colors = {"true class": METRIC_COLORS["RA"], "target class": METRIC_COLORS["ASR"]}
    bins = np.linspace(0, 1, 21)
    for c, m in enumerate(models_):
        for r, g in enumerate(groups):
            ax = axes[r, c]
            for kind, values in conf[m][g].items():
                ax.hist(
                    values,
                    bins=bins,
                    color=colors.get(kind),
                    alpha=0.6,
                    label=kind,
                    weights=np.full(len(values), 100.0 / max(len(values), 1)),
                )
            ax.set_ylim(0, 100)
            if r == 0:
                ax.set_title(m)
            if c == 0:
                ax.set_ylabel(f"{g}\n% of samples")
            if r == len(groups) - 1:
                ax.set_xlabel("predicted probability")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, ncols=2, loc="lower center", bbox_to_anchor=(0.5, -0.05))
    fig.tight_layout()
    return fig


def channel_scores(scores: Mapping[str, torch.Tensor], selected: Mapping[str, torch.Tensor]) -> plt.Figure:
    """Per monitored layer: the distribution of channel scores, selected channels in red; five
    layers to a row (ResNet-18's 15 monitored convs: three rows)."""
    layers = list(scores)
    fig, axes, rows = _panels(len(layers), 5, 2.8, 3.0)
    for ax, name in zip(axes, layers):
        s = scores[name].float().numpy()
        finite = np.isfinite(s)
        sel = np.zeros(len(s), dtype=bool)
        sel[selected[name].long().numpy()] = True
        jitter = np.random.default_rng(0).uniform(-0.25, 0.25, len(s))
        ax.scatter(jitter[finite & ~sel], s[finite & ~sel], s=8, color="0.55", label="kept")
        ax.scatter(jitter[finite & sel], s[finite & sel], s=16, color=METRIC_COLORS["ASR"], label="reset")
        ax.set_xticks([]), ax.set_title(name, fontsize=9), ax.set_xlim(-0.6, 0.6)
        if ax.get_subplotspec().colspan.start == 0:
            ax.set_ylabel("channel score d_j")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, ncols=2, loc="lower center", bbox_to_anchor=(0.5, _below(rows, -0.06)))
    fig.tight_layout()
    return fig


def class_bars(
    values: Sequence[float],
    classes: Sequence[str],
    highlight: int,
    ylabel: str,
    ax: plt.Axes,
    marked: int | None = None,
) -> None:
    """Bars per class; ``highlight`` (the true target) in orange, ``marked`` (a method's pick) hatched."""
    colors = [METRIC_COLORS["ASR"] if k == highlight else "0.6" for k in range(len(values))]
    bars = ax.bar(range(len(values)), values, color=colors)
    if marked is not None:
        bars[marked].set_hatch("///")
        bars[marked].set_edgecolor("black")
    ax.set_xticks(range(len(values)), [c[:8] for c in classes], rotation=60, fontsize=7)
    ax.set_ylabel(ylabel)


def inversion_panels(rows: Sequence[Mapping], classes: Sequence[str]) -> plt.Figure:
    """Per attack: true trigger (amplified difference), inverted mask, inverted m⊙t, mask norm per class.

    Each row: ``{"attack", "true_diff" (C×H×W float), "mask" (1×H×W), "pattern" (C×H×W),
    "norms" (K), "target" (true), "detected"}``.
    """
    fig, axes = plt.subplots(
        len(rows), 4, figsize=(11.0, 2.4 * len(rows)), squeeze=False, gridspec_kw={"width_ratios": [1, 1, 1, 2.2]}
    )
    for r, row in enumerate(rows):
        diff = row["true_diff"].abs()
        panels = [
            (diff / (diff.max() or 1.0), "true trigger |Δ|"),
            (row["mask"], "inverted mask m"),
            (row["mask"] * row["pattern"], "inverted m⊙t"),
        ]
        for c, (img, title) in enumerate(panels):
            ax = axes[r, c]
            _show(ax, img)
            if r == 0:
                ax.set_title(title)
        axes[r, 0].set_ylabel(row["attack"], fontweight="bold")
        class_bars(row["norms"], classes, row["target"], "mask L1 norm", axes[r, 3], marked=row["detected"])
        ok = "right" if row["detected"] == row["target"] else "WRONG"
        axes[r, 3].set_title(f"detected class {row['detected']} ({ok}); true target {row['target']}", fontsize=9)
    fig.tight_layout()
    return fig


def heatmaps(
    rows: Sequence[Mapping], values: Sequence[str] = ("BA", "ASR"), index: str = "attack", columns: str = "defense"
) -> plt.Figure:
    """Mean over seeds of each value as an ``index`` × ``columns`` heatmap, side by side."""
    import pandas as pd

    df = pd.DataFrame(rows)
    df[index] = df[index].map(dict(zip(df[index].unique(), distinct_labels(list(df[index].unique())))))
    # Each panel repeats the row labels: long ones (a variant's settings) widen every panel.
    label_w = 0.075 * max(len(str(x)) for x in df[index].unique())
    width = (5.2 + max(0.0, label_w - 1.0)) * len(values)
    fig, axes = plt.subplots(1, len(values), figsize=(width, 0.45 * df[index].nunique() + 2.2), squeeze=False)
    cmaps = {"BA": "Blues", "ASR": "Reds", "RA": "Greens", "DER": "Purples"}
    # A cell with a diverged seed is drawn as such ("div."), never as the mean of its other seeds.
    df["_diverged"] = [diverged(r) for r in rows]
    div = df.pivot_table(index=index, columns=columns, values="_diverged", aggfunc="any", sort=False)
    for ax, v in zip(axes[0], values):
        table = df.pivot_table(index=index, columns=columns, values=v, aggfunc="mean", sort=False, dropna=False)
        fmt, vmax = (".2f", 1.0) if v == "DER" else (".0f", 100.0)
        flagged = div.reindex(index=table.index, columns=table.columns).fillna(False).astype(bool)
        sns.heatmap(
            table.mask(flagged),
            annot=True,
            fmt=fmt,
            cmap=cmaps.get(v, "viridis"),
            vmin=0,
            vmax=vmax,
            cbar=False,
            linewidths=0.5,
            ax=ax,
            annot_kws={"fontsize": 8},
        )
        for i, j in zip(*np.nonzero(flagged.to_numpy())):  # seaborn leaves masked cells unlabelled
            ax.text(j + 0.5, i + 0.5, "div.", ha="center", va="center", fontsize=8, color="#b2182b")
        ax.set_title(f"{v} (mean over seeds)"), ax.set_xlabel(""), ax.set_ylabel("")
        # Column names slanted and anchored at their right end, so that long neighbours never overlap.
        plt.setp(ax.get_xticklabels(), rotation=40, ha="right", rotation_mode="anchor")
        ax.tick_params(axis="y", rotation=0)
    if df["_diverged"].any():
        note = "div.: the defense's training diverged on a seed of this cell (a failure)"
        fig.text(0.5, 0.0, note, ha="center", va="top")
    fig.tight_layout()
    return fig


def seconds_bars(rows: Sequence[Mapping], by: str = "defense") -> plt.Figure:
    """Wall time per ``by`` (mean over cells, error bars = std), log scale."""
    import pandas as pd

    df = pd.DataFrame(rows)
    fig, ax = plt.subplots(figsize=(6.0, 3.0))
    sns.barplot(
        df, x=by, y="seconds", errorbar="sd", capsize=0.15, color="0.55", ax=ax, order=list(dict.fromkeys(df[by]))
    )
    ax.set_yscale("log"), ax.set_xlabel(""), ax.set_ylabel("wall time per run (s)")
    ax.tick_params(axis="x", rotation=20)
    fig.tight_layout()
    return fig


def tradeoff(
    rows: Sequence[Mapping],
    chosen: Mapping[str, Mapping] | None = None,
    max_cost: float | None = None,
    reference: Mapping[str, str] | None = None,
) -> plt.Figure:
    """ASR against BA cost across each defense's tuning grid, one panel per attack.

    ``rows`` are ``bdlib.study.tune.sweep`` rows (mean over the seeds each setting ran on is plotted: a
    setting far from being chosen on the first tuning seed runs on that seed only); each defense is one line
    through its grid in declared order; ``chosen`` (``tune.select``) rings the chosen setting;
    ``reference`` (defense -> setting label, ``tune.reference``) marks the reference recipe with a
    square; ``max_cost`` shades the BA-cost bar. A defense that dominates lies left of and below
    the others.
    """
    import pandas as pd

    failed = {(r["attack"], r["defense"], r["setting"]) for r in rows if diverged(r)}
    # Settings far from being chosen on the first tuning seed run on that seed only (tune.far_settings).
    by_setting = pd.DataFrame(rows).groupby(["attack", "defense", "setting"], sort=False)
    seeds = by_setting["seed"].nunique()
    pruned = bool(len(seeds)) and seeds.min() < seeds.max()
    df = by_setting[["cost", "ASR"]].mean().reset_index()
    # A setting with a diverged seed is drawn as a cross at the top of the panel, not as a mean.
    df["failed"] = [(a, d, s) in failed for a, d, s in zip(df["attack"], df["defense"], df["setting"])]
    df.loc[df["failed"], ["cost", "ASR"]] = float("nan")
    attacks = list(dict.fromkeys(df["attack"]))
    names = list(dict.fromkeys(df["defense"]))
    palette = dict(zip(names, sns.color_palette("colorblind", len(names))))
    fig, axes = plt.subplots(1, len(attacks), figsize=(5.4 * len(attacks), 4.4), squeeze=False, sharey=True)
    for ax, a in zip(axes[0], attacks):
        if max_cost is not None:
            ax.axvspan(-100, max_cost, color="0.93", zorder=0)
            ax.axvline(max_cost, color="0.5", ls="--", lw=1)
        for d in names:
            g = df[(df["attack"] == a) & (df["defense"] == d)]
            ax.plot(g["cost"], g["ASR"], marker="o", ms=4, lw=1.3, color=palette[d], label=d)
            for _ in range(int(g["failed"].sum())):
                ax.scatter([0], [101], marker="x", s=40, color=palette[d], zorder=5)
            if chosen and d in chosen:
                c = g[g["setting"] == chosen[d]["setting"]]
                ax.scatter(c["cost"], c["ASR"], s=120, facecolors="none", edgecolors=palette[d], linewidths=2, zorder=5)
            if reference and d in reference:
                r = g[g["setting"] == reference[d]]
                ax.scatter(r["cost"], r["ASR"], s=70, marker="s", facecolors="none", edgecolors=palette[d], zorder=5)
        ax.set_xscale("symlog", linthresh=5)
        ticks = [t for t in (-2, 0, 1, 2, 3, 5, 10, 20, 40, 80) if t <= max(5.0, df["cost"].max() * 1.2)]
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.minorticks_off()
        ax.set_xlim(min(-1.0, df["cost"].min() - 0.5), max(5.0, df["cost"].max() * 1.3))
        ax.set_ylim(-3, 103)
        ax.set_title(a), ax.set_xlabel("BA cost (points lost; symlog axis)")
    axes[0, 0].set_ylabel("ASR after the defense (%)")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, ncols=min(7, len(labels)), loc="upper center", bbox_to_anchor=(0.5, 0.02))
    fig.suptitle(
        "Every defense across its tuning grid\n(mean over the tuning seeds"
        + ("; over the first only where it was far from being chosen there)\n(" if pruned else " · ")
        + "ring: the protocol's choice · "
        + ("square: the reference recipe · " if reference else "")
        + "grey: within the BA-cost bar"
        + (" · ×: a setting that diverged)" if failed else ")"),
        fontweight="bold",
        fontsize=10,
    )
    fig.tight_layout()
    return fig


def target_scores(rows: Sequence[Mapping], value: str = "p_target", max_cols: int = 3) -> plt.Figure:
    """Per attack, each model's mean target-class ``value`` on clean vs triggered non-target test
    images (bars: mean over seeds, error bars: std)."""
    import pandas as pd

    df = pd.DataFrame(rows)
    attacks = list(dict.fromkeys(df["attack"]))
    order = list(dict.fromkeys(df["model"]))
    ncols = min(max_cols, len(attacks))
    nrows = -(-len(attacks) // ncols)
    width = max(4.2, 0.85 * len(order) + 1.0)
    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, 3.8 * nrows), squeeze=False, sharey=True)
    for ax, a in zip(axes.flat, attacks):
        sns.barplot(
            df[df["attack"] == a],
            x="model",
            y=value,
            hue="images",
            order=order,
            hue_order=["clean", "triggered"],
            palette=["0.65", METRIC_COLORS["ASR"]],
            errorbar="sd",
            capsize=0.15,
            err_kws={"linewidth": 1},
            ax=ax,
        )
        ax.set_title(a), ax.set_xlabel("")
        ax.tick_params(axis="x", rotation=30)
        for label in ax.get_xticklabels():
            label.set_horizontalalignment("right")
        ax.get_legend().remove()
    for ax in axes.flat[len(attacks) :]:
        ax.set_visible(False)
    for row in axes:
        row[0].set_ylabel(
            {"p_target": "target-class probability (%)", "margin": "target logit − best other"}.get(value, value)
        )
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, [f"{lb} test images" for lb in labels], ncols=2, loc="upper center", bbox_to_anchor=(0.5, 0.02))
    fig.tight_layout()
    return fig
