"""`python -m keras_initkit doctor MODEL.keras --data NAME_OR_FILE [--batch 256] [--json]`: does a model's signal
vanish or explode?

Loads a saved model (keras_initkit's initializers registered), feeds it one batch, measures each monitored layer's
forward (pre-activation) and backward (gradient at the pre-activation) variance at the current weights with the
`VarianceMonitor`, sets the theory's prediction beside them (`predict_variance`, the gradient chain anchored at the
top layer as `compare` does) and prints one table with a verdict per row (the rules: `RULES`, at the end).

The batch: `--data` names a data set of `keras_initkit.datasets` (its test split's first `--batch` examples, else
its training split's, with their labels), or a .npy file of inputs, or a .npz file with an array `x` (or a single
array) and optional labels `y`. An image is flattened (or a vector reshaped into the model's image shape) when the
model's input asks for it and the sizes match; any other mismatch is bad input. The backward rows need labels and a
model compiled with a loss (a model saved after `compile` is loaded compiled); without them only the forward rows
are measured. Both passes run in training mode, as `fit` does (the monitor's default).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys

from keras_initkit.study.cli import EXIT_USAGE, MODULE_COMMAND, _int_at_least, _Parser

__all__ = [
    "DOCTOR_COLUMNS",
    "EXPLODING",
    "RULES",
    "VANISHING",
    "add_arguments",
    "diagnose",
    "main",
    "recommended_initializer",
    "run",
]

VANISHING = 1e-2  # below this times the reference variance
EXPLODING = 1e2  # above this times the reference variance
DOCTOR_COLUMNS = ("layer", "depth", "kind", "measured", "predicted", "relative", "factor", "verdict", "advice")
EXIT_OK, EXIT_FLAGGED = 0, 1
KIND_NAMES = {"preact": "forward", "grad_preact": "backward"}
LSUV_HINT = "keras_initkit.lsuv(model, x)"
_RELU_LIKE = ("relu", "relu6")
_SLOPED = ("leaky_relu", "prelu")
RULES = (
    "Rules: a row is 'vanishing' when its variance is below 1e-2 times the reference, 'exploding' when above 1e2 "
    "times it, 'non-finite' when NaN or Inf; the reference is the first monitored layer's pre-activation variance "
    "(forward) and the topmost layer's gradient variance (backward, where back-propagation starts). A flagged row "
    'names the initializer its layer\'s activation calls for (He() for relu-like, GlorotAvg(gain=gain("tanh")) for '
    "tanh, GlorotAvg() for sigmoid and linear, GlorotFanIn(gain=gain(f)) for any other f) and keras_initkit.lsuv. "
    "Exit status: 0 nothing flagged, 1 something flagged, 2 bad input (one line on stderr)."
)
__doc__ = f"{__doc__}\n{RULES}\n"


class BadInput(ValueError):
    """Bad input to the doctor command: the argument it concerns and what is wrong (exit 2, one line)."""

    def __init__(self, argument: str, message: str):
        super().__init__(f"argument {argument}: {message}")


def recommended_initializer(activation: str | None, negative_slope: float | None = None) -> str:
    """The keras_initkit initializer a layer with this activation calls for, as code text.

    He() for relu and relu6, He(negative_slope=a) for leaky_relu and prelu, GlorotAvg(gain=gain("tanh")) for tanh,
    GlorotAvg() for sigmoid, linear and softmax, GlorotFanIn(gain=gain(f)) for any other activation f.
    """
    from keras_initkit.activations import spec

    name = spec(activation).name
    if name in _RELU_LIKE:
        return "He()"
    if name in _SLOPED:
        return "He()" if not negative_slope else f"He(negative_slope={negative_slope:g})"
    if name == "tanh":
        return 'GlorotAvg(gain=gain("tanh"))'
    if name in (None, "linear", "sigmoid", "softmax"):
        return "GlorotAvg()"
    return f'GlorotFanIn(gain=gain("{name}"))'


def _advice(target) -> str:
    from keras_initkit.activations import DEFAULT_NEGATIVE_SLOPE

    slope = getattr(target.layer, "negative_slope", None)
    if slope is None and target.activation == "leaky_relu":
        slope = DEFAULT_NEGATIVE_SLOPE
    slope = None if slope is None or not isinstance(slope, (int, float)) else float(slope)
    init = recommended_initializer(target.activation, slope)
    where = "its kernel" if target.kernel is not None else "the kernel below it"
    return f"{init} for {where} ({target.activation or 'linear'}), or {LSUV_HINT}"


def _verdict(value: float, reference: float) -> tuple[float, str]:
    if not math.isfinite(value):
        return math.nan, "non-finite"
    relative = value / reference if reference > 0 else (math.inf if value > 0 else 0.0)
    if relative < VANISHING:
        return relative, "vanishing"
    if relative > EXPLODING:
        return relative, "exploding"
    return relative, "ok"


def _predicted(model, x, measured):
    """`compare`'s predicted column by (layer, kind), or None with the theory's reason when it does not apply."""
    import numpy as np

    from keras_initkit.theory import compare, predict_variance

    flat = np.asarray(x, dtype=np.float64).reshape(-1, np.shape(x)[-1])
    try:
        predicted = predict_variance(model, input_var=flat.var(axis=0), input_mean=flat.mean(axis=0))
        table = compare(measured, predicted, anchor="top")
    except ValueError as e:
        return None, str(e).splitlines()[0]
    return {(r.layer, r.kind): r.predicted for r in table.itertuples()}, None


def diagnose(model, x, y=None):
    """The doctor's table for `model` on the batch `x` (labels `y`: also the backward rows), and a note.

    Returns:
        (table, note): a DataFrame with columns `DOCTOR_COLUMNS` (kind "forward" or "backward"; `predicted` NaN
        where the theory does not apply, the reason in `note`; `relative` the variance over the reference; `factor`
        the ratio to the previous monitored layer's of the same kind) and a note (str, empty when nothing to say).
        The verdicts follow `RULES`.
    """
    import numpy as np
    import pandas as pd

    from keras_initkit.layers import select_layers
    from keras_initkit.monitor import VarianceMonitor

    notes = []
    backward = y is not None and getattr(model, "compiled", False) and getattr(model, "loss", None) is not None
    if y is None:
        notes.append("no labels: forward rows only")
    elif not backward:
        notes.append("the model is not compiled with a loss: forward rows only")
    kinds = ("preact", "grad_preact") if backward else ("preact",)
    monitor = VarianceMonitor(probe=(x, y) if backward else x, kinds=kinds, stats=["var"])
    measured = monitor.measure(model)
    predicted, why = _predicted(model, x, measured)
    if predicted is None:
        notes.append(f"no prediction: {why}")
    targets = {t.index: t for t in select_layers(model, None)}
    rows = []
    for kind in kinds:
        part = measured[measured["kind"] == kind].sort_values("depth")
        values = part["value"].to_numpy(dtype=np.float64)
        if not len(values):
            continue
        reference = values[0] if kind == "preact" else values[-1]
        previous = math.nan
        for r, value in zip(part.itertuples(), values, strict=True):
            relative, verdict = _verdict(float(value), float(reference))
            with np.errstate(divide="ignore", invalid="ignore"):
                factor = float(np.float64(value) / previous) if previous == previous else math.nan
            pred = math.nan if predicted is None else float(predicted.get((r.layer, kind), math.nan))
            advice = "" if verdict == "ok" else _advice(targets[int(r.depth)])
            row = (r.layer, int(r.depth), KIND_NAMES[kind], float(value), pred, relative, factor, verdict, advice)
            rows.append(row)
            previous = float(value)
    return pd.DataFrame(rows, columns=list(DOCTOR_COLUMNS)), "; ".join(notes)


# ----------------------------------------------------------------------------------------------------------------
# The command.


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The doctor command's arguments, each with its default."""
    p.add_argument("model", metavar="MODEL", help="a saved Keras model (.keras)")
    p.add_argument(
        "--data",
        required=True,
        metavar="NAME_OR_FILE",
        help="a data set name (shapeset, digits, mnist, cifar10: its labels give the backward rows), or a .npy file "
        "of inputs, or a .npz file with `x` (or a single array) and optional labels `y`",
    )
    p.add_argument("--batch", type=_int_at_least(1), default=256, help="examples in the batch (%(default)s)")
    p.add_argument("--json", action="store_true", help="print the table as JSON records instead (off)")


DESCRIPTION = (
    "Measure each layer's forward and backward variance on a batch and flag where the signal vanishes or explodes."
)


def build_parser(prog: str = f"{MODULE_COMMAND} doctor") -> argparse.ArgumentParser:
    p = _Parser(prog=prog, description=DESCRIPTION, epilog=RULES)
    add_arguments(p)
    return p


def _load_model(path: str):
    if not os.path.isfile(path):
        raise BadInput("MODEL", f"no such file. Received: {path!r}")
    import keras

    import keras_initkit.initializers  # noqa: F401  (registers keras_initkit's objects)

    try:
        return keras.models.load_model(path)
    except Exception as e:  # any reason Keras gives for not reading it
        raise BadInput("MODEL", f"cannot load {path!r} as a Keras model ({type(e).__name__}: {_first_line(e)})") from e


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else ""


def _read_data(spec: str, batch: int):
    """(x, y or None, description) of the first `batch` examples named by `--data`."""
    import numpy as np

    from keras_initkit.datasets import DATASETS, load

    if spec in DATASETS:
        try:
            data = load(spec, n_train=1, n_test=batch) if spec == "shapeset" else load(spec)
        except (OSError, ValueError, ImportError) as e:
            raise BadInput("--data", f"cannot load the data set {spec!r} ({type(e).__name__}: {_first_line(e)})") from e
        split = "x_test" if len(data.x_test) >= batch else "x_train"
        x, y = (data.x_test, data.y_test) if split == "x_test" else (data.x_train, data.y_train)
        return x[:batch], y[:batch], f"{spec} {split}[:{batch}]"
    if not os.path.isfile(spec):
        raise BadInput(
            "--data", f"must be a data set name {DATASETS} or a .npy/.npz file (no such file). Received: {spec!r}"
        )
    try:
        loaded = np.load(spec, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise BadInput("--data", f"cannot read {spec!r} as .npy/.npz ({type(e).__name__}: {_first_line(e)})") from e
    if isinstance(loaded, np.ndarray):
        x, y = loaded, None
    else:
        with loaded:
            keys = list(loaded.files)
            if "x" not in keys and len(keys) != 1:
                raise BadInput(
                    "--data", f"a .npz file must hold an array `x` (or a single array). Received: keys {keys}"
                )
            x = loaded["x" if "x" in keys else keys[0]]
            y = loaded["y"] if "y" in keys else None
    if x.ndim < 2 or not np.issubdtype(x.dtype, np.number) or len(x) == 0:
        raise BadInput(
            "--data",
            f"inputs must be numbers with a sample axis and one example or more. Received: {x.dtype} {x.shape}",
        )
    if not np.isfinite(x).all():
        raise BadInput("--data", f"inputs must be finite. Received: {x.shape} with NaN or Inf")
    if y is not None and len(y) != len(x):
        raise BadInput("--data", f"`y` must have one label per example. Received: x {x.shape}, y {y.shape}")
    x, y = x[:batch], None if y is None else y[:batch]
    return x, y, f"{os.path.basename(spec)}[:{batch}]"


def _fit_to_model(model, x):
    """`x` in the model's input shape: as it is, or a flat vector <-> image of the same size; else bad input."""
    import numpy as np

    try:
        inputs = list(model.inputs)
    except (AttributeError, ValueError):  # a subclassed model: fed as it is, its own call checks the shape
        return x, ""
    if len(inputs) != 1:
        raise BadInput("MODEL", f"the doctor feeds models with one input. Received: {len(inputs)} inputs")
    want, got = tuple(inputs[0].shape[1:]), tuple(x.shape[1:])
    if len(want) == len(got) and all(w is None or w == g for w, g in zip(want, got, strict=True)):
        return x, ""
    if None not in want and (len(want) == 1) != (len(got) == 1) and math.prod(want) == math.prod(got):
        return np.reshape(x, (len(x), *want)), f" reshaped {got} -> {want}"
    raise BadInput(
        "--data",
        f"examples of shape {got} do not fit the model's input shape {want} (a flat vector and an image of the same "
        "size are reshaped; nothing else is)",
    )


def _text(table, note: str, header: str) -> str:
    from tabulate import tabulate

    def num(v, missing=""):
        return missing if v != v else f"{v:.3g}"

    rows = [
        [
            r.layer,
            r.depth,
            r.kind,
            num(r.measured),
            num(r.predicted, "no prediction"),
            num(r.relative),
            num(r.factor),
            r.verdict,
            r.advice,
        ]
        for r in table.itertuples()
    ]
    flagged = int((table["verdict"] != "ok").sum())
    lines = [header, tabulate(rows, headers=list(DOCTOR_COLUMNS), tablefmt="simple", disable_numparse=True)]
    if note:
        lines.append(f"Note: {note}")
    lines.append(
        f"{flagged} of {len(table)} rows flagged (vanishing: below {VANISHING:g}, exploding: above {EXPLODING:g} times "
        "the reference: the first layer's forward, the top layer's backward variance; see --help)"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """`python -m keras_initkit doctor ...`: prints the table (or JSON); returns 0, 1 (flagged) or 2 (bad input)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    prog = prog or f"{MODULE_COMMAND} doctor"
    return run(build_parser(prog).parse_args(argv), prog)


def run(args: argparse.Namespace, prog: str) -> int:
    """The doctor on parsed arguments (`add_arguments`' namespace): 0, 1 (flagged) or 2 (bad input, one line)."""
    try:
        model = _load_model(args.model)
        x, y, where = _read_data(args.data, args.batch)
        x, reshaped = _fit_to_model(model, x)
        try:
            table, note = diagnose(model, x, y)
        except (ValueError, TypeError) as e:
            raise BadInput("--data", f"the batch does not fit the model ({type(e).__name__}: {_first_line(e)})") from e
    except BadInput as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    if args.json:
        print(json.dumps(json.loads(table.to_json(orient="records")), indent=1))
    else:
        header = f"{args.model} on {where}{reshaped} ({len(x)} examples)"
        print(_text(table, note, header))
    return EXIT_FLAGGED if (table["verdict"] != "ok").any() else EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
