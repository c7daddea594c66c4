"""The papers' figures, drawn from tidy frames: variance vs depth, statistics over training, layer histograms, bands.

Each function reads a frame as `VarianceMonitor` (`to_frame()`, `histogram_frame()`, `unit_frame()`) and
`theory.predict_variance` write it, with any extra columns a study adds (init, activation, depth_of_net, seed);
it filters and, where several rows share a point (seeds), averages them for display, but never recomputes a
statistic from tensors. Figures are drawn on a new `matplotlib.figure.Figure` without pyplot (no global state, any
backend; `fig.savefig("x.png")` renders with Agg) and returned.

    fig = variance_vs_depth(monitor.to_frame(), kind="preact", hue="step", predicted=predict_variance(model))
    fig.savefig("variance.png")
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

__all__ = [
    "learning_curves",
    "layer_histograms",
    "palette",
    "percentile_bands",
    "stat_over_training",
    "variance_vs_depth",
]

# How each kind reads on an axis.
KIND_LABELS = {
    "preact": "s",
    "activation": "f(s)",
    "grad_preact": "dC/ds",
    "grad_activation": "dC/df(s)",
    "kernel": "W",
    "grad_kernel": "dC/dW",
}
PANEL_WIDTH, PANEL_HEIGHT = 4.2, 3.3


def _label(kind: str) -> str:
    return KIND_LABELS.get(kind, kind)


def _check_frame(frame, name: str, columns: Sequence[str]) -> None:
    if not isinstance(frame, pd.DataFrame):
        raise ValueError(f"`{name}` must be a pandas DataFrame. Received: {name} of type {type(frame).__name__}")
    missing = [c for c in columns if c is not None and c not in frame.columns]
    if missing:
        raise ValueError(f"`{name}` must have the columns {missing}. Received columns: {list(frame.columns)}")


def _check_column(frame: pd.DataFrame, arg: str, column) -> None:
    if column is not None and column not in frame.columns:
        raise ValueError(
            f"`{arg}` must be a column of the frame (or None). Received: {arg}={column!r}; "
            f"columns: {list(frame.columns)}"
        )


def _where(frame: pd.DataFrame, name: str, column: str, value) -> pd.DataFrame:
    """Rows with frame[column] == value; a ValueError naming the values present when there is none."""
    rows = frame[frame[column] == value]
    if rows.empty:
        present = sorted(frame[column].dropna().unique().tolist())
        raise ValueError(f"`{name}` has no rows with {column} == {value!r}. Present: {present}")
    return rows


def _step(frame: pd.DataFrame, name: str, step) -> pd.DataFrame:
    if "step" not in frame.columns or step is None:
        return frame
    if step == "first":
        step = frame["step"].min()
    elif step == "last":
        step = frame["step"].max()
    return _where(frame, name, "step", step)


def _levels(frame: pd.DataFrame, column) -> list:
    return [None] if column is None else sorted(frame[column].dropna().unique().tolist(), key=_sort_key)


def _sort_key(v):
    return (0, v, "") if isinstance(v, (int, float, np.number)) else (1, 0, str(v))


def _subset(frame: pd.DataFrame, column, level) -> pd.DataFrame:
    return frame if column is None or column not in frame.columns else frame[frame[column] == level]


def _panels(n: int, sharey: bool = True, height: float = PANEL_HEIGHT):
    fig = Figure(figsize=(PANEL_WIDTH * n, height), layout="constrained")
    axes = fig.subplots(1, n, squeeze=False, sharey=sharey)[0]
    return fig, list(axes)


def _title(ax, col, level, title, fig, i):
    if col is not None:
        ax.set_title(f"{col} = {level}")
    if title is not None and i == 0:
        fig.suptitle(title)


def _layer_order(frame: pd.DataFrame) -> list:
    """Layer names ordered by depth (input side first)."""
    return frame.groupby("layer", sort=False)["depth"].min().sort_values(kind="stable").index.tolist()


def _chosen_layers(data: pd.DataFrame, layers, kind: str, what: str) -> list:
    """The frame's layers in depth order, or those of `layers` (each must be present)."""
    order = _layer_order(data)
    if layers is None:
        return order
    unknown = [name for name in layers if name not in order]
    if unknown:
        raise ValueError(f"`layers` names layers without {kind!r} {what}: {unknown}. Present: {order}")
    return [name for name in order if name in layers]


def palette(levels: Sequence) -> dict:
    """Level -> colour, the one palette of every figure with a `hue`: seaborn's default colour cycle over `levels` in
    the order given (the figures pass their sorted levels). A study that wants one colour per level across figures
    (even where a figure lacks some levels) builds it once over all its levels and passes it as `palette=`.

    Example:
    >>> colors = palette(["GlorotAvg", "He"])  # {"GlorotAvg": (r, g, b), "He": (r, g, b)}
    """
    levels = list(levels)
    return dict(zip(levels, sns.color_palette(n_colors=len(levels)), strict=True)) if levels else {}


def _hue_palette(hues: list, given: dict | None) -> dict:
    if given is None:
        return palette(hues)
    missing = [h for h in hues if h not in given]
    if missing:
        raise ValueError(f"`palette` must give a colour to every hue level. Missing: {missing}")
    return given


def _layer_colors(layers: list) -> dict:
    return dict(zip(layers, sns.color_palette("viridis", n_colors=len(layers)), strict=True)) if layers else {}


def variance_vs_depth(
    frame: pd.DataFrame,
    kind: str = "preact",
    *,
    x: str = "depth",
    stat: str = "var",
    hue: str | None = "auto",
    col: str | None = None,
    predicted: pd.DataFrame | None = None,
    step: int | str | None = 0,
    logy: bool = True,
    errorbar="sd",
    title: str | None = None,
    palette: dict | None = None,
) -> Figure:
    """Per-layer statistic (the variance by default) against depth, one line per `hue` level: He et al. Eq 8-10,
    Glorot & Bengio Fig 6-7 summarized. With `predicted` (a `theory.predict_variance` frame, optionally carrying
    the same `hue`/`col` columns), the theory is drawn dashed beside each measured line.

    Example:
    >>> fig = variance_vs_depth(layers, kind="preact", hue="init", col="depth_of_net", predicted=theory_frame)

    Args:
        frame: tidy frame with columns depth, kind, value (stat, step optional) and the `hue`/`col` columns.
        kind: which tensor ("preact", "activation", "grad_preact", ...).
        x: the column of the monitored layer's index ("depth", as the monitor and the theory write it).
        stat: which statistic, where the frame has a `stat` column.
        hue: column giving one line (color) per level, or None; "auto" (default): the `init` column where the frame
            has one (a study's table), else None (a plain `monitor.to_frame()`).
        col: column giving one panel per level, or None.
        predicted: theory rows (depth, kind, value), dashed; matched to the panels and colors by `col`/`hue` when
            it has those columns, else one black dashed line per panel. A kind it has no rows for (the theory
            predicts "preact", "activation" and "grad_preact") gets no dashed line.
        step: the step to show where the frame has a `step` column (0: at initialization; "first", "last", or None
            for all rows).
        logy: log-scaled y axis.
        errorbar: seaborn's errorbar over rows sharing a point (e.g. seeds): "sd", ("pi", 100), None, ...
        palette: `hue` level -> colour (default: `palette` over the sorted levels present).

    Returns:
        The Figure, one axes per `col` level.
    """
    _check_frame(frame, "frame", [x, "kind", "value"])
    if hue == "auto":
        hue = "init" if "init" in frame.columns else None
    _check_column(frame, "hue", hue)
    _check_column(frame, "col", col)
    data = _where(frame, "frame", "kind", kind)
    if "stat" in data.columns:
        data = _where(data, "frame", "stat", stat)
    data = _step(data, "frame", step)
    pred = None
    if predicted is not None:
        _check_frame(predicted, "predicted", [x, "kind", "value"])
        pred = predicted[predicted["kind"] == kind]  # the theory covers some kinds only: none, no dashed line
        if "stat" in pred.columns:
            pred = pred[pred["stat"] == stat]
    hues, cols = _levels(data, hue), _levels(data, col)
    colors = _hue_palette(hues, palette) if hue else {}
    fig, axes = _panels(len(cols))
    for i, (ax, level) in enumerate(zip(axes, cols, strict=True)):
        sub = _subset(data, col, level)
        sns.lineplot(
            data=sub,
            x=x,
            y="value",
            hue=hue,
            hue_order=hues if hue else None,
            palette=colors if hue else None,
            marker="o",
            errorbar=errorbar,
            ax=ax,
            legend=i == 0,
            **({} if hue else {"label": "measured"}),
        )
        if pred is not None and not pred.empty:
            p = _subset(pred, col, level)
            by_hue = hue is not None and hue in p.columns
            for h in hues if by_hue else [None]:
                line = _subset(p, hue, h).groupby(x)["value"].mean()
                color = colors[h] if by_hue else "black"
                ax.plot(line.index, line.to_numpy(), linestyle="--", color=color, linewidth=1.2)
            if i == 0:
                handles, labels = ax.get_legend_handles_labels()
                handles.append(Line2D([], [], color="gray" if by_hue else "black", linestyle="--"))
                labels.append("theory")
                ax.legend(handles, labels, title=hue)
        if logy:
            ax.set_yscale("log")
        ax.set_xlabel("depth (monitored layer)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(f"{'Var' if stat == 'var' else stat}({_label(kind)})")
        _title(ax, col, level, title, fig, i)
    return fig


def stat_over_training(
    frame: pd.DataFrame,
    kind: str = "activation",
    *,
    center: str = "mean",
    spread: str | None = "std",
    layers: Sequence[str] | None = None,
    col: str | None = None,
    logx: bool = False,
    title: str | None = None,
) -> Figure:
    """A statistic of each layer over training with a band of +-`spread`: Glorot & Bengio Fig 2 (mean and standard
    deviation of the sigmoid activations of each hidden layer, over learning).

    Example:
    >>> fig = stat_over_training(monitor.to_frame(), kind="activation", col="init")

    Args:
        frame: tidy frame with columns step, layer, depth, kind, stat, value (+ the `col` column).
        kind: which tensor.
        center: the statistic drawn as the line ("mean", "p50", ...).
        spread: the statistic giving the band center +- spread ("std"), or None for lines only.
        layers: layer names to draw (default: all, ordered by depth).
        col: column giving one panel per level, or None. Rows sharing (panel, layer, step), e.g. seeds, are
            averaged.
        logx: log-scaled step axis (for a log-spaced schedule, `every="log"`).

    Returns:
        The Figure: per panel one line (and band) per layer, colored by depth.
    """
    _check_frame(frame, "frame", ["step", "layer", "depth", "kind", "stat", "value"])
    _check_column(frame, "col", col)
    data = _where(frame, "frame", "kind", kind)
    stats = [center] + ([spread] if spread is not None else [])
    for s in stats:
        _where(data, "frame", "stat", s)
    data = data[data["stat"].isin(stats)]
    order = _chosen_layers(data, layers, kind, "rows")
    colors = _layer_colors(order)
    cols = _levels(data, col)
    fig, axes = _panels(len(cols))
    for i, (ax, level) in enumerate(zip(axes, cols, strict=True)):
        sub = _subset(data, col, level)
        table = sub.pivot_table(index=["layer", "step"], columns="stat", values="value", aggfunc="mean")
        for name in order:
            if name not in table.index.get_level_values("layer"):
                continue
            rows = table.loc[name].sort_index()
            steps, mid = rows.index.to_numpy(), rows[center].to_numpy()
            ax.plot(steps, mid, color=colors[name], marker=".", label=name)
            if spread is not None:
                half = rows[spread].to_numpy()
                ax.fill_between(steps, mid - half, mid + half, color=colors[name], alpha=0.2, linewidth=0)
        if logx:
            ax.set_xscale("symlog", linthresh=1.0)
        ax.set_xlabel("step")
        ax.set_ylabel(f"{center} {'+- ' + spread + ' ' if spread else ''}of {_label(kind)}")
        if i == 0:
            ax.legend(title="layer", fontsize="small")
        _title(ax, col, level, title, fig, i)
    return fig


def _histogram_columns(frame: pd.DataFrame) -> tuple[str, str, str]:
    """(left edge, right edge, height) column names: the monitor's, or bin_left/bin_right/count|density."""
    left = "left" if "left" in frame.columns else "bin_left"
    right = "right" if "right" in frame.columns else "bin_right"
    height = next((c for c in ("value", "density", "count") if c in frame.columns), "value")
    _check_frame(frame, "hist_frame", ["layer", "depth", "kind", left, right, height])
    return left, right, height


def layer_histograms(
    hist_frame: pd.DataFrame,
    kind: str = "activation",
    *,
    step: int | str | None = "first",
    layers: Sequence[str] | None = None,
    col: str | None = None,
    logy: bool = False,
    title: str | None = None,
) -> Figure:
    """Per-layer histograms, one line per layer over the bin centers: Glorot & Bengio Fig 6 (activation values)
    and Fig 7 (back-propagated gradients), at initialization by default.

    Example:
    >>> fig = layer_histograms(monitor.histogram_frame(), kind="grad_preact", col="init")

    Args:
        hist_frame: long-form histograms as `VarianceMonitor.histogram_frame()` (step, layer, depth, kind, left,
            right, value: the fraction of elements in the bin), or with bin_left/bin_right and count/density.
        kind: which tensor.
        step: the step to show ("first": the earliest, i.e. at initialization; "last"; an int; None: all rows,
            averaged).
        layers: layer names to draw (default: all, ordered by depth).
        col: column giving one panel per level (e.g. "init": the standard vs normalized panels of Fig 6).
        logy: log-scaled y axis (to see the tails).

    Returns:
        The Figure.
    """
    left, right, height = _histogram_columns(hist_frame)
    _check_column(hist_frame, "col", col)
    data = _step(_where(hist_frame, "hist_frame", "kind", kind), "hist_frame", step)
    order = _chosen_layers(data, layers, kind, "histograms")
    colors = _layer_colors(order)
    cols = _levels(data, col)
    fig, axes = _panels(len(cols))
    for i, (ax, level) in enumerate(zip(axes, cols, strict=True)):
        sub = _subset(data, col, level)
        for name in order:
            rows = sub[sub["layer"] == name]
            if rows.empty:
                continue
            bins = rows.groupby([left, right], sort=True)[height].mean().reset_index()
            centers = 0.5 * (bins[left].to_numpy() + bins[right].to_numpy())
            ax.plot(centers, bins[height].to_numpy(), color=colors[name], label=name)
        if logy:
            ax.set_yscale("log")
        ax.set_xlabel(f"{_label(kind)} value")
        ax.set_ylabel({"value": "fraction of elements", "count": "count", "density": "density"}[height])
        if i == 0:
            ax.legend(title="layer", fontsize="small")
        _title(ax, col, level, title, fig, i)
    return fig


def percentile_bands(
    frame: pd.DataFrame,
    kind: str = "preact",
    *,
    layer: str | None = None,
    unit: int | None = None,
    col: str | None = None,
    percentiles: Sequence[str] = ("p15", "p50", "p85"),
    logx: bool = False,
    title: str | None = None,
) -> Figure:
    """Percentiles of one layer's (or one unit's) values over training: Ioffe & Szegedy Fig 1b/c (the 15th, 50th
    and 85th percentiles of a last-hidden-layer unit's sigmoid input, without and with batch normalization).

    Example:
    >>> fig = percentile_bands(monitor.unit_frame(), kind="preact", col="bn")

    Args:
        frame: `VarianceMonitor.to_frame()` (a layer's elements) or `.unit_frame()` (one unit: a `unit` column),
            with columns step, layer, depth, kind, stat, value (+ the `col` column).
        kind: which tensor.
        layer: the layer to show (default: the deepest with `kind` rows).
        unit: the unit, where the frame has a `unit` column (default: the only one present).
        col: column giving one panel per level, or None. Rows sharing (panel, step), e.g. seeds, are averaged.
        percentiles: three stat names: lower, middle, upper (the band spans lower..upper, the middle is bold).
        logx: log-scaled step axis.

    Returns:
        The Figure: per panel three lines and the band between the outer two.
    """
    _check_frame(frame, "frame", ["step", "layer", "depth", "kind", "stat", "value"])
    _check_column(frame, "col", col)
    if len(percentiles) != 3 or isinstance(percentiles, str):
        raise ValueError(f"`percentiles` must name three stats (lower, middle, upper). Received: {percentiles!r}")
    data = _where(frame, "frame", "kind", kind)
    if layer is None:
        layer = _layer_order(data)[-1]
    data = _where(data, "frame", "layer", layer)
    if "unit" in data.columns:
        units = sorted(data["unit"].unique().tolist())
        if unit is None and len(units) > 1:
            raise ValueError(f"`unit` must be given: the frame tracks several units {units}. Received: unit=None")
        data = _where(data, "frame", "unit", units[0] if unit is None else unit)
    for s in percentiles:
        _where(data, "frame", "stat", s)
    data = data[data["stat"].isin(percentiles)]
    cols = _levels(data, col)
    fig, axes = _panels(len(cols))
    color = sns.color_palette()[0]
    lo_name, mid_name, hi_name = percentiles
    for i, (ax, level) in enumerate(zip(axes, cols, strict=True)):
        table = _subset(data, col, level).pivot_table(index="step", columns="stat", values="value", aggfunc="mean")
        steps = table.index.to_numpy()
        lo, mid, hi = (table[s].to_numpy() for s in percentiles)
        ax.fill_between(steps, lo, hi, color=color, alpha=0.2, linewidth=0)
        ax.plot(steps, lo, color=color, linewidth=0.8, label=lo_name)
        ax.plot(steps, mid, color=color, linewidth=2.0, label=mid_name)
        ax.plot(steps, hi, color=color, linewidth=0.8, linestyle="--", label=hi_name)
        if logx:
            ax.set_xscale("symlog", linthresh=1.0)
        ax.set_xlabel("step")
        who = f"{layer}, unit {data['unit'].iloc[0]}" if "unit" in data.columns else layer
        ax.set_ylabel(f"percentiles of {_label(kind)} ({who})")
        if i == 0:
            ax.legend(fontsize="small")
        _title(ax, col, level, title, fig, i)
    return fig


LINESTYLES = ("-", "--", ":", "-.")


def learning_curves(
    frame: pd.DataFrame,
    y: str = "loss",
    *,
    x: str = "step",
    hue: str | None = None,
    col: str | None = None,
    style: str | None = None,
    units: str | None = None,
    hue_order: Sequence | None = None,
    col_order: Sequence | None = None,
    palette: dict | None = None,
    col_label: str = "{col} = {level}",
    logy: bool = False,
    ylim: tuple[float, float] | None = None,
    xlabel: str = "step",
    ylabel: str | None = None,
    title: str | None = None,
) -> Figure:
    """A training curve (loss, held-out error or accuracy against updates) per `hue` (colour) and `style` (line
    style) level, one panel per `col` level: He et al. Fig 2-3, Glorot & Bengio's error curves, Ioffe & Szegedy
    Fig 1a.

    With `units` (e.g. "seed"), one thin line per unit; without, the mean over the rows sharing a point (seeds) as a
    line and their min-max range as a band.

    Example:
    >>> fig = learning_curves(curves, "loss", hue="init", col="depth", units="seed", col_label="{level} layers")

    Args:
        frame: tidy curves, one row per (run, x): the columns `x`, `y` and the `hue`/`col`/`style`/`units` ones.
        y: the column drawn.
        x: the column of the horizontal axis.
        hue: column giving one colour per level, or None.
        col: column giving one panel per level, or None.
        style: column giving one line style per level (up to 4), or None.
        units: column giving one line per level within a (hue, style), or None (mean line and min-max band).
        hue_order, col_order: the levels in order (default: sorted levels present).
        palette: hue level -> colour (default: `palette(hue_order)`).
        col_label: panel title, formatted with `col` and `level`.
        logy: log-scaled y axis.
        ylim: y limits.
        xlabel, ylabel: axis labels (ylabel default: `y`).
        title: the figure's title.

    Returns:
        The Figure, one axes per `col` level sharing the y axis, a legend of the hue (and style) levels below.
    """
    _check_frame(frame, "frame", [x, y])
    for arg, column in (("hue", hue), ("col", col), ("style", style), ("units", units)):
        _check_column(frame, arg, column)
    if frame.empty:
        raise ValueError("`frame` must have rows. Received: an empty frame")
    hues = list(hue_order) if hue_order is not None else _levels(frame, hue)
    cols = list(col_order) if col_order is not None else _levels(frame, col)
    styles = _levels(frame, style)
    if len(styles) > len(LINESTYLES):
        raise ValueError(f"`style` must have at most {len(LINESTYLES)} levels. Received: {len(styles)} ({styles})")
    colors = _hue_palette(hues, palette) if hue else {None: sns.color_palette()[0]}
    dashes = dict(zip(styles, LINESTYLES, strict=False))
    fig, axes = _panels(len(cols), height=PANEL_HEIGHT + 0.4)
    for ax, level in zip(axes, cols, strict=True):
        sub = _subset(frame, col, level)
        for h in hues:
            for st in styles:
                part = _subset(_subset(sub, hue, h), style, st)
                if part.empty:
                    continue
                color, ls = colors[h], dashes[st]
                if units is not None:
                    for _, run in part.groupby(units, sort=True):
                        run = run.sort_values(x)
                        ax.plot(run[x].to_numpy(), run[y].to_numpy(), color=color, ls=ls, lw=1.0, alpha=0.8)
                else:
                    g = part.groupby(x)[y].agg(["mean", "min", "max"]).sort_index()
                    ax.plot(g.index.to_numpy(), g["mean"].to_numpy(), color=color, ls=ls, lw=1.4)
                    ax.fill_between(g.index.to_numpy(), g["min"].to_numpy(), g["max"].to_numpy(), color=color,
                                    alpha=0.15, linewidth=0)  # fmt: skip
        if logy:
            ax.set_yscale("log")
        if ylim is not None:
            ax.set_ylim(*ylim)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
        if col is not None:
            ax.set_title(col_label.format(col=col, level=level), fontsize=10)
    axes[0].set_ylabel(ylabel or y)
    handles, labels = [], []
    for h in hues if hue else []:
        handles.append(Line2D([], [], color=colors[h]))
        labels.append(str(h))
    for st in styles if style else []:
        handles.append(Line2D([], [], color="gray", ls=dashes[st]))
        labels.append(f"{style} = {st}")
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 6), frameon=False)
    if title is not None:
        fig.suptitle(title, fontsize=10)
    return fig
