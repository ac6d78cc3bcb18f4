"""Drives the pre-1.0 ``openai`` package (0.28.1) against a running server and prints what it got
as one JSON object on stdout; tests/test_clients_graph.py makes the assertions.

Run with the venv of this folder (``make clients``). Configured the way its users configure it:
``OPENAI_API_BASE`` and ``OPENAI_API_KEY`` in the environment; CHAT_MODEL names the served model.
The function round trip is the loop of that era's clients: ``functions`` with a forced
``function_call``, the returned message appended as it came, then the function's result as a
``role: "function"`` message.
"""

import json
import os

import openai

MODEL = os.environ["CHAT_MODEL"]
FRANCE = [{"role": "user", "content": "What is the capital of France?"}]
WEATHER = [{"role": "user", "content": "What is the weather like in Paris?"}]
FUNCTIONS = [
    {
        "name": "get_weather",
        "description": "Get the current weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    }
]
FORCED = {"name": "get_weather"}
RESULT = {"role": "function", "name": "get_weather", "content": "Sunny and 21 C in Paris."}


def create(**kwargs):
    return openai.ChatCompletion.create(model=MODEL, temperature=0, request_timeout=180, **kwargs)


out = {
    "version": openai.version.VERSION,
    "api_base": openai.api_base,
    "asked": {"messages": WEATHER, "functions": FUNCTIONS, "result": RESULT},  # for the test's own requests
}

chat = create(messages=FRANCE, max_tokens=40)
out["chat"] = {"content": chat.choices[0].message.content, "finish_reason": chat.choices[0].finish_reason}

text, finish = "", None
for chunk in create(messages=FRANCE, max_tokens=40, stream=True):
    text += chunk.choices[0].delta.get("content") or ""
    finish = chunk.choices[0].finish_reason or finish
out["stream"] = {"text": text, "finish_reason": finish}

called = create(messages=WEATHER, functions=FUNCTIONS, function_call=FORCED, max_tokens=60)
message = called.choices[0].message
out["function_call"] = {"message": message.to_dict_recursive(), "finish_reason": called.choices[0].finish_reason}

name, arguments, finish, keys = "", "", None, set()
for chunk in create(messages=WEATHER, functions=FUNCTIONS, function_call=FORCED, max_tokens=60, stream=True):
    delta = chunk.choices[0].delta
    keys.update(delta.keys())
    call = delta.get("function_call")
    if call:
        name += call.get("name") or ""
        arguments += call.get("arguments") or ""
    finish = chunk.choices[0].finish_reason or finish
out["function_call_stream"] = {"name": name, "arguments": arguments, "finish_reason": finish, "delta_keys": sorted(keys)}

final = create(messages=WEATHER + [message, RESULT], functions=FUNCTIONS, max_tokens=40)
out["result"] = {"message": final.choices[0].message.to_dict_recursive(), "finish_reason": final.choices[0].finish_reason}

try:
    create(messages=WEATHER, functions=FUNCTIONS, function_call={"name": "launch_rockets"})
    out["bad_function_call"] = None
except openai.error.InvalidRequestError as err:
    out["bad_function_call"] = {"class": type(err).__name__, "status": err.http_status, "param": err.param}

print(json.dumps(out))
