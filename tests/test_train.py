"""The training loop: every adapter kind in every regime, resume, divergence, checks, baselines."""

from __future__ import annotations

import pytest
import torch

from bat.core.curvature import flat_parameters
from bat.core.adapters import AdapterConfig, attach_adapter, trainable_parameters
from bat.io import atomic_directory
from bat.core.checkpoint import adapter_dir, load_state, log_path, save_state
from bat.core.checkpoint import trained_vector
from bat.errors import ConfigError
from bat.io import read_json
from bat.core.selection import Prop2Selector, SelectionConfig
from bat.core.train import (REGIMES, TrainConfig, TrainingDiverged, backbone_schedule,
                       compute_matched_steps, seed_everything, train)
from tests.tiny_models import UNET_KINDS, adapter_setting, text_examples, tiny_llama

LM_KINDS = ("lora", "dora")


def setting(kind: str) -> dict:
    return adapter_setting(kind)


def config(kind: str, **fields) -> TrainConfig:
    defaults = {"steps": 3, "batch_size": 2, "learning_rate": 1e-3, "gamma": 0.5, "candidates": 8,
                "checkpoint_every": 2, "log_every": 1, "mixing": setting(kind)["mixing"]}
    return TrainConfig(**{**defaults, **fields})


class LowestLossSelector:
    """A selector that looks at the model: the candidates it already fits best."""

    def select(self, context, count):
        with torch.no_grad():
            losses = context.task.batch_losses(context.model, context.candidate_batch)
        return [context.candidate_ids[i] for i in torch.argsort(losses, stable=True)[:count].tolist()]


def run(kind, regime, run_dir, *, task=None, selector=None, **fields):
    s = setting(kind)
    if regime == "bat" and selector is None:
        selector = LowestLossSelector()
    return train(s["build"](), AdapterConfig(kind), task or s["task"], s["adaptation"], s["backbone"],
                 config(kind, regime=regime, **fields), run_dir, selector=selector, progress=False)


def initial_vector(kind):
    seed_everything(0)
    return flat_parameters(attach_adapter(setting(kind)["build"](), AdapterConfig(kind)))


@pytest.mark.parametrize("regime", REGIMES)
@pytest.mark.parametrize("kind", UNET_KINDS + LM_KINDS)
def test_every_kind_trains_in_every_regime(kind, regime, tmp_path):
    result = run(kind, regime, tmp_path)
    assert [row["step"] for row in result.log] == [1, 2, 3]
    assert all(torch.isfinite(torch.tensor(row["loss"])) for row in result.log)
    assert not torch.equal(flat_parameters(result.model), initial_vector(kind))
    last = result.log[-1]
    if regime == "plain":
        assert last["n_backbone"] == 0 and last["realised_ratio"] == 1.0
    else:
        assert abs(last["realised_ratio"] - 0.5) <= 1 / (last["n_adaptation"] + last["n_backbone"])
    assert (adapter_dir(tmp_path, 2) / "bat_adapter.json").exists()
    assert (adapter_dir(tmp_path, 3) / "bat_adapter.json").exists()
    assert read_json(log_path(tmp_path)) == result.log


class Killed(Exception):
    pass


class DyingTask:
    """The real task, counting training steps, until the process is 'killed' at a given one."""

    def __init__(self, task, killed_at_step=None):
        self.task, self.killed_at_step, self.steps = task, killed_at_step, 0
        # the LM task's fill values: a D^B' kept from one step's batch may be wider than D^A's
        self.padding = getattr(task, "padding", None)

    def prepare(self, examples, generator):
        return self.task.prepare(examples, generator)

    def batch_losses(self, model, batch):
        if model.training:
            self.steps += 1
            if self.steps == self.killed_at_step:
                raise Killed
        return self.task.batch_losses(model, batch)

    def draw_model_targets(self, model, batch, generator):  # the sampled Fisher of the selector
        return self.task.draw_model_targets(model, batch, generator)

    def model_target_losses(self, model, batch):
        return self.task.model_target_losses(model, batch)


def prop2_selector():
    """Algorithm 1 with a check at every step: its selection and Score_A carry across steps."""
    return Prop2Selector(SelectionConfig(mode="oracle_free", holdout_fraction=0.5))


def without_seconds(records):
    """Records less their wall-clock times, which no two runs share."""
    def strip(value):
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k != "seconds"}
        return value
    return [strip(record) for record in records]


@pytest.mark.parametrize("kind, regime, selector", [
    ("locon", "random", None), ("lora", "bat", None), ("dreambooth", "plain", None),
    ("locon", "bat", prop2_selector), ("lora", "bat", prop2_selector)])
def test_resume_after_a_kill_is_bit_identical(kind, regime, selector, tmp_path):
    fields = {"steps": 5, "checkpoint_every": 2}
    new_selector = selector or (lambda: None)
    whole_selector = new_selector()
    whole = run(kind, regime, tmp_path / "whole", selector=whole_selector, **fields)

    with pytest.raises(Killed):
        run(kind, regime, tmp_path / "killed", task=DyingTask(setting(kind)["task"], 4),
            selector=new_selector(), **fields)
    assert load_state(tmp_path / "killed")["step"] == 2
    assert not adapter_dir(tmp_path / "killed", 4).exists()
    counting = DyingTask(setting(kind)["task"])
    resumed_selector = new_selector()  # built afresh, like everything else
    resumed = run(kind, regime, tmp_path / "killed", task=counting, selector=resumed_selector,
                  **fields)
    assert counting.steps == 3  # steps 3, 4 and 5: it resumed, it did not start over

    expected, actual = trainable_parameters(whole.model), trainable_parameters(resumed.model)
    assert expected.keys() == actual.keys()
    assert all(torch.equal(expected[name], actual[name]) for name in expected)
    assert [row["loss"] for row in resumed.log] == [row["loss"] for row in whole.log]
    if selector is not None:
        assert [r["step"] for r in resumed_selector.records] == [0, 1, 2, 3, 4]
        assert without_seconds(resumed_selector.records) == without_seconds(whole_selector.records)


def test_a_selector_without_saved_state_is_not_resumed(tmp_path):
    """A checkpoint written by a stateless selector cannot silently restart a Prop2Selector."""
    with pytest.raises(Killed):
        run("lora", "bat", tmp_path, task=DyingTask(setting("lora")["task"], 4), steps=5)
    with pytest.raises(ConfigError, match="no selector state"):
        run("lora", "bat", tmp_path, selector=prop2_selector(), steps=5)


class NanAt(DyingTask):
    def batch_losses(self, model, batch):
        losses = self.task.batch_losses(model, batch)
        if model.training:
            self.steps += 1
            if self.steps >= self.killed_at_step:
                return losses * float("nan")
        return losses


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path):
    with pytest.raises(TrainingDiverged, match=r"nan at step 3.*last good checkpoint \(step 2\).*"
                       r"The largest trainable weight is 0\.\d+ \(it was 0\.\d+ at step 0\)"):
        run("locon", "plain", tmp_path, task=NanAt(setting("locon")["task"], 3), steps=5)
    assert load_state(tmp_path)["step"] == 2
    assert all(torch.isfinite(t).all() for t in load_state(tmp_path)["trainable"].values())
    assert not adapter_dir(tmp_path, 3).exists()


def test_nan_before_any_update_does_not_blame_the_learning_rate(tmp_path):
    with pytest.raises(TrainingDiverged, match=r"nan at step 1; .* No update had been made yet, so "
                                               r"the learning rate is not the cause"):
        run("locon", "plain", tmp_path, task=NanAt(setting("locon")["task"], 1), steps=3)


def test_diverging_updates_show_in_the_weights(tmp_path):
    # Adam moves each weight by about the learning rate per step: 1e30 overflows the forward.
    with pytest.raises(TrainingDiverged, match=r"at step 2; .*The largest trainable weight is "
                                               r"1e\+30 \(it was 0\.\d+ at step 0\)"):
        run("locon", "plain", tmp_path, learning_rate=1e30, steps=3)


@pytest.mark.parametrize("fields, message", [
    ({"gamma": 1.0}, "train.gamma"),
    ({"gamma": 0.0}, "train.gamma"),
    ({"regime": "sgd"}, r"train.regime.*\['plain', 'random', 'bat'\]"),
    ({"mixing": "shuffle"}, "train.mixing"),
    ({"steps": 0}, "train.steps"),
    ({"betas": (0.9,)}, "train.betas"),
])
def test_bad_train_configs_are_rejected(fields, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**fields)


@pytest.mark.parametrize("arguments, fields, message", [
    ({"adapter": AdapterConfig("lora", target_modules=("q_prj",))}, {}, "match no module"),
    ({}, {"regime": "bat"}, "needs a selector"),
    ({"backbone": None}, {"regime": "random"}, "needs the backbone examples"),
    ({}, {"regime": "random", "candidates": 1}, "train.candidates"),
    ({"backbone": text_examples(24, seed=1, length=9)}, {"regime": "random"}, "backbone.input_ids"),
    ({"oracle": torch.zeros(3)}, {}, "oracle: 3 values"),
])
def test_bad_inputs_are_rejected_before_anything_is_written(arguments, fields, message, tmp_path):
    s = setting("lora")
    arguments = {"adapter": AdapterConfig("lora"), "backbone": s["backbone"], **arguments}
    oracle = arguments.pop("oracle", None)
    with pytest.raises(ConfigError, match=message):
        train(tiny_llama(), arguments["adapter"], s["task"], s["adaptation"], arguments["backbone"],
              config("lora", **fields), tmp_path, oracle=oracle, progress=False)
    assert not any(tmp_path.iterdir())


def test_a_checkpoint_of_another_kind_or_setting_is_not_resumed(tmp_path):
    run("locon", "plain", tmp_path, steps=1)
    with pytest.raises(ConfigError, match="holds a checkpoint of a 'locon' adapter, not 'loha'"):
        run("loha", "plain", tmp_path, steps=2)
    with pytest.raises(ConfigError, match="train.learning_rate"):
        run("locon", "plain", tmp_path, steps=2, learning_rate=0.5)


def test_weight_difference_is_logged_against_the_oracle(tmp_path):
    oracle_run = run("lora", "plain", tmp_path / "oracle", steps=4)
    oracle = trained_vector(tmp_path / "oracle")
    assert torch.equal(oracle, flat_parameters(oracle_run.model))

    s = setting("lora")
    result = train(tiny_llama(), AdapterConfig("lora"), s["task"], s["adaptation"], s["backbone"],
                   config("lora", regime="random", steps=4, log_every=2), tmp_path / "random",
                   oracle=oracle, progress=False)
    assert [row["weight_difference"] is None for row in result.log] == [True, False, True, False]
    expected = torch.linalg.vector_norm(flat_parameters(result.model) - oracle).item()
    assert result.log[-1]["weight_difference"] == pytest.approx(expected)


class HalfSelector(LowestLossSelector):
    """Rejects half of what it is asked for, so its schedule differs from the mixer's."""

    def select(self, context, count):
        return super().select(context, count)[: (count + 1) // 2]


def test_matched_random_run_uses_the_bat_runs_backbone_counts(tmp_path):
    s = setting("locon")
    bat_run = run("locon", "bat", tmp_path / "bat", selector=HalfSelector(), steps=4)
    schedule = backbone_schedule(bat_run.log)
    matched = train(s["build"](), AdapterConfig("locon"), s["task"], s["adaptation"], s["backbone"],
                    config("locon", regime="random", steps=4), tmp_path / "random",
                    backbone_counts=schedule, progress=False)
    assert [r["n_backbone"] for r in matched.log] == [r["n_backbone"] for r in bat_run.log]
    assert sum(schedule) < 4 * 2  # fewer than the mixer's two per step


class KeepingSelector:
    """Chooses once from the first offer and keeps those ids, as Algorithm 1 keeps D^B'."""

    def __init__(self):
        self.kept, self.offers = None, []

    def select(self, context, count):
        self.offers.append(list(context.candidate_ids))
        if self.kept is None:
            self.kept = list(context.candidate_ids[:count])
        return self.kept[:count]


def test_a_selector_may_keep_ids_that_a_later_draw_does_not_offer(tmp_path, trained_batches):
    selector = KeepingSelector()
    result = run("locon", "bat", tmp_path, selector=selector, steps=3)
    assert len({tuple(offer) for offer in selector.offers}) == 3  # a fresh draw of 8 of 24 per step
    assert any(not set(selector.kept) <= set(offer) for offer in selector.offers[1:])
    assert result.log[-1]["n_backbone"] == 3 * 2
    kept = setting("locon")["backbone"]["latents"][selector.kept]
    for batch in trained_batches:  # each step trains its 2 D^A examples, then the kept D^B ones
        assert torch.equal(batch["latents"][2:], kept)


class FixedSelector:
    def __init__(self, ids):
        self.ids = ids

    def select(self, context, count):
        return self.ids


@pytest.mark.parametrize("ids", [[0, 0], [24], [-1], [0, 1, 2]])
def test_a_selector_returning_repeated_unknown_or_too_many_ids_is_refused(ids, tmp_path):
    with pytest.raises(RuntimeError, match=r"at most 2 distinct ids of the 24 examples of D\^B"):
        run("locon", "bat", tmp_path, selector=FixedSelector(ids), steps=1)


def test_compute_matched_steps_pays_selection_time_in_training_steps():
    log = [{"seconds": 0.5, "selection_seconds": 1.0}] * 4
    assert compute_matched_steps(log) == 8


def test_a_failed_write_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    save_state(tmp_path, {"step": 1})
    with atomic_directory(tmp_path / "adapter") as folder:
        (folder / "weights").write_text("old")

    def half_written(obj, path):
        open(path, "wb").write(b"partial")
        raise Killed

    monkeypatch.setattr(torch, "save", half_written)
    with pytest.raises(Killed):
        save_state(tmp_path, {"step": 2})
    with pytest.raises(Killed):
        with atomic_directory(tmp_path / "adapter") as folder:
            (folder / "weights").write_text("new")
            raise Killed
    monkeypatch.undo()
    assert load_state(tmp_path) == {"step": 1}
    assert (tmp_path / "adapter" / "weights").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter", "state.pt"]


def test_on_step_sees_every_step_and_changes_nothing(tmp_path):
    s = setting("lora")
    seen = []

    def evaluate(step, model):  # evaluating, as bat.stages.grid does, must not move the run
        seen.append(step)
        model.eval()
        with torch.no_grad():
            s["task"].batch_losses(model, s["task"].prepare(s["adaptation"], torch.Generator()))

    watched = train(s["build"](), AdapterConfig("lora"), s["task"], s["adaptation"], s["backbone"],
                    config("lora", regime="random"), tmp_path / "watched", progress=False,
                    on_step=evaluate)
    plain = run("lora", "random", tmp_path / "plain")
    assert seen == [1, 2, 3]
    assert [row["loss"] for row in watched.log] == [row["loss"] for row in plain.log]
    assert torch.equal(flat_parameters(watched.model), flat_parameters(plain.model))
