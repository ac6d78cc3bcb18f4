"""Unit tests of the batch sampler (transformers engine): each parameter changes what it should."""

from __future__ import annotations

import math

import pytest
import torch

from deployments.engines.base import SamplingParams
from deployments.engines.sampling import RowState, sample

VOCAB = 50
EOS = 0


def logits_for(*rows: list[float]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


def peaked(top: int, second: int | None = None) -> list[float]:
    row = [0.0] * VOCAB
    row[top] = 5.0
    if second is not None:
        row[second] = 4.5
    return row


def state(output=(), prompt=(1, 2), **params) -> RowState:
    row = RowState.create(SamplingParams(max_tokens=10, **params), list(prompt))
    row.output_ids = list(output)
    return row


def test_greedy_picks_argmax_per_row():
    tokens, _ = sample(logits_for(peaked(3), peaked(7)), [state(temperature=0), state(temperature=0)], [EOS])
    assert tokens == [3, 7]


def test_logit_bias_forces_a_token():
    tokens, _ = sample(logits_for(peaked(3)), [state(temperature=0, logit_bias={11: 100.0})], [EOS])
    assert tokens == [11]


def test_logit_bias_minus_100_bans_a_token():
    tokens, _ = sample(logits_for(peaked(3, second=4)), [state(temperature=0, logit_bias={3: -100.0})], [EOS])
    assert tokens == [4]


def test_frequency_and_presence_penalties_follow_openai():
    # token 3 leads by 0.5; having appeared twice, a frequency penalty of 0.3 (0.6 total) flips it
    row = peaked(3, second=4)
    assert sample(logits_for(row), [state(temperature=0, output=[3, 3], frequency_penalty=0.3)], [EOS])[0] == [4]
    assert sample(logits_for(row), [state(temperature=0, output=[3, 3], frequency_penalty=0.2)], [EOS])[0] == [3]
    # presence counts once however often the token occurred
    assert sample(logits_for(row), [state(temperature=0, output=[3, 3, 3], presence_penalty=0.6)], [EOS])[0] == [4]
    assert sample(logits_for(row), [state(temperature=0, output=[3, 3, 3], presence_penalty=0.4)], [EOS])[0] == [3]


def test_repetition_penalty_covers_the_prompt():
    row = peaked(3, second=4)
    tokens, _ = sample(logits_for(row), [state(temperature=0, prompt=[3], repetition_penalty=1.5)], [EOS])
    assert tokens == [4]


def test_min_tokens_suppresses_eos():
    row = peaked(EOS, second=9)
    assert sample(logits_for(row), [state(temperature=0, min_tokens=2, output=[5])], [EOS])[0] == [9]
    assert sample(logits_for(row), [state(temperature=0, min_tokens=2, output=[5, 5])], [EOS])[0] == [EOS]


def test_seeded_sampling_is_reproducible_and_seeds_differ():
    flat = logits_for([0.0] * VOCAB)

    def draw(seed):
        row = state(temperature=1.0, seed=seed)
        return [sample(flat, [row], [EOS])[0][0] for _ in range(20)]

    assert draw(42) == draw(42)
    assert draw(42) != draw(43)


def test_top_k_one_and_tiny_top_p_are_greedy():
    rows = logits_for(*[peaked(5, second=6)] * 2)
    gen_rows = [state(temperature=2.0, top_k=1, seed=1), state(temperature=2.0, top_p=1e-6, seed=1)]
    for _ in range(10):
        assert sample(rows, gen_rows, [EOS])[0] == [5, 5]


def test_min_p_drops_unlikely_tokens():
    row = [-10.0] * VOCAB
    row[5], row[6] = 5.0, 4.9
    seen = {sample(logits_for(row), [state(temperature=1.0, min_p=0.5, seed=s)], [EOS])[0][0] for s in range(30)}
    assert seen == {5, 6}


def test_logprobs_are_the_models_own_distribution():
    logits = logits_for(peaked(3, second=4))
    _, lps = sample(logits, [state(temperature=0, logprobs=2)], [EOS])
    expected = torch.log_softmax(logits[0], -1)
    assert lps[0].token_id == 3 and lps[0].logprob == pytest.approx(float(expected[3]))
    assert [t for t, _ in lps[0].top] == [3, 4]
    assert sum(math.exp(lp) for _, lp in lps[0].top) < 1.0


def test_rows_without_logprobs_get_none():
    _, lps = sample(logits_for(peaked(3), peaked(4)), [state(temperature=0), state(temperature=0, logprobs=0)], [EOS])
    assert lps[0] is None and lps[1].top == []
