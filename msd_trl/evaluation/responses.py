"""Answers for evaluation come from the one batched generation loop, `msd_trl.generation.generate_responses`."""

from ..generation import _CharacterBudget, _with_system_prompt, generate_responses

__all__ = ["_CharacterBudget", "_with_system_prompt", "generate_responses"]
