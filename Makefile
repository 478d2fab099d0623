# Two commands do everything on a fresh clone:
#   make repro   create the environment if missing, fetch the pinned raw data, `dvc repro`
#                with independent stages side by side (JOBS at a time, bat.stages.repro)
#   make test    create the environment and fetch the raw data if missing, run the test suite
# PROFILE=smoke|paper runs the pipeline under another profile (see README); OVERRIDE=FILE applies
# a site's YAML file on top of it (profiles/paper-cpu.example.yaml).

VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
PROFILE ?= tiny
OVERRIDE ?=
# Stages at once: the tiny pipeline's text and image chains share two cores; the paper profile's
# stages each want the whole GPU machine (its grids spread over GPUs themselves, README).
ifeq ($(PROFILE),paper)
JOBS ?= 1
else
JOBS ?= 2
endif

# Keep Jupyter, IPython, DVC and Hugging Face state inside the project. The tiny and smoke
# profiles never reach for a hub; the paper profile downloads its models and data unless the
# user sets HF_HUB_OFFLINE=1 themselves (README: pre-fetching for an offline cluster).
# DVC stages call `python`: the environment's.
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export JUPYTER_DATA_DIR := $(CURDIR)/.jupyter
export IPYTHONDIR := $(CURDIR)/.ipython
export DVC_SITE_CACHE_DIR := $(CURDIR)/.cache/dvc-site
export MPLCONFIGDIR := $(CURDIR)/.cache/matplotlib
export HF_HOME := $(CURDIR)/.cache/huggingface
ifneq ($(PROFILE),paper)
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
endif
# Idle OpenMP threads spin and starve the other core of a 2-core machine.
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: env data repro test bench lab clean-env

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first and pinned: an unpinned resolve pulls a multi-GB CUDA build.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e .
	touch $@

env: $(VENV)/.installed

# After the fetch, cache the tree in DVC; if its hash moved, the fetch was not reproducible:
# say so and undo.
data: env
	$(PY) -m bat.stages.fetch
	$(VENV)/bin/dvc commit --force --quiet data.dvc
	@git diff --quiet data.dvc || { git checkout data.dvc; \
	  echo "error: data/raw differs from data.dvc; run python -m bat.stages.fetch --force" >&2; exit 1; }

repro: data
	$(PY) -m bat.stages.profile use $(PROFILE) $(if $(OVERRIDE),--override $(OVERRIDE))
	$(PY) -m bat.stages.repro --jobs $(JOBS)

test: data
	$(PY) -m pytest

# Speed, memory and agreement checks; each writes benchmarks/results/<name>.json (see README).
bench: env
	$(PY) benchmarks/bench_curvature.py --out benchmarks/results/curvature.json
	$(PY) benchmarks/bench_grid_selection.py --out benchmarks/results/grid_selection.json
	$(PY) benchmarks/bench_adapters.py --out benchmarks/results/adapters.json
	$(PY) benchmarks/bench_backbone_text.py --out benchmarks/results/backbone_text.json
	$(PY) benchmarks/bench_stage.py backbone_image --out benchmarks/results/backbone_image.json
	$(PY) -m benchmarks.lm_eval_compare --model models/backbone_text \
	  --items data/prepared/text/eval/*.jsonl --repeats 1 --out benchmarks/results/lm_eval_compare.json

# Jupyter refuses to run as root (containers, CI) without --allow-root; others do not need it.
lab: env
	$(VENV)/bin/jupyter lab notebooks/ $(if $(filter 0,$(shell id -u)),--allow-root)

clean-env:
	rm -rf $(VENV)
