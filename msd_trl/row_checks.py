"""Row checks the trainers run before training (and per batch): a bad row fails now, naming itself and the fix.

Pure functions over datasets, rows and collated batches, so they are tested without a model and reused by any
trainer variant. `MSDTrainer` calls `check_columns` before `SFTTrainer.__init__` (a dataset that cannot be
trained on should not cost a model load), `validate_rows` once the teacher is known, and
`check_privileged_context` on every collated batch (iterable datasets are never walked at construction).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from .names import TEACHER_COMPLETION_COLUMN
from .rendering import render_student_messages, render_teacher_messages

__all__ = ["check_columns", "check_privileged_context", "named_datasets", "validate_rows"]


def named_datasets(train_dataset: Any, eval_dataset: Any) -> Iterator[tuple[str, Any]]:
    """(`name`, dataset) for the training set and each evaluation set, named as the user passed them."""
    if train_dataset is not None:
        yield "train_dataset", train_dataset
    if isinstance(eval_dataset, dict):
        yield from ((f"eval_dataset[{k!r}]", v) for k, v in eval_dataset.items())
    elif eval_dataset is not None:
        yield "eval_dataset", eval_dataset


def check_columns(
    dataset: Any,
    name: str,
    *,
    requires_completion: bool,
    completion_column: str = TEACHER_COMPLETION_COLUMN,
    trainer_name: str = "the trainer",
) -> None:
    """The dataset has rows and the columns the trainer reads (`prompt` or GKD `messages`; the fixed completion
    when `requires_completion`). Datasets without `column_names` (iterables) are checked per batch instead."""
    if hasattr(dataset, "__len__") and len(dataset) == 0:  # else SFTTrainer fails with a bare StopIteration
        raise ValueError(f"{name} has 0 rows: pass a dataset with at least one MSD row.")
    columns = set(getattr(dataset, "column_names", None) or [])
    if not columns:
        return
    if "prompt" not in columns and "messages" not in columns:
        raise ValueError(
            f"{name} has no 'prompt' column (nor GKD's 'messages'); found columns {sorted(columns)}. MSD rows "
            "need 'prompt' (the target-language query) and usually 'teacher_prompt' (the English query)."
        )
    if requires_completion and completion_column not in columns and "prompt" in columns:
        raise ValueError(
            f"{name} has no {completion_column!r} column (found {sorted(columns)}). {trainer_name} scores "
            "fixed teacher text: create it with msd_trl.generate_teacher_completions(model, dataset, ...) (its "
            "column= must match MSDDataCollator(completion_column=...))."
        )


def validate_rows(
    dataset: Any,
    name: str,
    *,
    self_teacher: bool,
    template: str,
    system_prompt: str | None,
    completion_column: str | None = None,
    context=None,
) -> None:
    """Check every row once, so a bad row fails before training with its index and id, not at a random step.

    Rows need a non-empty `prompt` (or GKD `messages` of role/content dicts) and a non-blank `teacher_prompt` when
    the column holds a value; with `completion_column` (a trainer that scores fixed text, when the column exists)
    a string there. With the self-teacher a teacher conversation identical to the student's is refused: its loss
    is 0, there is nothing to distil. Datasets without `__len__` / `__getitem__` (iterables) are not walked.
    """
    if not hasattr(dataset, "__len__") or not hasattr(dataset, "__getitem__"):
        return
    if completion_column is not None and completion_column not in (getattr(dataset, "column_names", None) or []):
        completion_column = None
    for index, row in enumerate(dataset):
        where = f"{name} row {index} (id {row.get('id', '?')!r})"
        prompt = row.get("prompt")
        if prompt is None and not row.get("messages"):
            raise ValueError(f"{where}: 'prompt' is empty (None) and there are no 'messages'; drop or fill the row.")
        if isinstance(prompt, str) and not prompt.strip():
            raise ValueError(f"{where}: 'prompt' is blank ({prompt!r}); drop or fill the row.")
        conversation = prompt if prompt is not None else row.get("messages")
        if isinstance(conversation, list):
            for turn in conversation:
                if not isinstance(turn, dict) or turn.get("role") is None or turn.get("content") is None:
                    raise ValueError(f"{where}: every chat message needs 'role' and 'content', got {turn!r}.")
        teacher_prompt = row.get("teacher_prompt")
        if isinstance(teacher_prompt, str) and not teacher_prompt.strip():
            raise ValueError(
                f"{where}: 'teacher_prompt' is blank ({teacher_prompt!r}): the teacher would see no English "
                "query. Fill it, or set it to None to give the teacher the student's query."
            )
        if completion_column is not None and not isinstance(row.get(completion_column), str):
            raise ValueError(
                f"{where}: {completion_column!r} must be a string, got {row.get(completion_column)!r}; "
                "regenerate it with msd_trl.generate_teacher_completions."
            )
        if self_teacher and render_teacher_messages(
            row, template=template, system_prompt=system_prompt, context=context
        ) == render_student_messages(row):
            raise ValueError(
                f"{where}: the self-teacher would see exactly the student's conversation, so there is nothing to "
                "distil (loss 0). Add a 'teacher_prompt' column (the English query), or a teacher context: "
                "MSDConfig(teacher_preset='english_refusal' or 'paper') or a teacher_system_prompt."
            )


def check_privileged_context(inputs: dict[str, Any]) -> None:
    """A collated batch (`MSDDataCollator` output) in which some row's teacher prompt equals its student prompt is
    refused, naming the rows: with the self-teacher such a row teaches nothing. Cheap: one comparison of ids."""
    student, teacher = inputs["prompt_ids"], inputs["teacher_prompt_ids"]
    if student.shape != teacher.shape:
        return
    same = ((student == teacher) & (inputs["prompt_mask"] == inputs["teacher_prompt_mask"])).all(dim=1)  # [B]
    if bool(same.any()):
        flags = same.tolist()
        rows = [row for row, flag in zip(inputs.get("row_ids") or [None] * len(flags), flags) if flag]
        raise ValueError(
            f"rows {rows}: the self-teacher sees exactly the student's prompt, so there is nothing to distil. Add "
            "a 'teacher_prompt' column or a teacher context (MSDConfig.teacher_preset / teacher_system_prompt)."
        )
