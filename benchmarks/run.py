"""`make bench`: run every benchmarks/bench_*.py (or the ones named) and print the ratios each measures in one run.

Each bench module exposes `main() -> None`, printing its own table of measured ratios. Benchmarks never assert a
time: these machines are shared and noisy, so targets are read off the printed ratios.

`--out DIR` also writes each benchmark's printed output to DIR/<name>.txt (atomically, when it finishes), with the
machine and the git commit on its first lines: `make bench` keeps them in results/bench/, and `make docs-bench`
publishes them to docs/results/benchmarks/, the files the README's benchmark figures are read from.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import pkgutil
import sys
import time
from pathlib import Path

import benchmarks


class _Tee(io.TextIOBase):
    def __init__(self, *streams):
        self.streams = streams

    def write(self, text: str) -> int:
        for s in self.streams:
            s.write(text)
        return len(text)

    def flush(self) -> None:
        for s in self.streams:
            s.flush()


def _header() -> str:
    from keras_initkit.study.engines import cpu_count
    from keras_initkit.study.report import cpu_model, git_commit, package_versions

    versions = package_versions()
    return (
        f"# {time.strftime('%Y-%m-%d %H:%M:%S %z')}; git {git_commit()}; {cpu_model()}, {cpu_count()} usable CPUs; "
        + ", ".join(
            f"{k} {versions[k]}" for k in ("keras", "tensorflow-cpu", "tensorflow", "jax", "torch") if k in versions
        )
        + "\n"
    )


def main(argv: list[str] | None = None) -> int:
    names = sorted(m.name for m in pkgutil.iter_modules(benchmarks.__path__) if m.name.startswith("bench_"))
    wanted = list(argv if argv is not None else sys.argv[1:])
    out = None
    if "--out" in wanted:
        i = wanted.index("--out")
        if i + 1 >= len(wanted):
            print("error: --out needs a folder", file=sys.stderr)
            return 2
        out = Path(wanted[i + 1])
        del wanted[i : i + 2]
    if wanted:
        unknown = [w for w in wanted if f"bench_{w}" not in names and w not in names]
        if unknown:
            print(f"error: unknown benchmark {unknown}; choose from {[n[6:] for n in names]}", file=sys.stderr)
            return 2
        names = [n for n in names if n in wanted or n[6:] in wanted]
    for name in names:
        print(f"\n== {name[6:]} ==", flush=True)
        buffer = io.StringIO()
        t0 = time.perf_counter()
        with contextlib.redirect_stdout(_Tee(sys.stdout, buffer)):
            importlib.import_module(f"benchmarks.{name}").main()
            print(f"({name[6:]} took {time.perf_counter() - t0:.0f} s)", flush=True)
        if out is not None:
            from keras_initkit import fileio

            out.mkdir(parents=True, exist_ok=True)
            fileio.atomic_write_text(out / f"{name[6:]}.txt", _header() + buffer.getvalue())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
