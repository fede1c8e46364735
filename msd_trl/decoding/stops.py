"""Stop handling: which ids end a completion, and where each completion ends (at its first stop id, kept)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

__all__ = ["completion_mask", "cut_at_stop", "ends_with_stop", "first_stop", "stop_token_ids"]


def stop_token_ids(model: Any, tokenizer: Any) -> list[int]:
    """Every id that ends a completion: the model's generation-config EOS (int or list) and the tokenizer's EOS."""
    ids: list[int] = []
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for value in eos if isinstance(eos, (list, tuple)) else [eos]:
        if value is not None and int(value) not in ids:
            ids.append(int(value))
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids


def first_stop(completion_ids: torch.Tensor, stop_ids: Sequence[int]) -> torch.Tensor:
    """`[B]`: the position of each row's first stop id in `completion_ids` `[B, Lc]`, or `Lc` for a row without one
    (a clipped completion)."""
    is_stop = torch.isin(completion_ids, torch.tensor(list(stop_ids), device=completion_ids.device))  # [B, Lc]
    length = torch.full_like(is_stop[:, 0], completion_ids.size(1), dtype=torch.long)
    return torch.where(is_stop.any(1), is_stop.int().argmax(1), length)


def completion_mask(completion_ids: torch.Tensor, stop_ids: Sequence[int]) -> torch.Tensor:
    """`[B, Lc]` mask keeping every token up to and including the first stop id (any of `stop_ids`).

    When pad == eos the real EOS keeps its label; the padding after it is masked. A row without a stop id keeps
    all `Lc` tokens (a clipped completion).
    """
    positions = torch.arange(completion_ids.size(1), device=completion_ids.device).unsqueeze(0)  # [1, Lc]
    return (positions <= first_stop(completion_ids, stop_ids).unsqueeze(1)).long()  # [B, Lc]


def ends_with_stop(completion_ids: torch.Tensor, mask: torch.Tensor, stop_ids: Sequence[int]) -> torch.Tensor:
    """`[B]` bool: the completion's last kept token is a stop id (False for an empty or clipped completion)."""
    lengths = mask.sum(1)
    last = completion_ids.gather(1, (lengths - 1).clamp(min=0).unsqueeze(1)).squeeze(1)  # [B]
    return torch.isin(last, torch.tensor(list(stop_ids), device=completion_ids.device)) & (lengths > 0)


def cut_at_stop(ids: Sequence[int], stop_ids: Sequence[int]) -> list[int]:
    """One completion's ids up to and including its first stop id (all of them when it has none)."""
    for position, token in enumerate(ids):
        if token in stop_ids:
            return list(ids[: position + 1])
    return list(ids)
