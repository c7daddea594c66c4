"""The Ray engine: a local Ray instance (every CPU unless told otherwise) runs the toy study's trials as tasks and
gives the serial engine's tables; without Ray, --engine ray names the extra to install."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd
import pytest

from keras_initkit.study import cli, engines, runner

TOY = str(Path(__file__).with_name("toy_study.py"))


def test_without_ray_the_engine_names_the_extra(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    with pytest.raises(ImportError, match=r'pip install "keras_initkit\[ray\]"'):
        engines.RayEngine(num_cpus=2)
    with pytest.raises(ImportError, match=r'pip install "keras_initkit\[ray\]"'):
        engines.make_engine("ray", jobs=2)
    monkeypatch.chdir(tmp_path)
    assert cli.main([TOY, "--engine", "ray", "--out", "out"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "argument --engine" in err and 'pip install "keras_initkit[ray]"' in err
    assert list(tmp_path.iterdir()) == []


def test_ray_engine_validates_resources():
    pytest.importorskip("ray")
    with pytest.raises(ValueError, match="cpus_per_trial"):
        engines.RayEngine(num_cpus=2, cpus_per_trial=0)
    with pytest.raises(ValueError, match="gpus_per_trial"):
        engines.RayEngine(num_cpus=2, gpus_per_trial=-0.5)


def test_without_jobs_ray_uses_the_clusters_cpus():
    pytest.importorskip("ray")
    assert engines.make_engine("ray").num_cpus is None  # ray.init() then takes every CPU (and GPU) of the machine
    assert engines.make_engine("ray", jobs=3, cpus_per_trial=2).num_cpus == 6
    assert engines.make_engine("ray", jobs=3, address="auto").num_cpus is None  # an existing cluster decides
    assert cli.build_parser().parse_args([TOY, "--engine", "ray"]).jobs is None


@pytest.mark.slow  # ~50 s on 2 loaded cores, most of it starting Ray and TensorFlow in its workers
def test_ray_local_instance_equals_serial(tmp_path):
    pytest.importorskip("ray")
    toy = runner.load_study(TOY)
    serial = runner.run_study(toy, profile="quick", out_dir=tmp_path / "serial", plot=False, progress=False)
    got = runner.run_study(toy, profile="quick", out_dir=tmp_path / "ray", engine="ray", progress=False)
    meta = json.loads((tmp_path / "ray" / "toy" / "quick" / "meta.json").read_text())
    assert meta["jobs"] >= 1  # no jobs given: the local instance takes every CPU, and meta.json says how many
    assert got.counts == serial.counts == {"ok": 4, "failed": 0, "diverged": 0}
    assert all(r.engine == "ray" for r in got.records)
    assert len({r.worker for r in got.records}) >= 1 and all(r.worker != serial.records[0].worker for r in got.records)
    for name in ("curves", "final"):
        pd.testing.assert_frame_equal(got.tables[name], serial.tables[name], check_exact=True)
    for name in ("accuracy", "claims"):
        pd.testing.assert_frame_equal(got.summary[name], serial.summary[name], check_exact=True)
    # the same trial files: a serial rerun over the Ray results resumes everything
    again = runner.run_study(toy, profile="quick", out_dir=tmp_path / "ray", plot=False, progress=False)
    assert again.counts == got.counts
    assert [r.engine for r in again.records] == ["ray"] * 4
