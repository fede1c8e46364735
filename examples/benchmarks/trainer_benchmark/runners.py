"""Data and trainers: the rows, the fixed teacher text, one configured trainer per compared method, and a run."""

from __future__ import annotations

import logging
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from transformers.trainer_callback import PrinterCallback

from .profiling import PeakRSSSampler, StepProfiler, _ProfilerCallback, instrument, weight_bytes
from .settings import (
    BREAKDOWN_KEYS,
    LOSS_CHUNK_SIZE,
    MSD_ON_POLICY,
    TEACHER_CACHE_TOP_K,
    TRAINER_DESCRIPTIONS,
    TRAINERS,
    Settings,
)

logger = logging.getLogger("compare_trainers")


def prepare_rows(settings: Settings) -> list[dict[str, Any]]:
    """The benchmark rows: MultiJail train-split queries whose prompts fit `max_prompt_tokens`, the first N."""
    from msd_trl import build_safety_mix, load_tokenizer

    tokenizer = load_tokenizer(settings.model_path)
    dataset = build_safety_mix(
        settings.languages,
        [],
        seed=settings.seed,
        tokenizer=tokenizer,
        max_prompt_tokens=settings.max_prompt_tokens,
    )
    if len(dataset) < settings.num_rows:
        raise ValueError(
            f"max_prompt_tokens={settings.max_prompt_tokens} leaves {len(dataset)} MultiJail rows, fewer than the "
            f"{settings.num_rows} needed (batch_size x gradient_accumulation x (warmup + steps)); raise "
            "--max_prompt_tokens."
        )
    dataset = dataset.select(range(settings.num_rows))
    return [{key: row[key] for key in ("id", "language", "prompt", "teacher_prompt")} for row in dataset]


def add_fixed_completions(rows: list[dict[str, Any]], settings: Settings) -> float:
    """Greedy teacher text for the off-policy runs, generated once; returns the seconds it took."""
    from datasets import Dataset

    from msd_trl import generate_teacher_completions, load_model, load_tokenizer

    start = time.perf_counter()
    model = load_model(settings.model_path, dtype=settings.dtype, load_in_4bit=settings.load_in_4bit)
    if not settings.load_in_4bit:  # a 4-bit model is placed by load_model and cannot be moved
        model.to("cuda" if torch.cuda.is_available() else "cpu")
    dataset = generate_teacher_completions(
        model,
        Dataset.from_list(rows),
        load_tokenizer(settings.model_path),
        teacher_prompt_template=settings.msd_teacher_prompt_template,
        max_new_tokens=settings.max_new_tokens,
        do_sample=False,
        batch_size=settings.batch_size,
        seed=settings.seed,
    )
    for row, text in zip(rows, dataset["teacher_completion"]):
        row["teacher_completion"] = text
    del model
    return time.perf_counter() - start


def _common_args(settings: Settings, output_dir: Path) -> dict[str, Any]:
    return {
        "output_dir": str(output_dir),
        "per_device_train_batch_size": settings.batch_size,
        "gradient_accumulation_steps": settings.gradient_accumulation,
        "max_steps": settings.warmup + settings.steps,
        "learning_rate": settings.learning_rate,
        "bf16": settings.bf16,
        "activation_checkpointing": settings.gradient_checkpointing,
        "report_to": "none",
        "save_strategy": "no",
        "logging_steps": 1,
        "disable_tqdm": True,
        "disable_dropout": True,
        "seed": settings.seed,
        "temperature": settings.temperature,
        "dataloader_num_workers": 0,
    }


def build_trainer(name: str, settings: Settings, rows: list[dict[str, Any]], output_dir: Path, callbacks: list):
    """One trainer, on a freshly loaded model, set up as the module docstring says."""
    from datasets import Dataset
    from transformers import set_seed
    from trl.experimental.gkd import GKDConfig, GKDTrainer
    from trl.experimental.sdft import SDFTConfig, SDFTTrainer

    from msd_trl import MSDConfig, OffPolicyMSDTrainer, OnPolicyMSDTrainer, load_model, load_tokenizer
    from msd_trl.models import default_lora_config

    set_seed(settings.seed)
    tokenizer = load_tokenizer(settings.model_path)
    model = load_model(settings.model_path, dtype=settings.dtype, load_in_4bit=settings.load_in_4bit)
    peft_config = default_lora_config(**settings.lora)  # a fresh one per run: trainers may edit it
    common = _common_args(settings, output_dir)

    if name in (*MSD_ON_POLICY, "msd_off_policy", "msd_off_policy_cached"):
        args = MSDConfig(
            teacher_cache_top_k=TEACHER_CACHE_TOP_K if name == "msd_off_policy_cached" else None,
            **common,
            max_new_tokens=settings.max_new_tokens,
            top_p=settings.top_p,
            top_k=settings.top_k,
            lmbda=1.0,
            teacher_prompt_template=settings.msd_teacher_prompt_template,
            train_sampling_strategy="sequential",
            generation_threads=settings.msd_generation_threads,
            merge_adapter_for_generation=settings.msd_merge_adapter_for_generation and name in MSD_ON_POLICY,
            rollout_batch_size=settings.msd_rollout_batch_size,
            loss_chunk_size=LOSS_CHUNK_SIZE if name == "msd_on_policy_chunked" else None,
            **({"max_prompt_length": settings.msd_max_prompt_length} if settings.msd_max_prompt_length else {}),
        )
        columns = ("id", "language", "prompt", "teacher_prompt")
        if name not in MSD_ON_POLICY:
            columns += ("teacher_completion",)
        dataset = Dataset.from_list([{key: row[key] for key in columns} for row in rows])
        trainer_cls = OnPolicyMSDTrainer if name in MSD_ON_POLICY else OffPolicyMSDTrainer
        return trainer_cls(
            model=model,
            teacher_model=None,
            args=args,
            train_dataset=dataset,
            processing_class=tokenizer,
            callbacks=callbacks,
            peft_config=peft_config,
        )

    if name in ("gkd_on_policy", "gkd_off_policy"):
        args = GKDConfig(
            **common,
            max_new_tokens=settings.max_new_tokens,
            lmbda=1.0 if name == "gkd_on_policy" else 0.0,
            beta=1.0,
            train_sampling_strategy="sequential",
        )
        # On-policy GKD replaces the assistant turn with a rollout; the collator still needs one.
        dataset = Dataset.from_list(
            [
                {
                    "messages": [
                        {"role": "user", "content": row["prompt"]},
                        {"role": "assistant", "content": row.get("teacher_completion", "")},
                    ]
                }
                for row in rows
            ]
        )
        teacher = load_model(settings.model_path, dtype=settings.dtype, load_in_4bit=settings.load_in_4bit)
        return GKDTrainer(
            model=model,
            teacher_model=teacher,
            args=args,
            train_dataset=dataset,
            processing_class=tokenizer,
            callbacks=callbacks,
            peft_config=peft_config,
        )

    if name == "sdft":
        args = SDFTConfig(
            **common,
            max_completion_length=settings.max_new_tokens,
            num_generations=1,
            # SDFT at its best: one generation for every micro-batch of an optimizer step, as MSD does.
            steps_per_generation=settings.gradient_accumulation,
            top_p=settings.top_p,
            top_k=settings.top_k,
            teacher_model_kind="base",
            distillation_mode="full_logits",
            distillation_alpha=1.0,
            teacher_prompt_template=settings.sdft_teacher_prompt_template,
            shuffle_dataset=False,
        )
        dataset = Dataset.from_list(
            [
                {"prompt": [{"role": "user", "content": row["prompt"]}], "privileged_context": row["teacher_prompt"]}
                for row in rows
            ]
        )
        return SDFTTrainer(
            model=model,
            args=args,
            train_dataset=dataset,
            processing_class=tokenizer,
            callbacks=callbacks,
            peft_config=peft_config,
        )
    if name == "distillation":
        from trl import DistillationConfig, DistillationTrainer

        args = DistillationConfig(
            **common,
            max_completion_length=settings.max_new_tokens,
            top_p=settings.top_p,
            top_k=settings.top_k,
            beta=1.0,
            shuffle_dataset=False,
        )
        dataset = Dataset.from_list([{"prompt": [{"role": "user", "content": row["prompt"]}]} for row in rows])
        teacher = load_model(settings.model_path, dtype=settings.dtype, load_in_4bit=settings.load_in_4bit)
        return DistillationTrainer(
            model=model,
            teacher_model=teacher,
            args=args,
            train_dataset=dataset,
            processing_class=tokenizer,
            callbacks=callbacks,
            peft_config=peft_config,
        )
    raise ValueError(f"unknown trainer name={name!r}; choose from {list(TRAINERS)}.")


def _summarise_steps(steps: list[dict[str, Any]], warmup: int) -> dict[str, Any]:
    measured = steps[warmup:]
    if not measured:
        raise ValueError(f"no measured steps: {len(steps)} steps ran and warmup={warmup}.")
    step_times = [s["step_s"] for s in measured]
    step_mean = statistics.fmean(step_times)
    keys = [k for k in BREAKDOWN_KEYS if k != "other"]
    breakdown = {k: statistics.fmean(s["sections"].get(k, 0.0) for s in measured) for k in keys}
    breakdown["other"] = step_mean - sum(breakdown.values())
    tokens = sum(s["tokens"] for s in measured)
    return {
        "step_s_median": statistics.median(step_times),
        "step_s_mean": step_mean,
        "step_s_measured": step_times,
        "step_s_warmup": [s["step_s"] for s in steps[:warmup]],
        "tokens_per_s": tokens / sum(step_times) if sum(step_times) > 0 else 0.0,
        "completion_tokens_per_step": tokens / len(measured),
        "breakdown_s": breakdown,
        "other_share": breakdown["other"] / step_mean if step_mean > 0 else 0.0,
    }


def _count_decode_steps(trainer) -> list[int]:
    """Record the decode steps of every generate call (its completion length) of an MSD trainer."""
    steps: list[int] = []
    original = trainer.generate_completions

    def counted(*args, **kwargs):
        completion_ids, completion_mask = original(*args, **kwargs)
        steps.append(completion_ids.size(1))
        return completion_ids, completion_mask

    trainer.generate_completions = counted
    return steps


def build_qwen_shaped_checkpoint(directory: Path) -> str:
    """A randomly initialised Qwen2.5-0.5B-shaped checkpoint with the embedded tokenizer, built once."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from msd_trl import load_tokenizer

    from .settings import QWEN25_05B_CONFIG

    if not (directory / "config.json").exists():
        torch.manual_seed(0)
        Qwen2ForCausalLM(Qwen2Config(**QWEN25_05B_CONFIG)).save_pretrained(directory)
        load_tokenizer().save_pretrained(directory)
    return str(directory)


def run_trainer(name: str, settings: Settings, rows: list[dict[str, Any]], work_dir: Path) -> dict[str, Any]:
    """Build, instrument and train one trainer; returns its measurements."""
    import gc

    on_gpu = torch.cuda.is_available()
    total = settings.warmup + settings.steps
    profiler = StepProfiler(sync=on_gpu)
    callback = _ProfilerCallback(profiler, name, settings.warmup, total)
    if on_gpu:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    with PeakRSSSampler(section=profiler.current) as rss:
        trainer = build_trainer(name, settings, rows, work_dir / "runs" / name, [callback])
        build_s = time.perf_counter() - start
        trainer.remove_callback(PrinterCallback)  # its per-step log dicts would drown the progress lines
        instrument(trainer, name, profiler)
        decode_steps = _count_decode_steps(trainer) if name in MSD_ON_POLICY else None
        model_bytes = weight_bytes(trainer.model)
        trainer.train()
    wall_s = time.perf_counter() - start
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    result: dict[str, Any] = {
        "trainer": type(trainer).__name__,
        "settings": {
            "model": settings.model,
            "batch_size": settings.batch_size,
            "gradient_accumulation": settings.gradient_accumulation,
            "label": settings.label,
            **(
                {
                    "generation_threads": settings.msd_generation_threads,
                    "merge_adapter_for_generation": settings.msd_merge_adapter_for_generation,
                    "rollout_batch_size": settings.msd_rollout_batch_size,
                }
                if name in MSD_ON_POLICY
                else {}
            ),
            **({"loss_chunk_size": LOSS_CHUNK_SIZE} if name == "msd_on_policy_chunked" else {}),
        },  # fmt: skip
        "description": TRAINER_DESCRIPTIONS[name],
        **_summarise_steps(profiler.steps, settings.warmup),
        "peak_rss_mb": rss.peak_mb,
        # The largest RSS sample inside each section (20 ms sampling): which phase of a step sets the peak.
        "peak_rss_by_section_mb": dict(sorted(rss.peak_by_section_mb.items())),
        "rss_start_mb": rss.start_mb,
        "trainable_params": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
        "trainable_dtypes": sorted({str(p.dtype) for p in trainer.model.parameters() if p.requires_grad}),
        "final_loss": losses[-1] if losses else None,
        "build_s": build_s,
        "wall_s": wall_s,
        "weight_bytes": model_bytes,
    }
    if decode_steps is not None:
        # Decode steps per optimizer step (the longest completion of each generate call, summed over the calls).
        result["decode_steps_per_step"] = sum(decode_steps) / max(1, total)
    if on_gpu:
        result["peak_mem_mb"] = torch.cuda.max_memory_allocated() / 2**20
        result["peak_mem_source"] = "torch.cuda.max_memory_allocated"
        result["peak_mem_delta_mb"] = result["peak_mem_mb"]
    else:
        result["peak_mem_mb"] = rss.peak_mb
        result["peak_mem_source"] = "peak RSS (sampled every 20 ms)"
        result["peak_mem_delta_mb"] = rss.peak_mb - rss.start_mb
    del trainer
    gc.collect()
    if on_gpu:
        torch.cuda.empty_cache()
    return result
