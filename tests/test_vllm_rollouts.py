"""`use_vllm`: the trainer against a stand-in with `VLLMGeneration`'s interface (CI has no GPU and no vllm).

The stand-in replaces `VLLMGeneration` at the import boundary (`msd_trl.trainer.vllm_rollouts`): its constructor
binds its arguments against the real class's signature, `generate` takes token-id lists and returns
`(prompt_ids, completion_ids, logprobs, logprob_token_ids)` as the real one does (each completion a ragged list that
ends with the stop id when it stopped on one), and `sync_weights` records what it would push: a copy of the
trained (LoRA) weights of the model it was given. What this does not test: vLLM itself (its sampling, its weight
loading, its memory), which needs a GPU and the vllm package (docs/vllm.md).
"""

from __future__ import annotations

import inspect

import pytest
import torch
from conftest import make_model
from test_trainer import lora, make_args, with_completions
from transformers import TrainerCallback
from trl.generation.vllm_generation import VLLMGeneration

import msd_trl.trainer.vllm_rollouts as vllm_rollouts
from msd_trl import OffPolicyMSDTrainer, OnPolicyMSDTrainer
from msd_trl.completions import build_scoring_batch
from msd_trl.decoding import cut_at_stop
from msd_trl.trainer.vllm_rollouts import completions_from_lists, prompt_lists


def trained_weights(model) -> torch.Tensor:
    return torch.cat([p.detach().flatten().clone() for p in model.parameters() if p.requires_grad])


class StandInVLLMGeneration:
    """`VLLMGeneration`'s interface, no vLLM: completions come from `script(prompt_ids) -> completion_ids`."""

    instances: list[StandInVLLMGeneration] = []
    script = None  # set by each test

    def __init__(self, model, accelerator, processing_class, **kwargs):
        inspect.signature(VLLMGeneration).bind(model, accelerator, processing_class, **kwargs)  # the real arguments
        self.model, self.kwargs = model, kwargs
        self.events: list[tuple] = []
        StandInVLLMGeneration.instances.append(self)

    def sync_weights(self):
        self.events.append(("sync", trained_weights(self.model)))

    def generate(self, prompts, images, num_generations, profiler=None):
        self.events.append(
            ("generate", [list(p) for p in prompts], trained_weights(self.model), images, num_generations)
        )
        completions = [list(type(self).script(list(p))) for p in prompts]
        return [list(p) for p in prompts], completions, None, None


@pytest.fixture
def stand_in(monkeypatch):
    monkeypatch.setattr(vllm_rollouts, "VLLMGeneration", StandInVLLMGeneration)
    monkeypatch.setattr(vllm_rollouts, "is_vllm_available", lambda: True)
    StandInVLLMGeneration.instances = []
    yield StandInVLLMGeneration
    StandInVLLMGeneration.script = None


def echo_script(stop_id: int):
    """A completion that names its prompt: its last two tokens, then the stop id."""
    return lambda prompt: [prompt[-1], prompt[-2], stop_id]


# ------------------------------------------------------------------ construction


def test_use_vllm_without_vllm_fails_at_construction_with_the_install_line(monkeypatch, tmp_path, tiny_tokenizer):
    monkeypatch.setattr(vllm_rollouts, "is_vllm_available", lambda: False)
    with pytest.raises(ImportError, match=r"use_vllm=True.*pip install trl\[vllm\]"):
        # A model name that does not exist: the check comes before any model is loaded.
        OnPolicyMSDTrainer(model="no/such-model", args=make_args(tmp_path, use_vllm=True))


def test_off_policy_trainer_refuses_use_vllm(stand_in, tmp_path, tiny_tokenizer, msd_rows):
    with pytest.raises(ValueError, match="use_vllm=True.*never samples the student"):
        OffPolicyMSDTrainer(
            model=make_model(tiny_tokenizer),
            args=make_args(tmp_path, use_vllm=True),
            train_dataset=with_completions(msd_rows),
            processing_class=tiny_tokenizer,
        )


def test_engine_is_built_like_sdft_builds_it_on_the_trained_model(stand_in, tmp_path, tiny_tokenizer, msd_rows):
    trainer = OnPolicyMSDTrainer(
        model=make_model(tiny_tokenizer),
        args=make_args(tmp_path, use_vllm=True, vllm_mode="server", vllm_server_port=8123, temperature=0.7, top_p=0.9,
                       top_k=5, per_device_train_batch_size=2, gradient_accumulation_steps=3),
        train_dataset=msd_rows,
        processing_class=tiny_tokenizer,
        peft_config=lora(),
    )  # fmt: skip
    (engine,) = stand_in.instances
    assert engine is trainer.vllm_rollouts.engine and engine.model is trainer.model  # the PEFT student itself
    kwargs = engine.kwargs
    assert (kwargs["mode"], kwargs["server_port"], kwargs["gpu_memory_utilization"]) == ("server", 8123, 0.3)
    assert (kwargs["temperature"], kwargs["top_p"], kwargs["top_k"], kwargs["max_completion_length"]) == (
        0.7, 0.9, 5, 6,
    )  # fmt: skip
    assert kwargs["generation_kwargs"] == {"stop_token_ids": trainer.stop_ids}  # stops where generate stops
    assert kwargs["max_num_seqs"] == 2 * 3  # every rollout of an optimizer step in one call
    assert kwargs["logprobs"] is None
    assert engine.events == []  # nothing synced or sampled before training


# ------------------------------------------------------------------ ids in, ids out


def test_completions_from_ragged_lists_match_the_generate_path_mask(tmp_path, tiny_tokenizer, msd_rows):
    model = make_model(tiny_tokenizer)
    other_stop = tiny_tokenizer.convert_tokens_to_ids("<|im_start|>")
    model.generation_config.eos_token_id = [tiny_tokenizer.eos_token_id, other_stop]
    trainer = OnPolicyMSDTrainer(model=model, args=make_args(tmp_path), train_dataset=msd_rows,
                                 processing_class=tiny_tokenizer)  # fmt: skip
    eos, pad = tiny_tokenizer.eos_token_id, tiny_tokenizer.pad_token_id
    # What vLLM returns: each row up to its stop id (either one), or max_new_tokens=6 tokens when clipped.
    ragged = [[5, other_stop], [5, 6, eos], [5, 6, 7, 8, 9, 10], [eos]]
    ids, mask = completions_from_lists(ragged, pad_token_id=pad, stop_ids=trainer.stop_ids, device="cpu")
    # The same token sequences as model.generate returns them: right-padded with the pad id after the stop.
    generate_ids = torch.tensor(
        [
            [5, other_stop, pad, pad, pad, pad],
            [5, 6, eos, pad, pad, pad],
            [5, 6, 7, 8, 9, 10],
            [eos, pad, pad, pad, pad, pad],
        ]
    )
    assert torch.equal(ids, generate_ids)
    assert torch.equal(mask, trainer.completion_mask_from_ids(generate_ids))  # the generate path's mask
    assert mask.tolist() == [[1, 1, 0, 0, 0, 0], [1, 1, 1, 0, 0, 0], [1] * 6, [1, 0, 0, 0, 0, 0]]
    # A row vLLM ended without a stop id before the budget (e.g. the context limit): its padding is never kept.
    _, short_mask = completions_from_lists([[5, 6], [5, 6, 7, 8]], pad_token_id=pad, stop_ids=[eos], device="cpu")
    assert short_mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1]]
    empty_ids, empty_mask = completions_from_lists([[], []], pad_token_id=pad, stop_ids=[eos], device="cpu")
    assert empty_ids.shape == empty_mask.shape == (2, 0)


def test_vllm_path_gives_the_generate_paths_tensors_for_the_same_sequences(
    stand_in, tmp_path, tiny_tokenizer, msd_rows
):
    rows = [msd_rows[i] for i in range(4)]
    generate_trainer = OnPolicyMSDTrainer(
        model=make_model(tiny_tokenizer), args=make_args(tmp_path / "generate"), train_dataset=msd_rows,
        processing_class=tiny_tokenizer, peft_config=lora(),
    )  # fmt: skip
    inputs = generate_trainer.data_collator(rows)
    torch.manual_seed(0)
    generate_ids, generate_mask = generate_trainer.generate_completions(
        generate_trainer.model, inputs["prompt_ids"], inputs["prompt_mask"]
    )
    # vLLM would return each sampled row up to its stop id; the stand-in returns exactly those sequences.
    sampled = {
        tuple(prompt): cut_at_stop(row[row_mask.bool()].tolist(), generate_trainer.stop_ids)
        for prompt, row, row_mask in zip(prompt_lists(inputs["prompt_ids"], inputs["prompt_mask"]), generate_ids,
                                         generate_mask)
    }  # fmt: skip
    stand_in.script = lambda prompt: sampled[tuple(prompt)]
    vllm_trainer = OnPolicyMSDTrainer(
        model=make_model(tiny_tokenizer), args=make_args(tmp_path / "vllm", use_vllm=True), train_dataset=msd_rows,
        processing_class=tiny_tokenizer, peft_config=lora(),
    )  # fmt: skip
    vllm_ids, vllm_mask = vllm_trainer.generate_completions(
        vllm_trainer.model, inputs["prompt_ids"], inputs["prompt_mask"]
    )
    # Prompt ids in: the collator's prompts without their left padding.
    (engine,) = stand_in.instances
    _, prompts, _, images, num_generations = engine.events[-1]
    assert prompts == [ids[m.bool()].tolist() for ids, m in zip(inputs["prompt_ids"], inputs["prompt_mask"])]
    assert images is None and num_generations == 1
    # Completion ids out: the same masked tokens, and the same scoring batch (hence the same loss).
    assert torch.equal(vllm_mask, generate_mask)
    assert torch.equal(vllm_ids.masked_fill(vllm_mask == 0, 0), generate_ids.masked_fill(generate_mask == 0, 0))
    pad = tiny_tokenizer.pad_token_id
    expected = build_scoring_batch(inputs, generate_ids, generate_mask, pad_token_id=pad)
    actual = build_scoring_batch(inputs, vllm_ids, vllm_mask, pad_token_id=pad)
    assert expected.keys() == actual.keys()
    for key in expected:
        assert torch.equal(expected[key], actual[key]), key


def test_rollouts_grouped_by_rollout_batch_size_each_row_gets_its_own_completion(
    stand_in, tmp_path, tiny_tokenizer, msd_rows
):
    trainer = OnPolicyMSDTrainer(
        model=make_model(tiny_tokenizer), args=make_args(tmp_path, use_vllm=True, rollout_batch_size=2),
        train_dataset=msd_rows, processing_class=tiny_tokenizer, peft_config=lora(),
    )  # fmt: skip
    eos = trainer.stop_ids[0]
    stand_in.script = echo_script(eos)
    batches = [trainer.data_collator([msd_rows[i], msd_rows[j]]) for i, j in ((0, 1), (2, 3), (4, 5))]
    scored = trainer.prepare_batches(trainer.model, batches)
    (engine,) = stand_in.instances
    kinds = [event[0] for event in engine.events]
    assert kinds == ["sync", "generate", "generate", "generate"]  # one sync, then 6 rows in calls of 2
    lengths = [len(prompt) for event in engine.events[1:] for prompt in event[1]]
    assert lengths == sorted(lengths) and len(lengths) == 6  # grouped by prompt length
    for inputs, batch in zip(batches, scored):
        last_two = inputs["prompt_ids"][:, -2:].flip(1)
        assert torch.equal(batch["completion_ids"][:, :2], last_two)  # every row got its own completion back
        assert batch["completion_mask"].tolist() == [[1, 1, 1]] * 2 and batch["completion_ids"][:, 2].eq(eos).all()
        assert torch.equal(batch["input_ids"][:, : inputs["prompt_ids"].size(1)], inputs["prompt_ids"])


# ------------------------------------------------------------------ weight sync in training


class _StepEvents(TrainerCallback):
    def __init__(self, events: list):
        self.events = events

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.events.append(("optimizer_step", state.global_step))


@pytest.mark.parametrize("rollout_batch_size", [None, 1])
def test_one_sync_per_optimizer_step_before_its_rollouts_under_gradient_accumulation(
    stand_in, tmp_path, tiny_tokenizer, msd_rows, rollout_batch_size
):
    trainer = OnPolicyMSDTrainer(
        model=make_model(tiny_tokenizer),
        # 1 row x 2 micro-batches per optimizer step, 3 steps: the 6 rows once.
        args=make_args(tmp_path, use_vllm=True, per_device_train_batch_size=1, gradient_accumulation_steps=2,
                       max_steps=3, rollout_batch_size=rollout_batch_size),
        train_dataset=msd_rows,
        processing_class=tiny_tokenizer,
        peft_config=lora(),
    )  # fmt: skip
    stand_in.script = echo_script(trainer.stop_ids[0])
    (engine,) = stand_in.instances
    trainer.add_callback(_StepEvents(engine.events))
    trainer.train()

    calls = 1 if rollout_batch_size is None else 2  # both micro-batches' rollouts in one call, or a row per call
    kinds = [event[0] for event in engine.events]
    assert kinds == (["sync"] + ["generate"] * calls + ["optimizer_step"]) * 3
    assert [len(e[1]) for e in engine.events if e[0] == "generate"] == [2 // calls] * (3 * calls)
    assert [e[1] for e in engine.events if e[0] == "optimizer_step"] == [1, 2, 3]
    syncs = [e[1] for e in engine.events if e[0] == "sync"]
    for index, event in enumerate(engine.events):
        if event[0] == "generate":  # sampled from exactly the weights synced before it: the current student
            last_sync = next(e for e in reversed(engine.events[:index]) if e[0] == "sync")
            assert torch.equal(event[2], last_sync[1])
    # Each sync pushes the weights the previous optimizer step made (the adapter moves from step to step).
    assert not torch.equal(syncs[0], syncs[1]) and not torch.equal(syncs[1], syncs[2])
    assert torch.equal(trained_weights(trainer.model), trained_weights(engine.model))
    assert trainer.vllm_rollouts.sync_count == 3
    assert all(torch.isfinite(torch.tensor(v)) for v in trainer._metrics["train"]["msd/loss"])


def test_self_teacher_scores_with_the_adapter_disabled_and_is_never_synced(
    stand_in, tmp_path, tiny_tokenizer, msd_rows
):
    trainer = OnPolicyMSDTrainer(
        model=make_model(tiny_tokenizer), args=make_args(tmp_path, use_vllm=True), train_dataset=msd_rows,
        processing_class=tiny_tokenizer, peft_config=lora(),
    )  # fmt: skip
    stand_in.script = echo_script(trainer.stop_ids[0])
    (engine,) = stand_in.instances
    batch = trainer.prepare_batch(trainer.model, trainer.data_collator([msd_rows[0], msd_rows[1]]))
    with torch.no_grad():  # move the adapter away from zero, as training does
        for name, param in trainer.model.named_parameters():
            if "lora_B" in name:
                param.add_(0.5)
    teacher = trainer.teacher_logits(batch, batch["completion_ids"].size(1))
    reference = make_model(tiny_tokenizer)  # the same initial weights, no adapter
    expected = trainer._completion_logits(
        reference, batch["teacher_input_ids"], batch["teacher_attention_mask"], batch["completion_ids"].size(1)
    )
    torch.testing.assert_close(teacher, expected)
    assert [event[0] for event in engine.events] == ["sync", "generate"]  # teacher scoring touched no engine
