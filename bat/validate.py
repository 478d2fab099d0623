"""Small checks that config dataclasses call from ``__post_init__``.

Each raises :class:`bat.errors.ConfigError` with the field name, the offending value and the
allowed values, before any data is written or any training starts.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from bat.errors import ConfigError


def choice(field: str, value: Any, allowed: Iterable[Any]) -> None:
    allowed = list(allowed)
    if value not in allowed:
        raise ConfigError(f"{field}: {value!r} is not allowed; choose one of {allowed}")


def positive(field: str, value: Any, *, integer: bool = False) -> None:
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind) or value <= 0:
        what = "a positive integer" if integer else "a positive number"
        raise ConfigError(f"{field}: {value!r} must be {what}")


def non_negative(field: str, value: Any, *, integer: bool = False) -> None:
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind) or value < 0:
        what = "an integer >= 0" if integer else "a number >= 0"
        raise ConfigError(f"{field}: {value!r} must be {what}")


def open_interval(field: str, value: Any, low: float, high: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low < value < high:
        raise ConfigError(f"{field}: {value!r} must lie strictly between {low} and {high}")


def closed_interval(field: str, value: Any, low: float, high: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise ConfigError(f"{field}: {value!r} must lie in [{low}, {high}]")


def listed(field: str, value: Any, hint: str = "") -> None:
    """``value`` must be a list or tuple; a bare string is the usual slip (``-p models ridge``)."""
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"{field}: {value!r} must be a list, e.g. [{value}]{hint}")


GPU_INDEX = "cuda:N"  # in a list of allowed devices: cuda:0, cuda:1, … for each GPU present


def device(field: str, value: Any, allowed: Iterable[str]) -> None:
    """``value`` is one of ``allowed`` and exists here: anything but ``cpu`` needs a CUDA GPU.

    Where ``allowed`` lists :data:`GPU_INDEX`, ``cuda:<i>`` names GPU i, which must exist. The one
    place that decides what a valid device is, for the ``runtime`` section and the stages' own
    ``device`` keys alike. Torch's own error for a missing GPU is a bare ``AssertionError`` deep in
    the first model move; this says which parameter asked for it, before anything is loaded.
    """
    allowed = list(allowed)
    indexed = GPU_INDEX in allowed and isinstance(value, str) and re.fullmatch(r"cuda:\d+", value)
    if not indexed:
        choice(field, value, allowed)
    if value == "cpu":
        return
    import torch

    if not torch.cuda.is_available():
        raise ConfigError(f"{field}: {value!r} needs a CUDA GPU, and torch sees none here "
                          f"(torch {torch.__version__}, built for CUDA {torch.version.cuda}); "
                          "set it to 'cpu'")
    count = torch.cuda.device_count()
    if indexed and int(value.removeprefix("cuda:")) >= count:
        raise ConfigError(f"{field}: {value!r} names a GPU that is not here: torch sees {count} "
                          f"(cuda:0 to cuda:{count - 1})")
