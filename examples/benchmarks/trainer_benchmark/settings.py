"""What every benchmark run shares: the trainers compared, their settings, what each breakdown key covers, and
the targets (see compare_trainers.py for the design)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger("compare_trainers")


TRAINERS = (
    "msd_on_policy",
    "gkd_on_policy",
    "sdft",
    "distillation",
    "msd_off_policy",
    "msd_off_policy_cached",
    "gkd_off_policy",
)
# Opt-in rows (`--only`): MSD on-policy with `loss_chunk_size`, its setting for large vocabularies; when present it
# is the MSD row of the `large_vocab_*` ratios.
OPTIONAL_TRAINERS = ("msd_on_policy_chunked",)
MSD_ON_POLICY = ("msd_on_policy", "msd_on_policy_chunked")
LOSS_CHUNK_SIZE = 64
OFF_POLICY = ("msd_off_policy", "msd_off_policy_cached", "gkd_off_policy")
TEACHER_CACHE_TOP_K = 20  # = DPSW's top_k, so the cached run's token weights are exact
LANGUAGES = ("jv", "sw", "bn")
# MSD's template, matched to SDFT's default "{prompt}\n\n{privileged_context}" so both teachers read the same text.
MSD_TEACHER_TEMPLATE = "{prompt}\n\n{teacher_prompt}"
SDFT_TEACHER_TEMPLATE = "{prompt}\n\n{privileged_context}"
LORA = {"r": 16, "lora_alpha": 32, "lora_dropout": 0.0, "target_modules": "all-linear"}
LEARNING_RATE = 1e-4
RSS_INTERVAL_S = 0.02

# The headline setting is batch 4 x accumulation 4 (users train with an effective batch of 16-64); --quick keeps 4 x 1.
DEFAULTS = {"steps": 8, "warmup": 1, "max_new_tokens": 32, "batch_size": 4, "gradient_accumulation": 4,
            "max_prompt_tokens": 64}  # fmt: skip
QUICK_DEFAULTS = {"steps": 3, "warmup": 1, "max_new_tokens": 16, "gradient_accumulation": 1}
# A model name the benchmark builds itself: Qwen2.5-0.5B-Instruct's architecture with random weights (memory and
# speed do not depend on the values), the embedded SmolLM2 tokenizer (its ids are valid in the larger vocabulary).
QWEN_SHAPED = "qwen2.5-0.5b-shaped"
QWEN25_05B_CONFIG = {
    "vocab_size": 151936, "hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
    "num_attention_heads": 14, "num_key_value_heads": 2, "max_position_embeddings": 32768,
    "tie_word_embeddings": True, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
}  # fmt: skip

TRAINER_DESCRIPTIONS = {
    "msd_on_policy": "OnPolicyMSDTrainer: self-teacher (adapter disabled), DPSW-weighted reverse KL",
    "msd_on_policy_chunked": f"the same with loss_chunk_size={LOSS_CHUNK_SIZE} (the loss over chunks of completion "
    "positions from hidden states, for large vocabularies)",
    "gkd_on_policy": "GKDTrainer lmbda=1, beta=1 (reverse KL), teacher = separate copy of the weights",
    "sdft": "SDFTTrainer teacher_model_kind=base, full_logits, distillation_alpha=1 (reverse KL)",
    "distillation": "trl.DistillationTrainer (TRL's recommended on-policy distillation), beta=1 (reverse KL), chunked "
    "loss on hidden states, teacher = separate copy of the weights",
    "msd_off_policy": "OffPolicyMSDTrainer on the fixed teacher text, DPSW-weighted reverse KL",
    "msd_off_policy_cached": "the same with teacher_cache_top_k=20: the teacher's top-20 log-probs computed once "
    "before training (time reported as teacher_cache_s, outside the steps), so steps run only the student",
    "gkd_off_policy": "GKDTrainer lmbda=0, beta=1, on the same fixed text (messages dataset)",
}

BREAKDOWN_KEYS = {
    "data": "fetching and collating the batch (Trainer.get_batch_samples; for SDFT also _prepare_training_batch): "
    "tokenising prompts, padding, completion bookkeeping, outside the sections below",
    "generation": "sampling student completions: MSD generate_completions, GKD generate_on_policy_outputs, SDFT "
    "and DistillationTrainer _generate (0 for off-policy runs)",
    "student_forward": "the student's forward on prompt + completion (forward hooks on the trained model, outside "
    "generation and teacher scoring)",
    "teacher_forward": "the teacher's no-grad forward: MSD teacher_logits (adapter disabled), GKD teacher_model "
    "forward (a separate copy), SDFT the forward under _get_teacher_context_for_self_distillation, "
    "DistillationTrainer the teacher backbone's forward",
    "loss": "the divergence on the logits: MSD divergence.compute (DPSW weights + reverse KL), GKD "
    "generalized_jsd_loss, SDFT _compute_self_distillation_loss (includes its metric gather), DistillationTrainer "
    "_chunked_divergence_loss (its lm_head projections included)",
    "metrics": "MSD _log_step_metrics (argmax agreement, weight stats, gather); GKD and SDFT have no separate call",
    "backward": "accelerator.backward(loss)",
    "optimizer": "optimizer.step(), between on_pre_optimizer_step and on_optimizer_step",
    "other": "step time minus every part above: Trainer bookkeeping, gradient clipping, zero_grad, scheduler, "
    "tensor glue inside compute_loss",
}

# (ratio key, threshold, description); a target passes when ratio <= threshold.
TARGETS = (
    ("on_policy_vs_sdft_step", 0.9, "on-policy MSD step time <= 0.9 x SDFT"),
    ("on_policy_vs_gkd_step", 0.75, "on-policy MSD step time <= 0.75 x GKD (lmbda=1)"),
    ("on_policy_vs_distillation_step", 0.9, "on-policy MSD step time <= 0.9 x DistillationTrainer"),
    ("on_policy_vs_gkd_mem", 0.65, "on-policy MSD peak memory <= 0.65 x GKD (lmbda=1)"),
    ("off_policy_vs_gkd_step", 0.7, "off-policy MSD step time <= 0.7 x GKD (lmbda=0)"),
    ("off_policy_cached_vs_gkd_step", 0.7, "same, with the teacher top-K cache (teacher_cache_top_k=20)"),
    ("on_policy_other_share", 0.10, "'other' time <= 10 % of the on-policy MSD step"),
)
# Informational: the same memory ratio without the interpreter and libraries (CPU: RSS at the run's start), and the
# large-vocabulary memory targets (n/a unless the model's vocabulary is large, e.g. --model qwen2.5-0.5b-shaped).
EXTRA_TARGETS = (
    ("on_policy_vs_gkd_mem_delta", 0.65, "same, peak memory above the run's starting RSS"),
    ("large_vocab_mem_vs_gkd", 0.65, "large vocabulary: on-policy MSD peak memory <= 0.65 x GKD"),
    ("large_vocab_mem_vs_best_anchor", 0.9, "large vocabulary: on-policy MSD peak memory <= 0.9 x the leanest anchor"),
)
# Targets met from below: PASS when the ratio is at least the threshold.
AT_LEAST_TARGETS = (
    ("generation_floor_ratio", 0.5, "on-policy MSD generation at >= 50 % of the memory-bandwidth floor"),
)


@dataclass
class Settings:
    """Everything the runs share; written to benchmark.json."""

    model: str
    model_path: str
    batch_size: int
    max_new_tokens: int
    steps: int
    warmup: int
    max_prompt_tokens: int
    gradient_accumulation: int = 1
    seed: int = 0
    isolate: bool = True
    quick: bool = False
    trainers: list[str] = field(default_factory=lambda: list(TRAINERS))
    languages: list[str] = field(default_factory=lambda: list(LANGUAGES))
    dtype: str = "float32"
    bf16: bool = False
    gradient_checkpointing: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    learning_rate: float = LEARNING_RATE
    lora: dict[str, Any] = field(default_factory=lambda: dict(LORA))
    msd_teacher_prompt_template: str = MSD_TEACHER_TEMPLATE
    sdft_teacher_prompt_template: str = SDFT_TEACHER_TEMPLATE
    fixed_completions: str = "greedy, base model (no adapter) under MSD's teacher context, max_new_tokens"
    # MSD's rollout decoding options (MSDConfig.generation_threads / merge_adapter_for_generation): on by default on
    # a CPU in float32, as the project's CPU configs use them; TRL's trainers have no such options.
    msd_generation_threads: int | None = None
    msd_merge_adapter_for_generation: bool = False
    # MSDConfig.rollout_batch_size of the MSD on-policy rows (None: every rollout of an optimizer step in one call).
    msd_rollout_batch_size: int | None = None
    # QLoRA: every model (student, and the anchors' teacher copies) loaded as bitsandbytes NF4 with `dtype` as the
    # compute dtype (the GPU check, examples/benchmarks/gpu_check.py); off in the CPU benchmark.
    load_in_4bit: bool = False
    # MSDConfig.max_prompt_length of the MSD rows (None: MSD's default); the GPU check's long prompts need more.
    msd_max_prompt_length: int | None = None

    @property
    def num_rows(self) -> int:
        return self.batch_size * self.gradient_accumulation * (self.warmup + self.steps)

    @property
    def label(self) -> str:
        """The setting a row was measured at, e.g. `"4x4"` (batch x gradient accumulation)."""
        return f"{self.batch_size}x{self.gradient_accumulation}"
