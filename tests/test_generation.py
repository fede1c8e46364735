"""msd_trl.generation: the one batched generation loop, and resumable teacher text with its fingerprint."""

from __future__ import annotations

import pytest
import torch
from conftest import make_model

from msd_trl.generation import generate_responses
from msd_trl.rendering import render_prompt


def test_generate_responses_batched_equals_one_by_one(tiny_tokenizer):
    model = make_model(tiny_tokenizer)
    model.train()
    # Very different lengths, so batches are padded on the left and sorted out of input order.
    prompts = ["Keki?", "Kepiye carane nggawe kue sing enak banget? " * 3, "১২ যোগ ৭ কত?", "Hi", "What is 12 plus 7?"]
    batched = generate_responses(model, tiny_tokenizer, prompts, max_new_tokens=4, batch_size=3, progress=False)
    single = [
        generate_responses(model, tiny_tokenizer, [prompt], max_new_tokens=4, batch_size=1, progress=False)[0]
        for prompt in prompts
    ]
    assert batched == single
    assert len(batched) == len(prompts)
    assert model.training  # the caller's mode is restored


def test_generate_responses_system_prompt_and_messages(tiny_tokenizer):
    model = make_model(tiny_tokenizer)
    as_text = generate_responses(
        model, tiny_tokenizer, ["Hi"], system_prompt="Be safe.", max_new_tokens=3, progress=False
    )
    as_messages = generate_responses(
        model,
        tiny_tokenizer,
        [[{"role": "system", "content": "Be safe."}, {"role": "user", "content": "Hi"}]],
        max_new_tokens=3,
        progress=False,
    )
    assert as_text == as_messages
    assert render_prompt("Hi", "Be safe.") == [
        {"role": "system", "content": "Be safe."},
        {"role": "user", "content": "Hi"},
    ]
    own = [{"role": "system", "content": "Own."}, {"role": "user", "content": "Hi"}]
    assert render_prompt(own, "Be safe.") == own  # a conversation's own system message is kept
    assert render_prompt("Hi", None) == [{"role": "user", "content": "Hi"}]
    assert generate_responses(model, tiny_tokenizer, [], max_new_tokens=1, progress=False) == []


def test_generate_responses_per_prompt_budgets_equal_separate_calls(tiny_tokenizer):
    model = make_model(tiny_tokenizer)
    prompts = ["Keki?", "What is 12 plus 7?", "১২ যোগ ৭ কত?"]
    budgets = [2, 6, 4]
    together = generate_responses(model, tiny_tokenizer, prompts, max_new_tokens=budgets, batch_size=2,
                                  progress=False)  # fmt: skip
    apart = [
        generate_responses(model, tiny_tokenizer, [prompt], max_new_tokens=budget, progress=False)[0]
        for prompt, budget in zip(prompts, budgets)
    ]
    assert together == apart
    with pytest.raises(ValueError, match="2 budgets for 3 prompts"):
        generate_responses(model, tiny_tokenizer, prompts, max_new_tokens=[1, 2], progress=False)


def test_generate_responses_character_cap_ends_each_answer_early(tiny_tokenizer):
    model = make_model(tiny_tokenizer)
    prompts = ["Keki?", "What is 12 plus 7?"]
    free = generate_responses(model, tiny_tokenizer, prompts, max_new_tokens=12, progress=False)
    capped = generate_responses(model, tiny_tokenizer, prompts, max_new_tokens=12, max_chars=3, progress=False)
    for full, short in zip(free, capped):
        assert full.startswith(short)  # greedy: the same answer, stopped sooner
        assert len(short) >= min(3, len(full))
    assert sum(map(len, capped)) < sum(map(len, free))
    with pytest.raises(ValueError, match="max_chars"):
        generate_responses(model, tiny_tokenizer, prompts, max_new_tokens=1, max_chars=0, progress=False)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"batch_size": 0}, "batch_size"),
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"do_sample": True, "temperature": 0.0}, "temperature"),
        ({"prompts": "one string"}, "list of prompts"),
    ],
)
def test_generate_responses_rejects_bad_arguments(tiny_tokenizer, kwargs, message):
    arguments = {"prompts": ["Hi"], "max_new_tokens": 1, **kwargs}
    with pytest.raises(ValueError, match=message):
        generate_responses(torch.nn.Linear(1, 1), tiny_tokenizer, **arguments)
