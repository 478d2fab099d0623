"""What a figure notebook writes besides its figure: flat DVC metrics and DVC plot tables.

``metrics/<stem>.json`` holds flat scalars only, in one schema shared by every figure
(:data:`SCHEMA`: the figure's headline paired comparison, :meth:`bat.analysis.claims.Result.metrics`)
and, where the figure has one, the effect and verdict of its second comparison (:data:`SECONDARY`,
named in the notebook's last cell), so that ``dvc metrics show`` reads as one narrow results table. Curves go to ``plots/<stem>/<name>.csv`` in one long format (:data:`CURVE_COLUMNS`)
that the ``series`` template of ``.dvc/plots`` draws as one line per ``series`` with a band from
``low`` to ``high``.

Pandas only: the notebooks import it without loading torch.
"""

from __future__ import annotations

import math
import numbers

import numpy as np
import pandas as pd

from bat import io, paths
from bat.analysis.runs import band_summary, paired_difference
from bat.analysis.statistics import compare
from bat.errors import ConfigError

SCHEMA = ("effect", "ci_low", "ci_high", "mde", "seeds", "verdict")
SECONDARY = ("secondary_effect", "secondary_verdict")  # the figure's second comparison, named in its notebook
CURVE_COLUMNS = ("series", "step", "mean", "low", "high", "seeds")


def flat_metrics(headline: dict, secondary: dict | None = None) -> dict:
    """The keys of :data:`SCHEMA` from ``headline`` and of :data:`SECONDARY` from ``secondary``'s
    ``effect`` and ``verdict`` (both as :meth:`bat.analysis.claims.Result.metrics` gives them);
    every value a finite number or ``None``.

    Raises :class:`ConfigError` when ``headline`` lacks or adds keys, or a value is not a number.
    """
    if set(headline) != set(SCHEMA):
        raise ConfigError(f"headline: keys {sorted(headline)} differ from the shared schema {SCHEMA}")
    merged = dict(headline)
    if secondary is not None:
        merged.update(secondary_effect=secondary.get("effect"), secondary_verdict=secondary.get("verdict"))
    for key, value in merged.items():
        if isinstance(value, (np.integer, np.floating)):
            value = merged[key] = value.item()
        if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Real)):
            raise ConfigError(f"{key}: {type(value).__name__} is not allowed in metrics; use a number")
        if isinstance(value, float) and not math.isfinite(value):
            merged[key] = None  # JSON has no NaN; DVC shows "-"
    return merged


def write_metrics(stem: str, headline: dict, secondary: dict | None = None) -> dict:
    """Write :func:`flat_metrics` to ``metrics/<stem>.json`` and return it."""
    metrics = flat_metrics(headline, secondary)
    io.write_json(paths.metrics(stem), metrics)
    return metrics


def level_curves(frame: pd.DataFrame, value: str, by: tuple[str, ...] = ("dataset", "regime")) -> pd.DataFrame:
    """``value`` per ``by`` and step: the mean over seeds, ``low``/``high`` its min and max over seeds
    (:data:`CURVE_COLUMNS`; ``series`` joins the ``by`` values with "/")."""
    summary = band_summary(frame, value, by)
    return _curves(summary, by, summary["min"], summary["max"])


def difference_curves(frame: pd.DataFrame, value: str, regimes, reference: str = "plain",
                      by: tuple[str, ...] = ("dataset",)) -> pd.DataFrame:
    """Per-seed ``value`` of each of ``regimes`` minus ``reference`` (same seed and step), per ``by``
    and step: the mean difference and its 95 % t-interval as ``low``/``high`` (NaN with one seed)."""
    rows = []
    for regime in regimes:
        gap = paired_difference(frame, value, regime, reference)
        for key, group in gap.groupby([*by, "step"], sort=True, dropna=False):
            c = compare(group["difference"].to_numpy())
            rows.append({**dict(zip([*by, "step"], key)), "regime": regime, "mean": c.mean,
                         "low": np.nan if c.low is None else c.low,
                         "high": np.nan if c.high is None else c.high, "count": c.seeds})
    columns = [*by, "regime", "step", "mean", "low", "high", "count"]
    summary = pd.DataFrame(rows, columns=columns)
    return _curves(summary, (*by, "regime"), summary["low"], summary["high"])


def _curves(summary: pd.DataFrame, by, low, high) -> pd.DataFrame:
    series = ["/".join(map(str, values)) for values in zip(*(summary[name] for name in by))]
    return pd.DataFrame({"series": series, "step": summary["step"], "mean": summary["mean"],
                         "low": low, "high": high, "seeds": summary["count"]})[list(CURVE_COLUMNS)]


def write_plot(stem: str, name: str, curves: pd.DataFrame) -> None:
    """Write ``curves`` (:data:`CURVE_COLUMNS`) to ``plots/<stem>/<name>.csv``, sorted for stable bytes.

    Raises :class:`ConfigError` when columns are missing."""
    missing = [c for c in CURVE_COLUMNS if c not in curves]
    if missing:
        raise ConfigError(f"curves: columns {missing} are missing; a plot table has {CURVE_COLUMNS}")
    write_table(stem, name, curves[list(CURVE_COLUMNS)].sort_values(["series", "step"]))


def write_plots(stem: str, curves: dict[str, pd.DataFrame]) -> None:
    """:func:`write_plot` for each ``name: table`` of ``curves``."""
    for name, table in curves.items():
        write_plot(stem, name, table)


def write_table(stem: str, name: str, table: pd.DataFrame) -> None:
    """Write ``table`` to ``plots/<stem>/<name>.csv`` as it is ordered, floats to 6 significant
    digits, so that the same numbers give the same bytes (a DVC plot, or a table claims read)."""
    table = table.reset_index(drop=True)
    io.write_with(paths.plot(stem, name), lambda tmp: table.to_csv(tmp, index=False, float_format="%.6g"))
