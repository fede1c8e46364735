"""msd_trl.decoding: thread count and merged adapter for rollouts, and the trainer options that use them."""

from __future__ import annotations

import pytest
import torch
from conftest import make_model
from peft import get_peft_model
from test_trainer import base_state, lora, make_args

from msd_trl import OnPolicyMSDTrainer
from msd_trl.decoding import check_adapter_mergeable, decode_threads, merged_adapter


def peft_model(tokenizer, dtype=torch.float32):
    model = get_peft_model(make_model(tokenizer).to(dtype), lora())
    with torch.no_grad():  # a non-zero adapter, so merging changes the weights
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.3)
    return model


def test_decode_threads_apply_to_decode_steps_only_and_are_restored(tiny_tokenizer):
    model = peft_model(tiny_tokenizer).eval()
    before = torch.get_num_threads()
    seen = []
    model.get_base_model().model.register_forward_pre_hook(  # inside the hooked model's forward
        lambda module, args, kwargs: seen.append((kwargs["input_ids"].shape[1], torch.get_num_threads())),
        with_kwargs=True,
    )
    ids = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 12]])
    with torch.no_grad(), decode_threads(model, 1):
        model.generate(input_ids=ids, max_new_tokens=4, do_sample=False, pad_token_id=0, eos_token_id=None)
        assert torch.get_num_threads() == 1  # the sampling after a decode step stays on its threads
        model(ids)  # a longer forward (a prefill) switches back
        assert seen[-1] == (4, before)
    assert seen[0] == (4, before)  # the prefill keeps every thread
    assert seen[1:-1] and all(entry == (1, 1) for entry in seen[1:-1])  # each decode step runs on one
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError), torch.no_grad(), decode_threads(model, 1):
        model(torch.tensor([[5]]))
        raise RuntimeError("inside")
    assert torch.get_num_threads() == before
    seen.clear()
    with torch.no_grad(), decode_threads(model, None):
        model(torch.tensor([[5]]))
    assert seen == [(1, before)]
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="num_threads must be an integer >= 1"), decode_threads(model, bad):
            pass


def test_merged_adapter_generates_what_the_unmerged_adapter_does_and_restores_the_weights(tiny_tokenizer):
    model = peft_model(tiny_tokenizer).eval()
    before = base_state(model)
    ids = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 12]])
    kwargs = dict(max_new_tokens=8, do_sample=False, pad_token_id=0, eos_token_id=None)
    with torch.no_grad():
        plain_logits = model(ids).logits
        plain = model.generate(input_ids=ids, **kwargs)
        with merged_adapter(model):
            merged_logits = model(ids).logits
            merged = model.generate(input_ids=ids, **kwargs)
    torch.testing.assert_close(merged_logits, plain_logits, rtol=1e-5, atol=1e-5)
    assert torch.equal(merged, plain)
    for _ in range(200):  # round trips do not drift the base (self-teacher) weights in float32
        with merged_adapter(model):
            pass
    after = base_state(model)
    for key in before:
        torch.testing.assert_close(after[key], before[key], rtol=0, atol=1e-6)
    with pytest.raises(RuntimeError), merged_adapter(model):
        raise RuntimeError("inside")
    assert not any(getattr(module, "merged", False) for module in model.modules())  # unmerged after an error too
    with merged_adapter(model, enabled=False):
        assert not any(getattr(module, "merged", False) for module in model.modules())


def test_check_adapter_mergeable_names_the_field_and_the_reason(tiny_tokenizer):
    check_adapter_mergeable(peft_model(tiny_tokenizer))  # float32 LoRA: fine
    with pytest.raises(ValueError, match="merge_adapter_for_generation=True needs a PEFT model"):
        check_adapter_mergeable(make_model(tiny_tokenizer))
    with pytest.raises(ValueError, match=r"needs float32 base weights, found \['torch.bfloat16'\]"):
        check_adapter_mergeable(peft_model(tiny_tokenizer, torch.bfloat16))

    class Params4bit(torch.nn.Parameter):  # what bitsandbytes' 4-bit layers hold
        pass

    quantized = peft_model(tiny_tokenizer)
    layer = quantized.base_model.model.model.layers[0].mlp.down_proj.base_layer
    layer.weight = Params4bit(layer.weight.data, requires_grad=False)
    with pytest.raises(ValueError, match="cannot be used with a quantized base model .*down_proj"):
        check_adapter_mergeable(quantized)


def test_generation_options_train_like_the_default_and_keep_the_self_teacher(tmp_path, tiny_tokenizer, msd_rows):
    runs = {}
    for name, options in {
        "default": {},
        "fast": {"generation_threads": 1, "merge_adapter_for_generation": True},
    }.items():
        model = make_model(tiny_tokenizer)
        trainer = OnPolicyMSDTrainer(
            model=model, args=make_args(tmp_path / name, max_steps=2, **options), train_dataset=msd_rows,
            processing_class=tiny_tokenizer, peft_config=lora(),
        )  # fmt: skip
        initial = base_state(trainer.model)
        merged_at_generate, decode_step_threads = [], []
        unwrapped = trainer.accelerator.unwrap_model(trainer.model)
        original_generate = unwrapped.generate

        def spy(*args, original_generate=original_generate, log=merged_at_generate, model=unwrapped, **kwargs):
            merged = [m.merged for m in model.modules() if hasattr(m, "merged")]
            log.append(bool(merged) and all(merged))
            return original_generate(*args, **kwargs)

        unwrapped.generate = spy
        unwrapped.get_base_model().model.register_forward_pre_hook(
            lambda module, args, kwargs, log=decode_step_threads: log.append(torch.get_num_threads())
            if kwargs.get("input_ids") is not None and kwargs["input_ids"].shape[1] == 1 else None,
            with_kwargs=True,
        )  # fmt: skip
        trainer.train()
        runs[name] = [e["msd/loss"] for e in trainer.state.log_history if "msd/loss" in e]
        assert merged_at_generate and all(merged == bool(options) for merged in merged_at_generate)
        expected_threads = 1 if options else torch.get_num_threads()
        assert decode_step_threads and set(decode_step_threads) == {expected_threads}
        final = base_state(trainer.model)  # unmerged after every call: the self-teacher's weights are unchanged
        for key in initial:
            torch.testing.assert_close(final[key], initial[key], rtol=0, atol=1e-6)
    assert runs["fast"] == pytest.approx(runs["default"], rel=1e-4, abs=1e-6)


def test_generation_options_are_validated_at_start(tmp_path, tiny_tokenizer, msd_rows):
    with pytest.raises(ValueError, match="generation_threads=0 is invalid"):
        make_args(tmp_path, generation_threads=0)
    with pytest.raises(ValueError, match="merge_adapter_for_generation=True needs a PEFT model"):
        OnPolicyMSDTrainer(
            model=make_model(tiny_tokenizer), args=make_args(tmp_path, merge_adapter_for_generation=True),
            train_dataset=msd_rows, processing_class=tiny_tokenizer,
        )  # fmt: skip
