"""One figure style, and the only function that writes figures.

PNG and PDF are written with fixed metadata (no creation date, no software version) so that a
re-run with the same numbers gives the same bytes and DVC sees nothing to do.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("agg")
import matplotlib.pyplot as plt  # noqa: E402

from bat import io, paths# noqa: E402

STYLE = {
    "figure.dpi": 100,
    "savefig.dpi": 150,
    "font.size": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "legend.frameon": False,
    "svg.hashsalt": "bat",
}
plt.rcParams.update(STYLE)

# One colour per training regime, the same in every figure.
REGIME_COLORS = {"plain": "tab:red", "random": "tab:gray", "random_matched": "tab:olive",
                 "bat": "tab:blue", "bat_oracle_free": "tab:cyan", "compute_matched": "tab:orange",
                 "bat_set": "tab:purple", "bat_set_oracle_free": "tab:pink",
                 "prior_preservation": "tab:brown"}

_PNG_METADATA = {"Software": None}
_PDF_METADATA = {"Creator": None, "Producer": None, "CreationDate": None, "ModDate": None}


def save_figure(fig: matplotlib.figure.Figure, stem: str, figures_dir: Path | None = None) -> None:
    """Write ``figures/<stem>.png`` and ``.pdf`` atomically and close the figure. Returns nothing:
    a notebook cell ending in this call shows no path of the checkout it ran in."""
    figures_dir = Path(figures_dir) if figures_dir is not None else paths.FIGURES
    png = figures_dir / f"{stem}.png"
    io.write_with(png, lambda tmp: fig.savefig(tmp, format="png", metadata=_PNG_METADATA,
                                               bbox_inches="tight"))
    io.write_with(figures_dir / f"{stem}.pdf",
                  lambda tmp: fig.savefig(tmp, format="pdf", metadata=_PDF_METADATA,
                                          bbox_inches="tight"))
    plt.close(fig)


def show_images(axes, images, captions=None, caption_chars: int = 18) -> None:
    """Draw one image per axis, without ticks, with its caption cut to ``caption_chars``."""
    for index, axis in enumerate(axes):
        axis.axis("off")
        if index < len(images):
            axis.imshow(images[index], interpolation="nearest")
            if captions is not None:
                axis.set_title(str(captions[index])[:caption_chars], fontsize=6)


def plot_series(axis, table, prefix: str = "", colors: dict | None = None) -> None:
    """One line per series of a plot table (:data:`bat.analysis.outputs.CURVE_COLUMNS`) whose
    name starts with ``prefix``: ``mean`` over ``step``, shaded from ``low`` to ``high``.

    A series is named ``<prefix><label>`` (e.g. ``noto/bat``); the line is labelled and coloured
    by the part after the last ``/`` (``colors``, default :data:`REGIME_COLORS`).
    """
    colors = REGIME_COLORS if colors is None else colors
    chosen = table[table["series"].str.startswith(prefix)]
    for series, curve in chosen.groupby("series", sort=False):
        label = series.split("/")[-1]
        color = colors.get(label)
        axis.plot(curve["step"], curve["mean"], color=color, label=label)
        axis.fill_between(curve["step"], curve["low"], curve["high"], color=color, alpha=0.2, linewidth=0)


def plot_curve_rows(curves: dict, rows: list[tuple[str, str]], datasets: list[str], title: str,
                    row_height: float = 2.2, column_width: float = 4.5):
    """One column per dataset, one row per ``(name, y label)`` of ``rows``: :func:`plot_series` of
    ``curves[name]`` restricted to the dataset; a difference table (name containing ``minus``)
    gets a line at zero. ``title`` is formatted with ``dataset``. Returns ``(fig, axes)``."""
    fig, axes = plt.subplots(len(rows), len(datasets), figsize=(column_width * len(datasets),
                                                                row_height * len(rows)),
                             squeeze=False, sharex="col", layout="constrained")
    for column, dataset in enumerate(datasets):
        for row, (name, label) in enumerate(rows):
            plot_series(axes[row, column], curves[name], f"{dataset}/")
            if "minus" in name:
                axes[row, column].axhline(0, color="black", linewidth=0.8)
            axes[row, 0].set_ylabel(label)
        axes[0, column].set_title(title.format(dataset=dataset))
        axes[-1, column].set_xlabel("step")
    return fig, axes


def plot_effects(axis, frame, x: str, label: str) -> None:
    """Paired effects of a results table (``bat.analysis.claims.results_frame``) against its column
    ``x``: the mean difference with its 95 % interval as bars, the MDE printed beside each point
    ("1 seed" where there is no interval), and a line at zero."""
    import pandas as pd

    tested = frame[frame["seeds"] > 0]
    low = (tested["effect"] - tested["ci_low"].fillna(tested["effect"])).to_numpy(dtype=float)
    high = (tested["ci_high"].fillna(tested["effect"]) - tested["effect"]).to_numpy(dtype=float)
    axis.errorbar(tested[x], tested["effect"], yerr=[low, high], color="black", marker="o", capsize=3)
    for _, point in tested.iterrows():
        axis.annotate(f"MDE {point['mde']:.2g}" if pd.notna(point["mde"]) else "1 seed",
                      (point[x], point["effect"]), fontsize=6, textcoords="offset points", xytext=(4, 4))
    axis.axhline(0, color="black", linewidth=0.8)
    axis.set_ylabel(label)


def table_figure(tables, width: float = 9.0):
    """DataFrames drawn as one figure (the paper's tables): ``tables`` is ``[(frame, title), ...]``,
    stacked top to bottom, or a single ``(frame, title)``."""
    if isinstance(tables, tuple):
        tables = [tables]
    heights = [len(frame) + 2 for frame, _ in tables]
    fig, axes = plt.subplots(len(tables), 1, figsize=(width, 0.3 + 0.28 * sum(heights)),
                             height_ratios=heights, squeeze=False)
    for axis, (frame, title) in zip(axes[:, 0], tables):
        axis.axis("off")
        table = axis.table(cellText=frame.values, colLabels=list(frame.columns), loc="center",
                           cellLoc="center")
        table.auto_set_font_size(False)
        table.set_fontsize(7)
        table.auto_set_column_width(list(range(len(frame.columns))))  # long labels stay readable
        table.scale(1.0, 1.25)
        axis.set_title(title, fontsize=9)
    return fig
