"""Command line of the study runner.

    python -m keras_initkit.study.cli STUDY [--profile quick|paper] [--engine serial|process|ray] [--jobs N]
        [--data NAME] [--data-path PATH] [--out DIR] [--deterministic] [--no-resume] [--plot-only]
        [--address ADDR] [--cpus-per-trial C] [--gpus-per-trial G] [--docs-dir DIR | --no-docs]

STUDY is a module name in studies/ (sigmoid_vs_relu), a dotted module name or a path to a .py file. Bad input
gives one line `error: argument X: ...` naming the allowed values, exit code 2, and nothing written.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings

from keras_initkit.study.engines import ENGINES, RAY_MISSING

DOCS_DIR = os.path.join("docs", "results")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, no usage block
        self.exit(2, f"{self.prog}: error: {message}\n")


def _int_at_least(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}. Received: {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}. Received: {value}")
        return value

    return parse


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number >= 0. Received: {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be a number >= 0. Received: {value}")
    return value


def build_parser(study: str | None = None) -> argparse.ArgumentParser:
    prog = "python -m keras_initkit.study.cli" if study is None else study
    p = _Parser(prog=prog, description="Run a reproducible study: trials, tables, claims, figures, REPORT.md.")
    if study is None:
        p.add_argument("study", metavar="STUDY", help="a study in studies/, a dotted module name or a .py path")
    p.add_argument("--profile", default="quick", help="a key of the study's PROFILES (quick, paper)")
    p.add_argument("--engine", default="serial", choices=ENGINES, help="where trials run")
    p.add_argument("--jobs", type=_int_at_least(1), default=1, help="process workers, or local Ray CPUs / trial CPUs")
    p.add_argument("--data", default=None, help="override the Config's data set")
    p.add_argument("--data-path", default=None, help="override the Config's data_path (must exist)")
    p.add_argument("--out", default="results", help="results root (default: results)")
    p.add_argument("--deterministic", action="store_true", help="TensorFlow op determinism in every worker")
    p.add_argument("--no-resume", action="store_true", help="run every trial again, ignoring finished trial files")
    p.add_argument("--plot-only", action="store_true", help="redraw figures and REPORT.md from saved tables")
    p.add_argument("--address", default=None, help="Ray cluster address (--engine ray; default: a local instance)")
    p.add_argument("--cpus-per-trial", type=_int_at_least(1), default=None, help="Ray CPUs per trial (default 1)")
    p.add_argument("--gpus-per-trial", type=_fraction, default=None, help="Ray GPUs per trial, e.g. 0.5 (default 0)")
    p.add_argument("--docs-dir", default=DOCS_DIR, help="where the quick profile's report is copied (docs/results)")
    p.add_argument("--no-docs", action="store_true", help="do not copy the quick report to --docs-dir")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return p


def _fail(prog: str, message: str) -> int:
    print(f"{prog}: error: {message}", file=sys.stderr)
    return 2


def _claims_text(claims) -> str:
    from tabulate import tabulate

    rows = []
    for _, r in claims.iterrows():
        measured = str(r["measured"])
        rows.append([r["claim"], r["status"], measured if len(measured) <= 70 else measured[:67] + "...", r["paper"]])
    return tabulate(
        rows, headers=["claim", "status", "measured", "paper"], tablefmt="simple", maxcolwidths=[8, 6, 70, 30]
    )


def main(argv: list[str] | None = None, study: str | None = None) -> int:
    """Parse, validate (exit 2 on bad input, nothing written), run or re-plot, print the claims and report path."""
    parser = build_parser(study)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    prog = parser.prog
    from keras_initkit.study import runner

    name = study if study is not None else args.study
    ray_only = {
        "--address": args.address,
        "--cpus-per-trial": args.cpus_per_trial,
        "--gpus-per-trial": args.gpus_per_trial,
    }
    try:
        if args.engine != "ray":
            for option, value in ray_only.items():
                if value is not None:
                    raise runner.UsageError(option, f"only applies to --engine ray. Received: --engine {args.engine}")
        elif args.engine == "ray":
            try:
                import ray  # noqa: F401
            except ImportError:
                raise runner.UsageError("--engine", RAY_MISSING) from None
        if args.plot_only and args.no_resume:
            raise runner.UsageError("--plot-only", "cannot be combined with --no-resume (it never runs trials)")
        module = _load(runner, name, study is not None)
        runner.check_contract(module)
        cfg = runner.resolve_config(module, args.profile, None, args.data, args.data_path)
        label = runner.profile_label(args.profile, args.data, module)
        root = runner.study_dir(args.out, module.NAME, label)
        if args.plot_only and not (root / "tables" / "claims.parquet").is_file():
            raise runner.UsageError("--plot-only", f"no saved tables under {root}; run the study first")
        if os.path.exists(args.out) and not os.path.isdir(args.out):
            raise runner.UsageError("--out", f"must be a directory. Received: {args.out!r}")
    except runner.UsageError as e:
        return _fail(prog, str(e))

    docs_dir = None if (args.no_docs or label != "quick") else args.docs_dir
    if args.plot_only:
        report = runner.plot_study(module, cfg, args.profile, args.out, data=args.data, docs_dir=docs_dir)
        claims = runner.read_frames(root / "tables")["claims"]
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("always", runner.StudyWarning)
            formatwarning, warnings.formatwarning = warnings.formatwarning, _one_line_warning
            try:
                result = runner.run_study(
                    module,
                    cfg,
                    args.profile,
                    out_dir=args.out,
                    engine=args.engine,
                    jobs=args.jobs,
                    resume=not args.no_resume,
                    deterministic=args.deterministic,
                    data=args.data,
                    docs_dir=docs_dir,
                    progress=not args.no_progress,
                    address=args.address,
                    cpus_per_trial=args.cpus_per_trial or 1,
                    gpus_per_trial=args.gpus_per_trial or 0.0,
                    argv=[prog, *(sys.argv[1:] if argv is None else argv)],
                )
            finally:
                warnings.formatwarning = formatwarning
        report, claims = result.report, result.claims
        c = result.counts
        print(
            f"{module.NAME} ({label}): {sum(c.values())} trials, {c['ok']} ok, {c['diverged']} diverged, "
            f"{c['failed']} failed, {result.wall_s:.0f} s"
        )
    print(_claims_text(claims))
    print(f"Report: {report}")
    if docs_dir is not None:
        print(f"Copied to: {os.path.join(docs_dir, module.NAME, 'REPORT.md')}")
    return 0


def _load(runner, name: str, fixed: bool):
    """The study by name; `python my_study.py` (a study outside studies/) is loaded from its file under its stem."""
    try:
        return runner.load_study(name)
    except runner.UsageError:
        main_module = sys.modules.get("__main__")
        if fixed and getattr(main_module, "NAME", None) == name and getattr(main_module, "__file__", None):
            return runner.load_study(main_module.__file__)
        raise


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    return f"{category.__name__}: {message}\n"


if __name__ == "__main__":
    raise SystemExit(main())
