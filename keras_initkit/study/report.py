"""meta.json (the environment of a run), REPORT.md (claims, setup, tables, figures, environment) and publishing.

The setup table documents each Config field with the comment written above it (or at the end of its line) in the
study's source: the contract asks for a comment on each field, so the report reads them rather than repeating them.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib.metadata
import io
import json
import os
import platform
import subprocess
import sys
import textwrap
import time
import tokenize
from pathlib import Path
from types import ModuleType
from typing import Any

import pandas as pd

from keras_initkit import fileio
from keras_initkit.study import store

PACKAGES = (
    "keras_initkit",
    "keras",
    "tensorflow",
    "tensorflow-cpu",
    "jax",
    "torch",
    "numpy",
    "pandas",
    "pyarrow",
    "matplotlib",
    "seaborn",
    "scikit-learn",
    "ray",
)
MAX_REPORT_ROWS = 40
COMMAND = "python -m keras_initkit study"
# what `publish` copies from a run's folder; every other file in the destination (PREREGISTRATION.md) is left alone
PUBLISHED = ("REPORT.md", "meta.json", "claims.csv", "figures/*.png", "tables/*.csv")


def dump_json(obj: Any) -> str:
    return json.dumps(obj, indent=1, sort_keys=False, default=str) + "\n"


def load_json(path: str | os.PathLike) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


def package_versions() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def devices() -> list[str]:
    """Physical devices as the Keras backend sees them ("CPU:0", "GPU:0 (NVIDIA H200)")."""
    try:
        import keras

        backend = keras.config.backend()
        if backend == "tensorflow":
            import tensorflow as tf

            out = []
            for d in tf.config.list_physical_devices():
                name = d.name.replace("/physical_device:", "")
                try:
                    model = tf.config.experimental.get_device_details(d).get("device_name")
                except Exception:  # not every device type has details
                    model = None
                out.append(f"{name} ({model})" if model else name)
            return out
        if backend == "jax":
            import jax

            return [str(d) for d in jax.devices()]
        return [backend]
    except Exception as e:  # the report must not fail over the environment
        return [f"unknown ({type(e).__name__}: {e})"]


def cpu_model() -> str | None:
    """The CPU's model name ("AMD EPYC 7B13"), from /proc/cpuinfo on Linux, else what `platform` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith(("model name", "hardware")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def git_commit(cwd: str | os.PathLike | None = None) -> str | None:
    """HEAD's commit (with "+dirty" when tracked files have changes), or None outside a git checkout.

    The committed study reports under docs/results/ are outputs, not inputs: publishing one (`make docs-results`)
    leaves the next study's commit clean.
    """
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", ":(top)", ":(top,exclude)docs/results"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def build_meta(
    module: ModuleType,
    cfg: Any,
    *,
    profile: str,
    label: str,
    data: str | None,
    engine,
    deterministic: bool,
    records: list[store.TrialRecord],
    counts: dict[str, int],
    wall_s: float,
    argv: list[str] | None,
    resumed: int,
) -> dict[str, Any]:
    import keras

    from keras_initkit.study.engines import cpu_count
    from keras_initkit.study.runner import config_json

    return {
        "study": module.NAME,
        "profile": profile,
        "folder": label,
        "data": data,
        "config": config_json(cfg),
        "seeds": sorted({r.seed for r in records if r.seed is not None}),
        **engine.describe(),
        "deterministic": deterministic,
        "trials": {"total": len(records), **counts, "resumed": resumed},
        "failed": [{"id": r.id, "trial": r.trial, "error": r.error} for r in records if r.status == "failed"],
        "diverged": [{"id": r.id, "trial": r.trial, "error": r.error} for r in records if r.status == "diverged"],
        "trial_wall_s": round(sum(r.wall_s for r in records), 3),
        "wall_s": round(wall_s, 3),
        "finished": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "command": argv,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "cpu_model": cpu_model(),
        "usable_cpus": cpu_count(),
        "keras_backend": keras.config.backend(),
        "devices": devices(),
        "packages": package_versions(),
        "git_commit": git_commit(),
    }


def config_comments(cls: type) -> dict[str, str]:
    """Field name -> the comment on it in the class source (comment lines right above, then a trailing one)."""
    try:
        source = textwrap.dedent(__import__("inspect").getsource(cls))
    except (OSError, TypeError):
        return {}
    lines = source.splitlines()
    trailing: dict[int, str] = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT and lines[tok.start[0] - 1][: tok.start[1]].strip():
            trailing[tok.start[0]] = tok.string.lstrip("#").strip()
    out = {}
    for node in ast.parse(source).body[0].body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        above = []
        j = node.lineno - 2
        while j >= 0 and lines[j].strip().startswith("#"):
            above.insert(0, lines[j].strip().lstrip("#").strip())
            j -= 1
        after = [trailing[i] for i in range(node.lineno, (node.end_lineno or node.lineno) + 1) if i in trailing]
        out[node.target.id] = " ".join(above + after)
    return out


def _cell(value: Any) -> str:
    text = str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def frame_to_markdown(frame: pd.DataFrame, max_rows: int | None = MAX_REPORT_ROWS) -> str:
    """A DataFrame as a GitHub markdown table (floats to 4 significant digits), cut at `max_rows` with a note."""
    shown = frame if max_rows is None or len(frame) <= max_rows else frame.head(max_rows)
    shown = shown.copy()
    for col in shown.columns:
        if shown[col].dtype == object:
            shown[col] = shown[col].map(_cell)
    shown.columns = [_cell(c) for c in shown.columns]
    if shown.empty:
        text = "| " + " | ".join(shown.columns) + " |\n|" + "---|" * len(shown.columns) + "\n"
    else:
        text = shown.to_markdown(index=False, floatfmt=".4g")
    if len(shown) < len(frame):
        text += f"\n\n({len(frame) - len(shown)} more rows in the parquet file)"
    return text


def _value(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    if len(text) > 160:
        text = text[:157] + "..."
    return f"`{text}`".replace("|", "\\|")


def setup_table(module: ModuleType, cfg: Any) -> str:
    from keras_initkit.study.runner import config_json

    comments = config_comments(type(cfg))
    values = config_json(cfg)
    rows = ["| field | value | meaning |", "|---|---|---|"]
    for f in dataclasses.fields(cfg):
        rows.append(f"| `{f.name}` | {_value(values.get(f.name))} | {_cell(comments.get(f.name, ''))} |")
    return "\n".join(rows)


def _doc_intro(module: ModuleType) -> str:
    doc = (module.__doc__ or "").strip()
    return doc


def render_report(
    module: ModuleType, cfg: Any, summary: dict[str, pd.DataFrame], meta: dict[str, Any], figures: list[str]
) -> str:
    """REPORT.md's text; links are relative to the report's folder (figures/...), so a copy elsewhere works."""
    claims = summary["claims"]
    trials = meta["trials"]
    out = [f"# {module.NAME}: {meta['folder']} profile", ""]
    intro = _doc_intro(module)
    if intro:
        out += [intro, ""]
    cmd = f"{COMMAND} {module.NAME} --profile {meta['profile']}"
    if meta.get("data"):
        cmd += f" --data {meta['data']}"
    out += [f"Regenerate: `{cmd}`. Finished {meta['finished']} in {meta['wall_s']:.0f} s.", ""]
    if trials["total"] and trials["resumed"] == trials["total"]:
        out += [f"Every trial ({trials['total']}) was resumed from an earlier run; the time is that run's.", ""]

    out += ["## Claims of the paper", "", "| claim | statement |", "|---|---|"]
    out += [f"| {_cell(k)} | {_cell(v)} |" for k, v in module.CLAIMS.items()]
    out += ["", "## Result", ""]
    counts = claims["status"].value_counts()
    n_pass = int(counts.get("PASS", 0))
    others = ", ".join(f"{int(counts[s])} {s}" for s in ("FAIL", "INCONCLUSIVE", "N/A") if counts.get(s, 0))
    out += [f"{n_pass} of {len(claims)} claims PASS" + (f" ({others})." if others else "."), ""]
    cols = ["claim", "status", "measured", "paper", "rule"]
    out += [frame_to_markdown(claims[cols], max_rows=None), ""]
    missing = [k for k in module.CLAIMS if k not in set(claims["claim"])]
    if missing:
        out += [f"Not evaluated by this profile: {', '.join(missing)}.", ""]

    out += ["## Trials", ""]
    out += [
        f"{trials['total']} trials: {trials['ok']} ok, {trials['diverged']} diverged, {trials['failed']} failed "
        f"({trials['resumed']} resumed from an earlier run). Trial compute time {meta['trial_wall_s']:.0f} s.",
        "",
    ]
    for kind in ("failed", "diverged"):
        if meta.get(kind):
            out += [f"{kind.capitalize()} trials:", ""]
            out += [f"- `{r['id']}` {_cell(json.dumps(r['trial']))}: {_cell(r['error'])}" for r in meta[kind][:20]]
            if len(meta[kind]) > 20:
                out += [f"- ... and {len(meta[kind]) - 20} more (meta.json)"]
            out += [""]

    out += ["## Setup", "", setup_table(module, cfg), ""]

    out += ["## Tables", ""]
    for name, frame in summary.items():
        if name == "claims":
            continue
        out += [f"### {name}", "", frame_to_markdown(frame), ""]

    if figures:
        out += ["## Figures", ""]
        for fig in figures:
            out += [f"### {Path(fig).stem}", "", f"![{Path(fig).stem}]({fig})", ""]

    out += ["## Environment", "", "| | |", "|---|---|"]
    env = {
        "engine": f"{meta['engine']} (jobs {meta['jobs']}, threads/worker {meta.get('threads_per_worker')})",
        "cpu": f"{meta.get('cpu_model')} ({meta.get('usable_cpus')} of {meta.get('cpus')} cores usable)",
        "deterministic": meta["deterministic"],
        "keras backend": meta["keras_backend"],
        "devices": ", ".join(meta["devices"]),
        "python": meta["python"],
        "platform": meta["platform"],
        "git commit": meta["git_commit"],
        "packages": ", ".join(f"{k} {v}" for k, v in meta["packages"].items()),
        "seeds": ", ".join(map(str, meta["seeds"])),
    }
    out += [f"| {k} | {_cell(v)} |" for k, v in env.items()]
    return "\n".join(out) + "\n"


def publish(root: Path, dest: Path) -> list[Path]:
    """Copy a run's REPORT.md, meta.json, claims.csv, figures and summary tables (as tables/<name>.csv) to `dest`.

    Stale figures and tables in `dest` are removed; any other file there (a PREREGISTRATION.md) is left untouched.
    Returns the files written.
    """
    from keras_initkit.study.runner import read_frames

    files = {name: (root / name).read_bytes() for name in ("REPORT.md", "meta.json", "claims.csv")}
    files.update({f"figures/{fig.name}": fig.read_bytes() for fig in sorted((root / "figures").glob("*.png"))})
    for name, frame in read_frames(root / "tables").items():
        if name != "claims":
            files[f"tables/{name}.csv"] = fileio.frame_bytes(frame, ".csv")
    for name, data in files.items():
        fileio.atomic_write_bytes(dest / name, data)
    for pattern in PUBLISHED:
        for stale in dest.glob(pattern):
            if stale.relative_to(dest).as_posix() not in files:
                stale.unlink()
    for folder in ("figures", "tables"):
        if (dest / folder).is_dir() and not any((dest / folder).iterdir()):
            (dest / folder).rmdir()
    return [dest / name for name in files]
