# All set-up happens here: `make test` and `make demo` work on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
# The CPU wheel is what these machines have; on a GPU machine `make TORCH_SPEC=torch ...`
# (or any CUDA/NPU build) installs the accelerator build instead.
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.osp-installed

.PHONY: install test test-slow demo bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# Pin torch first, so no dependency resolves it to a multi-GB CUDA build.
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[dev,train]"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

demo: $(STAMP)
	$(PY) -m osp_cli.demo

bench: $(STAMP)
	$(PY) benchmarks/vae.py

clean:
	rm -rf $(VENV) demo_out .pytest_cache
