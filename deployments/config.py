"""Typed application config: the ``args`` of ``serve_app:build_app`` in ``serve_config.yaml``.

Every field has a description; unknown keys are errors, so a typo fails at ``serve run`` time
with the path of the field instead of being ignored. Replicas, autoscaling, ``num_cpus`` and
``max_ongoing_requests`` live in the YAML's ``deployments:`` section (Ray Serve's own schema);
deployments are named ``llm-<id>``, ``embed-<id>``, ``audio-<id>`` and ``Ingress``.
"""

from __future__ import annotations

import os
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-/]*$")


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DeploymentOptions(_Config):
    """Ray Serve options of one model's deployment, inline with the model (the YAML's
    ``deployments:`` section can still override them by deployment name)."""

    num_replicas: int | Literal["auto"] | None = Field(None, description="Fixed replica count, or auto.")
    max_ongoing_requests: int | None = Field(None, ge=1, description="Requests a replica runs at once.")
    max_queued_requests: int | None = Field(None, ge=-1, description="Requests waiting for a replica; beyond: 429.")
    autoscaling_config: dict[str, Any] | None = Field(
        None, description="Ray Serve autoscaling (min_replicas, max_replicas, target_ongoing_requests, ...)."
    )
    ray_actor_options: dict[str, Any] | None = Field(
        None, description="num_cpus, num_gpus, accelerator_type, resources (custom), runtime_env, ..."
    )
    placement_group_bundles: list[dict[str, float]] | None = Field(
        None, description="Resource bundles per replica (tensor-parallel vLLM: one bundle per GPU)."
    )
    placement_group_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] | None = Field(
        None, description="How the bundles are placed across nodes."
    )
    health_check_period_s: float | None = Field(None, gt=0, description="Seconds between health checks.")
    health_check_timeout_s: float | None = Field(None, gt=0, description="A health check slower than this fails.")
    graceful_shutdown_timeout_s: float | None = Field(
        None, ge=0, description="A replica being stopped (redeploy, scale-down) finishes its requests for this long."
    )
    graceful_shutdown_wait_loop_s: float | None = Field(
        None, gt=0, description="How often a replica being stopped checks whether its requests have finished."
    )

    @model_validator(mode="after")
    def _consistent(self):
        if self.num_replicas is not None and self.autoscaling_config is not None:
            raise ValueError("give num_replicas or autoscaling_config, not both")
        auto = self.autoscaling_config or {}
        if auto.get("min_replicas", 1) > auto.get("max_replicas", max(1, auto.get("min_replicas", 1))):
            raise ValueError("autoscaling_config: min_replicas is larger than max_replicas")
        return self

    def as_options(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)


# The deployment options a co-located model keeps: the front enforces them per model.
COLOCATED_OPTIONS = ("max_ongoing_requests", "max_queued_requests")


class _ModelConfig(_Config):
    id: str = Field(description="Model id clients send in `model` and see in /v1/models.")
    source: str = Field(
        description="Weights: a local Hugging Face folder, a hub id, or `pkg:<package>/<path>` "
        "for weights shipped in an installed Python package (GGUF files are prepared once)."
    )
    aliases: list[str] = Field(default_factory=list, description="Other ids that route to this model.")
    owned_by: str = Field("local", description="`owned_by` shown in /v1/models.")
    colocated: bool = Field(
        False,
        description="Serve this model inside the front's replicas (the fast path: no Ray hop between "
        "the client's socket and the model server; the `Ingress` entry of `deployments:` sizes the "
        "replica). False: a deployment of its own (`llm-<id>` / `embed-<id>`) behind a handle, with "
        "its own replicas, resources, nodes and autoscaling.",
    )
    deployment: DeploymentOptions = Field(
        default_factory=DeploymentOptions,
        description="Ray Serve options of this model's deployment. For a co-located model only "
        "max_ongoing_requests and max_queued_requests apply (enforced in the front, per model).",
    )

    @model_validator(mode="after")
    def _colocated_options(self):
        if self.colocated:
            other = sorted(set(self.deployment.as_options()) - set(COLOCATED_OPTIONS))
            if other:
                raise ValueError(
                    f"deployment: {', '.join(other)} cannot apply to a co-located model (it runs in the "
                    "front's replicas: size those under `deployments:` -> Ingress), or set colocated: false"
                )
        return self

    @field_validator("id", "aliases")
    @classmethod
    def _valid_ids(cls, value):
        for item in [value] if isinstance(value, str) else value:
            if not _ID.match(item):
                raise ValueError(f"{item!r} is not a valid model id (letters, digits, . _ - /)")
        return value

    @property
    def names(self) -> list[str]:
        return [self.id, *self.aliases]


class LoRAAdapter(_Config):
    """A LoRA adapter served from its base model's deployment, loaded on first use."""

    name: str = Field(description="Clients ask for `<model id>:<name>` or just `<name>`.")
    source: str = Field(description="Folder of a PEFT LoRA adapter (adapter_config.json + weights).")

    @field_validator("name")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        if not _ID.match(value) or ":" in value:
            raise ValueError(f"{value!r} is not a valid adapter name (letters, digits, . _ - /)")
        return value


class LLMConfig(_ModelConfig):
    """A chat / completions model served by one LLM deployment."""

    engine: Literal["auto", "vllm", "hf"] = Field(
        "auto",
        description="Generation engine: `vllm`, `hf` (transformers), or `auto`: vLLM when it imports "
        "and starts on this machine, else transformers (the choice and its reason are logged and "
        "shown in /v1/models/{id}).",
    )
    engine_args: dict[str, Any] = Field(
        default_factory=dict,
        description="vLLM engine arguments passed through (e.g. enforce_eager, gpu_memory_utilization, "
        "tensor_parallel_size, enable_prefix_caching).",
    )
    vllm_env: dict[str, str] = Field(
        default_factory=dict,
        description="Environment for vLLM (e.g. VLLM_CPU_KVCACHE_SPACE in GiB), set before it starts.",
    )
    dtype: Literal["bfloat16", "float16", "float32"] = Field(
        "bfloat16", description="Weight and compute dtype (bfloat16 is right for AVX-512 CPUs)."
    )
    max_model_len: int | None = Field(
        None, ge=16, description="Context length (prompt + completion); default: the model's own."
    )
    max_batch_size: int = Field(32, ge=1, le=512, description="Requests decoded together per step.")
    torch_threads: int | None = Field(
        None, ge=1, description="torch intra-op threads in the replica (Ray sets 1 unless told)."
    )
    lora_adapters: list[LoRAAdapter] = Field(
        default_factory=list,
        description="LoRA adapters of this model (vLLM multi-LoRA, or peft on transformers); each is "
        "listed in /v1/models as `<id>:<name>`.",
    )
    max_lora_rank: int = Field(16, ge=1, description="vLLM: the largest adapter rank to accept.")
    max_loras: int = Field(4, ge=1, description="vLLM: adapters that can run in one batch.")

    @property
    def names(self) -> list[str]:
        return [self.id, *self.aliases, *self.adapter_ids]

    @property
    def adapter_ids(self) -> list[str]:
        return [name for a in self.lora_adapters for name in (f"{self.id}:{a.name}", a.name)]

    @model_validator(mode="after")
    def _engine_options_fit(self):
        if self.engine == "hf" and (self.engine_args or self.vllm_env):
            raise ValueError("engine_args and vllm_env only apply to engine: vllm or auto")
        return self

    stream_interval_ms: float = Field(
        50.0,
        ge=0,
        description="Streamed tokens produced within this window travel as one message (the "
        "first at once, none held longer than the window); 0 sends every token on its own.",
    )


class EmbeddingConfig(_ModelConfig):
    """An embedding model served by one embedding deployment (sentence-transformers)."""

    max_batch_size: int = Field(
        32,
        ge=1,
        description="Inputs per forward pass (sentence-transformers' batch_size); a batch of the "
        "requests' inputs holds several passes, sorted by length across them.",
    )
    batch_wait_timeout_s: float = Field(
        0.005, ge=0, description="How long a batch waits for more requests before it runs."
    )
    truncate: bool = Field(
        False, description="Truncate inputs longer than the model's window instead of a 400."
    )
    dimensions: int | None = Field(
        None, ge=1, description="Serve vectors cut to this many dimensions and renormalised (default: the model's own)."
    )
    allow_request_dimensions: bool = Field(
        False,
        description="Accept the request parameter `dimensions` (cut and renormalise, for models trained for it, "
        "e.g. Matryoshka embeddings); otherwise a request asking for other dimensions is a 400.",
    )
    num_workers: int = Field(
        1,
        ge=1,
        description="Batches encoding at once in one replica, each in a thread of its own (2 single-threaded "
        "workers on 2 cores: 1.04-1.27x one worker on 2 threads, BENCHMARKS.md).",
    )
    torch_threads: int | None = Field(
        None, ge=1, description="torch intra-op threads of each worker (default: the cores shared among the workers)."
    )
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        "auto",
        description="Weight and compute dtype. `auto`: bfloat16 where the CPU computes it natively (AMX or "
        "AVX512-BF16; 2.9x float32's speed on an AMX CPU, vectors at cosine >= 0.9999 of float32's), else "
        "float32. Vectors are returned as float32, unit length where the model normalises, either way.",
    )

    def worker_threads(self) -> int:
        """torch threads of each encoding worker: as set, or the cores this process may run on
        shared among the workers."""
        return self.torch_threads or max(1, len(os.sched_getaffinity(0)) // self.num_workers)


class AudioConfig(_ModelConfig):
    """A speech-to-text model (``/v1/audio/transcriptions``, ``/v1/audio/translations``) served by
    one audio deployment on faster-whisper (CTranslate2): any faster-whisper model folder."""

    engine: Literal["faster-whisper"] = Field("faster-whisper", description="Speech-to-text engine.")
    device: Literal["cpu", "cuda", "auto"] = Field("cpu", description="Where CTranslate2 runs the model.")
    compute_type: str = Field(
        "int8", description="CTranslate2 compute type (int8, int8_float32, float32, float16 on GPUs, ...)."
    )
    cpu_threads: int = Field(2, ge=1, description="CPU threads of one transcription.")
    num_workers: int = Field(
        2,
        ge=1,
        description="Transcriptions computing at once in one replica (the pool); requests take turns "
        "window by window (30 s of audio), so a long file does not hold a worker until it ends.",
    )
    beam_size: int = Field(5, ge=1, le=16, description="Beam size of the decoding (1: greedy).")
    max_file_bytes: int = Field(
        25 * 1024 * 1024, ge=1, description="Largest audio file accepted (the server's max_body_bytes applies too)."
    )
    max_duration_s: float = Field(1800.0, gt=0, description="Longest audio accepted, in seconds.")

    @model_validator(mode="after")
    def _engine_options_fit(self):
        if self.compute_type not in _COMPUTE_TYPES:
            raise ValueError(f"compute_type {self.compute_type!r}: one of {', '.join(_COMPUTE_TYPES)}")
        return self


_COMPUTE_TYPES = (
    "default", "auto", "int8", "int8_float32", "int8_float16", "int8_bfloat16", "int16", "float16", "bfloat16", "float32"
)


class ServerConfig(_Config):
    """HTTP-level settings of the ingress: CORS, open paths, request limits, retry hints."""

    cors_allow_origins: list[str] = Field(
        default_factory=list, description="Origins allowed by CORS (e.g. http://localhost:3000, or *); empty: CORS off."
    )
    public_paths: list[str] = Field(
        default_factory=lambda: ["/health"],
        description="Paths served without an API key when keys are configured (exact paths).",
    )
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024, description="Largest request body accepted.")
    max_tokens_limit: int | None = Field(
        None, ge=1, description="Largest max_tokens / max_completion_tokens a request may ask for."
    )
    retry_after_s: int = Field(2, ge=1, description="Retry-After sent with 429 and 503 answers.")
    responses_store_size: int = Field(
        1000, ge=0, description="Responses kept in memory per ingress replica for previous_response_id (0: none)."
    )
    ray_background_cpu: Literal["idle", "unchanged"] = Field(
        "idle",
        description="idle: each front replica moves Ray's processes that serve no request on its node (the GCS, "
        "the dashboard, the agents, Serve's controller) to SCHED_IDLE once its models are loaded, so they run "
        "between the engine's steps (Linux; deployments/background_cpu.py). unchanged: leave them as Ray starts them.",
    )


class BatchConfig(_Config):
    """The Batch API (``/v1/files``, ``/v1/batches``, ``deployments/batch/``): where files and
    metadata live, the limits of an input file, and how much of the models a batch may use."""

    enabled: bool = Field(True, description="Serve /v1/files and /v1/batches.")
    storage: str = Field(
        "~/.cache/openai-serve/batch/files",
        description="Where file contents are kept: a local folder, or any fsspec path/URI every node can "
        "reach (s3://bucket/prefix, gs://..., a shared mount).",
    )
    db_path: str = Field(
        "~/.cache/openai-serve/batch/batch.db",
        description="SQLite file with file and batch metadata and each line's recorded result "
        "(local to the node running the batch driver: the head node).",
    )
    max_file_bytes: int = Field(
        200 * 1024 * 1024, ge=1, description="Largest file accepted (server.max_body_bytes caps uploads too)."
    )
    max_lines: int = Field(50_000, ge=1, description="Most request lines in one batch input file.")
    concurrency: int = Field(
        48, ge=1,
        description="Batch requests in flight at once, all batches together, while no online request is "
        "being served (a chat or completion line is one; a group of embedding lines is one); keep it below "
        "the models' max_batch_size / max_ongoing_requests so online requests always find a free seat.",
    )
    concurrency_while_online: int = Field(
        8, ge=1,
        description="Batch requests in flight at most (and at most concurrency) while online requests are "
        "being served, and for online_hold_s after the last one: the batch yields the engine's steps to "
        "online traffic (no new line starts until those in flight are down to this).",
    )
    online_hold_s: float = Field(
        5.0, ge=0,
        description="How long after the last online request the batch keeps to concurrency_while_online.",
    )
    embedding_lines_per_request: int = Field(
        64, ge=1,
        description="Embedding lines sent to the model as one request: their inputs are encoded together, "
        "behind any online request's (the embedding batcher's low priority).",
    )
    max_attempts: int = Field(3, ge=1, description="Tries of a line that meets a 429/500/502/504 before it is recorded as failed (a 503, a model loading or restarting, is waited out until the batch expires).")
    progress_log_s: float = Field(10.0, gt=0, description="How often the logs say how far each running batch is.")
    driver_idle_exit_s: float = Field(
        60.0, ge=0,
        description="The batch driver (a Ray actor) exits after this long with no batch running and no call; "
        "the next Files or Batches request starts it again (a second or two). An idle Ray actor costs about "
        "1% of a core and 150 wake-ups a second beside the engines (BENCHMARKS.md, session 17). 0: it stays.",
    )

    @field_validator("storage", "db_path")
    @classmethod
    def _not_empty(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value


class AppConfig(_Config):
    """All models of one application."""

    server: ServerConfig = Field(default_factory=ServerConfig, description="Ingress settings.")
    batch: BatchConfig = Field(default_factory=BatchConfig, description="Batch API settings.")
    llms: list[LLMConfig] = Field(default_factory=list, description="Chat / completions models.")
    embeddings: list[EmbeddingConfig] = Field(default_factory=list, description="Embedding models.")
    audio: list[AudioConfig] = Field(default_factory=list, description="Speech-to-text models.")

    def model_kinds(self) -> tuple[tuple[str, list[_ModelConfig]], ...]:
        """Each config section with its models: ``("llms", [...]), ("embeddings", ...), ("audio", ...)``."""
        return (("llms", self.llms), ("embeddings", self.embeddings), ("audio", self.audio))

    @model_validator(mode="after")
    def _unique_names(self):
        seen: dict[str, str] = {}
        for kind, models in self.model_kinds():
            for i, model in enumerate(models):
                for name in model.names:
                    if name in seen:
                        raise ValueError(f"{kind}[{i}]: model id {name!r} is already used by {seen[name]}")
                    seen[name] = f"{kind}[{i}]"
        if not seen:
            raise ValueError("configure at least one model under `llms`, `embeddings` or `audio`")
        return self


def llm_deployment_name(model_id: str) -> str:
    return "llm-" + re.sub(r"[^A-Za-z0-9_-]", "-", model_id)


def embedding_deployment_name(model_id: str) -> str:
    return "embed-" + re.sub(r"[^A-Za-z0-9_-]", "-", model_id)


def audio_deployment_name(model_id: str) -> str:
    return "audio-" + re.sub(r"[^A-Za-z0-9_-]", "-", model_id)
