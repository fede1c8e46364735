"""The report: ratios between runs, the targets they are checked against, and the Markdown table."""

from __future__ import annotations

import logging
import os
import platform
from typing import Any

import torch

from .settings import (
    AT_LEAST_TARGETS,
    BREAKDOWN_KEYS,
    EXTRA_TARGETS,
    TARGETS,
    TRAINER_DESCRIPTIONS,
)

logger = logging.getLogger("compare_trainers")


def _ratio(results: dict[str, Any], a: str, b: str, key: str) -> float | None:
    if a not in results or b not in results or "error" in results[a] or "error" in results[b]:
        return None
    denominator = results[b][key]
    return results[a][key] / denominator if denominator else None


def generation_floor_ratio(result: dict[str, Any], bandwidth_gb_s: float | None) -> float | None:
    """Bandwidth floor of a decode step (weight bytes / copy bandwidth) over the measured time per decode step."""
    if not bandwidth_gb_s or "error" in result or not result.get("decode_steps_per_step"):
        return None
    measured = result["breakdown_s"]["generation"] / result["decode_steps_per_step"]
    floor = result["weight_bytes"] / (bandwidth_gb_s * 1e9)
    return floor / measured if measured > 0 else None


def compute_ratios(
    results: dict[str, dict[str, Any]], bandwidth_gb_s: float | None = None, large_vocab: bool = False
) -> dict[str, float | None]:
    """The ratios the targets are stated in (None where a run is missing or failed). The `large_vocab_*` ratios
    are the on-policy memory ratios, reported under those names when the model has a large vocabulary, of
    `msd_on_policy_chunked` (MSD's large-vocabulary setting) when it ran, else of `msd_on_policy`."""
    msd = results.get("msd_on_policy", {})
    chunked = results.get("msd_on_policy_chunked", {})
    large_vocab_row = "msd_on_policy_chunked" if chunked and "error" not in chunked else "msd_on_policy"
    msd_off = results.get("msd_off_policy", {})
    anchors = [n for n in ("gkd_on_policy", "sdft", "distillation") if n in results and "error" not in results[n]]
    leanest = min(anchors, key=lambda n: results[n]["peak_mem_mb"]) if anchors else None
    return {
        "on_policy_vs_gkd_step": _ratio(results, "msd_on_policy", "gkd_on_policy", "step_s_median"),
        "on_policy_vs_sdft_step": _ratio(results, "msd_on_policy", "sdft", "step_s_median"),
        "on_policy_vs_distillation_step": _ratio(results, "msd_on_policy", "distillation", "step_s_median"),
        "on_policy_vs_gkd_mem": _ratio(results, "msd_on_policy", "gkd_on_policy", "peak_mem_mb"),
        "off_policy_vs_gkd_step": _ratio(results, "msd_off_policy", "gkd_off_policy", "step_s_median"),
        "off_policy_cached_vs_gkd_step": _ratio(results, "msd_off_policy_cached", "gkd_off_policy", "step_s_median"),
        "on_policy_vs_gkd_mem_delta": _ratio(results, "msd_on_policy", "gkd_on_policy", "peak_mem_delta_mb"),
        "large_vocab_mem_vs_gkd": _ratio(results, large_vocab_row, "gkd_on_policy", "peak_mem_mb")
        if large_vocab
        else None,
        "large_vocab_mem_vs_best_anchor": _ratio(results, large_vocab_row, leanest, "peak_mem_mb")
        if large_vocab and leanest
        else None,
        "generation_floor_ratio": generation_floor_ratio(msd, bandwidth_gb_s) if msd else None,
        "on_policy_other_share": msd.get("other_share") if "error" not in msd else None,
        "off_policy_other_share": msd_off.get("other_share") if "error" not in msd_off else None,
    }


def evaluate_targets(ratios: dict[str, float | None]) -> dict[str, dict[str, Any]]:
    """PASS when the ratio is at most the threshold, MISS when above, n/a when it could not be computed."""
    verdicts = {}
    for key, threshold, description in TARGETS + EXTRA_TARGETS:
        value = ratios.get(key)
        status = "n/a" if value is None else ("PASS" if value <= threshold else "MISS")
        verdicts[key] = {"value": value, "threshold": threshold, "status": status, "target": description}
    for key, threshold, description in AT_LEAST_TARGETS:
        value = ratios.get(key)
        status = "n/a" if value is None else ("PASS" if value >= threshold else "MISS")
        verdicts[key] = {"value": value, "threshold": threshold, "status": status, "target": description,
                         "direction": "at least"}  # fmt: skip
    return verdicts


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def render_markdown(report: dict[str, Any]) -> str:
    settings = report["settings"]
    lines = [
        "# MSD vs GKD vs SDFT vs DistillationTrainer: step time, memory, throughput",
        "",
        f"Device: {report['device']}. Model: `{report['model']}` (vocabulary {settings.get('vocab_size')}). "
        f"Batch {settings['batch_size']} x gradient accumulation {settings.get('gradient_accumulation', 1)} "
        f"(times are per optimizer step), copy bandwidth {_fmt(settings.get('memory_bandwidth_gb_s'), 1)} GB/s, "
        f"{settings['max_new_tokens']} new tokens, {settings['steps']} measured steps after {settings['warmup']} "
        f"warm-up, prompts <= {settings['max_prompt_tokens']} tokens, float32, LoRA r={settings['lora']['r']} "
        f"alpha={settings['lora']['lora_alpha']} all-linear, temperature {settings['temperature']}, "
        f"{'one subprocess per trainer' if settings['isolate'] else 'all trainers in one process'}, "
        f"OMP_WAIT_POLICY={settings['omp_wait_policy']}, {settings['torch_threads']} torch threads. "
        f"Total wall time {report['wall_s']:.1f} s.",
        "",
        "| trainer | step s (median) | step s (mean) | peak mem MB | peak mem delta MB | completion tok/step "
        "| tok/s | " + " | ".join(BREAKDOWN_KEYS) + " |",
        "|" + " --- |" * (7 + len(BREAKDOWN_KEYS)),
    ]
    for name, result in report["results"].items():
        if "error" in result:
            lines.append(f"| {name} | failed: {result['error'].splitlines()[-1][:120]} |")
            continue
        parts = " | ".join(_fmt(result["breakdown_s"][k]) for k in BREAKDOWN_KEYS)
        lines.append(
            f"| {name} | {_fmt(result['step_s_median'])} | {_fmt(result['step_s_mean'])} "
            f"| {_fmt(result['peak_mem_mb'], 0)} | {_fmt(result['peak_mem_delta_mb'], 0)} "
            f"| {_fmt(result['completion_tokens_per_step'], 1)} | {_fmt(result['tokens_per_s'], 1)} | {parts} |"
        )
    lines += ["", "## Targets", "", "| target | ratio | threshold | result |", "| --- | --- | --- | --- |"]
    for key, verdict in report["targets"].items():
        informational = " (informational)" if key in {k for k, _, _ in EXTRA_TARGETS} else ""
        lines.append(
            f"| {verdict['target']}{informational} (`{key}`) | {_fmt(verdict['value'])} | {verdict['threshold']} "
            f"| {verdict['status']} |"
        )
    lines += ["", "## What each run is", ""]
    lines += [f"- `{name}`: {TRAINER_DESCRIPTIONS[name]}" for name in report["results"]]
    lines += ["", "## Breakdown keys (seconds per measured step, means)", ""]
    lines += [f"- `{key}`: {meaning}" for key, meaning in BREAKDOWN_KEYS.items()]
    lines += [
        "",
        "Step time runs from the Trainer's batch fetch (`get_batch_samples`, where MSD generates) to `on_step_end`. "
        f"Peak memory: {next(iter(report['results'].values()), {}).get('peak_mem_source', 'n/a')}; the delta "
        "column subtracts the run's starting RSS (CPU) and equals the peak on a GPU. Completion lengths are sampled, "
        "so they differ between on-policy runs: compare tok/s as well as step time.",
        "",
    ]
    return "\n".join(lines)


def _device_description() -> str:
    if torch.cuda.is_available():
        return f"cuda: {torch.cuda.get_device_name(0)}"
    return (
        f"cpu: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads"
    )
