"""Where a stage's independent units of work ("cells") run: in this process, or as Ray tasks.

A cell is pure: ``fn(context, cell)`` returns a picklable result that depends on nothing but its
arguments and the files they name, so any process on any node that sees the project's files
computes the same result. :func:`run_cells` runs the cells an output still lacks and returns
every result in the cells' order, so the tables a stage assembles from them do not depend on
the executor (``executor`` in params.yaml, :class:`ExecutorConfig`):

``local`` (the default)
    one cell after the other in this process;
``ray``
    one Ray task per cell, with ``num_cpus_per_run`` CPUs and ``num_gpus_per_run`` GPUs
    (a fraction below 1 shares a GPU), on the Ray instance this process is already connected
    to, else on the cluster at ``address`` or ``RAY_ADDRESS``, else on a new local instance.
    A task whose worker dies is re-run up to ``max_retries`` times. On a cluster every node
    must see the project at the driver's path (a shared file system): workers import ``bat``
    from there and read ``models/`` and ``data/`` as the driver names them.

Staging: each finished cell is written at once, atomically, to one file in a folder beside the
output (:class:`Staging`), so a stage that is killed and run again computes only the cells it
lacks. The folder is reused only while the stage's fingerprint (its settings and the size and
modification time of every input file) is unchanged, and the stage deletes it once the output
is written.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bat import paths, validate
from bat.config import build, section
from bat.errors import ConfigError
from bat.io import write_bytes, write_text

EXECUTORS = ("local", "ray")


@dataclass(frozen=True)
class ExecutorConfig:
    """``executor`` in params.yaml: where the cells of a grid run (module docstring).

    Not a scientific parameter: the tables are the same under every executor, at equal torch
    threads per cell (tests/test_executor.py).
    """

    kind: str = "local"
    address: str | None = None  # ray: a cluster, "head:6379"; None: RAY_ADDRESS, else a new local one
    num_cpus_per_run: float = 1  # ray: CPUs per cell, and its torch threads (Ray sets OMP_NUM_THREADS)
    num_gpus_per_run: float = 0  # ray: GPUs per cell; a fraction below 1 shares a GPU
    max_retries: int = 3  # ray: re-runs of a cell whose worker died (not of a cell that raised)

    def __post_init__(self):
        validate.choice("executor.kind", self.kind, EXECUTORS)
        if self.address is not None and (not isinstance(self.address, str) or not self.address.strip()):
            raise ConfigError(f"executor.address: {self.address!r} must be null or a Ray address "
                              "such as 'head:6379'")
        validate.positive("executor.num_cpus_per_run", self.num_cpus_per_run)
        validate.non_negative("executor.num_gpus_per_run", self.num_gpus_per_run)
        # Ray splits a GPU only below one: 1.5 GPUs cannot be scheduled.
        if self.num_gpus_per_run > 1 and self.num_gpus_per_run != int(self.num_gpus_per_run):
            raise ConfigError(f"executor.num_gpus_per_run: {self.num_gpus_per_run!r} must be a "
                              "fraction below 1 or a whole number")
        validate.non_negative("executor.max_retries", self.max_retries, integer=True)
        if self.kind == "local":
            for name, unused in (("address", self.address is not None),
                                 ("num_gpus_per_run", self.num_gpus_per_run != 0)):
                if unused:
                    raise ConfigError(f"executor.{name}: {getattr(self, name)!r} is a Ray setting; "
                                      "set executor.kind to 'ray', or this key to its default")


def load_executor(params: dict) -> ExecutorConfig:
    return build(ExecutorConfig, section(params, "executor"), "executor")


def fingerprint(settings: Any, inputs: Sequence[Path]) -> str:
    """A hex digest of ``settings`` (JSON-able) and of every file under ``inputs``: its path,
    size and modification time (``__pycache__`` left out: importing writes it). A re-run
    upstream stage rewrites its files, and so changes the fingerprint, without hashing gigabytes."""
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    for root in inputs:
        for folder, subfolders, files in os.walk(root, followlinks=True):
            subfolders[:] = sorted(  # in place: os.walk descends in this order, and skips the rest
                name for name in subfolders if name != "__pycache__")
            for name in sorted(files):
                path = os.path.join(folder, name)
                stat = os.stat(path)
                digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


class Staging:
    """Finished cells of the output ``out_folder``: ``.<name>.cells/<cell>.pkl`` beside it.

    Pickles keep the results exactly (numpy scalar types included, which decide how pandas
    writes a number); they are read back only by the code that wrote them, under the same
    ``fingerprint``: a folder left by other settings or inputs is deleted first.
    """

    def __init__(self, out_folder: str | Path, fingerprint: str):
        out_folder = Path(out_folder)
        self.folder = out_folder.parent / f".{out_folder.name}.cells"
        stamp = self.folder / "fingerprint"
        if self.folder.exists() and (not stamp.exists() or stamp.read_text() != fingerprint):
            shutil.rmtree(self.folder)
        if not stamp.exists():
            write_text(stamp, fingerprint)

    def path(self, name: str) -> Path:
        return self.folder / f"{name}.pkl"

    def finished(self, name: str) -> bool:
        return self.path(name).exists()

    def save(self, name: str, result: Any) -> None:
        write_bytes(self.path(name), pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL))

    def load(self, name: str) -> Any:
        return pickle.loads(self.path(name).read_bytes())

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def run_cells(fn: Callable[[Any, Any], Any], context: Any, cells: Sequence, names: Sequence[str],
              config: ExecutorConfig, staging: Staging) -> list:
    """``fn(context, cell)`` for every cell that ``staging`` lacks; every result, in ``cells``' order.

    ``names`` are the cells' file names in ``staging`` (unique). ``fn``, ``context`` and the cells
    must pickle (a Ray task receives them); ``fn`` is looked up by the caller, so a test may wrap it.
    Each result is staged as soon as it arrives; all are then read back from ``staging``, so a
    resumed stage assembles its output exactly as an uninterrupted one. A :class:`ConfigError`
    raised in a Ray worker is raised here as itself.
    """
    if len(set(names)) != len(names):
        raise ValueError("run_cells: every cell needs its own name")
    todo = [(name, cell) for name, cell in zip(names, cells) if not staging.finished(name)]
    if config.kind == "local":
        for name, cell in todo:
            staging.save(name, fn(context, cell))
    elif todo:
        _run_on_ray(fn, context, todo, config, staging)
    return [staging.load(name) for name in names]


def _in_worker(driver_paths: dict[str, Path], fn: Callable, context: Any, cell: Any) -> Any:
    """A Ray task: ``fn(context, cell)`` with the driver's :mod:`bat.paths` (tests re-point it)."""
    for name, value in driver_paths.items():
        setattr(paths, name, value)
    return fn(context, cell)


def _run_on_ray(fn: Callable, context: Any, todo: list[tuple[str, Any]], config: ExecutorConfig,
                staging: Staging) -> None:
    import ray
    from ray.exceptions import RayTaskError

    started = not ray.is_initialized()
    if started:
        # "local" starts a new instance: an address-less init would join whatever cluster this
        # machine last started (ray.init's lookup of /tmp/ray), e.g. another user's.
        ray.init(address=config.address or os.environ.get("RAY_ADDRESS") or "local",
                 include_dashboard=False)
    code_root = str(Path(__file__).resolve().parents[2])
    task = ray.remote(
        num_cpus=config.num_cpus_per_run, num_gpus=config.num_gpus_per_run,
        max_retries=config.max_retries,
        # A CPU worker keeps what it loaded (the track) for its next cell; a GPU worker exits
        # after one, since a reused process stays on the device of its first cell.
        max_calls=1 if config.num_gpus_per_run else 0,
        # Workers import the driver's bat, wherever the environment's own install points.
        runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join(
            filter(None, [code_root, os.environ.get("PYTHONPATH")]))}},
    )(_in_worker)
    driver_paths = {name: value for name, value in vars(paths).items() if isinstance(value, Path)}
    pending = {task.remote(driver_paths, fn, context, cell): name for name, cell in todo}
    try:
        while pending:
            (ready,), _ = ray.wait(list(pending), num_returns=1)
            name = pending.pop(ready)
            try:
                result = ray.get(ready)
            except RayTaskError as error:
                if isinstance(error.cause, ConfigError):
                    raise error.cause from None
                raise
            staging.save(name, result)
    finally:
        for ref in pending:  # after an error: the other cells' work would be thrown away
            ray.cancel(ref, force=True)
        if started:
            ray.shutdown()
