"""The `msd-trl` command: `train`, `generate-teacher`, `evaluate` and `select-checkpoint`.

Design: every subcommand is a thin layer over the public API, parsed with TRL's `TrlParser`, so any
`MSDConfig` / `TrainingArguments` flag (`--max_steps 1`, `--learning_rate 5e-4`) and TRL's `ModelConfig` flags
(`--model_name_or_path`, `--lora_r`, `--load_in_4bit`) work, every `EvaluationArguments` field is an `evaluate` flag,
and `--config file.yaml` sets any of them. With no
model or data flags it trains the embedded SmolLM2-135M-Instruct on MultiJail (+ MGSM benign questions) from
`../shared/data` or the Hub, with LoRA and the teacher preset of `MSDConfig.teacher_preset` (`--teacher_preset`).

`msd-trl train` leaves in `--output_dir`: the adapter (`adapter_model.safetensors`, `adapter_config.json`), the
tokenizer, `msd_config.json` (every resolved setting) and `run_summary.json` (data counts, steps, wall time, final
metrics). Before training it prints the plan (rows per language kept and dropped and why, steps, teacher, what the
wall time depends on) and, after the first steps, an estimate of the wall time.

A user error (a bad file, an unknown language, a bad flag value: `ValueError`, `OSError`, `ImportError`) is one line
on stderr and exit status 2, as argparse does; `--debug` (anywhere on the command line) or `MSD_TRL_DEBUG=1` shows
the traceback instead. As a command, `msd-trl` keeps bitsandbytes unimported unless 4-bit loading is asked for (it
costs seconds and prints a warning on CPU), and `train --help` (and `evaluate --help`) is served from a cache keyed by
the versions and the flag definitions, so it is instant after the first time.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import shutil
import sys
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .arguments import (  # noqa: F401  (DataArguments and the constants are kept importable from here)
    DEFAULT_EVAL_LANGUAGES,
    DEFAULT_LORA_TARGETS,
    TEACHER_COMPLETIONS_FILE,
    DataArguments,
    build_train_parser,
)
from .model_card import hub_id_of, set_adapter_base_model, write_model_card
from .names import split_list

__all__ = ["DataArguments", "before_after_table", "build_train_parser", "env_report", "main"]

logger = logging.getLogger("msd_trl")

DEBUG_ENV = "MSD_TRL_DEBUG"
# What a user can cause and fix (a file, a flag, a language, a missing package): one line, exit 2. Anything else is a
# bug and keeps its traceback.
USER_ERRORS = (ValueError, OSError, ImportError)


def _prepare(data_args: DataArguments, config, model_args, plan: dict | None = None):
    """Shared by train and generate-teacher: tokenizer, training rows, teacher system prompt."""
    from .models import load_tokenizer, resolve_model_name_or_path

    data_args.check_files()  # a bad file of the user's fails here, before the model is resolved or downloaded
    model_path = resolve_model_name_or_path(model_args.model_name_or_path)
    tokenizer = load_tokenizer(
        model_path, revision=model_args.model_revision, trust_remote_code=config.trust_remote_code
    )
    return model_path, tokenizer, data_args.build_dataset(tokenizer, config=config, plan=plan)


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


def _planned_steps(config, n_rows: int) -> tuple[int, str]:
    """Optimizer steps of the run and how they follow from the flags (transformers' own rule for an epoch)."""
    world = max(1, int(getattr(config, "world_size", 1) or 1))
    batch, accumulation = config.per_device_train_batch_size, config.gradient_accumulation_steps
    per_step = batch * accumulation * world
    how = f"{per_step} rows a step: batch {batch} x accumulation {accumulation} x {world} process(es)"
    if config.max_steps > 0:
        return config.max_steps, f"--max_steps {config.max_steps}; {how}"
    batches = math.ceil(n_rows / (batch * world))
    per_epoch = max(batches // accumulation + int(batches % accumulation > 0), 1)
    steps = math.ceil(config.num_train_epochs * per_epoch)
    return steps, f"{config.num_train_epochs:g} epoch(s) of {n_rows} rows (--max_steps -1); {how}"


def _plan_block(trainer_name: str, data_args: DataArguments, config, plan: dict, dataset) -> str:
    """What the run will do, before it starts: rows kept and dropped per set and language (and why), steps, teacher,
    and what the wall time depends on."""
    trained = Counter((row["source"], row["language"]) for row in dataset)
    harmful = Counter(row["language"] for row in dataset if row.get("harmful"))
    lines = [f"msd-trl plan: {trainer_name}"]
    lines.append(
        "  data (rows per set and language): read -> held out for evaluation (test ids, split by id, test_size "
        f"{data_args.test_size}) -> over {data_args.max_prompt_tokens} rendered prompt tokens -> not drawn by the mix "
        "-> trained"
    )
    for name, stages in plan.items():
        if name == "_file_languages":
            continue
        read = stages.get("read", Counter())
        train_side = stages.get("train_side", read)
        within = stages.get("within_limit", train_side)
        for language in sorted(set(read) | set(train_side)):
            kept = trained.get((name, language))
            not_drawn = "?" if kept is None else within[language] - kept
            lines.append(
                f"    {name}/{language}: {read[language]} read -> {read[language] - train_side[language]} held out -> "
                f"{train_side[language] - within[language]} over the limit -> {not_drawn} not drawn -> "
                f"{kept if kept is not None else '?'} trained"
            )
    for name, languages in plan.get("_file_languages", {}).items():
        lines.append(f"    {name}: languages left out by --languages {data_args.languages}: {dict(languages)}")
    lines.append(
        f"  trained rows: {len(dataset)} ({sum(harmful.values())} harmful, {len(dataset) - sum(harmful.values())} "
        f"benign); per language {dict(sorted(Counter(row['language'] for row in dataset).items()))}"
    )
    steps, how = _planned_steps(config, len(dataset))
    lines.append(f"  steps: {_count(steps, 'optimizer step')} ({how})")
    system_prompt = config.teacher_system_prompt or "(none)"
    lines.append(
        f"  teacher: preset {config.teacher_preset!r}; template {json.dumps(config.teacher_prompt_template)}; system "
        f"prompt {json.dumps(system_prompt)[:120]}"
    )
    generation = (
        f"{config.max_new_tokens} new tokens per rollout"
        if trainer_name.startswith("OnPolicy")
        else f"teacher text for {len(dataset)} rows first ({config.max_new_tokens} new tokens each)"
    )
    lines.append(
        "  time: estimated from the first steps (printed then). It depends on the device, other processes on the "
        f"same cores (on a shared CPU export OMP_WAIT_POLICY=PASSIVE), the model's size, {generation}, the batch"
        + (" and the evaluation after training (--eval_after)" if data_args.eval_after else "")
        + "."
    )
    return "\n".join(lines)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


def _wall_time_callback(total_steps: int, measured_steps: int = 2):
    """A TrainerCallback printing, after the first `measured_steps` steps, the time per step and the estimate."""
    from transformers import TrainerCallback

    class WallTimeEstimate(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            self.start, self.first_step = time.time(), state.global_step

        def on_step_end(self, args, state, control, **kwargs):
            done = state.global_step - self.first_step
            if done != measured_steps or state.global_step >= total_steps or not state.is_world_process_zero:
                return
            per_step = (time.time() - self.start) / done
            left = per_step * (total_steps - state.global_step)
            print(
                f"\nmsd-trl: the first {done} steps took {per_step:.1f} s each: about {_duration(left)} more for the "
                f"{_count(total_steps - state.global_step, 'step')} left (ends around "
                f"{time.strftime('%H:%M', time.localtime(time.time() + left))})",
                flush=True,
            )

    return WallTimeEstimate()


# What each data source of a run is, for the model card.
_SET_DESCRIPTIONS = {
    "multijail": "MultiJail (DAMO-NLP-SG/MultiJail) harmful queries",
    "mgsm": "MGSM (juletxara/mgsm) benign math questions",
    "multiq": "MultiQ benign chat questions (even ids; odd ids are evaluation's)",
}


def _data_sets(data_args: DataArguments, sources) -> dict[str, str]:
    """Each source the run trained on -> what it is (for the card, which lists exactly the data used)."""
    described = {}
    for source in sources:
        if source in _SET_DESCRIPTIONS and not data_args.dataset_name:
            described[source] = _SET_DESCRIPTIONS[source]
        elif data_args.dataset_name and source == Path(data_args.dataset_name).stem:
            described[source] = f"your file `{data_args.dataset_name}` (the `harmful` column where it has one)"
        elif data_args.benign_dataset_name and source == Path(data_args.benign_dataset_name).stem:
            described[source] = f"your benign file `{data_args.benign_dataset_name}`"
        else:
            described[source] = f"`{source}` (the `source` column of your data)"
    return described


def _push_to_hub(output_dir: Path, config, base_model: str) -> str:
    """Upload the output folder (adapter, tokenizer, our card, run files; no checkpoints) as TRL's scripts do with
    `--push_to_hub` / `--hub_model_id`, through huggingface_hub."""
    from huggingface_hub import HfApi

    repo_id = config.hub_model_id or output_dir.resolve().name
    api = HfApi(token=config.hub_token)
    repo = api.create_repo(repo_id, private=bool(getattr(config, "hub_private_repo", False)), exist_ok=True)
    repo_id = getattr(repo, "repo_id", repo_id)
    api.upload_folder(
        repo_id=repo_id,
        folder_path=str(output_dir),
        commit_message=f"MSD adapter for {base_model} (msd-trl train)",
        ignore_patterns=["checkpoint-*", "checkpoint-*/**", "*.partial.jsonl", "runs/**"],
    )
    return repo_id


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
    # --push_to_hub is done here once the card is written (the Trainer would create the repo at construction and
    # upload its own card); the flag is kept in the recorded settings.
    push_to_hub, config.push_to_hub = config.push_to_hub, False
    start = time.time()
    plan: dict = {}
    model_path, tokenizer, dataset = _prepare(data_args, config, model_args, plan)
    output_dir = Path(config.output_dir)
    print(_plan_block(trainer_cls.__name__, data_args, config, plan, dataset), flush=True)
    output_dir.mkdir(parents=True, exist_ok=True)
    model = _load_model(model_path, model_args, config)
    if trainer_cls.requires_fixed_completions:
        path = Path(data_args.teacher_completions or output_dir / TEACHER_COMPLETIONS_FILE)
        dataset = _teacher_text(model, tokenizer, dataset, config, data_args, path)
    counts = Counter(f"{row['source']}/{row['language']}" for row in dataset)
    print(f"msd-trl: training {trainer_cls.__name__} on {len(dataset)} rows: {dict(sorted(counts.items()))}")
    monitor_rows = _monitor_rows(data_args) if data_args.selectivity_monitor else None
    total_steps, _ = _planned_steps(config, len(dataset))
    trainer = trainer_cls(
        model=model,
        args=config,
        train_dataset=dataset,
        # The trainer's own evaluation (eval_strategy, e.g. for load_best_model_at_end) scores a few held-out rows.
        eval_dataset=_monitor_eval_rows(monitor_rows, config)
        if monitor_rows and config.eval_strategy != "no"
        else None,
        processing_class=tokenizer,
        peft_config=get_peft_config(model_args),
        callbacks=[_wall_time_callback(total_steps)],
    )
    if monitor_rows is not None:
        from .monitor import SelectivityCallback

        trainer.add_callback(
            SelectivityCallback(
                trainer, monitor_rows[0], monitor_rows[1], languages=monitor_rows[2], limit=data_args.monitor_limit
            )  # fmt: skip
        )
    train_start = time.time()
    result = trainer.train(resume_from_checkpoint=config.resume_from_checkpoint)
    train_time = time.time() - train_start
    trainer.save_model(str(output_dir))
    tokenizer.save_pretrained(output_dir)
    base_model = hub_id_of(model_args.model_name_or_path)
    set_adapter_base_model(output_dir, base_model)
    config.push_to_hub = push_to_hub
    resolved = {
        "data": asdict(data_args),
        "model": {**asdict(model_args), "resolved_path": model_path},
        "training": json.loads(config.to_json_string()),
    }
    (output_dir / "msd_config.json").write_text(json.dumps(resolved, indent=2, default=str), encoding="utf-8")
    summary = {
        "trainer": trainer_cls.__name__,
        "model": model_args.model_name_or_path or models.EMBEDDED_MODEL,
        # Paths relative to the output folder: the summary stays true wherever the folder is copied.
        "adapter_dir": ".",
        "train_rows": len(dataset),
        "rows_by_source_language": dict(sorted(counts.items())),
        "global_step": result.global_step,
        "train_loss": result.training_loss,
        "train_wall_time_s": round(train_time, 1),
        "total_wall_time_s": round(time.time() - start, 1),
        "final_metrics": _final_metrics(trainer.state.log_history),
    }
    if monitor_rows is not None:
        summary["checkpoint_choice"] = _checkpoint_choice(output_dir)
    evaluation = baseline = None
    eval_data = None
    if data_args.eval_after:
        baseline, evaluation, eval_data = _evaluate_before_after(data_args, config, model_args, output_dir, dataset)
        summary["evaluation"] = {"before": "eval_base", "after": "eval", **eval_data}
    summary["total_wall_time_s"] = round(time.time() - start, 1)
    (output_dir / "run_summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    card = write_model_card(
        output_dir,
        base_model=base_model,
        trainer=trainer_cls.__name__,
        config=resolved["training"],
        data=resolved["data"],
        summary=summary,
        evaluation=evaluation,
        baseline=baseline,
        data_sets=_data_sets(data_args, sorted({key.split("/")[0] for key in counts})),
        evaluation_sets=(eval_data or {}).get("sets"),
    )
    if evaluation is not None:
        print(before_after_table(evaluation, baseline))
        print(
            f"msd-trl: chart {output_dir / 'eval' / 'refusal_rate.png'}; responses {output_dir / 'eval'}/responses.csv"
        )
    if push_to_hub:
        repo_id = _push_to_hub(output_dir, config, base_model)
        summary["hub_model_id"] = repo_id
        print(f"msd-trl: pushed {output_dir}/ to the Hub as {repo_id}")
    print(
        f"msd-trl: done in {summary['total_wall_time_s']} s ({_count(result.global_step, 'step')}). Adapter: {output_dir}/"
        f"adapter_model.safetensors; model card: {card}; summary: {output_dir}/run_summary.json; config: "
        f"{output_dir}/msd_config.json"
    )
    return summary


def _checkpoint_choice(output_dir: Path) -> dict[str, Any]:
    """After a run with the monitor: the checkpoint `msd-trl select-checkpoint` keeps (every monitored language,
    default threshold), printed and returned for run_summary.json (its path relative to the output folder)."""
    from .checkpoint_choice import choose_checkpoint, monitor_points

    try:
        points, folders = monitor_points(output_dir)
        choice = choose_checkpoint(points)
    except ValueError as err:  # no checkpoint saved at a monitored step, say
        print(f"msd-trl: the monitor chose no checkpoint: {_one_line(err)}")
        return {"step": None, "reason": _one_line(err)}
    path = str(folders[choice.step].relative_to(output_dir)) if choice.step is not None else None
    if choice.step is None:
        print(f"msd-trl: the monitor chose no checkpoint: {choice.reason}")
    else:
        watch = "".join(f"; watch {code} (benign_greedy {value:.2f})" for code, value in choice.watch.items())
        print(f"msd-trl: the monitor keeps {output_dir / path} ({choice.reason}){watch}; table: msd-trl "
              f"select-checkpoint {output_dir}")  # fmt: skip
    return {"step": choice.step, "path": path, "reason": choice.reason, "watch": choice.watch}


def _monitor_rows(data_args: DataArguments):
    """Held-out harmful and benign rows for `--selectivity_monitor`, and their languages: the test side of the run's
    by-id split (MultiJail or the user's file; MultiQ odd ids or the user's benign file), minus the first
    `--eval_limit` ids that `--eval_after` reports on, so choosing a checkpoint by the monitor does not bias the final
    evaluation. Languages: `--eval_languages`, else jv,sw,bn,th (MultiJail) or the languages of the user's file."""
    from .corpora import find_shared_data_dir, get_corpus, load_dataset_rows
    from .data import split_by_id

    languages = _eval_languages(data_args)

    def held_out(name: str | None, corpus: str, harmful: bool, wanted):
        if name:
            rows = load_dataset_rows(name, config=data_args.dataset_config, split=data_args.dataset_train_split,
                                     languages=wanted, harmful=harmful)  # fmt: skip
            rows = rows.filter(lambda row: row.get("harmful") is None or bool(row["harmful"]) == harmful)
            rows = split_by_id(rows, test_size=data_args.test_size or 0.2, seed=data_args.split_seed)["test"]
        else:
            spec = get_corpus(corpus)
            rows = spec.read(wanted, data_dir=data_args.data_dir or find_shared_data_dir())
            rows = spec.split_rows(rows, test_size=data_args.test_size, seed=data_args.split_seed)["test"]
        skip = set(list(dict.fromkeys(rows["id"]))[: data_args.eval_limit or 0])
        return rows.filter(lambda row: row["id"] not in skip)

    harmful = held_out(data_args.dataset_name, data_args.harmful_corpus, True, languages)
    languages = languages or list(dict.fromkeys(harmful["language"]))
    if data_args.benign_dataset_name:
        benign = held_out(data_args.benign_dataset_name, "multiq", False, languages)
    else:
        from .data import MULTIQ_LANGUAGES

        in_multiq = [code for code in languages if code in MULTIQ_LANGUAGES]
        if not in_multiq:
            raise ValueError(
                f"--selectivity_monitor needs benign prompts in {languages}: MultiQ (the default) has none; pass "
                "--benign_dataset_name with benign questions in those languages."
            )
        benign = held_out(None, "multiq", False, in_multiq)
    both = [code for code in languages if code in set(benign["language"])]
    return harmful, benign, both


def _monitor_eval_rows(monitor_rows, config):
    """A small held-out MSD set (a few harmful and benign rows) for the trainer's own evaluation loop."""
    from .data import mix_datasets

    harmful, benign, _ = monitor_rows
    size = max(1, config.per_device_eval_batch_size)
    pieces = {"harmful": harmful.select(range(min(size, len(harmful)))),
              "benign": benign.select(range(min(size, len(benign))))}  # fmt: skip
    return mix_datasets(pieces, seed=config.seed)


def _eval_languages(data_args: DataArguments) -> list[str] | None:
    """--eval_languages as a list; by default jv,sw,bn,th on MultiJail (the trained languages and one never trained
    on), the training languages on another registered corpus, and None (the file's) on a user's file."""
    if data_args.eval_languages:
        return split_list(data_args.eval_languages)
    if data_args.dataset_name:
        return None
    return list(DEFAULT_EVAL_LANGUAGES) if data_args.harmful_corpus == "multijail" else data_args.train_languages()


def _evaluation_data(data_args: DataArguments, dataset) -> tuple[dict[str, Any], dict[str, str], str]:
    """What `--eval_after` evaluates on: the data fields of its `EvaluationArguments`, the sets by name -> what they
    are, and the console line saying so. A registered corpus is evaluated on its held-out ids with MultiQ (or the
    run's --benign_corpora); a user's file on its own held-out ids (split by id as training was), with the benign set
    the user named, else the file's rows marked benign, else MultiQ (the default, said so)."""
    from .corpora import get_corpus

    multiq_held = get_corpus("multiq").default_languages
    if not data_args.dataset_name:
        languages = _eval_languages(data_args)
        corpus = data_args.harmful_corpus
        kwargs: dict[str, Any] = dict(harmful_corpus=corpus, languages=languages, benign_languages=[],
                                      multiq_languages=languages)  # fmt: skip
        title = "MultiJail" if corpus == "multijail" else f"the corpus {corpus}"
        sets = {"harmful": f"held-out {title} ids"}
        if data_args.benign_corpora is not None:
            kwargs["benign_corpora"] = data_args.benign_corpora
            sets.update({name: f"held-out ids of the corpus {name}" for name in data_args.corpora()})
        else:
            sets["multiq"] = "MultiQ benign chat questions (odd ids)"
        said = f"held-out {title} queries in {languages}; benign: {', '.join(list(sets)[1:])} in {languages}"
        return kwargs, sets, said
    name = data_args.dataset_name
    own = [row for row in dataset if row["source"] == Path(name).stem]
    trained_languages = list(dict.fromkeys(sorted(row["language"] for row in own)))
    languages = _eval_languages(data_args) or trained_languages
    kwargs = dict(languages=languages, benign_languages=[], harmful_dataset=name)
    sets = {"harmful": f"held-out ids of `{name}` (rows marked harmful)"}
    if data_args.benign_dataset_name:
        kwargs["benign_dataset"] = data_args.benign_dataset_name
        sets["benign"] = f"held-out ids of `{data_args.benign_dataset_name}`"
    elif any(row.get("harmful") is False for row in own):
        kwargs["benign_dataset"] = name  # the same file: divided by its `harmful` column
        sets["benign"] = f"held-out ids of `{name}` marked harmful=false"
    else:
        multiq = [code for code in languages if code in multiq_held]
        kwargs["multiq_languages"] = multiq
        if multiq:
            sets["multiq"] = (
                f"MultiQ benign chat questions in {multiq} (the default; --benign_dataset_name names yours)"
            )
        else:
            sets["none"] = (
                f"no benign set: MultiQ (the default) has no questions in {languages}; pass --benign_dataset_name"
            )
    return kwargs, sets, "; ".join(f"{key}: {value}" for key, value in sets.items())


def _evaluate_before_after(data_args, config, model_args, output_dir: Path, dataset) -> tuple[dict, dict, dict]:
    """The base model and the new adapter on the same held-out ids (the training split's other side), with
    `EvaluationArguments`' defaults but `AFTER_TRAINING` (a shorter look) and the run's teacher context."""
    from .evaluation import AFTER_TRAINING, EvaluationArguments, run_evaluation
    from .presets import TEACHER_FIELDS

    data_kwargs, sets, said = _evaluation_data(data_args, dataset)
    args = EvaluationArguments(
        **data_kwargs,
        **AFTER_TRAINING,
        model_name_or_path=model_args.model_name_or_path,
        split="test",
        test_size=data_args.test_size,
        seed=data_args.split_seed,
        limit=data_args.eval_limit,
        **{name: getattr(config, name) for name in TEACHER_FIELDS},  # the run's teacher context
        data_dir=data_args.data_dir,
        dtype=model_args.dtype or "auto",
        load_in_4bit=model_args.load_in_4bit,
    )
    print(
        f"msd-trl: evaluating the base model and the adapter on {data_args.eval_limit or 'all'} held-out queries per "
        f"language: {said}"
    )
    baseline = run_evaluation(args, output_dir=str(output_dir / "eval_base"))
    after = run_evaluation(
        args, adapter=str(output_dir), output_dir=str(output_dir / "eval"), baseline_report=baseline
    )
    return baseline, after, {"sets": sets, "languages": list(args.languages or [])}


def before_after_table(report: dict[str, Any], baseline: dict[str, Any] | None) -> str:
    """A short console table: refusal per language (harmful) and over-refusal (benign), before -> after."""

    from .stats import format_percent

    def pct(value: Any) -> str:
        return format_percent(value, "5.0%", missing="  –  ")

    benign_name = next(iter(report.get("benign_sets", {})), None)
    lines = ["", f"language | refusal (harmful) before -> after | over-refusal ({benign_name or 'no benign set'}) "
             "before -> after"]  # fmt: skip
    benign = report.get("benign_sets", {}).get(benign_name, {})
    before_benign = (baseline or {}).get("benign_sets", {}).get(benign_name, {})
    for language, entry in report["languages"].items():
        before = (baseline or {}).get("languages", {}).get(language, {})
        lines.append(
            f"{language:8s} | {pct(before.get('refusal_rate'))} -> {pct(entry.get('refusal_rate'))}"
            f"                  | {pct(before_benign.get(language, {}).get('over_refusal_rate'))} -> "
            f"{pct(benign.get(language, {}).get('over_refusal_rate'))}"
        )
    # One teacher number, the one the report and the model card give: the base model under the training context
    # (run_evaluation answers an adapter's teacher prompts with the adapter not applied).
    teacher = report["teacher"]
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


def build_evaluate_parser(prog: str = "msd-trl evaluate"):
    """TRL's parser over `EvaluationArguments`: every field is a flag (`--model` is `--model_name_or_path`), and
    `--config file.yaml` sets any of them."""
    from trl import TrlParser

    from .evaluation.arguments import EvaluationArguments

    return TrlParser(
        (EvaluationArguments,),
        prog=prog,
        description="Refusal rate on held-out harmful queries per language (MultiJail, a registered corpus or your "
        "file), over-refusal on benign questions (MGSM, MultiQ, ...), the share of answers in the query's language, "
        "and the teacher's own behaviour (its preset's context) as the ceiling; every rate with a 95 %% Wilson "
        "interval.",
    )


def evaluate(argv: list[str]) -> dict[str, Any]:
    from .evaluation import run_evaluation

    (args,) = build_evaluate_parser().parse_args_and_config(args=argv)
    report = run_evaluation(args)
    print(f"msd-trl: report in {args.output_dir}/report.json")
    return report


def select_checkpoint(argv: list[str]):
    """`msd-trl select-checkpoint OUTPUT_DIR`: the checkpoint the selectivity monitor's values support
    (`msd_trl.checkpoint_choice`), read from the run's trainer states; no model is loaded."""
    from .checkpoint_choice import choose_checkpoint, format_choice, monitor_points

    parser = argparse.ArgumentParser(
        prog="msd-trl select-checkpoint",
        description="Choose a checkpoint of a run trained with --selectivity_monitor: among the checkpoints whose "
        "held-out harmful prompts greedy refuses (mean harmful_greedy >= --min_harmful_greedy) more often than benign "
        "ones (mean gap >= --min_greedy_gap) and that refuse at most --max_benign_greedy of benign ones, the one that "
        "refuses the fewest benign prompts (lowest mean benign_greedy). Prints the per-checkpoint table and the choice.",
    )
    parser.add_argument("output_dir", help="The run's --output_dir (holding checkpoint-N folders).")
    parser.add_argument(
        "--languages", default=None,
        help="Comma-separated languages the choice is made on (default: every language the monitor measured).",
    )  # fmt: skip
    parser.add_argument("--min_harmful_greedy", type=float, default=0.5)
    parser.add_argument(
        "--min_greedy_gap", type=float, default=0.2,
        help="A checkpoint is eligible only if its mean harmful_greedy - benign_greedy reaches this (not refuse-everything).",
    )  # fmt: skip
    parser.add_argument(
        "--max_benign_greedy", type=float, default=0.5,
        help="... and only if its mean benign_greedy is at most this (it does not refuse most benign prompts).",
    )  # fmt: skip
    parser.add_argument("--json", default=None, help="Also write the choice and the table to this JSON file.")
    args = parser.parse_args(argv)
    languages = [code.strip() for code in args.languages.split(",") if code.strip()] if args.languages else None
    points, folders = monitor_points(args.output_dir)
    choice = choose_checkpoint(
        points, languages, min_harmful_greedy=args.min_harmful_greedy, min_greedy_gap=args.min_greedy_gap,
        max_benign_greedy=args.max_benign_greedy,
    )  # fmt: skip
    if choice.step is not None:
        choice.path = str(folders[choice.step])
    print(format_choice(choice))
    if args.json:
        Path(args.json).write_text(json.dumps(choice.as_dict(), indent=2), encoding="utf-8")
    if choice.step is None:
        raise ValueError(choice.reason)
    return choice


def env_report() -> str:
    """Versions for a bug report, as `trl env` prints them (read from package metadata: nothing heavy imported)."""
    import platform
    import subprocess
    from importlib.metadata import PackageNotFoundError, version

    from . import __version__

    def installed(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "not installed"

    commit = ""
    try:
        done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).resolve().parent,
                              capture_output=True, text=True, timeout=5)  # fmt: skip
        commit = f" (git {done.stdout.strip()})" if done.returncode == 0 and done.stdout.strip() else ""
    except (OSError, subprocess.SubprocessError):
        pass
    lines = [
        "Copy-paste the following information when you open an issue:",
        "",
        f"- Platform: {platform.platform()}",
        f"- Python version: {platform.python_version()}",
        f"- msd_trl version: {__version__}{commit}",
        f"- CPU cores: {os.cpu_count()}",
    ]
    for name in ("torch", "transformers", "trl", "peft", "datasets", "accelerate", "huggingface_hub", "bitsandbytes",
                 "langcodes", "py3langid", "matplotlib", "tensorboard", "trackio", "deepspeed", "vllm"):  # fmt: skip
        lines.append(f"- {name} version: {installed(name)}")
    lines.append(f"- {DEBUG_ENV}: {os.environ.get(DEBUG_ENV, 'unset')}; OMP_WAIT_POLICY: "
                 f"{os.environ.get('OMP_WAIT_POLICY', 'unset')}")  # fmt: skip
    return "\n".join(lines)


def _env(argv: list[str]) -> str:
    argparse.ArgumentParser(prog="msd-trl env", description="Print versions for a bug report.").parse_args(argv)
    text = env_report()
    print(text)
    return text


COMMANDS = {
    "train": (train, "Train an adapter with on-policy or off-policy MSD."),
    "generate-teacher": (generate_teacher, "Sample teacher text under the privileged context (off-policy data)."),
    "evaluate": (evaluate, "Multilingual refusal / over-refusal report of a model (+ adapter)."),
    "select-checkpoint": (select_checkpoint, "Choose a checkpoint by the selectivity monitor's logged values."),
    "env": (_env, "Print platform and package versions for a bug report (like `trl env`)."),
}
# Commands whose --help needs TRL's parser (torch, transformers): served from the help cache.
_TRL_PARSER_COMMANDS = {
    "train": "msd-trl train",
    "generate-teacher": "msd-trl generate-teacher",
    "evaluate": "msd-trl evaluate",
}


def _asks_for_4bit(argv: list[str]) -> bool:
    """Whether the command line (or its --config YAML) asks for 4-bit loading."""
    for i, arg in enumerate(argv):
        if arg == "--load_in_4bit" or arg.startswith("--load_in_4bit="):
            value = arg.partition("=")[2] or (argv[i + 1] if i + 1 < len(argv) else "true")
            return value.lower() not in ("false", "0", "no")
        if arg == "--config" and i + 1 < len(argv):
            try:
                import yaml

                loaded = yaml.safe_load(Path(argv[i + 1]).read_text(encoding="utf-8")) or {}
            except Exception:  # the parser reports a bad --config properly later
                return True
            if isinstance(loaded, dict) and loaded.get("load_in_4bit"):
                return True
    return False


def _help_cache_path(command: str) -> Path:
    """Where `command --help` is cached: keyed by the versions of the libraries that define the flags, the sources
    of ours that do, and the terminal width, so a cached text is never stale."""
    from importlib.metadata import PackageNotFoundError, version

    digest = hashlib.sha256(command.encode())
    for name in ("trl", "transformers", "peft", "accelerate"):
        try:
            digest.update(f"{name}={version(name)}".encode())
        except PackageNotFoundError:
            digest.update(f"{name}=none".encode())
    package = Path(__file__).resolve().parent
    for source in ("arguments.py", "config.py", "presets.py", "divergences.py", "cli.py", "evaluation/arguments.py"):
        digest.update((package / source).read_bytes())
    digest.update(str(shutil.get_terminal_size().columns).encode())
    cache = Path(os.environ.get("MSD_TRL_CACHE") or Path.home() / ".cache" / "msd_trl") / "help"
    return cache / f"{command}-{digest.hexdigest()[:16]}.txt"


def _print_cached_help(command: str) -> None:
    path = _help_cache_path(command)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        build = build_evaluate_parser if command == "evaluate" else build_train_parser
        text = build(_TRL_PARSER_COMMANDS[command]).format_help()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
        except OSError:  # a read-only home: the help still prints, just not faster next time
            pass
    sys.stdout.write(text)


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text if isinstance(err, ValueError) else f"{type(err).__name__}: {text}"


def main(argv: list[str] | None = None) -> int:
    as_command = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get(DEBUG_ENV, "").lower() not in ("", "0", "false", "no")
    argv = [arg for arg in argv if arg != "--debug"]
    usage = f"usage: msd-trl {{{','.join(COMMANDS)}}} [options] [--debug]   (msd-trl COMMAND --help for options)"
    if not argv or argv[0] in ("-h", "--help"):
        print(usage + "\n\ncommands:\n" + "\n".join(f"  {name:18s}{text}" for name, (_, text) in COMMANDS.items()))
        print(f"\n--debug (or {DEBUG_ENV}=1) shows the traceback of an error instead of its one-line message.")
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"msd-trl: unknown command {command!r}\n{usage}", file=sys.stderr)
        return 2
    if as_command and "bitsandbytes" not in sys.modules and not _asks_for_4bit(rest):
        # PEFT and transformers import bitsandbytes whenever it is installed (seconds, and a warning on CPU); hiding it
        # makes them see it as absent. Only as a command: from Python, main() leaves the interpreter's modules alone.
        sys.modules["bitsandbytes"] = None  # type: ignore[assignment]
    if command in _TRL_PARSER_COMMANDS and ("-h" in rest or "--help" in rest):
        _print_cached_help(command)
        raise SystemExit(0)  # as argparse's --help does
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        COMMANDS[command][0](rest)
    except USER_ERRORS as err:
        if debug:
            raise
        print(f"msd-trl {command}: error: {_one_line(err)} (--debug shows the traceback)", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
