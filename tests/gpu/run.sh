#!/usr/bin/env bash
# The GPU check: on a machine with an NVIDIA GPU and the `vllm` package, start the app with the
# vLLM engine on the GPU (configs/engines-gpu.yaml) and run the whole-graph engine tests against
# it. Bounded to 8 minutes. Skips (exit 0, saying so) where there is no GPU.
#
#   bash tests/gpu/run.sh            # from the repository root, in an environment with vllm
set -euo pipefail
cd "$(dirname "$0")/../.."
if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
  echo "SKIPPED: no NVIDIA GPU here (tests/gpu/run.sh needs one)"
  exit 0
fi
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
if ! "$PY" -c "import vllm" 2>/dev/null; then
  echo "SKIPPED: the vllm package does not import with $PY (make install on a GPU machine installs it)"
  exit 0
fi
export HF_HUB_OFFLINE=1 RAY_AUTH_MODE=disabled ENGINES_CONFIG=configs/engines-gpu.yaml
"$PY" -m deployments.model_store configs/engines-gpu.yaml
timeout 480 "$PY" -m pytest -ra -x tests/test_engines_graph.py
