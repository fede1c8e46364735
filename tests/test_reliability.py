"""Reliability: failures that used to be silent or late, each with the behaviour now stated (issue 12).

Every case fails early with a ValueError naming the row or field and the fix, on tiny models built in the test.
"""

from __future__ import annotations

import pytest
import torch
from conftest import make_model
from datasets import Dataset
from peft import LoraConfig
from transformers import TrainerCallback

from msd_trl import MSDConfig, OffPolicyMSDTrainer, OnPolicyMSDTrainer


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


def _resume_trainer(output_dir, tokenizer, dataset, callbacks=None):
    return OnPolicyMSDTrainer(
        model=make_model(tokenizer),
        args=MSDConfig(
            output_dir=str(output_dir),
            report_to="none",
            per_device_train_batch_size=2,
            max_steps=4,
            max_new_tokens=4,
            learning_rate=5e-2,
            save_strategy="steps",
            save_steps=2,
            logging_steps=1,
            seed=0,
            teacher_preset="english_refusal",
        ),  # fmt: skip
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
