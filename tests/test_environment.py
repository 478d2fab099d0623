"""The conda environment and the pip project list the same packages at the same versions;
`make lab` starts."""

import os
import re
import signal
import subprocess
import sys
import time
import tomllib

import pytest
import yaml

from tests.conftest import PROJECT


def pyproject_requirements() -> list[str]:
    return tomllib.loads((PROJECT / "pyproject.toml").read_text())["project"]["dependencies"]


def conda_pip_requirements() -> list[str]:
    environment = yaml.safe_load((PROJECT / "environment.yml").read_text())
    pip_section = next(item["pip"] for item in environment["dependencies"] if isinstance(item, dict))
    return [requirement for requirement in pip_section if not requirement.startswith("-e")]


def test_environment_yml_matches_pyproject():
    assert sorted(conda_pip_requirements()) == sorted(pyproject_requirements())


def test_every_requirement_is_pinned():
    for requirement in pyproject_requirements():
        assert "==" in requirement, f"{requirement} is not pinned"


def test_make_lab_starts_jupyterlab_for_this_user(tmp_path):
    """`make lab` serves the notebooks, root or not (Jupyter refuses root without --allow-root)."""
    # The running environment stands in for .venv (-o: taken as built, not rebuilt); BROWSER=true
    # lets Jupyter "open" a browser without one.
    command = ["make", "--no-print-directory", "-o", f"{sys.prefix}/.installed", "lab",
               f"VENV={sys.prefix}"]
    env = {**os.environ, "BROWSER": "true", "JUPYTER_RUNTIME_DIR": str(tmp_path)}
    lab = subprocess.Popen(command, cwd=PROJECT, env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        lines, deadline = [], time.monotonic() + 120
        while time.monotonic() < deadline:
            line = lab.stdout.readline()
            lines.append(line)
            if not line or "Jupyter Server" in line and "is running at" in line:
                break
        assert lab.poll() is None, "".join(lines)  # still serving
        assert "is running at" in lines[-1], "".join(lines)
    finally:
        os.killpg(lab.pid, signal.SIGTERM)
        lab.wait(timeout=30)


@pytest.mark.parametrize("profile, offline", [("tiny", True), ("smoke", True), ("paper", False)])
def test_only_the_local_profiles_force_offline_hub_access(profile, offline):
    """A GPU user's first `make repro PROFILE=paper` must be able to download SD 1.4."""
    database = subprocess.run(["make", "-pn", f"PROFILE={profile}", "repro"], cwd=PROJECT,
                              capture_output=True, text=True).stdout
    assert (re.search(r"^HF_HUB_OFFLINE := 1$", database, re.M) is not None) == offline
