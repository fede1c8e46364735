"""The off-policy teacher cache: the teacher's top-K log-probs on fixed teacher text, stored as dataset columns.

`OffPolicyMSDTrainer(args=MSDConfig(teacher_cache_top_k=K))` scores the fixed text with the teacher once, before
training (`topk_columns` per batch, `add_topk_columns` for the dataset); every step then runs only the student and
rebuilds the teacher's distribution with `dense_from_topk`. The columns carry a fingerprint of the teacher setting
(model, tokenizer, template, system prompt, K), and `check_topk_cache` refuses columns another setting made.
"""

from __future__ import annotations

import json
import math
from typing import Any

import torch

from .generation import fingerprint_differences
from .rendering import TEACHER_CACHE_FINGERPRINT, TEACHER_CACHE_IDS, TEACHER_CACHE_LOGPROBS

__all__ = ["add_topk_columns", "check_topk_cache", "dense_from_topk", "topk_columns"]


def dense_from_topk(topk_ids: torch.Tensor, topk_logprobs: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Teacher log-probs `[B, T, V]` rebuilt from its top-K: the K cached values, the leftover mass spread evenly.

    The approximation of `teacher_cache_top_k`: exact when K = V (no leftover), and the top-K itself (so DPSW's
    teacher view for any K' <= K and the teacher's argmax) is exact for every K. Every other token gets
    `log((1 - sum_k p_k) / (V - K))`.
    """
    k = topk_ids.size(-1)
    captured = topk_logprobs.float().exp().sum(-1).clamp(max=1.0)  # [B, T]
    leftover = (1.0 - captured).clamp(min=torch.finfo(torch.float32).tiny)
    fill = (leftover.log() - math.log(max(vocab_size - k, 1))).unsqueeze(-1)  # [B, T, 1]
    dense = fill.expand(*topk_ids.shape[:-1], vocab_size).clone()  # [B, T, V]
    return dense.scatter_(-1, topk_ids, topk_logprobs.float())


def topk_columns(
    teacher_logits: torch.Tensor, mask: torch.Tensor, top_k: int
) -> tuple[list[list[list[int]]], list[list[list[float]]]]:
    """Per row, the teacher's top-K token ids and log-probs on its kept completion tokens (`[length, K]` each)."""
    log_probs = teacher_logits.float().log_softmax(-1)  # [B, Lc, V]
    values, indices = log_probs.topk(min(top_k, log_probs.size(-1)), dim=-1)  # [B, Lc, K]
    ids, logprobs = [], []
    for row, length in enumerate(mask.sum(1).tolist()):
        ids.append(indices[row, :length].cpu().tolist())
        logprobs.append(values[row, :length].cpu().tolist())
    return ids, logprobs


def add_topk_columns(dataset: Any, ids: list, logprobs: list, fingerprint: dict[str, Any]) -> Any:
    """`dataset` with the cache columns (ids, log-probs, and the fingerprint of the setting that made them)."""
    text = json.dumps(fingerprint, ensure_ascii=False)
    return (
        dataset.add_column(TEACHER_CACHE_IDS, ids)
        .add_column(TEACHER_CACHE_LOGPROBS, logprobs)
        .add_column(TEACHER_CACHE_FINGERPRINT, [text] * len(dataset))
    )


def check_topk_cache(dataset: Any, *, top_k: int | None, self_teacher: bool, expected: dict[str, Any]) -> None:
    """Use cached top-K columns only when they were asked for (`top_k` set), with the self-teacher, and made by the
    setting whose fingerprint is `expected`; otherwise a ValueError says what differs and how to drop them."""
    drop = f"dataset.remove_columns({[TEACHER_CACHE_IDS, TEACHER_CACHE_LOGPROBS, TEACHER_CACHE_FINGERPRINT]})"
    if top_k is None:
        raise ValueError(
            f"train_dataset carries cached teacher top-K columns but teacher_cache_top_k=None: set "
            f"teacher_cache_top_k to use them, or drop them ({drop}) to score the teacher at every step."
        )
    if not self_teacher:
        raise ValueError(
            "train_dataset carries cached teacher top-K columns, but a teacher_model was passed: the cache holds "
            f"another teacher's scores. Drop them ({drop}) or pass teacher_model=None."
        )
    if TEACHER_CACHE_FINGERPRINT not in dataset.column_names:
        raise ValueError(f"the cached teacher top-K columns carry no fingerprint, so they cannot be checked; {drop}.")
    differences = fingerprint_differences(json.loads(dataset[0][TEACHER_CACHE_FINGERPRINT]), expected)
    if differences:
        raise ValueError(
            f"the cached teacher top-K columns were made by another setting: {'; '.join(differences)}. Drop them "
            f"({drop}) to rebuild the cache."
        )
