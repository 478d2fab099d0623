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
# renders, and one number that says whether samples carry their prompt — for captions seen in
# D^B and for OpenMoji concepts held out of it. The `pretrain_image` stage
# (`python -m bat.stages.backbone_image`) trains and samples; this notebook reads `runs/backbone_image`.

# %% tags=["parameters"]
source = "train"
model_id = "CompVis/stable-diffusion-v1-4"
text_encoder = "data/raw/minilm"
resolution = 32
vae_channels = [32, 64]
unet_channels = [64, 128]
max_caption_tokens = 16
vae_steps = 120
vae_learning_rate = 0.001
unet_steps = 450
unet_learning_rate = 0.001
batch_size = 32
caption_dropout = 0.1
seed = 0
torch_dtype = "float32"
device = "cpu"
eval_prompts = 32
sample_steps = 25
guidance_scale = 7.5

# %%
import matplotlib.pyplot as plt
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
# captions of its group in pixel-thumbnail space. `preference`: how often a sample is nearer its
# own caption's render than another caption's (chance 0.5). `accuracy`: how often its own render
# is the nearest of all (chance 1 / number of captions).

# %%
scores = pd.DataFrame(result["prompt_fidelity"]).set_index("label").drop(columns="group")
scores

# %%
columns = min(8, eval_prompts)
fig = plt.figure(figsize=(1.1 * columns, 8.5))
grid = fig.add_gridspec(5, columns, height_ratios=[1.6, 1, 1, 1, 1], hspace=0.6)
loss_axis = fig.add_subplot(grid[0, :])
if log is not None:
    for name in ("vae", "unet"):
        steps = pd.DataFrame(log[name])
        loss_axis.plot(steps["step"], steps["loss"].rolling(10, min_periods=1).mean(), label=f"{name} loss")
    loss_axis.set_yscale("log")
    loss_axis.set_xlabel("step")
    loss_axis.legend()
loss_axis.set_title("pre-training on D^B (10-step moving average)", fontsize=8)
for row, measured in enumerate(result["prompt_fidelity"]):
    group = measured["group"]
    sample_axes = [fig.add_subplot(grid[1 + 2 * row, c]) for c in range(columns)]
    reference_axes = [fig.add_subplot(grid[2 + 2 * row, c]) for c in range(columns)]
    show_images(sample_axes, arrays[f"{group}_samples"], arrays[f"{group}_captions"])
    show_images(reference_axes, arrays[f"{group}_images"])
    sample_axes[0].text(-0.1, 0.5, f"{measured['label']}\nsample", transform=sample_axes[0].transAxes, ha="right",
                        va="center", fontsize=7)
    reference_axes[0].text(-0.1, 0.5, "real", transform=reference_axes[0].transAxes, ha="right",
                           va="center", fontsize=7)
save_figure(fig, "backbone_image")

# %%
# Flat scalars for `dvc metrics show`; the per-group table is above and in runs/backbone_image.
# Final losses are 10-step means, as in the figure: one step's loss is too noisy to diff.
metrics = {}
for measured in result["prompt_fidelity"]:
    group = measured["group"]
    metrics.update({f"{group}_preference": measured["preference"], f"{group}_accuracy": measured["accuracy"],
                    f"{group}_accuracy_chance": measured["accuracy_chance"]})
for name in ("vae", "unet"):
    metrics[f"{name}_loss_last10"] = None if log is None else pd.DataFrame(log[name])["loss"].tail(10).mean()
metrics["seconds"] = None if log is None else log["timings"]["total_seconds"]
write_json(paths.metrics("backbone_image"), metrics)
pd.Series(metrics)
