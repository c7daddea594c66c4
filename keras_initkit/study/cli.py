"""Command line of the study runner.

    python -m keras_initkit study STUDY [--profile P] [--engine serial|process|ray] [--jobs N] [--out DIR]
        [--publish DIR] [--data NAME] [--data-path PATH] [--deterministic] [--no-resume] [--plot-only]
        [--address ADDR] [--cpus-per-trial C] [--gpus-per-trial G] [--no-progress]

(`keras-initkit study ...` is the same command; `python -m keras_initkit.study.cli STUDY ...` an alias.) STUDY is a
module of keras_initkit.studies (vgg_depth), a dotted module name or a path to a .py file. `--help` answers before
Keras is imported. Bad input gives one line `error: argument X: ...`, exit code 2, and nothing written; Ctrl-C
stops the workers, keeps the finished trials, prints the command that resumes and exits with 130.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import tempfile
import warnings
from pathlib import Path

from keras_initkit.study.engines import ENGINES, RAY_MISSING, cpu_count

MODULE_COMMAND = "python -m keras_initkit"
SCRIPT = "keras-initkit"
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for a Ctrl-C


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, no usage block
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


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


def _studies_text() -> str:
    from keras_initkit.study import available_studies

    return ", ".join(available_studies()) or "(none installed)"


def add_study_arguments(p: argparse.ArgumentParser, fixed: bool = False) -> None:
    """The study command's options (and its STUDY argument unless the study is `fixed`), each with its default."""
    if not fixed:
        p.add_argument(
            "study", metavar="STUDY", help=f"{_studies_text()}; or a dotted module name, or a path to a .py file"
        )
    p.add_argument("--profile", default="quick", help="the study's PROFILES key: quick, paper, smoke (%(default)s)")
    p.add_argument("--engine", default="process", choices=ENGINES, help="where trials run (%(default)s)")
    p.add_argument(
        "--jobs",
        type=_int_at_least(1),
        default=None,
        help=f"trials at once: process workers, or local Ray CPUs (default: every core, {cpu_count()} here; "
        "--engine ray: the Ray cluster's CPUs)",
    )
    p.add_argument("--out", default="results", help="results root; a run writes only under it (%(default)s)")
    p.add_argument(
        "--publish",
        metavar="DIR",
        default=None,
        help="also copy REPORT.md, figures, claims.csv, the summary tables (CSV) and meta.json to DIR/<study>/, "
        "e.g. docs/results (default: none)",
    )
    p.add_argument(
        "--compare",
        metavar="DIR",
        default=None,
        help="after the run, compare the claims' verdicts with DIR/<study>/claims.csv when that file is from the "
        "same profile and data, e.g. docs/results (default: none)",
    )
    p.add_argument("--data", default=None, help="override the Config's data set (default: the profile's)")
    p.add_argument("--data-path", default=None, help="override the Config's data_path, must exist (default: none)")
    p.add_argument("--deterministic", action="store_true", help="TensorFlow op determinism in every worker (off)")
    p.add_argument("--no-resume", action="store_true", help="run every trial again, ignoring finished trials (off)")
    p.add_argument("--plot-only", action="store_true", help="redraw figures and REPORT.md from saved tables (off)")
    p.add_argument("--address", default=None, help="Ray cluster address (--engine ray; default: a local instance)")
    p.add_argument("--cpus-per-trial", type=_int_at_least(1), default=None, help="Ray CPUs per trial (default: 1)")
    p.add_argument("--gpus-per-trial", type=_fraction, default=None, help="Ray GPUs per trial, e.g. 0.5 (default: 0)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar (off)")


_DESCRIPTION = "Run a reproducible study: trials, tables, claims, figures, REPORT.md (all under --out)."


def build_parser(study: str | None = None, prog: str | None = None) -> argparse.ArgumentParser:
    """The study command's parser; `study` fixes the study (a study module's own `main()`)."""
    p = _Parser(prog=prog or f"{MODULE_COMMAND}.study.cli", description=_DESCRIPTION)
    add_study_arguments(p, fixed=study is not None)
    return p


def build_command_parser(prog: str = MODULE_COMMAND) -> argparse.ArgumentParser:
    """`python -m keras_initkit`'s parser: the subcommands `study` and `doctor`."""
    from keras_initkit import __version__

    p = _Parser(prog=prog, description="keras_initkit: initializers, signal propagation and reproducible studies.")
    p.add_argument("--version", action="version", version=f"keras_initkit {__version__}")
    commands = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser, required=True)
    study = commands.add_parser("study", help="run a study: " + _studies_text(), description=_DESCRIPTION)
    add_study_arguments(study)
    from keras_initkit import doctor  # imports this module: not at the top

    d = commands.add_parser(
        "doctor",
        help="flag the layers of a saved model whose signal vanishes or explodes",
        description=doctor.DESCRIPTION,
        epilog=doctor.RULES,
    )
    doctor.add_arguments(d)
    return p


def command(argv: list[str] | None = None, prog: str | None = None) -> int:
    """`python -m keras_initkit COMMAND ...` / `keras-initkit COMMAND ...`."""
    argv = sys.argv[1:] if argv is None else list(argv)
    prog = prog or MODULE_COMMAND
    args = build_command_parser(prog).parse_args(argv)
    if args.command == "doctor":
        from keras_initkit import doctor

        return doctor.run(args, f"{prog} doctor")
    return _run(args, f"{prog} {args.command}", args.study, argv[argv.index(args.command) + 1 :])


def main(argv: list[str] | None = None, study: str | None = None) -> int:
    """`python -m keras_initkit.study.cli STUDY ...`, or a study module's own `main()` when `study` is given."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if study is None:
        args = build_parser().parse_args(argv)
        return _run(args, f"{MODULE_COMMAND}.study.cli", args.study, argv)
    prog = _fixed_prog(study)
    args = build_parser(study, prog).parse_args(argv)
    return _run(args, prog, study, argv, fixed=True)


def _fixed_prog(study: str) -> str:
    """How to call a study module's own command again: by name when it is a packaged study, else by its file."""
    from keras_initkit.study import available_studies

    if study in available_studies():
        return f"{MODULE_COMMAND} study {study}"
    main_file = getattr(sys.modules.get("__main__"), "__file__", None)
    return f"python {shlex.quote(os.path.relpath(main_file))}" if main_file else study


def _fail(prog: str, message: str) -> int:
    print(f"{prog}: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def check_writable(argument: str, path: str) -> None:
    """`path` is, or can be created as, a folder this process can write in (a probe folder is made and removed)."""
    from keras_initkit.study.runner import UsageError

    target = Path(path).absolute()
    if target.exists() and not target.is_dir():
        raise UsageError(argument, f"must be a directory. Received: {path!r}")
    parent = next(p for p in (target, *target.parents) if p.exists())
    if not parent.is_dir():
        raise UsageError(argument, f"must be a directory; {str(parent)!r} is a file. Received: {path!r}")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".keras_initkit-probe-", dir=parent))
    except OSError as e:
        raise UsageError(argument, f"cannot write in {str(parent)!r} ({e.strerror}). Received: {path!r}") from None


def _claims_text(claims) -> str:
    from tabulate import tabulate

    rows = []
    for _, r in claims.iterrows():
        measured = str(r["measured"])
        rows.append([r["claim"], r["status"], measured if len(measured) <= 70 else measured[:67] + "...", r["paper"]])
    return tabulate(
        rows, headers=["claim", "status", "measured", "paper"], tablefmt="simple", maxcolwidths=[8, 12, 70, 30]
    )


def compare_claims(claims, folder: Path, profile: str, label: str) -> str:
    """One line (or a few): do these claims' verdicts match the published run's in `folder` (claims.csv and
    meta.json of the same profile and data)? Numbers are not compared: a rerun's measured values can move within
    their confidence intervals; the verdicts must not."""
    import json

    import pandas as pd

    path = folder / "claims.csv"
    try:
        meta = json.loads((folder / "meta.json").read_text())
        published = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, ValueError) as e:
        return f"Compare: no published claims to compare with in {folder} ({type(e).__name__})"
    if (meta.get("profile"), meta.get("folder")) != (profile, label):
        return f"Compare: {path} is from profile {meta.get('folder')!r}, not {label!r}: not compared"
    old = dict(zip(published["claim"], published["status"], strict=True))
    new = dict(zip(claims["claim"].astype(str), claims["status"].astype(str), strict=True))
    diffs = [f"{c}: {old.get(c, '-')} -> {new.get(c, '-')}" for c in sorted(old.keys() | new.keys())
             if old.get(c) != new.get(c)]  # fmt: skip
    if not diffs:
        return f"Compare: verdicts identical to {path} ({len(new)} claims)"
    return f"Compare: verdicts DIFFER from {path}: " + "; ".join(diffs)


def _validate(args: argparse.Namespace, name: str, fixed: bool):
    """Everything that can be checked before a file is written; raises runner.UsageError."""
    from keras_initkit.study import runner

    ray_only = {
        "--address": args.address,
        "--cpus-per-trial": args.cpus_per_trial,
        "--gpus-per-trial": args.gpus_per_trial,
    }
    if args.engine != "ray":
        for option, value in ray_only.items():
            if value is not None:
                raise runner.UsageError(option, f"only applies to --engine ray. Received: --engine {args.engine}")
    else:
        try:
            import ray  # noqa: F401
        except ImportError:
            raise runner.UsageError("--engine", RAY_MISSING) from None
    if args.plot_only and args.no_resume:
        raise runner.UsageError("--plot-only", "cannot be combined with --no-resume (it never runs trials)")
    module = _load(runner, name, fixed)
    runner.check_contract(module)
    cfg = runner.resolve_config(module, args.profile, None, args.data, args.data_path)
    label = runner.profile_label(args.profile, args.data, module)
    root = runner.study_dir(args.out, module.NAME, label)
    if args.plot_only and not (root / "tables" / "claims.parquet").is_file():
        raise runner.UsageError("--plot-only", f"no saved tables under {root}; run the study first")
    check_writable("--out", args.out)
    if args.publish is not None:
        check_writable("--publish", args.publish)
    return module, cfg, label


def resume_command(prog: str, argv: list[str]) -> str:
    """The command line that picks an interrupted run up: the same one, without --no-resume."""
    return " ".join([prog, *(shlex.quote(a) for a in argv if a != "--no-resume")])


def _run(args: argparse.Namespace, prog: str, name: str, argv: list[str], fixed: bool = False) -> int:
    """Validate (exit 2 on bad input, nothing written), run or re-plot, print the claims and the report's path."""
    from keras_initkit.study import runner

    try:
        module, cfg, label = _validate(args, name, fixed)
    except runner.UsageError as e:
        return _fail(prog, str(e))

    if args.plot_only:
        report = runner.plot_study(module, cfg, args.profile, args.out, data=args.data, publish=args.publish)
        claims = runner.read_frames(runner.study_dir(args.out, module.NAME, label) / "tables")["claims"]
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
                    publish=args.publish,
                    progress=not args.no_progress,
                    address=args.address,
                    cpus_per_trial=args.cpus_per_trial or 1,
                    gpus_per_trial=args.gpus_per_trial or 0.0,
                    argv=[prog, *argv],
                )
            except runner.StudyInterrupted as e:
                print(
                    f"{prog}: interrupted: {e.done} of {e.total} trials finished and kept under {e.folder}; "
                    f"resume with: {resume_command(prog, argv)}",
                    file=sys.stderr,
                )
                return EXIT_INTERRUPTED
            finally:
                warnings.formatwarning = formatwarning
        report, claims = result.report, result.claims
        c = result.counts
        print(
            f"{module.NAME} ({label}): {sum(c.values())} trials ({result.resumed} resumed), {c['ok']} ok, "
            f"{c['diverged']} diverged, {c['failed']} failed, {result.wall_s:.0f} s"
        )
    print(_claims_text(claims))
    if args.compare is not None:
        print(compare_claims(claims, Path(args.compare) / module.NAME, args.profile, label))
    print(f"Report: {report}")
    if args.publish is not None:
        print(f"Published to: {os.path.join(args.publish, module.NAME)}")
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
