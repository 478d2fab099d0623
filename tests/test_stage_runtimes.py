"""The stages compute in the ``runtime`` they are given (issue 14: "a test asserts the dtypes and
devices the stages used").

tests/test_runtime.py covers the image oracle and the image grid under bf16; here are the rest:
the text oracle and the text grid on the smoke LM, and the three stages that load pretrained
models in the paper profile (the SD-1.4-layout pipeline, the LLaMA, DINOv2 + CLIP), run through
their stage functions on the local stand-ins (benchmarks/paper_standins.py) under the paper-cpu
runtime. Each test records what the models computed with (forward hooks on their layers, and the
dtype and device of the weights the stage loaded), so a stage that ignored the runtime and ran
float32 fails it. The machine has no GPU: every device is the CPU, so the device assertions
check placement and the recorded runtime, not a move to a GPU.
"""

from __future__ import annotations

import inspect
import json
from dataclasses import asdict

import pytest
import torch
import yaml
from torch import nn

from bat import paths
from bat.config import build
from bat.core.adapters import trainable_parameters
from bat.core.runtime import RuntimeConfig, runtime_config
from bat.stages import profile
from benchmarks import paper_standins
from tests.test_runtime import BF16

# profiles/paper-cpu.example.yaml's runtime: bf16 weights, bf16 autocast, gradient checkpointing
PAPER_CPU = RuntimeConfig(device="cpu", dtype="bfloat16", mixed_precision="bf16", gradient_checkpointing=True)


# --- the text oracle ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["word_definition_lora", "word_definition_dora"])
def test_the_text_oracle_stage_trains_in_the_runtime_it_is_given(name, smoke_root, smoke_text_backbone,
                                                                 smoke_params, tmp_path, monkeypatch):
    """A LoRA / DoRA oracle on the smoke LM under bf16: every frozen Linear of the LM computes in
    bfloat16, the adapter's float32 layers take bf16 matmuls (autocast), and the trained model
    keeps float32 adapter weights on bfloat16 frozen ones."""
    from bat.stages.oracle import load_run, track_options, train_oracle

    monkeypatch.setattr(paths, "PREPARED", smoke_root / "data" / "prepared")
    frozen, adapter = set(), set()

    def record(module, inputs, output):
        if isinstance(module, nn.Linear) and torch.is_tensor(output):
            if module.weight.requires_grad:
                adapter.add((module.weight.dtype, output.dtype, output.device.type))
            else:
                frozen.add((output.dtype, output.device.type))

    handle = torch.nn.modules.module.register_module_forward_hook(record)
    try:
        result = train_oracle(name, load_run(name, smoke_params), smoke_text_backbone.parent, tmp_path,
                              runtime=BF16, **track_options("text", smoke_params))
    finally:
        handle.remove()
    assert frozen == {(torch.bfloat16, "cpu")}
    assert adapter == {(torch.float32, torch.bfloat16, "cpu")}
    assert {p.dtype for p in trainable_parameters(result.model).values()} == {torch.float32}
    assert {p.dtype for p in result.model.parameters() if not p.requires_grad} == {torch.bfloat16}
    assert {p.device.type for p in result.model.parameters()} == {"cpu"}
    assert len(result.log) == smoke_params["oracles"]["text"][name]["steps"]
    assert all(torch.isfinite(torch.tensor(row["loss"])) for row in result.log)


# --- the text grid -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def text_grid_run(smoke_text_oracles, smoke_root, smoke_params, tmp_path_factory):
    """The smoke LoRA / DoRA grid (plain and bat) run once under the paper-cpu runtime, with what
    each LM block computed in (dtype, device) and, in training forwards, whether it checkpointed."""
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer

    from bat.stages.grid import load_grid, run_grid
    from bat.stages.oracle import track_options

    config = load_grid("lora_dora", smoke_params)
    assert "bat" in config.regimes
    out = tmp_path_factory.mktemp("text_grid") / "lora_dora"
    outputs, checkpointing = set(), set()

    def record(module, inputs, output):
        if isinstance(module, LlamaDecoderLayer):
            hidden = output[0] if isinstance(output, tuple) else output
            outputs.add((hidden.dtype, hidden.device.type))
            if module.training and torch.is_grad_enabled():
                checkpointing.add(module.gradient_checkpointing)

    handle = torch.nn.modules.module.register_module_forward_hook(record)
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(paths, "PREPARED", smoke_root / "data" / "prepared")
            run_grid(config, out, smoke_root / "models", runtime=PAPER_CPU, **track_options("text", smoke_params))
    finally:
        handle.remove()
    return out, outputs, checkpointing


def test_the_text_grid_trains_selects_and_scores_in_the_runtime_it_is_given(text_grid_run):
    """Training, Algorithm 1's per-sample gradients and the evaluations of the text grid under the
    paper-cpu runtime: every LM block computes in bfloat16 on the CPU (checkpointed when training),
    the tables hold finite numbers, and the bat rows carry Score_bat."""
    from bat.analysis.runs import read_grid

    out, outputs, checkpointing = text_grid_run
    assert outputs == {(torch.bfloat16, "cpu")}
    assert checkpointing == {True}
    grid = read_grid(out)
    assert set(grid.steps["regime"]) == {"plain", "bat"} and set(grid.steps["adapter"]) == {"lora", "dora"}
    trained = grid.steps[grid.steps["step"] > 0]  # step 0 is the backbone: no training loss
    assert len(trained) and bool(trained[["loss", "weight_difference"]].abs().lt(float("inf")).all().all())
    bat = grid.steps[grid.steps["regime"] == "bat"]
    assert bat["score_bat"].notna().any() and bool(bat["score_bat"].dropna().abs().lt(float("inf")).all())
    assert bool(grid.evaluations["heldout_loss"].abs().lt(float("inf")).all())
    assert grid.evaluations["acc:mean"].notna().any()  # the benchmarks were scored too


def test_the_text_grid_records_the_runtime_it_ran_under(text_grid_run):
    """grid.json says how the tables were computed (its executor already); the runtime belongs there
    too, as the backbone and encoder stages write theirs into result.json."""
    out, _, _ = text_grid_run
    written = json.loads((out / "grid.json").read_text(encoding="utf-8"))
    assert written.get("runtime") == asdict(PAPER_CPU)


# --- the stages that load pretrained models in the paper profile --------------------------------

@pytest.fixture(scope="module")
def paper(tmp_path_factory, raw):
    """The paper profile merged with the stand-ins' override (as ``profile use`` writes it; params.yaml
    and the tiny base kept aside, as tests/test_paper_standins.py does) and its prepared data."""
    import datasets

    from bat.stages.prepare import PrepareConfig, prepare

    out = tmp_path_factory.mktemp("paper")
    override = paper_standins.build(out / "standins")
    params_file = out / "params.yaml"
    params_file.write_text(profile.tiny_base(), encoding="utf-8")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(paths, "PARAMS", params_file)
        patch.setattr(profile, "TINY_BASE", out / ".tiny-base.yaml")
        patch.setattr(datasets.config, "HF_DATASETS_CACHE", str(out / "hf_cache"))
        patch.setattr(datasets.config, "SLEEP_TIME_ON_THREADS_SHUTDOWN", 0)
        params = yaml.safe_load(profile.profile_text("paper", override))
        prepare(build(PrepareConfig, params["prepare"], "prepare"), raw, out / "prepared")
    assert runtime_config(params) == PAPER_CPU  # what the stages below are given
    return params, out / "prepared"


def watch(monkeypatch, module, name: str, models_of) -> dict[str, set | list]:
    """Wrap the loader ``module.name`` that a stage calls: the arguments of each call are recorded
    (``calls``), the weights of each model it returns (``models_of(returned)``) as (dtype, device),
    and hooks on their Linear and Conv2d layers record the (dtype, device) of every output they
    compute."""
    record = {"calls": [], "weights": set(), "outputs": set()}
    real = getattr(module, name)
    signature = inspect.signature(real)

    def on_output(layer, inputs, output):
        record["outputs"].add((output.dtype, output.device.type))

    def spy(*args, **kwargs):
        call = signature.bind(*args, **kwargs)
        call.apply_defaults()
        record["calls"].append(call.arguments)
        returned = real(*args, **kwargs)
        for model in models_of(returned):
            record["weights"] |= {(p.dtype, p.device.type) for p in model.parameters()}
            for layer in model.modules():
                if isinstance(layer, (nn.Linear, nn.Conv2d)):
                    layer.register_forward_hook(on_output)
        return returned

    monkeypatch.setattr(module, name, spy)
    return record


def recorded_runtime(result_folder) -> dict:
    return json.loads((result_folder / "result.json").read_text(encoding="utf-8"))["runtime"]


def test_the_image_backbone_stage_loads_and_samples_sd_in_the_runtime_it_is_given(paper, tmp_path, monkeypatch):
    """backbone_image (source pretrained, the SD-1.4-layout stand-in): the pipeline the stage
    samples and scores with has bfloat16 UNet, VAE and text encoder on the CPU, every layer of them
    computes in bfloat16, and result.json records the runtime."""
    from bat.stages import backbone_image, encoders

    params, prepared = paper
    assert params["backbone_image"]["source"] == "pretrained"
    encoders.run(params["encoders"], PAPER_CPU, prepared, tmp_path / "models" / "encoders",
                 tmp_path / "runs" / "encoders")
    pipeline = watch(monkeypatch, backbone_image, "build_or_load",
                     lambda returned: [returned[0].unet, returned[0].vae, returned[0].text_encoder])
    backbone_image.run(params["backbone_image"], PAPER_CPU, prepared, tmp_path / "models" / "backbone_image",
                       tmp_path / "runs" / "backbone_image", tmp_path / "models" / "encoders")
    assert recorded_runtime(tmp_path / "runs" / "backbone_image") == asdict(PAPER_CPU)
    assert pipeline["weights"] == {(torch.bfloat16, "cpu")}
    assert pipeline["outputs"] == {(torch.bfloat16, "cpu")}


def test_the_text_backbone_stage_scores_the_llama_in_the_runtime_it_is_given(paper, tmp_path, monkeypatch):
    """backbone_text (source pretrained, steps 0, the LLaMA stand-in): the LM scored before and the
    one reloaded from the saved folder and scored after are bfloat16 on the CPU, every Linear of
    them computes in bfloat16, and result.json records the runtime."""
    from bat.stages import backbone_text

    params, prepared = paper
    section = params["backbone_text"]
    assert (section["source"], section["steps"]) == ("pretrained", 0)
    first = watch(monkeypatch, backbone_text, "initial_backbone", lambda returned: [returned[0]])
    reloaded = watch(monkeypatch, backbone_text, "load_backbone", lambda returned: [returned[0]])
    backbone_text.run(section, PAPER_CPU, prepared, tmp_path / "models" / "backbone_text",
                      tmp_path / "runs" / "backbone_text")
    assert recorded_runtime(tmp_path / "runs" / "backbone_text") == asdict(PAPER_CPU)
    for record in (first, reloaded):
        assert record["weights"] == {(torch.bfloat16, "cpu")}
        assert record["outputs"] == {(torch.bfloat16, "cpu")}


def test_the_encoder_stage_loads_dinov2_and_clip_on_the_runtime_device(paper, tmp_path, monkeypatch):
    """encoders (source pretrained, the DINOv2 and CLIP stand-ins): the stage's documented contract is
    runtime's device with float32 weights (they only score; the image stages run them under their
    autocast), so the models are float32 on the CPU, the stage passed runtime's device, and
    result.json records the runtime."""
    from bat.stages import encoders

    params, prepared = paper
    assert params["encoders"]["source"] == "pretrained"
    models = watch(monkeypatch, encoders, "build_or_load",
                   lambda returned: [returned[0].image_model, returned[0].clip_model])
    encoders.run(params["encoders"], PAPER_CPU, prepared, tmp_path / "models" / "encoders",
                 tmp_path / "runs" / "encoders")
    assert recorded_runtime(tmp_path / "runs" / "encoders") == asdict(PAPER_CPU)
    assert [call["device"] for call in models["calls"]] == [PAPER_CPU.device_name]
    assert models["weights"] == {(torch.float32, "cpu")}
    assert models["outputs"] == {(torch.float32, "cpu")}


# --- the tiny profile's pre-training loops ------------------------------------------------------

# float32 weights (what pre-training trains) under bf16 autocast, activations checkpointed
MIXED = RuntimeConfig(mixed_precision="bf16", gradient_checkpointing=True)


def training_forwards(module_type) -> tuple[set, object]:
    """A global forward hook recording, in forwards with gradients on, the output dtype of each
    ``module_type`` and whether each module that can checkpoint (diffusers' blocks, transformers'
    decoder layers: a ``gradient_checkpointing`` flag) does; returns the set and the hook's handle."""
    seen = set()

    def record(module, inputs, output):
        if not (module.training and torch.is_grad_enabled()):
            return
        if isinstance(module, module_type):
            hidden = output[0] if isinstance(output, tuple) else output
            seen.add(hidden.dtype)
        if hasattr(module, "gradient_checkpointing"):
            seen.add(("checkpointing", module.gradient_checkpointing))

    return seen, torch.nn.modules.module.register_module_forward_hook(record)


def test_the_image_backbone_pretrains_in_the_runtime_it_is_given(smoke_root):
    """Pre-training the tiny pipeline (VAE, then UNet) under bf16 autocast: every ResNet block of
    both computes in bfloat16 and checkpoints, the trained weights stay float32, and the default
    runtime trains exactly as before (float32, no checkpointing)."""
    from diffusers.models.resnet import ResnetBlock2D

    from bat.image.backbone import ImageBackboneConfig, pretrain
    from bat.image.data import load_image_set
    from tests.test_image_backbone import SMOKE

    images = load_image_set(smoke_root / "data" / "prepared" / "images" / "backbone.npz")
    config = build(ImageBackboneConfig, SMOKE, "backbone_image")
    seen, handle = training_forwards(ResnetBlock2D)
    try:
        pipe, log = pretrain(config, images.images[:8], images.captions[:8], MIXED)
        mixed = set(seen)
        seen.clear()
        pretrain(config, images.images[:8], images.captions[:8])
    finally:
        handle.remove()
    assert mixed == {torch.bfloat16, ("checkpointing", True)}
    assert seen == {torch.float32, ("checkpointing", False)}
    assert {p.dtype for p in [*pipe.unet.parameters(), *pipe.vae.parameters()]} == {torch.float32}
    assert all(torch.isfinite(torch.tensor(row["loss"])) for row in log["vae"] + log["unet"])


def test_the_text_backbone_fine_tunes_in_the_runtime_it_is_given(raw):
    """The text backbone's fine-tune (steps > 0) under bf16 autocast: every Linear of the LM
    computes in bfloat16 and its decoder layers checkpoint; the default runtime computes in float32
    without. (The float32 residual stream keeps a layer's own output float32.)"""
    from bat.text import backbone as tb
    from tests.test_text_backbone import GGUF, RECORDS, smoke

    config = smoke(raw)
    tokenizer = tb.load_tokenizer(raw / GGUF)
    seen, handle = training_forwards(nn.Linear)
    try:
        runs = {}
        for name, runtime in (("mixed", MIXED), ("default", None)):
            seen.clear()
            model = tb.build_tiny_model(config.tiny_config, tokenizer, seed=config.seed)
            _, _, log = tb.fine_tune(config, RECORDS, model=model, tokenizer=tokenizer, runtime=runtime,
                                     progress=False)
            runs[name] = (set(seen), log)
    finally:
        handle.remove()
    assert runs["mixed"][0] == {torch.bfloat16, ("checkpointing", True)}
    assert runs["default"][0] == {torch.float32, ("checkpointing", False)}
    assert all(torch.isfinite(torch.tensor(row["loss"])) for row in runs["mixed"][1]["rows"])


def test_a_full_fine_tune_of_a_half_precision_lm_trains_float32_weights(raw):
    """lora_rank 0 (every weight trains) on a bfloat16 LM under its bf16 runtime: the weights train
    in float32, as the image pre-training's do, and the model comes back float32 (the stage saves
    it and loads it back in runtime.dtype); the loss stays finite."""
    from bat.text import backbone as tb
    from tests.test_text_backbone import GGUF, RECORDS, smoke

    config = smoke(raw, lora_rank=0)
    tokenizer = tb.load_tokenizer(raw / GGUF)
    model = tb.build_tiny_model(config.tiny_config, tokenizer, seed=config.seed, torch_dtype="bfloat16")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    before = {name: p.detach().float().clone() for name, p in model.named_parameters()}
    trained, _, log = tb.fine_tune(config, RECORDS, model=model, tokenizer=tokenizer, runtime=BF16,
                                   progress=False)
    assert {p.dtype for p in trained.parameters()} == {torch.float32}
    assert log["trainable_parameters"] == sum(p.numel() for p in trained.parameters())
    assert any(not torch.equal(before[name], p) for name, p in trained.named_parameters())
    assert all(torch.isfinite(torch.tensor(row["loss"])) for row in log["rows"])
