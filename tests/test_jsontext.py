"""The server's one JSON encoder writes what the standard library writes (compact, UTF-8), faster."""

from __future__ import annotations

import json
import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from deployments import jsontext, sse
from deployments.routes.common import JSONBody

def json_values(scalars):
    return st.recursive(
        scalars,
        lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(), children, max_size=5),
        max_leaves=30,
    )


NON_FLOATS = st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text()


def stdlib(value) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


@settings(max_examples=300, deadline=None)
@given(json_values(NON_FLOATS))
def test_same_text_as_the_standard_library(value):
    assert jsontext.dumps_str(value) == stdlib(value)


@settings(max_examples=300, deadline=None)
@given(json_values(NON_FLOATS | st.floats(allow_nan=False)))
def test_values_read_back_exactly(value):
    # floats: the shortest text that reads back to the same float, as Python writes it, but for
    # the exponent's spelling (1e-06 is 1e-6 here)
    assert json.loads(jsontext.dumps(value)) == value


def test_embedding_rows_round_trip_exactly():
    rows = np.random.default_rng(0).standard_normal((8, 384)).astype(np.float32)
    body = {"object": "list", "data": [{"object": "embedding", "index": i, "embedding": r.tolist()} for i, r in enumerate(rows)]}
    text = jsontext.dumps(body)
    back = np.array([d["embedding"] for d in json.loads(text)["data"]], dtype=np.float32)
    assert np.array_equal(back, rows)  # every float32 value survives


def test_non_finite_floats_as_the_standard_library_writes_them():
    # (a logprob can be -inf; Python's json and the openai client read these back)
    value = {"a": -math.inf, "b": math.inf}
    assert jsontext.dumps_str(value) == stdlib(value) == '{"a":-Infinity,"b":Infinity}'
    assert math.isnan(json.loads(jsontext.dumps(math.nan)))


def test_responses_and_sse_events_use_it():
    payload = {"choices": [{"delta": {"content": "Paris é \u2028"}}], "n": 1.5}
    assert JSONBody(payload).body == jsontext.dumps(payload)
    assert sse.event(payload) == f"data: {stdlib(payload)}\n\n"
    assert sse.data_payloads(sse.event(payload)) == [payload]
