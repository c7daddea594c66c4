"""keras_initkit.plots: each figure drawn from a small synthetic tidy frame, rendered to PNG (Agg), and checked on
what the axes hold: the plotted numbers are the frame's numbers, one line/band per level, labels, log scales."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import PolyCollection
from matplotlib.figure import Figure

from keras_initkit.plots import layer_histograms, percentile_bands, stat_over_training, variance_vs_depth

LAYERS = ["dense", "dense_1", "dense_2", "dense_3"]
STATS = ("mean", "var", "std", "p15", "p50", "p85")


def _monitor_frame() -> pd.DataFrame:
    """Monitor-style rows for two inits x two seeds x three steps x four layers x three kinds x six stats."""
    rows = []
    for init_i, init in enumerate(["GlorotAvg", "StandardUniform"]):
        for seed in (0, 1):
            for step in (0, 50, 100):
                for depth, layer in enumerate(LAYERS):
                    for kind in ("preact", "activation", "grad_preact"):
                        var = 2.0 ** (-depth * (1 + init_i)) * (1 + 0.1 * seed) * (1 + step / 100)
                        values = {"mean": 0.5 - 0.1 * depth + 0.001 * step, "var": var, "std": np.sqrt(var)}
                        values.update(p15=-1.0 - depth - step / 100, p50=0.01 * step, p85=1.0 + depth + step / 100)
                        for stat in STATS:
                            rows.append((step, 0, layer, depth, kind, stat, values[stat], False, init, seed))
    cols = ["step", "epoch", "layer", "depth", "kind", "stat", "value", "diverged", "init", "seed"]
    return pd.DataFrame(rows, columns=cols)


def _predicted(init: str | None = None) -> pd.DataFrame:
    rows = [(layer, d, "preact", "var", 0.9 * 2.0**-d) for d, layer in enumerate(LAYERS)]
    frame = pd.DataFrame(rows, columns=["layer", "depth", "kind", "stat", "value"])
    return frame if init is None else frame.assign(init=init)


def _data_lines(ax):
    return [line for line in ax.lines if len(line.get_xdata()) > 0]


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    data = buf.getvalue()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000
    return data


def test_figures_need_no_pyplot_state():
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    fig = variance_vs_depth(_monitor_frame())
    assert isinstance(fig, Figure) and plt.get_fignums() == before  # not registered with pyplot: nothing leaks
    _png(fig)


def test_variance_vs_depth_lines_per_hue_mean_over_seeds_log_scale():
    frame = _monitor_frame()
    fig = variance_vs_depth(frame, kind="preact", hue="init")
    (ax,) = fig.axes
    _png(fig)
    assert ax.get_yscale() == "log"
    assert ax.get_xlabel() == "depth (monitored layer)" and ax.get_ylabel() == "Var(s)"
    lines = _data_lines(ax)
    assert len(lines) == 2  # one per init
    assert len([c for c in ax.collections if isinstance(c, PolyCollection)]) == 2  # +-sd over the two seeds
    expected = frame.query("kind == 'preact' and stat == 'var' and step == 0 and init == 'GlorotAvg'")
    expected = expected.groupby("depth")["value"].mean().to_numpy()
    np.testing.assert_allclose(lines[0].get_ydata(), expected)  # the frame's numbers (step 0, seeds averaged)
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["GlorotAvg", "StandardUniform"]


def test_variance_vs_depth_with_theory_and_facets():
    frame = _monitor_frame()
    predicted = pd.concat([_predicted("GlorotAvg"), _predicted("StandardUniform").assign(value=lambda f: f.value / 2)])
    fig = variance_vs_depth(frame, hue="init", col="seed", predicted=predicted, step="last", errorbar=None)
    assert len(fig.axes) == 2 and [a.get_title() for a in fig.axes] == ["seed = 0", "seed = 1"]
    _png(fig)
    for ax in fig.axes:
        dashed = [line for line in _data_lines(ax) if line.get_linestyle() == "--"]
        solid = [line for line in _data_lines(ax) if line.get_linestyle() == "-"]
        assert len(dashed) == 2 and len(solid) == 2
        np.testing.assert_allclose(dashed[0].get_ydata(), 0.9 * 2.0 ** -np.arange(4))
        np.testing.assert_allclose(dashed[1].get_ydata(), 0.45 * 2.0 ** -np.arange(4))
        assert dashed[0].get_color() == solid[0].get_color()  # theory drawn in its init's color
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert legend[-1] == "theory"
    # last step, seed 1, GlorotAvg: var = 2^-d * 1.1 * 2
    np.testing.assert_allclose(_data_lines(fig.axes[1])[0].get_ydata(), 2.0 ** -np.arange(4) * 1.1 * 2)


def test_variance_vs_depth_single_run_and_errors():
    frame = _monitor_frame().query("init == 'GlorotAvg' and seed == 0").drop(columns=["init", "seed"])
    fig = variance_vs_depth(frame, kind="grad_preact", hue=None, predicted=_predicted(), logy=False)
    (ax,) = fig.axes
    assert ax.get_yscale() == "linear" and ax.get_ylabel() == "Var(dC/ds)"
    assert len(_data_lines(ax)) == 1  # no theory rows for grad_preact in this predicted frame: nothing dashed
    by_step = variance_vs_depth(frame, hue="step", step=None)
    assert len(_data_lines(by_step.axes[0])) == 3  # one line per recorded step
    with pytest.raises(ValueError, match="`hue` must be a column"):
        variance_vs_depth(frame, hue="init")  # no init column
    with pytest.raises(ValueError, match="no rows with kind == 'kernel'.*Present"):
        variance_vs_depth(frame, kind="kernel", hue=None)
    with pytest.raises(ValueError, match="no rows with step == 7"):
        variance_vs_depth(frame, hue=None, step=7)
    with pytest.raises(ValueError, match="`frame` must have the columns \\['depth'\\]"):
        variance_vs_depth(frame.drop(columns="depth"), hue=None)
    with pytest.raises(ValueError, match="`frame` must be a pandas DataFrame"):
        variance_vs_depth({"depth": [0]})


def test_stat_over_training_bands_per_layer():
    frame = _monitor_frame().query("seed == 0")
    fig = stat_over_training(frame, kind="activation", col="init")
    assert len(fig.axes) == 2
    _png(fig)
    for ax in fig.axes:
        lines = _data_lines(ax)
        bands = [c for c in ax.collections if isinstance(c, PolyCollection)]
        assert len(lines) == len(LAYERS) == len(bands)
        assert [line.get_label() for line in lines] == LAYERS  # ordered by depth
        assert ax.get_xlabel() == "step" and ax.get_ylabel() == "mean +- std of f(s)"
    rows = frame.query("init == 'GlorotAvg' and kind == 'activation' and layer == 'dense_2'")
    mean = rows.query("stat == 'mean'").sort_values("step")["value"].to_numpy()
    std = rows.query("stat == 'std'").sort_values("step")["value"].to_numpy()
    line = _data_lines(fig.axes[0])[2]
    np.testing.assert_allclose(line.get_xdata(), [0, 50, 100])
    np.testing.assert_allclose(line.get_ydata(), mean)
    band = [c for c in fig.axes[0].collections if isinstance(c, PolyCollection)][2]
    ys = band.get_paths()[0].vertices[:, 1]
    assert ys.min() == pytest.approx((mean - std).min()) and ys.max() == pytest.approx((mean + std).max())
    only = stat_over_training(frame, layers=["dense_3"], spread=None, logx=True)
    assert len(_data_lines(only.axes[0])) == 1 and not only.axes[0].collections
    assert only.axes[0].get_xscale() == "symlog"
    with pytest.raises(ValueError, match="`layers` names layers without 'activation' rows: \\['nope'\\]"):
        stat_over_training(frame, layers=["nope"])
    with pytest.raises(ValueError, match="no rows with stat == 'iqr'"):
        stat_over_training(frame, spread="iqr")


def _hist_frame(names=("left", "right", "value")) -> pd.DataFrame:
    """Monitor-style long-form histograms: 2 steps x 3 layers x 10 bins on [-1, 1], two inits."""
    rows = []
    edges = np.linspace(-1.0, 1.0, 11)
    for init in ("StandardUniform", "GlorotAvg"):
        for step in (0, 10):
            for depth, layer in enumerate(LAYERS[:3]):
                width = 0.2 + 0.3 * depth if init == "GlorotAvg" else 0.5 / (1 + depth)
                weights = np.exp(-0.5 * ((edges[:-1] + 0.1) / width) ** 2) * (1 + step)
                weights /= weights.sum()
                for b in range(10):
                    rows.append((step, layer, depth, "activation", b, edges[b], edges[b + 1], weights[b], init))
    frame = pd.DataFrame(rows, columns=["step", "layer", "depth", "kind", "bin", "left", "right", "value", "init"])
    return frame.rename(columns=dict(zip(("left", "right", "value"), names, strict=True)))


def test_layer_histograms_one_line_per_layer():
    frame = _hist_frame()
    fig = layer_histograms(frame, kind="activation", col="init")
    assert [a.get_title() for a in fig.axes] == ["init = GlorotAvg", "init = StandardUniform"]
    _png(fig)
    for ax in fig.axes:
        lines = _data_lines(ax)
        assert [line.get_label() for line in lines] == LAYERS[:3]
        np.testing.assert_allclose(lines[0].get_xdata(), np.linspace(-0.9, 0.9, 10))  # bin centers
        assert ax.get_ylabel() == "fraction of elements" and ax.get_xlabel() == "f(s) value"
    expected = frame.query("init == 'StandardUniform' and step == 0 and layer == 'dense_1'")["value"].to_numpy()
    np.testing.assert_allclose(_data_lines(fig.axes[1])[1].get_ydata(), expected)  # step "first": at init


def test_layer_histograms_other_column_names_and_errors():
    frame = _hist_frame(("bin_left", "bin_right", "count")).query("init == 'GlorotAvg'")
    fig = layer_histograms(frame, step=10, layers=["dense_2"], logy=True)
    (ax,) = fig.axes
    assert len(_data_lines(ax)) == 1 and ax.get_yscale() == "log" and ax.get_ylabel() == "count"
    _png(fig)
    with pytest.raises(ValueError, match="`hist_frame` must have the columns"):
        layer_histograms(frame.drop(columns="bin_left"))
    with pytest.raises(ValueError, match="no rows with kind == 'grad_preact'"):
        layer_histograms(frame, kind="grad_preact")


def test_percentile_bands_layer_and_unit_frames():
    frame = _monitor_frame().query("seed == 0")
    fig = percentile_bands(frame, kind="preact", col="init")
    assert len(fig.axes) == 2
    _png(fig)
    ax = fig.axes[0]
    lines = _data_lines(ax)
    assert [line.get_label() for line in lines] == ["p15", "p50", "p85"]
    assert len([c for c in ax.collections if isinstance(c, PolyCollection)]) == 1  # the p15..p85 band
    assert ax.get_ylabel() == "percentiles of s (dense_3)"  # default: the deepest layer
    np.testing.assert_allclose(lines[0].get_ydata(), [-4.0, -4.5, -5.0])  # p15 of depth 3 over steps 0, 50, 100
    np.testing.assert_allclose(lines[1].get_ydata(), [0.0, 0.5, 1.0])
    units = frame.query("layer == 'dense_1'").assign(unit=7)
    fig = percentile_bands(units, layer="dense_1")
    assert fig.axes[0].get_ylabel() == "percentiles of s (dense_1, unit 7)"
    two = pd.concat([units, units.assign(unit=8)])
    with pytest.raises(ValueError, match="`unit` must be given"):
        percentile_bands(two)
    assert len(_data_lines(percentile_bands(two, unit=8).axes[0])) == 3
    with pytest.raises(ValueError, match="`percentiles` must name three stats"):
        percentile_bands(frame, percentiles=("p15", "p85"))
    with pytest.raises(ValueError, match="no rows with layer == 'nope'"):
        percentile_bands(frame, layer="nope")


def _curves() -> pd.DataFrame:
    rows = []
    for init in ("He", "Glorot"):
        for depth in (8, 30):
            for seed in (0, 1, 2):
                for step in range(0, 50, 10):
                    loss = 2.3 - step / (50 if init == "He" else 500) - 0.01 * seed
                    rows.append(dict(init=init, depth=depth, seed=seed, step=step, loss=loss, run="a"))
    return pd.DataFrame(rows)


def test_palette_is_the_hue_palette_of_every_figure():
    from keras_initkit.plots import palette

    colors = palette(["GlorotAvg", "StandardUniform"])
    fig = variance_vs_depth(_monitor_frame(), hue="init")
    lines = _data_lines(fig.axes[0])
    assert lines[0].get_color() == colors["GlorotAvg"] and lines[1].get_color() == colors["StandardUniform"]
    mine = {"GlorotAvg": "#ff0000", "StandardUniform": "#00ff00"}
    fig = variance_vs_depth(_monitor_frame(), hue="init", palette=mine)
    assert _data_lines(fig.axes[0])[0].get_color() == "#ff0000"
    with pytest.raises(ValueError, match="`palette` must give a colour to every hue level. Missing"):
        variance_vs_depth(_monitor_frame(), hue="init", palette={"GlorotAvg": "red"})
    assert palette([]) == {}


def test_variance_vs_depth_other_x_column():
    frame = _monitor_frame().rename(columns={"depth": "index"})
    fig = variance_vs_depth(frame, x="index", hue="init", predicted=_predicted().rename(columns={"depth": "index"}))
    assert len([ln for ln in _data_lines(fig.axes[0]) if ln.get_linestyle() == "--"]) == 1


def test_learning_curves_units_and_bands():
    from keras_initkit.plots import learning_curves, palette

    frame = _curves()
    fig = learning_curves(frame, "loss", hue="init", col="depth", units="seed", col_label="{level} layers")
    _png(fig)
    assert [a.get_title() for a in fig.axes] == ["8 layers", "30 layers"]
    lines = _data_lines(fig.axes[0])
    assert len(lines) == 6  # 2 inits x 3 seeds
    colors = palette(["Glorot", "He"])
    assert lines[0].get_color() == colors["Glorot"] and lines[3].get_color() == colors["He"]
    np.testing.assert_allclose(lines[3].get_ydata(), frame.query("init == 'He' and depth == 8 and seed == 0")["loss"])
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["Glorot", "He"]
    band = learning_curves(frame, "loss", hue="init", col="depth", style="run", hue_order=["He", "Glorot"], logy=True)
    ax = band.axes[0]
    assert ax.get_yscale() == "log" and len(_data_lines(ax)) == 2
    mean = frame.query("init == 'He' and depth == 8").groupby("step")["loss"].mean().to_numpy()
    np.testing.assert_allclose(_data_lines(ax)[0].get_ydata(), mean)
    polys = [c for c in ax.collections if isinstance(c, PolyCollection)]
    ys = polys[0].get_paths()[0].vertices[:, 1]
    lo = frame.query("init == 'He' and depth == 8")["loss"].min()
    assert len(polys) == 2 and ys.min() == pytest.approx(lo)
    assert [t.get_text() for t in band.legends[0].get_texts()] == ["He", "Glorot", "run = a"]
    single = learning_curves(frame.query("init == 'He' and depth == 8"), "loss")
    assert len(single.axes) == 1 and single.axes[0].get_ylabel() == "loss"
    with pytest.raises(ValueError, match="`hue` must be a column"):
        learning_curves(frame, "loss", hue="nope")
    with pytest.raises(ValueError, match="`frame` must have the columns \\['acc'\\]"):
        learning_curves(frame, "acc")
    with pytest.raises(ValueError, match="`frame` must have rows"):
        learning_curves(frame.iloc[:0], "loss")
