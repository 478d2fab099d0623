"""The bat regime end to end: Proposition-2 selectors, oracle and oracle-free, inside bat.core.train."""

import math

import pytest
import torch

from bat.core.adapters import AdapterConfig
from bat.core.checkpoint import trained_vector
from bat.core.curvature import flat_parameters
from bat.core.selection import Prop2Selector, SelectionConfig
from bat.image.task import DiffusionTask
from bat.text.task import CausalLMTask
from bat.core.train import TrainConfig, train
from tests.tiny_models import diffusion_examples, text_examples, tiny_llama, tiny_scheduler, tiny_unet

SETTINGS = {
    "lora": dict(build=tiny_llama, task=CausalLMTask, mixing="regular_interval",
                 adaptation=lambda: text_examples(8, seed=1), backbone=lambda: text_examples(16, seed=2)),
    "locon": dict(build=tiny_unet, task=lambda: DiffusionTask(tiny_scheduler()), mixing="per_batch",
                  adaptation=lambda: diffusion_examples(8, seed=1), backbone=lambda: diffusion_examples(16, seed=2)),
}


def run(kind, regime, run_dir, selector=None, steps=4):
    setting = SETTINGS[kind]
    config = TrainConfig(regime=regime, steps=steps, batch_size=4, learning_rate=1e-3, gamma=0.5,
                         candidates=0, mixing=setting["mixing"], checkpoint_every=steps, log_every=1)
    return train(setting["build"](), AdapterConfig(kind), setting["task"](), setting["adaptation"](),
                 setting["backbone"](), config, run_dir, selector=selector, progress=False)


@pytest.mark.parametrize("kind", ["lora", "locon"])
@pytest.mark.parametrize("mode", ["oracle", "oracle_free"])
def test_bat_regime_trains_with_proposition_2_selection(kind, mode, tmp_path):
    target = None
    if mode == "oracle":
        run(kind, "plain", tmp_path / "oracle", steps=6)
        target = trained_vector(tmp_path / "oracle")
    selector = Prop2Selector(SelectionConfig(mode=mode, seed=0), target=target)
    result = run(kind, "bat", tmp_path / "bat", selector=selector)
    assert [row["step"] for row in result.log] == [1, 2, 3, 4]
    assert result.log[-1]["n_backbone"] > 0
    assert selector.records, "the selector logs what it did"
    assert all(torch.isfinite(torch.tensor(row["loss"])) for row in result.log)
    if target is not None:
        assert flat_parameters(result.model).numel() == target.numel()


@pytest.mark.parametrize("kind", ["lora", "locon"])
def test_library_tasks_give_gauss_newton_curvature(kind):
    """The tracks' tasks expose their outputs, so Gauss-Newton products (PSD, unlike the Hessian) work."""
    from bat.core.adapters import attach_adapter
    from bat.core.curvature import OutputTask, curvature_operators

    setting = SETTINGS[kind]
    task = setting["task"]()
    assert isinstance(task, OutputTask)
    model = attach_adapter(setting["build"](), AdapterConfig(kind))
    batch = task.prepare(setting["adaptation"](), torch.Generator().manual_seed(0))
    torch.testing.assert_close(task.output_losses(task.batch_outputs(model, batch), batch),
                               task.batch_losses(model, batch))
    weights = torch.full((len(batch["latents" if kind == "locon" else "input_ids"]),), 1.0)
    (operator,) = curvature_operators("gauss_newton", model, task, batch, [weights])
    vector = torch.randn(operator.dim, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert float(vector @ operator.matvec(vector).double()) >= 0


@pytest.mark.parametrize("kind", ["lora", "locon"])
def test_library_tasks_sampled_fisher_is_unbiased_for_gauss_newton(kind):
    """E[r rᵀ] of drawn-target gradients is the Gauss-Newton matrix (prior weights included):
    quadratic forms over 2000 draws agree within Monte-Carlo error (≈ 3 % s.d.)."""
    from bat.core.adapters import attach_adapter
    from bat.core.curvature import curvature_operators

    setting = SETTINGS[kind]
    task = setting["task"]()
    model = attach_adapter(setting["build"](), AdapterConfig(kind))
    examples = (diffusion_examples(2, seed=1, prior=[False, True]) if kind == "locon"
                else text_examples(2, seed=1))
    batch = task.prepare(examples, torch.Generator().manual_seed(0))
    weights = torch.full((2,), 0.5, dtype=torch.float64)
    (gauss_newton,) = curvature_operators("gauss_newton", model, task, batch, [weights])
    (sampled,) = curvature_operators("sampled_fisher", model, task, batch, [weights], draws=1000,
                                     seed=3)
    generator = torch.Generator().manual_seed(2)
    for _ in range(3):
        v = torch.randn(gauss_newton.dim, generator=generator, dtype=torch.float64)
        exact = float(v @ gauss_newton.matvec(v).double())
        estimate = float(v @ sampled.matvec(v).double())
        assert estimate == pytest.approx(exact, rel=0.15)


def test_text_checks_with_fresh_candidate_draws_mix_batches_of_other_widths(tmp_path):
    """The LM task trims each offered batch to its widest example: a D^B' kept from one draw of
    candidates is narrower or wider than a later step's D^A, and Algorithm 1's checks stack them."""
    setting = SETTINGS["lora"]
    selector = Prop2Selector(SelectionConfig(mode="oracle_free", seed=0, score_adaptation_every=1,
                                             score_bat_every=1))
    config = TrainConfig(regime="bat", steps=4, batch_size=4, learning_rate=1e-3, gamma=0.5,
                         candidates=4, mixing="regular_interval", log_every=1)
    adaptation = text_examples(8, seed=1, length=20)
    adaptation["attention_mask"][:, 12:] = 0  # D^A ends by column 12, D^B runs to 20
    adaptation["labels"][:, 12:] = -100
    train(setting["build"](), AdapterConfig("lora"), CausalLMTask(), adaptation,
          text_examples(16, seed=2, length=20), config, tmp_path, selector=selector, progress=False)
    checks = [record for record in selector.records if "score_bat" in record]
    assert len(checks) >= 2 and all(math.isfinite(record["score_bat"]) for record in checks)


def test_plain_and_augmented_steps_train_adaptation_examples_on_the_same_noise(tmp_path,
                                                                           trained_batches):
    """Paired regimes: at every step the D^A examples of a ``random`` (or ``bat``) batch get the
    noise and timesteps the ``plain`` run of the same seed gave them, though the augmented batch
    draws for more examples at each step."""
    batches = trained_batches
    run("locon", "plain", tmp_path / "plain")
    plain, batches[:] = list(batches), []
    run("locon", "random", tmp_path / "random")
    assert len(plain) == len(batches) == 4
    for alone, mixed in zip(plain, batches):
        assert len(mixed["latents"]) > len(alone["latents"]) == 4
        for key in ("latents", "noise", "timesteps"):
            torch.testing.assert_close(mixed[key][:4], alone[key], rtol=0, atol=0)
    assert not torch.equal(plain[0]["noise"], plain[1]["noise"])  # fresh noise every step
