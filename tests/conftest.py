"""Shared fixtures: the smoke profile, and a project root with smoke-sized prepared data.

Tests read the real raw data (``make test`` fetches it first) and never write into the project:
generated files go to a temporary root that ``BAT_ROOT`` points the notebook kernels at.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT))  # `import tests.tiny_models` from any working directory

from bat import paths  # noqa: E402
from bat.config import build, profile_params  # noqa: E402
from bat.stages.fetch import require_raw  # noqa: E402

# One thread: tests stay fast and deterministic on a 2-core machine that runs other work.
torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


@pytest.fixture
def trained_batches(monkeypatch) -> list:
    """The batches the training steps of ``bat.core.train.train`` train on, in order (appended
    as the steps run; a test may clear the list between runs)."""
    import bat.core.train as training

    batches, step_losses = [], training.step_losses

    def recording(task, model, batch, accelerator):
        batches.append(batch)
        return step_losses(task, model, batch, accelerator)

    monkeypatch.setattr(training, "step_losses", recording)
    return batches


@pytest.fixture(scope="session")
def smoke_params() -> dict:
    return profile_params("smoke")


@pytest.fixture(scope="session")
def raw() -> Path:
    return require_raw(paths.RAW)


@pytest.fixture(scope="session")
def smoke_root(tmp_path_factory, raw, smoke_params) -> Path:
    """A project root whose ``data/prepared`` holds the smoke profile's datasets."""
    from bat.stages.prepare import PrepareConfig, prepare

    root = tmp_path_factory.mktemp("smoke_root")
    (root / "data").mkdir()
    (root / "data" / "raw").symlink_to(raw)
    prepare(build(PrepareConfig, smoke_params["prepare"], "prepare"), raw, root / "data" / "prepared")
    return root


def _run_stage(name: str, smoke_root: Path, smoke_params: dict, *extra) -> Path:
    """Run the training stage ``bat.stages.<name>`` on its smoke section: ``models/<name>``, ``runs/<name>``;
    ``extra``: further arguments of its ``run``."""
    import importlib

    from bat.core.runtime import runtime_config

    stage = importlib.import_module(f"bat.stages.{name}")
    stage.run(smoke_params[name], runtime_config(smoke_params), smoke_root / "data" / "prepared", smoke_root / "models" / name,
              smoke_root / "runs" / name, *extra)
    return smoke_root / "models" / name


@pytest.fixture(scope="session")
def smoke_image_backbone(smoke_root, smoke_params, smoke_encoders) -> Path:
    """The smoke profile's image backbone, pre-trained and sampled by its stage under ``smoke_root``
    (judged in the feature space of ``smoke_encoders``)."""
    return _run_stage("backbone_image", smoke_root, smoke_params, smoke_encoders)


@pytest.fixture(scope="session")
def smoke_text_backbone(smoke_root, smoke_params, raw) -> Path:
    """The smoke profile's LM backbone (a from-config LLaMA, real tokenizer), fine-tuned and scored
    by its stage under ``smoke_root``."""
    return _run_stage("backbone_text", smoke_root, smoke_params)


@pytest.fixture(scope="session")
def smoke_encoders(smoke_root, smoke_params) -> Path:
    """The smoke profile's metric encoders, trained and checked by their stage under ``smoke_root``."""
    return _run_stage("encoders", smoke_root, smoke_params)


def _train_oracles(track: str, backbone: Path, smoke_root: Path, smoke_params: dict) -> Path:
    from bat.stages.oracle import load_run, track_options, train_oracle

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(paths, "PREPARED", smoke_root / "data" / "prepared")
        for name in smoke_params["oracles"][track]:
            train_oracle(name, load_run(name, smoke_params), backbone.parent,
                         smoke_root / "models" / "oracles" / track / name, **track_options(track, smoke_params))
    return smoke_root / "models" / "oracles"


@pytest.fixture(scope="session")
def smoke_oracles(smoke_root, smoke_image_backbone, smoke_params) -> Path:
    """The smoke profile's image oracles, trained into ``smoke_root/models/oracles/<run>``."""
    return _train_oracles("image", smoke_image_backbone, smoke_root, smoke_params)


@pytest.fixture(scope="session")
def smoke_text_oracles(smoke_root, smoke_text_backbone, smoke_params) -> Path:
    """The smoke profile's LoRA / DoRA oracles, beside the image ones."""
    return _train_oracles("text", smoke_text_backbone, smoke_root, smoke_params)


@pytest.fixture(scope="session")
def smoke_grids(smoke_root, smoke_encoders, smoke_oracles, smoke_text_oracles, smoke_params) -> Path:
    """Every grid of the smoke profile, run into ``smoke_root/runs/<name>`` as its stage would."""
    from bat.stages.grid import load_grid, run_grid
    from bat.stages.oracle import track_options

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(paths, "PREPARED", smoke_root / "data" / "prepared")
        for track in ("image", "text"):
            for name in smoke_params["grids"][track]:
                run_grid(load_grid(name, smoke_params), smoke_root / "runs" / name,
                         smoke_root / "models", **track_options(track, smoke_params))
    return smoke_root / "runs"
