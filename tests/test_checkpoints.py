"""msd_trl.checkpoints without a trainer: completeness, which checkpoint a resume takes, the config comparison.

The same guards end to end (a full disk mid-save, a second run, a changed config) are in test_reliability.py.
"""

from __future__ import annotations

import json
import logging

import pytest

from msd_trl.checkpoints import check_resume_config, incomplete_reason, resolve_resume_checkpoint, write_run_config


def _checkpoint(output_dir, step, state='{"global_step": 1}'):
    folder = output_dir / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    if state is not None:
        (folder / "trainer_state.json").write_text(state)
    return folder


def test_a_checkpoint_is_complete_when_its_trainer_state_parses(tmp_path):
    assert incomplete_reason(_checkpoint(tmp_path, 1)) is None
    assert "no trainer_state.json" in incomplete_reason(_checkpoint(tmp_path, 2, state=None))
    assert "cut or unreadable" in incomplete_reason(_checkpoint(tmp_path, 3, state='{"global_st'))


def test_resume_takes_the_newest_complete_checkpoint_by_step_number(tmp_path, caplog):
    _checkpoint(tmp_path, 9)
    _checkpoint(tmp_path, 10)
    _checkpoint(tmp_path, 11, state=None)
    with caplog.at_level(logging.WARNING, logger="msd_trl.trainer"):
        assert resolve_resume_checkpoint(tmp_path, True) == str(tmp_path / "checkpoint-10")  # 10 > 9 numerically
    assert "checkpoint-11 is incomplete" in caplog.text
    assert resolve_resume_checkpoint(tmp_path / "fresh", None) is None  # nothing there: a fresh run
    with pytest.raises(ValueError, match="holds no complete checkpoint \\(none at all\\)"):
        resolve_resume_checkpoint(tmp_path / "fresh", True)


def test_config_comparison_refuses_must_match_fields_warns_on_others_and_ignores_plumbing(tmp_path, caplog):
    saved = {"training": {"divergence": "dpsw", "max_steps": 4, "logging_steps": 1, "output_dir": "a"},
             "teacher": {"teacher": "m", "teacher_weights": "x"}}  # fmt: skip
    write_run_config(tmp_path, saved)
    assert json.loads((tmp_path / "msd_config.json").read_text()) == saved
    same_but_plumbing = {**saved, "training": {**saved["training"], "logging_steps": 5, "output_dir": "b"}}
    with caplog.at_level(logging.WARNING, logger="msd_trl.trainer"):
        check_resume_config(tmp_path, same_but_plumbing)
        assert caplog.text == ""
        check_resume_config(tmp_path, {**saved, "training": {**saved["training"], "max_steps": 8}})
    assert "max_steps: checkpoint 4, now 8" in caplog.text
    with pytest.raises(ValueError, match="must match: teacher_weights: checkpoint 'x', now 'y'"):
        check_resume_config(tmp_path, {**saved, "teacher": {"teacher": "m", "teacher_weights": "y"}})
