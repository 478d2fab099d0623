"""The last cell of every report: what produced it."""

from __future__ import annotations

import importlib.metadata
import platform

from bat.stages.sources import SOURCES

PACKAGES = ("torch", "diffusers", "transformers", "peft", "numpy", "pandas", "matplotlib", "papermill")


def provenance() -> dict:
    """Print and return the Python, package versions and pinned data sources of this run.

    No commit: a report is written before the commit that records it, so the checkout's commit
    would name the one before, and a re-run at a later commit would change the report's hash in
    ``dvc.lock`` although nothing it shows changed. The commit whose ``dvc.lock`` lists the
    report's md5 is the one that produced it (``git log -S <md5> dvc.lock``).
    """
    record = {"python": platform.python_version(),
              "packages": {name: importlib.metadata.version(name) for name in PACKAGES},
              # the pins data/raw is fetched from (bat.stages.sources), whether or not it is here
              "data_sources": {s.name: f"{s.package}=={s.version}" for s in SOURCES}}
    for key, value in record.items():
        print(f"{key}: {value}")
    return record
