"""MSD trainers: the shared core and `OnPolicyMSDTrainer` / `OffPolicyMSDTrainer`.

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
"""

from __future__ import annotations

import copy
import json
import logging
import math
import random
import warnings
from collections.abc import Callable
from dataclasses import fields
from typing import Any

import torch
import torch.nn as nn
from accelerate.utils import is_peft_model
from datasets import Dataset
from tqdm.auto import tqdm
from transformers import AutoModelForCausalLM, GenerationConfig, PreTrainedModel, TrainerCallback
from transformers.trainer_utils import get_last_checkpoint
from trl.models import prepare_deepspeed, unwrap_model_for_generation
from trl.trainer.sft_trainer import SFTTrainer
from trl.trainer.utils import disable_dropout_in_model, use_adapter

from .config import (
    GKDConfig,  # imported there without TRL's experimental-API warning
    MSDConfig,
)
from .divergences import DPSW, Divergence, get_divergence
from .models import disable_bnb_cpu_weight_packing, resolve_model_name_or_path
from .names import TEACHER_COMPLETION_COLUMN
from .rendering import (
    TEACHER_CACHE_FINGERPRINT,
    TEACHER_CACHE_IDS,
    TEACHER_CACHE_LOGPROBS,
    MSDDataCollator,
    render_student_messages,
    render_teacher_messages,
    stop_token_ids,
)

logger = logging.getLogger(__name__)

__all__ = ["MSDDataCollator", "OffPolicyMSDTrainer", "OnPolicyMSDTrainer", "build_divergence", "dense_from_topk"]


def build_divergence(args: MSDConfig) -> Divergence:
    """The divergence an `MSDConfig` asks for (an instance in `args.divergence` passes through)."""
    if isinstance(args.divergence, Divergence):
        return args.divergence
    temperature = args.divergence_temperature
    if args.divergence == "jsd":
        return get_divergence("jsd", beta=args.beta, temperature=temperature)
    if args.divergence == "dpsw":
        base_kwargs = {"beta": args.beta} if args.dpsw_base == "jsd" else {}
        base = get_divergence(args.dpsw_base, temperature=temperature, **base_kwargs)
        return DPSW(base, top_k=args.dpsw_top_k, min_weight=args.dpsw_min_weight, normalize=args.dpsw_normalize)
    return get_divergence(args.divergence, temperature=temperature)


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


def _upgrade_config(args: GKDConfig | MSDConfig | None, output_dir: str = "msd_output") -> MSDConfig:
    if args is None:
        return MSDConfig(output_dir=output_dir)
    if isinstance(args, MSDConfig):
        return args
    if not isinstance(args, GKDConfig):
        raise ValueError(f"args must be an MSDConfig or a GKDConfig, got {type(args).__name__}.")
    values = {f.name: getattr(args, f.name) for f in fields(GKDConfig) if f.init and hasattr(args, f.name)}
    # GKDConfig resolves these deprecated aliases in __post_init__; pass only the new names.
    values.pop("gradient_checkpointing", None)
    values.pop("gradient_checkpointing_kwargs", None)
    logger.info(
        "Upgrading GKDConfig to MSDConfig with divergence='jsd' (GKD's generalized JSD, beta=%s); GKD's own values "
        "(lmbda=%s, bf16=%s, gradient checkpointing=%s) are kept as given.",
        args.beta,
        args.lmbda,
        args.bf16,
        args.gradient_checkpointing,
    )
    # "translation" = the row's teacher_prompt if it has one, else the student's prompt, no system prompt: GKD's teacher.
    return MSDConfig(**values, divergence="jsd", teacher_preset="translation")


class _MSDTrainerBase(SFTTrainer):
    """The shared MSD core. Subclasses decide, per micro-batch, where the completion comes from."""

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
    requires_fixed_completions = False
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
        args = _upgrade_config(args)
        args.remove_unused_columns = False
        args.dataset_kwargs = {**(args.dataset_kwargs or {}), "skip_prepare_dataset": True}
        completion_column = getattr(data_collator, "completion_column", TEACHER_COMPLETION_COLUMN)
        for name, dataset in self._named_datasets(train_dataset, eval_dataset):
            self._check_columns(dataset, name, completion_column)
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
            )
        self._keep_adapter_dtype_on_cpu()
        # bitsandbytes on CPU would otherwise switch 4-bit layers to a kernel without backward after the first
        # generation step, silently dropping QLoRA gradients (see models.disable_bnb_cpu_weight_packing).
        disable_bnb_cpu_weight_packing(self.model)
        if args.disable_dropout:
            disable_dropout_in_model(self.model)
        self.divergence = build_divergence(args)
        self._setup_teacher(teacher_model)
        for name, dataset in self._named_datasets(train_dataset, eval_dataset):
            self._validate_rows(dataset, name)
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

    # ------------------------------------------------------------------ set-up

    @staticmethod
    def _named_datasets(train_dataset, eval_dataset):
        if train_dataset is not None:
            yield "train_dataset", train_dataset
        if isinstance(eval_dataset, dict):
            yield from ((f"eval_dataset[{k!r}]", v) for k, v in eval_dataset.items())
        elif eval_dataset is not None:
            yield "eval_dataset", eval_dataset

    def _check_columns(self, dataset, name: str, completion_column: str = TEACHER_COMPLETION_COLUMN) -> None:
        if hasattr(dataset, "__len__") and len(dataset) == 0:  # else SFTTrainer fails with a bare StopIteration
            raise ValueError(f"{name} has 0 rows: pass a dataset with at least one MSD row.")
        columns = set(getattr(dataset, "column_names", None) or [])
        if not columns:
            return
        if "prompt" not in columns and "messages" not in columns:
            raise ValueError(
                f"{name} has no 'prompt' column (nor GKD's 'messages'); found columns {sorted(columns)}. MSD rows "
                "need 'prompt' (the target-language query) and usually 'teacher_prompt' (the English query)."
            )
        if self.requires_fixed_completions and completion_column not in columns and "prompt" in columns:
            raise ValueError(
                f"{name} has no {completion_column!r} column (found {sorted(columns)}). {type(self).__name__} scores "
                "fixed teacher text: create it with msd_trl.generate_teacher_completions(model, dataset, ...) (its "
                "column= must match MSDDataCollator(completion_column=...))."
            )

    def _validate_rows(self, dataset, name: str) -> None:
        """Check every row once, before training, so a bad row fails now with its id instead of at a random step.

        Rows must have a non-empty `prompt` (or GKD `messages` of role/content dicts), a non-empty `teacher_prompt`
        when the column holds a value, and a string fixed completion where the trainer needs one. With the
        self-teacher, a teacher conversation identical to the student's is refused: its loss is 0 (nothing to learn).
        Iterable datasets are not walked.
        """
        if not hasattr(dataset, "__len__") or not hasattr(dataset, "__getitem__"):
            return
        completion_column = (
            self.data_collator.completion_column if hasattr(self.data_collator, "completion_column") else None
        )
        needs_completion = self.requires_fixed_completions and completion_column in (dataset.column_names or [])
        template, system_prompt = self.args.teacher_prompt_template, self.args.teacher_system_prompt
        for index, row in enumerate(dataset):
            where = f"{name} row {index} (id {row.get('id', '?')!r})"
            prompt = row.get("prompt")
            if prompt is None and not row.get("messages"):
                raise ValueError(
                    f"{where}: 'prompt' is empty (None) and there are no 'messages'; drop or fill the row."
                )
            if isinstance(prompt, str) and not prompt.strip():
                raise ValueError(f"{where}: 'prompt' is blank ({prompt!r}); drop or fill the row.")
            conversation = prompt if prompt is not None else row.get("messages")
            if isinstance(conversation, list):
                for turn in conversation:
                    if not isinstance(turn, dict) or turn.get("role") is None or turn.get("content") is None:
                        raise ValueError(f"{where}: every chat message needs 'role' and 'content', got {turn!r}.")
            teacher_prompt = row.get("teacher_prompt")
            if isinstance(teacher_prompt, str) and not teacher_prompt.strip():
                raise ValueError(
                    f"{where}: 'teacher_prompt' is blank ({teacher_prompt!r}): the teacher would see no English "
                    "query. Fill it, or set it to None to give the teacher the student's query."
                )
            if needs_completion and not isinstance(row.get(completion_column), str):
                raise ValueError(
                    f"{where}: {completion_column!r} must be a string, got {row.get(completion_column)!r}; "
                    "regenerate it with msd_trl.generate_teacher_completions."
                )
            if self.self_teacher and render_teacher_messages(
                row, template=template, system_prompt=system_prompt
            ) == render_student_messages(row):
                raise ValueError(
                    f"{where}: the self-teacher would see exactly the student's conversation, so there is nothing to "
                    "distil (loss 0). Add a 'teacher_prompt' column (the English query), or a teacher context: "
                    "MSDConfig(teacher_preset='english_refusal' or 'paper') or a teacher_system_prompt."
                )

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

    @staticmethod
    def _forward_signature(model) -> list[str]:
        import inspect

        target = model.get_base_model() if hasattr(model, "get_base_model") else model
        return list(inspect.signature(target.forward).parameters)

    # ------------------------------------------------------------------ completions

    def _use_fixed_completion(self, inputs: dict[str, Any]) -> bool:
        """Whether this micro-batch scores its fixed completion (True) or samples the student (False)."""
        raise NotImplementedError

    @torch.no_grad()
    def generate_completions(self, model, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor):
        """Sample the student on its own prompts. Returns `completion_ids`, `completion_mask` `[B, Lc]`.

        The mask keeps every token up to and including the first stop id (any of `self.stop_ids`), so when
        pad == eos the real EOS keeps its label; tokens after it (padding) are masked.
        """
        with unwrap_model_for_generation(
            model,
            self.accelerator,
            generation_kwargs=self.generation_config.to_dict(),
            gradient_checkpointing_kwargs=self.args.gradient_checkpointing_kwargs,
        ) as unwrapped:
            was_training = unwrapped.training
            unwrapped.eval()
            sequences = unwrapped.generate(
                input_ids=prompt_ids, attention_mask=prompt_mask, generation_config=self.generation_config
            )
            unwrapped.train(was_training)
        completion_ids = sequences[:, prompt_ids.size(1) :]  # [B, Lc]
        return completion_ids, self.completion_mask_from_ids(completion_ids)

    def completion_mask_from_ids(self, completion_ids: torch.Tensor) -> torch.Tensor:
        is_stop = torch.isin(completion_ids, torch.tensor(self.stop_ids, device=completion_ids.device))  # [B, Lc]
        length = completion_ids.size(1)
        first_stop = torch.where(
            is_stop.any(1), is_stop.int().argmax(1), torch.full_like(is_stop[:, 0], length, dtype=torch.long)
        )
        positions = torch.arange(length, device=completion_ids.device).unsqueeze(0)  # [1, Lc]
        return (positions <= first_stop.unsqueeze(1)).long()  # [B, Lc]

    def _check_privileged_context(self, inputs: dict[str, Any]) -> None:
        """Per batch (cheap; also covers iterable datasets, which construction does not walk): with the self-teacher,
        a teacher prompt identical to the student's teaches nothing."""
        student, teacher = inputs["prompt_ids"], inputs["teacher_prompt_ids"]
        if not self.self_teacher or student.shape != teacher.shape:
            return
        same = ((student == teacher) & (inputs["prompt_mask"] == inputs["teacher_prompt_mask"])).all(dim=1)  # [B]
        if same.any():
            rows = [row for row, flag in zip(inputs.get("row_ids", [None] * len(same)), same.tolist()) if flag]
            raise ValueError(
                f"rows {rows}: the self-teacher sees exactly the student's prompt, so there is nothing to distil. Add "
                "a 'teacher_prompt' column or a teacher context (MSDConfig.teacher_preset / teacher_system_prompt)."
            )

    def prepare_batch(self, model, inputs: dict[str, Any]) -> dict[str, Any]:
        """Collated rows -> a scored-ready batch (student and teacher sequences sharing the completion ids)."""
        if "completion_ids" in inputs:
            return inputs
        self._check_privileged_context(inputs)
        if self._use_fixed_completion(inputs):
            completion_ids, completion_mask = inputs["fixed_completion_ids"], inputs["fixed_completion_mask"]
            self._metrics_append("completions/on_policy_ratio", 0.0)
        else:
            completion_ids, completion_mask = self.generate_completions(
                model, inputs["prompt_ids"], inputs["prompt_mask"]
            )
            self._metrics_append("completions/on_policy_ratio", 1.0)
        # Trim columns that are padding in every row (rollouts stop early, batches are padded to the longest).
        keep = int(completion_mask.sum(1).max().item()) if completion_mask.numel() else 0
        completion_ids, completion_mask = completion_ids[:, :keep], completion_mask[:, :keep]
        lengths = completion_mask.sum(1)
        ends_with_stop = torch.isin(
            completion_ids.gather(1, (lengths - 1).clamp(min=0).unsqueeze(1)).squeeze(1),
            torch.tensor(self.stop_ids, device=completion_ids.device),
        ) & (lengths > 0)
        self._metrics_append("completions/mean_length", self.accelerator.gather(lengths.float()).mean().item())
        self._metrics_append(
            "completions/clipped_ratio", self.accelerator.gather((~ends_with_stop).float()).mean().item()
        )
        completion_ids = completion_ids.masked_fill(completion_mask == 0, self._tokenizer.pad_token_id)
        batch = {
            "input_ids": torch.cat([inputs["prompt_ids"], completion_ids], dim=1),
            "attention_mask": torch.cat([inputs["prompt_mask"], completion_mask], dim=1),
            "teacher_input_ids": torch.cat([inputs["teacher_prompt_ids"], completion_ids], dim=1),
            "teacher_attention_mask": torch.cat([inputs["teacher_prompt_mask"], completion_mask], dim=1),
            "completion_ids": completion_ids,
            "completion_mask": completion_mask,
        }
        if TEACHER_CACHE_IDS in inputs and self._use_teacher_cache:
            batch[TEACHER_CACHE_IDS] = inputs[TEACHER_CACHE_IDS][:, :keep]
            batch[TEACHER_CACHE_LOGPROBS] = inputs[TEACHER_CACHE_LOGPROBS][:, :keep]
        return batch

    # ------------------------------------------------------------------ resume

    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        checkpoint = resume_from_checkpoint
        if isinstance(checkpoint, bool):
            checkpoint = get_last_checkpoint(self.args.output_dir) if checkpoint else None
        self._rng_checkpoint, self._rng_loaded_early = checkpoint, None
        try:
            with warnings.catch_warnings():
                # transformers' deprecation notice, raised from the Trainer/TRL loop: nothing the user can act on.
                warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
                return super().train(resume_from_checkpoint, *args, **kwargs)
        finally:
            self._rng_checkpoint = self._rng_loaded_early = None

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
        batches = [self.prepare_batch(self.model_wrapped, self._prepare_inputs(b)) for b in raw_batches]
        if not batches:
            return batches, None
        num_items = sum(b["completion_mask"].sum() for b in batches).to(device)
        if self.args.average_tokens_across_devices and self.args.world_size > 1:
            num_items = self.accelerator.gather(num_items).sum()
        return batches, num_items

    # ------------------------------------------------------------------ loss

    def _completion_logits(self, model, input_ids, attention_mask, num_completion: int) -> torch.Tensor:
        """Logits that predict the last `num_completion` tokens: `[B, Lc, V]`."""
        kwargs = {"input_ids": input_ids, "attention_mask": attention_mask, "use_cache": False}
        if "logits_to_keep" in self._model_kwarg_keys:
            kwargs["logits_to_keep"] = num_completion + 1
        logits = model(**kwargs).logits  # [B, L or Lc + 1, V]
        return logits[:, -num_completion - 1 : -1, :]

    def teacher_logits(
        self, inputs: dict[str, Any], num_completion: int, vocab_size: int | None = None
    ) -> torch.Tensor:
        """The teacher's logits on the completion, without grad, in eval mode.

        With cached top-K log-probs in the batch (off-policy `teacher_cache_top_k`) no teacher forward runs: the
        dense teacher log-probs are rebuilt from the cache (see `dense_from_topk`).
        """
        if TEACHER_CACHE_LOGPROBS in inputs:
            return dense_from_topk(inputs[TEACHER_CACHE_IDS], inputs[TEACHER_CACHE_LOGPROBS], vocab_size)
        with torch.no_grad():
            if self.teacher_model is None:
                unwrapped = self.accelerator.unwrap_model(self.model)
                was_training = unwrapped.training
                # The initial model is scored without dropout. With disable_dropout the base has none and the
                # (disabled) adapter's dropout is not applied, so skip the eval/train walk over every module.
                if not self.args.disable_dropout:
                    unwrapped.eval()
                try:
                    with use_adapter(unwrapped, adapter_name=None):
                        return self._completion_logits(
                            unwrapped, inputs["teacher_input_ids"], inputs["teacher_attention_mask"], num_completion
                        )
                finally:
                    if not self.args.disable_dropout:
                        unwrapped.train(was_training)
            self.teacher_model.eval()
            return self._completion_logits(
                self.teacher_model, inputs["teacher_input_ids"], inputs["teacher_attention_mask"], num_completion
            )

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs = self.prepare_batch(model, inputs)
        completion_ids, completion_mask = inputs["completion_ids"], inputs["completion_mask"]
        num_completion = completion_ids.size(1)
        if num_completion == 0:
            # Every completion is empty: a finite zero that still touches the graph.
            loss = sum(p.sum() * 0.0 for p in model.parameters() if p.requires_grad)
            return (loss, None) if return_outputs else loss
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
        mask = completion_mask.bool()
        num_valid = mask.sum().clamp(min=1)
        weights = output.weights[mask] if mask.any() else output.weights.new_ones(1)
        agree = (student_logits.argmax(-1) == teacher_logits.argmax(-1)) & mask
        local = torch.stack(
            [
                (output.per_token_loss.detach() * output.weights).sum() / num_valid,
                output.per_token_loss.detach().sum() / num_valid,
                weights.float().mean(),
                weights.float().max(),
                agree.sum() / num_valid,
            ]
        ).float()
        values = self.accelerator.gather(local.unsqueeze(0)).mean(0).tolist()
        keys = ("msd/loss", "msd/divergence", "msd/dpsw_weight_mean", "msd/dpsw_weight_max",
                "msd/teacher_student_top1_agreement")  # fmt: skip
        for key, value in zip(keys, values):
            # Token weights are all 1 for an unweighted divergence: logging them would only suggest DPSW ran.
            if key.startswith("msd/dpsw_") and not isinstance(self.divergence, DPSW):
                continue
            self._metrics_append(key, value)

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None


class _PendingCollator:
    """Marker: the trainer replaces it with an `MSDDataCollator` once the tokenizer is known."""

    def __call__(self, rows):  # pragma: no cover - replaced before any batch is built
        raise RuntimeError("MSD data collator used before the trainer finished initialising.")


class OnPolicyMSDTrainer(_MSDTrainerBase):
    """On-policy MSD: the student samples a response to its target-language prompt, the teacher scores it.

    With probability `args.lmbda` a micro-batch is on-policy; otherwise it scores the rows' fixed completion
    (`teacher_completion`, or the last turn of `messages`) when every row has one, and samples when not.
    The arguments are `trl.experimental.gkd.GKDTrainer`'s, in the same order (a drop-in replacement).

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

    _name = "On-policy MSD"

    def _use_fixed_completion(self, inputs):
        if "fixed_completion_ids" not in inputs:
            return False
        return random.random() > self.args.lmbda


class OffPolicyMSDTrainer(_MSDTrainerBase):
    """Off-policy MSD: student and teacher both score fixed teacher text (`teacher_completion`).

    Create the column once with `generate_teacher_completions`. A GKD `messages` dataset works too (its last
    turn is the fixed completion). `args.lmbda` is ignored: no step samples the student. With
    `args.teacher_cache_top_k` the teacher scores the text once before training (see `cache_teacher_topk`).
    The arguments are `trl.experimental.gkd.GKDTrainer`'s, in the same order.

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
        from .generation import teacher_fingerprint

        return teacher_fingerprint(
            self.model, self._tokenizer, template=self.args.teacher_prompt_template,
            system_prompt=self.args.teacher_system_prompt or None, top_k=top_k,
        )  # fmt: skip

    def _check_topk_cache(self, dataset: Dataset) -> None:
        """Use cached teacher top-K columns only when they were made by this teacher setting, and asked for."""
        drop = f"dataset.remove_columns({[TEACHER_CACHE_IDS, TEACHER_CACHE_LOGPROBS, TEACHER_CACHE_FINGERPRINT]})"
        if self.args.teacher_cache_top_k is None:
            raise ValueError(
                f"train_dataset carries cached teacher top-K columns but teacher_cache_top_k=None: set "
                f"teacher_cache_top_k to use them, or drop them ({drop}) to score the teacher at every step."
            )
        if not self.self_teacher:
            raise ValueError(
                "train_dataset carries cached teacher top-K columns, but a teacher_model was passed: the cache holds "
                f"another teacher's scores. Drop them ({drop}) or pass teacher_model=None."
            )
        if TEACHER_CACHE_FINGERPRINT not in dataset.column_names:
            raise ValueError(
                f"the cached teacher top-K columns carry no fingerprint, so they cannot be checked; {drop}."
            )
        from .generation import fingerprint_differences

        cached = json.loads(dataset[0][TEACHER_CACHE_FINGERPRINT])
        differences = fingerprint_differences(cached, self._topk_fingerprint(self.args.teacher_cache_top_k))
        if differences:
            raise ValueError(
                f"the cached teacher top-K columns were made by another setting: {'; '.join(differences)}. Drop them "
                f"({drop}) to rebuild the cache."
            )

    @torch.no_grad()
    def cache_teacher_topk(self, dataset: Dataset, *, top_k: int, batch_size: int | None = None) -> Dataset:
        """Score the fixed teacher text once and store the teacher's top-K log-probs per completion token.

        Adds `teacher_topk_ids` and `teacher_topk_logprobs` (`[completion length, K]` per row); training steps on
        such rows run only the student. The teacher's distribution is approximated by `dense_from_topk`.
        """
        batch_size = batch_size or self.args.per_device_eval_batch_size
        all_ids, all_logprobs = [], []
        for start in tqdm(range(0, len(dataset), batch_size), desc="caching teacher top-K", unit="batch"):
            rows = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
            inputs = self._prepare_inputs(self.data_collator(rows))
            completion_ids, completion_mask = inputs["fixed_completion_ids"], inputs["fixed_completion_mask"]
            batch = {
                "teacher_input_ids": torch.cat([inputs["teacher_prompt_ids"], completion_ids], dim=1),
                "teacher_attention_mask": torch.cat([inputs["teacher_prompt_mask"], completion_mask], dim=1),
            }
            log_probs = self.teacher_logits(batch, completion_ids.size(1)).float().log_softmax(-1)  # [B, Lc, V]
            values, indices = log_probs.topk(min(top_k, log_probs.size(-1)), dim=-1)  # [B, Lc, K]
            for row, length in enumerate(completion_mask.sum(1).tolist()):
                all_ids.append(indices[row, :length].cpu().tolist())
                all_logprobs.append(values[row, :length].cpu().tolist())
        logger.info("Cached the teacher's top-%d log-probs for %d rows.", top_k, len(dataset))
        fingerprint = json.dumps(self._topk_fingerprint(top_k), ensure_ascii=False)
        return (
            dataset.add_column(TEACHER_CACHE_IDS, all_ids)
            .add_column(TEACHER_CACHE_LOGPROBS, all_logprobs)
            .add_column(TEACHER_CACHE_FINGERPRINT, [fingerprint] * len(dataset))
        )

    def _use_fixed_completion(self, inputs):
        if "fixed_completion_ids" not in inputs:
            raise ValueError(
                "OffPolicyMSDTrainer needs a fixed completion in every row ('teacher_completion', or the last turn "
                f"of 'messages'); rows {inputs.get('row_ids')} lack it. Run generate_teacher_completions first."
            )
        return True
