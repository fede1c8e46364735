"""The divergence over chunks of completion positions: never more than one chunk of `[B, c, V]` logits at once.

Why: with a large vocabulary the `[B, T, V]` tensors dominate memory. Qwen2.5's vocabulary is 151,936 tokens: at
batch 4 and 256 completion tokens one float32 `[B, T, V]` tensor is 622 MB, and the plain loss keeps several
(student logits, their log-softmax for backward, the teacher's, the gradient). `MSDConfig.loss_chunk_size` switches
the trainers to this path: the models return their last hidden states `[B, T, H]`; each chunk of `c` positions is
projected through the output head, scored, and weighted inside `torch.utils.checkpoint`, so backward recomputes the
chunk's logits instead of keeping them. Peak logit memory is `[B, c, V]` a few times over, whatever `T` is.

Exactness: the loss equals `Divergence.compute` on the full logits (tests/test_chunked_loss.py: to 1e-6 in float32,
gradients too). Token weights must be local to a position (`Divergence.local_token_weights`); a weighting that
normalises over the batch, as DPSW does, supplies the scalar through `Divergence.weight_normaliser`, and since
weights carry no gradient, dividing the summed loss by it afterwards is the same as normalising each weight.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.utils.checkpoint import checkpoint

from .divergences import Divergence, DivergenceOutput, _scaled_logits

__all__ = ["ChunkedOutput", "check_output_head", "chunked_divergence"]


@dataclass
class ChunkedOutput(DivergenceOutput):
    """`DivergenceOutput` of the chunked path (its `per_token_loss` is detached: for logging) plus `agreement`,
    `[B, T]` bool: the student's and the teacher's most likely token agree (the full logits are never kept)."""

    agreement: torch.Tensor | None = None


def chunked_divergence(
    divergence: Divergence,
    student_hidden: torch.Tensor,
    project_student: Callable[[torch.Tensor], torch.Tensor],
    project_teacher: Callable[[slice], torch.Tensor],
    completion_ids: torch.Tensor,
    completion_mask: torch.Tensor,
    *,
    chunk_size: int,
    num_items_in_batch: int | torch.Tensor | None = None,
) -> ChunkedOutput:
    """`divergence` over `[B, T]` completion positions, `chunk_size` positions at a time.

    Args:
        student_hidden: `[B, T, H]` student hidden states that predict the completion tokens (with grad).
        project_student: `[B, c, H] -> [B, c, V]`, the student's output head (e.g. `model.get_output_embeddings()`).
        project_teacher: positions `slice` -> the teacher's `[B, c, V]` logits there (run without grad; e.g. its
            head on its hidden states, or cached top-K rebuilt by `teacher_cache.dense_from_topk`).
        chunk_size: positions per chunk; the last chunk may be shorter.
        num_items_in_batch: the loss normaliser as in `Divergence.compute` (default: the valid tokens here).
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got chunk_size={chunk_size!r}.")
    if student_hidden.shape[:2] != completion_ids.shape or completion_ids.shape != completion_mask.shape:
        raise ValueError(
            f"student_hidden {tuple(student_hidden.shape)} must be [B, T, H] with completion_ids "
            f"{tuple(completion_ids.shape)} and completion_mask {tuple(completion_mask.shape)} both [B, T]."
        )
    temperature = divergence.temperature

    def chunk_terms(hidden: torch.Tensor, positions: slice):
        mask = completion_mask[:, positions]
        student_logits = _scaled_logits(project_student(hidden), mask, temperature)  # [B, c, V]
        with torch.no_grad():
            teacher_logits = _scaled_logits(project_teacher(positions).detach(), mask, temperature)  # [B, c, V]
        ids = completion_ids[:, positions]
        per_token = divergence.per_token(student_logits, teacher_logits, ids)  # [B, c]
        with torch.no_grad():
            weights = divergence.local_token_weights(student_logits, teacher_logits, ids, mask).float()  # [B, c]
            agree = student_logits.argmax(-1) == teacher_logits.argmax(-1)  # [B, c]
        return per_token, weights, agree

    mask = completion_mask.to(torch.float32)  # [B, T]
    weighted = student_hidden.new_zeros((), dtype=torch.float32)
    per_token_parts, weight_parts, agree_parts = [], [], []
    for start in range(0, completion_ids.size(1), chunk_size):
        positions = slice(start, start + chunk_size)
        per_token, weights, agree = checkpoint(
            chunk_terms, student_hidden[:, positions], positions, use_reentrant=False
        )  # backward recomputes the chunk's logits instead of keeping them
        weighted = weighted + (per_token.float() * weights * mask[:, positions]).sum()
        per_token_parts.append(per_token.detach())
        weight_parts.append(weights)
        agree_parts.append(agree)
    weights = torch.cat(weight_parts, dim=1) if weight_parts else mask.clone()
    normaliser = divergence.weight_normaliser((weights * mask).sum(), mask.sum())
    if normaliser is not None:
        weighted = weighted / normaliser
        weights = weights / normaliser
    if num_items_in_batch is None:
        num_tokens = mask.sum()
    else:
        num_tokens = torch.as_tensor(num_items_in_batch, dtype=mask.dtype, device=mask.device)
    per_token_loss = torch.cat(per_token_parts, dim=1) if per_token_parts else mask.clone()
    return ChunkedOutput(
        loss=weighted / num_tokens.clamp(min=1),
        per_token_loss=per_token_loss * mask.to(per_token_loss.dtype),
        weights=weights,
        num_tokens=num_tokens.detach(),
        agreement=torch.cat(agree_parts, dim=1) if agree_parts else mask.bool(),
    )


def check_output_head(model: torch.nn.Module, setting: str = "loss_chunk_size") -> None:
    """The chunked loss projects the last hidden state through the output head itself, so the model's logits must be
    exactly that (no soft-capping or scaling after the head): checked once, on a few tokens, in eval mode."""
    head = model.get_output_embeddings()
    if head is None:
        raise ValueError(
            f"MSDConfig.{setting} needs a model with an output head (get_output_embeddings()); "
            f"{type(model).__name__} has none. Unset loss_chunk_size."
        )
    vocab_size = model.config.get_text_config().vocab_size
    ids = torch.arange(min(8, vocab_size), device=head.weight.device).unsqueeze(0)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(input_ids=ids, use_cache=False, output_hidden_states=True)
            projected = head(out.hidden_states[-1])
    finally:
        model.train(was_training)
    if not torch.allclose(projected.float(), out.logits.float(), rtol=1e-3, atol=1e-3):
        raise ValueError(
            f"MSDConfig.{setting}: {type(model).__name__}'s logits are not its output head applied to its last "
            "hidden state (logit soft-capping or scaling?), so the chunked loss would train on different logits. "
            "Unset loss_chunk_size for this model."
        )
