"""The top-level namespace: every public name resolves, heavy modules load on first use."""

import subprocess
import sys

import pytest

import keras_initkit as ki


def test_every_public_name_resolves():
    for name in ki.__all__:
        assert getattr(ki, name) is not None, name
    assert ki.VarianceMonitor is ki.monitor.VarianceMonitor
    assert ki.predict_variance is ki.theory.predict_variance
    assert ki.variance_vs_depth is ki.plots.variance_vs_depth
    assert ki.datasets.load is not None


def test_unknown_name_raises_attribute_error():
    with pytest.raises(AttributeError, match="no_such_thing"):
        ki.no_such_thing  # noqa: B018


def test_plots_load_on_first_use_only():
    code = "import sys, keras_initkit; assert not {'keras_initkit.plots', 'seaborn'} & set(sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
