# Two commands on a fresh machine: `make demo` and `make test`. Each sets up .venv first.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install -q --disable-pip-version-check
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench setup clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	# The CPU build of torch 2.13.0 lies on disk here; elsewhere any torch >= 2.2 will do.
	$(PIP) torch==2.13.0 || $(PIP) torch
	$(PIP) -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/prunelab demo

# The test command also installs the optional extras, so their tests run rather than skip.
EXTRAS := $(VENV)/.installed-extras
$(EXTRAS): $(STAMP)
	# torch pinned to the installed release, so pip takes the torchvision built for it
	$(PIP) -e '.[dev,vision,timm,nlp,onnx,ray,compare]' "torch==$$($(PY) -c 'import torch; print(torch.__version__.split("+")[0])')"
	touch $(EXTRAS)

test: $(EXTRAS)
	$(PY) -m pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench examples
	$(VENV)/bin/ruff format --check src tests bench examples

bench: $(EXTRAS)
	$(PY) bench/train_speed.py
	$(PY) bench/infer_speed.py
	$(PY) bench/compact_speed.py
	$(PY) bench/bert_speed.py
	$(PY) bench/reconstruct.py
	$(PY) bench/sweep_speed.py
	$(PY) bench/early_bird.py
	$(PY) bench/cli_speed.py
	$(PY) bench/sparse_speed.py
	# lm_prune.py's corpus: Debian's fortunes (English quotations, jokes, poems), where apt-get can install it
	[ -d /usr/share/games/fortunes ] || (apt-get update -qq && apt-get install -y -qq fortunes) >/dev/null 2>&1 || true
	$(PY) bench/lm_prune.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
