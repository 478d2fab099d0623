"""Parameters: ``params.yaml`` (the ``tiny`` profile), profile overrides, typed sections.

``params.yaml`` is what ``dvc repro`` reads. ``profiles/<name>.yaml`` hold overrides for the
``smoke`` profile (toy sizes, used by tests) and the ``paper`` profile (hub ids, GPU sizes); an
override may only change a key that ``params.yaml`` has, so a typo is an error, not a silent
new parameter; the one exception is a new run in the oracles and grids (:data:`RUN_COLLECTIONS`),
which is validated as a whole. Each stage reads its section into a frozen dataclass that
validates itself.

Floats are read as YAML 1.2 writes them: ``1e-06`` (what ``dvc exp run -S`` writes), ``5e-5``,
``1E-4`` and ``.5`` are numbers, where PyYAML's YAML 1.1 rules would leave the first three strings.
"""

from __future__ import annotations

import copy
import dataclasses
import re
import sys
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import yaml

from bat import paths, validate
from bat.errors import ConfigError

PROFILES = ("tiny", "smoke", "paper")
T = TypeVar("T")


class ParamsLoader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2's float syntax (exponent without a dot or sign)."""


# YAML 1.2 core schema floats (spec 1.2.2, 10.3.2), added after PyYAML's own so that they only
# catch what it would leave a string; an integer (no dot, no exponent) stays an integer.
ParamsLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?$"),
    list("-+.0123456789"))


def parse_yaml(text: str) -> Any:
    """``text`` parsed by :class:`ParamsLoader`; raises ``yaml.YAMLError`` when it is not YAML."""
    return yaml.load(text, Loader=ParamsLoader)


def read_yaml(path: Path) -> dict:
    try:
        loaded = parse_yaml(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path} not found; restore it with `git checkout {Path(path).name}`") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path} is not valid YAML{where}: {getattr(error, 'problem', error)}") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path} must hold a mapping of sections, not {type(loaded).__name__}")
    return loaded


# Mappings of named runs, one DVC stage each (``foreach`` in dvc.yaml): a profile may add a run
# (the paper profile's oracles and grids of the other text tasks); its stage validates it as any
# other, and ``bat.stages.profile`` does so before it writes params.yaml.
RUN_COLLECTIONS = ("oracles.image", "oracles.text", "grids.image", "grids.text")


def merge(base: dict, overrides: dict, where: str = "") -> dict:
    """``base`` with ``overrides`` applied; every overridden key must exist in ``base``.

    In a mapping of :data:`RUN_COLLECTIONS` an override may also add a new run (a mapping);
    any other new key raises :class:`ConfigError` naming it and the keys allowed there.
    """
    merged = copy.deepcopy(base)
    for key, value in overrides.items():
        name = f"{where}{key}"
        if key not in base and where[:-1] in RUN_COLLECTIONS and isinstance(value, dict):
            merged[key] = copy.deepcopy(value)
            continue
        if key not in base:
            raise ConfigError(f"unknown parameter {name!r}; allowed here: {sorted(base)}")
        if isinstance(value, dict) and isinstance(base[key], dict):
            merged[key] = merge(base[key], value, f"{name}.")
        else:
            merged[key] = value
    return merged


def check_profile(name: str) -> str:
    if name not in PROFILES:
        raise ConfigError(f"unknown profile {name!r}; allowed profiles: {list(PROFILES)}")
    return name


def profile_params(name: str, params_path: Path | None = None) -> dict:
    """The full parameter tree of profile ``name``: the tiny base plus that profile's overrides."""
    base = read_yaml(params_path or paths.PARAMS)
    if base.get("profile", "tiny") != "tiny":
        raise ConfigError(f"params.yaml holds profile {base.get('profile')!r}; "
                          "run `python -m bat.stages.profile use tiny` first")
    if check_profile(name) == "tiny":
        return base
    overrides = read_yaml(paths.PROFILES / f"{name}.yaml")
    overrides["profile"] = name
    return merge(base, overrides)


def build(cls: type[T], values: Any, section: str) -> T:
    """Instantiate the dataclass ``cls`` from a mapping, naming unknown and missing keys."""
    if not isinstance(values, dict):
        raise ConfigError(f"section {section!r} must be a mapping of parameters")
    names = [field.name for field in dataclasses.fields(cls)]
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise ConfigError(f"unknown parameter {section}.{unknown[0]}; allowed: {names}")
    missing = [name for name in names if name not in values]
    if missing:
        raise ConfigError(f"{section}.{missing[0]} is missing from the parameters")
    # A string where a list belongs would otherwise be iterated character by character.
    for name, hint in typing.get_type_hints(cls).items():
        if typing.get_origin(hint) in (list, tuple) and name in values:
            validate.listed(f"{section}.{name}", values[name])
    return cls(**values)


def build_parts(values: Any, section: str, *classes: type) -> tuple:
    """One section split over several dataclasses: each gets the keys that are its fields.

    For a stage whose section holds a library config plus settings of the stage's own (e.g. the
    image backbone and how many prompts to sample). A key that no class takes, or a missing one,
    raises :class:`ConfigError` naming ``<section>.<key>``.
    """
    if not isinstance(values, dict):
        raise ConfigError(f"section {section!r} must be a mapping of parameters")
    names = [field.name for cls in classes for field in dataclasses.fields(cls)]
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise ConfigError(f"unknown parameter {section}.{unknown[0]}; allowed: {names}")
    return tuple(build(cls, {field.name: values[field.name] for field in dataclasses.fields(cls)
                             if field.name in values}, section) for cls in classes)


def section(params: dict, name: str) -> dict:
    if name not in params:
        raise ConfigError(f"params.yaml has no section {name!r}; sections: {sorted(params)}")
    return params[name]


def load_section(name: str, cls: type[T], params_path: Path | None = None) -> T:
    params = read_yaml(params_path or paths.PARAMS)
    return build(cls, section(params, name), name)


def run_cli(action: Callable[[], Any]) -> int:
    """Run a stage; a :class:`ConfigError` becomes one line on stderr and exit status 2."""
    try:
        action()
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


def from_namespace(cls: type[T], namespace: dict, section_name: str) -> T:
    """Build ``cls`` from the variables of a notebook's parameters cell (``globals()``)."""
    return build(cls, {field.name: namespace[field.name] for field in dataclasses.fields(cls)
                       if field.name in namespace}, section_name)
