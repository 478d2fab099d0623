"""A training stage's result folder ``runs/<name>/``: what the stage measured, for its notebook.

The stages that train (``bat.stages.backbone_image``, ``backbone_text``, ``encoders``) write it;
the notebook of the same name only reads it and plots, so redrawing a figure retrains nothing.
The folder is small and committed to git (a DVC out with ``cache: false``):

- ``result.json``: ``params``, the params.yaml section the stage ran with, and the measurements
  (loss logs, timings, scores), as the stage documents them;
- ``arrays.npz`` (optional): the images the figure shows, written by :func:`bat.io.write_npz`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from bat.errors import ConfigError
from bat.io import atomic_directory, read_json, write_json, write_npz

RESULT = "result.json"
ARRAYS = "arrays.npz"


def write_result(folder: str | Path, params: Mapping, measured: Mapping,
                 arrays: Mapping[str, np.ndarray] | None = None) -> Path:
    """Replace ``folder`` at once with ``result.json`` (``params`` and ``measured``) and ``arrays.npz``.

    ``measured`` must be JSON-serialisable and must not have a key ``params``.
    """
    if "params" in measured:
        raise ValueError("measured results may not use the key 'params': it holds the stage's section")
    folder = Path(folder)
    with atomic_directory(folder) as tmp:
        write_json(tmp / RESULT, {"params": dict(params), **measured})
        if arrays:
            write_npz(tmp / ARRAYS, dict(arrays))
    return folder


def read_result(folder: str | Path, parameters: Mapping, section: str,
                stage: str) -> tuple[dict, dict[str, np.ndarray]]:
    """``(result.json, arrays.npz as a dict)`` of ``folder``, checked against ``parameters``.

    ``parameters`` are the notebook's (its ``globals()``); every key of the stored ``params`` must
    have the same value there, so a figure is never drawn from a result measured with other
    parameters. Raises :class:`ConfigError` naming ``<section>.<key>`` and the stage to re-run, or
    the missing folder. Without ``arrays.npz`` the dict is empty.
    """
    folder = Path(folder)
    if not (folder / RESULT).is_file():
        raise ConfigError(f"{folder / RESULT} not found; run `dvc repro {stage}` first")
    result = read_json(folder / RESULT)
    for key, value in result["params"].items():
        if key not in parameters or parameters[key] != value:
            raise ConfigError(f"{folder} was measured with {section}.{key} = {value!r}, not "
                              f"{parameters.get(key)!r}; run `dvc repro {stage}` again")
    arrays = {}
    if (folder / ARRAYS).is_file():
        with np.load(folder / ARRAYS) as archive:
            arrays = {name: archive[name] for name in archive.files}
    return result, arrays
