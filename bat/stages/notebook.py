"""Run a committed ``notebooks/<stem>.py`` (jupytext percent) with papermill.

Usage: ``python -m bat.stages.notebook <stem>`` — the DVC stage command. Parameters are the ``<stem>``
section of params.yaml; every key must be a variable of the notebook's ``parameters`` cell, so a
misspelt parameter fails here, before the kernel starts. The executed notebook is kept as the
report ``reports/<stem>.ipynb``, written only when the run succeeds, and ends with a provenance cell.
"""

from __future__ import annotations

import argparse
import ast
import os
import sys
from pathlib import Path

import jupytext
import nbformat

from bat import paths
from bat.config import read_yaml, run_cli, section
from bat.errors import ConfigError
from bat.io import atomic_path

PROVENANCE = "from bat.analysis.provenance import provenance\nprovenance()"


def parameter_defaults(notebook: nbformat.NotebookNode) -> dict:
    """The literals of the cell tagged ``parameters`` (it must be the first code cell)."""
    code_cells = [cell for cell in notebook.cells if cell.cell_type == "code"]
    if not code_cells or "parameters" not in code_cells[0].metadata.get("tags", []):
        raise ConfigError("the first code cell of the notebook must be tagged 'parameters'")
    defaults = {}
    for node in ast.parse(code_cells[0].source).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            defaults[node.targets[0].id] = ast.literal_eval(node.value)
    return defaults


def read_notebook(stem: str, notebooks: Path = paths.NOTEBOOKS) -> nbformat.NotebookNode:
    path = notebooks / f"{stem}.py"
    if not path.exists():
        known = sorted(p.stem for p in notebooks.glob("*.py"))
        raise ConfigError(f"no notebook {stem!r}; notebooks: {known}")
    return jupytext.read(path)


def check_parameters(stem: str, notebook: nbformat.NotebookNode, parameters: dict) -> None:
    allowed = parameter_defaults(notebook)
    for key in parameters:
        if key not in allowed:
            raise ConfigError(f"unknown parameter {stem}.{key}; the notebook takes {sorted(allowed)}")


def execute(stem: str, parameters: dict, report: Path | None = None,
            notebooks: Path = paths.NOTEBOOKS, cwd: Path = paths.ROOT) -> Path:
    """Execute the notebook with ``parameters`` and write its report atomically."""
    import papermill  # ~3 s to import; only the runner needs it

    notebook = read_notebook(stem, notebooks)
    check_parameters(stem, notebook, parameters)
    notebook.cells.append(nbformat.v4.new_code_cell(PROVENANCE))
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    report = Path(report) if report is not None else paths.report(stem)
    # Idle OpenMP threads spin and starve the other core; PASSIVE lets them sleep.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    with atomic_path(report) as tmp:
        papermill.execute_notebook(notebook, str(tmp), parameters=parameters, kernel_name="python3",
                                   cwd=str(cwd), progress_bar=False, log_output=False)
    return report


def stage_parameters(stem: str, params_path: Path | None = None) -> dict:
    params = read_yaml(params_path or paths.PARAMS)
    return dict(section(params, stem))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run notebooks/<stem>.py with its params.yaml section.")
    parser.add_argument("stem")
    args = parser.parse_args(argv)
    return run_cli(lambda: execute(args.stem, stage_parameters(args.stem)))


if __name__ == "__main__":
    sys.exit(main())
