"""The oracle θ^{A*} of each adaptation dataset: a long ``plain`` run, one DVC stage per run.

Usage: ``python -m bat.oracle <run>``; the runs are the ``oracles.runs`` entries of params.yaml.
Paper Sec. 4.3 and 5.1.1: an adapter trained long on D^A — here on the larger split of a style
that shares no concept with the few-shot split — stands in for the optimum that Proposition 2
and the weight difference are measured against. Figures read it with
``bat.checkpoint.trained_vector(paths.MODELS / "oracles" / <run>)``.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

from bat import paths, validate
from bat.adapters import AdapterConfig
from bat.config import build, read_yaml, run_cli, section
from bat.errors import ConfigError
from bat.image_data import STYLES, load_image_set

IMAGE_KINDS = ("dreambooth", "locon", "loha", "lokr")


@dataclass(frozen=True)
class OracleRun:
    adapter: str  # an image adapter kind
    dataset: str  # "<style>_oracle": the larger split of a style
    learning_rate: float
    steps: int
    batch_size: int
    seed: int

    def __post_init__(self):
        validate.choice("oracles.runs.adapter", self.adapter, IMAGE_KINDS)
        validate.choice("oracles.runs.dataset", self.dataset, [f"{style}_oracle" for style in STYLES])
        validate.positive("oracles.runs.learning_rate", self.learning_rate)
        validate.positive("oracles.runs.steps", self.steps, integer=True)
        validate.positive("oracles.runs.batch_size", self.batch_size, integer=True)
        validate.non_negative("oracles.runs.seed", self.seed, integer=True)


def load_run(name: str, params: dict) -> OracleRun:
    runs = section(params, "oracles")["runs"]
    if name not in runs:
        raise ConfigError(f"oracles.runs has no run {name!r}; runs: {sorted(runs)}")
    return build(OracleRun, runs[name], f"oracles.runs.{name}")


def train_oracle(name: str, run: OracleRun, backbone_folder=None, out_folder=None):
    from diffusers import DDPMScheduler

    from bat.adaptation_data import image_examples, style_prompts
    from bat.image_backbone import load_image_backbone
    from bat.tasks import DiffusionTask
    from bat.train import TrainConfig, train

    pipe = load_image_backbone(backbone_folder or paths.MODELS / "backbone_image")
    image_set = load_image_set(paths.PREPARED / "images" / f"{run.dataset}.npz")
    examples = image_examples(pipe, image_set, style_prompts(image_set.captions))
    task = DiffusionTask(DDPMScheduler.from_config(pipe.scheduler.config))
    config = TrainConfig(regime="plain", steps=run.steps, batch_size=run.batch_size,
                         learning_rate=run.learning_rate, checkpoint_every=run.steps, seed=run.seed)
    return train(pipe.unet, AdapterConfig(run.adapter), task, examples, None, config,
                 out_folder or paths.MODELS / "oracles" / name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    args = parser.parse_args(argv)
    return run_cli(lambda: train_oracle(args.run, load_run(args.run, read_yaml(paths.PARAMS))))


if __name__ == "__main__":
    sys.exit(main())
