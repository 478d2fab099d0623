"""dvc.yaml: one stage per notebook, with its notebook, params and every bat module it uses as deps."""

import ast
import json
import os
import shutil
import subprocess
import sys

import pytest
import yaml

from tests.conftest import PROJECT

STAGES = yaml.safe_load((PROJECT / "dvc.yaml").read_text())["stages"]
NOTEBOOKS = sorted(path.stem for path in (PROJECT / "notebooks").glob("*.py"))
# The runner (also the parameter check each notebook calls) and the provenance cell shape the
# report, not the numbers: neither they nor what they import are deps.
RUNNER = {"bat/stages/notebook.py", "bat/stages/provenance.py", "bat/__init__.py"}


def bat_imports(path) -> set[str]:
    """bat modules that ``path`` imports, directly or through other bat modules."""
    found, pending = set(), [path]
    while pending:
        tree = ast.parse(pending.pop().read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "bat":
                names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names if alias.name.split(".")[0] == "bat"]
            for name in names:
                module = PROJECT / (name.replace(".", "/") + ".py")
                relative = module.relative_to(PROJECT).as_posix()
                if module.exists() and relative not in found and relative not in RUNNER:
                    found.add(relative)
                    pending.append(module)
    return found


def dep_paths(stage) -> set[str]:
    """The stage's deps, and every file inside a folder dep (``bat/core`` covers its modules)."""
    deps = {dep if isinstance(dep, str) else next(iter(dep)) for dep in stage["deps"]}
    return deps | {path.relative_to(PROJECT).as_posix() for dep in deps if (PROJECT / dep).is_dir()
                   for path in (PROJECT / dep).rglob("*.py")}


def out_paths(stage, key="outs") -> set[str]:
    return {out if isinstance(out, str) else next(iter(out)) for out in stage.get(key, [])}


@pytest.mark.parametrize("stem", NOTEBOOKS)
def test_each_notebook_is_a_stage(stem):
    stage = STAGES[stem]
    assert stage["cmd"] == f"python -m bat.stages.notebook {stem}"
    assert f"notebooks/{stem}.py" in dep_paths(stage)
    assert stage["params"] == [stem]
    assert {f"reports/{stem}.ipynb", f"figures/{stem}.png", f"figures/{stem}.pdf"} <= out_paths(stage)


@pytest.mark.parametrize("stem", NOTEBOOKS)
def test_notebook_stage_depends_on_the_library_it_uses(stem):
    missing = bat_imports(PROJECT / "notebooks" / f"{stem}.py") - dep_paths(STAGES[stem])
    assert not missing, f"dvc.yaml stage {stem} lacks deps {sorted(missing)}"


def test_module_stages_depend_on_the_library_they_use():
    for name, stage in STAGES.items():
        stage = stage.get("do", stage)  # a foreach stage: its template
        command = stage["cmd"].split()
        if command[:2] == ["python", "-m"] and command[2] != "bat.stages.notebook":
            module = PROJECT / (command[2].replace(".", "/") + ".py")
            used = bat_imports(module) | {module.relative_to(PROJECT).as_posix()}
            missing = used - dep_paths(stage)
            assert not missing, f"dvc.yaml stage {name} lacks deps {sorted(missing)}"


@pytest.mark.parametrize("track, other", [("image", "text"), ("text", "image")])
def test_track_stages_depend_on_their_own_track_only(track, other):
    """An oracle or grid stage loads its track by name: it depends on that track's package, and
    editing the other track's code re-runs none of its stages."""
    for kind in ("oracle", "grid"):
        deps = dep_paths(STAGES[f"{kind}_{track}"]["do"])
        assert f"bat/{track}/track.py" in deps
        assert not {dep for dep in deps if dep.startswith(f"bat/{other}/")}, f"{kind}_{track}"


def test_figures_and_metrics_are_versioned_in_git():
    """Figures and metrics are small and shown in README: git keeps them, not the DVC cache."""
    for stage in STAGES.values():
        for out in stage.get("outs", []) + stage.get("metrics", []):
            if isinstance(out, dict):
                (path, options), = out.items()
                if path.startswith(("figures/", "metrics/")):
                    assert options.get("cache") is False, path
            else:
                assert not out.startswith(("figures/", "metrics/")), out


def test_notebook_stages_depend_on_the_grids_they_read():
    """A notebook parameter that names a grid of bat.stages.grid makes runs/<grid> a dep of its stage."""
    from bat.config import read_yaml

    params = read_yaml(PROJECT / "params.yaml")
    grids = {name for track in params["grids"].values() for name in track}
    for stem in NOTEBOOKS:
        values = []
        for value in params[stem].values():
            values.extend(value if isinstance(value, list) else [value])
        read = {f"runs/{value}" for value in values if isinstance(value, str) and value in grids}
        missing = read - dep_paths(STAGES[stem])
        assert not missing, f"dvc.yaml stage {stem} lacks deps {sorted(missing)}"


def test_each_grid_is_a_stage_writing_its_runs_folder():
    for track in ("image", "text"):
        stage = STAGES[f"grid_{track}"]
        assert stage["foreach"] == f"${{grids.{track}}}"
        assert stage["do"]["cmd"] == "python -m bat.stages.grid ${key}"
        assert stage["do"]["outs"] == [{"runs/${key}": {"cache": False}}]  # in git: the reviewer's path


def test_dvc_exp_run_sets_a_float_parameter_end_to_end(tmp_path):
    """`dvc exp run -S` writes 0.000001 as YAML 1.2's ``1e-06``; the smoke stage reads a float."""
    repo = tmp_path / "repo"
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"],
                            cwd=PROJECT, capture_output=True, text=True, check=True).stdout
    for name in listed.splitlines():
        if (PROJECT / name).is_file():
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(PROJECT / name, repo / name)
    who = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    env = {**os.environ, **who, "PYTHONPATH": str(repo),
           "DVC_SITE_CACHE_DIR": str(tmp_path / "dvc"),
           "PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}"}
    env.pop("BAT_ROOT", None)

    def run(*command):
        done = subprocess.run(command, cwd=repo, env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stdout + done.stderr
        return done

    run("git", "init", "-q")
    run(sys.executable, "-m", "bat.stages.profile", "use", "smoke")
    run("git", "add", "-A")
    run("git", "commit", "-q", "-m", "smoke")
    run("dvc", "exp", "run", "prop2_convex", "-S", "prop2_convex.shift=0.000001")
    assert "shift: 1e-06" in (repo / "params.yaml").read_text()  # what PyYAML 1.1 reads as a str
    assert "shift=1e-06" in (repo / "reports" / "prop2_convex.ipynb").read_text()


def test_figure_curves_are_dvc_plots_in_git():
    """A notebook that writes plots/<stem>/*.csv declares the folder as DVC plots with axes, kept
    in git like the figures; curves over steps (write_plot, write_plots) are drawn by the project's `series`
    template (x: step, y: mean, band low–high)."""
    assert (PROJECT / ".dvc" / "plots" / "series.json").is_file()
    for stem in NOTEBOOKS:
        source = (PROJECT / "notebooks" / f"{stem}.py").read_text()
        curves = "write_plot(" in source or "write_plots(" in source
        writes = curves or "write_table(" in source
        declared = {next(iter(p)): next(iter(p.values())) for p in STAGES[stem].get("plots", [])}
        assert (f"plots/{stem}" in declared) == writes, stem
        if curves:
            assert declared[f"plots/{stem}"] == {"cache": False, "template": "series", "x": "step", "y": "mean"}
        elif writes:
            assert declared[f"plots/{stem}"]["cache"] is False and {"x", "y"} <= set(declared[f"plots/{stem}"]), stem


def test_claims_stage_reads_every_grid():
    from bat.config import read_yaml

    grids = read_yaml(PROJECT / "params.yaml")["grids"]
    grids = {*grids["image"], *grids["text"]}
    stage = STAGES["claims"]
    assert stage["cmd"] == "python -m bat.stages.claims"
    assert {f"runs/{grid}" for grid in grids} <= dep_paths(stage)
    assert "plots/prop2_convex" in dep_paths(stage)  # control (i): bat.analysis.claims.ConvexControl
    assert "metrics/claims.json" in out_paths(stage, "outs")


def test_dvc_metrics_show_is_one_narrow_results_table():
    """`dvc metrics show` lists the figures' headline comparisons in the shared schema
    (bat.analysis.outputs), so it fits a terminal; the training stages' diagnostics and the claims
    summary are flat JSON under metrics/ too, but outs, read with `dvc metrics show <file>`."""
    from bat.analysis.outputs import SCHEMA, SECONDARY

    for stem, stage in STAGES.items():
        declared = out_paths(stage, "metrics")
        assert declared <= {f"metrics/{stem}.json"}, stem
        if declared:
            assert stage["cmd"].endswith(f"notebook {stem}") and stem.startswith(("fig", "tab")), stem
    keys = {key for path in (PROJECT / "metrics").glob("*.json")
            if any(path.as_posix().endswith(p) for s in STAGES.values() for p in out_paths(s, "metrics"))
            for key in json.loads(path.read_text())}
    assert keys <= {*SCHEMA, *SECONDARY}, sorted(keys - {*SCHEMA, *SECONDARY})


@pytest.mark.parametrize("path", sorted((PROJECT / "metrics").glob("*.json")), ids=lambda p: p.stem)
def test_committed_metrics_are_flat_scalars(path):
    """`dvc metrics show` reads as one table only if every metrics file maps names to numbers."""
    import json

    metrics = json.loads(path.read_text())
    assert isinstance(metrics, dict)
    nested = {key: type(value).__name__ for key, value in metrics.items()
              if value is not None and (isinstance(value, (bool, str)) or not isinstance(value, (int, float)))}
    assert not nested, f"{path.name}: not scalars: {nested}"
