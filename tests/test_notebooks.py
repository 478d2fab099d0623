"""Every notebook: house rules, parameters in step with params.yaml, and a smoke-sized run."""

import ast
import json
import re

import jupytext
import pytest

from bat.stages import notebook as runner
from bat.config import read_yaml
from tests.conftest import PROJECT

NOTEBOOKS = sorted(path.stem for path in (PROJECT / "notebooks").glob("*.py"))
# What a notebook's smoke run reads besides smoke_root's prepared data: the fixtures that make it.
# Every figure and table notebook reads the grids of bat.stages.grid.
UPSTREAM = {stem: ["smoke_grids"] for stem in NOTEBOOKS if stem.startswith(("fig", "tab"))}


def test_there_are_notebooks():
    assert "data_overview" in NOTEBOOKS


@pytest.mark.parametrize("stem", NOTEBOOKS)
def test_notebook_defines_no_functions_or_classes(stem):
    source = (PROJECT / "notebooks" / f"{stem}.py").read_text()
    for node in ast.walk(ast.parse(source)):
        assert not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)), (
            f"{stem}: logic belongs in bat/, not in the notebook (line {node.lineno})")


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
    if stem.startswith(("fig", "tab")):  # the shared flat schema of bat.analysis.outputs
        from bat.analysis.outputs import SCHEMA, SECONDARY

        metrics = json.loads((smoke_root / "metrics" / f"{stem}.json").read_text())
        assert set(SCHEMA) <= set(metrics) <= {*SCHEMA, *SECONDARY}
        assert all(value is None or type(value) in (int, float) for value in metrics.values())
