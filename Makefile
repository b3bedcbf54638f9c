# Two commands for a fresh machine (see README.md):
#   make train   set up .venv and run Part 1 (python -m nanogpt_lib.train)
#   make test    set up .venv and run the whole test suite (ruff + pytest, notebooks included)
#   make lab     open the notebooks in JupyterLab; make notebooks re-executes them in place
#   make posts   regenerate the blog's posts (_posts/, assets/notebooks/) from the executed notebooks, both editions
#   make voila   a notebook as an app in Voilà, code hidden (NB=04_eval for another one)
# torch is installed first, pinned (TORCH=...), from TORCH_INDEX when given: on a Linux machine
# without a GPU, TORCH_INDEX=https://download.pytorch.org/whl/cpu avoids PyPI's multi-GB CUDA
# build. To change torch after the first setup, run `make clean` first.

PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
TORCH_INDEX ?=
PY := $(VENV)/bin/python
# The Machado corpus (notebooks 06, 09; nanogpt_lib/corpora.py) is not in the repository: with a local copy
# beside the project (../shared/corpora/machado), notebooks and tests read it; otherwise the loader downloads it.
MACHADO_COPY := $(abspath ../shared/corpora/machado)
ifneq ($(wildcard $(MACHADO_COPY)/SHA256SUMS),)
export NANOGPT_MACHADO_DIR ?= $(MACHADO_COPY)
endif

.PHONY: train test setup lab voila notebooks posts clean

# the package alone (enough to train), then the test and notebook extras on top
$(VENV)/.installed-core: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) "$(TORCH)"
	$(PY) -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed-core
	$(PY) -m pip install --quiet -e ".[test,notebooks,browser]"
	touch $@

setup: $(VENV)/.installed-dev

train: $(VENV)/.installed-core
	$(PY) -m nanogpt_lib.train $(ARGS)

# JupyterLab on the notebooks (make setup first happens automatically)
lab: $(VENV)/.installed-dev
	$(PY) -m jupyterlab notebooks/

# a notebook as an app (Voilà runs it and shows its outputs and sliders, not its code)
NB ?= 01_config
voila: $(VENV)/.installed-dev
	$(PY) -m voila notebooks/$(NB).ipynb

# re-execute the notebooks in place, so their stored outputs match the library again, then build and execute
# their Portuguese edition (notebooks/pt-br/) from the committed translations
notebooks: $(VENV)/.installed-dev
	$(PY) -m jupyter nbconvert --to notebook --execute --inplace --ExecutePreprocessor.record_timing=False notebooks/[0-9][0-9]_*.ipynb
	$(PY) -m blog.translations build pt-br --force
	$(MAKE) posts

# the Jekyll site's posts from the executed notebooks (see README.md, "The blog site")
posts: $(VENV)/.installed-dev
	$(PY) -m blog.posts

# two pytest workers: while one waits (a kernel or torchrun starting, Chromium, Jekyll) the other computes;
# --dist loadscope keeps each notebook, and each test file, on one worker
PYTEST_WORKERS ?= 2
test: $(VENV)/.installed-dev
	$(PY) -m ruff check .
	$(PY) -m pytest -n $(PYTEST_WORKERS) --dist loadscope

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
