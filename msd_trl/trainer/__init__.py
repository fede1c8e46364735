"""MSD trainers: the shared core (`MSDTrainer`, `base.py`) and its two variants, `OnPolicyMSDTrainer`
(`on_policy.py`) and `OffPolicyMSDTrainer` (`off_policy.py`), plus the registry `msd-trl train --trainer` reads;
`vllm_rollouts.py` samples on-policy rollouts with TRL's `VLLMGeneration` when `MSDConfig.use_vllm` is on."""

from .base import TRAINERS, MSDTrainer, register_trainer
from .off_policy import OffPolicyMSDTrainer
from .on_policy import OnPolicyMSDTrainer

__all__ = ["TRAINERS", "MSDTrainer", "OffPolicyMSDTrainer", "OnPolicyMSDTrainer", "register_trainer"]
