"""On-policy rollouts through TRL's `VLLMGeneration` (`MSDConfig.use_vllm`).

Design
------
Only the sampler changes; everything around it is the `model.generate` path's:

* Prompt ids in: the trainer's rollout path (`completions.generate_grouped`: the step's micro-batches re-padded into
  one batch, split by `rollout_batch_size` and grouped by length) calls `generate_completions(model, ids, mask)` on a
  left-padded `[B, Lp]` batch. Here each row's padding is dropped and the token-id lists go to
  `VLLMGeneration.generate(prompts=..., images=None, num_generations=1)`, as `SDFTTrainer` and `DistillationTrainer`
  call it.
* Completion ids out: vLLM returns one ragged list per row (ending with the stop id when it stopped on one). They are
  right-padded into `[B, Lc]` with the pad id and masked by `decoding.completion_mask` (up to and including the first
  stop id), the function the `generate` path uses, so the same token sequences give the same ids, mask, scoring
  batch and loss (tests/test_vllm_rollouts.py). vLLM is given the trainer's stop ids (`stop_token_ids`), so it stops
  where `generate` would.
* Weights: `sync_weights()` once per optimizer step, before that step's first rollout call (the step counter moved
  since the last sync: TRL's `_last_loaded_step` rule). The rollouts of every micro-batch of a step come after the
  sync and before the optimizer step, so each is sampled from the current student (exactly on-policy, as with
  `generate`). A step without rollouts (fixed completions, `lmbda < 1`) syncs nothing.
* The self-teacher is never synced: vLLM only samples the student; the teacher (the base model with the adapter
  disabled, or a separate teacher) is scored by the training process as before.

`VLLMGeneration` is imported, not copied: colocate and server modes, the PEFT merge/unmerge at sync, bitsandbytes
4-bit detection and sleep mode are TRL's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from trl.generation.vllm_generation import VLLMGeneration
from trl.import_utils import is_vllm_available

from ..decoding import completion_mask, pad

__all__ = ["VLLMRollouts", "check_vllm_installed", "completions_from_lists", "prompt_lists"]

# TRL's install line (VLLMGeneration and DistillationTrainer say the same).
VLLM_INSTALL = "pip install trl[vllm]"


def check_vllm_installed() -> None:
    """Fail at construction, before any model is loaded, when `use_vllm=True` and vllm cannot be imported."""
    if not is_vllm_available():
        raise ImportError(
            "MSDConfig.use_vllm=True, but vLLM is not installed (it needs a CUDA GPU). Install it with "
            f"`{VLLM_INSTALL}` (or `pip install vllm`), or set use_vllm=False to sample with model.generate."
        )


def prompt_lists(prompt_ids: torch.Tensor, prompt_mask: torch.Tensor) -> list[list[int]]:
    """Left-padded `[B, Lp]` prompt ids -> one token-id list per row, padding dropped (vLLM's prompt format)."""
    return [ids[mask.bool()].tolist() for ids, mask in zip(prompt_ids, prompt_mask)]


def completions_from_lists(
    completions: Sequence[Sequence[int]], *, pad_token_id: int, stop_ids: Sequence[int], device: torch.device | str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Ragged completion lists -> right-padded `completion_ids` `[B, Lc]` and `completion_mask` `[B, Lc]` (every token
    up to and including the first stop id; `decoding.completion_mask`, as for `model.generate` output)."""
    rows = [torch.tensor(list(ids), dtype=torch.long) for ids in completions]
    if not rows or max(len(r) for r in rows) == 0:
        empty = torch.zeros(len(rows), 0, dtype=torch.long, device=device)
        return empty, empty.clone()
    ids = pad(rows, padding_value=pad_token_id, padding_side="right").to(device)  # [B, Lc]
    # Padding is never kept: positions past a row's own length are masked even when pad is not a stop id.
    lengths = torch.tensor([len(r) for r in rows], device=device)
    inside = torch.arange(ids.size(1), device=device).unsqueeze(0) < lengths.unsqueeze(1)  # [B, Lc]
    return ids, completion_mask(ids, stop_ids) * inside.long()


class VLLMRollouts:
    """A `VLLMGeneration` engine for a trainer's rollouts, with the once-per-optimizer-step weight sync.

    `generate(prompt_ids, prompt_mask, global_step=...)` has the contract of `MSDTrainer.generate_completions`:
    left-padded prompts in, right-padded `(completion_ids, completion_mask)` out.
    """

    def __init__(self, engine: Any, *, pad_token_id: int, stop_ids: Sequence[int]):
        self.engine = engine
        self.pad_token_id = pad_token_id
        self.stop_ids = list(stop_ids)
        self.synced_step: int | None = None  # the optimizer step whose weights the engine holds
        self.sync_count = 0

    @classmethod
    def build(cls, trainer: Any) -> VLLMRollouts:
        """The engine for `trainer` (an `MSDTrainer`), constructed as `SDFTTrainer` constructs it."""
        args = trainer.args
        rows_per_call = args.rollout_batch_size or args.per_device_train_batch_size * args.gradient_accumulation_steps
        engine = VLLMGeneration(
            model=trainer.model,
            accelerator=trainer.accelerator,
            processing_class=trainer.processing_class,
            mode=args.vllm_mode,
            server_base_url=args.vllm_server_base_url,
            server_host=args.vllm_server_host,
            server_port=args.vllm_server_port,
            group_port=args.vllm_group_port,
            server_timeout=args.vllm_server_timeout,
            tensor_parallel_size=args.vllm_tensor_parallel_size,
            gpu_memory_utilization=args.vllm_gpu_memory_utilization,
            max_model_length=args.vllm_max_model_length,
            # All rollouts of an optimizer step come in one call unless rollout_batch_size caps it.
            max_num_seqs=rows_per_call * args.vllm_tensor_parallel_size,
            enable_sleep_mode=args.vllm_enable_sleep_mode,
            model_impl=args.vllm_model_impl,
            trust_remote_code=args.trust_remote_code,
            # The sampling distribution of the generate path: temperature, top-p, top-k (0 = off), no penalties.
            repetition_penalty=1.0,
            temperature=args.temperature,
            top_p=args.top_p,
            top_k=args.top_k,
            min_p=0.0,
            max_completion_length=args.max_new_tokens,
            logprobs=None,  # MSD scores the rollouts itself; vLLM's log-probs are not needed
            generation_kwargs={"stop_token_ids": list(trainer.stop_ids)},
        )
        return cls(engine, pad_token_id=trainer._tokenizer.pad_token_id, stop_ids=trainer.stop_ids)

    def sync_if_stale(self, global_step: int) -> None:
        """Push the student's weights to the engine once per optimizer step (before the step's first rollout)."""
        if self.synced_step != global_step:
            self.engine.sync_weights()
            self.synced_step = global_step
            self.sync_count += 1

    @torch.no_grad()
    def generate(
        self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, *, global_step: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        self.sync_if_stale(global_step)
        prompts = prompt_lists(prompt_ids, prompt_mask)
        _, completions, _, _ = self.engine.generate(prompts=prompts, images=None, num_generations=1)
        if len(completions) != len(prompts):
            raise ValueError(
                f"VLLMGeneration returned {len(completions)} completions for {len(prompts)} prompts; expected one per "
                "prompt (num_generations=1)."
            )
        return completions_from_lists(
            completions, pad_token_id=self.pad_token_id, stop_ids=self.stop_ids, device=prompt_ids.device
        )
