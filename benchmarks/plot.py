"""The chat figure of the report: output tok/s and p99 TTFT against concurrency, one line per path."""

from __future__ import annotations

from pathlib import Path

# (label, where in the chat results, line style): the vLLM engine's three paths, then the HF engine's
SERIES = (
    ("graph, vLLM engine", ("graph", "smollm2-vllm"), "-o"),
    ("vLLM's own OpenAI server", ("vllm_server", "smollm2"), "--s"),
    ("in-process, vLLM engine", ("inprocess", "smollm2-vllm"), ":^"),
    ("graph, HF engine", ("graph", "smollm2-hf"), "-D"),
    ("in-process, HF engine", ("inprocess", "smollm2-hf"), ":v"),
)


def levels_of(chat: dict, part: str, key: str) -> list[dict]:
    """The per-concurrency results of one path ([] if it was not measured or failed)."""
    found = (chat.get(part) or {}).get(key)
    if isinstance(found, dict):  # in-process results carry their levels under "levels"
        found = found.get("levels")
    return found if isinstance(found, list) else []


def plot_chat(chat: dict, path: Path) -> str | None:
    """Write the PNG; None when written, else why not (the report says so)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        return "matplotlib is not installed (make bench installs benchmarks/requirements.txt)"
    fig, (tput, ttft) = plt.subplots(1, 2, figsize=(11, 4.2))
    drawn, levels = 0, set()
    for label, (part, key), style in SERIES:
        rows = sorted(levels_of(chat, part, key), key=lambda r: r["concurrency"])
        if not rows:
            continue
        c = [r["concurrency"] for r in rows]
        levels.update(c)
        tput.plot(c, [r["tokens_per_s"] for r in rows], style, label=label)
        ttft.plot(c, [r["ttft_p99_s"] for r in rows], style, label=label)
        drawn += 1
    if not drawn:
        plt.close(fig)
        return "no chat results to plot"
    for ax, title, unit in ((tput, "Output tokens/s", "tok/s"), (ttft, "Time to first token, p99", "seconds")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted(levels))
        ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("concurrent streams")
        ax.set_ylabel(unit)
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
    ttft.set_yscale("log")
    plain = matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}")
    ttft.yaxis.set_major_formatter(plain)
    ttft.yaxis.set_minor_formatter(plain)
    tput.legend(fontsize=8)
    fig.suptitle(f"Chat, {chat.get('settings', {}).get('max_tokens', '?')} new tokens per request, {chat.get('date', '')}", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None
