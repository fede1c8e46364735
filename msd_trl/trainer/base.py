"""The shared MSD core: `MSDTrainer`, the trainer registry, and how a variant plugs in.

Design
------
Data flows one way: rows -> tokenised student and teacher prompts (the collator) -> completions (student
rollouts, or fixed teacher text) -> student and teacher logits aligned on the completion tokens -> divergence
with token weights -> loss.

* Drop-in for `trl.experimental.gkd.GKDTrainer`: the same constructor arguments in the same order, on top of
  TRL's `SFTTrainer` (model names, `peft_config`, `model_init_kwargs` behave the same). A plain `GKDConfig` is
  upgraded to an `MSDConfig` with `divergence="jsd"`, GKD's objective.
* Self-teacher (`teacher_model=None`): the model's own initial weights, frozen. Under PEFT it is the same module
  with the adapter disabled (no second copy in memory); without PEFT it is a frozen deep copy (its size is
  logged).
* Completions are generated (or tokenised) for a whole accumulated batch before the first backward, inside
  `get_batch_samples`, so the loss is normalised by the number of completion tokens across the accumulated batch
  *after* generation: accumulation 4 x 1 equals 1 x 4 (exactly so for unnormalised token weights).
* Prompts are left-padded, completions right-padded; the student and the teacher score the same completion ids,
  and logits are computed only on completion positions (`logits_to_keep` where the model takes it).
* A variant is one hook: subclass `MSDTrainer`, implement `use_fixed_completion(inputs)`, and
  `@register_trainer("name")` makes it `msd-trl train --trainer name` (see docs/code_layout.md).

Layout: the pure pieces live beside this file and are tested there (`completions`: masks, the scoring batch,
completion logits, step statistics; `row_checks`; `teacher_cache`; `rendering`: the collator). What stays here is
one cohesive thing, the Trainer overrides that must sit on the class (set-up and the self-teacher, rollouts inside
`get_batch_samples`, resume order of the RNG, the plain and chunked loss, metrics). The variants
live in `on_policy.py` and `off_policy.py`; `vllm_rollouts.py` is the sampler behind `generate_completions` when
`use_vllm` is on (TRL's `VLLMGeneration`, weights synced once per optimizer step).
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import json
import logging
import os
import warnings
from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn
from accelerate.utils import broadcast_object_list, is_peft_model
from datasets import Dataset
from transformers import AutoModelForCausalLM, GenerationConfig, PreTrainedModel, TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from trl.models import prepare_deepspeed, unwrap_model_for_generation
from trl.trainer.sft_trainer import SFTTrainer
from trl.trainer.utils import disable_dropout_in_model, use_adapter

from ..checkpoints import check_resume_config, checkpoint_save_error, resolve_resume_checkpoint, write_run_config
from ..chunked_loss import ChunkedOutput, check_output_head, chunked_divergence
from ..completions import STEP_STATISTICS, build_scoring_batch, completion_logits, generate_grouped, step_statistics
from ..config import (
    GKDConfig,  # imported there without TRL's experimental-API warning
    MSDConfig,
    build_divergence,
    upgrade_config,
)
from ..decoding import (
    check_adapter_mergeable,
    completion_mask,
    decode_threads,
    ends_with_stop,
    merged_adapter,
    stop_token_ids,
)
from ..divergences import DPSW
from ..fingerprint import teacher_fingerprint
from ..models import disable_bnb_cpu_weight_packing, resolve_model_name_or_path
from ..names import TEACHER_CACHE_IDS, TEACHER_CACHE_LOGPROBS, TEACHER_COMPLETION_COLUMN
from ..registry import Registry
from ..rendering import MSDDataCollator
from ..row_checks import check_columns, check_privileged_context, named_datasets, validate_rows
from ..scale_out import check_scale_out
from ..teacher_cache import dense_from_topk
from .vllm_rollouts import VLLMRollouts, check_vllm_installed

# The trainers' logs keep the name users filter on.
logger = logging.getLogger("msd_trl.trainer")

__all__ = ["TRAINERS", "MSDTrainer", "register_trainer"]


_TRAINER_ARGS_DOC = """
    Args:
        model: the student: a model, or a name / path (``"embedded:smollm2-135m-instruct"`` included), loaded like
            TRL's ``SFTTrainer`` does (``args.model_init_kwargs``).
        teacher_model: ``None`` for the self-teacher (the initial weights: under PEFT the adapter-disabled base, no
            copy; otherwise a frozen copy), or a separate teacher (instance or name) sharing the student's vocabulary.
        args: an ``MSDConfig`` (a plain ``GKDConfig`` is upgraded, keeping GKD's objective and teacher).
        data_collator: default ``MSDDataCollator`` (student and teacher prompts rendered from each row).
        train_dataset / eval_dataset: MSD rows (``prompt``, ``teacher_prompt``, optional ``language``, ``id``,
            ``teacher_completion``) or GKD ``messages`` rows; every row is validated once at construction.
        processing_class: the tokenizer (default: the model's).
        compute_metrics, callbacks, optimizers, preprocess_logits_for_metrics: as in ``transformers.Trainer``.
        peft_config: a ``peft`` config (LoRA; with a 4-bit model, QLoRA).
        formatting_func: accepted for GKD compatibility; MSD rows need none.
"""


def _document_arguments(cls: type) -> type:
    """Append the shared Args section to a trainer's docstring (one text for every variant's `help()`)."""
    cls.__doc__ = (cls.__doc__ or "").rstrip() + "\n" + _TRAINER_ARGS_DOC
    return cls


@_document_arguments
class MSDTrainer(SFTTrainer):
    """The shared MSD core: prompts -> completions -> student and teacher logits -> weighted divergence.

    A trainer variant subclasses it and implements one hook, `use_fixed_completion(inputs)`: per collated
    micro-batch, score the rows' fixed completion (True) or sample the student (False). Set the class attribute
    `requires_fixed_completions = True` when every row must carry fixed text (checked at construction), and
    `register_trainer("name")` makes the variant available to `msd-trl train --trainer name`. Everything else
    (rendering, row checks, generation, the loss, metrics, resume) is shared. The arguments are those of
    `trl.experimental.gkd.GKDTrainer`, in the same order.
    """

    _tag_names = ["trl", "msd"]
    _name = "MSD"
    _paper = {
        "title": "Multilingual Safety Alignment via Self-Distillation",
        "id": "2605.02971",
        "citation": "@article{qin2026msd, title={Multilingual Safety Alignment via Self-Distillation}, "
        "author={Qin and Wang and Liu and Li and Wei and Shen}, journal={arXiv preprint arXiv:2605.02971}, "
        "year={2026}}",
    }
    # compute_loss normalises by the token count of the whole accumulated batch itself.
    loss_is_scaled_for_ga = True
    # Every row must carry a fixed completion (the collator's completion column): checked at construction.
    requires_fixed_completions = False
    # Batches may carry cached teacher top-K columns (see msd_trl.teacher_cache), used instead of a teacher forward.
    _use_teacher_cache = False

    def __init__(
        self,
        model: PreTrainedModel | nn.Module | str | None = None,
        teacher_model: PreTrainedModel | nn.Module | str | None = None,
        args: MSDConfig | GKDConfig | None = None,
        data_collator: Callable | None = None,
        train_dataset: Dataset | None = None,
        eval_dataset: Dataset | dict[str, Dataset] | None = None,
        processing_class=None,
        compute_metrics: Callable | None = None,
        callbacks: list[TrainerCallback] | None = None,
        optimizers: tuple = (None, None),
        preprocess_logits_for_metrics: Callable | None = None,
        peft_config=None,
        formatting_func: Callable | None = None,
    ):
        args = upgrade_config(args)
        if args.use_vllm:  # before any model is loaded
            if self.requires_fixed_completions:
                raise ValueError(
                    f"MSDConfig.use_vllm=True, but {type(self).__name__} never samples the student (it scores fixed "
                    "teacher text), so a vLLM engine would only hold GPU memory. Set use_vllm=False."
                )
            check_vllm_installed()
        args.remove_unused_columns = False
        args.dataset_kwargs = {**(args.dataset_kwargs or {}), "skip_prepare_dataset": True}
        completion_column = getattr(data_collator, "completion_column", TEACHER_COMPLETION_COLUMN)
        for name, dataset in named_datasets(train_dataset, eval_dataset):
            check_columns(
                dataset, name, requires_completion=self.requires_fixed_completions,
                completion_column=completion_column, trainer_name=type(self).__name__,
            )  # fmt: skip
        if isinstance(model, str):
            model = resolve_model_name_or_path(model)
        if data_collator is None:
            # Placeholder so SFTTrainer builds no collator of its own; the real one needs the tokenizer it resolves.
            data_collator = _PendingCollator()
        with warnings.catch_warnings():
            # transformers' deprecation notice, raised from TRL's set-up code: nothing the user can act on.
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            super().__init__(
                model,
                args=args,
                data_collator=data_collator,
                train_dataset=train_dataset,
                eval_dataset=eval_dataset,
                processing_class=processing_class,
                compute_metrics=compute_metrics,
                callbacks=callbacks,
                optimizers=optimizers,
                preprocess_logits_for_metrics=preprocess_logits_for_metrics,
                peft_config=peft_config,
                formatting_func=formatting_func,
            )
        tokenizer = self._tokenizer
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        tokenizer.padding_side = "left"
        self.stop_ids = stop_token_ids(self.model, tokenizer)
        if isinstance(self.data_collator, _PendingCollator):
            self.data_collator = MSDDataCollator(
                tokenizer,
                teacher_prompt_template=args.teacher_prompt_template,
                teacher_system_prompt=args.teacher_system_prompt,
                max_prompt_length=args.max_prompt_length,
                prompt_truncation=args.prompt_truncation,
                stop_ids=self.stop_ids,
                teacher_context=args.teacher_context if args.benign_teacher_preset else None,
            )
        self._keep_adapter_dtype_on_cpu()
        # bitsandbytes on CPU would otherwise switch 4-bit layers to a kernel without backward after the first
        # generation step, silently dropping QLoRA gradients (see models.disable_bnb_cpu_weight_packing).
        disable_bnb_cpu_weight_packing(self.model)
        if args.disable_dropout:
            disable_dropout_in_model(self.model)
        self.divergence = build_divergence(args)
        self._setup_teacher(teacher_model)
        completion_column = getattr(self.data_collator, "completion_column", None)
        for name, dataset in named_datasets(train_dataset, eval_dataset):
            validate_rows(
                dataset, name, self_teacher=self.self_teacher, template=args.teacher_prompt_template,
                system_prompt=args.teacher_system_prompt, context=args.teacher_context,
                completion_column=completion_column if self.requires_fixed_completions else None,
            )  # fmt: skip
        self.generation_config = GenerationConfig(
            max_new_tokens=args.max_new_tokens,
            do_sample=True,
            temperature=args.temperature,
            top_p=args.top_p,
            top_k=args.top_k,
            use_cache=True,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=self.stop_ids,
        )
        self._model_kwarg_keys = set(self._forward_signature(self.model))
        deepspeed_plugin = getattr(self.accelerator.state, "deepspeed_plugin", None)
        check_scale_out(
            distributed_type=self.accelerator.distributed_type.value,
            zero_stage=getattr(deepspeed_plugin, "zero_stage", None) if self.is_deepspeed_enabled else None,
            self_teacher=self.self_teacher, peft=is_peft_model(self.model), loss_chunk_size=args.loss_chunk_size,
            fsdp_requested=os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true",
        )  # fmt: skip
        if args.loss_chunk_size is not None:
            check_output_head(self.accelerator.unwrap_model(self.model), f"loss_chunk_size={args.loss_chunk_size}")
        if args.merge_adapter_for_generation:
            check_adapter_mergeable(self.accelerator.unwrap_model(self.model))
        # Rollouts from TRL's VLLMGeneration (vllm_rollouts.py): built last, on the model the trainer trains.
        self.vllm_rollouts = VLLMRollouts.build(self) if args.use_vllm else None

    # ------------------------------------------------------------------ set-up

    def _keep_adapter_dtype_on_cpu(self) -> None:
        # SFTTrainer casts QLoRA adapters to bf16 (the QLoRA paper's recipe); on hardware without fast bf16 that
        # makes every step many times slower, so keep trainable parameters in fp32 there.
        if self.args.bf16:
            return
        for param in self.model.parameters():
            if param.requires_grad and param.dtype == torch.bfloat16:
                param.data = param.data.float()

    def _setup_teacher(self, teacher_model) -> None:
        args = self.args
        if teacher_model is None and args.teacher_model_name_or_path is not None:
            teacher_model = args.teacher_model_name_or_path
        if isinstance(teacher_model, str):
            init_kwargs = dict(args.teacher_model_init_kwargs or {})
            dtype = init_kwargs.get("dtype")
            if isinstance(dtype, str) and dtype != "auto":
                init_kwargs["dtype"] = getattr(torch, dtype)
            init_kwargs.setdefault("trust_remote_code", args.trust_remote_code)
            teacher_model = AutoModelForCausalLM.from_pretrained(
                resolve_model_name_or_path(teacher_model), **init_kwargs
            )
        elif args.teacher_model_init_kwargs is not None and teacher_model is not None:
            raise ValueError(
                "teacher_model_init_kwargs is set in the config but teacher_model is already instantiated; "
                "pass the teacher as a name or drop teacher_model_init_kwargs."
            )

        self.self_teacher = teacher_model is None
        if self.self_teacher:
            if is_peft_model(self.model):
                # The base model with the adapter disabled: the initial weights, no second copy in memory.
                self.teacher_model = None
                logger.info("Self-teacher: the base model with the PEFT adapter disabled (no extra memory).")
                return
            teacher_model = copy.deepcopy(self.accelerator.unwrap_model(self.model))
            size_mb = sum(p.numel() * p.element_size() for p in teacher_model.parameters()) / 2**20
            logger.warning(
                "Self-teacher without PEFT: keeping a frozen copy of the initial weights (%.1f MiB). Pass a "
                "peft_config to use the adapter-disabled base model instead, with no copy.",
                size_mb,
            )
        student_vocab = self.model.config.get_text_config().vocab_size
        teacher_vocab = teacher_model.config.get_text_config().vocab_size
        if student_vocab != teacher_vocab:
            raise ValueError(
                f"teacher_model has vocab_size={teacher_vocab} but the student has vocab_size={student_vocab}; MSD "
                "compares full next-token distributions, so both must share one vocabulary."
            )
        teacher_model.requires_grad_(False)
        teacher_model.eval()
        disable_bnb_cpu_weight_packing(teacher_model)
        if self.is_deepspeed_enabled:
            self.teacher_model = prepare_deepspeed(teacher_model, self.accelerator)
        else:
            self.teacher_model = self.accelerator.prepare_model(teacher_model, evaluation_mode=True)

    def teacher_identity(self, **settings: Any) -> dict[str, Any]:
        """The teacher's fingerprint (`msd_trl.fingerprint.teacher_fingerprint`: config, weight and adapter digests,
        tokenizer) with `settings` added. Computed once per trainer, before any training step (the teacher is frozen,
        and the self-teacher under PEFT is the base with its adapter disabled); keys the top-K cache and checkpoints.
        """
        if getattr(self, "_teacher_identity", None) is None:
            if self.teacher_model is None:  # the PEFT self-teacher: the adapter-disabled base
                module, adapter_disabled = self.accelerator.unwrap_model(self.model), True
            else:
                module, adapter_disabled = self.accelerator.unwrap_model(self.teacher_model), False
            identity = [teacher_fingerprint(module, self._tokenizer, adapter_disabled=adapter_disabled)]
            if self.accelerator.num_processes > 1:
                # Sharded weights (FSDP, ZeRO-3) digest differently on each process: every process takes process
                # 0's, which is the one a checkpoint records.
                broadcast_object_list(identity, from_process=0)
            self._teacher_identity = identity[0]
        return {**self._teacher_identity, **settings}

    def _run_config(self) -> dict[str, Any]:
        """What a checkpoint records of its run (`msd_config.json`): the resolved config and the teacher."""
        return {"training": json.loads(self.args.to_json_string()), "teacher": self.teacher_identity()}

    @staticmethod
    def _forward_signature(model) -> list[str]:
        target = model.get_base_model() if hasattr(model, "get_base_model") else model
        return list(inspect.signature(target.forward).parameters)

    # ------------------------------------------------------------------ completions

    def use_fixed_completion(self, inputs: dict[str, Any]) -> bool:
        """The variant hook: whether this collated micro-batch scores its fixed completion (True: the collator's
        `fixed_completion_ids` / `fixed_completion_mask`, present when every row has one) or samples the student on
        its prompts (False). Called once per micro-batch, before any forward pass."""
        raise NotImplementedError(f"{type(self).__name__} must implement use_fixed_completion(inputs).")

    @torch.no_grad()
    def generate_completions(self, model, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor):
        """Sample the student on its own prompts. Returns `completion_ids`, `completion_mask` `[B, Lc]`.

        The mask keeps every token up to and including the first stop id (any of `self.stop_ids`), so when
        pad == eos the real EOS keeps its label; tokens after it (padding) are masked. With `use_vllm` the same
        prompts go to TRL's `VLLMGeneration` instead (weights synced once per optimizer step; see `vllm_rollouts`).
        """
        if getattr(self, "vllm_rollouts", None) is not None:
            return self.vllm_rollouts.generate(prompt_ids, prompt_mask, global_step=self.state.global_step)
        with unwrap_model_for_generation(
            model,
            self.accelerator,
            generation_kwargs=self.generation_config.to_dict(),
            gradient_checkpointing_kwargs=self.args.gradient_checkpointing_kwargs,
        ) as unwrapped:
            was_training = unwrapped.training
            unwrapped.eval()
            try:
                with (
                    decode_threads(unwrapped, self.args.generation_threads),
                    merged_adapter(unwrapped, enabled=self.args.merge_adapter_for_generation),
                ):
                    sequences = unwrapped.generate(
                        input_ids=prompt_ids, attention_mask=prompt_mask, generation_config=self.generation_config
                    )
            finally:
                unwrapped.train(was_training)
        completion_ids = sequences[:, prompt_ids.size(1) :]  # [B, Lc]
        return completion_ids, self.completion_mask_from_ids(completion_ids)

    def completion_mask_from_ids(self, completion_ids: torch.Tensor) -> torch.Tensor:
        """`[B, Lc]`: every token up to and including the first stop id (see `completions.completion_mask`)."""
        return completion_mask(completion_ids, self.stop_ids)

    def prepare_batch(self, model, inputs: dict[str, Any]) -> dict[str, Any]:
        """Collated rows -> a scored-ready batch (student and teacher sequences sharing the completion ids)."""
        if "completion_ids" in inputs:
            return inputs
        return self.prepare_batches(model, [inputs])[0]

    def prepare_batches(self, model, batches: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The collated micro-batches of one optimizer step -> scoring batches.

        Each micro-batch asks `use_fixed_completion` once; the rollouts of all that sample the student come from one
        generate call (`rollout_batch_size` rows per call when set), so the per-token decode cost is paid once per
        optimizer step, not once per micro-batch. Still exactly on-policy: the weights do not change inside an
        accumulation window.
        """
        fixed = []
        for inputs in batches:
            if self.self_teacher:
                check_privileged_context(inputs)
            fixed.append(self.use_fixed_completion(inputs))
        rollouts = iter(self._rollouts(model, [b for b, use_fixed in zip(batches, fixed) if not use_fixed]))
        scored = []
        for inputs, use_fixed in zip(batches, fixed):
            if use_fixed:
                completion_ids, completion_mask = inputs["fixed_completion_ids"], inputs["fixed_completion_mask"]
            else:
                completion_ids, completion_mask = next(rollouts)
            self._metrics_append("completions/on_policy_ratio", 0.0 if use_fixed else 1.0)
            batch = build_scoring_batch(
                inputs, completion_ids, completion_mask, pad_token_id=self._tokenizer.pad_token_id,
                carry=(TEACHER_CACHE_IDS, TEACHER_CACHE_LOGPROBS) if self._use_teacher_cache else (),
            )  # fmt: skip
            lengths = batch["completion_mask"].sum(1)
            clipped = ~ends_with_stop(batch["completion_ids"], batch["completion_mask"], self.stop_ids)
            self._metrics_append("completions/mean_length", self.accelerator.gather(lengths.float()).mean().item())
            self._metrics_append("completions/clipped_ratio", self.accelerator.gather(clipped.float()).mean().item())
            scored.append(batch)
        return scored

    def _rollouts(self, model, batches: list[dict[str, Any]]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Student completions `(ids, mask)` per micro-batch, from as few generate calls as `rollout_batch_size`
        allows (see `completions.generate_grouped`)."""
        return generate_grouped(
            lambda ids, mask: self.generate_completions(model, ids, mask),
            [(b["prompt_ids"], b["prompt_mask"]) for b in batches],
            pad_token_id=self._tokenizer.pad_token_id,
            rows_per_call=self.args.rollout_batch_size,
        )

    # ------------------------------------------------------------------ resume

    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        """`Trainer.train`, with the checkpoint guards of `msd_trl.checkpoints`: a fresh run into an `output_dir` that
        holds checkpoints is refused, `resume_from_checkpoint=True` skips incomplete checkpoints (naming them), and a
        resume whose config differs from the checkpoint's is refused or warned about, naming the fields."""
        checkpoint = resolve_resume_checkpoint(self.args.output_dir, resume_from_checkpoint)
        if checkpoint is not None:
            check_resume_config(checkpoint, self._run_config())
        elif self.args.save_strategy != "no":
            self.teacher_identity()  # recorded by every checkpoint: taken now, before the first step
        self._rng_checkpoint, self._rng_loaded_early = checkpoint, None
        try:
            with warnings.catch_warnings():
                # transformers' deprecation notice, raised from the Trainer/TRL loop: nothing the user can act on.
                warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
                return super().train(checkpoint, *args, **kwargs)
        finally:
            self._rng_checkpoint = self._rng_loaded_early = None

    def _save_checkpoint(self, model, trial):
        # msd_config.json goes in first; trainer_state.json, written last by the Trainer, marks the checkpoint
        # complete (see msd_trl.checkpoints), so a save stopped part-way is skipped on resume.
        folder = os.path.join(self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
        try:
            if self.args.should_save:
                write_run_config(folder, self._run_config())
            super()._save_checkpoint(model, trial)
        except OSError as err:
            raise checkpoint_save_error(folder, err) from err

    def _load_rng_state(self, checkpoint):
        # Mid-epoch, the Trainer restores the saved RNG state only after `get_batch_samples`, i.e. after this step's
        # rollouts were sampled; we restore it before them (below), so the Trainer's late call must not run twice.
        if checkpoint is not None and checkpoint == getattr(self, "_rng_loaded_early", None):
            self._rng_loaded_early = None
            return
        self._rng_checkpoint = None  # restored by the Trainer itself, before any rollout
        super()._load_rng_state(checkpoint)

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        """Collect the accumulated micro-batches, produce their completions, then count completion tokens.

        Counting after generation is what makes the loss of accumulation 4 x 1 equal to 1 x 4. On the first step
        after a resume, the checkpoint's RNG state is restored before sampling, so a resumed on-policy run draws the
        same rollouts as the uninterrupted one.
        """
        raw_batches, _ = super().get_batch_samples(epoch_iterator, num_batches, device)
        checkpoint = getattr(self, "_rng_checkpoint", None)
        if checkpoint is not None:
            self._rng_checkpoint = None
            super()._load_rng_state(checkpoint)
            self._rng_loaded_early = checkpoint
        self.model.train()  # generation happens before training_step sets the mode; metrics go to "train"
        batches = self.prepare_batches(self.model_wrapped, [self._prepare_inputs(b) for b in raw_batches])
        if not batches:
            return batches, None
        num_items = sum(b["completion_mask"].sum() for b in batches).to(device)
        if self.args.average_tokens_across_devices and self.args.world_size > 1:
            num_items = self.accelerator.gather(num_items).sum()
        return batches, num_items

    # ------------------------------------------------------------------ loss

    def _completion_logits(self, model, input_ids, attention_mask, num_completion: int) -> torch.Tensor:
        """Logits that predict the last `num_completion` tokens: `[B, Lc, V]` (see `completions.completion_logits`)."""
        return completion_logits(
            model, input_ids, attention_mask, num_completion, logits_to_keep="logits_to_keep" in self._model_kwarg_keys
        )

    def teacher_logits(
        self, inputs: dict[str, Any], num_completion: int, vocab_size: int | None = None
    ) -> torch.Tensor:
        """The teacher's logits on the completion, without grad, in eval mode.

        With cached top-K log-probs in the batch (off-policy `teacher_cache_top_k`) no teacher forward runs: the
        dense teacher log-probs are rebuilt from the cache (see `dense_from_topk`).
        """
        if TEACHER_CACHE_LOGPROBS in inputs:
            return dense_from_topk(inputs[TEACHER_CACHE_IDS], inputs[TEACHER_CACHE_LOGPROBS], vocab_size)
        return self._teacher_forward(inputs, num_completion, self._completion_logits)

    @torch.no_grad()
    def _teacher_forward(self, inputs: dict[str, Any], num_completion: int, score: Callable) -> torch.Tensor:
        """`score(model, teacher_input_ids, teacher_attention_mask, num_completion)` on the teacher, without grad, in
        eval mode: the adapter-disabled student for the self-teacher under PEFT, else the teacher model."""
        ids, mask = inputs["teacher_input_ids"], inputs["teacher_attention_mask"]
        if self.teacher_model is None:
            unwrapped = self.accelerator.unwrap_model(self.model)
            was_training = unwrapped.training
            # The initial model is scored without dropout. With disable_dropout the base has none and the
            # (disabled) adapter's dropout is not applied, so skip the eval/train walk over every module.
            if not self.args.disable_dropout:
                unwrapped.eval()
            try:
                with use_adapter(unwrapped, adapter_name=None):
                    return score(unwrapped, ids, mask, num_completion)
            finally:
                if not self.args.disable_dropout:
                    unwrapped.train(was_training)
        self.teacher_model.eval()
        return score(self.teacher_model, ids, mask, num_completion)

    def _completion_hidden(self, model, input_ids, attention_mask, num_completion: int) -> torch.Tensor:
        """Last hidden states that predict the last `num_completion` tokens: `[B, Lc, H]` (the LM head runs on one
        position only; `loss_chunk_size` projects the rest chunk by chunk)."""
        kwargs = {"input_ids": input_ids, "attention_mask": attention_mask, "use_cache": False,
                  "output_hidden_states": True}  # fmt: skip
        if "logits_to_keep" in self._model_kwarg_keys:
            kwargs["logits_to_keep"] = 1
        return model(**kwargs).hidden_states[-1][:, -num_completion - 1 : -1, :]

    def _chunked_loss(self, model, inputs: dict[str, Any], num_items_in_batch) -> ChunkedOutput:
        """The loss of `loss_chunk_size`: hidden states in, never more than a chunk of `[B, c, V]` logits."""
        completion_ids, completion_mask = inputs["completion_ids"], inputs["completion_mask"]
        num_completion = completion_ids.size(1)
        student_hidden = self._completion_hidden(model, inputs["input_ids"], inputs["attention_mask"], num_completion)
        unwrapped = self.accelerator.unwrap_model(self.model)
        head = unwrapped.get_output_embeddings()
        if TEACHER_CACHE_LOGPROBS in inputs:
            vocab_size = unwrapped.config.get_text_config().vocab_size
            ids, logprobs = inputs[TEACHER_CACHE_IDS], inputs[TEACHER_CACHE_LOGPROBS]

            def project_teacher(positions: slice) -> torch.Tensor:
                return dense_from_topk(ids[:, positions], logprobs[:, positions], vocab_size)
        else:
            teacher_hidden = self._teacher_forward(inputs, num_completion, self._completion_hidden)
            teacher_head = (
                head
                if self.teacher_model is None
                else self.accelerator.unwrap_model(self.teacher_model).get_output_embeddings()
            )
            # A LoRA on the head itself must be off for the self-teacher (the default targets leave the head alone).
            adapter_off = self.teacher_model is None and hasattr(teacher_head, "lora_A")

            def project_teacher(positions: slice) -> torch.Tensor:
                with use_adapter(unwrapped, adapter_name=None) if adapter_off else contextlib.nullcontext():
                    return teacher_head(teacher_hidden[:, positions])

        return chunked_divergence(
            self.divergence, student_hidden, head, project_teacher, completion_ids, completion_mask,
            chunk_size=self.args.loss_chunk_size, num_items_in_batch=num_items_in_batch,
        )  # fmt: skip

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs = self.prepare_batch(model, inputs)
        completion_ids, completion_mask = inputs["completion_ids"], inputs["completion_mask"]
        num_completion = completion_ids.size(1)
        if num_completion == 0:
            # Every completion is empty: a finite zero that still touches the graph.
            loss = sum(p.sum() * 0.0 for p in model.parameters() if p.requires_grad)
            return (loss, None) if return_outputs else loss
        if self.args.loss_chunk_size is not None:
            student_logits = teacher_logits = None  # never materialised: chunk by chunk inside the loss
            output = self._chunked_loss(model, inputs, num_items_in_batch)
        else:
            student_logits = self._completion_logits(
                model, inputs["input_ids"], inputs["attention_mask"], num_completion
            )  # [B, Lc, V]
            teacher_logits = self.teacher_logits(inputs, num_completion, student_logits.size(-1))  # [B, Lc, V]
            output = self.divergence.compute(
                student_logits, teacher_logits, completion_ids, completion_mask, num_items_in_batch=num_items_in_batch
            )
        if not torch.isfinite(output.loss):
            # HF's logging filters NaN losses, so a step on one would silently turn every trainable weight into NaN.
            raise FloatingPointError(
                f"MSD loss is {output.loss.item()} at global step {self.state.global_step} (divergence "
                f"{self.divergence!r}): the student or teacher logits hold NaN or +inf. Check the model's dtype "
                "(fp16 overflow), the learning rate, and logit processors; -inf logits alone are handled."
            )
        self._log_step_metrics(output, student_logits, teacher_logits, completion_mask)
        loss = output.loss
        if num_items_in_batch is not None and self.args.average_tokens_across_devices and self.args.world_size > 1:
            # N counts every process's tokens and DDP averages gradients over processes: undo the average.
            loss = loss * self.accelerator.num_processes
        return (loss, student_logits) if return_outputs else loss

    # ------------------------------------------------------------------ metrics

    def _metrics_append(self, key: str, value: float) -> None:
        mode = "train" if self.model.training else "eval"
        self._metrics[mode][key].append(value)

    @torch.no_grad()
    def _log_step_metrics(self, output, student_logits, teacher_logits, completion_mask) -> None:
        local = step_statistics(output, student_logits, teacher_logits, completion_mask)
        values = self.accelerator.gather(local.unsqueeze(0)).mean(0).tolist()
        for key, value in zip(STEP_STATISTICS, values):
            # Token weights are all 1 for an unweighted divergence: logging them would only suggest DPSW ran.
            if key.startswith("msd/dpsw_") and not isinstance(self.divergence, DPSW):
                continue
            self._metrics_append(key, value)

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None


TRAINERS = Registry(
    "trainer",
    expects="an MSDTrainer subclass",
    check=lambda value: isinstance(value, type) and issubclass(value, MSDTrainer),
)


def register_trainer(name: str, *, overwrite: bool = False) -> Callable[[type[MSDTrainer]], type[MSDTrainer]]:
    """Class decorator: make an `MSDTrainer` variant available as `msd-trl train --trainer <name>`."""
    return TRAINERS.register(name, overwrite=overwrite)


class _PendingCollator:
    """Marker: the trainer replaces it with an `MSDDataCollator` once the tokenizer is known."""

    def __call__(self, rows):  # pragma: no cover - replaced before any batch is built
        raise RuntimeError("MSD data collator used before the trainer finished initialising.")
