"""Speed and accuracy of the curvature library against its goals.

- per-sample gradients, ``vmap`` and layer hooks against a per-example loop, batch 64, on a tiny
  LLaMA with LoRA and a tiny diffusers UNet with LoRA (goal: ≥ 5× faster than the loop), beside
  one plain forward and backward of the batch, whose speedup over the loop bounds the hooks';
- one Proposition-2 check on the tiny profile's DreamBooth UNet (5.2M weights, all trainable,
  8 D^A + 4 D^B' examples), vmap + float64 Woodbury against hooks + float32 Woodbury (goal ≤ 1 s),
  beside the two passes every check needs and one training step on 4 D^A + 4 D^B' (README turns
  them into the least cost of a check, in training steps), and what the curvature rows' pass
  costs beyond a plain pass over the same 12 examples (writing the 12·d rows is timed alone);
- paper sizes on meta-device models (nothing allocated): the computed peak memory of one
  re-selection with projected per-sample gradients for SD 1.4's UNet (DreamBooth) and
  LLaMA-2-7B with r=8 LoRA on q,v (goal ≤ 40 GB), beside the exact rows' memory;
- a training step with amortised Proposition-2 selection against a step without (goal ≤ 1.3×);
- solvers against the dense solve at growing d (goal: CG relative error ≤ 1e-4).

    python benchmarks/bench_curvature.py --out benchmarks/results/curvature.json

Times are the best of ``--repeats`` runs, in seconds, with ``--threads`` torch threads (default
one, which ``machine.threads`` records), on whatever machine runs this.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch
from peft import LoraConfig, get_peft_model

from bat import io
from bat.core.curvature import (FisherOperator, curvature_operators, gradient_sums,
                                loss_gradient, per_sample_grads, per_sample_grads_hooks,
                                per_sample_grads_loop, sampled_fisher_rows)
from bat.core.protocols import SelectionContext, concat_batches, take_examples
from bat.text.task import CausalLMTask
from bat.core.selection import FirstSelector, Prop2Selector, SelectionConfig
from bat.core.solvers import SolveOptions, solve


class NoiseTask:
    """Noise-prediction MSE per example; noise and timesteps are drawn when the batch is built."""

    def batch_losses(self, model, batch):
        predicted = model(batch["noisy"], batch["timesteps"],
                          encoder_hidden_states=batch["context"]).sample
        return ((predicted - batch["noise"]) ** 2).flatten(1).mean(1)


def best_time(function, repeats: int) -> float:
    return best_times([function], repeats)[0]


def best_times(functions, repeats: int) -> list[float]:
    """Best time of each function; runs alternate so that load from other processes, which
    drifts on a shared machine, falls on all of them alike."""
    times = [[] for _ in functions]
    for _ in range(repeats):
        for function, spent in zip(functions, times):
            start = time.perf_counter()
            function()
            spent.append(time.perf_counter() - start)
    return [min(spent) for spent in times]


def tiny_lm(hidden=64, rank=8):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, vocab_size=256,
                         max_position_embeddings=64, attn_implementation="eager")
    lora = LoraConfig(r=rank, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    return get_peft_model(LlamaForCausalLM(config), lora)


def tiny_unet(latent_size=8):
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel(
        sample_size=latent_size, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
        attention_head_dim=8, norm_num_groups=8)
    unet.requires_grad_(False)
    lora = LoraConfig(r=4, target_modules=["to_q", "to_v"], init_lora_weights=False)
    return get_peft_model(unet, lora)


def lm_batch(size, length=32, seed=0):
    """Random full-length sequences, every token labelled: the library's CausalLMTask format."""
    ids = torch.randint(0, 256, (size, length), generator=torch.Generator().manual_seed(seed))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}


def unet_batch(size, latent_size=8, seed=0):
    generator = torch.Generator().manual_seed(seed)
    shape = (size, 4, latent_size, latent_size)
    return {"noisy": torch.randn(shape, generator=generator),
            "noise": torch.randn(shape, generator=generator),
            "timesteps": torch.randint(0, 1000, (size,), generator=generator),
            "context": torch.randn(size, 6, 32, generator=generator)}


def bench_per_sample(model, task, batch, repeats):
    vmapped = per_sample_grads(model, task, batch)
    loop = per_sample_grads_loop(model, task, batch)
    hooked = per_sample_grads_hooks(model, task, batch)
    vmap_s, hooks_s, loop_s, batched_s = best_times(
        [lambda: per_sample_grads(model, task, batch),
         lambda: per_sample_grads_hooks(model, task, batch),
         # one plain batched pass (scoring mode, as the per-sample methods run): what every
         # method that rides a batched backward pays at least
         lambda: per_sample_grads_loop(model, task, batch),
         lambda: loss_gradient(model, task, batch)], repeats)
    return {"batch": len(next(iter(batch.values()))), "dim": vmapped.shape[1],
            "vmap_s": vmap_s, "hooks_s": hooks_s, "loop_s": loop_s,
            "speedup": loop_s / vmap_s, "speedup_hooks": loop_s / hooks_s,
            # the hooks' speedup is bounded by the batched pass's over the loop (the ceiling)
            "batched_s": batched_s, "speedup_ceiling": loop_s / batched_s,
            "max_abs_difference": float((vmapped - loop).abs().max()),
            "max_abs_difference_hooks": float((hooked - loop).abs().max()),
            "goal_speedup": 5.0, "meets_goal": max(loop_s / vmap_s, loop_s / hooks_s) >= 5}


def dreambooth_unet(text_width=384):
    """The tiny profile's UNet: bat.image.backbone.build_unet with params.yaml's sizes."""
    from bat import paths
    from bat.config import build_parts, read_yaml, section
    from bat.image.backbone import ImageBackboneConfig, build_unet
    from bat.stages.backbone_image import SECTION, FidelityConfig

    config, _ = build_parts(section(read_yaml(paths.PARAMS), SECTION), SECTION, ImageBackboneConfig, FidelityConfig)
    return build_unet(config, text_width)


def bench_dreambooth_check(repeats):
    """One Proposition-2 check on the tiny profile's DreamBooth UNet (8 D^A + 4 D^B' latents):
    the grids' setting (sampled Fisher, Woodbury, damping 1e-3 relative to the spectrum) beside
    the previous one (empirical Fisher from per-sample gradients, absolute λ = 1e-3), which
    tests/test_prop2.py shows cannot fail."""
    from diffusers import DDIMScheduler

    from bat.core.prop2 import Prop2Problem
    from bat.image.task import DiffusionTask

    torch.manual_seed(0)
    unet = dreambooth_unet()
    size = unet.config.sample_size
    task = DiffusionTask(DDIMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2",
                                       clip_sample=False, set_alpha_to_one=False, steps_offset=1))
    generator = torch.Generator().manual_seed(0)
    examples = 12
    batch = task.prepare({"latents": torch.randn(examples, 4, size, size, generator=generator),
                          "encoder_hidden_states": torch.randn(examples, 16, 384, generator=generator)},
                         generator)
    n = 8  # D^A; the other 4 are D^B'
    adaptation = {key: value[:n] for key, value in batch.items()}
    backbone = {key: value[n:] for key, value in batch.items()}
    options = SolveOptions(solver="woodbury", damping=1e-3, indefinite="clip")

    def check(curvature, relative):
        return Prop2Problem(unet, task, adaptation, backbone, curvature, gamma=0.5).scores(
            options, relative=relative)

    # What no check can skip: the gradient sums (a forward and backward over all 12 examples,
    # true targets) and the curvature's rows (a hooked pass with drawn targets). Beside them a
    # training step's forward and backward on the grids' batch shape, 4 D^A + 4 D^B', the unit
    # README counts a check's cost in.
    training = {key: value[n - 4:] for key, value in batch.items()}

    def train_step():
        unet.zero_grad(set_to_none=True)
        task.batch_losses(unet, training).mean().backward()

    weights = sum(p.numel() for p in unet.parameters())

    def write_rows():
        # the rows' memory alone: a fresh [examples, d] float32 buffer, filled once
        torch.empty(examples, weights).fill_(1.0)

    grid, previous = check("sampled_fisher", True), check("fisher", False)
    grid_s, previous_s, sums_s, rows_s, step_s, batched_s, write_s = best_times(
        [lambda: check("sampled_fisher", True), lambda: check("fisher", False),
         lambda: gradient_sums(unet, task, batch, n),
         lambda: sampled_fisher_rows(unet, task, batch, seed=0), train_step,
         lambda: loss_gradient(unet, task, batch), write_rows], repeats)
    unet.zero_grad(set_to_none=True)
    return {"weights": weights, "latent_size": size,
            "examples": examples, "grid_check_s": grid_s, "previous_check_s": previous_s,
            "gradient_sums_s": sums_s, "sampled_fisher_rows_s": rows_s, "train_step_s": step_s,
            # what the rows' pass costs beyond one plain pass over the same 12 examples: the
            # per-layer products and writing the 12·d rows (write_rows_s measures the writing)
            "batch_gradient_s": batched_s, "write_rows_s": write_s,
            "scores_grid": [grid.score_adaptation, grid.score_bat],
            "scores_previous": [previous.score_adaptation, previous.score_bat],
            "goal_s": 1.0, "meets_goal": grid_s <= 1.0}


def _saved_for_backward(model, call) -> dict:
    """Bytes autograd keeps from one forward on the meta device (computed, not allocated).

    Everything saved for backward except the parameters themselves (counted once as weights),
    an upper bound because views of one tensor count once each; and the outputs of every
    Linear/Conv2d with a trainable weight, whose gradients the hooks hold until the backward
    pass ends.
    """
    params = {id(p) for p in model.parameters()}
    totals = {"saved": 0, "hooked_outputs": 0, "largest_saved": 0}

    def pack(tensor):
        if id(tensor) not in params:
            size = tensor.numel() * tensor.element_size()
            totals["saved"] += size
            totals["largest_saved"] = max(totals["largest_saved"], size)
        return tensor

    def hook(module, inputs, output):
        totals["hooked_outputs"] += output.numel() * output.element_size()

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if type(m) in (torch.nn.Linear, torch.nn.Conv2d) and m.weight.requires_grad]
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        call()
    for handle in handles:
        handle.remove()
    return totals


def _projected_dim(model, k: int) -> tuple[int, int]:
    """(p, bytes of the projection matrices) of bat.core.curvature.GradientProjector(model, k)."""
    p, matrices = 0, 0
    for module in model.modules():
        for param in module.parameters(recurse=False):
            if not param.requires_grad:
                continue
            if param is getattr(module, "weight", None) and type(module) in (torch.nn.Linear,
                                                                                torch.nn.Conv2d):
                out, fan_in = param.shape[0], param[0].numel()
                p += min(k, out) * min(k, fan_in)
                matrices += 4 * k * ((out if out > k else 0) + (fan_in if fan_in > k else 0))
            else:
                p += param.numel()
    return p, matrices


def _reselection_memory(model, call, rows: int, chunk: int, k: int) -> dict:
    """Peak bytes of one re-selection: weights, one chunk's backward (activations, the hooks'
    output gradients, the batch gradient the sum check compares with), the projection
    matrices, the projected rows [rows, p] and the Woodbury solve (the float64 Gram
    [rows, rows] and solution [p]; bat.core.curvature.RowFactor stores no basis); beside it,
    the exact rows' float32 [rows, d] with the solution [d] in float64."""
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    d = sum(p.numel() for p in model.parameters() if p.requires_grad)
    activations = _saved_for_backward(model, call)
    p, matrices = _projected_dim(model, k)
    backward = (activations["saved"] + activations["hooked_outputs"] + 4 * d)
    projected = weights + backward + matrices + 4 * rows * p + 8 * rows * rows + 8 * p
    exact = weights + backward + 4 * rows * d + 8 * d
    return {"weights_gb": weights / 1e9, "trainable": d, "projected_dim": p,
            "rows": rows, "chunk": chunk, "projection_side": k,
            "activations_gb": activations["saved"] / 1e9,
            "hooked_output_grads_gb": activations["hooked_outputs"] / 1e9,
            "projection_matrices_gb": matrices / 1e9,
            "peak_projected_gb": projected / 1e9, "peak_exact_gb": exact / 1e9,
            "goal_gb": 40.0, "meets_goal": projected / 1e9 <= 40.0}


def paper_size_memory(k: int = 32) -> dict:
    """SD 1.4's UNet (DreamBooth: every weight trainable, float32, 512 px = 64×64 latents,
    77 CLIP tokens; 5 subject images + 64 candidates, chunks of 2) and LLaMA-2-7B (bfloat16,
    r=8 LoRA on q,v as in App. B, sequences of 512; 256 D^A + 1024 candidates, chunks of 2)."""
    from diffusers import UNet2DConditionModel
    from transformers import LlamaConfig, LlamaForCausalLM

    with torch.device("meta"):
        # CompVis/stable-diffusion-v1-4's unet/config.json
        unet = UNet2DConditionModel(
            sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
            block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768,
            attention_head_dim=8, down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
        # meta-llama/Llama-2-7b-hf's config.json
        llama = LlamaForCausalLM(LlamaConfig(
            hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
            num_attention_heads=32, num_key_value_heads=32, vocab_size=32000,
            max_position_embeddings=4096, attn_implementation="eager")).to(torch.bfloat16)
        llama = get_peft_model(llama, LoraConfig(r=8, lora_alpha=32,
                                                 target_modules=["q_proj", "v_proj"]))
        chunk_unet, chunk_lm = 2, 2  # the memory knob: activations grow with the chunk, not n
        latents = torch.randn(chunk_unet, 4, 64, 64)
        text = torch.randn(chunk_unet, 77, 768)
        steps = torch.zeros(chunk_unet, dtype=torch.long)
        ids = torch.zeros(chunk_lm, 512, dtype=torch.long)
    return {
        "sd14_unet_dreambooth": _reselection_memory(
            unet, lambda: unet(latents, steps, encoder_hidden_states=text).sample,
            rows=5 + 64, chunk=chunk_unet, k=k),
        "llama2_7b_lora_qv": _reselection_memory(
            llama, lambda: llama(input_ids=ids, attention_mask=torch.ones_like(ids)).logits,
            rows=256 + 1024, chunk=chunk_lm, k=k),
    }


def bench_selection_overhead(steps, every, repeats):
    """Train the tiny LM on 8 adaptation + 8 backbone sequences per step, with either selector."""
    adaptation, candidates = lm_batch(16, seed=1), lm_batch(64, seed=2)

    def train(selector_factory):
        torch.manual_seed(0)
        model = tiny_lm()
        selector = selector_factory(model)
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
        task = CausalLMTask()
        start = time.perf_counter()
        for step in range(steps):
            context = SelectionContext(model=model, task=task, adaptation_batch=adaptation,
                                       candidate_batch=candidates,
                                       candidate_ids=list(range(64)), step=step)
            chosen = selector.select(context, 8)
            rows = slice(8 * (step % 2), 8 * (step % 2) + 8)
            batch = concat_batches(take_examples(adaptation, range(rows.start, rows.stop)),
                                   take_examples(candidates, chosen))
            loss = task.batch_losses(model, batch).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        return time.perf_counter() - start, selector

    def prop2(model):
        from bat.core.curvature import flat_parameters
        config = SelectionConfig(score_adaptation_every=every, score_bat_every=every)
        return Prop2Selector(config, target=flat_parameters(model) * 0.9)

    plain, selected = [], []
    for _ in range(repeats):  # alternating, for the reason given in best_times
        plain.append(train(lambda model: FirstSelector())[0])
        selected.append(train(prop2))
    plain_s, selected_s = min(plain), min(seconds for seconds, _ in selected)
    records = selected[0][1].records
    return {"steps": steps, "score_every": every, "plain_s": plain_s, "selection_s": selected_s,
            "ratio": selected_s / plain_s, "goal_ratio": 1.3,
            # the selector's own clock, less exposed to load from other processes
            "ratio_selector_clock": 1 + sum(r["seconds"] for r in selected[0][1].records) / plain_s,
            "meets_goal": selected_s / plain_s <= 1.3,
            "reselections": sum(1 for r in records if r.get("reselected")),
            "selector_seconds": sum(r["seconds"] for r in records)}


def bench_solvers(dims, rows, repeats):
    """(M + λI)x = v for an empirical Fisher with decaying spectrum, against the dense solve."""
    results = []
    for d in dims:
        generator = torch.Generator().manual_seed(d)
        scales = torch.logspace(0, -2, d, dtype=torch.float64)
        grads = torch.randn(rows, d, generator=generator, dtype=torch.float64) * scales
        operator = FisherOperator(grads, torch.full((rows,), 1.0 / rows, dtype=torch.float64))
        v = torch.randn(d, generator=generator, dtype=torch.float64)
        results.append(_solver_row(f"fisher_d{d}", operator, v, repeats,
                                   ("dense", "woodbury", "cg", "lissa")))
    return results


def bench_lm_gauss_newton(repeats):
    torch.manual_seed(0)
    model = tiny_lm(hidden=32, rank=2).double()
    operator, = curvature_operators("gauss_newton", model, CausalLMTask(), lm_batch(8, length=16),
                                    [torch.full((8,), 1 / 8, dtype=torch.float64)])
    v = torch.randn(operator.dim, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    # Each LiSSA iteration is a Gauss-Newton product here: a fixed budget shows its slow progress.
    return _solver_row("lora_lm_gauss_newton", operator, v, repeats, ("dense", "cg", "lissa"),
                       lissa_iterations=500)


def _solver_row(name, operator, v, repeats, solvers, damping=1e-3, lissa_iterations=5000):
    """Each solver's time and relative distance to the first (dense) solution."""
    row = {"problem": name, "dim": operator.dim, "damping": damping}
    reference = None
    for solver in solvers:
        options = SolveOptions(solver=solver, damping=damping, tol=1e-10,
                               max_iter=lissa_iterations if solver == "lissa" else 1000,
                               indefinite="raise")
        solution = solve(operator, v, options)
        seconds = best_time(lambda: solve(operator, v, options), repeats)
        if reference is None:
            reference = solution.x
        error = float((solution.x - reference).norm() / reference.norm())
        row[solver] = {"seconds": seconds, "relative_error": error,
                       "iterations": solution.report.iterations,
                       "converged": solution.report.converged}
    if "cg" in row:
        row["cg_meets_goal"] = row["cg"]["relative_error"] <= 1e-4
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/curvature.json")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--every", type=int, default=20, help="Score_A / Score_bat interval")
    parser.add_argument("--dims", type=int, nargs="+", default=[64, 256, 1024, 2048])
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads; the goals are stated for one (README)")
    args = parser.parse_args()
    # Set here, not left to OMP_NUM_THREADS: with two threads the per-example loop (batch-1
    # kernels) slows down while the batched rows speed up, so the speedups grow by ~2x.
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    results = {
        "machine": {"python": platform.python_version(), "torch": torch.__version__,
                    "threads": torch.get_num_threads()},
        "per_sample_grads": {
            "lora_lm": bench_per_sample(tiny_lm(), CausalLMTask(), lm_batch(64), args.repeats),
            # 16×16 latents are the tiny profile's; at 8×8 attention weighs less.
            **{f"lora_unet_{size}x{size}": bench_per_sample(
                tiny_unet(size), NoiseTask(), unet_batch(64, size), args.repeats)
               for size in (8, 16)},
        },
        "dreambooth_check": bench_dreambooth_check(args.repeats),
        "paper_size_memory": paper_size_memory(),
        "selection_overhead": bench_selection_overhead(args.steps, args.every, args.repeats),
        "solvers": bench_solvers(args.dims, 128, args.repeats) + [bench_lm_gauss_newton(1)],
    }
    io.write_json(args.out, results)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
