"""Paper-scale cost on one GPU: step time, throughput and peak memory of the paper's adapters.

    python benchmarks/gpu_check.py --scale paper --device cuda --out benchmarks/results/gpu_check.json

Builds an SD-1.4-sized UNet and a LLaMA-2-7B-sized LM from their configs with random weights (so
no hub access is needed; cost does not depend on the weights' values), and trains each case for
``--steps`` steps through the project's own loop, :func:`bat.core.train.train`, in bf16 mixed
precision (``RuntimeConfig(mixed_precision="bf16")``):

=================  ==========================================================================
case               what
=================  ==========================================================================
dreambooth_unet    every UNet weight (float32 master weights, bf16 autocast), plain regime
locon_unet         LoCon on the UNet (bfloat16 backbone), plain regime
lora_lm            LoRA r=8 on q,v of the LM (bfloat16 backbone), plain regime
dora_lm            DoRA r=8 on q,v of the LM (bfloat16 backbone), plain regime
prop2_lora_lm      LoRA on the LM in the ``bat`` regime with :class:`Prop2Selector`: one
                   Proposition-2 selection at the first step (the grids' sampled Fisher +
                   Woodbury; candidates' per-sample gradients and the drawn-target rows from
                   layer hooks in chunks of ``chunk_size`` examples)
=================  ==========================================================================

Inputs are random tensors in the form the tracks train on (SD latents 4×64×64 with 77×768 caption
embeddings, so SD's text encoder is not needed; token sequences of ``seq_len``). ``--scale tiny``
runs the same cases with small configs of the same architectures on the CPU (the test does).

Per case the JSON holds trainable parameters, batch size, steps, seconds per step (median of the
steps after the first, and before the last when there are at least 3: the last one writes the
run's checkpoint), examples/s, peak memory in GiB (``torch.cuda.max_memory_allocated`` after the
model is built, so it counts weights, optimizer state and activations of training; on the CPU the
process's peak resident size, Linux ``VmHWM``, reset after the build), the dtypes the Linear and
Conv2d layers computed in (bf16 autocast shows as ``torch.bfloat16`` only), and for the Prop-2
case the selection's seconds. A case that fails (out of GPU memory, say) records its error and
the script goes on; once ``--budget-s`` seconds have passed the remaining cases are skipped with
the reason recorded, and a running case stops at its next step. The JSON is rewritten after
every case, so a killed run keeps what it measured.
"""

from __future__ import annotations

import argparse
import gc
import platform
import re
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

PROJECT = Path(__file__).resolve().parent.parent
if str(PROJECT) not in sys.path:
    sys.path.insert(0, str(PROJECT))

from bat.core.adapters import AdapterConfig, trainable_parameters  # noqa: E402
from bat.core.runtime import RuntimeConfig  # noqa: E402
from bat.core.selection import Prop2Selector, SelectionConfig  # noqa: E402
from bat.core.train import TrainConfig, train  # noqa: E402
from bat.image.task import DiffusionTask  # noqa: E402
from bat.io import write_json  # noqa: E402
from bat.text.task import IGNORE_INDEX, CausalLMTask  # noqa: E402

GIB = 2 ** 30

# CompVis/stable-diffusion-v1-4, unet/config.json (the arguments that differ from diffusers'
# defaults or that define the size; the rest of that file equals UNet2DConditionModel's defaults).
SD14_UNET = {
    "sample_size": 64, "in_channels": 4, "out_channels": 4, "layers_per_block": 2,
    "block_out_channels": (320, 640, 1280, 1280), "cross_attention_dim": 768,
    "attention_head_dim": 8, "norm_num_groups": 32,
    "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
}
# CompVis/stable-diffusion-v1-4, scheduler/scheduler_config.json, as diffusers' training scripts
# load it into a DDPMScheduler.
SD14_SCHEDULER = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012,
                  "beta_schedule": "scaled_linear", "clip_sample": False}
SD14_TEXT = {"tokens": 77, "width": 768}  # CLIP ViT-L/14's text encoder output: 77 × 768
# meta-llama/Llama-2-7b-hf, config.json
LLAMA2_7B = {
    "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
    "num_attention_heads": 32, "num_key_value_heads": 32, "vocab_size": 32000,
    "max_position_embeddings": 4096, "rms_norm_eps": 1e-5,
}

# Same architectures at CPU size (the test's scale).
TINY_UNET = {
    **SD14_UNET, "sample_size": 8, "layers_per_block": 1, "block_out_channels": (8, 16, 16, 16),
    "cross_attention_dim": 16, "attention_head_dim": 2, "norm_num_groups": 4,
}
TINY_TEXT = {"tokens": 8, "width": 16}
TINY_LLAMA = {
    **LLAMA2_7B, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
    "num_attention_heads": 4, "num_key_value_heads": 4, "vocab_size": 64,
    "max_position_embeddings": 64,
}

SCALES = {
    "paper": {"unet": SD14_UNET, "text": SD14_TEXT, "llama": LLAMA2_7B, "seq_len": 512,
              "unet_batch": 4, "lm_batch": 4, "n_adaptation": 16, "n_backbone": 64,
              "candidates": 32, "chunk_size": 4},
    "tiny": {"unet": TINY_UNET, "text": TINY_TEXT, "llama": TINY_LLAMA, "seq_len": 12,
             "unet_batch": 2, "lm_batch": 2, "n_adaptation": 8, "n_backbone": 16,
             "candidates": 8, "chunk_size": 4},
}

# name: (model, adapter kind, backbone storage dtype, learning rate of App. B, Prop-2 selection)
CASES = {
    "dreambooth_unet": ("unet", "dreambooth", "float32", 5e-6, False),
    "locon_unet": ("unet", "locon", "bfloat16", 5e-6, False),
    "lora_lm": ("llama", "lora", "bfloat16", 5e-5, False),
    "dora_lm": ("llama", "dora", "bfloat16", 5e-5, False),
    "prop2_lora_lm": ("llama", "lora", "bfloat16", 5e-5, True),
}
# Scores after the first step are amortised away (Algorithm 1's n and k), so the run measures one
# selection, then training on it.
NEVER_AGAIN = 10 ** 9


class BudgetExceeded(RuntimeError):
    """The script's time budget ran out during a case."""


# --- models and data ----------------------------------------------------------------------------

def build_unet(config: dict, device: torch.device, dtype: torch.dtype):
    from diffusers import UNet2DConditionModel

    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # built in ``dtype``: no float32 copy first
    try:
        with torch.device(device):
            return UNet2DConditionModel(**config)
    finally:
        torch.set_default_dtype(default)


def build_llama(config: dict, device: torch.device, dtype: torch.dtype):
    """Built directly on ``device`` in ``dtype`` (a 7B model in float32 would need 27 GB first)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    with torch.device(device):
        return LlamaForCausalLM._from_config(LlamaConfig(**config), dtype=dtype,
                                             attn_implementation="sdpa")


def diffusion_examples(count: int, seed: int, scale: dict) -> dict:
    """Random latents and caption embeddings, as ``tests/tiny_models.diffusion_examples``."""
    generator = torch.Generator().manual_seed(seed)
    size, channels = scale["unet"]["sample_size"], scale["unet"]["in_channels"]
    text = scale["text"]
    return {"latents": torch.randn(count, channels, size, size, generator=generator),
            "encoder_hidden_states": torch.randn(count, text["tokens"], text["width"],
                                                 generator=generator)}


def text_examples(count: int, seed: int, scale: dict) -> dict:
    """Random full-length token sequences, the first two tokens unlabelled (the prompt part), as
    ``tests/tiny_models.text_examples`` without padding, so every batch costs the same."""
    generator = torch.Generator().manual_seed(seed)
    length, vocab = scale["seq_len"], scale["llama"]["vocab_size"]
    input_ids = torch.randint(1, vocab, (count, length), generator=generator)
    labels = input_ids.clone()
    labels[:, :2] = IGNORE_INDEX
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": labels}


# --- measurement --------------------------------------------------------------------------------

def peak_rss_kib() -> int | None:
    """Peak resident size of this process (Linux VmHWM), KiB; None where there is no /proc."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return None
    match = re.search(r"VmHWM:\s+(\d+)", status)
    return int(match.group(1)) if match else None


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:  # Linux >= 4.0: "5" resets VmHWM to the current resident size
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def peak_gib(device: torch.device) -> float | None:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / GIB
    kib = peak_rss_kib()
    if kib is None:  # not Linux: the lifetime peak (ru_maxrss is KiB on Linux, bytes on macOS)
        import resource

        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return rss / (GIB if sys.platform == "darwin" else 2 ** 20)
    return kib / 2 ** 20


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def versions() -> dict:
    import accelerate
    import diffusers
    import peft
    import transformers

    return {"python": platform.python_version(), "torch": torch.__version__,
            "cuda": torch.version.cuda, "diffusers": diffusers.__version__,
            "transformers": transformers.__version__, "peft": peft.__version__,
            "accelerate": accelerate.__version__}


def step_seconds_summary(times: list[float]) -> tuple[float, list[int]]:
    """Median of the steps after the first (index 0), also without the last when 3+ steps ran:
    the first compiles and allocates, the last writes the run folder's checkpoint."""
    steps = list(range(1, len(times)))
    if len(steps) >= 2:
        steps = steps[:-1]
    if not steps:
        steps = [0]
    return statistics.median(times[i] for i in steps), [i + 1 for i in steps]


# --- one case -----------------------------------------------------------------------------------

def run_case(name: str, scale_name: str, device: torch.device, steps: int, workdir: Path,
             deadline: float) -> dict:
    scale = SCALES[scale_name]
    model_kind, kind, dtype, learning_rate, prop2 = CASES[name]
    runtime = RuntimeConfig(device=str(device), dtype=dtype, mixed_precision="bf16")
    image = model_kind == "unet"
    batch_size = scale["unet_batch"] if image else scale["lm_batch"]
    result = {"model": model_kind, "adapter": kind, "backbone_dtype": dtype,
              "mixed_precision": runtime.mixed_precision, "batch_size": batch_size,
              "steps": steps, "regime": "bat" if prop2 else "plain"}

    build = time.perf_counter()
    if image:
        from diffusers import DDPMScheduler

        model = build_unet(scale["unet"], device, runtime.torch_dtype)
        task = DiffusionTask(DDPMScheduler(**SD14_SCHEDULER))
        adaptation = diffusion_examples(scale["n_adaptation"], 0, scale)
        backbone = diffusion_examples(scale["n_backbone"], 1, scale) if prop2 else None
        mixing = "per_batch"
        result["input"] = {"latents": [scale["unet"]["in_channels"], scale["unet"]["sample_size"],
                                       scale["unet"]["sample_size"]],
                           "encoder_hidden_states": [scale["text"]["tokens"], scale["text"]["width"]]}
    else:
        model = build_llama(scale["llama"], device, runtime.torch_dtype)
        task = CausalLMTask()
        adaptation = text_examples(scale["n_adaptation"], 0, scale)
        backbone = text_examples(scale["n_backbone"], 1, scale) if prop2 else None
        mixing = "regular_interval"  # the paper's LM recipe (App. B)
        result["input"] = {"seq_len": scale["seq_len"]}
    synchronize(device)
    result["build_seconds"] = time.perf_counter() - build
    result["total_parameters"] = sum(p.numel() for p in model.parameters())

    selector = None
    if prop2:
        selection = SelectionConfig(mode="oracle_free", curvature="sampled_fisher", solver="woodbury",
                                    chunk_size=scale["chunk_size"],
                                    score_adaptation_every=NEVER_AGAIN, score_bat_every=NEVER_AGAIN)
        selector = Prop2Selector(selection)
        result["selection_config"] = {"mode": selection.mode, "curvature": selection.curvature,
                                      "solver": selection.solver, "chunk_size": selection.chunk_size,
                                      "per_sample_gradients": "layer hooks (exact rows)",
                                      "n_adaptation": scale["n_adaptation"],
                                      "candidates": scale["candidates"]}
    config = TrainConfig(regime="bat" if prop2 else "plain", steps=steps, batch_size=batch_size,
                         learning_rate=learning_rate, mixing=mixing, candidates=scale["candidates"],
                         checkpoint_every=steps + 1, log_every=steps + 1, seed=0)

    # Which dtypes the layers computed in during the first step (and its selection): bf16
    # autocast shows as torch.bfloat16 only.
    dtypes: set[str] = set()

    def watch(module, inputs, output):
        if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)) and torch.is_tensor(output):
            dtypes.add(str(output.dtype))

    stamps, first_step_peak = [], []

    def on_step(step, trained):
        synchronize(device)
        stamps.append(time.perf_counter())
        if step == 1:
            first_step_peak.append(peak_gib(device))
            handle.remove()  # the timed steps run without the hook
        if time.perf_counter() > deadline and step < steps:
            raise BudgetExceeded(f"time budget exceeded after step {step} of {steps}")

    free_memory(device)
    reset_peak(device)
    handle = torch.nn.modules.module.register_module_forward_hook(watch)
    run_dir = Path(tempfile.mkdtemp(prefix=f"{name}.", dir=workdir))
    try:
        stamps.append(time.perf_counter())
        trained = train(model, AdapterConfig(kind), task, adaptation, backbone, config, run_dir,
                        runtime=runtime, selector=selector, progress=False, on_step=on_step)
        result["peak_memory_gib"] = peak_gib(device)
        log = trained.log
        result["trainable_parameters"] = sum(p.numel() for p in
                                             trainable_parameters(trained.model).values())
        result["trainable_dtypes"] = sorted({str(p.dtype) for p in
                                             trainable_parameters(trained.model).values()})
        del trained
    finally:
        handle.remove()
        shutil.rmtree(run_dir, ignore_errors=True)
    # Whole steps between synchronised ends of steps, less the selection each step made.
    times = [after - before - row["selection_seconds"]
             for before, after, row in zip(stamps, stamps[1:], log)]
    seconds, timed = step_seconds_summary(times)
    examples = [row["n_adaptation"] + row["n_backbone"] for row in log]
    per_step = [after - before for before, after in zip([0] + examples, examples)]
    examples_per_step = statistics.median(per_step[i - 1] for i in timed)
    result.update({
        "step_seconds": times, "timed_steps": timed, "seconds_per_step": seconds,
        "examples_per_step": examples_per_step, "examples_per_s": examples_per_step / seconds,
        "peak_memory_gib_first_step": first_step_peak[0] if first_step_peak else None,
        "layer_output_dtypes": sorted(dtypes), "losses": [row["loss"] for row in log]})
    if not image:
        result["tokens_per_s"] = result["examples_per_s"] * scale["seq_len"]
    if prop2:
        result["selection_seconds"] = sum(row["selection_seconds"] for row in log)
        result["selector_records"] = [
            {key: record.get(key) for key in ("step", "reason", "reselected", "seconds",
                                              "candidates", "score_adaptation", "score_bat",
                                              "condition")}
            for record in selector.records]
        result["reselections"] = sum(bool(r.get("reselected")) for r in selector.records)
    return result


# --- the script ---------------------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", choices=sorted(SCALES), default="paper")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="cpu, cuda or cuda:N (default: cuda when torch sees a GPU)")
    parser.add_argument("--out", type=Path, default=PROJECT / "benchmarks/results/gpu_check.json")
    parser.add_argument("--steps", type=int, default=6,
                        help="training steps per case (3+ to time steps without warm-up and checkpoint)")
    parser.add_argument("--budget-s", type=float, default=420.0,
                        help="seconds after which the remaining cases are skipped")
    parser.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES))
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where run folders (checkpoints) go while a case runs; default: a "
                             "temporary folder, removed after each case")
    args = parser.parse_args(argv)
    if args.steps < 2:
        parser.error("--steps: at least 2 (the first step is not timed)")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    started = time.perf_counter()
    deadline = started + args.budget_s
    device = RuntimeConfig(device=args.device).torch_device  # a ConfigError names a missing GPU
    report = {"scale": args.scale, "device": str(device), "device_name": device_name(device),
              "versions": versions(), "steps": args.steps, "budget_s": args.budget_s,
              "configs": {"unet": SCALES[args.scale]["unet"], "llama": SCALES[args.scale]["llama"],
                          "scheduler": SD14_SCHEDULER},
              "peak_memory": ("torch.cuda.max_memory_allocated" if device.type == "cuda" else
                              "process peak resident size (VmHWM), reset after the build"),
              "cases": {}}
    with tempfile.TemporaryDirectory(prefix="gpu_check.", dir=args.workdir) as workdir:
        for name in args.cases:
            if time.perf_counter() > deadline:
                report["cases"][name] = {"skipped": f"time budget of {args.budget_s:g} s exceeded "
                                                    "before the case started"}
            else:
                case_started = time.perf_counter()
                try:
                    report["cases"][name] = run_case(name, args.scale, device, args.steps,
                                                     Path(workdir), deadline)
                    report["cases"][name]["error"] = None
                except Exception as error:  # noqa: BLE001 — OOM on a GPU is a result
                    report["cases"][name] = {
                        "error": f"{type(error).__name__}: {error}",
                        "traceback": traceback.format_exc(limit=-3)}
                    if device.type == "cuda":
                        report["cases"][name]["peak_memory_gib"] = peak_gib(device)
                report["cases"][name]["case_seconds"] = time.perf_counter() - case_started
                free_memory(device)
            report["total_seconds"] = time.perf_counter() - started
            write_json(args.out, report)
            print(f"{name}: {summary(report['cases'][name])}", flush=True)
    report["total_seconds"] = time.perf_counter() - started
    write_json(args.out, report)
    return report


def summary(case: dict) -> str:
    if "skipped" in case:
        return f"skipped ({case['skipped']})"
    if case.get("error"):
        return f"error ({case['error'][:200]})"
    text = (f"{case['seconds_per_step']:.3f} s/step, {case['examples_per_s']:.2f} examples/s, "
            f"peak {case['peak_memory_gib']:.2f} GiB, {case['trainable_parameters']:,} trainable")
    if "selection_seconds" in case:
        text += f", selection {case['selection_seconds']:.2f} s"
    return text


if __name__ == "__main__":
    main()
