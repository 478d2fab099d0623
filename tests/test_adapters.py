"""The adapter registry: configs, what trains, and saving in formats the ecosystems load."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap

import pytest
import torch
from peft import get_peft_model

from bat.core.curvature import flat_parameters
from bat.core.adapters import (ADAPTERS, AdapterConfig, attach_adapter,
                          load_adapter, rank_dropout_nan_chance, save_adapter, trainable_parameters)
from bat.errors import ConfigError
from tests.tiny_models import (CROSS_DIM, LATENT_CHANNELS, LATENT_SIZE, TEXT_LENGTH, tiny_llama,
                               tiny_pipeline, tiny_unet)

UNET_KINDS = ("dreambooth", "locon", "loha", "lokr")
LM_KINDS = ("lora", "dora")


def test_kinds_are_exactly_the_registry():
    assert set(UNET_KINDS + LM_KINDS) == set(ADAPTERS)


def test_lora_defaults_are_the_papers():
    config = AdapterConfig("lora")
    assert (config.rank, config.alpha, config.dropout, config.target_modules) == (
        8, 32, 0.1, ("q_proj", "v_proj"))
    assert AdapterConfig("dora").to_peft(for_lm=True).use_dora


@pytest.mark.parametrize("fields, message", [
    ({"kind": "ia3"}, "adapter.kind.*'dreambooth'.*'lokr'"),
    ({"kind": "lora", "rank": 0}, "adapter.rank"),
    ({"kind": "lora", "dropout": 1.5}, "adapter.dropout"),
    ({"kind": "locon", "target_modules": []}, "adapter.target_modules"),
    ({"kind": "lora", "target_modules": "q_proj"}, "adapter.target_modules"),
    ({"kind": "dreambooth", "rank": 4}, "adapter.rank.*every weight"),
])
def test_bad_adapter_configs_are_rejected(fields, message):
    with pytest.raises(ConfigError, match=message):
        AdapterConfig(**fields)


def test_targets_that_match_nothing_are_rejected_before_training():
    with pytest.raises(ConfigError, match=r"\['q_porj'\] match no module.*q_proj"):
        attach_adapter(tiny_llama(), AdapterConfig("lora", target_modules=("q_porj", "v_proj")))


@pytest.mark.parametrize("kind", ["locon", "loha", "lokr", "lora", "dora"])
def test_only_adapter_parameters_train(kind):
    from tests.tiny_models import tiny_unet

    backbone = tiny_unet() if kind in UNET_KINDS else tiny_llama()
    original = list(backbone.parameters())
    model = attach_adapter(backbone, AdapterConfig(kind))
    trainable = trainable_parameters(model)
    assert trainable and not any(p.requires_grad for p in original)
    assert not {id(p) for p in original} & {id(p) for p in trainable.values()}
    assert flat_parameters(model).numel() == sum(p.numel() for p in trainable.values())


def test_dreambooth_trains_every_weight():
    from tests.tiny_models import tiny_unet

    unet = tiny_unet().requires_grad_(False)
    model = attach_adapter(unet, AdapterConfig("dreambooth"))
    assert len(trainable_parameters(model)) == len(list(unet.parameters()))


def perturb(model):
    """Move the adapter off its (often zero) start, so a failed load cannot pass unnoticed."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in trainable_parameters(model).values():
            p.add_(0.1 * torch.randn(p.shape, generator=generator))


# A fresh interpreter that knows nothing of bat loads each adapter with the ecosystem's own calls
# (one interpreter for all kinds: starting one costs seconds of imports).
LOADER = textwrap.dedent("""
    import sys, torch
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from peft import PeftModel
    from transformers import LlamaForCausalLM
    root = sys.argv[1]
    inputs = torch.load(f"{root}/inputs.pt")
    for kind in sys.argv[2:]:
        adapter = f"{root}/{kind}"
        if kind == "dreambooth":
            unet = UNet2DConditionModel.from_pretrained(adapter)
        elif kind == "locon":
            pipe = StableDiffusionPipeline.from_pretrained(f"{root}/pipeline")
            pipe.load_lora_weights(adapter)
            unet = pipe.unet
        elif kind in ("loha", "lokr"):
            unet = PeftModel.from_pretrained(
                UNet2DConditionModel.from_pretrained(f"{root}/pipeline", subfolder="unet"), adapter)
        if kind in ("lora", "dora"):
            llama = LlamaForCausalLM.from_pretrained(f"{root}/llama")
            out = PeftModel.from_pretrained(llama, adapter).eval()(input_ids=inputs["input_ids"]).logits
        else:
            out = unet.eval()(inputs["sample"], inputs["timesteps"],
                              encoder_hidden_states=inputs["encoder_hidden_states"]).sample
        torch.save(out.detach(), f"{root}/{kind}.out.pt")
""")


@pytest.fixture(scope="module")
def saved_adapters(tmp_path_factory):
    """Every kind trained off its start and saved by bat; reference outputs computed here."""
    from diffusers import UNet2DConditionModel
    from transformers import LlamaForCausalLM

    root = tmp_path_factory.mktemp("adapters")
    tiny_pipeline(root / "pipeline_src").save_pretrained(root / "pipeline")
    tiny_llama().save_pretrained(root / "llama")
    generator = torch.Generator().manual_seed(0)
    inputs = {"sample": torch.randn(2, LATENT_CHANNELS, LATENT_SIZE, LATENT_SIZE, generator=generator),
              "timesteps": torch.tensor([3, 70]),
              "encoder_hidden_states": torch.randn(2, TEXT_LENGTH, CROSS_DIM, generator=generator),
              "input_ids": torch.randint(0, 64, (2, 10), generator=generator)}
    torch.save(inputs, root / "inputs.pt")
    expected, base = {}, {}
    for kind in UNET_KINDS + LM_KINDS:
        if kind in UNET_KINDS:
            backbone = UNet2DConditionModel.from_pretrained(root / "pipeline", subfolder="unet")
            run = lambda m: m(inputs["sample"], inputs["timesteps"],  # noqa: E731
                              encoder_hidden_states=inputs["encoder_hidden_states"]).sample
        else:
            backbone = LlamaForCausalLM.from_pretrained(root / "llama")
            run = lambda m: m(input_ids=inputs["input_ids"]).logits  # noqa: E731
        with torch.no_grad():
            base[kind] = run(backbone.eval())
            model = attach_adapter(backbone, AdapterConfig(kind))
            perturb(model)
            expected[kind] = run(model.eval())
        save_adapter(model, AdapterConfig(kind), root / kind)
    return root, expected, base


def test_every_kind_loads_back_in_a_fresh_process(saved_adapters):
    root, expected, base = saved_adapters
    subprocess.run([sys.executable, "-c", LOADER, str(root), *expected], check=True,
                   capture_output=True, env={"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PATH": ""})
    for kind in expected:
        loaded = torch.load(root / f"{kind}.out.pt")
        assert not torch.allclose(expected[kind], base[kind]), f"{kind}: adapter changes nothing"
        torch.testing.assert_close(loaded, expected[kind], atol=1e-5, rtol=0, msg=kind)


def test_locon_is_in_diffusers_format_and_loha_in_peft_format(saved_adapters):
    root = saved_adapters[0]
    assert (root / "locon" / "pytorch_lora_weights.safetensors").exists()
    assert (root / "loha" / "adapter_config.json").exists()
    assert (root / "dreambooth" / "config.json").exists()


def test_bat_loader_agrees_and_rejects_another_kind(saved_adapters):
    from diffusers import UNet2DConditionModel

    root, expected, _ = saved_adapters
    unet = UNet2DConditionModel.from_pretrained(root / "pipeline", subfolder="unet")
    inputs = torch.load(root / "inputs.pt")
    with torch.no_grad():
        out = load_adapter(unet, root / "locon", kind="locon").eval()(
            inputs["sample"], inputs["timesteps"],
            encoder_hidden_states=inputs["encoder_hidden_states"]).sample
    torch.testing.assert_close(out, expected["locon"], atol=1e-5, rtol=0)
    with pytest.raises(ConfigError, match="holds a 'locon' adapter, not 'loha'"):
        load_adapter(unet, root / "locon", kind="loha")


def test_loha_rank_dropout_that_gives_nan_is_refused_before_training():
    with pytest.raises(ConfigError, match=re.escape(
            "adapter.dropout: 0.9 is LoHa's rank dropout, and peft rescales the kept rows by their "
            "mean, 0/0 = NaN when every row of a layer is dropped: on this UNet2DConditionModel a "
            "training forward is NaN with probability 1. Choose dropout in [0, 0.11] (NaN chance "
            "at most 1e-06 per forward)")):
        attach_adapter(tiny_unet(), AdapterConfig("loha", dropout=0.9))
    attach_adapter(tiny_unet(), AdapterConfig("loha", dropout=0.11))


def test_loha_rank_dropout_nan_chance_matches_peft():
    """The predicted chance against the NaN rate of peft's own LoHa forwards (check bypassed)."""
    config = AdapterConfig("loha", dropout=0.5)
    unet = tiny_unet()
    predicted = rank_dropout_nan_chance(unet, config)
    model = get_peft_model(unet, config.to_peft(for_lm=False)).train()
    torch.manual_seed(0)
    inputs = (torch.randn(1, LATENT_CHANNELS, LATENT_SIZE, LATENT_SIZE), torch.tensor([10]),
              torch.randn(1, TEXT_LENGTH, CROSS_DIM))
    with torch.no_grad():
        nan = [bool(model(*inputs).sample.isnan().any()) for _ in range(500)]
    assert predicted == pytest.approx(0.16, abs=0.01)
    assert sum(nan) / len(nan) == pytest.approx(predicted, abs=0.05)  # 3 sd of 500 draws
