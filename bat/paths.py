"""Every path the compendium reads or writes, in one place.

Raw data is read-only input (``data/raw``, pinned by ``data.dvc``); everything generated lives
under ``data/prepared``, ``models``, ``runs``, ``figures``, ``metrics`` and ``reports``.
"""

from __future__ import annotations

import os
from pathlib import Path

# The checkout this code runs from; BAT_ROOT lets tests and papermill runs in a temporary
# directory point the data paths elsewhere.
CODE_ROOT = Path(__file__).resolve().parent.parent
ROOT = Path(os.environ.get("BAT_ROOT", CODE_ROOT))

PARAMS = ROOT / "params.yaml"
PROFILES = ROOT / "profiles"
NOTEBOOKS = ROOT / "notebooks"
DATA = ROOT / "data"
RAW = DATA / "raw"
PREPARED = DATA / "prepared"
MODELS = ROOT / "models"
RUNS = ROOT / "runs"  # what stages measured, for the notebooks: grids and training results
FIGURES = ROOT / "figures"
METRICS = ROOT / "metrics"
PLOTS = ROOT / "plots"  # curves and per-run tables behind the figures: DVC plots
REPORTS = ROOT / "reports"


def figure(stem: str, suffix: str = ".png") -> Path:
    """A figure has one writer, the notebook of the same stem."""
    return FIGURES / f"{stem}{suffix}"


def metrics(stem: str) -> Path:
    return METRICS / f"{stem}.json"


def plot(stem: str, name: str) -> Path:
    """``plots/<stem>/<name>.csv``: one curve table of a figure, written by that figure only."""
    return PLOTS / stem / f"{name}.csv"


def report(stem: str) -> Path:
    return REPORTS / f"{stem}.ipynb"


def notebook(stem: str) -> Path:
    return NOTEBOOKS / f"{stem}.py"
