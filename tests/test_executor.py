"""Executors of a grid's cells (bat.stages.executor): Ray gives the in-process tables, a worker
killed mid-cell is retried, a killed stage resumes, bad settings are refused.

Every comparison is against the same grid run in this process: the tables must agree in every
column but the wall times (``seconds``, ``selection_seconds``), row and column order included.
The grid leaves out ``compute_matched``, whose length is itself a wall-time quantity.
"""

import os
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from bat import paths
from bat.config import build
from bat.errors import ConfigError
from bat.io import read_json
from bat.stages import grid
from bat.stages.executor import ExecutorConfig, Staging, load_executor, run_cells

WALL_TIMES = ["seconds", "selection_seconds"]
RAY = ExecutorConfig(kind="ray", num_cpus_per_run=1, max_retries=2)


@pytest.fixture(scope="module")
def config(smoke_params):
    """One style and seed, two cells: the regimes without γ, and bat with its matched baseline."""
    return replace(grid.load_grid("dreambooth", smoke_params), datasets=("noto",), seeds=(0,),
                   regimes=("plain", "prior_preservation", "bat", "random_matched"))


@pytest.fixture(scope="module")
def models(smoke_root, smoke_encoders, smoke_oracles):
    return smoke_root / "models"


@pytest.fixture
def prepared(smoke_root, monkeypatch):
    monkeypatch.setattr(paths, "PREPARED", smoke_root / "data" / "prepared")


@pytest.fixture(scope="module")
def in_process(config, models, smoke_root, tmp_path_factory):
    """The grid run by the default executor, in this process."""
    out = tmp_path_factory.mktemp("in_process") / "grid"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(paths, "PREPARED", smoke_root / "data" / "prepared")
        grid.run_grid(config, out, models)
    return out


@pytest.fixture(scope="module")
def ray_instance():
    """A local Ray instance of two CPUs for this module (workers inherit conftest's one thread)."""
    ray = pytest.importorskip("ray")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def assert_same_tables(folder, reference):
    for table in ("steps.csv", "evaluations.csv"):
        read = [pd.read_csv(path / table, dtype=str, keep_default_na=False)  # the text as written
                for path in (folder, reference)]
        assert list(read[0].columns) == list(read[1].columns), table
        columns = [column for column in read[0].columns if column not in WALL_TIMES]
        pd.testing.assert_frame_equal(read[0][columns], read[1][columns], obj=table)
    samples, expected = np.load(folder / "samples.npz"), np.load(reference / "samples.npz")
    assert samples.files == expected.files  # the same entries, in the same order
    for name in expected.files:
        np.testing.assert_array_equal(samples[name], expected[name], err_msg=name)
    info, expected_info = read_json(folder / "grid.json"), read_json(reference / "grid.json")
    for record in (info, expected_info):
        record.pop("seconds"), record.pop("executor")
    assert info == expected_info


def counted(log):
    """``grid.run_cell`` that first appends the cell's name to ``log``: who ran what, and how often."""
    run_cell = grid.run_cell

    def counting_run_cell(context, cell):
        with open(log, "a") as handle:
            handle.write(cell.name + "\n")
        return run_cell(context, cell)

    return counting_run_cell


def runs(log) -> list[str]:
    return log.read_text().split() if log.exists() else []


def test_ray_gives_the_in_process_tables(ray_instance, config, models, prepared, in_process, tmp_path):
    grid.run_grid(config, tmp_path / "grid", models, executor=RAY)
    assert_same_tables(tmp_path / "grid", in_process)
    assert read_json(tmp_path / "grid" / "grid.json")["executor"]["kind"] == "ray"
    assert not (tmp_path / ".grid.cells").exists()  # staging is removed once the tables are written


def test_a_worker_killed_mid_cell_is_retried(ray_instance, config, models, prepared, in_process,
                                             tmp_path, monkeypatch):
    log, marker = tmp_path / "runs.log", tmp_path / "killed"
    victim = grid.grid_cells(config)[1].name  # bat, then random_matched from bat's log
    run_cell = counted(log)

    def dying_run_cell(context, cell):
        if cell.name == victim and not marker.exists():
            marker.touch()
            train = grid.GridRunner.train_evaluated

            def train_then_die(self, *args, **kwargs):  # the worker dies after the cell's first run
                train(self, *args, **kwargs)
                os._exit(1)

            grid.GridRunner.train_evaluated = train_then_die  # in the worker, which dies with it
        return run_cell(context, cell)

    monkeypatch.setattr(grid, "run_cell", dying_run_cell)
    grid.run_grid(config, tmp_path / "grid", models, executor=RAY)
    # Killed once and retried once; every other cell ran once: a death recomputes nothing finished.
    assert marker.exists() and sorted(runs(log)) == sorted([cell.name for cell in grid.grid_cells(config)] + [victim])
    assert_same_tables(tmp_path / "grid", in_process)


class Killed(BaseException):
    """Stands in for the stage's process being killed (not an Exception: nothing may catch it)."""


def test_a_killed_stage_trains_only_the_missing_cells(config, models, prepared, in_process, tmp_path,
                                                      monkeypatch):
    log, cells = tmp_path / "runs.log", grid.grid_cells(config)
    run_cell = counted(log)

    def killed_at_second_cell(context, cell):
        if cell == cells[1]:
            raise Killed
        return run_cell(context, cell)

    monkeypatch.setattr(grid, "run_cell", killed_at_second_cell)
    with pytest.raises(Killed):
        grid.run_grid(config, tmp_path / "grid", models)
    assert not (tmp_path / "grid").exists()  # the output is all or nothing
    assert [path.stem for path in (tmp_path / ".grid.cells").glob("*.pkl")] == [cells[0].name]

    monkeypatch.setattr(grid, "run_cell", run_cell)
    grid.run_grid(config, tmp_path / "grid", models)
    assert runs(log) == [cell.name for cell in cells]  # each cell trained once over both runs
    assert read_json(tmp_path / "grid" / "grid.json")["executor"]["cells_resumed"] == 1
    assert not (tmp_path / ".grid.cells").exists()
    assert_same_tables(tmp_path / "grid", in_process)


def test_staged_cells_of_other_settings_or_inputs_are_discarded(tmp_path):
    square = lambda context, cell: context * cell ** 2  # noqa: E731
    staging = Staging(tmp_path / "out", "first")
    assert run_cells(square, 1, [2, 3], ["a", "b"], ExecutorConfig(), staging) == [4, 9]
    assert run_cells(square, 10, [2, 3], ["a", "b"], ExecutorConfig(), staging) == [4, 9]  # staged
    staging = Staging(tmp_path / "out", "second")  # e.g. a retrained oracle
    assert run_cells(square, 10, [2, 3], ["a", "b"], ExecutorConfig(), staging) == [40, 90]


def test_every_profile_has_valid_executor_settings(smoke_params):
    from bat.config import profile_params

    assert load_executor(smoke_params).kind == "local"
    assert load_executor(profile_params("tiny")).kind == "local"
    paper = load_executor(profile_params("paper"))
    assert paper.kind == "ray" and paper.num_gpus_per_run == 1


VALID = {"kind": "ray", "address": None, "num_cpus_per_run": 1, "num_gpus_per_run": 0.5, "max_retries": 3}


@pytest.mark.parametrize("field, value, message", [
    ("kind", "dask", r"executor.kind: 'dask' is not allowed; choose one of \['local', 'ray'\]"),
    ("address", "", r"executor.address: '' must be null or a Ray address"),
    ("num_cpus_per_run", 0, r"executor.num_cpus_per_run: 0 must be a positive number"),
    ("num_gpus_per_run", -1, r"executor.num_gpus_per_run: -1 must be a number >= 0"),
    ("num_gpus_per_run", 1.5, r"num_gpus_per_run: 1.5 must be a fraction below 1 or a whole number"),
    ("max_retries", 0.5, r"executor.max_retries: 0.5 must be an integer >= 0"),
    ("bogus", 1, r"unknown parameter executor.bogus"),
])
def test_bad_executor_settings_are_refused(field, value, message):
    with pytest.raises(ConfigError, match=message):
        build(ExecutorConfig, {**VALID, field: value}, "executor")


@pytest.mark.parametrize("field, value", [("address", "head:6379"), ("num_gpus_per_run", 1)])
def test_ray_settings_are_refused_for_the_local_executor(field, value):
    with pytest.raises(ConfigError, match=rf"executor.{field}: .* is a Ray setting"):
        build(ExecutorConfig, {**VALID, "kind": "local", "num_gpus_per_run": 0, field: value}, "executor")
