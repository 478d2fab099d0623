"""The paper profile's local stand-ins (benchmarks/paper_standins.py) and the CPU override
(profiles/paper-cpu.example.yaml): the override lands on the paper profile, and every stand-in
opens with the loader its stage uses."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
import yaml

from bat import paths
from bat.config import build
from bat.stages import profile
from benchmarks import paper_standins
from tests.conftest import PROJECT

EXAMPLE = PROJECT / "profiles" / "paper-cpu.example.yaml"


@pytest.fixture(autouse=True)
def datasets_config(tmp_path, monkeypatch):
    """``datasets`` caches under the test's folder and does not wait after a stopped stream."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))
    monkeypatch.setattr(datasets.config, "SLEEP_TIME_ON_THREADS_SHUTDOWN", 0)


@pytest.fixture(scope="module")
def standins(tmp_path_factory):
    out = tmp_path_factory.mktemp("standins")
    override = paper_standins.build(out)
    return out, override


@pytest.fixture
def paper_params(standins, tmp_path, monkeypatch):
    """The merged paper profile with the stand-ins' override, as ``profile use`` would write it
    (``params.yaml`` and the tiny base kept aside in ``tmp_path``, as tests/test_config.py does)."""
    params = tmp_path / "params.yaml"
    params.write_text(profile.tiny_base(), encoding="utf-8")
    monkeypatch.setattr(paths, "PARAMS", params)
    monkeypatch.setattr(profile, "TINY_BASE", tmp_path / ".tiny-base.yaml")
    return yaml.safe_load(profile.profile_text("paper", standins[1]))


def digests(folder) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != "paper-cpu.yaml"}


def test_the_example_override_merges_onto_the_paper_profile(tmp_path, monkeypatch):
    params = tmp_path / "params.yaml"
    params.write_text(profile.tiny_base(), encoding="utf-8")
    monkeypatch.setattr(paths, "PARAMS", params)
    monkeypatch.setattr(profile, "TINY_BASE", tmp_path / ".tiny-base.yaml")
    merged = yaml.safe_load(profile.profile_text("paper", EXAMPLE))
    assert merged["profile"] == "paper"
    assert merged["runtime"] == {"device": "cpu", "dtype": "bfloat16", "mixed_precision": "bf16",
                                 "gradient_checkpointing": True}
    assert merged["executor"]["kind"] == "local"
    assert (merged["backbone_image"]["source"], merged["backbone_text"]["source"],
            merged["encoders"]["source"]) == ("pretrained",) * 3  # the paper's code path
    assert merged["backbone_image"]["model_id"] == ".cache/paper-standins/stable-diffusion-v1-4"
    for section in ("backbone_image", "backbone_text", "encoders"):  # every stage reads runtime's
        assert not {"device", "torch_dtype"} & set(merged[section])
    prepare = merged["prepare"]
    assert [prepare[key]["source"] for key in ("image_backbone", "text_backbone", "text_tasks", "benchmarks")] == \
        ["laion", "alpaca", "paper", "paper"]
    assert prepare["image_size"] == merged["backbone_image"]["resolution"] == 64


def test_stand_ins_are_small_deterministic_and_fill_the_override(standins, paper_params, tmp_path):
    out, override = standins
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    assert size < 20 * 2 ** 20
    assert digests(paper_standins.build(tmp_path / "again").parent) == digests(out)
    assert ".cache/paper-standins" not in override.read_text()
    prepare = paper_params["prepare"]
    folders = [paper_params["backbone_image"]["model_id"], paper_params["backbone_text"]["model_id"],
               paper_params["encoders"]["image_model_id"], paper_params["encoders"]["clip_model_id"]]
    for dataset in [prepare["text_backbone"]["alpaca"], *prepare["text_tasks"]["paper"].values(),
                    *prepare["benchmarks"]["paper"].values()]:
        folders.append(dataset["data_files"] or dataset["path"])
    for folder in folders:
        assert str(folder).startswith(str(out.resolve())) and (out / folder).exists(), folder
    assert len(list(out.glob("laion/*.tar"))) == 2


def test_the_prepare_stage_reads_every_stand_in_dataset(standins, paper_params, raw, tmp_path):
    from bat.image.data import load_image_set
    from bat.io import read_jsonl
    from bat.stages.prepare import PrepareConfig, prepare
    from bat.text.data import ADAPTATION_TASKS, EVAL_SETS

    values = paper_params["prepare"]
    sizes = prepare(build(PrepareConfig, values, "prepare"), raw, tmp_path / "prepared")
    backbone = load_image_set(tmp_path / "prepared" / "images" / "backbone.npz")
    assert backbone.source == "laion" and len(backbone) == values["backbone_images"]
    assert backbone.images.shape[1:] == (64, 64, 3)
    assert backbone.captions[0].startswith("a photo of a ")
    assert sizes["images/backbone_heldout"] == values["backbone_heldout_size"]
    records = read_jsonl(tmp_path / "prepared" / "text" / "backbone.jsonl")
    assert len(records) == values["text_backbone_size"] and records[0]["source"] == "alpaca"
    for task in ADAPTATION_TASKS:
        assert len(read_jsonl(tmp_path / "prepared" / "text" / "tasks" / f"{task}_train.jsonl")) == \
            values["task_train_size"]
    for name in EVAL_SETS:
        assert len(read_jsonl(tmp_path / "prepared" / "text" / "eval" / f"{name}.jsonl")) == values["eval_set_size"]


def test_the_image_backbone_loads_and_samples_in_bfloat16(paper_params):
    from bat.image.backbone import encode_images, generate, load_image_backbone, noise_task
    from bat.image.data import images_to_tensor

    section, runtime = paper_params["backbone_image"], paper_params["runtime"]
    pipe = load_image_backbone(section["model_id"], runtime["dtype"], runtime["device"])
    assert pipe.unet.dtype == torch.bfloat16 and type(pipe.scheduler).__name__ == "PNDMScheduler"
    assert pipe.tokenizer.model_max_length == 77 and pipe.vae.config.scaling_factor == 0.18215
    images = generate(pipe, ["a photo of a red circle"], seed=0, steps=2)
    assert images.shape == (1, 64, 64, 3) and images.dtype == np.uint8
    latents = encode_images(pipe, images_to_tensor(images))
    assert latents.shape == (1, 4, 8, 8)  # SD's 8x down-sampling to 4 channels
    assert noise_task(pipe).noise_scheduler.config.num_train_timesteps == 1000


def test_the_language_model_loads_with_a_llama_tokenizer(paper_params):
    from bat.text.backbone import encode_example, load_backbone

    section, runtime = paper_params["backbone_text"], paper_params["runtime"]
    model, tokenizer = load_backbone(section["model_id"], torch_dtype=runtime["dtype"],
                                     device=runtime["device"], attn_implementation=section["attn_implementation"])
    assert type(model).__name__ == "LlamaForCausalLM" and model.dtype == torch.bfloat16
    assert type(tokenizer).__name__ == "LlamaTokenizer" and not getattr(tokenizer, "chat_template", None)
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.convert_tokens_to_ids("<0x0A>")) == ("<s>", "</s>", 13)
    example = encode_example(tokenizer, "Add the numbers 3.", "5", section["max_length"])
    assert example["input_ids"][0] == tokenizer.bos_token_id and example["input_ids"][-1] == tokenizer.eos_token_id
    assert tokenizer.convert_ids_to_tokens(example["input_ids"][1:3]) == ["▁Below", "▁is"]  # words, not letters
    with torch.no_grad():
        logits = model(torch.tensor([example["input_ids"]])).logits
    assert logits.shape == (1, len(example["input_ids"]), len(tokenizer)) and torch.isfinite(logits).all()


def test_the_encoders_load_as_dinov2_and_clip(paper_params):
    from bat.image.encoders import PretrainedEncoders, load_encoders

    section = paper_params["encoders"]
    encoders = load_encoders((section["image_model_id"], section["clip_model_id"]))
    assert isinstance(encoders, PretrainedEncoders)
    assert type(encoders.image_model).__name__ == "Dinov2Model" and type(encoders.clip_model).__name__ == "CLIPModel"
    images = np.random.default_rng(0).integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    assert encoders.image_features(images).shape == (3, 32)
    assert encoders.clip_image_features(images).shape == (3, 16)
    assert encoders.clip_text_features(["a red circle", "a photo of a blue square"]).shape == (2, 16)
