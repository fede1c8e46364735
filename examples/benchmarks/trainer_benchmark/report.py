"""The report: ratios between runs, the targets they are checked against, and the Markdown table."""

from __future__ import annotations

import logging
import os
import platform
from typing import Any

import torch

from .settings import (
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


def compute_ratios(results: dict[str, dict[str, Any]]) -> dict[str, float | None]:
    """The ratios the targets are stated in (None where a run is missing or failed)."""
    msd = results.get("msd_on_policy", {})
    msd_off = results.get("msd_off_policy", {})
    return {
        "on_policy_vs_gkd_step": _ratio(results, "msd_on_policy", "gkd_on_policy", "step_s_median"),
        "on_policy_vs_sdft_step": _ratio(results, "msd_on_policy", "sdft", "step_s_median"),
        "on_policy_vs_distillation_step": _ratio(results, "msd_on_policy", "distillation", "step_s_median"),
        "on_policy_vs_gkd_mem": _ratio(results, "msd_on_policy", "gkd_on_policy", "peak_mem_mb"),
        "off_policy_vs_gkd_step": _ratio(results, "msd_off_policy", "gkd_off_policy", "step_s_median"),
        "off_policy_cached_vs_gkd_step": _ratio(results, "msd_off_policy_cached", "gkd_off_policy", "step_s_median"),
        "on_policy_vs_gkd_mem_delta": _ratio(results, "msd_on_policy", "gkd_on_policy", "peak_mem_delta_mb"),
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
        "# MSD vs GKD vs SDFT: step time, memory, throughput",
        "",
        f"Device: {report['device']}. Model: `{report['model']}`. Batch {settings['batch_size']}, "
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
