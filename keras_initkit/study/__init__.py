"""Reproducible studies: trial grids, engines (serial, process, Ray), resumable per-trial files and reports.

A study is one module following the contract in docs/DESIGN.md; `run_study(module, ...)` runs it and
`main(NAME, argv)` is the command line its own `main()` hands over to; `available_studies()` lists the packaged ones
(keras_initkit.studies) without importing them. Names are imported lazily, so that
`keras_initkit.study.grid` stays light for the modules that only need seeds and ids.
"""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
import sys

from keras_initkit.study.grid import derive_seed, expand_grid, trial_id

STUDIES_PACKAGE = "keras_initkit.studies"

_LAZY = {
    "run_study": "runner",
    "run_in_process": "runner",
    "plot_study": "runner",
    "load_study": "runner",
    "StudyResult": "runner",
    "StudyWarning": "runner",
    "StudyInterrupted": "runner",
    "UsageError": "runner",
    "Engine": "engines",
    "SerialEngine": "engines",
    "ProcessEngine": "engines",
    "RayEngine": "engines",
    "make_engine": "engines",
}

__all__ = ["available_studies", "derive_seed", "entry_points", "expand_grid", "main", "trial_id", *sorted(_LAZY)]


def available_studies() -> list[str]:
    """Names of the study modules in keras_initkit.studies (studies/<name>.py), found without importing any."""
    try:
        spec = importlib.util.find_spec(STUDIES_PACKAGE)
    except ImportError:
        return []
    if spec is None or not spec.submodule_search_locations:
        return []
    modules = pkgutil.iter_modules(list(spec.submodule_search_locations))
    return sorted(m.name for m in modules if not m.name.startswith("_"))


def main(name: str, argv: list[str] | None = None) -> int:
    """The command line of study `name` (what a study module's `main()` returns): see keras_initkit.study.cli."""
    from keras_initkit.study import cli

    return cli.main(argv, study=name)


def entry_points(module_name: str):
    """A study module's `run(cfg)` and `main(argv)`, bound to it: `run, main = entry_points(__name__)`.

    `run(cfg)`: the whole study serially in this process, no files (`runner.run_in_process`: the trials' tables
    concatenated in grid order, plus `summarize(cfg, them)`). `main(argv)`: the study's command line.
    """
    study_main = main

    def run(cfg):
        from keras_initkit.study.runner import run_in_process

        return run_in_process(sys.modules[module_name], cfg)

    def run_main(argv: list[str] | None = None) -> int:
        return study_main(sys.modules[module_name].NAME, argv)

    run.__doc__ = (
        "Serial run of the whole study in this process, no files: the trials' tables and summarize(cfg, them)."
    )
    run_main.__doc__ = "The study's command line (python -m keras_initkit study NAME ...)."
    return run, run_main


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f"keras_initkit.study.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'keras_initkit.study' has no attribute {name!r}")
