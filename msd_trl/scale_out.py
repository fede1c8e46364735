"""Multi-process set-ups checked at the start of training: what is known to break is refused with the fix.

Pure: the trainer passes what accelerate resolved (distributed type, DeepSpeed ZeRO stage) and its own facts.
"""

from __future__ import annotations

import logging

logger = logging.getLogger("msd_trl.trainer")

__all__ = ["check_scale_out"]


def check_scale_out(
    *,
    distributed_type: str,
    zero_stage: int | None,
    self_teacher: bool,
    peft: bool,
    loss_chunk_size: int | None,
    fsdp_requested: bool = False,
) -> None:
    """Refuse, at construction, the multi-process set-ups that are known to break or are untested, naming the fix.

    * DeepSpeed ZeRO-3 with the self-teacher under PEFT: the teacher is the adapter-disabled student, and disabling
      an adapter on ZeRO-3-partitioned weights is where TRL's own trainers broke (TRL issue #6237). Use FSDP2
      (`accelerate launch --use_fsdp --fsdp_version 2`) or ZeRO-2.
    * `loss_chunk_size` under FSDP or ZeRO-3: the chunked loss calls the output head outside the model's forward,
      where sharded weights are not gathered; unset it there.
    * FSDP asked for on CPU: accelerate runs it as plain data parallelism (a full copy per process), said once.
    """
    sharded = distributed_type == "FSDP" or zero_stage == 3
    if zero_stage == 3 and self_teacher and peft:
        raise ValueError(
            "DeepSpeed ZeRO-3 with the self-teacher (teacher_model=None) under PEFT is not supported: the teacher is "
            "the student with its adapter disabled, which breaks on ZeRO-3-partitioned weights (TRL issue #6237). "
            "Use FSDP2 (accelerate launch --use_fsdp --fsdp_version 2, examples/accelerate/fsdp2.yaml) or ZeRO-2."
        )
    if sharded and loss_chunk_size is not None:
        raise ValueError(
            f"MSDConfig.loss_chunk_size={loss_chunk_size} is not supported with sharded weights "
            f"({'FSDP' if distributed_type == 'FSDP' else 'ZeRO-3'}): the chunked loss calls the output head outside "
            "the model's forward. Unset loss_chunk_size."
        )
    if fsdp_requested and distributed_type == "MULTI_CPU":
        logger.warning(
            "FSDP was requested (ACCELERATE_USE_FSDP), but accelerate runs multi-process CPU training as plain data "
            "parallelism: every process holds a full copy of the model. FSDP sharding needs GPUs."
        )
