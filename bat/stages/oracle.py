"""The oracle θ^{A*} of each adaptation dataset: a long ``plain`` run, one DVC stage per run.

Usage: ``python -m bat.stages.oracle <run>``; the runs are the entries of ``oracles.image`` and
``oracles.text`` in params.yaml (two DVC stages, so an image oracle does not wait on the LM).
Paper Sec. 4.3 and 5.1.1: an adapter trained long on D^A — here on the larger split of a style
(image adapters) or of a text task (LoRA / DoRA), which shares no item with the few-shot split —
stands in for the optimum that Proposition 2 and the weight difference are measured against. Figures read it with
``bat.core.checkpoint.trained_vector(paths.MODELS / "oracles" / <track> / <run>)`` (one folder per
track, so that a grid depends on its own track's oracles only).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

from bat import paths, validate
from bat.config import build, read_yaml, run_cli, section
from bat.core.adapters import AdapterConfig
from bat.core.runtime import RuntimeConfig, runtime_config
from bat.core.track import TRACKS, track_module
from bat.errors import ConfigError


@dataclass(frozen=True)
class OracleRun:
    track: str  # from the run's place in params.yaml: oracles.<track>.<name>
    adapter: str  # an adapter kind of the track
    dataset: str  # "<dataset>_oracle": the larger split of a D^A dataset of the track
    learning_rate: float
    steps: int
    batch_size: int
    seed: int

    def __post_init__(self):
        where = f"oracles.{self.track}"
        validate.choice("oracles (track)", self.track, TRACKS)
        track = track_module(self.track)
        validate.choice(f"{where}.adapter", self.adapter, track.ADAPTERS)
        validate.positive(f"{where}.learning_rate", self.learning_rate)
        validate.positive(f"{where}.steps", self.steps, integer=True)
        validate.positive(f"{where}.batch_size", self.batch_size, integer=True)
        validate.non_negative(f"{where}.seed", self.seed, integer=True)


def load_run(name: str, params: dict) -> OracleRun:
    oracles = section(params, "oracles")
    for track in TRACKS:
        if name in (oracles.get(track) or {}):
            run = build(OracleRun, {"track": track, **oracles[track][name]}, f"oracles.{track}.{name}")
            validate.choice(f"oracles.{track}.{name}.dataset", run.dataset,
                            [f"{dataset}_oracle" for dataset in track_module(track).datasets(params)])
            return run
    known = sorted(n for track in TRACKS for n in (oracles.get(track) or {}))
    raise ConfigError(f"oracles has no run {name!r}; runs: {known}")


def track_options(track: str, params: dict) -> dict:
    """What loading a track needs beyond ``models/``: the text track's example length."""
    if track == "text":
        return {"max_length": section(params, "backbone_text")["max_length"]}
    return {}


def train_oracle(name: str, run: OracleRun, models_folder=None, out_folder=None,
                 runtime: RuntimeConfig | None = None, **track_options):
    """A long ``plain`` run of ``run.adapter`` on ``run.dataset``, checkpointed in ``out_folder``;
    the backbone is loaded and trained on ``runtime``'s device and precision (None: CPU, float32)."""
    from bat.core.train import TrainConfig, train

    out_folder = out_folder or paths.MODELS / "oracles" / run.track / name
    module = track_module(run.track)
    track = module.load(models_folder or paths.MODELS, runtime=runtime, **track_options)
    config = TrainConfig(regime="plain", steps=run.steps, batch_size=run.batch_size, mixing=module.MIXING,
                         learning_rate=run.learning_rate, checkpoint_every=run.steps, seed=run.seed)
    return train(track.start_model, AdapterConfig(run.adapter), track.task, track.examples(run.dataset),
                 None, config, out_folder, runtime=runtime)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    args = parser.parse_args(argv)

    def run():
        params = read_yaml(paths.PARAMS)
        oracle = load_run(args.run, params)
        return train_oracle(args.run, oracle, runtime=runtime_config(params),
                            **track_options(oracle.track, params))

    return run_cli(run)


if __name__ == "__main__":
    sys.exit(main())
