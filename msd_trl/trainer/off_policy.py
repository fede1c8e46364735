"""`OffPolicyMSDTrainer`: student and teacher both score fixed teacher text, optionally with a top-K teacher cache."""

from __future__ import annotations

import logging
from typing import Any

import torch
from datasets import Dataset
from tqdm.auto import tqdm

from ..names import TEACHER_CACHE_IDS, TEACHER_CACHE_KEY, TEACHER_CACHE_LOGPROBS
from ..rendering import MSDDataCollator
from ..teacher_cache import add_topk_columns, check_topk_cache, stale_topk_reason, topk_columns, topk_key
from .base import MSDTrainer, _document_arguments, register_trainer

logger = logging.getLogger("msd_trl.trainer")

__all__ = ["OffPolicyMSDTrainer"]


@register_trainer("off-policy")
@_document_arguments
class OffPolicyMSDTrainer(MSDTrainer):
    """Off-policy MSD: student and teacher both score fixed teacher text (`teacher_completion`).

    Create the column once with `generate_teacher_completions`. A GKD `messages` dataset works too (its last
    turn is the fixed completion). `args.lmbda` is ignored: no step samples the student. With
    `args.teacher_cache_top_k` the teacher scores the text once before training (see `cache_teacher_topk`).
    The arguments are `trl.experimental.gkd.GKDTrainer`'s, in the same order.
    """

    _name = "Off-policy MSD"
    requires_fixed_completions = True
    _use_teacher_cache = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        top_k = self.args.teacher_cache_top_k
        columns = set(getattr(self.train_dataset, "column_names", None) or [])
        if TEACHER_CACHE_IDS in columns:
            self._check_topk_cache(self.train_dataset)
        elif top_k is not None and self.train_dataset is not None:
            self.train_dataset = self.cache_teacher_topk(self.train_dataset, top_k=top_k)

    def _topk_fingerprint(self, top_k: int) -> dict[str, Any]:
        return self.teacher_identity(
            template=self.args.teacher_prompt_template, system_prompt=self.args.teacher_system_prompt or None,
            top_k=top_k,
            **({"benign_teacher_preset": self.args.benign_teacher_preset} if self.args.benign_teacher_preset else {}),
        )  # fmt: skip

    def _check_topk_cache(self, dataset: Dataset) -> None:
        """Use cached teacher top-K columns only when asked for, made by this teacher setting, and made on what each
        row's teacher reads now (its rendered prompt and completion ids): every row is checked here, once."""
        top_k = self.args.teacher_cache_top_k
        check_topk_cache(dataset, top_k=top_k, expected=self._topk_fingerprint(top_k) if top_k is not None else {})
        collator = self.data_collator
        if not isinstance(collator, MSDDataCollator):  # a custom collator: checked per batch only, if it pads caches
            return
        for index, row in enumerate(dataset.remove_columns([TEACHER_CACHE_IDS, TEACHER_CACHE_LOGPROBS])):
            prompt_ids = collator.fit(row, "teacher")[1]
            reason = stale_topk_reason(row[TEACHER_CACHE_KEY], prompt_ids, collator.completion_ids(row) or [])
            if reason is not None:
                raise ValueError(f"train_dataset row {index} (id {row.get('id', '?')!r}): {reason}")

    @torch.no_grad()
    def cache_teacher_topk(self, dataset: Dataset, *, top_k: int, batch_size: int | None = None) -> Dataset:
        """Score the fixed teacher text once and store the teacher's top-K log-probs per completion token.

        Adds `teacher_topk_ids` and `teacher_topk_logprobs` (`[completion length, K]` per row) and the setting's
        fingerprint; training steps on such rows run only the student. The teacher's distribution is approximated
        by `dense_from_topk` (see `msd_trl.teacher_cache`).
        """
        batch_size = batch_size or self.args.per_device_eval_batch_size
        all_ids, all_logprobs, keys = [], [], []
        for start in tqdm(range(0, len(dataset), batch_size), desc="caching teacher top-K", unit="batch"):
            rows = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
            inputs = self._prepare_inputs(self.data_collator(rows))
            completion_ids, mask = inputs["fixed_completion_ids"], inputs["fixed_completion_mask"]
            prompt_ids, prompt_mask = inputs["teacher_prompt_ids"], inputs["teacher_prompt_mask"]
            batch = {
                "teacher_input_ids": torch.cat([prompt_ids, completion_ids], dim=1),
                "teacher_attention_mask": torch.cat([prompt_mask, mask], dim=1),
            }
            ids, logprobs = topk_columns(self.teacher_logits(batch, completion_ids.size(1)), mask, top_k)
            all_ids += ids
            all_logprobs += logprobs
            # Each row's key: what its teacher read (prompt ids without padding) and scored (completion ids).
            keys += [
                topk_key(
                    prompt_ids[row][prompt_mask[row].bool()].tolist(), completion_ids[row][mask[row].bool()].tolist()
                )
                for row in range(len(rows))
            ]
        logger.info("Cached the teacher's top-%d log-probs for %d rows.", top_k, len(dataset))
        return add_topk_columns(dataset, all_ids, all_logprobs, self._topk_fingerprint(top_k), keys)

    def use_fixed_completion(self, inputs):
        if "fixed_completion_ids" not in inputs:
            raise ValueError(
                "OffPolicyMSDTrainer needs a fixed completion in every row ('teacher_completion', or the last turn "
                f"of 'messages'); rows {inputs.get('row_ids')} lack it. Run generate_teacher_completions first."
            )
        return True
