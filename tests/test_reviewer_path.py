"""The reviewer's path (README): a fresh clone redraws a figure from the committed run tables.

`runs/<grid>` is in git (DVC outs with ``cache: false``), so `dvc repro -s <figure stage>` in a
clean clone needs no training, no DVC cache and no raw data, and gives the committed figure.
"""

import os
import subprocess
import sys
import time

from tests.conftest import PROJECT

STAGE = "fig04_dreambooth_initial_steps"


def test_a_clean_clone_redraws_a_figure_from_committed_tables(tmp_path):
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "--quiet", "--no-local", str(PROJECT), str(clone)], check=True)
    assert (clone / "runs" / "dreambooth" / "evaluations.csv").is_file(), "run tables not in git"
    committed = (clone / "figures" / f"{STAGE}.png").read_bytes()
    env = {**os.environ, "PYTHONPATH": str(clone), "DVC_SITE_CACHE_DIR": str(tmp_path / "dvc"),
           "PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}"}
    env.pop("BAT_ROOT", None)
    started = time.perf_counter()
    done = subprocess.run(["dvc", "repro", "--single-item", STAGE], cwd=clone, env=env,
                          capture_output=True, text=True)
    seconds = time.perf_counter() - started
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert (clone / "figures" / f"{STAGE}.png").read_bytes() == committed
    assert seconds < 60, f"{STAGE} took {seconds:.0f} s from the committed tables"
