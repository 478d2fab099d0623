"""Proposition-2 scores and Algorithm 1 on a linear model with known good and bad candidates."""

import math

import pytest
import torch
from torch import nn

from bat import io
from bat.core.curvature import (curvature_operators, flat_parameters, per_sample_grads_loop,
                                sampled_fisher_rows, set_flat_parameters)
from bat.core.mixing import derived_seed
from bat.errors import ConfigError
from bat.core.protocols import take_examples
from bat.core.prop2 import (Prop2Problem, parameter_distance, weight_difference,
                       weighted_squared_distance)
from bat.core.protocols import SelectionContext, Selector
from bat.core.selection import FirstSelector, Prop2Selector, SelectionConfig
from bat.core.solvers import SolveOptions, solve

DIM = 4


class LinearRegressionTask:
    def batch_outputs(self, model, batch):
        return model(batch["x"])

    def output_losses(self, outputs, batch):
        return (outputs[:, 0] - batch["y"]) ** 2 / 2

    def batch_losses(self, model, batch):
        return self.output_losses(self.batch_outputs(model, batch), batch)

    def draw_model_targets(self, model, batch, generator):  # y ~ N(f, 1): the loss's likelihood
        f = self.batch_outputs(model, batch)[:, 0]
        return {**batch, "model_y": f + torch.randn(f.shape, generator=generator, dtype=f.dtype)}

    def model_target_losses(self, model, batch):
        return self.output_losses(self.batch_outputs(model, batch), {"y": batch["model_y"]})


def sample(theta, n, generator):
    x = torch.randn(n, DIM, generator=generator, dtype=torch.float64)
    return {"x": x, "y": x @ theta + 0.1 * torch.randn(n, generator=generator, dtype=torch.float64)}


def problem(seed=0, n_adaptation=40, n_good=10, n_bad=10):
    """D^A from θ_A; candidates 0..n_good−1 from the same law, the rest from θ_bad = −2θ_A."""
    generator = torch.Generator().manual_seed(seed)
    theta_a = torch.randn(DIM, generator=generator, dtype=torch.float64)
    model = nn.Linear(DIM, 1, bias=False).double()
    set_flat_parameters(model, 0.3 * theta_a)
    good, bad = sample(theta_a, n_good, generator), sample(-2 * theta_a, n_bad, generator)
    candidates = {key: torch.cat([good[key], bad[key]]) for key in good}
    context = SelectionContext(model=model, task=LinearRegressionTask(),
                               adaptation_batch=sample(theta_a, n_adaptation, generator),
                               candidate_batch=candidates,
                               candidate_ids=list(range(100, 100 + n_good + n_bad)), step=0)
    return context, theta_a


CURVATURE_SETUPS = [dict(curvature="fisher", solver="woodbury"),
                    dict(curvature="sampled_fisher", solver="woodbury", fisher_draws=4),
                    dict(curvature="hessian", solver="dense", indefinite="abs"),
                    dict(curvature="gauss_newton", solver="cg", indefinite="truncate")]


@pytest.mark.parametrize("mode", ["oracle", "oracle_free"])
@pytest.mark.parametrize("setup", CURVATURE_SETUPS, ids=lambda s: s["curvature"])
def test_selector_prefers_candidates_from_the_adaptation_distribution(mode, setup):
    picked_good = 0
    for seed in range(8):
        context, theta_a = problem(seed)
        config = SelectionConfig(mode=mode, damping=1e-3, relative_damping=False, **setup)
        selector = Prop2Selector(config, target=theta_a if mode == "oracle" else None)
        chosen = selector.select(context, 4)
        assert len(chosen) == 4 and set(chosen) <= set(context.candidate_ids)
        picked_good += sum(i < 110 for i in chosen)
        record, = selector.records
        assert record["reason"] == "initial"
        for report in record["reports"].values():
            assert report["curvature"] == setup["curvature"]
            assert report["solver"] == setup["solver"] and report["damping"] == 1e-3
    # Half the candidates are good, so chance picks 50%. A bad candidate whose x is nearly
    # orthogonal to θ_A carries almost no bias and may rightly be picked; the empirical Fisher,
    # a noisy curvature away from the optimum, separates least well.
    assert picked_good / 32 >= 0.65


def test_algorithm_1_schedule_keeps_selection_and_records_json(tmp_path):
    # At θ_A, D^B' from D^A's law, exact curvature: D^bat's Newton step is the shorter, eq. 12
    # holds (γ·Score_bat / Score_A = 0.82) and nothing is re-selected.
    context, theta_a = problem(n_bad=0)
    set_flat_parameters(context.model, theta_a)
    config = SelectionConfig(score_adaptation_every=2, score_bat_every=3, gamma=0.9,
                             curvature="hessian", solver="dense", indefinite="abs")
    selector = Prop2Selector(config, target=theta_a)
    first = selector.select(context, 4)
    for step in range(1, 7):
        context.step = step
        assert selector.select(context, 4) == first
    steps = {r["step"]: r for r in selector.records}
    assert sorted(steps) == [0, 2, 3, 4, 6]
    assert "score_bat" not in steps[2] and "score_bat" in steps[3] and "score_bat" in steps[6]
    assert all(r["condition"] for r in selector.records if "condition" in r)
    io.write_json(tmp_path / "records.json", selector.records)
    assert io.read_json(tmp_path / "records.json")[0]["selected_ids"] == first


def test_a_check_that_falls_on_a_step_without_backbone_examples_happens_at_the_next():
    """Steps with no backbone examples call no selector (γ = 0.862 at batch 2 adds one every
    few steps): a check due then is made at the next call, and the count restarts there."""
    context, theta_a = problem(n_bad=0)
    set_flat_parameters(context.model, theta_a)
    config = SelectionConfig(score_adaptation_every=3, score_bat_every=3, gamma=0.9,
                             curvature="hessian", solver="dense", indefinite="abs")
    selector = Prop2Selector(config, target=theta_a)
    for step in (0, 2, 4, 5, 7, 10):  # the steps that have backbone examples
        context.step = step
        selector.select(context, 4)
    checked = [r["step"] for r in selector.records if "score_bat" in r]
    assert checked == [0, 4, 7, 10]  # 0: the first selection's scores; 3 and 6 had none
    restored = Prop2Selector(config, target=theta_a)
    restored.load_state_dict(selector.state_dict())
    context.step = 12
    restored.select(context, 4)
    assert restored.records == selector.records  # 12 − 10 < 3: nothing due, nothing recorded


def test_resuming_from_an_older_selector_state_names_the_fix():
    context, theta_a = problem()
    selector = Prop2Selector(SelectionConfig(), target=theta_a)
    selector.select(context, 4)
    state = selector.state_dict()
    state["last_scored"] = state.pop("score_bat_step")  # how an older version saved it
    with pytest.raises(ConfigError, match="score_bat_step.*fresh folder"):
        Prop2Selector(SelectionConfig(), target=theta_a).load_state_dict(state)


def test_fewer_needed_takes_the_best_kept_more_needed_reselects():
    context, theta_a = problem()
    config = SelectionConfig(score_adaptation_every=100, score_bat_every=100, gamma=0.01)
    selector = Prop2Selector(config, target=theta_a)
    first = selector.select(context, 4)
    context.step = 1
    assert selector.select(context, 3) == first[:3]  # the best three, not a new scoring
    assert len(selector.records) == 1
    context.step = 2
    assert len(selector.select(context, 5)) == 5
    assert [r["reason"] for r in selector.records] == ["initial", "count_changed"]


def test_failed_condition_triggers_reselection():
    context, theta_a = problem(n_good=0)
    # At the least-squares fit of D^A, Σ_{D^A} ∇ℓ = 0, so Score_A = 0 < γ·Score_bat.
    x, y = context.adaptation_batch["x"], context.adaptation_batch["y"]
    set_flat_parameters(context.model, torch.linalg.lstsq(x, y[:, None]).solution[:, 0])
    selector = Prop2Selector(SelectionConfig(backbone_curvature="share"), target=theta_a)
    selector.select(context, 4)
    assert selector.records[0]["condition"] is False
    context.step = 1
    selector.select(context, 4)
    failed = selector.records[-1]
    assert failed["reselected"] and failed["reason"] == "condition_failed"
    # the record keeps the check that failed (why D^B' changed); the new set's check is beside it
    assert failed["condition"] is False and failed["gamma"] * failed["score_bat"] > failed["score_adaptation"]
    after = failed["after_reselection"]
    assert set(after) == {"score_adaptation", "score_bat", "gamma", "condition", "reports"}
    assert failed["reports"]["bat"] is not after["reports"]["bat"]


def test_dbprime_is_kept_outside_the_offer_and_a_failed_check_selects_from_the_fresh_draw():
    """Algorithm 1 keeps D^B' between checks whatever the step offers; when eq. 12 fails it
    selects again among that step's candidates (a fresh draw), not among the set it replaces."""
    context, theta_a = problem(n_good=0)
    x, y = context.adaptation_batch["x"], context.adaptation_batch["y"]
    set_flat_parameters(context.model, torch.linalg.lstsq(x, y[:, None]).solution[:, 0])
    config = SelectionConfig(backbone_curvature="share", score_adaptation_every=2,
                             score_bat_every=2)
    selector = Prop2Selector(config, target=theta_a)
    first = selector.select(context, 4)
    assert selector.records[0]["condition"] is False  # Score_A = 0 at D^A's fit: every check fails
    kept = context.candidate_batch
    # step 1: no check due, and the step offers other ids: D^B' stays as it is
    context.candidate_ids = [i + 1000 for i in context.candidate_ids]
    context.step = 1
    assert selector.select(context, 4) == first and len(selector.records) == 1
    # step 2: the check fails; the new D^B' is ranked among this step's draw, which holds two of
    # the kept examples and the six candidates never chosen
    rows = [first[0] - 100, first[1] - 100, *(i for i in range(10) if i + 100 not in first)]
    context = SelectionContext(model=context.model, task=context.task, step=2,
                               candidate_ids=[first[0], first[1], *(2000 + row for row in rows[2:])],
                               adaptation_batch=context.adaptation_batch,
                               candidate_batch=take_examples(kept, rows))
    second = selector.select(context, 4)
    assert selector.records[-1]["reason"] == "condition_failed"
    # ranked all 8 offered, and the kept examples this draw lacks (first[2:]) are gone
    assert selector.records[-1]["candidates"] == 8 and set(second) <= set(context.candidate_ids)
    # the new D^B' holds the examples offered under its ids, not those of the old offer
    position = [context.candidate_ids.index(i) for i in second]
    assert torch.equal(selector.state_dict()["selected_batch"]["x"],
                       context.candidate_batch["x"][position])


@pytest.mark.parametrize("setup", [s for s in CURVATURE_SETUPS if s["curvature"] != "sampled_fisher"],
                         ids=lambda s: s["curvature"])
@pytest.mark.parametrize("curvature_examples", [None, 25])
def test_replace_backbone_scores_equal_a_fresh_problem(setup, curvature_examples):
    """Right after a re-selection the new D^bat's scores reuse D^A's gradient sum and rows; with a
    deterministic curvature they are exactly a fresh problem's on D^A ∪ new D^B'."""
    context, _ = problem()
    old = take_examples(context.candidate_batch, [0, 12])
    new = take_examples(context.candidate_batch, [3, 15, 16])
    options = SolveOptions(solver=setup["solver"], damping=1e-3, indefinite=setup.get("indefinite", "clip"))
    kept = Prop2Problem(context.model, context.task, context.adaptation_batch, old,
                        setup["curvature"], gamma=0.5, curvature_examples=curvature_examples)
    kept.scores(options)  # the check that failed: D^A's parts are computed here
    replaced = kept.replace_backbone(new, per_sample_grads_loop(context.model, context.task, new))
    fresh = Prop2Problem(context.model, context.task, context.adaptation_batch, new,
                         setup["curvature"], gamma=0.5, curvature_examples=curvature_examples)
    assert replaced.sum_adaptation is kept.sum_adaptation
    for ours, theirs in zip(replaced.scores(options).__dict__.values(), fresh.scores(options).__dict__.values()):
        if isinstance(ours, float):
            assert ours == pytest.approx(theirs, rel=1e-9)


def test_replace_backbone_keeps_the_adaptation_rows_and_draws_new_backbone_rows():
    context, _ = problem()
    old, new = (take_examples(context.candidate_batch, ids) for ids in ([0, 12], [3, 15, 16]))
    kept = Prop2Problem(context.model, context.task, context.adaptation_batch, old,
                        "sampled_fisher", gamma=0.5, draws=2, seed=7, curvature_examples=25)
    replaced = kept.replace_backbone(new, per_sample_grads_loop(context.model, context.task, new))
    assert replaced.rows.shape == ((25 + 3) * 2, DIM)
    assert torch.equal(replaced.rows[:50], kept.rows[:50])  # D^A's subsample: same rows
    fresh = Prop2Problem(context.model, context.task, context.adaptation_batch, new,
                         "sampled_fisher", gamma=0.5, draws=2, seed=7, curvature_examples=25)
    assert torch.equal(replaced.curvature_index, fresh.curvature_index)
    assert torch.allclose(replaced.sum_bat, fresh.sum_bat, rtol=1e-12, atol=1e-12)
    # D^B''s targets come from a stream apart from D^A's (the same seed would reuse its draws)
    assert torch.equal(replaced.rows[50:], sampled_fisher_rows(context.model, context.task, new,
                                                               draws=2, seed=derived_seed(7, 1)))
    with pytest.raises(ValueError, match=r"backbone_grads: shape \(2, 4\), want \(3, 4\)"):
        kept.replace_backbone(new, torch.zeros(2, DIM, dtype=torch.float64))
    with pytest.raises(ValueError, match="rows: 3 rows given"):
        Prop2Problem(context.model, context.task, context.adaptation_batch, new, "sampled_fisher",
                     draws=2, rows=torch.zeros(3, DIM, dtype=torch.float64))


def test_without_backbone_examples_both_readings_are_the_adaptation_curvature():
    """Before a first selection D^bat is D^A (m = 0, γ = 1): the conditional reading's mean over
    an empty D^B' is undefined, and both readings give H^A."""
    context, _ = problem()
    options = SolveOptions(solver="woodbury", damping=1e-3)
    share, conditional = (Prop2Problem(context.model, context.task, context.adaptation_batch, None,
                                       "fisher", gamma=0.5, backbone_curvature=reading).scores(options)
                          for reading in ("share", "conditional"))
    assert share.gamma == 1.0 and math.isfinite(conditional.score_adaptation)
    assert conditional.score_adaptation == pytest.approx(share.score_adaptation, rel=1e-12)
    assert share.score_bat == pytest.approx(share.score_adaptation, rel=1e-12)


def test_a_failed_check_reselects_without_passing_over_its_d_bat_again(monkeypatch):
    """A failed check's problem serves the re-selection: its H^{bat|A} is the benefits'
    curvature and its D^A parts the new set's scores, so only the candidates and the new D^B'
    cost a pass (before, D^A ∪ D^B' went through the network three more times)."""
    context, theta_a = problem(n_good=0)
    x, y = context.adaptation_batch["x"], context.adaptation_batch["y"]
    set_flat_parameters(context.model, torch.linalg.lstsq(x, y[:, None]).solution[:, 0])
    selector = Prop2Selector(SelectionConfig(fisher_draws=2), target=theta_a)
    selector.select(context, 4)
    forwarded = []
    original = LinearRegressionTask.batch_outputs
    monkeypatch.setattr(LinearRegressionTask, "batch_outputs",
                        lambda task, model, batch: forwarded.append(len(batch["x"])) or
                        original(task, model, batch))
    context.step = 1
    selector.select(context, 4)
    assert selector.records[-1]["reason"] == "condition_failed"
    n, m, candidates, draws = 40, 4, 10, 2
    check = (n + m) + 2 * draws * (n + m)  # gradient sums; drawn targets and their gradients
    assert sum(forwarded) == check + candidates + 2 * draws * m


def test_the_benefits_curvature_is_that_of_the_current_d_bat(monkeypatch):
    """After a failed check the benefits use its H^{bat|A} (D^A and the kept D^B' mixed at γ),
    not H^{bat|A} − H^{bat}, which gives the D^B' rows no weight."""
    import bat.core.selection as selection

    context, theta_a = problem(n_good=0)
    x, y = context.adaptation_batch["x"], context.adaptation_batch["y"]
    set_flat_parameters(context.model, torch.linalg.lstsq(x, y[:, None]).solution[:, 0])
    selector = Prop2Selector(SelectionConfig(fisher_draws=2), target=theta_a)
    selector.select(context, 4)
    operators, original = [], selection.candidate_benefits
    monkeypatch.setattr(selection, "candidate_benefits",
                        lambda operator, *args, **kwargs: operators.append(operator) or
                        original(operator, *args, **kwargs))
    context.step = 1
    selector.select(context, 4)
    assert selector.records[-1]["reason"] == "condition_failed"
    (operator,) = operators
    backbone_weights = operator.weights[-4 * 2:]  # the kept D^B', two drawn rows per example
    assert torch.allclose(backbone_weights, torch.full_like(backbone_weights, 0.5 / 4 / 2))
    assert float(operator.weights.sum()) == pytest.approx(1.0)


def test_batches_are_prepared_only_when_a_selector_looks_at_them():
    """The training loop passes ``prepare``: Algorithm 1 between its checks, and random
    augmentation at every step, need ids only (the random regime offers all of D^B)."""
    from bat.core.mixing import RandomSelector

    context, theta_a = problem()
    calls = []

    def lazy(step):
        def prepare():
            calls.append(step)
            return context.adaptation_batch, context.candidate_batch
        return SelectionContext(model=context.model, task=context.task, step=step,
                                candidate_ids=context.candidate_ids, prepare=prepare)
    selector = Prop2Selector(SelectionConfig(score_adaptation_every=3, score_bat_every=3),
                             target=theta_a)
    for step in range(7):
        selector.select(lazy(step), 4)
        RandomSelector(seed=0).select(lazy(100 + step), 4)
    assert calls == [0, 3, 6]  # the first selection and the two checks, once each
    with pytest.raises(ValueError, match="not both"):
        SelectionContext(model=context.model, task=context.task, step=0, candidate_ids=[1],
                         prepare=lambda: None, adaptation_batch={}, candidate_batch={})


def test_score_adaptation_with_share_is_the_adaptation_only_newton_step():
    context, _ = problem()
    backbone = take_examples(context.candidate_batch, [0, 1, 12, 13])
    p2 = Prop2Problem(context.model, context.task, context.adaptation_batch, backbone,
                      "hessian", backbone_curvature="share")
    options = SolveOptions(solver="dense", damping=1e-6)
    score, report = p2.score_adaptation(options)
    n = 40
    operator, = curvature_operators("hessian", context.model, context.task,
                                    context.adaptation_batch,
                                    [torch.full((n,), 1.0 / n, dtype=torch.float64)])
    direct = solve(operator, p2.sum_adaptation, options).x
    assert score == pytest.approx(float(direct.norm()), rel=1e-9)
    assert not report.indefinite


def test_weight_difference_is_score_bat_and_distances_agree():
    context, theta_a = problem()
    backbone = take_examples(context.candidate_batch, [0, 15])
    p2 = Prop2Problem(context.model, context.task, context.adaptation_batch, backbone, "fisher")
    options = SolveOptions(solver="woodbury", damping=1e-3, indefinite="clip")
    whole = {key: torch.cat([context.adaptation_batch[key], backbone[key]]) for key in backbone}
    assert weight_difference(context.model, context.task, whole, "fisher", options)[0] == \
        pytest.approx(p2.score_bat(options)[0], rel=1e-9)
    theta = flat_parameters(context.model)
    assert weighted_squared_distance(theta, theta_a, torch.eye(DIM, dtype=torch.float64)) == \
        pytest.approx(parameter_distance(theta, theta_a) ** 2)


def test_conditional_difference_can_be_indefinite_and_is_handled():
    context, _ = problem()
    backbone = take_examples(context.candidate_batch, list(range(10, 20)))
    p2 = Prop2Problem(context.model, context.task, context.adaptation_batch, backbone, "fisher",
                      backbone_curvature="conditional")
    score, report = p2.score_adaptation(SolveOptions(solver="woodbury", indefinite="clip"))
    assert report.indefinite and report.negative_eigenvalues > 0
    assert score == score and score > 0  # finite, not NaN


def test_both_selectors_implement_the_protocol():
    context, theta_a = problem()
    assert isinstance(Prop2Selector(SelectionConfig(), target=theta_a), Selector)
    assert isinstance(FirstSelector(), Selector)
    assert FirstSelector().select(context, 3) == [100, 101, 102]


@pytest.mark.parametrize("kwargs, field", [
    (dict(mode="oracel"), "mode"),
    (dict(curvature="kfac"), "curvature"),
    (dict(solver="woodbury", curvature="hessian"), "solver"),
    (dict(solver="cg", indefinite="clip"), "indefinite"),
    (dict(damping=0), "damping"),
    (dict(gamma=1.0), "gamma"),
    (dict(score_bat_every=0), "score_bat_every"),
    (dict(backbone_curvature="mean"), "backbone_curvature"),
    (dict(holdout_fraction=1.5), "holdout_fraction"),
])
def test_config_errors_name_the_field(kwargs, field):
    with pytest.raises(ConfigError, match=field):
        SelectionConfig(**kwargs)


def test_oracle_needs_target_and_oracle_free_refuses_one():
    with pytest.raises(ConfigError, match="target"):
        Prop2Selector(SelectionConfig(mode="oracle"))
    with pytest.raises(ConfigError, match="target"):
        Prop2Selector(SelectionConfig(mode="oracle_free"), target=torch.zeros(DIM))


def test_every_pass_of_a_selection_honours_chunk_size(monkeypatch):
    """chunk_size bounds memory: the benefits' and the scores' drawn-target rows, the candidates'
    gradients and the gradient sums all go chunk by chunk (a DoRA selection once ran one pass
    unchunked and doubled the LoRA/DoRA grid's peak memory)."""
    import bat.core.curvature as curvature
    import bat.core.prop2 as prop2
    import bat.core.selection as selection

    seen = []
    for module, name in [(curvature, "per_sample_grads_hooks"), (selection, "per_sample_grads_hooks"),
                         (prop2, "gradient_sums")]:
        original = getattr(module, name)

        def recording(*args, _original=original, **kwargs):
            seen.append(kwargs.get("chunk_size"))
            return _original(*args, **kwargs)
        monkeypatch.setattr(module, name, recording)
    context, theta_a = problem()
    config = SelectionConfig(curvature="sampled_fisher", chunk_size=3, fisher_draws=2)
    Prop2Selector(config, target=theta_a).select(context, 4)
    assert len(seen) >= 4 and set(seen) == {3}
