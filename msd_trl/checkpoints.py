"""Checkpoints: a run never overwrites another's silently, never resumes from a half-written checkpoint, and never
resumes under a config that would mix two objectives without saying so.

Design: `MSDTrainer.train` calls `resolve_resume_checkpoint` before the Trainer loads anything, and
`MSDTrainer._save_checkpoint` writes `msd_config.json` (the run's resolved `MSDConfig` and the teacher's
fingerprint, `msd_trl.fingerprint`) into every checkpoint, first.

* A checkpoint is complete when its `trainer_state.json` exists and parses: the Trainer writes it last, after the
  weights, optimizer, scheduler and RNG states, so a save stopped part-way (a full disk, a kill) leaves a folder
  without it. Resuming with `resume_from_checkpoint=True` takes the newest complete checkpoint and names every
  newer incomplete one it skips; naming an incomplete checkpoint explicitly is a `ValueError`. A save that fails
  with an `OSError` is re-raised naming the checkpoint, which resume will skip.
* A run that is not resuming into an `output_dir` that already holds checkpoints is a `ValueError` naming the
  folder and the two ways out (resume, or another `output_dir`): transformers 5 has no `overwrite_output_dir`, and
  the Trainer would otherwise write over the earlier run's `checkpoint-N` folders.
* On resume, the checkpoint's `msd_config.json` is compared with this run's config, field by field:
  - `RESUME_MUST_MATCH` fields refuse the resume, naming each with both values: the teacher (preset, template,
    system prompt, teacher model, and the teacher's weight / config / adapter / tokenizer digests) and the
    objective (divergence and its options), since a run resumed under another would train towards two targets;
    and the optimizer settings the checkpoint's optimizer and scheduler state silently override (learning rate,
    schedule, warm-up, optimizer and its hyperparameters), since a new value there would be ignored;
  - `RESUME_UNCHECKED` fields (output, logging, saving, evaluation, Hub and loader plumbing) are not compared;
  - every other difference (`max_steps`, batch size, `max_grad_norm`, `lmbda`, `seed`, ...) takes effect from the
    resumed step on and is logged as one warning naming the fields.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Any

logger = logging.getLogger("msd_trl.trainer")

__all__ = [
    "RESUME_MUST_MATCH",
    "RESUME_UNCHECKED",
    "RUN_CONFIG_FILE",
    "check_resume_config",
    "checkpoint_save_error",
    "incomplete_reason",
    "resolve_resume_checkpoint",
    "write_run_config",
]

RUN_CONFIG_FILE = "msd_config.json"
_TRAINER_STATE = "trainer_state.json"  # transformers.trainer.TRAINER_STATE_NAME, written last by a checkpoint save
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")

# Fields a resumed run must share with its checkpoint (see the module docstring).
RESUME_MUST_MATCH = frozenset(
    {
        # the teacher
        "teacher_preset", "teacher_prompt_template", "teacher_system_prompt", "benign_teacher_preset", "teacher_model_name_or_path",
        "teacher_model_init_kwargs",
        # the objective
        "divergence", "dpsw_base", "dpsw_top_k", "dpsw_min_weight", "dpsw_normalize", "divergence_temperature",
        "beta", "teacher_cache_top_k",
        # restored from the checkpoint's optimizer and scheduler state: a new value would be ignored
        "learning_rate", "lr_scheduler_type", "lr_scheduler_kwargs", "warmup_steps", "optim", "optim_args",
        "weight_decay", "adam_beta1", "adam_beta2", "adam_epsilon",
    }
)  # fmt: skip
# Fields expected to differ between a run and its resumption, or that do not change what is trained.
RESUME_UNCHECKED = frozenset(
    {
        "output_dir", "run_name", "resume_from_checkpoint", "report_to", "project", "disable_tqdm", "push_to_hub",
        "local_rank", "do_train", "do_eval", "do_predict", "per_device_eval_batch_size", "prediction_loss_only",
        "batch_eval_metrics", "metric_for_best_model", "greater_is_better", "load_best_model_at_end",
        "include_for_metrics", "skip_memory_metrics", "dataloader_num_workers", "dataloader_persistent_workers",
        "dataloader_prefetch_factor", "dataloader_pin_memory", "dataloader_multiprocessing_context",
        "generation_threads", "ddp_timeout",
    }
)  # fmt: skip
_UNCHECKED_PREFIXES = ("logging_", "log_", "save_", "eval_", "hub_", "trackio_")


def _checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """`checkpoint-N` folders of `output_dir`, newest (highest N) first."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if p.is_dir() and (m := _CHECKPOINT.match(p.name))]
    return [path for _, path in sorted(found, reverse=True)]


def incomplete_reason(checkpoint: str | os.PathLike) -> str | None:
    """Why a checkpoint folder cannot be resumed from (`None`: it is complete)."""
    state = Path(checkpoint) / _TRAINER_STATE
    if not state.is_file():
        return f"no {_TRAINER_STATE}: its save was interrupted, e.g. by a full disk or a kill"
    try:
        json.loads(state.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        return f"its {_TRAINER_STATE} is cut or unreadable ({err}): its save was interrupted"
    return None


def resolve_resume_checkpoint(output_dir: str | os.PathLike, resume_from_checkpoint: str | bool | None) -> str | None:
    """The checkpoint a run resumes from, or `None` for a fresh run (see the module docstring).

    `True` -> the newest complete `checkpoint-N` of `output_dir` (incomplete newer ones are skipped with a warning);
    a path -> that checkpoint, if complete; `None` / `False` -> a fresh run, refused when `output_dir` already holds
    checkpoints.
    """
    existing = _checkpoints(output_dir)
    if resume_from_checkpoint is None or resume_from_checkpoint is False:
        if existing:
            names = ", ".join(path.name for path in sorted(existing))
            complete = next((path for path in existing if incomplete_reason(path) is None), None)
            resume_path = complete or existing[0]
            raise ValueError(
                f"output_dir {str(output_dir)!r} already holds checkpoints of an earlier run ({names}), and this run "
                f"would write over them. To continue that run, resume it: train(resume_from_checkpoint=True) (msd-trl "
                f"train: --resume_from_checkpoint {resume_path}). To start afresh, pass another output_dir (or delete "
                "those checkpoints)."
            )
        return None
    if resume_from_checkpoint is True:
        skipped = []
        for path in existing:
            reason = incomplete_reason(path)
            if reason is None:
                for name, why in skipped:
                    logger.warning("%s is incomplete (%s); resuming from %s instead.", name, why, path)
                return str(path)
            skipped.append((path, reason))
        found = "; ".join(f"{path.name}: {why}" for path, why in skipped) or "none at all"
        raise ValueError(
            f"resume_from_checkpoint=True, but output_dir {str(output_dir)!r} holds no complete checkpoint "
            f"({found}). Start afresh in another output_dir, or pass the path of a complete checkpoint."
        )
    checkpoint = Path(resume_from_checkpoint)
    reason = incomplete_reason(checkpoint) if checkpoint.is_dir() else None  # a missing folder: the Trainer says so
    if reason is not None:
        complete = next((path for path in _checkpoints(checkpoint.parent) if incomplete_reason(path) is None), None)
        alternative = f"Resume from {complete} (the newest complete one)" if complete else "Start afresh"
        raise ValueError(
            f"resume_from_checkpoint: {checkpoint} is incomplete ({reason}). {alternative}, or pass "
            "resume_from_checkpoint=True to take the newest complete checkpoint."
        )
    return os.fspath(resume_from_checkpoint)


def write_run_config(checkpoint: str | os.PathLike, run_config: dict[str, Any]) -> None:
    """Write `msd_config.json` (`{"training": resolved config, "teacher": teacher fingerprint}`) into a checkpoint."""
    folder = Path(checkpoint)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / RUN_CONFIG_FILE).write_text(json.dumps(run_config, indent=2, default=str), encoding="utf-8")


def checkpoint_save_error(checkpoint: str | os.PathLike, error: OSError) -> OSError:
    """The error of a failed checkpoint save, naming the checkpoint and what happens to it (same type and errno, so
    callers that catch `OSError` still do)."""
    cause = error.strerror or str(error)
    return type(error)(
        error.errno,
        f"saving checkpoint {checkpoint} failed: {cause}. That checkpoint is incomplete; resuming with "
        "resume_from_checkpoint=True skips it and takes the newest complete one. Free space (or fix the cause) "
        "before resuming.",
    )


def check_resume_config(checkpoint: str | os.PathLike, current: dict[str, Any]) -> None:
    """Compare the checkpoint's `msd_config.json` with this run's (`current`, the same layout): refuse on a
    `RESUME_MUST_MATCH` field or teacher difference, warn on the rest (see the module docstring)."""
    from .fingerprint import fingerprint_differences  # imports torch: not needed by the folder checks above

    path = Path(checkpoint) / RUN_CONFIG_FILE
    if not path.is_file():
        logger.warning(
            "%s has no %s (saved by an older msd_trl or another trainer): its config cannot be compared with this "
            "run's; make sure the teacher, divergence and learning rate are the ones it was trained with.",
            checkpoint, RUN_CONFIG_FILE,
        )  # fmt: skip
        return
    saved = json.loads(path.read_text(encoding="utf-8"))
    saved_training, training = saved.get("training", {}), current.get("training", {})
    refused, warned = [], []
    for line in fingerprint_differences(saved_training, training, then="checkpoint"):
        field = line.split(":", 1)[0]
        if field in RESUME_MUST_MATCH:
            refused.append(line)
        elif field not in RESUME_UNCHECKED and not field.startswith(_UNCHECKED_PREFIXES):
            warned.append(line)
    if "teacher" in saved and "teacher" in current:
        refused += fingerprint_differences(saved["teacher"], current["teacher"], then="checkpoint")
    if refused:
        raise ValueError(
            f"resume_from_checkpoint: this run's config differs from {checkpoint}'s in fields that must match: "
            f"{'; '.join(refused)}. The teacher and the objective must stay the same within a run, and the "
            "optimizer settings would be silently replaced by the checkpoint's optimizer and learning-rate "
            f"schedule. Resume with the checkpoint's values ({path}), or start a new run in another output_dir "
            "(from the checkpoint's weights if you want them) to train with the new ones."
        )
    if warned:
        logger.warning(
            "Resuming from %s with settings that differ from the checkpoint's; they apply from the resumed step "
            "on: %s", checkpoint, "; ".join(warned),
        )  # fmt: skip
