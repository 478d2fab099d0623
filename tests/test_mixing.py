"""The D^bat mixer keeps the ratio γ of Def. 2; random augmentation is reproducible."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch

from bat.errors import ConfigError
from bat.core.mixing import Mixer, RandomSelector, realised_ratio
from bat.core.protocols import SelectionContext

GAMMAS = (0.16, 0.3, 0.5, 0.75, 0.862)  # the paper's Fig. 6 range and points between


def run_plan(mixer: Mixer, steps: int) -> tuple[int, int]:
    n_adaptation = n_backbone = 0
    for step in range(steps):
        plan = mixer.plan(step)
        n_adaptation += len(plan.adaptation_ids)
        n_backbone += plan.backbone_count
    return n_adaptation, n_backbone


@pytest.mark.parametrize("gamma", GAMMAS)
def test_per_batch_ratio_is_within_one_over_k_at_every_step(gamma):
    mixer = Mixer(n_adaptation=7, batch_size=3, gamma=gamma, scheme="per_batch", seed=0)
    n_adaptation = n_backbone = 0
    for step in range(50):
        plan = mixer.plan(step)
        assert len(plan.adaptation_ids) == 3 and plan.backbone_count <= mixer.max_backbone_count()
        n_adaptation += 3
        n_backbone += plan.backbone_count
        k = n_adaptation + n_backbone
        assert abs(realised_ratio(n_adaptation, n_backbone) - gamma) <= 1 / k


@pytest.mark.parametrize("gamma", GAMMAS)
def test_regular_interval_epochs_hold_all_of_d_a_at_ratio_gamma(gamma):
    n, batch_size = 10, 4
    mixer = Mixer(n_adaptation=n, batch_size=batch_size, gamma=gamma, scheme="regular_interval",
                  seed=3)
    steps = math.lcm(mixer.epoch_length, batch_size) // batch_size  # whole epochs only
    ids = [i for step in range(steps) for i in mixer.plan(step).adaptation_ids]
    n_adaptation, n_backbone = run_plan(mixer, steps)
    # D^bat is one epoch here: n examples of D^A and m backbone slots, k = n + m.
    assert abs(realised_ratio(n_adaptation, n_backbone) - gamma) <= 1 / mixer.epoch_length
    full_epochs = len(ids) // n
    assert all(count >= full_epochs for count in Counter(ids).values())
    assert all(mixer.plan(s).backbone_count <= mixer.max_backbone_count() for s in range(steps))


def test_regular_interval_spaces_backbone_slots_evenly():
    mixer = Mixer(n_adaptation=6, batch_size=1, gamma=0.75, scheme="regular_interval", seed=0)
    slots = [mixer.plan(step).backbone_count for step in range(mixer.epoch_length)]
    assert slots == [0, 0, 0, 1, 0, 0, 0, 1]  # n = 6, m = 2: one slot after every three


def test_every_epoch_visits_each_adaptation_example_once():
    mixer = Mixer(n_adaptation=5, batch_size=5, gamma=None, scheme="per_batch", seed=1)
    for step in range(3):
        assert sorted(mixer.plan(step).adaptation_ids) == [0, 1, 2, 3, 4]
    assert mixer.plan(0).backbone_count == 0
    assert mixer.plan(0).adaptation_ids != mixer.plan(1).adaptation_ids  # reshuffled per epoch


def test_plan_depends_only_on_seed_and_step():
    one = Mixer(9, 4, 0.4, "regular_interval", seed=5)
    other = Mixer(9, 4, 0.4, "regular_interval", seed=5)
    assert [one.plan(s) for s in range(10)] == [other.plan(s) for s in reversed(range(10))][::-1]


@pytest.mark.parametrize("gamma", [0, 1, 1.5, -0.2, True])
def test_gamma_outside_the_open_unit_interval_is_rejected(gamma):
    with pytest.raises(ConfigError, match="gamma"):
        Mixer(5, 2, gamma, "per_batch", seed=0)


def test_unknown_scheme_is_rejected():
    with pytest.raises(ConfigError, match="mixing.*per_batch"):
        Mixer(5, 2, 0.5, "interleaved", seed=0)


def context(step: int, candidate_ids: list[int]) -> SelectionContext:
    return SelectionContext(model=torch.nn.Identity(), task=None, adaptation_batch={},
                            candidate_batch={}, candidate_ids=candidate_ids, step=step)


def test_random_selector_is_fixed_by_seed_and_step():
    candidates = list(range(100, 140))
    first = RandomSelector(seed=1).select(context(3, candidates), 8)
    assert first == RandomSelector(seed=1).select(context(3, candidates), 8)
    assert first != RandomSelector(seed=2).select(context(3, candidates), 8)
    assert first != RandomSelector(seed=1).select(context(4, candidates), 8)
    assert len(set(first)) == 8 and set(first) <= set(candidates)


@pytest.mark.parametrize("count,batch_size", [(10, 3), (5, 8), (12, 4)])
def test_epoch_batches_carry_or_drop_the_remainder(count, batch_size):
    from bat.core.mixing import epoch_batches

    def batches(carry):
        generator = torch.Generator().manual_seed(0)
        return [b.tolist() for b in epoch_batches(count, batch_size, 30, generator,
                                                  carry_remainder=carry)]

    carried, dropped = batches(True), batches(False)
    size = min(batch_size, count)
    assert all(len(b) == size for b in carried + dropped)
    # carried: the indices run through whole permutations back to back
    flat = [i for b in carried for i in b]
    for start in range(0, len(flat) - count + 1, count):
        assert sorted(flat[start:start + count]) == list(range(count))
    # dropped: never an index twice in one batch
    assert all(len(set(b)) == len(b) for b in dropped)
