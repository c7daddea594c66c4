"""Summary helpers the studies share: one rule each for a spread over trials, the standard error of a difference, the
per-layer factor of a variance, a claim row and a trial's columns.

The rules (one each, for every study):
- `spread`: "mean ± sd [min, max] (n=k)" over the FINITE values (NaN and inf are left out, and k counts the values
  kept); mean, min and max to 3 significant digits and the sd to 2, or all four in one `fmt` (".0f" for counts of
  updates); "no trial" when there is no value at all, "no finite value (k non-finite)" when every value is
  non-finite. `ci=0.95` appends a Student-t confidence interval of the mean.
- `se_diff`: sqrt(s_a^2/k_a + s_b^2/k_b), a group of one seed contributing 0 (no spread to estimate).
- `layer_factor`: exp(slope) of a least-squares line through ln(value) against the layer index, over the values
  that are finite and above `floor` (UNDERFLOW by default: a float32 variance below it has lost its precision, and
  a non-positive one has no logarithm); NaN when fewer than two remain. Values are left out, never turned into NaN.
- `claim_row`: the claims table's row (claim, statement, rule, measured, paper, status), status PASS, FAIL or N/A.
- `with_trial`: a trial table with the trial's keys as columns.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

UNDERFLOW = 1e-30  # a float32 variance at or below this has lost its precision (the squares underflow)
STATUSES = ("PASS", "FAIL", "N/A")


def spread(values, fmt: str | None = None, *, ci: float | None = None) -> str:
    """ "mean ± sd [min, max] (n=k)" over the finite values (see the module docstring for the rule).

    Example:
    >>> spread([0.5, 0.25, float("nan")])
    '0.375 ± 0.18 [0.25, 0.5] (n=2)'

    Args:
        values: numbers (a Series, list or array).
        fmt: one format spec for the mean, sd, min and max (e.g. ".0f"); None: ".3g" and ".2g" for the sd.
        ci: a level in (0, 1): append ", <level> CI [lo, hi]", the mean's Student-t interval (needs k >= 2).
    """
    v = np.asarray(values, dtype=float).ravel()
    if ci is not None and not 0 < ci < 1:
        raise ValueError(f"`ci` must be a level in (0, 1) or None. Received: ci={ci!r}")
    if len(v) == 0:
        return "no trial"
    finite = v[np.isfinite(v)]
    if len(finite) == 0:
        return f"no finite value ({len(v)} non-finite)"
    mean, lo, hi = np.mean(finite), np.min(finite), np.max(finite)
    std = float(np.std(finite, ddof=1)) if len(finite) > 1 else 0.0
    f, fs = (fmt, fmt) if fmt is not None else (".3g", ".2g")
    text = f"{mean:{f}} ± {std:{fs}} [{lo:{f}}, {hi:{f}}] (n={len(finite)})"
    if ci is not None and len(finite) > 1:
        from scipy import stats

        half = float(stats.t.ppf(0.5 + ci / 2, len(finite) - 1)) * std / math.sqrt(len(finite))
        text += f", {ci:.0%} CI [{mean - half:{f}}, {mean + half:{f}}]"
    return text


def se_diff(a, b) -> float:
    """Standard error of the difference of two means, sqrt(s_a^2/k_a + s_b^2/k_b) (a single value adds 0)."""
    var = 0.0
    for s in (a, b):
        s = np.asarray(s, dtype=float)
        if len(s) > 1:
            var += float(np.var(s, ddof=1)) / len(s)
    return math.sqrt(var)


def _kept(values, floor: float) -> np.ndarray:
    v = np.asarray(values, dtype=float)
    return np.isfinite(v) & (v > floor)


def layer_factor(index: Sequence[float], values: Sequence[float], floor: float = UNDERFLOW) -> float:
    """exp(slope) of a least-squares line through ln(values) against the layer index: the average factor per layer.

    Values not finite or not above `floor` are left out of the fit; NaN when fewer than two remain.
    """
    i = np.asarray(index, dtype=float)
    v = np.asarray(values, dtype=float)
    if i.shape != v.shape:
        raise ValueError(f"`index` and `values` must have the same length. Received: {len(i)} and {len(v)}")
    keep = _kept(v, floor)
    if keep.sum() < 2:
        return float("nan")
    return float(np.exp(np.polyfit(i[keep], np.log(v[keep]), 1)[0]))


def layer_factors(
    frame: pd.DataFrame,
    by: Sequence[str],
    *,
    x: str = "depth",
    value: str = "value",
    predicted: str | None = None,
    floor: float = UNDERFLOW,
) -> pd.DataFrame:
    """Per group of `by` (a trial and kind, say): `layer_factor` of `value` against `x`.

    Select the rows first (stat "var", the layers of the fit, step 0). Columns: the `by` columns, factor (going up
    towards the output), [predicted: the factor of the `predicted` column], factor_down (1 / factor: going down
    towards the input, the direction of the back-propagated gradients), n_fit (the values kept in the fit).
    """
    missing = [c for c in (*by, x, value, *([predicted] if predicted else [])) if c not in frame.columns]
    if missing:
        raise ValueError(f"`frame` must have the columns {missing}. Received columns: {list(frame.columns)}")
    rows = []
    for key, group in frame.groupby(list(by), sort=True):
        group = group.sort_values(x)
        factor = layer_factor(group[x], group[value], floor)
        row = dict(zip(by, key if isinstance(key, tuple) else (key,), strict=True))
        row["factor"] = factor
        if predicted:
            row["predicted"] = layer_factor(group[x], group[predicted], floor)
        row["factor_down"] = 1.0 / factor
        row["n_fit"] = int(_kept(group[value], floor).sum())
        rows.append(row)
    columns = [*by, "factor", *(["predicted"] if predicted else []), "factor_down", "n_fit"]
    return pd.DataFrame(rows, columns=columns)


def claim_row(claims: Mapping[str, str], rules: Mapping[str, str], claim: str, status: str, measured: str,
              paper: str) -> dict:  # fmt: skip
    """One row of a claims table: the claim's id, its statement (`claims[claim]`), its rule (`rules[claim]`), what
    was measured, the paper's figure and the status ("PASS", "FAIL" or "N/A").

    A study binds its own tables once: `_claim = functools.partial(claim_row, CLAIMS, RULES)`.
    """
    if claim not in claims or claim not in rules:
        raise ValueError(f"`claim` must be a key of CLAIMS and RULES. Received: claim={claim!r}")
    if status not in STATUSES:
        raise ValueError(f"`status` must be one of {STATUSES}. Received: status={status!r}")
    return {"claim": claim, "statement": claims[claim], "rule": rules[claim], "measured": measured, "paper": paper,
            "status": status}  # fmt: skip


def with_trial(frame: pd.DataFrame, trial: Mapping, keys: Sequence[str], *, keep: Sequence[str] = (),
               **extra) -> pd.DataFrame:  # fmt: skip
    """A copy of `frame` with the trial's `keys` as columns (but those in `keep`, left as the frame has them), then
    the `extra` columns, in that order."""
    frame = frame.copy()
    for key in keys:
        if key not in keep:
            frame[key] = trial[key]
    for key, value in extra.items():
        frame[key] = value
    return frame
