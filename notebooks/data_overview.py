# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Data overview
#
# Real samples of every prepared set: the image backbone's pre-training data D^B (OpenMoji),
# the two personalisation styles D^A (Noto Color Emoji, EmojiOne 2), the out-of-backbone pool
# (Symbola), and the text sets — the backbone's instruction set D^B, the adaptation tasks D^A and
# the eight multiple-choice evaluation sets. Sizes come from `data/prepared/summary.json`.

# %% tags=["parameters"]
examples_per_source = 8
text_examples = 2

# %%
import textwrap

import matplotlib.pyplot as plt
import pandas as pd

from bat import paths
from bat.image.data import load_image_set
from bat.io import read_json, read_jsonl, write_json
from bat.analysis.plotting import save_figure, show_images

image_dir = paths.PREPARED / "images"
text_dir = paths.PREPARED / "text"
summary = read_json(paths.PREPARED / "summary.json")
image_sets = {
    "D^B: OpenMoji": image_dir / "backbone.npz",
    "D^A: Noto Color Emoji": image_dir / "noto_train.npz",
    "D^A: EmojiOne 2": image_dir / "emojione_train.npz",
    "out of backbone: Symbola": image_dir / "out_of_backbone.npz",
}

# %% [markdown]
# ## Images: one row per source, with the captions used as prompts

# %%
fig, axes = plt.subplots(len(image_sets), examples_per_source,
                         figsize=(1.1 * examples_per_source, 1.35 * len(image_sets)), squeeze=False)
for row, (label, path) in zip(axes, image_sets.items()):
    image_set = load_image_set(path)
    step = max(1, len(image_set) // examples_per_source)  # spread over the set, not its first code points
    show_images(row, image_set.images[::step], image_set.captions[::step])
    row[0].text(-0.15, 0.5, label, transform=row[0].transAxes, ha="right", va="center", fontsize=8)
fig.suptitle("Prepared image sets (real renders, captions from CLDR names)", fontsize=9)
save_figure(fig, "data_overview")

# %% [markdown]
# ## Text: example items of every set

# %%
text_files = {"backbone D^B": text_dir / "backbone.jsonl"}
text_files.update({f"task {name}": text_dir / "tasks" / f"{name}_train.jsonl"
                   for name in summary["adaptation_tasks"]})
text_files.update({f"eval {name}": text_dir / "eval" / f"{name}.jsonl" for name in summary["eval_sets"]})
rows = []
for label, path in text_files.items():
    for record in read_jsonl(path)[:text_examples]:
        prompt = record.get("instruction", record.get("context"))
        answer = record.get("response") or record["choices"][record["gold"]]
        rows.append({"set": label, "prompt": textwrap.shorten(prompt, 90), "answer": textwrap.shorten(answer, 60)})
pd.DataFrame(rows)

# %% [markdown]
# ## Set sizes

# %%
sizes = pd.Series(summary["sizes"], name="items").rename_axis("set").reset_index()
sizes

# %% [markdown]
# The metrics (`dvc metrics show`) keep one column per image set and sum the text sets by role
# (the eight evaluation sets; the tasks' train, oracle and test splits); the table above has every set.

# %%
kind = sizes["set"].str.split("/").str[1]
split = sizes["set"].str.rsplit("_", n=1).str[-1]
key = ("image_" + sizes["set"].str.removeprefix("images/")).where(sizes["set"].str.startswith("images/"))
key = key.fillna(("text_" + kind + "_" + split).where(kind == "tasks"))
key = key.fillna(("text_" + kind))
metrics = sizes.groupby(key)["items"].sum().astype(int).to_dict()
write_json(paths.metrics("data_overview"), metrics)
pd.Series(metrics)
