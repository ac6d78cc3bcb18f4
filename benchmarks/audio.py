"""The speech-to-text benchmark: real-time factor (audio seconds transcribed per wall second) of
the default audio model at 1 and 4 files in flight, through the graph and in-process.

* ``audio-graph``: ``serve_config.yaml`` started with ``serve run``; the official ``openai``
  client sends ``client.audio.transcriptions.create`` (the Opus file as it is, json answers).
* ``audio-inprocess``: faster-whisper's ``WhisperModel`` in one process, on the same model folder
  with the deployment's settings (compute type, CPU threads, workers, beam size, the same
  decoding options), ``c`` threads each transcribing whole files; the audio is decoded in the
  timed part there too.

The audio is ``tests/fixtures/audio/meeting.ogg`` (31.5 s of espeak-ng speech), the same file for
every request; the first answer of each path is a warm-up and not counted.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

from benchmarks.procstat import CPUMeter
from benchmarks.servers import result_line, stop_app
from benchmarks.stats import pct

REPO = Path(__file__).resolve().parents[1]
CONFIG = "serve_config.yaml"
AUDIO_FILE = REPO / "tests" / "fixtures" / "audio" / "meeting.ogg"
LEVELS = (1, 4)


def audio_config(config_file: str = CONFIG) -> dict:
    """The first audio model of the config, as ``AudioConfig`` fills it in."""
    from deployments.config import AudioConfig

    config = yaml.safe_load((REPO / config_file).read_text())
    return AudioConfig.model_validate(config["applications"][0]["args"]["audio"][0]).model_dump()


def files_for(level: int, quick: bool) -> int:
    return max(level, 2 if quick else 8) if level == 1 else level * (2 if quick else 4)


def _figures(level: int, n: int, seconds: float, wall: float, latencies: list[float], errors: int, cpu=None) -> dict:
    out = {
        "in_flight": level, "files": n, "errors": errors, "audio_s": round(seconds, 1), "wall_s": round(wall, 2),
        "real_time_factor": round(seconds / wall, 2),
        "latency_p50_s": round(pct(latencies, 50), 2), "latency_max_s": round(max(latencies, default=0), 2),
    }
    if cpu is not None:
        out["cpu_s"] = cpu.seconds
    print(f"  {level} in flight, {n} files: {out['real_time_factor']}x real time, p50 {out['latency_p50_s']} s, errors {errors}", flush=True)
    return out


def inprocess(levels: list[int], quick: bool) -> None:
    """faster-whisper in this process at each level; prints ``RESULT {json}``."""
    from deployments.audio_server import FALLBACK_TEMPERATURES, SAMPLE_RATE, decode
    from deployments.model_store import resolve
    from faster_whisper import WhisperModel

    c = audio_config()
    model = WhisperModel(resolve(c["source"]), device=c["device"], compute_type=c["compute_type"],
                         cpu_threads=c["cpu_threads"], num_workers=c["num_workers"])
    data = AUDIO_FILE.read_bytes()
    seconds = len(decode(data, 3600)) / SAMPLE_RATE

    def one(_) -> float:
        start = time.perf_counter()
        segments, _info = model.transcribe(decode(data, c["max_duration_s"]), language="en", beam_size=c["beam_size"],
                                           temperature=FALLBACK_TEMPERATURES)
        text = "".join(s.text for s in segments)
        assert "meeting" in text.lower(), text
        return time.perf_counter() - start

    one(0)  # warm-up
    out = {"model_path": resolve(c["source"]), "settings": {k: c[k] for k in ("compute_type", "cpu_threads", "num_workers", "beam_size")}}
    for level in levels:
        n = files_for(level, quick)
        start = time.perf_counter()
        with ThreadPoolExecutor(level) as pool:
            latencies = list(pool.map(one, range(n)))
        out[f"c{level}"] = _figures(level, n, seconds * n, time.perf_counter() - start, latencies, 0)
    print("RESULT " + json.dumps(out))


def bench_inprocess(levels: list[int], quick: bool, logs: Path) -> dict:
    code = f"from benchmarks.audio import inprocess; inprocess({list(levels)!r}, {quick!r})"
    return result_line(["-c", code], "audio in-process", timeout=1800, log=logs / "audio-inprocess.log")


async def http_load(base_url: str, model: str, level: int, n: int) -> dict:
    import openai

    from deployments.audio_server import SAMPLE_RATE, decode

    data = AUDIO_FILE.read_bytes()
    seconds = len(decode(data, 3600)) / SAMPLE_RATE
    client = openai.AsyncOpenAI(base_url=base_url, api_key="bench", timeout=600, max_retries=0)
    queue = list(range(n))
    latencies: list[float] = []
    errors, first_error = 0, None

    async def call() -> None:
        reply = await client.audio.transcriptions.create(model=model, file=(AUDIO_FILE.name, data))
        if "meeting" not in reply.text.lower():
            raise RuntimeError(f"unexpected transcript: {reply.text!r}")

    async def worker() -> None:
        nonlocal errors, first_error
        while queue:
            queue.pop()
            start = time.perf_counter()
            try:
                await call()
                latencies.append(time.perf_counter() - start)
            except Exception as exc:  # noqa: BLE001 - counted and reported
                errors += 1
                first_error = first_error or repr(exc)

    try:
        await call()  # warm-up
        start = time.perf_counter()
        with CPUMeter() as cpu:
            await asyncio.gather(*(worker() for _ in range(level)))
        wall = time.perf_counter() - start
    finally:
        await client.close()
    out = _figures(level, n, seconds * len(latencies), wall, latencies, errors, cpu)
    if first_error:
        out["first_error"] = first_error
    return out


def bench_graph(levels: list[int], quick: bool, logs: Path) -> dict:
    from tests.conftest import start_app

    model = audio_config()["id"]
    app = start_app(CONFIG, Path(tempfile.mkdtemp(prefix="bench-audio-")))
    out: dict = {"config": CONFIG, "model": model}
    try:
        for level in levels:
            out[f"c{level}"] = asyncio.run(http_load(app.base_url + "/v1", model, level, files_for(level, quick)))
    finally:
        problem = stop_app(app, logs / "audio-serve.log")
        if problem:
            out["stop_problem"] = problem
    return out
