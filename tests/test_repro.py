"""bat.stages.repro: stages side by side give what `dvc repro` gives, and a failure loses nothing."""

import subprocess
import sys
from pathlib import Path

import pytest

from bat.errors import ConfigError
from bat.stages.repro import critical_path_seconds, pipeline_graph, run_side_by_side, stage_order

DVC = str(Path(sys.executable).parent / "dvc")

# "slow" and "other" share nothing: with two jobs they overlap, which the marker files show.
PIPELINE = """\
stages:
  slow:
    cmd: touch started_slow && sleep 2 && test -e started_other && echo slow > slow.txt
    outs: [slow.txt]
  other:
    cmd: touch started_other && sleep 2 && test -e started_slow && echo {other} > other.txt
    outs: [other.txt]
  after:
    cmd: cat slow.txt other.txt > after.txt
    deps: [slow.txt, other.txt]
    outs: [after.txt]
"""


def project(tmp_path: Path, other: str = "other") -> Path:
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run([DVC, "init", "-q"], cwd=tmp_path, check=True)
    (tmp_path / "dvc.yaml").write_text(PIPELINE.format(other=other))
    return tmp_path


def dvc_status(root: Path) -> str:
    return subprocess.run([DVC, "status"], cwd=root, capture_output=True, text=True,
                          check=True).stdout


def test_independent_stages_run_side_by_side_and_are_committed(tmp_path):
    root = project(tmp_path)
    _, graph, _ = pipeline_graph(root)
    order = stage_order(graph)
    assert order.index("after") > max(order.index("slow"), order.index("other"))
    ran = run_side_by_side(order, 2, root=root, logs=tmp_path / "logs")
    assert set(ran) == {"slow", "other", "after"} and ran[-1] == "after"
    assert (root / "after.txt").read_text() == "slow\nother\n"
    assert "up to date" in dvc_status(root)
    # nothing changed: nothing runs again
    assert run_side_by_side(stage_order(pipeline_graph(root)[1]), 2, root=root,
                            logs=tmp_path / "logs") == []


def test_a_failed_stage_is_not_recorded_and_the_finished_ones_are(tmp_path):
    # fails 3 s after "slow" has finished, so that stage is done, not stopped
    root = project(tmp_path, other="other && sleep 3 && exit 3")
    with pytest.raises(SystemExit, match="stage other failed"):
        run_side_by_side(stage_order(pipeline_graph(root)[1]), 2, root=root,
                         logs=tmp_path / "logs")
    lock = (root / "dvc.lock").read_text()
    assert "slow:" in lock and "other:" not in lock and "after:" not in lock
    assert not (root / "after.txt").exists()


def test_unknown_stage_and_bad_jobs_are_named(tmp_path):
    root = project(tmp_path)
    with pytest.raises(ConfigError, match="no stage 'nope'; stages: "):
        stage_order(pipeline_graph(root)[1], ["nope"])
    with pytest.raises(ConfigError, match="jobs: 0"):
        run_side_by_side(["slow"], 0, root=root)


def test_the_longest_chain_of_waiting_work_goes_first(tmp_path):
    _, graph, _ = pipeline_graph(project(tmp_path))
    chain = critical_path_seconds(graph, stage_order(graph), {"slow": 1.0, "other": 5.0},
                                  default=2.0)
    assert chain == {"after": 2.0, "slow": 3.0, "other": 7.0}
