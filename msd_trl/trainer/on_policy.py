"""`OnPolicyMSDTrainer`: the student samples a response to its target-language prompt, the teacher scores it."""

from __future__ import annotations

import random

from .base import MSDTrainer, _document_arguments, register_trainer

__all__ = ["OnPolicyMSDTrainer"]


@register_trainer("on-policy")
@_document_arguments
class OnPolicyMSDTrainer(MSDTrainer):
    """On-policy MSD: the student samples a response to its target-language prompt, the teacher scores it.

    With probability `args.lmbda` a micro-batch is on-policy; otherwise it scores the rows' fixed completion
    (`teacher_completion`, or the last turn of `messages`) when every row has one, and samples when not.
    The arguments are `trl.experimental.gkd.GKDTrainer`'s, in the same order (a drop-in replacement).
    """

    _name = "On-policy MSD"

    def use_fixed_completion(self, inputs):
        if "fixed_completion_ids" not in inputs:
            return False
        return random.random() > self.args.lmbda
