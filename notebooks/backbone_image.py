# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Image backbone: a text-to-image diffusion model pre-trained on D^B
#
# In the tiny profile the pipeline builds a small `StableDiffusionPipeline` (VAE + UNet from
# configs, the real frozen all-MiniLM-L6-v2 as text encoder) and pre-trains it on the OpenMoji
# image–caption pairs, so the backbone's data D^B is known exactly. In the paper profile the same
# code loads Stable Diffusion 1.4 instead. Below: the loss curves, samples beside their real
# renders, and the numbers that say whether samples carry their prompt — for captions seen in
# D^B and for OpenMoji concepts held out of it. The `pretrain_image` stage
# (`python -m bat.stages.backbone_image`) trains and samples; this notebook reads `runs/backbone_image`.

# %% tags=["parameters"]
source = "train"
model_id = "CompVis/stable-diffusion-v1-4"
text_encoder = "data/raw/minilm"
resolution = 32
vae_channels = [32, 64, 64]
unet_channels = [64, 128]
unet_attention = [True, True]
max_caption_tokens = 16
vae_steps = 1000
vae_learning_rate = 0.001
unet_steps = 3000
unet_learning_rate = 0.001
unet_lr_schedule = "cosine"
ema_decay = 0.995
snr_gamma = 5
batch_size = 32
caption_dropout = 0.1
seed = 0
eval_prompts = 64
sample_steps = 25
guidance_scale = 7.5

# %%
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from bat import paths
from bat.analysis.plotting import save_figure, show_images
from bat.analysis.results import read_result
from bat.io import write_json
from bat.stages.notebook import check_kernel_parameters

# Trained and measured by the pretrain_image stage (python -m bat.stages.backbone_image).
result, arrays = read_result(paths.RUNS / "backbone_image", globals(), "backbone_image", "pretrain_image")
log = result["log"]

check_kernel_parameters("backbone_image", globals())
# %% [markdown]
# ## Do samples carry their prompt?
# For each caption, one sample (fixed seed per prompt), compared with the real renders of all
# captions of its group in two feature spaces: 8×8 pixel thumbnails (`thumbnail_`, colour and
# layout) and the image features of the trained `encoders` stand-in (`encoder_`, what the
# personalization scores use). `preference`: how often a sample is nearer its own caption's render
# than another caption's (chance 0.5). `accuracy`: how often its own render is the nearest of all
# (chance 1 / number of captions). `kid`: kernel inception distance (cubic kernel, unbiased)
# between the samples and the renders in encoder space; `kid_floor`: the same for as many real
# renders of other D^B concepts, what real images score. `vae_psnr`: the VAE's reconstruction of
# the renders, in dB. `nearest_caption_`: the same preference and accuracy for no model at all,
# the D^B render of the most similar other caption (MiniLM sentence embeddings) in place of each
# sample: what looking a prompt up in D^B scores, a reference for what the backbone can learn
# from D^B about concepts it never saw.

# %%
scores = pd.DataFrame(result["prompt_fidelity"]).set_index("label").drop(columns="group")
GROUP_LABELS = {measured["group"]: measured["label"] for measured in result["prompt_fidelity"]}
scores

# %% [markdown]
# Loss curves, then 16 held-out captions spread over the set: each sample (left) beside the real
# render of its caption (right), drawn large enough to judge by eye.

# %%
shown = np.linspace(0, len(arrays["heldout_captions"]) - 1, 16).round().astype(int)
fig = plt.figure(figsize=(12, 13))
grid = fig.add_gridspec(5, 8, height_ratios=[2.2, 1, 1, 1, 1], hspace=0.45, wspace=0.05)
loss_axis = fig.add_subplot(grid[0, :])
if log is not None:
    for name in ("vae", "unet"):
        steps = pd.DataFrame(log[name])
        loss_axis.plot(steps["step"], steps["loss"].rolling(10, min_periods=1).mean(), label=f"{name} loss")
    loss_axis.set_yscale("log")
    loss_axis.set_xlabel("step")
    loss_axis.legend()
loss_axis.set_title("pre-training on D^B (10-step moving average)", fontsize=10)
heldout = scores.loc[GROUP_LABELS["heldout"]]
for position, index in enumerate(shown):
    row, column = 1 + position // 4, 2 * (position % 4)
    sample_axis, real_axis = fig.add_subplot(grid[row, column]), fig.add_subplot(grid[row, column + 1])
    show_images([sample_axis], arrays["heldout_samples"][[index]])
    show_images([real_axis], arrays["heldout_images"][[index]])
    sample_axis.set_title(str(arrays["heldout_captions"][index])[:28], fontsize=8, loc="left")
fig.suptitle(f"held out of D^B: sample | real render — encoder preference {heldout['encoder_preference']:.2f}, "
             f"top-1 {heldout['encoder_accuracy']:.2f}; thumbnail {heldout['thumbnail_preference']:.2f}, "
             f"{heldout['thumbnail_accuracy']:.2f}\n(the caption looked up in D^B instead: encoder preference "
             f"{heldout['nearest_caption_encoder_preference']:.2f}, thumbnail "
             f"{heldout['nearest_caption_thumbnail_preference']:.2f})", fontsize=10, y=0.93)
save_figure(fig, "backbone_image")

# %%
# Flat scalars for `dvc metrics show`; the per-group table is above and in runs/backbone_image.
# Final losses are 10-step means, as in the figure: one step's loss is too noisy to diff.
metrics = {}
for measured in result["prompt_fidelity"]:
    group = measured["group"]
    metrics.update({f"{group}_{key}": measured[key] for key in (
        "thumbnail_preference", "thumbnail_accuracy", "encoder_preference", "encoder_accuracy", "accuracy_chance",
        "kid", "kid_floor", "vae_psnr", "nearest_caption_thumbnail_preference", "nearest_caption_encoder_preference")})
for name in ("vae", "unet"):
    metrics[f"{name}_loss_last10"] = None if log is None else pd.DataFrame(log[name])["loss"].tail(10).mean()
metrics["seconds"] = None if log is None else log["timings"]["total_seconds"]
write_json(paths.metrics("backbone_image"), metrics)
pd.Series(metrics)
