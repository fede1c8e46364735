"""Completion tensors, from ids to the numbers a step logs: pure helpers the MSD trainers are built from.

A step, for any trainer variant: completion ids (sampled, or fixed teacher text) -> `decoding.completion_mask` (up
to the first stop id) -> `build_scoring_batch` (student and teacher sequences sharing the completion, all-padding columns
trimmed) -> `completion_logits` for the student and the teacher (only the completion positions) -> a
`Divergence` -> `step_statistics` for logging. Nothing here knows about the Trainer, accelerate or PEFT, so each
piece is tested on small tensors (tests/test_completions.py).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from .decoding import concat_padded, length_grouped
from .divergences import DivergenceOutput

__all__ = ["STEP_STATISTICS", "build_scoring_batch", "completion_logits", "generate_grouped", "step_statistics"]


def generate_grouped(
    generate: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    prompts: Sequence[tuple[torch.Tensor, torch.Tensor]],
    *,
    pad_token_id: int,
    rows_per_call: int | None = None,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Completions for several left-padded prompt batches from as few `generate(ids, mask)` calls as possible.

    The batches are re-padded into one; `rows_per_call` (None: all rows in one call) splits it, rows sorted by
    prompt length so each call pads little, all-padding left columns dropped per call. Results come back per batch,
    in row order, right-padded to the longest completion.
    """
    if not prompts:
        return []
    prompt_ids, prompt_mask = concat_padded(
        [p[0] for p in prompts], [p[1] for p in prompts], pad_token_id, side="left"
    )
    rows = prompt_ids.size(0)
    chunk = rows_per_call or rows
    groups = [list(range(rows))]
    if chunk < rows:  # group by prompt length (shortest first)
        groups = length_grouped(prompt_mask.sum(1).tolist(), chunk, descending=False)
    order = torch.tensor([row for group in groups for row in group])
    pieces_ids, pieces_mask = [], []
    for group in groups:
        index = torch.tensor(group, device=prompt_ids.device)
        ids, mask = prompt_ids[index], prompt_mask[index]
        keep = int(mask.sum(0).ne(0).nonzero()[0]) if mask.any() else 0  # first column with a real token
        completion_ids, completion_mask = generate(ids[:, keep:], mask[:, keep:])
        pieces_ids.append(completion_ids)
        pieces_mask.append(completion_mask)
    completion_ids, completion_mask = concat_padded(pieces_ids, pieces_mask, pad_token_id, side="right")
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(rows)
    inverse = inverse.to(completion_ids.device)
    completion_ids, completion_mask = completion_ids[inverse], completion_mask[inverse]
    sizes = [p[0].size(0) for p in prompts]
    return list(zip(completion_ids.split(sizes), completion_mask.split(sizes)))


def build_scoring_batch(
    inputs: dict[str, Any],
    completion_ids: torch.Tensor,
    mask: torch.Tensor,
    *,
    pad_token_id: int,
    carry: Sequence[str] = (),
) -> dict[str, torch.Tensor]:
    """Student and teacher sequences that share one completion, ready to score.

    `inputs` holds the collator's left-padded `prompt_ids` / `prompt_mask` / `teacher_prompt_ids` /
    `teacher_prompt_mask`; the completion `[B, Lc]` is right-padded. Columns that are padding in every row are
    trimmed (rollouts stop early, batches are padded to the longest) and masked positions hold `pad_token_id`.
    Keys in `carry` (per-completion-token tensors such as cached teacher top-K) are trimmed the same way.
    """
    keep = int(mask.sum(1).max().item()) if mask.numel() else 0
    completion_ids, mask = completion_ids[:, :keep], mask[:, :keep]
    completion_ids = completion_ids.masked_fill(mask == 0, pad_token_id)
    batch = {
        "input_ids": torch.cat([inputs["prompt_ids"], completion_ids], dim=1),
        "attention_mask": torch.cat([inputs["prompt_mask"], mask], dim=1),
        "teacher_input_ids": torch.cat([inputs["teacher_prompt_ids"], completion_ids], dim=1),
        "teacher_attention_mask": torch.cat([inputs["teacher_prompt_mask"], mask], dim=1),
        "completion_ids": completion_ids,
        "completion_mask": mask,
    }
    for key in carry:
        if key in inputs:
            batch[key] = inputs[key][:, :keep]
    return batch


def completion_logits(
    model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, num_completion: int, *, logits_to_keep: bool
) -> torch.Tensor:
    """Logits that predict the last `num_completion` tokens of `input_ids`: `[B, Lc, V]`.

    With `logits_to_keep` (models whose forward takes it) the LM head runs on the last `Lc + 1` positions only.
    """
    kwargs = {"input_ids": input_ids, "attention_mask": attention_mask, "use_cache": False}
    if logits_to_keep:
        kwargs["logits_to_keep"] = num_completion + 1
    logits = model(**kwargs).logits  # [B, L or Lc + 1, V]
    return logits[:, -num_completion - 1 : -1, :]


STEP_STATISTICS = (
    "msd/loss",
    "msd/divergence",
    "msd/dpsw_weight_mean",
    "msd/dpsw_weight_max",
    "msd/teacher_student_top1_agreement",
)


@torch.no_grad()
def step_statistics(
    output: DivergenceOutput,
    student_logits: torch.Tensor | None,
    teacher_logits: torch.Tensor | None,
    mask: torch.Tensor,
) -> torch.Tensor:
    """The values of `STEP_STATISTICS` for one micro-batch, as one float tensor (gathered across processes by
    the caller): weighted loss and plain divergence per completion token, token-weight mean and max, and the share
    of completion tokens on which student and teacher agree on the most likely token (from the logits, or from
    `output.agreement` when the chunked loss never kept them)."""
    valid = mask.bool()
    num_valid = valid.sum().clamp(min=1)
    weights = output.weights[valid] if valid.any() else output.weights.new_ones(1)
    agreement = getattr(output, "agreement", None)
    if agreement is None:
        agreement = student_logits.argmax(-1) == teacher_logits.argmax(-1)
    agree = agreement & valid
    per_token = output.per_token_loss.detach()
    return torch.stack(
        [
            (per_token * output.weights).sum() / num_valid,
            per_token.sum() / num_valid,
            weights.float().mean(),
            weights.float().max(),
            agree.sum() / num_valid,
        ]
    ).float()
