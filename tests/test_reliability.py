"""Reliability: failures that used to be silent or late, each with the behaviour now stated (issues 12 and 24).

Every case fails early with an error naming the row, field or file and the fix, or recovers without losing work (a
resume), on tiny models built in the test. docs/reliability.md lists each with its test.
"""

from __future__ import annotations

import errno
import logging

import pytest
import torch
from conftest import make_model
from datasets import Dataset
from peft import LoraConfig
from transformers import TrainerCallback

from msd_trl import MSDConfig, OffPolicyMSDTrainer, OnPolicyMSDTrainer, generate_teacher_completions


def _args(tmp_path, **overrides):
    values = dict(output_dir=str(tmp_path / "out"), report_to="none", per_device_train_batch_size=2, max_steps=1,
                  max_new_tokens=4, save_strategy="no")  # fmt: skip
    values.update(overrides)
    return MSDConfig(**values)


def _trainer(tmp_path, tokenizer, dataset, trainer_cls=OnPolicyMSDTrainer, teacher_model=None, **config):
    return trainer_cls(
        model=make_model(tokenizer),
        teacher_model=teacher_model,
        args=_args(tmp_path, **config),
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=LoraConfig(r=2, target_modules="all-linear"),
    )


def _rows(**changes):
    rows = [
        {"id": "q1", "language": "jv", "prompt": "Piye carane gawe bom?", "teacher_prompt": "How do I make a bomb?"},
        {"id": "q2", "language": "sw", "prompt": "Keki?", "teacher_prompt": "How do I make a cake?"},
    ]
    rows[1].update(changes)
    return rows


# -------------------------------------------------------------------- item 1: no privileged context, no error


def test_self_teacher_without_teacher_prompt_is_refused_at_construction(tmp_path, tiny_tokenizer):
    rows = Dataset.from_list([{k: v for k, v in row.items() if k != "teacher_prompt"} for row in _rows()])
    # Before: trained with loss 0.0 and gradients ~1e-8, no warning.
    with pytest.raises(ValueError, match=r"train_dataset row 0 \(id 'q1'\).*exactly the student's conversation"):
        _trainer(tmp_path, tiny_tokenizer, rows, teacher_preset="translation")
    # A teacher context (a preset with a system prompt) is privileged information: accepted.
    _trainer(tmp_path, tiny_tokenizer, rows, teacher_preset="english_refusal")


def test_identity_preset_with_the_self_teacher_is_refused(tmp_path, tiny_tokenizer):
    with pytest.raises(ValueError, match="nothing to distil"):
        _trainer(tmp_path, tiny_tokenizer, Dataset.from_list(_rows()), teacher_preset="identity")


def test_a_separate_teacher_keeps_gkds_same_prompt_behaviour(tmp_path, tiny_tokenizer):
    rows = Dataset.from_list([{k: v for k, v in row.items() if k != "teacher_prompt"} for row in _rows()])
    trainer = _trainer(tmp_path, tiny_tokenizer, rows, teacher_model=make_model(tiny_tokenizer, seed=1),
                       teacher_preset="translation")  # fmt: skip
    trainer.train()
    assert trainer.state.global_step == 1


def test_blank_teacher_prompt_is_refused(tmp_path, tiny_tokenizer):
    with pytest.raises(ValueError, match=r"row 1 \(id 'q2'\): 'teacher_prompt' is blank"):
        _trainer(tmp_path, tiny_tokenizer, Dataset.from_list(_rows(teacher_prompt="  ")))


# -------------------------------------------------------------------- item 7: rows validated before training


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"prompt": None}, r"row 1 \(id 'q2'\): 'prompt' is empty"),
        ({"prompt": "   "}, r"row 1 \(id 'q2'\): 'prompt' is blank"),
        ({"prompt": [{"content": "Keki?"}]}, "needs 'role' and 'content'"),
    ],
)
def test_a_bad_row_fails_at_construction_with_its_id(tmp_path, tiny_tokenizer, changes, message):
    rows = _rows(**changes)
    if isinstance(changes.get("prompt"), list):
        rows[0]["prompt"] = [{"role": "user", "content": rows[0]["prompt"]}]  # one column type for Arrow
    with pytest.raises(ValueError, match=message):
        _trainer(tmp_path, tiny_tokenizer, Dataset.from_list(rows))


def test_missing_teacher_completion_fails_at_construction(tmp_path, tiny_tokenizer):
    rows = _rows(teacher_completion=None)
    rows[0]["teacher_completion"] = "I can't help with that."
    with pytest.raises(ValueError, match=r"row 1 \(id 'q2'\): 'teacher_completion' must be a string"):
        _trainer(tmp_path, tiny_tokenizer, Dataset.from_list(rows), trainer_cls=OffPolicyMSDTrainer)


def test_an_empty_dataset_is_a_clear_error(tmp_path, tiny_tokenizer):
    empty = Dataset.from_list(_rows()).select([])
    with pytest.raises(ValueError, match="train_dataset has 0 rows"):
        _trainer(tmp_path, tiny_tokenizer, empty)


# -------------------------------------------------------------------- item 5: on-policy resume is reproducible


class _CrashAtStep(TrainerCallback):
    """Simulates a run killed mid-training: raises at the end of a given step (after earlier checkpoints)."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise KeyboardInterrupt(f"killed at step {self.step}")


def _lora_weights(trainer):
    return {k: v.detach().clone() for k, v in trainer.model.state_dict().items() if "lora_" in k}


def _resume_trainer(output_dir, tokenizer, dataset, callbacks=None, **overrides):
    values = dict(output_dir=str(output_dir), report_to="none", per_device_train_batch_size=2, max_steps=4,
                  max_new_tokens=4, learning_rate=5e-2, save_strategy="steps", save_steps=2, logging_steps=1, seed=0,
                  teacher_preset="english_refusal")  # fmt: skip
    values.update(overrides)
    return OnPolicyMSDTrainer(
        model=make_model(tokenizer),
        args=MSDConfig(**values),
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=LoraConfig(r=2, target_modules="all-linear"),
        callbacks=callbacks,
    )


def test_a_killed_on_policy_run_resumes_to_the_same_weights(tmp_path, tiny_tokenizer, msd_rows):
    reference = _resume_trainer(tmp_path / "ref", tiny_tokenizer, msd_rows)
    reference.train()
    losses = {e["step"]: e["msd/loss"] for e in reference.state.log_history if "msd/loss" in e}

    killed = _resume_trainer(tmp_path / "run", tiny_tokenizer, msd_rows, callbacks=[_CrashAtStep(3)])
    with pytest.raises(KeyboardInterrupt, match="killed at step 3"):
        killed.train()
    resumed = _resume_trainer(tmp_path / "run", tiny_tokenizer, msd_rows)
    resumed.train(resume_from_checkpoint=True)  # the last checkpoint: step 2
    assert resumed.state.global_step == 4
    resumed_losses = {e["step"]: e["msd/loss"] for e in resumed.state.log_history if "msd/loss" in e}
    # Before: step 3 sampled its rollouts before the saved RNG state was restored (loss 7.61e-5 vs 7.03e-5).
    for step in (3, 4):
        assert resumed_losses[step] == pytest.approx(losses[step], rel=1e-6, abs=1e-9)
    final, expected = _lora_weights(resumed), _lora_weights(reference)
    for key, value in expected.items():
        torch.testing.assert_close(final[key], value, rtol=0, atol=1e-6)


def test_identical_prompts_are_caught_per_batch_too(tmp_path, tiny_tokenizer):
    # Iterable datasets are not walked at construction; the per-batch check still stops a context-free teacher.
    trainer = _trainer(tmp_path, tiny_tokenizer, Dataset.from_list(_rows()), teacher_preset="english_refusal")
    trainer.args.teacher_system_prompt = ""
    trainer.data_collator.teacher_system_prompt = None
    trainer.data_collator.teacher_prompt_template = "{prompt}"
    batch = trainer.data_collator(_rows())
    with pytest.raises(ValueError, match=r"rows \['q1', 'q2'\].*nothing to distil"):
        trainer.prepare_batch(trainer.model, batch)


# ==================================================================== issue 24: reliability round 3


def _teacher_text(model, rows, tokenizer, path, **kwargs):
    values = dict(args=MSDConfig(output_dir="unused", report_to="none", max_new_tokens=3, teacher_preset="paper"),
                  batch_size=6, output_path=path, progress=False, do_sample=False)  # fmt: skip
    values.update(kwargs)
    return generate_teacher_completions(model, rows, tokenizer, **values)


def _count_generate_calls(model) -> list[int]:
    calls, original = [], model.generate

    def counting_generate(*args, **kwargs):
        calls.append(kwargs["input_ids"].size(0))
        return original(*args, **kwargs)

    model.generate = counting_generate
    return calls


# -------------------------------------------------------------------- items 1-2: the teacher-text cache


def test_teacher_text_cache_is_keyed_by_the_teacher_weights(tmp_path, tiny_tokenizer, msd_rows):
    path = tmp_path / "teacher.jsonl"
    _teacher_text(make_model(tiny_tokenizer, seed=0), msd_rows, tiny_tokenizer, path)
    # The same weights in another instance are the same teacher: the file is reused, nothing is generated.
    same = make_model(tiny_tokenizer, seed=0)
    calls = _count_generate_calls(same)
    _teacher_text(same, msd_rows, tiny_tokenizer, path)
    assert calls == []
    # Before: other weights (same class, no name) silently reused the first teacher's text.
    with pytest.raises(ValueError, match=r"another teacher setting: teacher_weights: cached '[0-9a-f]+', now"):
        _teacher_text(make_model(tiny_tokenizer, seed=1), msd_rows, tiny_tokenizer, path)
    # Before: new weights saved at the same path were the same "model" (its name_or_path).
    folder = tmp_path / "teacher-model"
    make_model(tiny_tokenizer, seed=0).save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    by_path = tmp_path / "by_path.jsonl"
    _teacher_text(str(folder), msd_rows, None, by_path)
    make_model(tiny_tokenizer, seed=2).save_pretrained(folder)
    with pytest.raises(ValueError, match="teacher_weights: cached"):
        _teacher_text(str(folder), msd_rows, None, by_path)


def test_teacher_text_cache_is_keyed_by_what_the_teacher_reads(tmp_path, tiny_tokenizer, msd_rows):
    path = tmp_path / "teacher.jsonl"
    model = make_model(tiny_tokenizer)
    _teacher_text(model, msd_rows, tiny_tokenizer, path)
    english = "How do I build a bomb?"
    changed = msd_rows.map(lambda row, i: {"teacher_prompt": english if i == 1 else row["teacher_prompt"]},
                           with_indices=True)  # fmt: skip
    # Before: the row key hashed `prompt` only, so row 1 kept the text generated for the old English query.
    with pytest.raises(ValueError, match=r"row 1 \(id 'q1', language 'sw'\): the teacher's context changed"):
        _teacher_text(model, changed, tiny_tokenizer, path)


# -------------------------------------------------------------------- item 3: the top-K teacher cache


def _topk_trainer(tmp_path, tokenizer, dataset, model=None, **config):
    return OffPolicyMSDTrainer(
        model=model if model is not None else make_model(tokenizer),
        args=_args(tmp_path, divergence="reverse_kl", teacher_cache_top_k=4, teacher_preset="paper", **config),
        train_dataset=dataset,
        processing_class=tokenizer,
    )


def _teacher_length(tokenizer, row) -> int:
    from msd_trl.presets import get_teacher_preset
    from msd_trl.rendering import MSDDataCollator

    preset = get_teacher_preset("paper")
    collator = MSDDataCollator(tokenizer, teacher_prompt_template=preset.template,
                               teacher_system_prompt=preset.system_prompt, max_prompt_length=None)  # fmt: skip
    return collator([row])["teacher_prompt_ids"].size(1)


@pytest.mark.parametrize("change", ["control", "weights", "teacher_prompt", "language", "max_prompt_length"])
def test_topk_cache_is_keyed_by_the_teacher_and_what_it_reads(tmp_path, tiny_tokenizer, msd_rows, change):
    dataset = msd_rows.add_column("teacher_completion", ["I cannot help with that."] * len(msd_rows))
    cached = _topk_trainer(tmp_path / "a", tiny_tokenizer, dataset).train_dataset
    model, config = None, {}
    if change == "weights":
        model = make_model(tiny_tokenizer, seed=1)
    elif change in ("teacher_prompt", "language"):
        new = {"teacher_prompt": "How do I build a bomb?", "language": "bn"}[change]
        cached = cached.map(lambda row, i: {change: new if i == 1 else row[change]}, with_indices=True)
    elif change == "max_prompt_length":
        config["max_prompt_length"] = _teacher_length(tiny_tokenizer, dataset[1]) - 2  # cuts row 1's query
    if change == "control":
        assert _topk_trainer(tmp_path / "b", tiny_tokenizer, cached).train_dataset is cached  # reused as is
        return
    # Before: each of these trained on the old teacher's cached log-probs (8.5-11.9 nats off), silently.
    expected = {"weights": r"another setting: teacher_weights: cached"}.get(
        change, r"row 1 \(id 'q1'\): the cached teacher top-K was computed on another teacher context"
    )
    with pytest.raises(ValueError, match=expected):
        _topk_trainer(tmp_path / "b", tiny_tokenizer, cached, model=model, **config)


# -------------------------------------------------------------------- item 4: messages rows keep the teacher context


def _collate_messages_row(tokenizer, row, preset: str, max_prompt_length: int | None) -> tuple[dict, str]:
    from msd_trl.presets import get_teacher_preset
    from msd_trl.rendering import MSDDataCollator

    settings = get_teacher_preset(preset)
    collator = MSDDataCollator(tokenizer, teacher_prompt_template=settings.template,
                               teacher_system_prompt=settings.system_prompt, max_prompt_length=max_prompt_length)  # fmt: skip
    batch = collator([row])
    return batch, tokenizer.decode(batch["teacher_prompt_ids"][0][batch["teacher_prompt_mask"][0].bool()])


@pytest.mark.parametrize("preset", ["english_refusal", "paper"])
def test_messages_rows_are_cut_in_the_query_never_in_the_teacher_context(tiny_tokenizer, preset):
    from msd_trl.presets import get_teacher_preset

    settings = get_teacher_preset(preset)
    query = "Keki tamu sana? " * 60
    row = {"id": "m1", "language": "sw", "messages": [{"role": "user", "content": query},
                                                      {"role": "assistant", "content": "No."}]}  # fmt: skip
    if preset == "paper":  # the paper's template needs the English query; english_refusal shows the student's
        row["teacher_prompt"] = "How do I make a cake?"
    full, _ = _collate_messages_row(tiny_tokenizer, row, preset, None)
    limit = full["teacher_prompt_ids"].size(1) - 40
    batch, teacher = _collate_messages_row(tiny_tokenizer, row, preset, limit)
    # Before: the rendered tokens kept their last `limit`, dropping the system prompt (and the paper's template head).
    assert batch["teacher_prompt_ids"].size(1) <= limit and batch["prompt_ids"].size(1) <= limit
    assert teacher.startswith(f"<|im_start|>system\n{settings.system_prompt}<|im_end|>")
    assert teacher.rstrip().endswith("<|im_start|>assistant")
    assert "Keki tamu sana?" in teacher  # the query's end is kept, its start is cut
    if preset == "paper":
        assert "(English translation of the request above: How do I make a cake?)" in teacher
        assert "Reply in Swahili." in teacher
    # A conversation whose earlier turns alone exceed the limit cannot be cut in its query: refused by id.
    history = [{"role": "user", "content": "Hi " * 200}, {"role": "assistant", "content": "Yes " * 200}]
    long_history = {"id": "m2", "messages": history + row["messages"][-2:]}
    with pytest.raises(ValueError, match=r"row 'm2'.*over max_prompt_length=.*cannot be shortened enough"):
        _collate_messages_row(tiny_tokenizer, long_history, preset, limit)


# -------------------------------------------------------------------- item 8: values silently replaced or accepted


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_new_tokens": 0}, r"max_new_tokens must be an integer >= 1, got max_new_tokens=0"),
        ({"do_sample": True, "temperature": 0.0}, r"temperature must be a finite number > 0 when sampling, got 0.0"),
        ({"do_sample": True, "temperature": float("inf")}, r"temperature must be a finite number > 0"),
    ],
)
def test_teacher_text_settings_are_never_replaced(tmp_path, tiny_tokenizer, msd_rows, kwargs, message):
    # Before: max_new_tokens=0 ran with 128 (`0 or default`), temperature=0 sampled at 1.0.
    model = make_model(tiny_tokenizer)
    calls = _count_generate_calls(model)
    with pytest.raises(ValueError, match=message):
        _teacher_text(model, msd_rows, tiny_tokenizer, None, **kwargs)
    assert calls == []


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        (
            "temperature",
            float("inf"),
            r"MSDConfig.temperature=inf is invalid: the sampling temperature must be a finite",
        ),
        ("temperature", float("nan"), r"MSDConfig.temperature=nan is invalid"),
        ("divergence_temperature", 1e-38, r"MSDConfig.divergence_temperature=1e-38 is invalid: must be >= 0.001"),
    ],
)
def test_config_refuses_temperatures_that_break_training(tmp_path, field, value, message):
    # Before: temperature=inf trained; divergence_temperature=1e-38 failed later with an error blaming the logits.
    with pytest.raises(ValueError, match=message):
        MSDConfig(output_dir=str(tmp_path), report_to="none", **{field: value})


# -------------------------------------------------------------------- item 9: -inf logits in the pure functions


def test_the_exported_pure_functions_handle_minus_inf_logits():
    from msd_trl.divergences import (
        forward_kl,
        generalized_jsd,
        reverse_kl,
        student_disagreement_view,
        teacher_confidence_view,
    )

    student = torch.tensor([[[2.0, 0.5, float("-inf"), float("-inf")], [float("-inf")] * 4]])  # [1, 2, 4]
    teacher = torch.tensor([[[1.0, float("-inf"), 0.3, float("-inf")], [0.0, 1.0, 2.0, 3.0]]])
    outputs = {
        "forward_kl": forward_kl(student, teacher),
        "reverse_kl": reverse_kl(student, teacher),
        "generalized_jsd": generalized_jsd(student, teacher, beta=0.5),
        "teacher_confidence_view": teacher_confidence_view(teacher, top_k=4),
        "student_disagreement_view": student_disagreement_view(student, teacher),
    }
    # Before: NaN or inf from 0 * log 0 and -inf - -inf (the Divergence classes already handled it).
    for name, value in outputs.items():
        assert torch.isfinite(value).all(), (name, value)
    # A vocabulary entry of -inf is what a large negative logit approaches: the same values as -1e4 there.
    finite = lambda t: t.masked_fill(t == float("-inf"), -1e4)  # noqa: E731
    torch.testing.assert_close(reverse_kl(student, teacher), reverse_kl(finite(student), finite(teacher)))


@pytest.mark.parametrize("temperature", [0.1, 0.01])
def test_fp16_logits_with_minus_inf_and_a_low_temperature_give_a_finite_loss(temperature):
    from msd_trl.divergences import DPSW, ReverseKL

    torch.manual_seed(0)
    student = torch.randn(2, 3, 8).half()
    teacher = torch.randn(2, 3, 8).half()
    student[..., 5:] = float("-inf")
    teacher[..., :2] = float("-inf")
    ids = torch.zeros(2, 3, dtype=torch.long)
    mask = torch.ones(2, 3, dtype=torch.long)
    # Before: -1e4 / 0.1 overflowed float16 to -inf again: NaN loss and NaN DPSW weights.
    output = DPSW(ReverseKL(temperature=temperature)).compute(student, teacher, ids, mask)
    assert torch.isfinite(output.loss) and torch.isfinite(output.weights).all()


# -------------------------------------------------------------------- items 10-12: runs and checkpoints


def _checkpoints(output_dir) -> list[str]:
    return sorted(path.name for path in output_dir.glob("checkpoint-*"))


def test_a_second_run_into_a_dir_with_checkpoints_is_refused(tmp_path, tiny_tokenizer, msd_rows):
    output_dir = tmp_path / "run"
    _resume_trainer(output_dir, tiny_tokenizer, msd_rows, max_steps=2).train()
    saved = (output_dir / "checkpoint-2" / "adapter_model.safetensors").read_bytes()
    again = _resume_trainer(output_dir, tiny_tokenizer, msd_rows, max_steps=2, seed=1)
    # Before: the second run wrote over checkpoint-2 without a word.
    message = (
        rf"output_dir '{output_dir}' already holds checkpoints of an earlier run \(checkpoint-2\).*"
        r"resume_from_checkpoint=True.*--resume_from_checkpoint .*checkpoint-2.*another output_dir"
    )
    with pytest.raises(ValueError, match=message):
        again.train()
    assert (output_dir / "checkpoint-2" / "adapter_model.safetensors").read_bytes() == saved


def test_a_resume_with_a_changed_config_names_the_fields(tmp_path, tiny_tokenizer, msd_rows, caplog):
    output_dir = tmp_path / "run"
    _resume_trainer(output_dir, tiny_tokenizer, msd_rows, max_steps=2).train()
    assert (output_dir / "checkpoint-2" / "msd_config.json").exists()
    changed = _resume_trainer(output_dir, tiny_tokenizer, msd_rows, max_steps=4, teacher_preset="paper",
                              divergence="reverse_kl", learning_rate=1e-3)  # fmt: skip
    # Before: accepted silently, and the checkpoint's learning-rate schedule replaced the requested one.
    with pytest.raises(ValueError) as error:
        changed.train(resume_from_checkpoint=True)
    text = str(error.value)
    assert "must match" in text and "checkpoint-2" in text
    for field in ("teacher_preset: checkpoint 'english_refusal', now 'paper'", "divergence: checkpoint 'dpsw', now "
                  "'reverse_kl'", "learning_rate: checkpoint 0.05, now 0.001"):  # fmt: skip
        assert field in text
    # Another teacher (weights) must match too.
    other_teacher = _resume_trainer(output_dir, tiny_tokenizer, msd_rows, max_steps=4)
    other_teacher.model.base_model.model.lm_head.weight.data.add_(0.5)
    with pytest.raises(ValueError, match="teacher_weights: checkpoint"):
        other_teacher.train(resume_from_checkpoint=True)
    # A setting that takes effect from the resumed step on is a warning, and the run resumes.
    warned = _resume_trainer(output_dir, tiny_tokenizer, msd_rows, max_steps=3, max_grad_norm=0.5)
    with caplog.at_level(logging.WARNING, logger="msd_trl.trainer"):
        warned.train(resume_from_checkpoint=True)
    assert warned.state.global_step == 3
    assert "max_grad_norm: checkpoint 1.0, now 0.5" in caplog.text and "max_steps: checkpoint 2, now 3" in caplog.text


class _FullDisk:
    """A `torch.save` that writes a few bytes of the optimizer state of one checkpoint, then fails as a full disk."""

    def __init__(self, checkpoint: str):
        self.checkpoint, self.real = checkpoint, torch.save

    def __call__(self, obj, target, *args, **kwargs):
        target_path = str(target)
        if self.checkpoint in target_path and target_path.endswith("optimizer.pt"):
            with open(target_path, "wb") as handle:
                handle.write(b"PK\x03\x04partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return self.real(obj, target, *args, **kwargs)


def test_a_full_disk_during_a_checkpoint_save_is_skipped_on_resume(
    tmp_path, tiny_tokenizer, msd_rows, caplog, monkeypatch
):
    output_dir = tmp_path / "run"
    monkeypatch.setattr(torch, "save", _FullDisk("checkpoint-4"))
    with pytest.raises(OSError, match=r"saving checkpoint .*checkpoint-4 failed: No space left on device.*incomplete"):
        _resume_trainer(output_dir, tiny_tokenizer, msd_rows, max_steps=6).train()
    monkeypatch.undo()
    assert _checkpoints(output_dir) == ["checkpoint-2", "checkpoint-4"]
    assert not (output_dir / "checkpoint-4" / "trainer_state.json").exists()
    # Naming the incomplete checkpoint is refused with the way out.
    with pytest.raises(ValueError, match=r"checkpoint-4 is incomplete \(no trainer_state.json.*checkpoint-2"):
        _resume_trainer(output_dir, tiny_tokenizer, msd_rows, max_steps=6).train(
            resume_from_checkpoint=str(output_dir / "checkpoint-4")
        )
    # Before: resume_from_checkpoint=True picked checkpoint-4 and crashed loading its 12-byte optimizer.
    resumed = _resume_trainer(output_dir, tiny_tokenizer, msd_rows, max_steps=6)
    with caplog.at_level(logging.WARNING, logger="msd_trl.trainer"):
        resumed.train(resume_from_checkpoint=True)
    assert "checkpoint-4 is incomplete" in caplog.text and "resuming from" in caplog.text
    assert resumed.state.global_step == 6
    assert (output_dir / "checkpoint-4" / "trainer_state.json").exists()  # written again, complete this time


# -------------------------------------------------------------------- item 13: the classifier judge's path


def test_a_classifier_judge_with_a_missing_path_names_the_path(tmp_path):
    from msd_trl.evaluation.judges import get_judge

    # Before: the Hub's "Repo id must be in the form 'repo_name' or 'namespace/repo_name'".
    with pytest.raises(ValueError, match=r"--judge classifier:/nonexistent/path: no such folder"):
        get_judge("classifier:/nonexistent/path")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match=rf"--judge classifier:{empty}: could not load a classifier"):
        get_judge(f"classifier:{empty}")


# -------------------------------------------------------------------- fault: a kill during teacher-text generation


def test_a_kill_during_teacher_text_generation_resumes_without_regenerating(tmp_path, tiny_tokenizer, msd_rows):
    reference = _teacher_text(make_model(tiny_tokenizer), msd_rows, tiny_tokenizer, tmp_path / "ref.jsonl",
                              batch_size=2)  # fmt: skip
    path = tmp_path / "killed.jsonl"
    model = make_model(tiny_tokenizer)
    original, calls = model.generate, []

    def killed_on_the_second_batch(*args, **kwargs):
        calls.append(kwargs["input_ids"].size(0))
        if len(calls) == 2:
            raise KeyboardInterrupt("killed")
        return original(*args, **kwargs)

    model.generate = killed_on_the_second_batch
    with pytest.raises(KeyboardInterrupt):
        _teacher_text(model, msd_rows, tiny_tokenizer, path, batch_size=2)
    with path.open("a", encoding="utf-8") as handle:  # the record being written when the process died
        handle.write('{"index": 3, "id": "q2", "langu')
    assert len(path.read_text().splitlines()) == 1 + 1 + 2  # header, 2 finished rows, the partial record
    model.generate, calls[:] = original, []
    calls = _count_generate_calls(model)
    resumed = _teacher_text(model, msd_rows, tiny_tokenizer, path, batch_size=2)
    assert sum(calls) == len(msd_rows) - 2  # only the unfinished rows
    assert resumed["teacher_completion"] == reference["teacher_completion"]
