"""The pipeline's stages, one module each (``python -m bat.stages.<name>``, see dvc.yaml)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path


def run_model_stage(run: Callable[..., Path], name: str, *inputs: Path) -> int:
    """The ``main`` of a stage that builds one model: reads params.yaml when it starts and calls
    ``run(params[name], runtime, data/prepared, models/<name>, runs/<name>, *inputs)``.

    Returns the exit status; a ConfigError becomes one line on stderr and status 2
    (:func:`bat.config.run_cli`).
    """
    from bat import paths
    from bat.config import read_yaml, run_cli, section
    from bat.core.runtime import runtime_config

    def stage():
        params = read_yaml(paths.PARAMS)
        return run(section(params, name), runtime_config(params), paths.PREPARED,
                   paths.MODELS / name, paths.RUNS / name, *inputs)

    return run_cli(stage)
