"""`make bench`: run every benchmarks/bench_*.py (or the ones named) and print the ratios each measures in one run.

Each bench module exposes `main() -> None`, printing its own table of measured ratios. Benchmarks never assert a
time: these machines are shared and noisy, so targets are read off the printed ratios.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
import time

import benchmarks


def main(argv: list[str] | None = None) -> int:
    names = sorted(m.name for m in pkgutil.iter_modules(benchmarks.__path__) if m.name.startswith("bench_"))
    wanted = argv if argv is not None else sys.argv[1:]
    if wanted:
        unknown = [w for w in wanted if f"bench_{w}" not in names and w not in names]
        if unknown:
            print(f"error: unknown benchmark {unknown}; choose from {[n[6:] for n in names]}", file=sys.stderr)
            return 2
        names = [n for n in names if n in wanted or n[6:] in wanted]
    for name in names:
        print(f"\n== {name[6:]} ==", flush=True)
        t0 = time.perf_counter()
        importlib.import_module(f"benchmarks.{name}").main()
        print(f"({name[6:]} took {time.perf_counter() - t0:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
