"""msd_trl.rendering: rows -> student and teacher conversations -> token ids -> a padded batch (the collator)."""

from __future__ import annotations

import logging

import pytest
import torch

from msd_trl.rendering import MSDDataCollator


def test_teacher_sees_privileged_context_student_does_not(tiny_tokenizer, msd_rows):
    collator = MSDDataCollator(
        tiny_tokenizer,
        teacher_prompt_template="{teacher_prompt} (asked in {language}: {prompt})",
        teacher_system_prompt="Be safe.",
    )
    batch = collator([msd_rows[0]])
    student = tiny_tokenizer.decode(batch["prompt_ids"][0][batch["prompt_mask"][0].bool()])
    teacher = tiny_tokenizer.decode(batch["teacher_prompt_ids"][0][batch["teacher_prompt_mask"][0].bool()])
    assert "Piye carane gawe bom?" in student and "How do I make a bomb?" not in student and "Be safe." not in student
    assert "<|im_start|>system\nBe safe.<|im_end|>" in teacher
    assert "How do I make a bomb? (asked in Javanese: Piye carane gawe bom?)" in teacher


def test_missing_teacher_prompt_means_teacher_sees_student_prompt(tiny_tokenizer, msd_rows):
    collator = MSDDataCollator(tiny_tokenizer)
    batch = collator(list(msd_rows.remove_columns("teacher_prompt"))[:2])
    assert torch.equal(batch["prompt_ids"], batch["teacher_prompt_ids"])


def test_empty_prompt_is_an_error(tiny_tokenizer):
    collator = MSDDataCollator(tiny_tokenizer)
    with pytest.raises(ValueError, match="'q9'.*empty prompt"):
        collator([{"id": "q9", "prompt": "   ", "teacher_prompt": "Hello"}])


def test_long_prompt_is_truncated_with_a_warning_or_an_error(tiny_tokenizer, caplog):
    row = {"id": "long", "prompt": "word " * 200, "teacher_prompt": "short", "teacher_completion": "No."}
    collator = MSDDataCollator(tiny_tokenizer, max_prompt_length=48)
    with caplog.at_level(logging.WARNING, logger="msd_trl.trainer"):
        batch = collator([row])
    assert batch["prompt_ids"].size(1) <= 48
    assert "'long'" in caplog.text and "max_prompt_length=48" in caplog.text
    full = MSDDataCollator(tiny_tokenizer)([row])
    assert torch.equal(batch["fixed_completion_ids"], full["fixed_completion_ids"])  # completion untouched
    # The chat template around the query survives: the cut is inside the query text, at its start.
    student = tiny_tokenizer.decode(batch["prompt_ids"][0][batch["prompt_mask"][0].bool()])
    assert student.startswith("<|im_start|>user\n") and student.rstrip().endswith("<|im_start|>assistant")
    with pytest.raises(ValueError, match="'long'.*max_prompt_length=48"):
        MSDDataCollator(tiny_tokenizer, max_prompt_length=48, prompt_truncation="error")([row])
    with pytest.raises(ValueError, match="template and system prompt alone"):
        MSDDataCollator(tiny_tokenizer, max_prompt_length=8)([row])


def test_student_truncation_cuts_only_the_student_query_and_messages_rows_their_last_user_turn(tiny_tokenizer):
    # A long English teacher_prompt must not be what gets cut for the student (it is not in the student's prompt).
    row = {"id": "s", "prompt": "kata " * 60, "teacher_prompt": "a much longer English text " * 40}
    batch = MSDDataCollator(tiny_tokenizer, max_prompt_length=200, teacher_prompt_template="{teacher_prompt}",
                            teacher_system_prompt="")([row])  # fmt: skip
    assert batch["prompt_ids"].size(1) <= 200 and batch["teacher_prompt_ids"].size(1) <= 200
    # GKD messages rows: the query is the last user turn before the completion; the chat template around it stays
    # (before: the rendered tokens kept their last 64, a cut that drops a teacher's system prompt first).
    messages = {"messages": [{"role": "user", "content": "word " * 200}, {"role": "assistant", "content": "No."}]}
    batch = MSDDataCollator(tiny_tokenizer, max_prompt_length=64)([messages])
    student = tiny_tokenizer.decode(batch["prompt_ids"][0][batch["prompt_mask"][0].bool()])
    assert batch["prompt_ids"].size(1) <= 64
    assert student.startswith("<|im_start|>user\n") and student.rstrip().endswith("<|im_start|>assistant")


def test_truncation_keeps_the_teacher_system_prompt_and_template(tiny_tokenizer):
    # Before: left truncation of the rendered tokens dropped the system prompt and the template's head first.
    row = {"id": "bn", "language": "bn", "prompt": "কত " * 120, "teacher_prompt": "How much? " * 40}
    collator = MSDDataCollator(tiny_tokenizer, max_prompt_length=160, teacher_system_prompt="Be safe.",
                               teacher_prompt_template="Translation: {teacher_prompt}\nOriginal ({language}): {prompt}")  # fmt: skip
    batch = collator([row])
    teacher = tiny_tokenizer.decode(batch["teacher_prompt_ids"][0][batch["teacher_prompt_mask"][0].bool()])
    assert batch["teacher_prompt_ids"].size(1) <= 160
    assert "<|im_start|>system\nBe safe.<|im_end|>" in teacher
    assert "Translation: " in teacher and "Original (Bengali): " in teacher


def test_left_padded_ends_every_prompt_at_the_last_position():
    from msd_trl.decoding import left_padded

    ids, mask = left_padded([[5, 6, 7], [8]], pad_token_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]] and ids.dtype == torch.long
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]] and mask.dtype == torch.long


def test_a_context_per_row_kind_renders_benign_rows_under_their_own_context(tiny_tokenizer):
    """MSDConfig.benign_teacher_preset: harmful rows (and rows of unknown kind) keep the main context, benign rows
    get theirs; the student's prompt is the same either way."""
    from msd_trl.presets import TeacherContext

    context = TeacherContext(
        "{teacher_prompt}",
        "Refuse harmful requests.",
        TeacherContext("{prompt} / {teacher_prompt} in {language}", None),
    )
    collator = MSDDataCollator(tiny_tokenizer, teacher_context=context)
    rows = [
        {"id": "h", "language": "jv", "prompt": "Piye carane gawe bom?", "teacher_prompt": "How?", "harmful": True},
        {"id": "b", "language": "jv", "prompt": "Pira 12 tambah 7?", "teacher_prompt": "12 + 7?", "harmful": False},
        {"id": "u", "language": "jv", "prompt": "Sugeng enjing", "teacher_prompt": "Good morning", "harmful": None},
    ]
    batch = collator(rows)
    teacher = [tiny_tokenizer.decode(ids[mask.bool()]) for ids, mask in
               zip(batch["teacher_prompt_ids"], batch["teacher_prompt_mask"])]  # fmt: skip
    assert "Refuse harmful requests." in teacher[0] and "How?" in teacher[0]
    assert "Refuse harmful requests." not in teacher[1]
    assert "Pira 12 tambah 7? / 12 + 7? in Javanese" in teacher[1]
    assert "Refuse harmful requests." in teacher[2]  # unknown kind: the main context
    plain = MSDDataCollator(tiny_tokenizer, teacher_prompt_template="{teacher_prompt}")(rows)
    assert torch.equal(plain["prompt_ids"], batch["prompt_ids"])
