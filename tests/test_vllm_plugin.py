"""The vLLM plugin that carries our engine settings into vLLM's own processes."""

from __future__ import annotations

from importlib.metadata import entry_points

import pytest

from deployments.engines import vllm_plugin

cpu_attn = pytest.importorskip("vllm.v1.attention.backends.cpu_attn")


def test_the_plugin_is_installed_where_vllm_looks_for_it():
    plugins = {e.name: e.value for e in entry_points(group="vllm.general_plugins")}
    assert plugins.get("serve_engine_settings") == "deployments.engines.vllm_plugin:register"


@pytest.fixture
def chooser(monkeypatch):
    """vLLM's ISA chooser, restored after the test; the AMX answer forced where this CPU has none."""
    import torch

    # vLLM's own chooser: a vLLM engine started earlier in this process has loaded the plugin
    monkeypatch.setattr(cpu_attn, "_get_attn_isa", getattr(cpu_attn._get_attn_isa, "__wrapped__", cpu_attn._get_attn_isa))
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    return torch


def test_amx_attention_becomes_the_avx512_kernel_when_asked(chooser, monkeypatch):
    args = (chooser.bfloat16, 128, 64, "auto")
    assert cpu_attn._get_attn_isa(*args) == "amx"  # what vLLM picks on an AMX CPU in bf16
    monkeypatch.setenv(vllm_plugin.AMX_ATTENTION, "0")
    vllm_plugin.register()
    assert cpu_attn._get_attn_isa(*args) == "vec"
    assert cpu_attn._get_attn_isa(chooser.float32, 128, 64, "auto") == "vec"  # unchanged choices pass
    wrapper = cpu_attn._get_attn_isa
    vllm_plugin.register()  # vLLM may load plugins more than once: still the one wrapper
    assert cpu_attn._get_attn_isa is wrapper


def test_without_the_setting_vllm_chooses(chooser, monkeypatch):
    monkeypatch.delenv(vllm_plugin.AMX_ATTENTION, raising=False)
    vllm_plugin.register()
    assert cpu_attn._get_attn_isa(chooser.bfloat16, 128, 64, "auto") == "amx"


def test_the_engine_asks_for_it_on_cpu():
    from deployments.engines.vllm_engine import CPU_ENV_DEFAULTS

    assert CPU_ENV_DEFAULTS[vllm_plugin.AMX_ATTENTION] == "0"
