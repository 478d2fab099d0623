"""What a training run leaves on disk, written so that a kill never leaves half a file.

A run folder holds::

    state.pt                 latest resumable state: step, trainable tensors, optimizer, RNG,
                             selector state (``state_dict()`` of a selector that has one), log,
                             and the ``runtime`` it trained under (device, precision)
    log.json                 one row per step so far (see ``bat.core.train``)
    adapters/step-000050/    the adapter at each checkpoint, in its ecosystem's format

``state.pt`` is replaced in one ``os.replace``; an adapter folder is written beside its final
name and renamed into place. Only the latest state is kept (for full fine-tuning it is as large
as the model and its optimizer), while every adapter export is kept for per-step evaluation.
Its tensors are saved on the CPU and loaded there, so a run resumes on another device
(bit-identically only on the one it started on: kernels differ between devices).
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch
from accelerate.utils import send_to_device

from bat.io import atomic_directory, atomic_path

STATE_FILE = "state.pt"
LOG_FILE = "log.json"


def state_path(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / STATE_FILE


def log_path(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / LOG_FILE


def adapter_dir(run_dir: str | os.PathLike, step: int) -> Path:
    return Path(run_dir) / "adapters" / f"step-{step:06d}"


def capture_rng(generators: dict[str, torch.Generator]) -> dict:
    """Every random state a step can consume: global torch (dropout; on each GPU too, when there
    are any), Python, NumPy, ``generators``.

    NumPy's key array becomes a list so the file loads with ``torch.load(weights_only=True)``.
    """
    name, keys, position, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": random.getstate(),
        "numpy": [name, keys.tolist(), position, has_gauss, cached],
        "generators": {key: generator.get_state() for key, generator in generators.items()},
    }


def restore_rng(state: dict, generators: dict[str, torch.Generator]) -> None:
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda") or []  # none in a CPU run's checkpoint: the GPUs keep their seeding
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), position, has_gauss, cached))
    for key, generator in generators.items():
        generator.set_state(state["generators"][key])


def save_state(run_dir: str | os.PathLike, state: dict) -> None:
    """Write ``state`` (nested dicts and lists of tensors and plain values), its tensors on the CPU."""
    with atomic_path(state_path(run_dir)) as tmp:
        torch.save(send_to_device(state, "cpu"), tmp)


def load_state(run_dir: str | os.PathLike) -> dict | None:
    """The saved training state of ``run_dir``, or ``None`` when the run has not checkpointed."""
    path = state_path(run_dir)
    return torch.load(path, weights_only=True, map_location="cpu") if path.exists() else None


def trained_vector(run_dir: str | os.PathLike) -> torch.Tensor:
    """The run's latest trainable parameters as one vector, ordered as
    :func:`bat.core.curvature.flat_parameters`.

    This is how an oracle run (θ^{A*}, paper Sec. 4.3) is handed to later runs' ``oracle=``.
    """
    state = load_state(run_dir)
    if state is None:
        raise FileNotFoundError(f"{state_path(run_dir)} not found; train the oracle run first")
    return torch.cat([tensor.reshape(-1) for tensor in state["trainable"].values()])
