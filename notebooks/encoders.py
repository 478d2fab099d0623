# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Encoders for the personalization metrics
#
# The paper scores generated images with DINOv2 image features (cosine similarity, centroid
# distance, Vendi score) and with CLIP text–image similarity (App. D.1). In the tiny profile
# nothing can be downloaded, so this stage trains a small CLIP on D^B (the OpenMoji image–caption
# pairs): a conv image tower against the frozen all-MiniLM-L6-v2 caption embeddings, with CLIP's
# contrastive loss and a learnable temperature. Its image tower before the projection stands in
# for DINOv2. In the paper profile the same stage loads DINOv2 and CLIP by id instead. The
# `train_encoders` stage (`python -m bat.stages.encoders`) trains and checks; this notebook reads
# `runs/encoders`.
#
# Are the encoders good enough to score samples? Below, retrieval accuracy against chance:
# - **image → text**: is an image's own caption the nearest among its group's captions in CLIP space?
#   On D^B concepts (seen in training), on OpenMoji concepts held out of D^B (never seen, not even
#   their captions), and on the held-out concepts of the two D^A styles (concepts of D^B drawn in
#   a style the encoder never saw).
# - **image → image across styles**: is a style image's nearest OpenMoji render (D^B) that of its
#   own concept, with the image features (the DINO role), against 8×8 colour thumbnails as a
#   baseline that needs no training?

# %% tags=["parameters"]
source = "train"
image_model_id = "facebook/dinov2-base"
clip_model_id = "openai/clip-vit-base-patch32"
text_encoder = "data/raw/minilm"
channels = [32, 64, 128]
embedding_dim = 128
steps = 400
batch_size = 128
learning_rate = 0.002
seed = 0
styles = ["noto", "emojione"]
seen_concepts = 64

# %%
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from bat import paths
from bat.analysis.plotting import save_figure, show_images
from bat.analysis.results import read_result
from bat.io import write_json
from bat.stages.notebook import check_kernel_parameters

# Trained and checked by the train_encoders stage (python -m bat.stages.encoders).
result, arrays = read_result(paths.RUNS / "encoders", globals(), "encoders", "train_encoders")
log = result["log"]
print(f"{result['parameters']:,} parameters", "(trained here)" if log is not None else "(loaded by id)")

check_kernel_parameters("encoders", globals())
# %% [markdown]
# ## Retrieval accuracy against chance
# Each row is one group of concepts; accuracy is the share of its images whose nearest caption
# (or nearest OpenMoji render) is their own; chance is 1 / (group size).

# %%
scores = pd.DataFrame(result["retrieval"]).set_index("group")[
    ["count", "chance", "image_to_text", "image_to_image", "pixels_image_to_image"]]
scores

# %% [markdown]
# ## Training curve, accuracies, and what the encoder reads in unseen concepts
# Bottom row: OpenMoji concepts held out of D^B, titled with the caption the CLIP side finds
# nearest among the held-out captions (green: right, red: wrong).

# %%
fig = plt.figure(figsize=(11, 5.6))
outer = fig.add_gridspec(2, 1, height_ratios=[2.2, 1], hspace=0.55)
top = outer[0].subgridspec(1, 3, width_ratios=[1.2, 0.8, 1.3], wspace=0.45)
loss_axis, temperature_axis, bar_axis = (fig.add_subplot(top[0, column]) for column in range(3))
if log is not None:
    curve = pd.DataFrame(log["steps"])
    loss_axis.plot(curve["step"], curve["loss"], color="tab:blue", alpha=0.3, label="per step")
    loss_axis.plot(curve["step"], curve["loss"].rolling(10, min_periods=1).mean(), color="tab:blue",
                   label="10-step mean")
    loss_axis.set_xlabel("step")
    loss_axis.set_title("contrastive loss on D^B", fontsize=8)
    loss_axis.legend(fontsize=7)
    temperature_axis.plot(curve["step"], curve["temperature"], color="tab:orange")
    temperature_axis.set_xlabel("step")
    temperature_axis.set_title("learnt temperature", fontsize=8)
else:
    for axis in (loss_axis, temperature_axis):
        axis.axis("off")
    loss_axis.text(0.5, 0.5, f"pretrained, not trained here:\n{image_model_id}\n{clip_model_id}",
                   ha="center", va="center", transform=loss_axis.transAxes, fontsize=8)
columns = {"image_to_text": "image → text", "image_to_image": "image → image (features)",
           "pixels_image_to_image": "image → image (8×8 pixels)"}
positions = np.arange(len(scores))
for offset, (column, label) in zip((-0.27, 0.0, 0.27), columns.items()):
    bar_axis.barh(positions + offset, scores[column].fillna(0).astype(float), height=0.25, label=label)
bar_axis.scatter(scores["chance"].astype(float), positions, marker="|", s=200, color="black", label="chance",
                 zorder=3)
bar_axis.set_yticks(positions, scores.index, fontsize=7)
bar_axis.invert_yaxis()
bar_axis.set_xlim(0, 1)
bar_axis.set_xlabel("retrieval accuracy")
bar_axis.set_title("does the encoder know the concept?", fontsize=8)
bar_axis.legend(fontsize=6, loc="upper center", bbox_to_anchor=(0.4, -0.2), ncol=2)
bottom = outer[1].subgridspec(1, len(arrays["examples"]))
example_axes = [fig.add_subplot(bottom[0, column]) for column in range(len(arrays["examples"]))]
show_images(example_axes, arrays["examples"], arrays["retrieved"])
for axis, truth, guess in zip(example_axes, arrays["captions"], arrays["retrieved"]):
    axis.title.set_color("tab:green" if truth == guess else "tab:red")
save_figure(fig, "encoders")

# %%
# Flat scalars for `dvc metrics show`: each group's retrieval accuracies under a short key (its
# row above), the final loss as a 10-step mean (as in the figure) and wall time.
short = {"D^B, seen": "seen", "OpenMoji, held out of D^B": "heldout"} | {
    f"{style}, held-out concepts": style for style in styles}
metrics = {}
for group, row in scores.iterrows():
    metrics.update({f"{short[group]}_{column}": row[column]
                    for column in ("chance", "image_to_text", "image_to_image", "pixels_image_to_image")
                    if pd.notna(row[column])})
metrics.update(loss_last10=None if log is None else float(np.mean([row["loss"] for row in log["steps"][-10:]])),
               seconds=None if log is None else log["seconds"])
write_json(paths.metrics("encoders"), metrics)
pd.Series(metrics)
