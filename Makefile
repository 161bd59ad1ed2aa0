# LRGD companion book. Two commands on a fresh machine:
#   make book   # venv + install + execute every notebook (papermill) + build the HTML book
#   make test   # venv + install + execute notebooks + unit tests + nbval + ruff + the browser check of the book
# Parameters (papermill → each notebook's `parameters` cell):
#   PROFILE=ci|full|gpu   DEVICE=auto|cpu|cuda   MODEL=smollm2-135m|gemma3-270m|/path/to/hf-model
#   DTYPE=auto|float32|bfloat16|float16|float64   (the LLM's dtype; auto: bfloat16 on cuda, float32 elsewhere)
#   DATASET=amazon-games|amazon-beauty|amazon-toys|amazon-scientific|ml-100k   SEED=0
#   (each notebook receives only the parameters its `parameters` cell declares)
#   make grid PROFILE=full [SCHEDULER=tcp://host:8786]   # the results grid of chapter 6 (python -m lrgd grid)
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DELETE_ON_ERROR:

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
PROFILE ?= ci
ifeq ($(CI),true)
PROFILE := ci
endif
DEVICE ?= auto
DTYPE  ?= auto
MODEL  ?= smollm2-135m
DATASET ?= amazon-games
SEED   ?= 0
CHROMIUM ?= /usr/bin/chromium
# notebooks run NB_JOBS at a time. Two chapters side by side on 2 cores were slower than one after the
# other (their torch threads contend), so NB_JOBS is 1 here; a machine with more cores may raise it.
NB_JOBS ?= 1

NB_SRC   := $(sort $(wildcard notebooks/*.py))
NB_OUT   := $(patsubst notebooks/%.py,_build/notebooks/%.ipynb,$(NB_SRC))
LIB      := $(shell find lrgd -name "*.py")
PARAMS   := -p profile $(PROFILE) -p device $(DEVICE) -p dtype $(DTYPE) -p model $(MODEL) -p dataset $(DATASET) -p seed $(SEED)
STAMP    := $(VENV)/.installed

.PHONY: help venv notebooks book grid browser test unit nbval lint format bench clean FORCE

help:
	@sed -n '1,9p' Makefile

# ---------------------------------------------------------------- environment
$(STAMP): requirements.txt requirements-nodeps.txt pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements.txt
	$(BIN)/pip install -q --no-deps -r requirements-nodeps.txt
	$(BIN)/pip install -q --no-deps -e .
	@touch $@

venv: $(STAMP)

# ---------------------------------------------------------------- notebooks (papermill is the one executor)
# The results grid of chapter 6 (python -m lrgd grid): GRID_PLAN prints how many runs are missing under their
# current keys and their estimated time (computes nothing); `make grid` computes them (resumable).
GRID_ARGS := --profile $(PROFILE) --device $(DEVICE) --dtype $(DTYPE)$(if $(SCHEDULER), --scheduler $(SCHEDULER))
GRID_PLAN  = $(BIN)/python -m lrgd grid $(GRID_ARGS) --dry-run
# chapter 6 prints the plan first (BEFORE: a command run before a notebook executes; empty for the others),
# except at ci, where chapter 6 computes nothing (it shows the committed full grid)
_build/notebooks/06_results.ipynb: BEFORE = $(if $(filter ci,$(PROFILE)),,$(GRID_PLAN))
# chapter 6 renders the published grid: a newly published (or pulled) result re-renders it
_build/notebooks/06_results.ipynb: $(wildcard results/*/grid/*/*.json)
# Re-run a notebook when its source, the library or the parameters change.
_build/notebooks/.params: FORCE
	@mkdir -p $(@D)
	@echo '$(PARAMS)' | cmp -s - $@ || echo '$(PARAMS)' > $@

_build/notebooks/%.ipynb: notebooks/%.py $(LIB) scripts/nb_params.py scripts/hide_injected.py _build/notebooks/.params $(STAMP)
	$(BEFORE)
	@p="$$($(BIN)/python scripts/nb_params.py $< $(PARAMS))"; echo "== executing $< [$$p]"; \
	$(BIN)/jupytext --quiet --to ipynb --output $(@D)/$*.src.ipynb $< && \
	$(BIN)/papermill --no-progress-bar $(@D)/$*.src.ipynb $(@D)/$*.run.ipynb $$p \
	  || { echo "!! $< failed; the failing cell is shown above. Partial output: $(@D)/$*.run.ipynb"; exit 1; }
	@$(BIN)/python scripts/hide_injected.py $(@D)/$*.run.ipynb  # the page shows the parameters cell, not papermill's copy
	@mv $(@D)/$*.run.ipynb $@ && rm -f $(@D)/$*.src.ipynb

# the benchmarks page reads the other executed chapters (their cell times) and benchmarks/results.json
_build/notebooks/05_benchmarks.ipynb: $(filter-out _build/notebooks/05_benchmarks.ipynb,$(NB_OUT)) $(wildcard benchmarks/results.json)

# Chapters that read what an earlier one computed wait for it (order only: no re-execution when it
# changes; the caches key every shared result). The others may run side by side (NB_JOBS at a time).
_build/notebooks/02_recommender.ipynb: | _build/notebooks/01_equivalence.ipynb  # converts the LLM once
_build/notebooks/01b_testbeds.ipynb: | _build/notebooks/01_equivalence.ipynb
_build/notebooks/02b_ceiling.ipynb: | _build/notebooks/02_recommender.ipynb  # chapter 2's LLM rows
_build/notebooks/03_effect_d.ipynb: | _build/notebooks/01b_testbeds.ipynb _build/notebooks/02_recommender.ipynb
_build/notebooks/04_robust.ipynb: | _build/notebooks/01b_testbeds.ipynb _build/notebooks/02b_ceiling.ipynb  # the decoder, the reader

notebooks: $(STAMP) _build/notebooks/.params
	@$(MAKE) --no-print-directory -j$(NB_JOBS) $(NB_OUT)

# ---------------------------------------------------------------- the results grid (chapter 6)
# On one machine a dask LocalCluster; SCHEDULER=tcp://host:8786 sends the tasks to a running dask cluster.
grid: $(STAMP)
	$(BIN)/python -m lrgd grid $(GRID_ARGS)

# ---------------------------------------------------------------- book
book: notebooks
	$(BIN)/jupyter-book build . -W -n --keep-going
	@echo "Book: $(CURDIR)/_build/html/index.html"

# ---------------------------------------------------------------- tests
unit: $(STAMP)
	$(BIN)/pytest -q --durations=10 --disable-socket --allow-unix-socket tests

nbval: notebooks
	$(BIN)/pytest -q -p no:cacheprovider --nbval --nbval-current-env \
	  --nbval-sanitize-with .ci/nbval-sanitize.cfg $(NB_OUT)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# ---------------------------------------------------------------- browser check of the built book
# Debian's Chromium, installed with apt when missing (CI runs as root); Playwright drives it (no download).
$(CHROMIUM):
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "== installing chromium with apt (for the browser check)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null; \
	else echo "error: no Chromium at $(CHROMIUM); install it (sudo apt-get install -y chromium) or pass CHROMIUM=/path/to/chromium"; exit 2; fi

browser: book $(CHROMIUM)
	$(BIN)/python scripts/check_book.py _build/html --chromium $(CHROMIUM)

# Chromium first: the unit tests drive it too (tests/test_check_book.py; at CI=true they require it)
test: lint $(CHROMIUM) unit nbval browser

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py  # writes benchmarks/results.json (the benchmarks page renders it)

clean:
	rm -rf _build
