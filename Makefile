# Everything a fresh clone needs: `make demo` and `make test` install into .venv first.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install demo test lint bench studies clean

# Where torch 2.13.0 comes from. Empty (the default): pip's configured indexes, which pick a CPU
# wheel only where one is configured (a local wheel, as on our CI); from PyPI alone, Linux gets the
# CUDA build (about 2.8 GB of wheels with the nvidia-* libraries). For the CPU build elsewhere:
#   make clean install TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH_INDEX ?=

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, so that nothing below asks for another (see TORCH_INDEX above).
	$(PY) -m pip install -q torch==2.13.0 $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PY) -m pip install -q -e '.[dev,sr,app,ray]'
	# spandrel (SR checkpoints) without its declared torchvision: PyPI's torchvision does not load
	# beside the CPU torch, and asking for it would pull another torch. lamcam.zoo imports spandrel
	# with a stand-in for the two non-SR architectures that need torchvision.
	$(PY) -m pip install -q --no-deps 'spandrel==0.4.2'
	# The ecosystem's real model code for the tests (timm, torchvision, transformers). timm and
	# torchvision go in without their declared dependencies for the same reason; tests import
	# torchvision through tests/torchvision_ops.py, which declares the compiled ops' schemas when
	# the wheel cannot load them beside the CPU torch.
	$(PY) -m pip install -q --no-deps 'torchvision==0.28.0' 'timm==1.0.31'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/lamcam demo --out lamcam-out

# Debian's Chromium, which the browser tests of `lamcam serve` drive through Playwright
# (executable_path), installed here when missing: Playwright's own browser download needs the
# internet. Elsewhere, point CHROMIUM at any Chromium or Chrome binary.
CHROMIUM ?= /usr/bin/chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
$(CHROMIUM):
	@command -v apt-get >/dev/null || { echo "no $(CHROMIUM): install Chromium, or run make test CHROMIUM=/path/to/chromium"; exit 1; }
	$(SUDO) apt-get update -q
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium

test: $(STAMP) $(CHROMIUM)
	LAMCAM_REQUIRE_BROWSER=1 LAMCAM_CHROMIUM=$(CHROMIUM) $(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks studies training

# The peers (captum, torchcam, pytorch-grad-cam) for benchmarks/bench_peers.py; grad-cam and
# torchcam are installed without their declared torchvision (see above).
BENCH_STAMP := $(VENV)/.bench-installed
$(BENCH_STAMP): $(STAMP)
	$(PY) -m pip install -q -e '.[bench]'
	$(PY) -m pip install -q --no-deps 'grad-cam==1.5.7' 'ttach==0.0.3'
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(PY) benchmarks/bench_cam.py
	$(PY) benchmarks/bench_peers.py

# The six studies of docs/results.md, one after another (each resumes if interrupted).
STUDIES := cam_compare sanity lam_zoo distill video caption
studies: $(STAMP)
	for s in $(STUDIES); do $(PY) -m studies.$$s --threads 1 || exit 1; done

clean:
	rm -rf $(VENV) lamcam-out .pytest_cache .lamcam-studies
