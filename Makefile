# All set-up happens here: `make test` and `make demo` work on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
# The CPU wheel is what these machines have; on a GPU machine `make TORCH_SPEC=torch ...`
# (or any CUDA/NPU build) installs the accelerator build instead.
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.osp-installed

.PHONY: install test test-slow demo demo-vae bench clean builtin builtin-smoke builtin-edit serve screenshots

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# Pin torch first, so no dependency resolves it to a multi-GB CUDA build.
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[dev,train,serve]"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

# The built-in shapes model (shipped in the package): offline, about 10 s on 2 CPU cores;
# osp prints where it wrote the mp4.
DEMO_PROMPT ?= a red circle moving right
DEMO_OUT ?= demo_out
demo: $(STAMP)
	$(VENV)/bin/osp t2v sample "$(DEMO_PROMPT)" --model builtin:shapes --seed 0 --overwrite -o $(DEMO_OUT)
	@echo "(the line above says where the mp4 and its JSON sidecar are)"

# The web page (`osp serve`) on the built-in model: http://127.0.0.1:7860, Ctrl-C stops it.
SERVE_PORT ?= 7860
serve: $(STAMP)
	$(VENV)/bin/osp serve --model builtin:shapes --port $(SERVE_PORT) --output-dir $(DEMO_OUT)/serve

# docs/serve-*.png: a screenshot of each tab of the page after a run (needs the system Chromium:
# apt-get install -y chromium chromium-driver)
screenshots: $(STAMP)
	$(PY) scripts/screenshots.py --out docs

# A round trip through the released VAE (Hub download), or DEMO_VAE=/path/to/Open-Sora-Plan-v1.1.0
DEMO_VAE ?= LanguageBind/Open-Sora-Plan-v1.1.0
demo-vae: $(STAMP)
	$(VENV)/bin/osp data synth --out $(DEMO_OUT)/shapes --num 1 --seed 0 --overwrite
	$(VENV)/bin/osp vae recon $(DEMO_OUT)/shapes/videos/00000.mp4 -o $(DEMO_OUT)/recon.mp4 --model "$(DEMO_VAE)" --overwrite
	@echo "demo video: $(DEMO_OUT)/recon.mp4 (input: $(DEMO_OUT)/shapes/videos/00000.mp4)"

bench: $(STAMP)
	$(PY) benchmarks/vae.py

clean:
	rm -rf $(VENV) demo_out .pytest_cache

# Build the built-in model osp_core/builtin/shapes from scratch with osp itself: synthetic data,
# tiny T5, `osp vae train --preset shapes`, `osp t2v train --preset shapes` (then shapes-stage2 and
# shapes-stage3), export (fp16, <= 20 MB),
# evaluation, RESULTS.md. About 2.8 hours on 2 CPU cores with AMX (the VAE 41 min of it, bf16), about
# 4.5 hours on 2 AVX2 cores (fp32: the VAE about 2 h); refuses to replace an existing model
# unless OVERWRITE=1. `make builtin SMOKE=1` (or `make builtin-smoke`) checks the whole recipe in
# minutes with tiny step counts and a throwaway model (osp_core/builtin/shapes-smoke, removed after).
OVERWRITE ?=
SMOKE ?=
builtin: $(STAMP)
	$(PY) scripts/build_builtin.py $(if $(filter 1 yes true,$(SMOKE)),--smoke) $(if $(filter 1 yes true,$(OVERWRITE)),--overwrite)

builtin-smoke: $(STAMP)
	$(PY) scripts/build_builtin.py --smoke

# builtin:shapes's edit control module (osp_core/builtin/shapes/edit): `osp edit train` stages
# 1-3 on two-object clips beside the installed transformer (make builtin's VAE has seen two
# objects), then 40 unseen edits with both engines (benchmarks/edit.py). Installs edit/ and
# sampling.json only when control beats blend on trajectory error; results in
# outputs/builtin-shapes-edit/EDIT_RESULTS.md. About 41 min on 2 AMX CPU cores; refuses to replace an
# installed module unless OVERWRITE=1; SMOKE=1 checks the recipe in a few minutes.
builtin-edit: $(STAMP)
	$(PY) scripts/build_builtin_edit.py $(if $(filter 1 yes true,$(SMOKE)),--smoke) $(if $(filter 1 yes true,$(OVERWRITE)),--overwrite)
