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
- `claim_row`: the claims table's row (claim, statement, rule, measured, paper, status). Status PASS or FAIL (the
  rule decided), INCONCLUSIVE (the rule was evaluated but cannot decide: too few seeds, or the rows it compares did
  not learn) or N/A (the profile has no trial of the claim's cells, e.g. SMOKE).
- `floor_error` / `learned`: the pre-registered floor rule of every study: a classifier whose test error is within
  FLOOR_SE binomial standard errors of the majority-class error, sqrt(p0 (1 - p0) / n), "did not learn".
- `mcnemar`: the exact McNemar test of two classifiers on the same test images (two-sided binomial test on the
  discordant pairs).
- `paired_bootstrap`: the difference in accuracy of two classifiers paired by seed and test image, with a
  percentile CI from a two-way bootstrap (seeds and images resampled independently, the same draw for both).
- `paired_text`: one "measured" string of the two above.
- `with_trial`: a trial table with the trial's keys as columns.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

UNDERFLOW = 1e-30  # a float32 variance at or below this has lost its precision (the squares underflow)
STATUSES = ("PASS", "FAIL", "INCONCLUSIVE", "N/A")
FLOOR_SE = 2.0  # "did not learn": test error within this many binomial standard errors of the majority-class error


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
    was measured, the paper's figure and the status ("PASS", "FAIL", "INCONCLUSIVE" or "N/A"; module docstring).

    A study binds its own tables once: `_claim = functools.partial(claim_row, CLAIMS, RULES)`.
    """
    if claim not in claims or claim not in rules:
        raise ValueError(f"`claim` must be a key of CLAIMS and RULES. Received: claim={claim!r}")
    if status not in STATUSES:
        raise ValueError(f"`status` must be one of {STATUSES}. Received: status={status!r}")
    return {"claim": claim, "statement": claims[claim], "rule": rules[claim], "measured": measured, "paper": paper,
            "status": status}  # fmt: skip


def majority_error(labels) -> float:
    """1 - the frequency of the most common label: the error of a classifier that always predicts that class."""
    y = np.asarray(labels).ravel()
    if len(y) == 0:
        raise ValueError("`labels` must not be empty. Received: 0 labels")
    return 1.0 - float(np.unique(y, return_counts=True)[1].max()) / len(y)


def floor_error(chance: float, n: int, k: float = FLOOR_SE) -> float:
    """The error at and above which a classifier "did not learn": chance - k sqrt(chance (1 - chance) / n).

    Args:
        chance: the majority-class error on the test set (`majority_error`), a fraction in [0, 1].
        n: test examples.
        k: binomial standard errors (FLOOR_SE, 2, for every study).
    """
    if not 0.0 <= chance <= 1.0:
        raise ValueError(f"`chance` must be an error fraction in [0, 1]. Received: chance={chance!r}")
    if int(n) < 1:
        raise ValueError(f"`n` must be a positive number of test examples. Received: n={n!r}")
    return chance - k * math.sqrt(chance * (1.0 - chance) / int(n))


def learned(error, chance: float, n: int, k: float = FLOOR_SE):
    """True where `error` (a fraction, scalar or array) is below `floor_error(chance, n, k)`; a NaN error (a diverged
    net) did not learn."""
    e = np.asarray(error, dtype=float)
    out = np.isfinite(e) & (e < floor_error(chance, n, k))
    return bool(out) if out.ndim == 0 else out


def _correct_matrix(a, name: str) -> np.ndarray:
    m = np.asarray(a)
    if m.ndim == 1:
        m = m[None, :]
    if m.ndim != 2 or m.size == 0:
        raise ValueError(f"`{name}` must be per-image correctness, shape (images,) or (seeds, images). "
                         f"Received: shape {np.shape(a)}")  # fmt: skip
    return m.astype(bool)


def mcnemar(a, b) -> dict:
    """Exact McNemar test of two classifiers on the same examples.

    Args:
        a, b: booleans, "example classified correctly", aligned (shape (images,) or (seeds, images): pairs pooled).
    Returns: dict(a_only, b_only, p): the discordant counts (right by a only, by b only) and the two-sided p-value of
    the binomial test of a_only against Binomial(a_only + b_only, 1/2) (1.0 when there is no discordant pair).
    """
    ma, mb = _correct_matrix(a, "a"), _correct_matrix(b, "b")
    if ma.shape != mb.shape:
        raise ValueError(f"`a` and `b` must be aligned. Received: shapes {ma.shape} and {mb.shape}")
    a_only, b_only = int((ma & ~mb).sum()), int((~ma & mb).sum())
    if a_only + b_only == 0:
        return {"a_only": 0, "b_only": 0, "p": 1.0}
    from scipy import stats

    p = float(stats.binomtest(a_only, a_only + b_only, 0.5).pvalue)
    return {"a_only": a_only, "b_only": b_only, "p": p}


def paired_bootstrap(a, b, *, level: float = 0.95, n_boot: int = 2000, seed: int = 0) -> dict:
    """Accuracy of `a` minus accuracy of `b`, paired by seed and test image, with a two-way bootstrap CI.

    Each replicate draws the seeds (rows) and the images (columns) with replacement, independently, and takes the
    same draw for both classifiers; the CI is the percentile interval of the replicates' mean difference.

    Args:
        a, b: booleans "correct", shape (seeds, images) (row s of `a` and of `b` from the same seed and initial
            weights where the design pairs them) or (images,).
        level: the CI's level in (0, 1).
        n_boot: bootstrap replicates.
        seed: the resampling's seed (fixed: the same tables give the same CI).
    Returns: dict(diff, lo, hi, p, seeds, images): p is the two-sided bootstrap p-value, 2 min(P(diff* <= 0),
        P(diff* >= 0)), capped at 1.
    """
    ma, mb = _correct_matrix(a, "a"), _correct_matrix(b, "b")
    if ma.shape != mb.shape:
        raise ValueError(f"`a` and `b` must be aligned. Received: shapes {ma.shape} and {mb.shape}")
    if not 0 < level < 1:
        raise ValueError(f"`level` must be in (0, 1). Received: level={level!r}")
    d = ma.astype(np.float64) - mb.astype(np.float64)
    k, n = d.shape
    rng = np.random.default_rng(seed)
    w = rng.multinomial(k, np.full(k, 1.0 / k), size=n_boot).astype(np.float64)  # seed weights per replicate
    v = rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot).astype(np.float64)  # image weights per replicate
    reps = np.einsum("rk,kn,rn->r", w, d, v) / (k * n)
    lo, hi = np.quantile(reps, [(1 - level) / 2, (1 + level) / 2])
    p = min(1.0, 2.0 * min(float(np.mean(reps <= 0)), float(np.mean(reps >= 0))))
    return {"diff": float(d.mean()), "lo": float(lo), "hi": float(hi), "p": p, "seeds": k, "images": n}


def paired_text(a, b, *, level: float = 0.95) -> str:
    """ "acc diff +0.0123 (95% CI [+0.005, +0.02], bootstrap p=0.001; McNemar p=0.002, 40 vs 12 images; 5 seeds x
    360 images)": `paired_bootstrap` and `mcnemar` of a vs b in one measured string."""
    boot, mc = paired_bootstrap(a, b, level=level), mcnemar(a, b)
    return (f"acc diff {boot['diff']:+.3g} ({level:.0%} CI [{boot['lo']:+.3g}, {boot['hi']:+.3g}], bootstrap "
            f"p={boot['p']:.2g}; McNemar p={mc['p']:.2g}, {mc['a_only']} vs {mc['b_only']} images; "
            f"{boot['seeds']} seeds x {boot['images']} images)")  # fmt: skip


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
