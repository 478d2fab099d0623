"""The last cell of every report: what produced it."""

from __future__ import annotations

import importlib.metadata
import platform
import subprocess

from bat import paths
from bat.io import read_json

PACKAGES = ("torch", "diffusers", "transformers", "peft", "numpy", "pandas", "matplotlib", "papermill")


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=paths.ROOT, capture_output=True,
                              text=True, check=True).stdout.strip()
    except (subprocess.CalledProcessError, FileNotFoundError):
        return "unknown"


def provenance() -> dict:
    """Print and return the commit, Python, package versions and data sources of this run."""
    record = {"git_commit": _git_commit(), "python": platform.python_version(),
              "packages": {name: importlib.metadata.version(name) for name in PACKAGES}}
    manifest = paths.RAW / "SOURCES.json"
    if manifest.exists():
        record["data_sources"] = {s["name"]: f"{s['package']}=={s['version']}" for s in read_json(manifest)}
    for key, value in record.items():
        print(f"{key}: {value}")
    return record
