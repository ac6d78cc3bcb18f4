"""Render ``benchmarks/results/bench.json`` into the generated section of ``BENCHMARKS.md``.

``python -m benchmarks.report`` re-renders from the stored results (``make bench`` does it after
each run). Everything between the markers is rewritten; the hand-written analysis around them
is kept. The rendering is pure (``render``, ``targets``): ``tests/test_bench_report.py``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from benchmarks.plot import levels_of, plot_chat
from benchmarks.stats import Target, fmt, ratio, table

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
# the default config's chat run of 2026-11-29, before the fast path (float32, every model behind a handle)
BEFORE_FAST_PATH = RESULTS / "default-config-before-fastpath.json"
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"
OLD_MARKERS = ("<!-- chat-benchmark:begin -->", "<!-- chat-benchmark:end -->")
VLLM, HF = "smollm2-vllm", "smollm2-hf"
CONFIG_SEPARATE = "configs/engines-cpu.yaml"
TPUT_LEVEL = 32  # the concurrency for graph vs vLLM's own server
TTFT_LEVEL = 1  # TTFT overhead: one stream at a time, so queueing does not hide it
HOP_ORDER = (
    "client (load generator)", "HTTP proxy", "ingress", "replica", "vLLM API server", "Infinity server",
    "vLLM engine processes", "Serve controller", "Ray system",
)


def _by_c(rows: list[dict]) -> dict[int, dict]:
    return {r["concurrency"]: r for r in rows}


def _error(part: dict | None, *keys: str) -> str | None:
    """The recorded error of a part or sub-part, first line, if it failed."""
    for key in keys:
        part = (part or {}).get(key) if isinstance(part, dict) else None
    if isinstance(part, dict) and "error" in part:
        return str(part["error"]).strip().splitlines()[0][:300]
    return None


def _why(results: dict, part: str, *path: str) -> str:
    if part not in results:
        return f"the {part} part was not run (`make bench BENCH_ARGS='--only {part}'`)"
    return _error(results[part], *path) or f"{' / '.join(path) or part} not in this run"


def _level(rows: list[dict], wanted: int) -> int | None:
    """``wanted`` if measured, else the highest level measured (quick runs), else None."""
    levels = sorted(r["concurrency"] for r in rows)
    if not levels:
        return None
    return wanted if wanted in levels else levels[-1]


def _default_levels(chat: dict, path: str) -> list[dict]:
    """The default config's chat model through ``path`` (``graph`` or ``vllm_server``)."""
    part = (chat.get("default_config") or {}).get(path) or {}
    model = (chat.get("default_config") or {}).get("model")
    return part.get(model) or part.get("smollm2") or [] if isinstance(part, dict) else []


def default_config_targets(results: dict) -> list[Target]:
    """Issue 12: the default config (the fast path) against vLLM's own server, and its start."""
    chat = results.get("chat") or {}
    graph, server = _by_c(_default_levels(chat, "graph")), _by_c(_default_levels(chat, "vllm_server"))
    c = _level([r for r in graph.values() if r["concurrency"] in server], TPUT_LEVEL)
    why = _why(results, "chat", "default_config")
    out = [Target(f"default config (fast path) / vLLM's own server, output tok/s at c={c or TPUT_LEVEL}",
                  ratio(graph[c]["tokens_per_s"], server[c]["tokens_per_s"]) if c else None, 0.9, why_missing=why)]
    batch = _by_c(_default_levels(chat, "vllm_server_batch"))
    if batch:  # like for like: vLLM's server started under SCHED_BATCH too, as `make serve` starts Ray
        out.append(Target(f"default config / vLLM's own server under SCHED_BATCH (like for like), output tok/s at c={c or TPUT_LEVEL}",
                          ratio(graph[c]["tokens_per_s"], batch[c]["tokens_per_s"]) if c and c in batch else None, 0.9,
                          why_missing=why))
    inproc = _by_c(levels_of(chat, "inprocess", VLLM))
    c1 = TTFT_LEVEL if TTFT_LEVEL in graph and TTFT_LEVEL in inproc else None
    out.append(Target(f"TTFT p50, default config minus the vLLM engine in-process, c={TTFT_LEVEL}",
                      (graph[c1]["ttft_p50_s"] - inproc[c1]["ttft_p50_s"]) * 1000 if c1 else None, 20.0, "max_ms",
                      _why(results, "chat", "inprocess", VLLM) if not inproc else why))
    cold = results.get("coldstart") or {}
    out.append(Target("cold start: `serve run serve_config.yaml` to the first chat answer, s", cold.get("to_first_chat_s"),
                      30.0, "max_s", _error(results, "coldstart") or _why(results, "coldstart")))
    return out


def chat_targets(results: dict) -> list[Target]:
    chat = results.get("chat") or {}
    out = default_config_targets(results)
    graph, server = _by_c(levels_of(chat, "graph", VLLM)), _by_c(levels_of(chat, "vllm_server", "smollm2"))
    c = _level([r for r in graph.values() if r["concurrency"] in server], TPUT_LEVEL)
    value = ratio(graph[c]["tokens_per_s"], server[c]["tokens_per_s"]) if c else None
    why = _why(results, "chat", "vllm_server") if not server else _why(results, "chat", "graph")
    out.append(Target(f"separate-deployment graph (`{CONFIG_SEPARATE}`) / vLLM's own server, output tok/s at c={c or TPUT_LEVEL}",
                      value, 1.0, why_missing=why))
    for model, engine in ((VLLM, "vLLM"), (HF, "HF")):
        g, i = _by_c(levels_of(chat, "graph", model)), _by_c(levels_of(chat, "inprocess", model))
        c = TTFT_LEVEL if TTFT_LEVEL in g and TTFT_LEVEL in i else None
        value = (g[c]["ttft_p50_s"] - i[c]["ttft_p50_s"]) * 1000 if c else None
        why = _why(results, "chat", "inprocess", model) if not i else _why(results, "chat", "graph")
        out.append(Target(f"TTFT p50, graph minus in-process, c={TTFT_LEVEL}, {engine} engine", value, 15.0, "max_ms", why))
    hf, static = _by_c(levels_of(chat, "graph", HF)), (chat.get("offline") or {}).get("hf_static") or {}
    c = _level(list(hf.values()), TPUT_LEVEL)
    value = ratio(hf[c]["tokens_per_s"], static.get("tokens_per_s")) if c else None
    out.append(Target(f"graph HF engine (continuous batching) / static batch, tok/s at c={c or TPUT_LEVEL}", value, 0.9,
                      why_missing=_why(results, "chat", "offline", "hf_static")))
    return out


def embedding_targets(results: dict) -> list[Target]:
    emb = results.get("embeddings") or {}
    graph, raw, inf = emb.get("graph") or {}, emb.get("raw") or {}, emb.get("infinity") or {}
    n = emb.get("settings", {}).get("in_flight", 64)

    def sps(d: dict, k: str) -> float | None:
        return (d.get(k) or {}).get("sentences_per_s")

    return [
        Target(f"graph 16-sentence requests at {n} in flight / raw encode, sentences/s",
               ratio(sps(graph, "batch16"), raw.get("sentences_per_s")), 0.8,
               why_missing=_why(results, "embeddings", "raw") if not raw.get("sentences_per_s") else _why(results, "embeddings", "graph")),
        Target(f"graph / Infinity, single-sentence requests at {n} in flight, sentences/s",
               ratio(sps(graph, "single"), sps(inf, "single")), 1.0,
               why_missing=_why(results, "embeddings", "infinity") if not sps(inf, "single") else _why(results, "embeddings", "graph")),
    ]


def audio_targets(results: dict) -> list[Target]:
    audio = results.get("audio") or {}
    graph, inproc = audio.get("graph") or {}, audio.get("inprocess") or {}

    def rtf(d: dict, level: int) -> float | None:
        return (d.get(f"c{level}") or {}).get("real_time_factor")

    return [
        Target(f"speech to text at {level} file(s) in flight: graph / faster-whisper in-process, real-time factor",
               ratio(rtf(graph, level), rtf(inproc, level)), 0.9,
               why_missing=_why(results, "audio", "inprocess") if not rtf(inproc, level) else _why(results, "audio", "graph"))
        for level in (1, 4)
    ]


def _batch_paths(results: dict) -> tuple[dict, dict, dict]:
    """The batch part's chat and embeddings sub-parts, and the chat batch's online probe."""
    part = results.get("batch") or {}
    chat, emb = part.get("chat") or {}, part.get("embeddings") or {}
    return chat, emb, (chat.get("graph") or {}).get("online_c1") or {}


def batch_targets(results: dict) -> list[Target]:
    """Issue 15: the Batch API against vLLM's run_batch and raw encode, and online traffic beside it."""
    chat, emb, online = _batch_paths(results)
    graph, vllm = chat.get("graph") or {}, chat.get("vllm_run_batch") or {}
    idle, busy = online.get("idle") or {}, online.get("during_batch") or {}
    why_chat, why_emb = _why(results, "batch", "chat"), _why(results, "batch", "embeddings")
    refused = [d["rate_limited"] for d in (idle, busy) if "rate_limited" in d]
    return [
        Target("chat batch through `/v1/batches` / vLLM `run_batch` on the same file, output tok/s",
               ratio(graph.get("tokens_per_s"), vllm.get("tokens_per_s")), 0.9, why_missing=why_chat),
        Target("embeddings batch through `/v1/batches` / raw `SentenceTransformer.encode`, sentences/s",
               ratio((emb.get("graph") or {}).get("lines_per_s"), (emb.get("raw") or {}).get("sentences_per_s")), 0.8,
               why_missing=why_emb),
        Target("online c=1 chat TTFT p50 while the chat batch runs / idle", ratio(busy.get("ttft_p50_s"), idle.get("ttft_p50_s")),
               2.0, "max_ratio", why_chat if not online else "no online TTFT during the batch in this run"),
        Target("online requests refused with 429 while the chat batch runs (and before it)", sum(refused) if refused else None,
               0, "max_count", why_chat if not online else "no online probe in this run"),
    ]


def targets(results: dict) -> list[Target]:
    return chat_targets(results) + embedding_targets(results) + audio_targets(results) + batch_targets(results)


def _run_line(part: dict) -> str:
    quick = " **Quick smoke run (`--quick`): too few requests to be a benchmark.**" if part.get("settings", {}).get("quick") else ""
    mixed = ""
    if part.get("mixed_runs"):
        when = ", ".join(f"{k} {d}" for k, d in sorted(part.get("path_dates", {}).items()))
        mixed = f" Its paths come from different runs ({when or 'dates not recorded'}): compare their ratios with care."
    return f"Run {part.get('date', '?')} on {part.get('machine', '?')}: `{part.get('command', 'make bench')}`.{quick}{mixed}"


def _chat_rows(label: str, rows: list[dict]) -> list[list]:
    return [[label, r["concurrency"], r["tokens_per_s"], r["ttft_p50_s"], r["ttft_p99_s"], r["itl_p50_ms"], r["itl_p99_ms"], r["errors"]]
            for r in sorted(rows, key=lambda r: r["concurrency"])]


def _hop_key(hop: str) -> tuple[int, str]:
    for i, prefix in enumerate(HOP_ORDER):
        if hop.startswith(prefix):
            return i, hop
    return len(HOP_ORDER), hop


def hop_table(columns: list[tuple[str, dict | None]]) -> list[str]:
    """CPU ms per request of each hop (rows) in each measured run (columns), plus the total and
    the cores the hops kept busy on average."""
    present = [(name, run) for name, run in columns if run and run.get("cpu_ms_per_request")]
    if not present:
        return ["(no per-hop CPU figures in these results)"]
    hops = sorted({h for _, run in present for h in run["cpu_ms_per_request"] if h != "total"}, key=_hop_key)
    rows = [[hop, *[run["cpu_ms_per_request"].get(hop) for _, run in present]] for hop in hops]
    rows.append(["**all of them**", *[run["cpu_ms_per_request"]["total"] for _, run in present]])
    rows.append(["cores busy on average", *[fmt(sum(run["cpu_s"].values()) / run["wall_s"], 2) for _, run in present]])
    return table(["hop (CPU ms per request)", *[name for name, _ in present]], rows)


def render_chat(results: dict, plot: str | None, plot_note: str | None) -> list[str]:
    chat = results.get("chat")
    if not chat:
        return ["### Chat", "", "Not run yet: `make bench BENCH_ARGS='--only chat'`."]
    s = chat.get("settings", {})
    lines = ["### Chat", "", _run_line(chat), "",
             (f"Model SmolLM2-135M-Instruct, {s.get('dtype')}, {s.get('max_tokens')} new tokens per request "
              f"(ignore_eos), greedy, streamed; prompts fixed and seeded, a third of them ~500-token contexts; "
              f"{s.get('requests_per_level')} requests per level (at least the concurrency), so p99 is the slowest "
              "request or close to it."), ""]
    if plot:
        lines += [f"![output tok/s and p99 TTFT against concurrency]({plot})", ""]
    elif plot_note:
        lines += [f"(No plot: {plot_note}.)", ""]
    failures = [(name, _error(chat, *path)) for name, path in (
        ("graph", ("graph",)), ("vLLM's own server", ("vllm_server",)), ("in-process vLLM", ("inprocess", VLLM)),
        ("in-process HF", ("inprocess", HF)), ("offline", ("offline",)))]
    for name, err in failures:
        if err:
            lines += [f"**{name} failed:** {err}", ""]
    if (chat.get("graph") or {}).get("stop_problem"):
        lines += [f"**When the graph stopped:** {chat['graph']['stop_problem']}", ""]
    rows = (_chat_rows("graph, vLLM engine", levels_of(chat, "graph", VLLM))
            + _chat_rows("vLLM's own OpenAI server", levels_of(chat, "vllm_server", "smollm2"))
            + _chat_rows("in-process, vLLM engine", levels_of(chat, "inprocess", VLLM))
            + _chat_rows("graph, HF engine", levels_of(chat, "graph", HF))
            + _chat_rows("in-process, HF engine", levels_of(chat, "inprocess", HF)))
    lines += table(["path", "concurrency", "output tok/s", "TTFT p50 (s)", "TTFT p99 (s)", "ITL p50 (ms)", "ITL p99 (ms)", "errors"], rows)
    over = []
    for model, engine in ((VLLM, "vLLM"), (HF, "HF")):
        g, i = _by_c(levels_of(chat, "graph", model)), _by_c(levels_of(chat, "inprocess", model))
        for c in sorted(set(g) & set(i)):
            a, b = g[c]["ttft_p50_s"] * 1000, i[c]["ttft_p50_s"] * 1000
            over.append([engine, c, fmt(a, 0), fmt(b, 0), fmt(a - b, 0)])
    if over:
        lines += ["", "TTFT p50, the graph against the same engine in-process:", ""]
        lines += table(["engine", "concurrency", "graph (ms)", "in-process (ms)", "graph overhead (ms)"], over)
    offline = chat.get("offline") or {}
    done = [(label, offline[k]) for label, k in (("vLLM offline `LLM.generate`", "vllm_offline"), ("transformers static `generate` batch", "hf_static"))
            if isinstance(offline.get(k), dict) and "tokens_per_s" in offline[k]]
    if done:
        lines += ["", *table(["static batch baseline (in-process)", "prompts", "output tok/s"], [[label, o["prompts"], o["tokens_per_s"]] for label, o in done])]
    graph = chat.get("graph") or {}
    sixteen = [(m, graph[m + "/16"]) for m in (VLLM, HF) if m + "/16" in graph]
    if sixteen:
        lines += ["", "16 requests through the graph, one at a time vs all 16 together:", ""]
        lines += table(["model", "one at a time (tok/s)", "16 together (tok/s)", "speed-up"], [
            [m, s16["one_at_a_time"]["tokens_per_s"], s16["sixteen_together"]["tokens_per_s"],
             fmt(ratio(s16["sixteen_together"]["tokens_per_s"], s16["one_at_a_time"]["tokens_per_s"]), 1) + "x"]
            for m, s16 in sixteen])
    g_v, g_h, srv = levels_of(chat, "graph", VLLM), levels_of(chat, "graph", HF), levels_of(chat, "vllm_server", "smollm2")
    c = _level(g_v or srv or g_h, TPUT_LEVEL)
    if c:
        lines += ["", (f"CPU per request on each hop at c={c} (from `/proc/<pid>/stat` before and after the level; "
                       "vLLM's engine processes, and the HF replica with the engine inside it, do the model's work; the rest is serving):"), ""]
        lines += hop_table([(name, _by_c(rows).get(c)) for name, rows in
                            (("graph, vLLM engine", g_v), ("graph, HF engine", g_h), ("vLLM's own server", srv))])
    starts = [(label, (chat.get(k) or {}).get("start_to_healthy_s")) for label, k in (("the graph (`configs/engines-cpu.yaml`)", "graph"), ("vLLM's own server", "vllm_server"))]
    starts = [f"{label} {s} s" for label, s in starts if s is not None]
    if starts:
        lines += ["", "Start to healthy in this run: " + "; ".join(starts) + "."]
    return lines


_PATH_LABELS = {"graph": "default config", "vllm_server": "vLLM's own server",
                "vllm_server_batch": "vLLM's own server under SCHED_BATCH"}
_PATH_SHORT = {"graph": "graph", "vllm_server": "server", "vllm_server_batch": "server (SCHED_BATCH)"}


def _default_sequence(part: dict) -> list[tuple[int, str, list[dict]]]:
    """Each measured run of the default-config comparison as (place in the order, path, levels),
    in the order they ran."""
    seq = []
    for path in _PATH_LABELS:
        key = part.get("model") if path == "graph" else "smollm2"
        for run in (part.get(path) or {}).get("runs") or []:
            seq.append((run.get("position") or 0, path, run.get(key) or []))
    return sorted(seq, key=lambda item: item[0])


def _order_line(part: dict) -> list[str]:
    """The throughput of each run at the target's level, in the order they ran, and each
    neighbouring graph/server pair's ratio: how much the order moved the figure."""
    seq = [(path, _by_c(levels)) for _, path, levels in _default_sequence(part)]
    shared = set.intersection(*(set(rows) for _, rows in seq)) if seq else set()
    if not shared:
        return []
    c = _level([{"concurrency": c} for c in shared], TPUT_LEVEL)
    shown = [f"{_PATH_SHORT[path]} {fmt(rows[c]['tokens_per_s'], 1)}" for path, rows in seq]
    pairs = []
    for (p1, r1), (p2, r2) in zip(seq, seq[1:]):
        if p1 != p2 and "graph" in (p1, p2):
            g, v = (r1, r2) if p1 == "graph" else (r2, r1)
            pairs.append(fmt(ratio(g[c]["tokens_per_s"], v[c]["tokens_per_s"]), 2) + "x")
    return [f"Output tok/s at c={c} in the order run: {', '.join(shown)}; graph/server of each neighbouring pair: "
            f"{', '.join(pairs)}.", ""]


def render_default_config(results: dict, before: dict | None = None) -> list[str]:
    """The default config as ``make serve`` runs it against vLLM's own server (same run), and the
    recorded run from before the fast path, if given."""
    chat = results.get("chat") or {}
    part = chat.get("default_config")
    if not part:
        return ["### Chat: the default config against vLLM's own server", "",
                "Not run yet: `make bench BENCH_ARGS='--only chat-default'`."]
    lines = ["### Chat: the default config against vLLM's own server", "", _run_line(chat), ""]
    err = _error(chat, "default_config")
    if err:
        return lines + [f"**failed:** {err}"]
    order = part.get("order")
    described = (f"`serve_config.yaml` as `make serve` runs it (with `configs/serving.env`, under SCHED_BATCH), model "
                 f"{part.get('model')} in {part.get('dtype')}, {'and' if order else 'then'} vLLM's own OpenAI server on the "
                 "same folder, dtype and engine arguments; same load as above.")
    interleaved = part.get("interleaved")
    if (chat.get("settings") or {}).get("warm_level"):
        described += (f" Each server, freshly started, first ran one untimed level at c={max(chat['settings']['levels'])} "
                      "(a fresh server's first wide level runs 17-22% below its later ones, BENCHMARKS.md session 14).")
    inproc = (chat.get("inprocess") or {}).get(VLLM) or {}
    if inproc.get("levels"):
        described += (" The vLLM engine in-process (the TTFT target's baseline) got the same untimed level."
                      if inproc.get("warm_level") else
                      " The vLLM engine in-process (the TTFT target's baseline) measured its levels after one warm-up "
                      "request only, no wide level (a c=1 level right after a wide one ran slower, BENCHMARKS.md session 18).")
    if part.get("vllm_server_batch"):
        described += (" vLLM's server ran as its users start it, and again under SCHED_BATCH (`chrt --batch 0`), "
                      "as `make serve` starts Ray: the like-for-like pair.")
    if order and interleaved:
        rounds = part.get("rounds") or 1
        pattern = order[: len(order) // rounds]
        named = ", ".join(_PATH_LABELS[o] for o in pattern)
        described += (" Every path was started, warmed and frozen once, and all stayed up: each visit thawed one path "
                      "(SIGCONT to every process of its tree), ran the levels on it and froze it again (SIGSTOP), so the "
                      "measured path had the machine to itself and the visits of different paths were seconds apart. "
                      f"Visits in this order, {rounds} time{'s' if rounds > 1 else ''}: {named}. The \"mean\" rows (and "
                      "the target) average a path's visits; the numbered rows are the visits, by their place in the order.")
        described += (" **A Serve replica was replaced during the visits** (a health check timed out across a freeze?): "
                      "see the app's log." if part.get("replicas_replaced") else
                      " The app's Serve replicas were the same processes after the visits as before them.")
    elif order:
        named = ", ".join(_PATH_LABELS[o] for o in order)
        described += (f" Each path ran twice, each time freshly started, in this order: {named}. The \"mean\" rows (and "
                      "the target) average a path's runs; the numbered rows are the runs, by their place in the order.")
    lines += [described, ""]
    if order:
        lines += _order_line(part)
    mean = " (mean)" if order else ""
    runs = [(f"{_PATH_LABELS[path]}{mean}", _default_levels(chat, path)) for path in _PATH_LABELS
            if path != "vllm_server_batch" or part.get(path)]
    means = len(runs)
    if order:
        visit = "visit" if interleaved else "run"
        runs += [(f"{_PATH_LABELS[path]}, {visit} {position}", levels) for position, path, levels in _default_sequence(part)]
    earlier = [(f"before the fast path ({before.get('dtype')}): graph", _default_levels({"default_config": before}, "graph")),
               (f"before the fast path ({before.get('dtype')}): vLLM's own server", _default_levels({"default_config": before}, "vllm_server"))
               ] if before else []
    runs += earlier
    rows = [row for label, levels in runs for row in _chat_rows(label, levels)]
    lines += table(["path", "concurrency", "output tok/s", "TTFT p50 (s)", "TTFT p99 (s)", "ITL p50 (ms)", "ITL p99 (ms)", "errors"], rows)
    # an interleaved run's visits are too many columns: its CPU tables show each path's mean, and
    # a frozen path's hops there show what it spent while frozen (nothing, if it was)
    columns = runs[:means] + earlier if interleaved else runs
    for c in sorted({r["concurrency"] for r in runs[0][1]}):
        lines += ["", f"CPU per request on each hop at c={c}:", ""]
        lines += hop_table([(label, _by_c(levels).get(c)) for label, levels in columns])
    starts = [f"{label} {p['start_to_healthy_s']} s" for label, p in (("the default config", part.get("graph") or {}),
                                                                       ("vLLM's own server", part.get("vllm_server") or {}),
                                                                       ("vLLM's own server under SCHED_BATCH", part.get("vllm_server_batch") or {}))
              if p.get("start_to_healthy_s") is not None]
    if starts:
        which = " (the mean of each path's starts)" if order and not interleaved else ""
        lines += ["", f"Start to healthy in this run{which}: " + "; ".join(starts) + "."]
    return lines


def _section(results: dict, part: str, title: str) -> tuple[dict | None, list[str]]:
    """A part's results and its section's first lines: the title and the run line, or that it
    was not run."""
    found = results.get(part)
    if not found:
        return None, [f"### {title}", "", f"Not run yet: `make bench BENCH_ARGS='--only {part}'`."]
    return found, [f"### {title}", "", _run_line(found), ""]


def _failures(paths: list[tuple[str, dict]]) -> list[str]:
    return [line for name, part in paths if "error" in part for line in (f"**{name}: not measured.** {part['error']}", "")]


def render_embeddings(results: dict) -> list[str]:
    emb, lines = _section(results, "embeddings", "Embeddings")
    if emb is None:
        return lines
    s = emb.get("settings", {})
    lines += [(f"Model all-MiniLM-L6-v2 (`{s.get('model_path', '?')}`), the same folder for all three; one process each "
              f"(the graph runs one replica), torch threads {s.get('torch_threads')} in all"
              + (f" (the replica: {s['num_workers']} encoding workers sharing them)" if s.get("num_workers", 1) > 1 else "")
              + f", batch size {s.get('batch_size')}, "
              f"dtype {s.get('dtype', 'float32')}; "
              "sentences fixed and seeded, 6, 16 and 48 words in turn; the official `openai` client."), ""]
    graph, raw, inf = emb.get("graph") or {}, emb.get("raw") or {}, emb.get("infinity") or {}
    lines += _failures([("graph", graph), ("raw encode", raw), ("Infinity", inf)])
    rows = []
    for label, part in (("graph (`serve_config.yaml`)", graph), (f"Infinity ({inf.get('versions', '?')})", inf)):
        for key in ("single", "batch16"):
            r = part.get(key)
            if r:
                rows.append([label, r["sentences_per_request"], r["in_flight"], r["requests"], r["sentences_per_s"],
                             r["latency_p50_ms"], r["latency_p99_ms"], r["errors"]])
    if raw.get("sentences_per_s"):
        rows.append([f"raw `SentenceTransformer.encode`, batches of {raw['batch_size']}", "–", "–", "–",
                     raw["sentences_per_s"], "–", "–", "–"])
    if rows:
        lines += table(["path", "sentences/request", "in flight", "requests", "sentences/s", "latency p50 (ms)", "latency p99 (ms)", "errors"], rows)
    lines += ["", "CPU per request on each hop:", ""]
    lines += hop_table([("graph, 1 sentence", graph.get("single")), ("graph, 16 sentences", graph.get("batch16")),
                        ("Infinity, 1 sentence", inf.get("single")), ("Infinity, 16 sentences", inf.get("batch16"))])
    return lines


def render_audio(results: dict) -> list[str]:
    audio, lines = _section(results, "audio", "Speech to text")
    if audio is None:
        return lines
    s = audio.get("settings", {})
    lines += [(f"Model {s.get('model')} (`{s.get('source')}`), {s.get('compute_type')}, {s.get('cpu_threads')} CPU threads per "
              f"transcription, {s.get('num_workers')} workers, beam {s.get('beam_size')}; every request the same file "
              f"(`tests/fixtures/audio/{s.get('audio_file')}`, 31.5 s of speech); real-time factor = audio seconds / wall seconds."), ""]
    paths = [("graph (`serve_config.yaml`, openai client)", audio.get("graph") or {}),
             ("faster-whisper in-process", audio.get("inprocess") or {})]
    lines += _failures(paths)
    rows = []
    for label, part in paths:
        for level in s.get("levels", (1, 4)):
            r = part.get(f"c{level}")
            if r:
                rows.append([label, r["in_flight"], r["files"], r["real_time_factor"], r["latency_p50_s"], r["latency_max_s"], r["errors"]])
    if rows:
        lines += table(["path", "files in flight", "files", "real-time factor", "latency p50 (s)", "latency max (s)", "errors"], rows)
    return lines


def _lines_run(sub: dict, planned) -> int:
    """The lines the graph's batch had (a quick run has fewer than the settings say)."""
    graph = sub.get("graph") or {}
    return graph["lines"] + graph.get("failed", 0) if "lines" in graph else planned


def _warm_up(chat: dict) -> str:
    """How the chat batch's two sides were warmed (runs before session 16 took off a one-line run)."""
    warm = (chat.get("vllm_run_batch") or {}).get("warm_lines")
    if not warm:
        return "the graph on a fresh app, vLLM with its engine start (a one-line run) taken off"
    return (f"both on a warm engine: the graph after an untimed batch of {warm} other lines (one wave of the engine's seats), "
            f"vLLM's as the run of those {warm} lines and the file together less the run of those lines alone")


def _batch_rows(chat: dict, emb: dict) -> list[list]:
    graph = chat.get("graph") or {}
    runs = (("graph `/v1/batches`, chat: the warm-up lines before it (untimed in the target)", graph.get("warm_up")),
            ("graph `/v1/batches`, chat", graph),
            ("graph `/v1/batches`, chat, again with the online requests below beside it", graph.get("with_online_probe")),
            ("vLLM `run_batch`, chat", chat.get("vllm_run_batch")),
            ("graph `/v1/batches`, embeddings", emb.get("graph")))
    rows = []
    for label, r in runs:
        if isinstance(r, dict) and "wall_s" in r:
            # the warm-up row records no rate of its own: lines over its wall time
            per_s = r.get("lines_per_s") or (round(r["lines"] / r["wall_s"], 2) if r.get("lines") else None)
            rows.append([label, r.get("lines"), r.get("failed", "–"), r["wall_s"], per_s, r.get("tokens_per_s")])
    raw = emb.get("raw") or {}
    if raw.get("sentences_per_s"):
        rows.append([f"raw `SentenceTransformer.encode`, batches of {raw.get('batch_size')}", raw.get("sentences"), "–",
                     raw.get("wall_s"), raw["sentences_per_s"], "–"])
    return rows


def render_batch(results: dict) -> list[str]:
    part, lines = _section(results, "batch", "Batch API")
    if part is None:
        return lines
    s, (chat, emb, online) = part.get("settings", {}), _batch_paths(results)
    lines += [(f"{_lines_run(chat, s.get('chat_lines'))} chat lines ({s.get('max_tokens')} new tokens each, greedy, ignore_eos) as one batch "
               f"through `/v1/batches` on `serve_config.yaml` (`batch.concurrency` {s.get('concurrency')}), from `batches.create` "
               "to `completed`, against vLLM's `python -m vllm.entrypoints.openai.run_batch` on the same file, model folder and "
               f"engine arguments, {_warm_up(chat)}; {_lines_run(emb, s.get('sentences'))} sentences, one per line, as "
               "an embeddings batch against raw `SentenceTransformer.encode` (`benchmarks/batch.py`)."), ""]
    lines += _failures([("chat batch", chat), ("embeddings batch", emb)])
    rows = _batch_rows(chat, emb)
    if rows:
        lines += table(["path", "lines", "failed lines", "wall (s)", "lines/s", "output tok/s"], rows)
    probes = [(label, online[key]) for label, key in (("idle, before the batch", "idle"), ("while the chat batch runs", "during_batch"))
              if isinstance(online.get(key), dict)]
    if probes:
        when = (" The graph ran the file twice on one app: alone (its throughput row), then again with these requests "
                "beside it, the idle ones just before it." if (chat.get("graph") or {}).get("with_online_probe") else "")
        lines += ["", "Online streamed chat requests at c=1, one after another (time to first token, and 429s)." + when, ""]
        lines += table(["online c=1 chat", "requests", "TTFT p50 (s)", "TTFT max (s)", "429s"],
                       [[label, p.get("n"), p.get("ttft_p50_s"), p.get("ttft_max_s"), p.get("rate_limited")] for label, p in probes])
    return lines


def render_coldstart(results: dict) -> list[str]:
    cold = results.get("coldstart")
    if not cold:
        return ["### Cold start", "", "Not run yet: `make bench BENCH_ARGS='--only coldstart'`."]
    if "error" in cold:
        return ["### Cold start", "", _run_line(cold), "", f"**failed:** {cold['error']}"]
    problem = [f"**When the app stopped:** {cold['stop_problem']}", ""] if cold.get("stop_problem") else []
    return ["### Cold start", "", _run_line(cold), "", *problem,
            (f"Wall time from `serve run {cold['config']}` (Ray not running, models already prepared) to the first "
             "successful answer of each kind, retried every 0.25 s:"), "",
            *table(["`/health` ok (s)", "first chat answer (s)", "first embedding (s)", "all answering (s)"],
                   [[cold["to_health_ok_s"], cold["to_first_chat_s"], cold["to_first_embedding_s"], cold["to_all_answering_s"]]])]


def render(results: dict, plot: str | None = None, plot_note: str | None = None, before: dict | None = None) -> str:
    """The generated section (markers included); ``before``: the default config's recorded run
    from before the fast path, shown beside this run's."""
    lines = [BEGIN, "<!-- written by benchmarks/report.py from benchmarks/results/bench.json: edit the code, not this -->", "",
             "### Targets", "",
             "Each ratio compares paths measured in the same run of the same part, on the same machine.", ""]
    lines += table(["target", "measured", "asked", "verdict"],
                   [[t.name, t.shown_value(), t.shown_target(), t.verdict()] for t in targets(results)])
    lines += ["", *render_default_config(results, before), "", *render_chat(results, plot, plot_note), "",
              *render_embeddings(results), "", *render_audio(results), "", *render_batch(results), "",
              *render_coldstart(results), END]
    return "\n".join(lines)


def replace_section(text: str, section: str) -> str:
    """``text`` with its generated section (new or old markers) replaced; appended if it has none."""
    for begin, end in ((BEGIN, END), OLD_MARKERS):
        if begin in text and end in text:
            start, stop = text.index(begin), text.index(end) + len(end)
            return text[:start] + section + text[stop:]
    return text.rstrip("\n") + "\n\n" + section + "\n"


def write_report(results: dict, doc: Path = REPO / "BENCHMARKS.md", plot: Path = RESULTS / "chat.png") -> None:
    plot_note = plot_chat(results["chat"], plot) if results.get("chat") else "the chat part was not run"
    link = os.path.relpath(plot, doc.parent) if plot_note is None else None
    text = doc.read_text() if doc.exists() else "# Benchmarks\n"
    before = json.loads(BEFORE_FAST_PATH.read_text()) if BEFORE_FAST_PATH.exists() else None
    doc.write_text(replace_section(text, render(results, link, plot_note, before)))
    print(f"wrote {doc}" + (f" and {plot}" if link else f" (no plot: {plot_note})"))


if __name__ == "__main__":
    write_report(json.loads((RESULTS / "bench.json").read_text()))
