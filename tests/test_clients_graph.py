"""The client compatibility matrix (docs/clients.md): each row drives the real client package
against the running graph (``serve_config.yaml``: vLLM SmolLM2-135M and MiniLM), configured the
way that client's users configure it.

The official Python client's basics (sync chat, streaming, ``with_raw_response``, embeddings,
``NotFoundError``, ``BadRequestError``) are in ``tests/test_graph.py``; its ``AuthenticationError``
and ``RateLimitError`` in ``tests/test_hardening_graph.py``; the browser row in
``tests/test_clients_browser_graph.py``. The rows that need ``tools`` / ``response_format``
(LangChain's tool binding and structured output, the agent loop) come last in this file.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import numpy as np
import openai
import pytest

from tests.conftest import REPO
from tests.vectors import assert_same_vectors

pytestmark = pytest.mark.graph

CHAT_MODEL = "smollm2-135m-instruct"
EMBED_MODEL = "all-minilm-l6-v2"
QUESTION = "What is the capital of France?"
FRANCE = [{"role": "user", "content": QUESTION}]
WORDS = ["king", "queen", "carburetor"]
NODE_DIR = REPO / "tests" / "clients" / "node"
SGPT = REPO / "tests" / "clients" / "sgpt" / ".venv" / "bin" / "sgpt"
OPENAI028 = REPO / "tests" / "clients" / "openai028"


@pytest.fixture(scope="module")
def reference(client):
    """What the official Python client gets at temperature 0: the other clients must match it."""
    answer = client.chat.completions.create(model=CHAT_MODEL, messages=FRANCE, temperature=0, max_tokens=40)
    vectors = client.embeddings.create(model=EMBED_MODEL, input=WORDS, encoding_format="float")
    assert "Paris" in answer.choices[0].message.content
    return answer.choices[0].message.content, np.array([d.embedding for d in vectors.data])


def assert_semantic(vectors) -> None:
    """king is nearer to queen than to carburetor: real MiniLM vectors, in order."""
    king, queen, carburetor = (np.asarray(v, dtype=np.float64) for v in vectors)
    assert king.shape == (384,)
    assert king @ queen > king @ carburetor


# --------------------------------------------------------------------------- openai-python
def test_openai_python_configured_by_environment(graph, reference, monkeypatch):
    """``OPENAI_BASE_URL`` + ``OPENAI_API_KEY`` is all the client needs; ``OPENAI_API_BASE`` (the
    pre-1.0 habit) is not read by it any more."""
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.setenv("OPENAI_API_BASE", graph.base_url + "/v1")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-anything")
    assert "api.openai.com" in str(openai.OpenAI().base_url), "openai>=1 ignores OPENAI_API_BASE"
    monkeypatch.setenv("OPENAI_BASE_URL", graph.base_url + "/v1")
    client = openai.OpenAI(max_retries=0)
    assert str(client.base_url) == graph.base_url + "/v1/"
    answer = client.chat.completions.create(model=CHAT_MODEL, messages=FRANCE, temperature=0, max_tokens=40)
    assert answer.choices[0].message.content == reference[0]


async def test_openai_python_async_stream_and_embeddings(aclient, reference):
    stream = await aclient.chat.completions.create(
        model=CHAT_MODEL, messages=FRANCE, temperature=0, max_tokens=40, stream=True, stream_options={"include_usage": True}
    )
    chunks = [chunk async for chunk in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == reference[0]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    raw = await aclient.embeddings.with_raw_response.create(model=EMBED_MODEL, input=WORDS)
    assert raw.http_request.read() and json.loads(raw.http_request.read())["encoding_format"] == "base64"
    assert raw.headers["content-type"] == "application/json"
    vectors = np.array([d.embedding for d in raw.parse().data])
    assert np.allclose(vectors, reference[1], atol=1e-5)
    assert_semantic(vectors)


def test_openai_python_moderations_is_a_clear_not_found(client):
    with pytest.raises(openai.NotFoundError) as e:
        client.moderations.create(input="I want to hurt someone.")
    assert e.value.body["code"] == "moderations_not_served" and "no moderation model" in e.value.message


# --------------------------------------------------------------------------- openai-node
def test_openai_node(graph, reference):
    if not (NODE_DIR / "node_modules" / "openai").is_dir():
        pytest.skip("openai-node is not installed: run `make clients` (needs node and npm)")
    pinned = json.loads((NODE_DIR / "package.json").read_text())["dependencies"]["openai"]
    installed = json.loads((NODE_DIR / "node_modules" / "openai" / "package.json").read_text())["version"]
    assert installed == pinned, "node_modules is stale: run `make clients`"
    env = {
        **os.environ, "OPENAI_BASE_URL": graph.base_url + "/v1", "OPENAI_API_KEY": "sk-anything",
        "CHAT_MODEL": CHAT_MODEL, "EMBED_MODEL": EMBED_MODEL,
    }
    run = subprocess.run(["node", "check.mjs"], cwd=NODE_DIR, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    assert out["chat"]["content"] == reference[0] and out["chat"]["finish_reason"] == "stop"
    assert out["stream"]["text"] == reference[0] and out["stream"]["finish_reason"] == "stop"
    assert out["stream"]["usage"]["completion_tokens"] == out["chat"]["usage"]["completion_tokens"]
    assert out["embeddings"]["indexes"] == [0, 1, 2]  # asked for as base64, decoded by the client
    assert np.allclose(out["embeddings"]["vectors"], reference[1], atol=1e-5)
    assert out["not_found"] == {
        "class": "NotFoundError", "is_not_found": True, "status": 404, "code": "model_not_found",
        "param": "model", "type": "invalid_request_error",
    }
    assert out["bad_request"] == {"class": "BadRequestError", "is_bad_request": True, "status": 400, "param": "temperature"}


# --------------------------------------------------------------------------- LangChain
@pytest.fixture(scope="module")
def chat_model(graph):
    from langchain_openai import ChatOpenAI

    return ChatOpenAI(
        model=CHAT_MODEL, base_url=graph.base_url + "/v1", api_key="sk-anything", temperature=0, max_tokens=40, max_retries=0
    )


def test_langchain_chat_invoke_and_stream(chat_model, reference):
    message = chat_model.invoke(QUESTION)
    assert message.content == reference[0]
    assert message.response_metadata["finish_reason"] == "stop"
    assert message.usage_metadata["output_tokens"] > 0
    streamed = "".join(chunk.content for chunk in chat_model.stream(QUESTION))
    assert streamed == reference[0]


def test_langchain_configured_by_openai_api_base(graph, reference, monkeypatch):
    """LangChain reads ``OPENAI_API_BASE`` (then the SDK's ``OPENAI_BASE_URL``)."""
    from langchain_openai import ChatOpenAI

    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.setenv("OPENAI_API_BASE", graph.base_url + "/v1")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-anything")
    message = ChatOpenAI(model=CHAT_MODEL, temperature=0, max_tokens=40, max_retries=0).invoke(QUESTION)
    assert message.content == reference[0]


def test_langchain_embeddings_send_text(graph, reference):
    """``check_embedding_ctx_length=False``: LangChain sends the texts. By default it would first
    tokenize them with tiktoken (whose encoding files are downloaded at run time, which fails
    offline) and send OpenAI token ids, which mean nothing to another model's tokenizer."""
    from langchain_openai import OpenAIEmbeddings

    embeddings = OpenAIEmbeddings(
        model=EMBED_MODEL, base_url=graph.base_url + "/v1", api_key="sk-anything", check_embedding_ctx_length=False, max_retries=0
    )
    vectors = np.array(embeddings.embed_documents(WORDS))
    assert np.allclose(vectors, reference[1], atol=1e-5)
    dtype = openai.OpenAI(base_url=graph.base_url + "/v1", api_key="sk-anything").models.retrieve(EMBED_MODEL).model_extra["dtype"]
    assert_same_vectors(embeddings.embed_query("king"), reference[1][0], dtype)  # alone, then among WORDS


# --------------------------------------------------------------------------- shell_gpt
@pytest.fixture()
def sgpt(graph, tmp_path):
    """``sgpt`` in a fresh HOME whose ``~/.config/shell_gpt/.sgptrc`` points at the server."""
    if not SGPT.exists():
        pytest.skip("shell_gpt is not installed: run `make clients`")
    config = tmp_path / ".config" / "shell_gpt"
    config.mkdir(parents=True)
    (config / ".sgptrc").write_text(
        f"OPENAI_API_KEY=sk-anything\nAPI_BASE_URL={graph.base_url}/v1\nDEFAULT_MODEL={CHAT_MODEL}\n"
        f"CACHE_PATH={tmp_path}/cache\nCHAT_CACHE_PATH={tmp_path}/chat_cache\nREQUEST_TIMEOUT=180\n"
        "PRETTIFY_MARKDOWN=false\nSHELL_INTERACTION=false\n"
    )
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "LANG": "C.UTF-8"}  # nothing else leaks in

    def run(*args: str) -> str:
        done = subprocess.run([str(SGPT), *args], env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "Traceback" not in done.stderr, done.stderr
        return done.stdout

    def role(name: str) -> str:
        return json.loads((config / "roles" / f"{name}.json").read_text())["role"]

    return run, role


def test_shell_gpt_one_shot_and_shell_command(sgpt, client):
    """sgpt streams the answer to its exact prompt: the same messages through the official client
    at temperature 0 give the same text."""
    run, role = sgpt

    def expected(role_name: str, prompt: str) -> str:
        messages = [{"role": "system", "content": role(role_name)}, {"role": "user", "content": prompt}]
        reply = client.chat.completions.create(model=CHAT_MODEL, messages=messages, temperature=0, top_p=1)
        return reply.choices[0].message.content

    answer = run("--no-cache", QUESTION)
    assert "Paris" in answer
    assert answer == expected("ShellGPT", QUESTION) + "\n"
    command_request = "list all files in the current folder, hidden ones too"
    command = run("--no-cache", "--shell", "--no-interaction", command_request)
    assert command.strip() and command == expected("Shell Command Generator", command_request) + "\n"


def test_shell_gpt_chat_session_sends_the_history(sgpt, client):
    """``--chat <id>``: the second turn carries the first (system, user, assistant, user)."""
    run, role = sgpt
    first_prompt, second_prompt = "My name is Ada. Say hello to me.", "What is my name?"
    first = run("--no-cache", "--chat", "matrix", first_prompt)
    second = run("--no-cache", "--chat", "matrix", second_prompt)
    messages = [
        {"role": "system", "content": role("ShellGPT")},
        {"role": "user", "content": first_prompt},
        {"role": "assistant", "content": first.removesuffix("\n")},
        {"role": "user", "content": second_prompt},
    ]
    reply = client.chat.completions.create(model=CHAT_MODEL, messages=messages, temperature=0, top_p=1)
    assert first.strip() and second == reply.choices[0].message.content + "\n"


# --------------------------------------------------------------------------- LiteLLM
@pytest.fixture(scope="module")
def litellm_module():
    """LiteLLM imported offline: ``LITELLM_LOCAL_MODEL_COST_MAP=True`` keeps it from fetching its
    model cost map at import. Every host it looks up here must be loopback."""
    if "litellm" in sys.modules:
        pytest.fail("litellm was imported before this fixture; the import-time check would be vacuous")
    lookups: list[str] = []
    real = socket.getaddrinfo

    def spy(host, *args, **kwargs):
        lookups.append(host)
        return real(host, *args, **kwargs)

    saved = {k: os.environ.get(k) for k in ("LITELLM_LOCAL_MODEL_COST_MAP", "TIKTOKEN_CACHE_DIR")}
    os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
    socket.getaddrinfo = spy
    try:
        import litellm

        litellm.suppress_debug_info = True
        yield litellm, lookups
    finally:
        socket.getaddrinfo = real
        for k, v in saved.items():  # litellm points TIKTOKEN_CACHE_DIR at its own copy on import
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def test_litellm_completion_stream_and_embedding(litellm_module, graph, reference):
    litellm, lookups = litellm_module
    base = dict(api_base=graph.base_url + "/v1", api_key="sk-anything")
    reply = litellm.completion(model=f"openai/{CHAT_MODEL}", messages=FRANCE, temperature=0, max_tokens=40, **base)
    assert reply.choices[0].message.content == reference[0] and reply.choices[0].finish_reason == "stop"
    assert reply.usage.completion_tokens > 0
    stream = litellm.completion(model=f"openai/{CHAT_MODEL}", messages=FRANCE, temperature=0, max_tokens=40, stream=True, **base)
    assert "".join(c.choices[0].delta.content or "" for c in stream) == reference[0]
    vectors = litellm.embedding(model=f"openai/{EMBED_MODEL}", input=WORDS, **base).data
    assert np.allclose([v["embedding"] for v in vectors], reference[1], atol=1e-5)
    with pytest.raises(litellm.NotFoundError) as e:
        litellm.completion(model="openai/no-such-model", messages=FRANCE, num_retries=0, **base)
    assert e.value.status_code == 404
    assert set(lookups) <= {"127.0.0.1", "localhost"}, f"LiteLLM reached for the network: {set(lookups)}"


# --------------------------------------------------------------------------- tools / response_format
# These rows need tool calling and structured output (issue #5); they come last.
def test_langchain_tool_binding_round_trip(chat_model):
    from langchain_core.messages import HumanMessage, ToolMessage
    from langchain_core.tools import tool

    @tool
    def get_weather(city: str) -> str:
        """Get the current weather in a city."""
        return f"Sunny and 21 C in {city}."

    bound = chat_model.bind_tools([get_weather], tool_choice="get_weather")
    question = HumanMessage("What is the weather like in Paris?")
    call_message = bound.invoke([question])
    assert len(call_message.tool_calls) >= 1, call_message
    call = call_message.tool_calls[0]
    assert call["name"] == "get_weather" and isinstance(call["args"]["city"], str) and call["id"]
    result = ToolMessage(get_weather.invoke(call["args"]), tool_call_id=call["id"])
    final = chat_model.invoke([question, call_message, result])
    assert final.content.strip() and not final.tool_calls


def test_langchain_structured_output(graph):
    from langchain_openai import ChatOpenAI
    from pydantic import BaseModel

    class Capital(BaseModel):
        country: str
        city: str

    llm = ChatOpenAI(
        model=CHAT_MODEL, base_url=graph.base_url + "/v1", api_key="sk-anything", temperature=0, max_tokens=200, max_retries=0
    )
    answer = llm.with_structured_output(Capital, method="json_schema", strict=True).invoke(QUESTION)
    assert isinstance(answer, Capital) and answer.city.strip() and answer.country.strip()
    # json_mode promises a JSON object, not its keys: check what the protocol guarantees
    as_json = llm.with_structured_output(Capital, method="json_mode", include_raw=True).invoke(
        QUESTION + ' Answer in JSON with the keys "country" and "city".'
    )
    assert as_json["raw"].response_metadata["finish_reason"] == "stop"
    assert isinstance(json.loads(as_json["raw"].content), dict)


def test_agent_loop_with_memory_json_actions_and_tool_calls(client):
    from tests.clients.agent import Agent, Memory

    memory = Memory(client, EMBED_MODEL)
    memory.add("The user's cat is called Biscuit.", "The team meeting is on Tuesday at 10am.", "Paris is the capital of France.")
    assert memory.search("What is my cat's name?", k=1) == ["The user's cat is called Biscuit."]
    assert memory.search("When do we meet?", k=1) == ["The team meeting is on Tuesday at 10am."]

    agent = Agent(client, CHAT_MODEL, memory, goal="Find out what the user's cat is called and report it.")
    for _ in range(3):
        step = agent.json_step()
        if step.command == "finish":
            break
    messages: list[dict] = []
    for _ in range(3):
        step = agent.tool_step(messages)
        if step.command == "finish":
            break
    assert len(agent.steps) >= 2 and all(s.command in ("remember", "recall", "finish") for s in agent.steps)
    assert len(memory.texts) == 3 + sum(s.command == "remember" for s in agent.steps)


def test_openai_028_chat_stream_and_deprecated_functions(graph, client, reference, tmp_path):
    """The pre-1.0 client (``openai.ChatCompletion``, ``OPENAI_API_BASE``) in its own venv:
    chat and streaming as the official client gets them, and the deprecated function loop: a
    forced ``function_call`` answered as ``message.function_call`` (streamed as
    ``delta.function_call``) with arguments that follow the schema, then the function's result
    as a ``role: "function"`` message. Each answer is the one today's client gets for the same
    conversation in the tools form."""
    python = OPENAI028 / ".venv" / "bin" / "python"
    if not python.exists():
        pytest.skip("openai 0.28.1 is not installed in its venv: run `make clients` (tests/clients/openai028)")
    env = {
        "PATH": os.environ["PATH"], "HOME": str(tmp_path), "LANG": "C.UTF-8",
        "OPENAI_API_BASE": graph.base_url + "/v1", "OPENAI_API_KEY": "sk-anything", "CHAT_MODEL": CHAT_MODEL,
    }
    run = subprocess.run([str(python), "check.py"], cwd=OPENAI028, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    assert out["version"] == "0.28.1" and out["api_base"] == graph.base_url + "/v1"
    assert out["chat"] == {"content": reference[0], "finish_reason": "stop"}
    assert out["stream"] == {"text": reference[0], "finish_reason": "stop"}

    import jsonschema

    weather, functions, result = (out["asked"][k] for k in ("messages", "functions", "result"))
    tools = [{"type": "function", "function": f} for f in functions]
    today = dict(model=CHAT_MODEL, temperature=0, tools=tools, parallel_tool_calls=False)
    forced = client.chat.completions.create(
        messages=weather, tool_choice={"type": "function", "function": {"name": "get_weather"}}, max_tokens=60, **today
    ).choices[0].message
    message = out["function_call"]["message"]
    assert out["function_call"]["finish_reason"] == "function_call" and "tool_calls" not in message
    assert message["function_call"] == {"name": "get_weather", "arguments": forced.tool_calls[0].function.arguments}
    jsonschema.validate(json.loads(message["function_call"]["arguments"]), functions[0]["parameters"])
    streamed = out["function_call_stream"]
    assert {k: streamed[k] for k in ("name", "arguments")} == message["function_call"]
    assert streamed["finish_reason"] == "function_call"
    assert "function_call" in streamed["delta_keys"] and "tool_calls" not in streamed["delta_keys"]

    call = {"id": "call_1", "type": "function", "function": message["function_call"]}
    history = weather + [{"role": "assistant", "content": None, "tool_calls": [call]},
                         {"role": "tool", "tool_call_id": "call_1", "content": result["content"]}]
    after = client.chat.completions.create(messages=history, max_tokens=40, **today).choices[0]
    answer = out["result"]["message"]
    assert answer.get("content") == after.message.content
    if after.message.tool_calls:  # the model may call again: then in the deprecated form
        assert out["result"]["finish_reason"] == "function_call"
        assert answer["function_call"] == after.message.tool_calls[0].function.model_dump()
    else:
        assert out["result"]["finish_reason"] == after.finish_reason and answer["content"].strip()
    assert out["bad_function_call"] == {"class": "InvalidRequestError", "status": 400, "param": "function_call"}
