"""The `msd-trl` command: `train`, `generate-teacher` and `evaluate`.

Design: every subcommand is a thin layer over the public API, parsed with TRL's `TrlParser`, so any
`MSDConfig` / `TrainingArguments` flag (`--max_steps 1`, `--learning_rate 5e-4`) and TRL's `ModelConfig` flags
(`--model_name_or_path`, `--lora_r`, `--load_in_4bit`) work, and `--config file.yaml` sets any of them. With no
model or data flags it trains the embedded SmolLM2-135M-Instruct on MultiJail (+ MGSM benign questions) from
`../shared/data` or the Hub, with LoRA and the teacher preset of `MSDConfig.teacher_preset` (`--teacher_preset`).

`msd-trl train` leaves in `--output_dir`: the adapter (`adapter_model.safetensors`, `adapter_config.json`), the
tokenizer, `msd_config.json` (every resolved setting) and `run_summary.json` (data counts, steps, wall time, final
metrics).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .arguments import (  # noqa: F401  (DataArguments and the constants are kept importable from here)
    DEFAULT_LORA_TARGETS,
    TEACHER_COMPLETIONS_FILE,
    DataArguments,
    build_train_parser,
    split_list,
)
from .model_card import hub_id_of, write_model_card

__all__ = ["DataArguments", "before_after_table", "build_train_parser", "main"]

logger = logging.getLogger("msd_trl")


def _prepare(data_args: DataArguments, config, model_args):
    """Shared by train and generate-teacher: tokenizer, training rows, teacher system prompt."""
    from .models import load_tokenizer, resolve_model_name_or_path

    model_path = resolve_model_name_or_path(model_args.model_name_or_path)
    tokenizer = load_tokenizer(
        model_path, revision=model_args.model_revision, trust_remote_code=config.trust_remote_code
    )
    return model_path, tokenizer, data_args.build_dataset(tokenizer, config=config)


def _load_model(model_path: str, model_args, config):
    from .models import load_model

    if model_args.load_in_8bit:
        raise ValueError("--load_in_8bit is not supported by msd-trl; use --load_in_4bit (QLoRA, NF4).")
    # --trust_remote_code is a TrainingArguments flag (MSDConfig); the trainer applies it to a model it loads by name.
    kwargs = {"revision": model_args.model_revision, "trust_remote_code": config.trust_remote_code}
    if model_args.attn_implementation is not None:
        kwargs["attn_implementation"] = model_args.attn_implementation
    return load_model(model_path, dtype=model_args.dtype or "auto", load_in_4bit=model_args.load_in_4bit, **kwargs)


def _teacher_text(model, tokenizer, dataset, config, data_args: DataArguments, path: Path):
    from .generation import generate_teacher_completions

    return generate_teacher_completions(
        model,
        dataset,
        tokenizer,
        args=config,
        batch_size=data_args.generation_batch_size,
        output_path=path,
        seed=config.seed,
    )


def _final_metrics(log_history: list[dict[str, Any]]) -> dict[str, float]:
    metrics: dict[str, float] = {}
    for entry in log_history:
        metrics.update({k: v for k, v in entry.items() if isinstance(v, (int, float))})
    return metrics


def train(argv: list[str]) -> dict[str, Any]:
    from trl import get_peft_config

    from . import models
    from .checkpoints import resolve_resume_checkpoint
    from .trainer import TRAINERS

    data_args, config, model_args = build_train_parser().parse_args_and_config(args=argv)
    trainer_cls = TRAINERS.get(data_args.trainer)
    if trainer_cls is None:
        raise ValueError(
            f"--trainer {data_args.trainer!r} is not a trainer; choose from {sorted(TRAINERS)} (or register yours "
            "with msd_trl.register_trainer before calling the CLI)."
        )
    # A fresh run over an earlier run's checkpoints (or a resume from an incomplete one) is refused before any data
    # or model is loaded and any teacher text generated (msd_trl.checkpoints; the trainer checks it again).
    resolve_resume_checkpoint(config.output_dir, config.resume_from_checkpoint)
    start = time.time()
    model_path, tokenizer, dataset = _prepare(data_args, config, model_args)
    output_dir = Path(config.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    model = _load_model(model_path, model_args, config)
    if trainer_cls.requires_fixed_completions:
        path = Path(data_args.teacher_completions or output_dir / TEACHER_COMPLETIONS_FILE)
        dataset = _teacher_text(model, tokenizer, dataset, config, data_args, path)
    counts = Counter(f"{row['source']}/{row['language']}" for row in dataset)
    print(f"msd-trl: training {trainer_cls.__name__} on {len(dataset)} rows: {dict(sorted(counts.items()))}")
    trainer = trainer_cls(
        model=model,
        args=config,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=get_peft_config(model_args),
    )
    train_start = time.time()
    result = trainer.train(resume_from_checkpoint=config.resume_from_checkpoint)
    train_time = time.time() - train_start
    trainer.save_model(str(output_dir))
    tokenizer.save_pretrained(output_dir)
    resolved = {
        "data": asdict(data_args),
        "model": {**asdict(model_args), "resolved_path": model_path},
        "training": json.loads(config.to_json_string()),
    }
    (output_dir / "msd_config.json").write_text(json.dumps(resolved, indent=2, default=str), encoding="utf-8")
    summary = {
        "trainer": trainer_cls.__name__,
        "model": model_args.model_name_or_path or models.EMBEDDED_MODEL,
        "adapter_dir": str(output_dir.resolve()),
        "train_rows": len(dataset),
        "rows_by_source_language": dict(sorted(counts.items())),
        "global_step": result.global_step,
        "train_loss": result.training_loss,
        "train_wall_time_s": round(train_time, 1),
        "total_wall_time_s": round(time.time() - start, 1),
        "final_metrics": _final_metrics(trainer.state.log_history),
    }
    evaluation = baseline = None
    if data_args.eval_after:
        baseline, evaluation = _evaluate_before_after(data_args, config, model_args, output_dir)
        summary["evaluation"] = {"before": str(output_dir / "eval_base"), "after": str(output_dir / "eval")}
    summary["total_wall_time_s"] = round(time.time() - start, 1)
    (output_dir / "run_summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    card = write_model_card(
        output_dir,
        base_model=hub_id_of(model_args.model_name_or_path),
        trainer=trainer_cls.__name__,
        config=resolved["training"],
        data=resolved["data"],
        summary=summary,
        evaluation=evaluation,
        baseline=baseline,
    )
    if evaluation is not None:
        print(before_after_table(evaluation, baseline))
        print(
            f"msd-trl: chart {output_dir / 'eval' / 'refusal_rate.png'}; responses {output_dir / 'eval'}/responses.csv"
        )
    print(
        f"msd-trl: done in {summary['total_wall_time_s']} s ({result.global_step} steps). Adapter: {output_dir}/"
        f"adapter_model.safetensors; model card: {card}; summary: {output_dir}/run_summary.json; config: "
        f"{output_dir}/msd_config.json"
    )
    return summary


def _evaluate_before_after(data_args, config, model_args, output_dir: Path) -> tuple[dict, dict]:
    """The base model and the new adapter on the same held-out ids (the training split's other side)."""
    from .evaluation import run_evaluation

    common = dict(
        languages=split_list(data_args.eval_languages),
        benign_languages=[],
        multiq_languages=split_list(data_args.eval_languages),
        split="test",
        test_size=data_args.test_size,
        seed=data_args.split_seed,
        limit=data_args.eval_limit,
        max_new_tokens=24,
        max_budget_tokens=96,
        max_chars=80,
        batch_size=16,
        teacher_preset=config.teacher_preset,
        teacher_prompt_template=config.teacher_prompt_template,
        teacher_system_prompt=config.teacher_system_prompt,
        data_dir=data_args.data_dir,
        dtype=model_args.dtype or "auto",
        load_in_4bit=model_args.load_in_4bit,
    )
    print(
        f"msd-trl: evaluating the base model and the adapter on {data_args.eval_limit} held-out queries per language"
    )
    baseline = run_evaluation(model_args.model_name_or_path, output_dir=output_dir / "eval_base", **common)
    after = run_evaluation(
        model_args.model_name_or_path, adapter=str(output_dir), output_dir=output_dir / "eval", baseline_report=baseline,
        **common,
    )  # fmt: skip
    return baseline, after


def before_after_table(report: dict[str, Any], baseline: dict[str, Any] | None) -> str:
    """A short console table: refusal per language (harmful) and over-refusal (benign), before -> after."""

    from .stats import format_percent

    def pct(value: Any) -> str:
        return format_percent(value, "5.0%", missing="  –  ")

    lines = ["", "language | refusal (harmful) before -> after | over-refusal (MultiQ) before -> after"]
    multiq = report.get("benign_sets", {}).get("multiq", {})
    before_multiq = (baseline or {}).get("benign_sets", {}).get("multiq", {})
    for language, entry in report["languages"].items():
        before = (baseline or {}).get("languages", {}).get(language, {})
        lines.append(
            f"{language:8s} | {pct(before.get('refusal_rate'))} -> {pct(entry.get('refusal_rate'))}"
            f"                  | {pct(before_multiq.get(language, {}).get('over_refusal_rate'))} -> "
            f"{pct(multiq.get(language, {}).get('over_refusal_rate'))}"
        )
    # The teacher is the base model under the training context: the baseline run measured it (the adapter run's
    # "teacher" line is the adapted model under that context, not the teacher).
    teacher = (baseline or report)["teacher"]
    lines.append(
        f"teacher refusal (the base model under the teacher context, the ceiling): {pct(teacher.get('refusal_rate'))}"
    )
    return "\n".join(lines)


def generate_teacher(argv: list[str]) -> Path:
    data_args, config, model_args = build_train_parser("msd-trl generate-teacher").parse_args_and_config(args=argv)
    model_path, tokenizer, dataset = _prepare(data_args, config, model_args)
    path = Path(data_args.teacher_completions or Path(config.output_dir) / TEACHER_COMPLETIONS_FILE)
    model = _load_model(model_path, model_args, config)
    dataset = _teacher_text(model, tokenizer, dataset, config, data_args, path)
    dataset_path = path.with_suffix(".dataset.jsonl")
    dataset.to_json(str(dataset_path), force_ascii=False)
    print(f"msd-trl: {len(dataset)} teacher completions in {path}; rows with the column in {dataset_path}")
    return dataset_path


def evaluate(argv: list[str]) -> dict[str, Any]:
    from .evaluation import run_evaluation
    from .presets import DEFAULT_TEACHER_PRESET, TEACHER_PRESETS

    parser = argparse.ArgumentParser(
        prog="msd-trl evaluate",
        description="Refusal rate on held-out harmful MultiJail queries per language, over-refusal on benign MGSM "
        "and MultiQ questions, the share of answers in the query's language, and the teacher's own behaviour "
        "(its preset's context) as the ceiling; every rate with a 95 %% Wilson interval.",
    )
    parser.add_argument("--model", default=None, help="Model name or path (default: the embedded SmolLM2).")
    parser.add_argument("--adapter", default=None, help="A PEFT adapter directory (e.g. a train output_dir).")
    parser.add_argument("--languages", default="jv,sw,bn", help="Comma-separated MultiJail languages.")
    parser.add_argument("--benign_languages", default="sw,bn,th", help="Comma-separated MGSM languages ('' none).")
    parser.add_argument(
        "--multiq_languages", default=None, help="Comma-separated MultiQ languages (default: --languages; '' none)."
    )
    parser.add_argument("--limit", type=int, default=None, help="At most this many queries per language.")
    parser.add_argument("--max_new_tokens", type=int, default=32, help="Budget of an English answer.")
    parser.add_argument("--no_budget_per_language", action="store_true", help="Same token budget in every language.")
    parser.add_argument("--max_budget_tokens", type=int, default=256)
    parser.add_argument("--max_chars", type=int, default=120, help="End an answer at this many characters.")
    parser.add_argument(
        "--utility_max_new_tokens", type=int, default=None, help="Also score MGSM answers (numeric exact match)."
    )
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument(
        "--generation_threads", type=int, default=None,
        help="Torch threads while generating (CPU); 1 decodes fastest on a small CPU. Default: torch's setting.",
    )  # fmt: skip
    parser.add_argument(
        "--judge",
        default="keyword",
        help="'keyword' (default) or 'classifier:NAME_OR_PATH' (e.g. a Llama Guard model).",
    )
    parser.add_argument(
        "--teacher_preset", default=DEFAULT_TEACHER_PRESET, choices=sorted(TEACHER_PRESETS),
        help="The teacher context the model was trained with (for the teacher ceiling).",
    )  # fmt: skip
    parser.add_argument(
        "--harmful_dataset", default=None,
        help="Your harmful queries instead of MultiJail: Hub name or CSV/JSON(L)/Parquet path, long or wide shape.",
    )  # fmt: skip
    parser.add_argument(
        "--benign_dataset", default=None, help="Your benign questions instead of MGSM + MultiQ (same forms)."
    )
    parser.add_argument(
        "--split", default="test", choices=["test", "train", "all"],
        help="Held-out side of the by-id split (test), the training side, or every row (all).",
    )  # fmt: skip
    parser.add_argument("--test_size", type=float, default=0.2, help="Must match training's (split by id).")
    parser.add_argument("--seed", type=int, default=0, help="Split seed; must match training's split_seed.")
    parser.add_argument("--data_dir", default=None)
    parser.add_argument("--baseline_report", default=None, help="A report.json to chart before vs after.")
    parser.add_argument("--load_in_4bit", action="store_true")
    parser.add_argument("--output_dir", required=True)
    a = parser.parse_args(argv)
    report = run_evaluation(
        a.model,
        adapter=a.adapter,
        languages=split_list(a.languages),
        benign_languages=split_list(a.benign_languages),
        multiq_languages=None if a.multiq_languages is None else split_list(a.multiq_languages),
        test_size=a.test_size,
        seed=a.seed,
        limit=a.limit,
        max_new_tokens=a.max_new_tokens,
        budget_per_language=not a.no_budget_per_language,
        max_budget_tokens=a.max_budget_tokens,
        max_chars=a.max_chars,
        utility_max_new_tokens=a.utility_max_new_tokens,
        batch_size=a.batch_size,
        generation_threads=a.generation_threads,
        judge=a.judge,
        teacher_preset=a.teacher_preset,
        harmful_dataset=a.harmful_dataset,
        benign_dataset=a.benign_dataset,
        split=a.split,
        output_dir=a.output_dir,
        baseline_report=a.baseline_report,
        data_dir=a.data_dir,
        load_in_4bit=a.load_in_4bit,
    )
    print(f"msd-trl: report in {a.output_dir}/report.json")
    return report


COMMANDS = {
    "train": (train, "Train an adapter with on-policy or off-policy MSD."),
    "generate-teacher": (generate_teacher, "Sample teacher text under the privileged context (off-policy data)."),
    "evaluate": (evaluate, "Multilingual refusal / over-refusal report of a model (+ adapter)."),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    usage = "usage: msd-trl {train,generate-teacher,evaluate} [options]   (msd-trl COMMAND --help for options)"
    if not argv or argv[0] in ("-h", "--help"):
        print(usage + "\n\ncommands:\n" + "\n".join(f"  {name:18s}{text}" for name, (_, text) in COMMANDS.items()))
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"msd-trl: unknown command {command!r}\n{usage}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    COMMANDS[command][0](rest)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
