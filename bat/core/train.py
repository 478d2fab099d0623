"""One training loop for the paper's three regimes, readable top to bottom.

========  =====================================================================================
regime    each step trains on
========  =====================================================================================
plain     examples of D^A only
random    D^A plus backbone examples drawn at random (random augmented training, paper Sec. 5)
bat       D^A plus the backbone examples a :class:`bat.core.protocols.Selector` picks (Alg. 1)
========  =====================================================================================

How many backbone examples join each step is the mixer's (``bat.core.mixing``, ratio γ of Def. 2).
Matched baselines come from a finished ``bat`` run's log: :func:`backbone_schedule` gives a
``random`` run the same number of extra samples at every step, and :func:`compute_matched_steps`
gives a ``plain`` run the extra steps that selection's wall time would have paid for.

The oracle θ^{A*} (Sec. 4.3) is a long ``plain`` run on D^A, or on a larger disjoint split::

    train(unet, AdapterConfig("dreambooth"), task, oracle_split, None,
          TrainConfig(regime="plain", steps=40_000), "models/oracle")
    oracle = bat.core.checkpoint.trained_vector("models/oracle")  # then train(..., oracle=oracle)

A run folder (see ``bat.core.checkpoint``) is resumed where it stopped: calling :func:`train` again
with the same arguments after a kill gives bit-identical weights to an uninterrupted run.

Device and precision come from a :class:`bat.core.runtime.RuntimeConfig`, carried out by Hugging
Face Accelerate: an ``Accelerator`` prepares the model and optimizer, runs the forward under its
autocast, back-propagates (with a gradient scaler under fp16) and clips. With the default runtime
(CPU, float32, no autocast) the numbers are those of a plain PyTorch loop, bit for bit. Launched
with ``accelerate launch --num_processes N``, one run trains data-parallel: every process draws
the same step, trains on its share of the batch, and DDP averages the gradients.
"""

from __future__ import annotations

import dataclasses
import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from accelerate.utils import broadcast_object_list
from torch import nn
from tqdm.auto import tqdm

from bat import validate
from bat.core.adapters import AdapterConfig, attach_adapter, save_adapter, trainable_parameters
from bat.core.curvature import flat_parameters
from bat.core.checkpoint import adapter_dir, capture_rng, load_state, log_path, restore_rng, save_state
from bat.errors import ConfigError
from bat.io import write_json
from bat.core.mixing import SCHEMES, Mixer, RandomSelector, derived_seed, realised_ratio
from bat.core.protocols import Batch, SelectionContext, Selector, concat_batches, take_examples
from bat.core.runtime import (RuntimeConfig, enable_gradient_checkpointing, make_accelerator, model_device,
                              to_device, update)

REGIMES = ("plain", "random", "bat")
# Settings a resumed run may change: none of them alters the steps already taken.
RESUMABLE_CHANGES = ("steps", "checkpoint_every", "log_every")


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the run stopped and its last checkpoint was kept."""


def _largest(params: dict[str, torch.Tensor]) -> float:
    return max(float(p.detach().abs().max()) for p in params.values())


@dataclass(frozen=True)
class TrainConfig:
    """Settings of one run, checked on construction (each error names the field)."""

    regime: str = "plain"
    steps: int = 200  # App. B: LoCon runs were 200 steps
    batch_size: int = 4  # D^A examples per step (per_batch, plain); all examples (regular_interval)
    learning_rate: float = 5e-6  # App. B for DreamBooth and LoCon; LoRA/DoRA used 5e-5
    weight_decay: float = 1e-2  # App. B, AdamW
    betas: tuple[float, float] = (0.9, 0.999)  # App. B
    eps: float = 1e-8  # App. B
    max_grad_norm: float = 1.0  # as diffusers' training scripts; 0 turns clipping off
    gamma: float = 0.5  # n/k, the share of D^A in D^bat (Def. 2); unused by plain
    mixing: str = "per_batch"  # per_batch (diffusion) or regular_interval (LM, App. B)
    candidates: int = 64  # D^B examples offered to the selector per step; 0 = all of D^B
    checkpoint_every: int = 50  # App. B saved every 50 steps for the benchmark scores
    log_every: int = 10  # steps between weight-difference measurements and progress updates
    seed: int = 0

    def __post_init__(self):
        validate.choice("train.regime", self.regime, REGIMES)
        validate.choice("train.mixing", self.mixing, SCHEMES)
        for name in ("steps", "batch_size", "checkpoint_every", "log_every"):
            validate.positive(f"train.{name}", getattr(self, name), integer=True)
        validate.positive("train.learning_rate", self.learning_rate)
        validate.positive("train.eps", self.eps)
        for name in ("weight_decay", "max_grad_norm"):
            validate.non_negative(f"train.{name}", getattr(self, name))
        for name in ("candidates", "seed"):
            validate.non_negative(f"train.{name}", getattr(self, name), integer=True)
        validate.open_interval("train.gamma", self.gamma, 0.0, 1.0)
        if not isinstance(self.betas, (list, tuple)) or len(self.betas) != 2:
            raise ConfigError(f"train.betas: {self.betas!r} must be two numbers in [0, 1)")
        object.__setattr__(self, "betas", tuple(self.betas))
        for beta in self.betas:
            validate.closed_interval("train.betas", beta, 0.0, 0.999999)


@dataclass
class TrainResult:
    model: nn.Module  # the backbone with its trained adapter
    log: list[dict]  # one row per step, as written to log.json


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def count_examples(name: str, examples: Batch) -> int:
    sizes = {len(values) for values in examples.values()} if examples else {0}
    if len(sizes) != 1 or 0 in sizes:
        raise ConfigError(f"{name}: every tensor needs the same, non-zero number of examples "
                          f"in its first dimension; got {sorted(sizes)}")
    return sizes.pop()


def check_inputs(task, adaptation: Batch, backbone: Batch | None, config: TrainConfig,
                 selector, backbone_counts, mixer: Mixer) -> None:
    """Reject every input problem before a model is touched."""
    if not hasattr(task, "prepare"):
        raise ConfigError(f"task: {type(task).__name__} has no prepare(examples, generator); "
                          "use bat.image.task.DiffusionTask or bat.text.task.CausalLMTask")
    count_examples("adaptation", adaptation)
    if config.regime == "plain":
        if selector is not None or backbone_counts is not None:
            raise ConfigError("train.regime: 'plain' uses no selector and no backbone_counts")
        return
    if config.regime == "bat" and not isinstance(selector, Selector):
        raise ConfigError("train.regime: 'bat' needs a selector with select(context, count)")
    if config.regime == "random" and selector is not None:
        raise ConfigError("train.regime: 'random' draws with RandomSelector(seed); pass no selector")
    if backbone is None:
        raise ConfigError(f"train.regime: {config.regime!r} needs the backbone examples D^B")
    n_backbone = count_examples("backbone", backbone)
    for name, values in adaptation.items():
        other = backbone.get(name)
        if other is None or other.shape[1:] != values.shape[1:] or other.dtype != values.dtype:
            raise ConfigError(f"backbone.{name}: must match adaptation.{name} beyond the first "
                              f"dimension ({tuple(values.shape[1:])}, {values.dtype}) to share batches")
    most = mixer.max_backbone_count()
    if backbone_counts is not None:
        if len(backbone_counts) != config.steps or min(backbone_counts) < 0:
            raise ConfigError(f"backbone_counts: need {config.steps} counts >= 0, one per step")
        most = max(backbone_counts)
    offered = min(config.candidates or n_backbone, n_backbone)
    if offered < most:
        raise ConfigError(f"train.candidates: {offered} candidates are fewer than the {most} "
                          "backbone examples a step may need; raise it or gamma")


def check_resumable(state: dict, adapter: AdapterConfig, config: TrainConfig, run_dir) -> None:
    if state["adapter"]["kind"] != adapter.kind:
        raise ConfigError(f"{run_dir} holds a checkpoint of a {state['adapter']['kind']!r} "
                          f"adapter, not {adapter.kind!r}; use another run folder")
    if state["adapter"] != dataclasses.asdict(adapter):
        raise ConfigError(f"{run_dir}: the checkpoint's adapter {state['adapter']} differs from "
                          f"{dataclasses.asdict(adapter)}")
    now = dataclasses.asdict(config)
    changed = [k for k in now if k not in RESUMABLE_CHANGES and state["config"][k] != now[k]]
    if changed:
        raise ConfigError(f"{run_dir}: cannot resume with train.{changed[0]} = {now[changed[0]]!r}; "
                          f"the checkpoint used {state['config'][changed[0]]!r}")


def select_backbone(selector, model: nn.Module, task, adaptation: Batch, backbone: Batch,
                    config: TrainConfig, count: int, step: int,
                    generator: torch.Generator) -> list[int]:
    """Offer candidates of D^B to ``selector``; it scores them against all of D^A.

    The candidates are a fresh random draw of ``config.candidates`` examples at every step (all of
    D^B when ``config.candidates`` is 0 or D^B holds no more). D^A and the candidates are
    prepared only if the selector looks at them (:class:`SelectionContext`). A stateful selector may return ids it chose at an earlier step
    that this draw lacks (Algorithm 1 keeps D^B' between checks); any id must index D^B.
    Raises RuntimeError when the selector returns more than ``count`` ids, repeats one, or
    returns one outside D^B.
    """
    n_backbone = count_examples("backbone", backbone)
    if config.candidates and config.candidates < n_backbone:
        candidate_ids = torch.randperm(n_backbone, generator=generator)[:config.candidates].tolist()
    else:
        candidate_ids = list(range(n_backbone))
    # The batches' draws (diffusion noise) come from a seed taken here at every step, so the
    # stream does not depend on whether a selector asked for them.
    prepare_seed = int(torch.randint(2 ** 62, (1,), generator=generator))
    n_adaptation = count_examples("adaptation", adaptation)

    def prepare() -> tuple[Batch, Batch]:
        # One prepare for both, so that they share a shape (the LM task trims padding per
        # batch) and a selector can stack them into D^bat.
        offered = task.prepare(concat_batches(adaptation, take_examples(backbone, candidate_ids)),
                               torch.Generator().manual_seed(prepare_seed))
        offered = to_device(offered, model_device(model))
        return ({k: v[:n_adaptation] for k, v in offered.items()},
                {k: v[n_adaptation:] for k, v in offered.items()})

    model.eval()  # scores without dropout noise; the step itself trains in train mode
    context = SelectionContext(model=model, task=task, candidate_ids=candidate_ids, step=step,
                               prepare=prepare)
    chosen = [int(i) for i in selector.select(context, count)]
    if (len(chosen) > count or len(set(chosen)) != len(chosen)
            or not all(0 <= i < n_backbone for i in chosen)):
        raise RuntimeError(f"{type(selector).__name__}.select returned {chosen}: want at most "
                           f"{count} distinct ids of the {n_backbone} examples of D^B")
    return chosen


def step_losses(task, model: nn.Module, batch: Batch, accelerator) -> tuple[torch.Tensor, torch.Tensor]:
    """The loss to back-propagate and the batch's mean loss R_k^{bat|A} (Def. 1) to log.

    In one process both are the batch mean. Under ``accelerate launch`` with W processes, process
    r trains on examples r, r + W, … of the step's batch; DDP averages the processes' gradients,
    so each back-propagates W / B times the sum of its losses, and the average is the gradient of
    the whole batch's mean loss (B examples).
    """
    if not accelerator.use_distributed:
        loss = task.batch_losses(model, batch).mean()
        return loss, loss
    world, size = accelerator.num_processes, count_examples("batch", batch)
    share = {name: values[accelerator.process_index::world] for name, values in batch.items()}
    local = task.batch_losses(model, share).sum()
    return local * world / size, accelerator.reduce(local.detach().clone(), "sum") / size


def train(model: nn.Module, adapter: AdapterConfig, task, adaptation: Batch,
          backbone: Batch | None, config: TrainConfig, run_dir: str | os.PathLike, *,
          selector: Selector | None = None, oracle: torch.Tensor | None = None,
          backbone_counts: Sequence[int] | None = None, progress: bool = True,
          on_step: Callable[[int, nn.Module], None] | None = None,
          runtime: RuntimeConfig | None = None) -> TrainResult:
    """Train ``adapter`` on ``model`` in ``config.regime``, checkpointing into ``run_dir``.

    ``adaptation`` (D^A) and ``backbone`` (D^B) hold stored examples, first dimension the example
    (``task.prepare`` turns them into batches). ``oracle`` is θ^{A*} as one vector: the weight
    difference is logged against it. ``backbone_counts`` fixes the backbone examples of each step
    (a matched ``random`` run, see :func:`backbone_schedule`). A selector with ``state_dict`` and
    ``load_state_dict`` has its state checkpointed too.

    ``runtime`` (None: :class:`RuntimeConfig` defaults, CPU float32) says where and in what
    precision: the model moves to its device (the adapter's weights are float32, the backbone
    keeps the dtype it has), batches follow it, and the forward passes of training and selection
    run under its autocast. Random draws (data order, noise, candidates) are made on the CPU,
    so they are the same on every device. With ``runtime.gradient_checkpointing`` the model
    recomputes activations in the backward pass of each step (selection scores without it).
    Under ``accelerate launch`` (module docstring) the selection of process 0 is used by all,
    only process 0 writes the run folder, and ``on_step`` runs on every process.

    The log has one row per step: ``step`` (1-based), ``loss`` (mean over the step's batch),
    ``n_adaptation`` and ``n_backbone`` (examples trained on so far), ``realised_ratio`` (n/k so
    far), ``weight_difference`` (‖θ − θ*‖ every ``log_every`` steps when ``oracle`` is given, else
    None), ``seconds`` (the step without selection) and ``selection_seconds``.

    ``on_step(step, model)``, if given, is called after every step (1-based, after any checkpoint),
    e.g. to evaluate the model mid-training; it must leave the model's weights alone.
    """
    runtime = runtime or RuntimeConfig()
    gamma = None if config.regime == "plain" else config.gamma
    mixer = Mixer(count_examples("adaptation", adaptation), config.batch_size, gamma,
                  config.mixing, config.seed)
    check_inputs(task, adaptation, backbone, config, selector, backbone_counts, mixer)
    if config.regime == "random":
        selector = RandomSelector(config.seed)
    accelerator = make_accelerator(runtime)
    if accelerator.num_processes > config.batch_size:
        raise ConfigError(f"train.batch_size: {config.batch_size} examples per step cannot be "
                          f"shared by {accelerator.num_processes} processes; launch at most "
                          f"{config.batch_size}")
    # Under a distributed launch each process has its own GPU, which Accelerate picked.
    device = accelerator.device if accelerator.use_distributed else runtime.torch_device

    seed_everything(config.seed)  # the adapter's initial weights and dropout come from here
    model = attach_adapter(model, adapter).to(device)
    if runtime.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    params = trainable_parameters(model)
    if oracle is not None and oracle.numel() != sum(p.numel() for p in params.values()):
        raise ConfigError(f"oracle: {oracle.numel()} values, but the {adapter.kind!r} adapter has "
                          f"{sum(p.numel() for p in params.values())} trainable parameters")
    oracle = oracle.to(device) if oracle is not None else None
    optimizer = torch.optim.AdamW(params.values(), lr=config.learning_rate, betas=config.betas,
                                  eps=config.eps, weight_decay=config.weight_decay)
    # ``trained`` is ``model`` itself in one process, DDP around it under a distributed launch;
    # selection, measurements and checkpoints use ``model``.
    trained, optimizer = accelerator.prepare(model, optimizer)
    # Separate streams, so selection's draws never shift the training noise of a later step.
    # The data stream is reseeded at every step (below), so only selection's is checkpointed.
    data_generator = torch.Generator()
    generators = {"selection": torch.Generator().manual_seed(derived_seed(config.seed, 3))}

    log, start, last_checkpoint = [], 0, None
    state = load_state(run_dir)
    if state is not None:
        check_resumable(state, adapter, config, run_dir)
        with torch.no_grad():
            for name, param in params.items():
                param.copy_(state["trainable"][name])
        optimizer.load_state_dict(state["optimizer"])
        restore_rng(state["rng"], generators)
        if hasattr(selector, "load_state_dict"):
            selector.load_state_dict(state["selector"])
        log, start = state["log"], state["step"]
        last_checkpoint = start

    initial_largest = _largest(params)
    bar = tqdm(range(start, config.steps), initial=start, total=config.steps,
               desc=f"{adapter.kind}/{config.regime}",
               disable=not progress or not accelerator.is_main_process)
    for step in bar:
        plan = mixer.plan(step)
        count = plan.backbone_count if backbone_counts is None else backbone_counts[step]
        backbone_ids, selection_seconds = [], 0.0
        if count:
            started = time.perf_counter()
            with accelerator.autocast():
                backbone_ids = select_backbone(selector, model, task, adaptation, backbone, config,
                                               count, step, generators["selection"])
            if accelerator.use_distributed:  # one selection for all, should kernels differ
                backbone_ids = broadcast_object_list([backbone_ids])[0]
            selection_seconds = time.perf_counter() - started

        started = time.perf_counter()
        examples = take_examples(adaptation, plan.adaptation_ids)
        if backbone_ids:
            examples = concat_batches(examples, take_examples(backbone, backbone_ids))
        # Reseeded per step: a bat step draws for more examples than the plain step of the same
        # seed, and D^A's noise at later steps must not depend on how many (paired regimes).
        data_generator.manual_seed(derived_seed(config.seed, 2, step))
        batch = to_device(task.prepare(examples, data_generator), device)
        trained.train()
        with accelerator.autocast():
            loss, batch_loss = step_losses(task, trained, batch, accelerator)
        if not torch.isfinite(batch_loss):
            kept = (f"the last good checkpoint (step {last_checkpoint}) is kept in {run_dir}"
                    if last_checkpoint else "no checkpoint had been written yet")
            # Say what is known, not a guess: before any update the step size cannot be the
            # cause; after updates, how far the weights moved tells whether the updates diverged.
            if step == start:
                cause = ("No update had been made yet, so the learning rate is not the cause: the "
                         "train-mode forward (an adapter's dropout, say) or this batch gave it")
            else:
                cause = (f"The largest trainable weight is {_largest(params):.3g} (it was "
                         f"{initial_largest:.3g} at step {start}); if it grew by orders of "
                         "magnitude the updates diverged: lower train.learning_rate")
            raise TrainingDiverged(f"loss is {batch_loss.item()} at step {step + 1}; training "
                                   f"stopped and {kept}. {cause}.")
        update(accelerator, optimizer, loss, params.values(), config.max_grad_norm)
        seconds = time.perf_counter() - started

        done = step + 1
        n_adaptation = (log[-1]["n_adaptation"] if log else 0) + len(plan.adaptation_ids)
        n_backbone = (log[-1]["n_backbone"] if log else 0) + len(backbone_ids)
        measure = oracle is not None and (done % config.log_every == 0 or done == config.steps)
        log.append({
            "step": done, "loss": batch_loss.item(), "n_adaptation": n_adaptation,
            "n_backbone": n_backbone, "realised_ratio": realised_ratio(n_adaptation, n_backbone),
            "weight_difference": (torch.linalg.vector_norm(flat_parameters(model) - oracle).item()
                                  if measure else None),
            "seconds": seconds, "selection_seconds": selection_seconds})
        if done % config.log_every == 0:
            bar.set_postfix(loss=f"{batch_loss.item():.4f}", ratio=f"{log[-1]['realised_ratio']:.3f}")

        if (done % config.checkpoint_every == 0 or done == config.steps) and accelerator.is_main_process:
            # Export first, state last: a state on disk always has its exports beside it.
            save_adapter(model, adapter, adapter_dir(run_dir, done))
            write_json(log_path(run_dir), log)
            save_state(run_dir, {
                "step": done, "adapter": dataclasses.asdict(adapter),
                "config": dataclasses.asdict(config), "runtime": dataclasses.asdict(runtime),
                "trainable": {name: p.detach().clone() for name, p in params.items()},
                "optimizer": optimizer.state_dict(), "rng": capture_rng(generators),
                "selector": selector.state_dict() if hasattr(selector, "state_dict") else None,
                "log": log})
            last_checkpoint = done
        accelerator.wait_for_everyone()
        if on_step is not None:
            on_step(done, model)
    bar.close()
    # Without Accelerate's autocast wrapper on the forward: the model as it was given, trained.
    return TrainResult(accelerator.unwrap_model(trained, keep_fp32_wrapper=False), log)


def backbone_schedule(log: list[dict]) -> list[int]:
    """Backbone examples used at each step of a run: a matched ``random`` run's ``backbone_counts``."""
    totals = [0] + [row["n_backbone"] for row in log]
    return [after - before for before, after in zip(totals, totals[1:])]


def compute_matched_steps(log: list[dict]) -> int:
    """Extra steps a ``plain`` run gets for the wall time a ``bat`` run spent selecting.

    Selection seconds over the mean seconds of a training step (excluding selection), rounded.
    """
    selecting = sum(row["selection_seconds"] for row in log)
    per_step = sum(row["seconds"] for row in log) / len(log)
    return round(selecting / per_step)
