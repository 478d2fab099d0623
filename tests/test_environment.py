"""The conda environment and the pip project list the same packages at the same versions."""

import tomllib

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
