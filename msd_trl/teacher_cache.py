"""The off-policy teacher cache: the teacher's top-K log-probs on fixed teacher text, stored as dataset columns.

`OffPolicyMSDTrainer(args=MSDConfig(teacher_cache_top_k=K))` scores the fixed text with the teacher once, before
training (`topk_columns` per batch, `add_topk_columns` for the dataset); every step then runs only the student and
rebuilds the teacher's distribution with `dense_from_topk`.

A cache is used only by the teacher that made it, on the rows it was made for (`msd_trl.fingerprint`): the
`teacher_topk_fingerprint` column holds the teacher's identity (config, weight and adapter digests, tokenizer) with
the template, system prompt and K, checked by `check_topk_cache`; the `teacher_topk_key` column holds, per row, the
digests of the teacher prompt ids and completion ids it was computed on, checked by `stale_topk_reason` for every
row at construction and again in every collated batch. Anything else is a `ValueError` naming what changed.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

import torch

from .fingerprint import fingerprint_differences, token_digest
from .names import (
    TEACHER_CACHE_COLUMNS,
    TEACHER_CACHE_FINGERPRINT,
    TEACHER_CACHE_IDS,
    TEACHER_CACHE_KEY,
    TEACHER_CACHE_LOGPROBS,
)

__all__ = ["add_topk_columns", "check_topk_cache", "dense_from_topk", "stale_topk_reason", "topk_columns", "topk_key"]

# How to drop the cache columns, for every message that refuses them.
_DROP = f"dataset.remove_columns({list(TEACHER_CACHE_COLUMNS)})"


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


def topk_key(teacher_prompt_ids: Sequence[int], completion_ids: Sequence[int]) -> str:
    """A row's cache key: the digests of the teacher prompt ids and of the completion ids the top-K was computed on."""
    return f"{token_digest(teacher_prompt_ids)} {token_digest(completion_ids)}"


def stale_topk_reason(key: str | None, teacher_prompt_ids: Sequence[int], completion_ids: Sequence[int]) -> str | None:
    """Why a row's cached top-K no longer fits what the teacher reads now (`None`: it fits, or the row has no key)."""
    if key is None:
        return None
    context, completion = key.split()
    if context != token_digest(teacher_prompt_ids):
        return (
            "the cached teacher top-K was computed on another teacher context (the row's rendered teacher prompt "
            "changed since: its prompt, teacher_prompt or language, the teacher template or system prompt, or "
            f"max_prompt_length). Rebuild the cache: drop the columns ({_DROP}) and construct the trainer again."
        )
    if completion != token_digest(completion_ids):
        return (
            "the cached teacher top-K was computed on another teacher_completion (its tokens changed since). Rebuild "
            f"the cache: drop the columns ({_DROP}) and construct the trainer again."
        )
    return None


def add_topk_columns(dataset: Any, ids: list, logprobs: list, fingerprint: dict[str, Any], keys: list[str]) -> Any:
    """`dataset` with the cache columns: ids, log-probs, the fingerprint of the setting that made them, and each
    row's key (`topk_key`)."""
    text = json.dumps(fingerprint, ensure_ascii=False)
    return (
        dataset.add_column(TEACHER_CACHE_IDS, ids)
        .add_column(TEACHER_CACHE_LOGPROBS, logprobs)
        .add_column(TEACHER_CACHE_FINGERPRINT, [text] * len(dataset))
        .add_column(TEACHER_CACHE_KEY, keys)
    )


def check_topk_cache(dataset: Any, *, top_k: int | None, expected: dict[str, Any]) -> None:
    """Use cached top-K columns only when they were asked for (`top_k` set) and made by the teacher setting whose
    fingerprint is `expected`; otherwise a ValueError says what differs and how to drop them. (Each row's key is
    checked against what the teacher reads now by `stale_topk_reason`, by the trainer.)"""
    if top_k is None:
        raise ValueError(
            f"train_dataset carries cached teacher top-K columns but teacher_cache_top_k=None: set "
            f"teacher_cache_top_k to use them, or drop them ({_DROP}) to score the teacher at every step."
        )
    missing = [name for name in (TEACHER_CACHE_FINGERPRINT, TEACHER_CACHE_KEY) if name not in dataset.column_names]
    if missing:
        raise ValueError(
            f"the cached teacher top-K columns carry no fingerprint or row keys ({missing} missing: made by an older "
            f"msd_trl), so they cannot be checked against this teacher; {_DROP}."
        )
    differences = fingerprint_differences(json.loads(dataset[0][TEACHER_CACHE_FINGERPRINT]), expected)
    if differences:
        raise ValueError(
            f"the cached teacher top-K columns were made by another setting: {'; '.join(differences)}. Drop them "
            f"({_DROP}) to rebuild the cache."
        )
