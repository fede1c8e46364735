"""msd_trl.fingerprint: the teacher key every cache and checkpoint uses (identity digests, per-row token digests)."""

from __future__ import annotations

import copy

import torch
from conftest import make_model
from peft import LoraConfig, get_peft_model

from msd_trl.fingerprint import fingerprint_differences, teacher_fingerprint, token_digest, weights_digest


def test_the_same_weights_are_the_same_teacher_however_they_are_wrapped(tiny_tokenizer):
    model = make_model(tiny_tokenizer)
    plain = teacher_fingerprint(model, tiny_tokenizer, adapter_disabled=False, top_k=4)
    wrapped = get_peft_model(
        copy.deepcopy(model), LoraConfig(r=2, target_modules="all-linear", init_lora_weights=False)
    )
    # The self-teacher (adapter disabled) is the base model: same digest under PEFT's renamed, wrapped parameters.
    as_self_teacher = teacher_fingerprint(wrapped, tiny_tokenizer, adapter_disabled=True, top_k=4)
    assert fingerprint_differences(plain, as_self_teacher) == []
    assert as_self_teacher["teacher_adapter"] is None
    # With its adapter active it is another teacher, and the message says which part differs.
    with_adapter = teacher_fingerprint(wrapped, tiny_tokenizer, adapter_disabled=False, top_k=4)
    assert [line.split(":")[0] for line in fingerprint_differences(plain, with_adapter)] == [
        "teacher_adapter",
        "teacher",
    ]


def test_one_changed_value_changes_the_weight_digest(tiny_tokenizer):
    model = make_model(tiny_tokenizer)
    before = weights_digest(model.parameters())
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.weight[3, 7] += 1e-3
    assert weights_digest(model.parameters()) != before
    # A tensor with more than 2**24 values (its sample positions used to round out of range).
    large = torch.zeros(2**24 + 3, dtype=torch.uint8)
    assert weights_digest([large]) != weights_digest([large[:-1]])


def test_token_digest_and_the_name_is_shown_not_compared():
    assert token_digest([1, 2, 3]) == token_digest((1, 2, 3)) != token_digest([1, 2], [3])
    cached = {"teacher": "a/model", "teacher_weights": "x", "top_k": 4}
    assert fingerprint_differences(cached, {**cached, "teacher": "/local/copy"}) == []
    assert fingerprint_differences(cached, {**cached, "teacher_weights": "y"}, then="checkpoint") == [
        "teacher_weights: checkpoint 'x', now 'y'",
        "teacher: checkpoint 'a/model', now 'a/model'",
    ]
