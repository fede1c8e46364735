"""The model card (README.md) an MSD run leaves next to its adapter.

Design: PEFT's `save_pretrained` writes an empty template ("[More Information Needed]" in every field) whose
`base_model` is wherever the weights were loaded from (for the embedded model, a local cache path). A user who opens
the output folder should instead read what was trained, from what, on which data, with which teacher, and what
the evaluation measured. This module only formats; the CLI gathers the facts.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["EMBEDDED_HUB_ID", "hub_id_of", "set_adapter_base_model", "write_model_card", "write_trainer_card"]

# The Hub model the embedded GGUF is a quantised copy of.
EMBEDDED_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"

PAPER_CITATION = (
    "@article{qin2026msd,\n  title={Multilingual Safety Alignment via Self-Distillation},\n"
    "  author={Qin and Wang and Liu and Li and Wei and Shen},\n  journal={arXiv preprint arXiv:2605.02971},\n"
    "  year={2026}\n}"
)


def hub_id_of(model_name: str | None) -> str:
    """The Hub id to name as `base_model`: the embedded model's upstream id, else the name the user gave."""
    from .models import EMBEDDED_MODEL

    if model_name in (None, "", EMBEDDED_MODEL):
        return EMBEDDED_HUB_ID
    return str(model_name)


def _evaluation_table(report: Mapping[str, Any], baseline: Mapping[str, Any] | None) -> list[str]:
    from .stats import format_percent as pct

    lines = [
        "| set | language | n | after | before |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    sections = [
        ("refusal, harmful", report.get("languages", {}), (baseline or {}).get("languages", {}), "refusal_rate")
    ]
    for name, entries in report.get("benign_sets", {}).items():
        before = (baseline or {}).get("benign_sets", {}).get(name, {})
        sections.append((f"over-refusal, {name}", entries, before, "over_refusal_rate"))
    for title, entries, before, rate in sections:
        for language, entry in entries.items():
            lines.append(
                f"| {title} | {language} | {entry['n']} | {pct(entry.get(rate))} | "
                f"{pct(before.get(language, {}).get(rate))} |"
            )
    # The report's one teacher number (for an adapter, answered by the base model: run_evaluation), labelled so.
    teacher = report.get("teacher", {})
    answered_by = teacher.get("answered_by", "the base model under the training context")
    lines += ["", f"Teacher ceiling ({answered_by}) refusal: {pct(teacher.get('refusal_rate'))}."]
    return lines


def write_model_card(
    output_dir: str | Path,
    *,
    base_model: str,
    trainer: str,
    config: Mapping[str, Any],
    data: Mapping[str, Any],
    summary: Mapping[str, Any],
    evaluation: Mapping[str, Any] | None = None,
    baseline: Mapping[str, Any] | None = None,
    data_sets: Mapping[str, str] | None = None,
    evaluation_sets: Mapping[str, str] | None = None,
) -> Path:
    """Write `output_dir/README.md` (replacing PEFT's template) and return its path.

    `config`: the resolved MSDConfig as a dict; `data`: the data arguments; `summary`: the run summary (rows per
    source/language, steps, wall time); `evaluation` / `baseline`: report dicts of `run_evaluation` after and before
    training, when an evaluation was run. `data_sets` (source -> what it is) and `evaluation_sets` (set -> what it
    is) name exactly the data the run trained and evaluated on; without them the card describes the default mix.
    """
    system_prompt = config.get("teacher_system_prompt") or "(none)"
    rows = summary.get("rows_by_source_language", {})
    lines = [
        "---",
        f"base_model: {base_model}",
        "library_name: peft",
        "tags: [msd, multilingual-safety, self-distillation, trl, lora]",
        "---",
        "",
        f"# MSD adapter for {base_model}",
        "",
        "A LoRA adapter trained with **Multilingual Self-Distillation** (MSD, arXiv 2605.02971) by "
        f"msd_trl's `{trainer}`: the model shown the English query (its own teacher) distils its "
        "behaviour into itself shown the same query in another language. No response data was used.",
        "",
        "## Training",
        "",
        f"- Base model: `{base_model}`",
        f"- Trainer: `{trainer}`, {summary.get('global_step')} optimizer steps of batch "
        f"{config.get('per_device_train_batch_size')} x accumulation {config.get('gradient_accumulation_steps')}, "
        f"learning rate {config.get('learning_rate')}, seed {config.get('seed')}, "
        f"{summary.get('train_wall_time_s')} s of training",
        f"- Divergence: `{config.get('divergence')}` (DPSW top-K {config.get('dpsw_top_k')}, floor "
        f"{config.get('dpsw_min_weight')}; base `{config.get('dpsw_base')}`)",
        f"- Teacher preset: `{config.get('teacher_preset')}`; template `{json.dumps(config.get('teacher_prompt_template'))}`; "
        f"system prompt: {json.dumps(system_prompt)}",
        f"- Rollouts: {config.get('max_new_tokens')} new tokens, temperature {config.get('temperature')}",
        f"- Data: {summary.get('train_rows')} rows: {dict(rows)}; split by query id, test share "
        f"{data.get('test_size')}, seed {data.get('split_seed')} (held-out query ids never trained on)",
        *(f"  - `{name}`: {what}" for name, what in (data_sets or {}).items()),
        "",
    ]
    if evaluation is not None:
        settings = evaluation.get("settings", {})
        lines += [
            "## Evaluation (held-out query ids)",
            "",
            f"Judge `{evaluation.get('judge')}`, greedy, {settings.get('limit') or 'all'} queries per language; refusal "
            "on harmful queries (higher is safer), over-refusal on benign questions (lower is better). Sets:",
            "",
            *(f"- `{name}`: {what}" for name, what in (evaluation_sets or {}).items()),
            "",
            *_evaluation_table(evaluation, baseline),
            "",
        ]
    lines += [
        "## Choosing a checkpoint",
        "",
        "On the embedded SmolLM2-135M the checkpoint closest to the targets was not the last one, nor at the same "
        "step on every seed: the greedy refusal level swung with the steps while harmful and benign prompts grew "
        'apart (msd_trl\'s docs/results.md, "Learning curves to 480 steps"). Train with `--selectivity_monitor`, '
        "save every epoch, and keep the checkpoint with the lowest mean `eval_selectivity/<language>/benign_greedy` "
        "over the languages you serve among those that refuse held-out harmful prompts (mean `harmful_greedy` >= "
        "0.5) more often than benign ones (gap >= 0.2) without refusing most benign ones (mean `benign_greedy` <= "
        "0.5): `msd-trl select-checkpoint <output_dir>` applies this rule to the logged values, and says so when no "
        "checkpoint qualifies (one seed of three on the embedded model). Then check its answers with `msd-trl "
        "evaluate` (its non-answer and off-topic rates: on the embedded model most benign answers that were neither "
        "refusals nor loops were about something else) and read a sample of its benign ones: both rates are text "
        "tests, and an answer can be on topic and wrong.",
        "",
        "## Use",
        "",
        "```python",
        "from peft import PeftModel",
        "from transformers import AutoModelForCausalLM",
        "",
        f'model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained("{base_model}"), "<this folder>")',
        "```",
        "",
        "## Citation",
        "",
        "```bibtex",
        PAPER_CITATION,
        "```",
        "",
    ]
    path = Path(output_dir) / "README.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def set_adapter_base_model(output_dir: str | Path, base_model: str) -> None:
    """PEFT records in `adapter_config.json` where the weights were loaded from (for the embedded model, a local cache
    path); name the model as a user loads it instead (a Hub id where one exists, else what the user passed)."""
    path = Path(output_dir) / "adapter_config.json"
    if path.is_file():
        adapter_config = json.loads(path.read_text(encoding="utf-8"))
        adapter_config["base_model_name_or_path"] = base_model
        path.write_text(json.dumps(adapter_config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def write_trainer_card(trainer, data_args, model_args, output_dir: str | Path | None = None) -> Path:
    """Our card for a finished trainer (what the example scripts call after `save_model`, replacing TRL's, which
    names no base model for a model passed as an object), and the adapter's base model named as users load it."""
    from collections import Counter
    from dataclasses import asdict

    output_dir = Path(output_dir or trainer.args.output_dir)
    base_model = hub_id_of(model_args.model_name_or_path)
    set_adapter_base_model(output_dir, base_model)
    dataset = trainer.train_dataset
    columns = getattr(dataset, "column_names", None) or []
    counts = (
        Counter(f"{row['source']}/{row['language']}" for row in dataset)
        if {"source", "language"} <= set(columns)
        else {}
    )
    summary = {
        "global_step": trainer.state.global_step,
        "train_rows": len(dataset) if hasattr(dataset, "__len__") else None,
        "rows_by_source_language": dict(sorted(counts.items())),
    }
    return write_model_card(
        output_dir,
        base_model=base_model,
        trainer=type(trainer).__name__,
        config=json.loads(trainer.args.to_json_string()),
        data=asdict(data_args),
        summary=summary,
    )
