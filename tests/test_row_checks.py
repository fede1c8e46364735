"""msd_trl.row_checks: each bad dataset or row fails with its name, index or id and the fix (no model needed)."""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset

from msd_trl.row_checks import check_columns, check_privileged_context, named_datasets, validate_rows

ROW = {"id": "q1", "language": "jv", "prompt": "Piye?", "teacher_prompt": "How?"}


def test_named_datasets_name_each_set_as_passed():
    a, b = Dataset.from_list([ROW]), Dataset.from_list([ROW])
    assert [n for n, _ in named_datasets(a, {"x": b, "y": b})] == ["train_dataset", "eval_dataset['x']",
                                                                    "eval_dataset['y']"]  # fmt: skip
    assert [n for n, _ in named_datasets(None, b)] == ["eval_dataset"]


def test_check_columns():
    with pytest.raises(ValueError, match="train_dataset has 0 rows"):
        check_columns(Dataset.from_list([ROW]).select([]), "train_dataset", requires_completion=False)
    with pytest.raises(ValueError, match="no 'prompt' column.*found columns \\['text'\\]"):
        check_columns(Dataset.from_list([{"text": "x"}]), "train_dataset", requires_completion=False)
    with pytest.raises(ValueError, match="no 'answer' column.*Off scores fixed teacher text"):
        check_columns(Dataset.from_list([ROW]), "train_dataset", requires_completion=True, completion_column="answer",
                      trainer_name="Off")  # fmt: skip
    check_columns(Dataset.from_list([ROW]), "train_dataset", requires_completion=False)
    check_columns(iter([ROW]), "train_dataset", requires_completion=True)  # iterables: checked per batch


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"prompt": None}, "row 1 \\(id 'q2'\\): 'prompt' is empty"),
        ({"prompt": "  "}, "'prompt' is blank"),
        ({"prompt": [{"role": "user"}]}, "needs 'role' and 'content'"),
        ({"teacher_prompt": " "}, "'teacher_prompt' is blank"),
        ({"teacher_prompt": None}, "self-teacher would see exactly the student's conversation"),
    ],
)
def test_validate_rows_names_the_bad_row_and_the_fix(changes, message):
    rows = [ROW, {**ROW, "id": "q2", **changes}]
    dataset = rows if isinstance(changes.get("prompt"), list) else Dataset.from_list(rows)
    with pytest.raises(ValueError, match=message):
        validate_rows(dataset, "train_dataset", self_teacher=True, template="{teacher_prompt}", system_prompt=None)


def test_validate_rows_context_and_completion_rules():
    same = Dataset.from_list([{**ROW, "teacher_prompt": None}])
    # A separate teacher may see the student's prompt (GKD); a system prompt makes the self-teacher's view differ.
    validate_rows(same, "d", self_teacher=False, template="{teacher_prompt}", system_prompt=None)
    validate_rows(same, "d", self_teacher=True, template="{teacher_prompt}", system_prompt="Be safe.")
    text = Dataset.from_list([{**ROW, "teacher_completion": None}])
    with pytest.raises(ValueError, match="'teacher_completion' must be a string"):
        validate_rows(text, "d", self_teacher=True, template="{teacher_prompt}", system_prompt=None,
                      completion_column="teacher_completion")  # fmt: skip
    # The column is only required where it exists (GKD messages rows carry their completion inside).
    validate_rows(Dataset.from_list([ROW]), "d", self_teacher=True, template="{teacher_prompt}", system_prompt=None,
                  completion_column="teacher_completion")  # fmt: skip


def test_privileged_context_check_names_the_rows():
    ids = torch.tensor([[0, 5, 6], [7, 8, 9]])
    mask = torch.tensor([[0, 1, 1], [1, 1, 1]])
    teacher = torch.tensor([[0, 5, 6], [7, 8, 1]])
    inputs = {"prompt_ids": ids, "prompt_mask": mask, "teacher_prompt_ids": teacher, "teacher_prompt_mask": mask,
              "row_ids": ["a", "b"]}  # fmt: skip
    with pytest.raises(ValueError, match="rows \\['a'\\]"):
        check_privileged_context(inputs)
    check_privileged_context({**inputs, "teacher_prompt_ids": teacher + 1})
    longer = {**inputs, "teacher_prompt_ids": torch.zeros(2, 4, dtype=torch.long),
              "teacher_prompt_mask": torch.ones(2, 4, dtype=torch.long)}  # fmt: skip
    check_privileged_context(longer)  # different lengths cannot be identical
