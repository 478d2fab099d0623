"""Run a committed ``notebooks/<stem>.py`` (jupytext percent) with papermill.

Usage: ``python -m bat.stages.notebook <stem>`` — the DVC stage command. Parameters are the ``<stem>``
section of params.yaml; every key must be a variable of the notebook's ``parameters`` cell, so a
misspelt parameter, or a string where the default is a list, fails here, before the kernel starts
(notebooks with list parameters repeat that check in the kernel, for plain papermill runs). The
executed notebook is kept as the report ``reports/<stem>.ipynb``, written only when the run
succeeds, and ends with a provenance cell. Two runs of the same notebook on the same inputs write
the same bytes, in any checkout (:func:`reproducible`), so re-running a stage leaves its hash in
``dvc.lock`` as it was; what the cells wrote to stderr is printed on the stage's stderr instead.
"""

from __future__ import annotations

import argparse
import ast
import os
import sys
from pathlib import Path

import jupytext
import nbformat
from nbstripout import strip_output

from bat import paths, validate
from bat.config import read_yaml, run_cli, section
from bat.errors import ConfigError
from bat.io import atomic_path

PROVENANCE = "from bat.stages.provenance import provenance\nprovenance()"
# What differs between two runs of the same inputs: papermill's and Jupyter's clock times, and the
# notebook papermill was handed (its cells carry jupytext's random ids) and the path it wrote to.
RUN_KEYS = ["metadata.papermill.start_time", "metadata.papermill.end_time", "metadata.papermill.duration",
            "metadata.papermill.input_path", "metadata.papermill.output_path", "cell.metadata.execution",
            "cell.metadata.papermill.start_time", "cell.metadata.papermill.end_time",
            "cell.metadata.papermill.duration"]


def parameter_defaults(notebook: nbformat.NotebookNode) -> dict:
    """The literals of the cell tagged ``parameters`` (it must be the first code cell).

    Plain (``seed = 0``) and annotated (``seed: int = 0``) assignments are parameters, as for
    papermill. Raises :class:`ConfigError` naming the line of a default that is not a literal.
    """
    code_cells = [cell for cell in notebook.cells if cell.cell_type == "code"]
    if not code_cells or "parameters" not in code_cells[0].metadata.get("tags", []):
        raise ConfigError("the first code cell of the notebook must be tagged 'parameters'")
    source = code_cells[0].source
    defaults = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target = node.targets[0]
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            target = node.target
        else:
            continue
        if not isinstance(target, ast.Name):
            continue
        try:
            defaults[target.id] = ast.literal_eval(node.value)
        except (ValueError, TypeError):  # TypeError: a literal that cannot be built, {[1]: 2}
            statement = ast.get_source_segment(source, node)
            raise ConfigError(f"parameters cell, line {node.lineno}: {statement!r} is not a "
                              "literal; write the default as a literal value (number, string, "
                              "list, dict, ...)") from None
    return defaults


def check_types(stem: str, defaults: dict, values: dict) -> None:
    """A parameter whose default is a list must be given a list (papermill's ``-p`` gives a str)."""
    for key, value in values.items():
        if isinstance(defaults.get(key), list):
            validate.listed(f"{stem}.{key}", value,
                            f"; with papermill pass a list as YAML: -y '{key}: [{value}]'")


def check_kernel_parameters(stem: str, namespace: dict) -> None:
    """Run by each notebook after its parameters cell: the values injected, checked as before a run.

    ``namespace`` is the notebook's ``globals()``. Raises :class:`ConfigError`. The notebook is read
    from the code's own checkout, since ``BAT_ROOT`` may point the kernel at a data-only root.
    """
    defaults = parameter_defaults(read_notebook(stem, paths.CODE_ROOT / "notebooks"))
    check_types(stem, defaults, {key: namespace[key] for key in defaults if key in namespace})


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
    check_types(stem, allowed, parameters)


def stderr_text(executed: nbformat.NotebookNode) -> str:
    """What the cells of ``executed`` wrote to stderr (warnings, progress bars), in order."""
    return "".join(output.text for cell in executed.cells for output in cell.get("outputs", [])
                   if output.output_type == "stream" and output.name == "stderr")


def reproducible(executed: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """``executed`` without its run times, temporary paths and stderr output, cell ids numbered in
    order (nbstripout, keeping every other output and the execution counts); changed in place and
    returned. Stderr goes because warnings name the files of the checkout and environment they
    ran in (and progress bars their speed); :func:`execute` passes it on to the stage's stderr."""
    return strip_output(executed, keep_output=True, keep_count=True, keep_id=False, extra_keys=RUN_KEYS,
                        drop_output_types={"stream:stderr"})


def execute(stem: str, parameters: dict, report: Path | None = None,
            notebooks: Path = paths.NOTEBOOKS, cwd: Path = paths.ROOT) -> Path:
    """Execute the notebook with ``parameters`` and write its report atomically."""
    import papermill  # ~3 s to import; only the runner needs it

    notebook = read_notebook(stem, notebooks)
    check_parameters(stem, notebook, parameters)
    notebook.cells.append(nbformat.v4.new_code_cell(PROVENANCE))
    report = Path(report) if report is not None else paths.report(stem)
    # Idle OpenMP threads spin and starve the other core; PASSIVE lets them sleep.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    # No output path: papermill would save the notebook after every cell, and the report is
    # written once, stripped, when the run has succeeded.
    executed = papermill.execute_notebook(notebook, None, parameters=parameters, cwd=str(cwd),
                                          progress_bar=False, log_output=False)
    sys.stderr.write(stderr_text(executed))
    with atomic_path(report) as tmp:
        nbformat.write(reproducible(executed), tmp)
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
