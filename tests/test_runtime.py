"""Device and precision: the runtime section, bf16 autocast, selection under it, checkpoints, oracles.

The machine has no GPU: CUDA paths are checked only as far as their validation goes.
"""

from __future__ import annotations

import copy

import pytest
import torch

from bat import paths
from bat.config import build
from bat.core import curvature
from bat.core.adapters import AdapterConfig, attach_adapter, trainable_parameters
from bat.core.checkpoint import load_state
from bat.core.mixing import Mixer, RandomSelector, derived_seed
from bat.core.protocols import concat_batches, take_examples
from bat.core.runtime import RuntimeConfig, runtime_config
from bat.core.selection import Prop2Selector, SelectionConfig
from bat.core.train import TrainConfig, count_examples, seed_everything, select_backbone, train
from bat.errors import ConfigError
from tests.tiny_models import adapter_setting

BF16 = RuntimeConfig(dtype="bfloat16", mixed_precision="bf16")


def setting(kind: str) -> dict:
    return adapter_setting(kind, backbone_size=16)


def config(kind: str, **fields) -> TrainConfig:
    defaults = {"steps": 2, "batch_size": 2, "learning_rate": 1e-3, "candidates": 0,
                "checkpoint_every": 2, "log_every": 1, "mixing": setting(kind)["mixing"]}
    return TrainConfig(**{**defaults, **fields})


def backbone_in(dtype: torch.dtype, kind: str):
    return setting(kind)["build"]().to(dtype)


# --- the section and its checks -----------------------------------------------------------------

@pytest.mark.parametrize("fields, message", [
    ({"device": "gpu"}, r"runtime.device: 'gpu' is not allowed; choose one of \['cpu', 'cuda', 'cuda:N'\]"),
    ({"device": "cuda:x"}, r"runtime.device: 'cuda:x' is not allowed"),
    ({"dtype": "float64"},
     r"runtime.dtype: 'float64' is not allowed; choose one of \['float32', 'float16', 'bfloat16'\]"),
    ({"mixed_precision": "fp8"},
     r"runtime.mixed_precision: 'fp8' is not allowed; choose one of \['no', 'fp16', 'bf16'\]"),
    ({"mixed_precision": False}, r"runtime.mixed_precision: false .* write \"no\" in quotes"),
    ({"gradient_checkpointing": "yes"}, r"runtime.gradient_checkpointing: 'yes' must be true or false"),
    ({"mixed_precision": "fp16"}, r"runtime.mixed_precision: 'fp16' needs a CUDA device .* \['no', 'bf16'\]"),
    ({"dtype": "bfloat16"}, r"runtime.mixed_precision: 'no' with runtime.dtype 'bfloat16'.* set it to 'bf16'"),
    ({"dtype": "float16", "mixed_precision": "bf16"}, r"runtime.mixed_precision: 'bf16' with runtime.dtype "
                                                      r"'float16'.* set it to 'fp16'"),
])
def test_bad_runtime_values_name_the_key_and_the_allowed_values(fields, message):
    with pytest.raises(ConfigError, match=message):
        RuntimeConfig(**fields)


def test_the_section_is_read_from_params(smoke_params):
    assert runtime_config(smoke_params) == RuntimeConfig()
    with pytest.raises(ConfigError, match=r"unknown parameter runtime.precision"):
        build(RuntimeConfig, {**smoke_params["runtime"], "precision": "bf16"}, "runtime")


def test_a_gpu_that_is_not_here_names_the_key(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for value in ("cuda", "cuda:0"):
        with pytest.raises(ConfigError,
                           match=rf"runtime.device: '{value}' needs a CUDA GPU, and torch sees none"):
            RuntimeConfig(device=value)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert RuntimeConfig(device="cuda:1", dtype="float16", mixed_precision="fp16").torch_device == \
        torch.device("cuda", 1)
    with pytest.raises(ConfigError, match=r"runtime.device: 'cuda:2' names a GPU that is not here: "
                                          r"torch sees 2 \(cuda:0 to cuda:1\)"):
        RuntimeConfig(device="cuda:2")
    monkeypatch.setenv("LOCAL_RANK", "3")  # the fourth process of a launch: its own GPU
    assert RuntimeConfig(device="cuda").torch_device == torch.device("cuda", 1)


def test_the_model_loaders_check_their_device_as_the_runtime_section_does(monkeypatch, tmp_path):
    """The loaders the stages call with ``runtime``'s device refuse a bad one before reading anything."""
    from bat.image.backbone import load_image_backbone
    from bat.image.encoders import load_encoders
    from bat.text.backbone import load_backbone

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match=r"device: 'cuda:0' needs a CUDA GPU, and torch sees none"):
        load_image_backbone(tmp_path, "float32", "cuda:0")
    with pytest.raises(ConfigError, match=r"device: 'tpu' is not allowed; choose one of \['cpu', 'cuda', 'cuda:N'\]"):
        load_encoders(tmp_path, "tpu")
    with pytest.raises(ConfigError, match=r"device: 'auto' is not allowed"):
        load_backbone(tmp_path, device="auto")


# --- training under the default runtime is a plain PyTorch loop ------------------------------

def reference_run(kind: str, train_config: TrainConfig) -> tuple[list[float], dict]:
    """:func:`train`'s steps written as a plain PyTorch loop: no Accelerate, no device moves."""
    s = setting(kind)
    backbone = s["build"]()  # seeds torch itself
    seed_everything(train_config.seed)
    model = attach_adapter(backbone, AdapterConfig(kind))
    params = trainable_parameters(model)
    optimizer = torch.optim.AdamW(params.values(), lr=train_config.learning_rate,
                                  betas=train_config.betas, eps=train_config.eps,
                                  weight_decay=train_config.weight_decay)
    selection = torch.Generator().manual_seed(derived_seed(train_config.seed, 3))
    gamma = None if train_config.regime == "plain" else train_config.gamma
    mixer = Mixer(count_examples("adaptation", s["adaptation"]), train_config.batch_size, gamma,
                  train_config.mixing, train_config.seed)
    losses = []
    for step in range(train_config.steps):
        plan = mixer.plan(step)
        examples = take_examples(s["adaptation"], plan.adaptation_ids)
        if plan.backbone_count:
            ids = select_backbone(RandomSelector(train_config.seed), model, s["task"], s["adaptation"],
                                  s["backbone"], train_config, plan.backbone_count, step, selection)
            examples = concat_batches(examples, take_examples(s["backbone"], ids))
        batch = s["task"].prepare(examples, torch.Generator().manual_seed(
            derived_seed(train_config.seed, 2, step)))
        model.train()
        loss = s["task"].batch_losses(model, batch).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params.values(), train_config.max_grad_norm)
        optimizer.step()
        losses.append(loss.item())
    return losses, params


@pytest.mark.parametrize("kind, regime", [("locon", "plain"), ("locon", "random"), ("lora", "random")])
def test_default_runtime_is_bit_identical_to_a_plain_pytorch_loop(kind, regime, tmp_path):
    s = setting(kind)
    train_config = config(kind, regime=regime, steps=3, seed=5)
    result = train(s["build"](), AdapterConfig(kind), s["task"], s["adaptation"],
                   None if regime == "plain" else s["backbone"], train_config, tmp_path, progress=False)
    losses, expected = reference_run(kind, train_config)
    assert [row["loss"] for row in result.log] == losses
    actual = trainable_parameters(result.model)
    assert actual.keys() == expected.keys()
    assert all(torch.equal(actual[name], expected[name]) for name in expected)


def test_update_is_the_plain_pytorch_update_and_needs_the_prepared_optimizer():
    """bat.core.runtime.update, which every loop trains through (adapters, backbones' pre-training),
    is zero_grad, backward, clip, step under the default runtime, bit for bit; a bare optimizer,
    whose step would skip Accelerate's fp16 unscaling, is refused."""
    from bat.core.runtime import make_accelerator, update

    def run(step):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 1))
        optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
        inputs = torch.randn(4, 6, generator=torch.Generator().manual_seed(1))
        return model, optimizer, [step(model, optimizer, model(inputs).pow(2).mean() * 50)
                                  for _ in range(3)]

    def plain(model, optimizer, loss):
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)
        optimizer.step()

    accelerator = make_accelerator(RuntimeConfig())
    prepared = {}

    def accelerated(model, optimizer, loss):
        if "optimizer" not in prepared:
            prepared["optimizer"] = accelerator.prepare(optimizer)
        update(accelerator, prepared["optimizer"], loss, model.parameters(), 0.5)

    expected, _, _ = run(plain)
    actual, _, _ = run(accelerated)
    assert all(torch.equal(a, b) for a, b in zip(actual.parameters(), expected.parameters()))
    model, optimizer, _ = run(lambda *args: None)
    with pytest.raises(TypeError, match="must be the one accelerator.prepare returned, not a bare AdamW"):
        update(accelerator, optimizer, model(torch.ones(1, 6)).sum(), model.parameters())


# --- bf16 autocast on the CPU ------------------------------------------------------------------

class Recorder:
    """Dtypes and devices of a frozen layer's outputs, and of what reaches the adapter's layers."""

    def __init__(self, model):
        self.frozen, self.adapter_inputs = set(), set()
        frozen = next(m for m in model.modules() if isinstance(m, torch.nn.Linear))
        frozen.register_forward_hook(self.on_frozen)
        self.model = model

    def on_frozen(self, module, inputs, output):
        self.frozen.add((output.dtype, output.device.type))

    def watch_adapter(self, trained):
        layer = next(m for name, m in trained.named_modules() if name.endswith("lora_A.default"))
        layer.register_forward_hook(lambda module, inputs, output: self.adapter_inputs.add(
            (module.weight.dtype, output.dtype)))


@pytest.mark.parametrize("kind", ["locon", "lora"])
def test_bf16_autocast_trains_a_float32_adapter_on_bfloat16_activations(kind, tmp_path, monkeypatch):
    s = setting(kind)
    model = backbone_in(torch.bfloat16, kind)
    recorder = Recorder(model)
    attach = attach_adapter  # watch the adapter's layers as soon as train attaches them

    def attach_and_watch(backbone, adapter):
        trained = attach(backbone, adapter)
        recorder.watch_adapter(trained)
        return trained

    monkeypatch.setattr("bat.core.train.attach_adapter", attach_and_watch)
    selector = Prop2Selector(SelectionConfig(mode="oracle_free", holdout_fraction=0.5))
    result = train(model, AdapterConfig(kind), s["task"], s["adaptation"], s["backbone"],
                   config(kind, regime="bat"), tmp_path, selector=selector, progress=False,
                   runtime=BF16)
    params = trainable_parameters(result.model)
    assert {p.dtype for p in params.values()} == {torch.float32}
    assert {p.grad.dtype for p in params.values()} == {torch.float32}
    frozen = {p.dtype for p in result.model.parameters() if not p.requires_grad}
    assert frozen == {torch.bfloat16}
    assert recorder.frozen == {(torch.bfloat16, "cpu")}  # the backbone computed in bf16
    assert recorder.adapter_inputs == {(torch.float32, torch.bfloat16)}  # fp32 weights, bf16 matmul
    assert all(torch.isfinite(torch.tensor(row["loss"])) for row in result.log)
    assert selector.records and all(r["score_adaptation"] > 0 for r in selector.records)
    # the model comes back without Accelerate's autocast wrapper on its forward
    assert "_original_forward" not in vars(result.model)


@pytest.mark.parametrize("kind", ["locon", "lora"])
def test_bf16_per_sample_gradients_and_curvature_agree_with_float32(kind, monkeypatch):
    """Within 5 % (relative, Euclidean): bf16 keeps 8 bits of mantissa (eps = 2^-7 ≈ 0.8 %) and each
    layer's rounding adds up through the network. Measured: rows 1.8 % (UNet) and 0.7 % (LM),
    products up to 3.3 % (the Fisher's, quadratic in the rows)."""
    s = setting(kind)
    seed_everything(0)
    exact = attach_adapter(s["build"](), AdapterConfig(kind))
    half = copy.deepcopy(exact)
    for param in half.parameters():
        if not param.requires_grad:
            param.data = param.data.bfloat16()
    batch = s["task"].prepare(concat_batches(s["adaptation"], s["backbone"]),
                              torch.Generator().manual_seed(0))

    def relative(a, b):
        return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b))

    def no_fallback(*args, **kwargs):
        raise AssertionError("every adapter parameter should be served by the layer hooks")

    with monkeypatch.context() as patch:  # bf16 rounding must not fail the hooks' sum check
        patch.setattr(curvature, "per_sample_grads", no_fallback)
        rows = curvature.per_sample_grads_hooks(exact, s["task"], batch)
        with BF16.autocast():
            half_rows = curvature.per_sample_grads_hooks(half, s["task"], batch)
    assert half_rows.dtype == torch.float32
    assert relative(half_rows, rows) < 0.05
    weights = torch.full((len(rows),), 1.0 / len(rows), dtype=torch.float64)
    v = torch.randn(rows.shape[1], generator=torch.Generator().manual_seed(1))
    for kind_of_curvature in ("gauss_newton", "fisher"):
        product = curvature.curvature_operators(kind_of_curvature, exact, s["task"], batch,
                                                [weights])[0].matvec(v)
        with BF16.autocast():
            operator = curvature.curvature_operators(kind_of_curvature, half, s["task"], batch,
                                                     [weights])[0]
        assert relative(operator.matvec(v), product) < 0.05, kind_of_curvature


# --- checkpoints and gradient checkpointing ------------------------------------------------

def test_a_checkpoint_saved_under_one_runtime_resumes_under_another(tmp_path):
    s = setting("locon")
    first = config("locon", regime="random", steps=2)
    train(backbone_in(torch.bfloat16, "locon"), AdapterConfig("locon"), s["task"], s["adaptation"],
          s["backbone"], first, tmp_path, progress=False, runtime=BF16)
    state = load_state(tmp_path)
    tensors = [state["trainable"][name] for name in state["trainable"]]
    tensors += [value for entry in state["optimizer"]["state"].values() for value in entry.values()]
    assert all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors)
    resumed = train(backbone_in(torch.float32, "locon"), AdapterConfig("locon"), s["task"],
                    s["adaptation"], s["backbone"], config("locon", regime="random", steps=4),
                    tmp_path, progress=False)
    assert [row["step"] for row in resumed.log] == [1, 2, 3, 4]
    assert all(torch.isfinite(torch.tensor(row["loss"])) for row in resumed.log)


@pytest.mark.parametrize("kind", ["locon", "lora"])
def test_gradient_checkpointing_changes_memory_not_the_numbers(kind, tmp_path):
    s = setting(kind)
    runs = {}
    for checkpointing in (False, True):
        selector = Prop2Selector(SelectionConfig(mode="oracle_free", holdout_fraction=0.5))
        runs[checkpointing] = train(
            s["build"](), AdapterConfig(kind), s["task"], s["adaptation"], s["backbone"],
            config(kind, regime="bat"), tmp_path / str(checkpointing), selector=selector,
            progress=False, runtime=RuntimeConfig(gradient_checkpointing=checkpointing))
    flags = {getattr(m, "gradient_checkpointing") for m in runs[True].model.modules()
             if hasattr(m, "gradient_checkpointing")}
    assert flags == {True}  # on for training, and left on by the selector's scoring
    plain, checkpointed = (trainable_parameters(runs[flag].model) for flag in (False, True))
    assert all(torch.allclose(plain[name], checkpointed[name], rtol=0, atol=1e-6) for name in plain)
    assert [row["loss"] for row in runs[True].log] == pytest.approx([row["loss"] for row in runs[False].log])


# --- data-parallel: one run over two processes ----------------------------------------------

DATA_PARALLEL = """
import sys, torch
sys.path.insert(0, {project!r})
from bat.core.adapters import AdapterConfig, trainable_parameters
from bat.core.train import train
from tests.test_runtime import config, setting
s = setting("locon")
result = train(s["build"](), AdapterConfig("locon"), s["task"], s["adaptation"], s["backbone"],
               config("locon", regime="random", batch_size=3, gamma=0.6), sys.argv[1], progress=False)
if torch.distributed.get_rank() == 0:
    torch.save({{"losses": [row["loss"] for row in result.log],
                "weights": dict(trainable_parameters(result.model))}}, sys.argv[2])
"""


def test_two_processes_train_one_run_data_parallel(tmp_path):
    """``torchrun`` (what ``accelerate launch`` runs) with two CPU processes: each trains on its share
    of every batch (3 and 2 of 5 examples here, so a mean of the processes' means would differ) and
    DDP averages, so the run equals the one-process run up to float32 rounding."""
    import subprocess
    import sys

    from tests.conftest import PROJECT

    script = tmp_path / "data_parallel.py"
    script.write_text(DATA_PARALLEL.format(project=str(PROJECT)))
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", str(script),
                    str(tmp_path / "parallel"), str(tmp_path / "parallel.pt")],
                   check=True, capture_output=True, env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    parallel = torch.load(tmp_path / "parallel.pt")
    s = setting("locon")
    single = train(s["build"](), AdapterConfig("locon"), s["task"], s["adaptation"], s["backbone"],
                   config("locon", regime="random", batch_size=3, gamma=0.6), tmp_path / "single",
                   progress=False)
    assert parallel["losses"] == pytest.approx([row["loss"] for row in single.log], rel=1e-6)
    expected = trainable_parameters(single.model)
    assert all(torch.allclose(parallel["weights"][name], expected[name], rtol=0, atol=1e-5)
               for name in expected)
    assert sorted(p.name for p in (tmp_path / "parallel").iterdir()) == \
        sorted(p.name for p in (tmp_path / "single").iterdir())


# --- the oracle stage --------------------------------------------------------------------------

def test_the_oracle_stage_trains_in_the_runtime_it_is_given(smoke_root, smoke_image_backbone,
                                                            smoke_params, tmp_path, monkeypatch):
    from bat.stages.oracle import load_run, train_oracle

    monkeypatch.setattr(paths, "PREPARED", smoke_root / "data" / "prepared")
    seen = set()
    handle = torch.nn.modules.module.register_module_forward_hook(
        lambda module, inputs, output: seen.add((type(module).__name__, output.dtype))
        if isinstance(module, torch.nn.Conv2d) and torch.is_tensor(output) else None)
    try:
        result = train_oracle("noto_locon", load_run("noto_locon", smoke_params),
                              smoke_image_backbone.parent, tmp_path, runtime=BF16)
    finally:
        handle.remove()
    assert ("Conv2d", torch.bfloat16) in seen and ("Conv2d", torch.float32) not in seen
    assert {p.dtype for p in trainable_parameters(result.model).values()} == {torch.float32}
    assert {p.dtype for p in result.model.parameters() if not p.requires_grad} == {torch.bfloat16}
    assert len(result.log) == smoke_params["oracles"]["image"]["noto_locon"]["steps"]


# --- the grid stage ----------------------------------------------------------------------------

def test_a_grid_trains_selects_and_samples_in_the_runtime_it_is_given(smoke_oracles, smoke_encoders,
                                                                      smoke_root, smoke_params,
                                                                      tmp_path, monkeypatch):
    """The LoCon grid (plain and BAT: training, Algorithm 1's per-sample gradients, evaluation
    samples) under bf16: every UNet and VAE block computes in bfloat16, and the tables hold
    finite numbers for every run."""
    from diffusers.models.resnet import ResnetBlock2D

    from bat.analysis.runs import read_grid
    from bat.stages.grid import load_grid, run_grid

    monkeypatch.setattr(paths, "PREPARED", smoke_root / "data" / "prepared")
    seen = set()
    handle = torch.nn.modules.module.register_module_forward_hook(
        lambda module, inputs, output: seen.add(output.dtype)
        if isinstance(module, ResnetBlock2D) else None)
    try:
        run_grid(load_grid("locon", smoke_params), tmp_path / "locon", smoke_root / "models",
                 runtime=BF16)
    finally:
        handle.remove()
    assert seen == {torch.bfloat16}
    grid = read_grid(tmp_path / "locon")
    assert set(grid.steps["regime"]) == {"plain", "bat"}
    trained = grid.steps[grid.steps["step"] > 0]  # step 0 is the backbone: no training loss
    assert len(trained) and bool(trained["loss"].abs().lt(float("inf")).all())
    assert grid.steps.loc[grid.steps["regime"] == "bat", "score_bat"].notna().any()
