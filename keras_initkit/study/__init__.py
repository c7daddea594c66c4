"""Reproducible studies: trial grids, engines (serial, process, Ray), resumable per-trial files and reports.

A study is one module following the contract in docs/DESIGN.md; `run_study(module, ...)` runs it and
`main(NAME, argv)` is the command line its own `main()` hands over to. Names are imported lazily, so that
`keras_initkit.study.grid` stays light for the modules that only need seeds and ids.
"""

from __future__ import annotations

import importlib

from keras_initkit.study.grid import derive_seed, expand_grid, trial_id

_LAZY = {
    "run_study": "runner",
    "run_in_process": "runner",
    "plot_study": "runner",
    "load_study": "runner",
    "StudyResult": "runner",
    "StudyWarning": "runner",
    "UsageError": "runner",
    "Engine": "engines",
    "SerialEngine": "engines",
    "ProcessEngine": "engines",
    "RayEngine": "engines",
    "make_engine": "engines",
}

__all__ = ["derive_seed", "expand_grid", "main", "trial_id", *sorted(_LAZY)]


def main(name: str, argv: list[str] | None = None) -> int:
    """The command line of study `name` (what a study module's `main()` returns): see keras_initkit.study.cli."""
    from keras_initkit.study import cli

    return cli.main(argv, study=name)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f"keras_initkit.study.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'keras_initkit.study' has no attribute {name!r}")
