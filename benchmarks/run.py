"""The benchmark suite, one run on one machine: ``make bench`` (``python -m benchmarks.run``).

Parts, each alone on the machine, in this order (``--only`` picks parts or sub-parts):

* ``chat`` (``benchmarks.chat``): the same streamed load at each concurrency through
  ``chat-graph`` (the graph, both engines), ``chat-server`` (vLLM's own OpenAI server),
  ``chat-inprocess`` (the project's engines, no HTTP, no Ray) and ``chat-offline`` (static
  batches);
* ``coldstart`` (``benchmarks.coldstart``): ``serve run serve_config.yaml`` to first answers;
* ``embeddings`` (``benchmarks.embeddings``): ``embeddings-graph`` (on the app the cold start
  started, so it records a cold start too), ``embeddings-raw`` and ``embeddings-infinity``;
* ``audio`` (``benchmarks.audio``): the real-time factor of speech to text at 1 and 4 files in
  flight, ``audio-inprocess`` (faster-whisper in one process) and ``audio-graph``.

Results are merged into ``benchmarks/results/bench.json`` and rendered into ``BENCHMARKS.md``
(with ``benchmarks/results/chat.png``). ``--quick`` is a smoke run (few requests, c=1 and 8,
16 tokens): it writes to ``benchmarks/results/quick/`` and leaves ``BENCHMARKS.md`` alone.

The suite takes the machine-wide lock the graph tests take (``tests.conftest.hold_graph_lock``),
so it waits for running graph tests and they wait for it; do not wrap it in ``flock`` yourself.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
PARTS = {
    "chat": ("chat-default", "chat-graph", "chat-server", "chat-inprocess", "chat-offline"),
    "coldstart": ("coldstart",),
    "embeddings": ("embeddings-graph", "embeddings-raw", "embeddings-infinity"),
    "audio": ("audio-inprocess", "audio-graph"),
    "batch": ("batch-chat", "batch-embeddings"),
}
SUBPARTS = [s for subs in PARTS.values() for s in subs]


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} cores ({cpu}), {mem:.0f} GiB, {platform.system()} {platform.release()}, Python {platform.python_version()}"


def selected(only: list[str] | None) -> list[str]:
    """The sub-parts to run, in suite order, from ``--only`` names (parts or sub-parts)."""
    if not only:
        return list(SUBPARTS)
    wanted = set()
    for name in only:
        if name in PARTS:
            wanted.update(PARTS[name])
        elif name in SUBPARTS:
            wanted.add(name)
        else:
            raise SystemExit(f"--only: unknown part {name!r}; parts: {', '.join([*PARTS, *SUBPARTS])}")
    return [s for s in SUBPARTS if s in wanted]


class Store:
    """The results file: each part is replaced as it finishes, so a crash keeps what was done."""

    def __init__(self, path: Path, command: str, quick: bool) -> None:
        self.path = path
        self.results = json.loads(path.read_text()) if path.exists() else {}
        self.command, self.quick = command, quick
        self.started: set[str] = set()

    def part(self, name: str, settings: dict, whole: bool) -> dict:
        """The part's dict for this run: fresh the first time it is touched in this run."""
        if name not in self.started:
            previous = self.results.get(name) if not whole else None
            self.results[name] = {
                **(previous or {}),
                "machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                "command": self.command, "settings": {**settings, "quick": self.quick},
            }
            if previous:
                self.results[name]["mixed_runs"] = True
            self.started.add(name)
        return self.results[name]

    def record(self, part: dict, key: str, value: dict) -> None:
        """One path's results, stamped with when it ran; saved at once."""
        part[key] = value
        part.setdefault("path_dates", {})[key] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        self.save()

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(self.results, indent=2))


def attempt(label: str, fn, *args):
    """Run one sub-part; on failure record the error and go on with the others."""
    try:
        return fn(*args)
    except Exception as exc:  # noqa: BLE001 - recorded in the results and the report
        traceback.print_exc()
        print(f"{label} FAILED: {exc!r}", flush=True)
        return {"error": f"{type(exc).__name__}: {exc}"[-3000:]}


def run_chat(todo: list[str], store: Store, args, logs: Path) -> None:
    from benchmarks import chat
    from deployments.model_store import resolve

    s = chat.ChatSettings(args.levels, args.requests_per_level, args.max_tokens, sixteen=not args.quick, warm_level=not args.quick)
    part = store.part("chat", {"levels": s.levels, "requests_per_level": s.requests_per_level, "warm_level": s.warm_level,
                               "max_tokens": s.max_tokens, "dtype": chat.DTYPE, "config": chat.CONFIG},
                      whole=all(t in todo for t in PARTS["chat"]))
    path = resolve(chat.SOURCE, chat.DTYPE)
    steps = {
        "chat-default": ("default_config", lambda: chat.bench_default(s, logs, args.rounds or chat.DEFAULT_ROUNDS)),
        "chat-graph": ("graph", lambda: chat.bench_graph(s, logs)),
        "chat-server": ("vllm_server", lambda: chat.bench_vllm_server(s, path, logs)),
        "chat-inprocess": ("inprocess", lambda: chat.bench_inprocess(s, logs)),
        "chat-offline": ("offline", lambda: chat.bench_offline(path, max(s.levels), s.max_tokens, logs)),
    }
    for name, (key, fn) in steps.items():
        if name in todo:
            print(f"== {name}", flush=True)
            store.record(part, key, attempt(name, fn))


def run_embeddings(todo: list[str], store: Store, args, logs: Path) -> None:
    from benchmarks import coldstart, embeddings
    from benchmarks.servers import stop_app
    from deployments.model_store import resolve

    cfg = embeddings.embedding_config()
    path = resolve(cfg["source"])
    n_single, n_batch16 = (128, 64) if args.quick else (2048, 512)  # at least IN_FLIGHT each
    if "coldstart" in todo or "embeddings-graph" in todo:
        print("== coldstart" + (" + embeddings-graph" if "embeddings-graph" in todo else ""), flush=True)
        cold = store.part("coldstart", {"config": coldstart.CONFIG}, whole=True)
        app = None
        try:
            app, figures = coldstart.start_timed()
            cold.update(figures)
        except Exception as exc:  # noqa: BLE001 - recorded
            traceback.print_exc()
            cold["error"] = f"{type(exc).__name__}: {exc}"[-3000:]
        store.save()
        if app is not None:
            try:
                if "embeddings-graph" in todo:
                    emb = _emb_part(store, todo, cfg, path)
                    store.record(emb, "graph", attempt("embeddings-graph", embeddings.load_both, app.base_url + "/v1", cfg["id"], n_single, n_batch16))
            finally:
                problem = stop_app(app, logs / "coldstart-serve.log")
                if problem:
                    cold["stop_problem"] = problem
                    store.save()
    if "embeddings-raw" in todo:
        print("== embeddings-raw", flush=True)
        emb = _emb_part(store, todo, cfg, path)
        store.record(emb, "raw", attempt("embeddings-raw", embeddings.bench_raw, path, n_batch16 * 16, cfg["max_batch_size"], cfg["torch_threads"], cfg["dtype"], logs))
    if "embeddings-infinity" in todo:
        print("== embeddings-infinity", flush=True)
        emb = _emb_part(store, todo, cfg, path)
        store.record(emb, "infinity", attempt("embeddings-infinity", embeddings.bench_infinity, path, cfg["id"], cfg["max_batch_size"], cfg["dtype"], n_single, n_batch16, logs))


def run_audio(todo: list[str], store: Store, args, logs: Path) -> None:
    from benchmarks import audio

    cfg = audio.audio_config()
    settings = {"levels": list(audio.LEVELS), "model": cfg["id"], "source": cfg["source"], "audio_file": audio.AUDIO_FILE.name,
                **{k: cfg[k] for k in ("compute_type", "cpu_threads", "num_workers", "beam_size")}}
    part = store.part("audio", settings, whole=all(t in todo for t in PARTS["audio"]))
    steps = {
        "audio-inprocess": ("inprocess", lambda: audio.bench_inprocess(audio.LEVELS, args.quick, logs)),
        "audio-graph": ("graph", lambda: audio.bench_graph(audio.LEVELS, args.quick, logs)),
    }
    for name, (key, fn) in steps.items():
        if name in todo:
            print(f"== {name}", flush=True)
            store.record(part, key, attempt(name, fn))


def run_batch(todo: list[str], store: Store, args, logs: Path) -> None:
    from benchmarks import batch

    part = store.part("batch", {"chat_lines": batch.CHAT_LINES, "max_tokens": batch.MAX_TOKENS, "sentences": batch.SENTENCES,
                                "concurrency": batch.CHAT_CONCURRENCY, "embeddings_concurrency": batch.EMBED_CONCURRENCY}, whole=all(t in todo for t in PARTS["batch"]))
    steps = {
        "batch-chat": ("chat", lambda: batch.bench_chat(logs, quick=args.quick)),
        "batch-embeddings": ("embeddings", lambda: batch.bench_embeddings(logs, quick=args.quick)),
    }
    for name, (key, fn) in steps.items():
        if name in todo:
            print(f"== {name}", flush=True)
            store.record(part, key, attempt(name, fn))


def _emb_part(store: Store, todo: list[str], cfg: dict, path: str) -> dict:
    from benchmarks.embeddings import IN_FLIGHT

    return store.part("embeddings", {"in_flight": IN_FLIGHT, "torch_threads": cfg["torch_threads"], "num_workers": cfg["num_workers"], "dtype": cfg["dtype"],
                                     "batch_size": cfg["max_batch_size"], "model_path": path},
                      whole=all(t in todo for t in PARTS["embeddings"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", metavar="PART", help=f"parts or sub-parts: {', '.join([*PARTS, *SUBPARTS])}")
    parser.add_argument("--quick", action="store_true", help="smoke run: c=1 and 8, 8 requests per level, 16 tokens, few embedding requests")
    parser.add_argument("--levels", type=int, nargs="+", help="chat concurrency levels (default 1 8 32 64)")
    parser.add_argument("--requests-per-level", type=int, help="chat requests per level, at least the concurrency (default 32)")
    parser.add_argument("--max-tokens", type=int, help="new tokens per chat request (default 64)")
    parser.add_argument("--rounds", type=int, help="chat-default: how many times its paths take turns in their order (default 2; 1 with --quick)")
    parser.add_argument("--report-only", action="store_true", help="re-render the report from the stored results")
    args = parser.parse_args()
    args.levels = args.levels or ([1, 8] if args.quick else [1, 8, 32, 64])
    args.requests_per_level = args.requests_per_level or (8 if args.quick else 32)
    args.max_tokens = args.max_tokens or (16 if args.quick else 64)
    args.rounds = args.rounds or (1 if args.quick else None)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    out_dir = RESULTS / "quick" if args.quick else RESULTS
    logs = out_dir / "logs"  # servers' and subprocesses' output, for when a figure looks wrong
    logs.mkdir(parents=True, exist_ok=True)
    store = Store(out_dir / "bench.json", "python -m benchmarks.run " + " ".join(sys.argv[1:]), args.quick)
    from benchmarks.report import write_report

    doc = out_dir / "BENCHMARKS-quick.md" if args.quick else REPO / "BENCHMARKS.md"
    if not args.report_only:
        todo = selected(args.only)
        from tests.conftest import hold_graph_lock

        print("taking the graph lock (waits while graph tests run) ...", flush=True)
        hold_graph_lock()
        started = time.monotonic()
        if any(t.startswith("chat-") for t in todo):
            run_chat(todo, store, args, logs)
        if any(t == "coldstart" or t.startswith("embeddings-") for t in todo):
            run_embeddings(todo, store, args, logs)
        if any(t.startswith("audio-") for t in todo):
            run_audio(todo, store, args, logs)
        if any(t.startswith("batch-") for t in todo):
            run_batch(todo, store, args, logs)
        print(f"suite done in {(time.monotonic() - started) / 60:.1f} min", flush=True)
    write_report(store.results, doc, out_dir / "chat.png")


if __name__ == "__main__":
    main()
