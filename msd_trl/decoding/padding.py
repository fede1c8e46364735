"""Padding token-id batches: prompts on the left (each ends at the last position, as `generate` and a forward over
prompts expect), completions on the right (each starts right after its prompt)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.nn.utils.rnn import pad_sequence

__all__ = ["concat_padded", "left_padded", "pad"]


def pad(tensors: Sequence[torch.Tensor], padding_value: float, padding_side: str = "right") -> torch.Tensor:
    """Stack 1-D (or `[L, ...]`) tensors into `[B, L_max, ...]`, padding each on `padding_side`."""
    return pad_sequence(list(tensors), batch_first=True, padding_value=padding_value, padding_side=padding_side)


def left_padded(sequences: Sequence[Sequence[int]], pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-id lists as a left-padded `[B, L_max]` id batch and its attention mask."""
    tensors = [torch.tensor(s, dtype=torch.long) for s in sequences]
    ids = pad(tensors, padding_value=pad_token_id, padding_side="left")
    mask = pad([torch.ones_like(t) for t in tensors], padding_value=0, padding_side="left")
    return ids, mask


def concat_padded(
    ids: Sequence[torch.Tensor], masks: Sequence[torch.Tensor], pad_token_id: int, *, side: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack `[b_i, L_i]` batches padded on `side` ("left": prompts, "right": completions) into one
    `[sum b_i, max L_i]` batch, padding ids with `pad_token_id` and masks with 0 on the same side."""
    width = max(t.size(1) for t in ids)

    def widen(t: torch.Tensor, value: int) -> torch.Tensor:
        extra = width - t.size(1)
        return torch.nn.functional.pad(t, (extra, 0) if side == "left" else (0, extra), value=value)

    return torch.cat([widen(t, pad_token_id) for t in ids]), torch.cat([widen(m, 0) for m in masks])
