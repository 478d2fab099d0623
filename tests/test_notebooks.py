"""Every notebook: house rules, parameters in step with params.yaml, and a smoke-sized run."""

import ast
import re

import jupytext
import pytest

from bat.stages import notebook as runner
from bat.config import read_yaml
from tests.conftest import PROJECT

NOTEBOOKS = sorted(path.stem for path in (PROJECT / "notebooks").glob("*.py"))
# What a notebook's smoke run reads besides smoke_root's prepared data: the fixtures that make it.
# Every figure and table notebook reads the grids of bat.stages.grid.
# The backbone and encoder notebooks read the result folders of their training stages.
UPSTREAM = {stem: ["smoke_grids"] for stem in NOTEBOOKS if stem.startswith(("fig", "tab"))} | {
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


@pytest.mark.parametrize("stem", NOTEBOOKS)
def test_notebook_runs_at_smoke_size(stem, smoke_root, smoke_params, monkeypatch, request):
    for fixture in UPSTREAM.get(stem, []):
        request.getfixturevalue(fixture)
    monkeypatch.setenv("BAT_ROOT", str(smoke_root))
    report = runner.execute(stem, smoke_params[stem], report=smoke_root / "reports" / f"{stem}.ipynb",
                            cwd=smoke_root)
    executed = report.read_text()
    assert "git_commit" in executed  # the provenance cell ran last
    assert re.search(r'"ename"', executed) is None
    assert (smoke_root / "figures" / f"{stem}.png").stat().st_size > 0
