"""MSD trainers: the shared core (`MSDTrainer`, `base.py`) and its two variants, `OnPolicyMSDTrainer`
(`on_policy.py`) and `OffPolicyMSDTrainer` (`off_policy.py`), plus the registry `msd-trl train --trainer` reads.

Every name that lived in the former single module `msd_trl/trainer.py` is importable from here.
"""

from ..config import build_divergence, upgrade_config
from ..rendering import MSDDataCollator
from ..scale_out import check_scale_out
from ..teacher_cache import dense_from_topk
from .base import TRAINERS, MSDTrainer, _MSDTrainerBase, register_trainer
from .off_policy import OffPolicyMSDTrainer
from .on_policy import OnPolicyMSDTrainer

_upgrade_config = upgrade_config  # its former private name

__all__ = [
    "TRAINERS",
    "MSDDataCollator",
    "MSDTrainer",
    "OffPolicyMSDTrainer",
    "OnPolicyMSDTrainer",
    "_MSDTrainerBase",
    "build_divergence",
    "check_scale_out",
    "dense_from_topk",
    "register_trainer",
]
