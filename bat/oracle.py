"""The oracle θ^{A*} of each adaptation dataset: a long ``plain`` run, one DVC stage per run.

Usage: ``python -m bat.oracle <run>``; the runs are the entries of ``oracles.image`` and
``oracles.text`` in params.yaml (two DVC stages, so an image oracle does not wait on the LM).
Paper Sec. 4.3 and 5.1.1: an adapter trained long on D^A — here on the larger split of a style
(image adapters) or of a text task (LoRA / DoRA), which shares no item with the few-shot split —
stands in for the optimum that Proposition 2 and the weight difference are measured against. Figures read it with
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
from bat.text_data import ADAPTATION_TASKS

IMAGE_KINDS = ("dreambooth", "locon", "loha", "lokr")
TEXT_KINDS = ("lora", "dora")
TEXT_MAX_LENGTH = 64  # as the text backbone's fine-tune (params backbone_text.max_length)


@dataclass(frozen=True)
class OracleRun:
    adapter: str  # an image kind (on the UNet) or a text kind (on the LM)
    dataset: str  # "<style>_oracle" for image kinds, "<task>_oracle" for text kinds
    learning_rate: float
    steps: int
    batch_size: int
    seed: int

    def __post_init__(self):
        validate.choice("oracles.run.adapter", self.adapter, IMAGE_KINDS + TEXT_KINDS)
        datasets = ([f"{style}_oracle" for style in STYLES] if self.adapter in IMAGE_KINDS
                    else [f"{task}_oracle" for task in ADAPTATION_TASKS])
        validate.choice("oracles.run.dataset", self.dataset, datasets)
        validate.positive("oracles.run.learning_rate", self.learning_rate)
        validate.positive("oracles.run.steps", self.steps, integer=True)
        validate.positive("oracles.run.batch_size", self.batch_size, integer=True)
        validate.non_negative("oracles.run.seed", self.seed, integer=True)


def load_run(name: str, params: dict) -> OracleRun:
    oracles = section(params, "oracles")
    runs = {**oracles["image"], **oracles["text"]}
    if name not in runs:
        raise ConfigError(f"oracles has no run {name!r}; runs: {sorted(runs)}")
    track = "image" if name in oracles["image"] else "text"
    return build(OracleRun, runs[name], f"oracles.{track}.{name}")


def train_oracle(name: str, run: OracleRun, backbone_folder=None, out_folder=None):
    """A long ``plain`` run of ``run.adapter`` on ``run.dataset``, checkpointed in ``out_folder``."""
    from bat.train import TrainConfig, train

    out_folder = out_folder or paths.MODELS / "oracles" / name
    if run.adapter in IMAGE_KINDS:
        model, task, examples = _image_setting(run, backbone_folder or paths.MODELS / "backbone_image")
        mixing = "per_batch"
    else:
        model, task, examples = _text_setting(run, backbone_folder or paths.MODELS / "backbone_text")
        mixing = "regular_interval"
    config = TrainConfig(regime="plain", steps=run.steps, batch_size=run.batch_size, mixing=mixing,
                         learning_rate=run.learning_rate, checkpoint_every=run.steps, seed=run.seed)
    return train(model, AdapterConfig(run.adapter), task, examples, None, config, out_folder)


def _image_setting(run: OracleRun, backbone_folder):
    from bat.adaptation_data import image_examples, style_prompts
    from bat.image_backbone import load_image_backbone, noise_task

    pipe = load_image_backbone(backbone_folder)
    image_set = load_image_set(paths.PREPARED / "images" / f"{run.dataset}.npz")
    examples = image_examples(pipe, image_set, style_prompts(image_set.captions))
    return pipe.unet, noise_task(pipe), examples


def _text_setting(run: OracleRun, backbone_folder):
    from bat.adaptation_data import text_examples
    from bat.io import read_jsonl
    from bat.tasks import CausalLMTask
    from bat.text_backbone import load_backbone

    # Eager attention: the bat regime's selectors take per-sample gradients of this model.
    model, tokenizer = load_backbone(backbone_folder, attn_implementation="eager")
    records = read_jsonl(paths.PREPARED / "text" / "tasks" / f"{run.dataset}.jsonl")
    return model, CausalLMTask(), text_examples(tokenizer, records, TEXT_MAX_LENGTH)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    args = parser.parse_args(argv)
    return run_cli(lambda: train_oracle(args.run, load_run(args.run, read_yaml(paths.PARAMS))))


if __name__ == "__main__":
    sys.exit(main())
