# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # The text backbone
#
# The paper's language backbone is LLaMA-2-7B fine-tuned on Alpaca-cleaned: a public model whose
# last training set is known, so that set can play D^B. Here the same situation is built at CPU
# scale: SmolLM2-135M-Instruct (from its pinned GGUF file) is instruction-tuned on our D^B
# (`data/prepared/text/backbone.jsonl`: WordNet and Wikipedia instruction/response pairs, rendered
# with the model's chat template, loss on the response tokens only). The result, saved to
# `models/backbone_text` as a plain `LlamaForCausalLM`, is the backbone every text adaptation starts from.
#
# The fine-tune trains a LoRA on every linear layer and merges it into the weights (a full
# fine-tune of 135M weights does not fit the CPU budget); `lora_rank = 0` would train every weight.
# The eight multiple-choice sets (held out from D^B, `bat/text/data.py`) are scored before and
# after, with lm-evaluation-harness's `acc` and `acc_norm`, on their first `eval_set_size` items.
# The smoke profile runs the same code on a minuscule LLaMA built from a config; the paper profile
# loads its model by hub id. The `pretrain_text` stage (`python -m bat.stages.backbone_text`)
# fine-tunes and scores; this notebook reads `runs/backbone_text`.

# %% tags=["parameters"]
source = "gguf"
gguf_file = "smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
model_id = ""
tiny_config = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
               "num_attention_heads": 4, "num_key_value_heads": 2}
attn_implementation = "eager"
steps = 40
batch_size = 8
max_length = 64
learning_rate = 0.0002
weight_decay = 0.0
warmup_steps = 4
lora_rank = 8
lora_alpha = 16.0
max_grad_norm = 1.0
seed = 0
eval_set_size = 20
eval_batch_size = 8

# %%
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from bat import paths
from bat.analysis.plotting import save_figure
from bat.analysis.results import read_result
from bat.io import write_json

# Fine-tuned and scored by the pretrain_text stage (python -m bat.stages.backbone_text).
result, _ = read_result(paths.RUNS / "backbone_text", globals(), "backbone_text", "pretrain_text")
pd.set_option("display.width", 200)

# %% [markdown]
# ## The fine-tune on D^B
#
# The scores "after" come from the folder as saved, reopened with the same loader that the
# adaptation stages use.

# %%
losses = pd.DataFrame(result["rows"], columns=["step", "loss", "learning_rate", "tokens", "seconds"])
summary = result["loss"]
pd.Series({key: result[key] for key in ("examples", "dropped_examples", "trainable_parameters",
                                        "distinct_examples_seen")} | summary)

# %%
table = pd.DataFrame(result["scores"])
table.round(3)

# %% [markdown]
# Left: the training loss per step (response tokens only) and its running mean. Middle and right:
# `acc` and `acc_norm` per set before and after the fine-tune, on the same items; the black tick
# is chance (the mean of 1 / number of choices).

# %%
fig, axes = plt.subplots(1, 3, figsize=(13, 3.6), gridspec_kw={"width_ratios": [1, 1.4, 1.4]})
if len(losses):
    axes[0].plot(losses["step"], losses["loss"], color="tab:gray", lw=0.8, label="per step")
    axes[0].plot(losses["step"], losses["loss"].rolling(summary["window"], min_periods=1).mean(),
                 color="tab:blue", label=f"running mean ({summary['window']} steps)")
    axes[0].legend(fontsize=7)
else:
    axes[0].text(0.5, 0.5, "no fine-tune (steps = 0)", ha="center", va="center", transform=axes[0].transAxes)
axes[0].set(xlabel="step", ylabel="loss (response tokens)", title="fine-tune on D^B")
per_set = table[table["set"] != "mean"]
positions = np.arange(len(per_set))
for axis, metric in zip(axes[1:], ["acc", "acc_norm"]):
    axis.bar(positions - 0.2, per_set[f"{metric}_before"], width=0.4, color="tab:gray", label="before")
    axis.bar(positions + 0.2, per_set[f"{metric}_after"], width=0.4, color="tab:blue", label="after")
    axis.scatter(positions, per_set["chance"], marker="_", s=300, color="black", label="chance", zorder=3)
    axis.set_xticks(positions, [f"{s}\n({p})" for s, p in zip(per_set["set"], per_set["paper"])],
                    rotation=60, ha="right", fontsize=6)
    axis.set(ylim=(0, 1), ylabel=metric, title=f"{metric} on {eval_set_size} items per set")
axes[1].legend(fontsize=7, loc="upper right")
fig.suptitle(f"Text backbone ({source}): instruction-tuned on D^B, {steps} steps", fontsize=9)
fig.tight_layout()
save_figure(fig, "backbone_text")

# %%
# Flat scalars for `dvc metrics show`: the mean over sets (the "mean" row of the table above),
# the running-mean loss at the start and end of the fine-tune, and wall time; per-set scores
# stay in the table above and in runs/backbone_text.
mean = table.set_index("set").loc["mean"]
metrics = {key: mean[key] for key in ("chance", "acc_before", "acc_after", "acc_norm_before", "acc_norm_after")}
metrics.update(loss_first_window=summary.get("mean_first"), loss_last_window=summary.get("mean_last"),
               seconds=result["seconds"]["total"])
write_json(paths.metrics("backbone_text"), metrics)
pd.Series(metrics)
