"""Every notebook: house rules, parameters in step with params.yaml, and a smoke-sized run."""

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import jupytext
import nbformat
import papermill
import pytest

from bat.stages import notebook as runner
from bat.config import read_yaml
from tests.conftest import PROJECT

NOTEBOOKS = sorted(path.stem for path in (PROJECT / "notebooks").glob("*.py"))
# What a notebook's smoke run reads besides smoke_root's prepared data: the fixtures that make it.
# Every figure and table notebook reads the grids of bat.stages.grid.
# The backbone and encoder notebooks read the result folders of their training stages.
UPSTREAM = {stem: ["smoke_grids"] for stem in NOTEBOOKS if stem.startswith(("fig", "tab", "pilot"))} | {
    "backbone_image": ["smoke_image_backbone"], "backbone_text": ["smoke_text_backbone"],
    "encoders": ["smoke_encoders"]}


def test_there_are_notebooks():
    assert "data_overview" in NOTEBOOKS


@pytest.mark.parametrize("stem", NOTEBOOKS)
def test_notebook_defines_no_functions_or_classes(stem):
    source = (PROJECT / "notebooks" / f"{stem}.py").read_text()
    for node in ast.walk(ast.parse(source)):
        assert not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)), (
            f"{stem}: logic belongs in bat/, not in the notebook (line {node.lineno})")


# Calls that train or load a model (an optimizer step, a backward pass, bat's trainers and loaders,
# the hub's from_pretrained), and the libraries models come from: a notebook only reads what a
# stage wrote, so editing a plot never retrains anything.
TRAINING_OR_LOADING = {"backward", "step", "zero_grad", "build_or_load", "pretrain", "fine_tune",
                       "train", "train_encoders", "train_oracle", "run_grid", "from_pretrained",
                       "initial_backbone", "load_backbone", "load_image_backbone", "load_encoders"}
MODEL_LIBRARIES = {"torch", "diffusers", "transformers", "peft", "safetensors"}


def training_or_loading(source: str) -> list[str]:
    """``name (line n)`` for each call in ``source`` that trains or loads a model, or import of a model library."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call):
            function = node.func
            name = function.attr if isinstance(function, ast.Attribute) else getattr(function, "id", None)
            if name in TRAINING_OR_LOADING:
                found.append(f"{name}() (line {node.lineno})")
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            modules = [alias.name for alias in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            found += [f"import {module} (line {node.lineno})" for module in modules
                      if module.split(".")[0] in MODEL_LIBRARIES]
    return found


@pytest.mark.parametrize("stem", NOTEBOOKS)
def test_notebook_neither_trains_nor_loads_a_model(stem):
    found = training_or_loading((PROJECT / "notebooks" / f"{stem}.py").read_text())
    assert not found, f"{stem}: training and model loading belong in a stage (bat/stages), found {found}"


@pytest.mark.parametrize("source", [
    "loss.backward()", "optimizer.step()", "pipe, log = build_or_load(config, backbone, folder)",
    "model = AutoModel.from_pretrained('x')", "import torch", "from torch import optim",
    "model, tokenizer = load_backbone(folder)"])
def test_training_or_loading_is_recognised(source):
    assert training_or_loading(source)


@pytest.mark.parametrize("stem", NOTEBOOKS)
def test_parameters_cell_holds_the_tiny_profile(stem):
    defaults = runner.parameter_defaults(jupytext.read(PROJECT / "notebooks" / f"{stem}.py"))
    assert defaults == read_yaml(PROJECT / "params.yaml")[stem]


@pytest.mark.parametrize("stem", NOTEBOOKS)
def test_unknown_parameter_is_refused_before_the_kernel_starts(stem, tmp_path):
    with pytest.raises(runner.ConfigError, match=rf"unknown parameter {stem}.bogus; the notebook takes"):
        runner.execute(stem, {"bogus": 1}, report=tmp_path / "report.ipynb")
    assert not (tmp_path / "report.ipynb").exists()


def test_a_rerun_writes_the_same_report(smoke_root, smoke_params, monkeypatch):
    """Same inputs, same bytes: re-running a stage leaves its report's md5 in dvc.lock as it was."""
    monkeypatch.setenv("BAT_ROOT", str(smoke_root))
    reports = [runner.execute("data_overview", smoke_params["data_overview"],
                              report=smoke_root / "reports" / f"rerun_{run}.ipynb", cwd=smoke_root)
               for run in range(2)]
    assert reports[0].read_bytes() == reports[1].read_bytes()
    text = reports[0].read_text()
    # nothing of the checkout or the environment it ran in: the same bytes in any other clone
    assert '"start_time"' not in text and str(smoke_root) not in text and str(PROJECT) not in text


@pytest.mark.parametrize("stem", NOTEBOOKS)
def test_notebook_runs_at_smoke_size(stem, smoke_root, smoke_params, monkeypatch, request):
    for fixture in UPSTREAM.get(stem, []):
        request.getfixturevalue(fixture)
    monkeypatch.setenv("BAT_ROOT", str(smoke_root))
    report = runner.execute(stem, smoke_params[stem], report=smoke_root / "reports" / f"{stem}.ipynb",
                            cwd=smoke_root)
    executed = report.read_text()
    assert "packages: {'torch'" in executed  # the provenance cell ran last
    assert re.search(r'"ename"', executed) is None
    assert (smoke_root / "figures" / f"{stem}.png").stat().st_size > 0
    metrics = json.loads((smoke_root / "metrics" / f"{stem}.json").read_text())
    # Flat scalars only, so that `dvc metrics show` reads as one table.
    assert all(value is None or type(value) in (int, float) for value in metrics.values()), metrics
    if stem.startswith(("fig", "tab")):  # the shared flat schema of bat.analysis.outputs
        from bat.analysis.outputs import SCHEMA, SECONDARY
        assert set(SCHEMA) <= set(metrics) <= {*SCHEMA, *SECONDARY}
    if stem == "prop2_convex":  # the rows bat.analysis.claims.ConvexControl reads, shift-0 run only
        import pandas as pd

        seeds = pd.read_csv(smoke_root / "plots" / stem / "seeds.csv")
        assert list(seeds.columns) == ["model", "n", "method", "seed", "n_error"]
        assert {"plain", "random"} <= set(seeds.method)


def parameters_notebook(source: str) -> nbformat.NotebookNode:
    cell = nbformat.v4.new_code_cell(source, metadata={"tags": ["parameters"]})
    return nbformat.v4.new_notebook(cells=[cell])


def test_annotated_assignments_are_parameters():
    notebook = parameters_notebook("seed: int = 0\nname: str = 'a'\nsteps = 3\nlimit: int\n")
    assert runner.parameter_defaults(notebook) == {"seed": 0, "name": "a", "steps": 3}
    runner.check_parameters("x", notebook, {"seed": 1})


def test_a_default_that_is_not_a_literal_names_its_line():
    notebook = parameters_notebook("seed = 0\nsteps = 2 * 10\n")
    with pytest.raises(runner.ConfigError, match=re.escape(
            "parameters cell, line 2: 'steps = 2 * 10' is not a literal; write the default as a "
            "literal value")):
        runner.parameter_defaults(notebook)


LIST_MESSAGE = ("prop2_convex.models: 'ridge' must be a list, e.g. [ridge]; with papermill pass a "
                "list as YAML: -y 'models: [ridge]'")


def test_a_string_for_a_list_parameter_is_refused_before_the_kernel_starts(tmp_path):
    with pytest.raises(runner.ConfigError, match=re.escape(LIST_MESSAGE)):
        runner.execute("prop2_convex", {"models": "ridge"}, report=tmp_path / "report.ipynb")


def test_a_string_for_a_list_parameter_is_refused_in_a_plain_papermill_run(tmp_path):
    notebook = jupytext.read(PROJECT / "notebooks" / "prop2_convex.py")
    with pytest.raises(papermill.PapermillExecutionError) as caught:
        papermill.execute_notebook(notebook, str(tmp_path / "out.ipynb"), progress_bar=False,
                                   parameters={"models": "ridge"}, cwd=PROJECT)
    assert caught.value.ename == "ConfigError" and caught.value.evalue == LIST_MESSAGE


@pytest.mark.parametrize("stem", NOTEBOOKS)
def test_notebooks_with_list_parameters_check_what_papermill_injected(stem):
    defaults = runner.parameter_defaults(jupytext.read(PROJECT / "notebooks" / f"{stem}.py"))
    calls = f'check_kernel_parameters("{stem}", globals())' in (
        PROJECT / "notebooks" / f"{stem}.py").read_text()
    assert calls == any(isinstance(value, list) for value in defaults.values())


@pytest.mark.parametrize("stem", NOTEBOOKS)
def test_notebook_names_its_kernel(stem):
    """JupyterLab opens it with a kernel chosen; papermill finds the kernel and its language."""
    notebook = jupytext.read(PROJECT / "notebooks" / f"{stem}.py")
    assert notebook.metadata["kernelspec"] == {"name": "python3", "display_name": "Python 3",
                                               "language": "python"}


def test_readme_papermill_command_runs_as_printed(smoke_root, tmp_path):
    readme = (PROJECT / "README.md").read_text()
    command = re.search(r"# or papermill directly, with any parameter:\n(.*?)\n```", readme,
                        re.S).group(1).replace("\\\n", " ")
    assert command.startswith(".venv/bin/jupytext") and "-p examples_per_source 4" in command
    # A checkout as the README's reader has it: the code, and .venv (the one running the tests).
    for name in ("bat", "notebooks", "jupytext.toml"):
        (tmp_path / name).symlink_to(PROJECT / name)
    (tmp_path / ".venv").symlink_to(sys.prefix)
    output = Path("/tmp/data_overview.ipynb")
    output.unlink(missing_ok=True)
    env = {**os.environ, "BAT_ROOT": str(smoke_root), "PYTHONPATH": str(PROJECT)}
    done = subprocess.run(["bash", "-o", "pipefail", "-c", command], cwd=tmp_path, env=env,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    executed = nbformat.read(output, as_version=4)
    assert executed.metadata.papermill.parameters == {"examples_per_source": 4}
    assert not [o for cell in executed.cells for o in cell.get("outputs", [])
                if o.output_type == "error"]
